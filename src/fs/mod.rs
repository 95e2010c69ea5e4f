//! Filesystem logic without fuser types: inodes, handles, the namespace (`inputs/`, `outputs/`,
//! `config/`), the virtual `inputs.json`, xattrs. The FUSE adapter only translates to and from
//! these calls; tests can drive them without a kernel.

pub mod error;
mod inputs_json;
mod outputs_ops;
pub mod tree;
mod warm;

pub use warm::{warm_uri, WarmReport, WarmUri};

use crate::cache::{Cache, PinRecord};
use crate::checksum::Checksums;
use crate::inputs::integrity::{self, IntegrityRecord};
use crate::inputs::resolve;
use crate::outputs::Staging;
use crate::reader::{self, OpenObject, Pin, Reader, Remote, Sequential};
use crate::store::data::DataStore;
pub use error::FsError;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tree::{FileNode, Node, NodeKind, Tree};

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (outputs only).
    Symlink,
}

/// Attributes of an inode, in the filesystem's own terms.
#[derive(Debug, Clone)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u16,
    /// Modification time.
    pub mtime: SystemTime,
    /// Access and change times, where they differ from `mtime` (outputs).
    pub times: Option<(SystemTime, SystemTime)>,
    /// Link count, where it is not the usual one (outputs).
    pub nlink: Option<u32>,
    /// Whether the kernel may cache it for long (immutable inputs) or must ask again.
    pub volatile: bool,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Name.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
}

/// How an opened file should be treated by the kernel.
#[derive(Debug)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// Bypass the page cache (virtual files whose content is made at open).
    pub direct_io: bool,
    /// Keep cached pages across opens (immutable inputs).
    pub keep_cache: bool,
    /// The verified cache file, when the kernel may read it directly (FUSE passthrough).
    pub backing: Option<std::fs::File>,
    /// Closing it needs no word to us (read-only inputs): one round trip less per file.
    pub no_flush: bool,
}

enum Handle {
    Input {
        node: Arc<Node>,
        obj: Arc<OpenObject>,
        seq: Mutex<Sequential>,
    },
    Virtual(Vec<u8>),
    Dir(Vec<DirEntry>),
    /// An open output file and its staging identity (st_ino).
    Output(std::fs::File, u64),
}

/// Settings the filesystem needs from the mount.
#[derive(Debug, Clone)]
pub struct FsSettings {
    /// Where it is mounted (for paths in logs and `inputs.json`).
    pub mountpoint: PathBuf,
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// The daemon's control socket, offered as the root's `user.datumfs.control` xattr so that
    /// `datumfs status|unmount MOUNTPOINT` find the daemon from the mountpoint alone.
    pub control_socket: PathBuf,
}

/// A file whose checksums are known, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HashedFile {
    /// Path on the mount.
    pub path: String,
    /// Its URI.
    pub uri: String,
    /// Its size.
    pub size: u64,
    /// Its checksums.
    pub checksums: Checksums,
}

/// Summary of one input for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputSummary {
    /// Its name.
    pub name: String,
    /// Its URIs.
    pub uris: Vec<String>,
    /// The datums it resolved to (`datum://` URIs).
    pub datums: Vec<String>,
    /// The dataset versions it resolved to.
    pub datasets: Vec<String>,
}

/// Attributes of a file made when read (`inputs.json`): never cached by the kernel.
fn made_file_attr(ino: u64, size: u64) -> Attr {
    Attr {
        ino,
        size,
        kind: Kind::File,
        perm: FILE_PERM,
        mtime: SystemTime::now(),
        times: None,
        nlink: None,
        volatile: true,
    }
}

/// The mounted filesystem.
pub struct Fs {
    tree: Tree,
    cache: Arc<Cache>,
    reader: Arc<Reader>,
    data_store: Option<DataStore>,
    settings: FsSettings,
    inputs: Vec<InputSummary>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    hashed: Arc<Mutex<BTreeMap<String, HashedFile>>>,
    runtime: tokio::runtime::Handle,
    staging: Option<Arc<Staging>>,
    /// Listings started ahead of a directory walk, at most this many at once.
    listing_ahead: Arc<tokio::sync::Semaphore>,
}

