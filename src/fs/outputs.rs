//! `outputs/` as a namespace: every kernel operation applied to the staging area, answered in
//! the filesystem's own types. Every call is a quick local-disk operation, done on the calling
//! thread.

use super::namespace::{Namespace, OpenFile, OpenedFile, SetAttr};
use super::{Attr, DirEntry, FsResult, Kind};
use crate::outputs::{Caller, EntryAttr, EntryKind, Staging, Writer};
use async_trait::async_trait;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// `outputs/`: the execution's staging area.
pub struct OutputsNamespace {
    staging: Arc<Staging>,
    top: u64,
    parent: u64,
    /// Files open on each inode: a file whose last name went while open is reached only
    /// through them (its attributes, a truncate or chmod of it), as on a local filesystem.
    open: Mutex<HashMap<u64, Vec<Weak<StagedFile>>>>,
}

impl OutputsNamespace {
    /// `outputs/` over `staging`, whose root is inode `top`, a child of `parent`.
    pub fn new(staging: Arc<Staging>, top: u64, parent: u64) -> Self {
        Self { staging, top, parent, open: Mutex::default() }
    }

    /// The answer to an open of `ino` (staging file `file`, identity `id`) with `flags`. With
    /// `passthrough` (the file was opened for reading and writing), a regular file comes with a
    /// backing file the kernel reads and writes directly: no request per write, and no copy of
    /// the bytes through the daemon.
    fn opened(&self, ino: u64, file: std::fs::File, id: u64, flags: i32, passthrough: bool) -> OpenedFile {
        let meta = file.metadata().ok();
        let set_id = meta.as_ref().is_some_and(|m| has_set_id(m.mode()));
        // A write by the daemon's own user keeps set-id bits a write by the caller would
        // clear: files that have them are written through us, which clears them.
        let backing = match passthrough && !set_id && meta.as_ref().is_some_and(|m| m.is_file()) {
            true => file.try_clone().ok(),
            false => None,
        };
        let file = Arc::new(StagedFile {
            file,
            id,
            staging: self.staging.clone(),
            set_id: AtomicBool::new(set_id),
            writes: flags & libc::O_ACCMODE != libc::O_RDONLY,
            readable: passthrough || flags & libc::O_ACCMODE != libc::O_WRONLY,
            direct: AtomicBool::new(false),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let handles = open.entry(ino).or_default();
        handles.retain(|h| h.strong_count() > 0);
        handles.push(Arc::downgrade(&file));
        // Closed handles of other inodes go too, now and then.
        if open.len() > 1024 {
            open.retain(|_, hs| hs.iter().any(|h| h.strong_count() > 0));
        }
        // Writes reach the staging file as they come, so a close has nothing left to flush: the
        // kernel need not send the request at all (one of the few each copied file costs).
        OpenedFile { file, direct_io: true, keep_cache: false, backing, no_flush: true }
    }

    /// Every file open on `ino`.
    fn open_all(&self, ino: u64) -> Vec<Arc<StagedFile>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ino).map(|hs| hs.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default()
    }

    /// A file still open on `ino`, if any.
    fn open_on(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ino)?.iter().find_map(Weak::upgrade)
    }

    /// Whether `e` says the inode has no name: then an open file on it may still answer.
    fn nameless(e: &std::io::Error) -> bool {
        e.raw_os_error() == Some(libc::ENOENT)
    }
}

fn kind(k: EntryKind) -> Kind {
    match k {
        EntryKind::Dir => Kind::Dir,
        EntryKind::File => Kind::File,
        EntryKind::Symlink => Kind::Symlink,
        EntryKind::Fifo => Kind::Fifo,
        EntryKind::Socket => Kind::Socket,
        EntryKind::CharDevice => Kind::CharDevice,
        EntryKind::BlockDevice => Kind::BlockDevice,
    }
}

fn attr(e: EntryAttr) -> Attr {
    Attr {
        ino: e.ino,
        size: e.size,
        kind: kind(e.kind),
        perm: e.perm,
        mtime: e.mtime,
        staged: Some(super::StagedAttr {
            atime: e.atime,
            ctime: e.ctime,
            nlink: e.nlink,
            uid: e.uid,
            gid: e.gid,
            rdev: e.rdev,
        }),
        cache_for: super::CacheFor::Short,
    }
}

