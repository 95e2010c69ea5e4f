//! Volumes: a bucket prefix served at MOUNT/volumes/NAME/, through a real FUSE mount and the
//! loopback S3 server.

mod common;

use common::*;
use std::fs;
use std::io::Write;

#[test]
fn a_read_only_volume_serves_its_prefix_byte_exact_and_refuses_changes() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("vol");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"v1\n".to_vec()),
        ("sub/keep.txt", bytes(3, 70_000)),
        ("sub/deeper/big.bin", bytes(4, 3 << 20)),
    ];
    for (rel, data) in &files {
        s3.put("vol", &format!("proj/{rel}"), data);
    }
    s3.put("vol", "other/outside.txt", b"not in the volume");
    let m = TestMount::new(&["--volume", "work=s3://vol/proj/:ro", "--volume", "empty=s3://vol/none/"], &s3.env());
    let mut top: Vec<String> =
        fs::read_dir(m.path("")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["config", "inputs", "outputs", "volumes"]);
    let mut names: Vec<String> = fs::read_dir(m.path("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "work"]);
    for (rel, data) in &files {
        assert_eq!(&fs::read(m.path(&format!("volumes/work/{rel}"))).unwrap(), data, "{rel}");
    }
    assert!(!m.path("volumes/work/outside.txt").exists());
    let described: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("config/inputs.json")).unwrap()).unwrap();
    assert!(described.is_object() || described.is_array(), "{described}");
    assert_eq!(fs::read_dir(m.path("volumes/empty")).unwrap().count(), 0, "an empty prefix is an empty volume");
    let errno = |e: std::io::Error| e.raw_os_error();
    assert_eq!(fs::write(m.path("volumes/work/new.txt"), b"x").map_err(errno).err(), Some(Some(libc::EROFS)));
    let rewrite = fs::write(m.path("volumes/work/notes.txt"), b"x").map_err(errno).unwrap_err();
    assert!(matches!(rewrite, Some(libc::EROFS | libc::EACCES)), "{rewrite:?}");
    assert_eq!(s3.object("vol", "proj/notes.txt").unwrap(), b"v1\n");

    // A bad flag says which and why.
    let out = m.run(&["mount", m.dir.path().join("x").to_str().unwrap(), "--volume", "w=s3://vol/proj/:rx"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--volume") && err.contains("rx"), "{err}");
}

#[test]
fn push_and_pull_move_a_tree_byte_exact_and_a_rerun_moves_only_what_changed() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("vol");
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("tree");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"alpha\n".to_vec()),
        ("empty", Vec::new()),
        ("d/e/f.bin", bytes(7, 300_000)),
        ("big/model.bin", bytes(8, 20 << 20)), // above the single-PUT size: a multipart upload
    ];
    for (rel, data) in &files {
        fs::create_dir_all(src.join(rel).parent().unwrap()).unwrap();
        fs::write(src.join(rel), data).unwrap();
    }
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let home = scratch.path().join("home");
    let volume = |args: &[&str]| {
        let out = command(&home, &s3.env()).arg("volume").args(args).output().unwrap();
        assert!(out.status.success(), "volume {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let src_s = src.to_str().unwrap();
    let (first, err) = volume(&["push", src_s, "s3://vol/pushed/", "--json"]);
    assert_eq!(first["moved"].as_array().unwrap().len(), files.len(), "{first}");
    assert!(err.contains("link") && err.contains("symbolic link"), "{err}");
    for (rel, data) in &files {
        assert_eq!(s3.object("vol", &format!("pushed/{rel}")).as_ref(), Some(data), "{rel}");
    }
    // Again: nothing to do. One file changed: only it goes.
    let (again, _) = volume(&["push", src_s, "s3://vol/pushed/", "--json"]);
    assert_eq!(
        (again["moved"].as_array().unwrap().len(), again["unchanged"].as_array().unwrap().len()),
        (0, files.len())
    );
    fs::write(src.join("d/e/f.bin"), bytes(9, 300_000)).unwrap();
    let (changed, _) = volume(&["push", src_s, "s3://vol/pushed/", "--json"]);
    assert_eq!(changed["moved"], serde_json::json!(["d/e/f.bin"]));
    assert_eq!(s3.object("vol", "pushed/d/e/f.bin").unwrap(), bytes(9, 300_000));

    // Pull into a fresh directory: the same tree, byte for byte; again: nothing moves.
    let dst = scratch.path().join("pulled");
    let (pulled, _) = volume(&["pull", "s3://vol/pushed/", dst.to_str().unwrap(), "--json"]);
    assert_eq!(pulled["moved"].as_array().unwrap().len(), files.len(), "{pulled}");
    for (rel, data) in &files {
        let want = if *rel == "d/e/f.bin" { bytes(9, 300_000) } else { data.clone() };
        assert_eq!(fs::read(dst.join(rel)).unwrap(), want, "{rel}");
    }
    let (repull, _) = volume(&["pull", "s3://vol/pushed/", dst.to_str().unwrap(), "--json"]);
    assert_eq!(repull["moved"].as_array().unwrap().len(), 0, "{repull}");
    assert!(
        fs::read_dir(dst.join("big")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "a temporary file was left"
    );

    // A mount sees what was pushed.
    let m = TestMount::new(&["--volume", "w=s3://vol/pushed/"], &s3.env());
    assert_eq!(fs::read(m.path("volumes/w/big/model.bin")).unwrap(), bytes(8, 20 << 20));
}

#[test]
fn warm_fetches_a_volume_into_the_cache() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("vol");
    s3.put("vol", "w/a/one.bin", &bytes(11, 500_000));
    s3.put("vol", "w/two.bin", &bytes(12, 70_000));
    let m = TestMount::new(&["--volume", "w=s3://vol/w/"], &s3.env());
    let out = m.run(&["warm", m.path("volumes/w").to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], 2, "{report}");
    s3.clear_log();
    assert_eq!(fs::read(m.path("volumes/w/a/one.bin")).unwrap(), bytes(11, 500_000));
    assert!(s3.requests().iter().all(|r| !r.is_object_get()), "read from the store after warm");
}

/// Runs `datumfs volume sync` on `m`'s volume `name` with `extra` flags; its exit code and JSON
/// report.
fn volume_sync(m: &TestMount, name: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["volume", "sync", m.mnt.to_str().unwrap(), name, "--json"];
    args.extend_from_slice(extra);
    let out = m.run(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("volume sync {extra:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

fn keys(report: &serde_json::Value, list: &str) -> Vec<String> {
    let mut k: Vec<String> = report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .map(|v| v.get("key").unwrap_or(v).as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

fn errno_of(res: std::io::Result<()>) -> Option<i32> {
    res.err().and_then(|e| e.raw_os_error())
}

#[test]
fn an_rwd_volume_is_edited_in_place_and_synced_back_without_overwriting_others() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("vol");
    let big = bytes(11, 3 << 20);
    let seed: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"v1\n".to_vec()),
        ("sub/keep.txt", b"keep\n".to_vec()),
        ("big.bin", big.clone()),
        ("old.txt", b"gone\n".to_vec()),
        ("contended.txt", b"theirs-0\n".to_vec()),
        ("dir/a.txt", b"a\n".to_vec()),
        ("untouched/deep/x.txt", b"x\n".to_vec()),
    ];
    for (rel, data) in &seed {
        s3.put("vol", &format!("proj/{rel}"), data);
    }
    let mut m = TestMount::new(&["--volume", "work=s3://vol/proj/:rwd", "--execution", "vol-e1"], &s3.env());
    let v = |rel: &str| m.path(&format!("volumes/work/{rel}"));
    for (rel, data) in &seed {
        assert_eq!(&fs::read(v(rel)).unwrap(), data, "{rel} reads as the bucket has it");
    }
    // Edits of every kind.
    fs::OpenOptions::new().append(true).open(v("notes.txt")).unwrap().write_all(b"v2\n").unwrap();
    fs::write(v("sub/new.txt"), b"new\n").unwrap();
    {
        let f = fs::OpenOptions::new().write(true).open(v("big.bin")).unwrap();
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"PATCH", 100).unwrap();
    }
    let mut patched = big[..1 << 20].to_vec();
    patched[100..105].copy_from_slice(b"PATCH");
    fs::create_dir(v("moved")).unwrap();
    fs::rename(v("dir/a.txt"), v("moved/a.txt")).unwrap();
    fs::rename(v("sub/keep.txt"), v("sub/kept.txt")).unwrap();
    fs::remove_file(v("old.txt")).unwrap();
    fs::write(v("contended.txt"), b"mine\n").unwrap();
    assert_eq!(fs::metadata(v("big.bin")).unwrap().len(), 1 << 20);
    assert_eq!(fs::read(v("big.bin")).unwrap(), patched);
    assert_eq!(fs::read(v("moved/a.txt")).unwrap(), b"a\n", "a moved bucket file keeps its bytes");
    assert_eq!(fs::read_dir(v("dir")).unwrap().count(), 0);
    assert!(xattr(&v("moved/a.txt"), "user.datumfs.volume.origin").is_none(), "bookkeeping is not shown");
    // Someone else changes a key after the mount read it.
    s3.put_as_client("vol", "proj/contended.txt", b"theirs-1\n");

    let (code, dry) = volume_sync(&m, "work", &["--dry-run"]);
    assert_eq!(code, 3, "a dry run foresees the conflict: {dry}");
    assert_eq!(keys(&dry, "put"), ["big.bin", "moved/a.txt", "notes.txt", "sub/kept.txt", "sub/new.txt"]);
    assert_eq!(keys(&dry, "deleted"), ["dir/a.txt", "old.txt", "sub/keep.txt"]);
    assert_eq!(keys(&dry, "conflicts"), ["contended.txt"]);
    assert_eq!(s3.object("vol", "proj/notes.txt").unwrap(), b"v1\n", "a dry run changes nothing");
    assert!(s3.object("vol", "proj/old.txt").is_some());

    let out = m.run(&["unmount", m.mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("work"), "unmount with unsynced volume changes: {err}");

    let (code, report) = volume_sync(&m, "work", &[]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(keys(&report, "conflicts"), ["contended.txt"]);
    let c = &report["conflicts"][0];
    assert!(c["mount_saw"].is_string() && c["bucket_has"].is_string() && c["mount_saw"] != c["bucket_has"], "{c}");
    assert_eq!(s3.object("vol", "proj/contended.txt").unwrap(), b"theirs-1\n", "the other writer's change stays");
    assert_eq!(s3.object("vol", "proj/notes.txt").unwrap(), b"v1\nv2\n");
    assert_eq!(s3.object("vol", "proj/sub/new.txt").unwrap(), b"new\n");
    assert_eq!(s3.object("vol", "proj/big.bin").unwrap(), patched);
    assert_eq!(s3.object("vol", "proj/moved/a.txt").unwrap(), b"a\n");
    assert_eq!(s3.object("vol", "proj/sub/kept.txt").unwrap(), b"keep\n");
    for gone in ["dir/a.txt", "old.txt", "sub/keep.txt"] {
        assert!(s3.object("vol", &format!("proj/{gone}")).is_none(), "{gone} was deleted in the mount");
    }
    assert_eq!(s3.object("vol", "proj/untouched/deep/x.txt").unwrap(), b"x\n");
    for p in report["put"].as_array().unwrap() {
        let key = p["key"].as_str().unwrap();
        let data = s3.object("vol", &format!("proj/{key}")).unwrap();
        assert_eq!(p["sha256"].as_str().unwrap(), sha256(&data), "{key}: the report's sha256 is of the bytes put");
    }
    assert_eq!(fs::read(v("contended.txt")).unwrap(), b"mine\n", "the conflicting change is kept staged");
    let status = json(&m.run(&["status", m.mnt.to_str().unwrap(), "--json"]));
    let vol = &status["volumes"][0];
    assert_eq!(vol["conflicts"][0]["key"], "contended.txt", "status shows the conflict: {status}");
    assert_eq!(vol["to_put"], serde_json::json!(["contended.txt"]), "{status}");

    // What is synced is not put again; only the conflict is left.
    let (code, again) = volume_sync(&m, "work", &[]);
    assert_eq!((code, keys(&again, "put"), keys(&again, "deleted")), (3, vec![], vec![]), "{again}");
    let (code, forced) = volume_sync(&m, "work", &["--force"]);
    assert_eq!((code, keys(&forced, "put")), (0, vec!["contended.txt".to_string()]), "{forced}");
    assert_eq!(s3.object("vol", "proj/contended.txt").unwrap(), b"mine\n");

    // The execution record names what the syncs wrote, with checksums.
    let records: Vec<_> = walk_files(&m.home).into_iter().filter(|p| p.ends_with("executions/vol-e1.json")).collect();
    assert_eq!(records.len(), 1, "one execution record");
    let rec: serde_json::Value = serde_json::from_slice(&fs::read(&records[0]).unwrap()).unwrap();
    let written: Vec<&str> = rec["volume_writes"]
        .as_array()
        .unwrap_or_else(|| panic!("{rec}"))
        .iter()
        .map(|w| w["uri"].as_str().unwrap())
        .collect();
    assert!(written.contains(&"s3://vol/proj/notes.txt") && written.contains(&"s3://vol/proj/contended.txt"), "{rec}");
    let notes =
        rec["volume_writes"].as_array().unwrap().iter().find(|w| w["uri"] == "s3://vol/proj/notes.txt").unwrap();
    assert_eq!(notes["sha256"].as_str().unwrap(), sha256(b"v1\nv2\n"));

    // `lineage` of a key names the execution that last wrote it, and whether the bucket still
    // holds that version.
    let lin = json(&m.run(&["lineage", "s3://vol/proj/notes.txt", "--json"]));
    assert_eq!((lin["execution"].as_str(), lin["current"].as_bool()), (Some("vol-e1"), Some(true)), "{lin}");
    assert_eq!(lin["last_write"]["sha256"].as_str().unwrap(), sha256(b"v1\nv2\n"));
    let lin = json(&m.run(&["lineage", "s3://vol/proj/old.txt", "--json"]));
    assert_eq!((lin["last_write"]["deleted"].as_bool(), lin["current"].as_bool()), (Some(true), Some(true)), "{lin}");
    s3.put_as_client("vol", "proj/notes.txt", b"changed by someone else");
    let lin = json(&m.run(&["lineage", "s3://vol/proj/notes.txt", "--json"]));
    assert_eq!(lin["current"].as_bool(), Some(false), "a later change outside datumfs shows: {lin}");
    let out = m.run(&["lineage", "s3://vol/proj/untouched/deep/x.txt"]);
    assert_eq!(out.status.code(), Some(1), "no sync wrote it");
    s3.put_as_client("vol", "proj/notes.txt", b"v1\nv2\n");

    let staged = m.cache.join("volumes").join("vol-e1").join("work");
    assert!(staged.exists());
    m.unmount();
    assert!(!staged.exists(), "with nothing left to sync, the staged tree goes");

    let m2 = TestMount::new(&["--volume", "work=s3://vol/proj/"], &s3.env());
    assert_eq!(fs::read(m2.path("volumes/work/sub/new.txt")).unwrap(), b"new\n", "another mount sees the sync");
    assert_eq!(fs::read(m2.path("volumes/work/big.bin")).unwrap(), patched);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_rw_volume_changes_and_adds_files_but_never_deletes_a_bucket_key() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket("vol");
    s3.put("vol", "p/a.txt", b"a\n");
    s3.put("vol", "p/d/b.txt", b"b\n");
    let m = TestMount::new(&["--volume", "w=s3://vol/p/:rw"], &s3.env());
    let v = |rel: &str| m.path(&format!("volumes/w/{rel}"));
    assert_eq!(errno_of(fs::remove_file(v("a.txt"))), Some(libc::EPERM), "rw deletes no bucket key");
    assert_eq!(errno_of(fs::rename(v("a.txt"), v("c.txt"))), Some(libc::EPERM), "nor moves one away");
    assert_eq!(errno_of(fs::rename(v("d"), v("e"))), Some(libc::EPERM), "nor a directory holding some");
    assert_eq!(fs::read(v("a.txt")).unwrap(), b"a\n", "a refused change leaves the file");
    fs::write(v("a.txt"), b"A\n").unwrap();
    fs::write(v("scratch.txt"), b"tmp").unwrap();
    fs::rename(v("scratch.txt"), v("kept.txt")).unwrap();
    fs::write(v("tmp.txt"), b"t").unwrap();
    fs::remove_file(v("tmp.txt")).unwrap();
    fs::write(v("new.txt"), b"n").unwrap();
    fs::rename(v("new.txt"), v("d/b.txt")).unwrap(); // over a bucket key: a change, allowed
    let status = json(&m.run(&["status", m.mnt.to_str().unwrap(), "--json"]));
    let vol = &status["volumes"][0];
    assert_eq!((vol["name"].as_str(), vol["mode"].as_str()), (Some("w"), Some("rw")), "{status}");
    let mut to_put: Vec<&str> = vol["to_put"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    to_put.sort();
    assert_eq!(to_put, ["a.txt", "d/b.txt", "kept.txt"], "{status}");
    // `sync --volumes` syncs outputs and every writable volume.
    let all = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--volumes", "--json"]));
    assert!(all["outputs"].is_object(), "{all}");
    let report = all["volumes"][0].clone();
    assert_eq!(keys(&report, "put"), ["a.txt", "d/b.txt", "kept.txt"]);
    assert_eq!(s3.object("vol", "p/a.txt").unwrap(), b"A\n");
    assert_eq!(s3.object("vol", "p/d/b.txt").unwrap(), b"n");
    assert_eq!(s3.object("vol", "p/kept.txt").unwrap(), b"tmp");
    assert!(s3.object("vol", "p/scratch.txt").is_none() && s3.object("vol", "p/tmp.txt").is_none());
    // A key the sync put is the bucket's now: rw keeps it too.
    assert_eq!(errno_of(fs::remove_file(v("kept.txt"))), Some(libc::EPERM));
}

#[test]
fn volume_changes_survive_a_crash_and_a_sync_killed_midway_finishes_on_rerun() {
    if !fuse_available() {
        return;
    }
    // Every crash point of a volume sync, each passed after some of its work is done.
    for point in ["volume-put:5", "volume-marked:5", "volume-deleted:1"] {
        sync_killed_at(point);
    }
}

fn sync_killed_at(point: &str) {
    let s3 = S3Server::start();
    s3.bucket("vol");
    for i in 0..12 {
        s3.put("vol", &format!("p/f{i:02}.txt"), format!("old {i}\n").as_bytes());
    }
    let args = ["--volume", "w=s3://vol/p/:rwd", "--execution", "vol-crash"];
    let mut env = s3.env();
    env.push(("DATUMFS_CRASH_AT".into(), point.into()));
    let m = TestMount::new(&args, &env);
    for i in 0..12 {
        fs::write(m.path(&format!("volumes/w/f{i:02}.txt")), format!("new {i}\n")).unwrap();
    }
    fs::write(m.path("volumes/w/added.bin"), bytes(3, 200_000)).unwrap();
    fs::remove_file(m.path("volumes/w/f11.txt")).unwrap();
    let out = m.run(&["volume", "sync", m.mnt.to_str().unwrap(), "w"]);
    assert!(!out.status.success(), "{point}: the daemon was killed mid-sync");
    let (dir, cache) = {
        let mut m = m;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while m.child.as_mut().unwrap().try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "{point}: the daemon did not die there");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        m.crash();
        let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap());
        (dir, m.cache.clone())
    };
    let m = TestMount::with_cache(dir, cache, &args, &s3.env());
    for i in 0..11 {
        let rel = format!("volumes/w/f{i:02}.txt");
        assert_eq!(fs::read_to_string(m.path(&rel)).unwrap(), format!("new {i}\n"), "{point}: {rel} is still changed");
    }
    assert!(!m.path("volumes/w/f11.txt").exists(), "{point}: a deletion survives the crash");
    let (code, report) = volume_sync(&m, "w", &[]);
    assert_eq!(code, 0, "{point}: the rerun finishes without taking its own puts for conflicts: {report}");
    for i in 0..11 {
        let key = format!("p/f{i:02}.txt");
        assert_eq!(s3.object("vol", &key).unwrap(), format!("new {i}\n").as_bytes(), "{point}: {key}");
    }
    assert_eq!(s3.object("vol", "p/added.bin").unwrap(), bytes(3, 200_000));
    assert!(s3.object("vol", "p/f11.txt").is_none());
    let (code, again) = volume_sync(&m, "w", &[]);
    assert_eq!((code, keys(&again, "put"), keys(&again, "deleted")), (0, vec![], vec![]), "{point}: {again}");
}
