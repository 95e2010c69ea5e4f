//! The catalog: datumfs's records in the data store, under its reserved prefix (`.datumfs/`).
//!
//! Datums are immutable (create-only puts); aliases are updated with compare-and-swap on the
//! record's ETag, so two nodes racing never lose an update (a local store serializes updates
//! with a lock file instead, as object_store's local backend has no conditional update).
//! Executions are owned by one mount and simply rewritten. Datasets, their versions and aliases
//! and purge tombstones are in `datasets`. Knows nothing of FUSE or the cache.

pub mod datasets;
pub mod index;
pub mod manifest;
pub mod models;
pub mod packs;
pub mod records;
mod version_store;
pub mod volume_writes;

use crate::store::data::DataStore;
use crate::store::StoreError;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
pub use records::CodeInfo;
pub use records::{
    AliasMove, AliasRecord, DatumRecord, ExecutionInput, ExecutionRecord, FileRead, PackedIn, ReaderRecord, VolumeWrite,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A catalog failure, naming the record or name it concerns.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No datum (or alias) of that name.
    #[error("{name}: no such datum or alias in the data store {store}")]
    NoSuchDatum {
        /// The id or alias asked for.
        name: String,
        /// The data store searched.
        store: String,
    },
    /// No execution of that id.
    #[error("execution {id}: no such execution in the data store {store}")]
    NoSuchExecution {
        /// The id asked for.
        id: String,
        /// The data store searched.
        store: String,
    },
    /// A record exists but cannot be read.
    #[error("{uri}: malformed catalog record: {reason}")]
    Malformed {
        /// The record's URI.
        uri: String,
        /// The parse error.
        reason: String,
    },
    /// A name (alias, id) is not acceptable.
    #[error("'{name}': {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// Something that is created once already exists.
    #[error("{what} already exists in the data store {store}")]
    Exists {
        /// What (with who made it, where known).
        what: String,
        /// The data store.
        store: String,
    },
    /// No project of that name.
    #[error(
        "project {name}: no such project in the data store {store} (create it with `datumfs project create {name}`)"
    )]
    NoSuchProject {
        /// The name asked for.
        name: String,
        /// The data store searched.
        store: String,
    },
    /// No model of that name.
    #[error("model {name}: no such model in the data store {store} (a job makes one with valohai.model-versions)")]
    NoSuchModel {
        /// The name asked for.
        name: String,
        /// The data store searched.
        store: String,
    },
    /// No dataset of that name.
    #[error(
        "dataset {name}: no such dataset in the data store {store} (create it with `datumfs dataset create {name}`)"
    )]
    NoSuchDataset {
        /// The name asked for.
        name: String,
        /// The data store searched.
        store: String,
    },
    /// No version (or alias) of that name.
    #[error("{name}: no such version or alias in the data store {store}")]
    NoSuchVersion {
        /// `NAME/VERSION` as asked for.
        name: String,
        /// The data store searched.
        store: String,
    },
    /// The datum's bytes were deleted on purpose.
    #[error("{}", .0.describe())]
    Purged(Box<datasets::Tombstone>),
    /// A compare-and-swap kept losing to other writers.
    #[error("{uri}: could not update after {tries} attempts: other writers kept changing it")]
    Contended {
        /// The record's URI.
        uri: String,
        /// How many attempts were made.
        tries: u32,
    },
}

/// A new time-sortable id (ULID, 26 characters of Crockford base32).
pub fn new_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Whether `s` has the form of an id (as opposed to an alias).
pub fn is_id(s: &str) -> bool {
    s.len() == 26 && ulid::Ulid::from_string(s).is_ok()
}

/// Checks a user-chosen name (alias, execution id): letters, digits, `.`, `_`, `-`; 1 to 128
/// characters; starting with a letter or digit.
pub fn check_name(name: &str, what: &str) -> Result<(), CatalogError> {
    match crate::uri::name_problem(name) {
        Some(reason) => Err(CatalogError::BadName { name: name.to_string(), reason: format!("{what} {reason}") }),
        None => Ok(()),
    }
}

/// Checks an alias: a name that cannot be mistaken for an id.
pub fn check_alias(alias: &str) -> Result<(), CatalogError> {
    check_name(alias, "an alias")?;
    if is_id(alias) {
        return Err(CatalogError::BadName {
            name: alias.to_string(),
            reason: "an alias may not have the form of a datum id".into(),
        });
    }
    Ok(())
}

/// `datum://X` or `X` → `X`.
pub fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("datum://").unwrap_or(s).trim_end_matches('/')
}

