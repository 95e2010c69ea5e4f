//! The catalog's record types, as stored (JSON) under the data store's reserved prefix.

use crate::checksum::Checksums;
use serde::{Deserialize, Serialize};

/// One immutable datum: a synced output file (or a pushed file) and everything known about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatumRecord {
    /// The id (a ULID: sortable by creation time).
    pub id: String,
    /// `datum://ID`.
    pub uri: String,
    /// The data store's URL.
    pub store: String,
    /// The key of the datum's bytes in the store.
    pub key: String,
    /// The full URI of the bytes (`s3://bucket/key`, `file:///...`).
    pub object_uri: String,
    /// Size in bytes.
    pub size: u64,
    /// md5, sha1 and sha256 of the bytes.
    pub checksums: Checksums,
    /// When the datum was created (RFC 3339).
    pub created_at: String,
    /// The execution that produced it.
    pub execution: Option<String>,
    /// Its path relative to `outputs/` (or the pushed file's relative path).
    pub path: String,
    /// Tags from `valohai.tags` (or `push --tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The alias given with it (`valohai.alias`, `push --alias`), if any.
    #[serde(default)]
    pub alias: Option<String>,
    /// Every other metadata key, as given.
    #[serde(default)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Where in its pack the bytes are, for a small file uploaded inside a pack (`key` and
    /// `object_uri` then name the pack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackedIn>,
}

/// The place of a packed datum's bytes: `size` bytes from `offset` of the pack object, a plain
/// tar of many small datums (see `catalog::packs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackedIn {
    /// The pack's id (also the datum id with its member number cleared).
    pub pack: String,
    /// Offset of the datum's first byte in the pack.
    pub offset: u64,
    /// Size of the whole pack object.
    pub pack_size: u64,
}

/// An input as an execution saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecutionInput {
    /// The input's name.
    pub name: String,
    /// Its URIs as given.
    pub uris: Vec<String>,
    /// Datums it resolved to (for `datum://` inputs).
    #[serde(default)]
    pub datums: Vec<String>,
    /// Dataset versions it resolved to (`dataset://NAME/VERSION`, aliases followed).
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Files of the input read whole, with their checksums.
    #[serde(default)]
    pub files_read: Vec<FileRead>,
}

/// A file an execution read whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRead {
    /// Its URI.
    pub uri: String,
    /// Its size.
    pub size: u64,
    /// Its checksums.
    pub checksums: Checksums,
}

/// What an execution was and did: the lineage between its inputs and its output datums.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecutionRecord {
    /// The execution id.
    pub id: String,
    /// When its mount started (RFC 3339).
    pub started_at: String,
    /// When it last synced or ended (RFC 3339).
    pub ended_at: Option<String>,
    /// The host it ran on.
    pub host: String,
    /// The command, for `datumfs run` (and `push`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Its inputs.
    #[serde(default)]
    pub inputs: Vec<ExecutionInput>,
    /// Datums it produced, in the order they were created.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Keys its volume syncs wrote or deleted, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_writes: Vec<VolumeWrite>,
    /// Its parameters (`datumfs run --param`, `--parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// The code it ran: the git checkout `datumfs run` was started in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeInfo>,
    /// The command's exit status (`datumfs run`; 128+N for a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// How long the command ran, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// What went wrong or looked wrong (an input whose content differs from its last use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ExecutionRecord {
    /// A record of execution `id`, started at `started_at` on `host`, that knows nothing else
    /// yet.
    pub fn new(id: &str, started_at: &str, host: &str) -> Self {
        Self {
            id: id.to_string(),
            started_at: started_at.to_string(),
            ended_at: None,
            host: host.to_string(),
            command: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            volume_writes: Vec::new(),
            parameters: None,
            code: None,
            exit_status: None,
            duration_secs: None,
            warnings: Vec::new(),
        }
    }
}

/// The git checkout a job ran from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodeInfo {
    /// The commit checked out.
    pub commit: String,
    /// The branch (none when detached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The `origin` remote's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Whether the working tree had uncommitted changes.
    pub dirty: bool,
    /// The checkout's top directory.
    pub path: String,
}

impl CodeInfo {
    /// The git checkout `dir` is in, if it is in one (and git is installed).
    pub fn of_dir(dir: &std::path::Path) -> Option<Self> {
        let git = |args: &[&str]| -> Option<String> {
            let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "HEAD"])?;
        let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD");
        let remote = git(&["remote", "get-url", "origin"]).filter(|r| !r.is_empty());
        let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        let path = git(&["rev-parse", "--show-toplevel"]).unwrap_or_default();
        Some(Self { commit, branch, remote, dirty, path })
    }
}

/// A key a volume sync wrote (or deleted) in a bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeWrite {
    /// The volume's name in the mount.
    pub volume: String,
    /// The key's URI.
    pub uri: String,
    /// Its ETag after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The sha256 of the bytes written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Their size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The sync deleted the key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// When (RFC 3339).
    pub at: String,
}

/// One position an alias has had.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasMove {
    /// The datum it pointed at.
    pub datum: String,
    /// When it was set (RFC 3339).
    pub set_at: String,
    /// The execution that set it, if any.
    pub execution: Option<String>,
    /// The host that set it.
    pub host: String,
}

/// A datum alias: where it points now, and every earlier position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasRecord {
    /// The alias.
    pub alias: String,
    /// The datum it points at now.
    pub datum: String,
    /// Every move, oldest first (the last one is the current position).
    pub history: Vec<AliasMove>,
}

/// That an execution read a datum (kept per datum, so `lineage` finds readers without a scan).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReaderRecord {
    /// The datum read.
    pub datum: String,
    /// The execution that read it.
    pub execution: String,
    /// When it was resolved (RFC 3339).
    pub at: String,
    /// The host.
    pub host: String,
}
