//! What a writable volume keeps on the node, beside its staged tree: which directories of the
//! tree were filled in from the bucket's listing, which files still hold the bucket's bytes
//! (and of which key and version), and every key the mount has seen with the version it saw.
//!
//! The tree (`files/`) is a plain directory, as outputs' staging is. A directory is filled in
//! from the bucket the first time anything looks into it: subdirectories are made, and each
//! object becomes a placeholder file of its size, marked with its origin (key and ETag) in an
//! extended attribute, whose bytes are read from the block cache until a write copies them in.
//! Marks travel with the file through renames and hard links, and survive a crash: the state
//! is the directory itself, plus `seen.jsonl`, the versions the bucket had when the mount first
//! saw each key (what every conditional put and delete of a sync compares against).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Marks a file whose content is a bucket object's (see [`Origin`]).
const ORIGIN_XATTR: &str = "user.datumfs.volume.origin";
/// Marks a directory already filled in from the bucket's listing.
const LISTED_XATTR: &str = "user.datumfs.volume.listed";

/// Whether `name` is one of the attributes the volume keeps for itself (hidden from the job,
/// which may set any other).
pub fn is_private_xattr(name: &[u8]) -> bool {
    name == ORIGIN_XATTR.as_bytes() || name == LISTED_XATTR.as_bytes()
}

/// Where a file's bytes are, while they are still a bucket object's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The key below the volume's prefix.
    #[serde(rename = "k")]
    pub key: String,
    /// The object's ETag when the mount saw it.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Whether the bytes are in the staged file too (else it is a placeholder of the right size).
    #[serde(rename = "h", default)]
    pub hydrated: bool,
}

