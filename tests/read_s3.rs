//! The read path against a real S3 server on loopback, through a real FUSE mount.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const SIZES: &[usize] = &[0, 1, 4095, 4096, 4097, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 9 * (1 << 20) + 17];

fn populate(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let rel = if i % 3 == 0 { format!("f{i}.bin") } else { format!("d{}/e/f{i}.bin", i % 2) };
        let data = bytes(i as u64, size);
        s3.put(bucket, &format!("{prefix}{rel}"), &data);
        files.push((rel, data));
    }
    files
}

#[test]
fn bytes_are_exact_whole_and_in_random_ranges() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let files = populate(&s3, "bkt", "train/");
    let m = TestMount::new(&["--input", "data=s3://bkt/train/", "--block-size", "256KiB"], &s3.env());
    for (rel, data) in &files {
        let got = std::fs::read(m.path(&format!("inputs/data/{rel}"))).unwrap();
        assert_eq!(got.len(), data.len(), "{rel}: size");
        assert_eq!(sha256(&got), sha256(data), "{rel}: sha256 of the whole file");
    }
    // Random ranges on a fresh mount (cold blocks), including ones that straddle blocks.
    drop(m);
    let m = TestMount::new(&["--input", "data=s3://bkt/train/"], &s3.env());
    let (rel, data) = files.last().unwrap();
    let path = m.path(&format!("inputs/data/{rel}"));
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..200 {
        let off = r.random_range(0..data.len() as u64 + 10);
        let len = r.random_range(1..300_000usize);
        let got = pread(&path, off, len).unwrap();
        let end = (off as usize + len).min(data.len());
        let want = if (off as usize) < data.len() { &data[off as usize..end] } else { &[][..] };
        assert_eq!(sha256(&got), sha256(want), "range {off}+{len}");
    }
}

#[test]
fn listing_does_not_download_and_inputs_json_is_complete() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let n = 2500;
    for i in 0..n {
        s3.put("many", &format!("p/dir{}/sub{}/k{i:05}.txt", i % 7, i % 3), format!("content {i}\n").as_bytes());
    }
    s3.put("many", "p/big.bin", &bytes(1, 3 << 20));
    let start = Instant::now();
    let m = TestMount::new(&["--input", "x=s3://many/p/"], &s3.env());
    let mount_time = start.elapsed();
    s3.clear_log();
    let mut count = 0;
    let mut total = 0u64;
    for e in walk(&m.path("inputs/x")) {
        let md = std::fs::metadata(&e).unwrap();
        if md.is_file() {
            count += 1;
            total += md.len();
        }
    }
    assert_eq!(count, n + 1, "every key is listed");
    let expected: u64 = (0..n).map(|i| format!("content {i}\n").len() as u64).sum::<u64>() + (3 << 20);
    assert_eq!(total, expected, "sizes from stat match the objects");
    let gets: Vec<_> = s3.requests().into_iter().filter(|r| r.is_object_get() || r.method == "HEAD").collect();
    assert!(gets.is_empty(), "ls/stat fetched object contents or heads: {:?}", &gets[..gets.len().min(3)]);
    let lists = s3.requests().len();
    // Listing again is served from memory: a directory is listed once.
    for _ in walk(&m.path("inputs/x")) {}
    assert_eq!(s3.requests().len(), lists, "a second walk listed again");
    assert!(mount_time < Duration::from_secs(10), "mount took {mount_time:?}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.path("config/inputs.json")).unwrap()).unwrap();
    let listed = json["x"]["files"].as_array().unwrap();
    assert_eq!(listed.len(), n + 1);
    let one = listed.iter().find(|f| f["name"] == "k00010.txt").unwrap();
    assert_eq!(one["uri"], "s3://many/p/dir3/sub1/k00010.txt");
    assert_eq!(one["size"], "content 10\n".len());
    assert_eq!(Path::new(one["path"].as_str().unwrap()), m.path("inputs/x/dir3/sub1/k00010.txt"));
}

