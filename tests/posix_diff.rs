//! Differential test of `outputs/` (and of a writable volume) against a plain local directory: seeded random sequences of
//! file-system calls (open with random flags, reads and writes at offsets, truncate, rename
//! over files and directories, hard links, unlink, mkdir, rmdir, chmod, chown, utimensat,
//! symlinks, xattrs, FIFOs, fsync), some made as another user and some from a second process
//! with open files of its own, applied to both side by side.
//! Every call's result (return value or errno) must match, and after every call both trees
//! must hold the same entries with the same kind, mode, owner, size, link count, hard-link
//! grouping, contents, link targets and xattrs, and the same times must have moved.
//!
//! `DATUMFS_POSIX_SEQUENCES=N` runs N sequences on outputs (default 1000),
//! `DATUMFS_POSIX_VOLUME_SEQUENCES=N` on a volume (default 300); `DATUMFS_POSIX_SEED=S` replays
//! the one sequence a failure printed, with every step shown. `scripts/posix-diff.sh` runs many.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Another user for calls made on someone else's behalf.
const OTHER: u32 = 65534;
/// Open-file slots per sequence.
const SLOTS: usize = 4;
/// Calls per sequence.
const STEPS: usize = 30;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Op {
    Open { path: String, flags: i32, mode: u32, slot: usize },
    Close { slot: usize },
    Pwrite { slot: usize, offset: u64, len: usize, fill: u8 },
    Write { slot: usize, len: usize, fill: u8 },
    Pread { slot: usize, offset: u64, len: usize },
    Read { slot: usize, len: usize },
    Ftruncate { slot: usize, len: u64 },
    Fsync { slot: usize },
    Fstat { slot: usize },
    Truncate { path: String, len: u64 },
    Rename { from: String, to: String, flags: u32 },
    Link { from: String, to: String },
    Unlink { path: String },
    Mkdir { path: String, mode: u32 },
    Rmdir { path: String },
    Chmod { path: String, mode: u32 },
    Chown { path: String, uid: u32, gid: u32, follow: bool },
    Utimens { path: String, atime: Option<i64>, mtime: Option<i64>, follow: bool },
    Symlink { target: String, path: String },
    Readlink { path: String },
    Setxattr { path: String, name: String, value: Vec<u8>, flags: i32 },
    Getxattr { path: String, name: String },
    Removexattr { path: String, name: String },
    Listxattr { path: String },
    Mkfifo { path: String, mode: u32 },
    Stat { path: String, follow: bool },
    Readdir { path: String },
    Access { path: String, mode: i32 },
}

/// One call, made as `user` from process `process` (0: the test's own, 1: its helper, which
/// has open files of its own).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Step {
    user: u32,
    process: u8,
    op: Op,
}

fn path(rng: &mut StdRng) -> String {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let first = NAMES[rng.random_range(0..NAMES.len())];
    if rng.random_bool(0.4) {
        format!("{first}/{}", NAMES[rng.random_range(0..NAMES.len())])
    } else {
        first.to_string()
    }
}

fn mode(rng: &mut StdRng) -> u32 {
    const MODES: [u32; 10] = [0o755, 0o700, 0o644, 0o600, 0o444, 0o000, 0o2775, 0o1777, 0o4755, 0o777];
    MODES[rng.random_range(0..MODES.len())]
}

