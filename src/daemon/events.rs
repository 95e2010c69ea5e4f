//! The daemon's sink for filesystem events: logs them, keeps the files each mount read whole
//! (for `status` and the execution's lineage), writes input integrity records to the data
//! store, and names a purge when a datum's bytes are gone.

use crate::catalog::{Catalog, ExecutionInput, FileRead};
use crate::fs::events::log_event;
use crate::fs::{EventSink, FsEvent, HashedFile, InputSummary};
use crate::inputs::integrity::{self, IntegrityRecord};
use crate::store::data::DataStore;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Records what one mount's filesystem reports.
pub struct MountRecorder {
    data_store: Option<DataStore>,
    runtime: tokio::runtime::Handle,
    hashed: Mutex<BTreeMap<String, HashedFile>>,
}

impl MountRecorder {
    /// A recorder writing integrity records to `data_store` (if any). Must be called inside a
    /// tokio runtime.
    pub fn new(data_store: Option<DataStore>) -> Self {
        Self { data_store, runtime: tokio::runtime::Handle::current(), hashed: Mutex::default() }
    }

    /// The files read whole so far, by path.
    pub fn files(&self) -> Vec<HashedFile> {
        self.hashed.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Each input as an execution record shows it: URIs, datums, and the files read whole.
    pub fn lineage_inputs(&self, inputs: &[InputSummary], mountpoint: &Path) -> Vec<ExecutionInput> {
        let hashed = self.hashed.lock().unwrap_or_else(|e| e.into_inner());
        inputs
            .iter()
            .map(|i| {
                let prefix = mountpoint.join("inputs").join(&i.name);
                let files_read = hashed
                    .values()
                    .filter(|f| Path::new(&f.path).starts_with(&prefix))
                    .map(|f| FileRead { uri: f.uri.clone(), size: f.size, checksums: f.checksums.clone() })
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
                self.hashed.lock().unwrap_or_else(|e| e.into_inner()).insert(file.path.clone(), file.clone());
                let Some(ds) = self.data_store.clone() else { return };
                self.runtime.spawn(async move {
                    let rec = IntegrityRecord {
                        uri: file.uri,
                        size: file.size,
                        version: file.version,
                        checksums: file.checksums,
                        recorded_at: chrono::Utc::now().to_rfc3339(),
                        host: integrity::hostname(),
                    };
                    match integrity::record(&ds, &rec).await {
                        Ok(Some(warning)) => tracing::warn!("{warning}"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("could not record the checksums of {}: {e}", rec.uri),
                    }
                });
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
