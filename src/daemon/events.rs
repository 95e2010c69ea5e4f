//! The daemon's sink for filesystem events: logs them, keeps the files each mount read whole
//! (for `status` and the execution's lineage), writes input integrity records to the data
//! store in batches (every [`FLUSH_EVERY`], at [`BATCH`] files, and when the mount ends), and
//! names a purge when a datum's bytes are gone.

use crate::catalog::{Catalog, ExecutionInput, FileRead};
use crate::checksum::Digests;
use crate::fs::events::log_event;
use crate::fs::{EventSink, FsEvent, HashedFile, InputSummary};
use crate::inputs::integrity::{self, IntegrityRecord};
use crate::store::data::DataStore;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Integrity records are written at least this often while files are being read.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// ... and as soon as this many files wait.
pub const BATCH: usize = 2000;

/// What the execution record keeps of a file read whole, in little memory (a job may read
/// millions): no version (it went into the integrity record), a datum's URI as its 16-byte id.
struct ReadFile {
    uri: ReadUri,
    size: u64,
    checksums: Digests,
}

/// A read file's URI: most are `datum://<id>` (dataset and datum inputs).
enum ReadUri {
    Datum(u128),
    Other(Box<str>),
}

impl ReadUri {
    fn of(uri: String) -> Self {
        let id = uri.strip_prefix("datum://").and_then(|id| ulid::Ulid::from_string(id).ok().map(|u| (id, u)));
        match id {
            // Only where the id comes back exactly as it was written.
            Some((id, u)) if u.to_string() == id => ReadUri::Datum(u.0),
            _ => ReadUri::Other(uri.into_boxed_str()),
        }
    }

    fn to_uri(&self) -> String {
        match self {
            ReadUri::Datum(id) => format!("datum://{}", ulid::Ulid(*id)),
            ReadUri::Other(uri) => uri.to_string(),
        }
    }
}

/// Records what one mount's filesystem reports.
pub struct MountRecorder {
    data_store: Option<DataStore>,
    /// The execution whose reads these are.
    execution: Option<String>,
    /// Warnings so far (an input whose content differs from its last use), for the record.
    warnings: Mutex<Vec<String>>,
    runtime: tokio::runtime::Handle,
    /// The files read whole, by path.
    hashed: Mutex<BTreeMap<Box<str>, ReadFile>>,
    /// Reads waiting for their integrity records.
    pending: Mutex<Vec<IntegrityRecord>>,
    /// How many of those a flush kept back for later (see `integrity::split_due`).
    held: std::sync::atomic::AtomicUsize,
    /// How many files each directory's integrity record held when last written.
    dir_sizes: Mutex<std::collections::HashMap<String, usize>>,
    /// Wakes the flusher early (a full batch).
    wake: tokio::sync::Notify,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
    /// Whether the store holds single-URI integrity records of older versions.
    legacy: tokio::sync::OnceCell<bool>,
}

impl MountRecorder {
    /// A recorder writing integrity records to `data_store` (if any), with its flusher. Must be
    /// called inside a tokio runtime.
    pub fn new(data_store: Option<DataStore>, execution: Option<String>) -> Arc<Self> {
        let recorder = Arc::new(Self {
            data_store,
            execution,
            warnings: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            hashed: Mutex::default(),
            pending: Mutex::default(),
            held: Default::default(),
            dir_sizes: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            legacy: tokio::sync::OnceCell::new(),
        });
        let weak = Arc::downgrade(&recorder);
        recorder.runtime.spawn(Self::flusher(weak));
        recorder
    }

    /// Flushes every [`FLUSH_EVERY`] or when woken, until nobody but itself holds the recorder.
    async fn flusher(weak: Weak<Self>) {
        while let Some(me) = weak.upgrade() {
            if Arc::strong_count(&me) == 1 {
                return;
            }
            let _ = tokio::time::timeout(FLUSH_EVERY, me.wake.notified()).await;
            me.flush().await;
        }
    }

    /// Writes the integrity records of the reads recorded so far that are due (all of them at
    /// the mount's end: [`MountRecorder::flush_all`]), and logs the warnings.
    pub async fn flush(&self) {
        self.flush_some(false).await
    }

    /// Writes the integrity records of every read recorded so far.
    pub async fn flush_all(&self) {
        self.flush_some(true).await
    }

