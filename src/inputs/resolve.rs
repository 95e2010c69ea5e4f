//! Resolution of an input's URIs into a snapshot: the files it holds, their sizes and pinned
//! versions, and their paths under `inputs/NAME/` (keep-directories). A single `prefix/` URI is
//! listed lazily, one directory at a time, when first needed; everything else is listed at mount.

use super::spec::{InputSpec, KeepDirectories};
use super::table::{FileTable, NewFile};
use crate::catalog::Catalog;
use crate::keys::{self, UnsafeKey};
use crate::reader::{Pin, Window};
use crate::store::{StoreError, StoreHandle, StoreRegistry};
use crate::uri::{self, Scheme, Selection, SourceUri, UriError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use thiserror::Error;

/// Why an input could not be resolved.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The URI is not usable.
    #[error("input '{input}': {error}")]
    Uri {
        /// The input's name.
        input: String,
        /// What is wrong with the URI.
        error: UriError,
    },
    /// The store failed or refused.
    #[error("input '{input}': {error}")]
    Store {
        /// The input's name.
        input: String,
        /// The store's error (names the URI).
        error: StoreError,
    },
    /// A `datum://` URI could not be resolved in the catalog.
    #[error("input '{input}': {error}")]
    Catalog {
        /// The input's name.
        input: String,
        /// The catalog's error (names the datum).
        error: crate::catalog::CatalogError,
    },
    /// The input's files cannot be laid out (clashing names, nothing matched, ...).
    #[error("input '{input}': {reason}")]
    Layout {
        /// The input's name.
        input: String,
        /// What went wrong.
        reason: String,
    },
}

/// A file of an input, pinned.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// The store holding it.
    pub store: Arc<StoreHandle>,
    /// Its key.
    pub key: Path,
    /// Its URI.
    pub uri: String,
    /// Size at resolution.
    pub size: u64,
    /// Version at resolution; `None` when the listing had no ETag (pinned at first open).
    pub pin: Option<Pin>,
    /// Modification time in the store.
    pub mtime: std::time::SystemTime,
    /// The datum id, for files of `datum://` inputs.
    pub datum: Option<String>,
    /// The sha256 (hex) the bytes must have, known up front for datums and checked.
    pub expected_sha256: Option<String>,
    /// Whether it is part of a dataset version (lineage names the version, not each datum).
    pub in_dataset: bool,
    /// For a packed datum: where its bytes are in its pack (`key` names the pack).
    pub window: Option<Window>,
}

impl FileEntry {
    /// The name of its bytes in the cache (see [`crate::reader::cache_key`]).
    pub fn cache_key(&self) -> String {
        crate::reader::cache_key(&self.key, self.window)
    }
}

/// One directory's listing below a prefix.
#[derive(Debug, Default)]
pub struct DirListing {
    /// Files directly in the directory, by name.
    pub files: BTreeMap<String, FileEntry>,
    /// Subdirectories, by name, with their listing prefix.
    pub dirs: BTreeMap<String, Path>,
}

/// The root of a resolved input.
#[derive(Debug)]
pub enum InputRoot {
    /// A fixed set of files laid out below the input's top (object and wildcard URIs, several
    /// URIs, datums, dataset versions).
    Files(Box<FileTable>),
    /// A prefix listed lazily: `leading` static directories (keep-directories full), then the
    /// listing of `prefix`, whose first level was fetched at mount.
    Lazy {
        /// The store.
        store: Arc<StoreHandle>,
        /// The URI of the prefix.
        uri: String,
        /// Static directories before the listed tree.
        leading: Vec<String>,
        /// The root listing, fetched at mount to check the URI.
        root: DirListing,
    },
}

