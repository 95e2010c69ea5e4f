//! One input as a namespace: a read-only snapshot of objects at `inputs/<name>/`, listed lazily,
//! read through the block cache, checksummed once read whole and checked against the checksum
//! its record promised (datums, dataset files). Facts go out as events; nothing here writes a
//! record.

use super::events::{EventSink, FsEvent, HashedFile};
use super::namespace::{Namespace, OpenFile, OpenedFile};
use super::tree::{is_dir, listed, FileNode, Node, NodeKind, Shape, Tree};
use super::{Attr, DirEntry, FsError, FsResult, InputSummary, Kind, FILE_PERM};
use crate::cache::Cache;
use crate::checksum::{Checksums, Digests};
use crate::inputs::resolve::{self, ResolvedInput};
use crate::inputs::table::DirRec;
use crate::reader::{self, OpenObject, Pin, Reader, Remote, Sequential};
use async_trait::async_trait;
use futures::StreamExt;
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
    /// Files read whole whose checksums are still being computed.
    checksumming: Checksumming,
}

/// The background checksum tasks of a mount, counted so that the mount's end (and a sync)
/// can wait for the reads they record.
#[derive(Default)]
struct Checksumming {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// One running checksum task; counted down when dropped, however the task ends.
struct ChecksumTask(Arc<InputServices>);

impl ChecksumTask {
    fn start(services: &Arc<InputServices>) -> Self {
        services.checksumming.running.fetch_add(1, Ordering::AcqRel);
        Self(services.clone())
    }
}

impl Drop for ChecksumTask {
    fn drop(&mut self) {
        if self.0.checksumming.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.checksumming.done.notify_waiters();
        }
    }
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
            checksumming: Checksumming::default(),
        })
    }

    /// Waits (at most `limit`) until every file read whole so far has its checksums and its
    /// read is reported; checksums held back for a pause in the fetches are computed now. The
    /// number of files still being checksummed when `limit` passed.
    pub async fn checksums_settled(&self, limit: std::time::Duration) -> usize {
        let running = &self.checksumming.running;
        let all_done = async {
            loop {
                let done = self.checksumming.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if running.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        match tokio::time::timeout(limit, self.cache.while_checksums_wanted(all_done)).await {
            Ok(()) => 0,
            Err(_) => running.load(Ordering::Acquire),
        }
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
    /// Objects fetched ahead, kept open for their files' opens.
    held: Mutex<Held>,
}

/// Objects fetched ahead, kept open for a while (until [`HELD_FOR`] has passed or newer ones
/// push them out): opening their files then needs no index lookup, and is answered without
/// leaving the kernel's request thread.
#[derive(Default)]
struct Held {
    objs: std::collections::VecDeque<(std::time::Instant, Arc<OpenObject>)>,
    bytes: u64,
    /// Whether a task lets go of them as they expire.
    expiring: bool,
}

/// Objects fetched ahead that are kept open, at most.
const HELD_MAX: usize = 256;
/// Bytes of objects fetched ahead that are kept open (and so not evictable), at most.
const HELD_MAX_BYTES: u64 = 32 << 20;
/// How long an object fetched ahead is kept open for its file's open.
const HELD_FOR: std::time::Duration = std::time::Duration::from_secs(3);

impl Held {
    /// Keeps `obj` open, letting go of the oldest beyond `max_bytes` or [`HELD_MAX`].
    fn hold(&mut self, obj: Arc<OpenObject>, max_bytes: u64) {
        self.bytes += obj.cached.size();
        self.objs.push_back((std::time::Instant::now(), obj));
        while self.objs.len() > HELD_MAX || self.bytes > max_bytes {
            self.pop();
        }
    }

    /// Lets go of objects held longer than [`HELD_FOR`]; true while some are left.
    fn expire(&mut self) -> bool {
        while self.objs.front().is_some_and(|(at, _)| at.elapsed() >= HELD_FOR) {
            self.pop();
        }
        !self.objs.is_empty()
    }

    fn pop(&mut self) {
        if let Some((_, old)) = self.objs.pop_front() {
            self.bytes -= old.cached.size();
        }
    }
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
/// Packed neighbours this far apart in their pack (tar headers and padding) are fetched together.
const SPAN_GAP: u64 = 64 << 10;
/// One GET for packed neighbours covers at most this many bytes.
const SPAN_MAX: u64 = 16 << 20;

/// The version a file's object is served at, when it is known without asking the store: from
/// its listing, or for a packed datum from its content's sha256.
fn known_pin(f: &FileNode) -> Option<Pin> {
    if let Some(pin) = f.state.pin.get() {
        return Some(pin.clone());
    }
    let e = &f.entry;
    let (Some(_), Some(sha256)) = (&e.window, &e.expected_sha256) else { return None };
    let pin = Pin::of_content(sha256, e.mtime.into());
    let _ = f.state.pin.set(pin.clone());
    Some(pin)
}

/// Where a file's bytes come from, at version `pin`.
fn remote_of(e: &resolve::FileEntry, pin: Pin) -> Arc<Remote> {
    Arc::new(Remote {
        store: e.store.clone(),
        key: e.key.clone(),
        uri: e.uri.clone(),
        size: e.size,
        pin,
        window: e.window,
    })
}

/// Makes `cached` the file's open object, unless another open got there first (then that one).
fn install(f: &FileNode, remote: Arc<Remote>, cached: Arc<crate::cache::CachedObject>) -> Arc<OpenObject> {
    let mut slot = f.state.open.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(obj) = slot.upgrade() {
        return obj;
    }
    let obj = OpenObject::new(remote, cached);
    // A file with a promised checksum answers its reads from the cache, where the check runs.
    let obj = Arc::new(if f.entry.expected_sha256.is_some() { obj.checked_before_served() } else { obj });
    *slot = Arc::downgrade(&obj);
    obj
}

/// Whether open flags ask to change the file.
fn is_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Fails when a file's bytes were found to differ from the checksum its record promised.
fn check_content(f: &FileNode) -> FsResult<()> {
    if f.state.mismatch.load(Ordering::Acquire) {
        return Err(FsError::Corrupt { uri: f.entry.uri.clone() });
    }
    Ok(())
}

impl InputNamespace {
    /// The namespace of `input`, its top directory at inode `base` (a child of `parent`), its
    /// other inodes numbered up from there.
    pub fn new(base: u64, parent: u64, input: ResolvedInput, services: Arc<InputServices>) -> Arc<Self> {
        let (name, uris, datasets) = (input.name.clone(), input.uris.clone(), input.datasets.clone());
        let tree = Tree::of_input(base, parent, input);
        let summary = InputSummary { name, uris, datums: tree.loose_datums(), datasets };
        Arc::new_cyclic(|this| Self {
            summary,
            tree,
            services,
            this: this.clone(),
            walks: Mutex::default(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(PREFETCH_AT_ONCE)),
            held: Mutex::default(),
        })
    }

    /// Keeps objects just fetched ahead open (within a quarter of the cache's cap, if it has
    /// one: held objects cannot be evicted).
    fn hold(&self, objs: Vec<Arc<OpenObject>>) {
        let cap = self.services.cache.cap_bytes();
        let max_bytes = if cap > 0 { HELD_MAX_BYTES.min(cap / 4) } else { HELD_MAX_BYTES };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for obj in objs {
            held.hold(obj, max_bytes);
        }
        if held.expiring || held.objs.is_empty() {
            return;
        }
        held.expiring = true;
        let Some(this) = self.this.upgrade() else { return };
        self.services.runtime.spawn(async move {
            loop {
                tokio::time::sleep(HELD_FOR / 4).await;
                let mut held = this.held.lock().unwrap_or_else(|e| e.into_inner());
                if !held.expire() {
                    held.expiring = false;
                    return;
                }
            }
        });
    }

    /// The input's name, URIs, datums and dataset versions.
    pub fn summary(&self) -> &InputSummary {
        &self.summary
    }

    /// The number of inodes known so far.
    pub fn inodes(&self) -> usize {
        self.tree.len()
    }

    /// Bytes the input's inode table holds, roughly.
    pub fn table_bytes(&self) -> usize {
        self.tree.heap_bytes()
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        self.tree.get(ino).ok_or(FsError::NotFound)
    }

    /// The directory `ino`, its entries listed (in the store, the first time).
    pub(super) async fn listed_dir(&self, ino: u64) -> FsResult<Arc<DirRec>> {
        let dir = self.tree.dir(ino)?;
        dir.children
            .get_or_try_init(|| async {
                let Some(l) = &dir.lister else { return Ok(Box::default()) };
                let listing = resolve::list_dir(&l.store, l.prefix.as_ref()).await.map_err(|e| {
                    tracing::error!("listing {}/{} failed: {e}", self.summary.name, dir.rel);
                    FsError::from(e)
                })?;
                let added = self.tree.add_listing(ino, listing, &l.store);
                self.services.changed();
                Ok::<_, FsError>(added)
            })
            .await?;
        Ok(dir)
    }

    /// The directory `ino` if its entries are known; `None` if it must be listed first.
    fn loaded_dir(&self, ino: u64) -> Option<FsResult<Arc<DirRec>>> {
        match self.tree.dir(ino) {
            Ok(d) => d.children.initialized().then_some(Ok(d)),
            Err(e) => Some(Err(e)),
        }
    }

    fn attr(&self, ino: u64) -> FsResult<Attr> {
        match self.tree.shape(ino).ok_or(FsError::NotFound)? {
            Shape::Dir => Ok(Attr::read_only_dir(ino, self.services.started)),
            Shape::File(size, mtime) => Ok(Attr {
                ino,
                size,
                kind: Kind::File,
                perm: FILE_PERM,
                mtime,
                staged: None,
                cache_for: super::CacheFor::Long,
            }),
        }
    }

    fn entries(&self, dir: &DirRec) -> Vec<DirEntry> {
        self.tree
            .entries(listed(dir))
            .into_iter()
            .map(|(ino, name, dir)| DirEntry { ino, name, kind: if dir { Kind::Dir } else { Kind::File } })
            .collect()
    }

    /// Every file at or below `ino`, listing directories as needed.
    pub(super) async fn files_under(&self, ino: u64) -> FsResult<Vec<u64>> {
        if self.tree.file_size(ino).is_some() {
            return Ok(vec![ino]);
        }
        let mut files = Vec::new();
        let mut level = vec![ino];
        while !level.is_empty() {
            let mut next = Vec::new();
            for ino in level {
                let dir = self.listed_dir(ino).await?;
                for (child, _, is_dir) in self.tree.entries(listed(&dir)) {
                    if is_dir {
                        next.push(child);
                    } else {
                        files.push(child);
                    }
                }
            }
            level = next;
        }
        Ok(files)
    }

    /// The inode at `path` (segments below the input's top), listing directories on the way.
    pub(super) async fn resolve_path(&self, path: &[&str]) -> FsResult<u64> {
        let mut ino = self.tree.top();
        for seg in path {
            let dir = self.listed_dir(ino).await?;
            ino = self.tree.find(listed(&dir), seg).ok_or(FsError::NotFound)?;
        }
        Ok(ino)
    }

    /// The object behind file `ino`, pinned and open.
    pub(super) async fn object_of(&self, ino: u64) -> FsResult<Arc<OpenObject>> {
        let node = self.node(ino)?;
        let NodeKind::File(f) = &node.kind else { return Err(FsError::IsDir) };
        self.open_object(&node, f).await
    }

    /// The entries of the directory at `path` (segments below the input's top), listing it if
    /// needed: each name with its file entry, or `None` for a subdirectory.
    pub(super) async fn listing_at(&self, path: &[&str]) -> FsResult<Vec<(String, Option<resolve::FileEntry>)>> {
        let ino = self.resolve_path(path).await?;
        let dir = self.listed_dir(ino).await?;
        Ok(self
            .tree
            .entries(listed(&dir))
            .into_iter()
            .filter_map(|(child, name, is_dir)| match is_dir {
                true => Some((name, None)),
                false => self.tree.file_entry(child).map(|(_, e)| (name, Some(e))),
            })
            .collect())
    }

    /// Every file of the input as `inputs.json` lists it, listing every directory once
    /// (several at once) so that the list is complete.
    pub(super) async fn files_json(&self) -> Vec<serde_json::Value> {
        const LIST_CONCURRENCY: usize = 16;
        let mut files = Vec::new();
        let mut level = vec![self.tree.top()];
        while !level.is_empty() {
            let mut next = Vec::new();
            for chunk in level.chunks(LIST_CONCURRENCY) {
                let results = futures::future::join_all(chunk.iter().map(|&dir| async move {
                    match self.listed_dir(dir).await {
                        Ok(d) => self.tree.entries(listed(&d)),
                        Err(e) => {
                            tracing::warn!("inputs.json: a directory of {} left out: {e}", self.summary.name);
                            vec![]
                        }
                    }
                }))
                .await;
                for (ino, _, is_dir) in results.into_iter().flatten() {
                    if is_dir {
                        next.push(ino);
                    } else {
                        files.push(ino);
                    }
                }
            }
            level = next;
        }
        // Checksums recorded by earlier runs come from the cache index: not on a runtime worker.
        let Some(this) = self.this.upgrade() else { return Vec::new() };
        tokio::task::spawn_blocking(move || files.iter().filter_map(|&ino| this.file_json(ino)).collect())
            .await
            .unwrap_or_default()
    }

    /// One file as `inputs.json` lists it, with the checksums known so far (reads the cache
    /// index). Builds nothing that stays: a file nobody opened keeps no state.
    fn file_json(&self, ino: u64) -> Option<serde_json::Value> {
        let (path, e) = self.tree.file_entry(ino)?;
        let state = self.tree.state_if_any(ino);
        let name = path.rsplit('/').next().unwrap_or_default();
        let mut v = serde_json::json!({
            "name": name,
            "path": self.services.mountpoint.join(&path).display().to_string(),
            "uri": e.uri,
            "size": e.size,
        });
        let pin = state.as_ref().and_then(|s| s.pin.get().cloned()).or(e.pin.clone());
        let sums = state
            .as_ref()
            .and_then(|s| s.checksums.get().map(Digests::to_checksums))
            .or_else(|| self.services.cache.recorded_checksums(&e.store.url, &e.cache_key(), &pin?.version()));
        if let Some(s) = sums {
            v["checksums"] = serde_json::json!({ "md5": s.md5, "sha1": s.sha1, "sha256": s.sha256 });
        } else if let Some(sha256) = &e.expected_sha256 {
            v["checksums"] = serde_json::json!({ "sha256": sha256 });
        }
        if let Some(d) = &e.datum {
            v["datum_id"] = serde_json::json!(d);
        }
        Some(v)
    }

    /// Opens the object behind a file, pinning its version first if its listing had none.
    pub(super) async fn open_object(&self, node: &Node, f: &FileNode) -> FsResult<Arc<OpenObject>> {
        if let Some(obj) = f.state.open.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
            return Ok(obj);
        }
        let e = &f.entry;
        let cache = &self.services.cache;
        let pin = match known_pin(f) {
            Some(pin) => Ok(pin),
            None => f
                .state
                .pin
                .get_or_try_init(|| async {
                    let pin = reader::pin_listed(cache, &e.store, &e.key, &e.uri, e.size, e.mtime).await?;
                    // With its version known, checksums an earlier run recorded can be shown.
                    self.services.changed();
                    Ok::<Pin, crate::store::StoreError>(pin)
                })
                .await
                .cloned(),
        };
        let pin = match pin {
            Ok(p) => p,
            Err(err) => return Err(self.failed(node, f, err).await),
        };
        let remote = remote_of(e, pin);
        let cached = reader::cached_object(cache, &remote).await?;
        Ok(install(f, remote, cached))
    }

    /// The objects of files about to be fetched ahead, opened with one trip to a blocking
    /// thread for the cache index; files whose version must still be asked for are opened one
    /// by one. Files that cannot be opened are left out (their own opens report why).
    async fn open_objects(&self, files: &[Arc<Node>]) -> Vec<Option<Arc<OpenObject>>> {
        let mut objs: Vec<Option<Arc<OpenObject>>> = vec![None; files.len()];
        let mut batch = Vec::new();
        for (i, node) in files.iter().enumerate() {
            let NodeKind::File(f) = &node.kind else { continue };
            if let Some(obj) = f.state.open.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
                objs[i] = Some(obj);
            } else if let Some(pin) = known_pin(f) {
                batch.push((i, remote_of(&f.entry, pin)));
            }
        }
        let remotes: Vec<Arc<Remote>> = batch.iter().map(|(_, r)| r.clone()).collect();
        let opened = reader::cached_objects(&self.services.cache, remotes).await;
        for ((i, remote), cached) in batch.into_iter().zip(opened) {
            let NodeKind::File(f) = &files[i].kind else { continue };
            match cached {
                Ok(cached) => objs[i] = Some(install(f, remote, cached)),
                Err(e) => tracing::debug!("fetching {} ahead failed: {e}", files[i].path),
            }
        }
        let unpinned: Vec<usize> = (0..files.len())
            .filter(|&i| {
                objs[i].is_none() && matches!(&files[i].kind, NodeKind::File(f) if f.state.pin.get().is_none())
            })
            .collect();
        // (Each asks the store for the version first: no more at once than fetches ahead.)
        let opened: Vec<_> = futures::stream::iter(unpinned)
            .map(|i| async move {
                let node = &files[i];
                let NodeKind::File(f) = &node.kind else { return (i, None) };
                let obj = self.open_object(node, f).await;
                if let Err(e) = &obj {
                    tracing::debug!("fetching {} ahead failed: {e}", node.path);
                }
                (i, obj.ok())
            })
            .buffer_unordered(PREFETCH_AT_ONCE)
            .collect()
            .await;
        for (i, obj) in opened {
            objs[i] = obj;
        }
        objs
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
        let Some(Ok(parent)) = self.loaded_dir(node.parent) else { return };
        let siblings = listed(&parent);
        let name = node.name();
        let window = {
            let mut walks = self.walks.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a walk over a million directories forgets the old ones.
            if walks.len() >= WALKS_KEPT && !walks.contains_key(&node.parent) {
                walks.clear();
            }
            match walks.get_mut(&node.parent) {
                None => {
                    walks.insert(node.parent, Walk { window: PREFETCH_FIRST, last: name.to_string() });
                    PREFETCH_FIRST
                }
                Some(w) => {
                    // In order: a file fetched ahead, or the one right after the last opened.
                    let after_last = siblings
                        .get(self.tree.after(siblings, &w.last).start)
                        .is_some_and(|&c| self.tree.name(c) == name);
                    w.window = if f.state.prefetched.load(Ordering::Acquire) || after_last {
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
        let ahead = &siblings[self.tree.after(siblings, name)];
        let ahead = &ahead[..ahead.len().min(window)];
        // In batches: nothing while at least half the window is fetched ahead, then the rest of
        // the window at once, so that runs of packed neighbours go in one GET each.
        let done = |c: &crate::inputs::table::Child| {
            is_dir(*c)
                || self.tree.state_if_any(self.tree.ino_of(*c)).is_some_and(|s| s.prefetched.load(Ordering::Acquire))
        };
        if ahead.iter().take_while(|c| done(c)).count() > window / 2 {
            return;
        }
        // Packed neighbours of one pack go in groups: one GET for each group.
        let mut groups: Vec<Vec<Arc<Node>>> = Vec::new();
        for &child in ahead {
            let ino = self.tree.ino_of(child);
            if is_dir(child) || self.tree.file_size(ino).is_none_or(|size| size > PREFETCH_MAX_SIZE) {
                continue;
            }
            let Some(sibling) = self.tree.get(ino) else { continue };
            let NodeKind::File(sf) = &sibling.kind else { continue };
            if sf.state.prefetched.swap(true, Ordering::AcqRel) {
                continue;
            }
            match groups.last_mut() {
                Some(g) if next_in_pack(g, &sf.entry) => g.push(sibling),
                _ => groups.push(vec![sibling]),
            }
        }
        if groups.is_empty() {
            return;
        }
        self.services.runtime.spawn(async move {
            // Only fetched: lineage waits until the job opens the file, and a failure is left
            // for that open, which reports it. A datum's bytes are checked against its record
            // now, so that its open does not wait for that.
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            let nodes = groups.concat();
            let mut opened = this.open_objects(&nodes).await.into_iter().zip(&nodes);
            for size in sizes {
                let (objs, datums): (Vec<Arc<OpenObject>>, Vec<bool>) =
                    opened.by_ref().take(size).filter_map(|(obj, node)| obj.map(|obj| (obj, is_datum(node)))).unzip();
                let (this, permits) = (this.clone(), this.prefetching.clone());
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else { return };
                    if objs.len() > 1 {
                        this.services.reader.fetch_span(&objs).await;
                    } else if let Some(obj) = objs.first() {
                        if let Err(e) = this.services.reader.fetch_all(obj).await {
                            tracing::debug!("fetching {} ahead failed: {e}", obj.remote.uri);
                        }
                    }
                    for (obj, _) in objs.iter().zip(datums).filter(|(o, datum)| *datum && o.cached.is_complete()) {
                        let cached = obj.cached.clone();
                        tokio::spawn(async move { drop(cached.checksums().await) });
                    }
                    this.hold(objs);
                });
            }
        });
    }

    /// A file opened on `obj` (with `backing`, the verified cache file the kernel reads
    /// directly); the files after it are fetched ahead.
    fn opened_file(
        &self,
        node: &Arc<Node>,
        f: &FileNode,
        obj: Arc<OpenObject>,
        backing: Option<std::fs::File>,
    ) -> OpenedFile {
        self.prefetch_after(node, f);
        let complete = obj.cached.is_complete();
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
        OpenedFile { file, direct_io, keep_cache: !direct_io, backing, no_flush: true }
    }

    /// Fetches a file whole into the cache (`datumfs warm`); true if it was cached already.
    pub(super) async fn warm_file(&self, ino: u64) -> FsResult<bool> {
        let node = self.node(ino)?;
        let NodeKind::File(f) = &node.kind else { return Ok(true) };
        let obj = self.open_object(&node, f).await?;
        let was = obj.cached.is_complete();
        self.services.reader.fetch_all(&obj).await?;
        hash_when_complete(&self.services, &node, &obj, false);
        Ok(was)
    }

    /// A file's mount-relative path.
    pub(super) fn path_of(&self, ino: u64) -> String {
        self.tree.file_entry(ino).map(|(p, _)| p).unwrap_or_default()
    }

    /// A file's size.
    pub(super) fn size_of(&self, ino: u64) -> u64 {
        self.tree.file_size(ino).unwrap_or(0)
    }
}

#[async_trait]
impl Namespace for InputNamespace {
    fn top(&self) -> u64 {
        self.tree.top()
    }

    fn owns(&self, ino: u64) -> bool {
        self.tree.contains(ino)
    }

    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        Some(self.attr(ino))
    }

    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        let dir = match self.loaded_dir(parent)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(self.tree.find(listed(&dir), name).ok_or(FsError::NotFound).and_then(|ino| self.attr(ino)))
    }

    async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        if let Some(res) = self.try_lookup(parent, name) {
            return res;
        }
        let dir = self.listed_dir(parent).await?;
        let ino = self.tree.find(listed(&dir), name).ok_or(FsError::NotFound)?;
        self.attr(ino)
    }

    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>> {
        let dir = match self.loaded_dir(ino)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(self.tree.parent_of(ino).ok_or(FsError::NotFound).map(|p| (p, self.entries(&dir))))
    }

    async fn readdir(&self, ino: u64) -> FsResult<(u64, Vec<DirEntry>)> {
        if let Some(res) = self.try_readdir(ino) {
            return res;
        }
        let dir = self.listed_dir(ino).await?;
        Ok((self.tree.parent_of(ino).ok_or(FsError::NotFound)?, self.entries(&dir)))
    }

    /// A walk opening a subdirectory will open its next siblings soon: starts listing the next
    /// few that are not listed yet, in the background, so a cold `ls -R` or `find` waits for
    /// several listings at once rather than one after another. Only siblings of a directory
    /// actually opened are listed, so a plain `ls` of a huge prefix lists nothing extra.
    fn list_ahead(&self, ino: u64) {
        let Ok(dir) = self.tree.dir(ino) else { return };
        if ino == self.tree.top() {
            return;
        }
        let Some(parent) = self.tree.parent_of(ino) else { return };
        let Some(Ok(parent)) = self.loaded_dir(parent) else { return };
        let siblings = listed(&parent);
        let next: Vec<u64> = siblings[self.tree.after(siblings, &dir.name)]
            .iter()
            .filter(|&&c| is_dir(c))
            .map(|&c| self.tree.ino_of(c))
            .filter(|&i| self.tree.dir(i).is_ok_and(|d| d.lister.is_some() && !d.children.initialized()))
            .take(LIST_AHEAD_SIBLINGS)
            .collect();
        for sibling in next {
            let (Some(this), permits) = (self.this.upgrade(), self.services.listing_ahead.clone()) else { return };
            self.services.runtime.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                // A failure is logged and left for the walk's own open, which tries again.
                let _ = this.listed_dir(sibling).await;
            });
        }
    }

    /// Opens a file whose object is open already (fetched ahead, or open through another
    /// handle), unless checking it against its record or handing it to the kernel whole needs
    /// the disk first.
    fn try_open(&self, ino: u64, flags: i32, passthrough: bool) -> Option<FsResult<OpenedFile>> {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if is_write(flags) {
            return Some(Err(FsError::ReadOnly));
        }
        let NodeKind::File(f) = &node.kind else { return Some(Err(FsError::IsDir)) };
        if let Err(e) = check_content(f) {
            return Some(Err(e));
        }
        let obj = f.state.open.lock().unwrap_or_else(|e| e.into_inner()).upgrade()?;
        // A datum fetched ahead was checked against its record then: its open needs no wait.
        if let (Some(want), None, Some(sums)) =
            (&f.entry.expected_sha256, f.state.checksums.get(), obj.cached.known_checksums())
        {
            if sums.sha256 == *want {
                verified(&self.services, f, sums);
            }
        }
        if obj.cached.is_complete()
            && (f.entry.expected_sha256.is_some() && f.state.checksums.get().is_none()
                || passthrough && !obj.cached.is_packed())
        {
            return None;
        }
        hash_when_complete(&self.services, &node, &obj, false);
        Some(Ok(self.opened_file(&node, f, obj, None)))
    }

    /// Opens a file for reading; its version is pinned here if its listing had no ETag. With
    /// `passthrough`, a wholly cached file comes back with its verified cache file, which the
    /// kernel can then read directly at local-disk speed.
    async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<OpenedFile> {
        let node = self.node(ino)?;
        if is_write(flags) {
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
        Ok(self.opened_file(&node, f, obj, backing))
    }

    /// Everything but our own names answers "no such attribute" at once: `ls -l` asks for ACLs
    /// and labels per file.
    fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        let shape = match self.tree.shape(ino) {
            Some(s) => s,
            None => return Some(Err(FsError::NotFound)),
        };
        if !name.starts_with("user.") {
            return Some(Err(FsError::NotSupported));
        }
        if matches!(shape, Shape::Dir) || !name.starts_with("user.datumfs.") {
            return Some(Err(FsError::NoAttr));
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let NodeKind::File(f) = &node.kind else { return Some(Err(FsError::NoAttr)) };
        Some(match name {
            "user.datumfs.uri" => Ok(f.entry.uri.clone().into_bytes()),
            "user.datumfs.version" => f.state.pin.get().map(|p| p.version().into_bytes()).ok_or(FsError::NoAttr),
            "user.datumfs.md5" | "user.datumfs.sha1" | "user.datumfs.sha256" => match f.state.checksums.get() {
                Some(sums) => Ok(pick_checksum(&sums.to_checksums(), name)),
                None if f.state.pin.get().is_none() => Err(FsError::NoAttr),
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
        let Some(pin) = f.state.pin.get() else { return Err(FsError::NoAttr) };
        let e = &f.entry;
        let (cache, store_url, key, version, size, uri) =
            (self.services.cache.clone(), e.store.url.clone(), e.cache_key(), pin.version(), e.size, e.uri.clone());
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
        let Some(Shape::File(..)) = self.tree.shape(ino) else {
            return if self.tree.contains(ino) { Ok(Vec::new()) } else { Err(FsError::NotFound) };
        };
        let state = self.tree.state_if_any(ino);
        let mut names = vec!["user.datumfs.uri"];
        if state.as_ref().is_some_and(|s| s.pin.get().is_some())
            || self.tree.file_entry(ino).is_some_and(|(_, e)| e.pin.is_some())
        {
            names.push("user.datumfs.version");
        }
        if state.as_ref().is_some_and(|s| s.checksums.get().is_some()) {
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
        if !obj.cached.is_complete()
            || file.is_some_and(|f| f.entry.expected_sha256.is_some() && f.state.checksums.get().is_none())
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

/// Whether `node` is a file whose sha256 its record promises (a datum).
fn is_datum(node: &Node) -> bool {
    matches!(&node.kind, NodeKind::File(f) if f.entry.expected_sha256.is_some())
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

/// Whether `next` is a packed file right after the last one of `group` in the same pack (a
/// tar header apart), so that one GET can fetch the group with it.
fn next_in_pack(group: &[Arc<Node>], next: &crate::inputs::resolve::FileEntry) -> bool {
    fn entry(n: &Arc<Node>) -> Option<&crate::inputs::resolve::FileEntry> {
        match &n.kind {
            NodeKind::File(f) => Some(&f.entry),
            NodeKind::Dir { .. } => None,
        }
    }
    let (Some(first), Some(last)) = (group.first().and_then(entry), group.last().and_then(entry)) else {
        return false;
    };
    let (Some(fw), Some(lw), Some(nw)) = (first.window, last.window, next.window) else { return false };
    let last_end = lw.offset + last.size;
    Arc::ptr_eq(&last.store, &next.store)
        && last.key == next.key
        && nw.offset >= last_end
        && nw.offset - last_end <= SPAN_GAP
        && nw.offset + next.size - fw.offset <= SPAN_MAX
}

/// Records a mismatch once (the sink logs it); reads fail from then on.
async fn mismatch(services: &InputServices, node: &Node, f: &FileNode, expected: &str, actual: &str) {
    if !f.state.mismatch.swap(true, Ordering::AcqRel) {
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
    let Some(want) = f.entry.expected_sha256.as_ref() else { return Ok(()) };
    if f.state.checksums.get().is_some() {
        return check_content(f);
    }
    let sums = obj.cached.checksums().await?;
    if sums.sha256 != *want {
        mismatch(services, node, f, want, &sums.sha256).await;
        return check_content(f);
    }
    verified(services, f, &sums);
    Ok(())
}

/// A datum's bytes matched its record: keeps their checksums (an open no longer waits for them,
/// `inputs.json` shows them).
fn verified(services: &InputServices, f: &FileNode, sums: &Checksums) {
    if let Some(d) = Digests::of(sums) {
        let _ = f.state.checksums.set(d);
    }
    services.changed();
}

/// Once a file is wholly cached, computes its checksums (once) and tells the sink. With `wait`,
/// a file whose missing blocks are all being fetched is checksummed once they are in (nothing
/// is done if a fetch fails; a later read tries again).
fn hash_when_complete(services: &Arc<InputServices>, node: &Arc<Node>, obj: &Arc<OpenObject>, wait: bool) {
    let NodeKind::File(f) = &node.kind else { return };
    // A plain load first: this runs on every cached read, and the swap writes a shared line.
    if f.state.hashing.load(Ordering::Acquire) {
        return;
    }
    let complete = obj.cached.is_complete();
    if !(complete || wait && obj.cached.is_filling()) || f.state.hashing.swap(true, Ordering::AcqRel) {
        return;
    }
    let cached = obj.cached.clone();
    let node = node.clone();
    let task = ChecksumTask::start(services);
    let services = services.clone();
    let version = obj.remote.pin.version();
    services.runtime.clone().spawn(async move {
        let _task = task;
        let NodeKind::File(f) = &node.kind else { return };
        if !complete && !cached.wait_complete().await {
            f.state.hashing.store(false, Ordering::Release);
            return;
        }
        let path = services.mount_path(&node);
        match cached.checksums_in_background().await {
            Ok(sums) => {
                if let Some(want) = &f.entry.expected_sha256 {
                    if *want != sums.sha256 {
                        mismatch(&services, &node, f, want, &sums.sha256).await;
                    }
                }
                let Some(digests) = Digests::of(&sums) else {
                    tracing::warn!("{path}: malformed checksums {sums:?}");
                    return;
                };
                let _ = f.state.checksums.set(digests);
                services.changed();
                let recorded = f.entry.expected_sha256.is_some();
                let file = HashedFile {
                    path,
                    uri: f.entry.uri.clone(),
                    size: f.entry.size,
                    // (Only an integrity record, which a datum does not get, needs the version.)
                    version: if recorded { String::new() } else { version },
                    checksums: digests,
                    recorded,
                };
                services.events.event(FsEvent::InputChecksummed(file)).await;
            }
            Err(e) => {
                tracing::warn!("{path}: could not compute checksums: {e}");
                f.state.hashing.store(false, Ordering::Release);
            }
        }
    });
}
