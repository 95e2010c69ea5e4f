//! Streaming md5 + sha1 + sha256 in one pass over the bytes, and all three of many small
//! contents at once.

pub mod md5_lanes;

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::Read;

/// The three digests datumfs records for every file, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    /// MD5 of the whole content.
    pub md5: String,
    /// SHA-1 of the whole content.
    pub sha1: String,
    /// SHA-256 of the whole content.
    pub sha256: String,
}

/// The three digests in binary, 68 bytes with no allocation: what per-file state keeps, a
/// quarter of [`Checksums`]' footprint. Serializes as [`Checksums`] does (hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    md5: [u8; 16],
    sha1: [u8; 20],
    sha256: [u8; 32],
}

impl Digests {
    /// The digests `c` states in hex; `None` unless each is hex of its digest's length.
    pub fn of(c: &Checksums) -> Option<Self> {
        Some(Digests {
            md5: decode_hex("md5", &c.md5).ok()?,
            sha1: decode_hex("sha1", &c.sha1).ok()?,
            sha256: decode_hex("sha256", &c.sha256).ok()?,
        })
    }

    /// The same digests in hex.
    pub fn to_checksums(&self) -> Checksums {
        Checksums { md5: hex::encode(self.md5), sha1: hex::encode(self.sha1), sha256: hex::encode(self.sha256) }
    }

    /// The md5.
    pub fn md5(&self) -> &[u8; 16] {
        &self.md5
    }

    /// The sha1.
    pub fn sha1(&self) -> &[u8; 20] {
        &self.sha1
    }

    /// The sha256 in hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

impl Serialize for Digests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_checksums().serialize(s)
    }
}

/// A version file's digests in binary: the sha256 always, md5 and sha1 unless the file was
/// read without them (a manifest keeps those apart, read only when something asks). 72 bytes
/// with no allocation. Serializes as [`Checksums`] does, an absent digest as an empty string,
/// and reads back only from hex of the right lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigests {
    sha256: [u8; 32],
    md5: Option<[u8; 16]>,
    sha1: Option<[u8; 20]>,
}

/// Why stated checksums are not digests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} '{value}' is not a valid checksum")]
pub struct BadDigest {
    /// Which digest.
    pub what: &'static str,
    /// What was stated.
    pub value: String,
}

fn decode_hex<const N: usize>(what: &'static str, value: &str) -> Result<[u8; N], BadDigest> {
    let mut out = [0u8; N];
    hex::decode_to_slice(value, &mut out).map_err(|_| BadDigest { what, value: value.to_string() })?;
    Ok(out)
}

impl FileDigests {
    /// The digests as they were read: a sha256, and md5 and sha1 if known.
    pub fn new(sha256: [u8; 32], md5: Option<[u8; 16]>, sha1: Option<[u8; 20]>) -> Self {
        FileDigests { sha256, md5, sha1 }
    }

    /// The digests `c` states in hex; an empty md5 or sha1 is absent, a sha256 is required.
    pub fn of(c: &Checksums) -> Result<Self, BadDigest> {
        fn optional<const N: usize>(what: &'static str, value: &str) -> Result<Option<[u8; N]>, BadDigest> {
            (!value.is_empty()).then(|| decode_hex(what, value)).transpose()
        }
        Ok(FileDigests {
            sha256: decode_hex("sha256", &c.sha256)?,
            md5: optional("md5", &c.md5)?,
            sha1: optional("sha1", &c.sha1)?,
        })
    }

    /// The sha256.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The md5, if it was read.
    pub fn md5(&self) -> Option<&[u8; 16]> {
        self.md5.as_ref()
    }

    /// The sha1, if it was read.
    pub fn sha1(&self) -> Option<&[u8; 20]> {
        self.sha1.as_ref()
    }

    /// The same digests in hex (empty where absent).
    pub fn to_checksums(&self) -> Checksums {
        Checksums {
            md5: self.md5.map(hex::encode).unwrap_or_default(),
            sha1: self.sha1.map(hex::encode).unwrap_or_default(),
            sha256: hex::encode(self.sha256),
        }
    }
}

