//! One cached object: where its bytes live (a sparse file of its own, or a slot in a pack file),
//! which blocks are present, and their checksums.

use super::pack::DataFile;
use super::{now_secs, CacheError, CacheShared, FileStamp, ObjectId, ObjectRecord};
use crate::checksum::{Checksums, MultiHasher};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// The buffer a thread checks cached blocks in.
    static BLOCK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Last-access times are written to the index at most this often per object.
const TOUCH_INTERVAL_SECS: u64 = 60;

/// Why a fetch gave up, as the fetcher (the reader) put it; the cache only keeps it for the
/// waiters, without knowing what it is.
pub type FetchError = Arc<dyn std::error::Error + Send + Sync>;

/// A fetch in progress; waiters learn its failure here.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Set when the fetch gave up; blocks it held are back to `Missing`.
    pub error: OnceLock<FetchError>,
    /// Blocks whose bytes are in but not yet written to the cache: a reader waiting for one is
    /// answered from here instead of waiting for the write and reading it back.
    fresh: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

impl InFlight {
    fn lock_fresh(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<Vec<u8>>)>> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers block `idx`'s bytes to readers while they are being written.
    pub fn offer(&self, idx: u64, data: Arc<Vec<u8>>) {
        self.lock_fresh().push((idx, data));
    }

    /// Withdraws block `idx`'s bytes: written (readers now find it present) or failed.
    pub fn withdraw(&self, idx: u64) {
        self.lock_fresh().retain(|(i, _)| *i != idx);
    }

    /// Block `idx`'s bytes, if this fetch has them in memory.
    pub fn fresh(&self, idx: u64) -> Option<Arc<Vec<u8>>> {
        self.lock_fresh().iter().find(|(i, _)| *i == idx).map(|(_, d)| d.clone())
    }
}

/// Where one block stands.
#[derive(Debug, Clone)]
pub enum BlockState {
    /// Not cached and nobody is fetching it.
    Missing,
    /// Being fetched; wait for the object's notification.
    Fetching(Arc<InFlight>),
    /// On disk with this CRC32C; `verified` once checked (or written) by this process.
    Present {
        /// CRC32C of the block's bytes.
        crc: u32,
        /// Whether this process has checked the bytes against `crc`.
        verified: bool,
    },
}

/// A cached object in use by at least one reader.
pub struct CachedObject {
    id: ObjectId,
    /// The file holding the bytes, from `base` on.
    data: Arc<DataFile>,
    base: u64,
    /// Whether `data` is a pack shared with other objects (never handed to the kernel whole).
    packed: bool,
    size: u64,
    block_size: u64,
    blocks: Mutex<Vec<BlockState>>,
    present: AtomicU64,
    /// Woken whenever a block changes state.
    pub changed: tokio::sync::Notify,
    record: Mutex<ObjectRecord>,
    checksums: tokio::sync::OnceCell<Checksums>,
    shared: Arc<CacheShared>,
    /// Open files and fetches using it: while any, it is never evicted.
    users: AtomicU64,
    /// Set once evicted: nothing of it is written to the index any more.
    pub(super) evicted: std::sync::atomic::AtomicBool,
}

/// Marks a cached object as in use (an open file, a fetch) for as long as it lives.
pub struct InUse(Arc<CachedObject>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn block_key(id: &ObjectId, block: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&block.to_be_bytes());
    k
}

pub(super) fn load_block_crcs(blocks: &sled::Tree, id: &ObjectId) -> sled::Result<HashMap<u64, u32>> {
    let mut out = HashMap::new();
    for kv in blocks.scan_prefix(id.0) {
        let (k, v) = kv?;
        if k.len() == 40 && v.len() == 4 {
            let idx = u64::from_be_bytes(k[32..40].try_into().unwrap_or_default());
            let crc = u32::from_be_bytes(v[..4].try_into().unwrap_or_default());
            out.insert(idx, crc);
        }
    }
    Ok(out)
}

pub(super) fn drop_blocks(blocks: &sled::Tree, id: &ObjectId) -> sled::Result<()> {
    for kv in blocks.scan_prefix(id.0).keys() {
        blocks.remove(kv?)?;
    }
    Ok(())
}

