//! Sync state of one execution's outputs, in the cache's sled index: for each staged path, the
//! file state (size, mtime, inode) last seen by sync and the datum it became, or the datum an
//! interrupted upload was making (so a rerun resumes it instead of creating a duplicate).

use serde::{Deserialize, Serialize};

/// The identity of a staged file's content as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The staging file's inode.
    pub ino: u64,
}

impl FileStamp {
    /// The stamp of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// Where a path stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PathState {
    /// An upload was started for this content: its datum id and key are fixed.
    Pending {
        /// The file as it was when the upload started.
        stamp: FileStamp,
        /// The datum id being made.
        datum: String,
        /// The key being written.
        key: String,
        /// For a file going into a pack (`key` is the pack's), the offset of its bytes there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packed: Option<u64>,
    },
    /// This content is datum `datum`.
    Synced {
        /// The file as it was uploaded.
        stamp: FileStamp,
        /// Its datum id.
        datum: String,
        /// Its key in the store.
        key: String,
        /// Its sha256.
        sha256: crate::checksum::Sha256Digest,
    },
}

impl PathState {
    /// The stamp recorded.
    pub fn stamp(&self) -> FileStamp {
        match self {
            PathState::Pending { stamp, .. } | PathState::Synced { stamp, .. } => *stamp,
        }
    }
}

/// The sync state of one execution.
#[derive(Clone)]
pub struct SyncState {
    tree: sled::Tree,
}

/// The sync state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("sync state of execution {execution}: {error}")]
pub struct StateError {
    /// The execution.
    pub execution: String,
    /// sled's error.
    pub error: sled::Error,
}

impl SyncState {
    /// The state of `execution` in `db`.
    pub fn open(db: &sled::Db, execution: &str) -> Result<Self, StateError> {
        let tree = db
            .open_tree(format!("sync/{execution}"))
            .map_err(|error| StateError { execution: execution.to_string(), error })?;
        Ok(Self { tree })
    }

    /// The state of `path`.
    pub fn get(&self, path: &str) -> Option<PathState> {
        let v = self.tree.get(path.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Records the state of `path` durably (flushed before returning: an upload must not start
    /// before its pending record is on disk).
    pub fn set(&self, path: &str, state: &PathState) -> Result<(), sled::Error> {
        let v = serde_json::to_vec(state).map_err(|e| sled::Error::Unsupported(e.to_string()))?;
        self.tree.insert(path.as_bytes(), v)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Records many states at once, durably, with one flush.
    pub fn set_all(&self, states: &[(String, PathState)]) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (path, state) in states {
            let v = serde_json::to_vec(state).map_err(|e| sled::Error::Unsupported(e.to_string()))?;
            batch.insert(path.as_bytes(), v);
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Records the state of `path` without waiting for the disk (see [`SyncState::flush`]).
    pub fn set_lazily(&self, path: &str, state: &PathState) -> Result<(), sled::Error> {
        let v = serde_json::to_vec(state).map_err(|e| sled::Error::Unsupported(e.to_string()))?;
        self.tree.insert(path.as_bytes(), v)?;
        Ok(())
    }

    /// Waits until every recorded state is on disk.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.tree.flush().map(|_| ())
    }

    /// Runs `work` on this state from a blocking thread: a flush waits for the disk, which
    /// must not hold up a runtime worker.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SyncState) -> Result<T, sled::Error> + Send + 'static,
    ) -> Result<T, sled::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this)).await.map_err(|e| sled::Error::Io(std::io::Error::other(e)))?
    }

    /// Every path with a state.
    pub fn all(&self) -> Vec<(String, PathState)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, serde_json::from_slice(&v).ok()?)))
            .collect()
    }

    /// Forgets everything (discarded outputs).
    pub fn clear(&self) -> Result<(), sled::Error> {
        self.tree.clear()?;
        self.tree.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = SyncState::open(&db, "exec-1").unwrap();
        let stamp = FileStamp { size: 3, mtime_ns: 1_700_000_000_123_456_789, ino: 42 };
        let synced = PathState::Synced {
            stamp,
            datum: "D".into(),
            key: "k".into(),
            sha256: crate::checksum::Sha256Digest([7; 32]),
        };
        s.set("a/b.bin", &synced).unwrap();
        assert_eq!(s.get("a/b.bin"), Some(synced));
        assert_eq!(s.all().len(), 1);
        s.clear().unwrap();
        assert_eq!(s.get("a/b.bin"), None);
    }
}
