//! `datumfs volume sync`: a writable volume's staged changes put back under its prefix.
//!
//! The plan comes from the staged tree alone: a file whose origin mark names its own path is
//! the bucket's and unchanged; any other file is put (a new or changed file, or a bucket file
//! moved or linked to another path); a key the mount saw that no longer has a file at its path
//! is deleted (in `rwd`; refused in `rw`). A directory never filled in from the bucket is at its
//! bucket place, unchanged.
//!
//! Nothing the mount did not see is ever overwritten or deleted: every put is conditional on
//! the version the mount saw (`If-Match` its ETag, or `If-None-Match: *` for a key it did not
//! see), every delete on a HEAD showing that version. A key changed in the bucket since is a
//! conflict: reported with both versions, left alone, and kept staged (`--force` overrides for
//! one run). A put that succeeded before a crash is found again by its MD5 ETag, so a rerun
//! finishes the work instead of reporting the mount's own write as a conflict. A file changed
//! while it uploads is put, but stays a change to put again.

use crate::fs::volume::VolumeNamespace;
use crate::outputs::EntryKind;
use crate::store::data::DataStore;
use crate::store::StoreError;
use crate::sync::upload::{put_multipart_file, SINGLE_PUT_MAX};
use crate::sync::Progress;
use crate::volumes::state::{self, Origin, Version};
use crate::volumes::VolumeMode;
use futures::StreamExt;
use md5::Md5;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Files put at once.
const PUTS_IN_FLIGHT: usize = 8;

/// What a volume sync did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct VolumeSyncReport {
    /// The volume's name.
    pub volume: String,
    /// Its prefix.
    pub uri: String,
    /// Its mode.
    pub mode: &'static str,
    /// Nothing was changed in the bucket.
    pub dry_run: bool,
    /// Keys put (or to put).
    pub put: Vec<Put>,
    /// Keys deleted (or to delete).
    pub deleted: Vec<String>,
    /// Keys changed in the bucket since the mount saw them: left alone, changes kept staged.
    pub conflicts: Vec<Conflict>,
    /// Changes the volume's mode does not allow (deletes in `rw`).
    pub refused: Vec<Skipped>,
    /// Staged entries that are not files (symlinks, FIFOs, sockets, devices) or whose names
    /// cannot be keys.
    pub skipped: Vec<Skipped>,
    /// Keys that failed, and why.
    pub failed: Vec<Skipped>,
    /// Files changed while they were put: in the bucket as read, and still a change.
    pub changed_while_put: Vec<String>,
    /// Bytes put.
    pub bytes: u64,
}

impl VolumeSyncReport {
    /// Whether everything asked was done.
    pub fn complete(&self) -> bool {
        self.conflicts.is_empty() && self.failed.is_empty() && self.refused.is_empty()
    }
}

/// One put.
#[derive(Debug, Clone, Serialize)]
pub struct Put {
    /// The key below the prefix.
    pub key: String,
    /// Why: `new` (a key the mount did not see), `changed`, or `copied` (bucket bytes moved or
    /// linked to another path).
    pub why: &'static str,
    /// Its size.
    pub size: u64,
    /// The sha256 of what was put (not in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The key's new ETag (not in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// A key changed in the bucket since the mount saw it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Conflict {
    /// The key below the prefix.
    pub key: String,
    /// What the sync meant to do: `put` or `delete`.
    pub action: String,
    /// The version the mount saw (its ETag; `null`: the key was not there).
    pub mount_saw: Option<String>,
    /// The version the bucket has now (`null`: the key is gone).
    pub bucket_has: Option<String>,
}

/// An entry left alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The key (or staged path) below the prefix.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// What the staged tree says to do.
#[derive(Debug, Default)]
struct Plan {
    puts: Vec<PlannedPut>,
    deletes: Vec<String>,
    refused: Vec<Skipped>,
    skipped: Vec<Skipped>,
}

#[derive(Debug)]
struct PlannedPut {
    key: String,
    path: PathBuf,
    why: &'static str,
    size: u64,
}

