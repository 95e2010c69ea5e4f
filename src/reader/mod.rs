//! Bytes for (object version, offset, len): the block plan, read-ahead, ranged GETs pinned to
//! the version, single-flight per block, retries.
//!
//! A read names the blocks it needs; missing ones are claimed (so a second reader waits for the
//! same download instead of starting another) and fetched in runs of several blocks, each run
//! one ranged GET with `If-Match` on the pinned ETag whose answer is checked again (some servers
//! ignore `If-Match`). Blocks land in the cache as they stream in, so a reader waits only for
//! its own blocks. Sequential readers grow a read-ahead window. Touches no FUSE types.

use crate::cache::{BlockState, Cache, CacheError, CachedObject, FetchError, InFlight, PinRecord};
use crate::store::{StoreError, StoreHandle};
use bytes::Buf;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Semaphore;

/// Why a read failed. Cheap to clone: a failed fetch's error reaches every reader waiting on it.
#[derive(Debug, Error, Clone)]
pub enum ReadError {
    /// The store failed or the object changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache could not be used (disk full, I/O error); reads then go to the store directly.
    #[error("{uri}: the cache could not keep its bytes: {source}")]
    Cache {
        /// The object's URI.
        uri: String,
        /// The cache's error.
        #[source]
        source: Arc<CacheError>,
    },
    /// Blocks were dropped (failed checks) as fast as they were fetched.
    #[error("{uri}: blocks kept disappearing from the cache")]
    Unstable {
        /// The object's URI.
        uri: String,
    },
    /// The thread reading or writing the cache failed.
    #[error("{uri}: a cache thread failed: {source}")]
    Task {
        /// The object's URI.
        uri: String,
        /// Why.
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
}

impl ReadError {
    fn cache(uri: &str, e: CacheError) -> Self {
        ReadError::Cache { uri: uri.to_string(), source: Arc::new(e) }
    }

    fn task(uri: &str, e: tokio::task::JoinError) -> Self {
        ReadError::Task { uri: uri.to_string(), source: Arc::new(e) }
    }

    /// Whether trying again soon may succeed.
    /// Whether the reader should try the run again: a body cut short, a reset or an error
    /// answer may pass, but a store that did not answer in time was already retried by the
    /// client until its time ran out (trying again would multiply the wait for EIO).
    fn is_transient(&self) -> bool {
        let timed_out = |cause: &str| {
            let c = cause.to_ascii_lowercase();
            c.contains("timed out") || c.contains("timeout")
        };
        matches!(self, ReadError::Store(e) if e.is_transient()
            && !matches!(e, StoreError::Unreachable { cause, .. } if timed_out(cause)))
    }

    /// The error a failed fetch left for its waiters (only the reader sets them: always ours).
    fn of_fetch(e: &FetchError) -> Self {
        match e.downcast_ref::<ReadError>() {
            Some(e) => e.clone(),
            None => ReadError::Store(StoreError::Other { uri: String::new(), cause: e.to_string() }),
        }
    }
}

/// Tuning of the read path.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    /// Largest read-ahead window for a sequential reader, in bytes.
    pub max_readahead: u64,
    /// Most blocks fetched by one GET.
    pub max_run_blocks: u64,
    /// Most GETs in flight at once, over all objects.
    pub max_inflight: usize,
    /// Attempts per run after the store client's own retries gave up.
    pub attempts: u32,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self { max_readahead: 64 << 20, max_run_blocks: 8, max_inflight: 16, attempts: 3 }
    }
}

/// The version of an object a mount serves: fixed when first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The ETag, when the store gives one.
    pub etag: Option<String>,
    /// The modification time, used where there is no ETag.
    pub last_modified: DateTime<Utc>,
}

