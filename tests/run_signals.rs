//! `datumfs run` as a container's entrypoint: stop signals reach the command, a command that
//! ignores them is killed after --stop-timeout, outputs are synced either way, the exit status
//! is the command's (128+N when a signal ended it), and as PID 1 it reaps orphans.

mod common;

use common::*;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn input(dir: &Path) -> String {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x"), b"x").unwrap();
    format!("in=file://{}", src.display())
}

/// A `datumfs run` the test started: stopped when the test ends, even by a failure (two
/// SIGTERMs: it passes them on and kills its command, then unmounts; SIGKILL if it lingers).
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        signal(&self.0, libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(200));
        signal(&self.0, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `datumfs run` (in a process group of its own, as a shell's job is) with `script`.
fn start(home: &Path, mnt: &Path, execution: &str, extra: &[&str], script: &str) -> Run {
    std::fs::create_dir_all(mnt).unwrap();
    let mut c = command(home, &[]);
    c.arg("run").arg(mnt).args(["--input", &input(home), "--cache-dir"]).arg(home.join("cache"));
    c.args(["--execution", execution]).args(extra).args(["--", "sh", "-c", script]);
    c.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    Run(c.spawn().unwrap())
}

fn wait_for_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("datumfs run still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The datums of `execution`, by path.
fn synced(home: &Path, execution: &str) -> Vec<String> {
    let out = command(home, &[]).args(["datum", "ls", "--execution", execution, "--json"]).output().unwrap();
    let mut paths: Vec<String> =
        json(&out).as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()).collect();
    paths.sort();
    paths
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a signal to a process this test started.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The bits of a `SigIgn:`/`SigBlk:` line for SIGINT and SIGTERM.
fn int_or_term(line: &str) -> u64 {
    let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or("0"), 16).unwrap();
    mask & ((1 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1)))
}

#[test]
fn sigterm_reaches_the_command_whose_checkpoint_is_synced_and_whose_status_is_returned() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let script = r#"grep -E 'SigIgn|SigBlk' /proc/self/status > "$VH_OUTPUTS_DIR/signals.txt"
        trap 'echo checkpoint > "$VH_OUTPUTS_DIR/ckpt.txt"; exit 7' TERM
        touch "$VH_OUTPUTS_DIR/ready"; while true; do sleep 0.1; done"#;
    // (Declared first, dropped last: the run stops and unmounts before the guard looks.)
    let _guard = MountGuard(mnt.clone());
    let mut run = start(dir.path(), &mnt, "exec-term", &[], script);
    wait_for_file(&mnt.join("outputs/ready"));
    let signals = std::fs::read_to_string(mnt.join("outputs/signals.txt")).unwrap();
    for line in signals.lines() {
        assert_eq!(int_or_term(line), 0, "the command started with SIGINT/SIGTERM ignored or blocked: {line}");
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or("x"), 16).unwrap();
        assert_eq!(mask, 0, "the command started with signals ignored or blocked: {line}");
    }
    signal(&run.0, libc::SIGTERM);
    let status = wait_exit(&mut run.0, Duration::from_secs(60));
    assert_eq!(status.code(), Some(7), "{status:?}");
    assert_eq!(synced(dir.path(), "exec-term"), ["ckpt.txt", "ready", "signals.txt"]);
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_command_ignoring_sigterm_is_killed_after_the_stop_timeout_and_its_outputs_synced() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let script = r#"trap '' TERM; echo partial > "$VH_OUTPUTS_DIR/partial.txt"; touch "$VH_OUTPUTS_DIR/ready"
        while true; do sleep 0.1; done"#;
    // (Declared first, dropped last: the run stops and unmounts before the guard looks.)
    let _guard = MountGuard(mnt.clone());
    let mut run = start(dir.path(), &mnt, "exec-stubborn", &["--stop-timeout", "1s"], script);
    wait_for_file(&mnt.join("outputs/ready"));
    let sent = Instant::now();
    signal(&run.0, libc::SIGTERM);
    let status = wait_exit(&mut run.0, Duration::from_secs(60));
    assert_eq!(status.code(), Some(137), "{status:?}");
    assert!(sent.elapsed() >= Duration::from_secs(1), "killed before the stop timeout");
    assert_eq!(synced(dir.path(), "exec-stubborn"), ["partial.txt", "ready"]);
}

