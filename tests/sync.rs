//! Outputs -> datums against a real S3 server on 127.0.0.1 (and the embedded local store):
//! byte-exact round trips, create-only puts, idempotent and resumable sync, metadata, aliases
//! under contention, the unmount guard and `datumfs run`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const BUCKET: &str = "store";

fn s3_store() -> (S3Server, String) {
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    (s3, format!("s3://{BUCKET}/team"))
}

/// path -> datum id from a sync report.
fn datums(report: &Value) -> BTreeMap<String, String> {
    report["datums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["path"].as_str().unwrap().to_string(), d["datum"].as_str().unwrap().to_string()))
        .collect()
}

/// The bytes of a datum as `datum ls --json` or `datum show --json` describe it: its object, or
/// its range of its pack.
fn stored_bytes(s3: &S3Server, d: &Value) -> Vec<u8> {
    let object = s3.object(BUCKET, d["key"].as_str().unwrap()).unwrap();
    match d.get("packed") {
        Some(p) if !p.is_null() => {
            let at = p["offset"].as_u64().unwrap() as usize;
            assert_eq!(p["pack_size"].as_u64().unwrap() as usize, object.len());
            object[at..at + d["size"].as_u64().unwrap() as usize].to_vec()
        }
        _ => object,
    }
}

/// The files of a tar, as any tar reader sees them.
fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), buf)
        })
        .collect()
}

fn input_dir(dir: &Path) -> String {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("train.csv"), b"a,b\n1,2\n").unwrap();
    format!("data=file://{}", src.display())
}