#[test]
fn every_file_read_whole_gets_its_checksums_even_in_quick_succession() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let files: Vec<Vec<u8>> = (0..300).map(|i| bytes(100 + i, 20_000 + i as usize * 101)).collect();
    for (i, data) in files.iter().enumerate() {
        s3.put("quick", &format!("f{i:03}.bin"), data);
    }
    let m = TestMount::new(&["--input", "q=s3://quick/"], &s3.env());
    // One open, read to the end, close per file, as fast as they come: the last block of a file
    // may still be on its way to the cache when it is closed.
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&std::fs::read(m.path(&format!("inputs/q/f{i:03}.bin"))).unwrap(), data, "f{i}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.path("config/inputs.json")).unwrap()).unwrap();
        let listed = json["q"]["files"].as_array().unwrap().clone();
        assert_eq!(listed.len(), files.len());
        let missing: Vec<_> =
            listed.iter().filter(|f| f["checksums"]["sha256"].is_null()).map(|f| f["name"].clone()).collect();
        if missing.is_empty() {
            for (i, data) in files.iter().enumerate() {
                let f = listed.iter().find(|f| f["name"] == format!("f{i:03}.bin")).unwrap();
                assert_eq!(f["checksums"]["sha256"], sha256(data), "f{i}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "read whole but never checksummed: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn wildcards_and_keep_directories() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    for k in ["img/a/1.jpg", "img/b/2.jpg", "img/b/3.png", "img/4.jpg", "img/c/d/5.jpg"] {
        s3.put("wbkt", k, k.as_bytes());
    }
    let inputs = "- name: flat\n  default: s3://wbkt/img/**/*.jpg\n- name: suffix\n  default: s3://wbkt/img/**/*.jpg\n  keep-directories: suffix\n- name: full\n  default: s3://wbkt/img/*.jpg\n  keep-directories: full\n- name: one\n  default: s3://wbkt/img/b/3.png\n  filename: renamed.png\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.yaml");
    std::fs::write(&file, inputs).unwrap();
    let m = TestMount::new(&["--inputs", file.to_str().unwrap()], &s3.env());
    let names = |rel: &str| {
        let mut v: Vec<String> = walk(&m.path(rel))
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| p.strip_prefix(m.path(rel)).unwrap().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("inputs/flat"), vec!["1.jpg", "2.jpg", "4.jpg", "5.jpg"]);
    assert_eq!(names("inputs/suffix"), vec!["4.jpg", "a/1.jpg", "b/2.jpg", "c/d/5.jpg"]);
    assert_eq!(names("inputs/full"), vec!["img/4.jpg"]);
    assert_eq!(names("inputs/one"), vec!["renamed.png"]);
    assert_eq!(std::fs::read(m.path("inputs/suffix/c/d/5.jpg")).unwrap(), b"img/c/d/5.jpg");

    // Two keys with one base name under keep-directories none: a clear error, no mount.
    s3.put("wbkt", "img/e/1.jpg", b"dup");
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("mnt")).unwrap();
    let out = command(&dir2.path().join("home"), &s3.env())
        .args(["mount", dir2.path().join("mnt").to_str().unwrap(), "--input", "x=s3://wbkt/img/**/*.jpg"])
        .args(["--cache-dir", dir2.path().join("cache").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("both map to '1.jpg'") && err.contains("keep-directories"), "{err}");
    assert!(!is_mounted(&dir2.path().join("mnt")));
}

#[test]
fn inputs_are_read_only() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.put("robkt", "d/file.txt", b"hello");
    let m = TestMount::new(&["--input", "d=s3://robkt/d/"], &s3.env());
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(m.path("inputs/d/new.txt"), b"x").map(|_| ()), "create");
    erofs(std::fs::OpenOptions::new().write(true).open(m.path("inputs/d/file.txt")).map(|_| ()), "open for write");
    erofs(std::fs::remove_file(m.path("inputs/d/file.txt")), "unlink");
    erofs(std::fs::create_dir(m.path("inputs/d/sub")), "mkdir");
    erofs(std::fs::rename(m.path("inputs/d/file.txt"), m.path("inputs/d/other.txt")), "rename");
    erofs(std::fs::write(m.path("config/inputs.json"), b"{}").map(|_| ()), "write inputs.json");
    assert_eq!(std::fs::read(m.path("inputs/d/file.txt")).unwrap(), b"hello", "still readable");
    assert!(m.path("outputs").is_dir());
}

