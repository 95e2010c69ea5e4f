//! The files of one input, held compactly: what a mounted input keeps per file for as long as
//! it is mounted, so it must stay small for inputs of millions of files.
//!
//! A file is a fixed record of 40 bytes plus its strings (its name, and only what cannot be
//! derived: a key that is not "key directory + name", an ETag, a datum id, a URI that is not
//! the store's own), its sha256 in binary when its record promised one, and 4 bytes in its
//! directory's child list. The strings go to disk past a bound (see [`super::arena`]), so an
//! input of ten million files keeps about 44 bytes per file in memory. Key directories and stores are interned: a prefix of a million
//! objects names its bucket and prefix once. Directories are few and are kept as records of
//! their own. A [`FileEntry`] is rebuilt from this on demand.

use super::arena::Arena;
use super::resolve::{DirListing, FileEntry};
use crate::reader::{Pin, Window};
use crate::store::StoreHandle;
use object_store::path::Path;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Set in a [`Child`] that is a directory.
pub const DIR_FLAG: u32 = 1 << 31;

/// A child in a directory's list: a file's index, or a directory's index with [`DIR_FLAG`].
pub type Child = u32;

/// Where a lazily listed directory's entries come from.
#[derive(Debug)]
pub struct Lister {
    /// The store.
    pub store: Arc<StoreHandle>,
    /// The directory's prefix.
    pub prefix: Option<Path>,
}

/// A directory of an input.
#[derive(Debug)]
pub struct DirRec {
    /// Its parent's index (the top's is its own).
    pub parent: u32,
    /// Its name (the input's name for the top).
    pub name: Box<str>,
    /// Its path below the input's top (empty for the top).
    pub rel: Box<str>,
    /// Its children sorted by name, once known.
    pub children: tokio::sync::OnceCell<Box<[Child]>>,
    /// Where its entries come from, for a directory listed lazily.
    pub lister: Option<Lister>,
}

const HAS_TAIL: u16 = 1;
const HAS_PIN: u16 = 2;
const HAS_ETAG: u16 = 4;
const HAS_DATUM: u16 = 8;
const URI_IS_DATUM: u16 = 16;
const HAS_URI: u16 = 32;
const IN_DATASET: u16 = 64;
const HAS_SHA256: u16 = 128;
const HAS_WINDOW: u16 = 256;

/// One file: fixed fields, and the offset of its strings (name, then the optional tail, ETag,
/// datum and URI its flags announce, then the 32 bytes of its sha256 if it has one, then the
/// offset and object size of its window, 8 bytes each, for a packed file).
#[derive(Debug)]
struct FileRec {
    strings: u64,
    size: u64,
    mtime_ns: i64,
    parent: u32,
    key_dir: u32,
    store: u16,
    flags: u16,
}

/// The children added to a directory so far, while a fixed set of files is laid out.
#[derive(Debug, Default)]
struct Pending {
    children: Vec<Child>,
    /// The name added last.
    last: String,
    /// Whether every name came after the one before (files come sorted, mostly: then nothing
    /// needs sorting or comparing again, which matters once names are on disk).
    unordered: bool,
}

impl Pending {
    fn add(&mut self, child: Child, name: &str) {
        if !self.children.is_empty() && name <= self.last.as_str() {
            self.unordered = true;
        }
        self.last.clear();
        self.last.push_str(name);
        self.children.push(child);
    }
}

/// A file to add, borrowed from wherever it was found: what a [`FileEntry`] holds.
#[derive(Debug, Clone, Copy)]
pub struct NewFile<'a> {
    /// The store holding it.
    pub store: &'a Arc<StoreHandle>,
    /// Its key.
    pub key: &'a str,
    /// Its URI; `None` for `datum://` and its datum id.
    pub uri: Option<&'a str>,
    /// Size at resolution.
    pub size: u64,
    /// Version at resolution, if pinned.
    pub pin: Option<&'a Pin>,
    /// Modification time in the store.
    pub mtime: SystemTime,
    /// The datum id, for files of datums.
    pub datum: Option<&'a str>,
    /// The sha256 its bytes must have, when known up front.
    pub sha256: Option<[u8; 32]>,
    /// Whether it is part of a dataset version.
    pub in_dataset: bool,
    /// For a packed datum: where its bytes are in its pack.
    pub window: Option<Window>,
}

