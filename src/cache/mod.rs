//! The on-disk block cache: a sled index plus one sparse file per object, or for small objects a
//! slot in a shared pack file.
//!
//! Owns the cache directory (0700) and every file in it (0600). An object is identified by a
//! hash of (store URL, key, pinned version), so a changed object never reuses old bytes. A block
//! is recorded in the index only after its bytes are written, with its CRC32C; a cached block's
//! checksum is verified before its bytes are served for the first time in a process (and a bad
//! block is dropped and fetched again). Knows nothing of stores or FUSE.

mod lifecycle;
pub mod low_priority;
mod object;
mod open_table;
mod pack;

pub use lifecycle::{CacheReport, EvictReport, EvictWhat, ReconcileReport, VerifyReport};
pub use object::{BlockState, CachedObject, FetchError, InFlight, InUse};
pub use pack::{PackSlot, PACK_MAX};

use crate::checksum::Checksums;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// A cache failure, naming the file or index it concerns.
#[derive(Debug, Error)]
pub enum CacheError {
    /// The cache directory or a cache file could not be used.
    #[error("cache {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The sled index could not be opened or written.
    #[error("cache index {path}: {error}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// sled's error.
        error: sled::Error,
    },
    /// The cap (or the free-space floor) is reached and everything cached is in use.
    #[error("the cache is full: open files hold all of what --cache-size / --cache-min-free allow")]
    Full,
    /// A cached block failed its checksum; it has been dropped and must be fetched again.
    #[error("cached block {block} of {uri} failed its checksum and was dropped")]
    Corrupt {
        /// The object's URI.
        uri: String,
        /// The block index.
        block: u64,
    },
}

/// What the index remembers of a cached object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's URI, for `status` and messages.
    pub uri: String,
    /// The pinned version (ETag, or the modification time where the store has no ETag).
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size the object's blocks were cut with.
    pub block_size: u64,
    /// Last access, seconds since the epoch.
    pub last_access: u64,
    /// Content checksums, once the whole object has been read.
    pub checksums: Option<Checksums>,
    /// When every block of the complete data file was last known to match its CRC: written or
    /// checked by a daemon. Valid while the machine has not restarted and the file has not changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<FileStamp>,
    /// The slot holding the bytes, for an object kept in a pack file (none: a file of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackSlot>,
}

/// Identifies one state of a data file within one boot of the machine: a crash before the page
/// cache reached the disk changes the boot, any write or truncation changes the change time, and
/// a replaced file has another inode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStamp {
    /// The kernel's boot id.
    pub boot: String,
    /// Inode number of the data file.
    pub ino: u64,
    /// Change time of the data file, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp of `file` now; None where the boot id cannot be read (then nothing is trusted).
    pub fn of(file: &std::fs::File) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let boot = BOOT
            .get_or_init(|| {
                std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
            })
            .clone()
            .filter(|b| !b.is_empty())?;
        let meta = file.metadata().ok()?;
        Some(Self { boot, ino: meta.ino(), ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128 })
    }
}

/// A remembered object version: what a HEAD answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinRecord {
    /// The ETag, if the store gave one.
    pub etag: Option<String>,
    /// The modification time (RFC 3339).
    pub last_modified: String,
}

/// Identity of a cached object: sha256 of (store URL, key, version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `key` at `version` in the store at `store_url`.
    pub fn of(store_url: &str, key: &str, version: &str) -> Self {
        let mut h = Sha256::new();
        for part in [store_url, key, version] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        ObjectId(h.finalize().into())
    }

    /// Lowercase hex, used as the data file's name.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Bytes served from cached blocks.
    pub hit_bytes: AtomicU64,
    /// Bytes written into the cache from the store.
    pub fetched_bytes: AtomicU64,
    /// Blocks that failed verification and were dropped.
    pub corrupt_blocks: AtomicU64,
    /// Objects evicted (idle, over the cap, short of free space, or asked to).
    pub evicted_objects: AtomicU64,
    /// Bytes those evictions freed.
    pub evicted_bytes: AtomicU64,
}