#[async_trait]
impl Namespace for OutputsNamespace {
    fn top(&self) -> u64 {
        self.top
    }

    fn owns(&self, ino: u64) -> bool {
        self.staging.owns(ino)
    }

    fn writable(&self) -> bool {
        true
    }

    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        let res = match self.staging.getattr(ino) {
            Err(e) if Self::nameless(&e) => match self.open_on(ino) {
                Some(f) => self.staging.attr_of_open(ino, &f.file),
                None => self.staging.orphan_attr(ino).ok_or(e),
            },
            other => other,
        };
        Some(res.map(attr).map_err(Into::into))
    }

    fn getattr_open(&self, ino: u64, file: &dyn OpenFile) -> Option<FsResult<Attr>> {
        let file = file.staged_file()?;
        Some(self.staging.attr_of_open(ino, file).map(attr).map_err(Into::into))
    }

    /// A file copied in was looked up three times before it was created (`cp` asks twice
    /// whether it exists, then the kernel once more as it opens it with `O_EXCL`, which it
    /// always checks afresh); remembering the absence saves one of those requests.
    fn absent_for(&self) -> super::CacheFor {
        super::CacheFor::Short
    }

    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        Some(self.staging.lookup(parent, OsStr::new(name)).map(attr).map_err(Into::into))
    }

    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>> {
        let parent = if ino == self.top { self.parent } else { self.staging.parent_of(ino).unwrap_or(self.top) };
        Some(
            self.staging
                .readdir(ino)
                .map(|entries| {
                    let entries = entries.into_iter().map(|(ino, name, k)| DirEntry { ino, name, kind: kind(k) });
                    (parent, entries.collect())
                })
                .map_err(Into::into),
        )
    }

    async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<OpenedFile> {
        let ((file, id), passthrough) = read_write_if(passthrough, |rw| self.staging.open_file(ino, flags, rw))?;
        Ok(self.opened(ino, file, id, flags, passthrough))
    }

    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Ok(self.staging.readlink(ino)?)
    }

    fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
        caller: Caller,
        passthrough: bool,
    ) -> FsResult<(Attr, OpenedFile)> {
        let name = OsStr::new(name);
        let ((a, file, id), passthrough) =
            read_write_if(passthrough, |rw| self.staging.create(parent, name, mode, flags, caller, rw))?;
        let ino = a.ino;
        Ok((attr(a), self.opened(ino, file, id, flags, passthrough)))
    }

    fn setattr(&self, ino: u64, change: SetAttr, file: Option<&dyn OpenFile>) -> FsResult<Attr> {
        if change.mode.is_some_and(has_set_id) {
            // Writes through open handles must look again (and clear the bits for others).
            for f in self.open_all(ino) {
                f.set_id.store(true, Ordering::Relaxed);
            }
        }
        let res = match self.staging.setattr(ino, &change, file.and_then(|f| f.staged_file())) {
            Err(e) if Self::nameless(&e) => match self.open_on(ino) {
                Some(f) => self.staging.setattr(ino, &change, Some(&f.file)),
                None => Err(e),
            },
            other => other,
        };
        Ok(attr(res?))
    }

    fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<Attr> {
        Ok(attr(self.staging.mkdir(parent, OsStr::new(name), mode, caller)?))
    }

    fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32, caller: Caller) -> FsResult<Attr> {
        Ok(attr(self.staging.mknod(parent, OsStr::new(name), mode, rdev, caller)?))
    }

    fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Attr> {
        Ok(attr(self.staging.link(ino, new_parent, OsStr::new(new_name))?))
    }

    fn try_getxattr(&self, ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        Some(self.staging.getxattr(ino, OsStr::new(name)).map_err(Into::into))
    }

    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        Ok(self.staging.listxattr(ino)?)
    }

    fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        Ok(self.staging.setxattr(ino, OsStr::new(name), value, flags)?)
    }

    fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        Ok(self.staging.removexattr(ino, OsStr::new(name))?)
    }

    fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        Ok(self.staging.unlink(parent, OsStr::new(name))?)
    }

    fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        Ok(self.staging.rmdir(parent, OsStr::new(name))?)
    }

    fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, flags: u32) -> FsResult<()> {
        Ok(self.staging.rename(parent, OsStr::new(name), new_parent, OsStr::new(new_name), flags)?)
    }

    fn symlink(&self, parent: u64, name: &str, target: &Path, caller: Caller) -> FsResult<Attr> {
        Ok(attr(self.staging.symlink(parent, OsStr::new(name), target, caller)?))
    }
}

