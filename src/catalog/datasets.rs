//! Datasets: named, versioned collections of datums. A version is a create-only record naming
//! the chunks of its manifest (path, datum, size, checksums, object URI of every file; see
//! `manifest` and `version_store`), so a mount resolves it without listing the store, and a
//! version made from another writes only the chunks that differ. Aliases move between
//! versions by compare-and-swap and keep their history. Purges leave tombstones that every
//! reference reports.

use super::version_store::StoredVersion;
use super::{check_name, hostname, now, Catalog, CatalogError};
use crate::checksum::FileDigests;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A dataset: a name under which versions are made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetRecord {
    /// The name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The host that created it.
    pub host: String,
    /// The execution that created it (datasets made by a job's sync).
    #[serde(default)]
    pub execution: Option<String>,
}

/// One file of a dataset version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionFile {
    /// Its path in the version (and under `inputs/NAME/` when mounted).
    pub path: String,
    /// The datum id.
    pub datum: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, and md5 and sha1 when they were read.
    pub checksums: FileDigests,
    /// Where the bytes are (the pack, for a packed datum); shared by the files of one pack.
    pub object_uri: std::sync::Arc<str>,
    /// Where in its pack, for a packed datum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<super::PackedIn>,
}

/// An immutable dataset version and its manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    /// The dataset.
    pub dataset: String,
    /// The version's name.
    pub version: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The host that created it.
    pub host: String,
    /// The execution whose sync created it, if any.
    #[serde(default)]
    pub execution: Option<String>,
    /// The version it was made from (`NAME/VERSION`), if any.
    #[serde(default)]
    pub from: Option<String>,
    /// Its files, sorted by path (stored in chunks of their own; see `version_store`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<VersionFile>,
}

impl VersionRecord {
    /// The same version without its files (the part stored in the version's record).
    pub fn without_files(&self) -> Self {
        Self {
            dataset: self.dataset.clone(),
            version: self.version.clone(),
            created_at: self.created_at.clone(),
            host: self.host.clone(),
            execution: self.execution.clone(),
            from: self.from.clone(),
            files: Vec::new(),
        }
    }

    /// `dataset://NAME/VERSION`.
    pub fn uri(&self) -> String {
        format!("dataset://{}/{}", self.dataset, self.version)
    }
}

/// One position a dataset alias has had.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionAliasMove {
    /// The version it pointed at.
    pub version: String,
    /// When (RFC 3339).
    pub set_at: String,
    /// The host that moved it.
    pub host: String,
}

/// A dataset alias (`production`, `latest`, ...): where it points now and where it pointed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionAliasRecord {
    /// The dataset.
    pub dataset: String,
    /// The alias.
    pub alias: String,
    /// The version it points at now.
    pub version: String,
    /// Every move, oldest first.
    pub history: Vec<VersionAliasMove>,
}

/// That a datum's bytes were deleted on purpose: who, when, why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tombstone {
    /// The datum id.
    pub datum: String,
    /// When (RFC 3339).
    pub purged_at: String,
    /// Who (the user name of the purging process).
    pub user: String,
    /// On which host.
    pub host: String,
    /// Why, as given.
    pub reason: Option<String>,
    /// Where the bytes were.
    pub object_uri: String,
}

impl Tombstone {
    /// "purged at T by U (reason)".
    pub fn describe(&self) -> String {
        let why = self.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        format!("datum://{} was purged at {} by {}@{}{why}", self.datum, self.purged_at, self.user, self.host)
    }
}

/// A dataset name and version (or alias) as written in `NAME/VERSION`.
pub fn split_ref(text: &str) -> Result<(String, String), CatalogError> {
    let bare = text.strip_prefix("dataset://").unwrap_or(text).trim_end_matches('/');
    match bare.split_once('/') {
        Some((name, version)) if !version.contains('/') => {
            check_name(name, "a dataset name")?;
            check_name(version, "a version or alias")?;
            Ok((name.to_string(), version.to_string()))
        }
        _ => Err(CatalogError::BadName {
            name: text.to_string(),
            reason: "expected NAME/VERSION (or dataset://NAME/VERSION)".into(),
        }),
    }
}

