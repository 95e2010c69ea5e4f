//! One input as a namespace: a read-only snapshot of objects at `inputs/<name>/`, listed lazily,
//! read through the block cache, checksummed once read whole and checked against the checksum
//! its record promised (datums, dataset files). Facts go out as events; nothing here writes a
//! record.

use super::events::{EventSink, FsEvent, HashedFile};
use super::namespace::{Namespace, OpenFile, OpenedFile};
use super::tree::{FileNode, Node, NodeKind, Tree};
use super::{Attr, DirEntry, FsError, FsResult, InputSummary, Kind, FILE_PERM};
use crate::cache::Cache;
use crate::checksum::Checksums;
use crate::inputs::resolve::{self, ResolvedInput};
use crate::reader::{self, OpenObject, Pin, Reader, Remote, Sequential};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// How many not-yet-listed siblings after a directory being opened are listed ahead of a walk
/// (`ls -R`, `find`, `os.walk` open siblings in order), and how many such listings run at once.
pub const LIST_AHEAD_SIBLINGS: usize = 4;

/// What every input of a mount shares: the object-access layer, the event sink, and where the
/// mount is (for paths in events and logs).
pub struct InputServices {
    /// The block cache.
    pub cache: Arc<Cache>,
    /// The read path.
    pub reader: Arc<Reader>,
    /// Where facts go.
    pub events: Arc<dyn EventSink>,
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// The runtime background work runs on.
    pub runtime: tokio::runtime::Handle,
    /// Listings started ahead of a directory walk, at most this many at once over the mount.
    pub listing_ahead: Arc<tokio::sync::Semaphore>,
    /// When the mount started (directories' times).
    pub started: SystemTime,
    /// Bumped whenever something `inputs.json` shows changes (a listing, checksums).
    pub generation: std::sync::atomic::AtomicU64,
}

