//! Datasets against real FUSE mounts, the embedded local store and a real S3 server on
//! 127.0.0.1: versions from the command line and from a job's sync, alias promotion and
//! pinning, purge and everything that references a purged datum, races on one alias, malformed
//! records, and a 100,000-file version through the mount.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

const BUCKET: &str = "store";

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A home with its own local store, and a way to run datumfs there.
struct Catalog {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Catalog {
    fn new(env: &[(String, String)]) -> Self {
        Self { dir: tempfile::tempdir().unwrap(), env: env.to_vec() }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn run(&self, args: &[&str]) -> Output {
        command(&self.home(), &self.env).args(args).output().unwrap()
    }

    /// Pushes files with these contents; returns their datum ids.
    fn push(&self, files: &[(&str, &[u8])]) -> Vec<String> {
        let src = self.dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        files
            .iter()
            .map(|(name, data)| {
                let p = src.join(name);
                fs::write(&p, data).unwrap();
                let v = json(&self.run(&["push", p.to_str().unwrap(), "--json"]));
                v["datums"][0]["datum"].as_str().unwrap().trim_start_matches("datum://").to_string()
            })
            .collect()
    }

    /// Mounts `uri` as input `d` in the foreground with this catalog's store.
    fn mount(&self, uri: &str) -> TestMount {
        let mut env = self.env.clone();
        env.push(("DATUMFS_STORE".into(), format!("file://{}", self.home().join("store").display())));
        TestMount::new(&["--input", &format!("d={uri}")], &env)
    }
}

/// Relative path -> bytes of every file under `dir`.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn versions_from_the_command_line_aliases_and_pinning() {
    if !fuse_available() {
        return;
    }
    let c = Catalog::new(&[]);
    let (a, b, x) = (bytes(1, 150_000), bytes(2, 70_000), bytes(3, 3_000_000));
    let ids = c.push(&[("a.bin", &a), ("b.bin", &b), ("x.bin", &x)]);

    let e = failed(&c.run(&["dataset", "version", "create", "imgs/v1", "--add", &ids[0]]));
    assert!(e.contains("dataset imgs: no such dataset"), "{e}");
    json(&c.run(&["dataset", "create", "imgs", "--json"]));
    assert!(failed(&c.run(&["dataset", "create", "imgs"])).contains("already exists"));
    let v1 = json(&c.run(&["dataset", "version", "create", "imgs/v1", "--add", &ids[0], "--add", &ids[1], "--json"]));
    assert_eq!(v1["files"].as_array().unwrap().len(), 2);
    assert_eq!(v1["files"][0]["checksums"]["sha256"], sha256(&a));
    // A version never changes.
    let e = failed(&c.run(&["dataset", "version", "create", "imgs/v1", "--add", &ids[2]]));
    assert!(e.contains("already exists"), "{e}");
    // v2 = v1 + x.bin + a local file pushed on the way - b.bin; v1 is untouched.
    let local = c.dir.path().join("notes.txt");
    fs::write(&local, b"fresh notes").unwrap();
    let v2 = json(&c.run(&[
        "dataset",
        "version",
        "create",
        "imgs/v2",
        "--from",
        "imgs/v1",
        "--add",
        &format!("datum://{}", ids[2]),
        "--add",
        local.to_str().unwrap(),
        "--remove",
        "b.bin",
        "--json",
    ]));
    let paths: Vec<&str> = v2["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["a.bin", "notes.txt", "x.bin"]);
    assert_eq!(v2["from"], "imgs/v1");
    let shown = json(&c.run(&["dataset", "show", "imgs/v1", "--json"]));
    assert_eq!(shown["files"].as_array().unwrap().len(), 2, "v1 changed: {shown}");
    let e = failed(&c.run(&["dataset", "version", "create", "imgs/v3", "--from", "imgs/v1", "--remove", "zzz"]));
    assert!(e.contains("zzz"), "{e}");
    // A path cannot be a file and a directory at once.
    let nested = c.dir.path().join("nested/a.bin");
    fs::create_dir_all(&nested).unwrap();
    fs::write(nested.join("x"), b"x").unwrap();
    let nested = c.dir.path().join("nested");
    let e = failed(&c.run(&[
        "dataset",
        "version",
        "create",
        "imgs/v3",
        "--from",
        "imgs/v1",
        "--add",
        nested.to_str().unwrap(),
    ]));
    assert!(e.contains("both a file and the directory"), "{e}");

    // Aliases: promote, and the history is kept; an alias cannot shadow a version.
    json(&c.run(&["dataset", "alias", "set", "imgs", "production", "v1", "--json"]));
    assert!(failed(&c.run(&["dataset", "alias", "set", "imgs", "v2", "v1"])).contains("version of that name"));
    assert!(failed(&c.run(&["dataset", "alias", "set", "imgs", "staging", "v9"])).contains("imgs/v9"));

    let mut m1 = c.mount("dataset://imgs/production");
    let want1: BTreeMap<String, Vec<u8>> = [("a.bin".to_string(), a.clone()), ("b.bin".to_string(), b.clone())].into();
    assert_eq!(tree(&m1.path("inputs/d")), want1);
    let inputs: Value = serde_json::from_slice(&fs::read(m1.path("config/inputs.json")).unwrap()).unwrap();
    let files = inputs["d"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|f| f["checksums"]["md5"].is_string() && f["checksums"]["sha256"].is_string()));