pub(crate) struct CacheShared {
    pub(crate) dir: PathBuf,
    pub(crate) pins: sled::Tree,
    pub(crate) objects: sled::Tree,
    pub(crate) blocks: sled::Tree,
    pub(crate) stats: CacheStats,
    /// Objects in use (never evicted), one slot each.
    pub(crate) open: open_table::OpenTable,
    /// Bytes of the blocks present in the index.
    pub(crate) used: AtomicU64,
    /// The size cap in bytes (0: none).
    pub(crate) cap: AtomicU64,
    /// Free space to leave on the cache's filesystem, in bytes (0: none).
    pub(crate) min_free: AtomicU64,
    /// One eviction at a time.
    pub(crate) evicting: Mutex<()>,
    /// Whether "over the cap with nothing evictable" was already said.
    pub(crate) warned_full: std::sync::atomic::AtomicBool,
    /// Asks for the index to be written out soon (an object just became complete).
    pub(crate) durability: Arc<Durability>,
    /// The pack files small objects live in.
    pub(crate) packs: pack::Packs,
    /// Threads that checksum whole objects, at a low priority.
    pub(crate) hashing: low_priority::LowPriorityPool,
    /// Small objects waiting to be checksummed together.
    pub(crate) hash_batch: object::HashBatch,
}

/// Makes complete objects durable shortly after they complete, whatever sled's own flush timer
/// says: a `kill -9` right after a file was read whole must not cost a new download of it.
/// One background thread flushes; completions during a flush are covered by the next one, so
/// many small files cost a few flushes, not one each, and the fetch path never waits for one.
/// (Spacing flushes further apart cuts the thread wake-ups of a burst of small files, but sled
/// then holds more unwritten state: 50 ms apart raised the daemon's peak RSS reading 100,000
/// packed files from about 190 to 240 MiB.)
#[derive(Default)]
pub(crate) struct Durability {
    pending: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Durability {
    /// Asks for a flush.
    pub(crate) fn request(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !*pending {
            *pending = true;
            self.wake.notify_one();
        }
    }

    /// Flushes the index of `shared` whenever asked, until the cache is gone.
    fn run(self: Arc<Self>, shared: std::sync::Weak<CacheShared>) {
        loop {
            let pending = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if !*p {
                    p = self
                        .wake
                        .wait_timeout(p, std::time::Duration::from_secs(1))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                std::mem::take(&mut *p)
            };
            let Some(shared) = shared.upgrade() else { return };
            if pending {
                if let Err(e) = shared.blocks.flush() {
                    tracing::warn!("cache index {}: flush failed: {e}", shared.dir.join("index").display());
                }
            }
        }
    }
}

/// The cache of one daemon: index, data files and the objects currently in use.
pub struct Cache {
    shared: Arc<CacheShared>,
    db: sled::Db,
    block_size: u64,
}

/// Now, in seconds since the epoch, as last-access times are kept.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Creates `path` (and parents) as a directory private to the current user.
pub fn create_private_dir(path: &Path) -> Result<(), CacheError> {
    crate::util::create_private_dir(path).map_err(|error| CacheError::Io { path: path.to_path_buf(), error })
}

/// Memory sled may hold for the cache index (and the outputs' sync state in the same database).
/// Reading back 100,000 small files, 16 MiB measured as fast as 32 with 15 MiB less at the
/// peak; 8 MiB was about 10% slower.
const INDEX_CACHE: u64 = 16 << 20;

impl Cache {
    /// Runs `work` with every checksum request treated as waited for: checksums held back
    /// for a pause in the fetches are computed now.
    pub async fn while_checksums_wanted<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let _urgent = self.shared.hash_batch.urgent();
        work.await
    }