fn c_name(name: &str) -> CString {
    CString::new(name).expect("attribute names have no NUL")
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Value of attribute `name` of the file at `fd` or `path`; `None` when it has none.
fn get(target: Target<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let name = c_name(name);
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: a valid C string and a buffer of `buf.len()` bytes.
        let n = unsafe {
            match &target {
                Target::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
                Target::Path(p) => libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            }
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

fn set(target: Target<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let name = c_name(name);
    // SAFETY: a valid C string and a value of the length given.
    let rc = unsafe {
        match &target {
            Target::Fd(fd) => libc::fsetxattr(*fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0),
            Target::Path(p) => libc::lsetxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn remove(target: Target<'_>, name: &str) -> io::Result<()> {
    let name = c_name(name);
    // SAFETY: a valid C string.
    let rc = unsafe {
        match &target {
            Target::Fd(fd) => libc::fremovexattr(*fd, name.as_ptr()),
            Target::Path(p) => libc::lremovexattr(p.as_ptr(), name.as_ptr()),
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(e);
        }
    }
    Ok(())
}

enum Target<'a> {
    Fd(std::os::unix::io::RawFd),
    Path(&'a CString),
}

/// The origin of the file at `path`, if its bytes are still a bucket object's.
pub fn origin_at(path: &Path) -> io::Result<Option<Origin>> {
    let p = c_path(path)?;
    Ok(get(Target::Path(&p), ORIGIN_XATTR)?.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// The origin of an open file.
pub fn origin_of(file: &std::fs::File) -> io::Result<Option<Origin>> {
    Ok(get(Target::Fd(file.as_raw_fd()), ORIGIN_XATTR)?.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Marks an open file as holding the bytes of `origin`.
pub fn set_origin(file: &std::fs::File, origin: &Origin) -> io::Result<()> {
    let value = serde_json::to_vec(origin).map_err(io::Error::other)?;
    set(Target::Fd(file.as_raw_fd()), ORIGIN_XATTR, &value)
}

/// The file at `path` holds bytes of its own now (a write, a truncate): it is a change.
pub fn clear_origin_at(path: &Path) -> io::Result<()> {
    remove(Target::Path(&c_path(path)?), ORIGIN_XATTR)
}

/// Whether the directory at `path` was filled in from the bucket (or made by the job).
pub fn is_listed(path: &Path) -> io::Result<bool> {
    Ok(get(Target::Path(&c_path(path)?), LISTED_XATTR)?.is_some())
}

/// Marks the directory at `path` as filled in.
pub fn mark_listed(path: &Path) -> io::Result<()> {
    set(Target::Path(&c_path(path)?), LISTED_XATTR, b"1")
}

/// The version of a key the mount saw: its ETag, or where a listing gives none (some
/// S3-compatible servers), its modification time (whole seconds, as a HEAD gives it) and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The ETag.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Modification time, seconds since the epoch.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Size in bytes.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Whether two ETags name the same version (stores quote them, or not).
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl Version {
    /// Whether `now` (the bucket's answer) is this version.
    pub fn matches(&self, now: &Version) -> bool {
        match (&self.etag, &now.etag) {
            (Some(a), Some(b)) => same_etag(a, b),
            _ => self.mtime.is_some() && self.mtime == now.mtime && self.size == now.size,
        }
    }

    /// How it is shown in a conflict.
    pub fn shown(&self) -> String {
        match (&self.etag, self.mtime) {
            (Some(e), _) => format!("ETag {e}"),
            (None, Some(m)) => {
                let at =
                    chrono::DateTime::from_timestamp(m, 0).map(|t| t.to_rfc3339()).unwrap_or_else(|| m.to_string());
                format!("modified {at} ({} bytes)", self.size.unwrap_or(0))
            }
            (None, None) => "an unknown version".into(),
        }
    }

    /// The version an object's listing or HEAD answer shows.
    pub fn of(etag: Option<String>, modified: std::time::SystemTime, size: u64) -> Self {
        let mtime = modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).ok();
        Version { etag, mtime, size: Some(size) }
    }
}

/// One line of `seen.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct SeenLine {
    /// The key.
    k: String,
    /// Its version.
    #[serde(flatten)]
    v: Version,
    /// The key is gone from the bucket (a sync deleted it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gone: bool,
}

/// What the volume is, kept beside its state so that a remount under the same execution with
/// another URI is refused instead of syncing one bucket's changes into another.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    uri: String,
}

/// The keys of the bucket the mount has seen, each with the ETag it had then (or that a sync
/// of ours gave it since): the version every conditional put and delete expects.
pub struct SeenKeys {
    path: PathBuf,
    keys: Mutex<(HashMap<String, Version>, Option<std::fs::File>)>,
}

impl SeenKeys {
    /// Loads the keys from `seen.jsonl` in `dir` (rewritten compactly).
    fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join("seen.jsonl");
        let mut keys = HashMap::new();
        match std::fs::File::open(&path) {
            Ok(f) => {
                for line in io::BufReader::new(f).lines() {
                    // A line cut short by a crash is the last one; what it said is seen again.
                    let Ok(l) = serde_json::from_str::<SeenLine>(&line?) else { continue };
                    if l.gone {
                        keys.remove(&l.k);
                    } else {
                        keys.insert(l.k, l.v);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = dir.join("seen.jsonl.tmp");
        {
            let mut out = io::BufWriter::new(private_file(&tmp, true)?);
            for (k, e) in &keys {
                serde_json::to_writer(&mut out, &SeenLine { k: k.clone(), v: e.clone(), gone: false })?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let log = private_file(&path, false)?;
        Ok(Self { path, keys: Mutex::new((keys, Some(log))) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Version>, Option<std::fs::File>)> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The version `key` had when seen; `None` when the mount has not seen it in the bucket.
    pub fn get(&self, key: &str) -> Option<Version> {
        self.lock().0.get(key).cloned()
    }

    /// Whether `key` is in the bucket as far as the mount knows.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().0.contains_key(key)
    }

    /// Whether any key seen lies below directory `dir` (relative, no trailing slash).
    pub fn any_under(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.lock().0.keys().any(|k| dir.is_empty() || k.starts_with(&prefix))
    }

    /// Every key seen, with its version.
    pub fn all(&self) -> HashMap<String, Version> {
        self.lock().0.clone()
    }

    /// Records that `key` is in the bucket at `version`.
    pub fn record(&self, key: &str, version: Version) -> io::Result<()> {
        self.append(SeenLine { k: key.to_string(), v: version, gone: false })
    }

    /// Records that `key` is no longer in the bucket.
    pub fn forget(&self, key: &str) -> io::Result<()> {
        self.append(SeenLine { k: key.to_string(), v: Version::default(), gone: true })
    }

    fn append(&self, line: SeenLine) -> io::Result<()> {
        let mut g = self.lock();
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        if let Some(f) = g.1.as_mut() {
            f.write_all(&text)?;
        }
        if line.gone {
            g.0.remove(&line.k);
        } else {
            g.0.insert(line.k, line.v);
        }
        Ok(())
    }

    /// Makes what was recorded durable.
    pub fn flush(&self) -> io::Result<()> {
        match self.lock().1.as_ref() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Where the keys are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn private_file(path: &Path, truncate: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.create(true).mode(0o600);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    o.open(path)
}

/// A writable volume's state on the node: its directory, staged tree and seen keys.
pub struct VolumeState {
    dir: PathBuf,
    /// The keys seen and their versions.
    pub seen: SeenKeys,
}

/// Why a volume's state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory holds another volume's changes.
    #[error(
        "{dir} holds staged changes of {held}, not of {asked}; sync or discard them (unmount --discard) \
         before mounting this name with another URI"
    )]
    OtherVolume {
        /// The state directory.
        dir: String,
        /// The URI whose changes it holds.
        held: String,
        /// The URI asked for.
        asked: String,
    },
    /// The local filesystem failed.
    #[error("{path}: {error}")]
    Io {
        /// What was being opened.
        path: String,
        /// The OS error.
        error: io::Error,
    },
}

impl VolumeState {
    /// Opens (or starts) the state of the volume of `uri` in `dir`.
    pub fn open(dir: &Path, uri: &str) -> Result<Self, StateError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |error| StateError::Io { path, error }
        };
        crate::util::create_private_dir(dir).map_err(io_err(dir))?;
        let id_path = dir.join("volume.json");
        let asked = Identity { uri: uri.to_string() };
        match std::fs::read(&id_path) {
            Ok(text) => {
                let held: Identity = serde_json::from_slice(&text)
                    .map_err(|e| io_err(&id_path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                if held != asked {
                    return Err(StateError::OtherVolume {
                        dir: dir.display().to_string(),
                        held: held.uri,
                        asked: uri.to_string(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let text = serde_json::to_vec(&asked).map_err(|e| io_err(&id_path)(io::Error::other(e)))?;
                crate::util::write_file_atomically(&id_path, &text).map_err(io_err(&id_path))?;
            }
            Err(e) => return Err(io_err(&id_path)(e)),
        }
        let seen = SeenKeys::open(dir).map_err(io_err(&dir.join("seen.jsonl")))?;
        Ok(Self { dir: dir.to_path_buf(), seen })
    }

    /// The state directory (the staged tree is its `files/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keys_survive_reopening_and_forgetting() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeState::open(dir.path(), "s3://b/p/").unwrap();
        let etag = |e: &str| Version { etag: Some(e.into()), ..Default::default() };
        s.seen.record("a.txt", etag("\"e1\"")).unwrap();
        s.seen.record("d/b.txt", Version { mtime: Some(5), size: Some(3), etag: None }).unwrap();
        s.seen.record("a.txt", etag("\"e2\"")).unwrap();
        s.seen.forget("d/b.txt").unwrap();
        drop(s);
        // A torn last line, as a crash leaves it.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("seen.jsonl")).unwrap();
        f.write_all(b"{\"k\":\"c").unwrap();
        let s = VolumeState::open(dir.path(), "s3://b/p/").unwrap();
        assert_eq!(s.seen.get("a.txt"), Some(etag("\"e2\"")));
        assert!(etag("e2").matches(&etag("\"e2\"")) && !etag("e1").matches(&etag("e2")));
        let at = |m, s| Version { etag: None, mtime: Some(m), size: Some(s) };
        assert!(at(5, 3).matches(&Version { etag: Some("x".into()), ..at(5, 3) }) && !at(5, 3).matches(&at(6, 3)));
        assert_eq!(s.seen.get("d/b.txt"), None);
        assert!(s.seen.any_under("") && !s.seen.any_under("d"));
    }

    #[test]
    fn another_uri_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        VolumeState::open(dir.path(), "s3://b/p/").unwrap();
        let err = VolumeState::open(dir.path(), "s3://b/q/").err().unwrap();
        assert!(err.to_string().contains("s3://b/p/"), "{err}");
    }

    #[test]
    fn origins_travel_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::File::create(&p).unwrap();
        assert_eq!(origin_of(&f).unwrap(), None);
        let o = Origin { key: "k/f".into(), etag: Some("\"x\"".into()), hydrated: false };
        set_origin(&f, &o).unwrap();
        std::fs::rename(&p, dir.path().join("g")).unwrap();
        assert_eq!(origin_at(&dir.path().join("g")).unwrap(), Some(o));
        clear_origin_at(&dir.path().join("g")).unwrap();
        clear_origin_at(&dir.path().join("g")).unwrap();
        assert_eq!(origin_at(&dir.path().join("g")).unwrap(), None);
        assert!(!is_listed(dir.path()).unwrap());
        mark_listed(dir.path()).unwrap();
        assert!(is_listed(dir.path()).unwrap());
    }
}