impl Pin {
    /// The pin from an object's listing or HEAD answer.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        Pin { etag: meta.e_tag.clone(), last_modified: meta.last_modified }
    }

    /// The pin of bytes known by their sha256 (a packed datum: its pack's ETag changes when
    /// another member is purged, its own bytes never do).
    pub fn of_content(sha256: &str, last_modified: DateTime<Utc>) -> Self {
        Pin { etag: Some(format!("sha256:{sha256}")), last_modified }
    }

    /// The version string that identifies this pin in the cache and in messages.
    pub fn version(&self) -> String {
        match &self.etag {
            Some(e) => normalize_etag(e).to_string(),
            None => format!("mtime:{}", self.last_modified.to_rfc3339()),
        }
    }
}

/// ETags differ only by quoting and weakness markers between listings and GETs on some servers.
fn normalize_etag(e: &str) -> &str {
    e.trim_start_matches("W/").trim_matches('"')
}

/// Where a file's bytes are inside a larger object (a packed datum in its pack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Offset of the file's first byte in the object.
    pub offset: u64,
    /// Size of the whole object.
    pub object_size: u64,
}

/// The name of a file's bytes in the cache: its object's key, and for a part of an object (a
/// packed datum) its offset there.
pub fn cache_key(key: &Path, window: Option<Window>) -> String {
    match window {
        Some(w) => format!("{key}#{}", w.offset),
        None => key.to_string(),
    }
}

/// An object as a mount sees it: where it is, its size and its pinned version.
#[derive(Debug)]
pub struct Remote {
    /// The store holding it.
    pub store: Arc<StoreHandle>,
    /// Its key in that store.
    pub key: Path,
    /// Its URI, for messages.
    pub uri: String,
    /// Size fixed at resolution.
    pub size: u64,
    /// Version fixed at resolution (or first HEAD).
    pub pin: Pin,
    /// For a file that is a part of its object: where. Such a file is checked by its own
    /// sha256, not by the object's version (the rest of the object may be rewritten: a purge
    /// blanks one member of a pack).
    pub window: Option<Window>,
}

impl Remote {
    fn classify(&self, e: object_store::Error) -> StoreError {
        match StoreError::from_object_store(&self.uri, self.store.bucket.as_deref(), e) {
            StoreError::Changed { uri, now, .. } => StoreError::Changed { uri, pinned: self.pin.version(), now },
            other => other,
        }
    }

    /// The name of its bytes in the cache (see [`cache_key`]).
    pub fn cache_key(&self) -> String {
        cache_key(&self.key, self.window)
    }

    /// The ETag a ranged GET must match (none for a part of an object: see `window`).
    fn if_match(&self) -> Option<String> {
        self.pin.etag.clone().filter(|_| self.window.is_none())
    }

    /// The object's bytes that hold the file's `range`.
    fn object_range(&self, range: Range<u64>) -> Range<u64> {
        let base = self.window.map_or(0, |w| w.offset);
        range.start + base..range.end + base
    }

    /// Checks that an answer from the store is still the pinned version.
    fn check(&self, meta: &ObjectMeta) -> Result<(), StoreError> {
        let changed = |now: String| StoreError::Changed { uri: self.uri.clone(), pinned: self.pin.version(), now };
        if let Some(w) = &self.window {
            if meta.size != w.object_size {
                return Err(changed(format!("an object of {} bytes instead of {}", meta.size, w.object_size)));
            }
            return Ok(());
        }
        match (&self.pin.etag, &meta.e_tag) {
            (Some(p), Some(n)) if normalize_etag(p) != normalize_etag(n) => {
                return Err(changed(normalize_etag(n).to_string()))
            }
            (None, _) if meta.last_modified != self.pin.last_modified => {
                return Err(changed(format!("mtime:{}", meta.last_modified.to_rfc3339())))
            }
            _ => {}
        }
        if meta.size != self.size {
            return Err(changed(format!(
                "{} (size {} instead of {})",
                meta.e_tag.as_deref().map(normalize_etag).unwrap_or("?"),
                meta.size,
                self.size
            )));
        }
        Ok(())
    }
}

