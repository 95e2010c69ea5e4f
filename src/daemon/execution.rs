//! One mount's execution: its id, its staged outputs and their sync state, its record in the
//! catalog (lineage), and the answers to control requests about it (`status`, `sync`, `warm`,
//! `unmount`).

use super::events::MountRecorder;
use super::mounts;
use crate::cache::Cache;
use crate::catalog::{self, Catalog, ExecutionRecord};
use crate::control::{CacheOp, Response, UnsyncedOutputs};
use crate::fs::Fs;
use crate::outputs::state::SyncState;
use crate::outputs::Staging;
use crate::store::data::DataStore;
use crate::sync::{self, Progress, ProgressSnapshot, Syncer};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A running mount's execution.
pub struct Execution {
    /// The execution id.
    pub id: String,
    /// The command (`datumfs run`).
    pub command: Option<Vec<String>>,
    /// Its parameters, if given.
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// The code it runs, if known.
    pub code: Option<catalog::CodeInfo>,
    /// When the mount started (RFC 3339).
    pub started_at: String,
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// The filesystem (for status and warm).
    pub fs: Arc<Fs>,
    /// What the filesystem reported: the inputs read, for lineage and status.
    pub recorder: Arc<MountRecorder>,
    /// The staged outputs.
    pub staging: Arc<Staging>,
    /// Their sync state.
    pub state: SyncState,
    /// Makes datums.
    pub syncer: Syncer,
    /// One sync at a time.
    pub sync_lock: tokio::sync::Mutex<()>,
    /// What to do with unsynced outputs when the mount ends (set by the unmount request).
    pub on_exit: Mutex<UnsyncedOutputs>,
    /// Extra status fields (configuration).
    pub config_json: serde_json::Value,
}

impl Execution {
    fn catalog(&self) -> &Catalog {
        &self.syncer.catalog
    }

    /// The execution's record as this mount knows it, merged with what the catalog already has
    /// (a remount with the same id continues the same execution).
    async fn record(&self, ended: bool) -> Result<ExecutionRecord, catalog::CatalogError> {
        let old = self.catalog().find_execution(&self.id).await?;
        let mut rec = old.unwrap_or_else(|| ExecutionRecord::new(&self.id, &self.started_at, &catalog::hostname()));
        if self.command.is_some() {
            rec.command = self.command.clone();
        }
        if self.parameters.is_some() {
            rec.parameters = self.parameters.clone();
        }
        if self.code.is_some() {
            rec.code = self.code.clone();
        }
        for w in self.recorder.warnings() {
            if !rec.warnings.contains(&w) {
                rec.warnings.push(w);
            }
        }
        for input in self.recorder.lineage_inputs(&self.fs.input_summaries(), &self.mountpoint) {
            match rec.inputs.iter_mut().find(|i| i.name == input.name) {
                Some(existing) => {
                    // A set: an input of a million files read whole is a million entries.
                    let mut seen: std::collections::HashSet<(String, String)> =
                        existing.files_read.iter().map(|f| (f.uri.clone(), f.checksums.sha256.clone())).collect();
                    for f in input.files_read {
                        if seen.insert((f.uri.clone(), f.checksums.sha256.clone())) {
                            existing.files_read.push(f);
                        }
                    }
                    existing.uris = input.uris;
                    existing.datums = input.datums;
                    existing.datasets = input.datasets;
                }
                None => rec.inputs.push(input),
            }
        }
        if ended {
            rec.ended_at = Some(catalog::now());
        }
        Ok(rec)
    }

    /// Writes the execution's record at mount and notes which datums it reads.
    pub async fn record_start(&self) {
        let res = async {
            let rec = self.record(false).await?;
            self.catalog().put_execution(&rec).await?;
            for input in &rec.inputs {
                for d in &input.datums {
                    self.catalog().add_reader(d, &self.id).await?;
                }
            }
            Ok::<(), catalog::CatalogError>(())
        }
        .await;
        if let Err(e) = res {
            tracing::warn!("execution {}: could not record it in the data store: {e}", self.id);
        }
    }

    /// Unsynced outputs now.
    pub fn pending(&self) -> std::io::Result<sync::Pending> {
        sync::pending(self.staging.files_dir(), &self.state)
    }