impl InputServices {
    /// Services for a mount at `mountpoint`. Must be called inside a tokio runtime.
    pub fn new(cache: Arc<Cache>, reader: Arc<Reader>, events: Arc<dyn EventSink>, mountpoint: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            cache,
            reader,
            events,
            mountpoint,
            runtime: tokio::runtime::Handle::current(),
            listing_ahead: Arc::new(tokio::sync::Semaphore::new(LIST_AHEAD_SIBLINGS)),
            started: SystemTime::now(),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn mount_path(&self, node: &Node) -> String {
        self.mountpoint.join(&node.path).display().to_string()
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// One input.
pub struct InputNamespace {
    summary: InputSummary,
    tree: Tree,
    services: Arc<InputServices>,
    this: Weak<InputNamespace>,
    /// Per directory: how a reader walks it.
    walks: Mutex<std::collections::HashMap<u64, Walk>>,
    /// Files being fetched ahead at once, at most.
    prefetching: Arc<tokio::sync::Semaphore>,
}

/// How files of one directory are being opened.
struct Walk {
    /// How many files after each one opened are fetched ahead.
    window: usize,
    /// The file opened last.
    last: String,
}

/// Directories whose walks are remembered at most.
const WALKS_KEPT: usize = 4096;
/// Files fetched ahead after the first file opened in a directory.
const PREFETCH_FIRST: usize = 4;
/// Most files fetched ahead of one open.
const PREFETCH_MAX: usize = 64;
/// Files fetched ahead at once, over an input.
const PREFETCH_AT_ONCE: usize = 16;
/// Larger files are not fetched ahead (their own reads have read-ahead).
const PREFETCH_MAX_SIZE: u64 = 4 << 20;

/// Fails when a file's bytes were found to differ from the checksum its record promised.
fn check_content(f: &FileNode) -> FsResult<()> {
    if f.mismatch.load(Ordering::Acquire) {
        return Err(FsError::Corrupt { uri: f.entry.uri.clone() });
    }
    Ok(())
}

impl InputNamespace {
    /// The namespace of `input`, its top directory at inode `base` (a child of `parent`), its
    /// other inodes numbered up from there.
    pub fn new(base: u64, parent: u64, input: ResolvedInput, services: Arc<InputServices>) -> Arc<Self> {
        let summary = InputSummary {
            name: input.name.clone(),
            uris: input.uris.clone(),
            datums: match &input.root {
                resolve::InputRoot::Files(files) => {
                    files.iter().filter(|(_, e)| !e.in_dataset).filter_map(|(_, e)| e.datum.clone()).collect()
                }
                resolve::InputRoot::Lazy { .. } => Vec::new(),
            },
            datasets: input.datasets.clone(),
        };
        let tree = Tree::of_input(base, parent, input);
        Arc::new_cyclic(|this| Self {
            summary,
            tree,
            services,
            this: this.clone(),
            walks: Mutex::default(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(PREFETCH_AT_ONCE)),
        })
    }

    /// The input's name, URIs, datums and dataset versions.
    pub fn summary(&self) -> &InputSummary {
        &self.summary
    }

    /// The number of inodes known so far.
    pub fn inodes(&self) -> usize {
        self.tree.len()
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        self.tree.get(ino).ok_or(FsError::NotFound)
    }

    /// The entries of a directory, listing it in the store the first time.
    pub(super) async fn children<'a>(&self, node: &'a Node) -> FsResult<&'a BTreeMap<String, u64>> {
        let NodeKind::Dir { children, lister } = &node.kind else { return Err(FsError::NotDir) };
        children
            .get_or_try_init(|| async {
                let Some(l) = lister else { return Ok(BTreeMap::new()) };
                let listing = resolve::list_dir(&l.store, l.prefix.as_ref()).await.map_err(|e| {
                    tracing::error!("listing {} failed: {e}", node.path);
                    FsError::from(e)
                })?;
                let added = self.tree.add_listing(node.ino, &node.path, listing, &l.store);
                self.services.changed();
                Ok(added)
            })
            .await
    }

    fn loaded_children<'a>(&self, node: &'a Node) -> Option<FsResult<&'a BTreeMap<String, u64>>> {
        match &node.kind {
            NodeKind::Dir { children, .. } => children.get().map(Ok),
            NodeKind::File(_) => Some(Err(FsError::NotDir)),
        }
    }

    fn attr(&self, node: &Node) -> Attr {
        match &node.kind {
            NodeKind::Dir { .. } => Attr::read_only_dir(node.ino, self.services.started),
            NodeKind::File(f) => Attr {
                ino: node.ino,
                size: f.entry.size,
                kind: Kind::File,
                perm: FILE_PERM,
                mtime: f.entry.mtime,
                times: None,
                nlink: None,
                volatile: false,
            },
        }
    }

    fn entries(&self, children: &BTreeMap<String, u64>) -> Vec<DirEntry> {
        children
            .iter()
            .map(|(name, &child)| {
                let kind = match self.tree.get(child).map(|n| matches!(n.kind, NodeKind::Dir { .. })) {
                    Some(true) => Kind::Dir,
                    _ => Kind::File,
                };
                DirEntry { ino: child, name: name.clone(), kind }
            })
            .collect()
    }

    /// Every file node at or below `ino`, listing directories as needed.
    pub(super) async fn files_under(&self, ino: u64) -> FsResult<Vec<Arc<Node>>> {
        let mut files = Vec::new();
        let mut stack = vec![self.node(ino)?];
        while let Some(n) = stack.pop() {
            match &n.kind {
                NodeKind::File(_) => files.push(n),
                NodeKind::Dir { .. } => {
                    for &child in self.children(&n).await?.values() {
                        stack.push(self.node(child)?);
                    }
                }
            }
        }
        Ok(files)
    }

    /// The inode at `path` (segments below the input's top), listing directories on the way.
    pub(super) async fn resolve_path(&self, path: &[&str]) -> FsResult<u64> {
        let mut node = self.node(self.tree.top())?;
        for seg in path {
            let ino = *self.children(&node).await?.get(*seg).ok_or(FsError::NotFound)?;
            node = self.node(ino)?;
        }
        Ok(node.ino)
    }

    /// Every file of the input as `inputs.json` lists it, listing every directory once
    /// (several at once) so that the list is complete.
    pub(super) async fn files_json(&self) -> Vec<serde_json::Value> {
        const LIST_CONCURRENCY: usize = 16;
        let mut files = Vec::new();
        let mut level: Vec<Arc<Node>> = self.tree.get(self.tree.top()).into_iter().collect();
        while !level.is_empty() {
            let mut listed: Vec<u64> = Vec::new();
            for chunk in level.chunks(LIST_CONCURRENCY) {
                let results = futures::future::join_all(chunk.iter().map(|dir| async move {
                    match self.children(dir).await {
                        Ok(c) => c.values().copied().collect::<Vec<_>>(),
                        Err(e) => {
                            tracing::warn!("inputs.json: {} left out: {e}", dir.path);
                            vec![]
                        }
                    }
                }))
                .await;
                listed.extend(results.into_iter().flatten());
            }
            let mut next = Vec::new();
            for ino in listed {
                let Some(node) = self.tree.get(ino) else { continue };
                match &node.kind {
                    NodeKind::Dir { .. } => next.push(node),
                    NodeKind::File(_) => files.push(node),
                }
            }
            level = next;
        }
        // Checksums recorded by earlier runs come from the cache index: not on a runtime worker.
        let services = self.services.clone();
        tokio::task::spawn_blocking(move || files.iter().filter_map(|n| file_json(&services, n)).collect())
            .await
            .unwrap_or_default()
    }

    /// Opens the object behind a file, pinning its version first if its listing had none.
    pub(super) async fn open_object(&self, node: &Node, f: &FileNode) -> FsResult<Arc<OpenObject>> {
        if let Some(obj) = f.open.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
            return Ok(obj);
        }
        let e = &f.entry;
        let cache = &self.services.cache;
        let pin = f
            .pin
            .get_or_try_init(|| async {
                let pin = reader::pin_listed(cache, &e.store, &e.key, &e.uri, e.size, e.mtime).await?;
                // With its version known, checksums an earlier run recorded can be shown.
                self.services.changed();
                Ok::<Pin, crate::store::StoreError>(pin)
            })
            .await;
        let pin = match pin {
            Ok(p) => p.clone(),
            Err(err) => return Err(self.failed(node, f, err).await),
        };
        let remote =
            Arc::new(Remote { store: e.store.clone(), key: e.key.clone(), uri: e.uri.clone(), size: e.size, pin });
        let cached = reader::cached_object(cache, &remote).await?;
        let mut slot = f.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(obj) = slot.upgrade() {
            return Ok(obj);
        }
        let obj = OpenObject::new(remote, cached);
        // A file with a promised checksum answers its reads from the cache, where the check runs.
        let obj = Arc::new(if e.expected.is_some() { obj.checked_before_served() } else { obj });
        *slot = Arc::downgrade(&obj);
        Ok(obj)
    }

    /// Tells the sink why a file cannot be read and turns the cause into the caller's error.
    async fn failed(&self, node: &Node, f: &FileNode, err: crate::store::StoreError) -> FsError {
        failed(&self.services, self.services.mount_path(node), f, err).await
    }

    /// A file was opened: fetches the next files of its directory ahead, as a walk in listing
    /// order (`find`, `os.walk`, an unshuffled loader) will open them next. The window grows
    /// while opens land on files fetched ahead and shrinks to nothing when they do not (a
    /// shuffled reader), so random access costs a few wasted fetches at most.
    fn prefetch_after(&self, node: &Node, f: &FileNode) {
        let Ok(parent) = self.node(node.parent) else { return };
        let Some(Ok(siblings)) = self.loaded_children(&parent) else { return };
        let Some(name) = node.path.rsplit('/').next() else { return };
        let window = {
            let mut walks = self.walks.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a walk over a million directories forgets the old ones.
            if walks.len() >= WALKS_KEPT && !walks.contains_key(&parent.ino) {
                walks.clear();
            }
            match walks.get_mut(&parent.ino) {
                None => {
                    walks.insert(parent.ino, Walk { window: PREFETCH_FIRST, last: name.to_string() });
                    PREFETCH_FIRST
                }
                Some(w) => {
                    // In order: a file fetched ahead, or the one right after the last opened.
                    let after_last = siblings
                        .range::<str, _>((std::ops::Bound::Excluded(w.last.as_str()), std::ops::Bound::Unbounded))
                        .next()
                        .is_some_and(|(n, _)| n == name);
                    w.window = if f.prefetched.load(Ordering::Acquire) || after_last {
                        (w.window * 2).clamp(PREFETCH_FIRST, PREFETCH_MAX)
                    } else {
                        w.window / 2
                    };
                    w.last = name.to_string();
                    w.window
                }
            }
        };
        let Some(this) = self.this.upgrade() else { return };
        let next = siblings.range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded)).take(window);
        for (_, &ino) in next {
            let Ok(sibling) = self.node(ino) else { continue };
            let NodeKind::File(sf) = &sibling.kind else { continue };
            if sf.entry.size > PREFETCH_MAX_SIZE || sf.prefetched.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (this, permits) = (this.clone(), self.prefetching.clone());
            self.services.runtime.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                // Only fetched: checksums and lineage wait until the job opens the file, and a
                // failure is left for that open, which reports it.
                let NodeKind::File(sf) = &sibling.kind else { return };
                let fetched = async {
                    let obj = this.open_object(&sibling, sf).await?;
                    this.services.reader.fetch_all(&obj).await.map_err(FsError::from)
                };
                if let Err(e) = fetched.await {
                    tracing::debug!("fetching {} ahead failed: {e}", sibling.path);
                }
            });
        }
    }

    /// Fetches a file whole into the cache (`datumfs warm`); true if it was cached already.
    pub(super) async fn warm_file(&self, node: &Arc<Node>) -> FsResult<bool> {
        let NodeKind::File(f) = &node.kind else { return Ok(true) };
        let obj = self.open_object(node, f).await?;
        let was = obj.cached.is_complete();
        self.services.reader.fetch_all(&obj).await?;
        hash_when_complete(&self.services, node, &obj, false);
        Ok(was)
    }
}

