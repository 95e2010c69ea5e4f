//! A writable volume (`rw`, `rwd`) as a namespace: a staged tree, as `outputs/` is, filled in
//! lazily from the bucket's listing. A file not yet changed is a placeholder whose reads go
//! through the block cache, exactly as an input's do; the first write (or truncate) copies its
//! bytes into the staged file, which from then on is the job's, with every POSIX operation
//! `outputs/` has. Which files are the bucket's and which are changes lives in the tree itself
//! (see [`crate::volumes::state`]); `datumfs volume sync` reads it from there.

use super::input::InputNamespace;
use super::namespace::{Namespace, OpenFile, OpenedFile, SetAttr};
use super::outputs::OutputsNamespace;
use super::{Attr, DirEntry, FsError, FsResult};
use crate::inputs::resolve::FileEntry;
use crate::outputs::{Caller, Staging};
use crate::volumes::state::{self, Origin, VolumeState};
use crate::volumes::{VolumeMode, VolumeSpec};
use async_trait::async_trait;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bytes copied per read when a file's bytes are copied in from the cache.
const HYDRATE_CHUNK: u32 = 4 << 20;
/// Ranged GETs at once, and their size, when a file's bytes are downloaded to be changed.
const HYDRATE_PARALLEL: usize = 8;
const HYDRATE_PART: u64 = 8 << 20;

/// One writable volume.
pub struct VolumeNamespace {
    name: String,
    uri: String,
    mode: VolumeMode,
    /// The bucket's side: listings and reads of unchanged files.
    base: Arc<InputNamespace>,
    staged: OutputsNamespace,
    staging: Arc<Staging>,
    state: Arc<VolumeState>,
    /// Staged directories known to be filled in.
    listed: Mutex<HashSet<u64>>,
    /// One fill-in at a time (a directory is filled in once, whoever asks first).
    listing: tokio::sync::Mutex<()>,
    /// One copy-in at a time.
    hydrating: tokio::sync::Mutex<()>,
    /// Open handles that may write, per staged file (st_ino); such a file is never marked as
    /// synced while one is open. Taken together with every change of a file's origin mark.
    writers: Arc<Mutex<HashMap<u64, usize>>>,
    runtime: tokio::runtime::Handle,
}

