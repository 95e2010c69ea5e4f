//! Outputs -> datums: find what is new or changed since the last sync, upload it create-only
//! (several files in parallel, multipart for big ones), attach metadata, record each datum and
//! move aliases. Resumable: the datum id and key of an upload are recorded before it starts, so
//! a rerun after a crash finishes that datum instead of making another.

pub mod metadata;
pub mod pack;
pub mod upload;

use crate::catalog::packs::{member_id, pack_of};
use crate::catalog::{self, Catalog, DatumRecord, PackedIn};
use crate::checksum::{Digests, FileDigests, KnownSums, Sha256Digest};
use crate::outputs::state::{FileStamp, PathState, SyncState};
use futures::StreamExt;
use metadata::DatumMeta;
use object_store::path::Path as KeyPath;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use upload::Outcome;

/// Files uploaded at once (each also writes its datum record).
const FILES_IN_FLIGHT: usize = 16;
/// Packs built and uploaded at once.
const PACKS_IN_FLIGHT: usize = 2;

/// A new datum as the report keeps it, and the alias it moved (alias, `datum://ID`; boxed: few
/// datums have one, and a report holds an entry per file).
type Made = (SyncedFile, Option<Box<(String, String)>>);

/// What became of one file.
type DatumResult = Result<Made, SyncError>;

/// What became of one file, as a sync keeps it until its report: the datum (whose entry names
/// the file), or the failure, logged and put in words.
type Kept = Result<Made, FailedFile>;

fn kept((rel, res): (String, DatumResult)) -> Kept {
    res.map_err(|error| {
        tracing::error!("sync of outputs/{rel} failed: {error}");
        FailedFile { path: rel, error: error.to_string() }
    })
}

/// Values many report entries share, kept once: a pack's URI (thousands of files each) and
/// the lists of dataset versions the metadata names (usually one for a whole sync).
#[derive(Default)]
struct Shared {
    uris: std::sync::Mutex<HashSet<Arc<str>>>,
    versions: std::sync::Mutex<HashSet<Arc<[String]>>>,
}

impl Shared {
    fn uri(&self, uri: String) -> Arc<str> {
        let mut uris = self.uris.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = uris.get(uri.as_str()) {
            return u.clone();
        }
        let u: Arc<str> = uri.into();
        uris.insert(u.clone());
        u
    }

    /// Drops the URIs kept (at each sync's start: entries of earlier reports keep their own).
    fn forget_uris(&self) {
        self.uris.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn versions(&self, list: Vec<String>) -> Arc<[String]> {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = versions.get(list.as_slice()) {
            return v.clone();
        }
        let v: Arc<[String]> = list.into();
        versions.insert(v.clone());
        v
    }
}

/// The report's entry for a new datum, made as soon as its record is stored: a sync of a
/// hundred thousand files then never holds all their records at once (and each entry keeps
/// what it shares with others once, see [`Shared`]).
fn made(rel: &str, rec: DatumRecord, shared: &Shared) -> Result<Made, SyncError> {
    let malformed = |reason: String| catalog::CatalogError::Malformed { uri: rec.uri.clone(), reason };
    let sha256 = Sha256Digest::from_hex(&rec.checksums.sha256).map_err(|e| malformed(e.to_string()))?;
    let datum = catalog::DatumUri::parse(&rec.uri).ok_or_else(|| malformed("not a datum URI".into()))?;
    let alias = rec.alias.clone().map(|a| Box::new((a, rec.uri.clone())));
    let dataset_versions = rec
        .properties
        .get("valohai.dataset-versions")
        .and_then(|v| metadata::dataset_versions(rel, v).ok())
        .unwrap_or_default();
    let model_versions = rec
        .properties
        .get("valohai.model-versions")
        .and_then(|v| metadata::model_versions(rel, v).ok())
        .unwrap_or_default();
    // Kept only where a dataset or model version needs them.
    let wanted = !dataset_versions.is_empty() || !model_versions.is_empty();
    let file = SyncedFile {
        path: rel.to_string(),
        datum,
        object_uri: match rec.packed {
            Some(_) => shared.uri(rec.object_uri),
            None => rec.object_uri.into(),
        },
        size: rec.size,
        new: true,
        md5_sha1: if wanted { Digests::of(&rec.checksums).map(|d| (*d.md5(), *d.sha1())) } else { None },
        sha256,
        dataset_versions: shared.versions(dataset_versions),
        model_versions,
        packed: rec.packed.map(|p| (p.offset, p.pack_size)),
    };
    Ok((file, alias))
}

/// Checksums computed while files were written, asked for by (staging inode, size), for many
/// files at once: of exactly those bytes, or a hash of their start to go on from; `None` where
/// nothing is known.
pub type KnownChecksums = dyn Fn(&[(u64, u64)]) -> Vec<Option<KnownSums>> + Sync;

/// Live counters of a sync, for progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files to upload.
    pub files_total: AtomicU64,
    /// Files done (uploaded or failed).
    pub files_done: AtomicU64,
    /// Bytes to upload.
    pub bytes_total: AtomicU64,
    /// Bytes sent so far.
    pub bytes_done: Arc<AtomicU64>,
}

/// A snapshot of [`Progress`].
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub struct ProgressSnapshot {
    /// Files to upload.
    pub files_total: u64,
    /// Files done.
    pub files_done: u64,
    /// Bytes to upload.
    pub bytes_total: u64,
    /// Bytes sent.
    pub bytes_done: u64,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: self.files_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }
}

/// One output file that is a datum.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SyncedFile {
    /// Path relative to `outputs/`.
    pub path: String,
    /// `datum://ID`.
    pub datum: catalog::DatumUri,
    /// Where its bytes are.
    pub object_uri: Arc<str>,
    /// Size.
    pub size: u64,
    /// sha256.
    pub sha256: Sha256Digest,
    /// Whether this sync created it (false: it was already synced).
    pub new: bool,
    /// The dataset versions its metadata puts it in.
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub dataset_versions: Arc<[String]>,
    /// The models whose version (this execution's) its metadata puts it in.
    #[serde(skip)]
    pub model_versions: Vec<metadata::ModelTarget>,
    /// Its md5 and sha1 (with `sha256`, its digests), when this sync made it and a dataset or
    /// model version takes it.
    #[serde(skip)]
    pub md5_sha1: Option<([u8; 16], [u8; 20])>,
    /// Its place in a pack (offset, the pack's size), when this sync packed it; the pack is
    /// the one its datum id names.
    #[serde(skip)]
    pub packed: Option<(u64, u64)>,
}

