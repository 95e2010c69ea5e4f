//! Unit tests of the cache on a real directory: small objects in pack files.

use super::*;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64 * 31 + seed * 7) % 251) as u8).collect()
}

/// Caches `data` whole as object `key` (version "v1") and returns the object.
fn cache_whole(cache: &Cache, key: &str, data: &[u8]) -> Arc<CachedObject> {
    let obj = cache.object("mem://b", key, "v1", data.len() as u64, &format!("mem://b/{key}")).unwrap();
    for idx in 0..obj.block_count() {
        let r = obj.block_range(idx);
        obj.store_block(idx, &data[r.start as usize..r.end as usize]).unwrap();
    }
    assert!(obj.is_complete());
    obj
}

fn reopen(dir: &Path) -> Cache {
    open_when_free(dir, 1 << 20)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn small_objects_share_a_pack_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<Vec<u8>> = (0..50).map(|i| bytes(i, 100_000 + i as usize * 37)).collect();
    let big = bytes(99, 3 << 20);
    {
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        for (i, data) in small.iter().enumerate() {
            cache_whole(&cache, &format!("s{i}"), data);
        }
        cache_whole(&cache, "big", &big);
        cache.flush().unwrap();
    }
    // Fifty small objects: one pack file, no file of their own; the big one has its own file.
    assert_eq!(files_under(&dir.path().join("packs")).len(), 1);
    assert_eq!(files_under(&dir.path().join("objects")).len(), 1);
    let mode = std::fs::metadata(&files_under(&dir.path().join("packs"))[0]).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600, "pack files are private");

    // A new process reads every byte back (each block checked against its CRC first) and
    // appends to a pack of its own.
    let cache = reopen(dir.path());
    assert_eq!(cache.reconcile().unwrap().orphan_files, 0);
    // Against the cap, each object counts its own bytes, not whole blocks.
    let total: u64 = small.iter().map(|d| d.len() as u64).sum::<u64>() + big.len() as u64;
    assert_eq!(cache.report(std::time::Duration::from_secs(3600)).unwrap().used_bytes, total);
    for (i, data) in small.iter().enumerate() {
        let obj = cache.object("mem://b", &format!("s{i}"), "v1", data.len() as u64, "u").unwrap();
        assert!(obj.is_complete(), "s{i} known from the index");
        assert_eq!(obj.read_cached(0, data.len()).unwrap(), *data, "s{i}");
        assert!(obj.verified_data_file().is_none(), "a pack is never handed to the kernel whole");
    }
    let fresh = bytes(7, 5000);
    cache_whole(&cache, "new", &fresh);
    assert_eq!(files_under(&dir.path().join("packs")).len(), 2, "a second process never appends to the first's pack");
    let again = cache.object("mem://b", "s3", "v1", small[3].len() as u64, "u").unwrap();
    assert_eq!(again.read_cached(1000, 5000).unwrap(), small[3][1000..6000]);
}

#[test]
fn a_corrupt_byte_in_a_pack_is_caught_and_only_that_object_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let a = bytes(1, 200_000);
    let b = bytes(2, 200_000);
    let slot_b = {
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        cache_whole(&cache, "a", &a);
        let ob = cache_whole(&cache, "b", &b);
        cache.flush().unwrap();
        ob.record().packed.unwrap()
    };
    let pack = files_under(&dir.path().join("packs")).pop().unwrap();
    let mut raw = std::fs::read(&pack).unwrap();
    raw[(slot_b.offset + 123) as usize] ^= 0xff;
    std::fs::write(&pack, raw).unwrap();

    let cache = reopen(dir.path());
    let report = cache.verify_blocks(false).unwrap();
    assert_eq!(report.bad, vec![("mem://b/b".to_string(), 0)]);
    let ob = cache.object("mem://b", "b", "v1", b.len() as u64, "u").unwrap();
    assert!(matches!(ob.read_cached(0, 10), Err(CacheError::Corrupt { .. })));
    assert!(!ob.is_complete(), "the bad block is dropped, to be fetched again");
    let oa = cache.object("mem://b", "a", "v1", a.len() as u64, "u").unwrap();
    assert_eq!(oa.read_cached(0, a.len()).unwrap(), a, "its neighbour in the pack is intact");
}