/// Fixes the version of an object whose listing carried no ETag: one HEAD, before any byte is
/// served. A size that differs from the listing means the object changed in between.
pub async fn pin_by_head(store: &Arc<StoreHandle>, key: &Path, uri: &str, listed_size: u64) -> Result<Pin, StoreError> {
    let meta = store
        .inner
        .get_opts(key, GetOptions { head: true, ..Default::default() })
        .await
        .map_err(|e| StoreError::from_object_store(uri, store.bucket.as_deref(), e))?
        .meta;
    let pin = Pin::from_meta(&meta);
    if meta.size != listed_size {
        return Err(StoreError::Changed {
            uri: uri.to_string(),
            pinned: format!("listed with size {listed_size}"),
            now: format!("{} with size {}", pin.version(), meta.size),
        });
    }
    Ok(pin)
}

/// The version of an object a mount serves, for an object listed with this size and time:
/// the listing's ETag when it had one is pinned by the caller; otherwise the version an earlier
/// HEAD found for the same size and listed time (remembered in the cache index, so a remount
/// needs no request), else one HEAD, remembered.
pub async fn pin_listed(
    cache: &Arc<Cache>,
    store: &Arc<StoreHandle>,
    key: &Path,
    uri: &str,
    size: u64,
    listed: std::time::SystemTime,
) -> Result<Pin, StoreError> {
    let listed = DateTime::<Utc>::from(listed).to_rfc3339();
    let (c, store_url, k, l) = (cache.clone(), store.url.clone(), key.to_string(), listed.clone());
    let recalled = tokio::task::spawn_blocking(move || c.recall_version(&store_url, &k, size, &l)).await.ok().flatten();
    if let Some(rec) = recalled {
        if let Ok(t) = DateTime::parse_from_rfc3339(&rec.last_modified) {
            return Ok(Pin { etag: rec.etag, last_modified: t.with_timezone(&Utc) });
        }
    }
    let pin = pin_by_head(store, key, uri, size).await?;
    let rec = PinRecord { etag: pin.etag.clone(), last_modified: pin.last_modified.to_rfc3339() };
    let (c, store_url, k) = (cache.clone(), store.url.clone(), key.to_string());
    let _ = tokio::task::spawn_blocking(move || c.remember_version(&store_url, &k, size, &listed, &rec)).await;
    Ok(pin)
}

/// The cache entry of `remote`'s pinned version, opened (index read, data file or pack slot
/// made) on a blocking thread.
pub async fn cached_object(cache: &Arc<Cache>, remote: &Remote) -> Result<Arc<CachedObject>, ReadError> {
    let (c, store_url, key, version, size, uri) = (
        cache.clone(),
        remote.store.url.clone(),
        remote.cache_key(),
        remote.pin.version(),
        remote.size,
        remote.uri.clone(),
    );
    tokio::task::spawn_blocking(move || c.object(&store_url, &key, &version, size, &uri))
        .await
        .map_err(|e| ReadError::task(&remote.uri, e))?
        .map_err(|e| ReadError::cache(&remote.uri, e))
}

/// The cache entries of several objects, opened with one trip to a blocking thread (objects
/// about to be fetched ahead together), each with its own outcome.
pub async fn cached_objects(
    cache: &Arc<Cache>,
    remotes: Vec<Arc<Remote>>,
) -> Vec<Result<Arc<CachedObject>, ReadError>> {
    if remotes.is_empty() {
        return Vec::new();
    }
    let (c, count) = (cache.clone(), remotes.len());
    let opened = tokio::task::spawn_blocking(move || {
        remotes
            .iter()
            .map(|r| {
                c.object(&r.store.url, &r.cache_key(), &r.pin.version(), r.size, &r.uri)
                    .map_err(|e| ReadError::cache(&r.uri, e))
            })
            .collect::<Vec<_>>()
    })
    .await;
    match opened {
        Ok(all) => all,
        // Each object gets the failure: none is left without an outcome.
        Err(e) => vec![Err(ReadError::task("the cache index", e)); count],
    }
}

/// Per-handle memory of where the last read ended, to spot sequential readers.
#[derive(Debug, Default)]
pub struct Sequential {
    next: u64,
    window: u64,
}