/// How many not-yet-listed siblings after a directory being opened are listed ahead of a walk
/// (`ls -R`, `find`, `os.walk` open siblings in order), and how many such listings run at once.
const LIST_AHEAD_SIBLINGS: usize = 4;

/// Fails when a file's bytes were found to differ from the checksum its record promised.
fn check_content(f: &FileNode) -> FsResult<()> {
    if f.mismatch.load(Ordering::Acquire) {
        return Err(FsError::Io(format!("{}: content does not match its recorded sha256", f.entry.uri)));
    }
    Ok(())
}

/// The root's xattr naming the control socket.
pub const CONTROL_XATTR: &str = "user.datumfs.control";

const FILE_PERM: u16 = 0o444;
const DIR_PERM: u16 = 0o555;

impl Fs {
    /// A filesystem over resolved inputs. Must be called inside a tokio runtime.
    pub fn new(
        inputs: Vec<resolve::ResolvedInput>,
        cache: Arc<Cache>,
        reader: Arc<Reader>,
        data_store: Option<DataStore>,
        settings: FsSettings,
        staging: Option<Arc<Staging>>,
    ) -> Self {
        let summaries = inputs
            .iter()
            .map(|i| InputSummary {
                name: i.name.clone(),
                uris: i.uris.clone(),
                datums: match &i.root {
                    resolve::InputRoot::Files(files) => {
                        files.iter().filter(|(_, e)| !e.in_dataset).filter_map(|(_, e)| e.datum.clone()).collect()
                    }
                    resolve::InputRoot::Lazy { .. } => Vec::new(),
                },
                datasets: i.datasets.clone(),
            })
            .collect();
        let tree = Tree::default();
        tree.build(inputs);
        Self {
            tree,
            cache,
            reader,
            data_store,
            settings,
            inputs: summaries,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
            hashed: Arc::new(Mutex::new(BTreeMap::new())),
            runtime: tokio::runtime::Handle::current(),
            listing_ahead: Arc::new(tokio::sync::Semaphore::new(LIST_AHEAD_SIBLINGS)),
            staging,
        }
    }

    /// The staging area when `ino` is in `outputs/`.
    fn out(&self, ino: u64) -> Option<&Staging> {
        self.staging.as_deref().filter(|s| s.owns(ino))
    }

    /// Each input as an execution record shows it: URIs, datums, and the files read whole.
    pub fn lineage_inputs(&self) -> Vec<crate::catalog::ExecutionInput> {
        let hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        self.inputs
            .iter()
            .map(|i| {
                let prefix = self.settings.mountpoint.join("inputs").join(&i.name);
                let files_read = hashed
                    .values()
                    .filter(|f| std::path::Path::new(&f.path).starts_with(&prefix))
                    .map(|f| crate::catalog::FileRead {
                        uri: f.uri.clone(),
                        size: f.size,
                        checksums: f.checksums.clone(),
                    })
                    .collect();
                crate::catalog::ExecutionInput {
                    name: i.name.clone(),
                    uris: i.uris.clone(),
                    datums: i.datums.clone(),
                    datasets: i.datasets.clone(),
                    files_read,
                }
            })
            .collect()
    }