impl FileEntry {
    /// The entry as a [`NewFile`] to add to a table.
    pub fn as_new(&self) -> NewFile<'_> {
        let mut sha256 = [0u8; 32];
        let sha256 =
            self.expected_sha256.as_deref().and_then(|h| hex::decode_to_slice(h, &mut sha256).ok()).map(|()| sha256);
        NewFile {
            store: &self.store,
            key: self.key.as_ref(),
            uri: Some(&self.uri),
            size: self.size,
            pin: self.pin.as_ref(),
            mtime: self.mtime,
            datum: self.datum.as_deref(),
            sha256,
            in_dataset: self.in_dataset,
            window: self.window,
        }
    }
}

/// Why files cannot be laid out as given.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LayoutClash(pub String);

/// The files and directories of one input.
#[derive(Debug)]
pub struct FileTable {
    dirs: Vec<Arc<DirRec>>,
    files: Vec<FileRec>,
    strings: Arena,
    stores: Vec<Arc<StoreHandle>>,
    store_ids: HashMap<usize, u16>,
    key_dirs: Vec<Box<str>>,
    key_dir_ids: HashMap<Box<str>, u32>,
    /// While a fixed set of files is being added: directories by path, and their children.
    building: HashMap<Box<str>, u32>,
    pending: HashMap<u32, Pending>,
    /// The directory the last file was added to, by path (files come sorted, mostly).
    last_dir: (String, u32),
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl FileTable {
    /// A table holding only the input's top directory, named `name`; its strings may spill
    /// into `spill_dir`.
    pub fn new(name: &str, spill_dir: Option<std::path::PathBuf>) -> Self {
        let top = DirRec {
            parent: 0,
            name: name.into(),
            rel: "".into(),
            children: tokio::sync::OnceCell::new(),
            lister: None,
        };
        Self {
            dirs: vec![Arc::new(top)],
            files: Vec::new(),
            strings: Arena::new(spill_dir),
            stores: Vec::new(),
            store_ids: HashMap::new(),
            key_dirs: Vec::new(),
            key_dir_ids: HashMap::new(),
            building: HashMap::from([(Box::from(""), 0)]),
            pending: HashMap::new(),
            last_dir: (String::new(), 0),
        }
    }

    /// Makes room for `files` more files (names and datum ids of a typical length included).
    pub fn reserve(&mut self, files: usize) {
        self.files.reserve(files);
        self.strings.reserve(files.saturating_mul(48));
    }

    /// Number of directories (the top included).
    pub fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Directory `i`.
    pub fn dir(&self, i: u32) -> Option<&Arc<DirRec>> {
        self.dirs.get(i as usize)
    }

    fn store_id(&mut self, store: &Arc<StoreHandle>) -> u16 {
        let addr = Arc::as_ptr(store) as usize;
        if let Some(&id) = self.store_ids.get(&addr) {
            return id;
        }
        match u16::try_from(self.stores.len()) {
            Ok(id) if id < u16::MAX => {
                self.stores.push(store.clone());
                self.store_ids.insert(addr, id);
                id
            }
            // Refused by `finish`; the index is never used.
            _ => u16::MAX,
        }
    }

    fn key_dir_id(&mut self, dir: &str) -> u32 {
        if let Some(&id) = self.key_dir_ids.get(dir) {
            return id;
        }
        let id = self.key_dirs.len() as u32;
        self.key_dirs.push(dir.into());
        self.key_dir_ids.insert(dir.into(), id);
        id
    }

    /// Appends a file named `name` in directory `parent`; returns its index.
    fn add_file(&mut self, parent: u32, name: &str, e: NewFile<'_>) -> u32 {
        let store = self.store_id(e.store);
        let (key_dir, tail) = match e.key.rfind('/') {
            Some(i) => e.key.split_at(i + 1),
            None => ("", e.key),
        };
        let key_dir = self.key_dir_id(key_dir);
        let mut flags = 0;
        let strings = self.strings.len();
        self.strings.push_str(name);
        if tail != name {
            flags |= HAS_TAIL;
            self.strings.push_str(tail);
        }
        if let Some(pin) = e.pin {
            flags |= HAS_PIN;
            if let Some(etag) = &pin.etag {
                flags |= HAS_ETAG;
                self.strings.push_str(etag);
            }
        }
        if let Some(d) = e.datum {
            flags |= HAS_DATUM;
            self.strings.push_str(d);
        }
        match e.uri {
            None if e.datum.is_some() => flags |= URI_IS_DATUM,
            None => {}
            Some(uri) if e.datum.is_some_and(|d| uri.strip_prefix("datum://") == Some(d)) => flags |= URI_IS_DATUM,
            Some(uri) if !e.store.is_uri_of(uri, e.key) => {
                flags |= HAS_URI;
                self.strings.push_str(uri);
            }
            Some(_) => {}
        }
        if e.in_dataset {
            flags |= IN_DATASET;
        }
        if let Some(sha256) = &e.sha256 {
            flags |= HAS_SHA256;
            self.strings.push(sha256);
        }
        if let Some(w) = &e.window {
            flags |= HAS_WINDOW;
            self.strings.push(&w.offset.to_le_bytes());
            self.strings.push(&w.object_size.to_le_bytes());
        }
        // A pinned file's time is its pin's, so that one field keeps both.
        let mtime = e.pin.map_or(e.mtime, |p| p.last_modified.into());
        self.files.push(FileRec { strings, size: e.size, mtime_ns: to_ns(mtime), parent, key_dir, store, flags });
        (self.files.len() - 1) as u32
    }

    fn add_dir(&mut self, parent: u32, name: &str, lister: Option<Lister>) -> u32 {
        let parent_rel = &self.dirs[parent as usize].rel;
        let rel = if parent_rel.is_empty() { name.to_string() } else { format!("{parent_rel}/{name}") };
        self.dirs.push(Arc::new(DirRec {
            parent,
            name: name.into(),
            rel: rel.into(),
            children: tokio::sync::OnceCell::new(),
            lister,
        }));
        (self.dirs.len() - 1) as u32
    }

    /// Adds a file at `rel` (segments below the top), making its directories; clashes are
    /// found by [`FileTable::finish`].
    pub fn push<S: AsRef<str>>(&mut self, rel: &[S], e: NewFile<'_>) {
        let Some((name, dirs)) = rel.split_last() else { return };
        let name = name.as_ref();
        let (last, last_dir) = &self.last_dir;
        let same = dirs.len() == last.split('/').filter(|s| !s.is_empty()).count()
            && dirs.iter().zip(last.split('/')).all(|(a, b)| a.as_ref() == b);
        if same {
            let parent = *last_dir;
            let f = self.add_file(parent, name, e);
            self.pending.entry(parent).or_default().add(f, name);
            return;
        }
        let mut parent = 0;
        let mut path = String::new();
        for seg in dirs {
            let seg = seg.as_ref();
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(seg);
            parent = match self.building.get(path.as_str()) {
                Some(&d) => d,
                None => {
                    let d = self.add_dir(parent, seg, None);
                    self.pending.entry(parent).or_default().add(d | DIR_FLAG, seg);
                    self.building.insert(path.as_str().into(), d);
                    d
                }
            };
        }
        self.last_dir = (path, parent);
        let f = self.add_file(parent, name, e);
        self.pending.entry(parent).or_default().add(f, name);
    }

    /// Adds a directory `name` below `parent` that is not listed (a leading directory of a
    /// listed prefix); [`FileTable::finish`] sets the children.
    pub fn push_leading(&mut self, parent: u32, name: &str) -> u32 {
        let d = self.add_dir(parent, name, None);
        self.pending.entry(parent).or_default().add(d | DIR_FLAG, name);
        d
    }

    /// The name of a child.
    pub fn name(&self, child: Child) -> Cow<'_, str> {
        if child & DIR_FLAG != 0 {
            return Cow::Borrowed(self.dirs.get((child & !DIR_FLAG) as usize).map_or("", |d| &d.name));
        }
        match self.files.get(child as usize) {
            Some(f) => self.strings.string(&mut { f.strings }),
            None => Cow::Borrowed(""),
        }
    }