/// An object open for reading: the remote side and its cache entry (kept from eviction while
/// this lives).
pub struct OpenObject {
    /// Where the bytes come from.
    pub remote: Arc<Remote>,
    /// Where they are kept.
    pub cached: Arc<CachedObject>,
    _in_use: crate::cache::InUse,
    /// Set once the cache could not keep this object's bytes: its reads go to the store.
    bypass: std::sync::atomic::AtomicBool,
    /// Whether reads may be answered from blocks just fetched, before they are in the cache.
    serve_fresh: bool,
}

impl OpenObject {
    /// Opens `cached` for reads of `remote`.
    pub fn new(remote: Arc<Remote>, cached: Arc<CachedObject>) -> Self {
        let _in_use = cached.in_use();
        Self { remote, cached, _in_use, bypass: Default::default(), serve_fresh: true }
    }

    /// For files whose checksum must be checked before their last read is answered: reads wait
    /// until their blocks are in the cache (where the check reads them), never served fresh.
    pub fn checked_before_served(mut self) -> Self {
        self.serve_fresh = false;
        self
    }
}

/// Serves reads of open objects; shared by every file of a daemon.
pub struct Reader {
    cfg: ReadConfig,
    inflight: Arc<Semaphore>,
    /// Whether "serving without the cache" was already said.
    warned_uncached: std::sync::atomic::AtomicBool,
}

/// Where a read-ahead window starts when a reader turns out to be sequential.
const INITIAL_WINDOW_BLOCKS: u64 = 2;

impl Reader {
    /// A reader with this tuning.
    pub fn new(cfg: ReadConfig) -> Self {
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
        Self { cfg, inflight, warned_uncached: Default::default() }
    }

    /// Fetches every missing block of the object into the cache (`datumfs warm`), in whole
    /// runs, without copying any bytes out.
    pub async fn fetch_all(&self, obj: &OpenObject) -> Result<(), ReadError> {
        let all = 0..obj.cached.block_count();
        for _ in 0..4 {
            if obj.cached.is_complete() {
                return Ok(());
            }
            let claims = self.start_fetches(obj, all.clone(), u64::MAX);
            if wait_present(&obj.cached, all.clone(), claims).await? {
                return Ok(());
            }
        }
        Err(ReadError::Unstable { uri: obj.remote.uri.clone() })
    }

