//! The cache's life on a node: eviction by age (with a running daemon, never of an open file),
//! `datumfs cache stats|evict|verify` with and without a daemon, and reconciliation at start.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

fn cache_at(cache: &Path, args: &[&str]) -> Value {
    let home = cache.with_file_name("home");
    let out = command(&home, &[])
        .arg("cache")
        .args(args)
        .args(["--json", "--cache-dir", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "datumfs cache {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cache_cmd(m: &TestMount, args: &[&str]) -> Value {
    cache_at(&m.cache, args)
}

fn source(dir: &Path, n: u64) -> (String, Vec<Vec<u8>>) {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    let files: Vec<Vec<u8>> = (0..n).map(|i| bytes(50 + i, 300_000 + i as usize)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(src.join(format!("f{i}.bin")), data).unwrap();
    }
    (format!("in=file://{}", src.display()), files)
}

#[test]
fn objects_not_read_for_evict_after_are_evicted_but_never_an_open_file() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 3);
    let m = TestMount::new(&["--input", &input, "--evict-after", "2s"], &[]);
    assert_eq!(fs::read(m.path("inputs/in/f0.bin")).unwrap(), files[0]);
    assert_eq!(fs::read(m.path("inputs/in/f1.bin")).unwrap(), files[1]);
    let mut held = fs::File::open(m.path("inputs/in/f2.bin")).unwrap();
    let mut first = vec![0u8; 1000];
    held.read_exact(&mut first).unwrap();
    let stats = cache_cmd(&m, &["stats"]);
    assert_eq!(stats["objects"], 3, "{stats}");
    assert!(stats["hit_bytes"].is_u64(), "answered by the daemon: {stats}");

    // The daemon evicts what nobody read for 2 s, but keeps the open file.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cache_cmd(&m, &["stats"]);
        if s["objects"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing evicted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(first, files[2], "an open file survives eviction");
    drop(held);
    // Evicted files are fetched again, byte for byte.
    assert_eq!(fs::read(m.path("inputs/in/f0.bin")).unwrap(), files[0]);
}

#[test]
fn cache_commands_work_without_a_daemon() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 4);
    let m = TestMount::new(&["--input", &input], &[]);
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data);
    }
    let (dir, cache) = m.into_parts();

    let stats = cache_at(&cache, &["stats"]);
    assert_eq!(stats["objects"], 4, "{stats}");
    assert!(stats["disk_bytes"].as_u64().unwrap() >= files.iter().map(|f| f.len() as u64).sum::<u64>());
    assert!(stats["hit_bytes"].is_null(), "no daemon: {stats}");
    assert_eq!(stats["next_eviction"]["objects"], 0);
    assert_eq!(cache_at(&cache, &["evict", "--older-than", "1h"])["objects"], 0);

    // Corrupt one cached block on disk: verify finds it, --repair drops it.
    let objects = cache.join("objects");
    let victim = fs::read_dir(&objects)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .next()
        .unwrap()
        .path();
    let mut data = fs::read(&victim).unwrap();
    data[10] ^= 0xff;
    fs::write(&victim, &data).unwrap();
    let out = command(&dir.path().join("home"), &[])
        .args(["cache", "verify", "--cache-dir", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad blocks without --repair fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let repaired = cache_at(&cache, &["verify", "--repair"]);
    assert_eq!(repaired["bad"].as_array().unwrap().len(), 1, "{repaired}");
    assert_eq!(cache_at(&cache, &["verify"])["bad"].as_array().unwrap().len(), 0);

    // Evict one object by URI, then everything.
    let uri = format!("{}/f3.bin", input.trim_start_matches("in=").trim_end_matches('/'));
    let one = cache_at(&cache, &["evict", &uri]);
    assert_eq!(one["objects"], 1, "{one}");
    let all = cache_at(&cache, &["evict", "--all"]);
    assert_eq!(all["objects"], 3, "{all}");
    let stats = cache_at(&cache, &["stats"]);
    assert_eq!(stats["objects"], 0);
    assert_eq!(stats["disk_bytes"], 0);

    // A new mount on the emptied cache serves the right bytes again.
    let m = TestMount::with_cache(dir, cache, &["--input", &input], &[]);
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data);
    }
}

