//! `scripts/package.sh`: the .deb it builds installs and removes cleanly, into an empty root
//! (always) and on this machine (as root, where no datumfs is installed), where the installed
//! mount helper then serves `mount -t fuse.datumfs`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Every file and symlink under `root`, outside dpkg's own database.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.starts_with(root.join("var/lib/dpkg")) {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What the package must put where, relative to the root it is installed in.
const EXPECTED: &[&str] = &[
    "usr/bin/datumfs",
    "usr/sbin/mount.fuse.datumfs",
    "usr/share/man/man1/datumfs.1.gz",
    "usr/share/man/man1/datumfs-mount.1.gz",
    "usr/share/man/man1/datumfs-csi.1.gz",
    "usr/share/bash-completion/completions/datumfs",
    "usr/share/zsh/vendor-completions/_datumfs",
    "usr/share/fish/vendor_completions.d/datumfs.fish",
    "usr/lib/systemd/system/datumfs@.service",
    "usr/share/doc/datumfs/copyright",
    "usr/share/doc/datumfs/examples/kubernetes/daemonset.yaml",
];

fn check_installed(root: &Path) {
    for rel in EXPECTED {
        assert!(root.join(rel).exists(), "{rel} is not installed");
    }
    let helper = std::fs::canonicalize(root.join("usr/sbin/mount.fuse.datumfs")).unwrap();
    assert_eq!(helper, std::fs::canonicalize(root.join("usr/bin/datumfs")).unwrap(), "the helper is the binary");
    let version = run(Command::new(root.join("usr/bin/datumfs")).arg("--version"));
    assert!(version.starts_with("datumfs "), "{version}");
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/datumfs@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/datumfs mount") && !unit.contains("/usr/local"), "{unit}");
}

#[test]
fn the_deb_installs_and_removes_cleanly() {
    if !have("dpkg-deb") {
        assert!(std::env::var("DATUMFS_REQUIRE_DEB").as_deref() != Ok("1"), "dpkg-deb is missing");
        eprintln!("SKIPPED: dpkg-deb is missing (not a Debian machine)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out_dir = t.path().join("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package.sh");
    let report = run(Command::new(&script).args(["--binary", bin(), "--json", "--out"]).arg(&out_dir));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let deb = PathBuf::from(report["deb"].as_str().unwrap());
    assert!(deb.exists(), "{report}");
    let fields = run(Command::new("dpkg-deb").args(["--field"]).arg(&deb).args(["Package", "Depends"]));
    assert!(fields.contains("Package: datumfs") && fields.contains("fuse3"), "{fields}");

    // Into an empty root: every file where it belongs, and nothing left after a purge.
    let root = t.path().join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display())).args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ]);
        if !nix::unistd::geteuid().is_root() {
            c.arg("--force-not-root");
        }
        c.args(args);
        c
    };
    run(dpkg(&["--install", deb.to_str().unwrap()]).env("DPKG_ROOT", &root));
    check_installed(&root);
    let status = run(&mut dpkg(&["--status", "datumfs"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    run(dpkg(&["--purge", "datumfs"]).env("DPKG_ROOT", &root));
    let left = files_under(&root);
    assert!(left.is_empty(), "left after purge: {left:?}");

    // On this machine, where that changes nothing of anyone's: the installed helper mounts.
    let installed = Command::new("dpkg").args(["--status", "datumfs"]).output().is_ok_and(|o| o.status.success());
    let clean = !installed
        && !Path::new("/usr/bin/datumfs").exists()
        && std::fs::symlink_metadata("/usr/sbin/mount.fuse.datumfs").is_err()
        && std::fs::symlink_metadata("/sbin/mount.fuse.datumfs").is_err();
    if !nix::unistd::geteuid().is_root() || !clean || !fuse_available() {
        eprintln!("SKIPPED: installing on this machine (not root, no FUSE, or a datumfs is installed already)");
        return;
    }
    let _removed = Purge;
    run(Command::new("dpkg").args(["--install", deb.to_str().unwrap()]));
    check_installed(Path::new("/"));
    let (src, mnt) = (t.path().join("src"), t.path().join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(src.join("x"), b"from the package").unwrap();
    let options = format!(
        "input=in=file://{},cache_dir={},store=file://{}",
        src.display(),
        t.path().join("cache").display(),
        t.path().join("store").display()
    );
    {
        let _guard = MountGuard(mnt.clone());
        run(Command::new("mount").args(["-t", "fuse.datumfs", "datumfs", mnt.to_str().unwrap(), "-o", &options]));
        assert_eq!(std::fs::read(mnt.join("inputs/in/x")).unwrap(), b"from the package");
        run(Command::new("/usr/bin/datumfs").args(["unmount", mnt.to_str().unwrap()]));
    }
    run(Command::new("dpkg").args(["--purge", "datumfs"]));
    for rel in EXPECTED {
        assert!(std::fs::symlink_metadata(Path::new("/").join(rel)).is_err(), "/{rel} is left after purge");
    }
}

/// Purges the package from this machine on drop, so that a failing check leaves nothing.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "datumfs"]).output();
    }
}