/// A resolved input.
#[derive(Debug)]
pub struct ResolvedInput {
    /// Its name.
    pub name: String,
    /// Its URIs as given.
    pub uris: Vec<String>,
    /// Its files.
    pub root: InputRoot,
    /// The dataset versions it reads (`dataset://NAME/VERSION`, aliases resolved).
    pub datasets: Vec<String>,
    /// Where the names of a very large input may spill (the cache directory).
    pub spill_dir: Option<std::path::PathBuf>,
}

fn key_path(u: &SourceUri, key: &str) -> Result<Option<Path>, UriError> {
    let trimmed = key.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    Path::parse(trimmed)
        .map(Some)
        .map_err(|e| UriError::Malformed { uri: u.original.clone(), reason: format!("not a valid object key: {e}") })
}

fn entry(store: &Arc<StoreHandle>, meta: &ObjectMeta) -> FileEntry {
    FileEntry {
        store: store.clone(),
        key: meta.location.clone(),
        uri: store.uri_of(meta.location.as_ref()),
        size: meta.size,
        pin: meta.e_tag.as_ref().map(|_| Pin::from_meta(meta)),
        mtime: meta.last_modified.into(),
        datum: None,
        expected_sha256: None,
        in_dataset: false,
        window: None,
    }
}

fn warn_skipped(uri: &str, why: &UnsafeKey) {
    tracing::warn!("skipping {uri}: {why}");
}

/// Lists one directory (one `/`-delimited level) below `prefix`.
pub async fn list_dir(store: &Arc<StoreHandle>, prefix: Option<&Path>) -> Result<DirListing, StoreError> {
    let uri = store.uri_of(prefix.map(|p| p.as_ref()).unwrap_or(""));
    let res = store
        .inner
        .list_with_delimiter(prefix)
        .await
        .map_err(|e| StoreError::from_object_store(&uri, store.bucket.as_deref(), e))?;
    let base_len = prefix.map(|p| p.as_ref().len() + 1).unwrap_or(0);
    let mut out = DirListing::default();
    for p in res.common_prefixes {
        let name = p.as_ref().get(base_len..).unwrap_or_default().to_string();
        match keys::check_segment(&name) {
            Ok(()) => {
                out.dirs.insert(name, p);
            }
            Err(why) => warn_skipped(&store.uri_of(p.as_ref()), &why),
        }
    }
    for meta in res.objects {
        let name = meta.location.as_ref().get(base_len..).unwrap_or_default().to_string();
        if name.is_empty() {
            continue; // the prefix's own directory marker
        }
        if let Err(why) = keys::check_segment(&name) {
            warn_skipped(&store.uri_of(meta.location.as_ref()), &why);
            continue;
        }
        if out.dirs.contains_key(&name) {
            if meta.size > 0 {
                tracing::warn!(
                    "skipping {}: a directory of the same name exists",
                    store.uri_of(meta.location.as_ref())
                );
            }
            continue;
        }
        out.files.insert(name, entry(store, &meta));
    }
    Ok(out)
}

