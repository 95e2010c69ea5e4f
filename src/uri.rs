//! Input URI forms: what a user may write after `--input NAME=`.
//!
//! Parsing only: no I/O. Local paths are made absolute here (against the working directory)
//! so that a daemon that changed directory still finds them.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A URI that cannot be used as an input source.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UriError {
    /// The URI has a scheme datumfs does not serve.
    #[error("'{uri}': unknown scheme '{scheme}' (expected s3://, gs://, az://, abfs(s)://, http(s)://, file:// or a local path)")]
    UnknownScheme {
        /// The URI as given.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URI is not well formed.
    #[error("'{uri}': {reason}")]
    Malformed {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which kind of store a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Amazon S3 and S3-compatible stores.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage / ADLS Gen2.
    Azure,
    /// OpenStack Swift (`swift://CONTAINER/PATH`).
    Swift,
    /// A public file over HTTP(S).
    Http,
    /// The local filesystem.
    File,
    /// A datum of the catalog (`datum://ID` or `datum://ALIAS`); `key` holds the name.
    Datum,
    /// A dataset version of the catalog (`dataset://NAME/VERSION|ALIAS`); `key` holds
    /// `NAME/VERSION`.
    Dataset,
    /// A model version of the catalog (`model://NAME/VERSION|latest|approved`); `key` holds
    /// `NAME/WHICH`.
    Model,
}

/// What part of the store a URI selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Exactly one object.
    Object,
    /// Everything below a prefix (the URI ended with `/`, or names a local directory).
    Prefix,
    /// Keys matching a glob; `fixed_prefix` is the part before the first wildcard, cut at `/`.
    Wildcard {
        /// The listing prefix (ends with `/` or is empty).
        fixed_prefix: String,
    },
}

/// A parsed input URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUri {
    /// The URI as the user wrote it.
    pub original: String,
    /// The kind of store.
    pub scheme: Scheme,
    /// The store's own URL: `s3://bucket`, `gs://bucket`, `az://container`, `https://host:port`, `file://`.
    pub store_url: String,
    /// Bucket or container, where the store has one.
    pub bucket: Option<String>,
    /// The key (or key pattern) inside the store, without a leading `/`.
    pub key: String,
    /// What the key selects.
    pub selection: Selection,
}

fn has_wildcard(s: &str) -> bool {
    s.contains('*') || s.contains('?')
}

fn selection_for(key: &str) -> Selection {
    if has_wildcard(key) {
        let first = key.find(['*', '?']).unwrap_or(key.len());
        let cut = key[..first].rfind('/').map(|i| i + 1).unwrap_or(0);
        Selection::Wildcard { fixed_prefix: key[..cut].to_string() }
    } else if key.is_empty() || key.ends_with('/') {
        Selection::Prefix
    } else {
        Selection::Object
    }
}