#[test]
fn a_changed_object_fails_with_eio_and_never_mixes_versions() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    // Big enough that the first read's read-ahead (rounded up to an 8-block GET) leaves most of
    // it unfetched.
    let v1 = bytes(1, 24 << 20);
    s3.put("chg", "k/data.bin", &v1);
    s3.put("chg", "k/other.bin", b"other");
    let m = TestMount::new(&["--input", "d=s3://chg/k/", "--read-ahead", "1MiB"], &s3.env());
    let path = m.path("inputs/d/data.bin");
    // other.bin changes size after the listing pinned it and before it is fetched (opening
    // data.bin fetches it ahead): the pinned version is gone from the store.
    s3.put("chg", "k/other.bin", b"other but longer");
    // First block read: version pinned, block cached.
    assert_eq!(pread(&path, 0, 4096).unwrap(), &v1[..4096]);
    // The object changes (same size) under the mount.
    let v2 = bytes(2, 24 << 20);
    s3.put("chg", "k/data.bin", &v2);
    let err = pread(&path, 20 << 20, 4096).expect_err("reading the changed object must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The cached first block is still the pinned version's bytes; nothing of v2 is served.
    assert_eq!(pread(&path, 0, 4096).unwrap(), &v1[..4096]);
    // Changed size too.
    let err = std::fs::read(m.path("inputs/d/other.bin")).expect_err("changed size must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(m.log().contains("s3://chg/k/data.bin") && m.log().contains("changed")) {
        assert!(Instant::now() < deadline, "the log does not name the changed file: {}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_down_gives_eio_quickly_and_the_mount_stays_responsive() {
    if !fuse_available() {
        return;
    }
    let mut s3 = S3Server::start();
    s3.put("down", "a.bin", &bytes(3, 2 << 20));
    // Too big to be fetched ahead when a.bin is opened: nothing of it is cached.
    s3.put("down", "b.bin", &bytes(4, 6 << 20));
    let m = TestMount::new(&["--input", "d=s3://down/"], &s3.env());
    let a = std::fs::read(m.path("inputs/d/a.bin")).unwrap();
    assert_eq!(sha256(&a), sha256(&bytes(3, 2 << 20)));
    s3.stop();
    let t = Instant::now();
    let err = std::fs::read(m.path("inputs/d/b.bin")).expect_err("no server, nothing cached");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60), "EIO took {:?}", t.elapsed());
    // Still responsive: listing and cached reads work.
    assert_eq!(std::fs::read_dir(m.path("inputs/d")).unwrap().count(), 2);
    assert_eq!(sha256(&std::fs::read(m.path("inputs/d/a.bin")).unwrap()), sha256(&a));
    // The server comes back: the same read now succeeds.
    s3.resume();
    assert_eq!(sha256(&std::fs::read(m.path("inputs/d/b.bin")).unwrap()), sha256(&bytes(4, 6 << 20)));
}