    // Moving the alias does not change a running mount; a new mount sees the new version.
    json(&c.run(&["dataset", "alias", "set", "imgs", "production", "v2", "--json"]));
    assert_eq!(tree(&m1.path("inputs/d")), want1);
    let m2 = c.mount("dataset://imgs/production");
    let want2: BTreeMap<String, Vec<u8>> = [
        ("a.bin".to_string(), a.clone()),
        ("notes.txt".to_string(), b"fresh notes".to_vec()),
        ("x.bin".to_string(), x.clone()),
    ]
    .into();
    assert_eq!(tree(&m2.path("inputs/d")), want2);
    let ds = json(&c.run(&["dataset", "show", "imgs", "--json"]));
    let alias = &ds["aliases"][0];
    assert_eq!(alias["version"], "v2");
    let moves: Vec<&str> =
        alias["history"].as_array().unwrap().iter().map(|h| h["version"].as_str().unwrap()).collect();
    assert_eq!(moves, ["v1", "v2"]);

    // The execution record names the version it read (not the alias).
    let exec =
        json(&m1.run(&["status", "--json", m1.mnt.to_str().unwrap()]))["execution"]["id"].as_str().unwrap().to_string();
    m1.unmount();
    let rec: Value =
        serde_json::from_slice(&fs::read(c.home().join(format!("store/.datumfs/executions/{exec}.json"))).unwrap())
            .unwrap();
    assert_eq!(rec["inputs"][0]["datasets"][0], "dataset://imgs/v1", "{rec}");
    assert_eq!(rec["inputs"][0]["datums"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_job_publishes_a_version_when_its_whole_sync_completes() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let store = format!("s3://{BUCKET}/team");
    let c = Catalog::new(&s3.env());
    let src = c.dir.path().join("in");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("seed.txt"), b"seed").unwrap();
    let input = format!("seed=file://{}", src.display());
    let m = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-ds1"], &s3.env());
    let mp = m.mnt.to_str().unwrap().to_string();
    let (p, q) = (bytes(20, 2_000_000), bytes(21, 5000));
    fs::create_dir_all(m.path("outputs/parts")).unwrap();
    fs::write(m.path("outputs/parts/p.bin"), &p).unwrap();
    fs::write(m.path("outputs/q.bin"), &q).unwrap();
    fs::write(m.path("outputs/other.bin"), b"not in the dataset").unwrap();
    fs::write(
        m.path("outputs/valohai.metadata.jsonl"),
        "{\"file\": \"parts/p.bin\", \"metadata\": {\"valohai.dataset-versions\": [\"dataset://feats/v1\"]}}\n\
         {\"file\": \"q.bin\", \"metadata\": {\"valohai.dataset-versions\": [{\"uri\": \"dataset://feats/v1\"}]}}\n",
    )
    .unwrap();
    // One file fails (malformed sidecar): the sync is incomplete and publishes no version.
    fs::write(m.path("outputs/other.bin.metadata.json"), b"{oops").unwrap();
    let out = m.run(&["sync", &mp, "--json"]);
    assert!(!out.status.success());
    let e = failed(&c.run(&["dataset", "show", "feats/v1", "--store", &store]));
    assert!(e.contains("no such dataset") || e.contains("no such version"), "{e}");
    fs::write(m.path("outputs/other.bin.metadata.json"), b"{}").unwrap();
    let report = json(&m.run(&["sync", &mp, "--json"]));
    assert_eq!(report["versions"][0], "dataset://feats/v1", "{report}");
    let shown = json(&c.run(&["dataset", "show", "feats/v1", "--json", "--store", &store]));
    let paths: Vec<&str> = shown["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["parts/p.bin", "q.bin"]);
    assert_eq!(shown["execution"], "exec-ds1");
    assert_eq!(shown["files"][0]["checksums"]["sha256"], sha256(&p));

    // Another execution may not write into that version.
    let m2 = TestMount::new(&["--input", &input, "--store", &store, "--execution", "exec-ds2"], &s3.env());
    fs::write(m2.path("outputs/r.bin"), b"late").unwrap();
    fs::write(m2.path("outputs/r.bin.metadata.json"), br#"{"valohai.dataset-versions": ["dataset://feats/v1"]}"#)
        .unwrap();
    let out = m2.run(&["sync", m2.mnt.to_str().unwrap(), "--json"]);
    let e = failed(&out);
    assert!(e.contains("dataset://feats/v1") && e.contains("exec-ds1"), "{e}");
    let shown = json(&c.run(&["dataset", "show", "feats/v1", "--json", "--store", &store]));
    assert_eq!(shown["files"].as_array().unwrap().len(), 2, "the version changed: {shown}");

    // The version mounts byte-exact from S3, laid out by path.
    let mut env = s3.env();
    env.push(("DATUMFS_STORE".into(), store.clone()));
    let reader = TestMount::new(&["--input", "f=dataset://feats/v1"], &env);
    assert_eq!(fs::read(reader.path("inputs/f/parts/p.bin")).unwrap(), p);
    assert_eq!(fs::read(reader.path("inputs/f/q.bin")).unwrap(), q);
}

#[test]
fn purge_deletes_the_bytes_and_every_reference_says_purged() {
    if !fuse_available() {
        return;
    }
    let c = Catalog::new(&[]);
    let (keep, gone) = (bytes(30, 4000), bytes(31, 5000));
    let ids = c.push(&[("keep.bin", &keep), ("gone.bin", &gone)]);
    json(&c.run(&["dataset", "create", "pii", "--json"]));
    json(&c.run(&["dataset", "version", "create", "pii/v1", "--add", &ids[0], "--add", &ids[1], "--json"]));
    let object = json(&c.run(&["datum", "show", &ids[1], "--json"]))["object_uri"].as_str().unwrap().to_string();
    let object = PathBuf::from(object.trim_start_matches("file://"));
    assert!(object.exists());

    // A job that mounted the version before the purge.
    let before = c.mount("dataset://pii/v1");
    // Without a terminal, only --yes purges.
    let e = failed(&c.run(&["datum", "purge", &ids[1]]));
    assert!(e.contains("--yes"), "{e}");
    assert!(object.exists());
    let t = json(&c.run(&["datum", "purge", &ids[1], "--yes", "--reason", "deletion request #42", "--json"]));
    assert_eq!(t["reason"], "deletion request #42");
    assert!(!object.exists(), "the bytes are still there");

    let shown = json(&c.run(&["datum", "show", &ids[1], "--json"]));
    assert_eq!(shown["purged"]["reason"], "deletion request #42");
    // The running mount still lists it, but reading it fails and the log says why.
    assert_eq!(fs::read(before.path("inputs/d/keep.bin")).unwrap(), keep);
    assert!(fs::read(before.path("inputs/d/gone.bin")).is_err());
    let log = fs::read_to_string(before.cache.join("datumfs.log")).unwrap();
    assert!(log.contains("gone.bin") && log.contains("deletion request #42"), "{log}");
    let e = failed(&c.run(&["datum", "get", &ids[1], c.dir.path().to_str().unwrap()]));
    assert!(e.contains("purged") && e.contains("deletion request #42"), "{e}");
    let lineage = json(&c.run(&["lineage", &ids[1], "--json"]));
    assert!(lineage["purged"]["purged_at"].is_string());
    let version = json(&c.run(&["dataset", "show", "pii/v1", "--json"]));
    let marked: Vec<bool> = version["files"].as_array().unwrap().iter().map(|f| f["purged"].is_object()).collect();
    assert_eq!(marked, [true, false], "{version}");
    // A new version cannot take it in.
    let e = failed(&c.run(&["dataset", "version", "create", "pii/v2", "--add", &ids[1]]));
    assert!(e.contains("purged"), "{e}");

    // Mounting the version serves what is left, and the log says what was left out and why.
    let m = c.mount("dataset://pii/v1");
    assert_eq!(tree(&m.path("inputs/d")), BTreeMap::from([("keep.bin".to_string(), keep.clone())]));
    assert!(m.log().contains("purged") || fs::read_to_string(m.cache.join("datumfs.log")).unwrap().contains("purged"));
    // Mounting the datum itself fails with the purge, not a bare "not found".
    let mut env = c.env.clone();
    env.push(("DATUMFS_STORE".into(), format!("file://{}", c.home().join("store").display())));
    let mnt = c.dir.path().join("mnt-purged");
    fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    let out = command(&c.home(), &env)
        .args(["mount", mnt.to_str().unwrap(), "--cache-dir"])
        .arg(c.dir.path().join("cache2"))
        .args(["--input", &format!("d=datum://{}", ids[1])])
        .output()
        .unwrap();
    let e = failed(&out);
    assert!(e.contains("purged") && e.contains("deletion request #42"), "{e}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn racing_version_creations_and_alias_moves_lose_nothing() {
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    let store = format!("s3://{BUCKET}/race");
    let c = Catalog::new(&s3.env());
    let src = c.dir.path().join("f.bin");
    fs::write(&src, b"one file").unwrap();
    let id = json(&c.run(&["push", src.to_str().unwrap(), "--json", "--store", &store]))["datums"][0]["datum"]
        .as_str()
        .unwrap()
        .to_string();
    json(&c.run(&["dataset", "create", "race", "--json", "--store", &store]));
    let spawn = |args: Vec<String>| {
        command(&c.home(), &c.env)
            .args(&args)
            .args(["--store", &store])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Six processes each make a version and move one alias to it.
    let procs: Vec<_> = (0..6)
        .map(|i| {
            let script = format!(
                "{bin} dataset version create race/v{i} --add {id} --store {store} && \
                 {bin} dataset alias set race latest v{i} --store {store}",
                bin = bin()
            );
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c").arg(script).env("DATUMFS_HOME", c.home()).env("HOME", c.home());
            for (k, v) in &c.env {
                cmd.env(k, v);
            }
            cmd.output().unwrap()
        })
        .collect();
    for (i, out) in procs.iter().enumerate() {
        assert!(out.status.success(), "process {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ds = json(&c.run(&["dataset", "show", "race", "--json", "--store", &store]));
    assert_eq!(ds["versions"].as_array().unwrap().len(), 6, "{ds}");
    // (the loop above ran them one after another; now really at once)
    let racers: Vec<_> = (0..6)
        .map(|i| {
            spawn(vec!["dataset".into(), "alias".into(), "set".into(), "race".into(), "hot".into(), format!("v{i}")])
        })
        .collect();
    for r in racers {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ds = json(&c.run(&["dataset", "show", "race", "--json", "--store", &store]));
    let hot = ds["aliases"].as_array().unwrap().iter().find(|a| a["alias"] == "hot").unwrap();
    let mut moved: Vec<&str> =
        hot["history"].as_array().unwrap().iter().map(|h| h["version"].as_str().unwrap()).collect();
    assert_eq!(hot["version"], *moved.last().unwrap(), "the alias points at its last move");
    moved.sort();
    assert_eq!(moved, ["v0", "v1", "v2", "v3", "v4", "v5"], "a move was lost");
    // Two processes creating one version: exactly one wins, the other is told.
    let both: Vec<_> = (0..2)
        .map(|_| {
            spawn(vec![
                "dataset".into(),
                "version".into(),
                "create".into(),
                "race/same".into(),
                "--add".into(),
                id.clone(),
            ])
        })
        .map(|p| p.wait_with_output().unwrap())
        .collect();
    let wins = both.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        wins,
        1,
        "{:?}",
        both.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect::<Vec<_>>()
    );
    let loser = both.iter().find(|o| !o.status.success()).unwrap();
    assert!(String::from_utf8_lossy(&loser.stderr).contains("already exists"));
}

#[test]
fn malformed_or_missing_catalog_records_give_clear_errors() {
    if !fuse_available() {
        return;
    }
    let c = Catalog::new(&[]);
    let ids = c.push(&[("a.bin", b"aaa")]);
    json(&c.run(&["dataset", "create", "broken", "--json"]));
    json(&c.run(&["dataset", "version", "create", "broken/v1", "--add", &ids[0], "--json"]));
    let record = c.home().join("store/.datumfs/datasets/broken/versions/v1.json");
    fs::write(&record, b"{\"dataset\": \"broken\", \"files\": [").unwrap();
    let e = failed(&c.run(&["dataset", "show", "broken/v1"]));
    assert!(e.contains("malformed") && e.contains("versions/v1.json"), "{e}");
    let mut env = c.env.clone();
    env.push(("DATUMFS_STORE".into(), format!("file://{}", c.home().join("store").display())));
    let mnt = c.dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    for (uri, want) in [
        ("dataset://broken/v1", "malformed"),
        ("dataset://nothere/v1", "no such dataset"),
        ("dataset://broken/v7", "no such version"),
        ("dataset://broken", "dataset://NAME/VERSION"),
    ] {
        let out = command(&c.home(), &env)
            .args(["mount", mnt.to_str().unwrap(), "--cache-dir"])
            .arg(c.dir.path().join("cache"))
            .args(["--input", &format!("d={uri}")])
            .output()
            .unwrap();
        let e = failed(&out);
        assert!(e.contains(want), "{uri}: {e}");
        assert!(!is_mounted(&mnt), "{uri} left a mount");
    }
}

#[test]
fn a_hundred_thousand_file_version_mounts_and_lists_without_listing_the_store() {
    if !fuse_available() {
        return;
    }
    let c = Catalog::new(&[]);
    let payloads: Vec<Vec<u8>> = (0..4).map(|i| bytes(40 + i, 1000 + i as usize)).collect();
    let ids = c.push(&[("p0", &payloads[0]), ("p1", &payloads[1]), ("p2", &payloads[2]), ("p3", &payloads[3])]);
    let records: Vec<Value> = ids.iter().map(|id| json(&c.run(&["datum", "show", id, "--json"]))).collect();
    json(&c.run(&["dataset", "create", "huge", "--json"]));
    // A version's manifest is one record: write one of 100,000 files (four datums under many
    // paths) in the documented layout, as a bulk import would.
    const N: usize = 100_000;
    let files: Vec<Value> = (0..N)
        .map(|i| {
            let r = &records[i % 4];
            serde_json::json!({
                "path": format!("shard-{:03}/item-{i:06}.bin", i / 1000),
                "datum": r["id"],
                "size": r["size"],
                "checksums": r["checksums"],
                "object_uri": r["object_uri"],
            })
        })
        .collect();
    let version = serde_json::json!({
        "dataset": "huge", "version": "v1", "created_at": "2026-11-01T00:00:00Z", "host": "import",
        "files": files,
    });
    let dir = c.home().join("store/.datumfs/datasets/huge/versions");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("v1.json"), serde_json::to_vec(&version).unwrap()).unwrap();

    // A reader that stops early (`| head`, `| grep -q`) ends the command quietly, never a panic.
    for args in [&["dataset", "show", "huge/v1", "--json"][..], &["dataset", "show", "huge/v1"]] {
        use std::io::Read;
        let mut child = command(&c.home(), &[])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }

    let started = Instant::now();
    let m = c.mount("dataset://huge/v1");
    let mounted = started.elapsed();
    let started = Instant::now();
    let mut count = 0;
    let mut bytes_listed = 0;
    for shard in fs::read_dir(m.path("inputs/d")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            bytes_listed += f.unwrap().metadata().unwrap().len();
            count += 1;
        }
    }
    let listed = started.elapsed();
    assert_eq!(count, N);
    let want: u64 = (0..N).map(|i| payloads[i % 4].len() as u64).sum();
    assert_eq!(bytes_listed, want);
    assert_eq!(fs::read(m.path("inputs/d/shard-099/item-099999.bin")).unwrap(), payloads[3]);
    assert_eq!(fs::read(m.path("inputs/d/shard-000/item-000002.bin")).unwrap(), payloads[2]);
    eprintln!("100,000-file version: mounted in {mounted:?}, listed with stat in {listed:?}");
}

/// Files of a dataset version are checked against their datums' sha256 and need no integrity
/// history; files of a plain store prefix get one (their content may change under the same URI).
#[test]
fn reading_a_version_writes_no_integrity_records_but_reading_a_prefix_does() {
    if !fuse_available() {
        return;
    }
    let c = Catalog::new(&[]);
    let (a, b) = (bytes(11, 50_000), bytes(12, 20_000));
    let ids = c.push(&[("a.bin", &a), ("b.bin", &b)]);
    json(&c.run(&["dataset", "create", "checked", "--json"]));
    json(&c.run(&["dataset", "version", "create", "checked/v1", "--add", &ids[0], "--add", &ids[1], "--json"]));
    let integrity = c.home().join("store/.datumfs/integrity");
    let records = || if integrity.exists() { tree(&integrity).len() } else { 0 };
    let mut m = c.mount("dataset://checked/v1");
    assert_eq!(fs::read(m.path("inputs/d/a.bin")).unwrap(), a);
    assert_eq!(fs::read(m.path("inputs/d/b.bin")).unwrap(), b);
    wait_for_checksums(&m.path("inputs/d/a.bin"));
    wait_for_checksums(&m.path("inputs/d/b.bin"));
    m.unmount();
    assert_eq!(records(), 0, "no integrity record for datums");

    let mut m = c.mount(&format!("file://{}/", c.dir.path().join("src").display()));
    assert_eq!(fs::read(m.path("inputs/d/a.bin")).unwrap(), a);
    wait_for_checksums(&m.path("inputs/d/a.bin"));
    m.unmount();
    assert!(records() >= 1, "a plain prefix's reads are recorded");
}

/// Waits until the mount has computed the md5 of the file at `path` (read whole before).
fn wait_for_checksums(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut buf = [0u8; 64];
        // SAFETY: valid C strings and a buffer of the length given.
        let n = unsafe {
            libc::getxattr(c_path.as_ptr(), c"user.datumfs.md5".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if n == 32 {
            return;
        }
        assert!(Instant::now() < deadline, "no checksums for {} after 20 s", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
