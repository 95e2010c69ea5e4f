//! Filesystem logic without fuser types: the dispatcher over the mount's namespaces, file and
//! directory handles, and the one errno mapping. The FUSE adapter only translates to and from
//! these calls; tests drive them without a kernel.
//!
//! The mount's root and `inputs/` are fixed directories owned here. Everything else belongs to
//! a [`Namespace`]: each input at `inputs/<name>/`, `outputs/`, `config/`. The dispatcher finds
//! the namespace an inode belongs to from the inode number alone (each has its own range) and
//! never branches on what kind of namespace it is.

pub mod config;
pub mod error;
pub mod events;
pub mod input;
pub mod namespace;
pub mod outputs;
pub mod tree;
pub mod volume;
mod warm;

pub use error::FsError;
pub use events::{EventSink, FsEvent, HashedFile};
pub use namespace::{Namespace, OpenFile, OpenedFile, SetAttr};
pub use warm::{warm_uri, WarmReport, WarmUri};

use crate::cache::Cache;
use crate::inputs::resolve::ResolvedInput;
use crate::outputs::{Caller, Staging, Writer};
use crate::reader::Reader;
use input::{InputNamespace, InputServices};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// Inode of the mount's root.
pub const ROOT: u64 = 1;
/// Inode of `inputs/`.
pub const INPUTS: u64 = 2;
/// Inode of `outputs/`; its contents are numbered by the staging area (from
/// [`crate::outputs::INO_BASE`] up).
pub const OUTPUTS: u64 = 3;
/// Inode of `config/` (its files follow it, up to [`VOLUMES`]).
pub const CONFIG: u64 = 4;
/// Inode of `volumes/` (there when the mount has volumes); the numbers between it and
/// [`CONFIG`] are kept for `config/`'s files.
pub const VOLUMES: u64 = 16;
/// The first input's top directory; each input owns `INPUT_SPAN` inodes from its top up.
const INPUT_BASE: u64 = 1 << 32;
/// Inodes per input: far more than any listing, and 65,536 inputs fit below the outputs' range.
const INPUT_SPAN: u64 = 1 << 40;

/// File, directory or symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (outputs only).
    Symlink,
    /// A named pipe (outputs only).
    Fifo,
    /// A unix socket (outputs only).
    Socket,
    /// A character device (outputs only).
    CharDevice,
    /// A block device (outputs only).
    BlockDevice,
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
    /// The local filesystem's own fields, for a staged entry (outputs); others have the
    /// mount's owner, one link (two for a directory) and `mtime` for every time.
    pub staged: Option<StagedAttr>,
    /// How long the kernel may keep it.
    pub cache_for: CacheFor,
}

/// The fields of a staged entry that read-only entries do not have.
#[derive(Debug, Clone, Copy)]
pub struct StagedAttr {
    /// Access time.
    pub atime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
}

/// How long the kernel may keep an entry's attributes before asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFor {
    /// Long: immutable inputs and the mount's fixed directories.
    Long,
    /// A second, as a local filesystem behind FUSE would: outputs, which change only through
    /// the mount, so the kernel's own updates (size after a write, attributes after setattr,
    /// directories after create, rename and unlink) keep its copy right. Without it every
    /// path walk asks for each directory's attributes again: a file copied into outputs cost
    /// seven GETATTRs.
    Short,
    /// Not at all: files whose contents are made on demand (`config/inputs.json`).
    Never,
}

impl Attr {
    /// A read-only directory of the mount, made at `mtime`, whose attributes never change.
    fn read_only_dir(ino: u64, mtime: SystemTime) -> Self {
        Attr { ino, size: 0, kind: Kind::Dir, perm: DIR_PERM, mtime, staged: None, cache_for: CacheFor::Long }
    }

    /// What a name found absent is answered with (inode 0), kept by the kernel for `cache_for`.
    pub fn absent(cache_for: CacheFor) -> Self {
        Attr { cache_for, ..Self::read_only_dir(0, SystemTime::UNIX_EPOCH) }
    }
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
    /// A local file the kernel may use directly (FUSE passthrough): a verified cache file, or
    /// a staging file (read and written).
    pub backing: Option<std::fs::File>,
    /// Closing it needs no word to us (read-only inputs): one round trip less per file.
    pub no_flush: bool,
}