    /// Reads up to `len` bytes at `offset`, fetching what is missing. When the cache cannot
    /// keep the bytes (disk full, I/O error), they come straight from the store instead: never
    /// an EIO because of the cache.
    pub async fn read(
        &self,
        obj: &OpenObject,
        seq: &Mutex<Sequential>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let end = (offset + len as u64).min(obj.cached.size());
        if obj.bypass.load(std::sync::atomic::Ordering::Acquire) && offset < end {
            return Ok(read_direct(&obj.remote, offset..end).await?);
        }
        match self.read_through_cache(obj, seq, offset, len).await {
            Err(ReadError::Cache { source: cause, .. }) => {
                obj.bypass.store(true, std::sync::atomic::Ordering::Release);
                if !self.warned_uncached.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    tracing::warn!(
                        "the cache cannot keep {} ({cause}); serving reads from the store without caching",
                        obj.remote.uri
                    );
                }
                if offset >= end {
                    return Ok(Vec::new());
                }
                Ok(read_direct(&obj.remote, offset..end).await?)
            }
            other => other,
        }
    }

    async fn read_through_cache(
        &self,
        obj: &OpenObject,
        seq: &Mutex<Sequential>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let cached = &obj.cached;
        let size = cached.size();
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + len as u64).min(size);
        let bs = cached.block_size();
        let needed = offset / bs..(end - 1) / bs + 1;
        let ahead = self.readahead(seq, offset, end, bs, cached.block_count(), needed.end);
        for round in 0..4 {
            // One claim for what is needed and what lies ahead, so that the kernel's parallel
            // requests for neighbouring blocks join multi-block GETs instead of each starting a
            // one-block GET (blocks are stored as they stream in: the first is not delayed).
            // The window's end is rounded up to whole runs: a window sliding one block at a time
            // would otherwise claim (and GET) one block at a time at its edge.
            let upto = if round == 0 && !ahead.is_empty() {
                let run = self.cfg.max_run_blocks.max(1);
                ahead.end.div_ceil(run).saturating_mul(run).min(cached.block_count()).max(needed.end)
            } else {
                needed.end
            };
            let claims = self.start_fetches(obj, needed.start..upto, needed.end);
            match wait_readable(cached, needed.clone(), claims, obj.serve_fresh).await {
                Ok(Readable::Present) => {}
                Ok(Readable::Fresh(blocks)) => return Ok(copy_fresh(cached, needed.start, &blocks, offset..end)),
                Ok(Readable::Retry) => continue,
                Err(e) => return Err(e),
            }
            let c = cached.clone();
            let res = tokio::task::spawn_blocking(move || c.read_cached(offset, (end - offset) as usize))
                .await
                .map_err(|e| ReadError::task(&obj.remote.uri, e))?;
            match res {
                Ok(buf) => return Ok(buf),
                Err(CacheError::Corrupt { .. }) => continue,
                Err(e) => return Err(ReadError::cache(&obj.remote.uri, e)),
            }
        }
        Err(ReadError::Unstable { uri: obj.remote.uri.clone() })
    }

    /// Fetches files that are neighbouring parts of one object (packed datums of one pack, in
    /// pack order) with one ranged GET for all of them, each file's bytes stored in its own
    /// cache entry. Files with blocks already cached or being fetched are left to their own
    /// reads. Returns once every file fetched here is stored (or failed; its readers see why).
    pub async fn fetch_span(&self, objs: &[Arc<OpenObject>]) {
        let mut span: Vec<(Arc<OpenObject>, Arc<InFlight>)> = Vec::new();
        for obj in objs {
            if obj.remote.window.is_none() {
                continue;
            }
            let blocks = obj.cached.block_count();
            let flight = Arc::new(InFlight::default());
            let runs = obj.cached.claim_missing(0..blocks, || flight.clone(), u64::MAX);
            if runs.len() == 1 && runs[0].0 == (0..blocks) && blocks > 0 {
                span.push((obj.clone(), flight));
            } else {
                // Partly cached or in flight already: give back what was claimed; its own
                // reads fetch the rest.
                for (run, f) in runs {
                    obj.cached.release_failed(run, &f);
                }
            }
        }
        let Some((first, _)) = span.first() else { return };
        let remote = first.remote.clone();
        let start = remote.window.map_or(0, |w| w.offset);
        let end = span.last().and_then(|(o, _)| o.remote.window.map(|w| w.offset + o.remote.size)).unwrap_or(start);
        let _permit = self.inflight.clone().acquire_owned().await;
        let _counted = crate::metrics::fetch_in_flight();
        let mut attempt = 0;
        let body = loop {
            // The first file's window starts the span: its range 0..len is the span's bytes.
            match read_direct(&remote, 0..end - start).await {
                Ok(b) => break Ok(b),
                Err(e) if attempt + 1 < self.cfg.attempts && ReadError::Store(e.clone()).is_transient() => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                }
                Err(e) => break Err(e),
            }
        };
        for (obj, flight) in span {
            let all = 0..obj.cached.block_count();
            let stored = async {
                let body = body.as_ref().map_err(|e| ReadError::Store(e.clone()))?;
                let at = obj.remote.window.map_or(0, |w| w.offset) - start;
                for idx in all.clone() {
                    let r = obj.cached.block_range(idx);
                    let Some(bytes) = body.get((at + r.start) as usize..(at + r.end) as usize) else {
                        return Err(ReadError::Store(StoreError::Unreachable {
                            uri: obj.remote.uri.clone(),
                            cause: "the response ended early".into(),
                        }));
                    };
                    store_fetched(&obj.remote, &obj.cached, &flight, idx, bytes.to_vec()).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = stored {
                tracing::debug!("fetching {} with its neighbours failed: {e}", obj.remote.uri);
                let _ = flight.error.set(Arc::new(e));
                obj.cached.release_failed(all, &flight);
            }
        }
    }

    fn readahead(&self, seq: &Mutex<Sequential>, offset: u64, end: u64, bs: u64, blocks: u64, from: u64) -> Range<u64> {
        let mut s = seq.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.cfg.max_readahead.max(bs);
        // The kernel's own read-ahead sends many requests at once, slightly out of order and up
        // to its window ahead of the last one: a read is sequential when it lands near the
        // furthest point read so far, a little behind it or up to a window ahead.
        let behind = s.window.max(4 * bs);
        let ahead = max + 2 * bs;
        let sequential = offset + behind >= s.next && offset <= s.next + ahead;
        if sequential {
            s.window = (s.window * 2).clamp((INITIAL_WINDOW_BLOCKS * bs).min(max), max);
            s.next = s.next.max(end);
        } else {
            s.window = 0;
            s.next = end;
        }
        let n = s.window / bs;
        tracing::trace!(offset, end, sequential, window = s.window, next = s.next, "read-ahead");
        from..(from + n).min(blocks)
    }

    /// Starts GETs for the missing blocks of `range`; returns the claims it made, whose errors
    /// the caller must see even if a fetch fails before the caller first looks.
    /// Blocks from `ahead_from` on are read-ahead (counted as such in the metrics).
    fn start_fetches(&self, obj: &OpenObject, range: Range<u64>, ahead_from: u64) -> Vec<Arc<InFlight>> {
        let runs = obj.cached.claim_missing(range, || Arc::new(InFlight::default()), self.cfg.max_run_blocks);
        let claims = runs.iter().map(|(_, f)| f.clone()).collect();
        for (run, flight) in runs {
            let ahead = run.start.max(ahead_from)..run.end;
            if !ahead.is_empty() {
                let bytes = obj.cached.block_range(ahead.end - 1).end - obj.cached.block_range(ahead.start).start;
                crate::metrics::read_ahead(bytes);
            }
            let remote = obj.remote.clone();
            let cached = obj.cached.clone();
            let sem = self.inflight.clone();
            let attempts = self.cfg.attempts;
            let in_use = cached.in_use();
            tokio::spawn(async move {
                let _in_use = in_use;
                let _permit = sem.acquire_owned().await;
                let _counted = crate::metrics::fetch_in_flight();
                fetch_run(&remote, &cached, run, flight, attempts).await;
            });
        }
        claims
    }
}

