//! Checksums of output files computed while the job writes them, so that `sync` can upload a
//! file without reading it twice and without spending the CPU on hashing at sync time.
//!
//! Writes that continue a file from where its bytes end (the common case: `torch.save`, `cp`,
//! log appends) are fed, in order, to one hashing thread; any other write, a truncation or an
//! unknown file makes its checksums unknown, and `sync` then hashes while uploading, as always.
//!
//! A file the kernel writes directly (FUSE passthrough: its writes never reach the daemon) is
//! hashed whole, from the staging file, when the last handle that could write it is closed;
//! until then its checksums are unknown.

use crate::checksum::{Digests, KnownSums, MultiHasher};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// What is known of each file's checksums.
type Snapshot = Vec<Option<KnownSums>>;

enum Msg {
    /// Bytes written at `offset`.
    Write { file: u64, offset: u64, data: Vec<u8> },
    /// The file is empty now (created, or truncated to zero).
    Reset { file: u64 },
    /// The file changed in a way that cannot be followed.
    Invalidate { file: u64 },
    /// A handle of the file was closed: its digests so far are kept, not the hashing state.
    Seal { file: u64 },
    /// A handle the kernel writes through directly was opened on the file.
    DirectOpen { file: u64 },
    /// A handle opened with [`Msg::DirectOpen`] was closed; `read` reads the file (`None`:
    /// the handle was never written through directly, and nothing can be said of the file).
    DirectClose { file: u64, read: Option<std::fs::File> },
    /// What is known of each file's checksums now (a big file still being hashed: its run
    /// stops, and the asker goes on from where it got).
    Snapshot { files: Vec<u64>, reply: SyncSender<Snapshot> },
    /// A big file hashed on its own thread: its length and digests, if it could be read.
    Hashed { file: u64, run: u64, whole: Option<(u64, Digests)> },
    /// A file's digests once sealed, without stopping a run (tests wait with it).
    #[cfg(test)]
    Sealed { file: u64, reply: SyncSender<Option<(u64, Digests)>> },
}

/// Where a big file's run stands, shared with the thread that runs it.
enum Run {
    /// Hashing: the hash of the bytes read so far.
    Hashing(Box<MultiHasher>),
    /// Done: the file's length and digests (until the run's result reaches the hashing thread).
    Done(u64, Digests),
    /// Stopped, or its hash taken over.
    Stopped,
}

/// A big file's run, shared with the thread that runs it.
type RunningHash = Arc<Mutex<Run>>;

/// Stops a big file's run (if `state` is one), returning what it got: the digests if it was
/// done, else the hash of the bytes it had read.
fn stop_run(state: &FileState) -> Option<KnownSums> {
    let FileState::Background { hash, .. } = state else { return None };
    match std::mem::replace(&mut *hash.lock().unwrap_or_else(|e| e.into_inner()), Run::Stopped) {
        Run::Hashing(h) => Some(KnownSums::Started(h)),
        Run::Done(len, digests) => Some(KnownSums::Done { len, digests }),
        Run::Stopped => None,
    }
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
    /// Being hashed whole on its own thread (hashing run `run`), which feeds `hash`
    /// ([`stop_run`] stops it).
    Background {
        run: u64,
        hash: RunningHash,
    },
    /// Open for writing through `writers` handles whose writes the kernel makes directly.
    Direct {
        writers: u32,
        /// Whether one of them closed without a way to read the file.
        lost: bool,
    },
    Unknown,
}

/// Follows the writes of every staged file on one background thread.
pub struct WriteHasher {
    /// Shared (weakly) with the threads hashing big files, which send their results back; the
    /// hashing thread ends once this is dropped.
    tx: Arc<SyncSender<Msg>>,
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
        let tx = Arc::new(tx);
        let results = Arc::downgrade(&tx);
        let spawned = std::thread::Builder::new().name("datumfs-hash".into()).spawn(move || run(rx, results));
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

