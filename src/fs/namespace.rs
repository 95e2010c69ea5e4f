//! The one shape every part of the mount has. The dispatcher ([`super::Fs`]) owns the root and
//! `inputs/`, finds the namespace an inode belongs to, and hands it the request; it never asks
//! what kind of namespace it is talking to.
//!
//! Today's implementations: one per input (a snapshot of objects, [`super::input`]), the
//! outputs staging tree ([`super::outputs`]) and `config/` ([`super::config`]). A copy-on-write
//! volume or a manifest-backed input is one more implementation. Read-only namespaces only
//! implement the reading half: every change answers EROFS by default.

use super::{Attr, CacheFor, DirEntry, FsError, FsResult};
use crate::outputs::{Caller, Writer};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

/// An open file, as a namespace serves it.
#[async_trait]
pub trait OpenFile: Send + Sync {
    /// Reads without waiting on anything but local memory or disk (`None`: call [`OpenFile::read`]).
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>>;

    /// Reads, fetching what is missing.
    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>>;

    /// Writes `data` at `offset` for `writer`; returns the bytes written.
    fn write(&self, _offset: u64, _data: &[u8], _writer: Writer) -> FsResult<u32> {
        Err(FsError::ReadOnly)
    }

    /// Flushes what was written to stable storage.
    fn fsync(&self, _datasync: bool) -> FsResult<()> {
        Ok(())
    }

    /// The kernel reads and writes the handle's file directly (FUSE passthrough, through the
    /// backing file this open offered or another handle of the inode did): what it writes
    /// never reaches [`OpenFile::write`]. Called before the kernel has the handle.
    fn passed_through(&self) {}

    /// The handle is closed.
    fn release(&self) {}

    /// The staged file behind the handle, for changes made through it (`ftruncate`).
    fn staged_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// A file a namespace opened, and how the kernel should treat it.
pub struct OpenedFile {
    /// The open file.
    pub file: Arc<dyn OpenFile>,
    /// Bypass the page cache.
    pub direct_io: bool,
    /// Keep cached pages across opens (immutable content).
    pub keep_cache: bool,
    /// A local file the kernel may read (and, for a staged file, write) directly (FUSE
    /// passthrough): a verified cache file, or a staging file.
    pub backing: Option<std::fs::File>,
    /// Closing it needs no word to us.
    pub no_flush: bool,
}

/// Changes asked of an inode's attributes (the staging area takes them as they come).
pub type SetAttr = crate::outputs::Change;

/// A part of the mount's tree that owns a set of inodes.
#[async_trait]
pub trait Namespace: Send + Sync {
    /// The inode of its top directory.
    fn top(&self) -> u64;

    /// Whether `ino` is one of its inodes (its top included).
    fn owns(&self, ino: u64) -> bool;

    /// Whether it takes changes at all; a change asked of a read-only one is EROFS.
    fn writable(&self) -> bool {
        false
    }

    /// Attributes when they need no I/O (`None`: call [`Namespace::getattr`]).
    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>>;

    /// Attributes of `ino`.
    async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.try_getattr(ino).unwrap_or(Err(FsError::NotFound))
    }

    /// Attributes of `ino` from an open handle on it, where the handle knows better than the
    /// inode's name (`None`: ask by inode).
    fn getattr_open(&self, _ino: u64, _file: &dyn OpenFile) -> Option<FsResult<Attr>> {
        None
    }

    /// How long the kernel may remember that a name looked up here does not exist. Only a
    /// namespace whose names change through the mount alone may say more than never: the kernel
    /// drops its note itself when it creates the name.
    fn absent_for(&self) -> CacheFor {
        CacheFor::Never
    }

    /// Looks `name` up in `parent` when that needs no I/O (`None`: call [`Namespace::lookup`]).
    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>>;

