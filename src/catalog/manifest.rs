//! Dataset version manifests as chunked, sorted, compressed records.
//!
//! A version's files (sorted by path) are cut into chunks at content-defined points: after a
//! file whose path hashes to a value with its low bits zero (about one cut per
//! [`AVERAGE_ENTRIES`] files, never fewer than [`MIN_ENTRIES`] nor more than [`MAX_ENTRIES`]
//! per chunk). Adding or removing files therefore changes only the chunks around them, and a
//! version made from another shares every other chunk with it. Each chunk is stored once,
//! create-only, under the sha256 of its bytes, so a chunk that failed or was damaged is named by
//! its id, and two versions never write the same chunk twice.
//!
//! A chunk holds, per file: its path (prefix-compressed against the previous one), its object's
//! store (an index into the version's store list) and key (prefix-compressed), its size, its
//! datum id, its sha256 and, for a packed datum, its place in the pack (offset + 1 and the
//! pack's size; 0 for others), in that order, zstd-compressed. md5 and sha1 are in a companion
//! chunk of the same files, read only when something asks for them.

use super::datasets::VersionFile;
use crate::checksum::FileDigests;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// Files per chunk, on average.
pub const AVERAGE_ENTRIES: usize = 4096;
/// No chunk is cut before this many files (but the last).
pub const MIN_ENTRIES: usize = 512;
/// A chunk is cut at this many files at the latest.
pub const MAX_ENTRIES: usize = 32768;

/// Chunks written before packed datums existed (no pack field); still read.
const MAIN_MAGIC_V1: &[u8; 5] = b"DFMC1";
const MAIN_MAGIC: &[u8; 5] = b"DFMC2";
const SUMS_MAGIC: &[u8; 5] = b"DFMS1";
const ZSTD_LEVEL: i32 = 3;
/// The most a chunk may decompress to: [`MAX_ENTRIES`] files with the longest paths and keys.
const MAX_RAW_CHUNK: u64 = 512 << 20;

/// One chunk of a version, as the version record lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// sha256 of the stored chunk (its key is `chunks/<id>` under the dataset).
    pub id: String,
    /// sha256 of the stored companion chunk holding md5 and sha1 of the same files.
    pub sums: String,
    /// Path of its first file.
    pub first: String,
    /// Number of files.
    pub count: u64,
    /// Bytes of its files.
    pub bytes: u64,
}

/// A chunk ready to be stored.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// Its entry in the version record.
    pub reference: ChunkRef,
    /// The main chunk's bytes.
    pub main: Vec<u8>,
    /// The companion chunk's bytes.
    pub sums: Vec<u8>,
}