/// A datum as `datum://ID`, kept in 16 bytes (its id is a ULID): a sync's report holds one per
/// file. Shown, serialized and parsed as the URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatumUri([u8; 16]);

impl DatumUri {
    /// The datum whose id is `id`; `None` if `id` is not a datum id.
    pub fn of_id(id: &str) -> Option<Self> {
        ulid::Ulid::from_string(id).ok().map(|u| Self(u.0.to_be_bytes()))
    }

    /// The datum `datum://ID` (or a bare id) names; `None` if it names none.
    pub fn parse(uri: &str) -> Option<Self> {
        Self::of_id(strip_scheme(uri))
    }

    /// Its id.
    pub fn id(&self) -> String {
        ulid::Ulid(u128::from_be_bytes(self.0)).to_string()
    }
}

impl std::fmt::Display for DatumUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "datum://{}", ulid::Ulid(u128::from_be_bytes(self.0)))
    }
}

impl Serialize for DatumUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatumUri {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let uri = String::deserialize(d)?;
        Self::parse(&uri).ok_or_else(|| serde::de::Error::custom(format!("{uri:?} is not a datum URI")))
    }
}

pub use crate::util::hostname;

/// Now, RFC 3339.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A project: a namespace of its own for datums, datasets, models, aliases and executions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ProjectRecord {
    /// Its name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The host that created it.
    pub host: String,
}

/// The catalog of one data store.
#[derive(Debug, Clone)]
pub struct Catalog {
    ds: DataStore,
    packs: packs::PackCache,
    /// Which named, versioned collections its version functions work on.
    collection: Collection,
}

/// The two kinds of named series of immutable versions: datasets, and models (whose versions
/// also carry an approval state). Both are stored alike, each under a directory of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `datasets/`.
    Datasets,
    /// `models/`.
    Models,
}

impl Collection {
    /// The directory of its records.
    pub fn dir(self) -> &'static str {
        match self {
            Collection::Datasets => "datasets",
            Collection::Models => "models",
        }
    }

    /// Its URI scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Collection::Datasets => "dataset",
            Collection::Models => "model",
        }
    }
}

const CAS_TRIES: u32 = 50;

impl Catalog {
    /// The catalog kept in `ds`.
    pub fn new(ds: DataStore) -> Self {
        Self { ds, packs: packs::new_cache(), collection: Collection::Datasets }
    }

    /// The data store the catalog is kept in.
    pub fn data_store(&self) -> &DataStore {
        &self.ds
    }

    /// The same catalog, its version functions working on models instead of datasets.
    pub fn models(&self) -> Self {
        Self { collection: Collection::Models, ..self.clone() }
    }

    /// The collection its version functions work on.
    pub fn collection(&self) -> Collection {
        self.collection
    }