fn step(rng: &mut StdRng) -> Step {
    let user = if rng.random_bool(0.2) { OTHER } else { 0 };
    let process = u8::from(rng.random_bool(0.3));
    let slot = rng.random_range(0..SLOTS);
    let op = match rng.random_range(0..100) {
        0..=14 => {
            let acc = [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR][rng.random_range(0..3)];
            let mut flags = acc;
            for f in [libc::O_CREAT, libc::O_EXCL, libc::O_TRUNC, libc::O_APPEND, libc::O_DIRECTORY, libc::O_NOFOLLOW] {
                let p = if f == libc::O_CREAT {
                    0.6
                } else if f == libc::O_DIRECTORY {
                    0.05
                } else {
                    0.2
                };
                if rng.random_bool(p) {
                    flags |= f;
                }
            }
            Op::Open { path: path(rng), flags, mode: mode(rng) & 0o777, slot }
        }
        15..=18 => Op::Close { slot },
        19..=28 => Op::Pwrite {
            slot,
            offset: [0, 1, 100, 4095, 4096, 70_000][rng.random_range(0..6)],
            len: rng.random_range(0..9000),
            fill: rng.random(),
        },
        29..=33 => Op::Write { slot, len: rng.random_range(0..5000), fill: rng.random() },
        34..=37 => Op::Pread { slot, offset: rng.random_range(0..10_000), len: rng.random_range(0..9000) },
        38..=40 => Op::Read { slot, len: rng.random_range(0..9000) },
        41..=43 => Op::Ftruncate { slot, len: [0, 10, 5000, 100_000][rng.random_range(0..4)] },
        44..=45 => Op::Fsync { slot },
        46..=48 => Op::Fstat { slot },
        49..=51 => Op::Truncate { path: path(rng), len: [0, 7, 9000][rng.random_range(0..3)] },
        52..=58 => {
            let flags = [0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE][rng.random_range(0..5)];
            Op::Rename { from: path(rng), to: path(rng), flags }
        }
        59..=62 => Op::Link { from: path(rng), to: path(rng) },
        63..=67 => Op::Unlink { path: path(rng) },
        68..=73 => Op::Mkdir { path: path(rng), mode: mode(rng) },
        74..=76 => Op::Rmdir { path: path(rng) },
        77..=79 => Op::Chmod { path: path(rng), mode: mode(rng) },
        80..=81 => {
            let uid = [0, OTHER][rng.random_range(0..2)];
            let gid = [0, OTHER, u32::MAX][rng.random_range(0..3)];
            Op::Chown { path: path(rng), uid, gid, follow: rng.random_bool(0.5) }
        }
        82..=83 => {
            let t =
                |rng: &mut StdRng| [None, Some(1_000_000_000), Some(1_700_000_000), Some(-1)][rng.random_range(0..4)];
            Op::Utimens { path: path(rng), atime: t(rng), mtime: t(rng), follow: rng.random_bool(0.5) }
        }
        84..=86 => Op::Symlink { target: path(rng), path: path(rng) },
        87 => Op::Readlink { path: path(rng) },
        88..=89 => {
            let flags = [0, libc::XATTR_CREATE, libc::XATTR_REPLACE][rng.random_range(0..3)];
            let value = vec![rng.random::<u8>(); rng.random_range(0..40)];
            Op::Setxattr { path: path(rng), name: xattr_name(rng), value, flags }
        }
        90 => Op::Getxattr { path: path(rng), name: xattr_name(rng) },
        91 => Op::Removexattr { path: path(rng), name: xattr_name(rng) },
        92 => Op::Listxattr { path: path(rng) },
        93 => Op::Mkfifo { path: path(rng), mode: mode(rng) & 0o777 },
        94..=96 => Op::Stat { path: path(rng), follow: rng.random_bool(0.5) },
        97..=98 => Op::Readdir { path: path(rng) },
        _ => Op::Access {
            path: path(rng),
            mode: [libc::R_OK, libc::W_OK, libc::X_OK, libc::F_OK][rng.random_range(0..4)],
        },
    };
    Step { user, process, op }
}

fn xattr_name(rng: &mut StdRng) -> String {
    ["user.x", "user.y", "user.datumfs.z"][rng.random_range(0..3)].to_string()
}

/// One side: a root directory and its open files, in this process and in a helper process.
struct Side {
    root: PathBuf,
    fds: [Option<i32>; SLOTS],
    /// Each sequence in its own directory `s<SEED>` under this one, which holds files before
    /// the sequence starts (a volume's bucket files), instead of in `root` cleared.
    per_seed: Option<PathBuf>,
    /// The second process making this side's calls (none in the helper itself).
    helper: Option<Helper>,
}