/// `files` sorted by path, the last entry of each path kept.
fn latest_per_path(mut files: Vec<VersionFile>) -> Vec<VersionFile> {
    files.reverse();
    // Stable: of one path's entries, the last given comes first and is the one kept.
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|later, kept| later.path == kept.path);
    files
}

impl Catalog {
    fn dataset_rel(&self, name: &str) -> String {
        format!("{}/{name}/dataset.json", self.collection.dir())
    }

    pub(super) fn version_rel(&self, name: &str, version: &str) -> String {
        format!("{}/{name}/versions/{version}.json", self.collection.dir())
    }

    fn version_alias_rel(&self, name: &str, alias: &str) -> String {
        format!("{}/{name}/aliases/{alias}.json", self.collection.dir())
    }
}

fn tombstone_rel(id: &str) -> String {
    format!("purged/{id}.json")
}

/// The user running this process, for tombstones.
pub(super) fn user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name))
        .unwrap_or_else(|| format!("uid {}", nix::unistd::geteuid()))
}

impl Catalog {
    /// Creates dataset `name`; fails if it exists (unless `exist_ok`).
    pub async fn create_dataset(
        &self,
        name: &str,
        execution: Option<&str>,
        exist_ok: bool,
    ) -> Result<DatasetRecord, CatalogError> {
        check_name(name, "a dataset name")?;
        let rec = DatasetRecord {
            name: name.to_string(),
            created_at: now(),
            host: hostname(),
            execution: execution.map(str::to_string),
        };
        let key = self.ds.record_key(&self.dataset_rel(name));
        match self.put(&key, &rec, PutMode::Create).await {
            Ok(()) => Ok(rec),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                let old = self.dataset(name).await?;
                match old {
                    Some(old) if exist_ok => Ok(old),
                    _ => Err(CatalogError::Exists { what: format!("dataset {name}"), store: self.ds.url.clone() }),
                }
            }
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// Dataset `name`, if it exists.
    pub async fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, CatalogError> {
        check_name(name, "a dataset name")?;
        Ok(self.read(&self.ds.record_key(&self.dataset_rel(name))).await?.map(|(d, _)| d))
    }

    async fn require_dataset(&self, name: &str) -> Result<DatasetRecord, CatalogError> {
        self.dataset(name)
            .await?
            .ok_or_else(|| CatalogError::NoSuchDataset { name: name.to_string(), store: self.ds.url.clone() })
    }

    /// Every dataset's name, sorted.
    pub async fn datasets(&self) -> Result<Vec<String>, CatalogError> {
        self.child_names(&self.ds.record_key(self.collection.dir())).await
    }

    /// The names of a dataset's versions with their creation times (from the store's listing:
    /// no manifest is read), oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<(String, String)>, CatalogError> {
        self.require_dataset(name).await?;
        let prefix = self.ds.record_key(&format!("{}/{name}/versions", self.collection.dir()));
        let metas: Vec<_> =
            self.ds.handle.inner.list(Some(&prefix)).try_collect().await.map_err(|e| self.store_err(&prefix, e))?;
        let mut out: Vec<(String, String)> = metas
            .iter()
            .filter_map(|m| {
                let v = m.location.filename()?.strip_suffix(".json")?.to_string();
                Some((v, m.last_modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
            })
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// A dataset's aliases.
    pub async fn version_aliases(&self, name: &str) -> Result<Vec<VersionAliasRecord>, CatalogError> {
        let mut out: Vec<VersionAliasRecord> =
            self.read_all(&format!("{}/{name}/aliases", self.collection.dir())).await?;
        out.sort_by(|a, b| a.alias.cmp(&b.alias));
        Ok(out)
    }

    /// Version `version` of `name`, if it exists.
    pub async fn version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, CatalogError> {
        match self.stored_version(name, version).await? {
            Some(stored) => Ok(Some(self.load_version(stored).await?)),
            None => Ok(None),
        }
    }

    /// The alias `alias` of dataset `name`, if it exists.
    pub async fn version_alias(&self, name: &str, alias: &str) -> Result<Option<VersionAliasRecord>, CatalogError> {
        Ok(self.read(&self.ds.record_key(&self.version_alias_rel(name, alias))).await?.map(|(a, _)| a))
    }

    /// `NAME/VERSION` or `NAME/ALIAS` → the version record, and the alias when one was followed.
    /// Versions and aliases share one namespace per dataset, so the answer is never ambiguous.
    pub async fn resolve_version(&self, text: &str) -> Result<(VersionRecord, Option<String>), CatalogError> {
        let (stored, alias) = self.resolve_stored_version(text).await?;
        Ok((self.load_version(stored).await?, alias))
    }

    /// Like [`Catalog::resolve_version`], with the version's files left in the store: read
    /// them a chunk at a time with [`Catalog::version_files`].
    pub async fn resolve_stored_version(&self, text: &str) -> Result<(StoredVersion, Option<String>), CatalogError> {
        let (name, which) = split_ref(text)?;
        self.require_dataset(&name).await?;
        if let Some(v) = self.stored_version(&name, &which).await? {
            return Ok((v, None));
        }
        match self.version_alias(&name, &which).await? {
            Some(a) => match self.stored_version(&name, &a.version).await? {
                Some(v) => Ok((v, Some(which))),
                None => Err(CatalogError::NoSuchVersion {
                    name: format!("{} version {name}/{} (alias {which})", self.collection.scheme(), a.version),
                    store: self.ds.url.clone(),
                }),
            },
            None => Err(CatalogError::NoSuchVersion {
                name: format!("{} version {name}/{which}", self.collection.scheme()),
                store: self.ds.url.clone(),
            }),
        }
    }

    /// Stores a new version (create-only: a version never changes once made).
    pub async fn put_version(&self, rec: &VersionRecord) -> Result<(), CatalogError> {
        check_name(&rec.version, "a version")?;
        self.require_dataset(&rec.dataset).await?;
        if self.version_alias(&rec.dataset, &rec.version).await?.is_some() {
            return Err(CatalogError::BadName {
                name: rec.version.clone(),
                reason: format!("dataset {} has an alias of that name", rec.dataset),
            });
        }
        // A version made from another shares its unchanged chunks: only the others are written.
        let known = match rec.from.as_deref().map(split_ref).transpose()? {
            Some((name, version)) => {
                self.stored_version(&name, &version).await?.map(|b| b.chunk_ids()).unwrap_or_default()
            }
            None => Default::default(),
        };
        let stored = self.write_manifest(rec, &known).await?;
        let key = self.ds.record_key(&self.version_rel(&rec.dataset, &rec.version));
        match self.put(&key, &stored, PutMode::Create).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(self.version_exists(&rec.dataset, &rec.version).await)
            }
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    async fn version_exists(&self, name: &str, version: &str) -> CatalogError {
        let by = match self.version(name, version).await {
            Ok(Some(v)) => match v.execution {
                Some(e) => format!(" (made by execution {e} at {})", v.created_at),
                None => format!(" (made at {} on {})", v.created_at, v.host),
            },
            _ => String::new(),
        };
        CatalogError::Exists {
            what: format!("dataset version {name}/{version}{by}; versions never change, make a new one"),
            store: self.ds.url.clone(),
        }
    }

    /// Adds `files` to the version an execution's sync makes: created if new; extended if this
    /// execution made it (a later sync of the same job); refused if another one did.
    pub async fn publish_version(
        &self,
        name: &str,
        version: &str,
        execution: &str,
        files: Vec<VersionFile>,
    ) -> Result<VersionRecord, CatalogError> {
        check_name(version, "a version")?;
        self.create_dataset(name, Some(execution), true).await?;
        let rel = self.version_rel(name, version);
        // Later entries for one path win. The files are moved into the record, not copied (a
        // version of a hundred thousand files holds about 60 MB of them); only their paths are
        // kept aside, to take them back out if another writer raced this one.
        let mut ours = latest_per_path(files);
        let our_paths: std::collections::HashSet<String> = ours.iter().map(|f| f.path.clone()).collect();
        let mut refused = None;
        let mut rec = Err(CatalogError::Contended { uri: self.ds.uri_of(&self.ds.record_key(&rel)), tries: 0 });
        // The chunks are written before the record that names them: the record is swapped in
        // only if nobody changed it since it was read; otherwise all is done again.
        for _ in 0..super::CAS_TRIES {
            let before = self.stored_version(name, version).await?;
            let old_chunks = before.as_ref().map(StoredVersion::chunk_ids).unwrap_or_default();
            let old = match before.clone() {
                Some(stored) => Some(self.load_version(stored).await?),
                None => None,
            };
            let mut next = match old {
                Some(old) if old.execution.as_deref() == Some(execution) => old,
                Some(old) => {
                    refused = Some(old.execution.unwrap_or_else(|| format!("a command on {}", old.host)));
                    rec = Err(CatalogError::Exists {
                        what: format!("dataset version {name}/{version}"),
                        store: self.ds.url.clone(),
                    });
                    break;
                }
                None => VersionRecord {
                    dataset: name.to_string(),
                    version: version.to_string(),
                    created_at: now(),
                    host: hostname(),
                    execution: Some(execution.to_string()),
                    from: None,
                    files: Vec::new(),
                },
            };
            // New files replace old ones at the same path (one pass: versions hold millions).
            if next.files.is_empty() {
                // A new version (the usual case): ours, already sorted, moved in whole.
                next.files = std::mem::take(&mut ours);
            } else {
                next.files.retain(|x| !our_paths.contains(x.path.as_str()));
                next.files.append(&mut ours);
                // Unstable is enough: the paths are unique now (and it needs no buffer).
                next.files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            }
            let stored = self.write_manifest(&next, &old_chunks).await?;
            let mut raced = false;
            let swapped = self
                .update(&rel, |now: Option<StoredVersion>| {
                    if now != before {
                        raced = true;
                        return Err(CatalogError::Contended { uri: String::new(), tries: 0 });
                    }
                    Ok(stored.clone())
                })
                .await;
            match swapped {
                Ok(_) => {
                    rec = Ok(next);
                    break;
                }
                Err(_) if raced => {
                    ours = next.files.into_iter().filter(|f| our_paths.contains(f.path.as_str())).collect();
                    continue;
                }
                Err(e) => {
                    rec = Err(e);
                    break;
                }
            }
        }
        match (rec, refused) {
            (Ok(rec), _) => Ok(rec),
            (Err(_), Some(other)) => Err(CatalogError::Exists {
                what: format!(
                    "dataset version {name}/{version} (made by {other}); several executions may not write one \
                     version: name a new one"
                ),
                store: self.ds.url.clone(),
            }),
            (Err(e), None) => Err(e),
        }
    }

    /// Points `alias` of dataset `name` at `version` (compare-and-swap, history kept).
    pub async fn set_version_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
    ) -> Result<VersionAliasRecord, CatalogError> {
        check_name(alias, "an alias")?;
        self.require_dataset(name).await?;
        if self.version(name, alias).await?.is_some() {
            return Err(CatalogError::BadName {
                name: alias.to_string(),
                reason: format!("dataset {name} has a version of that name"),
            });
        }
        if self.version(name, version).await?.is_none() {
            return Err(CatalogError::NoSuchVersion {
                name: format!("{} version {name}/{version}", self.collection.scheme()),
                store: self.ds.url.clone(),
            });
        }
        let mv = VersionAliasMove { version: version.to_string(), set_at: now(), host: hostname() };
        self.update(&self.version_alias_rel(name, alias), |old: Option<VersionAliasRecord>| {
            let mut rec = old.unwrap_or_else(|| VersionAliasRecord {
                dataset: name.to_string(),
                alias: alias.to_string(),
                version: version.to_string(),
                history: Vec::new(),
            });
            rec.version = version.to_string();
            rec.history.push(mv.clone());
            Ok(rec)
        })
        .await
    }

    /// The tombstone of a purged datum, if it was purged.
    pub async fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, CatalogError> {
        Ok(self.read(&self.ds.record_key(&tombstone_rel(id))).await?.map(|(t, _)| t))
    }

    /// Every tombstone, by datum id (purges are rare: one listing).
    pub async fn tombstones(&self) -> Result<HashMap<String, Tombstone>, CatalogError> {
        let all: Vec<Tombstone> = self.read_all("purged").await?;
        Ok(all.into_iter().map(|t| (t.datum.clone(), t)).collect())
    }

    /// Deletes a datum's bytes and leaves a tombstone (written first, so that nothing ever
    /// finds the bytes gone without the reason). Purging again retries the deletion. A packed
    /// datum's bytes are overwritten with zeros in its pack.
    pub async fn purge(&self, id: &str, reason: Option<&str>) -> Result<Tombstone, CatalogError> {
        let rec = self.datum(id).await?;
        let tomb = match self.tombstone(id).await? {
            Some(t) => t,
            None => {
                let t = Tombstone {
                    datum: rec.id.clone(),
                    purged_at: now(),
                    user: user_name(),
                    host: hostname(),
                    reason: reason.map(str::to_string),
                    object_uri: rec.object_uri.clone(),
                };
                let key = self.ds.record_key(&tombstone_rel(id));
                match self.put(&key, &t, PutMode::Create).await {
                    Ok(()) => t,
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        self.tombstone(id).await?.unwrap_or(t)
                    }
                    Err(e) => return Err(self.store_err(&key, e).into()),
                }
            }
        };
        if rec.packed.is_some() {
            // The pack holds other datums: only this one's bytes are blanked.
            self.blank_in_pack(&rec).await?;
            return Ok(tomb);
        }
        let key = object_store::path::Path::from(rec.key.as_str());
        match self.ds.handle.inner.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(tomb),
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::in_memory()
    }

    fn file(path: &str, datum: &str) -> VersionFile {
        let sums = crate::checksum::MultiHasher::of_reader(path.as_bytes()).unwrap().0;
        let object_uri = format!("s3://bucket/data/{path}");
        VersionFile {
            path: path.into(),
            datum: datum.into(),
            size: path.len() as u64,
            checksums: FileDigests::of(&sums).unwrap(),
            object_uri: object_uri.into(),
            packed: None,
        }
    }

    /// A catalog in memory behind the fault-injecting wrapper, to count its requests.
    fn counted_catalog() -> (Catalog, std::sync::Arc<crate::store::faulty::FaultyStore>) {
        use crate::store::{data::DataStore, faulty::FaultyStore, StoreHandle};
        let store = std::sync::Arc::new(FaultyStore::new(std::sync::Arc::new(object_store::memory::InMemory::new())));
        let handle = std::sync::Arc::new(StoreHandle::new("mem://c", store.clone()));
        let ds = DataStore { handle, prefix: String::new(), url: "mem://c".into(), local_dir: None, project: None };
        (Catalog::new(ds), store)
    }

    #[tokio::test]
    async fn versions_are_chunked_and_one_made_from_another_writes_only_what_changed() {
        use crate::store::faulty::Op;
        let (c, store) = counted_catalog();
        c.create_dataset("d", None, false).await.unwrap();
        let files: Vec<VersionFile> = (0..20_000).map(|i| file(&format!("s{:02}/f{i:06}.jpg", i % 50), "D")).collect();
        let mut files = files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let before = store.count(Op::ConditionalPut);
        c.put_version(&version("d", "v1", files.clone())).await.unwrap();
        let v1_puts = store.count(Op::ConditionalPut) - before;
        let stored = c.stored_version("d", "v1").await.unwrap().unwrap();
        assert_eq!((stored.format, stored.count, stored.record.files.is_empty()), (Some(2), 20_000, true));
        assert_eq!(v1_puts, 2 * stored.chunks.len() + 1, "every chunk, its companion, and the record");
        assert!(stored.chunks.len() > 2);
        assert_eq!(c.version("d", "v1").await.unwrap().unwrap().files, files);

        let mut more = files.clone();
        more.push(file("s25/f999999.jpg", "D2"));
        more.sort_by(|a, b| a.path.cmp(&b.path));
        let mut v2 = version("d", "v2", more.clone());
        v2.from = Some("d/v1".into());
        let before = store.count(Op::ConditionalPut);
        c.put_version(&v2).await.unwrap();
        assert_eq!(store.count(Op::ConditionalPut) - before, 3, "one chunk, its companion, and the record");
        assert_eq!(c.version("d", "v2").await.unwrap().unwrap().files, more);
        assert_eq!(c.version("d", "v1").await.unwrap().unwrap().files, files, "v1 unchanged");
    }

    #[tokio::test]
    async fn publishing_twice_replaces_files_by_path_and_the_last_given_wins() {
        let c = catalog();
        let first = vec![file("b.bin", "B1"), file("a.bin", "A1"), file("c.bin", "C1")];
        c.publish_version("d", "v1", "exec", first).await.unwrap();
        // A path given twice in one call: the later entry is the one kept.
        let second = vec![file("c.bin", "C2"), file("d.bin", "D1"), file("c.bin", "C3")];
        let rec = c.publish_version("d", "v1", "exec", second).await.unwrap();
        let got: Vec<(&str, &str)> = rec.files.iter().map(|f| (f.path.as_str(), f.datum.as_str())).collect();
        assert_eq!(got, [("a.bin", "A1"), ("b.bin", "B1"), ("c.bin", "C3"), ("d.bin", "D1")]);
        assert_eq!(c.version("d", "v1").await.unwrap().unwrap().files, rec.files);
        let other = c.publish_version("d", "v1", "exec-2", vec![file("e.bin", "E1")]).await;
        assert!(matches!(other, Err(CatalogError::Exists { .. })), "{other:?}");
    }

    #[tokio::test]
    async fn versions_written_before_chunked_manifests_still_read() {
        let c = catalog();
        c.create_dataset("d", None, false).await.unwrap();
        let old = serde_json::json!({
            "dataset": "d", "version": "v0", "created_at": "2026-11-01T00:00:00Z", "host": "h",
            "files": [{"path": "a.bin", "datum": "D1", "size": 3,
                       "checksums": {"md5": "0a".repeat(16), "sha1": "1b".repeat(20), "sha256": "2c".repeat(32)},
                       "object_uri": "s3://b/a.bin"}]
        });
        let key = c.ds.record_key(&c.version_rel("d", "v0"));
        c.ds.handle.inner.put(&key, serde_json::to_vec(&old).unwrap().into()).await.unwrap();
        let v = c.version("d", "v0").await.unwrap().unwrap();
        assert_eq!((v.files.len(), v.files[0].path.as_str(), v.files[0].checksums.sha256()), (1, "a.bin", &[0x2c; 32]));
        assert_eq!(v.files[0].checksums.to_checksums().md5, "0a".repeat(16));
        // A version made from it is written in today's format.
        let mut v1 = version("d", "v1", v.files.clone());
        v1.from = Some("d/v0".into());
        v1.files[0].checksums = file("a.bin", "D1").checksums;
        c.put_version(&v1).await.unwrap();
        assert_eq!(c.stored_version("d", "v1").await.unwrap().unwrap().format, Some(2));
        assert_eq!(c.version("d", "v1").await.unwrap().unwrap().files, v1.files);
    }

    #[tokio::test]
    async fn a_damaged_chunk_is_named_when_the_version_is_read() {
        let c = catalog();
        c.create_dataset("d", None, false).await.unwrap();
        c.put_version(&version("d", "v1", vec![file("a", "D1"), file("b", "D2")])).await.unwrap();
        let stored = c.stored_version("d", "v1").await.unwrap().unwrap();
        let id = &stored.chunks[0].id;
        let key = c.ds.record_key(&format!("datasets/d/chunks/{id}"));
        c.ds.handle.inner.put(&key, b"garbage".to_vec().into()).await.unwrap();
        let e = c.version("d", "v1").await.unwrap_err().to_string();
        assert!(e.contains(&format!("datasets/d/chunks/{id}")) && e.contains("damaged"), "{e}");
    }

    fn version(name: &str, v: &str, files: Vec<VersionFile>) -> VersionRecord {
        VersionRecord {
            dataset: name.into(),
            version: v.into(),
            created_at: now(),
            host: hostname(),
            execution: None,
            from: None,
            files,
        }
    }

    #[tokio::test]
    async fn concurrent_creations_and_moves_lose_nothing() {
        let c = catalog();
        c.create_dataset("d", None, false).await.unwrap();
        let jobs = (0..12).map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.put_version(&version("d", &format!("v{i}"), vec![file("a", "D")])).await.unwrap();
                c.set_version_alias("d", "latest", &format!("v{i}")).await.unwrap();
            })
        });
        for j in futures::future::join_all(jobs).await {
            j.unwrap();
        }
        let a = c.version_alias("d", "latest").await.unwrap().unwrap();
        assert_eq!(a.history.len(), 12);
        assert_eq!(a.history.last().unwrap().version, a.version);
        assert_eq!(c.versions("d").await.unwrap().len(), 12);
        // One version name, two creators: one wins.
        let (one, two) = (version("d", "same", vec![file("a", "D1")]), version("d", "same", vec![file("a", "D2")]));
        let (x, y) = tokio::join!(c.put_version(&one), c.put_version(&two));
        assert!(x.is_ok() != y.is_ok(), "{x:?} {y:?}");
    }

    #[tokio::test]
    async fn an_execution_extends_its_own_version_only() {
        let c = catalog();
        c.publish_version("d", "v1", "exec-a", vec![file("a", "D1")]).await.unwrap();
        let v = c.publish_version("d", "v1", "exec-a", vec![file("b", "D2")]).await.unwrap();
        assert_eq!(v.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let e = c.publish_version("d", "v1", "exec-b", vec![file("c", "D3")]).await.unwrap_err().to_string();
        assert!(e.contains("exec-a") && e.contains("d/v1"), "{e}");
        let (v, alias) = c.resolve_version("dataset://d/v1").await.unwrap();
        assert_eq!((v.files.len(), alias), (2, None));
        assert!(matches!(c.resolve_version("d/v9").await, Err(CatalogError::NoSuchVersion { .. })));
        assert!(matches!(c.resolve_version("nope/v1").await, Err(CatalogError::NoSuchDataset { .. })));
    }

    #[test]
    fn refs() {
        assert_eq!(split_ref("dataset://imgs/v1").unwrap(), ("imgs".into(), "v1".into()));
        assert_eq!(split_ref("imgs/production").unwrap(), ("imgs".into(), "production".into()));
        assert!(split_ref("imgs").is_err());
        assert!(split_ref("imgs/a/b").is_err());
        assert!(split_ref("../x/v1").is_err());
    }
}