/// Why a manifest could not be written or read.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// A file's checksum is not hex of the right length.
    #[error("{path}: {what} '{value}' is not a valid checksum")]
    BadChecksum {
        /// The file's path.
        path: String,
        /// Which checksum.
        what: &'static str,
        /// What was there.
        value: String,
    },
    /// A stored chunk's bytes do not hash to its id.
    #[error("chunk {id}: its bytes do not match its sha256 (damaged in the store)")]
    Damaged {
        /// The chunk's id.
        id: String,
    },
    /// A stored chunk cannot be decoded.
    #[error("chunk {id}: {reason}")]
    Corrupt {
        /// The chunk's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// The store prefix and key of an object URI: `s3://bucket/` + `a/b.bin`; concatenated they
/// give the URI back exactly.
pub fn split_uri(uri: &str) -> (&str, &str) {
    let after_scheme = uri.find("://").map_or(0, |i| i + 3);
    match uri[after_scheme..].find('/') {
        Some(i) => uri.split_at(after_scheme + i + 1),
        None => (uri, ""),
    }
}

fn shared_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // Never split a character: the suffix must be a string of its own.
    (0..=n).rev().find(|&i| a.is_char_boundary(i)).unwrap_or(0)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Whether a chunk ends after `path` (content-defined: the same files give the same cuts).
fn cuts_after(path: &str) -> bool {
    let h = Sha256::digest(path.as_bytes());
    let v = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    v % AVERAGE_ENTRIES as u64 == 0
}

/// The index of `store` in `stores`, added if new.
fn store_index(stores: &mut Vec<String>, index: &mut HashMap<String, u64>, store: &str) -> u64 {
    *index.entry(store.to_string()).or_insert_with(|| {
        stores.push(store.to_string());
        stores.len() as u64 - 1
    })
}

/// Cuts `files` (sorted by path) into chunks. `stores` is the version's store list, which new
/// stores are added to.
pub fn encode(files: &[VersionFile], stores: &mut Vec<String>) -> Result<Vec<EncodedChunk>, ManifestError> {
    let mut index: HashMap<String, u64> = stores.iter().enumerate().map(|(i, s)| (s.clone(), i as u64)).collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    for i in 0..files.len() {
        let len = i + 1 - start;
        let last = i + 1 == files.len();
        if last || len >= MAX_ENTRIES || (len >= MIN_ENTRIES && cuts_after(&files[i].path)) {
            chunks.push(encode_chunk(&files[start..=i], stores, &mut index)?);
            start = i + 1;
        }
    }
    Ok(chunks)
}

fn encode_chunk(
    files: &[VersionFile],
    stores: &mut Vec<String>,
    index: &mut HashMap<String, u64>,
) -> Result<EncodedChunk, ManifestError> {
    let mut main = MAIN_MAGIC.to_vec();
    let mut sums = SUMS_MAGIC.to_vec();
    put_varint(&mut main, files.len() as u64);
    put_varint(&mut sums, files.len() as u64);
    let (mut prev_path, mut prev_key) = ("", "");
    for f in files {
        let (store, key) = split_uri(&f.object_uri);
        let shared = shared_prefix(prev_path, &f.path);
        put_varint(&mut main, shared as u64);
        put_str(&mut main, &f.path[shared..]);
        put_varint(&mut main, store_index(stores, index, store));
        let shared = shared_prefix(prev_key, key);
        put_varint(&mut main, shared as u64);
        put_str(&mut main, &key[shared..]);
        put_varint(&mut main, f.size);
        put_str(&mut main, &f.datum);
        main.extend_from_slice(f.checksums.sha256());
        match &f.packed {
            Some(p) => {
                put_varint(&mut main, p.offset + 1);
                put_varint(&mut main, p.pack_size);
            }
            None => put_varint(&mut main, 0),
        }
        let absent = |what| ManifestError::BadChecksum { path: f.path.clone(), what, value: String::new() };
        sums.extend_from_slice(f.checksums.md5().ok_or_else(|| absent("md5"))?);
        sums.extend_from_slice(f.checksums.sha1().ok_or_else(|| absent("sha1"))?);
        (prev_path, prev_key) = (&f.path, key);
    }
    let compress = |raw: &[u8]| zstd::bulk::compress(raw, ZSTD_LEVEL).unwrap_or_else(|_| raw.to_vec());
    let (main, sums) = (compress(&main), compress(&sums));
    let reference = ChunkRef {
        id: hex::encode(Sha256::digest(&main)),
        sums: hex::encode(Sha256::digest(&sums)),
        first: files.first().map(|f| f.path.clone()).unwrap_or_default(),
        count: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
    };
    Ok(EncodedChunk { reference, main, sums })
}

/// Reads a chunk's bytes, after checking them against its id.
struct Cursor<'a> {
    id: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, reason: &str) -> ManifestError {
        ManifestError::Corrupt { id: self.id.to_string(), reason: format!("{reason} at byte {}", self.at) }
    }

    fn varint(&mut self) -> Result<u64, ManifestError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or_else(|| self.corrupt("ends early"))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.corrupt("a number is too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.corrupt("ends early"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<&'a str, ManifestError> {
        let n = self.varint()? as usize;
        let raw = self.take(n)?;
        std::str::from_utf8(raw).map_err(|_| self.corrupt("a name is not UTF-8"))
    }

    /// Replaces all but the first `shared` bytes of `name` (the previous name) by a stored
    /// suffix.
    fn prefixed_into(&mut self, name: &mut String) -> Result<(), ManifestError> {
        let shared = self.varint()? as usize;
        if shared > name.len() || !name.is_char_boundary(shared) {
            return Err(self.corrupt("a shared prefix is longer than the previous name"));
        }
        name.truncate(shared);
        name.push_str(self.string()?);
        Ok(())
    }
}

/// Checks a stored chunk against its id and decompresses it; it must start with one of `magics`.
fn open(id: &str, stored: &[u8], magics: &[&[u8; 5]]) -> Result<Vec<u8>, ManifestError> {
    if hex::encode(Sha256::digest(stored)) != id {
        return Err(ManifestError::Damaged { id: id.to_string() });
    }
    let corrupt = |reason: String| ManifestError::Corrupt { id: id.to_string(), reason };
    let raw = crate::util::zstd_decompress_bounded(stored, MAX_RAW_CHUNK).map_err(corrupt)?;
    if !magics.iter().any(|m| raw.get(..m.len()) == Some(&m[..])) {
        return Err(ManifestError::Corrupt { id: id.to_string(), reason: "not a manifest chunk".into() });
    }
    Ok(raw)
}