    async fn flush_some(&self, all: bool) {
        use std::sync::atomic::Ordering;
        let _one = self.flushing.lock().await;
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let (batch, later) = {
            let sizes = self.dir_sizes.lock().unwrap_or_else(|e| e.into_inner());
            integrity::split_due(pending, &sizes, all)
        };
        self.held.store(later.len(), Ordering::Relaxed);
        if !later.is_empty() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).extend(later);
        }
        let Some(ds) = self.data_store.clone().filter(|_| !batch.is_empty()) else { return };
        let catalog = Catalog::new(ds);
        let legacy = *self.legacy.get_or_init(|| integrity::has_legacy_records(&catalog)).await;
        let mut sizes = std::mem::take(&mut *self.dir_sizes.lock().unwrap_or_else(|e| e.into_inner()));
        let res = integrity::record_batch_sized(&catalog, &batch, legacy, &mut sizes).await;
        *self.dir_sizes.lock().unwrap_or_else(|e| e.into_inner()) = sizes;
        match res {
            Ok(warnings) => {
                warnings.iter().for_each(|w| tracing::warn!("{w}"));
                let mut kept = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
                for w in warnings {
                    if !kept.contains(&w) {
                        kept.push(w);
                    }
                }
            }
            Err(e) => tracing::warn!("could not record the checksums of {} input file(s): {e}", batch.len()),
        }
    }

    /// The warnings so far.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `fut` to its end from a thread outside the runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }

    /// [`MountRecorder::flush_all`] from a thread outside the runtime (the mount's end).
    pub fn flush_blocking(&self) {
        self.runtime.block_on(self.flush_all());
    }

    /// The files read whole so far, by path.
    pub fn files(&self) -> Vec<HashedFile> {
        let hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        hashed
            .iter()
            .map(|(path, f)| HashedFile {
                path: path.to_string(),
                uri: f.uri.to_uri(),
                size: f.size,
                version: String::new(),
                checksums: f.checksums,
                recorded: false,
            })
            .collect()
    }

    /// Each input as an execution record shows it: URIs, datums, and the files read whole.
    pub fn lineage_inputs(&self, inputs: &[InputSummary], mountpoint: &Path) -> Vec<ExecutionInput> {
        let hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        inputs
            .iter()
            .map(|i| {
                let prefix = mountpoint.join("inputs").join(&i.name);
                let files_read = hashed
                    .iter()
                    .filter(|(path, _)| Path::new(&***path).starts_with(&prefix))
                    .map(|(_, f)| FileRead { uri: f.uri.to_uri(), size: f.size, checksums: f.checksums.to_checksums() })
                    .collect();
                ExecutionInput {
                    name: i.name.clone(),
                    uris: i.uris.clone(),
                    datums: i.datums.clone(),
                    datasets: i.datasets.clone(),
                    files_read,
                }
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl EventSink for MountRecorder {
    async fn event(&self, event: FsEvent) {
        match event {
            FsEvent::InputChecksummed(file) => {
                log_event(&FsEvent::InputChecksummed(file.clone()));
                // A datum's bytes are checked against its record instead: no history to keep.
                let rec = (!file.recorded).then(|| IntegrityRecord {
                    uri: file.uri.clone(),
                    size: file.size,
                    version: file.version.clone(),
                    checksums: file.checksums.to_checksums(),
                    recorded_at: chrono::Utc::now().to_rfc3339(),
                    host: integrity::hostname(),
                    execution: self.execution.clone(),
                });
                let read = ReadFile { uri: ReadUri::of(file.uri), size: file.size, checksums: file.checksums };
                self.hashed.lock().unwrap_or_else(|e| e.into_inner()).insert(file.path.into_boxed_str(), read);
                let Some(rec) = rec else { return };
                let full = {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.push(rec);
                    // (Reads a flush kept back do not wake it again.)
                    pending.len().saturating_sub(self.held.load(std::sync::atomic::Ordering::Relaxed)) >= BATCH
                };
                if full {
                    self.wake.notify_one();
                }
            }
            FsEvent::InputFailed { path, datum: Some(id), not_found: true, error } => {
                // The bytes of a datum are gone: a purge after the mount started says why.
                let Some(ds) = self.data_store.clone() else {
                    return log_event(&FsEvent::InputFailed { path, datum: Some(id), not_found: true, error });
                };
                match Catalog::new(ds).tombstone(&id).await {
                    Ok(Some(t)) => tracing::error!("{path}: {}", t.describe()),
                    _ => tracing::error!("{path}: {error}"),
                }
            }
            other => log_event(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadUri;

    #[test]
    fn a_read_file_keeps_its_uri_exactly_whatever_its_form() {
        let id = crate::catalog::new_id();
        for uri in [
            format!("datum://{id}"),
            format!("datum://{}", id.to_lowercase()),
            "datum://not-an-id".to_string(),
            "datum://".to_string(),
            "s3://bucket/train/a.bin".to_string(),
            "dataset://imagenet/v1".to_string(),
        ] {
            assert_eq!(ReadUri::of(uri.clone()).to_uri(), uri);
        }
        assert!(matches!(ReadUri::of(format!("datum://{id}")), ReadUri::Datum(_)), "a datum id is kept in 16 bytes");
    }
}