/// One file as `inputs.json` lists it, with the checksums known so far (reads the cache index).
fn file_json(services: &InputServices, node: &Node) -> Option<serde_json::Value> {
    let NodeKind::File(f) = &node.kind else { return None };
    let name = node.path.rsplit('/').next().unwrap_or_default();
    let mut v = serde_json::json!({
        "name": name,
        "path": services.mount_path(node),
        "uri": f.entry.uri,
        "size": f.entry.size,
    });
    let sums = f.checksums.get().cloned().or_else(|| {
        let pin = f.pin.get()?;
        services.cache.recorded_checksums(&f.entry.store.url, f.entry.key.as_ref(), &pin.version())
    });
    if let Some(s) = sums.as_ref().or(f.entry.expected.as_ref()) {
        v["checksums"] = serde_json::json!({ "md5": s.md5, "sha1": s.sha1, "sha256": s.sha256 });
    }
    if let Some(d) = &f.entry.datum {
        v["datum_id"] = serde_json::json!(d);
    }
    Some(v)
}

#[async_trait]
impl Namespace for InputNamespace {
    fn top(&self) -> u64 {
        self.tree.top()
    }

    fn owns(&self, ino: u64) -> bool {
        self.tree.get(ino).is_some()
    }

    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        Some(self.node(ino).map(|n| self.attr(&n)))
    }

    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        let node = match self.node(parent) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let ino = match self.loaded_children(&node)? {
            Ok(children) => match children.get(name) {
                Some(&ino) => ino,
                None => return Some(Err(FsError::NotFound)),
            },
            Err(e) => return Some(Err(e)),
        };
        self.try_getattr(ino)
    }

    async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if let Some(res) = self.try_lookup(parent, name) {
            return res;
        }
        let node = self.node(parent)?;
        let ino = *self.children(&node).await?.get(name).ok_or(FsError::NotFound)?;
        self.getattr(ino).await
    }

    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>> {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        Some(self.loaded_children(&node)?.map(|c| (node.parent, self.entries(c))))
    }

    async fn readdir(&self, ino: u64) -> FsResult<(u64, Vec<DirEntry>)> {
        if let Some(res) = self.try_readdir(ino) {
            return res;
        }
        let node = self.node(ino)?;
        let children = self.children(&node).await?;
        Ok((node.parent, self.entries(children)))
    }

    /// A walk opening a subdirectory will open its next siblings soon: starts listing the next
    /// few that are not listed yet, in the background, so a cold `ls -R` or `find` waits for
    /// several listings at once rather than one after another. Only siblings of a directory
    /// actually opened are listed, so a plain `ls` of a huge prefix lists nothing extra.
    fn list_ahead(&self, ino: u64) {
        let Ok(node) = self.node(ino) else { return };
        if !matches!(node.kind, NodeKind::Dir { .. }) || ino == self.tree.top() {
            return;
        }
        let Ok(parent) = self.node(node.parent) else { return };
        let Some(Ok(siblings)) = self.loaded_children(&parent) else { return };
        let Some(name) = node.path.rsplit('/').next() else { return };
        let next = siblings
            .range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .filter_map(|(_, &i)| self.node(i).ok())
            .filter(|n| matches!(&n.kind, NodeKind::Dir { lister: Some(_), children } if children.get().is_none()))
            .take(LIST_AHEAD_SIBLINGS);
        for sibling in next {
            let (Some(this), permits) = (self.this.upgrade(), self.services.listing_ahead.clone()) else { return };
            self.services.runtime.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                // A failure is logged and left for the walk's own open, which tries again.
                let _ = this.children(&sibling).await;
            });
        }
    }

    /// Opens a file for reading; its version is pinned here if its listing had no ETag. With
    /// `passthrough`, a wholly cached file comes back with its verified cache file, which the
    /// kernel can then read directly at local-disk speed.
    async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<OpenedFile> {
        let write = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let node = self.node(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        let NodeKind::File(f) = &node.kind else { return Err(FsError::IsDir) };
        check_content(f)?;
        let obj = self.open_object(&node, f).await?;
        hash_when_complete(&self.services, &node, &obj, false);
        let complete = obj.cached.is_complete();
        if complete {
            check_expected(&self.services, &node, f, &obj).await?;
        }
        // A packed file is never handed over whole (its pack holds other objects): its one
        // block is checked by the first read instead.
        let backing = if passthrough && complete && !obj.cached.is_packed() {
            let cached = obj.cached.clone();
            match tokio::task::spawn_blocking(move || cached.verify_all().map(|_| cached.verified_data_file())).await {
                Ok(Ok(file)) => file,
                Ok(Err(e)) => {
                    tracing::warn!("{e}");
                    None
                }
                Err(_) => None,
            }
        } else {
            None
        };
        self.prefetch_after(&node, f);
        let file = Arc::new(InputFile {
            services: self.services.clone(),
            node: node.clone(),
            obj,
            seq: Mutex::new(Sequential::default()),
        });
        // Until a file is cached whole its bytes already sit in the cache file's pages: direct
        // I/O keeps the kernel from holding a second copy (and our read-ahead does the
        // prefetching). Whole files go through passthrough, or the page cache.
        let direct_io = backing.is_none() && !complete;
        Ok(OpenedFile { file, direct_io, keep_cache: !direct_io, backing, no_flush: true })
    }

    /// Everything but our own names answers "no such attribute" at once: `ls -l` asks for ACLs
    /// and labels per file.
    fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if !name.starts_with("user.") {
            return Some(Err(FsError::NotSupported));
        }
        let NodeKind::File(f) = &node.kind else { return Some(Err(FsError::NoAttr)) };
        Some(match name {
            "user.datumfs.uri" => Ok(f.entry.uri.clone().into_bytes()),
            "user.datumfs.version" => f.pin.get().map(|p| p.version().into_bytes()).ok_or(FsError::NoAttr),
            "user.datumfs.md5" | "user.datumfs.sha1" | "user.datumfs.sha256" => match f.checksums.get() {
                Some(sums) => Ok(pick_checksum(sums, name)),
                None if f.pin.get().is_none() => Err(FsError::NoAttr),
                None => return None,
            },
            _ => Err(FsError::NoAttr),
        })
    }

    /// `user.datumfs.{md5,sha1,sha256}` are computed on demand for a file cached whole.
    async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        if let Some(res) = self.try_getxattr(ino, name) {
            return res;
        }
        let node = self.node(ino)?;
        let NodeKind::File(f) = &node.kind else { return Err(FsError::NoAttr) };
        let Some(pin) = f.pin.get() else { return Err(FsError::NoAttr) };
        let e = &f.entry;
        let (cache, store_url, key, version, size, uri) =
            (self.services.cache.clone(), e.store.url.clone(), e.key.to_string(), pin.version(), e.size, e.uri.clone());
        let cached = tokio::task::spawn_blocking(move || cache.existing_object(&store_url, &key, &version, size, &uri))
            .await
            .ok()
            .flatten()
            .filter(|c| c.is_complete())
            .ok_or(FsError::NoAttr)?;
        let sums = cached.checksums().await?;
        self.services.changed();
        Ok(pick_checksum(&sums, name))
    }

    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let NodeKind::File(f) = &node.kind else { return Ok(Vec::new()) };
        let mut names = vec!["user.datumfs.uri"];
        if f.pin.get().is_some() {
            names.push("user.datumfs.version");
        }
        if f.checksums.get().is_some() {
            names.extend(["user.datumfs.md5", "user.datumfs.sha1", "user.datumfs.sha256"]);
        }
        Ok(names.iter().flat_map(|n| n.bytes().chain(std::iter::once(0))).collect())
    }
}

