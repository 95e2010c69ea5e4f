//! Pack files: small objects share large data files instead of having one file each.
//!
//! Making a file costs the filesystem an inode, and on a busy ext4 that costs more than fetching
//! a 100 KiB object over a fast network; a dataset of a million small images would also leave a
//! million inodes in the cache. An object of at most [`PACK_MAX`] bytes (and one block) therefore
//! gets a slot in a pack file under `CACHE_DIR/packs/`. Each process appends to a pack of its
//! own, made on its first small object, so a slot is never handed out twice, not even across a
//! crash. Evicting a packed object punches a hole in its slot (the space is free at once); a pack
//! that no index entry uses any more is removed when the cache is next reconciled.

use super::CacheError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Objects up to this size (and at most one block) go into pack files.
pub const PACK_MAX: u64 = 1 << 20;

/// A pack takes no new slots beyond this size; the next slot starts a new pack.
const PACK_ROLL: u64 = 1 << 30;

/// Slots start on page boundaries, so punching one out never touches a neighbour.
const SLOT_ALIGN: u64 = 4096;

/// The directory of pack files inside the cache directory.
pub const PACK_DIR: &str = "packs";

/// Where a packed object's bytes live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackSlot {
    /// Number of the pack file.
    pub pack: u64,
    /// Offset of the object's first byte in it.
    pub offset: u64,
}

/// An open data file: an object's own, or a pack that many objects share.
pub struct DataFile {
    /// Its path, for messages.
    pub path: PathBuf,
    /// The file, open for reading and writing.
    pub file: File,
    /// Held while a block is written. The kernel serialises buffered writes to one file anyway
    /// (ext4 takes the inode lock exclusively) and its waiters spin on a CPU while the writer
    /// copies; waiting here sleeps instead, leaving the CPU to the fetches and reads.
    pub write_turn: Mutex<()>,
}

impl DataFile {
    /// Wraps an open file.
    pub fn new(path: PathBuf, file: File) -> Self {
        Self { path, file, write_turn: Mutex::new(()) }
    }
}

/// The pack files of one cache: slots for new small objects, and the packs open now.
pub struct Packs {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Weak<DataFile>>>,
    /// The pack this process appends to, and where its next slot starts.
    current: Mutex<Option<(u64, Arc<DataFile>, u64)>>,
}

/// Bytes a slot for an object of `size` bytes takes in its pack.
pub fn slot_len(size: u64) -> u64 {
    size.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// Whether an object of `size` bytes cut into `block_size` blocks is packed.
pub fn packs(size: u64, block_size: u64) -> bool {
    size <= PACK_MAX.min(block_size)
}

impl Packs {
    /// The packs under `cache_dir` (the directory must exist).
    pub fn new(cache_dir: &Path) -> Self {
        Self { dir: cache_dir.join(PACK_DIR), open: Mutex::new(HashMap::new()), current: Mutex::new(None) }
    }

    /// Path of pack `pack`.
    pub fn path(&self, pack: u64) -> PathBuf {
        self.dir.join(format!("{pack:08}"))
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<DataFile>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pack `pack`, opened once while anyone uses it.
    pub fn open(&self, pack: u64) -> Result<Arc<DataFile>, CacheError> {
        let mut open = self.lock_open();
        if let Some(f) = open.get(&pack).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let path = self.path(pack);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| CacheError::Io { path: path.clone(), error })?;
        let f = Arc::new(DataFile::new(path, file));
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(pack, Arc::downgrade(&f));
        Ok(f)
    }

    /// Length of pack `pack` on disk, if it exists.
    pub fn len(&self, pack: u64) -> Option<u64> {
        std::fs::metadata(self.path(pack)).ok().map(|m| m.len())
    }

    /// A new slot for an object of `size` bytes, in this process's pack.
    pub fn allocate(&self, size: u64) -> Result<(PackSlot, Arc<DataFile>), CacheError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let need = slot_len(size);
        let full = current.as_ref().is_none_or(|(_, _, next)| *next > 0 && next + need > PACK_ROLL);
        if full {
            let (pack, file) = self.create_next()?;
            *current = Some((pack, file, 0));
        }
        let Some((pack, file, next)) = current.as_mut() else {
            return Err(CacheError::Io { path: self.dir.clone(), error: std::io::Error::other("no pack to write to") });
        };
        let slot = PackSlot { pack: *pack, offset: *next };
        *next += need;
        Ok((slot, file.clone()))
    }

    /// Makes a new pack numbered after every existing one; never reuses a number another
    /// process could be appending to (the file is created exclusively).
    fn create_next(&self) -> Result<(u64, Arc<DataFile>), CacheError> {
        let mut pack = self.numbers().into_iter().max().map_or(1, |n| n + 1);
        loop {
            let path = self.path(pack);
            match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
                Ok(file) => {
                    let f = Arc::new(DataFile::new(path, file));
                    self.lock_open().insert(pack, Arc::downgrade(&f));
                    return Ok((pack, f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => pack += 1,
                Err(error) => return Err(CacheError::Io { path, error }),
            }
        }
    }

    /// Numbers of the packs on disk.
    pub fn numbers(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
    }

    /// Whether pack `pack` is in use by this process (appended to, or open for an object).
    pub fn in_use(&self, pack: u64) -> bool {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().is_some_and(|(p, _, _)| *p == pack)
            || self.lock_open().get(&pack).is_some_and(|w| w.strong_count() > 0)
    }

    /// Gives a slot's disk space back (a hole punched in the pack). Returns the bytes freed.
    pub fn release(&self, slot: PackSlot, size: u64) -> u64 {
        let len = slot_len(size);
        if len == 0 {
            return 0;
        }
        let Ok(pack) = self.open(slot.pack) else { return 0 };
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; punching a hole changes no memory of ours.
        let rc = unsafe {
            libc::fallocate(
                pack.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                slot.offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            len
        } else {
            0
        }
    }
}