#[test]
fn evicting_packed_objects_frees_their_space_and_unused_packs_go_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let objs: Vec<Vec<u8>> = (0..20).map(|i| bytes(i, 256 << 10)).collect();
    {
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        for (i, data) in objs.iter().enumerate() {
            cache_whole(&cache, &format!("o{i}"), data);
        }
        cache.flush().unwrap();
    }
    let pack = files_under(&dir.path().join("packs")).pop().unwrap();
    let allocated = || std::fs::metadata(&pack).map(|m| m.blocks() * 512).unwrap_or(0);
    let before = allocated();
    assert!(before >= 20 * (256 << 10), "{before}");

    let cache = reopen(dir.path());
    let uris: Vec<String> = (0..10).map(|i| format!("mem://b/o{i}")).collect();
    let report = cache.evict(&EvictWhat::Uris(uris)).unwrap();
    assert_eq!(report.objects, 10);
    assert_eq!(report.bytes, 10 * (256 << 10));
    let after = allocated();
    assert!(before - after >= 10 * (256 << 10), "holes punched: {before} -> {after}");
    for (i, data) in objs.iter().enumerate().skip(10) {
        let o = cache.object("mem://b", &format!("o{i}"), "v1", data.len() as u64, "u").unwrap();
        assert_eq!(o.read_cached(0, data.len()).unwrap(), *data, "o{i} kept");
    }
    assert_eq!(cache.evict(&EvictWhat::All).unwrap().objects, 10);
    drop(cache);

    // No entry uses the pack any more: the next start removes it.
    let cache = reopen(dir.path());
    assert_eq!(cache.reconcile().unwrap().orphan_files, 1);
    assert!(!pack.exists());
    assert_eq!(cache.usage(), (0, 0));
}

#[test]
fn an_index_entry_whose_pack_is_gone_is_dropped_and_fetched_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3, 70_000);
    {
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        cache_whole(&cache, "x", &data);
        cache.flush().unwrap();
    }
    for p in files_under(&dir.path().join("packs")) {
        std::fs::remove_file(p).unwrap();
    }
    let cache = reopen(dir.path());
    assert_eq!(cache.reconcile().unwrap().dropped_entries, 1);
    let o = cache.object("mem://b", "x", "v1", data.len() as u64, "u").unwrap();
    assert!(!o.is_complete(), "nothing is served from a pack that is not there");
    let r = o.block_range(0);
    o.store_block(0, &data[r.start as usize..r.end as usize]).unwrap();
    assert_eq!(o.read_cached(0, data.len()).unwrap(), data);
}

#[test]
fn an_object_cached_in_a_file_of_its_own_stays_there() {
    // Cut into 64 KiB blocks, a 100 KB object has a file of its own; a later process that packs
    // objects this small still serves it from that file, unfetched.
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(5, 100_000);
    {
        let cache = Cache::open(dir.path(), 1 << 16).unwrap();
        assert!(cache_whole(&cache, "own", &data).record().packed.is_none());
        cache.flush().unwrap();
    }
    let cache = reopen(dir.path());
    assert_eq!(cache.reconcile().unwrap(), ReconcileReport::default());
    let o = cache.object("mem://b", "own", "v1", data.len() as u64, "u").unwrap();
    assert!(o.is_complete() && !o.is_packed());
    assert_eq!(o.read_cached(0, data.len()).unwrap(), data);
    assert_eq!(files_under(&dir.path().join("objects")).len(), 1);
    assert!(files_under(&dir.path().join("packs")).is_empty());
}

/// The `nice` value of the calling thread.
fn thread_nice() -> libc::c_int {
    // SAFETY: a plain syscall on the calling thread's own id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[test]
fn checksumming_leaves_no_thread_of_a_daemon_without_cap_sys_nice_at_low_priority() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 1 << 20).unwrap();
    let data = bytes(5, 3 << 20);
    let obj = cache_whole(&cache, "big", &data);
    // Credentials are per thread in the kernel (glibc's setresuid changes every thread; the raw
    // syscall only this one), and threads inherit them from the thread that makes them: this
    // thread and the runtime's blocking threads it starts run as nobody, without CAP_SYS_NICE,
    // as a daemon mounted by an ordinary user does.
    let (before, after, sums) = std::thread::spawn(move || {
        // SAFETY: changes only this thread's credentials; it exits when done.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "dropping to nobody (the test runs as root)");
        let rt = tokio::runtime::Builder::new_current_thread().max_blocking_threads(1).build().unwrap();
        rt.block_on(async {
            let before = tokio::task::spawn_blocking(thread_nice).await.unwrap();
            let sums = obj.checksums().await.unwrap();
            let after = tokio::task::spawn_blocking(thread_nice).await.unwrap();
            (before, after, sums)
        })
    })
    .join()
    .unwrap();
    assert_eq!(after, before, "the runtime's blocking thread keeps its priority after a checksum");
    assert_eq!(sums, crate::checksum::MultiHasher::of_reader(&data[..]).unwrap().0);
}

