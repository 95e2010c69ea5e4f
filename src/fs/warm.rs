//! `datumfs warm`: fetch whole inputs into the cache ahead of a job, many files at once.

use super::tree::{NodeKind, ROOT};
use super::{Fs, FsError, FsResult};
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

impl Fs {
    /// Every input file at or below `rel` (a path relative to the mount, under `inputs/`),
    /// listing directories as needed.
    async fn files_under(&self, rel: &str) -> FsResult<Vec<Arc<super::tree::Node>>> {
        let rel = rel.trim_matches('/');
        if rel != "inputs" && !rel.starts_with("inputs/") {
            return Err(FsError::Io(format!("'{rel}': only inputs/ can be warmed")));
        }
        let mut node = self.node(ROOT)?;
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            let ino = *self.children(&node).await?.get(seg).ok_or(FsError::NotFound)?;
            node = self.node(ino)?;
        }
        let mut files = Vec::new();
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            match &n.kind {
                NodeKind::File(_) => files.push(n),
                NodeKind::Dir { .. } => {
                    for &ino in self.children(&n).await?.values() {
                        stack.push(self.node(ino)?);
                    }
                }
                NodeKind::InputsJson => {}
            }
        }
        Ok(files)
    }

    /// Fetches every file at or below `rel` whole into the cache, counting into `progress`.
    pub async fn warm(&self, rel: &str, progress: &Progress) -> FsResult<WarmReport> {
        let files = self.files_under(rel).await?;
        let sizes: u64 = files.iter().map(|n| if let NodeKind::File(f) = &n.kind { f.entry.size } else { 0 }).sum();
        progress.files_total.store(files.len() as u64, Ordering::Relaxed);
        progress.bytes_total.store(sizes, Ordering::Relaxed);
        let results: Vec<(String, u64, Result<bool, String>)> = futures::stream::iter(files)
            .map(|node| async move {
                let NodeKind::File(f) = &node.kind else { return (node.path.clone(), 0, Ok(true)) };
                let res = async {
                    let obj = self.open_object(&node, f).await.map_err(|e| e.to_string())?;
                    let was = obj.cached.is_complete();
                    self.reader.fetch_all(&obj).await.map_err(|e| e.to_string())?;
                    self.after_read(&node, f, &obj);
                    Ok(was)
                }
                .await;
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(f.entry.size, Ordering::Relaxed);
                (node.path.clone(), f.entry.size, res)
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
                    report.failed.push((path, e));
                }
            }
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
    let resolved =
        crate::inputs::resolve::resolve(&spec, w.registry, w.catalog, w.cwd).await.map_err(|e| e.to_string())?;
    let settings = super::FsSettings {
        mountpoint: "/".into(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        control_socket: Default::default(),
    };
    let fs = Fs::new(vec![resolved], w.cache, w.reader, None, settings, None);
    fs.warm("inputs/warm", progress).await.map_err(|e| format!("warm {}: {e}", w.uri))
}