impl CachedObject {
    pub(super) fn new(
        id: ObjectId,
        data: Arc<DataFile>,
        base: u64,
        record: ObjectRecord,
        crcs: HashMap<u64, u32>,
        shared: Arc<CacheShared>,
    ) -> Self {
        let size = record.size;
        let block_size = record.block_size.max(4096);
        let n = size.div_ceil(block_size);
        let mut blocks = vec![BlockState::Missing; n as usize];
        let mut present = 0;
        for (idx, crc) in crcs {
            if idx < n {
                blocks[idx as usize] = BlockState::Present { crc, verified: false };
                present += 1;
            }
        }
        // Checked whole earlier in this boot and untouched since: reading every block again to
        // check it would find what was checked then.
        let packed = record.packed.is_some();
        if !packed && present == n && record.checked.is_some() && record.checked == FileStamp::of(&data.file) {
            for b in &mut blocks {
                if let BlockState::Present { verified, .. } = b {
                    *verified = true;
                }
            }
        }
        let checksums = tokio::sync::OnceCell::new();
        if let Some(c) = record.checksums.clone() {
            if present == n {
                let _ = checksums.set(c);
            }
        }
        Self {
            id,
            data,
            base,
            packed,
            size,
            block_size,
            blocks: Mutex::new(blocks),
            present: AtomicU64::new(present),
            changed: tokio::sync::Notify::new(),
            record: Mutex::new(record),
            checksums,
            shared,
            users: AtomicU64::new(0),
            evicted: Default::default(),
        }
    }

    /// Marks the object in use until the guard is dropped.
    pub fn in_use(self: &Arc<Self>) -> InUse {
        self.users.fetch_add(1, Ordering::AcqRel);
        InUse(self.clone())
    }

    /// Whether an open file or a fetch uses it.
    pub fn is_in_use(&self) -> bool {
        self.users.load(Ordering::Acquire) > 0
    }

    /// Whether it was evicted (a new open starts a fresh entry instead).
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size this object is cut with.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Byte range of block `idx`.
    pub fn block_range(&self, idx: u64) -> std::ops::Range<u64> {
        let start = idx * self.block_size;
        start..(start + self.block_size).min(self.size)
    }

    /// Whether its bytes live in a pack file shared with other small objects.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Whether every block is on disk.
    pub fn is_complete(&self) -> bool {
        self.present.load(Ordering::Acquire) == self.block_count()
    }

    /// Whether every block is on disk or being fetched (the object completes unless a fetch fails).
    pub fn is_filling(&self) -> bool {
        self.lock_blocks().iter().all(|b| !matches!(b, BlockState::Missing))
    }

