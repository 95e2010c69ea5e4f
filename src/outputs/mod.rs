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
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// Inode -> where it is (parent inode and name).
    links: HashMap<u64, Link>,
    /// Staging file identity (st_ino) -> inode.
    by_file: HashMap<u64, u64>,
    next: u64,
}

/// One execution's staging area.
pub struct Staging {
    dir: PathBuf,
    root: PathBuf,
    root_ino: u64,
    root_file: u64,
    inodes: Mutex<Inodes>,
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
        let root = dir.join("files");
        crate::util::create_private_dir(dir)?;
        crate::util::create_private_dir(&root)?;
        let root_file = std::fs::metadata(&root)?.ino();
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
            root_ino,
            root_file,
            inodes: Mutex::new(Inodes { next: INO_BASE, ..Default::default() }),
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

    /// Whether `ino` belongs to the outputs tree.
    pub fn owns(&self, ino: u64) -> bool {
        ino == self.root_ino || ino >= INO_BASE
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inode of the directory holding `ino` (`None` for the root or an unknown inode).
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        self.lock().links.get(&ino).map(|l| l.parent)
    }

    /// The staging path of `ino`.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        let inodes = self.lock();
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != self.root_ino {
            let link = inodes.links.get(&cur).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
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
        inodes.links.insert(ino, Link { parent, name: name.to_os_string() });
        ino
    }

    /// Forgets a staging file that is gone (unlinked, or replaced by a rename), so that its name
    /// no longer leads to its inode.
    fn forget(&self, file: u64) {
        let mut inodes = self.lock();
        if let Some(ino) = inodes.by_file.remove(&file) {
            inodes.links.remove(&ino);
        }
    }

    fn attr(&self, ino: u64, meta: &std::fs::Metadata) -> EntryAttr {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::File
        };
        EntryAttr {
            ino,
            kind,
            size: meta.len(),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
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

    /// Changes mode, size and times of `ino` (`file`: an open handle, for truncation).
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
        file: Option<&std::fs::File>,
    ) -> io::Result<EntryAttr> {
        let path = self.path(ino)?;
        if let Some(mode) = mode {
            if !std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if let Some(size) = size {
            let opened;
            let f = match file {
                Some(f) => f,
                None => {
                    opened = std::fs::OpenOptions::new().write(true).open(&path)?;
                    &opened
                }
            };
            f.set_len(size)?;
            let id = f.metadata()?.ino();
            if size == 0 {
                self.hasher.reset(id);
            } else {
                self.hasher.invalidate(id);
            }
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

    /// Creates a directory.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> io::Result<EntryAttr> {
        let path = self.child(parent, name)?;
        std::fs::DirBuilder::new().mode(mode & 0o7777).create(&path)?;
        self.lookup(parent, name)
    }

    /// Creates (or, without `O_EXCL`, opens) a file and opens it with `flags`.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(EntryAttr, std::fs::File, u64)> {
        let path = self.child(parent, name)?;
        let file = open_with(&path, flags | libc::O_CREAT, mode & 0o7777)?;
        let meta = file.metadata()?;
        if meta.len() == 0 {
            self.hasher.reset(meta.ino());
        }
        let ino = self.remember(parent, name, &meta);
        Ok((self.attr(ino, &meta), file, meta.ino()))
    }

    /// Opens `ino` with `flags`; returns the file and its staging identity (for
    /// [`hashing::WriteHasher`]).
    pub fn open_file(&self, ino: u64, flags: i32) -> io::Result<(std::fs::File, u64)> {
        let file = open_with(&self.path(ino)?, flags & !libc::O_CREAT & !libc::O_EXCL, 0)?;
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
        if meta.nlink() <= 1 {
            self.forget(meta.ino());
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let meta = std::fs::symlink_metadata(&path)?;
        std::fs::remove_dir(&path)?;
        self.forget(meta.ino());
        Ok(())
    }

    /// Renames within outputs (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr, flags: u32) -> io::Result<()> {
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let replaced = std::fs::symlink_metadata(&to).ok().map(|m| m.ino());
        let (a, b) = (cstr(&from)?, cstr(&to)?);
        // SAFETY: two valid paths; renameat2 with the kernel's own flags.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let moved = std::fs::symlink_metadata(&to).ok();
        if let (Some(old), Some(new)) = (replaced, &moved) {
            if old != new.ino() && flags & libc::RENAME_EXCHANGE == 0 {
                self.forget(old);
            }
        }
        if let Some(meta) = moved {
            self.remember(new_parent, new_name, &meta);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Ok(meta) = std::fs::symlink_metadata(&from) {
                self.remember(parent, name, &meta);
            }
        }
        Ok(())
    }

    /// Creates a symbolic link.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &Path) -> io::Result<EntryAttr> {
        std::os::unix::fs::symlink(target, self.child(parent, name)?)?;
        self.lookup(parent, name)
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

fn open_with(path: &Path, flags: i32, mode: u32) -> io::Result<std::fs::File> {
    let acc = flags & libc::O_ACCMODE;
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
    o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    if flags & libc::O_CREAT != 0 {
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
        o.mode(mode);
    }
    if flags & libc::O_TRUNC != 0 {
        o.truncate(true);
    }
    // Appends arrive with the kernel's offsets; pass-through flags that matter to the file.
    o.custom_flags(flags & (libc::O_NOFOLLOW | libc::O_SYNC | libc::O_DSYNC));
    o.open(path)
}