    fn sorted(&self, mut children: Vec<Child>) -> Vec<Child> {
        children.sort_unstable_by(|a, b| self.name(*a).cmp(&self.name(*b)));
        children
    }

    /// Sets the children of every directory the files added since the last call made: sorted
    /// by name, with two files at one path, or a file where a directory is, as errors.
    pub fn finish(&mut self, hint: &str) -> Result<(), LayoutClash> {
        if self.stores.len() >= usize::from(u16::MAX) {
            return Err(LayoutClash(format!("its files are in {} or more stores", u16::MAX)));
        }
        let pending = std::mem::take(&mut self.pending);
        for (dir, Pending { children, unordered, .. }) in pending {
            if !unordered {
                let _ = self.dirs[dir as usize].children.set(children.into_boxed_slice());
                continue;
            }
            let children = self.sorted(children);
            for pair in children.windows(2) {
                if self.name(pair[0]) != self.name(pair[1]) {
                    continue;
                }
                let at = |c: Child| {
                    let d = &self.dirs[dir as usize].rel;
                    if d.is_empty() {
                        self.name(c).to_string()
                    } else {
                        format!("{d}/{}", self.name(c))
                    }
                };
                let (a, b) = (pair[0], pair[1]);
                return Err(LayoutClash(match (a & DIR_FLAG != 0, b & DIR_FLAG != 0) {
                    (false, false) => {
                        format!("{} and {} both map to '{}'{hint}", self.uri(a), self.uri(b), at(a))
                    }
                    (true, false) | (false, true) => {
                        let file = if a & DIR_FLAG == 0 { a } else { b };
                        format!("{} maps to '{}', which is also a directory of other files", self.uri(file), at(file))
                    }
                    (true, true) => format!("'{}' is listed twice", at(a)),
                }));
            }
            let _ = self.dirs[dir as usize].children.set(children.into_boxed_slice());
        }
        for d in &self.dirs {
            if d.lister.is_none() {
                let _ = d.children.set(Box::new([]));
            }
        }
        self.building = HashMap::new();
        self.files.shrink_to_fit();
        self.strings.shrink_to_fit();
        Ok(())
    }

