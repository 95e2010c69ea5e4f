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