    /// Notes a handle of `file` that the kernel writes through without telling us: the file is
    /// hashed whole once the last such handle is closed ([`WriteHasher::direct_close`]).
    pub fn direct_open(&self, file: u64) {
        let _ = self.tx.send(Msg::DirectOpen { file });
    }

    /// Notes that a handle of [`WriteHasher::direct_open`] was closed; `read` reads the file
    /// (`None` for a handle that was not written through directly after all: its file's
    /// checksums are then left to sync).
    pub fn direct_close(&self, file: u64, read: Option<std::fs::File>) {
        let _ = self.tx.send(Msg::DirectClose { file, read });
    }

    /// What is known of the checksums of `file`'s first bytes. Every write noted before this
    /// call is included. A big file still being hashed whole is handed over part way: its run
    /// stops, and the caller (sync) hashes the rest as it uploads it.
    pub fn snapshot(&self, file: u64) -> Option<KnownSums> {
        self.snapshots(vec![file]).pop().flatten()
    }

    /// The digests of `file` if it is sealed (hashed whole, or closed), without stopping a run.
    #[cfg(test)]
    fn sealed(&self, file: u64) -> Option<(u64, Digests)> {
        let (reply, answer) = sync_channel(1);
        self.tx.send(Msg::Sealed { file, reply }).ok()?;
        answer.recv().ok().flatten()
    }

    /// [`WriteHasher::snapshot`] of many files in one exchange with the hashing thread (a sync
    /// of a hundred thousand files would otherwise wait for it as many times).
    pub fn snapshots(&self, files: Vec<u64>) -> Vec<Option<KnownSums>> {
        let n = files.len();
        let (reply, answer) = sync_channel(1);
        if self.tx.send(Msg::Snapshot { files, reply }).is_err() {
            return vec![None; n];
        }
        answer.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| vec![None; n])
    }
}

/// Files up to this size, closed by their last direct writer, are hashed together (their md5s
/// side by side); bigger ones are hashed on their own, streaming.
const BATCHED_MAX: u64 = 4 << 20;
/// Files hashed together at most.
const BATCH: usize = 32;
/// Bytes of files waiting to be hashed together at most (read whole, they are held in memory).
const BATCH_BYTES: usize = 8 << 20;
/// How long files wait for others to be hashed with when nothing else comes.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// Big files hashed on threads of their own at once; past that, sync hashes a big file itself
/// (a job writing many big files at once must not get a thread per file).
const BIG_AT_ONCE: usize = 2;

/// Small files read whole, waiting to be hashed together.
#[derive(Default)]
struct Batch {
    files: Vec<(u64, Vec<u8>)>,
}

impl Batch {
    fn holds(&self, file: u64) -> bool {
        self.files.iter().any(|(f, _)| *f == file)
    }

    /// Bytes waiting in all.
    fn bytes(&self) -> usize {
        self.files.iter().map(|(_, data)| data.len()).sum()
    }

    /// Hashes what waits, and seals each file with its digests.
    fn hash(&mut self, files: &mut HashMap<u64, FileState>) {
        if self.files.is_empty() {
            return;
        }
        let contents: Vec<&[u8]> = self.files.iter().map(|(_, data)| data.as_slice()).collect();
        let digests = crate::checksum::digests_of_many(&contents);
        for ((file, data), digests) in self.files.drain(..).zip(digests) {
            files.insert(file, FileState::Sealed { len: data.len() as u64, digests });
        }
    }
}

/// What the hashing thread keeps besides the files' states.
struct Runner {
    files: HashMap<u64, FileState>,
    batch: Batch,
    /// Where threads hashing big files send their results.
    results: Weak<SyncSender<Msg>>,
    /// Hashing runs started, to tell a run's result from a later one's.
    runs: u64,
    /// Runs of big files not finished yet.
    big_running: Arc<AtomicUsize>,
}