    fn uri(&self, file: Child) -> String {
        self.entry(file).map(|e| e.uri).unwrap_or_default()
    }

    /// Adds the entries of directory `dir`'s listing (directories listed lazily in turn) and
    /// returns its children, sorted by name.
    pub fn add_listing(&mut self, dir: u32, listing: DirListing, store: &Arc<StoreHandle>) -> Box<[Child]> {
        let mut children = Vec::with_capacity(listing.dirs.len() + listing.files.len());
        for (name, prefix) in listing.dirs {
            let lister = Lister { store: store.clone(), prefix: Some(prefix) };
            children.push(self.add_dir(dir, &name, Some(lister)) | DIR_FLAG);
        }
        for (name, entry) in listing.files {
            children.push(self.add_file(dir, &name, entry.as_new()));
        }
        self.sorted(children).into_boxed_slice()
    }

    /// The child of `children` (sorted by name) called `name`.
    pub fn find(&self, children: &[Child], name: &str) -> Option<Child> {
        children.binary_search_by(|c| self.name(*c).as_ref().cmp(name)).ok().map(|i| children[i])
    }

    /// Where the children after `name` start in `children` (sorted by name).
    pub fn after(&self, children: &[Child], name: &str) -> usize {
        children.partition_point(|c| self.name(*c).as_ref().cmp(name) != Ordering::Greater)
    }

    /// The directory a file is in.
    pub fn file_parent(&self, file: u32) -> Option<u32> {
        self.files.get(file as usize).map(|f| f.parent)
    }

    /// A file's size and modification time.
    pub fn file_attr(&self, file: u32) -> Option<(u64, SystemTime)> {
        self.files.get(file as usize).map(|f| (f.size, from_ns(f.mtime_ns)))
    }

    /// A file's size.
    pub fn file_size(&self, file: u32) -> Option<u64> {
        self.files.get(file as usize).map(|f| f.size)
    }