    /// The tokio runtime the filesystem's work runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        self.tree.get(ino).ok_or(FsError::NotFound)
    }

    /// The entries of a directory, listing it in the store the first time.
    async fn children<'a>(&self, node: &'a Node) -> FsResult<&'a BTreeMap<String, u64>> {
        let NodeKind::Dir { children, lister } = &node.kind else { return Err(FsError::NotDir) };
        children
            .get_or_try_init(|| async {
                let Some(l) = lister else { return Ok(BTreeMap::new()) };
                let listing = resolve::list_dir(&l.store, l.prefix.as_ref()).await.map_err(|e| {
                    tracing::error!("listing {} failed: {e}", node.path);
                    FsError::from(e)
                })?;
                Ok(self.tree.add_listing(node.ino, &node.path, listing, &l.store))
            })
            .await
    }

    fn attr_now(&self, node: &Node) -> Option<Attr> {
        let ino = node.ino;
        Some(match &node.kind {
            NodeKind::Dir { .. } => Attr {
                ino,
                size: 0,
                kind: Kind::Dir,
                perm: DIR_PERM,
                mtime: self.started,
                times: None,
                nlink: None,
                volatile: false,
            },
            NodeKind::File(f) => Attr {
                ino,
                size: f.entry.size,
                kind: Kind::File,
                perm: FILE_PERM,
                mtime: f.entry.mtime,
                times: None,
                nlink: None,
                volatile: false,
            },
            NodeKind::InputsJson => return None,
        })
    }

    fn loaded_children<'a>(&self, node: &'a Node) -> Option<FsResult<&'a BTreeMap<String, u64>>> {
        match &node.kind {
            NodeKind::Dir { children, .. } => children.get().map(Ok),
            _ => Some(Err(FsError::NotDir)),
        }
    }

    /// Attributes of `ino` when they need no I/O (`None`: call [`Fs::getattr`]).
    pub fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        if let Some(st) = self.out(ino) {
            return Some(self.out_getattr(st, ino));
        }
        match self.node(ino) {
            Ok(node) => self.attr_now(&node).map(Ok),
            Err(e) => Some(Err(e)),
        }
    }

    /// Attributes of `ino` for a directory listing with attributes (readdirplus), at once: a
    /// file whose size is only known once made (`inputs.json`) gets a volatile placeholder, which
    /// the kernel replaces with a getattr before it is used.
    pub fn listing_attr(&self, ino: u64) -> FsResult<Attr> {
        self.try_getattr(ino).unwrap_or_else(|| Ok(made_file_attr(ino, 0)))
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(res) = self.try_getattr(ino) {
            return res;
        }
        let size = self.inputs_json().await.len() as u64;
        Ok(made_file_attr(ino, size))
    }

    /// Looks `name` up when its directory is already listed (`None`: call [`Fs::lookup`]).
    pub fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        if let Some(st) = self.out(parent) {
            return Some(self.out_lookup(st, parent, name));
        }
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

    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if let Some(res) = self.try_lookup(parent, name) {
            return res;
        }
        let node = self.node(parent)?;
        let ino = *self.children(&node).await?.get(name).ok_or(FsError::NotFound)?;
        self.getattr(ino).await
    }

    fn dir_handle(&self, node: &Node, children: &BTreeMap<String, u64>) -> u64 {
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push(DirEntry { ino: node.ino, name: ".".into(), kind: Kind::Dir });
        entries.push(DirEntry { ino: node.parent, name: "..".into(), kind: Kind::Dir });
        for (name, &child) in children {
            let kind = match self.tree.get(child).map(|n| matches!(n.kind, NodeKind::Dir { .. })) {
                Some(true) => Kind::Dir,
                _ => Kind::File,
            };
            entries.push(DirEntry { ino: child, name: name.clone(), kind });
        }
        self.add_handle(Handle::Dir(entries))
    }

    /// Opens a directory that is already listed (`None`: call [`Fs::opendir`]).
    pub fn try_opendir(&self, ino: u64) -> Option<FsResult<u64>> {
        if let Some(st) = self.out(ino) {
            return Some(self.out_opendir(st, ino));
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        Some(self.loaded_children(&node)?.map(|c| self.dir_handle(&node, c)))
    }

    /// Opens a directory: its entries are fixed for the handle's life.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        if let Some(res) = self.try_opendir(ino) {
            return res;
        }
        let node = self.node(ino)?;
        let children = self.children(&node).await?;
        Ok(self.dir_handle(&node, children))
    }

    /// A walk opening a subdirectory will open its next siblings soon: starts listing the next
    /// few that are not listed yet, in the background, so a cold `ls -R` or `find` waits for
    /// several listings at once rather than one after another. Only siblings of a directory
    /// actually opened are listed, so a plain `ls` of a huge prefix lists nothing extra.
    pub fn list_ahead(self: &Arc<Self>, ino: u64) {
        let Ok(node) = self.node(ino) else { return };
        if !matches!(node.kind, NodeKind::Dir { .. }) || node.parent == ino || self.out(ino).is_some() {
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
            let (fs, permits) = (self.clone(), self.listing_ahead.clone());
            self.runtime.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                // A failure is logged and left for the walk's own open, which tries again.
                let _ = fs.children(&sibling).await;
            });
        }
    }

    /// Entries of an open directory from `offset` on (the caller stops when its buffer is full).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        match &*self.handle(fh)? {
            Handle::Dir(entries) => {
                Ok(entries.iter().enumerate().skip(offset as usize).map(|(i, e)| (i as u64 + 1, e.clone())).collect())
            }
            _ => Err(FsError::NotDir),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: u64) {
        let h = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh);
        if let Some(Handle::Input { node, obj, .. }) = h.as_deref() {
            if let NodeKind::File(f) = &node.kind {
                // The last block may still be on its way to the cache (the reader was answered
                // from the fetched bytes): checksum the file once it lands.
                self.hash_when_complete(node, f, obj, true);
            }
        }
    }

    /// Whether `ino` may be changed: only `outputs/` and what is in it; inputs and config are
    /// read-only.
    pub fn check_writable(&self, ino: u64) -> FsResult<()> {
        if self.out(ino).is_some() {
            return Ok(());
        }
        self.node(ino)?;
        Err(FsError::ReadOnly)
    }

    /// Opens a file for reading; an input's version is pinned here if its listing had no ETag.
    /// With `passthrough`, a wholly cached file comes back with its verified cache file, which
    /// the kernel can then read directly at local-disk speed.
    pub async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<Opened> {
        if let Some(st) = self.out(ino) {
            return self.out_open(st, ino, flags);
        }
        let write = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let node = self.node(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        match &node.kind {
            NodeKind::Dir { .. } => Err(FsError::IsDir),
            NodeKind::InputsJson => {
                let content = self.inputs_json().await;
                Ok(Opened {
                    fh: self.add_handle(Handle::Virtual(content)),
                    direct_io: true,
                    keep_cache: false,
                    backing: None,
                    no_flush: true,
                })
            }
            NodeKind::File(f) => {
                check_content(f)?;
                let obj = self.open_object(&node, f).await?;
                self.after_read(&node, f, &obj);
                let complete = obj.cached.is_complete();
                if complete {
                    self.check_expected(&node, f, &obj).await?;
                }
                // A packed file is never handed over whole (its pack holds other objects): its one
                // block is checked by the first read instead.
                let backing = if passthrough && complete && !obj.cached.is_packed() {
                    let cached = obj.cached.clone();
                    match tokio::task::spawn_blocking(move || cached.verify_all().map(|_| cached.verified_data_file()))
                        .await
                    {
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
                let fh =
                    self.add_handle(Handle::Input { node: node.clone(), obj, seq: Mutex::new(Sequential::default()) });
                // Until a file is cached whole its bytes already sit in the cache file's pages:
                // direct I/O keeps the kernel from holding a second copy (and our read-ahead does
                // the prefetching). Whole files go through passthrough, or the page cache.
                let direct_io = backing.is_none() && !complete;
                Ok(Opened { fh, direct_io, keep_cache: !direct_io, backing, no_flush: true })
            }
        }
    }

    /// Logs why a file cannot be read; a datum whose bytes are gone because it was purged
    /// after the mount started is named with its purge (who, when, why).
    async fn log_failure(&self, node: &Node, f: &FileNode, err: &crate::store::StoreError) {
        let path = self.mount_path(node);
        let purge = match (&f.entry.datum, &self.data_store, err) {
            (Some(id), Some(ds), crate::store::StoreError::NotFound { .. }) => {
                crate::catalog::Catalog::new(ds.clone()).tombstone(id).await.ok().flatten()
            }
            _ => None,
        };
        match purge {
            Some(t) => tracing::error!("{path}: {}", t.describe()),
            None => tracing::error!("{path}: {err}"),
        }
    }

    async fn open_object(&self, node: &Node, f: &FileNode) -> FsResult<Arc<OpenObject>> {
        if let Some(obj) = f.open.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
            return Ok(obj);
        }
        let e = &f.entry;
        let pin = f
            .pin
            .get_or_try_init(|| async {
                let listed = chrono::DateTime::<chrono::Utc>::from(e.mtime).to_rfc3339();
                if let Some(rec) = self.cache.recall_version(&e.store.url, e.key.as_ref(), e.size, &listed) {
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&rec.last_modified) {
                        return Ok(Pin { etag: rec.etag, last_modified: t.with_timezone(&chrono::Utc) });
                    }
                }
                let pin = reader::pin_by_head(&e.store, &e.key, &e.uri, e.size).await?;
                let rec = PinRecord { etag: pin.etag.clone(), last_modified: pin.last_modified.to_rfc3339() };
                self.cache.remember_version(&e.store.url, e.key.as_ref(), e.size, &listed, &rec);
                Ok::<Pin, crate::store::StoreError>(pin)
            })
            .await;
        let pin = match pin {
            Ok(p) => p.clone(),
            Err(err) => {
                self.log_failure(node, f, &err).await;
                return Err(FsError::from(err));
            }
        };
        let cached = self
            .cache
            .object(&e.store.url, e.key.as_ref(), &pin.version(), e.size, &e.uri)
            .map_err(|err| FsError::Io(err.to_string()))?;
        let remote =
            Arc::new(Remote { store: e.store.clone(), key: e.key.clone(), uri: e.uri.clone(), size: e.size, pin });
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

    /// Serves a read without leaving the calling thread when every byte is already cached.
    pub fn read_cached(&self, fh: u64, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        let h = self.handle(fh).ok()?;
        match &*h {
            Handle::Virtual(content) => {
                let start = (offset as usize).min(content.len());
                let end = (start + size as usize).min(content.len());
                Some(Ok(content[start..end].to_vec()))
            }
            Handle::Output(file, _) => Some(outputs_ops::pread(file, offset, size)),
            Handle::Input { node, obj, .. } => {
                let file = match &node.kind {
                    NodeKind::File(f) => Some(f),
                    _ => None,
                };
                if let Some(Err(e)) = file.map(|f| check_content(f)) {
                    return Some(Err(e));
                }
                // At or past the end (every sequential reader's last call): nothing to fetch.
                if offset >= obj.cached.size() {
                    return Some(Ok(Vec::new()));
                }
                if !obj.cached.is_complete()
                    || file.is_some_and(|f| f.entry.expected.is_some() && f.checksums.get().is_none())
                {
                    return None; // fetched, or verified against the record, on the slow path first
                }
                match obj.cached.read_cached(offset, size as usize) {
                    Ok(buf) => {
                        // The last block may have come in by read-ahead: checksum from here too.
                        if let Some(f) = file {
                            self.after_read(node, f, obj);
                        }
                        Some(Ok(buf))
                    }
                    Err(_) => None, // a block failed verification: take the slow path, which refetches
                }
            }
            Handle::Dir(_) => None,
        }
    }

    /// Reads from an open file, fetching what is missing.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        match &*h {
            Handle::Input { node, obj, seq } => {
                if let NodeKind::File(f) = &node.kind {
                    check_content(f)?;
                }
                let res = self.reader.read(obj, seq, offset, size).await;
                if let Err(e) = &res {
                    tracing::error!("{}: read at {offset} failed: {e}", self.mount_path(node));
                    if let (NodeKind::File(f), reader::ReadError::Store(err)) = (&node.kind, e) {
                        self.log_failure(node, f, err).await;
                    }
                }
                let buf = res?;
                if let NodeKind::File(f) = &node.kind {
                    if obj.cached.is_complete() {
                        self.check_expected(node, f, obj).await?;
                    }
                    self.after_read(node, f, obj);
                }
                Ok(buf)
            }
            Handle::Virtual(_) | Handle::Output(..) => self.read_cached(fh, offset, size).unwrap_or(Ok(Vec::new())),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// For files whose sha256 is known up front (datums): once every byte is cached, checks
    /// them before any more are served, so that the read completing the file fails with EIO
    /// rather than the job silently getting other bytes than the record promised.
    async fn check_expected(&self, node: &Node, f: &FileNode, obj: &Arc<OpenObject>) -> FsResult<()> {
        let Some(want) = f.entry.expected.as_ref().map(|c| &c.sha256) else { return Ok(()) };
        if f.checksums.get().is_some() {
            return check_content(f);
        }
        let sums = obj.cached.checksums().await.map_err(|e| FsError::Io(e.to_string()))?;
        if sums.sha256 != *want {
            if !f.mismatch.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    "{}: {} has sha256 {} but its record says {want}: reads fail with EIO",
                    self.mount_path(node),
                    f.entry.uri,
                    sums.sha256
                );
            }
            return check_content(f);
        }
        let _ = f.checksums.set(sums);
        Ok(())
    }

    fn mount_path(&self, node: &Node) -> String {
        self.settings.mountpoint.join(&node.path).display().to_string()
    }

    /// Once a file is wholly cached, computes its checksums (once), logs them as Valohai does,
    /// and records them in the data store's integrity history.
    fn after_read(&self, node: &Arc<Node>, f: &FileNode, obj: &Arc<OpenObject>) {
        self.hash_when_complete(node, f, obj, false)
    }

    /// As `after_read`; with `wait`, a file whose missing blocks are all being fetched is
    /// checksummed once they are in (nothing is done if a fetch fails; a later read tries again).
    fn hash_when_complete(&self, node: &Arc<Node>, f: &FileNode, obj: &Arc<OpenObject>, wait: bool) {
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
        let path = self.mount_path(&node);
        let ds = self.data_store.clone();
        let version = obj.remote.pin.version();
        let hashed = self.hashed.clone();
        self.runtime.spawn(async move {
            let NodeKind::File(f) = &node.kind else { return };
            if !complete && !cached.wait_complete().await {
                f.hashing.store(false, Ordering::Release);
                return;
            }
            match cached.checksums().await {
                Ok(sums) => {
                    tracing::info!("{path}: md5 sum: {}", sums.md5);
                    tracing::info!("{path}: sha1 sum: {}", sums.sha1);
                    tracing::info!("{path}: sha256 sum: {}", sums.sha256);
                    if let Some(want) = f.entry.expected.as_ref().map(|c| &c.sha256) {
                        if *want != sums.sha256 && !f.mismatch.swap(true, Ordering::AcqRel) {
                            tracing::error!(
                                "{path}: {} has sha256 {} but its record says {want}: reads fail with EIO",
                                f.entry.uri,
                                sums.sha256
                            );
                        }
                    }
                    let _ = f.checksums.set(sums.clone());
                    let file = HashedFile {
                        path: path.clone(),
                        uri: f.entry.uri.clone(),
                        size: f.entry.size,
                        checksums: sums.clone(),
                    };
                    hashed.lock().unwrap_or_else(|e| e.into_inner()).insert(path.clone(), file);
                    if let Some(ds) = ds {
                        let rec = IntegrityRecord {
                            uri: f.entry.uri.clone(),
                            size: f.entry.size,
                            version,
                            checksums: sums,
                            recorded_at: chrono::Utc::now().to_rfc3339(),
                            host: integrity::hostname(),
                        };
                        match integrity::record(&ds, &rec).await {
                            Ok(Some(warning)) => tracing::warn!("{warning}"),
                            Ok(None) => {}
                            Err(e) => tracing::warn!("could not record the checksums of {}: {e}", rec.uri),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("{path}: could not compute checksums: {e}");
                    f.hashing.store(false, Ordering::Release);
                }
            }
        });
    }

    /// Extended attributes that need no I/O (`None`: call [`Fs::getxattr`]). Everything but our
    /// own names answers "no such attribute" at once: `ls -l` asks for ACLs and labels per file.
    pub fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        if self.out(ino).is_some() {
            return Some(Err(if name.starts_with("user.") { FsError::NoAttr } else { FsError::NotSupported }));
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if ino == tree::ROOT && name == CONTROL_XATTR {
            return Some(Ok(self.settings.control_socket.as_os_str().as_encoded_bytes().to_vec()));
        }
        if !name.starts_with("user.") {
            return Some(Err(FsError::NotSupported));
        }
        let NodeKind::File(f) = &node.kind else { return Some(Err(FsError::NoAttr)) };
        let pick = |sums: &Checksums| -> Vec<u8> {
            match name {
                "user.datumfs.md5" => sums.md5.clone().into_bytes(),
                "user.datumfs.sha1" => sums.sha1.clone().into_bytes(),
                _ => sums.sha256.clone().into_bytes(),
            }
        };
        Some(match name {
            "user.datumfs.uri" => Ok(f.entry.uri.clone().into_bytes()),
            "user.datumfs.version" => f.pin.get().map(|p| p.version().into_bytes()).ok_or(FsError::NoAttr),
            "user.datumfs.md5" | "user.datumfs.sha1" | "user.datumfs.sha256" => match f.checksums.get() {
                Some(sums) => Ok(pick(sums)),
                None if f.pin.get().is_none() => Err(FsError::NoAttr),
                None => return None,
            },
            _ => Err(FsError::NoAttr),
        })
    }

    /// Extended attributes: `user.datumfs.{md5,sha1,sha256}` once a file was read whole (they are
    /// computed on demand if it is cached whole), `user.datumfs.uri` and `user.datumfs.version`.
    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        if let Some(res) = self.try_getxattr(ino, name) {
            return res;
        }
        let node = self.node(ino)?;
        let NodeKind::File(f) = &node.kind else { return Err(FsError::NoAttr) };
        let Some(pin) = f.pin.get() else { return Err(FsError::NoAttr) };
        let e = &f.entry;
        let cached = self
            .cache
            .existing_object(&e.store.url, e.key.as_ref(), &pin.version(), e.size, &e.uri)
            .filter(|c| c.is_complete())
            .ok_or(FsError::NoAttr)?;
        let sums = cached.checksums().await.map_err(|err| FsError::Io(err.to_string()))?;
        let v = match name {
            "user.datumfs.md5" => sums.md5,
            "user.datumfs.sha1" => sums.sha1,
            _ => sums.sha256,
        };
        Ok(v.into_bytes())
    }

    /// Names of the extended attributes of `ino`, NUL-separated.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if self.out(ino).is_some() {
            return Ok(Vec::new());
        }
        let node = self.node(ino)?;
        if ino == tree::ROOT {
            return Ok(format!("{CONTROL_XATTR}\0").into_bytes());
        }
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

    /// Everything `datumfs status --json` shows about this mount.
    pub fn status(&self) -> serde_json::Value {
        let stats = self.cache.stats();
        let (disk_bytes, objects) = self.cache.usage();
        let files: Vec<HashedFile> = self.hashed.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        serde_json::json!({
            "mountpoint": self.settings.mountpoint,
            "pid": std::process::id(),
            "started_at": chrono::DateTime::<chrono::Utc>::from(self.started).to_rfc3339(),
            "data_store": self.data_store.as_ref().map(|d| d.url.clone()),
            "inputs": self.inputs,
            "inodes": self.tree.len(),
            "cache": {
                "dir": self.cache.dir(),
                "disk_bytes": disk_bytes,
                "objects": objects,
                "hit_bytes": stats.hit_bytes.load(Ordering::Relaxed),
                "fetched_bytes": stats.fetched_bytes.load(Ordering::Relaxed),
                "corrupt_blocks": stats.corrupt_blocks.load(Ordering::Relaxed),
            },
            "files": files,
        })
    }

    /// Space figures for `statfs`: those of the filesystem holding the cache.
    pub fn statfs(&self) -> Option<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(self.cache.dir()).ok()
    }
}
