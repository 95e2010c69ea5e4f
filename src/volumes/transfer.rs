//! Moving a tree between local disk and a prefix without a job: `datumfs volume push` (upload,
//! parallel, multipart for big files, skipping what is there with the same content) and
//! `volume pull` (download, each file written whole or not at all). A rerun after a crash
//! finishes the work: what is already in place is skipped.

use crate::checksum::MultiHasher;
use crate::store::data::DataStore;
use crate::store::StoreError;
use crate::sync::upload::{put_file, UploadError};
use crate::sync::Progress;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as KeyPath;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Files moved at once.
const FILES_IN_FLIGHT: usize = 16;

/// What a push or pull did.
#[derive(Debug, Default, Serialize)]
pub struct TransferReport {
    /// The prefix.
    pub uri: String,
    /// The local directory.
    pub local: PathBuf,
    /// Paths moved (relative to both roots).
    pub moved: Vec<String>,
    /// Paths already the same on both sides.
    pub unchanged: Vec<String>,
    /// Bytes moved.
    pub bytes: u64,
    /// Entries left alone, and why (symlinks and other non-files; unsafe keys).
    pub skipped: Vec<Failed>,
    /// Paths that failed, and why.
    pub failed: Vec<Failed>,
}

/// Each path's outcome: the bytes it moved, `None` when it was already the same, or why it
/// failed.
type Outcomes = Vec<(String, Result<Option<u64>, UploadError>)>;