#[test]
fn outputs_round_trip_through_an_s3_store() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let mut m = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-rt"], &s3.env());
    let big = bytes(10, 40 << 20); // multipart
    let small = bytes(11, 1234);
    fs::write(m.path("outputs/model.bin"), &big).unwrap();
    fs::create_dir(m.path("outputs/eval")).unwrap();
    fs::write(m.path("outputs/eval/metrics.json"), &small).unwrap();
    fs::write(m.path("outputs/empty.txt"), b"").unwrap();
    // the job reads its input whole: the lineage records its checksums
    assert_eq!(fs::read(m.path("inputs/data/train.csv")).unwrap(), b"a,b\n1,2\n");
    std::thread::sleep(Duration::from_millis(300));

    let mp = m.mnt.to_str().unwrap().to_string();
    let first = json(&m.run(&["sync", &mp, "--json"]));
    let ids = datums(&first);
    assert_eq!(ids.keys().collect::<Vec<_>>(), vec!["empty.txt", "eval/metrics.json", "model.bin"]);
    // a big file is a plain object whose key shows the execution and the path; small ones go
    // up inside a pack, a plain tar under the execution's `.packs/`
    assert_eq!(s3.object(BUCKET, "team/data/exec-rt/model.bin").unwrap(), big);
    let packed: Vec<&Value> = first["datums"].as_array().unwrap().iter().filter(|d| d["path"] != "model.bin").collect();
    let pack_uri = packed[0]["object_uri"].as_str().unwrap();
    assert!(packed.iter().all(|d| d["object_uri"] == pack_uri), "{first}");
    let pack_key = pack_uri.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
    assert!(pack_key.starts_with("team/data/exec-rt/.packs/") && pack_key.ends_with(".tar"), "{pack_key}");
    let in_pack = untar(&s3.object(BUCKET, pack_key).unwrap());
    assert_eq!(in_pack.keys().collect::<Vec<_>>(), ["empty.txt", "eval/metrics.json"]);
    assert_eq!(in_pack["eval/metrics.json"], small);

    // a second sync with no change makes nothing new; a changed file becomes a new datum
    let second = json(&m.run(&["sync", &mp, "--json"]));
    assert_eq!(datums(&second), ids);
    assert!(second["datums"].as_array().unwrap().iter().all(|d| d["new"] == false));
    fs::write(m.path("outputs/eval/metrics.json"), b"changed").unwrap();
    let third = json(&m.run(&["sync", &mp, "--json"]));
    let changed = &datums(&third)["eval/metrics.json"];
    assert_ne!(changed, &ids["eval/metrics.json"]);
    assert_eq!(untar(&s3.object(BUCKET, pack_key).unwrap()), in_pack, "a pack is never overwritten");

    let env = s3.env();
    let home = m.home.clone();
    let cli = |args: &[&str]| command(&home, &env).args(args).arg("--store").arg(&store).output().unwrap();
    let shown = json(&cli(&["datum", "show", &ids["model.bin"], "--json"]));
    assert_eq!(shown["checksums"]["sha256"], sha256(&big));
    assert_eq!(shown["size"], big.len());
    assert_eq!(shown["execution"], "exec-rt");
    assert_eq!(shown["path"], "model.bin");
    let listed = json(&cli(&["datum", "ls", "--execution", "exec-rt", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    let lineage = json(&cli(&["lineage", &ids["model.bin"], "--json"]));
    let read = &lineage["produced_by"]["inputs"][0]["files_read"][0];
    assert_eq!(read["checksums"]["sha256"], sha256(b"a,b\n1,2\n"), "{lineage}");
    let got = scratch.path().join("got.bin");
    let out = cli(&["datum", "get", &ids["model.bin"], got.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&got).unwrap(), big);
    // a packed datum is shown with its place in the pack, and `get` gives its bytes alone
    let shown = json(&cli(&["datum", "show", &ids["eval/metrics.json"], "--json"]));
    assert_eq!(shown["object_uri"], pack_uri);
    assert_eq!(stored_bytes(&s3, &shown), small);
    for (path, want) in [("eval/metrics.json", &small[..]), ("empty.txt", b"")] {
        let out = cli(&["datum", "get", &ids[path], got.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(fs::read(&got).unwrap(), want, "{path}");
    }
    m.unmount();

    // a later job reads the datum back through the mount, byte for byte, and is a reader
    let back = format!("model={}", ids["model.bin"]);
    let m2 = TestMount::new(&["--input", &back, "--store", &store, "--execution", "exec-reader"], &s3.env());
    assert_eq!(fs::read(m2.path("inputs/model/model.bin")).unwrap(), big);
    let lineage = json(&cli(&["lineage", &ids["model.bin"], "--json"]));
    assert_eq!(lineage["read_by"][0]["execution"], "exec-reader", "{lineage}");
    let inputs: Value = serde_json::from_slice(&fs::read(m2.path("config/inputs.json")).unwrap()).unwrap();
    assert_eq!(inputs["model"]["files"][0]["checksums"]["sha256"], sha256(&big));
    drop(m2);

    // packed datums read back through a mount as files of their own, byte for byte
    let back: Vec<String> = ["eval/metrics.json", "empty.txt"].iter().map(|p| format!("packed={}", ids[*p])).collect();
    let mut args = vec!["--store", store.as_str(), "--execution", "exec-packed-reader"];
    for b in &back {
        args.extend(["--input", b.as_str()]);
    }
    let m3 = TestMount::new(&args, &s3.env());
    assert_eq!(fs::read(m3.path("inputs/packed/metrics.json")).unwrap(), small);
    assert_eq!(fs::read(m3.path("inputs/packed/empty.txt")).unwrap(), b"");
    assert_eq!(fs::metadata(m3.path("inputs/packed/metrics.json")).unwrap().len(), small.len() as u64);
    assert_eq!(pread(&m3.path("inputs/packed/metrics.json"), 100, 50).unwrap(), &small[100..150]);
}

#[test]
fn sync_never_overwrites_an_existing_object() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    s3.put(BUCKET, "team/data/exec-co/model.bin", b"someone else's bytes");
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    // Files of their own (small files would go into a pack, whose key is new).
    let args = ["--input", &input, "--store", &store, "--execution", "exec-co", "--pack-below", "0"];
    let m = TestMount::new(&args, &s3.env());
    let data = bytes(20, 100_000);
    fs::write(m.path("outputs/model.bin"), &data).unwrap();
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(s3.object(BUCKET, "team/data/exec-co/model.bin").unwrap(), b"someone else's bytes");
    let d = &report["datums"][0];
    let uri = d["object_uri"].as_str().unwrap();
    let key = uri.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
    assert_ne!(key, "team/data/exec-co/model.bin");
    assert!(key.starts_with("team/data/exec-co/") && key.ends_with("/model.bin"), "{key}");
    assert_eq!(s3.object(BUCKET, key).unwrap(), data);
}

#[test]
fn sync_killed_midway_finishes_on_rerun_with_every_file_once() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let args = ["--input", input.as_str(), "--store", store.as_str(), "--execution", "exec-kill", "--pack-below", "0"];
    let m = TestMount::new(&args, &s3.env());
    let files: Vec<(String, Vec<u8>)> = (0..24).map(|i| (format!("part-{i:02}.bin"), bytes(100 + i, 50_000))).collect();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    let m = crash_mid_sync(m, &s3, &args, "/data/", 4);
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(datums(&report).len(), files.len());
    assert_each_file_once(&s3, &m.home, &store, &files);
    // The execution's datums are the ones listed, each once, whether or not the killed sync
    // got to record them.
    let of_exec = json(
        &command(&m.home, &s3.env())
            .args(["datum", "ls", "--execution", "exec-kill", "--json", "--store", &store])
            .output()
            .unwrap(),
    );
    let mut ids: Vec<&str> = of_exec.as_array().unwrap().iter().map(|d| d["uri"].as_str().unwrap()).collect();
    ids.sort();
    let made = datums(&report);
    let mut want: Vec<&str> = made.values().map(String::as_str).collect();
    want.sort();
    assert_eq!(ids, want);
}

/// A mount of execution `execution` on a fresh S3 store, packing outputs below `pack_below`, with
/// the scratch dir its input lives in (None without FUSE). Bind all four: the mount goes first.
fn packing_mount(execution: &str, pack_below: &str) -> Option<(S3Server, String, tempfile::TempDir, TestMount)> {
    if !fuse_available() {
        return None;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let args =
        ["--input", input.as_str(), "--store", store.as_str(), "--execution", execution, "--pack-below", pack_below];
    let m = TestMount::new(&args, &s3.env());
    Some((s3, store, scratch, m))
}

#[test]
fn datum_ls_reads_one_index_record_per_sync_not_one_record_per_datum() {
    // Files of 20 KB and more are uploaded alone, smaller ones packed.
    let Some((s3, store, _scratch, m)) = packing_mount("exec-index", "20000") else { return };
    let files: Vec<(String, Vec<u8>)> =
        (0..40).map(|i| (format!("f-{i:02}.bin"), bytes(500 + i, if i % 4 == 0 { 100 } else { 30_000 }))).collect();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(datums(&report).len(), files.len());
    s3.clear_log();
    assert_each_file_once(&s3, &m.home, &store, &files);
    let record_gets = |what: &str| {
        s3.requests().iter().filter(|r| r.method == "GET" && r.path.contains(&format!("/.datumfs/{what}/"))).count()
    };
    assert_eq!(record_gets("datums"), 0, "datum ls read datum records one by one");
    assert!(record_gets("index") >= 1);
    s3.clear_log();
    let of_exec = json(
        &command(&m.home, &s3.env())
            .args(["datum", "ls", "--execution", "exec-index", "--json", "--store", &store])
            .output()
            .unwrap(),
    );
    let mut paths: Vec<&str> = of_exec.as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    assert_eq!(record_gets("datums"), 0, "datum ls --execution read datum records one by one");
}

/// Starts a sync with slow PUTs, kills the daemon with SIGKILL once `puts` PUTs to keys holding
/// `part` have started, and mounts the same execution again on the same cache.
fn crash_mid_sync(mut m: TestMount, s3: &S3Server, args: &[&str], part: &str, puts: usize) -> TestMount {
    s3.write_delay_ms.store(300, std::sync::atomic::Ordering::Relaxed);
    s3.clear_log();
    let mut sync = command(&m.home, &m.env).arg("sync").arg(&m.mnt).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.requests().iter().filter(|r| r.method == "PUT" && r.path.contains(part)).count() < puts {
        assert!(Instant::now() < deadline, "no uploads started");
        std::thread::sleep(Duration::from_millis(10));
    }
    m.crash();
    let _ = sync.wait();
    s3.write_delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    let (dir, cache) = (std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap()), m.cache.clone());
    drop(m);
    TestMount::with_cache(dir, cache, args, &s3.env())
}

#[test]
fn metadata_sidecars_jsonl_and_a_malformed_sidecar() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let m = TestMount::new(&["--input", &input], &[]);
    let o = m.path("outputs");
    fs::write(o.join("model.bin"), b"weights").unwrap();
    fs::write(o.join("model.bin.metadata.json"), r#"{"valohai.tags": ["prod"], "valohai.alias": "best", "acc": 0.9}"#)
        .unwrap();
    fs::write(o.join("b.txt"), b"b").unwrap();
    fs::write(o.join("bad.bin"), b"bad").unwrap();
    fs::write(o.join("bad.bin.metadata.json"), "{not json").unwrap();
    fs::write(
        o.join("valohai.metadata.jsonl"),
        "{\"file\": \"b.txt\", \"metadata\": {\"valohai.tags\": [\"t1\"], \"k\": 1}}\n\
         {\"file\": \"b.txt\", \"metadata\": {\"k\": 2}}\n",
    )
    .unwrap();
    let mp = m.mnt.to_str().unwrap().to_string();
    let out = m.run(&["sync", &mp, "--json"]);
    assert!(!out.status.success(), "a malformed sidecar must fail the sync");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.bin.metadata.json") && err.contains("malformed"), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = datums(&report);
    assert_eq!(ids.keys().collect::<Vec<_>>(), vec!["b.txt", "model.bin"], "sidecars are not datums");

    let show = |name: &str| json(&m.run(&["datum", "show", name, "--json"]));
    let best = show("datum://best");
    assert_eq!(best["id"].as_str().map(|i| format!("datum://{i}")).as_ref(), Some(&ids["model.bin"]));
    assert_eq!(best["tags"], serde_json::json!(["prod"]));
    assert_eq!(best["properties"]["acc"], 0.9);
    let tagged = json(&m.run(&["datum", "ls", "--tag", "prod", "--json"]));
    assert_eq!(tagged.as_array().unwrap().len(), 1, "{tagged}");
    assert_eq!(tagged[0]["path"], "model.bin");
    let b = show(&ids["b.txt"]);
    assert_eq!(b["tags"], serde_json::json!(["t1"]));
    assert_eq!(b["properties"]["k"], 2, "later jsonl lines override earlier ones");

    fs::write(o.join("bad.bin.metadata.json"), r#"{"fixed": true}"#).unwrap();
    let fixed = json(&m.run(&["sync", &mp, "--json"]));
    let again = datums(&fixed);
    assert_eq!(again.len(), 3);
    assert_eq!(again["model.bin"], ids["model.bin"], "the rerun only finishes what failed");
    assert_eq!(show(&again["bad.bin"])["properties"]["fixed"], true);
}

#[test]
fn alias_moves_race_without_losing_an_update() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let local_store = format!("file://{}", scratch.path().join("local-store").display());
    for store in [store.as_str(), local_store.as_str()] {
        let procs: Vec<_> = (0..6)
            .map(|i| {
                let f = scratch.path().join(format!("m{i}.bin"));
                fs::write(&f, bytes(i, 1000)).unwrap();
                command(&home, &s3.env())
                    .args(["push", "--alias", "champion", "--json", "--store", store])
                    .arg(&f)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut pushed = Vec::new();
        for p in procs {
            let out = p.wait_with_output().unwrap();
            pushed.push(json(&out)["datums"][0]["datum"].as_str().unwrap().to_string());
        }
        let shown = json(
            &command(&home, &s3.env())
                .args(["datum", "show", "champion", "--json", "--store", store])
                .output()
                .unwrap(),
        );
        let history = shown["resolved_from"]["history"].as_array().unwrap();
        assert_eq!(history.len(), 6, "every move is kept ({store}): {shown}");
        let mut moved: Vec<String> =
            history.iter().map(|h| format!("datum://{}", h["datum"].as_str().unwrap())).collect();
        moved.sort();
        pushed.sort();
        assert_eq!(moved, pushed);
        assert_eq!(
            format!("datum://{}", shown["id"].as_str().unwrap()),
            format!("datum://{}", history.last().unwrap()["datum"].as_str().unwrap()),
            "the alias points at its last move"
        );
    }
}

#[test]
fn unmount_refuses_unsynced_outputs_unless_told() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let mut m = TestMount::new(&["--input", &input], &[]);
    fs::write(m.path("outputs/a.bin"), bytes(5, 3000)).unwrap();
    let mp = m.mnt.to_str().unwrap().to_string();
    let out = m.run(&["unmount", &mp]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 unsynced file") && err.contains("3000 bytes") && err.contains("--sync"), "{err}");
    assert!(is_mounted(&m.mnt));
    let out = m.run(&["unmount", "--sync", &mp]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a.bin -> datum://"), "{stdout}");
    assert!(!is_mounted(&m.mnt));
    let _ = m.child.take().map(|mut c| c.wait());
    let listed = json(&m.run(&["datum", "ls", "--json"]));
    assert_eq!(listed[0]["path"], "a.bin");
}

#[test]
fn run_passes_the_exit_status_and_syncs_per_policy() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let home = scratch.path().join("home");
    let mnt = scratch.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let cache = scratch.path().join("cache");
    let run = |policy: &str, exec: &str, script: &str| {
        let out = command(&home, &[])
            .arg("run")
            .arg(&mnt)
            .args(["--input", &input, "--cache-dir", cache.to_str().unwrap(), "--execution", exec, "--sync-on", policy])
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap();
        assert!(!is_mounted(&mnt), "still mounted after run");
        out
    };
    let out = run("always", "exec-run-1", "cp \"$VH_INPUTS_DIR/data/train.csv\" \"$VH_OUTPUTS_DIR/copy.csv\"; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let listed =
        json(&command(&home, &[]).args(["datum", "ls", "--execution", "exec-run-1", "--json"]).output().unwrap());
    assert_eq!(listed[0]["path"], "copy.csv");
    assert_eq!(listed[0]["checksums"]["sha256"], sha256(b"a,b\n1,2\n"));
    let rec =
        json(&command(&home, &[]).args(["lineage", listed[0]["id"].as_str().unwrap(), "--json"]).output().unwrap());
    assert_eq!(rec["produced_by"]["command"][0], "sh", "{rec}");

    let out = run("success", "exec-run-2", "echo partial > \"$VH_OUTPUTS_DIR/p.txt\"; exit 1");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--execution exec-run-2"));
    let listed =
        json(&command(&home, &[]).args(["datum", "ls", "--execution", "exec-run-2", "--json"]).output().unwrap());
    assert_eq!(listed.as_array().unwrap().len(), 0, "nothing synced for a failed job with --sync-on success");
    // the outputs were kept: a mount with the same execution syncs them
    let out = run("always", "exec-run-2", "test -f \"$VH_OUTPUTS_DIR/p.txt\"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listed =
        json(&command(&home, &[]).args(["datum", "ls", "--execution", "exec-run-2", "--json"]).output().unwrap());
    assert_eq!(listed[0]["path"], "p.txt");
}

#[test]
fn datum_checksums_match_the_bytes_whatever_the_write_pattern() {
    if !fuse_available() {
        return;
    }
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let m = TestMount::new(&["--input", &input], &[]);
    let o = m.path("outputs");
    // sequential, in several writes
    let mut f = fs::File::create(o.join("seq.bin")).unwrap();
    for i in 0..5 {
        f.write_all(&bytes(i, 700_000)).unwrap();
    }
    drop(f);
    // written backwards
    let f = fs::File::create(o.join("backwards.bin")).unwrap();
    for i in (0..4u64).rev() {
        f.write_all_at(&bytes(10 + i, 100_000), i * 100_000).unwrap();
    }
    drop(f);
    // rewritten in the middle after a sequential write
    let mut f = fs::File::create(o.join("patched.bin")).unwrap();
    f.write_all(&bytes(20, 300_000)).unwrap();
    f.seek(SeekFrom::Start(1000)).unwrap();
    f.write_all(b"patch").unwrap();
    drop(f);
    // truncated to a non-zero size, then appended to
    fs::write(o.join("cut.bin"), bytes(21, 50_000)).unwrap();
    fs::OpenOptions::new().write(true).open(o.join("cut.bin")).unwrap().set_len(10_000).unwrap();
    fs::OpenOptions::new().append(true).open(o.join("cut.bin")).unwrap().write_all(b"more").unwrap();
    // replaced whole with O_TRUNC
    fs::write(o.join("again.bin"), bytes(22, 9_000)).unwrap();
    fs::write(o.join("again.bin"), bytes(23, 4_000)).unwrap();
    // written through a shared mapping
    let script = format!(
        "import mmap, os\nfd = os.open('{}', os.O_RDWR | os.O_CREAT, 0o644)\nos.ftruncate(fd, 65536)\n\
         m = mmap.mmap(fd, 65536)\nm[100:105] = b'mmap!'\nm.flush()\nm.close()\nos.close(fd)\n",
        o.join("mapped.bin").display()
    );
    let st = std::process::Command::new("python3").arg("-c").arg(script).status().unwrap();
    assert!(st.success());
    // big, written last: the sync comes while its close-time hash may still run, and takes
    // that hash over part way
    fs::write(o.join("big.bin"), bytes(24, 96 << 20)).unwrap();

    let first = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    // appending after a sync makes a new datum whose checksums cover the whole file
    fs::OpenOptions::new().append(true).open(o.join("seq.bin")).unwrap().write_all(b"tail").unwrap();
    let second = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    for report in [&first, &second] {
        for d in report["datums"].as_array().unwrap() {
            let path = d["path"].as_str().unwrap();
            let shown = json(&m.run(&["datum", "show", d["datum"].as_str().unwrap(), "--json"]));
            if report == &second || path != "seq.bin" {
                let want = fs::read(o.join(path)).unwrap();
                assert_eq!(shown["checksums"]["sha256"], sha256(&want), "{path}");
                let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(&want));
                assert_eq!(shown["checksums"]["md5"], md5, "{path}");
            }
        }
    }
    assert_eq!(datums(&second).len(), 7);
    assert_ne!(datums(&first)["seq.bin"], datums(&second)["seq.bin"]);
}

#[test]
fn a_datum_whose_bytes_differ_from_its_record_fails_with_eio() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let file = scratch.path().join("weights.bin");
    let data = bytes(30, 3 << 20);
    fs::write(&file, &data).unwrap();
    let pushed = json(&command(&home, &[]).args(["push", "--json"]).arg(&file).output().unwrap());
    let id = pushed["datums"][0]["datum"].as_str().unwrap().to_string();
    let shown = json(&command(&home, &[]).args(["datum", "show", &id, "--json"]).output().unwrap());
    // Damage the stored bytes behind the catalog's back (same size).
    let stored = Path::new("/").join(shown["key"].as_str().unwrap());
    let mut bad = data.clone();
    bad[2_000_000] ^= 0xff;
    fs::write(&stored, &bad).unwrap();

    let input = format!("w={id}");
    let store = format!("file://{}", home.join("store").display());
    let m = TestMount::new(&["--input", &input, "--store", &store], &[]);
    let err = fs::read(m.path("inputs/w/weights.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(m.path("inputs/w/weights.bin")).unwrap_err().raw_os_error(), Some(libc::EIO));
    std::thread::sleep(Duration::from_millis(200));
    assert!(m.log().contains("but its record says"), "{}", m.log());
}

#[test]
fn a_store_outage_mid_sync_loses_nothing_and_a_rerun_finishes() {
    if !fuse_available() {
        return;
    }
    let (mut s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let args = ["--input", &input, "--store", &store, "--execution", "exec-outage", "--pack-below", "0"];
    let m = TestMount::new(&args, &s3.env());
    let files: Vec<(String, Vec<u8>)> = (0..12).map(|i| (format!("f{i:02}.bin"), bytes(200 + i, 80_000))).collect();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    s3.write_delay_ms.store(300, std::sync::atomic::Ordering::Relaxed);
    s3.clear_log();
    let mut sync = command(&m.home, &m.env);
    sync.arg("sync").arg(&m.mnt);
    let sync = std::thread::spawn(move || sync.output());
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.requests().iter().filter(|r| r.method == "PUT" && r.path.contains("/data/")).count() < 3 {
        assert!(Instant::now() < deadline, "no uploads started");
        std::thread::sleep(Duration::from_millis(10));
    }
    s3.stop();
    let out = sync.join().unwrap().unwrap();
    assert!(!out.status.success(), "a sync that lost its store must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run `datumfs sync") || err.contains("sync again") || err.contains("nothing is lost"),
        "{err}"
    );
    s3.write_delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    s3.resume();
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(datums(&report).len(), files.len());
    let all = json(&command(&m.home, &s3.env()).args(["datum", "ls", "--json", "--store", &store]).output().unwrap());
    assert_eq!(all.as_array().unwrap().len(), files.len(), "every file exactly once: {all}");
    for d in all.as_array().unwrap() {
        let data = &files.iter().find(|(n, _)| d["path"] == n.as_str()).unwrap().1;
        assert_eq!(&s3.object(BUCKET, d["key"].as_str().unwrap()).unwrap(), data);
        assert_eq!(d["checksums"]["sha256"], sha256(data));
    }
}

/// Every output path is exactly one datum in the catalog, with the right bytes.
fn assert_each_file_once(s3: &S3Server, home: &Path, store: &str, files: &[(String, Vec<u8>)]) -> Vec<Value> {
    let all = json(&command(home, &s3.env()).args(["datum", "ls", "--json", "--store", store]).output().unwrap());
    let mut per_path: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in all.as_array().unwrap() {
        per_path.entry(d["path"].as_str().unwrap().to_string()).or_default().push(d.clone());
    }
    assert_eq!(per_path.len(), files.len());
    for (name, data) in files {
        let ds = &per_path[name];
        assert_eq!(ds.len(), 1, "{name} has {} datums", ds.len());
        assert_eq!(ds[0]["checksums"]["sha256"], sha256(data));
        assert_eq!(&stored_bytes(s3, &ds[0]), data, "{name}");
    }
    all.as_array().unwrap().clone()
}

#[test]
fn sync_killed_while_packing_finishes_on_rerun_with_every_file_once() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let args = ["--input", input.as_str(), "--store", store.as_str(), "--execution", "exec-pack-kill"];
    let m = TestMount::new(&args, &s3.env());
    // Just under the pack threshold: five packs of up to 16 files, each one PUT.
    let files: Vec<(String, Vec<u8>)> =
        (0..70).map(|i| (format!("shard-{}/item-{i:02}.bin", i % 3), bytes(300 + i, 1_000_000))).collect();
    for (name, data) in &files {
        let p = m.path(&format!("outputs/{name}"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    let m = crash_mid_sync(m, &s3, &args, "/.packs/", 3); // mid-pack
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(datums(&report).len(), files.len());
    let all = assert_each_file_once(&s3, &m.home, &store, &files);
    // Each pack is a tar holding exactly its datums' files.
    let mut packs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &all {
        packs.entry(d["key"].as_str().unwrap().to_string()).or_default().push(d["path"].as_str().unwrap().to_string());
    }
    assert!(packs.len() >= 3, "{packs:?}");
    for (key, mut paths) in packs {
        let content = untar(&s3.object(BUCKET, &key).unwrap());
        paths.sort();
        assert_eq!(content.keys().cloned().collect::<Vec<_>>(), paths, "{key}");
        for p in paths {
            assert_eq!(&content[&p], &files.iter().find(|(n, _)| *n == p).unwrap().1);
        }
    }
    // A second sync finds everything done.
    let again = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert!(again["datums"].as_array().unwrap().iter().all(|d| d["new"] == false), "{again}");
}

#[test]
fn a_pack_bigger_than_one_put_goes_up_in_parts_and_reads_back() {
    // Packing files up to 40 MB: one of 20 MB makes a pack above the single-PUT size.
    let Some((s3, store, _scratch, m)) = packing_mount("exec-big-pack", "40MB") else { return };
    let files: Vec<(String, Vec<u8>)> = vec![
        ("a.bin".into(), bytes(500, 1000)),
        ("big.bin".into(), bytes(501, 20_000_000)),
        ("c.bin".into(), bytes(502, 3)),
    ];
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(datums(&report).len(), files.len(), "{report}");
    let all = assert_each_file_once(&s3, &m.home, &store, &files);
    let big = all.iter().find(|d| d["path"] == "big.bin").unwrap();
    assert!(big["packed"].is_object(), "{big}");
    let key = big["key"].as_str().unwrap();
    assert!(s3.requests().iter().any(|r| r.method == "PUT" && r.path.contains(key) && r.query.contains("partNumber")));
    assert_eq!(untar(&s3.object(BUCKET, key).unwrap())["big.bin"], files[1].1);
}

#[test]
fn purging_a_packed_datum_blanks_its_bytes_and_leaves_its_neighbours_readable() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let m = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-purge"], &s3.env());
    let files: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("f{i}.bin"), bytes(400 + i, 20_000))).collect();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
    }
    let ids = datums(&json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"])));
    let (home, env) = (m.home.clone(), s3.env());
    let cli = |args: &[&str]| command(&home, &env).args(args).arg("--store").arg(&store).output().unwrap();
    let gone = json(&cli(&["datum", "show", &ids["f1.bin"], "--json"]));
    let pack_key = gone["key"].as_str().unwrap().to_string();
    // A job that mounted a neighbour before the purge reads on after it.
    let reader = TestMount::new(
        &["--store", &store, "--input", &format!("n={}", ids["f2.bin"]), "--execution", "exec-purge-reader"],
        &s3.env(),
    );

    let out = cli(&["datum", "purge", &ids["f1.bin"], "--yes", "--reason", "request #7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pack = s3.object(BUCKET, &pack_key).unwrap();
    let at = gone["packed"]["offset"].as_u64().unwrap() as usize;
    assert!(pack[at..at + 20_000].iter().all(|&b| b == 0), "the purged bytes are gone");
    assert!(!pack.windows(64).any(|w| w == &files[1].1[..64]), "no copy of them is left");
    let content = untar(&pack);
    assert_eq!(content.len(), 3, "still a valid tar with every member");
    assert_eq!(content["f0.bin"], files[0].1);

    let got = scratch.path().join("got.bin");
    let out = cli(&["datum", "get", &ids["f0.bin"], got.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&got).unwrap(), files[0].1);
    let out = cli(&["datum", "get", &ids["f1.bin"], got.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("request #7"), "{err}");
    assert_eq!(fs::read(reader.path("inputs/n/f2.bin")).unwrap(), files[2].1);
}

#[test]
fn a_packed_dataset_read_in_order_is_fetched_in_few_gets_and_a_damaged_member_fails_alone() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let m = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-pk-ds"], &s3.env());
    let files: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (format!("imgs/{i:04}.jpg"), bytes(500 + i, 3000 + (i as usize * 37) % 5000))).collect();
    fs::create_dir(m.path("outputs/imgs")).unwrap();
    let mut jsonl = String::new();
    for (name, data) in &files {
        fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
        jsonl += &format!(
            "{{\"file\": \"{name}\", \"metadata\": {{\"valohai.dataset-versions\": [\"dataset://imgs/v1\"]}}}}\n"
        );
    }
    fs::write(m.path("outputs/valohai.metadata.jsonl"), jsonl).unwrap();
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(report["versions"][0], "dataset://imgs/v1", "{report}");
    let shown = json(
        &command(&m.home, &s3.env())
            .args(["datum", "show", report["datums"][0]["datum"].as_str().unwrap(), "--json", "--store", &store])
            .output()
            .unwrap(),
    );
    let pack_key = shown["key"].as_str().unwrap().to_string();
    let victim = &report["datums"].as_array().unwrap().iter().find(|d| d["path"] == "imgs/0005.jpg").unwrap()["datum"];
    let victim = json(
        &command(&m.home, &s3.env())
            .args(["datum", "show", victim.as_str().unwrap(), "--json", "--store", &store])
            .output()
            .unwrap(),
    );
    drop(m);

    // A walk in listing order reads every file right, in far fewer GETs than files.
    let args = ["--store", store.as_str(), "--input", "d=dataset://imgs/v1", "--execution", "exec-pk-walk"];
    let reader = TestMount::new(&args, &s3.env());
    s3.clear_log();
    for (name, data) in &files {
        let got = fs::read(reader.path(&format!("inputs/d/{name}"))).unwrap();
        assert_eq!(&got, data, "{name}");
    }
    let gets = s3.requests().iter().filter(|r| r.method == "GET" && r.path.contains("/.packs/")).count();
    assert!(gets * 4 <= files.len(), "{gets} GETs for {} files", files.len());
    drop(reader);

    // A member whose bytes in the pack are damaged fails with EIO; its neighbours, fetched with
    // it in one GET, are still served right.
    let mut pack = s3.object(BUCKET, &pack_key).unwrap();
    let at = victim["packed"]["offset"].as_u64().unwrap() as usize;
    pack[at + 10] ^= 0xff;
    s3.put(BUCKET, &pack_key, &pack);
    let args = ["--store", store.as_str(), "--input", "d=dataset://imgs/v1", "--execution", "exec-pk-damaged"];
    let reader = TestMount::new(&args, &s3.env());
    for (i, (name, data)) in files.iter().enumerate().take(12) {
        let got = fs::read(reader.path(&format!("inputs/d/{name}")));
        if i == 5 {
            assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EIO), "{name}");
        } else {
            assert_eq!(&got.unwrap(), data, "{name}");
        }
    }
}

/// A sync killed (SIGKILL) at each crash point, then run again after a remount, leaves records
/// that match the bytes: each file exactly one datum whose stored bytes are the file's, the
/// execution record, the execution's listing and the store-wide listing naming exactly those
/// datums, the alias moved once to the right datum, the dataset version holding each file once.
#[test]
fn a_sync_killed_at_any_crash_point_finishes_on_rerun_with_records_matching_the_bytes() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let mut runs: Vec<(&str, u32)> = datumfs::crash::POINTS.iter().map(|p| (*p, 1)).collect();
    // Points passed once per file: also a later file.
    runs.extend([("upload-done", 3), ("datum-recorded", 3)]);
    for (n, (point, at)) in runs.into_iter().enumerate() {
        let exec = format!("exec-crash-{n}");
        let args =
            ["--input", input.as_str(), "--store", store.as_str(), "--execution", &exec, "--pack-below", "20000"];
        let mut crashing = s3.env();
        crashing.push((datumfs::crash::CRASH_AT_ENV.into(), format!("{point}:{at}")));
        let mut m = TestMount::new(&args, &crashing);
        // Five files uploaded alone (one with an alias), twelve packed; all in one dataset version.
        let mut files: Vec<(String, Vec<u8>)> =
            (0..5).map(|k| (format!("big-{k}.bin"), bytes(900 + k, 30_000))).collect();
        files.extend((0..12).map(|k| (format!("small/s{k:02}.txt"), bytes(950 + k, 200))));
        fs::create_dir(m.path("outputs/small")).unwrap();
        let version = format!("dataset://crash-{n}/v1");
        let mut jsonl = String::new();
        for (name, data) in &files {
            fs::write(m.path(&format!("outputs/{name}")), data).unwrap();
            let alias = if name == "big-0.bin" { format!(", \"valohai.alias\": \"best-{n}\"") } else { String::new() };
            jsonl += &format!(
                "{{\"file\": \"{name}\", \"metadata\": {{\"valohai.dataset-versions\": [\"{version}\"]{alias}}}}}\n"
            );
        }
        fs::write(m.path("outputs/valohai.metadata.jsonl"), jsonl).unwrap();
        let first = m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]);
        assert!(!first.status.success(), "the daemon did not die at {point}:{at}");
        let died = m.child.as_mut().unwrap().wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&died), Some(libc::SIGKILL), "{point}:{at}");
        m.crash();
        let (dir, cache) = (std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap()), m.cache.clone());
        drop(m);
        let m = TestMount::with_cache(dir, cache, &args, &s3.env());
        let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
        let ctx = format!("killed at {point}:{at}");
        assert_eq!(report["versions"][0].as_str(), Some(version.as_str()), "{ctx}: {report}");

        let by_path = assert_records_match_bytes(&s3, &m.home, &store, &exec, &files, &ctx);
        // The alias moved once, to big-0.bin's datum.
        let alias: Value =
            serde_json::from_slice(&s3.object(BUCKET, &format!("team/.datumfs/aliases/best-{n}.json")).unwrap())
                .unwrap();
        assert_eq!(alias["datum"], by_path["big-0.bin"]["id"], "{ctx}: {alias}");
        assert_eq!(alias["history"].as_array().unwrap().len(), 1, "{ctx}: {alias}");
        // The version holds each file once, as its datum.
        let shown = json(
            &command(&m.home, &s3.env())
                .args(["dataset", "show", &format!("crash-{n}/v1"), "--json", "--store", &store])
                .output()
                .unwrap(),
        );
        let in_version: BTreeMap<String, String> = shown["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap().to_string(), f["datum"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(in_version.len(), files.len(), "{ctx}: {shown}");
        for (path, datum) in &in_version {
            assert_eq!(datum.trim_start_matches("datum://"), by_path[path]["id"].as_str().unwrap(), "{ctx}: {path}");
        }
    }
}