    /// Unsynced changes of each writable volume: (name, changes), those with any.
    pub fn volumes_pending(&self) -> std::io::Result<Vec<(String, usize)>> {
        let mut out = Vec::new();
        for v in self.fs.writable_volumes() {
            let n = crate::volumes::sync::pending(v)?;
            if n > 0 {
                out.push((v.name().to_string(), n));
            }
        }
        Ok(out)
    }

    /// Puts volume `name`'s changes back under its prefix.
    pub(super) async fn volume_sync(
        &self,
        name: &str,
        options: crate::volumes::sync::SyncOptions,
        registry: &crate::store::StoreRegistry,
        progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>,
    ) -> Response {
        let Some(volume) = self.fs.writable_volumes().iter().find(|v| v.name() == name).cloned() else {
            let names: Vec<&str> = self.fs.writable_volumes().iter().map(|v| v.name()).collect();
            return Response::failed(
                format!(
                    "{} has no writable volume {name} (its writable volumes: {})",
                    self.mountpoint.display(),
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ),
                None,
            );
        };
        let ds = match DataStore::open(volume.uri().trim_end_matches('/'), registry) {
            Ok(ds) => ds,
            Err(e) => return Response::failed(format!("volume {name}: {e}"), None),
        };
        let _one = self.sync_lock.lock().await;
        let counters = Arc::new(Progress::default());
        let ticker = ticker(counters.clone(), progress);
        let report = crate::volumes::sync::sync(&volume, &ds, options, &counters).await;
        ticker.abort();
        let mut error = None;
        if !options.dry_run && (!report.put.is_empty() || !report.deleted.is_empty()) {
            if let Err(e) = self.record_volume_sync(&ds, &report).await {
                error = Some(format!("recording execution {}: {e}", self.id));
            }
        }
        if !report.conflicts.is_empty() {
            let keys: Vec<&str> = report.conflicts.iter().map(|c| c.key.as_str()).collect();
            error = Some(format!(
                "{} key(s) changed in the bucket since the mount read them, left alone and kept staged                  (conflict): {}; use --force to overwrite",
                keys.len(),
                keys.join(", ")
            ));
        }
        if !report.failed.is_empty() || !report.refused.is_empty() {
            let keys: Vec<String> =
                report.failed.iter().chain(&report.refused).map(|f| format!("{}: {}", f.key, f.reason)).collect();
            error = Some(format!("{} change(s) not synced: {}", keys.len(), keys.join("; ")));
        }
        match error {
            None => Response::ok(None),
            Some(e) => Response::failed(e, None),
        }
        .with_status_of(&report)
    }

    /// Adds what a volume sync wrote and deleted to the execution's record.
    async fn record_volume_sync(
        &self,
        ds: &DataStore,
        report: &crate::volumes::sync::VolumeSyncReport,
    ) -> Result<(), catalog::CatalogError> {
        let at = catalog::now();
        let write = |key: &str, put: Option<&crate::volumes::sync::Put>| catalog::VolumeWrite {
            volume: report.volume.clone(),
            uri: ds.uri_of(&ds.key_below(key)),
            etag: put.and_then(|p| p.etag.clone()),
            sha256: put.and_then(|p| p.sha256.clone()),
            size: put.map(|p| p.size),
            deleted: put.is_none(),
            at: at.clone(),
        };
        let writes: Vec<catalog::VolumeWrite> = report
            .put
            .iter()
            .map(|p| write(&p.key, Some(p)))
            .chain(report.deleted.iter().map(|k| write(k, None)))
            .collect();
        let mut rec = self.record(false).await?;
        rec.volume_writes.extend(writes.iter().cloned());
        self.catalog().put_execution(&rec).await?;
        // Then the bucket's index, which `lineage` of a key reads.
        self.catalog().put_volume_sync(&self.id, writes).await
    }

    pub(super) async fn warm(
        &self,
        path: &str,
        progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>,
    ) -> Response {
        let counters = Arc::new(Progress::default());
        let ticker = ticker(counters.clone(), progress);
        let res = self.fs.warm(path, &counters).await;
        ticker.abort();
        super::warm_answer(res.map_err(|e| format!("warm {path}: {e}")))
    }