    /// Waits until every block is on disk; false as soon as one is missing with no fetch for it.
    pub async fn wait_complete(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_complete() {
                return true;
            }
            if !self.is_filling() {
                return false;
            }
            notified.await;
        }
    }

    /// State of block `idx`.
    pub fn state(&self, idx: u64) -> BlockState {
        self.lock_blocks().get(idx as usize).cloned().unwrap_or(BlockState::Missing)
    }

    fn lock_blocks(&self) -> std::sync::MutexGuard<'_, Vec<BlockState>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks every missing block in `range` as fetched by `flight` and returns the claimed
    /// blocks, grouped into contiguous runs of at most `max_run` blocks.
    pub fn claim_missing(
        &self,
        range: std::ops::Range<u64>,
        flight_for_run: impl Fn() -> Arc<InFlight>,
        max_run: u64,
    ) -> Vec<(std::ops::Range<u64>, Arc<InFlight>)> {
        let mut blocks = self.lock_blocks();
        let end = range.end.min(blocks.len() as u64);
        let mut runs: Vec<(std::ops::Range<u64>, Arc<InFlight>)> = Vec::new();
        let mut i = range.start;
        while i < end {
            if !matches!(blocks[i as usize], BlockState::Missing) {
                i += 1;
                continue;
            }
            let start = i;
            let flight = flight_for_run();
            while i < end && i - start < max_run && matches!(blocks[i as usize], BlockState::Missing) {
                blocks[i as usize] = BlockState::Fetching(flight.clone());
                i += 1;
            }
            runs.push((start..i, flight));
        }
        runs
    }

    /// Gives back blocks of a failed fetch: those still held by `flight` become `Missing`.
    pub fn release_failed(&self, range: std::ops::Range<u64>, flight: &Arc<InFlight>) {
        {
            let mut blocks = self.lock_blocks();
            for i in range {
                if let Some(BlockState::Fetching(f)) = blocks.get(i as usize) {
                    if Arc::ptr_eq(f, flight) {
                        blocks[i as usize] = BlockState::Missing;
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Writes block `idx` (blocking I/O), then records it in the index. Returns true when this
    /// write completed the object.
    pub fn store_block(&self, idx: u64, data: &[u8]) -> Result<bool, CacheError> {
        let range = self.block_range(idx);
        debug_assert_eq!(data.len() as u64, range.end - range.start);
        // Without a cap or floor this is one atomic load; a block written again is counted as new
        // here, which at worst evicts a little early.
        self.shared.make_room(data.len() as u64)?;
        let turn = self.data.write_turn.lock().unwrap_or_else(|e| e.into_inner());
        self.data.file.write_all_at(data, self.base + range.start).map_err(|error| self.io(error))?;
        // Start writing a big object's blocks back now, asynchronously: a cache filling at
        // network speed otherwise piles up dirty pages until the kernel throttles every writer.
        // Small objects are left to the kernel's own writeback (one I/O per file is waste).
        if self.size >= 16 * self.block_size {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor and a range inside the file; the call only queues I/O.
            unsafe {
                libc::sync_file_range(
                    self.data.file.as_raw_fd(),
                    (self.base + range.start) as libc::off64_t,
                    data.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        drop(turn);
        let crc = crc32c::crc32c(data);
        if self.is_evicted() {
            return Err(self.io(std::io::Error::other("the object was evicted while its block was fetched")));
        }
        self.shared
            .blocks
            .insert(block_key(&self.id, idx), &crc.to_be_bytes())
            .map_err(|error| CacheError::Index { path: self.shared.dir.join("index"), error })?;
        self.shared.stats.fetched_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.shared.hash_batch.fetched();
        let newly = {
            let mut blocks = self.lock_blocks();
            let was_present = matches!(blocks[idx as usize], BlockState::Present { .. });
            blocks[idx as usize] = BlockState::Present { crc, verified: true };
            !was_present
        };
        if newly {
            self.shared.used.fetch_add(data.len() as u64, Ordering::AcqRel);
        }
        let complete = newly && self.present.fetch_add(1, Ordering::AcqRel) + 1 == self.block_count();
        if complete {
            self.stamp_if_checked();
            self.shared.durability.request();
        }
        self.changed.notify_waiters();
        Ok(complete)
    }

    /// Records that the complete data file matches its block CRCs right now, if every block was
    /// written or checked by this process; a later start in this boot then trusts it unread.
    fn stamp_if_checked(&self) {
        let all_checked = !self.packed
            && self.is_complete()
            && self.lock_blocks().iter().all(|b| matches!(b, BlockState::Present { verified: true, .. }));
        if let Some(stamp) = all_checked.then(|| FileStamp::of(&self.data.file)).flatten() {
            self.update_record(|rec| {
                rec.checked = Some(stamp);
                true
            });
        }
    }

    fn drop_block(&self, idx: u64) {
        let _ = self.shared.blocks.remove(block_key(&self.id, idx));
        self.update_record(|rec| rec.checked.take().is_some());
        let was_present = {
            let mut blocks = self.lock_blocks();
            let was = matches!(blocks[idx as usize], BlockState::Present { .. });
            blocks[idx as usize] = BlockState::Missing;
            was
        };
        if was_present {
            self.present.fetch_sub(1, Ordering::AcqRel);
            let range = self.block_range(idx);
            let bs = range.end - range.start;
            let _ = self.shared.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bs)));
        }
        self.shared.stats.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Reads `len` bytes at `offset` from present blocks (blocking I/O). Blocks not yet verified by
    /// this process are read whole and checked first; a bad block is dropped and reported.
    pub fn read_cached(&self, offset: u64, len: usize) -> Result<Vec<u8>, CacheError> {
        let end = (offset + len as u64).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size;
        for idx in first..=last {
            let crc = match self.state(idx) {
                BlockState::Present { verified: true, .. } => continue,
                BlockState::Present { crc, verified: false } => crc,
                _ => return Err(self.io_missing(idx)),
            };
            self.verify_block(idx, crc)?;
        }
        let buf = read_exact_at_uninit(&self.data.file, (end - offset) as usize, self.base + offset)
            .map_err(|error| self.io(error))?;
        self.shared.stats.hit_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf)
    }

    fn io(&self, error: std::io::Error) -> CacheError {
        CacheError::Io { path: self.data.path.clone(), error }
    }

    fn io_missing(&self, idx: u64) -> CacheError {
        self.io(std::io::Error::other(format!("block {idx} is not cached")))
    }

    fn verify_block(&self, idx: u64, crc: u32) -> Result<(), CacheError> {
        let range = self.block_range(idx);
        // One buffer per thread, reused: a fresh megabyte per block costs more than the check.
        let ok = BLOCK_BUF.with_borrow_mut(|buf| {
            buf.resize((range.end - range.start) as usize, 0);
            self.data.file.read_exact_at(buf, self.base + range.start).is_ok() && crc32c::crc32c(buf) == crc
        });
        if !ok {
            let uri = self.record().uri;
            tracing::warn!(uri = %uri, block = idx, "cached block failed its checksum; dropped, will fetch again");
            self.drop_block(idx);
            return Err(CacheError::Corrupt { uri, block: idx });
        }
        let mut blocks = self.lock_blocks();
        if let Some(BlockState::Present { verified, .. }) = blocks.get_mut(idx as usize) {
            *verified = true;
        }
        Ok(())
    }

    /// Verifies every block not yet verified by this process (blocking; several threads), so the
    /// whole data file may be handed to the kernel. Bad blocks are dropped and reported.
    pub fn verify_all(&self) -> Result<(), CacheError> {
        let todo: Vec<(u64, u32)> = (0..self.block_count())
            .filter_map(|i| match self.state(i) {
                BlockState::Present { crc, verified: false } => Some((i, crc)),
                _ => None,
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        if let [(i, crc)] = todo[..] {
            self.verify_block(i, crc)?;
            self.stamp_if_checked();
            return Ok(());
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
        let chunk = todo.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = todo
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().try_for_each(|&(i, crc)| self.verify_block(i, crc))))
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(self.io_missing(0))))
        })?;
        self.stamp_if_checked();
        Ok(())
    }

    /// The data file, opened read-only, for the kernel to read directly (FUSE passthrough).
    /// Only offered once every block is present and verified, and never for a packed object.
    pub fn verified_data_file(&self) -> Option<File> {
        if self.packed || !self.is_complete() {
            return None;
        }
        let all_verified = self.lock_blocks().iter().all(|b| matches!(b, BlockState::Present { verified: true, .. }));
        if !all_verified {
            return None;
        }
        File::open(&self.data.path).ok()
    }

    /// The content checksums, if they were computed already.
    pub fn known_checksums(&self) -> Option<&Checksums> {
        self.checksums.get()
    }

    /// The content checksums, computing them from the cached file (verifying every block on the
    /// way) the first time they are asked for. Only call once the object is complete.
    pub async fn checksums(self: &Arc<Self>) -> Result<Checksums, CacheError> {
        if let Some(sums) = self.checksums.get() {
            return Ok(sums.clone());
        }
        let _urgent = self.shared.hash_batch.urgent();
        self.compute_checksums().await
    }

    /// [`Self::checksums`] for a caller that does not wait on them: they are computed once the
    /// fetches pause, so that they never take the CPU cold reads need.
    pub async fn checksums_in_background(self: &Arc<Self>) -> Result<Checksums, CacheError> {
        self.compute_checksums().await
    }

    async fn compute_checksums(self: &Arc<Self>) -> Result<Checksums, CacheError> {
        let this = self.clone();
        self.checksums
            .get_or_try_init(|| async move {
                let worker = this.clone();
                // Hashing a large file takes seconds of CPU: the reads that jobs wait on go first,
                // and unless someone waits, so do the fetches still coming in.
                let sums = if this.size <= BATCHED_MAX {
                    HashBatch::checksums(&this.shared, worker).await
                } else {
                    let (batch, asked) = (&this.shared.hash_batch, Instant::now());
                    batch.until_quiet(|| batch.is_urgent() || asked.elapsed() >= DEFERRED_FOR).await;
                    this.shared.hashing.run(move || worker.hash_file()).await
                };
                let sums = sums.ok_or_else(|| this.io(std::io::Error::other("the checksum thread is gone")))??;
                this.update_record(|rec| {
                    rec.checksums = Some(sums.clone());
                    true
                });
                Ok(sums)
            })
            .await
            .cloned()
    }

    fn hash_file(&self) -> Result<Checksums, CacheError> {
        let mut hasher = MultiHasher::new();
        self.read_verified(|chunk| hasher.update(chunk))?;
        Ok(hasher.finish())
    }

    /// The whole content, block by block, each checked against its CRC first; a block that
    /// fails is dropped (fetched again on the next read) and named in the error.
    fn read_verified(&self, mut each: impl FnMut(&[u8])) -> Result<(), CacheError> {
        let mut buf = vec![0u8; self.block_size.min(self.size) as usize];
        for idx in 0..self.block_count() {
            let crc = match self.state(idx) {
                BlockState::Present { crc, .. } => crc,
                _ => return Err(self.io_missing(idx)),
            };
            let range = self.block_range(idx);
            let chunk = &mut buf[..(range.end - range.start) as usize];
            self.data.file.read_exact_at(chunk, self.base + range.start).map_err(|error| self.io(error))?;
            if crc32c::crc32c(chunk) != crc {
                let uri = self.record().uri;
                self.drop_block(idx);
                return Err(CacheError::Corrupt { uri, block: idx });
            }
            each(chunk);
        }
        Ok(())
    }

    /// A copy of the index record.
    pub fn record(&self) -> ObjectRecord {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the record and writes it to the index, as one step: concurrent changes (a last
    /// access, checksums, a check stamp) never undo each other.
    fn update_record(&self, change: impl FnOnce(&mut ObjectRecord) -> bool) {
        let mut rec = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if !change(&mut rec) || self.is_evicted() {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(&*rec) {
            if let Err(e) = self.shared.objects.insert(self.id.0, bytes) {
                tracing::warn!(uri = %rec.uri, error = %e, "could not update the cache index");
            }
        }
    }

    /// Records an access; writes the index only when the stored time is stale, so reads stay cheap.
    pub fn touch(&self) {
        let now = now_secs();
        self.update_record(|rec| {
            let stale = now.saturating_sub(rec.last_access) >= TOUCH_INTERVAL_SECS
                || self.shared.objects.get(self.id.0).ok().flatten().is_none();
            if stale {
                rec.last_access = now;
            }
            stale
        });
    }
}

/// Reads exactly `len` bytes at `offset` into a new buffer, without zeroing it first (at a
/// megabyte per read, the zeroing costs as much as the copy).
fn read_exact_at_uninit(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `spare.len()` bytes into memory this Vec owns.
        let n = unsafe {
            libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), (offset + done as u64) as libc::off_t)
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: the kernel initialised these `n` bytes.
            n => unsafe { buf.set_len(done + n as usize) },
        }
    }
    Ok(buf)
}

/// Objects up to this size are checksummed together with others waiting (their md5s side by
/// side, see [`crate::checksum::digests_of_many`]); bigger ones on their own, streaming.
const BATCHED_MAX: u64 = 256 << 10;
/// Objects checksummed together at most.
const BATCH: usize = 32;
/// Checksums nobody waits for wait until the cache has stored no fetched block for this long:
/// on a machine with few cores, hashing beside a burst of cold reads takes the CPU they need.
const QUIET: Duration = Duration::from_millis(200);
/// Small objects whose checksums wait for quiet, at most (they stay pinned in the cache until
/// then; a big object waits on its own).
const DEFERRED_MAX: usize = 16_384;
/// Bytes of objects whose checksums wait for quiet, at most (a quarter of the cache's cap
/// when that is smaller).
const DEFERRED_BYTES: u64 = 2 << 30;
/// Longest a checksum waits for quiet: reads that never pause still get their checksums.
const DEFERRED_FOR: Duration = Duration::from_secs(30);

/// A small object waiting to be checksummed, and where its checksums go.
type Waiting = (Arc<CachedObject>, tokio::sync::oneshot::Sender<Result<Checksums, CacheError>>);

/// Small objects waiting to be checksummed together. The first to wait queues a job on the
/// checksum threads; those that come before it runs join it. A walk through many small files
/// so costs little more md5 than one file does. Unless someone waits for a result, the job
/// first waits for the fetches to pause (see [`QUIET`]).
pub(crate) struct HashBatch {
    waiting: Mutex<Deferred>,
    /// Wakes a job held back for quiet when it becomes due before that.
    due: tokio::sync::Notify,
    /// Callers waiting for checksums (an open checking a datum, an xattr): jobs run now.
    urgent: AtomicUsize,
    /// When the cache last stored a fetched block, in milliseconds since `origin`.
    last_fetch_ms: AtomicU64,
    origin: Instant,
}

/// The objects of the next checksum job.
#[derive(Default)]
struct Deferred {
    objs: Vec<Waiting>,
    bytes: u64,
    since: Option<Instant>,
}

/// Whether a checksum job holding `held` objects of `bytes` since `since` must run now, with
/// the cache's cap at `cap` (0: none).
pub(super) fn held_job_is_due(held: usize, bytes: u64, since: Option<Instant>, cap: u64, urgent: bool) -> bool {
    let max_bytes = if cap > 0 { DEFERRED_BYTES.min(cap / 4) } else { DEFERRED_BYTES };
    urgent || held >= DEFERRED_MAX || bytes >= max_bytes || since.is_some_and(|t| t.elapsed() >= DEFERRED_FOR)
}

/// Queues the waiting objects' checksum job when dropped: however the wait for quiet ends
/// (even cancelled, or a panic), nobody is left waiting for a job that never runs.
struct SubmitOnDrop(Arc<CacheShared>);

impl Drop for SubmitOnDrop {
    fn drop(&mut self) {
        let shared = self.0.clone();
        self.0.hashing.submit(move || shared.hash_batch.hash_waiting());
    }
}

/// Keeps [`HashBatch`] jobs running at once while someone waits for a result.
pub(super) struct UrgentGuard<'a>(&'a HashBatch);