/// Resolves an input: checks every URI against its store and fixes what can be fixed now.
pub async fn resolve(
    spec: &InputSpec,
    registry: &StoreRegistry,
    catalog: Option<&Catalog>,
    cwd: &std::path::Path,
    spill_dir: Option<&std::path::Path>,
) -> Result<ResolvedInput, ResolveError> {
    let spill_dir = spill_dir.map(std::path::Path::to_path_buf);
    let input = spec.name.clone();
    let uri_err = |error| ResolveError::Uri { input: input.clone(), error };
    let store_err = |error| ResolveError::Store { input: input.clone(), error };
    let layout_err = |reason: String| ResolveError::Layout { input: input.clone(), reason };
    let parsed: Vec<SourceUri> =
        spec.uris.iter().map(|u| uri::parse(u, cwd)).collect::<Result<_, _>>().map_err(uri_err)?;

    // One prefix URI: lazy tree.
    if let [u] = parsed.as_slice() {
        if u.selection == Selection::Prefix {
            let store = registry.open(u).map_err(store_err)?;
            let prefix = key_path(u, &u.key).map_err(uri_err)?;
            let root = list_dir(&store, prefix.as_ref()).await.map_err(|e| store_err(e.for_uri(&u.original)))?;
            if root.files.is_empty() && root.dirs.is_empty() && !spec.optional {
                check_bucket(&store, u).await.map_err(store_err)?;
                return Err(layout_err(format!("{} matches no objects", u.original)));
            }
            let leading = if spec.keep_directories == KeepDirectories::Full {
                u.key.trim_end_matches('/').split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
            } else {
                vec![]
            };
            return Ok(ResolvedInput {
                name: spec.name.clone(),
                uris: spec.uris.clone(),
                root: InputRoot::Lazy { store, uri: u.original.clone(), leading, root },
                datasets: Vec::new(),
                spill_dir,
            });
        }
    }

    let mut files = FileTable::new(&spec.name, spill_dir.clone());
    let mut datasets = Vec::new();
    for u in &parsed {
        if u.scheme == Scheme::Dataset || u.scheme == Scheme::Model {
            let catalog =
                catalog.ok_or_else(|| layout_err(format!("{}: dataset inputs need a data store", u.original)))?;
            let before = files.file_count();
            let version = if u.scheme == Scheme::Model {
                // The version `latest` or `approved` names now, pinned for the mount.
                let (name, which) = u.key.split_once('/').unwrap_or((&u.key, "latest"));
                let input = spec.name.clone();
                let version = catalog
                    .resolve_model(name, which)
                    .await
                    .map_err(|error| ResolveError::Catalog { input: input.clone(), error })?;
                if version != which {
                    tracing::info!(
                        "input {input}: {} is model://{name}/{version} now (pinned for this mount)",
                        u.original
                    );
                }
                let pinned = SourceUri { key: format!("{name}/{version}"), ..u.clone() };
                resolve_dataset(&pinned, spec, &catalog.models(), registry, cwd, &mut files).await?;
                crate::catalog::models::uri(name, &version)
            } else {
                resolve_dataset(u, spec, catalog, registry, cwd, &mut files).await?
            };
            if files.file_count() == before && !spec.optional {
                return Err(layout_err(format!("{} ({version}) has no files", u.original)));
            }
            datasets.push(version);
            continue;
        }
        if u.scheme == Scheme::Datum {
            let catalog =
                catalog.ok_or_else(|| layout_err(format!("{}: datum inputs need a data store", u.original)))?;
            let (rel, e) = resolve_datum(u, spec, catalog, registry, cwd).await?;
            push_checked(&mut files, rel, e);
            continue;
        }
        let store = registry.open(u).map_err(store_err)?;
        let before = files.file_count();
        match &u.selection {
            Selection::Object => {
                let key = key_path(u, &u.key)
                    .map_err(uri_err)?
                    .ok_or_else(|| layout_err(format!("{}: no key", u.original)))?;
                let meta = match store.inner.head(&key).await {
                    Ok(m) => m,
                    Err(e) => {
                        let err = StoreError::from_object_store(&u.original, u.bucket.as_deref(), e);
                        if matches!(err, StoreError::NotFound { .. }) {
                            check_bucket(&store, u).await.map_err(store_err)?;
                        }
                        return Err(store_err(err));
                    }
                };
                let mut e = entry(&store, &meta);
                e.pin = Some(Pin::from_meta(&meta));
                let base = meta.location.filename().unwrap_or_default().to_string();
                let rel = match spec.keep_directories {
                    KeepDirectories::Full => u.key.split('/').map(str::to_string).collect(),
                    _ => vec![spec.filename.clone().unwrap_or(base)],
                };
                push_checked(&mut files, rel, e);
            }
            Selection::Prefix | Selection::Wildcard { .. } => {
                let (list_prefix, matcher) = match &u.selection {
                    Selection::Wildcard { fixed_prefix } => (
                        fixed_prefix.clone(),
                        Some(glob_for(&u.key).map_err(|reason| layout_err(format!("{}: {reason}", u.original)))?),
                    ),
                    _ => (u.key.clone(), None),
                };
                let lp = key_path(u, &list_prefix).map_err(uri_err)?;
                let metas: Vec<ObjectMeta> = store
                    .inner
                    .list(lp.as_ref())
                    .try_collect()
                    .await
                    .map_err(|e| store_err(StoreError::from_object_store(&u.original, u.bucket.as_deref(), e)))?;
                for meta in metas {
                    let key = meta.location.as_ref();
                    if let Some(m) = &matcher {
                        if !m.is_match(key) {
                            continue;
                        }
                    }
                    let rel_key = key.get(list_prefix.len()..).unwrap_or_default();
                    let rel_src = match (&u.selection, spec.keep_directories) {
                        (_, KeepDirectories::Full) => key,
                        (Selection::Wildcard { .. }, KeepDirectories::None) => key.rsplit('/').next().unwrap_or(key),
                        _ => rel_key,
                    };
                    match keys::relative_segments(rel_src) {
                        Ok(segs) => push_checked(&mut files, segs, entry(&store, &meta)),
                        Err(why) => warn_skipped(&store.uri_of(key), &why),
                    }
                }
            }
        }
        if files.file_count() == before && !spec.optional {
            check_bucket(&store, u).await.map_err(store_err)?;
            return Err(layout_err(format!("{} matches no objects", u.original)));
        }
    }
    if let Some(name) = &spec.filename {
        if files.file_count() != 1 {
            return Err(layout_err(format!(
                "'filename: {name}' needs exactly one file, but the input has {}",
                files.file_count()
            )));
        }
        keys::check_segment(name).map_err(|why| layout_err(format!("filename '{name}': {why}")))?;
        files = files.renamed_single(name);
    }
    let hint =
        if spec.keep_directories == KeepDirectories::None { "; use keep-directories: suffix or full" } else { "" };
    files.finish(hint).map_err(|e| layout_err(e.0))?;
    Ok(ResolvedInput {
        name: spec.name.clone(),
        uris: spec.uris.clone(),
        root: InputRoot::Files(Box::new(files)),
        datasets,
        spill_dir,
    })
}

