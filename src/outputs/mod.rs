//! The writable `outputs/` tree: a private staging directory on local disk (under the cache dir,
//! one per execution) that FUSE requests are applied to, plus the sync state kept in sled.
//!
//! Every byte a job writes lands in a plain file in staging, so POSIX semantics (rename,
//! truncate, sparse writes, fsync, symlinks) are the local filesystem's own, and a daemon crash
//! loses nothing: remounting with the same execution id finds the files again. Inode numbers
//! of the tree are assigned here; knows nothing of FUSE or of the store.

pub mod hashing;
pub mod state;

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// First inode number of staged entries (the fixed tree and inputs use the numbers below).
pub const INO_BASE: u64 = 1 << 56;

/// What a staged entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryKind {
    /// The kind of an entry of file type `ft`.
    pub fn of(ft: std::fs::FileType) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            EntryKind::File
        }
    }

    /// What sync says when it skips an entry of this kind.
    pub fn skipped_because(self) -> &'static str {
        match self {
            EntryKind::Symlink => "a symbolic link (not uploaded)",
            EntryKind::Fifo => "a FIFO (not uploaded)",
            EntryKind::Socket => "a socket (not uploaded)",
            EntryKind::CharDevice | EntryKind::BlockDevice => "a device node (not uploaded)",
            EntryKind::Dir | EntryKind::File => "not a regular file (not uploaded)",
        }
    }
}

/// Who asks for a new entry: it is made theirs (when the daemon may give files away, as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The caller's user id.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
}

/// Who writes to or truncates a file, as the kernel names them: what that clears of the file's
/// set-id bits depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    /// The writer's user id (0: privileged, clears nothing).
    pub uid: u32,
    /// The writer's group id.
    pub gid: u32,
    /// The writer's process, for its supplementary groups.
    pub pid: u32,
}

impl Writer {
    /// `mode` (of a regular file of group `file_gid`) without what a write or truncate by this
    /// writer clears on a local disk, or `None` if it clears nothing: set-user-id, and
    /// set-group-id if the file is group-executable or the writer is not in its group.
    pub fn clears(&self, mode: u32, file_gid: u32) -> Option<u32> {
        if self.uid == 0 || mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return None;
        }
        let mut kept = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !self.in_group(file_gid)) {
            kept &= !libc::S_ISGID;
        }
        (kept != mode).then_some(kept)
    }

    /// Whether the writer is in group `gid`: its own, or one of its process's supplementary
    /// groups (as `/proc` shows them; none if the process is gone).
    fn in_group(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
    }
}

/// Attributes of a staged entry.
#[derive(Debug, Clone)]
pub struct EntryAttr {
    /// Inode number on the mount.
    pub ino: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
}

#[derive(Debug, Clone)]
struct Link {
    parent: u64,
    name: OsString,
}

#[derive(Default)]
struct Inodes {
    /// Inode -> its names the kernel knows (parent inode and name; several for a file with
    /// hard links).
    links: HashMap<u64, Vec<Link>>,
    /// Staging file identity (st_ino) -> inode.
    by_file: HashMap<u64, u64>,
    /// Inodes whose last name went, as they were then (a directory removed while open still
    /// answers fstat, with no links), the most recent [`ORPHANS_KEPT`].
    orphans: HashMap<u64, EntryAttr>,
    orphan_order: std::collections::VecDeque<u64>,
    next: u64,
}

/// Removed inodes whose last attributes are kept.
const ORPHANS_KEPT: usize = 4096;

/// One execution's staging area.
pub struct Staging {
    dir: PathBuf,
    root: PathBuf,
    root_ino: u64,
    /// The inode numbers its entries take (the root's aside).
    inos: std::ops::Range<u64>,
    root_file: u64,
    inodes: Mutex<Inodes>,
    /// Whether new entries can be given to their callers (the daemon runs as root).
    give_away: bool,
    /// The daemon's own user and group.
    daemon: Caller,
    /// The daemon's umask, which the local filesystem applies to what it makes.
    umask: u32,
    /// Checksums of files followed as they are written.
    pub hasher: hashing::WriteHasher,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if b.len() > 255 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::new(secs as u64, nsecs as u32)
    } else {
        SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs())
    }
}

