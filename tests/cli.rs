//! The command-line contract: daemon mode, status, unmount, environment variables, inputs files,
//! local inputs, and a clear one-line error (non-zero exit, no mount left) for each bad input.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A daemon-mode mount started by a test; unmounted and its process killed by PID on drop.
struct Daemon {
    mnt: PathBuf,
    home: PathBuf,
    env: Vec<(String, String)>,
    pid: Option<u32>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = command(&self.home, &self.env).args(["unmount", "--force", self.mnt.to_str().unwrap()]).output();
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn mount_cmd(dir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    command(&dir.join("home"), env)
        .arg("mount")
        .arg(dir.join("mnt"))
        .args(["--cache-dir", dir.join("cache").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// Runs a mount that must fail; returns its stderr after checking nothing was left mounted.
fn mount_fails(env: &[(String, String)], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = mount_cmd(dir.path(), env, args);
    let _guard = Daemon { mnt: dir.path().join("mnt"), home: dir.path().join("home"), env: env.to_vec(), pid: None };
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "mount {args:?} succeeded");
    assert!(!is_mounted(&dir.path().join("mnt")), "a failed mount left a mount behind");
    assert!(t.elapsed() < Duration::from_secs(60), "failing took {:?}", t.elapsed());
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn bad_inputs_fail_with_a_clear_message_and_leave_no_mount() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    s3.put("goodbkt", "x/a.bin", b"a");
    let env = s3.env();

    let e = mount_fails(&env, &["--input", "x=s3://no-such-bucket-here/"]);
    assert!(e.contains("no-such-bucket-here") && e.contains("does not exist"), "{e}");
    let e = mount_fails(&env, &["--input", "x=s3://no-such-bucket-here/some/key.bin"]);
    assert!(e.contains("no-such-bucket-here") && e.contains("does not exist"), "{e}");
    let e = mount_fails(&env, &["--input", "x=s3://goodbkt/x/missing.bin"]);
    assert!(e.contains("s3://goodbkt/x/missing.bin") && e.contains("no such object"), "{e}");
    let e = mount_fails(&env, &["--input", "x=s3://goodbkt/nothing-here/"]);
    assert!(e.contains("matches no objects"), "{e}");
    let e = mount_fails(&env, &["--input", "x=ftp://host/file"]);
    assert!(e.contains("unknown scheme 'ftp'"), "{e}");
    let e = mount_fails(&env, &["--input", "x=s3:///key"]);
    assert!(e.contains("no bucket name"), "{e}");
    let e = mount_fails(&env, &["--input", "noequals"]);
    assert!(e.contains("NAME=URI"), "{e}");
    let e = mount_fails(&env, &["--input", "x=/no/such/local/path/"]);
    assert!(e.contains("/no/such/local/path"), "{e}");

    let mut wrong = env.clone();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let e = mount_fails(&wrong, &["--input", "x=s3://goodbkt/x/"]);
    assert!(e.contains("access denied") && e.contains("s3://goodbkt/x/"), "{e}");
    assert!(!e.contains("not-the-secret"), "the secret leaked into the message: {e}");

    let none: Vec<_> =
        env.iter().filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET")).cloned().collect();
    let e = mount_fails(&none, &["--input", "x=s3://goodbkt/x/"]);
    assert!(e.contains("no credentials") && e.contains("AWS_ACCESS_KEY_ID"), "{e}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut unreachable = env.clone();
    unreachable.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    unreachable.push(("AWS_ENDPOINT_URL".into(), format!("http://{closed}")));
    let e = mount_fails(&unreachable, &["--input", "x=s3://goodbkt/x/"]);
    assert!(e.contains("unreachable") && e.contains("s3://goodbkt/x/"), "{e}");

    let e = mount_fails(&env, &["--input", "x=s3://goodbkt/x/", "--block-size", "1KiB"]);
    assert!(e.contains("--block-size"), "{e}");
    // Usage errors come from clap (with its usage hint), still naming the value.
    let dir = tempfile::tempdir().unwrap();
    let out = mount_cmd(dir.path(), &env, &["--input", "x=s3://goodbkt/x/", "--cache-size", "lots"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("'lots' is not a size"), "{e}");
    assert!(!is_mounted(&dir.path().join("mnt")));
}

#[test]
fn mountpoint_errors() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("src.txt"), b"x").unwrap();
    let out = command(&dir.path().join("home"), &[])
        .args(["mount", dir.path().join("absent").to_str().unwrap(), "--input"])
        .arg(format!("x={}", dir.path().join("src.txt").display()))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("does not exist"), "{e}");

    let m = TestMount::new(&["--input", &format!("x={}", dir.path().join("src.txt").display())], &[]);
    let out = command(&m.home, &[])
        .args(["mount", m.mnt.to_str().unwrap(), "--cache-dir", dir.path().join("c2").to_str().unwrap(), "--input"])
        .arg(format!("x={}", dir.path().join("src.txt").display()))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("busy"), "{e}");
    // A second daemon on the same cache dir is refused, naming the holder (without
    // --foreground, a mount joins the running daemon instead).
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let _other = MountGuard(other.clone());
    let out = command(&m.home, &[])
        .args(["mount", "--foreground", other.to_str().unwrap(), "--cache-dir", m.cache.to_str().unwrap(), "--input"])
        .arg(format!("x={}", dir.path().join("src.txt").display()))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("in use") && e.contains(&m.pid().to_string()), "{e}");
    assert!(!is_mounted(&other));
}