/// Walks the staged tree of `volume` into a plan.
fn plan(volume: &VolumeNamespace) -> std::io::Result<Plan> {
    let seen = volume.state().seen.all();
    let mut plan = Plan::default();
    let mut present = HashSet::new();
    let mut unlisted = Vec::new();
    let root = volume.staging().files_dir().to_path_buf();
    walk(&root, "", &seen, &mut plan, &mut present, &mut unlisted)?;
    let mut gone: Vec<String> = seen
        .keys()
        .filter(|k| !present.contains(*k))
        .filter(|k| !unlisted.iter().any(|d: &String| d.is_empty() || k.starts_with(&format!("{d}/"))))
        .cloned()
        .collect();
    gone.sort();
    match volume.mode() {
        VolumeMode::Rwd => plan.deletes = gone,
        _ => plan.refused.extend(gone.into_iter().map(|key| Skipped {
            key,
            reason: "deleted or moved in the mount, but the volume is rw (mount it :rwd to delete keys)".into(),
        })),
    }
    Ok(plan)
}

fn walk(
    dir: &Path,
    rel: &str,
    seen: &std::collections::HashMap<String, Version>,
    plan: &mut Plan,
    present: &mut HashSet<String>,
    unlisted: &mut Vec<String>,
) -> std::io::Result<()> {
    if !state::is_listed(dir)? {
        unlisted.push(rel.to_string());
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            let key = format!("{rel}/{}", name.to_string_lossy());
            plan.skipped.push(Skipped { key, reason: "its name is not UTF-8, which a key must be".into() });
            continue;
        };
        let key = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        let meta = std::fs::symlink_metadata(e.path())?;
        match EntryKind::of(meta.file_type()) {
            EntryKind::Dir => walk(&e.path(), &key, seen, plan, present, unlisted)?,
            EntryKind::File => {
                present.insert(key.clone());
                let origin = state::origin_at(&e.path())?;
                let why = match origin {
                    Some(o) if o.key == key => continue,
                    Some(_) => "copied",
                    None if seen.contains_key(&key) => "changed",
                    None => "new",
                };
                plan.puts.push(PlannedPut { key, path: e.path(), why, size: meta.len() });
            }
            other => plan.skipped.push(Skipped { key, reason: other.skipped_because().to_string() }),
        }
    }
    Ok(())
}

/// What a volume sync is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Only say what would be done.
    pub dry_run: bool,
    /// Overwrite and delete whatever the bucket has now.
    pub force: bool,
}

/// Whether the staged tree of `volume` holds changes not in the bucket (for unmount): puts,
/// deletes, or refused deletes.
pub fn pending(volume: &VolumeNamespace) -> std::io::Result<usize> {
    let p = plan(volume)?;
    Ok(p.puts.len() + p.deletes.len() + p.refused.len())
}

/// What `datumfs status` shows of a writable volume.
#[derive(Debug, Serialize)]
pub struct VolumeStatus {
    /// Its name.
    pub name: String,
    /// Its prefix.
    pub uri: String,
    /// Its mode.
    pub mode: &'static str,
    /// Where its staged tree is.
    pub staged: PathBuf,
    /// Keys a sync would put: new files, changed files, bucket files moved or linked.
    pub to_put: Vec<String>,
    /// Bytes a sync would put.
    pub bytes_to_put: u64,
    /// Keys a sync would delete.
    pub to_delete: Vec<String>,
    /// Deletions the mode refuses.
    pub refused: Vec<String>,
    /// Keys the last sync found changed in the bucket, still staged.
    pub conflicts: Vec<Conflict>,
}

/// The status of `volume` (walks its staged tree: call from a blocking thread).
pub fn status(volume: &VolumeNamespace) -> std::io::Result<VolumeStatus> {
    let p = plan(volume)?;
    let staged_keys: HashSet<&str> = p.puts.iter().map(|p| p.key.as_str()).collect();
    let conflicts = last_conflicts(volume).into_iter().filter(|c| staged_keys.contains(c.key.as_str())).collect();
    Ok(VolumeStatus {
        name: volume.name().to_string(),
        uri: volume.uri().to_string(),
        mode: volume.mode().as_str(),
        staged: volume.staging().files_dir().to_path_buf(),
        bytes_to_put: p.puts.iter().map(|p| p.size).sum(),
        to_put: p.puts.into_iter().map(|p| p.key).collect(),
        to_delete: p.deletes,
        refused: p.refused.into_iter().map(|r| r.key).collect(),
        conflicts,
    })
}

