//! Configuration files: `/etc/datumfs/config.toml` (the node's) and
//! `~/.config/datumfs/config.toml` (the user's; `DATUMFS_CONFIG=FILE` names another), with
//! defaults for every command and named stores. Precedence: a flag, then the environment, then
//! the user's file, then the system's, then the built-in default. A file's settings reach the
//! commands as the environment variables the flags already read (set only where unset), so one
//! parser serves all. Secrets are never required in a file: a store names a credentials profile.
//!
//! ```toml
//! store = "ml"                 # a named store below, or a URL
//! cache_dir = "/var/cache/datumfs"
//! cache_size = "200G"
//! metrics_addr = "127.0.0.1:9100"
//!
//! [stores.ml]
//! url = "s3://ml-bucket/datumfs"
//! region = "eu-west-1"
//! endpoint = "https://s3.eu-west-1.amazonaws.com"
//! profile = "ml"               # AWS_PROFILE: credentials from ~/.aws, never from here
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Settings a file may hold, each with the environment variable its flags read.
pub const KEYS: &[(&str, &str)] = &[
    ("store", "DATUMFS_STORE"),
    ("project", "DATUMFS_PROJECT"),
    ("cache_dir", "DATUMFS_CACHE_DIR"),
    ("cache_size", "DATUMFS_CACHE_SIZE"),
    ("cache_min_free", "DATUMFS_CACHE_MIN_FREE"),
    ("evict_after", "DATUMFS_EVICT_AFTER"),
    ("block_size", "DATUMFS_BLOCK_SIZE"),
    ("read_ahead", "DATUMFS_READ_AHEAD"),
    ("pack_below", "DATUMFS_PACK_BELOW"),
    ("metrics_addr", "DATUMFS_METRICS_ADDR"),
    ("log", "DATUMFS_LOG"),
    ("options", "DATUMFS_OPTIONS"),
    ("sync_on", "DATUMFS_SYNC_ON"),
    ("stop_timeout", "DATUMFS_STOP_TIMEOUT"),
];

/// A named store.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedStore {
    /// Its URL (`s3://bucket/prefix`, `gs://...`, `file:///...`).
    pub url: String,
    /// The endpoint of an S3-compatible store (AWS_ENDPOINT_URL).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (AWS_REGION).
    #[serde(default)]
    pub region: Option<String>,
    /// The credentials profile (AWS_PROFILE): the secrets stay in the cloud's own files.
    #[serde(default)]
    pub profile: Option<String>,
}

/// A project's own settings (`[projects.NAME]`): its data store, so that access control between
/// projects rides on the store's permissions (one bucket or prefix, and credentials, per
/// project).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// The project's data store: a URL or the name of a `[stores.NAME]`.
    #[serde(default)]
    pub store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FileContents {
    #[serde(flatten)]
    settings: BTreeMap<String, toml::Value>,
    #[serde(default)]
    stores: BTreeMap<String, NamedStore>,
    #[serde(default)]
    projects: BTreeMap<String, ProjectSettings>,
}

/// Where each setting came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Source {
    /// The setting's name in a file.
    pub key: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Its value (none: the built-in default applies).
    pub value: Option<String>,
    /// `environment`, the file's path, or `default`.
    pub from: String,
}

/// What the files said, as applied.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every setting, with its source.
    pub sources: Vec<Source>,
    /// Named stores, each with the file it came from.
    pub stores: BTreeMap<String, (NamedStore, PathBuf)>,
    /// Projects' own settings, each with the file it came from.
    pub projects: BTreeMap<String, (ProjectSettings, PathBuf)>,
    /// The files read, in order (system, then user).
    pub files: Vec<PathBuf>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration file {path}: {reason}")]
pub struct ConfigFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The system's and the user's file, in that order.
pub fn paths() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/etc/datumfs/config.toml")];
    match std::env::var_os("DATUMFS_CONFIG").filter(|v| !v.is_empty()) {
        Some(p) => out.push(PathBuf::from(p)),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            if let Some(b) = base {
                out.push(b.join("datumfs/config.toml"));
            }
        }
    }
    out
}