    /// A catalog in memory, for unit tests.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Self {
        use crate::store::StoreHandle;
        let handle = StoreHandle::new("mem://c", std::sync::Arc::new(object_store::memory::InMemory::new()));
        Self::new(DataStore {
            handle: std::sync::Arc::new(handle),
            prefix: String::new(),
            url: "mem://c".into(),
            local_dir: None,
            project: None,
        })
    }

    /// The data store.
    pub fn store(&self) -> &DataStore {
        &self.ds
    }

    fn store_err(&self, key: &Path, e: object_store::Error) -> StoreError {
        StoreError::from_object_store(&self.ds.uri_of(key), self.ds.handle.bucket.as_deref(), e)
    }

    async fn read<T: DeserializeOwned>(&self, key: &Path) -> Result<Option<(T, UpdateVersion)>, CatalogError> {
        let res = match self.ds.handle.inner.get(key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(key, e).into()),
        };
        let version = UpdateVersion { e_tag: res.meta.e_tag.clone(), version: res.meta.version.clone() };
        let bytes = res.bytes().await.map_err(|e| self.store_err(key, e))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| CatalogError::Malformed { uri: self.ds.uri_of(key), reason: e.to_string() })?;
        Ok(Some((value, version)))
    }

    async fn put<T: Serialize>(&self, key: &Path, value: &T, mode: PutMode) -> Result<(), object_store::Error> {
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| object_store::Error::Generic { store: "catalog", source: Box::new(e) })?;
        self.put_body(key, body, mode).await
    }

    /// Stores `body` as the record at `key`.
    async fn put_body(&self, key: &Path, body: Vec<u8>, mode: PutMode) -> Result<(), object_store::Error> {
        let opts = PutOptions { mode, ..Default::default() };
        self.ds.handle.inner.put_opts(key, PutPayload::from(body), opts).await.map(|_| ())
    }

    /// The record at `rel`, if there is one.
    pub(crate) async fn read_record<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>, CatalogError> {
        Ok(self.read(&self.ds.record_key(rel)).await?.map(|(v, _)| v))
    }

    /// Reads, changes and writes back the record at `rel` so that no concurrent update is lost.
    pub(crate) async fn update<T, F>(&self, rel: &str, mut change: F) -> Result<T, CatalogError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<T, CatalogError>,
    {
        let key = self.ds.record_key(rel);
        if let Some(dir) = &self.ds.local_dir {
            let _lock = lock_local(dir, rel).await.map_err(|e| StoreError::Other {
                uri: self.ds.uri_of(&key),
                cause: format!("could not lock the record for update: {e}"),
            })?;
            let old = self.read::<T>(&key).await?.map(|(v, _)| v);
            let new = change(old)?;
            self.put(&key, &new, PutMode::Overwrite).await.map_err(|e| self.store_err(&key, e))?;
            return Ok(new);
        }
        for attempt in 0..CAS_TRIES {
            let (old, mode) = match self.read::<T>(&key).await? {
                Some((v, version)) => (Some(v), PutMode::Update(version)),
                None => (None, PutMode::Create),
            };
            let new = change(old)?;
            match self.put(&key, &new, mode).await {
                Ok(()) => return Ok(new),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    let pause = 5 + (rand::random::<u64>() % 20) * (attempt as u64 + 1).min(10);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(self.store_err(&key, e).into()),
            }
        }
        Err(CatalogError::Contended { uri: self.ds.uri_of(&key), tries: CAS_TRIES })
    }

    fn datum_rel(id: &str) -> String {
        format!("datums/{id}.json")
    }

    /// The datum record stored under `id`, if there is one (packed datums, which have none of
    /// their own, are not looked for).
    pub async fn stored_datum(&self, id: &str) -> Result<Option<DatumRecord>, CatalogError> {
        Ok(self.read(&self.ds.record_key(&Self::datum_rel(id))).await?.map(|(d, _)| d))
    }

    /// Stores a new datum record (create-only: an existing record is never replaced; storing the
    /// same record again is a no-op, so a resumed sync can repeat it).
    pub async fn put_datum(&self, rec: &DatumRecord) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&Self::datum_rel(&rec.id));
        match self.put(&key, rec, PutMode::Create).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                match self.read::<DatumRecord>(&key).await? {
                    Some((old, _)) if old.id == rec.id && old.key == rec.key => Ok(()),
                    _ => Err(CatalogError::BadName {
                        name: rec.id.clone(),
                        reason: "a different datum record already has this id".into(),
                    }),
                }
            }
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// The datum with id `id` (a record of its own, or a member of a pack's record).
    pub async fn datum(&self, id: &str) -> Result<DatumRecord, CatalogError> {
        let key = self.ds.record_key(&Self::datum_rel(id));
        if let Some((d, _)) = self.read(&key).await? {
            return Ok(d);
        }
        match self.packed_datum(id).await? {
            Some(d) => Ok(d),
            None => Err(CatalogError::NoSuchDatum { name: format!("datum://{id}"), store: self.ds.url.clone() }),
        }
    }

    /// The datum named by an id or an alias (`datum://` optional).
    pub async fn resolve(&self, name: &str) -> Result<DatumRecord, CatalogError> {
        let bare = strip_scheme(name);
        if is_id(bare) {
            return self.datum(&bare.to_ascii_uppercase()).await;
        }
        check_alias(bare)?;
        match self.alias(bare).await? {
            Some(a) => self.datum(&a.datum).await,
            None => Err(CatalogError::NoSuchDatum { name: format!("datum://{bare}"), store: self.ds.url.clone() }),
        }
    }

    /// Every record below the reserved-prefix path `rel` (one listing, 32 reads at once), in no
    /// particular order.
    /// (Boxed: the stream's closures otherwise defeat the Send proof of callers' futures.)
    fn read_all<'a, T: DeserializeOwned + Send + 'a>(
        &'a self,
        rel: &str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<T>, CatalogError>> {
        let rel = rel.to_string();
        Box::pin(async move {
            let keys = self.list_keys(&rel).await?;
            Ok(self.read_keys::<T>(keys).await?.into_iter().map(|(_, v)| v).collect())
        })
    }

    /// The keys of every record under `rel`.
    pub(crate) async fn list_keys(&self, rel: &str) -> Result<Vec<Path>, CatalogError> {
        let prefix = self.ds.record_key(rel);
        Ok(self
            .ds
            .handle
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.store_err(&prefix, e))?)
    }

    /// The records at `keys` (several at once), each with its key; those gone meanwhile are left
    /// out.
    pub(crate) async fn read_keys<T: serde::de::DeserializeOwned + Send>(
        &self,
        keys: Vec<Path>,
    ) -> Result<Vec<(Path, T)>, CatalogError> {
        futures::stream::iter(keys.into_iter().map(|k| async move {
            let read = self.read::<T>(&k).await?;
            Ok::<_, CatalogError>(read.map(|(v, _)| (k, v)))
        }))
        .buffer_unordered(32)
        .try_filter_map(|r| async move { Ok(r) })
        .try_collect()
        .await
    }

    fn execution_rel(id: &str) -> String {
        format!("executions/{id}.json")
    }

    /// Creates project `name` in this catalog's store (fails if it exists).
    pub async fn create_project(&self, name: &str) -> Result<ProjectRecord, CatalogError> {
        check_name(name, "a project name")?;
        let ds = self.ds.default_project().in_project(Some(name))?;
        let rec = ProjectRecord { name: name.to_string(), created_at: now(), host: hostname() };
        let key = ds.record_key("project.json");
        match self.put(&key, &rec, PutMode::Create).await {
            Ok(()) => Ok(rec),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(CatalogError::Exists { what: format!("project {name}"), store: self.ds.url.clone() })
            }
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// Project `name`'s record, if it exists.
    pub async fn project(&self, name: &str) -> Result<Option<ProjectRecord>, CatalogError> {
        check_name(name, "a project name")?;
        let key = self.ds.default_project().in_project(Some(name))?.record_key("project.json");
        Ok(self.read(&key).await?.map(|(p, _)| p))
    }

    /// Every project's name, sorted.
    pub async fn projects(&self) -> Result<Vec<String>, CatalogError> {
        self.child_names(&self.ds.default_project().record_key("projects")).await
    }

    /// The names of the "directories" right below `prefix`, sorted.
    pub(crate) async fn child_names(&self, prefix: &Path) -> Result<Vec<String>, CatalogError> {
        let listing =
            self.ds.handle.inner.list_with_delimiter(Some(prefix)).await.map_err(|e| self.store_err(prefix, e))?;
        let mut names: Vec<String> =
            listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    /// The catalog of project `project` in the same store (`None`: the default project); the
    /// project must exist.
    pub async fn for_project(&self, project: Option<&str>) -> Result<Self, CatalogError> {
        if let Some(p) = project {
            if self.project(p).await?.is_none() {
                return Err(CatalogError::NoSuchProject { name: p.to_string(), store: self.ds.url.clone() });
            }
        }
        Ok(Self { ds: self.ds.default_project().in_project(project)?, packs: packs::new_cache(), ..self.clone() })
    }

    /// Stores the log of execution `id`'s command (replacing an earlier copy).
    pub async fn put_log(&self, id: &str, text: Vec<u8>) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&format!("logs/{id}.log"));
        self.ds.handle.inner.put(&key, PutPayload::from(text)).await.map_err(|e| self.store_err(&key, e))?;
        Ok(())
    }

    /// The log of execution `id`'s command, if one was stored.
    pub async fn log(&self, id: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let key = self.ds.record_key(&format!("logs/{id}.log"));
        match self.ds.handle.inner.get(&key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.store_err(&key, e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// Every execution's record, newest first.
    pub async fn executions(&self) -> Result<Vec<ExecutionRecord>, CatalogError> {
        let mut all: Vec<ExecutionRecord> = self.read_all("executions").await?;
        all.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Writes an execution's record (its mount owns it, so the last write wins).
    pub async fn put_execution(&self, rec: &ExecutionRecord) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&Self::execution_rel(&rec.id));
        self.put(&key, rec, PutMode::Overwrite).await.map_err(|e| self.store_err(&key, e).into())
    }

    /// The execution `id`.
    pub async fn execution(&self, id: &str) -> Result<ExecutionRecord, CatalogError> {
        let key = self.ds.record_key(&Self::execution_rel(id));
        match self.read(&key).await? {
            Some((e, _)) => Ok(e),
            None => Err(CatalogError::NoSuchExecution { id: id.to_string(), store: self.ds.url.clone() }),
        }
    }

    /// The execution `id` if it exists.
    pub async fn find_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, CatalogError> {
        let key = self.ds.record_key(&Self::execution_rel(id));
        Ok(self.read(&key).await?.map(|(e, _)| e))
    }

    fn alias_rel(alias: &str) -> String {
        format!("aliases/{alias}.json")
    }

    /// The alias record, if the alias exists.
    pub async fn alias(&self, alias: &str) -> Result<Option<AliasRecord>, CatalogError> {
        Ok(self.read(&self.ds.record_key(&Self::alias_rel(alias))).await?.map(|(a, _)| a))
    }

    /// Points `alias` at `datum` (compare-and-swap), keeping its history.
    pub async fn set_alias(
        &self,
        alias: &str,
        datum: &str,
        execution: Option<&str>,
    ) -> Result<AliasRecord, CatalogError> {
        check_alias(alias)?;
        let mv = AliasMove {
            datum: datum.to_string(),
            set_at: now(),
            execution: execution.map(str::to_string),
            host: hostname(),
        };
        self.update(&Self::alias_rel(alias), |old: Option<AliasRecord>| {
            let mut rec = old.unwrap_or_else(|| AliasRecord {
                alias: alias.to_string(),
                datum: datum.to_string(),
                history: Vec::new(),
            });
            // Moving it again where this execution already moved it (a sync run again after a
            // crash) adds nothing to its history.
            let again = rec.history.last().is_some_and(|last| last.datum == datum && last.execution == mv.execution);
            if rec.datum != datum || !again {
                rec.datum = datum.to_string();
                rec.history.push(mv.clone());
            }
            Ok(rec)
        })
        .await
    }

    /// Records that `execution` read `datum`.
    pub async fn add_reader(&self, datum: &str, execution: &str) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&format!("readers/{datum}/{execution}.json"));
        let rec =
            ReaderRecord { datum: datum.to_string(), execution: execution.to_string(), at: now(), host: hostname() };
        self.put(&key, &rec, PutMode::Overwrite).await.map_err(|e| self.store_err(&key, e).into())
    }

    /// The executions that read `datum`.
    pub async fn readers(&self, datum: &str) -> Result<Vec<ReaderRecord>, CatalogError> {
        let mut out: Vec<ReaderRecord> = self.read_all(&format!("readers/{datum}")).await?;
        out.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(out)
    }
}