#[test]
fn start_reconciles_index_and_files() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 2);
    let m = TestMount::new(&["--input", &input], &[]);
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data);
    }
    let (dir, cache) = m.into_parts();
    // An orphan data file, and a data file deleted behind the index's back.
    let objects = cache.join("objects");
    fs::create_dir_all(objects.join("ff")).unwrap();
    fs::write(objects.join("ff").join("ff".repeat(32)), b"orphan").unwrap();
    let victim = fs::read_dir(&objects)
        .unwrap()
        .flatten()
        .filter(|d| d.file_name() != "ff")
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .next()
        .unwrap()
        .path();
    fs::remove_file(&victim).unwrap();
    let m = TestMount::with_cache(dir, cache.clone(), &["--input", &input], &[]);
    assert!(!objects.join("ff").join("ff".repeat(32)).exists(), "orphan removed at start");
    assert!(m.log().contains("reconciled"), "{}", m.log());
    assert_eq!(cache_cmd(&m, &["stats"])["objects"], 1);
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data);
    }
}

#[test]
fn the_size_cap_holds_under_churn_and_open_files_survive() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 12);
    let cap: u64 = 1 << 20;
    let m = TestMount::new(&["--input", &input, "--cache-size", "1MiB", "--block-size", "64KiB"], &[]);
    // One file stays open the whole time: it is never evicted.
    let mut held = fs::File::open(m.path("inputs/in/f0.bin")).unwrap();
    let mut f0 = Vec::new();
    held.read_to_end(&mut f0).unwrap();
    assert_eq!(f0, files[0]);
    let allocated = || -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(m.cache.join("objects"))
            .unwrap()
            .flatten()
            .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
            .map(|f| f.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
            .sum()
    };
    for round in 0..2 {
        for (i, data) in files.iter().enumerate().skip(1) {
            assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data, "round {round} f{i}");
            // At every sample the cache stays within the cap, plus the open file's blocks and
            // one 8-block run in flight.
            let used = allocated();
            assert!(
                used <= cap + files[0].len() as u64 + (8 << 16) + (64 << 10),
                "round {round} f{i}: {used} bytes cached"
            );
        }
    }
    let stats = cache_cmd(&m, &["stats"]);
    assert_eq!(stats["cap"], cap);
    held.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert_eq!(again, files[0], "the open file was kept");
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn cache_min_free_keeps_the_disk_from_filling() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 12);
    let disk = scratch.path().join("disk");
    fs::create_dir_all(&disk).unwrap();
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&disk).status();
    assert!(st.unwrap().success(), "mounting a small tmpfs for the cache");
    let _disk = SmallDisk(disk.clone());
    let cache = disk.join("cache");
    let dir = tempfile::tempdir().unwrap();
    let m = TestMount::with_cache(
        dir,
        cache,
        &["--input", &input, "--cache-min-free", "6MiB", "--block-size", "64KiB"],
        &[],
    );
    let free = || {
        let s = nix::sys::statvfs::statvfs(&disk).unwrap();
        s.blocks_available() * s.fragment_size()
    };
    for round in 0..2 {
        for (i, data) in files.iter().enumerate() {
            assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data, "round {round} f{i}");
            // Never below the floor by more than one read's blocks in flight.
            assert!(free() + (8 << 16) + (64 << 10) >= 6 << 20, "round {round} f{i}: {} bytes free", free());
        }
    }
}

#[test]
fn the_size_cap_holds_for_s3_inputs_read_one_after_another() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let files: Vec<Vec<u8>> = (0..10).map(|i| bytes(300 + i, 1 << 20)).collect();
    for (i, data) in files.iter().enumerate() {
        s3.put("capb", &format!("f{i}.bin"), data);
    }
    let m = TestMount::new(&["--input", "d=s3://capb/", "--cache-size", "2MiB", "--block-size", "64KiB"], &s3.env());
    let mut peak = 0;
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/d/f{i}.bin"))).unwrap(), data, "f{i}");
        let used = cache_cmd(&m, &["stats"])["used_bytes"].as_u64().unwrap();
        peak = peak.max(used);
    }
    // Files just read (their checksums still being computed) do not pin the cache.
    assert!(peak <= (2 << 20) + (8 << 16), "cached blocks peaked at {peak} bytes for a 2 MiB cap");
}

#[test]
fn a_full_disk_serves_reads_from_the_store_never_eio() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let big = bytes(77, 12 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    let disk = scratch.path().join("disk");
    fs::create_dir_all(&disk).unwrap();
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&disk).status();
    assert!(st.unwrap().success(), "mounting a small tmpfs for the cache");
    let _disk = SmallDisk(disk.clone());
    let input = format!("in=file://{}", src.display());
    let m = TestMount::with_cache(tempfile::tempdir().unwrap(), disk.join("cache"), &["--input", &input], &[]);
    // Twice: the second read meets a cache that is already full.
    for round in 0..2 {
        let got = fs::read(m.path("inputs/in/big.bin")).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(sha256(&got), sha256(&big), "round {round}");
    }
    let log = m.log();
    assert!(log.contains("without caching"), "{log}");
    assert_eq!(log.matches("without caching").count(), 1, "one warning, not one per read");
}