fn pick_checksum(sums: &Checksums, name: &str) -> Vec<u8> {
    match name {
        "user.datumfs.md5" => sums.md5.clone().into_bytes(),
        "user.datumfs.sha1" => sums.sha1.clone().into_bytes(),
        _ => sums.sha256.clone().into_bytes(),
    }
}

/// An open input file.
struct InputFile {
    services: Arc<InputServices>,
    node: Arc<Node>,
    obj: Arc<OpenObject>,
    seq: Mutex<Sequential>,
}

impl InputFile {
    fn file(&self) -> Option<&FileNode> {
        match &self.node.kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir { .. } => None,
        }
    }
}

#[async_trait]
impl OpenFile for InputFile {
    /// Serves a read without leaving the calling thread when every byte is already cached.
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        let (obj, file) = (&self.obj, self.file());
        if let Some(Err(e)) = file.map(check_content) {
            return Some(Err(e));
        }
        // At or past the end (every sequential reader's last call): nothing to fetch.
        if offset >= obj.cached.size() {
            return Some(Ok(Vec::new()));
        }
        if !obj.cached.is_complete() || file.is_some_and(|f| f.entry.expected.is_some() && f.checksums.get().is_none())
        {
            return None; // fetched, or verified against the record, on the slow path first
        }
        match obj.cached.read_cached(offset, size as usize) {
            Ok(buf) => {
                // The last block may have come in by read-ahead: checksum from here too.
                hash_when_complete(&self.services, &self.node, obj, false);
                Some(Ok(buf))
            }
            Err(_) => None, // a block failed verification: take the slow path, which refetches
        }
    }

    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = self.file().ok_or(FsError::IsDir)?;
        check_content(f)?;
        let res = self.services.reader.read(&self.obj, &self.seq, offset, size).await;
        let buf = match res {
            Ok(buf) => buf,
            Err(reader::ReadError::Store(err)) => {
                let path = format!("{} (read at {offset})", self.services.mount_path(&self.node));
                return Err(failed(&self.services, path, f, err).await);
            }
            Err(e) => {
                tracing::error!("{}: read at {offset} failed: {e}", self.services.mount_path(&self.node));
                return Err(e.into());
            }
        };
        if self.obj.cached.is_complete() {
            check_expected(&self.services, &self.node, f, &self.obj).await?;
        }
        hash_when_complete(&self.services, &self.node, &self.obj, false);
        Ok(buf)
    }

    fn release(&self) {
        // The last block may still be on its way to the cache (the reader was answered from
        // the fetched bytes): checksum the file once it lands.
        hash_when_complete(&self.services, &self.node, &self.obj, true);
    }
}