/// What the test asks its helper process (one JSON line each; one answer line each).
#[derive(serde::Serialize, serde::Deserialize)]
enum Request {
    /// Make this call under this root.
    Apply { root: PathBuf, step: Step },
    /// Close every open file.
    CloseAll,
}

/// A second process (this test binary, running `helper_process_making_calls_sent_on_stdin`)
/// that makes the calls a sequence gives it, with file descriptors of its own.
struct Helper {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

/// Marks the helper's answers among whatever else the test harness prints.
const ANSWER: &str = "@@answer ";
/// Set in the helper's environment.
const HELPER_ENV: &str = "DATUMFS_POSIX_HELPER";

impl Helper {
    fn start() -> Self {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["helper_process_making_calls_sent_on_stdin", "--exact", "--nocapture", "--test-threads=1"])
            .env(HELPER_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the helper process");
        let to = child.stdin.take().unwrap();
        let from = std::io::BufReader::new(child.stdout.take().unwrap());
        Helper { child, to, from }
    }

    fn ask(&mut self, req: &Request) -> Outcome {
        use std::io::{BufRead, Write};
        let mut line = serde_json::to_string(req).unwrap();
        line.push('\n');
        self.to.write_all(line.as_bytes()).expect("writing to the helper process");
        loop {
            let mut answer = String::new();
            assert!(self.from.read_line(&mut answer).unwrap() > 0, "the helper process ended");
            // (The harness's own "test NAME ... " may start the line.)
            if let Some(at) = answer.find(ANSWER) {
                return serde_json::from_str(&answer[at + ANSWER.len()..]).unwrap();
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test of its own: the helper process of the differential tests, started by them with
/// DATUMFS_POSIX_HELPER set; it makes the calls it reads on stdin, answering each on stdout.
#[test]
fn helper_process_making_calls_sent_on_stdin() {
    use std::io::{BufRead, Write};
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let mut side = Side { root: PathBuf::new(), fds: [None; SLOTS], per_seed: None, helper: None };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let answer = match serde_json::from_str::<Request>(&line.unwrap()).expect("a request") {
            Request::Apply { root, step } => {
                side.root = root;
                side.apply(&Step { process: 0, ..step })
            }
            Request::CloseAll => {
                side.close_all();
                Ok("closed".into())
            }
        };
        writeln!(out, "{ANSWER}{}", serde_json::to_string(&answer).unwrap()).unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0);
}

/// What a call returned: a description of its result, or its errno.
type Outcome = Result<String, i32>;

fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

/// What a stat shows that both sides must agree on (not inode numbers, blocks or times).
fn stat_summary(st: &libc::stat) -> String {
    let size = if st.st_mode & libc::S_IFMT == libc::S_IFDIR { 0 } else { st.st_size };
    format!("mode {:o} size {size} nlink {} uid {} gid {}", st.st_mode, st.st_nlink, st.st_uid, st.st_gid)
}

fn data(len: usize, fill: u8) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
}

/// Switches the calling thread's filesystem identity (permission checks, new files' owner).
fn as_user(user: u32) {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        libc::setfsgid(user);
        libc::setfsuid(user);
    }
}

impl Side {
    /// A side rooted at `root`, with a helper process.
    fn new(root: PathBuf, per_seed: Option<PathBuf>) -> Self {
        Side { root, fds: [None; SLOTS], per_seed, helper: Some(Helper::start()) }
    }

    fn apply(&mut self, step: &Step) -> Outcome {
        if step.process == 1 {
            if let Some(h) = &mut self.helper {
                return h.ask(&Request::Apply { root: self.root.clone(), step: step.clone() });
            }
        }
        as_user(step.user);
        let out = self.call(&step.op);
        as_user(0);
        out
    }

    fn fd(&self, slot: usize) -> Result<i32, i32> {
        self.fds[slot].ok_or(libc::EBADF)
    }