impl TransferReport {
    /// Adds `outcomes` to the report, each list sorted.
    fn tally(&mut self, outcomes: Outcomes) {
        for (rel, res) in outcomes {
            match res {
                Ok(Some(size)) => {
                    self.bytes += size;
                    self.moved.push(rel);
                }
                Ok(None) => self.unchanged.push(rel),
                Err(e) => self.failed.push(Failed { path: rel, error: e.to_string() }),
            }
        }
        self.moved.sort();
        self.unchanged.sort();
        self.failed.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// One path that was not moved.
#[derive(Debug, Serialize)]
pub struct Failed {
    /// Its path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Every object under the prefix, by its path below it.
async fn listing(ds: &DataStore) -> Result<HashMap<String, ObjectMeta>, StoreError> {
    let prefix = (!ds.prefix.is_empty()).then(|| KeyPath::from(ds.prefix.as_str()));
    let err = |e| StoreError::from_object_store(&ds.url, ds.handle.bucket.as_deref(), e);
    let metas: Vec<ObjectMeta> = ds.handle.inner.list(prefix.as_ref()).try_collect().await.map_err(err)?;
    let strip = if ds.prefix.is_empty() { String::new() } else { format!("{}/", ds.prefix) };
    Ok(metas
        .into_iter()
        .filter_map(|m| Some((m.location.as_ref().strip_prefix(strip.as_str())?.to_string(), m)))
        .collect())
}

/// The md5 an ETag states, when it is one (a plain S3 PUT's, GCS's); `None` for multipart or
/// other ETags.
fn etag_md5(meta: &ObjectMeta) -> Option<String> {
    let tag = meta.e_tag.as_deref()?.trim_matches('"').to_ascii_lowercase();
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// Whether the local file holds the same bytes as the object: sizes, then the md5 an ETag
/// states, else both sha256 (the object read whole).
async fn same_content(ds: &DataStore, file: &Path, meta: &ObjectMeta) -> Result<bool, UploadError> {
    let size = tokio::fs::metadata(file)
        .await
        .map_err(|error| UploadError::Local { path: file.display().to_string(), error })?
        .len();
    if size != meta.size {
        return Ok(false);
    }
    let path = file.to_path_buf();
    let local = tokio::task::spawn_blocking(move || MultiHasher::of_reader(std::fs::File::open(&path)?))
        .await
        .map_err(|e| UploadError::Local { path: file.display().to_string(), error: std::io::Error::other(e) })?
        .map_err(|error| UploadError::Local { path: file.display().to_string(), error })?
        .0;
    if let Some(md5) = etag_md5(meta) {
        return Ok(md5 == local.md5);
    }
    use sha2::Digest;
    let err = |e| StoreError::from_object_store(&ds.uri_of(&meta.location), ds.handle.bucket.as_deref(), e);
    let mut stream = ds.handle.inner.get(&meta.location).await.map_err(err)?.into_stream();
    let mut h = sha2::Sha256::new();
    while let Some(chunk) = stream.next().await {
        h.update(chunk.map_err(err)?);
    }
    Ok(hex::encode(h.finalize()) == local.sha256)
}

/// Uploads the tree under `local` to the prefix of `ds`, replacing objects whose content
/// differs and skipping those already the same.
pub async fn push(ds: &DataStore, local: &Path, progress: &Progress) -> TransferReport {
    let mut report = TransferReport { uri: ds.url.clone(), local: local.to_path_buf(), ..Default::default() };
    let walked = {
        let root = local.to_path_buf();
        tokio::task::spawn_blocking(move || crate::sync::walk(&root)).await
    };
    let (files, others) = match walked {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            report.failed.push(Failed { path: String::new(), error: format!("{}: {e}", local.display()) });
            return report;
        }
        Err(e) => {
            report.failed.push(Failed { path: String::new(), error: e.to_string() });
            return report;
        }
    };
    report.skipped = others.into_iter().map(|(path, why)| Failed { path, error: why.to_string() }).collect();
    let existing = match listing(ds).await {
        Ok(l) => l,
        Err(e) => {
            report.failed.push(Failed { path: String::new(), error: e.to_string() });
            return report;
        }
    };
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(files.iter().map(|(_, m)| m.len()).sum(), Ordering::Relaxed);
    let results: Outcomes = futures::stream::iter(files)
        .map(|(rel, _)| {
            let existing = &existing;
            async move {
                let file = local.join(&rel);
                let res = async {
                    if let Some(meta) = existing.get(&rel) {
                        if same_content(ds, &file, meta).await? {
                            progress.bytes_done.fetch_add(meta.size, Ordering::Relaxed);
                            return Ok(None);
                        }
                    }
                    let (_, size) = put_file(ds, &file, &ds.key_below(&rel), &progress.bytes_done).await?;
                    Ok(Some(size))
                }
                .await;
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                (rel, res)
            }
        })
        .buffer_unordered(FILES_IN_FLIGHT)
        .collect()
        .await;
    report.tally(results);
    report
}

/// Downloads every object under the prefix of `ds` into `local` (made if missing), each file
/// written to a temporary name and renamed once whole; files already the same are skipped.
/// Keys that are unsafe as paths (`..`, control characters) are skipped and reported.
pub async fn pull(ds: &DataStore, local: &Path, progress: &Progress) -> TransferReport {
    let mut report = TransferReport { uri: ds.url.clone(), local: local.to_path_buf(), ..Default::default() };
    let objects = match listing(ds).await {
        Ok(l) => l,
        Err(e) => {
            report.failed.push(Failed { path: String::new(), error: e.to_string() });
            return report;
        }
    };
    let mut wanted: Vec<(String, PathBuf, ObjectMeta)> = Vec::new();
    for (rel, meta) in objects {
        if rel.is_empty() || rel.ends_with('/') {
            continue; // a directory marker
        }
        match crate::keys::relative_segments(&rel) {
            Ok(segments) => {
                let target = segments.iter().fold(local.to_path_buf(), |p, s| p.join(s));
                wanted.push((rel, target, meta));
            }
            Err(why) => report.skipped.push(Failed { path: rel, error: format!("the key is unsafe as a path: {why}") }),
        }
    }
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    progress.files_total.store(wanted.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(wanted.iter().map(|w| w.2.size).sum(), Ordering::Relaxed);
    let results: Outcomes = futures::stream::iter(wanted)
        .map(|(rel, target, meta)| async move {
            let res = async {
                if target.is_file() && same_content(ds, &target, &meta).await? {
                    progress.bytes_done.fetch_add(meta.size, Ordering::Relaxed);
                    return Ok(None);
                }
                download(ds, &meta, &target, progress).await.map(Some)
            }
            .await;
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            (rel, res)
        })
        .buffer_unordered(FILES_IN_FLIGHT)
        .collect()
        .await;
    report.tally(results);
    report
}

/// Writes one object to `target`: into a temporary file beside it, renamed once all its bytes
/// (exactly its size) are there.
async fn download(ds: &DataStore, meta: &ObjectMeta, target: &Path, progress: &Progress) -> Result<u64, UploadError> {
    use tokio::io::AsyncWriteExt;
    let local_err = |error| UploadError::Local { path: target.display().to_string(), error };
    let err = |e| StoreError::from_object_store(&ds.uri_of(&meta.location), ds.handle.bucket.as_deref(), e);
    let dir = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(local_err)?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.datumfs-{}", std::process::id()));
    let res = async {
        let mut out = tokio::fs::File::create(&tmp).await.map_err(local_err)?;
        let mut stream = ds.handle.inner.get(&meta.location).await.map_err(err)?.into_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(err)?;
            total += chunk.len() as u64;
            progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            out.write_all(&chunk).await.map_err(local_err)?;
        }
        out.flush().await.map_err(local_err)?;
        out.sync_all().await.map_err(local_err)?;
        if total != meta.size {
            return Err(UploadError::Store(StoreError::Other {
                uri: ds.uri_of(&meta.location),
                cause: format!("{total} bytes came where {} were listed", meta.size),
            }));
        }
        tokio::fs::rename(&tmp, target).await.map_err(local_err)?;
        Ok(total)
    }
    .await;
    if res.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    res
}
