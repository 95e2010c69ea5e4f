//! The inode table of one input: its files, static or listed lazily one directory at a time.
//! Append-only: an input is a snapshot, so an inode's meaning never changes.

use crate::inputs::resolve::{DirListing, FileEntry, InputRoot, ResolvedInput};
use crate::reader::{OpenObject, Pin};
use crate::store::StoreHandle;
use object_store::path::Path;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

/// Where a lazily listed directory's entries come from.
#[derive(Debug)]
pub struct Lister {
    /// The store.
    pub store: Arc<StoreHandle>,
    /// The directory's prefix.
    pub prefix: Option<Path>,
}

/// An input file.
pub struct FileNode {
    /// What it is in the store.
    pub entry: FileEntry,
    /// Its pinned version (from the listing, or the first HEAD).
    pub pin: tokio::sync::OnceCell<Pin>,
    /// Its open object, shared by every handle while any is open.
    pub open: Mutex<Weak<OpenObject>>,
    /// Set once checksums were computed (or started) for it.
    pub hashing: AtomicBool,
    /// Its checksums, once known.
    pub checksums: OnceLock<crate::checksum::Checksums>,
    /// Set when its bytes turned out to differ from the sha256 its record promised.
    pub mismatch: AtomicBool,
    /// Set once it was fetched ahead of a reader walking its directory.
    pub prefetched: AtomicBool,
}

/// What an inode is.
pub enum NodeKind {
    /// A directory; `children` is filled at build or on first listing.
    Dir {
        /// Name -> inode, once known.
        children: tokio::sync::OnceCell<BTreeMap<String, u64>>,
        /// Source of the entries for a lazily listed directory.
        lister: Option<Lister>,
    },
    /// An input file.
    File(Box<FileNode>),
}

/// One inode.
pub struct Node {
    /// Its number.
    pub ino: u64,
    /// Its parent's number (for the input's top: `inputs/`).
    pub parent: u64,
    /// Path relative to the mountpoint (`inputs/x/a.bin`; empty for the root).
    pub path: String,
    /// What it is.
    pub kind: NodeKind,
}

/// All inodes of one input, numbered from `base` (its top directory) up.
pub struct Tree {
    base: u64,
    nodes: RwLock<Vec<Arc<Node>>>,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl Tree {
    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        ino.checked_sub(self.base).and_then(|i| nodes.get(usize::try_from(i).ok()?)).cloned()
    }

    /// The inode of the input's top directory.
    pub fn top(&self) -> u64 {
        self.base
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True before the root is added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, parent: u64, path: String, kind: NodeKind) -> u64 {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let ino = self.base + nodes.len() as u64;
        nodes.push(Arc::new(Node { ino, parent, path, kind }));
        ino
    }

    fn file_kind(entry: FileEntry) -> NodeKind {
        let pin = tokio::sync::OnceCell::new();
        if let Some(p) = entry.pin.clone() {
            let _ = pin.set(p);
        }
        NodeKind::File(Box::new(FileNode {
            entry,
            pin,
            open: Mutex::new(Weak::new()),
            hashing: AtomicBool::new(false),
            checksums: OnceLock::new(),
            mismatch: AtomicBool::new(false),
            prefetched: AtomicBool::new(false),
        }))
    }

    /// The tree of `input`, numbered from `base`, its top directory a child of `parent`.
    pub fn of_input(base: u64, parent: u64, input: ResolvedInput) -> Self {
        let tree = Self { base, nodes: RwLock::new(Vec::new()) };
        tree.build_input(parent, input);
        tree
    }

    fn reserve_dir(&self, parent: u64, path: &str) -> u64 {
        self.push(parent, path.to_string(), NodeKind::Dir { children: tokio::sync::OnceCell::new(), lister: None })
    }

    fn fill(&self, ino: u64, children: BTreeMap<String, u64>) {
        if let Some(node) = self.get(ino) {
            if let NodeKind::Dir { children: cell, .. } = &node.kind {
                let _ = cell.set(children);
            }
        }
    }

    fn build_input(&self, inputs_dir: u64, input: ResolvedInput) -> u64 {
        let top_path = format!("inputs/{}", input.name);
        match input.root {
            InputRoot::Files(files) => {
                let top = self.reserve_dir(inputs_dir, &top_path);
                // Build nested maps first, then create inodes level by level.
                let mut pending: BTreeMap<Vec<String>, BTreeMap<String, u64>> = BTreeMap::new();
                pending.insert(vec![], BTreeMap::new());
                let mut dir_inos: BTreeMap<Vec<String>, u64> = BTreeMap::from([(vec![], top)]);
                for (rel, entry) in files {
                    for depth in 1..rel.len() {
                        let dir_rel = rel[..depth].to_vec();
                        if !dir_inos.contains_key(&dir_rel) {
                            let parent = dir_inos[&rel[..depth - 1].to_vec()];
                            let ino = self.reserve_dir(parent, &join(&top_path, &dir_rel.join("/")));
                            pending.entry(rel[..depth - 1].to_vec()).or_default().insert(rel[depth - 1].clone(), ino);
                            pending.insert(dir_rel.clone(), BTreeMap::new());
                            dir_inos.insert(dir_rel, ino);
                        }
                    }
                    let parent_rel = rel[..rel.len() - 1].to_vec();
                    let parent = dir_inos[&parent_rel];
                    let ino = self.push(parent, join(&top_path, &rel.join("/")), Self::file_kind(entry));
                    pending.entry(parent_rel).or_default().insert(rel[rel.len() - 1].clone(), ino);
                }
                for (rel, children) in pending {
                    self.fill(dir_inos[&rel], children);
                }
                top
            }
            InputRoot::Lazy { store, leading, root, .. } => {
                let top = self.reserve_dir(inputs_dir, &top_path);
                let mut parent = top;
                let mut path = top_path.clone();
                for seg in &leading {
                    path = join(&path, seg);
                    let ino = self.reserve_dir(parent, &path);
                    self.fill(parent, BTreeMap::from([(seg.clone(), ino)]));
                    parent = ino;
                }
                // The listed directory itself: its first level was fetched at mount.
                let children = self.add_listing(parent, &path, root, &store);
                self.fill(parent, children);
                top
            }
        }
    }

    /// Adds the entries of a listed directory and returns their name -> inode map.
    pub fn add_listing(
        &self,
        parent: u64,
        parent_path: &str,
        listing: DirListing,
        store: &Arc<StoreHandle>,
    ) -> BTreeMap<String, u64> {
        let mut children = BTreeMap::new();
        for (name, prefix) in listing.dirs {
            let kind = NodeKind::Dir {
                children: tokio::sync::OnceCell::new(),
                lister: Some(Lister { store: store.clone(), prefix: Some(prefix) }),
            };
            children.insert(name.clone(), self.push(parent, join(parent_path, &name), kind));
        }
        for (name, entry) in listing.files {
            children.insert(name.clone(), self.push(parent, join(parent_path, &name), Self::file_kind(entry)));
        }
        children
    }
}