/// A file that could not be synced.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FailedFile {
    /// Path relative to `outputs/`.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a sync did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct SyncReport {
    /// The execution.
    pub execution: String,
    /// Every output file that is a datum now, new or not.
    pub datums: Vec<SyncedFile>,
    /// Files that failed (the sync as a whole failed if any did).
    pub failed: Vec<FailedFile>,
    /// Entries that are not uploaded (symlinks, special files), with the reason.
    pub skipped: Vec<FailedFile>,
    /// Aliases moved.
    pub aliases: Vec<(String, String)>,
    /// Dataset versions made or extended (`dataset://NAME/VERSION`), once every file synced.
    #[serde(default)]
    pub versions: Vec<String>,
}

/// Unsynced outputs, for the unmount guard and `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct Pending {
    /// Files new or changed since the last sync.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// A few of their paths.
    pub examples: Vec<String>,
}

/// What is under a directory: regular files (relative path, metadata) and the paths of other
/// entries (symlinks, FIFOs, sockets, device nodes), each with why sync skips it.
pub type Walked = (Vec<(String, std::fs::Metadata)>, Vec<(String, &'static str)>);

/// Every regular file under `root` (relative paths, `/`-separated), sorted; other entries
/// (symlinks, FIFOs, sockets, device nodes) are returned apart.
pub fn walk(root: &Path) -> std::io::Result<Walked> {
    let mut files = Vec::new();
    let mut others = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                stack.push((entry.path(), child_rel));
            } else if meta.is_file() {
                files.push((child_rel, meta));
            } else {
                others.push((child_rel, crate::outputs::EntryKind::of(meta.file_type()).skipped_because()));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    others.sort();
    Ok((files, others))
}

/// What would be uploaded now.
pub fn pending(root: &Path, state: &SyncState) -> std::io::Result<Pending> {
    let (files, _) = walk(root)?;
    let mut p = Pending::default();
    for (rel, meta) in files {
        if metadata::is_metadata_file(&rel) {
            continue;
        }
        let synced = matches!(state.get(&rel), Some(PathState::Synced { stamp, .. }) if stamp == FileStamp::of(&meta));
        if !synced {
            p.files += 1;
            p.bytes += meta.len();
            if p.examples.len() < 5 {
                p.examples.push(rel);
            }
        }
    }
    Ok(p)
}

/// Records that output `rel`, as `stamp` describes it, is datum `rec`. Flushed once at the end
/// of the sync: losing it only means a rerun finds the pending record and checks the stored
/// bytes again.
fn record_synced(state: &SyncState, rel: &str, stamp: FileStamp, rec: &DatumRecord) {
    let sha256 = match Sha256Digest::from_hex(&rec.checksums.sha256) {
        Ok(d) => d,
        Err(e) => return tracing::warn!("outputs/{rel}: not recording the sync state: {}: {e}", rec.uri),
    };
    let st = PathState::Synced { stamp, datum: rec.id.clone(), key: rec.key.clone(), sha256 };
    if let Err(e) = state.set_lazily(rel, &st) {
        tracing::warn!("outputs/{rel}: recording the sync state: {e}");
    }
}

/// Whether the file at `path` still has `stamp`.
fn unchanged(path: &Path, stamp: FileStamp) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| FileStamp::of(&m) == stamp)
}

/// Who is making datums: the execution and where its files come from.
#[derive(Clone)]
pub struct Syncer {
    /// The catalog to record datums in.
    pub catalog: Catalog,
    /// The execution id (part of every key).
    pub execution: String,
    /// Files smaller than this are uploaded inside packs (0: none are).
    pub pack_below: u64,
    shared: Arc<Shared>,
}

/// Why one file did not become a datum.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Its metadata (sidecar or jsonl) cannot be used.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// Its bytes could not be uploaded.
    #[error(transparent)]
    Upload(#[from] upload::UploadError),
    /// Both the natural key and the datum's own key are taken by other objects.
    #[error("{uri}: the key is taken by another object")]
    KeyTaken {
        /// The key's URI.
        uri: String,
    },
    /// The file changed while it was uploaded: no datum is recorded.
    #[error("outputs/{path} changed while it was being synced; run sync again once it is complete")]
    Changed {
        /// The output path.
        path: String,
    },
    /// The datum, its alias or a dataset version could not be recorded.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The sync state in the cache index could not be written.
    #[error("recording the sync state: {0}")]
    State(#[source] sled::Error),
}

/// Where the jobs of one sync find their metadata: read again as each job runs, so that a sync
/// of many files never holds every file's parsed metadata at once.
struct MetaSource {
    root: PathBuf,
    jsonl: metadata::Jsonl,
}

/// What the packs of one sync share.
#[derive(Clone, Copy)]
struct Packing<'a> {
    state: &'a SyncState,
    progress: &'a Progress,
    buffers: &'a pack::Buffers,
}

/// One file to turn into a datum.
struct Job {
    rel: String,
    /// The staging root it lies under (one for all jobs: its path is not kept per file).
    root: Arc<Path>,
    stamp: FileStamp,
    /// Whether its metadata could be used when the sync was planned.
    meta: Result<(), Box<metadata::MetadataError>>,
    /// Where its metadata is (none when the jsonl file could not be read).
    meta_source: Option<Arc<MetaSource>>,
    /// The datum id and key, fixed (and recorded as pending) before any upload starts.
    planned: (String, String),
    /// Whether an earlier, interrupted sync planned them (its upload may be complete).
    resuming: bool,
    /// For a file an interrupted sync was packing: its offset in the planned pack.
    packed: Option<u64>,
    /// Checksums computed while the file was written: of exactly its bytes, or of its start.
    known: Option<KnownSums>,
}

impl Job {
    /// The staged file.
    fn local(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// Its metadata (sidecar and jsonl), read again.
    fn meta(&self) -> Result<DatumMeta, metadata::MetadataError> {
        self.meta.clone().map_err(|e| *e)?;
        match &self.meta_source {
            Some(src) => metadata::for_file(&src.root, &self.rel, &src.jsonl),
            None => Ok(DatumMeta::default()),
        }
    }
}

impl Syncer {
    /// A syncer recording datums of `execution` in `catalog`, packing files below `pack_below`
    /// bytes (0: none).
    pub fn new(catalog: Catalog, execution: String, pack_below: u64) -> Self {
        Self { catalog, execution, pack_below, shared: Arc::default() }
    }

