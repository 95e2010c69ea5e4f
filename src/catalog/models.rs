//! Models: named series of versions (`v1`, `v2`, ... in creation order), each a set of datums
//! stored exactly as a dataset version is (under `models/` instead of `datasets/`: immutable,
//! chunked manifests), plus an approval state of its own: pending until someone approves or
//! rejects it, every decision kept with who, when and why. `model://NAME/latest` is the newest
//! version, `model://NAME/approved` the newest approved one.
//!
//! Race-safety is the datasets': a version is created only if its name is free (two syncs
//! racing for `v3` get `v3` and `v4`), one execution's files for one model form one version
//! (a later sync of that execution extends it), and state changes are compare-and-swap.

use super::datasets::{VersionFile, VersionRecord};
use super::{check_name, hostname, now, Catalog, CatalogError, Collection};
use serde::{Deserialize, Serialize};

/// Where a model version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Not decided yet.
    #[default]
    Pending,
    /// Approved (for production, say).
    Approved,
    /// Rejected.
    Rejected,
}

impl Approval {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::Pending => "pending",
            Approval::Approved => "approved",
            Approval::Rejected => "rejected",
        }
    }
}

/// One decision on a model version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// The state it set.
    pub state: Approval,
    /// Who (the user running the command).
    pub by: String,
    /// The host.
    pub host: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A model version's state, tags and release note (`models/NAME/states/VERSION.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelVersionState {
    /// The model.
    pub model: String,
    /// The version.
    pub version: String,
    /// Where it stands now.
    pub state: Approval,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its release note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_note: Option<String>,
    /// Every decision, oldest first.
    #[serde(default)]
    pub history: Vec<Decision>,
}

/// The number of a version named `vN`.
fn number(version: &str) -> Option<u64> {
    version.strip_prefix('v')?.parse().ok()
}

/// `model://NAME/VERSION`.
pub fn uri(name: &str, version: &str) -> String {
    format!("model://{name}/{version}")
}

/// `model://NAME/REF`, `NAME/REF` or `model://NAME/` (no REF) → (NAME, REF).
pub fn split(text: &str) -> Result<(String, Option<String>), CatalogError> {
    let bare = text.strip_prefix("model://").unwrap_or(text).trim_end_matches('/');
    let (name, which) = match bare.split_once('/') {
        Some((n, w)) => (n, Some(w.to_string())),
        None => (bare, None),
    };
    check_name(name, "a model name")?;
    if let Some(w) = &which {
        check_name(w, "a model version")?;
    }
    Ok((name.to_string(), which))
}

impl Catalog {
    fn state_rel(&self, name: &str, version: &str) -> String {
        format!("{}/{name}/states/{version}.json", Collection::Models.dir())
    }

    /// Creates model `name` (fails if it exists, unless `exist_ok`).
    pub async fn create_model(&self, name: &str, execution: Option<&str>, exist_ok: bool) -> Result<(), CatalogError> {
        self.models().create_dataset(name, execution, exist_ok).await.map(|_| ())
    }

    /// Every model's name, sorted.
    pub async fn model_names(&self) -> Result<Vec<String>, CatalogError> {
        self.models().datasets().await
    }

    /// Whether model `name` exists.
    pub async fn model_exists(&self, name: &str) -> Result<bool, CatalogError> {
        Ok(self.models().dataset(name).await?.is_some())
    }

    /// The versions of model `name`, oldest first (`v1`, `v2`, ...).
    pub async fn model_versions(&self, name: &str) -> Result<Vec<String>, CatalogError> {
        let mut v: Vec<String> = self.models().versions(name).await?.into_iter().map(|(v, _)| v).collect();
        v.sort_by_key(|v| (number(v).unwrap_or(u64::MAX), v.clone()));
        Ok(v)
    }

    /// The state of version `version` of model `name` (pending when never decided).
    pub async fn model_state(&self, name: &str, version: &str) -> Result<ModelVersionState, CatalogError> {
        let rel = self.state_rel(name, version);
        Ok(self.read_record(&rel).await?.unwrap_or_else(|| ModelVersionState {
            model: name.to_string(),
            version: version.to_string(),
            ..Default::default()
        }))
    }

    /// Version `version` of model `name` with its files.
    pub async fn model_version(&self, name: &str, version: &str) -> Result<VersionRecord, CatalogError> {
        self.models().version(name, version).await?.ok_or_else(|| CatalogError::NoSuchVersion {
            name: format!("model {name}/{version}"),
            store: self.ds.url.clone(),
        })
    }

    /// `latest`, `approved` or a version name of model `name` → the version it is now.
    pub async fn resolve_model(&self, name: &str, which: &str) -> Result<String, CatalogError> {
        if !self.model_exists(name).await? {
            return Err(CatalogError::NoSuchModel { name: name.to_string(), store: self.ds.url.clone() });
        }
        let versions = self.model_versions(name).await?;
        let none = |what: &str| CatalogError::NoSuchVersion {
            name: format!("model {name}/{which} (the model has {what})"),
            store: self.ds.url.clone(),
        };
        match which {
            "latest" => versions.last().cloned().ok_or_else(|| none("no versions")),
            "approved" => {
                for v in versions.iter().rev() {
                    if self.model_state(name, v).await?.state == Approval::Approved {
                        return Ok(v.clone());
                    }
                }
                Err(none("no approved version"))
            }
            v if versions.iter().any(|x| x == v) => Ok(v.to_string()),
            _ => Err(none(&format!("versions {}", versions.join(", ")))),
        }
    }