/// Parses one input URI. `cwd` makes relative local paths absolute.
pub fn parse(uri: &str, cwd: &Path) -> Result<SourceUri, UriError> {
    let malformed = |reason: &str| UriError::Malformed { uri: uri.to_string(), reason: reason.to_string() };
    if uri.is_empty() {
        return Err(malformed("empty URI"));
    }
    if uri.chars().any(|c| c.is_control()) {
        return Err(malformed("contains control characters"));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        if uri.contains(':') && !uri.starts_with('/') && !uri.starts_with('.') {
            let scheme = uri.split(':').next().unwrap_or_default();
            if !scheme.contains('/') && scheme.len() > 1 {
                return Err(UriError::UnknownScheme { uri: uri.to_string(), scheme: scheme.to_string() });
            }
        }
        return local_path(uri, cwd, uri);
    };
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => bucket_uri(uri, Scheme::S3, "s3", rest),
        "gs" | "gcs" => bucket_uri(uri, Scheme::Gcs, "gs", rest),
        "az" | "azure" => bucket_uri(uri, Scheme::Azure, "az", rest),
        "swift" => bucket_uri(uri, Scheme::Swift, "swift", rest),
        "abfs" | "abfss" => {
            let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
            let Some((container, _account)) = authority.split_once('@') else {
                return Err(malformed("expected abfs(s)://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH"));
            };
            if container.is_empty() {
                return Err(malformed("no container name"));
            }
            Ok(SourceUri {
                original: uri.to_string(),
                scheme: Scheme::Azure,
                store_url: format!("{}://{authority}", scheme.to_ascii_lowercase()),
                bucket: Some(container.to_string()),
                key: key.to_string(),
                selection: selection_for(key),
            })
        }
        "http" | "https" => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() {
                return Err(malformed("no host"));
            }
            if path.contains('?') || path.contains('#') {
                return Err(malformed("query strings and fragments are not supported in http(s) inputs"));
            }
            if path.is_empty() || path.ends_with('/') || has_wildcard(path) {
                return Err(malformed(
                    "an http(s) input must name one file (directories and wildcards need a store that can list)",
                ));
            }
            Ok(SourceUri {
                original: uri.to_string(),
                scheme: Scheme::Http,
                store_url: format!("{}://{host}", scheme.to_ascii_lowercase()),
                bucket: None,
                key: path.to_string(),
                selection: Selection::Object,
            })
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(malformed("file:// URIs need an absolute path, as in file:///data/train"));
            }
            local_path(rest, cwd, uri)
        }
        "datum" => {
            let name = rest.trim_end_matches('/');
            if name.is_empty() || name.contains('/') {
                return Err(malformed("a datum URI is datum://ID or datum://ALIAS"));
            }
            Ok(SourceUri {
                original: uri.to_string(),
                scheme: Scheme::Datum,
                store_url: "datum://".into(),
                bucket: None,
                key: name.to_string(),
                selection: Selection::Object,
            })
        }
        "dataset" | "model" => {
            let name = rest.trim_end_matches('/');
            let valid =
                name.split_once('/').is_some_and(|(n, v)| name_problem(n).is_none() && name_problem(v).is_none());
            let (scheme, store_url, form) = if scheme.eq_ignore_ascii_case("dataset") {
                (
                    Scheme::Dataset,
                    "dataset://",
                    "a dataset URI is dataset://NAME/VERSION or dataset://NAME/ALIAS (letters, digits, '.', '_', '-')",
                )
            } else {
                (
                    Scheme::Model,
                    "model://",
                    "a model URI is model://NAME/VERSION (v1, v2, ...), model://NAME/latest or model://NAME/approved",
                )
            };
            if !valid {
                return Err(malformed(form));
            }
            Ok(SourceUri {
                original: uri.to_string(),
                scheme,
                store_url: store_url.into(),
                bucket: None,
                key: name.to_string(),
                selection: Selection::Object,
            })
        }
        other => Err(UriError::UnknownScheme { uri: uri.to_string(), scheme: other.to_string() }),
    }
}

fn bucket_uri(uri: &str, scheme: Scheme, canonical: &str, rest: &str) -> Result<SourceUri, UriError> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(UriError::Malformed { uri: uri.to_string(), reason: "no bucket name".into() });
    }
    if has_wildcard(bucket) || bucket.contains(['\\', ' ']) {
        return Err(UriError::Malformed {
            uri: uri.to_string(),
            reason: format!("'{bucket}' is not a valid bucket name"),
        });
    }
    Ok(SourceUri {
        original: uri.to_string(),
        scheme,
        store_url: format!("{canonical}://{bucket}"),
        bucket: Some(bucket.to_string()),
        key: key.to_string(),
        selection: selection_for(key),
    })
}

/// A local path (plain or from `file://`). A directory is a prefix, as if it ended with `/`.
fn local_path(path: &str, cwd: &Path, original: &str) -> Result<SourceUri, UriError> {
    let mut abs: PathBuf = if Path::new(path).is_absolute() { PathBuf::from(path) } else { cwd.join(path) };
    if !has_wildcard(path) {
        if let Ok(canon) = abs.canonicalize() {
            let is_dir = canon.is_dir();
            abs = canon;
            if is_dir {
                let mut s = abs.to_string_lossy().into_owned();
                if !s.ends_with('/') {
                    s.push('/');
                }
                abs = PathBuf::from(s);
            }
        }
    }
    let text = abs.to_str().ok_or_else(|| UriError::Malformed {
        uri: original.to_string(),
        reason: "local paths must be valid UTF-8".into(),
    })?;
    let key = text.trim_start_matches('/').to_string();
    Ok(SourceUri {
        original: original.to_string(),
        scheme: Scheme::File,
        store_url: "file://".to_string(),
        bucket: None,
        selection: selection_for(&key),
        key,
    })
}