    /// Whether a file new to this sync goes into a pack.
    fn packs(&self, meta: &Result<(), Box<metadata::MetadataError>>, size: u64) -> bool {
        meta.is_ok() && size < self.pack_below
    }

    /// A new datum id and the natural key (execution and path) for output path `rel`.
    fn plan(&self, rel: &str) -> (String, String) {
        (catalog::new_id(), self.catalog.store().data_key(&format!("{}/{rel}", self.execution)).to_string())
    }

    /// Uploads `local` as the datum for output path `rel` under the planned id and key (another
    /// key if that one is taken: `on_replanned` records it first), records the datum and moves
    /// its alias. Returns the record.
    #[allow(clippy::too_many_arguments)]
    async fn make_datum(
        &self,
        rel: &str,
        local: &Path,
        meta: DatumMeta,
        (mut id, mut key): (String, String),
        resuming: bool,
        known: Option<(&KnownSums, FileStamp)>,
        sent: &Arc<AtomicU64>,
        on_replanned: impl FnOnce(String, String) -> futures::future::BoxFuture<'static, Result<(), SyncError>>,
    ) -> Result<DatumRecord, SyncError> {
        let ds = self.catalog.store();
        let (known, stamp) = (known.map(|k| k.0), known.map(|k| k.1));
        let mut outcome = upload::upload(ds, local, &KeyPath::from(key.as_str()), resuming, known, sent).await?;
        if matches!(outcome, Outcome::KeyTaken) {
            // Something else is at the natural key: never touch it; use a key unique to the datum.
            tracing::warn!(
                "{}: already exists and is left untouched; uploading outputs/{rel} beside it",
                ds.uri_of(&KeyPath::from(key.as_str()))
            );
            if !resuming {
                id = catalog::new_id();
            }
            key = ds.data_key(&format!("{}/{id}/{rel}", self.execution)).to_string();
            on_replanned(id.clone(), key.clone()).await?;
            outcome = upload::upload(ds, local, &KeyPath::from(key.as_str()), true, known, sent).await?;
        }
        let Outcome::Stored { checksums, size } = outcome else {
            return Err(SyncError::KeyTaken { uri: ds.uri_of(&KeyPath::from(key.as_str())) });
        };
        crate::crash::point("upload-done");
        // Checksums from the write path hold only if the file did not change while it was read
        // for the upload; otherwise no datum is recorded (the bytes stay, unnamed).
        if let Some(stamp) = stamp {
            if !unchanged(local, stamp) {
                return Err(SyncError::Changed { path: rel.to_string() });
            }
        }
        let rec = DatumRecord {
            uri: format!("datum://{id}"),
            id: id.clone(),
            store: ds.url.clone(),
            object_uri: ds.uri_of(&KeyPath::from(key.as_str())),
            key,
            size,
            checksums,
            created_at: catalog::now(),
            execution: Some(self.execution.clone()),
            path: rel.to_string(),
            tags: meta.tags,
            alias: meta.alias.clone(),
            properties: meta.properties,
            packed: None,
        };
        self.catalog.put_datum(&rec).await?;
        crate::crash::point("datum-recorded");
        if let Some(alias) = &meta.alias {
            self.catalog.set_alias(alias, &id, Some(&self.execution)).await?;
            crate::crash::point("alias-moved");
        }
        Ok(rec)
    }

    /// Makes output path `rel` a datum of the same bytes as `first`, another name of the same
    /// staged inode (a hard link): the store copies `first`'s object to the planned key, so the
    /// bytes go up once, and the record takes `first`'s checksums. `None` where that is not
    /// safe (the file changed since `first` was read, or something is at the key already): the
    /// caller then uploads it as any other file.
    async fn make_linked_datum(
        &self,
        rel: &str,
        local: &Path,
        meta: &DatumMeta,
        (id, key): &(String, String),
        stamp: FileStamp,
        (first, first_stamp): (&DatumRecord, FileStamp),
    ) -> Option<Result<DatumRecord, SyncError>> {
        use object_store::ObjectStoreExt;
        if stamp != first_stamp || !unchanged(local, stamp) {
            return None;
        }
        let ds = self.catalog.store();
        let (from, to) = (KeyPath::from(first.key.as_str()), KeyPath::from(key.as_str()));
        match ds.handle.inner.head(&to).await {
            Err(object_store::Error::NotFound { .. }) => {}
            _ => return None,
        }
        if let Err(e) = ds.handle.inner.copy(&from, &to).await {
            tracing::debug!("outputs/{rel}: copying {} in the store failed ({e}); uploading it", first.object_uri);
            return None;
        }
        crate::crash::point("upload-done");
        let rec = DatumRecord {
            uri: format!("datum://{id}"),
            id: id.clone(),
            store: ds.url.clone(),
            object_uri: ds.uri_of(&to),
            key: key.clone(),
            size: first.size,
            checksums: first.checksums.clone(),
            created_at: catalog::now(),
            execution: Some(self.execution.clone()),
            path: rel.to_string(),
            tags: meta.tags.clone(),
            alias: meta.alias.clone(),
            properties: meta.properties.clone(),
            packed: None,
        };
        let recorded = async {
            self.catalog.put_datum(&rec).await?;
            crate::crash::point("datum-recorded");
            if let Some(alias) = &meta.alias {
                self.catalog.set_alias(alias, id, Some(&self.execution)).await?;
                crate::crash::point("alias-moved");
            }
            Ok(())
        };
        Some(recorded.await.map(|()| rec))
    }