/// A `dataset://NAME/VERSION|ALIAS` input: the version's manifest, read once (an alias is
/// followed now and never again), laid out by each file's path in the version, with the
/// checksums of its datum records. Files purged since are left out with a warning naming the
/// purge. Returns `dataset://NAME/VERSION`.
async fn resolve_dataset(
    u: &SourceUri,
    spec: &InputSpec,
    catalog: &Catalog,
    registry: &StoreRegistry,
    cwd: &std::path::Path,
    files: &mut FileTable,
) -> Result<String, ResolveError> {
    let input = spec.name.clone();
    let catalog_err = |error| ResolveError::Catalog { input: input.clone(), error };
    let layout_err = |reason: String| ResolveError::Layout { input: input.clone(), reason };
    let (stored, alias) = catalog.resolve_stored_version(&u.key).await.map_err(catalog_err)?;
    let version_uri = stored.record.uri();
    let purged = catalog.tombstones().await.map_err(catalog_err)?;
    if alias.is_some() {
        tracing::info!("input {input}: {} is {version_uri} now (pinned for this mount)", u.original);
    }
    let created: std::time::SystemTime = chrono::DateTime::parse_from_rfc3339(&stored.record.created_at)
        .map(|t| t.with_timezone(&chrono::Utc).into())
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut stores = ObjectLocator::default();
    let mut key = String::new();
    // A chunk at a time, each file borrowed from its chunk as it is walked: the version's file
    // list is never in memory, and nothing is allocated per file but its place in the table.
    files.reserve(usize::try_from(stored.count).unwrap_or(0));
    let mut parts = std::pin::pin!(catalog.version_parts(stored));
    while let Some(part) = parts.try_next().await.map_err(catalog_err)? {
        part.for_each(catalog_err, |f| {
            if let Some(t) = purged.get(f.datum) {
                tracing::warn!("input {input}: {} left out of {version_uri}: {}", f.path, t.describe());
                return Ok(());
            }
            let Ok(segs) = keys::relative_segments(f.path) else {
                tracing::warn!("input {input}: skipping '{}' of {version_uri}: not a usable path", f.path);
                return Ok(());
            };
            let store = match stores.locate(f.store, f.key, &mut key, cwd, registry) {
                Ok(store) => store,
                Err(Located::Uri(e)) => {
                    return Err(layout_err(format!("{version_uri}: {} points at an unusable URI: {e}", f.path)))
                }
                Err(Located::Store(error)) => return Err(ResolveError::Store { input: input.clone(), error }),
                Err(Located::NoKey) => return Err(layout_err(format!("{version_uri}: {} has no key", f.path))),
            };
            files.push(
                &segs,
                NewFile {
                    store: &store,
                    key: &key,
                    uri: None,
                    size: f.size,
                    // Datum bytes are never overwritten: pinned at first open, checked by sha256.
                    pin: None,
                    mtime: created,
                    datum: Some(f.datum),
                    sha256: Some(*f.sha256),
                    in_dataset: true,
                    window: f.packed.map(|(offset, object_size)| Window { offset, object_size }),
                },
            );
            Ok(())
        })?;
    }
    Ok(version_uri)
}