fn conflicts_file(volume: &VolumeNamespace) -> PathBuf {
    volume.state().dir().join("conflicts.json")
}

/// The conflicts the last sync of `volume` reported.
fn last_conflicts(volume: &VolumeNamespace) -> Vec<Conflict> {
    std::fs::read(conflicts_file(volume)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Syncs `volume` to its prefix in `ds`.
pub async fn sync(
    volume: &VolumeNamespace,
    ds: &DataStore,
    options: SyncOptions,
    progress: &Progress,
) -> VolumeSyncReport {
    let mut report = VolumeSyncReport {
        volume: volume.name().to_string(),
        uri: volume.uri().to_string(),
        mode: volume.mode().as_str(),
        dry_run: options.dry_run,
        ..Default::default()
    };
    let plan = match tokio::task::block_in_place(|| plan(volume)) {
        Ok(p) => p,
        Err(e) => {
            report.failed.push(Skipped { key: String::new(), reason: format!("reading the staged tree: {e}") });
            return report;
        }
    };
    report.refused = plan.refused;
    report.skipped = plan.skipped;
    progress.files_total.store((plan.puts.len() + plan.deletes.len()) as u64, Ordering::Relaxed);
    progress.bytes_total.store(plan.puts.iter().map(|p| p.size).sum(), Ordering::Relaxed);
    let outcomes: Vec<(PlannedPut, Result<PutOutcome, String>)> = futures::stream::iter(plan.puts)
        .map(|p| async move {
            let res = put_one(volume, ds, &p, options, progress).await;
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            (p, res)
        })
        .buffer_unordered(PUTS_IN_FLIGHT)
        .collect()
        .await;
    for (p, res) in outcomes {
        match res {
            Ok(PutOutcome::Done { sha256, etag, marked }) => {
                report.bytes += p.size;
                if !marked {
                    report.changed_while_put.push(p.key.clone());
                }
                report.put.push(Put { key: p.key, why: p.why, size: p.size, sha256, etag });
            }
            Ok(PutOutcome::Conflict(c)) => report.conflicts.push(c),
            Ok(PutOutcome::Nothing) => {}
            Err(reason) => report.failed.push(Skipped { key: p.key, reason }),
        }
    }
    for key in plan.deletes {
        match delete_one(volume, ds, &key, options).await {
            Ok(None) => report.deleted.push(key),
            Ok(Some(c)) => report.conflicts.push(c),
            Err(reason) => report.failed.push(Skipped { key, reason }),
        }
        progress.files_done.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = volume.state().seen.flush() {
        report
            .failed
            .push(Skipped { key: String::new(), reason: format!("{}: {e}", volume.state().seen.path().display()) });
    }
    report.put.sort_by(|a, b| a.key.cmp(&b.key));
    report.conflicts.sort_by(|a, b| a.key.cmp(&b.key));
    if !options.dry_run {
        let kept = serde_json::to_vec(&report.conflicts).unwrap_or_default();
        if let Err(e) = std::fs::write(conflicts_file(volume), kept) {
            tracing::warn!("volume {}: keeping its conflicts for status: {e}", volume.name());
        }
    }
    report.failed.sort_by(|a, b| a.key.cmp(&b.key));
    report.changed_while_put.sort();
    report
}

enum PutOutcome {
    Done {
        sha256: Option<String>,
        etag: Option<String>,
        marked: bool,
    },
    Conflict(Conflict),
    /// Nothing to put after all: the file went before its turn (the next sync sees what took
    /// its place), or was synced meanwhile.
    Nothing,
}

/// The key's version in the bucket now (`Ok(None)`: no such key).
async fn head_version(ds: &DataStore, key: &str) -> Result<Option<Version>, StoreError> {
    let path = ds.key_below(key);
    match ds.handle.inner.head(&path).await {
        Ok(meta) => Ok(Some(Version::of(meta.e_tag, meta.last_modified.into(), meta.size))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StoreError::from_object_store(&ds.uri_of(&path), ds.handle.bucket.as_deref(), e)),
    }
}

/// Whether the bucket holds the version the mount saw (`None`: absent, on either side).
fn as_seen(now: &Option<Version>, expected: &Option<Version>) -> bool {
    match (now, expected) {
        (None, None) => true,
        (Some(now), Some(exp)) => exp.matches(now),
        _ => false,
    }
}

fn conflict(key: &str, action: &'static str, saw: &Option<Version>, has: Option<Version>) -> Conflict {
    Conflict {
        key: key.to_string(),
        action: action.to_string(),
        mount_saw: saw.as_ref().map(Version::shown),
        bucket_has: has.as_ref().map(Version::shown),
    }
}

/// (size, mtime in ns, inode) of an open file: what a write changes.
fn fingerprint(file: &std::fs::File) -> std::io::Result<(u64, i64, u64)> {
    let m = file.metadata()?;
    Ok((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino()))
}

async fn put_one(
    volume: &VolumeNamespace,
    ds: &DataStore,
    p: &PlannedPut,
    options: SyncOptions,
    progress: &Progress,
) -> Result<PutOutcome, String> {
    let shown = format!("volumes/{}/{}", volume.name(), p.key);
    let expected = volume.state().seen.get(&p.key);
    if options.dry_run {
        if !options.force {
            let now = head_version(ds, &p.key).await.map_err(|e| e.to_string())?;
            if !as_seen(&now, &expected) {
                return Ok(PutOutcome::Conflict(conflict(&p.key, "put", &expected, now)));
            }
        }
        return Ok(PutOutcome::Done { sha256: None, etag: None, marked: true });
    }
    // Bucket bytes moved to another path come in first: what goes up is the staged file.
    match volume.bring_in(&p.path).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Ok(PutOutcome::Nothing),
        Err(e) => return Err(format!("{shown}: reading its bytes from the bucket: {e}")),
    }
    let path = p.path.clone();
    let opened = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)
    })
    .await
    .map_err(|e| e.to_string())?;
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PutOutcome::Nothing),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let before = fingerprint(&file).map_err(|e| format!("{shown}: {e}"))?;
    if state::origin_of(&file).map_err(|e| format!("{shown}: {e}"))?.is_some_and(|o| o.key == p.key) {
        return Ok(PutOutcome::Nothing); // synced meanwhile
    }
    let key = ds.key_below(&p.key);
    let store_err = |e| StoreError::from_object_store(&ds.uri_of(&key), ds.handle.bucket.as_deref(), e).to_string();
    let (sha256, etag) = if before.0 <= SINGLE_PUT_MAX {
        let f = file.try_clone().map_err(|e| format!("{shown}: {e}"))?;
        let (bytes, sha256, md5) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut bytes)?;
            let sha = hex::encode(Sha256::digest(&bytes));
            let md5 = hex::encode(Md5::digest(&bytes));
            Ok((bytes, sha, md5))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{shown}: {e}"))?;
        let mode = match (&expected, options.force) {
            (_, true) => PutMode::Overwrite,
            (None, false) => PutMode::Create,
            (Some(Version { etag: Some(e), .. }), false) => {
                PutMode::Update(UpdateVersion { e_tag: Some(e.clone()), version: None })
            }
            (Some(_), false) => {
                // The listing gave no ETag: the version is checked by time and size, and the
                // put made conditional on the ETag that check found.
                let now = head_version(ds, &p.key).await.map_err(|e| e.to_string())?;
                if !as_seen(&now, &expected) {
                    return Ok(PutOutcome::Conflict(conflict(&p.key, "put", &expected, now)));
                }
                match now.and_then(|v| v.etag) {
                    Some(e) => PutMode::Update(UpdateVersion { e_tag: Some(e), version: None }),
                    None => PutMode::Overwrite,
                }
            }
        };
        let size = bytes.len() as u64;
        let payload = PutPayload::from(bytes);
        let res = ds
            .handle
            .inner
            .put_opts(&key, payload.clone(), PutOptions { mode: mode.clone(), ..Default::default() })
            .await;
        let etag = match res {
            Ok(r) => r.e_tag,
            Err(object_store::Error::NotImplemented { .. }) if matches!(mode, PutMode::Update(_)) => {
                // A store without conditional updates (local files): check, then put.
                let now = head_version(ds, &p.key).await.map_err(|e| e.to_string())?;
                if !as_seen(&now, &expected) {
                    return Ok(PutOutcome::Conflict(conflict(&p.key, "put", &expected, now)));
                }
                ds.handle.inner.put(&key, payload).await.map_err(store_err)?.e_tag
            }
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                let now = head_version(ds, &p.key).await.map_err(|e| e.to_string())?;
                // Our own bytes, put by an attempt that did not get to record it.
                if now.as_ref().and_then(|v| v.etag.as_deref()).is_some_and(|e| state::same_etag(e, &md5)) {
                    now.and_then(|v| v.etag)
                } else {
                    return Ok(PutOutcome::Conflict(conflict(&p.key, "put", &expected, now)));
                }
            }
            Err(e) => return Err(store_err(e)),
        };
        progress.bytes_done.fetch_add(size, Ordering::Relaxed);
        (sha256, etag)
    } else {
        // Multipart completion is not conditional through object_store: check just before.
        if !options.force {
            let now = head_version(ds, &p.key).await.map_err(|e| e.to_string())?;
            if !as_seen(&now, &expected) {
                return Ok(PutOutcome::Conflict(conflict(&p.key, "put", &expected, now)));
            }
        }
        let (sums, _) =
            put_multipart_file(ds, &p.path, &key, None, &progress.bytes_done).await.map_err(|e| e.to_string())?;
        let etag = head_version(ds, &p.key).await.map_err(|e| e.to_string())?.and_then(|v| v.etag);
        (sums.sha256, etag)
    };
    crate::crash::point("volume-put");
    let version = match &etag {
        Some(_) => Version { etag: etag.clone(), mtime: None, size: Some(before.0) },
        // A store that answers puts without an ETag: the version is what a HEAD shows now.
        None => head_version(ds, &p.key).await.map_err(|e| e.to_string())?.unwrap_or_default(),
    };
    volume.state().seen.record(&p.key, version).map_err(|e| format!("{shown}: {e}"))?;
    // Synced, unless it changed meanwhile or a handle may still write it.
    let marked = volume.with_writers_held(|writers| -> std::io::Result<bool> {
        if writers.get(&before.2).is_some_and(|&n| n > 0) || fingerprint(&file)? != before {
            return Ok(false);
        }
        state::set_origin(&file, &Origin { key: p.key.clone(), etag: etag.clone(), hydrated: true })?;
        Ok(true)
    });
    let marked = marked.map_err(|e| format!("{shown}: {e}"))?;
    crate::crash::point("volume-marked");
    Ok(PutOutcome::Done { sha256: Some(sha256), etag, marked })
}

/// Deletes `key` if the bucket still has the version the mount saw; `Ok(Some)`: a conflict.
async fn delete_one(
    volume: &VolumeNamespace,
    ds: &DataStore,
    key: &str,
    options: SyncOptions,
) -> Result<Option<Conflict>, String> {
    let expected = volume.state().seen.get(key);
    let now = head_version(ds, key).await.map_err(|e| e.to_string())?;
    if now.is_some() && !options.force && !as_seen(&now, &expected) {
        return Ok(Some(conflict(key, "delete", &expected, now)));
    }
    if options.dry_run {
        return Ok(None);
    }
    if now.is_some() {
        let path = ds.key_below(key);
        match ds.handle.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(StoreError::from_object_store(&ds.uri_of(&path), ds.handle.bucket.as_deref(), e).to_string())
            }
        }
    }
    crate::crash::point("volume-deleted");
    volume.state().seen.forget(key).map_err(|e| e.to_string())?;
    Ok(None)
}