/// What a read found once its blocks could be read.
enum Readable {
    /// Every block is in the cache.
    Present,
    /// Every block has just been fetched and is still being written: their bytes, in order.
    Fresh(Vec<Arc<Vec<u8>>>),
    /// Some block went back to missing without an error (dropped as corrupt): claim again.
    Retry,
}

/// Waits until every block of `range` is present, or (with `fresh`) until every one is at least
/// fetched, whichever comes first.
async fn wait_readable(
    cached: &CachedObject,
    range: Range<u64>,
    claims: Vec<Arc<InFlight>>,
    fresh: bool,
) -> Result<Readable, ReadError> {
    if !fresh {
        return Ok(match wait_present(cached, range, claims).await? {
            true => Readable::Present,
            false => Readable::Retry,
        });
    }
    let mut last_flight: Option<Arc<InFlight>> = None;
    loop {
        let notified = cached.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (mut pending, mut got, mut present) = (false, Vec::new(), 0);
        for i in range.clone() {
            match cached.state(i) {
                BlockState::Present { .. } => present += 1,
                BlockState::Fetching(f) => {
                    if let Some(e) = f.error.get() {
                        return Err(ReadError::of_fetch(e));
                    }
                    match f.fresh(i) {
                        Some(data) => got.push(data),
                        None => {
                            last_flight = Some(f);
                            pending = true;
                            break;
                        }
                    }
                }
                BlockState::Missing => {
                    let failed = last_flight.iter().chain(claims.iter()).find_map(|f| f.error.get());
                    if let Some(e) = failed {
                        return Err(ReadError::of_fetch(e));
                    }
                    return Ok(Readable::Retry);
                }
            }
        }
        // A mix of present and fresh blocks waits for the writes (soon) and reads the cache.
        if !pending && present == range.end - range.start {
            return Ok(Readable::Present);
        }
        if !pending && present == 0 {
            return Ok(Readable::Fresh(got));
        }
        notified.await;
    }
}