    /// Uploads one file as its datum (or, for another name of an inode uploaded just before,
    /// copies that datum's object), recording it in the sync state. Returns the record too.
    async fn sync_single(
        &self,
        job: Job,
        state: &SyncState,
        progress: &Progress,
        linked_to: Option<(&DatumRecord, FileStamp)>,
    ) -> (String, DatumResult, Option<DatumRecord>) {
        let res = match job.meta() {
            Err(e) => Err(SyncError::from(e)),
            Ok(meta) => {
                let linked = match linked_to {
                    Some(first) => {
                        self.make_linked_datum(&job.rel, &job.local(), &meta, &job.planned, job.stamp, first).await
                    }
                    None => None,
                };
                let res = match linked {
                    Some(res) => res,
                    None => {
                        let (rel, stamp, pending_state) = (job.rel.clone(), job.stamp, state.clone());
                        let replanned = move |datum: String, key: String| {
                            let st = PathState::Pending { stamp, datum, key, packed: None };
                            // On disk before the upload to the new key starts.
                            let write = async move {
                                pending_state.blocking(move |s| s.set(&rel, &st)).await.map_err(SyncError::State)
                            };
                            Box::pin(write) as futures::future::BoxFuture<'static, _>
                        };
                        let known = job.known.as_ref();
                        self.make_datum(
                            &job.rel,
                            &job.local(),
                            meta,
                            job.planned,
                            job.resuming,
                            known.map(|k| (k, job.stamp)),
                            &progress.bytes_done,
                            replanned,
                        )
                        .await
                    }
                };
                if let Ok(rec) = &res {
                    record_synced(state, &job.rel, job.stamp, rec);
                }
                res
            }
        };
        progress.files_done.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(rec) => (job.rel.clone(), made(&job.rel, rec.clone(), &self.shared), Some(rec)),
            Err(e) => (job.rel, Err(e), None),
        }
    }

    /// What a sync of the staged outputs under `root` has to do: files already synced go
    /// straight into the report, the others become jobs with their datum id and key planned.
    /// Walks the tree and reads the sync state and metadata files: call on a blocking thread.
    fn plan_sync(&self, root: &Path, state: &SyncState) -> (SyncReport, Vec<Job>) {
        let mut report = SyncReport { execution: self.execution.clone(), ..Default::default() };
        let (files, others) = match walk(root) {
            Ok(w) => w,
            Err(e) => {
                report.failed.push(FailedFile { path: String::new(), error: format!("reading outputs: {e}") });
                return (report, Vec::new());
            }
        };
        report.skipped = others.into_iter().map(|(path, why)| FailedFile { path, error: why.into() }).collect();
        let jsonl = metadata::read_jsonl(root).map(|jsonl| Arc::new(MetaSource { root: root.to_path_buf(), jsonl }));
        let meta_source = jsonl.as_ref().ok().cloned();
        let shared_root: Arc<Path> = Arc::from(root);
        let mut jobs = Vec::new();
        for (rel, meta) in files {
            if metadata::is_metadata_file(&rel) {
                continue;
            }
            let stamp = FileStamp::of(&meta);
            let planned = match state.get(&rel) {
                Some(PathState::Synced { stamp: s, datum, key, sha256 }) if s == stamp => {
                    let versions = match &jsonl {
                        Ok(j) => metadata::for_file(root, &rel, &j.jsonl).and_then(|m| {
                            let models = match m.properties.get("valohai.model-versions") {
                                Some(v) => metadata::model_versions(&rel, v)?,
                                None => Vec::new(),
                            };
                            Ok((m.dataset_versions, models))
                        }),
                        Err(e) => Err(e.clone()),
                    };
                    let (dataset_versions, model_versions) = match versions {
                        Ok(v) => v,
                        Err(error) => {
                            report.failed.push(FailedFile { path: rel, error: error.to_string() });
                            continue;
                        }
                    };
                    let Some(datum) = catalog::DatumUri::of_id(&datum) else {
                        let error = format!("its sync state names {datum:?}, which is not a datum id");
                        report.failed.push(FailedFile { path: rel, error });
                        continue;
                    };
                    report.datums.push(SyncedFile {
                        path: rel,
                        datum,
                        object_uri: self.catalog.store().uri_of(&KeyPath::from(key.as_str())).into(),
                        size: stamp.size,
                        sha256,
                        new: false,
                        dataset_versions: self.shared.versions(dataset_versions),
                        model_versions,
                        md5_sha1: None,
                        packed: None,
                    });
                    continue;
                }
                Some(PathState::Pending { stamp: s, datum, key, packed }) if s == stamp => Some((datum, key, packed)),
                _ => None,
            };
            let resuming = planned.is_some();
            let meta = match &jsonl {
                Ok(j) => metadata::for_file(root, &rel, &j.jsonl).map(|_| ()).map_err(Box::new),
                Err(e) => Err(Box::new(e.clone())),
            };
            let (planned, packed) = match planned {
                Some((datum, key, packed)) => ((datum, key), packed),
                // A file for a pack gets its id and key from its pack.
                None if self.packs(&meta, stamp.size) => ((String::new(), String::new()), None),
                None => (self.plan(&rel), None),
            };
            jobs.push(Job {
                root: shared_root.clone(),
                rel,
                stamp,
                meta,
                meta_source: meta_source.clone(),
                planned,
                resuming,
                packed,
                known: None,
            });
        }
        (report, jobs)
    }