    /// Opens (or creates) the cache in `dir`; new objects are cut into `block_size` blocks.
    pub fn open(dir: &Path, block_size: u64) -> Result<Self, CacheError> {
        create_private_dir(dir)?;
        create_private_dir(&dir.join("objects"))?;
        create_private_dir(&dir.join(pack::PACK_DIR))?;
        let index = dir.join("index");
        let db = sled::Config::new()
            .path(&index)
            .cache_capacity(INDEX_CACHE)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|error| CacheError::Index { path: index.clone(), error })?;
        let objects = db.open_tree("objects").map_err(|error| CacheError::Index { path: index.clone(), error })?;
        let blocks = db.open_tree("blocks").map_err(|error| CacheError::Index { path: index.clone(), error })?;
        let pins = db.open_tree("pins").map_err(|error| CacheError::Index { path: index.clone(), error })?;
        let shared = Arc::new(CacheShared {
            dir: dir.to_path_buf(),
            pins,
            objects,
            blocks,
            stats: CacheStats::default(),
            open: open_table::OpenTable::default(),
            used: AtomicU64::new(0),
            cap: AtomicU64::new(0),
            min_free: AtomicU64::new(0),
            evicting: Mutex::new(()),
            warned_full: Default::default(),
            durability: Arc::default(),
            packs: pack::Packs::new(dir),
            hashing: low_priority::LowPriorityPool::start(
                "datumfs-hash",
                std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            )
            .map_err(|error| CacheError::Io { path: index.clone(), error })?,
            hash_batch: Default::default(),
        });
        {
            let (durability, weak) = (shared.durability.clone(), Arc::downgrade(&shared));
            std::thread::Builder::new()
                .name("datumfs-flush".into())
                .spawn(move || durability.run(weak))
                .map_err(|error| CacheError::Io { path: index.clone(), error })?;
        }
        let used = shared.records().iter().map(|(id, rec)| shared.block_bytes(id, rec)).sum();
        shared.used.store(used, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { shared, db, block_size })
    }

    /// Caps the bytes of cached blocks: before a block is written, the least recently used
    /// objects that are not open are evicted to make room.
    pub fn set_cap(&self, cap: Option<u64>) {
        self.shared.cap.store(cap.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps at least `bytes` free on the filesystem holding the cache, evicting as for the cap.
    pub fn set_min_free(&self, bytes: u64) {
        self.shared.min_free.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The index database, for the other index users of the daemon (the outputs' sync state).
    pub fn index(&self) -> &sled::Db {
        &self.db
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters since the daemon started.
    pub fn stats(&self) -> &CacheStats {
        &self.shared.stats
    }

    /// Bytes of the blocks the cache holds.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its size cap in bytes (0: none).
    pub fn cap_bytes(&self) -> u64 {
        self.shared.cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The object `key` at `version`, opened once and shared by every reader while in use.
    /// Blocks cached by earlier runs are known from the index (and verified before use).
    pub fn object(
        &self,
        store_url: &str,
        key: &str,
        version: &str,
        size: u64,
        uri: &str,
    ) -> Result<Arc<CachedObject>, CacheError> {
        let id = ObjectId::of(store_url, key, version);
        self.shared.open.with_turn(id, |turn| {
            if let Some(obj) = turn.get().filter(|o| !o.is_evicted()) {
                obj.touch();
                return Ok(obj);
            }
            let obj = Arc::new(self.load(id, version, size, uri)?);
            turn.set(&obj);
            Ok(obj)
        })
    }

    /// The object if the cache already knows it; never creates anything (for questions such as
    /// "is it complete?" about files nobody has opened).
    pub fn existing_object(
        &self,
        store_url: &str,
        key: &str,
        version: &str,
        size: u64,
        uri: &str,
    ) -> Option<Arc<CachedObject>> {
        let known = self.shared.objects.contains_key(ObjectId::of(store_url, key, version).0).unwrap_or(false);
        // Known to the index (or open, which implies known): the shared path opens it once.
        known.then(|| self.object(store_url, key, version, size, uri).ok()).flatten()
    }

    fn load(&self, id: ObjectId, version: &str, size: u64, uri: &str) -> Result<CachedObject, CacheError> {
        let index_err = |error| CacheError::Index { path: self.shared.dir.join("index"), error };
        let stored: Option<ObjectRecord> =
            self.shared.objects.get(id.0).map_err(index_err)?.and_then(|v| serde_json::from_slice(&v).ok());
        let (mut record, crcs, data_ok) = match stored {
            Some(rec) if rec.size == size && self.shared.data_fits(&id, &rec) => {
                let crcs = object::load_block_crcs(&self.shared.blocks, &id).map_err(index_err)?;
                (rec, crcs, true)
            }
            other => {
                // Unknown, or index and data file disagree: start this object afresh.
                if let Some(old) = other {
                    let counted = self.shared.block_bytes(&id, &old);
                    let _ = self.shared.used.fetch_update(
                        std::sync::atomic::Ordering::AcqRel,
                        std::sync::atomic::Ordering::Acquire,
                        |u| Some(u.saturating_sub(counted)),
                    );
                    if let Some(slot) = old.packed {
                        self.shared.packs.release(slot, old.size);
                    }
                }
                object::drop_blocks(&self.shared.blocks, &id).map_err(index_err)?;
                let rec = ObjectRecord {
                    uri: uri.to_string(),
                    version: version.to_string(),
                    size,
                    block_size: self.block_size,
                    last_access: now_secs(),
                    checksums: None,
                    checked: None,
                    packed: None,
                };
                (rec, HashMap::new(), false)
            }
        };
        let (data, base) = match record.packed {
            Some(slot) => (self.shared.packs.open(slot.pack)?, slot.offset),
            None if !data_ok && pack::packs(size, self.block_size) => {
                let (slot, data) = self.shared.packs.allocate(size)?;
                record.packed = Some(slot);
                (data, slot.offset)
            }
            None => (Arc::new(self.own_file(&id, size, data_ok)?), 0),
        };
        let obj = CachedObject::new(id, data, base, record, crcs, self.shared.clone());
        obj.touch();
        Ok(obj)
    }

    /// The data file of an object kept in a file of its own, made (sparse, `size` long) unless
    /// `fits` says the one on disk is already right.
    fn own_file(&self, id: &ObjectId, size: u64, fits: bool) -> Result<pack::DataFile, CacheError> {
        let path = self.shared.data_path(id);
        if let Some(sub) = path.parent().filter(|s| !s.is_dir()) {
            create_private_dir(sub)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|error| CacheError::Io { path: path.clone(), error })?;
        if !fits {
            file.set_len(0)
                .and_then(|_| file.set_len(size))
                .map_err(|error| CacheError::Io { path: path.clone(), error })?;
        }
        Ok(pack::DataFile::new(path, file))
    }

    /// Remembers the version an object had when it was listed with this size and modification
    /// time, for stores whose listings carry no ETag: a later mount that lists the same size and
    /// time reuses the version (and the cached blocks) without a HEAD.
    pub fn remember_version(&self, store_url: &str, key: &str, size: u64, listed_mtime: &str, version: &PinRecord) {
        let k = ObjectId::of(store_url, key, &format!("{size}@{listed_mtime}"));
        if let Ok(v) = serde_json::to_vec(version) {
            let _ = self.shared.pins.insert(k.0, v);
        }
    }

    /// The version remembered for an object listed with this size and modification time.
    pub fn recall_version(&self, store_url: &str, key: &str, size: u64, listed_mtime: &str) -> Option<PinRecord> {
        let k = ObjectId::of(store_url, key, &format!("{size}@{listed_mtime}"));
        serde_json::from_slice(&self.shared.pins.get(k.0).ok().flatten()?).ok()
    }

    /// Checksums recorded for an object version, without opening it.
    pub fn recorded_checksums(&self, store_url: &str, key: &str, version: &str) -> Option<Checksums> {
        let id = ObjectId::of(store_url, key, version);
        let raw = self.shared.objects.get(id.0).ok().flatten()?;
        serde_json::from_slice::<ObjectRecord>(&raw).ok()?.checksums
    }

    /// Bytes of data files on disk (allocated blocks, not apparent sizes) and the number of objects.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut objects = 0;
        for (_, v) in self.shared.objects.iter().flatten() {
            if serde_json::from_slice::<ObjectRecord>(&v).is_ok() {
                objects += 1;
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.shared.dir.join("objects")) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        if let Ok(m) = f.metadata() {
                            bytes += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
                        }
                    }
                }
            }
        }
        for pack in self.shared.packs.numbers() {
            if let Ok(m) = std::fs::metadata(self.shared.packs.path(pack)) {
                bytes += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
            }
        }
        (bytes, objects)
    }

    /// Writes the index to disk (called at unmount; sled also flushes every 500 ms).
    pub fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map(|_| ()).map_err(|error| CacheError::Index { path: self.shared.dir.join("index"), error })
    }
}

/// Opens the cache in `dir` as a new process would, once the last user in this process has let
/// go of the index (its background flusher may hold it a moment after the drop).
#[cfg(test)]
pub(crate) fn open_when_free(dir: &Path, block_size: u64) -> Cache {
    for _ in 0..500 {
        if let Ok(c) = Cache::open(dir, block_size) {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Cache::open(dir, block_size).expect("the cache index is still held after 5 s")
}

#[cfg(test)]
mod tests;