    /// Everything known about file `file`, rebuilt.
    pub fn entry(&self, file: Child) -> Option<FileEntry> {
        let f = self.files.get(file as usize)?;
        let mut at = f.strings;
        let name = self.strings.string(&mut at);
        let tail = if f.flags & HAS_TAIL != 0 { self.strings.string(&mut at) } else { name };
        let etag = (f.flags & HAS_ETAG != 0).then(|| self.strings.string(&mut at).into_owned());
        let datum = (f.flags & HAS_DATUM != 0).then(|| self.strings.string(&mut at).into_owned());
        let store = self.stores.get(usize::from(f.store))?.clone();
        let key_text = format!("{}{tail}", self.key_dirs.get(f.key_dir as usize)?);
        let key = Path::parse(&key_text).unwrap_or_else(|_| Path::from(key_text.as_str()));
        let uri = if f.flags & URI_IS_DATUM != 0 {
            format!("datum://{}", datum.as_deref().unwrap_or_default())
        } else if f.flags & HAS_URI != 0 {
            self.strings.string(&mut at).into_owned()
        } else {
            store.uri_of(&key_text)
        };
        let mtime = from_ns(f.mtime_ns);
        let pin = (f.flags & HAS_PIN != 0).then(|| Pin { etag, last_modified: mtime.into() });
        let expected_sha256 = (f.flags & HAS_SHA256 != 0).then(|| {
            let hex = hex::encode(self.strings.bytes(at, 32));
            at += 32;
            hex
        });
        let window = (f.flags & HAS_WINDOW != 0).then(|| {
            let raw = self.strings.bytes(at, 16);
            let word =
                |i: usize| u64::from_le_bytes(raw.get(i..i + 8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            Window { offset: word(0), object_size: word(8) }
        });
        Some(FileEntry {
            store,
            key,
            uri,
            size: f.size,
            pin,
            mtime,
            datum,
            expected_sha256,
            in_dataset: f.flags & IN_DATASET != 0,
            window,
        })
    }

    /// A file's path below the input's top.
    pub fn file_path(&self, file: u32) -> String {
        let name = self.name(file);
        match self.file_parent(file).and_then(|p| self.dir(p)) {
            Some(d) if !d.rel.is_empty() => format!("{}/{name}", d.rel),
            _ => name.to_string(),
        }
    }

    /// This table with its one file named `name` instead (before [`FileTable::finish`]).
    pub fn renamed_single(self, name: &str) -> Self {
        let Some(e) = self.entry(0) else { return self };
        let mut rel: Vec<String> = self.file_path(0).split('/').map(str::to_string).collect();
        if let Some(last) = rel.last_mut() {
            *last = name.to_string();
        }
        let mut t = Self::new(&self.dirs[0].name, None);
        t.push(&rel, e.as_new());
        t
    }

    /// The datum ids of files that are not part of a dataset version.
    pub fn loose_datums(&self) -> Vec<String> {
        (0..self.files.len() as u32)
            .filter(|&i| self.files[i as usize].flags & (HAS_DATUM | IN_DATASET) == HAS_DATUM)
            .filter_map(|i| self.entry(i)?.datum)
            .collect()
    }

    /// Bytes held, roughly (for figures).
    pub fn heap_bytes(&self) -> usize {
        self.files.capacity() * std::mem::size_of::<FileRec>()
            + self.strings.memory()
            + self.dirs.iter().map(|d| d.children.get().map_or(0, |c| c.len() * 4) + 64 + d.rel.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn store() -> Arc<StoreHandle> {
        Arc::new(StoreHandle::new("s3://bucket", Arc::new(InMemory::new())))
    }

    fn entry(store: &Arc<StoreHandle>, key: &str) -> FileEntry {
        FileEntry {
            store: store.clone(),
            key: Path::parse(key).unwrap(),
            uri: store.uri_of(key),
            size: key.len() as u64,
            pin: Some(Pin { etag: Some(format!("\"{key}\"")), last_modified: chrono::Utc::now() }),
            mtime: SystemTime::now(),
            datum: None,
            expected_sha256: None,
            in_dataset: false,
            window: None,
        }
    }

    fn segs(p: &str) -> Vec<String> {
        p.split('/').map(str::to_string).collect()
    }

    #[test]
    fn entries_come_back_as_given() {
        let s = store();
        let mut t = FileTable::new("x", None);
        let mut a = entry(&s, "data/train/a.jpg");
        a.datum = Some("01KAAAA".into());
        a.uri = "datum://01KAAAA".into();
        a.expected_sha256 = Some("ab".repeat(32));
        a.in_dataset = true;
        a.pin = None;
        a.window = Some(Window { offset: 1536, object_size: 1 << 30 });
        let mut b = entry(&s, "other/place/b-renamed.jpg");
        b.uri = "gs://elsewhere/b".into();
        b.pin = Some(Pin { etag: None, last_modified: chrono::Utc::now() });
        let c = entry(&s, "top.bin");
        t.push(&segs("train/a.jpg"), a.as_new());
        t.push(&segs("train/b.jpg"), b.as_new());
        t.push(&segs("c.bin"), c.as_new());
        t.finish("").unwrap();
        let top = t.dir(0).unwrap().children.get().unwrap().clone();
        assert_eq!(top.iter().map(|c| t.name(*c)).collect::<Vec<_>>(), ["c.bin", "train"]);
        let train = t.find(&top, "train").unwrap();
        assert_ne!(train & DIR_FLAG, 0);
        let kids = t.dir(train & !DIR_FLAG).unwrap().children.get().unwrap().clone();
        assert_eq!(kids.iter().map(|c| t.name(*c)).collect::<Vec<_>>(), ["a.jpg", "b.jpg"]);
        for (child, want) in [(kids[0], &a), (kids[1], &b), (t.find(&top, "c.bin").unwrap(), &c)] {
            let got = t.entry(child).unwrap();
            assert_eq!(got.key, want.key);
            assert_eq!(got.uri, want.uri);
            assert_eq!(got.size, want.size);
            assert_eq!(got.datum, want.datum);
            assert_eq!(got.expected_sha256, want.expected_sha256);
            assert_eq!(got.in_dataset, want.in_dataset);
            assert_eq!(got.window, want.window);
            assert_eq!(got.pin.as_ref().map(|p| p.etag.clone()), want.pin.as_ref().map(|p| p.etag.clone()));
            assert_eq!(got.pin.is_some(), want.pin.is_some());
            if let Some(p) = &want.pin {
                assert_eq!(got.mtime, SystemTime::from(p.last_modified));
            }
        }
        assert_eq!(t.loose_datums(), Vec::<String>::new());
        assert_eq!(t.after(&kids, "a.jpg"), 1);
        assert_eq!(t.after(&kids, "0"), 0);
        assert_eq!(t.after(&kids, "z"), 2);
    }

    #[test]
    fn clashes_are_named() {
        let s = store();
        let mut t = FileTable::new("x", None);
        t.push(&segs("a/b"), entry(&s, "k1").as_new());
        t.push(&segs("a/b"), entry(&s, "k2").as_new());
        let e = t.finish("; hint").unwrap_err().0;
        assert!(e.contains("s3://bucket/k1") && e.contains("s3://bucket/k2") && e.contains("'a/b'; hint"), "{e}");

        let mut t = FileTable::new("x", None);
        t.push(&segs("a"), entry(&s, "k1").as_new());
        t.push(&segs("a/b"), entry(&s, "k2").as_new());
        let e = t.finish("").unwrap_err().0;
        assert!(e.contains("s3://bucket/k1 maps to 'a', which is also a directory"), "{e}");
    }

    #[test]
    fn a_listed_prefix_costs_little_per_file() {
        let s = store();
        let mut t = FileTable::new("x", None);
        let files = (0..10_000)
            .map(|i| {
                let key = format!("datasets/imagenet/train/n0144/img_{i:08}.JPEG");
                let mut e = entry(&s, &key);
                e.pin = Some(Pin { etag: Some(format!("\"{i:032x}\"")), last_modified: chrono::Utc::now() });
                (key.rsplit('/').next().unwrap().to_string(), e)
            })
            .collect();
        let kids = t.add_listing(0, DirListing { files, dirs: Default::default() }, &s);
        assert_eq!(kids.len(), 10_000);
        t.finish("").unwrap();
        let per_file = (t.heap_bytes() + kids.len() * 4) / 10_000;
        // 40 bytes of fixed fields, the name, the ETag, 4 bytes in the directory.
        assert!(per_file <= 110, "{per_file} bytes per file");
        let e = t.entry(kids[1234]).unwrap();
        assert_eq!(e.key.as_ref(), "datasets/imagenet/train/n0144/img_00001234.JPEG");
    }
}