/// Takes the lock serializing updates of one record in a local store.
async fn lock_local(dir: &std::path::Path, rel: &str) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let locks = dir.join(crate::store::data::RESERVED).join("locks");
    let path = locks.join(format!("{}.lock", rel.replace('/', "_")));
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&locks)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datum_uri_is_kept_in_sixteen_bytes_and_reads_back_as_written() {
        let id = new_id();
        let d = DatumUri::of_id(&id).unwrap();
        assert_eq!(std::mem::size_of::<DatumUri>(), 16);
        assert_eq!((d.id(), d.to_string()), (id.clone(), format!("datum://{id}")));
        assert_eq!(DatumUri::parse(&format!("datum://{id}")), Some(d));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"datum://{id}\""));
        assert_eq!(serde_json::from_str::<DatumUri>(&json).unwrap(), d);
        for bad in ["datum://latest", "", "datum://", "s3://b/k"] {
            assert!(DatumUri::parse(bad).is_none(), "{bad}");
        }
        let err = serde_json::from_str::<DatumUri>("\"datum://nope\"").unwrap_err().to_string();
        assert!(err.contains("datum://nope") && err.contains("not a datum URI"), "{err}");
    }

    fn catalog() -> Catalog {
        Catalog::in_memory()
    }

    #[test]
    fn ids_and_names() {
        let id = new_id();
        assert!(is_id(&id));
        assert!(!is_id("production-model"));
        assert!(check_alias("production-model").is_ok());
        assert!(check_alias(&id).is_err());
        assert!(check_alias("../x").is_err());
        assert!(check_alias("").is_err());
        assert_eq!(strip_scheme("datum://abc"), "abc");
    }

    #[tokio::test]
    async fn concurrent_alias_moves_lose_nothing() {
        let c = catalog();
        let jobs = (0..16).map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.set_alias("best", &format!("D{i}"), None).await.unwrap() })
        });
        futures::future::join_all(jobs).await;
        let a = c.alias("best").await.unwrap().unwrap();
        assert_eq!(a.history.len(), 16, "every move is in the history");
        assert_eq!(a.history.last().unwrap().datum, a.datum);
    }

    #[tokio::test]
    async fn malformed_record_is_named() {
        let c = catalog();
        let key = c.ds.record_key("aliases/bad.json");
        c.ds.handle.inner.put(&key, PutPayload::from("{not json")).await.unwrap();
        let err = c.resolve("datum://bad").await.unwrap_err().to_string();
        assert!(err.contains("aliases/bad.json") && err.contains("malformed"), "{err}");
    }
}