enum Handle {
    Dir(Vec<DirEntry>),
    File(Arc<dyn OpenFile>),
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

/// Summary of one input for `status` and the execution record.
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
        staged: None,
        cache_for: CacheFor::Never,
    }
}

/// The root's xattr naming the control socket.
pub const CONTROL_XATTR: &str = "user.datumfs.control";

const FILE_PERM: u16 = 0o444;
const DIR_PERM: u16 = 0o555;

/// What an inode belongs to.
enum Owner<'a> {
    /// The root, `inputs/` or `volumes/`, fixed directories of the dispatcher.
    Fixed,
    /// A namespace.
    Ns(&'a Arc<dyn Namespace>),
}

/// The mounted filesystem: a dispatcher over its namespaces.
pub struct Fs {
    settings: FsSettings,
    /// Bytes read through this mount, for the metrics.
    served: crate::metrics::ServedBytes,
    services: Arc<InputServices>,
    data_store: Option<String>,
    inputs: Vec<Arc<InputNamespace>>,
    /// Every input's namespace, in input order, then every volume's (inode ranges follow it).
    input_ns: Vec<Arc<dyn Namespace>>,
    /// The volumes, in order, by name (read-only ones are input namespaces).
    volumes: Vec<(String, Arc<dyn Namespace>)>,
    /// The writable volumes.
    writable: Vec<Arc<volume::VolumeNamespace>>,
    /// Each volume's bucket side, in order (what `warm` fills the cache from).
    volume_bases: Vec<Arc<InputNamespace>>,
    outputs: Arc<dyn Namespace>,
    config: Arc<dyn Namespace>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

/// What the filesystem is made of.
pub struct FsParts {
    /// The resolved inputs.
    pub inputs: Vec<ResolvedInput>,
    /// The volumes, each resolved as an input, with its state on the node when writable.
    pub volumes: Vec<VolumePart>,
    /// The block cache.
    pub cache: Arc<Cache>,
    /// The read path.
    pub reader: Arc<Reader>,
    /// The data store's URL, for `status`.
    pub data_store: Option<String>,
    /// The outputs' staging area.
    pub staging: Arc<Staging>,
    /// Where events go.
    pub events: Arc<dyn EventSink>,
    /// The job's parameters, shown as `config/parameters.json` (`None`: no such file).
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One volume of the mount.
pub struct VolumePart {
    /// What was asked.
    pub spec: crate::volumes::VolumeSpec,
    /// Its bucket side.
    pub resolved: ResolvedInput,
    /// What a writable one keeps on the node (`None` for `ro`).
    pub state: Option<Arc<crate::volumes::state::VolumeState>>,
}

impl Fs {
    /// A filesystem over resolved inputs. Must be called inside a tokio runtime. Fails when a
    /// writable volume's staged tree cannot be opened.
    pub fn new(parts: FsParts, settings: FsSettings) -> std::io::Result<Self> {
        let services = InputServices::new(parts.cache, parts.reader, parts.events, settings.mountpoint.clone());
        let inputs: Vec<Arc<InputNamespace>> = parts
            .inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| InputNamespace::new(INPUT_BASE + i as u64 * INPUT_SPAN, INPUTS, input, services.clone()))
            .collect();
        let mut input_ns: Vec<Arc<dyn Namespace>> = inputs.iter().map(|i| i.clone() as Arc<dyn Namespace>).collect();
        let (mut volumes, mut writable, mut volume_bases) = (Vec::new(), Vec::new(), Vec::new());
        for part in parts.volumes {
            let top = INPUT_BASE + input_ns.len() as u64 * INPUT_SPAN;
            let name = part.spec.name.clone();
            let ns: Arc<dyn Namespace> = match part.state {
                None => {
                    let ns = InputNamespace::new(top, VOLUMES, part.resolved, services.clone());
                    volume_bases.push(ns.clone());
                    ns
                }
                Some(state) => {
                    // The staged tree numbers its entries in the lower half of the volume's
                    // range; its bucket side, never served by itself, the upper half.
                    let half = INPUT_SPAN / 2;
                    let base = InputNamespace::new(top + half, VOLUMES, part.resolved, services.clone());
                    volume_bases.push(base.clone());
                    let staging = Arc::new(Staging::open_numbered(state.dir(), top, top + 1..top + half)?);
                    let volume = Arc::new(volume::VolumeNamespace::new(part.spec, base, staging, state, top, VOLUMES));
                    writable.push(volume.clone());
                    volume
                }
            };
            input_ns.push(ns.clone());
            volumes.push((name, ns));
        }
        let config =
            Arc::new(config::ConfigNamespace::new(CONFIG, ROOT, inputs.clone(), services.clone(), parts.parameters));
        let outputs = Arc::new(outputs::OutputsNamespace::new(parts.staging, OUTPUTS, ROOT));
        Ok(Self {
            served: crate::metrics::ServedBytes::of(&settings.mountpoint),
            settings,
            services,
            data_store: parts.data_store,
            inputs,
            input_ns,
            volumes,
            writable,
            volume_bases,
            outputs,
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    /// The writable volumes.
    pub fn writable_volumes(&self) -> &[Arc<volume::VolumeNamespace>] {
        &self.writable
    }

    /// The inputs' names, URIs, datums and dataset versions.
    pub fn input_summaries(&self) -> Vec<InputSummary> {
        self.inputs.iter().map(|i| i.summary().clone()).collect()
    }

    /// Waits until every input file read whole so far has its checksums and its read is
    /// reported (at most a minute: a warning names how many are left out).
    pub async fn inputs_checksummed(&self) {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
        let left = self.services.checksums_settled(LIMIT).await;
        if left > 0 {
            tracing::warn!(
                "{left} input files were still being checksummed after {LIMIT:?}: their reads go unrecorded"
            );
        }
    }

    /// The tokio runtime the filesystem's work runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.services.runtime
    }

    fn owner(&self, ino: u64) -> FsResult<Owner<'_>> {
        match ino {
            ROOT | INPUTS | VOLUMES => return Ok(Owner::Fixed),
            OUTPUTS => return Ok(Owner::Ns(&self.outputs)),
            _ => {}
        }
        if let Some(i) = ino.checked_sub(INPUT_BASE).map(|d| d / INPUT_SPAN) {
            if let Some(ns) = usize::try_from(i).ok().and_then(|i| self.input_ns.get(i)) {
                if ns.owns(ino) {
                    return Ok(Owner::Ns(ns));
                }
            }
        }
        [&self.outputs, &self.config].into_iter().find(|ns| ns.owns(ino)).map(Owner::Ns).ok_or(FsError::NotFound)
    }

