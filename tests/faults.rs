//! Faults from the store, injected by the loopback S3 server in front of its storage: error
//! statuses, throttling, connections reset mid-body, truncated bodies and a server that stops
//! answering. Reads retry and give the right bytes or EIO in bounded time, never wrong bytes,
//! and the mount stays responsive; syncs never lose, duplicate or half-write a datum.

mod common;

use common::*;
use std::fs;
use std::time::{Duration, Instant};

const BUCKET: &str = "bkt";

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn reads_retry_through_errors_throttling_resets_and_truncation_and_give_the_right_bytes() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let files: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| (format!("f{i}.bin"), bytes(70 + i, 300_000 * (i as usize + 1)))).collect();
    for (name, data) in &files {
        s3.put(BUCKET, &format!("train/{name}"), data);
    }
    let m = TestMount::new(&["--input", "data=s3://bkt/train/"], &s3.env());
    let kinds = [
        FaultKind::Status(500),
        FaultKind::Status(503),
        FaultKind::SlowDown,
        FaultKind::ResetMidBody,
        FaultKind::TruncatedBody,
    ];
    // Each file meets its own fault twice (armed before anything is read: a walk fetches ahead).
    for ((name, _), kind) in files.iter().zip(kinds) {
        s3.inject(kind, "GET", &format!("/train/{name}"), 2);
    }
    for ((name, data), kind) in files.iter().zip(kinds) {
        let got = fs::read(m.path(&format!("inputs/data/{name}"))).unwrap_or_else(|e| panic!("{name} ({kind:?}): {e}"));
        assert_eq!(sha256(&got), sha256(data), "{name} read through {kind:?}");
    }
    assert_eq!(s3.faults_left(), 0, "faults not met: {:?}", s3.faults.lock().unwrap());
}