#[test]
fn daemon_mode_status_and_unmount() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let data = bytes(11, 3 << 20);
    s3.put("dmn", "train/a/x.bin", &data);
    s3.put("dmn", "labels.csv", b"id,label\n1,cat\n");
    let dir = tempfile::tempdir().unwrap();
    // Flags from the environment: DATUMFS_INPUT (several, ';'-separated) and DATUMFS_CACHE_DIR.
    let mut env = s3.env();
    env.push(("DATUMFS_INPUT".into(), "images=s3://dmn/train/;labels=s3://dmn/labels.csv".into()));
    env.push(("DATUMFS_CACHE_DIR".into(), dir.path().join("cache").display().to_string()));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let home = dir.path().join("home");
    let t = Instant::now();
    let out = command(&home, &env).arg("mount").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&mnt), "mount returned before the mount was ready");
    assert!(t.elapsed() < Duration::from_secs(5), "mount took {:?}", t.elapsed());
    let mut guard = Daemon { mnt: mnt.clone(), home: home.clone(), env: env.clone(), pid: None };

    assert_eq!(std::fs::read(mnt.join("inputs/labels/labels.csv")).unwrap(), b"id,label\n1,cat\n");
    assert_eq!(sha256(&std::fs::read(mnt.join("inputs/images/a/x.bin")).unwrap()), sha256(&data));
    let st = command(&home, &env).args(["status", mnt.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(st.status.success());
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    guard.pid = v["pid"].as_u64().map(|p| p as u32);
    assert_eq!(v["inputs"][0]["name"], "images");
    assert_eq!(v["cache"]["fetched_bytes"].as_u64().unwrap(), (3 << 20) + 15);
    assert!(dir.path().join("cache/datumfs.log").exists(), "the daemon logs under the cache dir");
    let human = command(&home, &env).args(["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("s3://dmn/train/"));

    // Cache files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("cache")), 0o700);
    assert_eq!(mode(&dir.path().join("cache/objects")), 0o700);
    for e in std::fs::read_dir(dir.path().join("cache/objects")).unwrap() {
        for f in std::fs::read_dir(e.unwrap().path()).unwrap() {
            assert_eq!(mode(&f.unwrap().path()), 0o600);
        }
    }

    // Unmount refuses while a file is open, then succeeds; the daemon exits.
    let open = std::fs::File::open(mnt.join("inputs/labels/labels.csv")).unwrap();
    let out = command(&home, &env).args(["unmount", mnt.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "unmount with an open file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    drop(open);
    let out = command(&home, &env).args(["unmount", mnt.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&mnt));
    let pid = guard.pid.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "daemon {pid} still runs after unmount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = command(&home, &env).args(["status", mnt.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not mounted"));
}

#[test]
fn dead_mounts_are_detected_and_cleaned_up() {
    if !fuse_available() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f.txt"), b"data").unwrap();
    let input = format!("x={}", src.path().display());
    let mut m = TestMount::new(&["--input", &input], &[]);
    // Kill without cleanup: the mount stays as "Transport endpoint is not connected".
    let pid = m.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    if let Some(mut c) = m.child.take() {
        let _ = c.wait();
    }
    assert!(is_mounted(&m.mnt));
    let st = m.run(&["status", m.mnt.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["state"], "dead", "{v}");
    // mount on the dead mountpoint cleans it up and mounts again on the same cache.
    let out = command(&m.home, &[])
        .arg("mount")
        .arg(&m.mnt)
        .args(["--cache-dir", m.cache.to_str().unwrap(), "--input", &input])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(m.path("inputs/x/f.txt")).unwrap(), b"data");
    let v: serde_json::Value =
        serde_json::from_slice(&m.run(&["status", m.mnt.to_str().unwrap(), "--json"]).stdout).unwrap();
    let _daemon =
        Daemon { mnt: m.mnt.clone(), home: m.home.clone(), env: vec![], pid: v["pid"].as_u64().map(|p| p as u32) };
    let out = m.run(&["unmount", m.mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn local_inputs_and_inputs_files() {
    if !fuse_available() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("a/b")).unwrap();
    let big = bytes(12, (5 << 20) + 3);
    std::fs::write(src.path().join("a/b/big.bin"), &big).unwrap();
    std::fs::write(src.path().join("top.txt"), b"top").unwrap();
    std::fs::write(src.path().join("with space.txt"), b"space").unwrap();
    let yaml = src.path().join("valohai.yaml");
    std::fs::write(
        &yaml,
        format!(
            "- step:\n    name: train\n    image: x\n    command: x\n    inputs:\n      - name: tree\n        default: file://{}\n      - name: single\n        default: {}/top.txt\n- step:\n    name: other\n    image: x\n    command: x\n",
            src.path().display(),
            src.path().display()
        ),
    )
    .unwrap();
    let s3 = S3Server::start();
    s3.put("oddkeys", "ok.txt", b"fine");
    let mut args = vec!["--inputs", yaml.to_str().unwrap(), "--step", "train"];
    args.extend(["--input", "odd=s3://oddkeys/"]);
    let m = TestMount::new(&args, &s3.env());
    assert_eq!(sha256(&std::fs::read(m.path("inputs/tree/a/b/big.bin")).unwrap()), sha256(&big));
    assert_eq!(std::fs::read(m.path("inputs/tree/with space.txt")).unwrap(), b"space");
    assert_eq!(std::fs::read(m.path("inputs/single/top.txt")).unwrap(), b"top");
    assert_eq!(std::fs::read(m.path("inputs/odd/ok.txt")).unwrap(), b"fine");
}

#[test]
fn unsafe_keys_are_never_served() {
    if !fuse_available() {
        return;
    }
    // object_store refuses to parse a listing page holding a key with a control byte (or a
    // '.'/'..' segment), so such a prefix cannot be mounted: the error names the key.
    let s3 = S3Server::start();
    s3.put("oddkeys", "good/ok.txt", b"fine");
    s3.put("oddkeys", "bad\u{1}name.txt", b"control byte");
    let e = mount_fails(&s3.env(), &["--input", "odd=s3://oddkeys/"]);
    assert!(e.contains("s3://oddkeys/") && e.contains("bad\\u{1}name.txt") && e.contains("control character"), "{e}");
    // A wildcard that leaves it out works.
    let m = TestMount::new(&["--input", "odd=s3://oddkeys/good/*"], &s3.env());
    assert_eq!(std::fs::read(m.path("inputs/odd/ok.txt")).unwrap(), b"fine");
}

#[test]
fn completions_man_pages_and_doctor_come_from_the_same_definitions() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let run = |args: &[&str], env: &[(String, String)]| command(&home, env).args(args).output().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &[]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains("datumfs"), "{shell}: {script}");
        for sub in ["volume", "model", "execution", "project"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let pages = t.path().join("man");
    let out = run(&["man", "--dir", pages.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(pages.join("datumfs-model-version-approve.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("reason"), "{page}");
    assert!(pages.join("datumfs.1").exists() && pages.join("datumfs-volume-sync.1").exists());

    // doctor: a healthy machine passes; a store that does not answer fails, naming it.
    let cache = t.path().join("cache");
    let out = run(&["doctor", "--cache-dir", cache.to_str().unwrap(), "--json"], &[]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    for name in ["fuse device", "cache space", "cache dir", "data store"] {
        assert!(names.contains(&name), "{report}");
    }
    if std::path::Path::new("/dev/fuse").exists() {
        assert_eq!((out.status.code(), report["ok"].as_bool()), (Some(0), Some(true)), "{report}");
    }
    let dead = [
        ("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:9".to_string()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), "k".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    let out = run(&["doctor", "--cache-dir", cache.to_str().unwrap(), "--store", "s3://nobucket/x"], &dead);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains("s3://nobucket/x")), "{text}");
    assert!(!text.contains("\"s\"") && text.contains("AWS_SECRET_ACCESS_KEY"), "names, never values: {text}");
}

/// Removes a file on drop (a helper installed for a test).
struct Installed(PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn mount_t_fuse_datumfs_takes_fstab_options() {
    if !fuse_available() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, cache) = (t.path().join("src"), t.path().join("mnt"), t.path().join("cache"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(src.join("x"), b"from fstab").unwrap();
    let store = format!("file://{}", t.path().join("store").display());
    let options = format!(
        "rw,_netdev,nofail,x-systemd.automount,input=in=file://{},cache_dir={},store={store},execution=fstab-e1",
        src.display(),
        cache.display()
    );
    let bin_dir = Path::new(bin()).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let unmount = |mnt: &Path| {
        let out = command(&t.path().join("home"), &[]).args(["unmount", mnt.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // What mount(8) runs for fuse.TYPE: mount.fuse3, which runs `datumfs SOURCE MOUNTPOINT -o ...`.
    if Path::new("/sbin/mount.fuse3").exists() {
        let _guard = MountGuard(mnt.clone());
        let out = std::process::Command::new("/sbin/mount.fuse3")
            .args(["datumfs", mnt.to_str().unwrap(), "-t", "fuse.datumfs", "-o", &options])
            .env("PATH", &path)
            .env("DATUMFS_HOME", t.path().join("home"))
            .output()
            .unwrap();
        assert!(out.status.success(), "mount.fuse3: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(mnt.join("inputs/in/x")).unwrap(), b"from fstab");
        unmount(&mnt);
    }
    // mount -t itself, through the helper installed as mount(8) looks for it (only where no
    // datumfs is installed already).
    let helper = PathBuf::from("/sbin/mount.fuse.datumfs");
    if helper.symlink_metadata().is_err() {
        std::os::unix::fs::symlink(bin(), &helper).unwrap();
        let _installed = Installed(helper);
        let _guard = MountGuard(mnt.clone());
        let out = std::process::Command::new("mount")
            .args(["-t", "fuse.datumfs", "datumfs", mnt.to_str().unwrap(), "-o", &options])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(mnt.join("inputs/in/x")).unwrap(), b"from fstab");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounted.lines().any(|l| l.contains(mnt.to_str().unwrap()) && l.contains("fuse")), "{mounted}");
        unmount(&mnt);
    }
    // A bad option is named, and nothing is mounted.
    let out = std::process::Command::new("/sbin/mount.fuse3")
        .args(["datumfs", mnt.to_str().unwrap(), "-t", "fuse.datumfs", "-o", "cache_sise=1G"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cache_sise"));
    assert!(!is_mounted(&mnt));
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/datumfs@.service")).unwrap();
    // The unit names the installed binary; verified here against this build's.
    let unit = unit.replace("/usr/local/bin/datumfs", bin());
    let path = t.path().join("datumfs@mnt-data.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new(analyze).args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("datumfs@")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {err}");
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// The value of one series (`name` or `name{labels}`) in a scrape.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_show_store_requests_the_read_path_outputs_and_the_cache() {
    if !fuse_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let size = 6_000_000;
    std::fs::write(src.join("f.bin"), bytes(5, size)).unwrap();
    std::fs::write(src.join("a-gone.bin"), bytes(6, 3_000_000)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let input = format!("in=file://{}", src.display());
    let m = TestMount::new(&["--input", &input, "--metrics-addr", &addr], &[]);
    let mount = format!("{{mount=\"{}\"}}", m.mnt.display());
    let before = scrape(&addr);
    assert_eq!(metric(&before, &format!("datumfs_served_bytes_total{mount}")).unwrap_or(0.0), 0.0, "{before}");
    // A read that fails is counted by its cause (read first: a reader walking the input in
    // order has the next files fetched ahead).
    std::fs::remove_file(src.join("a-gone.bin")).unwrap();
    assert!(std::fs::read(m.path("inputs/in/a-gone.bin")).is_err());
    let text = scrape(&addr);
    assert!(metric(&text, r#"datumfs_read_errors_total{kind="not_found"}"#).unwrap() >= 1.0, "{text}");
    // A sequential read: fetched, served and partly read ahead.
    assert_eq!(std::fs::read(m.path("inputs/in/f.bin")).unwrap().len(), size);
    // The last block may still be on its way into the cache when the read returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = scrape(&addr);
    while metric(&text, "datumfs_cache_fetched_bytes_total").unwrap_or(0.0) < size as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        text = scrape(&addr);
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#"datumfs_store_requests_total{op="get",outcome="ok"}"#), "{text}");
    assert!(text.contains("datumfs_store_request_seconds_bucket"), "{text}");
    assert!(metric(&text, "datumfs_cache_fetched_bytes_total").unwrap() >= size as f64, "{text}");
    assert!(metric(&text, "datumfs_cache_used_bytes").unwrap() > 0.0, "{text}");
    assert_eq!(metric(&text, &format!("datumfs_served_bytes_total{mount}")), Some(size as f64), "{text}");
    assert!(metric(&text, "datumfs_read_ahead_bytes_total").unwrap() > 0.0, "{text}");
    assert_eq!(metric(&text, "datumfs_fetches_in_flight"), Some(0.0), "{text}");
    // Outputs waiting for a sync, then synced.
    std::fs::write(m.path("outputs/a.txt"), b"12345").unwrap();
    // A scrape may show the staging area as it was up to a second ago.
    let pending = format!("datumfs_outputs_pending_files{mount}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = scrape(&addr);
    while metric(&text, &pending) != Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = scrape(&addr);
    }
    assert_eq!(metric(&text, &pending), Some(1.0), "{text}");
    assert_eq!(metric(&text, &format!("datumfs_outputs_pending_bytes{mount}")), Some(5.0), "{text}");
    let out = m.run(&["sync", m.mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = scrape(&addr);
    assert_eq!(metric(&text, &format!("datumfs_outputs_pending_files{mount}")), Some(0.0), "{text}");
    assert_eq!(metric(&text, &format!("datumfs_synced_files_total{mount}")), Some(1.0), "{text}");
    assert!(metric(&text, &format!("datumfs_synced_bytes_total{mount}")).unwrap() >= 5.0, "{text}");
    // Evictions.
    let out = m.run(&["cache", "evict", "--all", "--cache-dir", m.cache.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = scrape(&addr);
    assert!(metric(&text, "datumfs_cache_evicted_objects_total").unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "datumfs_cache_evicted_bytes_total").unwrap() >= size as f64 / 2.0, "{text}");
    // Anything else is not served.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
    let mut other = String::new();
    conn.read_to_string(&mut other).unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[test]
fn config_files_set_defaults_below_the_environment_and_name_stores() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let store_dir = t.path().join("team-store");
    std::fs::create_dir_all(home.join(".config/datumfs")).unwrap();
    std::fs::write(
        home.join(".config/datumfs/config.toml"),
        format!(
            "store = \"team\"\ncache_size = \"20G\"\nlog = \"warn\"\n[stores.team]\nurl = \"file://{}\"\nregion = \"eu-west-1\"\n",
            store_dir.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(String, String)]| command(&home, env).args(args).output().unwrap();
    let shown = json(&run(&["config", "show", "--json"], &[("DATUMFS_LOG".into(), "debug".into())]));
    let setting = |key: &str| shown["settings"].as_array().unwrap().iter().find(|s| s["key"] == key).unwrap().clone();
    assert_eq!(setting("cache_size")["value"], "20G");
    assert!(setting("cache_size")["from"].as_str().unwrap().ends_with("config.toml"), "{shown}");
    assert_eq!(
        (setting("log")["value"].as_str(), setting("log")["from"].as_str()),
        (Some("debug"), Some("environment"))
    );
    assert_eq!(setting("project")["from"], "default");
    assert_eq!(shown["stores"]["team"]["store"]["region"], "eu-west-1");
    // The named store is where catalog commands go.
    let file = t.path().join("w.bin");
    std::fs::write(&file, b"weights").unwrap();
    let out = run(&["push", file.to_str().unwrap(), "--json"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(store_dir.join(".datumfs/datums").is_dir(), "the datum went to the named store");
    // A setting a file cannot hold is named.
    std::fs::write(home.join(".config/datumfs/config.toml"), "cache_sise = \"1G\"\n").unwrap();
    let out = run(&["config", "show"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cache_sise") && err.contains("config.toml"), "{err}");
}

#[test]
fn doctor_check_writes_probes_the_stores_conditional_writes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let probes = |store: &str, env: &[(String, String)]| {
        let out = command(&home, env).args(["doctor", "--check-writes", "--json", "--store", store]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let checks = report["checks"].as_array().unwrap().clone();
        let find =
            |name: &str| checks.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("{report}")).clone();
        (find("create-only put"), find("compare-and-swap"))
    };
    // The local store: create-only by the filesystem, updates serialized by lock files.
    let local = format!("file://{}", t.path().join("store").display());
    let (create, cas) = probes(&local, &[]);
    assert_eq!((create["outcome"].as_str(), cas["outcome"].as_str()), (Some("ok"), Some("ok")), "{create} {cas}");
    // The loopback S3 server keeps both, as S3 does; the scratch record is gone after.
    let s3 = S3Server::start();
    s3.bucket("probe");
    let (create, cas) = probes("s3://probe/records", &s3.env());
    assert_eq!((create["outcome"].as_str(), cas["outcome"].as_str()), (Some("ok"), Some("ok")), "{create} {cas}");
    let scratch = walk_files(&s3.root.path().join("probe"));
    assert!(scratch.iter().all(|p| !p.contains("doctor")), "probe records left: {scratch:?}");
}

/// Every file below `dir`, as paths relative to it.
fn walk_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn a_project_can_keep_its_records_in_a_store_of_its_own() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (shared, vision) = (t.path().join("shared-store"), t.path().join("vision-store"));
    std::fs::create_dir_all(home.join(".config/datumfs")).unwrap();
    std::fs::write(
        home.join(".config/datumfs/config.toml"),
        format!(
            "store = \"shared\"\n[stores.shared]\nurl = \"file://{}\"\n[projects.vision]\nstore = \"file://{}\"\n",
            shared.display(),
            vision.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| command(&home, &[]).args(args).output().unwrap();
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    ok(run(&["project", "create", "vision"]));
    ok(run(&["project", "create", "audio"]));
    let file = t.path().join("w.bin");
    std::fs::write(&file, b"weights").unwrap();
    ok(run(&["push", file.to_str().unwrap(), "--project", "vision"]));
    ok(run(&["push", file.to_str().unwrap(), "--project", "audio"]));
    // vision's records are in its own store, audio's in the shared one; each lists its own.
    assert!(vision.join(".datumfs").is_dir() && !shared.join(".datumfs/projects/vision").exists());
    assert!(shared.join(".datumfs/projects/audio").is_dir());
    for project in ["vision", "audio"] {
        let listed = json(&run(&["datum", "ls", "--project", project, "--json"]));
        assert_eq!(listed.as_array().unwrap().len(), 1, "{project}: {listed}");
    }
    // An explicit store still wins over the project's own.
    let out = run(&["datum", "ls", "--project", "vision", "--store", &format!("file://{}", shared.display())]);
    assert!(!out.status.success(), "vision is not a project of the shared store");
    let shown = json(&run(&["config", "show", "--json"]));
    assert_eq!(shown["projects"]["vision"]["project"]["store"], format!("file://{}", vision.display()));
}