/// The bytes `want` out of fresh blocks starting at block `first`.
fn copy_fresh(cached: &CachedObject, first: u64, blocks: &[Arc<Vec<u8>>], want: Range<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity((want.end - want.start) as usize);
    for (k, data) in blocks.iter().enumerate() {
        let r = cached.block_range(first + k as u64);
        let (lo, hi) = (want.start.max(r.start), want.end.min(r.end));
        if lo < hi {
            out.extend_from_slice(&data[(lo - r.start) as usize..(hi - r.start) as usize]);
        }
    }
    out
}

/// Waits until every block of `range` is present. `Ok(false)`: some block went back to missing
/// without an error (dropped as corrupt): claim again.
async fn wait_present(cached: &CachedObject, range: Range<u64>, claims: Vec<Arc<InFlight>>) -> Result<bool, ReadError> {
    let mut last_flight: Option<Arc<InFlight>> = None;
    loop {
        let notified = cached.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut pending = false;
        for i in range.clone() {
            match cached.state(i) {
                BlockState::Present { .. } => {}
                BlockState::Fetching(f) => {
                    if let Some(e) = f.error.get() {
                        return Err(ReadError::of_fetch(e));
                    }
                    last_flight = Some(f);
                    pending = true;
                    break;
                }
                BlockState::Missing => {
                    // A fetch of ours (or one we waited on) that failed released its blocks.
                    let failed = last_flight.iter().chain(claims.iter()).find_map(|f| f.error.get());
                    if let Some(e) = failed {
                        return Err(ReadError::of_fetch(e));
                    }
                    return Ok(false);
                }
            }
        }
        if !pending {
            return Ok(true);
        }
        notified.await;
    }
}

async fn fetch_run(remote: &Remote, cached: &Arc<CachedObject>, run: Range<u64>, flight: Arc<InFlight>, attempts: u32) {
    let mut next = run.start;
    let mut attempt = 0;
    loop {
        match fetch_blocks(remote, cached, &flight, next..run.end, &mut next).await {
            Ok(()) => return,
            Err(e) if e.is_transient() && attempt + 1 < attempts => {
                attempt += 1;
                tracing::debug!(uri = %remote.uri, error = %e, attempt, "retrying a failed read");
                tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            Err(e) => {
                match &e {
                    ReadError::Store(StoreError::Changed { uri, pinned, now }) => tracing::error!(
                        "{uri}: the object changed under the mount (pinned version {pinned}, store now has {now}); reads fail with EIO"
                    ),
                    other => tracing::error!("read failed: {other}"),
                }
                let _ = flight.error.set(Arc::new(e));
                cached.release_failed(run, &flight);
                return;
            }
        }
    }
}

/// Stores fetched block `idx` in the cache; readers waiting for it take it from memory while it
/// is written.
async fn store_fetched(
    remote: &Remote,
    cached: &Arc<CachedObject>,
    flight: &Arc<InFlight>,
    idx: u64,
    data: Vec<u8>,
) -> Result<(), ReadError> {
    let data = Arc::new(data);
    flight.offer(idx, data.clone());
    cached.changed.notify_waiters();
    let c = cached.clone();
    let stored = tokio::task::spawn_blocking(move || c.store_block(idx, &data)).await;
    flight.withdraw(idx);
    stored.map_err(|e| ReadError::task(&remote.uri, e))?.map_err(|e| ReadError::cache(&remote.uri, e))?;
    Ok(())
}

/// One ranged GET for `blocks`; stores each block as soon as its bytes are in.
/// Bytes `range` of the pinned version, straight from the store (the cache could not keep them).
async fn read_direct(remote: &Remote, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
    if range.is_empty() {
        return Ok(Vec::new());
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(remote.object_range(range.clone()))),
        if_match: remote.if_match(),
        ..Default::default()
    };
    let res = remote.store.inner.get_opts(&remote.key, opts).await.map_err(|e| remote.classify(e))?;
    remote.check(&res.meta)?;
    let bytes = res.bytes().await.map_err(|e| remote.classify(e))?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(StoreError::Unreachable { uri: remote.uri.clone(), cause: "the response ended early".into() });
    }
    Ok(bytes.to_vec())
}