#[test]
fn every_name_of_a_hard_link_is_a_datum_with_its_bytes_uploaded_once() {
    if !fuse_available() {
        return;
    }
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let input = input_dir(scratch.path());
    let m = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-links"], &s3.env());
    let o = m.path("outputs");
    let (model, other) = (bytes(900, 3_000_000), bytes(901, 2_000_000));
    fs::write(o.join("model.bin"), &model).unwrap();
    fs::create_dir_all(o.join("best")).unwrap();
    fs::hard_link(o.join("model.bin"), o.join("best/model.bin")).unwrap();
    fs::hard_link(o.join("model.bin"), o.join("latest.bin")).unwrap();
    fs::write(o.join("other.bin"), &other).unwrap();
    s3.clear_log();
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    let ids = datums(&report);
    assert_eq!(ids.len(), 4, "{report}");
    // Every name is a datum of its own, at its own key, holding the file's bytes.
    let (home, env) = (m.home.clone(), s3.env());
    let cli = |args: &[&str]| command(&home, &env).args(args).arg("--store").arg(&store).output().unwrap();
    let mut keys = std::collections::BTreeSet::new();
    for (path, data) in
        [("model.bin", &model), ("best/model.bin", &model), ("latest.bin", &model), ("other.bin", &other)]
    {
        let d = json(&cli(&["datum", "show", &ids[path], "--json"]));
        assert_eq!(d["checksums"]["sha256"], sha256(data), "{path}");
        assert_eq!(&stored_bytes(&s3, &d), data, "{path}");
        keys.insert(d["key"].as_str().unwrap().to_string());
    }
    assert_eq!(keys.len(), 4, "one object per datum: purging one name leaves the others");
    // The linked file's bytes went up once; its other names are copies made by the store.
    let puts: Vec<Logged> =
        s3.requests().into_iter().filter(|r| r.method == "PUT" && r.path.contains("/data/")).collect();
    let uploaded: u64 = puts.iter().filter(|r| r.copy_source.is_none()).map(|r| r.content_length).sum();
    assert_eq!(uploaded, (model.len() + other.len()) as u64, "{puts:?}");
    assert_eq!(puts.iter().filter(|r| r.copy_source.is_some()).count(), 2, "{puts:?}");
    // Purging one name leaves the others readable.
    let out = cli(&["datum", "purge", &ids["latest.bin"], "--yes", "--reason", "test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = scratch.path().join("got.bin");
    let out = cli(&["datum", "get", &ids["best/model.bin"], got.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&got).unwrap(), model);
}

/// `datumfs push` killed (SIGKILL) at each of its crash points, then run again with the same
/// `--execution`: each file exactly one datum holding its bytes, the execution record and both
/// listings naming exactly those, and nothing uploaded again that the killed run had stored.
#[test]
fn a_push_killed_at_any_crash_point_finishes_on_rerun_with_each_file_one_datum() {
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let src = scratch.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|k| {
            (
                if k % 2 == 0 { format!("f{k}.bin") } else { format!("sub/f{k}.bin") },
                bytes(700 + k, 20_000 + k as usize),
            )
        })
        .collect();
    for (name, data) in &files {
        fs::write(src.join(name), data).unwrap();
    }
    let runs = [
        ("upload-done", 1),
        ("upload-done", 5),
        ("datum-recorded", 1),
        ("datum-recorded", 6),
        ("index-written", 1),
        ("execution-recorded", 1),
    ];
    for (n, (point, at)) in runs.into_iter().enumerate() {
        let exec = format!("push-crash-{n}");
        let ctx = format!("killed at {point}:{at}");
        let push = |env: &[(String, String)]| {
            command(&home, env)
                .args(["push", src.to_str().unwrap(), "--json", "--execution", &exec, "--store", &store])
                .output()
                .unwrap()
        };
        let mut crashing = s3.env();
        crashing.push((datumfs::crash::CRASH_AT_ENV.into(), format!("{point}:{at}")));
        let killed = push(&crashing);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(libc::SIGKILL), "{ctx}");
        let data_dir = s3.root.path().join(BUCKET).join("team/data").join(&exec);
        let stored_before = objects_under(&data_dir);
        let rerun = push(&s3.env());
        assert!(rerun.status.success(), "{ctx}: {}", String::from_utf8_lossy(&rerun.stderr));
        let report = json(&rerun);
        assert_eq!(report["datums"].as_array().unwrap().len(), files.len(), "{ctx}: {report}");
        // One object per file, and what the killed run stored was never replaced.
        let stored_after = objects_under(&data_dir);
        let names: Vec<&String> = stored_after.keys().collect();
        assert_eq!(
            names,
            files.iter().map(|f| &f.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>(),
            "{ctx}"
        );
        for (name, modified) in &stored_before {
            assert_eq!(stored_after.get(name), Some(modified), "{ctx}: {name} was stored again");
        }

        assert_records_match_bytes(&s3, &home, &store, &exec, &files, &ctx);
    }
    // A push into an execution whose file changed since: the new bytes are a new datum, the
    // unchanged files keep theirs.
    let exec = "push-crash-0";
    let before = json(
        &command(&home, &s3.env())
            .args(["datum", "ls", "--json", "--execution", exec, "--store", &store])
            .output()
            .unwrap(),
    );
    fs::write(src.join("f0.bin"), b"changed").unwrap();
    let again = json(
        &command(&home, &s3.env())
            .args(["push", src.to_str().unwrap(), "--json", "--execution", exec, "--store", &store])
            .output()
            .unwrap(),
    );
    let after = json(
        &command(&home, &s3.env())
            .args(["datum", "ls", "--json", "--execution", exec, "--store", &store])
            .output()
            .unwrap(),
    );
    assert_eq!(after.as_array().unwrap().len(), before.as_array().unwrap().len() + 1, "{again}");
    let f0: Vec<&Value> = after.as_array().unwrap().iter().filter(|d| d["path"] == "f0.bin").collect();
    assert_eq!(f0.len(), 2, "{after}");
    assert!(f0.iter().any(|d| stored_bytes(&s3, d) == b"changed"), "{after}");
}

/// Relative path -> modification time of every object file below `dir` (the S3 server's).
fn objects_under(dir: &Path) -> BTreeMap<String, std::time::SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, e.metadata().unwrap().modified().unwrap());
            }
        }
    }
    out
}