    fn ns(&self, ino: u64) -> FsResult<&Arc<dyn Namespace>> {
        match self.owner(ino)? {
            Owner::Ns(ns) => Ok(ns),
            Owner::Fixed => Err(FsError::ReadOnly),
        }
    }

    fn fixed_attr(&self, ino: u64) -> Attr {
        Attr::read_only_dir(ino, self.services.started)
    }

    /// The children of a fixed directory.
    fn fixed_entries(&self, ino: u64) -> Vec<DirEntry> {
        let dir = |ino, name: &str| DirEntry { ino, name: name.to_string(), kind: Kind::Dir };
        match ino {
            ROOT => {
                let mut top = vec![dir(INPUTS, "inputs"), dir(OUTPUTS, "outputs"), dir(CONFIG, "config")];
                if !self.volumes.is_empty() {
                    top.push(dir(VOLUMES, "volumes"));
                }
                top
            }
            VOLUMES => self.volumes.iter().map(|(name, v)| dir(v.top(), name)).collect(),
            _ => self.inputs.iter().map(|i| dir(i.top(), &i.summary().name)).collect(),
        }
    }

    /// Attributes of `ino` when they need no I/O (`None`: call [`Fs::getattr`]).
    pub fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        match self.owner(ino) {
            Ok(Owner::Fixed) => Some(Ok(self.fixed_attr(ino))),
            Ok(Owner::Ns(ns)) => ns.try_getattr(ino),
            Err(e) => Some(Err(e)),
        }
    }

    /// Attributes of `ino` asked through open handle `fh` (`fstat`): a staged file still open
    /// after its last name went has them only there (`None`: ask by inode).
    pub fn try_getattr_open(&self, ino: u64, fh: u64) -> Option<FsResult<Attr>> {
        let file = self.file(fh).ok()?;
        self.ns(ino).ok()?.getattr_open(ino, file.as_ref())
    }