fn run(rx: Receiver<Msg>, results: Weak<SyncSender<Msg>>) {
    let mut r =
        Runner { files: HashMap::new(), batch: Batch::default(), results, runs: 0, big_running: Arc::default() };
    loop {
        let msg = if r.batch.files.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(BATCH_WAIT)
        };
        let msg = match msg {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                r.batch.hash(&mut r.files);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Whatever asks about or changes a file waiting in the batch sees it hashed first.
        let waits = match &msg {
            Msg::Snapshot { .. } => true,
            Msg::DirectClose { .. } | Msg::Hashed { .. } => false,
            #[cfg(test)]
            Msg::Sealed { .. } => true,
            Msg::Write { file, .. }
            | Msg::Reset { file }
            | Msg::Invalidate { file }
            | Msg::Seal { file }
            | Msg::DirectOpen { file } => r.batch.holds(*file),
        };
        if waits {
            r.batch.hash(&mut r.files);
        }
        r.handle(msg);
        if r.batch.files.len() >= BATCH || r.batch.bytes() >= BATCH_BYTES {
            r.batch.hash(&mut r.files);
        }
    }
}

impl Runner {
    fn handle(&mut self, msg: Msg) {
        let (files, batch) = (&mut self.files, &mut self.batch);
        match msg {
            Msg::Write { file, offset, data } => {
                let state = files.entry(file).or_insert(FileState::Unknown);
                // A run's result would be stale.
                stop_run(state);
                match state {
                    FileState::Hashing { next, hasher } if *next == offset => {
                        hasher.update_parallel(&data);
                        *next += data.len() as u64;
                    }
                    // The whole file is hashed when its direct writers are done.
                    FileState::Direct { .. } => {}
                    _ => *state = FileState::Unknown,
                }
            }
            Msg::Reset { file } => {
                let state = files.entry(file).or_insert(FileState::Unknown);
                stop_run(state);
                if !matches!(state, FileState::Direct { .. }) {
                    *state = FileState::Hashing { next: 0, hasher: Box::default() };
                }
            }
            Msg::Invalidate { file } => {
                let state = files.entry(file).or_insert(FileState::Unknown);
                stop_run(state);
                if !matches!(state, FileState::Direct { .. }) {
                    *state = FileState::Unknown;
                }
            }
            Msg::DirectOpen { file } => {
                let state = files.entry(file).or_insert(FileState::Unknown);
                match state {
                    FileState::Direct { writers, .. } => *writers += 1,
                    _ => {
                        // Written again: that run's result would be stale.
                        stop_run(state);
                        *state = FileState::Direct { writers: 1, lost: false };
                    }
                }
            }
            Msg::DirectClose { file, read } => {
                let Some(FileState::Direct { writers, lost }) = files.get_mut(&file) else { return };
                *writers = writers.saturating_sub(1);
                *lost |= read.is_none();
                if *writers > 0 {
                    return;
                }
                let read = match (*lost, read) {
                    (false, Some(f)) => f,
                    _ => return drop(files.insert(file, FileState::Unknown)),
                };
                // A small file waits for others, to be hashed with them; a big one is hashed now.
                let small = read.metadata().ok().filter(|m| m.len() <= BATCHED_MAX);
                if let Some(data) = small.and_then(|m| read_whole(&read, m.len())) {
                    return batch.files.push((file, data));
                }
                // A big one on a thread of its own: the requests of every other file go on
                // meanwhile (creating a file waits on this thread).
                if self.big_running.load(Ordering::Acquire) >= BIG_AT_ONCE {
                    return drop(files.insert(file, FileState::Unknown));
                }
                self.runs += 1;
                let hash = Arc::new(Mutex::new(Run::Hashing(Box::default())));
                let (run, results) = (self.runs, self.results.clone());
                let running = self.big_running.clone();
                running.fetch_add(1, Ordering::AcqRel);
                files.insert(file, FileState::Background { run, hash: hash.clone() });
                let spawned = std::thread::Builder::new().name("datumfs-hash-big".into()).spawn(move || {
                    let whole = hash_whole(&read, &hash);
                    running.fetch_sub(1, Ordering::AcqRel);
                    if let Some(tx) = results.upgrade() {
                        let _ = tx.send(Msg::Hashed { file, run, whole });
                    }
                });
                if spawned.is_err() {
                    self.big_running.fetch_sub(1, Ordering::AcqRel);
                    files.insert(file, FileState::Unknown);
                }
            }
            Msg::Seal { file } => {
                let sealed = match files.get(&file) {
                    Some(FileState::Hashing { next, hasher }) => {
                        FileState::Sealed { len: *next, digests: (**hasher).clone().digests() }
                    }
                    _ => return,
                };
                files.insert(file, sealed);
            }
            Msg::Snapshot { files: asked, reply } => {
                let answer = asked
                    .iter()
                    .map(|file| match files.get(file) {
                        Some(FileState::Hashing { next, hasher }) => {
                            Some(KnownSums::Done { len: *next, digests: (**hasher).clone().digests() })
                        }
                        Some(FileState::Sealed { len, digests }) => {
                            Some(KnownSums::Done { len: *len, digests: *digests })
                        }
                        Some(state @ FileState::Background { .. }) => {
                            // Sync asks now: it goes on hashing the file from where this run
                            // got, while uploading it, sooner than the run would finish and the
                            // upload start after it.
                            let known = stop_run(state);
                            let kept = match &known {
                                Some(KnownSums::Done { len, digests }) => {
                                    FileState::Sealed { len: *len, digests: *digests }
                                }
                                _ => FileState::Unknown,
                            };
                            files.insert(*file, kept);
                            known
                        }
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(answer);
            }
            #[cfg(test)]
            Msg::Sealed { file, reply } => {
                let _ = reply.send(match files.get(&file) {
                    Some(FileState::Sealed { len, digests }) => Some((*len, *digests)),
                    _ => None,
                });
            }
            Msg::Hashed { file, run, whole } => {
                if matches!(files.get(&file), Some(FileState::Background { run: r, .. }) if *r == run) {
                    let state = whole.map_or(FileState::Unknown, |(len, digests)| FileState::Sealed { len, digests });
                    files.insert(file, state);
                }
            }
        }
    }
}

/// The first `size` bytes of `file` (fewer if it is shorter now); `None` if it cannot be read.
fn read_whole(file: &std::fs::File, size: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; size as usize];
    let mut at = 0;
    while at < data.len() {
        match file.read_at(&mut data[at..], at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    data.truncate(at);
    Some(data)
}

/// The length and digests of everything in `file` as its size says, read from its start into
/// `run` and left there once done (`None` if it cannot be read: sync then hashes it itself, or
/// once the run was stopped: whoever stopped it goes on). No handle writes it meanwhile; a file
/// that changed size anyway is hashed by sync, which finds the length differ.
fn hash_whole(file: &std::fs::File, run: &Mutex<Run>) -> Option<(u64, Digests)> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata().ok()?.len();
    let mut buf = vec![0u8; size.clamp(1, 4 << 20) as usize];
    let mut at = 0u64;
    while at < size {
        match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => {
                // Held while hashing one buffer: a taker waits at most that long, and gets the
                // hash of exactly the first `at` bytes.
                let Run::Hashing(hash) = &mut *run.lock().unwrap_or_else(|e| e.into_inner()) else { return None };
                hash.update_parallel(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("hashing a staged file: {e}; sync will hash it");
                return None;
            }
        }
    }
    let mut held = run.lock().unwrap_or_else(|e| e.into_inner());
    let Run::Hashing(hash) = std::mem::replace(&mut *held, Run::Stopped) else { return None };
    let digests = hash.digests();
    *held = Run::Done(at, digests);
    Some((at, digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finished digests and the length they cover, if that is what is known.
    fn done(known: Option<KnownSums>) -> Option<(u64, Digests)> {
        known.and_then(|k| k.done().map(|d| (k.len(), *d)))
    }

    #[test]
    fn follows_sequential_writes_and_gives_up_on_others() {
        let h = WriteHasher::new();
        h.reset(1);
        h.write(1, 0, b"hello ");
        h.write(1, 6, b"world");
        let (len, sums) = done(h.snapshot(1)).unwrap();
        assert_eq!(len, 11);
        assert_eq!(sums.sha256_hex(), "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        h.write(1, 11, b"!");
        assert_eq!(done(h.snapshot(1)).unwrap().0, 12, "appends continue after a snapshot");
        h.write(1, 3, b"x");
        assert!(done(h.snapshot(1)).is_none(), "a rewrite makes the checksums unknown");
        h.reset(1);
        h.write(1, 0, b"a");
        assert_eq!(done(h.snapshot(1)).unwrap().0, 1);
        assert!(done(h.snapshot(2)).is_none(), "a file never seen from its start is unknown");
        h.write(3, 0, b"a");
        assert!(done(h.snapshot(3)).is_none(), "writes without a known start are not trusted");
    }

    #[test]
    fn a_closed_file_keeps_its_digests_and_a_later_append_is_not_followed() {
        let h = WriteHasher::new();
        h.reset(1);
        h.write(1, 0, b"hello ");
        h.write(1, 6, b"world");
        h.seal(1);
        let (len, sums) = done(h.snapshot(1)).unwrap();
        assert_eq!(
            (len, sums.sha256_hex().as_str()),
            (11, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
        );
        h.seal(1);
        assert_eq!(done(h.snapshot(1)).unwrap().0, 11, "sealing twice changes nothing");
        h.write(1, 11, b"!");
        assert!(done(h.snapshot(1)).is_none(), "an append after the close is left to sync");
        h.reset(1);
        h.write(1, 0, b"a");
        h.seal(1);
        assert_eq!(done(h.snapshot(1)).unwrap().0, 1, "a truncation starts afresh");
    }

    #[test]
    fn a_file_written_directly_is_hashed_whole_when_its_last_writer_closes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        let read = || std::fs::File::open(&path).unwrap();
        let h = WriteHasher::new();
        h.reset(7);
        h.direct_open(7);
        h.direct_open(7);
        f.write_all(b"hello ").unwrap();
        assert!(done(h.snapshot(7)).is_none(), "unknown while written directly");
        h.direct_close(7, Some(read()));
        f.write_all(b"world").unwrap();
        assert!(done(h.snapshot(7)).is_none(), "unknown while another direct writer is open");
        h.write(7, 3, b"x");
        h.reset(7);
        assert!(done(h.snapshot(7)).is_none(), "what comes through us meanwhile changes nothing");
        h.direct_close(7, Some(read()));
        let (len, sums) = done(h.snapshot(7)).unwrap();
        assert_eq!(
            (len, sums.sha256_hex().as_str()),
            (11, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"),
            "the whole file, as it is once the last writer closed"
        );
        // A writer that could not give the file to read leaves it to sync.
        h.direct_open(7);
        h.direct_open(7);
        h.direct_close(7, None);
        h.direct_close(7, Some(read()));
        assert!(done(h.snapshot(7)).is_none());
        // A close never opened is ignored; a file reopened directly starts over.
        h.direct_close(8, Some(read()));
        assert!(done(h.snapshot(8)).is_none());
        h.direct_open(7);
        h.direct_close(7, Some(read()));
        assert_eq!(done(h.snapshot(7)).unwrap().0, 11);
    }

    #[test]
    fn a_big_file_is_hashed_on_its_own_thread_and_a_sync_asking_first_takes_over_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (big, small) = (dir.path().join("big"), dir.path().join("small"));
        let data: Vec<u8> = (0..(6 << 20) as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        std::fs::write(&small, b"hello world").unwrap();
        let want = crate::checksum::MultiHasher::of_reader(&data[..]).unwrap().0;
        let h = WriteHasher::new();
        let close = |id, path: &std::path::Path| {
            h.reset(id);
            h.direct_open(id);
            h.direct_close(id, Some(std::fs::File::open(path).unwrap()));
        };
        close(1, &big);
        close(2, &small);
        // Asked at once: the small one is known, the big one is either done (its digests) or
        // handed over part way (its run stopped), never wrong and never waited for.
        let mut got = h.snapshots(vec![1, 2]);
        let small_sums = done(got.pop().unwrap()).unwrap().1;
        assert_eq!(small_sums.sha256_hex(), "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        match got.pop().unwrap() {
            Some(KnownSums::Done { len, digests }) => {
                assert_eq!((len, digests.to_checksums()), (data.len() as u64, want.clone()))
            }
            Some(KnownSums::Started(mut start)) => {
                // The first bytes' hash: fed the rest, it gives the file's checksums.
                assert!(start.len() <= data.len() as u64);
                start.update(&data[start.len() as usize..]);
                assert_eq!(start.finish(), want, "the hash handed over is of the file's first bytes");
            }
            None => panic!("a big file's run that was asked about is handed over, not dropped"),
        }
        // Left alone, the run finishes and its digests are kept.
        close(1, &big);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut settled = None;
        while settled.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            settled = h.sealed(1);
        }
        let (len, sums) = settled.expect("the big file's run finishes");
        assert_eq!((len, sums.to_checksums()), (data.len() as u64, want.clone()));
        // A writer reopening the file makes a run's result stale: unknown until it closes.
        h.direct_open(1);
        assert!(done(h.snapshot(1)).is_none());
        h.direct_close(1, Some(std::fs::File::open(&big).unwrap()));
    }

    #[test]
    fn a_stopped_run_gives_what_it_got() {
        let run = |r: Run| FileState::Background { run: 1, hash: Arc::new(Mutex::new(r)) };
        let mut h = Box::<MultiHasher>::default();
        h.update(b"hello ");
        let started = run(Run::Hashing(h));
        assert!(matches!(stop_run(&started), Some(KnownSums::Started(h)) if h.len() == 6));
        assert!(stop_run(&started).is_none(), "taken once");
        // Done, its result not yet back with the hashing thread: the digests, not a new hash.
        let digests = MultiHasher::default().digests();
        assert!(matches!(stop_run(&run(Run::Done(0, digests))), Some(KnownSums::Done { len: 0, .. })));
        assert!(stop_run(&run(Run::Stopped)).is_none());
        assert!(stop_run(&FileState::Unknown).is_none());
    }

    #[test]
    fn big_files_closed_together_get_at_most_two_threads_and_the_rest_are_left_to_sync() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(24 << 20) as u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
        let want = crate::checksum::MultiHasher::of_reader(&data[..]).unwrap().0;
        let h = WriteHasher::new();
        let files: Vec<std::fs::File> = (1..=4)
            .map(|id| {
                let path = dir.path().join(id.to_string());
                std::fs::write(&path, &data).unwrap();
                std::fs::File::open(&path).unwrap()
            })
            .collect();
        for (id, file) in (1..=4).zip(files) {
            h.reset(id);
            h.direct_open(id);
            h.direct_close(id, Some(file));
        }
        // The first two are hashed (each takes far longer than the four closes' messages)...
        for id in [1, 2] {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut got = None;
            while got.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                got = h.sealed(id);
            }
            let (len, sums) = got.expect("hashed on its own thread");
            assert_eq!((len, sums.to_checksums()), (data.len() as u64, want.clone()));
        }
        // ...the other two never were: sync hashes them.
        assert_eq!((h.sealed(3), h.sealed(4)), (None, None));
        assert!(h.snapshots(vec![3, 4]).iter().all(Option::is_none));
    }
}
