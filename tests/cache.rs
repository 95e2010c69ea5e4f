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

    // Corrupt one cached block on disk: verify finds it, --repair drops it. Objects this small
    // share a pack file (packs/), none has a file of its own (objects/).
    assert_eq!(fs::read_dir(cache.join("objects")).unwrap().flatten().count(), 0);
    let victim = fs::read_dir(cache.join("packs")).unwrap().flatten().next().unwrap().path();
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
    // Blocks smaller than the files: each has a data file of its own (small ones share packs).
    let m = TestMount::new(&["--input", &input, "--block-size", "64KiB"], &[]);
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
    // And a pack file no index entry uses.
    let stray_pack = cache.join("packs").join("00000099");
    fs::write(&stray_pack, b"stray").unwrap();
    let m = TestMount::with_cache(dir, cache.clone(), &["--input", &input, "--block-size", "64KiB"], &[]);
    assert!(!objects.join("ff").join("ff".repeat(32)).exists(), "orphan removed at start");
    assert!(!stray_pack.exists(), "unused pack removed at start");
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
            // At every sample the cache stays within the cap (the open file's blocks count
            // against it), give or take one 8-block run in flight.
            let used = allocated();
            assert!(used <= cap + (8 << 16), "round {round} f{i}: {used} bytes cached");
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

/// A mount made by `datumfs mount` without --foreground (it joins or starts a daemon);
/// force-unmounted on drop.
struct JoinedMount {
    mnt: std::path::PathBuf,
    home: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl JoinedMount {
    fn new(base: &Path, name: &str, cache: &Path, args: &[&str], env: &[(String, String)]) -> (Self, Output) {
        let mnt = base.join(name);
        let home = base.join("home");
        fs::create_dir_all(&mnt).unwrap();
        let out = command(&home, env)
            .arg("mount")
            .arg(&mnt)
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .output()
            .expect("running datumfs mount");
        (Self { mnt, home, env: env.to_vec() }, out)
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.mnt.join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        command(&self.home, &self.env).args(args).output().unwrap()
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", "--json", self.mnt.to_str().unwrap()]);
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for JoinedMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = self.run(&["unmount", "--force", self.mnt.to_str().unwrap()]);
        }
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

use std::process::Output;

/// Bytes fetched by object GETs in the server's log.
fn fetched_bytes(s3: &S3Server) -> u64 {
    s3.requests()
        .iter()
        .filter(|r| r.is_object_get())
        .map(|r| {
            let range = r.range.as_deref().and_then(|r| r.strip_prefix("bytes="));
            match range.and_then(|r| r.split_once('-')) {
                Some((a, b)) => b.parse::<u64>().unwrap_or(u64::MAX) - a.parse::<u64>().unwrap_or(0) + 1,
                None => u64::MAX / 4,
            }
        })
        .sum()
}

#[test]
fn a_second_mount_joins_the_daemon_of_its_cache_dir_and_shares_its_downloads() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let files: Vec<Vec<u8>> = (0..6).map(|i| bytes(900 + i, 2 << 20)).collect();
    for (i, data) in files.iter().enumerate() {
        s3.put("shared", &format!("f{i}.bin"), data);
    }
    let big = bytes(999, 24 << 20);
    s3.put("shared", "big.bin", &big);
    let mut first = TestMount::new(&["--input", "d=s3://shared/"], &s3.env());
    let daemon = first.pid();
    let args = ["--input", "d=s3://shared/", "--cache-size", "1GiB"];
    let (second, out) = JoinedMount::new(first.dir.path(), "mnt2", &first.cache, &args, &s3.env());
    assert!(out.status.success(), "second mount: {}", String::from_utf8_lossy(&out.stderr));
    // The cache's settings are the daemon's; a differing flag is reported, not dropped silently.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--cache-size ignored") && said.contains("no cap"), "{said}");
    let st = second.status();
    assert_eq!(st["daemon"]["pid"], daemon, "the second mount is served by the first mount's daemon: {st}");
    assert_eq!(st["daemon"]["mounts"].as_array().map(Vec::len), Some(2));

    // What one mount read, the other serves from the shared cache.
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(first.path(&format!("inputs/d/f{i}.bin"))).unwrap(), data);
    }
    s3.clear_log();
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(second.path(&format!("inputs/d/f{i}.bin"))).unwrap(), data);
    }
    assert_eq!(fetched_bytes(&s3), 0, "the second mount downloaded again");

    // Read at once through both mounts, each block comes down once.
    let readers: Vec<_> = [first.path("inputs/d/big.bin"), second.path("inputs/d/big.bin")]
        .into_iter()
        .map(|p| std::thread::spawn(move || sha256(&fs::read(p).unwrap())))
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), sha256(&big));
    }
    let fetched = fetched_bytes(&s3);
    assert!(fetched <= big.len() as u64, "{fetched} bytes fetched for one {} byte object read twice", big.len());

    // One execution per mount: the same id twice is refused, naming where it is mounted.
    let exec = st["execution"]["id"].as_str().unwrap().to_string();
    let (third, out) = JoinedMount::new(first.dir.path(), "mnt3", &first.cache, &["--execution", &exec], &s3.env());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already mounted") && err.contains("mnt2"), "{err}");
    assert!(!is_mounted(&third.mnt));

    // Other credentials never ride on this daemon's.
    let mut other = s3.env();
    other.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    other.push(("AWS_SECRET_ACCESS_KEY".into(), "someone-else".into()));
    let (fourth, out) =
        JoinedMount::new(first.dir.path(), "mnt4", &first.cache, &["--input", "d=s3://shared/"], &other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("other store credentials") && err.contains(&daemon.to_string()), "{err}");
    assert!(!is_mounted(&fourth.mnt));

    // Unmounting one leaves the other serving; the daemon leaves with the last.
    let out = second.run(&["unmount", second.mnt.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&second.mnt));
    assert!(first.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon left with a mount still up");
    assert_eq!(&fs::read(first.path("inputs/d/f0.bin")).unwrap(), &files[0]);
    first.unmount();
}