#[test]
fn concurrent_opens_share_one_instance_per_object_and_eviction_spares_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(dir.path(), 1 << 20).unwrap());
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let shared: Vec<_> =
                    (0..50).map(|_| cache.object("mem://b", "shared", "v1", 5000, "mem://b/shared").unwrap()).collect();
                let own: Vec<_> = (0..50)
                    .map(|i| cache.object("mem://b", &format!("t{t}/{i}"), "v1", 5000, "mem://b/x").unwrap())
                    .collect();
                (shared, own)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let first = results[0].0[0].clone();
    assert!(results.iter().flat_map(|(s, _)| s).all(|o| Arc::ptr_eq(o, &first)), "one instance of a shared object");
    // Every object in use (as by an open file): eviction of everything removes none of them.
    let guards: Vec<_> = results.iter().flat_map(|(s, o)| s.iter().take(1).chain(o)).map(|o| o.in_use()).collect();
    let report = cache.evict(&EvictWhat::All).unwrap();
    assert_eq!((report.objects, report.kept_open), (0, 1 + 8 * 50));
    drop(guards);
    let report = cache.evict(&EvictWhat::All).unwrap();
    assert_eq!(report.objects, 1 + 8 * 50, "all closed now: all evicted");
}

#[test]
fn small_objects_checksummed_together_each_get_their_own_sums_and_a_corrupt_one_only_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..70).map(|i| bytes(i, 1000 + 997 * i as usize)).collect();
    let slot_bad = {
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let objs: Vec<_> = data.iter().enumerate().map(|(i, d)| cache_whole(&cache, &format!("o{i}"), d)).collect();
        cache.flush().unwrap();
        objs[13].record().packed.unwrap()
    };
    let pack = dir.path().join("packs").join(format!("{:08}", slot_bad.pack));
    let mut raw = std::fs::read(&pack).unwrap();
    raw[(slot_bad.offset + 5) as usize] ^= 0xff;
    std::fs::write(&pack, raw).unwrap();

    let cache = reopen(dir.path());
    let objs: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| cache.object("mem://b", &format!("o{i}"), "v1", d.len() as u64, "u").unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    // All at once, as a walk through many small files asks for them: more than one batch.
    let sums = rt.block_on(futures::future::join_all(objs.iter().map(|o| o.checksums())));
    for (i, (got, d)) in sums.into_iter().zip(&data).enumerate() {
        match got {
            Ok(sums) => {
                assert_ne!(i, 13, "the corrupt object is not checksummed");
                assert_eq!(sums, crate::checksum::MultiHasher::of_reader(&d[..]).unwrap().0, "object {i}");
            }
            Err(e) => {
                assert_eq!(i, 13, "only the corrupt object fails: {e}");
                assert!(matches!(e, CacheError::Corrupt { ref uri, block: 0 } if uri.ends_with("/o13")), "{e}");
            }
        }
    }
}

#[test]
fn checksums_nobody_waits_for_are_held_while_fetches_go_on_and_a_waiting_caller_releases_them() {
    // Small objects (checksummed in batches) and big ones (each on its own).
    held_while_fetching(10_000);
    held_while_fetching(600_000);
}

fn held_while_fetching(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), 1 << 20).unwrap();
    let data: Vec<Vec<u8>> = (0..3).map(|i| bytes(i, size + i as usize)).collect();
    let objs: Vec<_> = data.iter().enumerate().map(|(i, d)| cache_whole(&cache, &format!("o{i}"), d)).collect();
    let want = |i: usize| crate::checksum::MultiHasher::of_reader(&data[i][..]).unwrap().0;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let fetching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Blocks keep arriving (a cold read of many files), a millisecond apart.
    let fetcher = {
        let (shared, fetching) = (cache.shared.clone(), fetching.clone());
        std::thread::spawn(move || {
            while fetching.load(Ordering::Relaxed) {
                shared.hash_batch.fetched();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    rt.block_on(async {
        let background = tokio::spawn({
            let obj = objs[0].clone();
            async move { obj.checksums_in_background().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(!background.is_finished(), "no checksums while the fetches go on");
        // An open checking a datum waits for another object's: both are computed now.
        assert_eq!(objs[1].checksums().await.unwrap(), want(1));
        assert_eq!(background.await.unwrap().unwrap(), want(0));
        fetching.store(false, Ordering::Relaxed);
        // Once the fetches pause, a background request is answered too.
        assert_eq!(objs[2].checksums_in_background().await.unwrap(), want(2));
    });
    fetcher.join().unwrap();
    assert_eq!(objs[0].record().checksums, Some(want(0)), "kept in the index");
}

#[test]
fn a_held_checksum_job_is_due_past_its_count_its_bytes_its_age_or_when_someone_waits() {
    let now = Some(std::time::Instant::now());
    let due = |held: usize, bytes: u64, cap: u64| object::held_job_is_due(held, bytes, now, cap, false);
    assert!(!due(1, 100, 0));
    assert!(object::held_job_is_due(1, 100, now, 0, true), "someone waits");
    assert!(due(16_384, 100, 0), "too many objects held");
    assert!(due(10, 2 << 30, 0), "too many bytes held");
    assert!(!due(10, 1 << 30, 0));
    assert!(due(10, 1 << 30, 2 << 30), "a quarter of a 2 GiB cap");
    let old = Some(std::time::Instant::now() - std::time::Duration::from_secs(31));
    assert!(object::held_job_is_due(1, 100, old, 0, false), "held too long");
}