/// Downloads the pinned version of `remote` into `file` (from offset 0), `parallel` ranged
/// GETs of `part` bytes at once, past the block cache: a plain download, for bytes that are
/// about to become a local file of their own (a volume file about to be changed).
pub async fn download_into(
    remote: &Remote,
    file: &std::fs::File,
    parallel: usize,
    part: u64,
) -> Result<(), StoreError> {
    use futures::StreamExt;
    use std::os::unix::fs::FileExt;
    let part = part.max(1);
    let ranges = (0..remote.size.div_ceil(part)).map(|i| i * part..((i + 1) * part).min(remote.size));
    let mut parts = futures::stream::iter(ranges)
        .map(|r| async move { (r.start, read_direct(remote, r).await) })
        .buffer_unordered(parallel.max(1));
    while let Some((offset, bytes)) = parts.next().await {
        let bytes = bytes?;
        file.write_all_at(&bytes, offset)
            .map_err(|e| StoreError::Other { uri: remote.uri.clone(), cause: format!("writing the download: {e}") })?;
    }
    Ok(())
}

async fn fetch_blocks(
    remote: &Remote,
    cached: &Arc<CachedObject>,
    flight: &Arc<InFlight>,
    blocks: Range<u64>,
    next: &mut u64,
) -> Result<(), ReadError> {
    if blocks.is_empty() {
        return Ok(());
    }
    let start = cached.block_range(blocks.start).start;
    let end = cached.block_range(blocks.end - 1).end;
    let opts = GetOptions {
        range: Some(GetRange::Bounded(remote.object_range(start..end))),
        if_match: remote.if_match(),
        ..Default::default()
    };
    tracing::debug!(uri = %remote.uri, start, end, "ranged GET");
    let res = remote.store.inner.get_opts(&remote.key, opts).await.map_err(|e| remote.classify(e))?;
    remote.check(&res.meta)?;
    if res.range != remote.object_range(start..end) {
        return Err(ReadError::Store(StoreError::Other {
            uri: remote.uri.clone(),
            cause: format!("asked for bytes {start}..{end}, the store sent {:?}", res.range),
        }));
    }
    let mut stream = res.into_stream();
    let mut idx = blocks.start;
    let mut want = cached.block_range(idx);
    let mut buf: Vec<u8> = Vec::with_capacity((want.end - want.start) as usize);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| remote.classify(e))?;
        while chunk.has_remaining() {
            if idx >= blocks.end {
                return Err(ReadError::Store(StoreError::Other {
                    uri: remote.uri.clone(),
                    cause: "the store sent more bytes than asked for".into(),
                }));
            }
            let need = (want.end - want.start) as usize - buf.len();
            let take = need.min(chunk.len());
            buf.extend_from_slice(&chunk[..take]);
            chunk.advance(take);
            if buf.len() as u64 == want.end - want.start {
                store_fetched(remote, cached, flight, idx, std::mem::take(&mut buf)).await?;
                idx += 1;
                *next = idx;
                if idx < blocks.end {
                    want = cached.block_range(idx);
                    buf = Vec::with_capacity((want.end - want.start) as usize);
                }
            }
        }
    }
    if idx < blocks.end {
        let cause = "the response ended early".into();
        return Err(ReadError::Store(StoreError::Unreachable { uri: remote.uri.clone(), cause }));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