    fn call(&mut self, op: &Op) -> Outcome {
        let root = self.root.clone();
        let p = |rel: &str| cpath(&root, rel);
        // SAFETY (every unsafe block below): libc calls with valid C strings, buffers of the
        // length given, and file descriptors this side opened.
        match op {
            Op::Open { path, flags, mode, slot } => {
                if let Some(fd) = self.fds[*slot].take() {
                    unsafe { libc::close(fd) };
                }
                // (Non-blocking: opening a FIFO would wait for the other end otherwise.)
                let flags = *flags | libc::O_CLOEXEC | libc::O_NONBLOCK;
                let fd = check(unsafe { libc::open(p(path).as_ptr(), flags, *mode) } as _)? as i32;
                self.fds[*slot] = Some(fd);
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                check(unsafe { libc::fstat(fd, &mut st) } as _)?;
                Ok(format!("opened: {}", stat_summary(&st)))
            }
            Op::Close { slot } => {
                let fd = self.fds[*slot].take().ok_or(libc::EBADF)?;
                check(unsafe { libc::close(fd) } as _).map(|_| "closed".into())
            }
            Op::Pwrite { slot, offset, len, fill } => {
                let buf = data(*len, *fill);
                let fd = self.fd(*slot)?;
                check(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), *offset as i64) } as _)
                    .map(|n| format!("wrote {n}"))
            }
            Op::Write { slot, len, fill } => {
                let buf = data(*len, *fill);
                let fd = self.fd(*slot)?;
                check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as _).map(|n| format!("wrote {n}"))
            }
            Op::Pread { slot, offset, len } => {
                let mut buf = vec![0u8; *len];
                let fd = self.fd(*slot)?;
                let n = check(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), *offset as i64) } as _)?;
                Ok(format!("read {n}: {}", sha256(&buf[..n as usize])))
            }
            Op::Read { slot, len } => {
                let mut buf = vec![0u8; *len];
                let fd = self.fd(*slot)?;
                let n = check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as _)?;
                Ok(format!("read {n}: {}", sha256(&buf[..n as usize])))
            }
            Op::Ftruncate { slot, len } => {
                let fd = self.fd(*slot)?;
                check(unsafe { libc::ftruncate(fd, *len as i64) } as _).map(|_| "truncated".into())
            }
            Op::Fsync { slot } => {
                let fd = self.fd(*slot)?;
                check(unsafe { libc::fsync(fd) } as _).map(|_| "synced".into())
            }
            Op::Fstat { slot } => {
                let fd = self.fd(*slot)?;
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                check(unsafe { libc::fstat(fd, &mut st) } as _)?;
                Ok(stat_summary(&st))
            }
            Op::Truncate { path, len } => {
                check(unsafe { libc::truncate(p(path).as_ptr(), *len as i64) } as _).map(|_| "truncated".into())
            }
            Op::Rename { from, to, flags } => {
                let rc = unsafe {
                    libc::renameat2(libc::AT_FDCWD, p(from).as_ptr(), libc::AT_FDCWD, p(to).as_ptr(), *flags)
                };
                check(rc as _).map(|_| "renamed".into())
            }
            Op::Link { from, to } => {
                check(unsafe { libc::link(p(from).as_ptr(), p(to).as_ptr()) } as _).map(|_| "linked".into())
            }
            Op::Unlink { path } => check(unsafe { libc::unlink(p(path).as_ptr()) } as _).map(|_| "unlinked".into()),
            Op::Mkdir { path, mode } => {
                check(unsafe { libc::mkdir(p(path).as_ptr(), *mode) } as _).map(|_| "made".into())
            }
            Op::Rmdir { path } => check(unsafe { libc::rmdir(p(path).as_ptr()) } as _).map(|_| "removed".into()),
            Op::Chmod { path, mode } => {
                check(unsafe { libc::chmod(p(path).as_ptr(), *mode) } as _).map(|_| "changed".into())
            }
            Op::Chown { path, uid, gid, follow } => {
                let rc = if *follow {
                    unsafe { libc::chown(p(path).as_ptr(), *uid, *gid) }
                } else {
                    unsafe { libc::lchown(p(path).as_ptr(), *uid, *gid) }
                };
                check(rc as _).map(|_| "changed".into())
            }
            Op::Utimens { path, atime, mtime, follow } => {
                let ts = |t: &Option<i64>| match t {
                    None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
                    Some(-1) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
                    Some(s) => libc::timespec { tv_sec: *s, tv_nsec: 5 },
                };
                let times = [ts(atime), ts(mtime)];
                let flags = if *follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
                let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p(path).as_ptr(), times.as_ptr(), flags) };
                check(rc as _).map(|_| "changed".into())
            }
            Op::Symlink { target, path } => {
                let t = CString::new(target.as_str()).unwrap();
                check(unsafe { libc::symlink(t.as_ptr(), p(path).as_ptr()) } as _).map(|_| "made".into())
            }
            Op::Readlink { path } => {
                let mut buf = [0u8; 256];
                let n = check(unsafe { libc::readlink(p(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as _)?;
                Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
            }
            Op::Setxattr { path, name, value, flags } => {
                let n = CString::new(name.as_str()).unwrap();
                let rc =
                    unsafe { libc::setxattr(p(path).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), *flags) };
                check(rc as _).map(|_| "set".into())
            }
            Op::Getxattr { path, name } => {
                let n = CString::new(name.as_str()).unwrap();
                let mut buf = [0u8; 256];
                let got =
                    check(unsafe { libc::getxattr(p(path).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
                        as _)?;
                Ok(format!("{:?}", &buf[..got as usize]))
            }
            Op::Removexattr { path, name } => {
                let n = CString::new(name.as_str()).unwrap();
                check(unsafe { libc::removexattr(p(path).as_ptr(), n.as_ptr()) } as _).map(|_| "removed".into())
            }
            Op::Listxattr { path } => list_xattrs(&root.join(path), true).map(|l| format!("{l:?}")),
            Op::Mkfifo { path, mode } => {
                check(unsafe { libc::mkfifo(p(path).as_ptr(), *mode) } as _).map(|_| "made".into())
            }
            Op::Stat { path, follow } => {
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                let rc = if *follow {
                    unsafe { libc::stat(p(path).as_ptr(), &mut st) }
                } else {
                    unsafe { libc::lstat(p(path).as_ptr(), &mut st) }
                };
                check(rc as _)?;
                Ok(stat_summary(&st))
            }
            Op::Readdir { path } => match std::fs::read_dir(root.join(path)) {
                Ok(entries) => {
                    let mut names: Vec<String> =
                        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                    names.sort();
                    Ok(names.join(","))
                }
                Err(e) => Err(e.raw_os_error().unwrap_or(0)),
            },
            Op::Access { path, mode } => {
                check(unsafe { libc::access(p(path).as_ptr(), *mode) } as _).map(|_| "allowed".into())
            }
        }
    }

    fn close_all(&mut self) {
        for fd in self.fds.iter_mut().filter_map(Option::take) {
            // SAFETY: a descriptor this side opened.
            unsafe { libc::close(fd) };
        }
        if let Some(h) = &mut self.helper {
            h.ask(&Request::CloseAll).unwrap();
        }
    }

    /// Removes everything under the root (as root, whatever the modes).
    fn clear(&mut self) {
        self.close_all();
        for entry in std::fs::read_dir(&self.root).unwrap() {
            let p = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
}

fn list_xattrs(p: &Path, follow: bool) -> Result<Vec<String>, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of the length given.
    let n = check(unsafe {
        if follow {
            libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    } as _)?;
    let mut names: Vec<String> = buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("user."))
        .collect();
    names.sort();
    Ok(names)
}

/// One entry of a tree, as both sides must show it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    stat: String,
    /// The first path (in sorted order) of the same inode: the hard-link grouping.
    group: String,
    content: String,
    xattrs: Vec<String>,
    /// mtime and ctime (seconds, nanoseconds).
    times: (i64, i64, i64, i64),
    /// The inode number on its own side (not compared: times are followed by inode).
    ino: u64,
    /// A FIFO: data passing through moves its times in the kernel's inode only (a FUSE FIFO's
    /// times are the staged node's), so its times are not compared.
    fifo: bool,
}

fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inos: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<String> = std::fs::read_dir(root.join(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            let p = root.join(&rel);
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let ft = meta.file_type();
            let content = if ft.is_file() {
                sha256(&std::fs::read(&p).unwrap())
            } else if ft.is_symlink() {
                std::fs::read_link(&p).unwrap().to_string_lossy().into_owned()
            } else {
                String::new()
            };
            if ft.is_dir() {
                stack.push(rel.clone());
            }
            let group = inos.entry(meta.ino()).or_insert_with(|| rel.clone()).clone();
            let size = if ft.is_dir() { 0 } else { meta.len() };
            let stat = format!(
                "mode {:o} size {size} nlink {} uid {} gid {}",
                meta.mode(),
                meta.nlink(),
                meta.uid(),
                meta.gid()
            );
            let times = (meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec());
            let xattrs = if ft.is_symlink() { Vec::new() } else { list_xattrs(&p, false).unwrap_or_default() };
            let fifo = std::os::unix::fs::FileTypeExt::is_fifo(&ft);
            out.insert(rel, Entry { stat, group, content, xattrs, times, ino: meta.ino(), fifo });
        }
    }
    out
}

