//! An append-only byte arena that spills to disk: the strings of an input's [`super::table`]
//! stay in memory up to [`SPILL_AFTER`] bytes; past that they go to a private, already
//! unlinked file in the cache directory and are read back through the page cache, a page at a
//! time, with the most recently used pages kept. An input of ten million files then holds its
//! fixed-size records in memory and its names, keys and checksums on disk.

use moka::sync::Cache;
use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes kept in memory before the arena starts spilling.
pub const SPILL_AFTER: usize = 256 << 20;
/// Once spilling, the in-memory tail is written out whenever it reaches this size.
const SPILL_CHUNK: usize = 32 << 20;
/// Bytes per page read back.
const PAGE: u64 = 64 << 10;
/// Pages kept in memory.
const PAGES_KEPT: u64 = 256;

/// The arena.
pub struct Arena {
    /// Bytes from `spilled` on.
    tail: Vec<u8>,
    /// Bytes in the file (the tail starts there).
    spilled: u64,
    file: Option<File>,
    /// Where a spill file may be made; `None`: never spill.
    spill_dir: Option<PathBuf>,
    pages: Cache<u64, Arc<[u8]>>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("len", &self.len()).field("spilled", &self.spilled).finish()
    }
}

impl Arena {
    /// An empty arena that may spill into `spill_dir`.
    pub fn new(spill_dir: Option<PathBuf>) -> Self {
        Self { tail: Vec::new(), spilled: 0, file: None, spill_dir, pages: Cache::new(PAGES_KEPT) }
    }

    /// Bytes held (in memory and on disk).
    pub fn len(&self) -> u64 {
        self.spilled + self.tail.len() as u64
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.tail.capacity()
    }

    /// Bytes written to disk.
    pub fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Makes room for `bytes` more in memory (only while nothing was spilled).
    pub fn reserve(&mut self, bytes: usize) {
        if self.spilled == 0 {
            self.tail.reserve(bytes.min(SPILL_AFTER));
        }
    }

    /// Gives memory not used back.
    pub fn shrink_to_fit(&mut self) {
        self.tail.shrink_to_fit();
    }

    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        let over = if self.file.is_some() { SPILL_CHUNK } else { SPILL_AFTER };
        if self.tail.len() >= over && self.spill_dir.is_some() {
            self.spill();
        }
    }

    /// Appends a string, its length first.
    pub fn push_str(&mut self, s: &str) {
        let mut head = [0u8; 10];
        let (mut v, mut n) = (s.len() as u64, 0);
        while v >= 0x80 {
            head[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        head[n] = v as u8;
        self.push(&head[..=n]);
        self.push(s.as_bytes());
    }

    fn spill(&mut self) {
        if self.file.is_none() {
            let Some(dir) = &self.spill_dir else { return };
            match tempfile::tempfile_in(dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!("cannot spill a large input's names to {}: {e}; kept in memory", dir.display());
                    self.spill_dir = None;
                    return;
                }
            }
        }
        let Some(file) = &self.file else { return };
        match file.write_all_at(&self.tail, self.spilled) {
            Ok(()) => {
                self.spilled += self.tail.len() as u64;
                self.tail.clear();
                // The first spill leaves a buffer of SPILL_AFTER bytes behind: give it back.
                self.tail.shrink_to(SPILL_CHUNK);
            }
            Err(e) => {
                // A full disk: nothing is lost, the rest simply stays in memory.
                tracing::warn!("spilling a large input's names failed: {e}; kept in memory from here");
                self.spill_dir = None;
            }
        }
    }

    fn page(&self, n: u64) -> Option<Arc<[u8]>> {
        let file = self.file.as_ref()?;
        if let Some(p) = self.pages.get(&n) {
            return Some(p);
        }
        let len = PAGE.min(self.spilled.saturating_sub(n * PAGE));
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, n * PAGE) {
            tracing::error!("reading back a large input's names failed: {e}");
            return None;
        }
        let page: Arc<[u8]> = buf.into();
        self.pages.insert(n, page.clone());
        Some(page)
    }

    /// Up to `len` bytes from `at` (fewer at the end).
    pub fn bytes(&self, at: u64, len: usize) -> Cow<'_, [u8]> {
        let end = (at + len as u64).min(self.len());
        if at >= end {
            return Cow::Borrowed(&[]);
        }
        if at >= self.spilled {
            let from = (at - self.spilled) as usize;
            return Cow::Borrowed(&self.tail[from..(end - self.spilled) as usize]);
        }
        let mut out = Vec::with_capacity((end - at) as usize);
        let mut pos = at;
        while pos < end.min(self.spilled) {
            let Some(page) = self.page(pos / PAGE) else { return Cow::Owned(Vec::new()) };
            let from = (pos % PAGE) as usize;
            let take = ((end.min(self.spilled) - pos) as usize).min(page.len().saturating_sub(from));
            if take == 0 {
                return Cow::Owned(Vec::new());
            }
            out.extend_from_slice(&page[from..from + take]);
            pos += take as u64;
        }
        if end > self.spilled {
            out.extend_from_slice(&self.tail[..(end - self.spilled) as usize]);
        }
        Cow::Owned(out)
    }

    /// The string at `*at`, advancing past it.
    pub fn string(&self, at: &mut u64) -> Cow<'_, str> {
        // Its length and, for most strings, the string itself in one read.
        let head = self.bytes(*at, 64);
        let (mut len, mut shift, mut used) = (0u64, 0, 0usize);
        for &b in head.iter().take(10) {
            used += 1;
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let start = *at + used as u64;
        *at = start + len;
        let bytes = match head {
            Cow::Borrowed(h) if used + len as usize <= h.len() => Cow::Borrowed(&h[used..used + len as usize]),
            Cow::Owned(mut h) if used + len as usize <= h.len() => {
                h.truncate(used + len as usize);
                h.drain(..used);
                Cow::Owned(h)
            }
            _ => self.bytes(start, len as usize),
        };
        match bytes {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()),
            Cow::Owned(b) => Cow::Owned(String::from_utf8(b).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_read_back_across_the_spill() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Arena::new(Some(dir.path().to_path_buf()));
        let mut offsets = Vec::new();
        let mut i = 0u64;
        // Past the point where it spills, and a chunk more, so strings straddle pages, the
        // file and the tail.
        while a.len() < (SPILL_AFTER + SPILL_CHUNK + (1 << 20)) as u64 {
            offsets.push((a.len(), i));
            a.push_str(&format!("file-{i:09}-{}", "x".repeat((i % 200) as usize)));
            i += 1;
        }
        assert!(a.spilled() > 0 && a.memory() < SPILL_AFTER, "spilled {} kept {}", a.spilled(), a.memory());
        for &(at, i) in offsets.iter().step_by(997).chain(offsets.last()) {
            let mut pos = at;
            assert_eq!(a.string(&mut pos), format!("file-{i:09}-{}", "x".repeat((i % 200) as usize)));
        }
        // The file is private to the mounting user and already unlinked: nothing left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn without_a_spill_dir_everything_stays_in_memory() {
        let mut a = Arena::new(None);
        a.push_str("é-name");
        let mut at = 0;
        assert_eq!(a.string(&mut at), "é-name");
        assert_eq!(at, a.len());
        assert_eq!(a.spilled(), 0);
    }
}
