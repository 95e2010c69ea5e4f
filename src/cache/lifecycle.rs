//! The cache's life beyond single reads: eviction (by age, everything, or named URIs), the
//! figures `datumfs cache stats` shows, re-verification of every cached block, and the
//! reconciliation of index and files at start. An object that is open is never evicted.

use super::{object, Cache, CacheError, CacheShared, ObjectId, ObjectRecord};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Which cached objects to evict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictWhat {
    /// Objects not read for this many seconds.
    OlderThan(u64),
    /// Every object that is not open.
    All,
    /// Objects with these URIs.
    Uris(Vec<String>),
}

/// What an eviction removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvictReport {
    /// Objects removed.
    pub objects: u64,
    /// Bytes freed on disk.
    pub bytes: u64,
    /// Matching objects kept because they are open.
    pub kept_open: u64,
    /// URIs of the objects removed.
    pub uris: Vec<String>,
}

/// The figures `datumfs cache stats` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheReport {
    /// The cache directory.
    pub dir: PathBuf,
    /// Bytes of data files on disk.
    pub disk_bytes: u64,
    /// Cached objects.
    pub objects: u64,
    /// Cached blocks.
    pub blocks: u64,
    /// Bytes of the cached blocks, as the cap counts them.
    pub used_bytes: u64,
    /// The size cap, if one is set (by the daemon's --cache-size).
    pub cap: Option<u64>,
    /// Least recent access among the objects (seconds since the epoch).
    pub oldest_access: Option<u64>,
    /// What an eviction by age would remove now.
    pub next_eviction: EvictReport,
    /// Bytes served from the cache since the daemon started (none without a daemon).
    pub hit_bytes: Option<u64>,
    /// Bytes fetched from stores since the daemon started.
    pub fetched_bytes: Option<u64>,
}

/// What `datumfs cache verify` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Objects checked.
    pub objects: u64,
    /// Blocks checked.
    pub blocks: u64,
    /// Blocks whose bytes do not match their checksum (or are missing): (URI, block index).
    pub bad: Vec<(String, u64)>,
    /// Whether the bad blocks were dropped from the index (they will be fetched again).
    pub repaired: bool,
}

/// What reconciliation at start fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Data files that no index entry knew, removed.
    pub orphan_files: u64,
    /// Index entries whose data file was missing or too short, dropped.
    pub dropped_entries: u64,
}

fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl CacheShared {
    pub(crate) fn records(&self) -> Vec<(ObjectId, ObjectRecord)> {
        self.objects
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let id = ObjectId(k.as_ref().try_into().ok()?);
                Some((id, serde_json::from_slice::<ObjectRecord>(&v).ok()?))
            })
            .collect()
    }

    /// Bytes of the blocks of `id` present in the index.
    /// The last block counts only its real length, so a 100 KiB object is 100 KiB against the
    /// cap, not a whole block.
    pub(crate) fn block_bytes(&self, id: &ObjectId, rec: &ObjectRecord) -> u64 {
        let bs = rec.block_size.max(4096);
        let n = rec.size.div_ceil(bs);
        let count = (self.blocks.scan_prefix(id.0).keys().count() as u64).min(n);
        let last_present = n > 0 && self.blocks.contains_key(object::block_key(id, n - 1)).unwrap_or(false);
        let short = if last_present { n * bs - rec.size } else { 0 };
        (count * bs).saturating_sub(short)
    }

    /// Path of the data file an object of its own is kept in.
    pub(crate) fn data_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.hex();
        self.dir.join("objects").join(&hex[..2]).join(hex)
    }

    /// The file holding an object's bytes and the offset they start at.
    pub(crate) fn data_place(&self, id: &ObjectId, rec: &ObjectRecord) -> (PathBuf, u64) {
        match rec.packed {
            Some(slot) => (self.packs.path(slot.pack), slot.offset),
            None => (self.data_path(id), 0),
        }
    }

    /// Whether the data file of a recorded object is there and long enough: a file of its own
    /// exactly the object's size, a pack reaching past the object's slot.
    pub(crate) fn data_fits(&self, id: &ObjectId, rec: &ObjectRecord) -> bool {
        match rec.packed {
            Some(slot) => self.packs.len(slot.pack).is_some_and(|len| len >= slot.offset + rec.size),
            None => std::fs::metadata(self.data_path(id)).is_ok_and(|m| m.len() == rec.size),
        }
    }

    fn index_err(&self) -> impl Fn(sled::Error) -> CacheError + '_ {
        move |error| CacheError::Index { path: self.dir.join("index"), error }
    }

    /// Removes an object (index first: a crash in between leaves an orphan file, which
    /// reconcile removes, never an entry pointing at missing bytes). Returns the bytes freed.
    fn remove_object(&self, id: &ObjectId, rec: &ObjectRecord) -> Result<u64, CacheError> {
        let path = self.data_path(id);
        let freed = disk_bytes(self, id, rec);
        let counted = self.block_bytes(id, rec);
        self.objects.remove(id.0).map_err(self.index_err())?;
        object::drop_blocks(&self.blocks, id).map_err(self.index_err())?;
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(counted)));
        if let Some(slot) = rec.packed {
            self.packs.release(slot, rec.size);
            return Ok(freed);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(freed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(freed),
            Err(error) => Err(CacheError::Io { path, error }),
        }
    }

    /// Whether `id` may be evicted: no open file or fetch uses it. If some other part still
    /// holds it (a checksum being computed), it is marked evicted, so that it writes nothing
    /// more to the index, and forgotten, so that the next open starts afresh.
    fn release_unused(&self, turn: &super::open_table::Turn<'_>) -> bool {
        if let Some(obj) = turn.get() {
            if obj.is_in_use() {
                return false;
            }
            obj.evicted.store(true, Ordering::Release);
        }
        turn.forget();
        true
    }

    /// Free bytes on the filesystem holding the cache.
    fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.dir).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(u64::MAX)
    }

    /// Whether `need` more bytes would go over the cap or under the free-space floor.
    fn short_of_room(&self, need: u64, slack: u64) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        let min_free = self.min_free.load(Ordering::Relaxed);
        (cap > 0 && self.used.load(Ordering::Acquire) + need + slack.min(cap / 10) > cap)
            || (min_free > 0 && self.free_bytes() < min_free + need + slack.min(min_free / 10))
    }

    /// Makes room for `need` more bytes under the cap (and above `--cache-min-free`): evicts the
    /// least recently used objects that are not open, with a tenth of slack so that eviction runs
    /// in batches, not per block. When open files alone hold more, fails with `Full` (the reader
    /// then serves that file from the store without caching).
    pub(crate) fn make_room(&self, need: u64) -> Result<(), CacheError> {
        if !self.short_of_room(need, 0) {
            return Ok(());
        }
        let _one = self.evicting.lock().unwrap_or_else(|e| e.into_inner());
        if !self.short_of_room(need, 0) {
            return Ok(());
        }
        let mut records = self.records();
        records.sort_by_key(|(_, r)| r.last_access);
        let (mut objects, mut bytes) = (0u64, 0u64);
        for (id, rec) in records {
            if !self.short_of_room(need, u64::MAX) {
                break;
            }
            // The object's turn is held while it goes, so that nobody opens it half removed.
            self.open.with_turn(id, |turn| {
                if !self.release_unused(turn) {
                    return;
                }
                match self.remove_object(&id, &rec) {
                    Ok(b) => {
                        objects += 1;
                        bytes += b;
                    }
                    Err(e) => tracing::warn!("cache: evicting {}: {e}", rec.uri),
                }
            });
        }
        self.stats.evicted_objects.fetch_add(objects, Ordering::Relaxed);
        self.stats.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
        if objects > 0 {
            tracing::info!(
                "cache: evicted {objects} least recently used object(s), {bytes} bytes, to stay under the cap"
            );
        }
        if self.short_of_room(need, 0) {
            if !self.warned_full.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "cache: open files hold all that --cache-size / --cache-min-free allow; what does not fit is read \
                     from the store without caching until they are closed"
                );
            }
            return Err(CacheError::Full);
        }
        Ok(())
    }
}

/// Disk bytes an object takes: its own file's allocated blocks, or its slot in a pack.
fn disk_bytes(shared: &CacheShared, id: &ObjectId, rec: &ObjectRecord) -> u64 {
    match rec.packed {
        Some(_) => super::pack::slot_len(shared.block_bytes(id, rec)),
        None => allocated(&shared.data_path(id)),
    }
}

impl Cache {
    fn records(&self) -> Vec<(ObjectId, ObjectRecord)> {
        self.shared.records()
    }

    fn open_ids(&self) -> HashSet<ObjectId> {
        self.shared.open.open_ids()
    }

    fn matches(what: &EvictWhat, rec: &ObjectRecord, now: u64) -> bool {
        match what {
            EvictWhat::OlderThan(secs) => now.saturating_sub(rec.last_access) >= *secs,
            EvictWhat::All => true,
            EvictWhat::Uris(uris) => uris.contains(&rec.uri),
        }
    }

    fn plan_eviction(&self, what: &EvictWhat, remove: bool) -> Result<EvictReport, CacheError> {
        let now = super::now_secs();
        let mut report = EvictReport::default();
        for (id, rec) in self.records() {
            if !Self::matches(what, &rec, now) {
                continue;
            }
            // The object's turn is held while it goes, so that nobody opens it half removed.
            self.shared.open.with_turn(id, |turn| {
                let in_use = turn.get().is_some_and(|o| o.is_in_use());
                if in_use || (remove && !self.shared.release_unused(turn)) {
                    report.kept_open += 1;
                    return Ok(());
                }
                report.objects += 1;
                report.uris.push(rec.uri.clone());
                report.bytes +=
                    if remove { self.shared.remove_object(&id, &rec)? } else { disk_bytes(&self.shared, &id, &rec) };
                Ok::<(), CacheError>(())
            })?;
        }
        if remove {
            let stats = &self.shared.stats;
            stats.evicted_objects.fetch_add(report.objects, Ordering::Relaxed);
            stats.evicted_bytes.fetch_add(report.bytes, Ordering::Relaxed);
        }
        if remove && report.objects > 0 {
            tracing::info!("cache: evicted {} object(s), {} bytes", report.objects, report.bytes);
        }
        Ok(report)
    }