#[test]
fn remount_serves_the_cache_with_the_server_stopped_even_after_a_crash() {
    if !fuse_available() {
        return;
    }
    let mut s3 = S3Server::start();
    let files = populate(&s3, "cbkt", "");
    let m = TestMount::new(&["--input", "d=s3://cbkt/"], &s3.env());
    for (rel, _) in &files {
        std::fs::read(m.path(&format!("inputs/d/{rel}"))).unwrap();
    }
    let (dir, cache) = m.into_parts();
    // Remount (listing needs the server), then stop it: every byte must come from the cache.
    let m = TestMount::with_cache(dir, cache, &["--input", "d=s3://cbkt/"], &s3.env());
    let _ = walk(&m.path("inputs/d"));
    s3.stop();
    s3.clear_log();
    for (rel, data) in &files {
        let got = std::fs::read(m.path(&format!("inputs/d/{rel}"))).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(sha256(&got), sha256(data), "{rel}");
    }
    assert!(s3.requests().is_empty());

    // A crash (SIGKILL) of the daemon loses nothing that was complete.
    let mut m = m;
    s3.resume();
    let (dir, cache) = {
        m.crash();
        let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap());
        (dir, m.cache.clone())
    };
    drop(m);
    let m = TestMount::with_cache(dir, cache, &["--input", "d=s3://cbkt/"], &s3.env());
    let _ = walk(&m.path("inputs/d"));
    s3.stop();
    for (rel, data) in &files {
        let got =
            std::fs::read(m.path(&format!("inputs/d/{rel}"))).unwrap_or_else(|e| panic!("after crash, {rel}: {e}"));
        assert_eq!(sha256(&got), sha256(data), "{rel}");
    }
}

#[test]
fn files_read_whole_just_before_a_kill_are_served_from_the_cache_after_remount() {
    if !fuse_available() {
        return;
    }
    let mut s3 = S3Server::start();
    let files = populate(&s3, "kbkt", "");
    let mut m = TestMount::new(&["--input", "d=s3://kbkt/"], &s3.env());
    for (rel, _) in &files {
        std::fs::read(m.path(&format!("inputs/d/{rel}"))).unwrap();
    }
    // SIGKILL soon after the last read (well inside sled's own 500 ms flush timer): no unmount,
    // no timer-driven flush to rely on.
    std::thread::sleep(Duration::from_millis(250));
    m.crash();
    let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap());
    let cache = m.cache.clone();
    drop(m);
    let m = TestMount::with_cache(dir, cache, &["--input", "d=s3://kbkt/"], &s3.env());
    let _ = walk(&m.path("inputs/d"));
    s3.stop();
    for (rel, data) in &files {
        let got = std::fs::read(m.path(&format!("inputs/d/{rel}")))
            .unwrap_or_else(|e| panic!("{rel}, read whole before the kill, not served from the cache: {e}"));
        assert_eq!(sha256(&got), sha256(data), "{rel}");
    }
}

#[test]
fn a_corrupted_small_file_in_a_pack_is_detected_and_fetched_again() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let small: Vec<Vec<u8>> = (0..3).map(|i| bytes(40 + i, 150_000)).collect();
    for (i, data) in small.iter().enumerate() {
        s3.put("corp", &format!("s{i}.bin"), data);
    }
    let m = TestMount::new(&["--input", "d=s3://corp/"], &s3.env());
    for i in 0..3 {
        std::fs::read(m.path(&format!("inputs/d/s{i}.bin"))).unwrap();
    }
    let (dir, cache) = m.into_parts();
    // The three share one pack; flip one byte of each object's slot (slots are 4 KiB aligned).
    let packs: Vec<_> = walk(&cache.join("packs")).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let mut raw = std::fs::read(&packs[0]).unwrap();
    let slot = 150_000usize.div_ceil(4096) * 4096;
    raw[slot + 777] ^= 0xff; // the second object's
    std::fs::write(&packs[0], raw).unwrap();
    let m = TestMount::with_cache(dir, cache, &["--input", "d=s3://corp/"], &s3.env());
    s3.clear_log();
    for (i, data) in small.iter().enumerate() {
        let got = std::fs::read(m.path(&format!("inputs/d/s{i}.bin"))).unwrap();
        assert_eq!(sha256(&got), sha256(data), "s{i}: the bad block was not served");
    }
    let gets = s3.requests().into_iter().filter(|r| r.is_object_get()).count();
    assert_eq!(gets, 1, "exactly the bad object is fetched again");
}

