//! What the filesystem tells the rest of the daemon: facts, not actions. Recording integrity
//! history, lineage, status counters and log lines about them is the sink's job (the daemon's),
//! so that the filesystem logic neither writes records nor knows the catalog.

use crate::checksum::Digests;

/// Something that happened on the mount that others may want to record.
#[derive(Debug, Clone)]
pub enum FsEvent {
    /// An input file was read whole and its checksums computed.
    InputChecksummed(HashedFile),
    /// An input file's bytes differ from the sha256 its record promised; its reads fail with EIO.
    InputMismatch {
        /// Path on the mount.
        path: String,
        /// Its URI.
        uri: String,
        /// The sha256 its record promised.
        expected: String,
        /// The sha256 of the bytes the store served.
        actual: String,
    },
    /// An input file could not be opened or read because of the store.
    InputFailed {
        /// Path on the mount.
        path: String,
        /// The datum it is, if any (a purge may explain the failure).
        datum: Option<String>,
        /// Whether the store said the object does not exist.
        not_found: bool,
        /// The error, as the user should read it.
        error: String,
    },
}

/// A file whose checksums are known.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HashedFile {
    /// Path on the mount.
    pub path: String,
    /// Its URI.
    pub uri: String,
    /// Its size.
    pub size: u64,
    /// The object version that was read.
    #[serde(skip)]
    pub version: String,
    /// Its checksums.
    pub checksums: Digests,
    /// Whether a datum record promised its sha256 (and the bytes were checked against it): its
    /// content cannot change, so it needs no integrity history.
    #[serde(skip)]
    pub recorded: bool,
}

/// Receives the filesystem's events. Awaited where they happen (a failed read's log line is
/// written before the read is answered), so it must not block a runtime thread.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync {
    /// One event.
    async fn event(&self, event: FsEvent);
}

/// A sink that only logs, for filesystems with nobody to record for (`datumfs warm URI`).
pub struct LogOnly;

#[async_trait::async_trait]
impl EventSink for LogOnly {
    async fn event(&self, event: FsEvent) {
        log_event(&event);
    }
}

/// The log lines every sink writes for an event: checksums as Valohai logs them, failures as
/// errors.
pub fn log_event(event: &FsEvent) {
    match event {
        FsEvent::InputChecksummed(f) => {
            let sums = f.checksums.to_checksums();
            tracing::info!("{}: md5 sum: {}", f.path, sums.md5);
            tracing::info!("{}: sha1 sum: {}", f.path, sums.sha1);
            tracing::info!("{}: sha256 sum: {}", f.path, sums.sha256);
        }
        FsEvent::InputMismatch { path, uri, expected, actual } => {
            tracing::error!("{path}: {uri} has sha256 {actual} but its record says {expected}: reads fail with EIO")
        }
        FsEvent::InputFailed { path, error, .. } => tracing::error!("{path}: {error}"),
    }
}
