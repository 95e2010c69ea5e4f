//! The inode table of one input: its [`FileTable`] numbered as inodes, plus the state of the
//! files a job has touched. Append-only: an input is a snapshot, so an inode's meaning never
//! changes.
//!
//! Directories are numbered from the input's top up, files from [`FILE_BASE`] above it. Nothing
//! is kept per file beyond its table record until the file is opened (or asked for its
//! checksums): a [`Node`] is built when needed and dropped after, and only [`FileState`] (the
//! pinned version, the open object, the checksums) stays.

use super::{FsError, FsResult};
use crate::checksum::Digests;
use crate::inputs::resolve::{DirListing, FileEntry, InputRoot, ResolvedInput};
use crate::inputs::table::{Child, DirRec, FileTable, DIR_FLAG};
use crate::reader::{OpenObject, Pin};
use crate::store::StoreHandle;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};
use std::time::SystemTime;

/// Files' inodes start this far above the input's top; directories are numbered below.
pub const FILE_BASE: u64 = 1 << 39;

/// What a file gains once a job touches it.
#[derive(Default)]
pub struct FileState {
    /// Its pinned version (from the listing, or the first HEAD).
    pub pin: tokio::sync::OnceCell<Pin>,
    /// Its open object, shared by every handle while any is open.
    pub open: Mutex<Weak<OpenObject>>,
    /// Set once checksums were computed (or started) for it.
    pub hashing: AtomicBool,
    /// Its checksums, once known.
    pub checksums: OnceLock<Digests>,
    /// Set when its bytes turned out to differ from the sha256 its record promised.
    pub mismatch: AtomicBool,
    /// Set once it was fetched ahead of a reader walking its directory.
    pub prefetched: AtomicBool,
}

/// An input file, as built for a request.
pub struct FileNode {
    /// What it is in the store.
    pub entry: FileEntry,
    /// What the mount learnt about it so far.
    pub state: Arc<FileState>,
}

/// What an inode is.
pub enum NodeKind {
    /// A directory.
    Dir(Arc<DirRec>),
    /// An input file.
    File(Box<FileNode>),
}

/// One inode, as built for a request.
pub struct Node {
    /// Its number.
    pub ino: u64,
    /// Its parent's number (for the input's top: `inputs/`).
    pub parent: u64,
    /// Path relative to the mountpoint (`inputs/x/a.bin`).
    pub path: String,
    /// What it is.
    pub kind: NodeKind,
}

impl Node {
    /// Its name.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

/// What `getattr` needs of an inode.
pub enum Shape {
    /// A directory.
    Dir,
    /// A file of this size and time.
    File(u64, SystemTime),
}

/// All inodes of one input, numbered from `base` (its top directory) up.
pub struct Tree {
    base: u64,
    parent: u64,
    top_path: String,
    table: RwLock<FileTable>,
    states: Mutex<HashMap<u32, Arc<FileState>>>,
}

enum Ino {
    Dir(u32),
    File(u32),
}

impl Tree {
    /// The tree of `input`, numbered from `base`, its top directory a child of `parent`.
    pub fn of_input(base: u64, parent: u64, input: ResolvedInput) -> Self {
        let table = match input.root {
            InputRoot::Files(table) => *table,
            InputRoot::Lazy { store, leading, root, .. } => {
                let mut table = FileTable::new(&input.name, input.spill_dir.clone());
                let mut dir = 0;
                for seg in &leading {
                    dir = table.push_leading(dir, seg);
                }
                // The listed directory itself: its first level was fetched at mount.
                let children = table.add_listing(dir, root, &store);
                if let Some(d) = table.dir(dir) {
                    let _ = d.children.set(children);
                }
                // Only the leading directories' children are pending: nothing can clash.
                let _ = table.finish("");
                table
            }
        };
        Self {
            base,
            parent,
            top_path: format!("inputs/{}", input.name),
            table: RwLock::new(table),
            states: Mutex::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, FileTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Which directory or file `ino` is (the table passed in: never two read locks at once).
    fn split(&self, table: &FileTable, ino: u64) -> Option<Ino> {
        let rel = ino.checked_sub(self.base)?;
        if rel < FILE_BASE {
            let i = u32::try_from(rel).ok()?;
            (table.dir(i).is_some()).then_some(Ino::Dir(i))
        } else {
            let i = u32::try_from(rel - FILE_BASE).ok()?;
            (table.file_size(i).is_some()).then_some(Ino::File(i))
        }
    }

    /// The inode of a child.
    pub fn ino_of(&self, child: Child) -> u64 {
        if child & DIR_FLAG != 0 {
            self.base + u64::from(child & !DIR_FLAG)
        } else {
            self.base + FILE_BASE + u64::from(child)
        }
    }

    /// The inode of the input's top directory.
    pub fn top(&self) -> u64 {
        self.base
    }

    /// Whether `ino` is one of this input's inodes.
    pub fn contains(&self, ino: u64) -> bool {
        self.split(&self.read(), ino).is_some()
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        let table = self.read();
        table.dir_count() + table.file_count()
    }

    /// True before the root is added (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table holds, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.read().heap_bytes()
    }

    /// The datum ids of files not in a dataset version.
    pub fn loose_datums(&self) -> Vec<String> {
        self.read().loose_datums()
    }

    fn dir_path(&self, d: &DirRec) -> String {
        if d.rel.is_empty() {
            self.top_path.clone()
        } else {
            format!("{}/{}", self.top_path, d.rel)
        }
    }

    fn dir_parent(&self, i: u32, d: &DirRec) -> u64 {
        if i == 0 {
            self.parent
        } else {
            self.base + u64::from(d.parent)
        }
    }

    /// The directory `ino`.
    pub fn dir(&self, ino: u64) -> FsResult<Arc<DirRec>> {
        let table = self.read();
        match self.split(&table, ino) {
            Some(Ino::Dir(i)) => table.dir(i).cloned().ok_or(FsError::NotFound),
            Some(Ino::File(_)) => Err(FsError::NotDir),
            None => Err(FsError::NotFound),
        }
    }

    /// The parent of `ino`.
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        let table = self.read();
        match self.split(&table, ino)? {
            Ino::Dir(i) => Some(self.dir_parent(i, table.dir(i)?)),
            Ino::File(i) => Some(self.base + u64::from(table.file_parent(i)?)),
        }
    }