/// Opens a staging file with `open(read_write)`: for passthrough (`wanted`), to read and write
/// whatever the caller asked (the kernel holds the handle to the caller's mode); a daemon that
/// may not (a read-only file, the daemon not root) opens it as asked, and the kernel comes to
/// us. Returns what `open` gave and whether it was read-write.
fn read_write_if<T>(wanted: bool, open: impl Fn(bool) -> std::io::Result<T>) -> FsResult<(T, bool)> {
    if wanted {
        match open(true) {
            Ok(t) => return Ok((t, true)),
            Err(e) if e.raw_os_error() != Some(libc::EACCES) => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok((open(false)?, false))
}

/// An open staged file; writes are followed by the hasher so that sync need not read them back.
/// A file the kernel writes directly is hashed whole when its last such handle is closed.
struct StagedFile {
    file: std::fs::File,
    /// The staging file's identity (st_ino).
    id: u64,
    staging: Arc<Staging>,
    /// Whether the file may have its set-user-id or set-group-id bit, which a write by anyone
    /// but root clears (the kernel leaves that to us for the direct writes outputs take).
    set_id: AtomicBool,
    /// Whether the handle was opened for writing.
    writes: bool,
    /// Whether the staging file was opened for reading.
    readable: bool,
    /// Whether the kernel writes through this handle directly (FUSE passthrough): its writes
    /// never reach [`OpenFile::write`], and the hasher reads the file whole once it is closed.
    direct: AtomicBool,
}

/// Whether `mode` has bits a write by an unprivileged user may clear: set-user-id or
/// set-group-id.
fn has_set_id(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

impl StagedFile {
    /// Clears the set-id bits before a write by `writer`, as a local filesystem does.
    fn drop_set_id(&self, writer: Writer) -> std::io::Result<()> {
        if writer.uid == 0 || !self.set_id.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let meta = self.file.metadata()?;
        if let Some(kept) = writer.clears(meta.mode(), meta.gid()) {
            self.file.set_permissions(std::fs::Permissions::from_mode(kept & 0o7777))?;
        }
        Ok(())
    }
}

#[async_trait]
impl OpenFile for StagedFile {
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        Some(pread(&self.file, offset, size))
    }

    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        pread(&self.file, offset, size)
    }

    fn write(&self, offset: u64, data: &[u8], writer: Writer) -> FsResult<u32> {
        self.drop_set_id(writer)?;
        self.file.write_all_at(data, offset)?;
        self.staging.hasher.write(self.id, offset, data);
        Ok(data.len() as u32)
    }

    fn fsync(&self, datasync: bool) -> FsResult<()> {
        if datasync {
            self.file.sync_data()?
        } else {
            self.file.sync_all()?
        }
        Ok(())
    }

    fn passed_through(&self) {
        if self.writes {
            // Told before the kernel has the handle, so before any write through it.
            self.staging.hasher.direct_open(self.id);
            self.direct.store(true, Ordering::Release);
        }
    }

    fn release(&self) {
        if self.direct.swap(false, Ordering::AcqRel) {
            // The hasher reads the file through this handle's staging file. A handle the daemon
            // could not open for reading (passthrough came from another handle of the inode)
            // gives it nothing: sync then hashes the file itself.
            let read = self.file.try_clone().ok().filter(|_| self.readable);
            self.staging.hasher.direct_close(self.id, read);
        } else {
            self.staging.hasher.seal(self.id);
        }
    }

    fn staged_file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }
}

/// Reads from a staged file.
fn pread(file: &std::fs::File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(done);
    Ok(buf)
}
