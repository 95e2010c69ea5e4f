//! Streaming md5 + sha1 + sha256 in one pass over the bytes.

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
        let mut d = Digests { md5: [0; 16], sha1: [0; 20], sha256: [0; 32] };
        hex::decode_to_slice(&c.md5, &mut d.md5).ok()?;
        hex::decode_to_slice(&c.sha1, &mut d.sha1).ok()?;
        hex::decode_to_slice(&c.sha256, &mut d.sha256).ok()?;
        Some(d)
    }

    /// The same digests in hex.
    pub fn to_checksums(&self) -> Checksums {
        Checksums { md5: hex::encode(self.md5), sha1: hex::encode(self.sha1), sha256: hex::encode(self.sha256) }
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

    /// The digests of everything fed.
    pub fn finish(self) -> Checksums {
        Checksums {
            md5: hex::encode(self.md5.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
        }
    }

    /// Hashes everything a reader yields, in 1 MiB steps.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<(Checksums, u64)> {
        let mut hasher = MultiHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let len = hasher.len();
        Ok((hasher.finish(), len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