    /// Looks `name` up in directory `parent`.
    async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.try_lookup(parent, name).unwrap_or(Err(FsError::NotFound))
    }

    /// The entries of directory `ino` (without `.` and `..`) and its parent's inode, when that
    /// needs no I/O (`None`: call [`Namespace::readdir`]).
    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>>;

    /// The entries of directory `ino` and its parent's inode, listing it if needed.
    async fn readdir(&self, ino: u64) -> FsResult<(u64, Vec<DirEntry>)> {
        self.try_readdir(ino).unwrap_or(Err(FsError::NotDir))
    }

    /// Directory `ino` is being opened: a chance to prepare what a walk will ask for next.
    fn list_ahead(&self, _ino: u64) {}

    /// Opens a file when that needs no I/O and no waiting (`None`: call [`Namespace::open`]).
    fn try_open(&self, _ino: u64, _flags: i32, _passthrough: bool) -> Option<FsResult<OpenedFile>> {
        None
    }

    /// Opens a file; with `passthrough`, a verified local copy may come back for the kernel.
    async fn open(&self, ino: u64, flags: i32, passthrough: bool) -> FsResult<OpenedFile>;

    /// An extended attribute when it needs no I/O (`None`: call [`Namespace::getxattr`]).
    fn try_getxattr(&self, _ino: u64, name: &str) -> Option<FsResult<Vec<u8>>> {
        Some(Err(if name.starts_with("user.") { FsError::NoAttr } else { FsError::NotSupported }))
    }

    /// An extended attribute.
    async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        self.try_getxattr(ino, name).unwrap_or(Err(FsError::NoAttr))
    }

    /// Names of the extended attributes of `ino`, NUL-separated.
    fn listxattr(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Sets an extended attribute.
    fn setxattr(&self, _ino: u64, _name: &str, _value: &[u8], _flags: i32) -> FsResult<()> {
        Err(FsError::ReadOnly)
    }

    /// Removes an extended attribute.
    fn removexattr(&self, _ino: u64, _name: &str) -> FsResult<()> {
        Err(FsError::ReadOnly)
    }

    /// The target of a symbolic link.
    fn readlink(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Err(FsError::Os(libc::EINVAL))
    }

    /// Creates and opens a file, `caller`'s; with `passthrough`, a local file may come back for
    /// the kernel to read and write directly.
    fn create(
        &self,
        _parent: u64,
        _name: &str,
        _mode: u32,
        _flags: i32,
        _caller: Caller,
        _passthrough: bool,
    ) -> FsResult<(Attr, OpenedFile)> {
        Err(FsError::ReadOnly)
    }

    /// Changes mode, size or times; `file` is the handle the change came through, if any.
    fn setattr(&self, _ino: u64, _change: SetAttr, _file: Option<&dyn OpenFile>) -> FsResult<Attr> {
        Err(FsError::ReadOnly)
    }

    /// Creates a directory, `caller`'s.
    fn mkdir(&self, _parent: u64, _name: &str, _mode: u32, _caller: Caller) -> FsResult<Attr> {
        Err(FsError::ReadOnly)
    }

    /// Creates a FIFO, socket or device node, `caller`'s (`mode` carries the type).
    fn mknod(&self, _parent: u64, _name: &str, _mode: u32, _rdev: u32, _caller: Caller) -> FsResult<Attr> {
        Err(FsError::ReadOnly)
    }

    /// Gives `ino` another name (a hard link).
    fn link(&self, _ino: u64, _new_parent: u64, _new_name: &str) -> FsResult<Attr> {
        Err(FsError::ReadOnly)
    }

    /// Removes a file.
    fn unlink(&self, _parent: u64, _name: &str) -> FsResult<()> {
        Err(FsError::ReadOnly)
    }

    /// Removes an empty directory.
    fn rmdir(&self, _parent: u64, _name: &str) -> FsResult<()> {
        Err(FsError::ReadOnly)
    }

    /// Renames within this namespace.
    fn rename(&self, _parent: u64, _name: &str, _new_parent: u64, _new_name: &str, _flags: u32) -> FsResult<()> {
        Err(FsError::ReadOnly)
    }

    /// Creates a symbolic link, `caller`'s.
    fn symlink(&self, _parent: u64, _name: &str, _target: &Path, _caller: Caller) -> FsResult<Attr> {
        Err(FsError::ReadOnly)
    }
}