    /// Syncs the staged outputs under `root` with `state`. `known` gives files' checksums when
    /// they were computed as they were written (asked by staging inode and size, all at once).
    pub async fn sync(
        &self,
        root: &Path,
        state: &SyncState,
        progress: &Progress,
        known: &KnownChecksums,
    ) -> SyncReport {
        self.shared.forget_uris();
        let planned = {
            let (this, root, state) = (self.clone(), root.to_path_buf(), state.clone());
            tokio::task::spawn_blocking(move || this.plan_sync(&root, &state)).await
        };
        let (mut report, mut jobs) = match planned {
            Ok(p) => p,
            Err(e) => {
                let mut report = SyncReport { execution: self.execution.clone(), ..Default::default() };
                report.failed.push(FailedFile { path: String::new(), error: format!("planning the sync: {e}") });
                return report;
            }
        };
        let asked: Vec<(u64, u64)> = jobs.iter().map(|j| (j.stamp.ino, j.stamp.size)).collect();
        for (job, sums) in jobs.iter_mut().zip(known(&asked)) {
            job.known = sums;
        }
        // Small files go into packs (a file an interrupted sync was uploading on its own stays
        // on its own, to finish that upload).
        // Taken out in place: a hundred thousand jobs are tens of MB, and a partition into two
        // new lists would hold them twice.
        let packs = |j: &Job| self.packs(&j.meta, j.stamp.size) && (!j.resuming || j.packed.is_some());
        let mut packed_jobs = Vec::with_capacity(jobs.iter().filter(|j| packs(j)).count());
        packed_jobs.extend(jobs.extract_if(.., |j| packs(j)));
        jobs.shrink_to_fit();
        // Every upload's datum id and key are on disk before the first byte goes: a crash at
        // any point then resumes the same datums instead of making new ones.
        let pending: Vec<(String, PathState)> = jobs
            .iter()
            .filter(|j| !j.resuming && j.meta.is_ok())
            .map(|j| {
                let (datum, key) = j.planned.clone();
                (j.rel.clone(), PathState::Pending { stamp: j.stamp, datum, key, packed: None })
            })
            .collect();
        if let Err(e) = state.blocking(move |st| st.set_all(&pending)).await {
            report.failed.push(FailedFile { path: String::new(), error: format!("recording the sync state: {e}") });
            return report;
        }
        crate::crash::point("sync-planned");
        let all = jobs.iter().chain(&packed_jobs);
        progress.files_total.store(all.clone().count() as u64, Ordering::Relaxed);
        progress.bytes_total.store(all.map(|j| j.stamp.size).sum(), Ordering::Relaxed);
        jobs.sort_by(|a, b| a.rel.cmp(&b.rel));
        // Names of one staged inode (hard links) go together: the first is uploaded, the others
        // are copies of its object in the store. Files a killed sync was uploading finish alone.
        let mut units: Vec<Vec<Job>> = Vec::new();
        let mut by_inode: std::collections::HashMap<u64, usize> = Default::default();
        for job in jobs {
            if job.meta.is_ok() && !job.resuming {
                if let Some(&unit) = by_inode.get(&job.stamp.ino) {
                    units[unit].push(job);
                    continue;
                }
                by_inode.insert(job.stamp.ino, units.len());
            }
            units.push(vec![job]);
        }
        // Records of the datums uploaded alone, for the index record.
        let indexed = std::sync::Mutex::new(Vec::new());
        let indexed_ref = &indexed;
        let singles = futures::stream::iter(units)
            .map(|unit| async move {
                let mut out = Vec::with_capacity(unit.len());
                let mut first: Option<(DatumRecord, FileStamp)> = None;
                for job in unit {
                    let stamp = job.stamp;
                    let linked_to = first.as_ref().map(|(rec, st)| (rec, *st));
                    let (rel, res, rec) = self.sync_single(job, state, progress, linked_to).await;
                    if let Some(rec) = rec {
                        indexed_ref.lock().unwrap_or_else(|e| e.into_inner()).push(rec.clone());
                        first.get_or_insert((rec, stamp));
                    }
                    out.push(kept((rel, res)));
                }
                out
            })
            .buffer_unordered(FILES_IN_FLIGHT)
            .collect::<Vec<_>>();
        let singles = async { singles.await.into_iter().flatten().collect::<Vec<_>>() };
        let (mut results, mut packed) = futures::join!(singles, self.sync_packed(packed_jobs, state, progress));
        // Usually one of the two is empty: the other is kept as it is, not copied.
        if results.len() < packed.len() {
            std::mem::swap(&mut results, &mut packed);
        }
        results.reserve_exact(packed.len());
        results.append(&mut packed);
        drop(packed);
        if let Err(e) = state.blocking(SyncState::flush).await {
            tracing::warn!("flushing the sync state: {e}");
        }
        crate::crash::point("state-flushed");
        let packed_datums = results.iter().filter_map(|r| r.as_ref().ok().filter(|(f, _)| f.packed.is_some()));
        let packs = packed_datums.filter_map(|(f, _)| pack_of(&f.datum.id()));
        let packs = packs.collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        self.index(indexed.into_inner().unwrap_or_else(|e| e.into_inner()), packs).await;
        // Collected in place (the standard library reuses the results' buffer for the entries,
        // which are smaller), so the two lists are not in memory side by side.
        let (failed, aliases) = (&mut report.failed, &mut report.aliases);
        let datums: Vec<SyncedFile> = results
            .into_iter()
            .filter_map(|res| match res {
                Ok((file, alias)) => {
                    aliases.extend(alias.map(|a| *a));
                    Some(file)
                }
                Err(f) => {
                    failed.push(f);
                    None
                }
            })
            .collect();
        if report.datums.is_empty() {
            report.datums = datums;
        } else {
            report.datums.extend(datums);
        }
        // Unstable is enough (each path once) and needs no buffer.
        report.datums.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        // Versions are published only by a sync that left nothing behind, so a half-synced job
        // never publishes half a version.
        if report.failed.is_empty() {
            self.publish_versions(&mut report).await;
        }
        report.failed.sort_by(|a, b| a.path.cmp(&b.path));
        report
    }

