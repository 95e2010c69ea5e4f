//! The one place that decides which errno a kernel request gets. Causes are kept as sources, so
//! the log line and the CLI message can show the whole chain.

use crate::cache::CacheError;
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
    /// A rename between two writable namespaces: tools copy instead.
    #[error("cannot move between namespaces")]
    CrossDevice,
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
    /// Not allowed here, whoever asks (device nodes and hard links in outputs).
    #[error("operation not permitted")]
    NotPermitted,
    /// A name that is not valid UTF-8 cannot be made (object keys are UTF-8).
    #[error("invalid name")]
    BadName,
    /// The caller's buffer cannot hold the answer.
    #[error("buffer too small")]
    TooSmall,
    /// A request that makes no sense here, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// A file's bytes differ from the checksum its record promised.
    #[error("{uri}: content does not match its recorded sha256")]
    Corrupt {
        /// The file's URI.
        uri: String,
    },
    /// An operation on local files failed with this OS error (the staging area).
    #[error("os error {0}")]
    Os(i32),
    /// The store failed or the object changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read path failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Local I/O failed without an OS error number.
    #[error(transparent)]
    Io(Box<dyn std::error::Error + Send + Sync>),
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => FsError::Os(errno),
            None => FsError::Io(Box::new(e)),
        }
    }
}

impl FsError {
    /// Whether it says the entry does not exist (ours, or the local filesystem's ENOENT).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::NotFound | FsError::Os(libc::ENOENT))
    }

    /// What caused a failed read, in a word, for the metrics' count of failed reads.
    pub fn cause_kind(&self) -> &'static str {
        let store = |e: &StoreError| match e {
            StoreError::NotFound { .. } => "not_found",
            StoreError::Changed { .. } => "changed",
            StoreError::AccessDenied { .. } | StoreError::MissingCredentials { .. } => "denied",
            StoreError::ClockSkewed { .. } => "clock_skew",
            StoreError::Unreachable { .. } => "unreachable",
            _ => "store",
        };
        match self {
            FsError::Corrupt { .. } => "integrity",
            FsError::Store(e) | FsError::Read(ReadError::Store(e)) => store(e),
            FsError::Read(_) | FsError::Cache(_) => "cache",
            FsError::Os(_) | FsError::Io(_) => "local_io",
            _ => "other",
        }
    }

    /// The errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::CrossDevice => libc::EXDEV,
            FsError::NoAttr => libc::ENODATA,
            FsError::BadHandle => libc::EBADF,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Invalid(_) | FsError::BadName => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::TooSmall => libc::ERANGE,
            FsError::Os(errno) => *errno,
            FsError::Corrupt { .. } | FsError::Store(_) | FsError::Read(_) | FsError::Cache(_) | FsError::Io(_) => {
                libc::EIO
            }
        }
    }
}