/// Many syncs' index records are merged by a listing into one compacted record in the S3
/// store: the next `datum ls` reads that one record, not one per sync, and lists the same.
#[test]
fn datum_ls_compacts_the_index_records_of_many_pushes() {
    let (s3, store) = s3_store();
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    let n = datumfs::catalog::index::COMPACT_AT + 6;
    let mut pushed = std::collections::BTreeSet::new();
    for k in 0..n {
        let f = scratch.path().join(format!("f{k}.txt"));
        fs::write(&f, format!("file {k}")).unwrap();
        let v = json(
            &command(&home, &s3.env())
                .args(["push", f.to_str().unwrap(), "--json", "--store", &store])
                .output()
                .unwrap(),
        );
        pushed.insert(v["datums"][0]["datum"].as_str().unwrap().trim_start_matches("datum://").to_string());
    }
    let ls = || {
        s3.clear_log();
        let v = json(&command(&home, &s3.env()).args(["datum", "ls", "--json", "--store", &store]).output().unwrap());
        let ids: std::collections::BTreeSet<String> =
            v.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
        (ids, s3.requests().iter().filter(|r| r.is_object_get()).count())
    };
    let (first, first_gets) = ls();
    assert_eq!(first, pushed);
    assert!(first_gets >= n, "{first_gets} GETs: every index record read the first time");
    let (second, second_gets) = ls();
    assert_eq!(second, pushed, "the compacted record lists the same datums");
    assert!(second_gets <= 2, "{second_gets} GETs after compaction");
}