    pub(super) async fn sync(&self, progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>) -> Response {
        let _one = self.sync_lock.lock().await;
        let counters = Arc::new(Progress::default());
        let ticker = ticker(counters.clone(), progress);
        let staging = self.staging.clone();
        let known = move |files: &[(u64, u64)]| {
            let sums = tokio::task::block_in_place(|| staging.hasher.snapshots(files.iter().map(|f| f.0).collect()));
            sums.into_iter().zip(files).map(|(s, &(_, size))| s.and_then(|s| s.fit(size))).collect()
        };
        let report = self.syncer.sync(self.staging.files_dir(), &self.state, &counters, &known).await;
        ticker.abort();
        let uploaded = counters.files_done.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::synced(
            &self.mountpoint,
            uploaded.saturating_sub(report.failed.len() as u64),
            counters.bytes_done.load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut error = None;
        // Every datum the outputs are now, not only the ones this sync made: an earlier sync
        // killed after its datums were made but before this record was written left them out.
        let made: Vec<String> = report.datums.iter().map(|d| d.datum.id()).collect();
        // The reads of the last moments, and their warnings, go into the record too.
        self.fs.inputs_checksummed().await;
        self.recorder.flush_all().await;
        match self.record(true).await {
            Ok(mut rec) => {
                let mut seen: std::collections::HashSet<String> = rec.outputs.iter().cloned().collect();
                for id in made {
                    if seen.insert(id.clone()) {
                        rec.outputs.push(id);
                    }
                }
                if let Err(e) = self.catalog().put_execution(&rec).await {
                    error = Some(format!("recording execution {}: {e}", self.id));
                }
                crate::crash::point("execution-recorded");
            }
            Err(e) => error = Some(format!("recording execution {}: {e}", self.id)),
        }
        if !report.failed.is_empty() {
            let names: Vec<&str> = report.failed.iter().map(|f| f.path.as_str()).collect();
            error = Some(format!("{} file(s) could not be synced: {}", report.failed.len(), names.join(", ")));
        }
        match error {
            None => Response::ok(None),
            Some(e) => Response::failed(e, None),
        }
        .with_status_of(&report)
    }

    pub(super) fn unmount(&self, unsynced: UnsyncedOutputs) -> Response {
        if unsynced == UnsyncedOutputs::Refuse {
            match self.volumes_pending() {
                Ok(v) if !v.is_empty() => {
                    let each: Vec<String> = v.iter().map(|(n, c)| format!("{n} ({c} change(s))")).collect();
                    return Response::failed(
                        format!(
                            "volumes hold unsynced changes: {}: run `datumfs volume sync {} NAME` first, or \
                             unmount with --discard (changes are kept for a later mount with the same \
                             --execution when the mount is detached with --force)",
                            each.join(", "),
                            self.mountpoint.display()
                        ),
                        None,
                    );
                }
                Ok(_) => {}
                Err(e) => return Response::failed(format!("cannot tell whether volumes are synced: {e}"), None),
            }
            match self.pending() {
                Ok(p) if p.files > 0 => {
                    return Response::failed(
                        format!(
                            "outputs hold {} unsynced file(s), {} bytes (e.g. {}): run `datumfs sync {}` first, \
                             or unmount with --sync or --discard",
                            p.files,
                            p.bytes,
                            p.examples.join(", "),
                            self.mountpoint.display()
                        ),
                        serde_json::to_value(&p).ok(),
                    )
                }
                Ok(_) => {}
                Err(e) => return Response::failed(format!("cannot tell whether outputs are synced: {e}"), None),
            }
        }
        *self.on_exit.lock().unwrap_or_else(|e| e.into_inner()) = unsynced;
        match mounts::unmount(&self.mountpoint) {
            Ok(()) => Response::ok(None),
            Err(e) => {
                *self.on_exit.lock().unwrap_or_else(|e| e.into_inner()) = UnsyncedOutputs::Keep;
                Response::failed(format!("unmount failed: {e} (close open files, or use --force to detach)"), None)
            }
        }
    }

    /// After the mount has ended: discards outputs if asked; removes a staging area whose every
    /// file is synced (its bytes are safe in the store); otherwise keeps it for a later mount
    /// with the same execution id.
    pub fn finish(&self) {
        // The inputs read last are recorded before the daemon may exit, and the execution
        // record says what the mount read and saw (a mount without a sync writes it only here).
        self.recorder.block_on(self.fs.inputs_checksummed());
        self.recorder.flush_blocking();
        if let Err(e) = self.recorder.block_on(async {
            let rec = self.record(true).await?;
            self.catalog().put_execution(&rec).await
        }) {
            tracing::warn!("execution {}: could not record its end in the data store: {e}", self.id);
        }
        let mode = *self.on_exit.lock().unwrap_or_else(|e| e.into_inner());
        let pending = self.pending();
        let remove = match mode {
            UnsyncedOutputs::Discard => true,
            _ => matches!(&pending, Ok(p) if p.files == 0),
        };
        for v in self.fs.writable_volumes() {
            let changes = crate::volumes::sync::pending(v);
            let dir = v.state().dir();
            if mode == UnsyncedOutputs::Discard || matches!(changes, Ok(0)) {
                // Nothing the bucket lacks (or the changes are thrown away): the bucket is the copy.
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    tracing::warn!("removing volume {}'s staged tree {}: {e}", v.name(), dir.display());
                }
            } else if let Ok(n) = changes {
                tracing::warn!(
                    "execution {}: volume {} keeps {n} unsynced change(s) in {}; mount again with --execution {} \
                     to sync them",
                    self.id,
                    v.name(),
                    dir.display(),
                    self.id
                );
            }
        }
        if remove {
            if let Err(e) = self.staging.remove_all() {
                tracing::warn!("removing staged outputs {}: {e}", self.staging.dir().display());
            }
            if let Err(e) = self.state.clear() {
                tracing::warn!("clearing the sync state of {}: {e}", self.id);
            }
            if mode == UnsyncedOutputs::Discard {
                tracing::info!("execution {}: unsynced outputs discarded", self.id);
            }
        } else if let Ok(p) = pending {
            tracing::warn!(
                "execution {}: {} unsynced output file(s) kept in {}; mount again with --execution {} to sync them",
                self.id,
                p.files,
                self.staging.files_dir().display(),
                self.id
            );
        }
    }

