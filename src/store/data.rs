//! The data store: where datumfs keeps its own records (`--store URL`, default an embedded local
//! store under `$DATUMFS_HOME/store`). Records live under a reserved `.datumfs/` prefix.

use super::{StoreError, StoreHandle, StoreRegistry};
use crate::uri::{self, Scheme};
use object_store::path::Path;
use std::sync::Arc;

/// An opened data store and the prefix everything of datumfs lives under.
#[derive(Debug, Clone)]
pub struct DataStore {
    /// The store client.
    pub handle: Arc<StoreHandle>,
    /// Key prefix (no trailing `/`; empty for the store's root).
    pub prefix: String,
    /// The URL as given, for messages.
    pub url: String,
    /// The directory of a local (`file://`) store, where record updates are serialized with a
    /// lock file (object_store's local backend has no conditional update).
    pub local_dir: Option<std::path::PathBuf>,
    /// The project whose names it holds (`None`: the default project, the store's root).
    pub project: Option<String>,
}

/// The reserved prefix for datumfs's records.
pub const RESERVED: &str = ".datumfs";

impl DataStore {
    /// Opens the data store at `url` (a directory for local stores, created if missing).
    pub fn open(url: &str, registry: &StoreRegistry) -> Result<Self, StoreError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        let parsed =
            uri::parse(url, &cwd).map_err(|e| StoreError::BadUri { uri: url.to_string(), reason: e.to_string() })?;
        if parsed.scheme == Scheme::Http {
            return Err(StoreError::BadUri {
                uri: url.to_string(),
                reason: "an http(s) URL cannot be a data store".into(),
            });
        }
        let mut local_dir = None;
        if parsed.scheme == Scheme::File {
            let dir = std::path::Path::new("/").join(&parsed.key);
            crate::util::create_private_dir(&dir).map_err(|e| StoreError::Other {
                uri: url.to_string(),
                cause: format!("cannot create {}: {e}", dir.display()),
            })?;
            local_dir = Some(dir);
        }
        let handle = registry.open(&parsed)?;
        Ok(Self {
            handle,
            prefix: parsed.key.trim_matches('/').to_string(),
            url: url.to_string(),
            local_dir,
            project: None,
        })
    }

    /// The same store, its datums, datasets, models, aliases and executions those of `project`
    /// (`None`: the default project, where records made before projects existed are): under
    /// `.datumfs/projects/NAME/` and `data/.projects/NAME/`, so two teams sharing a store never
    /// see or move each other's names.
    pub fn in_project(mut self, project: Option<&str>) -> Result<Self, crate::catalog::CatalogError> {
        if let Some(p) = project {
            crate::catalog::check_name(p, "a project name")?;
        }
        self.project = project.map(str::to_string);
        Ok(self)
    }

    /// `projects/NAME/` for a project's records, nothing for the default project.
    fn project_part(&self) -> String {
        self.project.as_deref().map(|p| format!("projects/{p}/")).unwrap_or_default()
    }

    /// The key of a datum's bytes: `data/<rel>` under the store's prefix, outside the reserved
    /// prefix, so other tools see plain objects.
    pub fn data_key(&self, rel: &str) -> Path {
        // `.projects/` cannot be an execution id (those start with a letter or a digit).
        let project = self.project.as_deref().map(|p| format!(".projects/{p}/")).unwrap_or_default();
        if self.prefix.is_empty() {
            Path::from(format!("data/{project}{rel}"))
        } else {
            Path::from(format!("{}/data/{project}{rel}", self.prefix))
        }
    }

    /// The key of `rel` right below the store's prefix (a volume's files, a pushed tree).
    pub fn key_below(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The URI of `key` in this store, for records and messages.
    pub fn uri_of(&self, key: &Path) -> String {
        self.handle.uri_of(key.as_ref())
    }

    /// The key of a record `rel` under the reserved prefix.
    pub fn record_key(&self, rel: &str) -> Path {
        let project = self.project_part();
        let full = if self.prefix.is_empty() {
            format!("{RESERVED}/{project}{rel}")
        } else {
            format!("{}/{RESERVED}/{project}{rel}", self.prefix)
        };
        Path::from(full)
    }

    /// The same store in its default project (where the list of projects is kept).
    pub fn default_project(&self) -> Self {
        Self { project: None, ..self.clone() }
    }

    /// Tries the conditional writes datumfs's records rely on, with a scratch record that it
    /// deletes again: a second create-only put must be refused, and an update must be refused
    /// for a stale version and taken for the current one. Some S3-compatible stores accept
    /// the headers and ignore them; this tells.
    pub async fn probe_conditional_writes(&self) -> Vec<WriteProbe> {
        use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
        let store = &self.handle.inner;
        let key = self.default_project().record_key(&format!("doctor/{}", ulid::Ulid::generate()));
        let put = |body: &'static [u8], mode: PutMode| {
            store.put_opts(&key, PutPayload::from_static(body), PutOptions { mode, ..Default::default() })
        };
        let mut probes = Vec::new();
        if let Err(e) = put(b"1", PutMode::Create).await {
            probes.push(WriteProbe::failed("create-only put", format!("{}: {e}", self.uri_of(&key))));
            return probes;
        }
        probes.push(match put(b"2", PutMode::Create).await {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                WriteProbe::kept("create-only put", "a second create of the same key is refused")
            }
            Ok(_) => WriteProbe::ignored(
                "create-only put",
                "a second create of the same key was accepted: the store ignores If-None-Match, so \
                 concurrent writers could replace each other's records",
            ),
            Err(e) => WriteProbe::failed("create-only put", e.to_string()),
        });
        let current = store.head(&key).await.ok().and_then(|m| m.e_tag);
        let stale = UpdateVersion { e_tag: Some("\"0000\"".into()), version: None };
        probes.push(match put(b"3", PutMode::Update(stale)).await {
            Err(object_store::Error::Precondition { .. }) => match current {
                Some(e_tag) => match put(b"4", PutMode::Update(UpdateVersion { e_tag: Some(e_tag), version: None }))
                    .await
                {
                    Ok(_) => WriteProbe::kept("compare-and-swap", "a stale update is refused, a current one taken"),
                    Err(e) => {
                        WriteProbe::failed("compare-and-swap", format!("an update of the current version failed: {e}"))
                    }
                },
                None => WriteProbe::failed("compare-and-swap", "the store gives no ETag to update against"),
            },
            Err(object_store::Error::NotImplemented { .. }) if self.local_dir.is_some() => {
                WriteProbe::kept("compare-and-swap", "a local store: datumfs serializes record updates with lock files")
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                WriteProbe::ignored("compare-and-swap", "the store offers no conditional update")
            }
            Ok(_) => WriteProbe::ignored(
                "compare-and-swap",
                "an update against a stale version was accepted: the store ignores If-Match, so \
                 concurrent alias and dataset changes could be lost",
            ),
            Err(e) => WriteProbe::failed("compare-and-swap", e.to_string()),
        });
        if let Err(e) = store.delete(&key).await {
            tracing::warn!("removing the probe record {}: {e}", self.uri_of(&key));
        }
        probes
    }
}

/// How a store handled one kind of conditional write.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteProbe {
    /// Which kind: `create-only put` or `compare-and-swap`.
    pub what: &'static str,
    /// Kept (true), accepted but ignored (false), or the probe failed (None).
    pub kept: Option<bool>,
    /// What happened.
    pub detail: String,
}

impl WriteProbe {
    fn kept(what: &'static str, detail: impl Into<String>) -> Self {
        Self { what, kept: Some(true), detail: detail.into() }
    }

    fn ignored(what: &'static str, detail: impl Into<String>) -> Self {
        Self { what, kept: Some(false), detail: detail.into() }
    }

    fn failed(what: &'static str, detail: impl Into<String>) -> Self {
        Self { what, kept: None, detail: detail.into() }
    }
}