    /// Evicts the objects `what` names, except open ones.
    pub fn evict(&self, what: &EvictWhat) -> Result<EvictReport, CacheError> {
        self.plan_eviction(what, true)
    }

    /// The figures of `datumfs cache stats`; `evict_after` says what the next eviction removes.
    pub fn report(&self, evict_after: std::time::Duration) -> Result<CacheReport, CacheError> {
        let (disk_bytes, objects) = self.usage();
        let records = self.records();
        Ok(CacheReport {
            dir: self.shared.dir.clone(),
            disk_bytes,
            objects,
            blocks: self.shared.blocks.len() as u64,
            used_bytes: self.shared.used.load(Ordering::Acquire),
            cap: Some(self.shared.cap.load(Ordering::Relaxed)).filter(|&c| c > 0),
            oldest_access: records.iter().map(|(_, r)| r.last_access).min(),
            next_eviction: self.plan_eviction(&EvictWhat::OlderThan(evict_after.as_secs()), false)?,
            hit_bytes: None,
            fetched_bytes: None,
        })
    }

    /// Re-reads every cached block and checks it against its CRC32C; with `repair`, bad blocks
    /// are dropped from the index (and fetched again when next read).
    pub fn verify_blocks(&self, repair: bool) -> Result<VerifyReport, CacheError> {
        let index_err = |error| CacheError::Index { path: self.shared.dir.join("index"), error };
        let mut report = VerifyReport { repaired: repair, ..Default::default() };
        for (id, rec) in self.records() {
            report.objects += 1;
            let crcs = object::load_block_crcs(&self.shared.blocks, &id).map_err(index_err)?;
            let (path, base) = self.shared.data_place(&id, &rec);
            let file = std::fs::File::open(&path).ok();
            let bs = rec.block_size.max(4096);
            let mut buf = Vec::new();
            let mut idxs: Vec<_> = crcs.into_iter().collect();
            idxs.sort();
            for (idx, crc) in idxs {
                report.blocks += 1;
                let start = idx * bs;
                let len = bs.min(rec.size.saturating_sub(start)) as usize;
                buf.resize(len, 0);
                let ok = file.as_ref().is_some_and(|f| f.read_exact_at(&mut buf, base + start).is_ok())
                    && crc32c::crc32c(&buf) == crc;
                if !ok {
                    report.bad.push((rec.uri.clone(), idx));
                    if repair {
                        self.shared.blocks.remove(object::block_key(&id, idx)).map_err(index_err)?;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Makes index and files agree: removes data files and packs no entry knows and drops
    /// entries whose file is missing or shorter than the object. Bounded: one pass over the index
    /// and one directory listing, no data is read (block checksums are verified lazily, before
    /// first use).
    pub fn reconcile(&self) -> Result<ReconcileReport, CacheError> {
        let mut report = ReconcileReport::default();
        let mut known = HashSet::new();
        let mut packs_used = HashSet::new();
        for (id, rec) in self.records() {
            if self.shared.data_fits(&id, &rec) {
                match rec.packed {
                    Some(slot) => packs_used.insert(slot.pack),
                    None => known.insert(id.hex()),
                };
            } else {
                self.shared.remove_object(&id, &rec)?;
                report.dropped_entries += 1;
            }
        }
        let open: HashSet<String> = self.open_ids().iter().map(ObjectId::hex).collect();
        if let Ok(dirs) = std::fs::read_dir(self.shared.dir.join("objects")) {
            for d in dirs.flatten() {
                let Ok(files) = std::fs::read_dir(d.path()) else { continue };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if !known.contains(&name) && !open.contains(&name) {
                        let _ = std::fs::remove_file(f.path());
                        report.orphan_files += 1;
                    }
                }
            }
        }
        for pack in self.shared.packs.numbers() {
            if !packs_used.contains(&pack) && !self.shared.packs.in_use(pack) {
                let _ = std::fs::remove_file(self.shared.packs.path(pack));
                report.orphan_files += 1;
            }
        }
        if report.orphan_files + report.dropped_entries > 0 {
            tracing::warn!(
                "cache: reconciled index and files: {} orphan file(s) removed, {} entr(ies) without data dropped",
                report.orphan_files,
                report.dropped_entries
            );
        }
        Ok(report)
    }
}