/// A time to set with `utimens`.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    /// The current time.
    Now,
    /// A given time.
    At(SystemTime),
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(SetTime::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(SetTime::At(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long }
        }
    }
}

impl Staging {
    /// Opens (or creates) the staging area in `dir`; `root_ino` is the inode of `outputs/`.
    pub fn open(dir: &Path, root_ino: u64) -> io::Result<Self> {
        Self::open_numbered(dir, root_ino, INO_BASE..u64::MAX)
    }

    /// [`Staging::open`] for a tree whose root is `root_ino` and whose entries take inode
    /// numbers from `inos` (a writable volume's, beside outputs').
    pub fn open_numbered(dir: &Path, root_ino: u64, inos: std::ops::Range<u64>) -> io::Result<Self> {
        let root = dir.join("files");
        crate::util::create_private_dir(dir)?;
        // `outputs/` itself starts as a fresh directory would (others may enter and read, as
        // the mode bits say, through the mount; the staging area around it stays private).
        match std::fs::DirBuilder::new().mode(0o755).create(&root) {
            Ok(()) => std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let root_file = std::fs::metadata(&root)?.ino();
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
            root_ino,
            root_file,
            inodes: Mutex::new(Inodes { next: inos.start, ..Default::default() }),
            inos,
            give_away: nix::unistd::geteuid().is_root(),
            daemon: Caller { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw() },
            umask: process_umask(),
            hasher: hashing::WriteHasher::new(),
        })
    }

    /// The directory holding the staged files.
    pub fn files_dir(&self) -> &Path {
        &self.root
    }

    /// The staging area (files and bookkeeping).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `ino` belongs to the tree.
    pub fn owns(&self, ino: u64) -> bool {
        ino == self.root_ino || self.inos.contains(&ino)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inode of the directory holding `ino` (`None` for the root or an unknown inode).
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        self.lock().links.get(&ino).and_then(|l| l.first()).map(|l| l.parent)
    }

    /// The staging path of `ino`.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        let inodes = self.lock();
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != self.root_ino {
            let link = inodes
                .links
                .get(&cur)
                .and_then(|l| l.first())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            parts.push(link.name.clone());
            cur = link.parent;
            if parts.len() > 4096 {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
        }
        let mut p = self.root.clone();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Ok(p)
    }

    fn child(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.path(parent)?.join(name))
    }

    /// The inode for a staging file found at (`parent`, `name`), assigned on first sight.
    fn remember(&self, parent: u64, name: &OsStr, meta: &std::fs::Metadata) -> u64 {
        if meta.ino() == self.root_file {
            return self.root_ino;
        }
        let mut inodes = self.lock();
        let ino = match inodes.by_file.get(&meta.ino()) {
            Some(&ino) => ino,
            None => {
                let ino = inodes.next;
                inodes.next += 1;
                inodes.by_file.insert(meta.ino(), ino);
                ino
            }
        };
        // Room for one name: most files never get a second (a pushed-to empty Vec makes room
        // for four, 96 bytes per file for nothing).
        let names = inodes.links.entry(ino).or_insert_with(|| Vec::with_capacity(1));
        if !names.iter().any(|l| l.parent == parent && l.name == name) {
            names.push(Link { parent, name: name.to_os_string() });
        }
        ino
    }

    /// Forgets name (`parent`, `name`) of staging file `file` (unlinked, renamed away or
    /// replaced by a rename); once it has no name left, its inode is forgotten too.
    fn forget_name(&self, file: u64, parent: u64, name: &OsStr) {
        self.forget_name_of(file, parent, name, None);
    }

    /// [`Staging::forget_name`] for an entry removed (`removed`: its attributes before), which
    /// are kept for its inode once it has no name left.
    fn forget_name_of(&self, file: u64, parent: u64, name: &OsStr, removed: Option<&std::fs::Metadata>) {
        let orphan = removed.and_then(|meta| {
            let ino = *self.lock().by_file.get(&file)?;
            let mut attr = self.attr(ino, meta);
            attr.nlink = if meta.is_dir() { 0 } else { attr.nlink.saturating_sub(1) };
            Some(attr)
        });
        let mut inodes = self.lock();
        let Some(&ino) = inodes.by_file.get(&file) else { return };
        let names = inodes.links.entry(ino).or_default();
        names.retain(|l| !(l.parent == parent && l.name == name));
        if names.is_empty() {
            inodes.links.remove(&ino);
            inodes.by_file.remove(&file);
            if let Some(attr) = orphan {
                inodes.orphans.insert(ino, attr);
                inodes.orphan_order.push_back(ino);
                if inodes.orphan_order.len() > ORPHANS_KEPT {
                    if let Some(old) = inodes.orphan_order.pop_front() {
                        inodes.orphans.remove(&old);
                    }
                }
            }
        }
    }

    /// The attributes an inode had when its last name was removed, if it is one of those kept.
    pub fn orphan_attr(&self, ino: u64) -> Option<EntryAttr> {
        self.lock().orphans.get(&ino).cloned()
    }

    /// Makes a new entry at `path` its caller's, as the local filesystem would have: the
    /// caller's user, and the group of a set-group-id parent directory or else the caller's;
    /// its permission bits exactly `mode` (the daemon's own umask does not apply).
    /// Costs nothing in the usual case (the daemon's own user creating, no umask in the way):
    /// the local filesystem already did all of it.
    fn settle_new(&self, path: &Path, caller: Caller, mode: Option<u32>) -> io::Result<()> {
        let chown = self.give_away && caller != self.daemon;
        if chown {
            let parent = std::fs::metadata(path.parent().unwrap_or(&self.root))?;
            let gid = if parent.mode() & libc::S_ISGID != 0 { parent.gid() } else { caller.gid };
            std::os::unix::fs::lchown(path, Some(caller.uid), Some(gid))?;
        }
        if let Some(mode) = mode {
            // The umask took bits, or the chown cleared set-id bits: set them as asked (a
            // directory's inherited set-group-id bit stays).
            let cleared = chown && mode & (libc::S_ISUID | libc::S_ISGID) != 0;
            if mode & self.umask != 0 || cleared {
                let now = std::fs::symlink_metadata(path)?.mode();
                let wanted = if now & libc::S_IFMT == libc::S_IFDIR {
                    // mkdir takes no set-id bits from its mode, but inherits set-group-id.
                    (mode & 0o1777) | (now & libc::S_ISGID)
                } else {
                    mode & 0o7777
                };
                if now & 0o7777 != wanted {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
                }
            }
        }
        Ok(())
    }

    fn attr(&self, ino: u64, meta: &std::fs::Metadata) -> EntryAttr {
        EntryAttr {
            ino,
            kind: EntryKind::of(meta.file_type()),
            size: meta.len(),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<EntryAttr> {
        let path = self.child(parent, name)?;
        let meta = std::fs::symlink_metadata(&path)?;
        let ino = self.remember(parent, name, &meta);
        Ok(self.attr(ino, &meta))
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> io::Result<EntryAttr> {
        let meta = std::fs::symlink_metadata(self.path(ino)?)?;
        Ok(self.attr(ino, &meta))
    }

    /// Attributes of `ino` from a file open on it (which may have no name left).
    pub fn attr_of_open(&self, ino: u64, file: &std::fs::File) -> io::Result<EntryAttr> {
        Ok(self.attr(ino, &file.metadata()?))
    }

    /// Changes owner, mode, size and times of `ino` (`file`: an open handle, for truncation).
    pub fn setattr(&self, ino: u64, change: &Change, file: Option<&std::fs::File>) -> io::Result<EntryAttr> {
        match file {
            Some(f) => self.setattr_open(ino, change, f),
            None => self.setattr_path(ino, change),
        }
    }

    /// A setattr through a file open on the inode (which may have no name left).
    fn setattr_open(&self, ino: u64, change: &Change, f: &std::fs::File) -> io::Result<EntryAttr> {
        use std::os::fd::AsRawFd;
        let Change { mode, uid, gid, size, atime, mtime, drop_privileges: drop } = *change;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(f, uid, gid)?;
        }
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if let Some(size) = size {
            self.truncate(f, size)?;
        }
        if let Some(writer) = drop {
            // SAFETY: an open descriptor and a valid C string.
            drop_privileges(
                writer,
                f.metadata()?,
                |m| f.set_permissions(m),
                |name| unsafe { libc::fremovexattr(f.as_raw_fd(), name.as_ptr()) },
            )?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            // SAFETY: an open descriptor and two timespecs, as futimens requires.
            if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.attr_of_open(ino, f)
    }

    /// A setattr by the inode's name.
    fn setattr_path(&self, ino: u64, change: &Change) -> io::Result<EntryAttr> {
        let Change { mode, uid, gid, size, atime, mtime, drop_privileges: drop } = *change;
        let path = self.path(ino)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
        if let Some(mode) = mode {
            if !std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if let Some(size) = size {
            self.truncate(&std::fs::OpenOptions::new().write(true).open(&path)?, size)?;
        }
        if let Some(writer) = drop {
            let c = cstr(&path)?;
            // SAFETY: valid C strings.
            drop_privileges(
                writer,
                std::fs::symlink_metadata(&path)?,
                |m| std::fs::set_permissions(&path, m),
                |name| unsafe { libc::lremovexattr(c.as_ptr(), name.as_ptr()) },
            )?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            let c = cstr(&path)?;
            // SAFETY: a valid path and two timespecs, as utimensat requires.
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.getattr(ino)
    }

    /// Truncates (or extends) a staged file, telling the write hasher.
    fn truncate(&self, f: &std::fs::File, size: u64) -> io::Result<()> {
        f.set_len(size)?;
        let id = f.metadata()?.ino();
        if size == 0 {
            self.hasher.reset(id);
        } else {
            self.hasher.invalidate(id);
        }
        Ok(())
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> io::Result<EntryAttr> {
        let path = self.child(parent, name)?;
        std::fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        self.settle_new(&path, caller, Some(mode))?;
        self.lookup(parent, name)
    }

    /// Creates a FIFO, socket or device node (`mode` carries the type, `rdev` the device).
    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u32, caller: Caller) -> io::Result<EntryAttr> {
        let path = self.child(parent, name)?;
        let c = cstr(&path)?;
        // SAFETY: a valid path; mknod with the kernel's own mode and device number.
        if unsafe { libc::mknod(c.as_ptr(), mode, libc::dev_t::from(rdev)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.settle_new(&path, caller, Some(mode & 0o7777))?;
        self.lookup(parent, name)
    }

    /// Gives file `ino` another name (a hard link: one staged file, one inode).
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> io::Result<EntryAttr> {
        std::fs::hard_link(self.path(ino)?, self.child(new_parent, new_name)?)?;
        self.lookup(new_parent, new_name)
    }

    /// Creates (or, without `O_EXCL`, opens) a file and opens it with `flags`, any access mode
    /// included (`O_RDONLY` makes an empty file, as lock files are made); with `read_write`,
    /// the staging file is opened to read and write whatever `flags` ask.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
        read_write: bool,
    ) -> io::Result<(EntryAttr, std::fs::File, u64)> {
        let path = self.child(parent, name)?;
        let asked = flags;
        let flags = if read_write { (flags & !libc::O_ACCMODE) | libc::O_RDWR } else { flags };
        // Made here, or opened as it was: only a file made here takes the mode and the caller.
        let file = loop {
            match open_with(&path, flags | libc::O_CREAT | libc::O_EXCL, mode & 0o7777) {
                Ok(f) => {
                    self.settle_new(&path, caller, Some(mode))?;
                    break f;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    match open_with(&path, flags & !libc::O_CREAT, 0) {
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        other => break other?,
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let meta = file.metadata()?;
        if meta.len() == 0 && (asked & libc::O_ACCMODE) != libc::O_RDONLY {
            self.hasher.reset(meta.ino());
        }
        let ino = self.remember(parent, name, &meta);
        Ok((self.attr(ino, &meta), file, meta.ino()))
    }

    /// Opens `ino` with `flags` (with `read_write`, to read and write whatever they ask);
    /// returns the file and its staging identity (for [`hashing::WriteHasher`]).
    pub fn open_file(&self, ino: u64, flags: i32, read_write: bool) -> io::Result<(std::fs::File, u64)> {
        let access = if read_write { libc::O_RDWR } else { flags & libc::O_ACCMODE };
        let opened = (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_ACCMODE)) | access;
        let file = open_with(&self.path(ino)?, opened, 0)?;
        let meta = file.metadata()?;
        if meta.len() == 0 && (flags & libc::O_ACCMODE) != libc::O_RDONLY {
            self.hasher.reset(meta.ino());
        }
        Ok((file, meta.ino()))
    }

    /// Removes a file or symlink.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        std::fs::remove_file(&path)?;
        self.forget_name_of(meta.ino(), parent, name, Some(&meta));
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let meta = std::fs::symlink_metadata(&path)?;
        std::fs::remove_dir(&path)?;
        self.forget_name_of(meta.ino(), parent, name, Some(&meta));
        Ok(())
    }

    /// Renames within outputs (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr, flags: u32) -> io::Result<()> {
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let source = std::fs::symlink_metadata(&from)?.ino();
        let replaced = std::fs::symlink_metadata(&to).ok().map(|m| m.ino());
        let (a, b) = (cstr(&from)?, cstr(&to)?);
        // SAFETY: two valid paths; renameat2 with the kernel's own flags.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if replaced == Some(source) {
            // Two names of one file: POSIX renames nothing.
            return Ok(());
        }
        // The new names first, so that an inode moving keeps its number (a directory's
        // children name it as their parent), then the old names go.
        if let Ok(meta) = std::fs::symlink_metadata(&to) {
            self.remember(new_parent, new_name, &meta);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Ok(meta) = std::fs::symlink_metadata(&from) {
                self.remember(parent, name, &meta);
            }
        }
        self.forget_name(source, parent, name);
        if let Some(old) = replaced {
            self.forget_name(old, new_parent, new_name);
        }
        Ok(())
    }

    /// Creates a symbolic link.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path, caller: Caller) -> io::Result<EntryAttr> {
        let path = self.child(parent, name)?;
        std::os::unix::fs::symlink(target, &path)?;
        self.settle_new(&path, caller, None)?;
        self.lookup(parent, name)
    }

    /// Extended attribute `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        let (path, name) = (cstr(&self.path(ino)?)?, xattr_name(name)?);
        xattr_buffer(|buf, len| {
            // SAFETY: valid C strings and a buffer of `len` bytes (or none, to ask the size).
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) }
        })
    }

    /// Names of the extended attributes of `ino`, NUL-separated.
    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        let path = cstr(&self.path(ino)?)?;
        xattr_buffer(|buf, len| {
            // SAFETY: a valid C string and a buffer of `len` bytes (or none, to ask the size).
            unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) }
        })
    }

    /// Sets extended attribute `name` of `ino` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let (path, name) = (cstr(&self.path(ino)?)?, xattr_name(name)?);
        // SAFETY: valid C strings and a value of the length given.
        let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes extended attribute `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> io::Result<()> {
        let (path, name) = (cstr(&self.path(ino)?)?, xattr_name(name)?);
        // SAFETY: valid C strings.
        if unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(self.path(ino)?)?.into_os_string().into_vec())
    }

    /// The entries of directory `ino` (without `.` and `..`).
    pub fn readdir(&self, ino: u64) -> io::Result<Vec<(u64, String, EntryKind)>> {
        let path = self.path(ino)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Ok(meta) = entry.metadata() else { continue };
            let child = self.remember(ino, &name, &meta);
            let kind = self.attr(child, &meta).kind;
            out.push((child, name.to_string_lossy().into_owned(), kind));
        }
        Ok(out)
    }

    /// Removes every staged file (after `unmount --discard`, or once all is synced).
    pub fn remove_all(&self) -> io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

use std::os::unix::ffi::OsStringExt;

/// The process's umask, read without changing it (`/proc/self/status`; 0o022 if unknown).
fn process_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

/// What a setattr changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// An unprivileged writer whose truncate or direct write this is: clear the set-id bits
    /// it clears and the file's capabilities, as a local filesystem does. The kernel leaves
    /// that to us (`FUSE_HANDLE_KILLPRIV_V2`), also for the writes it makes directly.
    pub drop_privileges: Option<Writer>,
}

/// Clears what [`Change::drop_privileges`] asks of a staging file, given its metadata, a way
/// to set its mode and one to remove its `security.capability` (returning what the syscall
/// returned). Only regular files have anything to clear.
fn drop_privileges(
    writer: Writer,
    meta: std::fs::Metadata,
    chmod: impl FnOnce(std::fs::Permissions) -> io::Result<()>,
    remove_capability: impl FnOnce(&std::ffi::CStr) -> libc::c_int,
) -> io::Result<()> {
    if !meta.is_file() {
        return Ok(());
    }
    if let Some(kept) = writer.clears(meta.mode(), meta.gid()) {
        chmod(std::fs::Permissions::from_mode(kept & 0o7777))?;
    }
    if remove_capability(c"security.capability") != 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
            return Err(e);
        }
    }
    Ok(())
}

fn xattr_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Calls an xattr getter twice: for the size, then into a buffer of that size.
fn xattr_buffer(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let len = call(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        // It grew in between: ask again.
    }
}

/// Opens `path` with the kernel's `flags` as given (any access mode with `O_CREAT`, `O_TRUNC`
/// on a read-only open, ...), minus those that only make sense to the kernel's own file:
/// appends arrive with the kernel's offsets.
fn open_with(path: &Path, flags: i32, mode: u32) -> io::Result<std::fs::File> {
    let passed = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_TRUNC
        | libc::O_NOFOLLOW
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME;
    let c = cstr(path)?;
    // SAFETY: a valid path; the file descriptor returned is owned by the File made from it.
    let fd = unsafe { libc::open(c.as_ptr(), (flags & passed) | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::Writer;

    #[test]
    fn a_writer_clears_the_set_id_bits_a_local_disk_clears() {
        let me = std::process::id();
        let user = Writer { uid: 1000, gid: 1000, pid: me };
        let root = Writer { uid: 0, gid: 0, pid: me };
        assert_eq!(root.clears(0o104755, 5), None, "root keeps them");
        assert_eq!(user.clears(0o100644, 5), None, "nothing to clear");
        assert_eq!(user.clears(0o104755, 1000), Some(0o100755));
        assert_eq!(user.clears(0o102775, 1000), Some(0o100775), "group-executable: set-group-id goes");
        assert_eq!(user.clears(0o102765, 1000), None, "not group-executable, the writer's group: kept");
        assert_eq!(user.clears(0o102765, 4242), Some(0o100765), "not group-executable, another group: gone");
        assert_eq!(user.clears(0o106765, 1000), Some(0o102765));
    }
}