impl VolumeNamespace {
    /// The volume `name` of `uri`: `base` is its bucket side (an input namespace never served
    /// by itself), `staging` its staged tree, `state` the rest of what it keeps on the node.
    pub fn new(
        spec: VolumeSpec,
        base: Arc<InputNamespace>,
        staging: Arc<Staging>,
        state: Arc<VolumeState>,
        top: u64,
        parent: u64,
    ) -> Self {
        Self {
            name: spec.name,
            uri: spec.uri,
            mode: spec.mode,
            base,
            staged: OutputsNamespace::new(staging.clone(), top, parent),
            staging,
            state,
            listed: Mutex::default(),
            listing: tokio::sync::Mutex::new(()),
            hydrating: tokio::sync::Mutex::new(()),
            writers: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Its name under `volumes/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix it shows.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// What the mount may do to it.
    pub fn mode(&self) -> VolumeMode {
        self.mode
    }

    /// What it keeps on the node.
    pub fn state(&self) -> &Arc<VolumeState> {
        &self.state
    }

    /// Its staged tree.
    pub fn staging(&self) -> &Arc<Staging> {
        &self.staging
    }

    /// Runs `f` while no handle can start writing (a sync marks a file as synced under it).
    pub fn with_writers_held<T>(&self, f: impl FnOnce(&HashMap<u64, usize>) -> T) -> T {
        let w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        f(&w)
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.staging.files_dir()).unwrap_or(path).to_string_lossy().into_owned()
    }

    fn rel_child(&self, parent: u64, name: &str) -> FsResult<String> {
        let dir = self.rel(&self.staging.path(parent)?);
        Ok(if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") })
    }

    fn is_listed_known(&self, dir: u64) -> bool {
        self.listed.lock().unwrap_or_else(|e| e.into_inner()).contains(&dir)
    }

    /// Fills directory `dir` in from the bucket's listing, once.
    async fn list(&self, dir: u64) -> FsResult<()> {
        if self.is_listed_known(dir) {
            return Ok(());
        }
        let path = self.staging.path(dir)?;
        if !state::is_listed(&path)? {
            let _one = self.listing.lock().await;
            if !state::is_listed(&path)? {
                self.fill_in(&path).await?;
            }
        }
        self.listed.lock().unwrap_or_else(|e| e.into_inner()).insert(dir);
        Ok(())
    }

    /// [`VolumeNamespace::list`] from a thread that may block.
    fn list_blocking(&self, dir: u64) -> FsResult<()> {
        if self.is_listed_known(dir) {
            return Ok(());
        }
        self.block_on(self.list(dir))
    }

    fn block_on<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => tokio::task::block_in_place(|| h.block_on(fut)),
            Err(_) => self.runtime.block_on(fut),
        }
    }

    /// Makes each entry of the bucket's listing at `path` that the tree lacks: directories, and
    /// placeholders of files marked with their origin. An entry already there (a fill-in cut
    /// short by a crash) is kept as it is.
    async fn fill_in(&self, path: &Path) -> FsResult<()> {
        let rel = self.rel(path);
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut entries = match self.base.listing_at(&parts).await {
            Ok(e) => e,
            Err(e) if e.is_not_found() || matches!(e, FsError::NotDir) => Vec::new(),
            Err(e) => return Err(e),
        };
        etags_of_unlisted(&mut entries).await;
        let (path, state, at_rel) = (path.to_path_buf(), self.state.clone(), rel.clone());
        let made = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let rel = at_rel;
            // The entries were there all along, as far as the job can tell: the directory keeps
            // its times (only its ctime shows it was filled in).
            let times = std::fs::metadata(&path).map(|m| (m.accessed(), m.modified()))?;
            for (name, entry) in entries {
                let at = path.join(&name);
                match std::fs::symlink_metadata(&at) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let Some(entry) = entry else {
                    std::fs::DirBuilder::new().mode(0o755).create(&at)?;
                    continue;
                };
                let etag = entry.pin.as_ref().and_then(|p| p.etag.clone());
                let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&at)?;
                file.set_len(entry.size)?;
                let origin = Origin { key: key.clone(), etag: etag.clone(), hydrated: entry.size == 0 };
                state::set_origin(&file, &origin)?;
                file.set_modified(entry.mtime)?;
                state.seen.record(&key, state::Version::of(etag, entry.mtime, entry.size))?;
            }
            state.seen.flush()?;
            state::mark_listed(&path)?;
            if let (Ok(atime), Ok(mtime)) = times {
                let times = std::fs::FileTimes::new().set_accessed(atime).set_modified(mtime);
                std::fs::File::open(&path)?.set_times(times)?;
            }
            Ok(())
        })
        .await
        .map_err(|_| FsError::Os(libc::EIO))?;
        made.map_err(|e| {
            tracing::error!("volume {}: filling in {}: {e}", self.name, self.rel_display(&rel));
            FsError::from(e)
        })
    }

    fn rel_display(&self, rel: &str) -> String {
        format!("volumes/{}/{rel}", self.name)
    }

    /// Fills in every directory at and below `dir` (before it moves: what it holds must move
    /// with it, and a directory not filled in is one at its bucket place).
    fn list_all_blocking(&self, dir: u64) -> FsResult<()> {
        self.list_blocking(dir)?;
        let (_, children) = self.staged.try_readdir(dir).unwrap_or(Err(FsError::NotDir))?;
        for c in children.into_iter().filter(|c| c.kind == super::Kind::Dir) {
            self.list_all_blocking(c.ino)?;
        }
        Ok(())
    }

    /// Brings the bucket's bytes of the placeholder at `path` in, unless they are already.
    async fn hydrate(&self, path: &Path, origin: &Origin) -> FsResult<()> {
        let _one = self.hydrating.lock().await;
        if origin_at(path)?.is_none_or(|o| o.hydrated) {
            return Ok(());
        }
        let parts: Vec<&str> = origin.key.split('/').collect();
        let ino = self.base.resolve_path(&parts).await?;
        let obj = self.base.object_of(ino).await?;
        let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
        let before = file.metadata()?;
        if obj.cached.is_complete() {
            // Read before: a copy from the cache.
            let opened = self.base.open(ino, libc::O_RDONLY, false).await?;
            let mut offset = 0u64;
            loop {
                let buf = opened.file.read(offset, HYDRATE_CHUNK).await?;
                if buf.is_empty() {
                    break;
                }
                file.write_all_at(&buf, offset)?;
                offset += buf.len() as u64;
            }
            opened.file.release();
        } else {
            // A plain download, many ranges at once: these bytes leave the cache's care.
            crate::reader::download_into(&obj.remote, &file, HYDRATE_PARALLEL, HYDRATE_PART).await.map_err(|e| {
                tracing::error!("volume {}: copying {} in: {e}", self.name, self.rel_display(&origin.key));
                FsError::from(e)
            })?;
        }
        // The bytes were the file's all along, as far as the job can tell.
        file.set_times(std::fs::FileTimes::new().set_accessed(before.accessed()?).set_modified(before.modified()?))?;
        // On disk before the mark says so: a power cut must not leave a marked file of zeros.
        file.sync_data()?;
        let mut o = origin.clone();
        o.hydrated = true;
        state::set_origin(&file, &o)?;
        Ok(())
    }

    /// Brings the bucket's bytes of the file at `path` (in the staged tree) in, if it is a
    /// placeholder still: a sync uploads from the staged file.
    pub async fn bring_in(&self, path: &Path) -> FsResult<()> {
        match origin_at(path)? {
            Some(origin) if !origin.hydrated => self.hydrate(path, &origin).await,
            _ => Ok(()),
        }
    }

    /// Makes the file `ino` the job's own before a change of its bytes: brings the bucket's
    /// bytes in first unless `discarding` them (a truncate to zero, `O_TRUNC`), then drops the
    /// mark (under the writers' lock, which a sync marking files as synced holds).
    async fn make_own(&self, ino: u64, discarding: bool) -> FsResult<()> {
        let path = self.staging.path(ino)?;
        let Some(origin) = origin_at(&path)? else { return Ok(()) };
        if !origin.hydrated && !discarding {
            self.hydrate(&path, &origin).await?;
        }
        let _w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        state::clear_origin_at(&path)?;
        Ok(())
    }

    /// In `rw`, removing the bucket key at `rel` (or any below it) is refused.
    fn check_may_remove(&self, rel: &str, dir: bool) -> FsResult<()> {
        if self.mode == VolumeMode::Rwd {
            return Ok(());
        }
        let holds_key = if dir { self.state.seen.any_under(rel) } else { self.state.seen.contains(rel) };
        if holds_key {
            tracing::warn!(
                "volume {} is rw: {} is in the bucket and is not deleted or moved (mount it :rwd to allow that)",
                self.name,
                self.rel_display(rel)
            );
            return Err(FsError::Os(libc::EPERM));
        }
        Ok(())
    }

    fn wrap_writer(&self, opened: OpenedFile, id: u64) -> OpenedFile {
        *self.writers.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default() += 1;
        let file = Arc::new(Writer { inner: opened.file, writers: self.writers.clone(), id });
        OpenedFile { file, ..opened }
    }

    fn staged_id(&self, ino: u64) -> FsResult<u64> {
        Ok(std::fs::symlink_metadata(self.staging.path(ino)?)?.ino())
    }

    fn private_name(name: &str) -> bool {
        state::is_private_xattr(name.as_bytes())
    }
}

/// Files asked for their ETag at once, when a listing gives none.
const HEADS_AT_ONCE: usize = 16;

/// Asks the store for the ETag of each listed file whose listing gave none (some S3-compatible
/// servers list without them): the version a sync's puts and deletes are conditional on must
/// tell apart two writes of the same size within a second. A file the HEAD fails for keeps its
/// time and size as its version.
async fn etags_of_unlisted(entries: &mut [(String, Option<FileEntry>)]) {
    let missing =
        entries.iter_mut().filter_map(|(_, e)| e.as_mut()).filter(|e| e.pin.as_ref().is_none_or(|p| p.etag.is_none()));
    futures::stream::iter(missing)
        .for_each_concurrent(HEADS_AT_ONCE, |e| async move {
            if let Ok(meta) = e.store.inner.head(&e.key).await {
                if meta.size == e.size {
                    e.pin = Some(crate::reader::Pin::from_meta(&meta));
                }
            }
        })
        .await;
}

fn origin_at(path: &Path) -> FsResult<Option<Origin>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(state::origin_at(path)?),
        Ok(_) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

#[async_trait]
impl Namespace for VolumeNamespace {
    fn top(&self) -> u64 {
        self.staged.top()
    }

    fn owns(&self, ino: u64) -> bool {
        self.staged.owns(ino)
    }

    fn writable(&self) -> bool {
        true
    }

    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        self.staged.try_getattr(ino)
    }

    fn getattr_open(&self, ino: u64, file: &dyn OpenFile) -> Option<FsResult<Attr>> {
        self.staged.getattr_open(ino, file)
    }

    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        if !self.is_listed_known(parent) {
            return None;
        }
        self.staged.try_lookup(parent, name)
    }

    async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.list(parent).await?;
        self.staged.try_lookup(parent, name).unwrap_or(Err(FsError::NotFound))
    }

    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>> {
        if !self.is_listed_known(ino) {
            return None;
        }
        self.staged.try_readdir(ino)
    }

    async fn readdir(&self, ino: u64) -> FsResult<(u64, Vec<DirEntry>)> {
        self.list(ino).await?;
        self.staged.try_readdir(ino).unwrap_or(Err(FsError::NotDir))
    }

    async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<OpenedFile> {
        let path = self.staging.path(ino)?;
        if is_write(flags) {
            self.make_own(ino, flags & libc::O_TRUNC != 0).await?;
            let opened = self.staged.open(ino, flags, passthrough).await?;
            let id = self.staged_id(ino)?;
            return Ok(self.wrap_writer(opened, id));
        }
        match origin_at(&path)? {
            Some(origin) if !origin.hydrated => {
                // The bucket's bytes, through the block cache; not kept by the kernel past
                // this open, since a later write changes them under the same inode.
                let parts: Vec<&str> = origin.key.split('/').collect();
                let base_ino = self.base.resolve_path(&parts).await?;
                let opened = self.base.open(base_ino, flags, false).await?;
                Ok(OpenedFile { keep_cache: false, backing: None, no_flush: false, ..opened })
            }
            _ => self.staged.open(ino, flags, passthrough).await,
        }
    }

    fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        if Self::private_name(name) {
            return Some(Err(FsError::NoAttr));
        }
        self.staged.try_getxattr(ino, name)
    }

    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let all = self.staged.listxattr(ino)?;
        let mut out = Vec::with_capacity(all.len());
        for name in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !state::is_private_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        if Self::private_name(name) {
            return Err(FsError::Os(libc::EPERM));
        }
        self.staged.setxattr(ino, name, value, flags)
    }

    fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        if Self::private_name(name) {
            return Err(FsError::NoAttr);
        }
        self.staged.removexattr(ino, name)
    }

    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.staged.readlink(ino)
    }

    fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
        caller: Caller,
        passthrough: bool,
    ) -> FsResult<(Attr, OpenedFile)> {
        self.list_blocking(parent)?;
        if flags & libc::O_EXCL == 0 {
            // An existing file is opened as open(2) would: its bucket bytes first.
            if let Some(Ok(attr)) = self.staged.try_lookup(parent, name) {
                if attr.kind == super::Kind::Dir {
                    return Err(FsError::IsDir);
                }
                let opened = self.block_on(self.open(attr.ino, flags & !libc::O_CREAT, false))?;
                let attr = self.staged.try_getattr(attr.ino).unwrap_or(Ok(attr))?;
                return Ok((attr, opened));
            }
        }
        let (attr, opened) = self.staged.create(parent, name, mode, flags, caller, passthrough)?;
        let id = self.staged_id(attr.ino)?;
        Ok((attr, self.wrap_writer(opened, id)))
    }

    fn setattr(&self, ino: u64, change: SetAttr, file: Option<&dyn OpenFile>) -> FsResult<Attr> {
        // Through a handle, the file is the job's already (it was opened to write); by path,
        // its bucket bytes come in first. A file without a name left is the job's too.
        if let (Some(size), None) = (change.size, file) {
            match self.block_on(self.make_own(ino, size == 0)) {
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        self.staged.setattr(ino, change, file)
    }

    fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<Attr> {
        self.list_blocking(parent)?;
        let attr = self.staged.mkdir(parent, name, mode, caller)?;
        // A new directory has nothing in the bucket to show.
        state::mark_listed(&self.staging.path(attr.ino)?)?;
        Ok(attr)
    }

    fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32, caller: Caller) -> FsResult<Attr> {
        self.list_blocking(parent)?;
        self.staged.mknod(parent, name, mode, rdev, caller)
    }

    fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Attr> {
        self.list_blocking(new_parent)?;
        self.staged.link(ino, new_parent, new_name)
    }

    fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.list_blocking(parent)?;
        self.check_may_remove(&self.rel_child(parent, name)?, false)?;
        self.staged.unlink(parent, name)
    }

    fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.list_blocking(parent)?;
        if let Some(Ok(attr)) = self.staged.try_lookup(parent, name) {
            if attr.kind == super::Kind::Dir {
                // Empty only if the bucket has nothing there either.
                self.list_blocking(attr.ino)?;
            }
        }
        self.check_may_remove(&self.rel_child(parent, name)?, true)?;
        self.staged.rmdir(parent, name)
    }

    fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, flags: u32) -> FsResult<()> {
        self.list_blocking(parent)?;
        self.list_blocking(new_parent)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let check = |p: u64, n: &str| -> FsResult<()> {
            match self.staged.try_lookup(p, n) {
                Some(Ok(attr)) => {
                    let dir = attr.kind == super::Kind::Dir;
                    if dir {
                        self.list_all_blocking(attr.ino)?;
                    }
                    self.check_may_remove(&self.rel_child(p, n)?, dir)
                }
                _ => Ok(()),
            }
        };
        check(parent, name)?;
        if exchange {
            check(new_parent, new_name)?;
        } else if let Some(Ok(attr)) = self.staged.try_lookup(new_parent, new_name) {
            if attr.kind == super::Kind::Dir {
                // Replaced only if empty, the bucket's side included.
                self.list_blocking(attr.ino)?;
            }
        }
        self.staged.rename(parent, name, new_parent, new_name, flags)
    }

    fn symlink(&self, parent: u64, name: &str, target: &Path, caller: Caller) -> FsResult<Attr> {
        self.list_blocking(parent)?;
        self.staged.symlink(parent, name, target, caller)
    }
}

/// A handle that may write: counted while open, so that a sync never marks its file as synced.
struct Writer {
    inner: Arc<dyn OpenFile>,
    writers: Arc<Mutex<HashMap<u64, usize>>>,
    id: u64,
}

#[async_trait]
impl OpenFile for Writer {
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        self.inner.try_read(offset, size)
    }

    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.inner.read(offset, size).await
    }

    fn write(&self, offset: u64, data: &[u8], writer: crate::outputs::Writer) -> FsResult<u32> {
        self.inner.write(offset, data, writer)
    }

    fn fsync(&self, datasync: bool) -> FsResult<()> {
        self.inner.fsync(datasync)
    }

    fn passed_through(&self) {
        self.inner.passed_through()
    }

    fn release(&self) {
        self.inner.release();
        let mut w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.id);
            }
        }
    }

    fn staged_file(&self) -> Option<&std::fs::File> {
        self.inner.staged_file()
    }
}