/// Where two trees differ. Times are compared as "moved since the last look" at the same
/// inode on each side (they are made at different instants), except times set explicitly.
fn tree_difference(
    ours: &BTreeMap<String, Entry>,
    local: &BTreeMap<String, Entry>,
    ours_before: &BTreeMap<String, Entry>,
    local_before: &BTreeMap<String, Entry>,
    copied_in: &mut std::collections::HashMap<u64, std::collections::HashSet<String>>,
) -> Option<String> {
    if ours.keys().ne(local.keys()) {
        return Some(format!("entries differ:\n  outputs: {:?}\n  local:   {:?}", ours.keys(), local.keys()));
    }
    let by_ino = |t: &BTreeMap<String, Entry>| t.values().map(|e| (e.ino, e.times)).collect::<BTreeMap<_, _>>();
    let (ours_then, local_then) = (by_ino(ours_before), by_ino(local_before));
    for (rel, o) in ours {
        let l = &local[rel];
        let strip = |e: &Entry| Entry { times: (0, 0, 0, 0), ino: 0, ..e.clone() };
        if strip(o) != strip(l) {
            return Some(format!("{rel} differs:\n  outputs: {o:?}\n  local:   {l:?}"));
        }
        // Against the same name's times before if it named the same file (each name of a
        // hard link may hold cached attributes of its own), else the file's under any name.
        let moved = |now: &Entry, before: &BTreeMap<String, Entry>, then: &BTreeMap<u64, (i64, i64, i64, i64)>| {
            let same_name = before.get(rel).filter(|b| b.ino == now.ino).map(|b| b.times);
            same_name
                .or_else(|| then.get(&now.ino).copied())
                .map(|b| ((now.times.0, now.times.1) != (b.0, b.1), (now.times.2, now.times.3) != (b.2, b.3)))
        };
        let (mo, ml) = (moved(o, ours_before, &ours_then), moved(l, local_before, &local_then));
        let ctime_only = |m: Option<(bool, bool)>| m.map(|(mt, _)| (mt, true));
        // Once per name: each name of a hard-linked file has attributes of its own in the
        // kernel, so each may show the move when its cached attributes expire.
        if mo != ml && mo == ctime_only(ml) && copied_in.get_mut(&o.ino).is_some_and(|seen| seen.insert(rel.clone())) {
            continue;
        }
        if mo != ml && !o.fifo {
            return Some(format!("{rel}: times moved differently (mtime, ctime): outputs {mo:?}, local {ml:?}"));
        }
        if o.times.0 != l.times.0 && (o.times.0 < 1_600_000_000 || l.times.0 < 1_600_000_000) {
            return Some(format!("{rel}: mtime set to {} in outputs, {} locally", o.times.0, l.times.0));
        }
    }
    None
}