fn read(path: &Path) -> Result<Option<FileContents>, ConfigFileError> {
    let bad = |reason: String| ConfigFileError { path: path.display().to_string(), reason };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let contents: FileContents = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for key in contents.settings.keys() {
        if !KEYS.iter().any(|(k, _)| k == key) {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(bad(format!(
                "unknown setting '{key}' (settings: {}, and [stores.NAME], [projects.NAME])",
                known.join(", ")
            )));
        }
    }
    Ok(Some(contents))
}

fn text_of(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads the files and sets, for every setting they hold that neither the environment nor a
/// more specific file sets, the variable its flags read. Call once, before parsing flags.
pub fn apply() -> Result<&'static Loaded, ConfigFileError> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let mut loaded = Loaded::default();
    // The user's file first: it wins over the system's.
    let mut per_key: BTreeMap<&'static str, (String, PathBuf)> = BTreeMap::new();
    let files = paths();
    for path in files.iter().rev() {
        let Some(contents) = read(path)? else { continue };
        loaded.files.insert(0, path.clone());
        for (key, env) in KEYS {
            if let Some(v) = contents.settings.get(*key) {
                per_key.entry(env).or_insert_with(|| (text_of(v), path.clone()));
            }
        }
        for (name, store) in contents.stores {
            loaded.stores.entry(name).or_insert((store, path.clone()));
        }
        for (name, project) in contents.projects {
            loaded.projects.entry(name).or_insert((project, path.clone()));
        }
    }
    for (key, env) in KEYS {
        let source = match (std::env::var(env).ok().filter(|v| !v.is_empty()), per_key.get(env)) {
            (Some(v), _) => Source { key, env, value: Some(v), from: "environment".into() },
            (None, Some((v, path))) => {
                // Set before any other thread runs (the first thing the command does).
                std::env::set_var(env, v);
                Source { key, env, value: Some(v.clone()), from: path.display().to_string() }
            }
            (None, None) => Source { key, env, value: None, from: "default".into() },
        };
        loaded.sources.push(source);
    }
    Ok(LOADED.get_or_init(|| loaded))
}

/// The files' settings as applied (empty before [`apply`]).
pub fn loaded() -> Option<&'static Loaded> {
    LOADED.get()
}

/// The data store to use, before [`resolve_store`]: `given` (`--store` or DATUMFS_STORE), unless
/// `project` has a store of its own in a configuration file and `given` is only the files'
/// default store. Precedence: flag or environment > the project's store > the files' store.
pub fn store_for(given: Option<&str>, project: Option<&str>) -> Option<String> {
    let loaded = loaded();
    let own = project.and_then(|p| loaded?.projects.get(p)?.0.store.clone());
    let files_default = loaded
        .and_then(|l| l.sources.iter().find(|s| s.env == "DATUMFS_STORE"))
        .filter(|s| s.from != "environment" && s.from != "default")
        .and_then(|s| s.value.clone());
    match (given, own) {
        (None, own) => own,
        (Some(g), Some(own)) if files_default.as_deref() == Some(g) => Some(own),
        (Some(g), _) => Some(g.to_string()),
    }
}

/// `--store` as given: a named store's URL (its endpoint, region and profile set in the
/// environment where unset), or the URL itself.
pub fn resolve_store(given: &str) -> String {
    if given.contains("://") || given.starts_with('/') || given.starts_with('.') {
        return given.to_string();
    }
    let Some((store, _)) = loaded().and_then(|l| l.stores.get(given)) else { return given.to_string() };
    for (env, value) in
        [("AWS_ENDPOINT_URL", &store.endpoint), ("AWS_REGION", &store.region), ("AWS_PROFILE", &store.profile)]
    {
        if let Some(v) = value {
            if std::env::var_os(env).is_none() {
                std::env::set_var(env, v);
            }
        }
    }
    store.url.clone()
}
