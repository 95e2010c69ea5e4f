//! A shared node: one user's mount, staged outputs, cache, control socket and logs, tried by
//! another real user (uid 65534). Needs root (to be both users).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const OTHER: u32 = 65534;

/// `cmd` run as the other user.
fn as_other(mut cmd: Command) -> std::process::Output {
    // (std drops the supplementary groups when root sets another uid.)
    cmd.uid(OTHER).gid(OTHER);
    cmd.output().unwrap()
}

fn sh_as_other(script: &str) -> std::process::Output {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    as_other(c)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn another_user_sees_only_what_mode_bits_allow_and_cannot_drive_the_mount() {
    if !fuse_available() || !is_root() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("in.txt"), b"input").unwrap();
    let input = format!("in=file://{}", src.display());
    let shared = TestMount::new(&["--input", &input, "-o", "allow_other", "--execution", "exec-shared"], &[]);
    let private = TestMount::new(&["--input", &input, "--execution", "exec-private"], &[]);
    for d in [scratch.path(), shared.dir.path(), private.dir.path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = shared.path("outputs");
    fs::write(o.join("open.txt"), b"for all").unwrap();
    fs::write(o.join("secret.txt"), b"root only").unwrap();
    fs::set_permissions(o.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(o.join("closed")).unwrap();
    fs::set_permissions(o.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(o.join("closed/inner.txt"), b"x").unwrap();

    // Through an allow_other mount: what the mode bits allow, and no more.
    let q = |p: &Path| p.display().to_string();
    let out = sh_as_other(&format!("cat {}", q(&o.join("open.txt"))));
    assert_eq!(out.stdout, b"for all", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sh_as_other(&format!("cat {}", q(&shared.path("inputs/in/in.txt")))).stdout, b"input");
    for denied in [
        format!("cat {}", q(&o.join("secret.txt"))),
        format!("ls {}", q(&o.join("closed"))),
        format!("echo x > {}", q(&o.join("new.txt"))),
        format!("echo x >> {}", q(&o.join("open.txt"))),
        format!("rm {}", q(&o.join("open.txt"))),
    ] {
        let out = sh_as_other(&denied);
        assert!(!out.status.success(), "{denied} succeeded for uid {OTHER}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"), "{denied}: {out:?}");
    }
    // A mount without allow_other is closed to others entirely.
    let out = sh_as_other(&format!("ls {}", q(&private.path("outputs"))));
    assert!(!out.status.success(), "a mount without allow_other let uid {OTHER} in");

    // The cache, the staged files, the logs: private to the mounting user.
    for p in [&shared.cache, &shared.cache.join("outputs")] {
        let out = sh_as_other(&format!("ls {}", q(p)));
        assert!(!out.status.success(), "uid {OTHER} listed {}", p.display());
    }

    // The control socket: unreachable for another user, and refused even when reachable.
    // The binary as the other user can run it (the build may sit in a directory closed to them).
    let theirs = scratch.path().join("datumfs");
    fs::copy(bin(), &theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
    let their_command = || {
        let ours = command(shared.dir.path(), &[]);
        let mut c = Command::new(&theirs);
        for (k, v) in ours.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    };
    let mut sync = their_command();
    sync.args(["sync", shared.mnt.to_str().unwrap()]);
    let out = as_other(sync);
    assert!(!out.status.success(), "uid {OTHER} synced another user's mount");
    let mut unmount = their_command();
    unmount.args(["unmount", shared.mnt.to_str().unwrap()]);
    assert!(!as_other(unmount).status.success(), "uid {OTHER} unmounted another user's mount");
    assert!(is_mounted(&shared.mnt));
    let socket = shared.cache.join("control.sock");
    fs::set_permissions(&shared.cache, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    // (The refusal comes at once, before any request: read it first, with a time limit.)
    let script = format!(
        "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(\"{}\"); \
         print(s.recv(4096).decode())'",
        socket.display()
    );
    let out = sh_as_other(&script);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("may not control"), "{answer} {}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&shared.cache, fs::Permissions::from_mode(0o700)).unwrap();
    // The owner still drives it.
    let out = shared.run(&["status", shared.mnt.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for m in [&shared, &private] {
        for e in fs::read_dir(m.path("outputs")).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                fs::remove_dir_all(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }
}

/// Sets bits (and a file capability), lets the other user write or truncate, and prints what
/// is left: run the same way on outputs and on a local directory, the two must print the same.
const DROP_PRIVILEGES_SCRIPT: &str = r#"
import os, sys, time
d, other = sys.argv[1], int(sys.argv[2])
# A valid file capability (cap_net_raw, effective): revision 2, 20 bytes.
cap = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)

def as_other(work):
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(other); os.setuid(other); work(); os._exit(0)
        except BaseException as e:
            print("other:", e, file=sys.stderr); os._exit(1)
    return pid

def state(p):
    try:
        caps = "caps" if os.getxattr(p, "security.capability") else "no caps"
    except OSError:
        caps = "no caps"
    return f"{os.stat(p).st_mode & 0o7777:o} {caps}"

for mode in (0o4777, 0o2777, 0o2767, 0o0777):
    for how in ("write, opened before", "write, opened after", "truncate", "write by root"):
        p = os.path.join(d, f"f{mode:o}")
        with open(p, "wb") as f: f.write(b"a" * 100)
        os.chmod(p, 0o777)
        r, w = os.pipe()
        def early():
            fd = os.open(p, os.O_WRONLY)
            os.write(w, b"x")
            time.sleep(0.3)  # the bits are set meanwhile
            os.pwrite(fd, b"b", 0); os.close(fd)
        child = as_other(early) if how == "write, opened before" else None
        if child: os.read(r, 1)
        os.chmod(p, mode)
        os.setxattr(p, "security.capability", cap)
        if how == "write, opened after":
            child = as_other(lambda: (os.pwrite(fd := os.open(p, os.O_WRONLY), b"c", 0), os.close(fd)))
        elif how == "truncate":
            child = as_other(lambda: os.truncate(p, 5))
        elif how == "write by root":
            fd = os.open(p, os.O_WRONLY); os.pwrite(fd, b"d", 0); os.close(fd)
        if child: assert os.waitpid(child, 0)[1] == 0, how
        print(f"{mode:o} {how}: {state(p)}")
        os.unlink(p)
"#;

#[test]
fn a_write_or_truncate_by_another_user_drops_set_id_bits_and_capabilities_as_a_local_disk_does() {
    if !fuse_available() || !is_root() {
        return;
    }
    let m = TestMount::new(&["-o", "allow_other"], &[]);
    let local = m.dir.path().join("local");
    fs::create_dir(&local).unwrap();
    for d in [m.dir.path(), local.as_path(), m.path("outputs").as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run = |dir: &Path| {
        let out = Command::new("python3")
            .args(["-c", DROP_PRIVILEGES_SCRIPT, dir.to_str().unwrap(), &OTHER.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let want = run(&local);
    // The local disk must show what this test is about, or the comparison proves nothing.
    assert!(want.contains("4777 write, opened before: 777 no caps"), "{want}");
    assert!(want.contains("2767 truncate: 767 no caps"), "{want}");
    assert!(want.contains("4777 write by root: 4777 no caps"), "{want}");
    assert_eq!(run(&m.path("outputs")), want, "outputs/ against a local directory");
}