/// Checks execution `exec`'s records against `files` (path, bytes): each file exactly one datum
/// of the execution whose stored bytes are the file's, and the execution record and the
/// store-wide `datum ls` naming exactly those datums. Returns the datums by path.
fn assert_records_match_bytes(
    s3: &S3Server,
    home: &Path,
    store: &str,
    exec: &str,
    files: &[(String, Vec<u8>)],
    ctx: &str,
) -> BTreeMap<String, Value> {
    let ls = |extra: &[&str]| {
        let mut a = vec!["datum", "ls", "--json", "--store", store];
        a.extend(extra);
        json(&command(home, &s3.env()).args(&a).output().unwrap())
    };
    let of_exec: Vec<Value> = ls(&["--execution", exec]).as_array().unwrap().clone();
    let mut by_path: BTreeMap<String, Value> = BTreeMap::new();
    for d in &of_exec {
        let prev = by_path.insert(d["path"].as_str().unwrap().to_string(), d.clone());
        assert!(prev.is_none(), "{ctx}: {} is two datums", d["path"]);
    }
    assert_eq!(by_path.len(), files.len(), "{ctx}: {:?}", by_path.keys());
    for (name, data) in files {
        let d = &by_path[name];
        assert_eq!(d["checksums"]["sha256"], sha256(data), "{ctx}: {name}");
        assert_eq!(&stored_bytes(s3, d), data, "{ctx}: {name}");
    }
    let ids: std::collections::BTreeSet<String> =
        of_exec.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    let record: Value =
        serde_json::from_slice(&s3.object(BUCKET, &format!("team/.datumfs/executions/{exec}.json")).unwrap()).unwrap();
    let recorded: std::collections::BTreeSet<String> =
        record["outputs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(recorded, ids, "{ctx}: the execution record");
    let everywhere: std::collections::BTreeSet<String> = ls(&[])
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["execution"] == exec)
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(everywhere, ids, "{ctx}: datum ls");
    by_path
}