/// Why an object URI of a manifest cannot be located.
enum Located {
    Uri(UriError),
    Store(StoreError),
    NoKey,
}

/// Turns the object URIs of a manifest into stores and keys, parsing each store's URI once:
/// manifests name few stores (usually one) and millions of keys below them, and parsing a
/// `file://` URI asks the file system.
#[derive(Default)]
struct ObjectLocator {
    /// By the URI up to the key (`s3://bucket/`): the store, and what comes before the key's
    /// part of the URI in the key (`None`: the key is not a plain suffix of the URI; every
    /// URI of that store is parsed whole).
    known: HashMap<String, (Arc<StoreHandle>, Option<String>)>,
}

impl ObjectLocator {
    /// The store of the object at `base` + `tail` (an object URI split after its store's part,
    /// `s3://bucket/` + `a/b.bin`), with its key written into `key`.
    fn locate(
        &mut self,
        base: &str,
        tail: &str,
        key: &mut String,
        cwd: &std::path::Path,
        registry: &StoreRegistry,
    ) -> Result<Arc<StoreHandle>, Located> {
        if let Some((store, Some(key_base))) = self.known.get(base) {
            key.clear();
            key.push_str(key_base);
            key.push_str(tail);
            if let Some(range) = object_key(key) {
                key.truncate(range.end);
                key.drain(..range.start);
                return Ok(store.clone());
            }
        }
        let object_uri = format!("{base}{tail}");
        let src = uri::parse(&object_uri, cwd).map_err(Located::Uri)?;
        let path = key_path(&src, &src.key).map_err(Located::Uri)?.ok_or(Located::NoKey)?;
        key.clear();
        key.push_str(path.as_ref());
        match self.known.get(base) {
            Some((store, _)) => Ok(store.clone()),
            None => {
                let store = registry.open(&src).map_err(Located::Store)?;
                let key_base = src.key.strip_suffix(tail).filter(|_| !tail.is_empty()).map(str::to_string);
                self.known.insert(base.to_string(), (store.clone(), key_base));
                Ok(store)
            }
        }
    }
}

/// Where in `key` the object key it names is (what `Path::parse` keeps of it, with trailing
/// `/`s dropped as a key path drops them), if it is one; `None` for an empty key or one that
/// is not a valid object key.
fn object_key(key: &str) -> Option<std::ops::Range<usize>> {
    let trimmed = key.trim_end_matches('/');
    let start = usize::from(trimmed.starts_with('/'));
    let kept = &trimmed[start..];
    let valid = !kept.is_empty()
        && kept.split('/').all(|seg| !seg.is_empty() && object_store::path::PathPart::parse(seg).is_ok());
    valid.then_some(start..trimmed.len())
}