    /// Turns small files into datums inside packs (see `catalog::packs`). Files an interrupted
    /// sync was packing are first packed again as planned (the same files give the same bytes,
    /// so the pack is found stored and only its record is missing); the others fill new packs in
    /// path order, a few packs in flight at once.
    async fn sync_packed(&self, jobs: Vec<Job>, state: &SyncState, progress: &Progress) -> Vec<Kept> {
        let mut results = Vec::with_capacity(jobs.len());
        let with = Packing { state, progress, buffers: &pack::Buffers::default() };
        // The jobs stay in the list they came in (no second list of tens of MB); the few an
        // interrupted sync was packing are taken out.
        let mut fresh = jobs;
        let mut resumed: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for job in fresh.extract_if(.., |j| j.resuming && j.packed.is_some()) {
            resumed.entry(job.planned.1.clone()).or_default().push(job);
        }
        for (key, mut members) in resumed {
            members.sort_by_key(|j| j.packed);
            let id = pack_of(&members[0].planned.0).unwrap_or_default();
            // The pack and its record may have been stored before the crash, with only some of
            // its files' states written since: those files are its datums already.
            match self.catalog.pack(&id).await {
                Ok(Some(record)) => {
                    for job in members {
                        match record.datums.iter().find(|d| d.id == job.planned.0) {
                            Some(rec) => results.push(kept(self.recorded(job, rec.clone(), state, progress).await)),
                            None => fresh.push(job),
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let msg = e.to_string();
                    for job in members {
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        let err = catalog::CatalogError::Store(crate::store::StoreError::Other {
                            uri: self.catalog.store().uri_of(&KeyPath::from(key.as_str())),
                            cause: msg.clone(),
                        });
                        results.push(kept((job.rel, Err(err.into()))));
                    }
                    continue;
                }
            }
            let whole = members.iter().enumerate().all(|(n, j)| member_id(&id, n).is_some_and(|m| m == j.planned.0));
            if !whole {
                fresh.extend(members);
                continue;
            }
            match self.make_pack(id, key, true, members, &with).await {
                Ok(done) => results.extend(done.into_iter().map(kept)),
                Err(again) => fresh.extend(again),
            }
        }
        // Each path once: an unstable sort is enough, and needs no buffer.
        fresh.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        // Each pack's jobs in a list of their own, cut from the end of the list they came in,
        // which shrinks as they go: the memory of a pack's jobs is freed once it is made, and
        // the list is never held twice.
        let mut counts = pack::split(fresh.iter().map(|j| (j.rel.as_str(), j.stamp.size)));
        let mut packs: Vec<Vec<Job>> = Vec::with_capacity(counts.len());
        while let Some(n) = counts.pop() {
            packs.push(fresh.split_off(fresh.len() - n));
            fresh.shrink_to_fit();
        }
        packs.reverse();
        let with = &with;
        let mut made = futures::stream::iter(packs)
            .map(|members| async move {
                let id = catalog::packs::new_pack_id();
                let key = self.catalog.store().data_key(&format!("{}/.packs/{id}.tar", self.execution)).to_string();
                let uri = self.catalog.store().uri_of(&KeyPath::from(key.as_str()));
                match self.make_pack(id, key, false, members, with).await {
                    Ok(done) => done,
                    Err(members) => {
                        members.into_iter().map(|j| (j.rel, Err(SyncError::KeyTaken { uri: uri.clone() }))).collect()
                    }
                }
            })
            .buffer_unordered(PACKS_IN_FLIGHT);
        // Each pack's results join the rest as it is done.
        while let Some(done) = made.next().await {
            results.extend(done.into_iter().map(kept));
        }
        results
    }

    /// Packs `members` into pack `id` at `key`, uploads it and records its datums. `resuming`:
    /// the pack was planned by an interrupted sync; if it cannot be made again exactly as planned
    /// (a file changed, another object holds the key), the members come back to be packed anew.
    async fn make_pack(
        &self,
        id: String,
        key: String,
        resuming: bool,
        members: Vec<Job>,
        with: &Packing<'_>,
    ) -> Result<Vec<(String, DatumResult)>, Vec<Job>> {
        let Packing { state, progress, buffers } = *with;
        let spec: Vec<pack::Member> = members
            .iter()
            .map(|j| pack::Member {
                rel: j.rel.clone(),
                local: j.local(),
                stamp: j.stamp,
                known: j.known.as_ref().and_then(KnownSums::done).map(Digests::to_checksums),
            })
            .collect();
        let buf = buffers.take();
        let built = match tokio::task::spawn_blocking(move || pack::build(&spec, buf)).await {
            Ok(b) => b,
            Err(e) => {
                let fail = |j: Job| {
                    let error = std::io::Error::other(e.to_string());
                    let path = j.local().display().to_string();
                    (j.rel, Err(SyncError::Upload(upload::UploadError::Local { path, error })))
                };
                return Ok(members.into_iter().map(fail).collect());
            }
        };
        if resuming && built.placed.iter().zip(&members).any(|(p, j)| p.as_ref().ok().map(|p| p.offset) != j.packed) {
            return Err(members);
        }
        let mut results = Vec::new();
        let mut kept = Vec::new();
        for (job, placed) in members.into_iter().zip(built.placed) {
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            match placed {
                Ok(p) => kept.push((job, p)),
                Err(error) => {
                    let path = job.local().display().to_string();
                    results.push((job.rel, Err(SyncError::Upload(upload::UploadError::Local { path, error }))));
                }
            }
        }
        if kept.is_empty() {
            return Ok(results);
        }
        // The members' datum ids and places are on disk before the pack goes up.
        let planned: Vec<(String, PathState)> = kept
            .iter()
            .enumerate()
            .map(|(n, (j, p))| {
                let datum = member_id(&id, n).unwrap_or_default();
                (j.rel.clone(), PathState::Pending { stamp: j.stamp, datum, key: key.clone(), packed: Some(p.offset) })
            })
            .collect();
        let fail_all = |kept: Vec<(Job, pack::Placed)>, e: &dyn Fn() -> SyncError| {
            kept.into_iter().map(|(j, _)| (j.rel, Err(e()))).collect::<Vec<_>>()
        };
        if let Err(e) = state.blocking(move |st| st.set_all(&planned)).await {
            let msg = e.to_string();
            results.extend(fail_all(kept, &|| SyncError::State(sled::Error::Unsupported(msg.clone()))));
            return Ok(results);
        }
        let ds = self.catalog.store();
        let pack_size = built.bytes.len() as u64;
        let pack_key = KeyPath::from(key.as_str());
        let body = bytes::Bytes::from(built.bytes);
        let uploaded = upload::upload_bytes(ds, &pack_key, body.clone(), resuming).await;
        buffers.give_back(body);
        match uploaded {
            Ok(true) => {}
            Ok(false) if resuming => return Err(kept.into_iter().map(|(j, _)| j).collect()),
            Ok(false) => {
                let uri = ds.uri_of(&pack_key);
                results.extend(fail_all(kept, &|| SyncError::KeyTaken { uri: uri.clone() }));
                return Ok(results);
            }
            Err(e) => {
                let msg = e.to_string();
                results.extend(fail_all(kept, &|| {
                    SyncError::Upload(upload::UploadError::Store(crate::store::StoreError::Other {
                        uri: ds.uri_of(&pack_key),
                        cause: msg.clone(),
                    }))
                }));
                return Ok(results);
            }
        }
        crate::crash::point("pack-uploaded");
        progress.bytes_done.fetch_add(kept.iter().map(|(j, _)| j.stamp.size).sum(), Ordering::Relaxed);
        let object_uri = ds.uri_of(&pack_key);
        let mut record = catalog::packs::record(
            id.clone(),
            key.clone(),
            object_uri.clone(),
            pack_size,
            Some(self.execution.clone()),
        );
        for (n, (job, placed)) in kept.iter().enumerate() {
            let datum = member_id(&id, n).unwrap_or_default();
            let meta = job.meta().unwrap_or_default();
            record.datums.push(DatumRecord {
                uri: format!("datum://{datum}"),
                id: datum,
                store: ds.url.clone(),
                key: key.clone(),
                object_uri: object_uri.clone(),
                size: job.stamp.size,
                checksums: placed.checksums.clone(),
                created_at: record.created_at.clone(),
                execution: Some(self.execution.clone()),
                path: job.rel.clone(),
                tags: meta.tags,
                alias: meta.alias,
                properties: meta.properties,
                packed: Some(PackedIn { pack: id.clone(), offset: placed.offset, pack_size }),
            });
        }
        if let Err(e) = self.catalog.put_pack(&record).await {
            let msg = e.to_string();
            let uri = ds.uri_of(&pack_key);
            results.extend(fail_all(kept, &|| {
                SyncError::Catalog(catalog::CatalogError::Store(crate::store::StoreError::Other {
                    uri: uri.clone(),
                    cause: msg.clone(),
                }))
            }));
            return Ok(results);
        }
        crate::crash::point("pack-recorded");
        for ((job, _), rec) in kept.into_iter().zip(record.datums) {
            results.push(self.finish_packed(job, rec, state).await);
        }
        Ok(results)
    }

    /// A file of a pack whose record was stored before an interrupted sync ended: its datum.
    async fn recorded(
        &self,
        job: Job,
        rec: DatumRecord,
        state: &SyncState,
        progress: &Progress,
    ) -> (String, DatumResult) {
        progress.files_done.fetch_add(1, Ordering::Relaxed);
        progress.bytes_done.fetch_add(job.stamp.size, Ordering::Relaxed);
        self.finish_packed(job, rec, state).await
    }

    /// Moves a packed datum's alias and records its file as synced.
    async fn finish_packed(&self, job: Job, rec: DatumRecord, state: &SyncState) -> (String, DatumResult) {
        if let Some(alias) = &rec.alias {
            if let Err(e) = self.catalog.set_alias(alias, &rec.id, Some(&self.execution)).await {
                return (job.rel, Err(e.into()));
            }
            crate::crash::point("alias-moved");
        }
        record_synced(state, &job.rel, job.stamp, &rec);
        let entry = made(&job.rel, rec, &self.shared);
        (job.rel, entry)
    }

    /// Writes the index record of the datums this sync made (see `catalog::index`). Without it
    /// listings read those datums' records one by one, so a failure only warns.
    async fn index(&self, datums: Vec<DatumRecord>, packs: Vec<String>) {
        if let Err(e) = self.catalog.put_index(&self.execution, datums, packs).await {
            tracing::warn!("writing the datum index of execution {}: {e}", self.execution);
        }
        crate::crash::point("index-written");
    }

    /// Makes (or extends, for this execution) the dataset versions the synced files name.
    async fn publish_versions(&self, report: &mut SyncReport) {
        let mut wanted: BTreeMap<String, Vec<&SyncedFile>> = BTreeMap::new();
        for d in &report.datums {
            for v in d.dataset_versions.iter() {
                wanted.entry(v.clone()).or_default().push(d);
            }
        }
        let mut failed = Vec::new();
        for (uri, synced) in wanted {
            let res = async {
                let (name, version) = catalog::datasets::split_ref(&uri)?;
                let mut files = Vec::with_capacity(synced.len());
                for d in synced {
                    files.push(self.version_file(d).await?);
                }
                self.catalog.publish_version(&name, &version, &self.execution, files).await
            }
            .await;
            match res {
                Ok(rec) => {
                    crate::crash::point("version-published");
                    report.versions.push(rec.uri())
                }
                Err(error) => failed.push(FailedFile { path: uri, error: error.to_string() }),
            }
        }
        report.failed.extend(failed);
        self.publish_model_versions(report).await;
    }

    /// The version record's entry for a synced file (its checksums read back if not kept).
    async fn version_file(&self, d: &SyncedFile) -> Result<catalog::datasets::VersionFile, catalog::CatalogError> {
        let id = d.datum.id();
        let (checksums, packed) = match &d.md5_sha1 {
            Some((md5, sha1)) => {
                let packed = match d.packed {
                    Some((offset, pack_size)) => {
                        let pack = pack_of(&id).ok_or_else(|| catalog::CatalogError::Malformed {
                            uri: d.datum.to_string(),
                            reason: "a packed datum's id names no pack".into(),
                        })?;
                        Some(PackedIn { pack, offset, pack_size })
                    }
                    None => None,
                };
                (FileDigests::new(d.sha256.0, Some(*md5), Some(*sha1)), packed)
            }
            None => {
                let rec = self.catalog.datum(&id).await?;
                let checksums = FileDigests::of(&rec.checksums)
                    .map_err(|e| catalog::CatalogError::Malformed { uri: rec.uri.clone(), reason: e.to_string() })?;
                (checksums, rec.packed)
            }
        };
        Ok(catalog::datasets::VersionFile {
            path: d.path.clone(),
            datum: id,
            size: d.size,
            checksums,
            object_uri: d.object_uri.clone(),
            packed,
        })
    }

    /// Makes (or extends) this execution's version of each model the synced files name.
    async fn publish_model_versions(&self, report: &mut SyncReport) {
        // Per model: its files, tags and release note.
        type Wanted<'a> = (Vec<&'a SyncedFile>, Vec<String>, Option<String>);
        let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
        for d in &report.datums {
            for t in &d.model_versions {
                let entry = wanted.entry(t.model.clone()).or_default();
                entry.0.push(d);
                entry.1.extend(t.tags.iter().filter(|x| !entry.1.contains(x)).cloned().collect::<Vec<_>>());
                if t.release_note.is_some() {
                    entry.2 = t.release_note.clone();
                }
            }
        }
        let mut failed = Vec::new();
        let mut made = Vec::new();
        for (model, (synced, tags, note)) in wanted {
            let res = async {
                let mut files = Vec::with_capacity(synced.len());
                for d in synced {
                    files.push(self.version_file(d).await?);
                }
                self.catalog.publish_model_version(&model, &self.execution, files, &tags, note.as_deref()).await
            }
            .await;
            match res {
                Ok(version) => made.push(catalog::models::uri(&model, &version)),
                Err(error) => failed.push(FailedFile { path: format!("model://{model}/"), error: error.to_string() }),
            }
        }
        report.versions.extend(made);
        report.failed.extend(failed);
    }

    /// Turns local files (not staged outputs) into datums: `datumfs push`. `files` are
    /// (relative path, local path) pairs. `earlier`: the start (ms since the epoch) of this
    /// execution's earlier, interrupted push, whose datums are found again rather than made twice
    /// (`None` for a new execution).
    pub async fn push(
        &self,
        files: Vec<(String, PathBuf)>,
        meta: DatumMeta,
        started_ms: u64,
        earlier: Option<&[DatumRecord]>,
        progress: &Progress,
    ) -> Vec<(String, Result<DatumRecord, SyncError>)> {
        progress.files_total.store(files.len() as u64, Ordering::Relaxed);
        let mut total = 0;
        for (_, p) in &files {
            total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        progress.bytes_total.store(total, Ordering::Relaxed);
        let by_path: BTreeMap<&str, Vec<&DatumRecord>> =
            earlier.unwrap_or_default().iter().fold(BTreeMap::new(), |mut m, d| {
                m.entry(d.path.as_str()).or_insert_with(Vec::new).push(d);
                m
            });
        let by_path = &by_path;
        // The alias goes to the last file only (an alias names one datum).
        let last = files.len().saturating_sub(1);
        let made = futures::stream::iter(files.into_iter().enumerate())
            .map(|(i, (rel, local))| {
                let mut m = meta.clone();
                if i != last {
                    m.alias = None;
                }
                async move {
                    let res = async {
                        let mut id = push_datum_id(&self.execution, started_ms, &rel);
                        if earlier.is_some() {
                            let sha256 = upload::file_sha256(&local).await?;
                            let found = self.catalog.stored_datum(&id).await?;
                            let earlier_same = by_path.get(rel.as_str()).into_iter().flatten().copied();
                            if let Some(d) =
                                found.iter().chain(earlier_same).find(|d| d.path == rel && d.checksums.sha256 == sha256)
                            {
                                progress.bytes_done.fetch_add(d.size, Ordering::Relaxed);
                                if let Some(alias) = &m.alias {
                                    self.catalog.set_alias(alias, &d.id, Some(&self.execution)).await?;
                                }
                                return Ok(d.clone());
                            }
                            if found.is_some() {
                                // The path's datum of the interrupted push holds other bytes:
                                // the file changed since, and its bytes now are a new datum.
                                id = catalog::new_id();
                            }
                        }
                        let key = self.catalog.store().data_key(&format!("{}/{rel}", self.execution)).to_string();
                        self.make_datum(
                            &rel,
                            &local,
                            m,
                            (id, key),
                            earlier.is_some(),
                            None,
                            &progress.bytes_done,
                            |_, _| Box::pin(async { Ok(()) }),
                        )
                        .await
                    }
                    .await;
                    progress.files_done.fetch_add(1, Ordering::Relaxed);
                    (rel, res)
                }
            })
            .buffered(FILES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        self.index(made.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect(), Vec::new()).await;
        made
    }
}

/// The datum id `datumfs push` gives output path `rel` of `execution` (started at `started_ms`):
/// a ULID with the execution's start as its time and a hash of both names as its random part, the
/// same on every run of that push, so a rerun finds the datums an interrupted run recorded.
pub fn push_datum_id(execution: &str, started_ms: u64, rel: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"datumfs push\0");
    h.update(execution.as_bytes());
    h.update(b"\0");
    h.update(rel.as_bytes());
    let digest = h.finalize();
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    ulid::Ulid::from_parts(started_ms, u128::from_be_bytes(random)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_datum_id_is_the_same_on_every_run_and_differs_per_path_and_execution() {
        let started = 1_765_000_000_123;
        let id = push_datum_id("push-a", started, "d/f.bin");
        assert!(catalog::is_id(&id), "{id}");
        assert_eq!(id, push_datum_id("push-a", started, "d/f.bin"));
        assert_eq!(ulid::Ulid::from_string(&id).unwrap().timestamp_ms(), started);
        assert_ne!(id, push_datum_id("push-a", started, "d/g.bin"));
        assert_ne!(id, push_datum_id("push-b", started, "d/f.bin"));
    }

    /// Staged outputs under a temporary root, their sync state, and a syncer with a catalog
    /// in memory.
    async fn setup(files: usize) -> (tempfile::TempDir, SyncState, Syncer) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("outputs");
        std::fs::create_dir_all(root.join("d")).unwrap();
        for i in 0..files {
            std::fs::write(root.join(format!("d/f{i:03}.bin")), format!("file {i}").repeat(100)).unwrap();
        }
        let db = sled::Config::new().path(dir.path().join("index")).open().unwrap();
        let state = SyncState::open(&db, "exec").unwrap();
        let syncer = Syncer::new(Catalog::in_memory(), "exec".into(), 1 << 20);
        (dir, state, syncer)
    }

    fn none_known(files: &[(u64, u64)]) -> Vec<Option<KnownSums>> {
        vec![None; files.len()]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_recorded_before_a_crash_is_not_made_again() {
        let (dir, state, syncer) = setup(10).await;
        let root = dir.path().join("outputs");
        let first = syncer.sync(&root, &state, &Progress::default(), &none_known).await;
        assert!(first.failed.is_empty(), "{:?}", first.failed);
        assert_eq!(syncer.catalog.packs().await.unwrap().len(), 1);
        // A crash after the pack's record was stored, before half of its files' states were:
        // those are still pending, as they were planned.
        for d in first.datums.iter().step_by(2) {
            let rec = syncer.catalog.datum(&d.datum.id()).await.unwrap();
            let Some(PathState::Synced { stamp, .. }) = state.get(&d.path) else { panic!("{} not synced", d.path) };
            let offset = rec.packed.as_ref().map(|p| p.offset);
            state.set(&d.path, &PathState::Pending { stamp, datum: rec.id, key: rec.key, packed: offset }).unwrap();
        }
        let again = syncer.sync(&root, &state, &Progress::default(), &none_known).await;
        assert!(again.failed.is_empty(), "{:?}", again.failed);
        let ids = |r: &SyncReport| r.datums.iter().map(|d| (d.path.clone(), d.datum)).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&first), "the same datums, none made twice");
        assert_eq!(syncer.catalog.packs().await.unwrap().len(), 1, "no second pack");
        assert_eq!(syncer.catalog.datums().await.unwrap().len(), 10);
    }
}
