use super::*;
use crate::cache::Cache;
use crate::store::faulty::{FaultyStore, Op};
use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};

struct Fixture {
    _dir: tempfile::TempDir,
    mem: Arc<InMemory>,
    faulty: Arc<FaultyStore>,
    obj: OpenObject,
    data: Vec<u8>,
}

async fn fixture(size: usize, block: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(InMemory::new());
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let key = Path::from("k/obj.bin");
    mem.put(&key, PutPayload::from(data.clone())).await.unwrap();
    let faulty = Arc::new(FaultyStore::new(mem.clone()));
    let store = Arc::new(StoreHandle::new("mem://b", faulty.clone()));
    let meta = store.inner.head(&key).await.unwrap();
    let pin = Pin::from_meta(&meta);
    let cache = Cache::open(dir.path(), block).unwrap();
    let cached = cache.object("mem://b", key.as_ref(), &pin.version(), size as u64, "mem://b/k/obj.bin").unwrap();
    let remote = Arc::new(Remote { store, key, uri: "mem://b/k/obj.bin".into(), size: size as u64, pin, window: None });
    Fixture { _dir: dir, mem, faulty, obj: OpenObject::new(remote, cached), data }
}

fn reader() -> Reader {
    Reader::new(ReadConfig { max_readahead: 8 << 16, max_run_blocks: 4, max_inflight: 8, attempts: 3 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_exact_and_cached() {
    let f = fixture(1_000_003, 1 << 16).await;
    let r = reader();
    let seq = Mutex::new(Sequential::default());
    let mut off = 0u64;
    while off < f.data.len() as u64 {
        let got = r.read(&f.obj, &seq, off, 70_000).await.unwrap();
        let end = (off as usize + 70_000).min(f.data.len());
        assert_eq!(got, &f.data[off as usize..end], "at {off}");
        off += 70_000;
    }
    assert!(f.obj.cached.is_complete());
    let gets = f.faulty.count(Op::Get);
    // Everything is cached now: a second pass makes no request.
    let got = r.read(&f.obj, &Mutex::new(Sequential::default()), 123_456, 500_000).await.unwrap();
    assert_eq!(got, &f.data[123_456..623_456]);
    assert_eq!(f.faulty.count(Op::Get), gets);
    let sums = f.obj.cached.checksums().await.unwrap();
    assert_eq!(sums, crate::checksum::MultiHasher::of_reader(&f.data[..]).unwrap().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_one_download() {
    let f = Arc::new(fixture(1 << 20, 1 << 16).await);
    let r = Arc::new(Reader::new(ReadConfig { max_readahead: 0, max_run_blocks: 16, max_inflight: 8, attempts: 3 }));
    let before = f.faulty.count(Op::Get);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (f, r) = (f.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            let got =
                r.read(&f.obj, &Mutex::new(Sequential { next: u64::MAX / 2, window: 0 }), 0, 1 << 20).await.unwrap();
            assert_eq!(got, f.data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(f.faulty.count(Op::Get) - before, 1, "one GET for one run of 16 blocks, whoever asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let f = fixture(300_000, 1 << 16).await;
    f.faulty.fail_next(Op::Get, 2);
    let got = reader().read(&f.obj, &Mutex::new(Sequential::default()), 0, 300_000).await.unwrap();
    assert_eq!(got, f.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failures_become_errors_and_a_later_read_recovers() {
    let f = fixture(300_000, 1 << 16).await;
    f.faulty.fail_next(Op::Get, 100);
    let err = reader().read(&f.obj, &Mutex::new(Sequential::default()), 0, 1000).await.unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    f.faulty.fail_next(Op::Get, 0);
    let got = reader().read(&f.obj, &Mutex::new(Sequential::default()), 0, 1000).await.unwrap();
    assert_eq!(got, &f.data[..1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_object_is_refused() {
    let f = fixture(300_000, 1 << 16).await;
    let r = reader();
    // A random (not sequential) reader: only block 0 is fetched before the change.
    r.read(&f.obj, &Mutex::new(Sequential { next: u64::MAX / 2, window: 0 }), 0, 10).await.unwrap();
    f.mem.put(&Path::from("k/obj.bin"), PutPayload::from(vec![7u8; 300_000])).await.unwrap();
    let err = r.read(&f.obj, &Mutex::new(Sequential { next: u64::MAX / 2, window: 0 }), 250_000, 10).await.unwrap_err();
    assert!(matches!(err, ReadError::Store(StoreError::Changed { .. })), "{err}");
    assert!(err.to_string().contains("mem://b/k/obj.bin"), "{err}");
    // Blocks cached before the change are still the pinned version's.
    let got = r.read(&f.obj, &Mutex::new(Sequential::default()), 0, 10).await.unwrap();
    assert_eq!(got, &f.data[..10]);
}

/// The one data file under a cache dir's objects/.
fn data_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    for d in std::fs::read_dir(dir.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            found.push(f.path());
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_checked_in_this_boot_is_trusted_until_it_changes() {
    let f = fixture(300_000, 1 << 16).await;
    let (dir, key, version) = (f._dir.path().to_path_buf(), f.obj.remote.key.clone(), f.obj.remote.pin.version());
    let r = reader();
    r.read(&f.obj, &Mutex::new(Sequential::default()), 0, 300_000).await.unwrap();
    assert!(f.obj.cached.is_complete());
    let reopen = |cache: &Cache| cache.object("mem://b", key.as_ref(), &version, 300_000, "mem://b/k/obj.bin").unwrap();
    let Fixture { _dir, obj, .. } = f;
    drop(obj);
    // Read-ahead tasks finishing may hold the index a moment longer.
    let open = |dir: &std::path::Path| crate::cache::open_when_free(dir, 1 << 16);

    // Written whole by the last process in this boot, unchanged: no block needs reading again.
    let cache = open(&dir);
    assert!(reopen(&cache).verified_data_file().is_some(), "a file stamped in this boot is trusted");
    drop(cache);

    // Any write changes the file's change time, even one that leaves the bytes as they were
    // (after a pause longer than a coarse timestamp tick, for kernels without fine ones).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let path = data_file(&dir);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[(70_000usize * 31 % 251) as u8], 70_000).unwrap();
    let cache = open(&dir);
    let cached = reopen(&cache);
    assert!(cached.verified_data_file().is_none(), "a changed file is checked again before use");
    cached.verify_all().unwrap();
    assert!(cached.verified_data_file().is_some());
    drop((cached, cache));

    // Checked again, stamped again: trusted; then damaged: caught and dropped.
    let cache = open(&dir);
    assert!(reopen(&cache).verified_data_file().is_some());
    drop(cache);
    std::os::unix::fs::FileExt::write_all_at(&file, b"\xff\xfe", 200_000).unwrap();
    let cache = open(&dir);
    let cached = reopen(&cache);
    assert!(matches!(cached.verify_all(), Err(CacheError::Corrupt { block: 3, .. })));
    assert!(!cached.is_complete(), "the bad block is dropped, to be fetched again");
    drop(_dir);
}