/// `N` bytes as a digest (the caller took exactly `N`).
fn digest<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// A stored chunk checked against its id and decompressed: its files are read from it with
/// [`OpenedChunk::for_each`] without allocating anything per file.
#[derive(Debug)]
pub struct OpenedChunk {
    id: String,
    raw: Vec<u8>,
    with_packs: bool,
}

/// One file of a chunk as it is walked, borrowed from the walk: what mounting a version needs
/// of each file.
#[derive(Debug, Clone, Copy)]
pub struct FileView<'a> {
    /// Its path in the version.
    pub path: &'a str,
    /// Its object's store (`s3://bucket/`); store + key is the object URI.
    pub store: &'a str,
    /// Its object's key below the store.
    pub key: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// The datum id.
    pub datum: &'a str,
    /// The sha256 of its bytes.
    pub sha256: &'a [u8; 32],
    /// For a packed datum: its offset in the pack object, and the pack's size.
    pub packed: Option<(u64, u64)>,
}

/// Checks a stored main chunk against its id and its reference, and decompresses it.
pub fn open_chunk(chunk: &ChunkRef, main: &[u8]) -> Result<OpenedChunk, ManifestError> {
    let raw = open(&chunk.id, main, &[MAIN_MAGIC, MAIN_MAGIC_V1])?;
    let with_packs = raw.starts_with(MAIN_MAGIC);
    let mut c = Cursor { id: &chunk.id, bytes: &raw, at: MAIN_MAGIC.len() };
    let count = c.varint()?;
    if count != chunk.count {
        return Err(c.corrupt(&format!("holds {count} files, its reference says {}", chunk.count)));
    }
    Ok(OpenedChunk { id: chunk.id.clone(), raw, with_packs })
}