    pub(super) async fn status(&self) -> serde_json::Value {
        // The cache's figures come from its index and a walk of its files: not on a runtime worker.
        let (fs, staging, state) = (self.fs.clone(), self.staging.files_dir().to_path_buf(), self.state.clone());
        let (mut status, pending) =
            tokio::task::spawn_blocking(move || (fs.status(), sync::pending(&staging, &state).ok()))
                .await
                .unwrap_or_default();
        status["files"] = serde_json::to_value(self.recorder.files()).unwrap_or_default();
        status["config"] = self.config_json.clone();
        status["execution"] = serde_json::json!({
            "id": self.id,
            "staging": self.staging.files_dir(),
            "unsynced": pending,
        });
        status
    }
}

/// Runs a `datumfs cache` operation on the daemon's cache.
pub async fn cache_op(cache: Arc<Cache>, evict_after: std::time::Duration, op: CacheOp) -> Response {
    let res = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, crate::cache::CacheError> {
        Ok(match op {
            CacheOp::Stats { evict_after: asked } => {
                let after = asked.map(std::time::Duration::from_secs).unwrap_or(evict_after);
                let mut r = cache.report(after)?;
                r.hit_bytes = Some(cache.stats().hit_bytes.load(std::sync::atomic::Ordering::Relaxed));
                r.fetched_bytes = Some(cache.stats().fetched_bytes.load(std::sync::atomic::Ordering::Relaxed));
                serde_json::to_value(r).unwrap_or_default()
            }
            CacheOp::Evict { what } => serde_json::to_value(cache.evict(&what)?).unwrap_or_default(),
            CacheOp::Verify { repair } => serde_json::to_value(cache.verify_blocks(repair)?).unwrap_or_default(),
        })
    })
    .await;
    match res {
        Ok(Ok(v)) => Response::ok(Some(v)),
        Ok(Err(e)) => Response::failed(e.to_string(), None),
        Err(e) => Response::failed(format!("internal error: {e}"), None),
    }
}

/// Sends progress snapshots every quarter second until aborted.
pub(super) fn ticker(
    counters: Arc<Progress>,
    progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if progress.send(counters.snapshot()).is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
}