    /// Adds `files` to the version of model `name` that `execution` makes: the next version
    /// number the first time, the same version on a later sync of the same execution. Tags are
    /// added and the release note set. Returns the version's name.
    pub async fn publish_model_version(
        &self,
        name: &str,
        execution: &str,
        files: Vec<VersionFile>,
        tags: &[String],
        release_note: Option<&str>,
    ) -> Result<String, CatalogError> {
        self.create_model(name, Some(execution), true).await?;
        let models = self.models();
        let mut versions = self.model_versions(name).await?;
        // This execution's version, if an earlier sync made one.
        let mut mine = None;
        for v in versions.iter().rev() {
            if models.stored_version(name, v).await?.is_some_and(|s| s.record.execution.as_deref() == Some(execution)) {
                mine = Some(v.clone());
                break;
            }
        }
        let version = match mine {
            Some(v) => {
                models.publish_version(name, &v, execution, files).await?;
                v
            }
            None => loop {
                let next = versions.iter().filter_map(|v| number(v)).max().unwrap_or(0) + 1;
                let v = format!("v{next}");
                match models.publish_version(name, &v, execution, files.clone()).await {
                    Ok(_) => break v,
                    // Another execution took that number first: take the next.
                    Err(CatalogError::Exists { .. }) => versions.push(v),
                    Err(e) => return Err(e),
                }
            },
        };
        let (tags, note) = (tags.to_vec(), release_note.map(str::to_string));
        self.update(&self.state_rel(name, &version), |old: Option<ModelVersionState>| {
            let mut s = old.unwrap_or_else(|| ModelVersionState {
                model: name.to_string(),
                version: version.clone(),
                ..Default::default()
            });
            for t in &tags {
                if !s.tags.contains(t) {
                    s.tags.push(t.clone());
                }
            }
            if note.is_some() {
                s.release_note = note.clone();
            }
            Ok(s)
        })
        .await?;
        Ok(version)
    }

    /// Approves or rejects version `version` of model `name` (compare-and-swap; the decision
    /// joins the history).
    pub async fn decide_model_version(
        &self,
        name: &str,
        version: &str,
        state: Approval,
        reason: Option<&str>,
    ) -> Result<ModelVersionState, CatalogError> {
        self.model_version(name, version).await?;
        let decision = Decision {
            state,
            by: super::datasets::user_name(),
            host: hostname(),
            at: now(),
            reason: reason.map(str::to_string),
        };
        self.update(&self.state_rel(name, version), |old: Option<ModelVersionState>| {
            let mut s = old.unwrap_or_else(|| ModelVersionState {
                model: name.to_string(),
                version: version.to_string(),
                ..Default::default()
            });
            s.state = state;
            s.history.push(decision.clone());
            Ok(s)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::FileDigests;

    fn file(path: &str) -> VersionFile {
        VersionFile {
            path: path.into(),
            datum: format!("d-{path}"),
            size: 1,
            checksums: FileDigests::new([2; 32], Some([0; 16]), Some([1; 20])),
            object_uri: format!("mem://c/{path}").into(),
            packed: None,
        }
    }

    #[tokio::test]
    async fn versions_number_in_order_one_per_execution_and_approval_picks_the_newest() {
        let c = Catalog::in_memory();
        let v1 =
            c.publish_model_version("churn", "e1", vec![file("a.pt")], &["x".into()], Some("first")).await.unwrap();
        let again = c.publish_model_version("churn", "e1", vec![file("b.pt")], &[], None).await.unwrap();
        let v2 = c.publish_model_version("churn", "e2", vec![file("a.pt")], &[], None).await.unwrap();
        assert_eq!((v1.as_str(), again.as_str(), v2.as_str()), ("v1", "v1", "v2"));
        let rec = c.model_version("churn", "v1").await.unwrap();
        assert_eq!(rec.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a.pt", "b.pt"]);
        assert_eq!(c.model_state("churn", "v1").await.unwrap().release_note.as_deref(), Some("first"));
        assert_eq!(c.resolve_model("churn", "latest").await.unwrap(), "v2");
        assert!(c.resolve_model("churn", "approved").await.unwrap_err().to_string().contains("no approved"));
        c.decide_model_version("churn", "v1", Approval::Approved, Some("validated")).await.unwrap();
        assert_eq!(c.resolve_model("churn", "approved").await.unwrap(), "v1");
        c.decide_model_version("churn", "v2", Approval::Rejected, None).await.unwrap();
        assert_eq!(c.resolve_model("churn", "approved").await.unwrap(), "v1");
        let s = c.decide_model_version("churn", "v1", Approval::Rejected, Some("drift")).await.unwrap();
        assert_eq!(s.history.len(), 2);
        assert!(c.resolve_model("churn", "approved").await.is_err());
        assert!(c.decide_model_version("churn", "v9", Approval::Approved, None).await.is_err());
        // Models and datasets do not share names.
        assert!(c.dataset("churn").await.unwrap().is_none());
        assert_eq!(c.model_names().await.unwrap(), ["churn"]);
    }

    #[tokio::test]
    async fn racing_executions_get_distinct_versions() {
        let c = Catalog::in_memory();
        let runs = (0..6).map(|i| {
            let c = c.clone();
            async move { c.publish_model_version("m", &format!("e{i}"), vec![file("w")], &[], None).await.unwrap() }
        });
        let mut got = futures::future::join_all(runs).await;
        got.sort_by_key(|v| number(v));
        assert_eq!(got, ["v1", "v2", "v3", "v4", "v5", "v6"]);
    }
}
