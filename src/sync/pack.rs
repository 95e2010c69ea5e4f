//! Building a pack: small output files laid out in one plain tar, in memory, with the offset of
//! each file's bytes. The layout depends only on the files' paths, sizes and modification times,
//! so a sync resumed after a crash rebuilds exactly the bytes it was uploading.

use crate::checksum::{Checksums, MultiHasher};
use crate::outputs::state::FileStamp;
use std::path::PathBuf;

/// Files below this size go into packs by default.
pub const DEFAULT_PACK_BELOW: u64 = 1 << 20;
/// A pack's tar (headers, padding and closing blocks included) is at most this big, unless a
/// single file needs more. Two packs are built in memory at once (one uploading while the next
/// is read): 16 MiB keeps that near 32 MiB, and each pack goes up in one conditional PUT.
pub const PACK_TARGET: u64 = 16 << 20;
const _: () = assert!(PACK_TARGET <= super::upload::SINGLE_PUT_MAX);
/// Files per pack at most (keeps a pack's record a few MiB at most).
pub const PACK_MEMBERS: usize = 4096;

/// A file to put in a pack.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its path relative to `outputs/` (its name in the tar).
    pub rel: String,
    /// The staged file.
    pub local: PathBuf,
    /// The file as planned: a file that no longer has this stamp is left out.
    pub stamp: FileStamp,
    /// Its checksums when known from the write path.
    pub known: Option<Checksums>,
}

/// Where one member ended up.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Offset of its bytes in the pack.
    pub offset: u64,
    /// Its checksums.
    pub checksums: Checksums,
}

/// A pack in memory.
#[derive(Debug)]
pub struct Built {
    /// The tar's bytes.
    pub bytes: Vec<u8>,
    /// Per member (in the order given): where it is, or why it is not in the pack.
    pub placed: Vec<Result<Placed, std::io::Error>>,
}

fn padded(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// The bytes a file `rel` of `size` bytes takes in a pack: its header (two for a name too long
/// for one) and its bytes padded to a block.
fn entry_bytes(rel: &str, size: u64) -> u64 {
    let long_name = if rel.len() >= 100 { 512 + padded(rel.len() as u64 + 1) } else { 0 };
    512 + long_name + padded(size)
}

/// The two zero blocks that end a tar.
const TAR_END: u64 = 1024;

/// Splits files (name and size, in the order they are packed) into packs: how many files each
/// pack takes, in order. A pack's tar stays within [`PACK_TARGET`] bytes and
/// [`PACK_MEMBERS`] files; a file that needs more than the target alone gets a pack of its own.
pub fn split<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<usize> {
    let mut counts: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for (rel, size) in files {
        let entry = entry_bytes(rel, size);
        match counts.last_mut() {
            Some(n) if bytes + entry + TAR_END <= PACK_TARGET && *n < PACK_MEMBERS => {
                *n += 1;
                bytes += entry;
            }
            _ => {
                counts.push(1);
                bytes = entry;
            }
        }
    }
    counts
}

/// The bytes a pack of `members` takes, and room to write it without ever growing the buffer:
/// every entry, the closing blocks, and the 8 KiB that copying a file into a `Vec` reserves
/// beyond what it writes (without it the last file would double the buffer).
fn capacity_for(members: &[Member]) -> usize {
    let entries: u64 = members.iter().map(|m| entry_bytes(&m.rel, m.stamp.size)).sum();
    (entries + TAR_END) as usize + (8 << 10)
}

/// Buffers for packs, each kept for a later pack once its pack is uploaded. A pack's bytes then
/// land in memory the process already touched: a new buffer per pack would be fresh pages from
/// the kernel every time (a 16 MiB buffer is above the allocator's threshold for its own
/// mapping), and on machines that back memory only when it is first touched, that cost about a
/// quarter of a sync of small files. One sync's buffers go when it ends.
#[derive(Debug, Default)]
pub struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// A buffer kept from an uploaded pack, or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }

    /// Keeps the buffer holding `bytes` for the next pack, if nothing else holds it any more.
    pub fn give_back(&self, bytes: bytes::Bytes) {
        if let Ok(unique) = bytes.try_into_mut() {
            let mut buf = Vec::from(unique);
            buf.clear();
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        }
    }
}