#[test]
fn sigint_to_the_job_group_stops_the_command_once_and_a_second_escalates() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    // Counts the SIGINTs it gets and keeps going; SIGTERM ends it.
    let script = r#"trap 'echo int >> "$VH_OUTPUTS_DIR/ints.txt"' INT
        trap 'exit 0' TERM
        touch "$VH_OUTPUTS_DIR/ready"; while true; do sleep 0.1; done"#;
    // (Declared first, dropped last: the run stops and unmounts before the guard looks.)
    let _guard = MountGuard(mnt.clone());
    let mut run = start(dir.path(), &mnt, "exec-int", &["--stop-timeout", "60s"], script);
    wait_for_file(&mnt.join("outputs/ready"));
    // As a terminal's Ctrl-C does: SIGINT to the whole process group of `datumfs run`.
    // SAFETY: a signal to the process group this test started.
    unsafe { libc::kill(-(run.0.id() as i32), libc::SIGINT) };
    wait_for_file(&mnt.join("outputs/ints.txt"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(mnt.join("outputs/ints.txt")).unwrap(),
        "int\n",
        "SIGINT reached it more than once"
    );
    // A second stop signal escalates at once, long before the 60 s stop timeout.
    let sent = Instant::now();
    signal(&run.0, libc::SIGINT);
    let status = wait_exit(&mut run.0, Duration::from_secs(30));
    assert_eq!(status.code(), Some(137), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(30));
    assert_eq!(synced(dir.path(), "exec-int"), ["ints.txt", "ready"]);
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_reaps_orphans_and_exits_with_the_commands_status() {
    if !fuse_available() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let found = std::process::Command::new("unshare").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("DATUMFS_REQUIRE_FUSE").as_deref() != Ok("1"), "unshare (util-linux) is needed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // An orphan: a grandchild whose parent exits at once; it ends later and must be reaped.
    let script = r#"sh -c 'sleep 0.3 &'; sleep 1.5
        echo "pid1: $(cat /proc/1/comm)"
        echo "zombies: $(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == "Z"' | wc -l)"
        exit 5"#;
    let mut c = std::process::Command::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc", bin(), "run"]).arg(&mnt);
    c.args(["--input", &input(dir.path()), "--cache-dir"]).arg(dir.path().join("cache"));
    c.args(["--execution", "exec-pid1", "--", "sh", "-c", script]);
    c.env("DATUMFS_HOME", dir.path()).env("HOME", dir.path());
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pid1: datumfs"), "{stdout}");
    assert!(stdout.contains("zombies: 0"), "{stdout}");
    let _ = ExitStatusExt::signal(&out.status);
}

#[test]
fn sigterm_to_a_foreground_mount_unmounts_and_keeps_unsynced_outputs_for_the_execution() {
    if !fuse_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let input = input(scratch.path());
    let args = ["--input", input.as_str(), "--execution", "exec-fg"];
    let mut m = TestMount::new(&args, &[]);
    std::fs::write(m.path("outputs/model.bin"), b"weights").unwrap();
    signal(m.child.as_ref().unwrap(), libc::SIGTERM);
    let status = wait_exit(m.child.as_mut().unwrap(), Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", m.log());
    assert!(!is_mounted(&m.mnt), "SIGTERM left the mount behind");
    m.child = None;
    let (dir, cache) = (std::mem::replace(&mut m.dir, tempfile::tempdir().unwrap()), m.cache.clone());
    drop(m);
    let m = TestMount::with_cache(dir, cache, &args, &[]);
    assert_eq!(std::fs::read(m.path("outputs/model.bin")).unwrap(), b"weights", "the staged output was lost");
    let out = m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