    /// Attributes of `ino` for a directory listing with attributes (readdirplus), at once: a
    /// file whose size is only known once made (`inputs.json`) gets a volatile placeholder, which
    /// the kernel replaces with a getattr before it is used.
    pub fn listing_attr(&self, ino: u64) -> FsResult<Attr> {
        self.try_getattr(ino).unwrap_or_else(|| Ok(made_file_attr(ino, 0)))
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match self.owner(ino)? {
            Owner::Fixed => Ok(self.fixed_attr(ino)),
            Owner::Ns(ns) => ns.getattr(ino).await,
        }
    }

    /// Looks `name` up when that needs no I/O (`None`: call [`Fs::lookup`]).
    pub fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        match self.owner(parent) {
            Ok(Owner::Fixed) => Some(match self.fixed_entries(parent).into_iter().find(|e| e.name == name) {
                Some(e) => self.try_getattr(e.ino).unwrap_or(Err(FsError::NotFound)),
                None => Err(FsError::NotFound),
            }),
            Ok(Owner::Ns(ns)) => ns.try_lookup(parent, name),
            Err(e) => Some(Err(e)),
        }
    }

    /// How long the kernel may remember that a name in directory `parent` does not exist.
    pub fn absent_for(&self, parent: u64) -> CacheFor {
        match self.owner(parent) {
            Ok(Owner::Ns(ns)) => ns.absent_for(),
            _ => CacheFor::Never,
        }
    }

    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        match self.owner(parent)? {
            Owner::Fixed => match self.fixed_entries(parent).into_iter().find(|e| e.name == name) {
                Some(e) => self.getattr(e.ino).await,
                None => Err(FsError::NotFound),
            },
            Owner::Ns(ns) => ns.lookup(parent, name).await,
        }
    }

    fn dir_handle(&self, ino: u64, parent: u64, children: Vec<DirEntry>) -> u64 {
        let mut entries = Vec::with_capacity(children.len() + 2);
        entries.push(DirEntry { ino, name: ".".into(), kind: Kind::Dir });
        entries.push(DirEntry { ino: parent, name: "..".into(), kind: Kind::Dir });
        entries.extend(children);
        self.add_handle(Handle::Dir(entries))
    }

    /// Opens a directory when that needs no I/O (`None`: call [`Fs::opendir`]).
    pub fn try_opendir(&self, ino: u64) -> Option<FsResult<u64>> {
        match self.owner(ino) {
            Ok(Owner::Fixed) => Some(Ok(self.dir_handle(ino, ROOT, self.fixed_entries(ino)))),
            Ok(Owner::Ns(ns)) => Some(ns.try_readdir(ino)?.map(|(parent, c)| self.dir_handle(ino, parent, c))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Opens a directory: its entries are fixed for the handle's life.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        if let Some(res) = self.try_opendir(ino) {
            return res;
        }
        let (parent, children) = self.ns(ino)?.readdir(ino).await?;
        Ok(self.dir_handle(ino, parent, children))
    }

    /// A directory is being opened: its namespace may prepare what a walk asks for next.
    pub fn list_ahead(&self, ino: u64) {
        if let Ok(Owner::Ns(ns)) = self.owner(ino) {
            ns.list_ahead(ino);
        }
    }

    /// Entries of an open directory from `offset` on (the caller stops when its buffer is full).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let mut out = Vec::new();
        self.readdir_each(fh, offset, |next, e| {
            out.push((next, e.clone()));
            false
        })?;
        Ok(out)
    }

    /// Hands the entries of an open directory from `offset` on to `add`, each with the offset
    /// of the next, until `add` says the reply is full (true). Nothing is copied: a directory of
    /// thousands of entries is read a page at a time, and each page costs only its entries.
    pub fn readdir_each(&self, fh: u64, offset: u64, mut add: impl FnMut(u64, &DirEntry) -> bool) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::Dir(entries) => {
                for (i, e) in entries.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
                    if add(i as u64 + 1, e) {
                        break;
                    }
                }
                Ok(())
            }
            Handle::File(_) => Err(FsError::NotDir),
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

    fn file(&self, fh: u64) -> FsResult<Arc<dyn OpenFile>> {
        match &*self.handle(fh)? {
            Handle::File(f) => Ok(f.clone()),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: u64) {
        let h = self.handles.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh);
        if let Some(Handle::File(f)) = h.as_deref() {
            f.release();
        }
    }

    /// Whether entries may be made in or changed at `ino`.
    pub fn check_writable(&self, ino: u64) -> FsResult<()> {
        match self.ns(ino)?.writable() {
            true => Ok(()),
            false => Err(FsError::ReadOnly),
        }
    }

    fn opened(&self, o: OpenedFile) -> Opened {
        let fh = self.add_handle(Handle::File(o.file));
        Opened { fh, direct_io: o.direct_io, keep_cache: o.keep_cache, backing: o.backing, no_flush: o.no_flush }
    }

    /// Opens a file when that needs no I/O and no waiting (`None`: call [`Fs::open`]).
    pub fn try_open(&self, ino: u64, flags: i32, passthrough: bool) -> Option<FsResult<Opened>> {
        match self.owner(ino) {
            Ok(Owner::Fixed) => Some(Err(FsError::IsDir)),
            Ok(Owner::Ns(ns)) => Some(ns.try_open(ino, flags, passthrough)?.map(|o| self.opened(o))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Opens a file. With `passthrough`, a file with a verified local copy may come back with
    /// it, for the kernel to read directly.
    pub async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<Opened> {
        match self.owner(ino)? {
            Owner::Fixed => Err(FsError::IsDir),
            Owner::Ns(ns) => Ok(self.opened(ns.open(ino, flags, passthrough).await?)),
        }
    }

    /// Serves a read without leaving the calling thread when that needs no waiting on the
    /// network (`None`: call [`Fs::read`]).
    pub fn read_cached(&self, fh: u64, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        let res = self.file(fh).ok()?.try_read(offset, size)?;
        Some(self.count_read(res))
    }

    /// Reads from an open file, fetching what is missing (callers try [`Fs::read_cached`] first).
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let res = self.file(fh)?.read(offset, size).await;
        self.count_read(res)
    }

    fn count_read(&self, res: FsResult<Vec<u8>>) -> FsResult<Vec<u8>> {
        match &res {
            Ok(buf) => self.served.add(buf.len() as u64),
            Err(e) => crate::metrics::read_failed(e.cause_kind()),
        }
        res
    }

    /// Writes to an open file for `writer`; returns the bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], writer: Writer) -> FsResult<u32> {
        self.file(fh)?.write(offset, data, writer)
    }

    /// Flushes an open file to stable storage.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::File(f) => f.fsync(datasync),
            Handle::Dir(_) => Ok(()),
        }
    }

    /// Creates and opens a file, `caller`'s; with `passthrough`, a local file may come back for
    /// the kernel to read and write directly.
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
        caller: Caller,
        passthrough: bool,
    ) -> FsResult<(Attr, Opened)> {
        let (attr, o) = self.ns(parent)?.create(parent, name, mode, flags, caller, passthrough)?;
        Ok((attr, self.opened(o)))
    }

    /// Handle `fh` is answered through the kernel's passthrough: told before the kernel has it.
    pub fn passed_through(&self, fh: u64) {
        if let Ok(f) = self.file(fh) {
            f.passed_through();
        }
    }

    /// Changes mode, size or times of an entry.
    pub fn setattr(&self, ino: u64, change: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        let file = fh.and_then(|fh| self.file(fh).ok());
        self.ns(ino)?.setattr(ino, change, file.as_deref())
    }

    /// Creates a directory, `caller`'s.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<Attr> {
        self.ns(parent)?.mkdir(parent, name, mode, caller)
    }

    /// Removes a file.
    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.ns(parent)?.unlink(parent, name)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.ns(parent)?.rmdir(parent, name)
    }

    /// Renames within one namespace; nothing moves between namespaces (a read-only side is
    /// EROFS, two writable ones EXDEV, so `mv` copies).
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, flags: u32) -> FsResult<()> {
        let (from, to) = (self.ns(parent)?, self.ns(new_parent)?);
        if !Arc::ptr_eq(from, to) {
            return Err(if from.writable() && to.writable() { FsError::CrossDevice } else { FsError::ReadOnly });
        }
        from.rename(parent, name, new_parent, new_name, flags)
    }

    /// Creates a symbolic link, `caller`'s.
    pub fn symlink(&self, parent: u64, name: &str, target: &Path, caller: Caller) -> FsResult<Attr> {
        self.ns(parent)?.symlink(parent, name, target, caller)
    }

    /// Creates a FIFO, socket or device node, `caller`'s (`mode` carries the type).
    pub fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32, caller: Caller) -> FsResult<Attr> {
        self.ns(parent)?.mknod(parent, name, mode, rdev, caller)
    }

    /// Gives `ino` another name in the same namespace (a hard link).
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Attr> {
        let (from, to) = (self.ns(ino)?, self.ns(new_parent)?);
        if !Arc::ptr_eq(from, to) {
            return Err(if from.writable() && to.writable() { FsError::CrossDevice } else { FsError::ReadOnly });
        }
        to.link(ino, new_parent, new_name)
    }

    /// Sets an extended attribute (outputs keep theirs; elsewhere EROFS).
    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        self.ns(ino)?.setxattr(ino, name, value, flags)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        self.ns(ino)?.removexattr(ino, name)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.owner(ino)? {
            Owner::Fixed => Err(FsError::Os(libc::EINVAL)),
            Owner::Ns(ns) => ns.readlink(ino),
        }
    }

    /// Extended attributes that need no I/O (`None`: call [`Fs::getxattr`]).
    pub fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        match self.owner(ino) {
            Ok(Owner::Fixed) if ino == ROOT && name == CONTROL_XATTR => {
                Some(Ok(self.settings.control_socket.as_os_str().as_encoded_bytes().to_vec()))
            }
            Ok(Owner::Fixed) => {
                Some(Err(if name.starts_with("user.") { FsError::NoAttr } else { FsError::NotSupported }))
            }
            Ok(Owner::Ns(ns)) => ns.try_getxattr(ino, name),
            Err(e) => Some(Err(e)),
        }
    }

    /// Extended attributes: `user.datumfs.{md5,sha1,sha256}` once an input file was read whole
    /// (computed on demand if it is cached whole), `user.datumfs.uri` and `user.datumfs.version`.
    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        if let Some(res) = self.try_getxattr(ino, name) {
            return res;
        }
        self.ns(ino)?.getxattr(ino, name).await
    }

    /// Names of the extended attributes of `ino`, NUL-separated.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.owner(ino)? {
            Owner::Fixed if ino == ROOT => Ok(format!("{CONTROL_XATTR}\0").into_bytes()),
            Owner::Fixed => Ok(Vec::new()),
            Owner::Ns(ns) => ns.listxattr(ino),
        }
    }

    /// Everything `datumfs status --json` shows about the filesystem. Walks the cache: call
    /// from a blocking thread.
    pub fn status(&self) -> serde_json::Value {
        let cache = &self.services.cache;
        let stats = cache.stats();
        let (disk_bytes, objects) = cache.usage();
        serde_json::json!({
            "mountpoint": self.settings.mountpoint,
            "pid": std::process::id(),
            "started_at": chrono::DateTime::<chrono::Utc>::from(self.services.started).to_rfc3339(),
            "data_store": self.data_store,
            "inputs": self.input_summaries(),
            "volumes": self.volume_statuses(),
            "inodes": 4 + self.inputs.iter().map(|i| i.inodes()).sum::<usize>(),
            "cache": {
                "dir": cache.dir(),
                "disk_bytes": disk_bytes,
                "objects": objects,
                "hit_bytes": stats.hit_bytes.load(Ordering::Relaxed),
                "fetched_bytes": stats.fetched_bytes.load(Ordering::Relaxed),
                "corrupt_blocks": stats.corrupt_blocks.load(Ordering::Relaxed),
            },
        })
    }

    /// Every volume: name and mode, and for a writable one what a sync would do.
    fn volume_statuses(&self) -> Vec<serde_json::Value> {
        self.volumes
            .iter()
            .map(|(name, ns)| match self.writable.iter().find(|w| w.top() == ns.top()) {
                Some(w) => match crate::volumes::sync::status(w) {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "name": name, "mode": w.mode().as_str(), "error": e.to_string() }),
                },
                None => serde_json::json!({ "name": name, "mode": "ro" }),
            })
            .collect()
    }

    /// Space figures for `statfs`: those of the filesystem holding the cache.
    pub fn statfs(&self) -> Option<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(self.services.cache.dir()).ok()
    }
}

#[cfg(test)]
mod tests;