/// Tells the sink why a file cannot be read and turns the cause into the caller's error.
async fn failed(services: &InputServices, path: String, f: &FileNode, err: crate::store::StoreError) -> FsError {
    let event = FsEvent::InputFailed {
        path,
        datum: f.entry.datum.clone(),
        not_found: matches!(err, crate::store::StoreError::NotFound { .. }),
        error: err.to_string(),
    };
    services.events.event(event).await;
    FsError::from(err)
}

/// Records a mismatch once (the sink logs it); reads fail from then on.
async fn mismatch(services: &InputServices, node: &Node, f: &FileNode, expected: &str, actual: &str) {
    if !f.mismatch.swap(true, Ordering::AcqRel) {
        let event = FsEvent::InputMismatch {
            path: services.mount_path(node),
            uri: f.entry.uri.clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        };
        services.events.event(event).await;
    }
}

/// For files whose sha256 is known up front (datums): once every byte is cached, checks them
/// before any more are served, so that the read completing the file fails with EIO rather than
/// the job silently getting other bytes than the record promised.
async fn check_expected(services: &InputServices, node: &Node, f: &FileNode, obj: &Arc<OpenObject>) -> FsResult<()> {
    let Some(want) = f.entry.expected.as_ref().map(|c| &c.sha256) else { return Ok(()) };
    if f.checksums.get().is_some() {
        return check_content(f);
    }
    let sums = obj.cached.checksums().await?;
    if sums.sha256 != *want {
        mismatch(services, node, f, want, &sums.sha256).await;
        return check_content(f);
    }
    let _ = f.checksums.set(sums);
    services.changed();
    Ok(())
}