#[test]
fn a_corrupted_cache_block_is_detected_and_fetched_again() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let data = bytes(9, 3 << 20);
    s3.put("cor", "x.bin", &data);
    let m = TestMount::new(&["--input", "d=s3://cor/"], &s3.env());
    std::fs::read(m.path("inputs/d/x.bin")).unwrap();
    let (dir, cache) = m.into_parts();
    // Flip one byte in the middle of the second block of the (only) data file.
    let data_file = walk(&cache.join("objects")).into_iter().find(|p| p.is_file()).expect("a cached data file");
    let mut raw = std::fs::read(&data_file).unwrap();
    raw[(1 << 20) + 12345] ^= 0xff;
    std::fs::write(&data_file, raw).unwrap();
    let m = TestMount::with_cache(dir, cache, &["--input", "d=s3://cor/"], &s3.env());
    s3.clear_log();
    let got = std::fs::read(m.path("inputs/d/x.bin")).unwrap();
    assert_eq!(sha256(&got), sha256(&data), "the bad block was not served");
    let gets = s3.requests().into_iter().filter(|r| r.is_object_get()).count();
    assert_eq!(gets, 1, "exactly the bad block is fetched again");
}

#[test]
fn concurrent_readers_of_one_file_download_each_block_once() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let data = bytes(5, 16 << 20);
    s3.put("ccbkt", "big.bin", &data);
    let m = TestMount::new(&["--input", "d=s3://ccbkt/"], &s3.env());
    let path = m.path("inputs/d/big.bin");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&data)));
        }
    });
    let out = m.run(&["status", m.mnt.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cache"]["fetched_bytes"], 16 << 20, "each byte fetched once: {v}");
}

#[test]
fn checksums_are_logged_exposed_and_recorded() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let data = bytes(6, (2 << 20) + 5);
    s3.put("sum", "k/model.bin", &data);
    let m = TestMount::new(&["--input", "m=s3://sum/k/model.bin"], &s3.env());
    let path = m.path("inputs/m/model.bin");
    assert_eq!(xattr(&path, "user.datumfs.sha256"), None, "no checksum before a full read");
    std::fs::read(&path).unwrap();
    assert_eq!(xattr(&path, "user.datumfs.sha256").as_deref(), Some(sha256(&data).as_str()));
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(&data))
    };
    assert_eq!(xattr(&path, "user.datumfs.md5").as_deref(), Some(md5.as_str()));
    let line = format!("{}: md5 sum: {md5}", path.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.log().contains(&line) {
        assert!(Instant::now() < deadline, "no Valohai-style log line '{line}': {}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.path("config/inputs.json")).unwrap()).unwrap();
    assert_eq!(json["m"]["files"][0]["checksums"]["sha256"], sha256(&data));
    let st: serde_json::Value =
        serde_json::from_slice(&m.run(&["status", m.mnt.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(st["files"][0]["checksums"]["sha256"], sha256(&data), "{st}");

    // The same URI with different content, on a later mount sharing the data store: a warning.
    let (dir, cache) = m.into_parts();
    s3.put("sum", "k/model.bin", &bytes(7, 100));
    let m = TestMount::with_cache(dir, cache, &["--input", "m=s3://sum/k/model.bin"], &s3.env());
    std::fs::read(m.path("inputs/m/model.bin")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.log().contains("differs from its last use") {
        assert!(Instant::now() < deadline, "no change warning: {}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.log().contains(&sha256(&data)), "the warning names the old hash");
}

#[test]
fn cold_and_cached_files_can_be_memory_mapped() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let data = bytes(21, (3 << 20) + 123);
    s3.put("mmapbkt", "arr.npy", &data);
    let m = TestMount::new(&["--input", "a=s3://mmapbkt/"], &s3.env());
    let path = m.path("inputs/a/arr.npy");
    let script = "import hashlib, mmap, sys\nf = open(sys.argv[1], 'rb')\nm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\nprint(hashlib.sha256(m[:]).hexdigest())";
    for round in ["cold", "cached"] {
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output().unwrap();
        assert!(out.status.success(), "{round}: mmap failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha256(&data), "{round}: bytes through mmap");
    }
}

#[test]
fn warm_fetches_whole_inputs_ahead_of_the_job() {
    if !fuse_available() {
        return;
    }
    let mut s3 = S3Server::start();
    let files = populate(&s3, "wbkt", "data/");
    let m = TestMount::new(&["--input", "d=s3://wbkt/data/"], &s3.env());
    let out = m.run(&["warm", m.path("inputs/d").to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], files.len(), "{report}");
    assert_eq!(report["bytes"], files.iter().map(|(_, d)| d.len()).sum::<usize>());
    // Warming again fetches nothing; then every byte comes from the cache with the store gone.
    s3.clear_log();
    let again: serde_json::Value =
        serde_json::from_slice(&m.run(&["warm", m.path("inputs/d").to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(again["already_cached"], files.len());
    assert!(!s3.requests().iter().any(|r| r.is_object_get()), "a second warm downloads nothing");
    s3.stop();
    for (rel, data) in &files {
        let got = std::fs::read(m.path(&format!("inputs/d/{rel}"))).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(sha256(&got), sha256(data), "{rel}");
    }
    let bad = m.run(&["warm", m.path("config").to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("only inputs/"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// The prefixes the server was asked to list, in order.
fn listed_prefixes(s3: &S3Server) -> Vec<String> {
    s3.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.query.contains("delimiter"))
        .filter_map(|r| r.query.split('&').find_map(|kv| kv.strip_prefix("prefix=")).map(|p| p.replace("%2F", "/")))
        .collect()
}

#[test]
fn a_walk_lists_the_next_directories_ahead_and_each_once() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    for d in 0..10 {
        s3.put("walk", &format!("p/d{d}/f.txt"), format!("file {d}\n").as_bytes());
        s3.put("walk", &format!("p/d{d}/s/g.txt"), format!("deep {d}\n").as_bytes());
    }
    let m = TestMount::new(&["--input", "x=s3://walk/p/"], &s3.env());
    s3.clear_log();

    // A plain `ls` of the input lists nothing below it.
    assert_eq!(std::fs::read_dir(m.path("inputs/x")).unwrap().count(), 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listed_prefixes(&s3), Vec::<String>::new(), "ls of the top listed subdirectories");

    // Opening d0 (as a walk does) lists d1..d4 ahead, and not further.
    assert_eq!(std::fs::read_dir(m.path("inputs/x/d0")).unwrap().count(), 2);
    let ahead: Vec<String> = (1..=4).map(|d| format!("p/d{d}/")).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ahead.iter().all(|p| listed_prefixes(&s3).contains(p)) {
        assert!(Instant::now() < deadline, "not listed ahead: {:?}", listed_prefixes(&s3));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!listed_prefixes(&s3).contains(&"p/d5/".to_string()), "listed too far ahead");

    // The whole walk finds every file with its bytes, and no directory is listed twice.
    let files: Vec<_> = walk(&m.path("inputs/x")).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(files.len(), 20);
    for d in 0..10 {
        assert_eq!(std::fs::read_to_string(m.path(&format!("inputs/x/d{d}/s/g.txt"))).unwrap(), format!("deep {d}\n"));
    }
    let mut listed = listed_prefixes(&s3);
    let all = listed.len();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), all, "a directory was listed twice: {listed:?}");
    assert_eq!(all, 20, "every directory below the input listed once");
}
