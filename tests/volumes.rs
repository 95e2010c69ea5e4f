//! Volumes: a bucket prefix served at MOUNT/volumes/NAME/, through a real FUSE mount and the
//! loopback S3 server.

mod common;

use common::*;
use std::fs;

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
