//! `outputs/` as a namespace: every kernel operation applied to the staging area, answered in
//! the filesystem's own types. Every call is a quick local-disk operation, done on the calling
//! thread.

use super::namespace::{Namespace, OpenFile, OpenedFile, SetAttr};
use super::{Attr, DirEntry, FsResult, Kind};
use crate::outputs::{EntryAttr, EntryKind, Staging};
use async_trait::async_trait;
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// `outputs/`: the execution's staging area.
pub struct OutputsNamespace {
    staging: Arc<Staging>,
    top: u64,
    parent: u64,
}

impl OutputsNamespace {
    /// `outputs/` over `staging`, whose root is inode `top`, a child of `parent`.
    pub fn new(staging: Arc<Staging>, top: u64, parent: u64) -> Self {
        Self { staging, top, parent }
    }
}

fn kind(k: EntryKind) -> Kind {
    match k {
        EntryKind::Dir => Kind::Dir,
        EntryKind::File => Kind::File,
        EntryKind::Symlink => Kind::Symlink,
    }
}

fn attr(e: EntryAttr) -> Attr {
    Attr {
        ino: e.ino,
        size: e.size,
        kind: kind(e.kind),
        perm: e.perm,
        mtime: e.mtime,
        times: Some((e.atime, e.ctime)),
        nlink: Some(e.nlink),
        cache_for: super::CacheFor::Short,
    }
}

fn opened(file: std::fs::File, id: u64, staging: &Arc<Staging>) -> OpenedFile {
    OpenedFile {
        file: Arc::new(StagedFile { file, id, staging: staging.clone() }),
        direct_io: true,
        keep_cache: false,
        backing: None,
        no_flush: false,
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
        Some(self.staging.getattr(ino).map(attr).map_err(Into::into))
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

    async fn open(&self, ino: u64, flags: i32, _passthrough: bool) -> FsResult<OpenedFile> {
        let (file, id) = self.staging.open_file(ino, flags)?;
        Ok(opened(file, id, &self.staging))
    }

    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Ok(self.staging.readlink(ino)?)
    }

    fn create(&self, parent: u64, name: &str, mode: u32, flags: i32) -> FsResult<(Attr, OpenedFile)> {
        let (a, file, id) = self.staging.create(parent, OsStr::new(name), mode, flags)?;
        Ok((attr(a), opened(file, id, &self.staging)))
    }

    fn setattr(&self, ino: u64, change: SetAttr, file: Option<&dyn OpenFile>) -> FsResult<Attr> {
        let file = file.and_then(|f| f.staged_file());
        Ok(attr(self.staging.setattr(ino, change.mode, change.size, change.atime, change.mtime, file)?))
    }

    fn mkdir(&self, parent: u64, name: &str, mode: u32) -> FsResult<Attr> {
        Ok(attr(self.staging.mkdir(parent, OsStr::new(name), mode)?))
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

    fn symlink(&self, parent: u64, name: &str, target: &Path) -> FsResult<Attr> {
        Ok(attr(self.staging.symlink(parent, OsStr::new(name), target)?))
    }
}

/// An open staged file; writes are followed by the hasher so that sync need not read them back.
struct StagedFile {
    file: std::fs::File,
    /// The staging file's identity (st_ino).
    id: u64,
    staging: Arc<Staging>,
}

#[async_trait]
impl OpenFile for StagedFile {
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        Some(pread(&self.file, offset, size))
    }

    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        pread(&self.file, offset, size)
    }

    fn write(&self, offset: u64, data: &[u8]) -> FsResult<u32> {
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
