//! Kernel operations on `outputs/`: applied to the staging area, answered in the filesystem's
//! own types. Every call is a quick local-disk operation, done on the calling thread.

use super::{Attr, DirEntry, Fs, FsError, FsResult, Handle, Kind, Opened};
use crate::outputs::{EntryAttr, EntryKind, SetTime, Staging};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn attr(e: EntryAttr) -> Attr {
    Attr {
        ino: e.ino,
        size: e.size,
        kind: match e.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File,
            EntryKind::Symlink => Kind::Symlink,
        },
        perm: e.perm,
        mtime: e.mtime,
        times: Some((e.atime, e.ctime)),
        nlink: Some(e.nlink),
        volatile: true,
    }
}

/// Reads from a staged file.
pub(super) fn pread(file: &std::fs::File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
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

impl Fs {
    fn staging_of(&self, ino: u64) -> FsResult<&Staging> {
        match self.out(ino) {
            Some(st) => Ok(st),
            None => {
                self.node(ino)?;
                Err(FsError::ReadOnly)
            }
        }
    }

    pub(super) fn out_getattr(&self, st: &Staging, ino: u64) -> FsResult<Attr> {
        Ok(attr(st.getattr(ino)?))
    }

    pub(super) fn out_lookup(&self, st: &Staging, parent: u64, name: &str) -> FsResult<Attr> {
        Ok(attr(st.lookup(parent, OsStr::new(name))?))
    }

    pub(super) fn out_opendir(&self, st: &Staging, ino: u64) -> FsResult<u64> {
        let parent = if ino == super::tree::OUTPUTS { super::tree::ROOT } else { ino };
        let mut entries = vec![
            DirEntry { ino, name: ".".into(), kind: Kind::Dir },
            DirEntry { ino: parent, name: "..".into(), kind: Kind::Dir },
        ];
        for (child, name, kind) in st.readdir(ino)? {
            let kind = match kind {
                EntryKind::Dir => Kind::Dir,
                EntryKind::File => Kind::File,
                EntryKind::Symlink => Kind::Symlink,
            };
            entries.push(DirEntry { ino: child, name, kind });
        }
        Ok(self.add_handle(Handle::Dir(entries)))
    }

    pub(super) fn out_open(&self, st: &Staging, ino: u64, flags: i32) -> FsResult<Opened> {
        let (file, id) = st.open_file(ino, flags)?;
        Ok(Opened {
            fh: self.add_handle(Handle::Output(file, id)),
            direct_io: true,
            keep_cache: false,
            backing: None,
            no_flush: false,
        })
    }

    /// Creates and opens a file in `outputs/`.
    pub fn create(&self, parent: u64, name: &str, mode: u32, flags: i32) -> FsResult<(Attr, Opened)> {
        let st = self.staging_of(parent)?;
        let (a, file, id) = st.create(parent, OsStr::new(name), mode, flags)?;
        let fh = self.add_handle(Handle::Output(file, id));
        Ok((attr(a), Opened { fh, direct_io: true, keep_cache: false, backing: None, no_flush: false }))
    }

    /// Writes to an open output file; returns the bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        match &*self.handle(fh)? {
            Handle::Output(file, id) => {
                file.write_all_at(data, offset)?;
                if let Some(st) = &self.staging {
                    st.hasher.write(*id, offset, data);
                }
                Ok(data.len() as u32)
            }
            _ => Err(FsError::ReadOnly),
        }
    }

    /// Flushes an open output file to disk.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::Output(file, _) => {
                if datasync {
                    file.sync_data()?
                } else {
                    file.sync_all()?
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Changes mode, size or times of an entry in `outputs/`.
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
        fh: Option<u64>,
    ) -> FsResult<Attr> {
        let st = self.staging_of(ino)?;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let file = match handle.as_deref() {
            Some(Handle::Output(f, _)) => Some(f),
            _ => None,
        };
        Ok(attr(st.setattr(ino, mode, size, atime, mtime, file)?))
    }

    /// Creates a directory in `outputs/`.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> FsResult<Attr> {
        Ok(attr(self.staging_of(parent)?.mkdir(parent, OsStr::new(name), mode)?))
    }

    /// Removes a file in `outputs/`.
    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        Ok(self.staging_of(parent)?.unlink(parent, OsStr::new(name))?)
    }

    /// Removes an empty directory in `outputs/`.
    pub fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        Ok(self.staging_of(parent)?.rmdir(parent, OsStr::new(name))?)
    }

    /// Renames within `outputs/` (anything else is read-only).
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, flags: u32) -> FsResult<()> {
        let st = self.staging_of(parent)?;
        if self.out(new_parent).is_none() {
            return Err(FsError::ReadOnly);
        }
        Ok(st.rename(parent, OsStr::new(name), new_parent, OsStr::new(new_name), flags)?)
    }

    /// Creates a symbolic link in `outputs/`.
    pub fn symlink(&self, parent: u64, name: &str, target: &Path) -> FsResult<Attr> {
        Ok(attr(self.staging_of(parent)?.symlink(parent, OsStr::new(name), target)?))
    }

    /// The target of a symbolic link in `outputs/`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.out(ino) {
            Some(st) => Ok(st.readlink(ino)?),
            None => Err(FsError::Os(libc::EINVAL)),
        }
    }
}
