//! `datumfs warm`: fetch whole inputs into the cache ahead of a job, many files at once, through
//! the inputs' namespaces (a mount's, or one made for a URI without a mount).

use super::events::LogOnly;
use super::input::{InputNamespace, InputServices};
use super::namespace::Namespace;
use super::{Fs, FsError, FsResult, INPUTS};
use crate::sync::Progress;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Files warmed at once.
const FILES_AT_ONCE: usize = 16;

/// What `warm` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmReport {
    /// Files now wholly cached.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, files that were cached already.
    pub already_cached: u64,
    /// Files that could not be fetched, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Fetches every file at or below `ino` of `input` whole into the cache, counting into
/// `progress`.
async fn warm_input(input: &InputNamespace, ino: u64, progress: &Progress) -> FsResult<WarmReport> {
    let files = input.files_under(ino).await?;
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(files.iter().map(|&f| input.size_of(f)).sum(), Ordering::Relaxed);
    let results: Vec<(String, u64, FsResult<bool>)> = futures::stream::iter(files)
        .map(|ino| async move {
            let res = input.warm_file(ino).await;
            let size = input.size_of(ino);
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            progress.bytes_done.fetch_add(size, Ordering::Relaxed);
            (input.path_of(ino), size, res)
        })
        .buffer_unordered(FILES_AT_ONCE)
        .collect()
        .await;
    let mut report = WarmReport::default();
    for (path, size, res) in results {
        match res {
            Ok(was) => {
                report.files += 1;
                report.bytes += size;
                report.already_cached += u64::from(was);
            }
            Err(e) => {
                tracing::error!("warm {path}: {e}");
                report.failed.push((path, e.to_string()));
            }
        }
    }
    Ok(report)
}

impl Fs {
    /// Fetches every file at or below `rel` (a path relative to the mount, under `inputs/` or
    /// `volumes/`) whole into the cache, counting into `progress`.
    pub async fn warm(&self, rel: &str, progress: &Progress) -> FsResult<WarmReport> {
        let mut segs = rel.trim_matches('/').split('/').filter(|s| !s.is_empty());
        let parts = match segs.next() {
            Some("inputs") => &self.inputs,
            Some("volumes") => &self.volume_bases,
            _ => return Err(FsError::Invalid(format!("'{rel}': only inputs/ and volumes/ can be warmed"))),
        };
        let name = segs.next();
        if name.is_some_and(|n| parts.iter().all(|i| i.summary().name != n)) {
            return Err(FsError::NotFound);
        }
        let mut report = WarmReport::default();
        for input in parts.iter().filter(|i| name.is_none_or(|n| n == i.summary().name)) {
            let rest: Vec<&str> = segs.clone().collect();
            let r = warm_input(input, input.resolve_path(&rest).await?, progress).await?;
            report.files += r.files;
            report.bytes += r.bytes;
            report.already_cached += r.already_cached;
            report.failed.extend(r.failed);
        }
        Ok(report)
    }
}

/// What to warm by URI, without a mount (`datumfs warm URI`).
pub struct WarmUri<'a> {
    /// The URI, as an `--input` takes it.
    pub uri: &'a str,
    /// The directory relative local paths are taken from.
    pub cwd: &'a std::path::Path,
    /// The cache to fill.
    pub cache: Arc<crate::cache::Cache>,
    /// The reader (the daemon's, when one runs: one budget for GETs).
    pub reader: Arc<crate::reader::Reader>,
    /// Opens stores.
    pub registry: &'a crate::store::StoreRegistry,
    /// The catalog, for `datum://` and `dataset://` URIs.
    pub catalog: Option<&'a crate::catalog::Catalog>,
}

/// Fetches every object `uri` names whole into the cache, as a mount of it would read them,
/// so that a later mount of the same URI reads nothing from the store.
pub async fn warm_uri(w: WarmUri<'_>, progress: &Progress) -> Result<WarmReport, String> {
    let spec = crate::inputs::spec::InputSpec {
        name: "warm".into(),
        uris: vec![w.uri.to_string()],
        // The cache is keyed by object, not by path: the layout only has to be clash-free.
        keep_directories: crate::inputs::spec::KeepDirectories::Full,
        filename: None,
        optional: false,
    };
    let resolved = crate::inputs::resolve::resolve(&spec, w.registry, w.catalog, w.cwd, Some(w.cache.dir()))
        .await
        .map_err(|e| e.to_string())?;
    let services = InputServices::new(w.cache, w.reader, Arc::new(LogOnly), "/".into());
    let input = InputNamespace::new(1, INPUTS, resolved, services);
    warm_input(&input, input.top(), progress).await.map_err(|e| format!("warm {}: {e}", w.uri))
}