#[test]
fn sigterm_unmounts_every_mount_of_the_daemon() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 2);
    let mut first = TestMount::new(&["--input", &input], &[]);
    let (second, out) = JoinedMount::new(first.dir.path(), "mnt2", &first.cache, &["--input", &input], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(&fs::read(second.path("inputs/in/f1.bin")).unwrap(), &files[1]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut child = first.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&first.mnt) && !is_mounted(&second.mnt), "SIGTERM left a mount behind");
}

#[test]
fn warm_uri_fills_the_cache_with_or_without_a_daemon() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let files: Vec<Vec<u8>> = (0..5).map(|i| bytes(700 + i, 900_000 + i as usize)).collect();
    for (i, data) in files.iter().enumerate() {
        s3.put("warmu", &format!("set/a/f{i}.bin"), data);
        s3.put("warmu", &format!("other/f{i}.bin"), data);
    }
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let cache = scratch.path().join("cache");
    let warm = |home: &Path, uri: &str| {
        let out = command(home, &s3.env())
            .args(["warm", uri, "--json", "--cache-dir", cache.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "warm {uri}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // No daemon: the command opens the cache itself.
    let report = warm(&home, "s3://warmu/set/");
    assert_eq!(report["files"], 5);
    assert_eq!(report["bytes"], files.iter().map(|f| f.len()).sum::<usize>());
    s3.clear_log();
    let dir = tempfile::tempdir().unwrap();
    let m = TestMount::with_cache(dir, cache.clone(), &["--input", "d=s3://warmu/set/"], &s3.env());
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("inputs/d/a/f{i}.bin"))).unwrap(), data);
    }
    assert_eq!(fetched_bytes(&s3), 0, "a warmed URI was downloaded again");
    // With a daemon holding the cache: the warm goes through it (same environment needed).
    let report = warm(&m.home, "s3://warmu/other/f3.bin");
    assert_eq!(report["files"], 1);
    let (second, out) =
        JoinedMount::new(m.dir.path(), "mnt2", &cache, &["--input", "o=s3://warmu/other/f3.bin"], &s3.env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s3.clear_log();
    assert_eq!(fs::read(second.path("inputs/o/f3.bin")).unwrap(), files[3]);
    assert_eq!(fetched_bytes(&s3), 0);
    // A bad URI is named.
    let out = command(&home, &s3.env())
        .args(["warm", "s3://warmu/nothing-here/", "--cache-dir", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here"));
}

#[test]
fn when_open_files_fill_the_cap_other_reads_come_from_the_store_uncached() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 10);
    let cap: u64 = 1 << 20;
    let m = TestMount::new(&["--input", &input, "--cache-size", "1MiB", "--block-size", "64KiB"], &[]);
    // Four open files of ~300 KB each: more than the cap.
    let mut held: Vec<fs::File> = Vec::new();
    for (i, data) in files.iter().enumerate().take(4) {
        let mut f = fs::File::open(m.path(&format!("inputs/in/f{i}.bin"))).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(&got, data, "f{i}");
        held.push(f);
    }
    for (i, data) in files.iter().enumerate().skip(4) {
        assert_eq!(&fs::read(m.path(&format!("inputs/in/f{i}.bin"))).unwrap(), data, "f{i}");
        let used = cache_cmd(&m, &["stats"])["used_bytes"].as_u64().unwrap();
        assert!(used <= cap, "f{i}: {used} bytes cached for a {cap} byte cap");
    }
    let log = fs::read_to_string(m.cache.join("datumfs.log")).unwrap();
    assert_eq!(log.matches("without caching").count(), 2, "one line from the cache, one from the reader: {log}");
    drop(held);
}

#[test]
fn mounts_started_together_on_a_fresh_cache_dir_end_in_one_daemon() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (input, files) = source(scratch.path(), 2);
    let cache = scratch.path().join("cache");
    let home = scratch.path().join("home");
    let mounts: Vec<JoinedMount> = (0..3)
        .map(|i| {
            let mnt = scratch.path().join(format!("m{i}"));
            fs::create_dir_all(&mnt).unwrap();
            JoinedMount { mnt, home: home.clone(), env: Vec::new() }
        })
        .collect();
    let procs: Vec<_> = mounts
        .iter()
        .map(|m| {
            command(&home, &[])
                .arg("mount")
                .arg(&m.mnt)
                .args(["--cache-dir", cache.to_str().unwrap(), "--input", &input])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let pids: std::collections::BTreeSet<u64> =
        mounts.iter().map(|m| m.status()["daemon"]["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 1, "three mounts started together: daemons {pids:?}");
    for m in &mounts {
        assert_eq!(&fs::read(m.path("inputs/in/f1.bin")).unwrap(), &files[1]);
    }
    let pid = *pids.iter().next().unwrap() as i32;
    for m in &mounts {
        let out = m.run(&["unmount", m.mnt.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The last unmount returns once the daemon is gone (a zombie waiting for init counts as gone).
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z");
    assert!(!running, "the daemon outlived its mounts: {state}");
}