impl Drop for UrgentGuard<'_> {
    fn drop(&mut self) {
        self.0.urgent.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for HashBatch {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            due: tokio::sync::Notify::new(),
            urgent: AtomicUsize::new(0),
            last_fetch_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl HashBatch {
    /// The checksums of `obj` (complete, at most [`BATCHED_MAX`]), computed with whatever else
    /// waits; `None` if the checksum threads are gone.
    async fn checksums(shared: &Arc<CacheShared>, obj: Arc<CachedObject>) -> Option<Result<Checksums, CacheError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = &shared.hash_batch;
        let (first, due) = {
            let mut waiting = this.lock();
            waiting.bytes += obj.size;
            waiting.objs.push((obj, tx));
            waiting.since.get_or_insert_with(Instant::now);
            (waiting.objs.len() == 1, this.is_due(&waiting, shared))
        };
        if first {
            let job = SubmitOnDrop(shared.clone());
            tokio::spawn(async move {
                let (batch, shared) = (&job.0.hash_batch, &job.0);
                batch.until_quiet(|| batch.is_due(&batch.lock(), shared)).await;
                drop(job);
            });
        } else if due {
            this.due.notify_waiters();
        }
        rx.await.ok()
    }

    /// Someone waits for checksums: jobs run at once until the guard is dropped.
    pub(super) fn urgent(&self) -> UrgentGuard<'_> {
        self.urgent.fetch_add(1, Ordering::AcqRel);
        self.due.notify_waiters();
        UrgentGuard(self)
    }

    /// Whether the `waiting` job must run now, fetches or not.
    fn is_due(&self, waiting: &Deferred, shared: &CacheShared) -> bool {
        let cap = shared.cap.load(Ordering::Relaxed);
        held_job_is_due(waiting.objs.len(), waiting.bytes, waiting.since, cap, self.is_urgent())
    }

    /// Whether someone waits for checksums now.
    fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Acquire) > 0
    }

    /// The cache stored a fetched block.
    pub(crate) fn fetched(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        // A plain load first: the store is a write to a line every fetch shares.
        if self.last_fetch_ms.load(Ordering::Relaxed) != ms {
            self.last_fetch_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// How long since the cache last stored a fetched block.
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_fetch_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Returns once the fetches have paused for [`QUIET`], or once `due` (checked again
    /// whenever someone starts waiting for checksums, and at least every [`QUIET`]).
    async fn until_quiet(&self, due: impl Fn() -> bool) {
        loop {
            let woken = self.due.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let quiet_for = self.quiet_for();
            if quiet_for >= QUIET || due() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(QUIET - quiet_for) => {}
                _ = woken => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checksums everything waiting, [`BATCH`] at a time.
    fn hash_waiting(&self) {
        let waiting = std::mem::take(&mut *self.lock()).objs;
        let mut waiting = waiting.into_iter().peekable();
        while waiting.peek().is_some() {
            let mut read = Vec::with_capacity(BATCH);
            for (obj, tx) in waiting.by_ref().take(BATCH) {
                let mut data = Vec::with_capacity(obj.size as usize);
                match obj.read_verified(|chunk| data.extend_from_slice(chunk)) {
                    Ok(()) => read.push((data, tx)),
                    Err(e) => drop(tx.send(Err(e))),
                }
            }
            let contents: Vec<&[u8]> = read.iter().map(|(data, _)| data.as_slice()).collect();
            let digests = crate::checksum::digests_of_many(&contents);
            for ((_, tx), digests) in read.into_iter().zip(digests) {
                let _ = tx.send(Ok(digests.to_checksums()));
            }
        }
    }
}