    /// What `ino` is, without building its node.
    pub fn shape(&self, ino: u64) -> Option<Shape> {
        let table = self.read();
        match self.split(&table, ino)? {
            Ino::Dir(_) => Some(Shape::Dir),
            Ino::File(i) => table.file_attr(i).map(|(size, mtime)| Shape::File(size, mtime)),
        }
    }

    /// A file's size (`None` for a directory).
    pub fn file_size(&self, ino: u64) -> Option<u64> {
        let table = self.read();
        match self.split(&table, ino)? {
            Ino::File(i) => table.file_size(i),
            Ino::Dir(_) => None,
        }
    }

    /// The state of file `ino` if it has any.
    pub fn state_if_any(&self, ino: u64) -> Option<Arc<FileState>> {
        let Some(Ino::File(i)) = self.split(&self.read(), ino) else { return None };
        self.states.lock().unwrap_or_else(|e| e.into_inner()).get(&i).cloned()
    }

    /// A file's mount-relative path and entry, built without giving it state.
    pub fn file_entry(&self, ino: u64) -> Option<(String, FileEntry)> {
        let table = self.read();
        let Ino::File(i) = self.split(&table, ino)? else { return None };
        let parent = table.dir(table.file_parent(i)?)?;
        Some((format!("{}/{}", self.dir_path(parent), table.name(i)), table.entry(i)?))
    }

    /// The inode `ino`, built.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        let table = self.read();
        match self.split(&table, ino)? {
            Ino::Dir(i) => {
                let d = table.dir(i)?;
                Some(Arc::new(Node {
                    ino,
                    parent: self.dir_parent(i, d),
                    path: self.dir_path(d),
                    kind: NodeKind::Dir(d.clone()),
                }))
            }
            Ino::File(i) => {
                let entry = table.entry(i)?;
                let parent = table.file_parent(i)?;
                let path = format!("{}/{}", self.dir_path(table.dir(parent)?), table.name(i));
                drop(table);
                let state = self
                    .states
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(i)
                    .or_insert_with(|| {
                        let state = FileState::default();
                        if let Some(p) = entry.pin.clone() {
                            let _ = state.pin.set(p);
                        }
                        Arc::new(state)
                    })
                    .clone();
                Some(Arc::new(Node {
                    ino,
                    parent: self.base + u64::from(parent),
                    path,
                    kind: NodeKind::File(Box::new(FileNode { entry, state })),
                }))
            }
        }
    }

    /// The inode of the child of `children` called `name`.
    pub fn find(&self, children: &[Child], name: &str) -> Option<u64> {
        let found = self.read().find(children, name);
        found.map(|c| self.ino_of(c))
    }

    /// The entries of `children`: inode, name, and whether it is a directory.
    pub fn entries(&self, children: &[Child]) -> Vec<(u64, String, bool)> {
        let table = self.read();
        children.iter().map(|&c| (self.ino_of(c), table.name(c).to_string(), c & DIR_FLAG != 0)).collect()
    }

    /// The children of `children` after the one called `name`, in order.
    pub fn after(&self, children: &[Child], name: &str) -> std::ops::Range<usize> {
        self.read().after(children, name)..children.len()
    }

    /// The name of a child.
    pub fn name(&self, child: Child) -> String {
        self.read().name(child).to_string()
    }

    /// Adds the entries of directory `ino`'s listing and returns its children.
    pub fn add_listing(&self, ino: u64, listing: DirListing, store: &Arc<StoreHandle>) -> Box<[Child]> {
        let Some(Ino::Dir(i)) = self.split(&self.read(), ino) else { return Box::default() };
        self.table.write().unwrap_or_else(|e| e.into_inner()).add_listing(i, listing, store)
    }
}

/// The children of a directory once listed (none before).
pub fn listed(dir: &DirRec) -> &[Child] {
    dir.children.get().map_or(&[], |c| &c[..])
}

/// Whether a child is a directory.
pub fn is_dir(child: Child) -> bool {
    child & DIR_FLAG != 0
}