/// Runs sequence `seed` on both sides; returns where they first differed.
fn run_sequence(seed: u64, ours: &mut Side, local: &mut Side, verbose: bool) -> Result<(), String> {
    for side in [&mut *ours, &mut *local] {
        match side.per_seed.clone() {
            Some(base) => {
                side.close_all();
                side.root = base.join(format!("s{seed}"));
            }
            None => side.clear(),
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    if ours.per_seed.is_some() {
        // A volume's directory is filled in from the bucket the first time it is looked at,
        // which moves its ctime: look once before the sequence starts.
        tree(&ours.root);
    }
    let (mut ours_before, mut local_before) = (tree(&ours.root), tree(&local.root));
    // A volume's bucket files: the first open for writing (or truncate) copies a file's bytes
    // in, which moves its ctime there and nowhere else; that one move is allowed (seen then,
    // or once the kernel's cached attributes expire).
    let mut copied_in = std::collections::HashMap::new();
    let mut bucket_files: std::collections::HashSet<u64> = match ours.per_seed {
        Some(_) => ours_before.values().filter(|e| e.stat.starts_with("mode 100")).map(|e| e.ino).collect(),
        None => Default::default(),
    };
    for i in 0..STEPS {
        let s = step(&mut rng);
        let written = match &s.op {
            Op::Open { path, flags, .. } if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 => {
                Some(path)
            }
            Op::Truncate { path, .. } => Some(path),
            _ => None,
        };
        if let Some(ino) = written.and_then(|p| std::fs::metadata(ours.root.join(p)).ok()).map(|m| m.ino()) {
            if bucket_files.remove(&ino) {
                copied_in.insert(ino, std::collections::HashSet::new());
            }
        }
        let (o, l) = (ours.apply(&s), local.apply(&s));
        if verbose {
            eprintln!("step {i}: {s:?}\n  outputs: {o:?}\n  local:   {l:?}");
        }
        if o != l {
            return Err(format!("step {i}: {s:?}\n  outputs: {o:?}\n  local:   {l:?}"));
        }
        let (ours_now, local_now) = (tree(&ours.root), tree(&local.root));
        if let Some(d) = tree_difference(&ours_now, &local_now, &ours_before, &local_before, &mut copied_in) {
            return Err(format!("after step {i}: {s:?}: {d}"));
        }
        (ours_before, local_before) = (ours_now, local_now);
    }
    Ok(())
}

#[test]
fn outputs_behave_as_a_local_directory_under_random_calls() {
    if !fuse_available() || !nix_is_root() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("in.txt"), b"input").unwrap();
    let input = format!("in=file://{}", src.display());
    let m = TestMount::new(&["--input", &input, "-o", "allow_other", "--execution", "posix-diff"], &[]);
    differential(&m, "outputs", "DATUMFS_POSIX_SEQUENCES", 1000);
}

#[test]
fn a_writable_volume_behaves_as_a_local_directory_under_random_calls() {
    if !fuse_available() || !nix_is_root() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let bucket = scratch.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let volume = format!("w=file://{}/:rwd", bucket.display());
    let m = TestMount::new(&["--volume", &volume, "-o", "allow_other", "--execution", "posix-diff-vol"], &[]);
    differential(&m, "volumes/w", "DATUMFS_POSIX_VOLUME_SEQUENCES", 300);
}

#[test]
fn a_volume_with_bucket_files_behaves_as_a_local_directory_under_random_calls() {
    if !fuse_available() || !nix_is_root() {
        return;
    }
    let n: u64 = std::env::var("DATUMFS_POSIX_VOLUME_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let first: u64 = std::env::var("DATUMFS_POSIX_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let seeds: Vec<u64> = match std::env::var("DATUMFS_POSIX_SEED") {
        Ok(s) => vec![s.parse().expect("DATUMFS_POSIX_SEED: a number")],
        Err(_) => (first..first + n).collect(),
    };
    // Each sequence finds files the bucket has (read lazily, copied in on a write) and the
    // same files, made beforehand, in its local directory.
    let scratch = tempfile::tempdir().unwrap();
    let (bucket, local_base) = (scratch.path().join("bucket"), scratch.path().join("local"));
    std::fs::create_dir_all(&local_base).unwrap();
    for seed in &seeds {
        for side in [&bucket, &local_base] {
            let dir = side.join(format!("s{seed}"));
            std::fs::create_dir_all(dir.join("b")).unwrap();
            std::fs::write(dir.join("a"), data(3000 + *seed as usize % 5000, b'A')).unwrap();
            std::fs::write(dir.join("b/a"), format!("bucket file of sequence {seed}\n")).unwrap();
            std::fs::write(dir.join("c"), b"").unwrap();
            for f in ["a", "b/a", "c"] {
                std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            for d in [dir.clone(), dir.join("b")] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }
    for d in [scratch.path(), &local_base] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let volume = format!("w=file://{}/:rwd", bucket.display());
    let m = TestMount::new(&["--volume", &volume, "-o", "allow_other", "--execution", "posix-diff-seeded"], &[]);
    let mut ours = Side::new(m.path("volumes/w"), Some(m.path("volumes/w")));
    let mut local = Side::new(local_base.clone(), Some(local_base));
    let verbose = seeds.len() == 1;
    let mut failed = Vec::new();
    for &seed in &seeds {
        if let Err(e) = run_sequence(seed, &mut ours, &mut local, verbose) {
            eprintln!(
                "sequence {seed} differs in a volume with bucket files at {e}\n  (replay: DATUMFS_POSIX_SEED={seed} \
                 cargo test --test posix_diff a_volume_with)"
            );
            failed.push(seed);
            if failed.len() >= 5 {
                break;
            }
        }
    }
    ours.close_all();
    local.close_all();
    assert!(failed.is_empty(), "sequences that differ in a volume with bucket files: {failed:?} (output above)");
}

/// Runs the sequences (as many as `count_var` says, else `default_count`) on `target` under
/// the mount and on a local directory, and fails on the first few that differ.
fn differential(m: &TestMount, target: &str, count_var: &str, default_count: u64) {
    // Both sides reachable by the other user, on the same filesystem (the cache's).
    let local_root = m.dir.path().join("local");
    std::fs::create_dir_all(&local_root).unwrap();
    for d in [m.dir.path(), &local_root] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut ours = Side::new(m.path(target), None);
    let mut local = Side::new(local_root, None);
    assert_eq!(
        std::fs::metadata(&ours.root).unwrap().mode(),
        std::fs::metadata(&local.root).unwrap().mode(),
        "{target}/ starts as a fresh directory does"
    );
    if let Ok(seed) = std::env::var("DATUMFS_POSIX_SEED") {
        let seed: u64 = seed.parse().expect("DATUMFS_POSIX_SEED: a number");
        let res = run_sequence(seed, &mut ours, &mut local, true);
        ours.clear();
        local.clear();
        if let Err(e) = res {
            panic!("sequence {seed} differs at {e}");
        }
        return;
    }
    let n: u64 = std::env::var(count_var).ok().and_then(|v| v.parse().ok()).unwrap_or(default_count);
    let first: u64 = std::env::var("DATUMFS_POSIX_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut failed = Vec::new();
    for seed in first..first + n {
        if let Err(e) = run_sequence(seed, &mut ours, &mut local, false) {
            eprintln!(
                "sequence {seed} differs in {target}/ at {e}\n  (replay: DATUMFS_POSIX_SEED={seed} cargo test --test posix_diff)"
            );
            failed.push(seed);
            if failed.len() >= 5 {
                break;
            }
        }
    }
    ours.clear();
    local.clear();
    assert!(failed.is_empty(), "sequences that differ in {target}/: {failed:?} (output above)");
}

fn nix_is_root() -> bool {
    // SAFETY: a plain syscall.
    unsafe { libc::geteuid() == 0 }
}