/// What is wrong with a catalog name (dataset, version, alias), if anything: 1 to 128 characters,
/// letters, digits, '.', '_' and '-', starting with a letter or a digit.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 128 {
        return Some("must be 1 to 128 characters long");
    }
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Some("may only hold letters, digits, '.', '_' and '-'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(uri: &str) -> SourceUri {
        parse(uri, Path::new("/work")).unwrap()
    }

    #[test]
    fn s3_forms() {
        let u = p("s3://bucket/train/");
        assert_eq!((u.store_url.as_str(), u.key.as_str()), ("s3://bucket", "train/"));
        assert_eq!(u.selection, Selection::Prefix);
        assert_eq!(p("s3://bucket/labels.csv").selection, Selection::Object);
        assert_eq!(p("s3://bucket").selection, Selection::Prefix);
        assert_eq!(p("s3://b/images/*.jpg").selection, Selection::Wildcard { fixed_prefix: "images/".into() });
        assert_eq!(p("s3://b/a/b**/x?.txt").selection, Selection::Wildcard { fixed_prefix: "a/".into() });
        assert_eq!(p("s3://b/*.txt").selection, Selection::Wildcard { fixed_prefix: "".into() });
    }

    #[test]
    fn other_clouds() {
        assert_eq!(p("gs://bk/x").store_url, "gs://bk");
        assert_eq!(p("az://ctr/x/").bucket.as_deref(), Some("ctr"));
        let a = p("abfss://ctr@acct.dfs.core.windows.net/dir/f.bin");
        assert_eq!((a.store_url.as_str(), a.key.as_str()), ("abfss://ctr@acct.dfs.core.windows.net", "dir/f.bin"));
        let h = p("https://example.com:8443/data/file.csv");
        assert_eq!((h.store_url.as_str(), h.key.as_str()), ("https://example.com:8443", "data/file.csv"));
    }

    #[test]
    fn local_forms() {
        let u = p("file:///data/set/f.bin");
        assert_eq!((u.scheme, u.key.as_str()), (Scheme::File, "data/set/f.bin"));
        assert_eq!(p("rel/x.bin").key, "work/rel/x.bin");
        let d = std::env::temp_dir();
        let u = parse(d.to_str().unwrap(), Path::new("/")).unwrap();
        assert_eq!(u.selection, Selection::Prefix);
    }

    #[test]
    fn errors_name_the_uri() {
        let e = parse("ftp://host/x", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("ftp://host/x") && e.to_string().contains("unknown scheme"));
        assert!(matches!(parse("s3:///key", Path::new("/")), Err(UriError::Malformed { .. })));
        assert!(matches!(parse("file://relative", Path::new("/")), Err(UriError::Malformed { .. })));
        assert!(matches!(parse("https://h/dir/", Path::new("/")), Err(UriError::Malformed { .. })));
        assert_eq!(parse("datum://best-model", Path::new("/")).unwrap().scheme, Scheme::Datum);
        assert!(matches!(parse("datum://a/b", Path::new("/")), Err(UriError::Malformed { .. })));
        assert_eq!(parse("dataset://abc/v1", Path::new("/")).unwrap().scheme, Scheme::Dataset);
        assert!(parse("dataset://abc", Path::new("/")).is_err());
        assert!(parse("dataset://abc/v1/x", Path::new("/")).is_err());
        assert_eq!(parse("model://churn/approved", Path::new("/")).unwrap().key, "churn/approved");
        assert!(parse("model://churn/", Path::new("/")).is_err());
        assert!(matches!(parse("mailto:x@y", Path::new("/")), Err(UriError::UnknownScheme { .. })));
        assert!(matches!(parse("", Path::new("/")), Err(UriError::Malformed { .. })));
    }
}