/// Reads `members` and lays them out in a tar, in `buf` (emptied first; grown only if it is
/// too small). A member that cannot be read, or that changed since it was planned, is left out
/// with its error. Blocking.
pub fn build(members: &[Member], mut buf: Vec<u8>) -> Built {
    buf.clear();
    buf.reserve(capacity_for(members));
    let mut tar = tar::Builder::new(buf);
    let mut placed = Vec::with_capacity(members.len());
    for m in members {
        let res = (|| {
            let bytes = std::fs::read(&m.local)?;
            let now = FileStamp::of(&std::fs::symlink_metadata(&m.local)?);
            if now != m.stamp || bytes.len() as u64 != m.stamp.size {
                return Err(std::io::Error::other("it changed while it was being packed"));
            }
            let checksums = match &m.known {
                Some(k) => k.clone(),
                None => {
                    let mut h = MultiHasher::new();
                    h.update(&bytes);
                    h.finish()
                }
            };
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(u64::try_from(m.stamp.mtime_ns / 1_000_000_000).unwrap_or(0));
            tar.append_data(&mut header, &m.rel, bytes.as_slice())?;
            let offset = tar.get_ref().len() as u64 - padded(bytes.len() as u64);
            Ok(Placed { offset, checksums })
        })();
        placed.push(res);
    }
    let bytes = tar.into_inner().unwrap_or_default();
    Built { bytes, placed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_stay_within_one_put_headers_and_all() {
        // Files of 10 KiB: their tar reaches the target about eighty files before their bytes
        // alone do.
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..1700).map(|i| format!("shard/item-{i:06}.bin")).collect();
        let counts = split(names.iter().map(|n| (n.as_str(), 10240)));
        assert_eq!(counts.iter().sum::<usize>(), names.len());
        assert!(counts.len() == 2 && counts[0] > 1500, "{counts:?}");
        let members: Vec<Member> = names[..counts[0]]
            .iter()
            .enumerate()
            .map(|(i, rel)| {
                let local = dir.path().join(i.to_string());
                std::fs::write(&local, [i as u8; 10240]).unwrap();
                let stamp = FileStamp::of(&std::fs::metadata(&local).unwrap());
                Member { rel: rel.clone(), local, stamp, known: None }
            })
            .collect();
        let built = build(&members, Vec::new());
        assert!(built.placed.iter().all(Result::is_ok));
        assert!(built.bytes.len() as u64 <= PACK_TARGET, "{} bytes", built.bytes.len());
        assert!(built.bytes.len() as u64 + entry_bytes(&names[counts[0]], 10240) > PACK_TARGET, "the pack is full");
        // A file bigger than the target alone is a pack of its own; long names count their
        // extra header.
        assert_eq!(split([("a", 1), ("big", PACK_TARGET), ("b", 1)]), vec![1, 1, 1]);
        let long = "d/".repeat(60);
        assert_eq!(entry_bytes(&long, 1), 512 + 512 + 512 + 512);
        assert_eq!(split((0..PACK_MEMBERS + 1).map(|_| ("x", 0))), vec![PACK_MEMBERS, 1]);
    }

    #[test]
    fn a_buffer_comes_back_for_the_next_pack_only_once_nothing_else_holds_it() {
        let buffers = Buffers::default();
        let mut buf = buffers.take();
        buf.reserve(1 << 20);
        buf.extend_from_slice(b"a pack");
        let at = buf.as_ptr();
        let body = bytes::Bytes::from(buf);
        let still_sending = body.clone();
        buffers.give_back(body);
        assert_eq!(buffers.take().capacity(), 0, "a buffer something still reads is not reused");
        buffers.give_back(still_sending);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), at, "the same memory");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
    }

    #[test]
    fn a_pack_is_a_tar_whose_members_are_where_it_says_and_rebuilds_identically() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/deep.bin", "d".repeat(150));
        let files: Vec<(String, Vec<u8>)> = vec![
            ("a.txt".into(), b"hello".to_vec()),
            ("empty".into(), Vec::new()),
            (long, (0..3000u32).map(|i| i as u8).collect()),
        ];
        let members: Vec<Member> = files
            .iter()
            .enumerate()
            .map(|(i, (rel, bytes))| {
                let local = dir.path().join(format!("f{i}"));
                std::fs::write(&local, bytes).unwrap();
                let stamp = FileStamp::of(&std::fs::metadata(&local).unwrap());
                Member { rel: rel.clone(), local, stamp, known: None }
            })
            .collect();
        let built = build(&members, Vec::new());
        for ((_, bytes), placed) in files.iter().zip(&built.placed) {
            let p = placed.as_ref().unwrap();
            assert_eq!(&built.bytes[p.offset as usize..p.offset as usize + bytes.len()], bytes.as_slice());
            assert_eq!(p.checksums, MultiHasher::of_reader(bytes.as_slice()).unwrap().0);
        }
        // Any tar reader sees the same files.
        let mut archive = tar::Archive::new(built.bytes.as_slice());
        let read: Vec<(String, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), buf)
            })
            .collect();
        assert_eq!(read, files);
        // A buffer kept from an earlier pack, bytes and all, gives the same bytes too.
        let used = vec![0xA5; built.bytes.len() + 4096];
        assert_eq!(build(&members, used).bytes, built.bytes, "the same files give the same bytes");
        // The buffer was big enough from the start: it never doubled.
        assert!(built.bytes.capacity() == capacity_for(&members) && built.bytes.len() <= built.bytes.capacity());

        // A file changed since it was planned is left out, and named.
        std::fs::write(&members[0].local, b"changed!").unwrap();
        let again = build(&members, Vec::new());
        assert!(again.placed[0].is_err() && again.placed[1].is_ok());
    }
}