#[test]
fn a_store_that_keeps_failing_or_stops_answering_gives_eio_in_bounded_time_and_the_mount_stays_responsive() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let (good, bad, silent) = (bytes(1, 200_000), bytes(2, 200_000), bytes(3, 200_000));
    s3.put(BUCKET, "d/good.bin", &good);
    s3.put(BUCKET, "d/bad.bin", &bad);
    s3.put(BUCKET, "d/silent.bin", &silent);
    let mut env = s3.env();
    // A server that stops answering is given up on after this long per request.
    if std::env::var("DATUMFS_FAULTS_DEFAULT_TIMEOUTS").is_err() {
        env.push(("AWS_READ_TIMEOUT".into(), "1s".into()));
    }
    let m = TestMount::new(&["--input", "data=s3://bkt/d/"], &env);
    // Armed before anything is read (a walk fetches ahead).
    s3.inject(FaultKind::Status(500), "GET", "/d/bad.bin", 100_000);
    s3.inject(FaultKind::Hang, "GET", "/d/silent.bin", 100_000);
    assert_eq!(fs::read(m.path("inputs/data/good.bin")).unwrap(), good);

    for (name, kind) in [("bad.bin", FaultKind::Status(500)), ("silent.bin", FaultKind::Hang)] {
        let path = m.path(&format!("inputs/data/{name}"));
        let started = Instant::now();
        let reader = std::thread::spawn(move || fs::read(path).map_err(errno));
        // While that read fails, the rest of the mount answers.
        std::thread::sleep(Duration::from_millis(300));
        let mut names: Vec<String> = fs::read_dir(m.path("inputs/data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["bad.bin", "good.bin", "silent.bin"]);
        assert_eq!(fs::metadata(m.path(&format!("inputs/data/{name}"))).unwrap().len(), 200_000);
        assert_eq!(fs::read(m.path("inputs/data/good.bin")).unwrap(), good, "a cached file, while {name} fails");
        assert!(!reader.is_finished(), "{kind:?}: the read ended before the mount was checked");
        let res = reader.join().unwrap();
        let took = started.elapsed();
        assert_eq!(res.err(), Some(libc::EIO), "{kind:?}");
        eprintln!("{kind:?}: EIO after {took:?}");
        assert!(took < Duration::from_secs(90), "{kind:?}: EIO only after {took:?}");
        s3.faults.lock().unwrap().retain(|f| !f.path.contains(name));
        // The store back: the same file reads right.
        let again = fs::read(m.path(&format!("inputs/data/{name}"))).unwrap();
        assert_eq!(sha256(&again), sha256(if name == "bad.bin" { &bad } else { &silent }));
    }
}

#[test]
fn syncs_through_store_faults_make_every_file_exactly_one_whole_datum() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let store = format!("s3://{BUCKET}/team");
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("x"), b"x").unwrap();
    let input = format!("in=file://{}", src.display());
    let args = ["--input", input.as_str(), "--store", store.as_str(), "--execution", "exec-faults"];
    let m = TestMount::new(&args, &s3.env());
    // Files uploaded alone (two of them in parts) and small ones packed; one moves an alias.
    let mut files: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("big-{i}.bin"), bytes(80 + i, 1_500_000 + 9_000_000 * (i as usize % 2) * 2))).collect();
    files.extend((0..20).map(|i| (format!("small/s{i}.txt"), bytes(90 + i, 500))));
    fs::create_dir(m.path("outputs/small")).unwrap();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    fs::write(m.path("outputs/big-0.bin.metadata.json"), br#"{"valohai.alias": "faulty-best"}"#).unwrap();
    // Errors and throttling on uploads and on records, a response cut short after the store
    // took the bytes (the client cannot tell whether they landed), and a reset mid-answer.
    s3.inject(FaultKind::Status(503), "PUT", "/team/data/", 3);
    s3.inject(FaultKind::SlowDown, "PUT", "/team/data/", 2);
    s3.inject(FaultKind::TruncatedBody, "PUT", "/team/.datumfs/", 2);
    s3.inject(FaultKind::Status(500), "PUT", "/team/.datumfs/aliases/", 2);
    s3.inject(FaultKind::ResetMidBody, "GET", "/team/.datumfs/", 2);
    let mp = m.mnt.to_str().unwrap().to_string();
    let mut report = serde_json::Value::Null;
    for attempt in 0..3 {
        let out = m.run(&["sync", &mp, "--json"]);
        if out.status.success() {
            report = serde_json::from_slice(&out.stdout).unwrap();
            break;
        }
        eprintln!("sync attempt {attempt} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(report.is_object(), "no sync finished");
    assert_eq!(s3.faults_left(), 0, "faults not met: {:?}", s3.faults.lock().unwrap());
    assert_eq!(report["datums"].as_array().unwrap().len(), files.len(), "{report}");

    // Each file exactly one datum, stored whole; the alias on big-0.bin's.
    let ls = command(&m.home, &s3.env()).args(["datum", "ls", "--json", "--store", &store]).output().unwrap();
    let all = json(&ls);
    for (name, data) in &files {
        let mine: Vec<&serde_json::Value> =
            all.as_array().unwrap().iter().filter(|d| d["path"] == name.as_str()).collect();
        assert_eq!(mine.len(), 1, "{name}: {} datums", mine.len());
        assert_eq!(mine[0]["checksums"]["sha256"], sha256(data), "{name}");
        let key = mine[0]["key"].as_str().unwrap();
        let stored = s3.object(BUCKET, key).unwrap();
        let got = match mine[0]["packed"]["offset"].as_u64() {
            Some(off) => stored[off as usize..off as usize + data.len()].to_vec(),
            None => stored,
        };
        assert_eq!(sha256(&got), sha256(data), "{name}: the stored bytes");
    }
    let show = ["datum", "show", "datum://faulty-best", "--json", "--store", &store];
    let best = json(&command(&m.home, &s3.env()).args(show).output().unwrap());
    assert_eq!(best["path"], "big-0.bin");
}

#[test]
fn a_clock_the_store_refuses_is_named_as_the_cause() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let data = bytes(5, 100_000);
    s3.put(BUCKET, "c/f.bin", &data);
    // At mount: the listing is refused, and the error says why.
    s3.inject(FaultKind::ClockSkew, "GET", "/bkt", 1000);
    let scratch = tempfile::tempdir().unwrap();
    let mnt = scratch.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = command(scratch.path(), &s3.env())
        .args(["mount", mnt.to_str().unwrap(), "--input", "data=s3://bkt/c/", "--cache-dir"])
        .arg(scratch.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("clock"), "{err}");
    assert!(!is_mounted(&mnt));
    // Mounted, then refused on read: EIO at once (no retries), the log saying why.
    s3.clear_faults();
    let m = TestMount::new(&["--input", "data=s3://bkt/c/"], &s3.env());
    s3.inject(FaultKind::ClockSkew, "GET", "/bkt/c/f.bin", 1000);
    let started = Instant::now();
    assert_eq!(fs::read(m.path("inputs/data/f.bin")).map_err(errno).err(), Some(libc::EIO));
    eprintln!("clock refused: EIO after {:?}", started.elapsed());
    assert!(m.log().contains("clock"), "{}", m.log());
}