impl From<&Digests> for FileDigests {
    fn from(d: &Digests) -> Self {
        FileDigests { sha256: d.sha256, md5: Some(d.md5), sha1: Some(d.sha1) }
    }
}

impl Serialize for FileDigests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_checksums().serialize(s)
    }
}

impl<'de> Deserialize<'de> for FileDigests {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FileDigests::of(&Checksums::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A sha256 in binary, 32 bytes with no allocation, that reads and writes as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest `hex` states; an error unless it is hex of 32 bytes.
    pub fn from_hex(hex: &str) -> Result<Self, BadDigest> {
        decode_hex("sha256", hex).map(Sha256Digest)
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Sha256Digest::from_hex(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The digests of each of `contents`, in order: their md5s side by side (see [`md5_lanes`]),
/// so that many small files cost little more than one.
pub fn digests_of_many(contents: &[&[u8]]) -> Vec<Digests> {
    md5_lanes::md5_many(contents)
        .into_iter()
        .zip(contents)
        .map(|(md5, data)| Digests { md5, sha1: Sha1::digest(data).into(), sha256: Sha256::digest(data).into() })
        .collect()
}

/// What was computed of a file's checksums before its upload (as it was written).
#[derive(Clone)]
pub enum KnownSums {
    /// The digests of the file's first `len` bytes.
    Done {
        /// Bytes covered.
        len: u64,
        /// Their digests.
        digests: Digests,
    },
    /// A hash of the file's first bytes, stopped part way: the uploader goes on from there.
    Started(Box<MultiHasher>),
}

impl KnownSums {
    /// How many of the file's first bytes they cover.
    pub fn len(&self) -> u64 {
        match self {
            KnownSums::Done { len, .. } => *len,
            KnownSums::Started(h) => h.len(),
        }
    }

    /// Whether they cover nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These, if they can serve a file of `size` bytes: digests of exactly that many bytes, or
    /// a hash of no more than that.
    pub fn fit(self, size: u64) -> Option<Self> {
        match &self {
            KnownSums::Done { len, .. } => (*len == size).then_some(self),
            KnownSums::Started(h) => (h.len() <= size).then_some(self),
        }
    }

    /// The finished digests, when that is what these are.
    pub fn done(&self) -> Option<&Digests> {
        match self {
            KnownSums::Done { digests, .. } => Some(digests),
            KnownSums::Started(_) => None,
        }
    }
}

impl std::fmt::Debug for KnownSums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KnownSums::Done { len, digests } => write!(f, "Done({len} bytes, sha256 {})", digests.sha256_hex()),
            KnownSums::Started(h) => write!(f, "Started({} bytes)", h.len()),
        }
    }
}

/// Feeds bytes once into all three digests.
#[derive(Default, Clone)]
pub struct MultiHasher {
    md5: Md5,
    sha1: Sha1,
    sha256: Sha256,
    len: u64,
}

impl MultiHasher {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes of the content.
    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.sha1.update(data);
        self.sha256.update(data);
        self.len += data.len() as u64;
    }

    /// Adds the next bytes, the three digests on three threads: for big buffers (a few MiB),
    /// where hashing would otherwise cost as much as moving the bytes.
    pub fn update_parallel(&mut self, data: &[u8]) {
        if data.len() < (1 << 20) {
            return self.update(data);
        }
        let (md5, sha1, sha256) = (&mut self.md5, &mut self.sha1, &mut self.sha256);
        std::thread::scope(|s| {
            s.spawn(|| md5.update(data));
            s.spawn(|| sha1.update(data));
            sha256.update(data);
        });
        self.len += data.len() as u64;
    }

    /// Number of bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digests of everything fed, in hex.
    pub fn finish(self) -> Checksums {
        self.digests().to_checksums()
    }

    /// The digests of everything fed, in binary.
    pub fn digests(self) -> Digests {
        Digests {
            md5: self.md5.finalize().into(),
            sha1: self.sha1.finalize().into(),
            sha256: self.sha256.finalize().into(),
        }
    }