impl OpenedChunk {
    /// Calls `f` with each file in turn (`stores`: the version's store list), stopping at the
    /// first error, its own or `f`'s.
    pub fn for_each<E: From<ManifestError>>(
        &self,
        stores: &[String],
        mut f: impl FnMut(FileView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut c = Cursor { id: &self.id, bytes: &self.raw, at: MAIN_MAGIC.len() };
        let count = c.varint()?;
        let (mut path, mut key) = (String::new(), String::new());
        for _ in 0..count {
            c.prefixed_into(&mut path)?;
            let store = stores.get(c.varint()? as usize).ok_or_else(|| c.corrupt("names an unknown store"))?;
            c.prefixed_into(&mut key)?;
            let size = c.varint()?;
            let datum = c.string()?;
            let sha256: &[u8; 32] = c.take(32)?.try_into().map_err(|_| c.corrupt("ends early"))?;
            let packed = match if self.with_packs { c.varint()? } else { 0 } {
                0 => None,
                at => {
                    // What `pack_of` needs, without making the pack's id.
                    if ulid::Ulid::from_string(datum).is_err() {
                        return Err(c.corrupt("a packed file's datum id is not an id").into());
                    }
                    Some((at - 1, c.varint()?))
                }
            };
            f(FileView { path: &path, store, key: &key, size, datum, sha256, packed })?;
        }
        Ok(())
    }
}

/// The files of a stored chunk (`sums`: its companion chunk, for md5 and sha1; without it they
/// are left empty).
pub fn decode(
    chunk: &ChunkRef,
    main: &[u8],
    sums: Option<&[u8]>,
    stores: &[String],
) -> Result<Vec<VersionFile>, ManifestError> {
    let opened = open_chunk(chunk, main)?;
    let count = chunk.count;
    let sums_raw = sums.map(|s| open(&chunk.sums, s, &[SUMS_MAGIC])).transpose()?;
    let mut s = sums_raw.as_ref().map(|raw| Cursor { id: &chunk.sums, bytes: raw, at: SUMS_MAGIC.len() });
    if let Some(s) = s.as_mut() {
        if s.varint()? != count {
            return Err(s.corrupt("holds another number of files than its chunk"));
        }
    }
    let mut files: Vec<VersionFile> = Vec::with_capacity(count.min(MAX_ENTRIES as u64) as usize);
    // Files of one pack name one object: they share its URI.
    let mut last_uri: Arc<str> = Arc::from("");
    opened.for_each(stores, |f| {
        let (md5, sha1) = match s.as_mut() {
            Some(s) => (Some(digest(s.take(16)?)), Some(digest(s.take(20)?))),
            None => (None, None),
        };
        let same = last_uri.strip_prefix(f.store).is_some_and(|rest| rest == f.key);
        if !same {
            last_uri = Arc::from(format!("{}{}", f.store, f.key));
        }
        let packed = f.packed.map(|(offset, pack_size)| super::PackedIn {
            // Checked by the walk.
            pack: super::packs::pack_of(f.datum).unwrap_or_default(),
            offset,
            pack_size,
        });
        files.push(VersionFile {
            object_uri: last_uri.clone(),
            path: f.path.to_string(),
            datum: f.datum.to_string(),
            size: f.size,
            checksums: FileDigests::new(*f.sha256, md5, sha1),
            packed,
        });
        Ok::<_, ManifestError>(())
    })?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksums;

    fn file(i: usize) -> VersionFile {
        let h = |n: usize| hex::encode(Sha256::digest(format!("{i}").as_bytes()))[..n].to_string();
        let datum = format!("01K{i:023}");
        let packed = i.is_multiple_of(5).then(|| crate::catalog::PackedIn {
            pack: crate::catalog::packs::pack_of(&datum).unwrap(),
            offset: 512 * i as u64,
            pack_size: 1 << 25,
        });
        VersionFile {
            packed,
            path: format!("shard-{:03}/img-{i:07}.jpg", i / 1000),
            datum,
            size: 1000 + i as u64,
            checksums: FileDigests::of(&Checksums { md5: h(32), sha1: h(40), sha256: h(64) }).unwrap(),
            object_uri: if i.is_multiple_of(3) {
                format!("s3://bucket/data/exec-1/img-{i}.jpg").into()
            } else {
                format!("file:///srv/d/{i}.jpg").into()
            },
        }
    }

    fn decode_all(chunks: &[EncodedChunk], stores: &[String], sums: bool) -> Vec<VersionFile> {
        chunks
            .iter()
            .flat_map(|c| decode(&c.reference, &c.main, sums.then_some(&c.sums[..]), stores).unwrap())
            .collect()
    }

    #[test]
    fn files_round_trip_with_and_without_their_md5_and_sha1() {
        let files: Vec<VersionFile> = (0..20_000).map(file).collect();
        let mut stores = Vec::new();
        let chunks = encode(&files, &mut stores).unwrap();
        assert!(chunks.len() > 1 && chunks.iter().all(|c| c.reference.count as usize <= MAX_ENTRIES));
        assert_eq!(stores, ["s3://bucket/", "file:///"]);
        assert_eq!(decode_all(&chunks, &stores, true), files);
        let lean = decode_all(&chunks, &stores, false);
        assert!(lean
            .iter()
            .zip(&files)
            .all(|(a, b)| a.checksums.sha256() == b.checksums.sha256() && a.checksums.md5().is_none()));
        let stored: usize = chunks.iter().map(|c| c.main.len() + c.sums.len()).sum();
        let json = serde_json::to_vec(&files).unwrap().len();
        assert!(stored * 3 < json, "{stored} bytes stored for {json} bytes of JSON");
        // Odd names survive: multi-byte characters at the point two paths part.
        let odd = vec![
            VersionFile { path: "a/é1".into(), ..file(1) },
            VersionFile { path: "a/é2".into(), ..file(2) },
            VersionFile { path: "a/ë".into(), ..file(3) },
        ];
        let chunks = encode(&odd, &mut stores).unwrap();
        assert_eq!(decode_all(&chunks, &stores, true), odd);
    }

    #[test]
    fn a_walk_sees_what_decoding_gives_and_stops_at_the_callers_error() {
        let files: Vec<VersionFile> = (0..3_000).map(file).collect();
        let mut stores = Vec::new();
        let chunks = encode(&files, &mut stores).unwrap();
        let mut seen = 0;
        for c in &chunks {
            let opened = open_chunk(&c.reference, &c.main).unwrap();
            opened
                .for_each(&stores, |v| {
                    let f = &files[seen];
                    assert_eq!((v.path, v.datum, v.size), (f.path.as_str(), f.datum.as_str(), f.size));
                    assert_eq!(format!("{}{}", v.store, v.key), &*f.object_uri);
                    assert_eq!(v.sha256, f.checksums.sha256());
                    assert_eq!(v.packed, f.packed.as_ref().map(|p| (p.offset, p.pack_size)));
                    seen += 1;
                    Ok::<_, ManifestError>(())
                })
                .unwrap();
        }
        assert_eq!(seen, files.len());
        let opened = open_chunk(&chunks[0].reference, &chunks[0].main).unwrap();
        let mut calls = 0;
        let e = opened
            .for_each(&stores, |_| {
                calls += 1;
                match calls {
                    3 => Err(ManifestError::Corrupt { id: "caller".into(), reason: "stop".into() }),
                    _ => Ok(()),
                }
            })
            .unwrap_err();
        assert_eq!((calls, e.to_string()), (3, "chunk caller: stop".to_string()));
        // A chunk whose reference counts other files than it holds is refused when opened.
        let wrong = ChunkRef { count: chunks[0].reference.count + 1, ..chunks[0].reference.clone() };
        let e = open_chunk(&wrong, &chunks[0].main).unwrap_err();
        assert!(e.to_string().contains("its reference says"), "{e}");
    }

    #[test]
    fn adding_a_file_changes_only_the_chunk_it_lands_in() {
        let files: Vec<VersionFile> = (0..50_000).map(file).collect();
        let mut stores = Vec::new();
        let before = encode(&files, &mut stores).unwrap();
        let mut more = files.clone();
        more.insert(25_000, VersionFile { path: format!("{}-new", files[24_999].path), ..file(999_999) });
        let after = encode(&more, &mut stores).unwrap();
        let old: std::collections::HashSet<&str> = before.iter().map(|c| c.reference.id.as_str()).collect();
        let changed = after.iter().filter(|c| !old.contains(c.reference.id.as_str())).count();
        assert_eq!(changed, 1, "{} chunks before, {} after", before.len(), after.len());
    }

    #[test]
    fn chunks_written_before_packed_datums_still_read() {
        // A DFMC1 chunk of one file, as written then: no place in a pack after the sha256.
        let f = VersionFile { packed: None, ..file(1) };
        let (store, key) = split_uri(&f.object_uri);
        let mut raw = MAIN_MAGIC_V1.to_vec();
        put_varint(&mut raw, 1);
        put_varint(&mut raw, 0);
        put_str(&mut raw, &f.path);
        put_varint(&mut raw, 0);
        put_varint(&mut raw, 0);
        put_str(&mut raw, key);
        put_varint(&mut raw, f.size);
        put_str(&mut raw, &f.datum);
        raw.extend_from_slice(f.checksums.sha256());
        let main = zstd::bulk::compress(&raw, 3).unwrap();
        let reference = ChunkRef {
            id: hex::encode(Sha256::digest(&main)),
            sums: String::new(),
            first: f.path.clone(),
            count: 1,
            bytes: f.size,
        };
        let got = decode(&reference, &main, None, &[store.to_string()]).unwrap();
        let want = VersionFile { checksums: FileDigests::new(*f.checksums.sha256(), None, None), ..f };
        assert_eq!(got, vec![want]);
    }

    #[test]
    fn a_damaged_or_corrupt_chunk_is_named() {
        let files: Vec<VersionFile> = (0..100).map(file).collect();
        let mut stores = Vec::new();
        let chunk = encode(&files, &mut stores).unwrap().remove(0);
        let mut damaged = chunk.main.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let e = decode(&chunk.reference, &damaged, None, &stores).unwrap_err();
        assert!(matches!(&e, ManifestError::Damaged { id } if *id == chunk.reference.id), "{e}");
        // Bytes that hash right but are not a chunk (a record written by something else).
        let junk = zstd::bulk::compress(b"not a chunk at all", 3).unwrap();
        let reference = ChunkRef { id: hex::encode(Sha256::digest(&junk)), ..chunk.reference.clone() };
        let e = decode(&reference, &junk, None, &stores).unwrap_err();
        assert!(e.to_string().contains(&reference.id) && e.to_string().contains("not a manifest chunk"), "{e}");
        // A file read without its md5 and sha1 cannot be written into a manifest: it says so.
        let lean = VersionFile { checksums: FileDigests::new(*file(1).checksums.sha256(), None, None), ..file(1) };
        let e = encode(&[lean], &mut stores).unwrap_err();
        assert!(e.to_string().contains(&file(1).path) && e.to_string().contains("md5 ''"), "{e}");
    }
}