/// Once a file is wholly cached, computes its checksums (once) and tells the sink. With `wait`,
/// a file whose missing blocks are all being fetched is checksummed once they are in (nothing
/// is done if a fetch fails; a later read tries again).
fn hash_when_complete(services: &Arc<InputServices>, node: &Arc<Node>, obj: &Arc<OpenObject>, wait: bool) {
    let NodeKind::File(f) = &node.kind else { return };
    // A plain load first: this runs on every cached read, and the swap writes a shared line.
    if f.hashing.load(Ordering::Acquire) {
        return;
    }
    let complete = obj.cached.is_complete();
    if !(complete || wait && obj.cached.is_filling()) || f.hashing.swap(true, Ordering::AcqRel) {
        return;
    }
    let cached = obj.cached.clone();
    let node = node.clone();
    let services = services.clone();
    let version = obj.remote.pin.version();
    services.runtime.clone().spawn(async move {
        let NodeKind::File(f) = &node.kind else { return };
        if !complete && !cached.wait_complete().await {
            f.hashing.store(false, Ordering::Release);
            return;
        }
        let path = services.mount_path(&node);
        match cached.checksums().await {
            Ok(sums) => {
                if let Some(want) = f.entry.expected.as_ref().map(|c| &c.sha256) {
                    if *want != sums.sha256 {
                        mismatch(&services, &node, f, want, &sums.sha256).await;
                    }
                }
                let _ = f.checksums.set(sums.clone());
                services.changed();
                let file = HashedFile { path, uri: f.entry.uri.clone(), size: f.entry.size, version, checksums: sums };
                services.events.event(FsEvent::InputChecksummed(file)).await;
            }
            Err(e) => {
                tracing::warn!("{path}: could not compute checksums: {e}");
                f.hashing.store(false, Ordering::Release);
            }
        }
    });
}