    /// Feeds everything a reader yields, in 1 MiB steps.
    pub fn update_from(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.update(&buf[..n]);
        }
    }

    /// Hashes everything a reader yields, in 1 MiB steps.
    pub fn of_reader(reader: impl Read) -> std::io::Result<(Checksums, u64)> {
        let mut hasher = MultiHasher::new();
        hasher.update_from(reader)?;
        let len = hasher.len();
        Ok((hasher.finish(), len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_reads_and_writes_as_hex() {
        let hex = MultiHasher::of_reader(&b"hello"[..]).unwrap().0.sha256;
        let d = Sha256Digest::from_hex(&hex).unwrap();
        assert_eq!((d.to_string(), serde_json::to_value(d).unwrap()), (hex.clone(), serde_json::json!(hex)));
        assert_eq!(serde_json::from_value::<Sha256Digest>(serde_json::json!(hex)).unwrap(), d);
        assert!(serde_json::from_value::<Sha256Digest>(serde_json::json!("abc")).is_err());
    }

    #[test]
    fn file_digests_read_and_write_the_hex_form_and_refuse_bad_hex() {
        let full = MultiHasher::of_reader(&b"hello"[..]).unwrap().0;
        let d = FileDigests::of(&full).unwrap();
        assert_eq!(d.to_checksums(), full);
        assert_eq!(serde_json::to_value(d).unwrap(), serde_json::to_value(&full).unwrap());
        let back: FileDigests = serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(back, d);
        // Without md5 and sha1 (a manifest read without them): empty strings, both ways.
        let lean = Checksums { md5: String::new(), sha1: String::new(), ..full.clone() };
        let l = FileDigests::of(&lean).unwrap();
        assert_eq!((l.md5(), l.sha1(), l.sha256()), (None, None, d.sha256()));
        assert_eq!(l.to_checksums(), lean);
        // A sha256 is required, and every digest given must be hex of its length.
        for (bad, what) in [
            (Checksums { sha256: String::new(), ..full.clone() }, "sha256"),
            (Checksums { sha256: "xyz".into(), ..full.clone() }, "sha256"),
            (Checksums { md5: "00".into(), ..full.clone() }, "md5"),
            (Checksums { sha1: "zz".repeat(20), ..full.clone() }, "sha1"),
        ] {
            assert_eq!(FileDigests::of(&bad).unwrap_err().what, what);
            let e = serde_json::from_value::<FileDigests>(serde_json::to_value(&bad).unwrap()).unwrap_err();
            assert!(e.to_string().contains(what) && e.to_string().contains("not a valid checksum"), "{e}");
        }
    }

    #[test]
    fn known_digests() {
        let mut h = MultiHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        let c = h.finish();
        assert_eq!(c.md5, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(c.sha1, "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed");
        assert_eq!(c.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }

    #[test]
    fn parallel_update_matches() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = MultiHasher::new();
        a.update(&data);
        let mut b = MultiHasher::new();
        b.update_parallel(&data[..2_000_000]);
        b.update_parallel(&data[2_000_000..]);
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn digests_round_trip_through_hex_and_refuse_what_is_not_a_digest() {
        let c = MultiHasher::of_reader(&b"some bytes"[..]).unwrap().0;
        let d = Digests::of(&c).unwrap();
        assert_eq!(d.to_checksums(), c);
        assert_eq!(d.sha256_hex(), c.sha256);
        assert_eq!(serde_json::to_value(d).unwrap(), serde_json::to_value(&c).unwrap());
        assert!(Digests::of(&Checksums { md5: "xyz".into(), ..c.clone() }).is_none());
        assert!(Digests::of(&Checksums { sha256: c.sha1.clone(), ..c }).is_none());
    }

    #[test]
    fn empty_input() {
        let (c, n) = MultiHasher::of_reader(&b""[..]).unwrap();
        assert_eq!(n, 0);
        assert_eq!(c.md5, "d41d8cd98f00b204e9800998ecf8427e");
    }
}