/// A `datum://ID|ALIAS` input file: looked up once in the catalog and pinned to the stored
/// object's current version, with the sha256 its bytes must have.
async fn resolve_datum(
    u: &SourceUri,
    spec: &InputSpec,
    catalog: &Catalog,
    registry: &StoreRegistry,
    cwd: &std::path::Path,
) -> Result<(Vec<String>, FileEntry), ResolveError> {
    let input = spec.name.clone();
    let catalog_err = |error| ResolveError::Catalog { input: input.clone(), error };
    let rec = catalog.resolve(&u.key).await.map_err(catalog_err)?;
    if let Some(t) = catalog.tombstone(&rec.id).await.map_err(catalog_err)? {
        return Err(catalog_err(crate::catalog::CatalogError::Purged(Box::new(t))));
    }
    let layout_err = |reason: String| ResolveError::Layout { input: input.clone(), reason };
    let src = uri::parse(&rec.object_uri, cwd)
        .map_err(|e| layout_err(format!("{}: its record points at an unusable URI: {e}", u.original)))?;
    let store = registry.open(&src).map_err(|error| ResolveError::Store { input: input.clone(), error })?;
    let key = key_path(&src, &src.key)
        .map_err(|error| ResolveError::Uri { input: input.clone(), error })?
        .ok_or_else(|| layout_err(format!("{}: its record has no key", u.original)))?;
    let meta = store.inner.head(&key).await.map_err(|e| ResolveError::Store {
        input: input.clone(),
        error: StoreError::from_object_store(&format!("{} ({})", u.original, rec.object_uri), src.bucket.as_deref(), e),
    })?;
    let stored_size = rec.packed.as_ref().map_or(rec.size, |p| p.pack_size);
    if meta.size != stored_size {
        return Err(layout_err(format!(
            "{}: the stored object {} has {} bytes but the datum's record says {stored_size}: it was changed or damaged",
            u.original, rec.object_uri, meta.size
        )));
    }
    let mut e = entry(&store, &meta);
    e.pin = Some(Pin::from_meta(&meta));
    if let Some(p) = &rec.packed {
        // Pinned by its own sha256 at first open, as a dataset's packed files are.
        e.size = rec.size;
        e.pin = None;
        e.window = Some(Window { offset: p.offset, object_size: p.pack_size });
    }
    e.uri = rec.uri.clone();
    e.datum = Some(rec.id.clone());
    e.expected_sha256 = Some(rec.checksums.sha256.clone());
    let rel = match spec.keep_directories {
        KeepDirectories::Full => rec.path.split('/').map(str::to_string).collect(),
        _ => vec![spec.filename.clone().unwrap_or_else(|| rec.path.rsplit('/').next().unwrap_or(&rec.id).to_string())],
    };
    Ok((rel, e))
}

fn push_checked<S: AsRef<str>>(files: &mut FileTable, rel: Vec<S>, e: FileEntry) {
    if rel.iter().all(|s| keys::check_segment(s.as_ref()).is_ok()) {
        files.push(&rel, e.as_new());
    } else {
        tracing::warn!("skipping {}: its path is not usable as a file name", e.uri);
    }
}

