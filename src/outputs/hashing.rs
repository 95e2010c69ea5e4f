//! Checksums of output files computed while the job writes them, so that `sync` can upload a
//! file without reading it twice and without spending the CPU on hashing at sync time.
//!
//! Writes that continue a file from where its bytes end (the common case: `torch.save`, `cp`,
//! log appends) are fed, in order, to one hashing thread; any other write, a truncation or an
//! unknown file makes its checksums unknown, and `sync` then hashes while uploading, as always.

use crate::checksum::{Digests, MultiHasher};
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

enum Msg {
    /// Bytes written at `offset`.
    Write { file: u64, offset: u64, data: Vec<u8> },
    /// The file is empty now (created, or truncated to zero).
    Reset { file: u64 },
    /// The file changed in a way that cannot be followed.
    Invalidate { file: u64 },
    /// A handle of the file was closed: its digests so far are kept, not the hashing state.
    Seal { file: u64 },
    /// What the checksums of each file's first `len` bytes are now, if known.
    Snapshot { files: Vec<u64>, reply: SyncSender<Vec<Option<(u64, Digests)>>> },
}

enum FileState {
    Hashing {
        next: u64,
        hasher: Box<MultiHasher>,
    },
    /// The digests of the file's first `len` bytes, once a handle was closed: a fifth of a
    /// hasher's memory, for the many files written once. A later write past them is not
    /// followed (sync hashes that file itself).
    Sealed {
        len: u64,
        digests: Digests,
    },
    Unknown,
}

/// Follows the writes of every staged file on one background thread.
pub struct WriteHasher {
    tx: SyncSender<Msg>,
}

/// Messages (up to 1 MiB each) queued before a writer waits: bounds the memory held.
const QUEUE: usize = 32;

impl Default for WriteHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteHasher {
    /// Starts the hashing thread (it ends when the hasher is dropped).
    pub fn new() -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new().name("datumfs-hash".into()).spawn(move || run(rx));
        if let Err(e) = spawned {
            tracing::warn!("no write-time hashing ({e}); sync will hash outputs itself");
        }
        Self { tx }
    }

    /// Notes `data` written at `offset` of staging file `file` (its inode number).
    pub fn write(&self, file: u64, offset: u64, data: &[u8]) {
        let _ = self.tx.send(Msg::Write { file, offset, data: data.to_vec() });
    }

    /// Notes that `file` is empty now.
    pub fn reset(&self, file: u64) {
        let _ = self.tx.send(Msg::Reset { file });
    }

    /// Notes that a handle of `file` was closed: keeps its digests so far instead of the hashing
    /// state (a later write continuing it is then not followed).
    pub fn seal(&self, file: u64) {
        let _ = self.tx.send(Msg::Seal { file });
    }

    /// Notes a change that cannot be followed (truncation to a non-zero size, ...).
    pub fn invalidate(&self, file: u64) {
        let _ = self.tx.send(Msg::Invalidate { file });
    }

    /// The checksums of `file`'s first bytes and how many bytes they cover, if known. Every
    /// write noted before this call is included.
    pub fn snapshot(&self, file: u64) -> Option<(u64, Digests)> {
        self.snapshots(vec![file]).pop().flatten()
    }

    /// [`WriteHasher::snapshot`] of many files in one exchange with the hashing thread (a sync
    /// of a hundred thousand files would otherwise wait for it as many times).
    pub fn snapshots(&self, files: Vec<u64>) -> Vec<Option<(u64, Digests)>> {
        let n = files.len();
        let (reply, answer) = sync_channel(1);
        if self.tx.send(Msg::Snapshot { files, reply }).is_err() {
            return vec![None; n];
        }
        answer.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| vec![None; n])
    }
}

fn run(rx: Receiver<Msg>) {
    let mut files: HashMap<u64, FileState> = HashMap::new();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Write { file, offset, data } => {
                let state = files.entry(file).or_insert(FileState::Unknown);
                match state {
                    FileState::Hashing { next, hasher } if *next == offset => {
                        hasher.update_parallel(&data);
                        *next += data.len() as u64;
                    }
                    _ => *state = FileState::Unknown,
                }
            }
            Msg::Reset { file } => {
                files.insert(file, FileState::Hashing { next: 0, hasher: Box::default() });
            }
            Msg::Invalidate { file } => {
                files.insert(file, FileState::Unknown);
            }
            Msg::Seal { file } => {
                let sealed = match files.get(&file) {
                    Some(FileState::Hashing { next, hasher }) => {
                        FileState::Sealed { len: *next, digests: (**hasher).clone().digests() }
                    }
                    _ => continue,
                };
                files.insert(file, sealed);
            }
            Msg::Snapshot { files: asked, reply } => {
                let answer = asked
                    .iter()
                    .map(|file| match files.get(file) {
                        Some(FileState::Hashing { next, hasher }) => Some((*next, (**hasher).clone().digests())),
                        Some(FileState::Sealed { len, digests }) => Some((*len, *digests)),
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_sequential_writes_and_gives_up_on_others() {
        let h = WriteHasher::new();
        h.reset(1);
        h.write(1, 0, b"hello ");
        h.write(1, 6, b"world");
        let (len, sums) = h.snapshot(1).unwrap();
        assert_eq!(len, 11);
        assert_eq!(sums.sha256_hex(), "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        h.write(1, 11, b"!");
        assert_eq!(h.snapshot(1).unwrap().0, 12, "appends continue after a snapshot");
        h.write(1, 3, b"x");
        assert!(h.snapshot(1).is_none(), "a rewrite makes the checksums unknown");
        h.reset(1);
        h.write(1, 0, b"a");
        assert_eq!(h.snapshot(1).unwrap().0, 1);
        assert!(h.snapshot(2).is_none(), "a file never seen from its start is unknown");
        h.write(3, 0, b"a");
        assert!(h.snapshot(3).is_none(), "writes without a known start are not trusted");
    }

    #[test]
    fn a_closed_file_keeps_its_digests_and_a_later_append_is_not_followed() {
        let h = WriteHasher::new();
        h.reset(1);
        h.write(1, 0, b"hello ");
        h.write(1, 6, b"world");
        h.seal(1);
        let (len, sums) = h.snapshot(1).unwrap();
        assert_eq!(
            (len, sums.sha256_hex().as_str()),
            (11, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
        );
        h.seal(1);
        assert_eq!(h.snapshot(1).unwrap().0, 11, "sealing twice changes nothing");
        h.write(1, 11, b"!");
        assert!(h.snapshot(1).is_none(), "an append after the close is left to sync");
        h.reset(1);
        h.write(1, 0, b"a");
        h.seal(1);
        assert_eq!(h.snapshot(1).unwrap().0, 1, "a truncation starts afresh");
    }
}
