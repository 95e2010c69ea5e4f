//! In-process tests of the dispatcher and its namespaces: no kernel, an in-memory store behind
//! the fault-injecting wrapper, a real cache and staging area in a temp dir. The real-FUSE tests
//! in `tests/` stay the end-to-end proof.

use super::*;
use crate::inputs::spec::{InputSpec, KeepDirectories};
use crate::reader::ReadConfig;
use crate::store::faulty::{FaultyStore, Op};
use crate::store::{StoreHandle, StoreRegistry};
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};
use std::time::Duration;

/// The test process, as the caller of changes.
const ME: crate::outputs::Caller = crate::outputs::Caller { uid: 0, gid: 0 };
const WRITER: crate::outputs::Writer = crate::outputs::Writer { uid: 0, gid: 0, pid: 1 };

/// Collects every event.
#[derive(Default)]
struct Collect(Mutex<Vec<FsEvent>>);

#[async_trait::async_trait]
impl EventSink for Collect {
    async fn event(&self, event: FsEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Collect {
    /// Waits (up to 10 s) for an event that `pick` accepts.
    async fn wait_for<T>(&self, pick: impl Fn(&FsEvent) -> Option<T>) -> T {
        for _ in 0..1000 {
            if let Some(t) = self.0.lock().unwrap().iter().find_map(&pick) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no such event in {:?}", self.0.lock().unwrap());
    }
}

struct Fixture {
    fs: Arc<Fs>,
    store: Arc<FaultyStore>,
    events: Arc<Collect>,
    files: HashMap<String, Vec<u8>>,
    _dir: tempfile::TempDir,
}

fn bytes(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// A mount of three inputs: `data` = `s3://b/train/` (a tree, listed lazily), `one` = a single
/// object, `many` = twenty small files. Reads retry twice at most.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(InMemory::new());
    let mut files = HashMap::new();
    for (i, key) in
        ["train/a.bin", "train/sub/b.bin", "train/sub/c.bin", "train/other/d.bin", "labels.csv"].into_iter().enumerate()
    {
        let data = bytes(i, 100_000 + i * 300_000);
        mem.put(&object_store::path::Path::from(key), PutPayload::from(data.clone())).await.unwrap();
        files.insert(key.to_string(), data);
    }
    for i in 0..20 {
        let (key, data) = (format!("many/f{i:02}.bin"), bytes(100 + i, 10_000 + i));
        mem.put(&object_store::path::Path::from(key.as_str()), PutPayload::from(data.clone())).await.unwrap();
        files.insert(key, data);
    }
    let store = Arc::new(FaultyStore::new(mem));
    let registry = StoreRegistry::new();
    registry.register("s3://b", Arc::new(StoreHandle::new("s3://b", store.clone())));
    let spec = |name: &str, uri: &str| InputSpec {
        name: name.into(),
        uris: vec![uri.into()],
        keep_directories: KeepDirectories::None,
        filename: None,
        optional: false,
    };
    let cwd = std::path::Path::new("/");
    let inputs = vec![
        crate::inputs::resolve::resolve(&spec("data", "s3://b/train/"), &registry, None, cwd, None).await.unwrap(),
        crate::inputs::resolve::resolve(&spec("one", "s3://b/labels.csv"), &registry, None, cwd, None).await.unwrap(),
        crate::inputs::resolve::resolve(&spec("many", "s3://b/many/"), &registry, None, cwd, None).await.unwrap(),
    ];
    let cache = Arc::new(crate::cache::Cache::open(&dir.path().join("cache"), 1 << 16).unwrap());
    let reader = Arc::new(Reader::new(ReadConfig { attempts: 2, ..ReadConfig::default() }));
    let staging = Arc::new(Staging::open(&dir.path().join("staging"), OUTPUTS).unwrap());
    let events = Arc::new(Collect::default());
    let parts = FsParts {
        inputs,
        volumes: Vec::new(),
        cache,
        reader,
        data_store: None,
        staging,
        events: events.clone(),
        parameters: None,
    };
    let settings = FsSettings { mountpoint: "/mnt".into(), uid: 0, gid: 0, control_socket: "/run/x.sock".into() };
    Fixture { fs: Arc::new(Fs::new(parts, settings).expect("fs")), store, events, files, _dir: dir }
}

impl Fixture {
    /// The inode at a path below the root, looked up as the kernel would.
    async fn ino(&self, path: &str) -> FsResult<u64> {
        let mut ino = ROOT;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            ino = self.fs.lookup(ino, seg).await?.ino;
        }
        Ok(ino)
    }

    async fn names(&self, path: &str) -> Vec<String> {
        let fh = self.fs.opendir(self.ino(path).await.unwrap()).await.unwrap();
        let names = self.fs.readdir(fh, 0).unwrap().into_iter().map(|(_, e)| e.name).collect();
        self.fs.release(fh);
        names
    }

    /// Reads a whole file through open/read/release, in 128 KiB requests.
    async fn read_all(&self, path: &str) -> FsResult<Vec<u8>> {
        let ino = self.ino(path).await?;
        let size = self.fs.getattr(ino).await?.size;
        let o = self.fs.open(ino, libc::O_RDONLY, false).await?;
        let mut out = Vec::new();
        let res = loop {
            match self.fs.read(o.fh, out.len() as u64, 128 << 10).await {
                Ok(buf) if buf.is_empty() => break Ok(()),
                Ok(buf) => out.extend(buf),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(o.fh);
        res?;
        assert_eq!(out.len() as u64, size, "{path}: size read equals size shown");
        Ok(out)
    }
}

fn sha256(data: &[u8]) -> String {
    crate::checksum::MultiHasher::of_reader(data).unwrap().0.sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_is_served_by_its_namespaces() {
    let f = fixture().await;
    assert_eq!(f.names("").await, [".", "..", "inputs", "outputs", "config"]);
    assert_eq!(f.names("inputs").await, [".", "..", "data", "one", "many"]);
    assert_eq!(f.names("inputs/data").await, [".", "..", "a.bin", "other", "sub"]);
    assert_eq!(f.names("inputs/data/sub").await, [".", "..", "b.bin", "c.bin"]);
    assert_eq!(f.names("config").await, [".", "..", "inputs.json"]);
    for (path, key) in [("inputs/data/sub/c.bin", "train/sub/c.bin"), ("inputs/one/labels.csv", "labels.csv")] {
        assert_eq!(f.read_all(path).await.unwrap(), f.files[key], "{path}");
    }
    let attr = f.fs.getattr(f.ino("inputs/data/other/d.bin").await.unwrap()).await.unwrap();
    assert_eq!((attr.size, attr.kind, attr.perm), (f.files["train/other/d.bin"].len() as u64, Kind::File, 0o444));
    assert_eq!(f.fs.lookup(ROOT, "nope").await.unwrap_err().errno(), libc::ENOENT);
    assert_eq!(f.fs.lookup(f.ino("inputs/data").await.unwrap(), "nope").await.unwrap_err().errno(), libc::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_config_are_read_only_and_nothing_moves_between_namespaces() {
    let f = fixture().await;
    let data = f.ino("inputs/data").await.unwrap();
    let file = f.ino("inputs/data/a.bin").await.unwrap();
    let config = f.ino("config").await.unwrap();
    let erofs = |r: FsResult<()>| assert_eq!(r.unwrap_err().errno(), libc::EROFS);
    erofs(f.fs.create(data, "new", 0o644, libc::O_WRONLY, ME, false).map(|_| ()));
    erofs(f.fs.create(config, "new", 0o644, libc::O_WRONLY, ME, false).map(|_| ()));
    erofs(f.fs.mkdir(ROOT, "new", 0o755, ME).map(|_| ()));
    erofs(f.fs.mkdir(INPUTS, "new", 0o755, ME).map(|_| ()));
    erofs(f.fs.unlink(data, "a.bin"));
    erofs(f.fs.open(file, libc::O_RDWR, false).await.map(|_| ()));
    erofs(f.fs.open(f.ino("config/inputs.json").await.unwrap(), libc::O_WRONLY, false).await.map(|_| ()));
    erofs(f.fs.setattr(file, SetAttr { size: Some(0), ..Default::default() }, None).map(|_| ()));
    erofs(f.fs.rename(data, "a.bin", OUTPUTS, "a.bin", 0));
    let (_, o) = f.fs.create(OUTPUTS, "x", 0o644, libc::O_WRONLY, ME, false).unwrap();
    f.fs.release(o.fh);
    erofs(f.fs.rename(OUTPUTS, "x", data, "x", 0));
    assert!(f.fs.check_writable(OUTPUTS).is_ok());
    erofs(f.fs.check_writable(data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_the_staging_tree() {
    let f = fixture().await;
    let (attr, o) = f.fs.create(OUTPUTS, "model.pt", 0o644, libc::O_RDWR, ME, false).unwrap();
    assert_eq!(attr.kind, Kind::File);
    let payload = bytes(9, 300_000);
    for (i, chunk) in payload.chunks(1 << 16).enumerate() {
        assert_eq!(f.fs.write(o.fh, (i << 16) as u64, chunk, WRITER).unwrap() as usize, chunk.len());
    }
    f.fs.fsync(o.fh, false).unwrap();
    f.fs.release(o.fh);
    let dir = f.fs.mkdir(OUTPUTS, "ckpt", 0o755, ME).unwrap();
    f.fs.rename(OUTPUTS, "model.pt", dir.ino, "final.pt", 0).unwrap();
    assert_eq!(f.names("outputs").await, [".", "..", "ckpt"]);
    assert_eq!(f.names("outputs/ckpt").await, [".", "..", "final.pt"]);
    assert_eq!(f.read_all("outputs/ckpt/final.pt").await.unwrap(), payload);
    let ino = f.ino("outputs/ckpt/final.pt").await.unwrap();
    let truncated = f.fs.setattr(ino, SetAttr { size: Some(10), ..Default::default() }, None).unwrap();
    assert_eq!(truncated.size, 10);
    f.fs.symlink(dir.ino, "latest", std::path::Path::new("final.pt"), ME).unwrap();
    assert_eq!(f.fs.readlink(f.ino("outputs/ckpt/latest").await.unwrap()).unwrap(), b"final.pt");
    assert_eq!(f.fs.rmdir(OUTPUTS, "ckpt").unwrap_err().errno(), libc::ENOTEMPTY);
    f.fs.unlink(dir.ino, "final.pt").unwrap();
    f.fs.unlink(dir.ino, "latest").unwrap();
    f.fs.rmdir(OUTPUTS, "ckpt").unwrap();
    assert_eq!(f.names("outputs").await, [".", ".."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_whole_is_checksummed_once_and_shown() {
    let f = fixture().await;
    let want = sha256(&f.files["train/a.bin"]);
    assert_eq!(f.read_all("inputs/data/a.bin").await.unwrap(), f.files["train/a.bin"]);
    let sums = f
        .events
        .wait_for(|e| match e {
            FsEvent::InputChecksummed(h) if h.path == "/mnt/inputs/data/a.bin" => Some(h.checksums),
            _ => None,
        })
        .await;
    assert_eq!(sums.sha256_hex(), want);
    let ino = f.ino("inputs/data/a.bin").await.unwrap();
    assert_eq!(f.fs.getxattr(ino, "user.datumfs.sha256").await.unwrap(), want.as_bytes());
    assert_eq!(f.fs.getxattr(ino, "user.datumfs.uri").await.unwrap(), b"s3://b/train/a.bin");
    assert_eq!(f.fs.getxattr(ino, "security.selinux").await.unwrap_err().errno(), libc::EOPNOTSUPP);
    // A second full read finds everything cached and reports nothing new.
    let gets = f.store.count(Op::Get);
    assert_eq!(f.read_all("inputs/data/a.bin").await.unwrap(), f.files["train/a.bin"]);
    assert_eq!(f.store.count(Op::Get), gets, "a cached file makes no request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.fs.inputs_checksummed().await;
    let reported = f.events.0.lock().unwrap().iter().filter(|e| matches!(e, FsEvent::InputChecksummed(_))).count();
    assert_eq!(reported, 1);
    let json: serde_json::Value = {
        let o = f.fs.open(f.ino("config/inputs.json").await.unwrap(), libc::O_RDONLY, false).await.unwrap();
        let buf = f.fs.read(o.fh, 0, 1 << 20).await.unwrap();
        f.fs.release(o.fh);
        serde_json::from_slice(&buf).unwrap()
    };
    let files = json["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 4, "every file of the tree, listed for it: {json}");
    let a = files.iter().find(|v| v["name"] == "a.bin").unwrap();
    assert_eq!(a["checksums"]["sha256"], want);
    assert_eq!(json["one"]["files"][0]["path"], "/mnt/inputs/one/labels.csv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_json_is_made_again_only_when_something_changed() {
    let f = fixture().await;
    let json = f.ino("config/inputs.json").await.unwrap();
    let first = f.fs.getattr(json).await.unwrap().size;
    let lists = f.store.count(Op::List);
    for _ in 0..5 {
        assert_eq!(f.fs.try_getattr(json).map(|a| a.unwrap().size), Some(first), "kept, not made again");
    }
    assert_eq!(f.store.count(Op::List), lists);
    f.read_all("inputs/data/a.bin").await.unwrap();
    f.events.wait_for(|e| matches!(e, FsEvent::InputChecksummed(_)).then_some(())).await;
    assert!(f.fs.try_getattr(json).is_none(), "new checksums make it stale");
    assert!(f.fs.getattr(json).await.unwrap().size > first, "checksums added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_eio_with_an_event_and_a_later_read_recovers() {
    let f = fixture().await;
    f.store.fail_next(Op::Get, 100);
    let err = f.read_all("inputs/data/sub/b.bin").await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let cause = f
        .events
        .wait_for(|e| match e {
            FsEvent::InputFailed { path, error, .. } if path.contains("inputs/data/sub/b.bin") => Some(error.clone()),
            _ => None,
        })
        .await;
    assert!(cause.contains("s3://b/train/sub/b.bin") && cause.contains("injected fault"), "{cause}");
    f.store.fail_next(Op::Get, 0);
    assert_eq!(f.read_all("inputs/data/sub/b.bin").await.unwrap(), f.files["train/sub/b.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_listing_is_eio_and_listed_again_on_the_next_open() {
    let f = fixture().await;
    let data = f.ino("inputs/data").await.unwrap();
    f.store.fail_next(Op::List, 100);
    assert_eq!(f.fs.lookup(data, "other").await.map(|_| ()).ok(), Some(()), "the top level was listed at mount");
    let other = f.ino("inputs/data/other").await.unwrap();
    assert_eq!(f.fs.opendir(other).await.unwrap_err().errno(), libc::EIO);
    assert_eq!(f.fs.lookup(other, "d.bin").await.unwrap_err().errno(), libc::EIO);
    f.store.fail_next(Op::List, 0);
    assert_eq!(f.names("inputs/data/other").await, [".", "..", "d.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_does_not_hold_up_reads_of_cached_files() {
    let f = fixture().await;
    f.read_all("inputs/data/a.bin").await.unwrap();
    f.store.delay(Op::Get, Duration::from_secs(2));
    let fs = f.fs.clone();
    let slow_ino = f.ino("inputs/data/sub/c.bin").await.unwrap();
    let slow = tokio::spawn(async move {
        let o = fs.open(slow_ino, libc::O_RDONLY, false).await.unwrap();
        let res = fs.read(o.fh, 0, 4096).await;
        fs.release(o.fh);
        res
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While a GET for another file hangs, the cached one is opened and read on the calling
    // thread without waiting for anything.
    let o = f.fs.open(f.ino("inputs/data/a.bin").await.unwrap(), libc::O_RDONLY, false).await.unwrap();
    assert_eq!(f.fs.read_cached(o.fh, 0, 4096).unwrap().unwrap(), f.files["train/a.bin"][..4096]);
    assert!(!slow.is_finished(), "the slow read is still waiting for its GET");
    f.fs.release(o.fh);
    assert_eq!(slow.await.unwrap().unwrap(), f.files["train/sub/c.bin"][..4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fetches_an_input_whole_and_later_reads_need_no_request() {
    let f = fixture().await;
    let report = f.fs.warm("inputs/data/sub", &crate::sync::Progress::default()).await.unwrap();
    assert_eq!((report.files, report.already_cached, report.failed.len()), (2, 0, 0));
    let bytes = f.files["train/sub/b.bin"].len() + f.files["train/sub/c.bin"].len();
    assert_eq!(report.bytes, bytes as u64);
    let gets = f.store.count(Op::Get);
    assert_eq!(f.read_all("inputs/data/sub/c.bin").await.unwrap(), f.files["train/sub/c.bin"]);
    assert_eq!(f.store.count(Op::Get), gets);
    assert_eq!(f.fs.warm("inputs/nope", &crate::sync::Progress::default()).await.unwrap_err().errno(), libc::ENOENT);
    assert_eq!(f.fs.warm("outputs", &crate::sync::Progress::default()).await.unwrap_err().errno(), libc::EINVAL);
    let again = f.fs.warm("inputs", &crate::sync::Progress::default()).await.unwrap();
    assert_eq!((again.files, again.already_cached), (25, 2));
}

/// Waits (up to 10 s) until the store has served `n` GETs.
async fn wait_for_gets(store: &FaultyStore, n: usize) {
    for _ in 0..1000 {
        if store.count(Op::Get) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("only {} GETs, {n} expected", store.count(Op::Get));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_in_listing_order_finds_the_next_files_fetched_and_each_is_fetched_once() {
    let f = fixture().await;
    let gets = f.store.count(Op::Get);
    assert_eq!(f.read_all("inputs/many/f00.bin").await.unwrap(), f.files["many/f00.bin"]);
    // The next files are fetched ahead of their opens.
    wait_for_gets(&f.store, gets + 5).await;
    for i in 0..20 {
        let key = format!("many/f{i:02}.bin");
        assert_eq!(f.read_all(&format!("inputs/{key}")).await.unwrap(), f.files[&key], "{key}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.store.count(Op::Get) - gets, 20, "every file fetched exactly once");
    // Fetching ahead is not reading: only the files the job opened count as read.
    f.fs.inputs_checksummed().await;
    let checksummed = f.events.0.lock().unwrap().iter().filter(|e| matches!(e, FsEvent::InputChecksummed(_))).count();
    assert_eq!(checksummed, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_fetched_ahead_opens_in_place_and_is_let_go_after_a_while() {
    let f = fixture().await;
    let gets = f.store.count(Op::Get);
    f.read_all("inputs/many/f00.bin").await.unwrap();
    wait_for_gets(&f.store, gets + 5).await;
    // f01 was fetched ahead: its open is answered in place, and reads the right bytes.
    let ino = f.ino("inputs/many/f01.bin").await.unwrap();
    let o = f.fs.try_open(ino, libc::O_RDONLY, false).expect("answered in place").unwrap();
    let mut got = Vec::new();
    loop {
        let buf = f.fs.read(o.fh, got.len() as u64, 128 << 10).await.unwrap();
        if buf.is_empty() {
            break;
        }
        got.extend(buf);
    }
    f.fs.release(o.fh);
    assert_eq!(got, f.files["many/f01.bin"]);
    // A file nobody fetched needs the cache index first; a write is refused in place too.
    let far = f.ino("inputs/many/f19.bin").await.unwrap();
    assert!(f.fs.try_open(far, libc::O_RDONLY, false).is_none());
    assert_eq!(f.fs.try_open(ino, libc::O_RDWR, false).unwrap().err().map(|e| e.errno()), Some(libc::EROFS));
    // Files fetched ahead are kept open for a few seconds after their last close, then let go
    // (evictable again).
    let ahead = [f.ino("inputs/many/f03.bin").await.unwrap(), f.ino("inputs/many/f04.bin").await.unwrap()];
    for ino in ahead {
        let o = f.fs.try_open(ino, libc::O_RDONLY, false).expect("fetched ahead").unwrap();
        f.fs.release(o.fh);
        assert!(f.fs.try_open(ino, libc::O_RDONLY, false).is_some_and(|o| o.map(|o| f.fs.release(o.fh)).is_ok()));
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for ino in ahead {
        assert!(f.fs.try_open(ino, libc::O_RDONLY, false).is_none(), "still held");
    }
    assert_eq!(f.read_all("inputs/many/f04.bin").await.unwrap(), f.files["many/f04.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_ahead_stops_for_a_shuffled_reader_and_never_reads_files_not_opened() {
    let f = fixture().await;
    let gets = f.store.count(Op::Get);
    for i in [17, 3, 11, 0, 14, 6, 19, 8] {
        let key = format!("many/f{i:02}.bin");
        assert_eq!(f.read_all(&format!("inputs/{key}")).await.unwrap(), f.files[&key], "{key}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = f.store.count(Op::Get) - gets - 8;
    assert!(extra <= 8, "{extra} files fetched ahead for a shuffled reader of 8");
    f.fs.inputs_checksummed().await;
    let checksummed = f.events.0.lock().unwrap().iter().filter(|e| matches!(e, FsEvent::InputChecksummed(_))).count();
    assert_eq!(checksummed, 8, "only opened files are read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_after_listing_fails_with_eio_even_when_fetched_ahead() {
    let f = fixture().await;
    // f01 changes in the store after the listing pinned it, before it is fetched ahead.
    f.store.put(&object_store::path::Path::from("many/f01.bin"), PutPayload::from(bytes(9, 10_001))).await.unwrap();
    f.read_all("inputs/many/f00.bin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.read_all("inputs/many/f01.bin").await.unwrap_err().errno(), libc::EIO);
    assert_eq!(f.read_all("inputs/many/f02.bin").await.unwrap(), f.files["many/f02.bin"]);
}