/// A glob over whole keys: `*` and `?` stay within one segment, `**` crosses segments; every
/// other glob character in the key is literal.
fn glob_for(key: &str) -> Result<globset::GlobMatcher, String> {
    let mut pattern = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        if matches!(c, '[' | ']' | '{' | '}' | '\\' | '!') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    globset::GlobBuilder::new(&pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad wildcard: {e}"))
}

/// Tells a missing bucket from a missing key (a HEAD of a key in a missing bucket is a bare 404).
async fn check_bucket(store: &Arc<StoreHandle>, u: &SourceUri) -> Result<(), StoreError> {
    if u.bucket.is_none() {
        return Ok(());
    }
    match store.inner.list_with_delimiter(None).await {
        Ok(_) => Ok(()),
        Err(e) => match StoreError::from_object_store(&u.original, u.bucket.as_deref(), e) {
            err @ (StoreError::NoSuchBucket { .. }
            | StoreError::AccessDenied { .. }
            | StoreError::ClockSkewed { .. }
            | StoreError::Unreachable { .. }) => Err(err),
            StoreError::NotFound { .. } => {
                Err(StoreError::NoSuchBucket { uri: u.original.clone(), bucket: u.bucket.clone().unwrap_or_default() })
            }
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_are_kept_as_a_key_path_keeps_them() {
        let kept = |k: &str| object_key(k).map(|r| k[r].to_string());
        assert_eq!(kept("a/b.bin").as_deref(), Some("a/b.bin"));
        assert_eq!(kept("/a/b/").as_deref(), Some("a/b"));
        assert_eq!(kept("dir/ünï côde.txt").as_deref(), Some("dir/ünï côde.txt"));
        for bad in ["", "/", "//", "a//b", "a/../b", "./a", "a/\u{1}b"] {
            assert_eq!(kept(bad), None, "{bad:?}");
        }
        for k in ["a/b.bin", "/a/b/", "x"] {
            let path = Path::parse(k.trim_end_matches('/')).unwrap();
            assert_eq!(kept(k).as_deref(), Some(path.as_ref()));
        }
    }
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    async fn store(keys: &[&str]) -> (StoreRegistry, Arc<StoreHandle>) {
        let mem = Arc::new(InMemory::new());
        for k in keys {
            mem.put(&Path::parse(k).unwrap(), PutPayload::from(k.as_bytes().to_vec())).await.unwrap();
        }
        let h = Arc::new(StoreHandle::new("mem://b", mem));
        (StoreRegistry::new(), h)
    }

    fn spec(uris: &[&str], keep: KeepDirectories) -> InputSpec {
        InputSpec {
            name: "x".into(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            keep_directories: keep,
            filename: None,
            optional: false,
        }
    }

    #[test]
    fn globs_stay_in_segments() {
        let g = glob_for("images/*.jpg").unwrap();
        assert!(g.is_match("images/a.jpg") && !g.is_match("images/sub/a.jpg"));
        let g = glob_for("images/**/*.jpg").unwrap();
        assert!(g.is_match("images/sub/deep/a.jpg"));
        let g = glob_for("odd[1]/?.txt").unwrap();
        assert!(g.is_match("odd[1]/a.txt") && !g.is_match("odd1/a.txt"));
    }

    #[tokio::test]
    async fn lazy_listing_of_one_level() {
        let (_, h) = store(&["t/a.bin", "t/d/b.bin", "t/d/e/c.bin", "u/x"]).await;
        let l = list_dir(&h, Some(&Path::from("t"))).await.unwrap();
        assert_eq!(l.files.keys().collect::<Vec<_>>(), vec!["a.bin"]);
        assert_eq!(l.dirs.keys().collect::<Vec<_>>(), vec!["d"]);
        assert_eq!(l.files["a.bin"].size, 7);
        assert!(l.files["a.bin"].pin.is_some(), "in-memory listings carry ETags");
    }

    async fn resolved(keys: &[&str], uris: &[&str], keep: KeepDirectories) -> Result<Vec<String>, ResolveError> {
        let (reg, h) = store(keys).await;
        reg.register("s3://b", h);
        let r = resolve(&spec(uris, keep), &reg, None, std::path::Path::new("/"), None).await?;
        match r.root {
            InputRoot::Files(f) => {
                let mut v: Vec<String> = (0..f.file_count() as u32).map(|i| f.file_path(i)).collect();
                v.sort();
                Ok(v)
            }
            InputRoot::Lazy { root, .. } => Ok(root.files.keys().chain(root.dirs.keys()).cloned().collect()),
        }
    }

    #[tokio::test]
    async fn keep_directories_for_wildcards() {
        let keys = ["img/a/1.jpg", "img/b/2.jpg", "img/b/3.png", "img/4.jpg"];
        let none = resolved(&keys, &["s3://b/img/**/*.jpg"], KeepDirectories::None).await.unwrap();
        assert_eq!(none, vec!["1.jpg", "2.jpg", "4.jpg"], "** also matches no directory at all");
        let suffix = resolved(&keys, &["s3://b/img/**/*.jpg"], KeepDirectories::Suffix).await.unwrap();
        assert_eq!(suffix, vec!["4.jpg", "a/1.jpg", "b/2.jpg"]);
        let full = resolved(&keys, &["s3://b/img/*.jpg"], KeepDirectories::Full).await.unwrap();
        assert_eq!(full, vec!["img/4.jpg"]);
        let clash = resolved(&["x/a/1.jpg", "x/b/1.jpg"], &["s3://b/x/**"], KeepDirectories::None).await.unwrap_err();
        assert!(clash.to_string().contains("both map to '1.jpg'"), "{clash}");
        let nothing = resolved(&keys, &["s3://b/img/*.gif"], KeepDirectories::None).await.unwrap_err();
        assert!(nothing.to_string().contains("matches no objects"), "{nothing}");
    }

    #[tokio::test]
    async fn single_objects_and_prefixes() {
        let keys = ["d/x.csv", "d/sub/y.csv"];
        assert_eq!(resolved(&keys, &["s3://b/d/x.csv"], KeepDirectories::None).await.unwrap(), vec!["x.csv"]);
        assert_eq!(resolved(&keys, &["s3://b/d/x.csv"], KeepDirectories::Full).await.unwrap(), vec!["d/x.csv"]);
        assert_eq!(resolved(&keys, &["s3://b/d/"], KeepDirectories::None).await.unwrap(), vec!["x.csv", "sub"]);
        let two = resolved(&keys, &["s3://b/d/", "s3://b/d/x.csv"], KeepDirectories::None).await.unwrap_err();
        assert!(two.to_string().contains("both map to 'x.csv'"), "{two}");
        let missing = resolved(&keys, &["s3://b/d/nope.csv"], KeepDirectories::None).await.unwrap_err();
        assert!(missing.to_string().contains("s3://b/d/nope.csv"), "{missing}");
    }

    /// Local listings carry file names as they are on disk (object_store 0.14 encodes nothing
    /// there): shown as they are, `%` and multi-byte characters included, and read back whole.
    #[tokio::test]
    async fn a_local_directory_with_odd_names_resolves() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["50%€.csv", "100%.txt", "%41.bin", "€%"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("d%€")).unwrap();
        std::fs::write(dir.path().join("d%€/x%€y"), b"x").unwrap();
        let reg = StoreRegistry::new();
        let uri = format!("{}/", dir.path().display());
        let r =
            resolve(&spec(&[&uri], KeepDirectories::None), &reg, None, std::path::Path::new("/"), None).await.unwrap();
        let InputRoot::Lazy { root, store, .. } = r.root else { panic!("a directory is listed lazily") };
        let mut names: Vec<&str> = root.files.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, vec!["%41.bin", "100%.txt", "50%€.csv", "€%"]);
        assert_eq!(root.dirs.keys().collect::<Vec<_>>(), vec!["d%€"]);
        for (name, entry) in &root.files {
            let bytes = store.inner.get(&entry.key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&bytes[..], name.as_bytes(), "{name} reads back its own bytes");
        }
        let sub = list_dir(&store, Some(&root.dirs["d%€"])).await.unwrap();
        assert_eq!(sub.files.keys().collect::<Vec<_>>(), vec!["x%€y"]);
    }
}
