//! The one place that decides which errno a kernel request gets.

use crate::reader::ReadError;
use crate::store::StoreError;
use thiserror::Error;

/// A filesystem operation's failure, as the kernel will see it.
#[derive(Debug, Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("no such entry")]
    NotFound,
    /// Not a directory.
    #[error("not a directory")]
    NotDir,
    /// Is a directory.
    #[error("is a directory")]
    IsDir,
    /// The tree is read-only here (inputs/ and config/).
    #[error("read-only file system")]
    ReadOnly,
    /// The attribute does not exist (yet).
    #[error("no such attribute")]
    NoAttr,
    /// The attribute namespace is not supported (ACLs, security labels): tools such as `ls` stop
    /// asking for the whole filesystem after this answer.
    #[error("not supported")]
    NotSupported,
    /// An unknown file handle.
    #[error("bad file handle")]
    BadHandle,
    /// An operation on the staging area failed with this OS error (outputs).
    #[error("os error {0}")]
    Os(i32),
    /// The store or the cache failed; logged with its cause, EIO to the caller.
    #[error("{0}")]
    Io(String),
}

impl From<ReadError> for FsError {
    fn from(e: ReadError) -> Self {
        FsError::Io(e.to_string())
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => FsError::Os(errno),
            None => FsError::Io(e.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Io(e.to_string())
    }
}

impl FsError {
    /// The errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttr => libc::ENODATA,
            FsError::BadHandle => libc::EBADF,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Os(errno) => *errno,
            FsError::Io(_) => libc::EIO,
        }
    }
}
