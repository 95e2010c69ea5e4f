//! Errors from talking to an object store, each naming the URI it concerns.

use thiserror::Error;

/// A failed store operation, classified so callers (and users) can tell what to do.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    /// The URI could not be turned into a store (bad form, unknown scheme).
    #[error("{uri}: {reason}")]
    BadUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No credentials were found for a store that needs them.
    #[error("{uri}: no credentials found: {hint}")]
    MissingCredentials {
        /// The URI being opened.
        uri: String,
        /// Which variables or files would provide them.
        hint: String,
    },
    /// The bucket or container does not exist.
    #[error("{uri}: bucket '{bucket}' does not exist")]
    NoSuchBucket {
        /// The URI being read.
        uri: String,
        /// The missing bucket.
        bucket: String,
    },
    /// The object does not exist.
    #[error("{uri}: no such object")]
    NotFound {
        /// The missing object's URI.
        uri: String,
    },
    /// The credentials were refused.
    #[error("{uri}: access denied: {cause}")]
    AccessDenied {
        /// The URI being read.
        uri: String,
        /// The store's answer.
        cause: String,
    },
    /// The store refused the request's signature time: this machine's clock is off.
    #[error("{uri}: the store refused the request's time ({cause}): this machine's clock differs from the store's by more than it allows; set the clock right (NTP) and try again")]
    ClockSkewed {
        /// The URI being accessed.
        uri: String,
        /// The store's answer.
        cause: String,
    },
    /// The endpoint could not be reached (after retries).
    #[error("{uri}: store unreachable: {cause}")]
    Unreachable {
        /// The URI being read.
        uri: String,
        /// The network error.
        cause: String,
    },
    /// The object is no longer the version this mount pinned.
    #[error("{uri}: object changed since it was pinned (pinned version {pinned}, store now has {now})")]
    Changed {
        /// The object's URI.
        uri: String,
        /// The ETag or version pinned at resolution.
        pinned: String,
        /// What the store answered now (or "unknown" for a refused precondition).
        now: String,
    },
    /// The store lists a key that object_store refuses to parse (`.`/`..` or empty segments,
    /// control characters); the listing page that holds it cannot be used.
    #[error("{uri}: the store lists the key {key:?}, which is unsafe as a path ({reason}); list a prefix or wildcard that excludes it")]
    UnsafeKey {
        /// The URI being listed.
        uri: String,
        /// The offending key.
        key: String,
        /// Why it is unsafe.
        reason: String,
    },
    /// Anything else the store reported.
    #[error("{uri}: {cause}")]
    Other {
        /// The URI being accessed.
        uri: String,
        /// The store's error chain.
        cause: String,
    },
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. } | StoreError::Other { .. })
    }

    /// Classifies an object_store error for `uri`; `bucket` names the bucket when there is one.
    pub fn from_object_store(uri: &str, bucket: Option<&str>, err: object_store::Error) -> Self {
        let chain = error_chain(&err);
        let uri = uri.to_string();
        match err {
            object_store::Error::NotFound { .. } => {
                if chain.contains("NoSuchBucket") || chain.contains("ContainerNotFound") {
                    StoreError::NoSuchBucket { uri, bucket: bucket.unwrap_or_default().to_string() }
                } else {
                    StoreError::NotFound { uri }
                }
            }
            object_store::Error::Precondition { .. } => {
                StoreError::Changed { uri, pinned: "?".into(), now: "unknown (precondition failed)".into() }
            }
            object_store::Error::InvalidPath { source } => unsafe_key(uri, &source),
            _ if clock_skew(&chain) => StoreError::ClockSkewed { uri, cause: short_cause(&chain) },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StoreError::AccessDenied { uri, cause: short_cause(&chain) }
            }
            other if network_failure(&other) => StoreError::Unreachable { uri, cause: short_cause(&chain) },
            // object_store keeps HTTP status codes and S3 error codes out of its types: only the
            // message carries them.
            _ => classify_by_text(uri, bucket, &chain),
        }
    }
}

/// Whether the store refused a request for its time (S3 `RequestTimeTooSkewed`, GCS and others'
/// expired requests, Azure's date checks).
fn clock_skew(chain: &str) -> bool {
    ["RequestTimeTooSkewed", "RequestExpired", "RequestTimeExpired", "Request date header too old"]
        .iter()
        .any(|code| chain.contains(code))
}

/// Whether the request never got an answer (connecting, sending, timing out), by the types in
/// the error's chain.
fn network_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted
            );
        }
        cur = e.source();
    }
    false
}

fn unsafe_key(uri: String, err: &object_store::path::Error) -> StoreError {
    let text = err.to_string();
    let key = text.split('"').nth(1).unwrap_or_default().to_string();
    let reason = if text.contains("empty segment") {
        "an empty path segment"
    } else if key.split('/').any(|s| s == "." || s == "..") {
        "a '.' or '..' segment"
    } else {
        "a control character"
    };
    StoreError::UnsafeKey { uri, key, reason: reason.to_string() }
}

impl StoreError {
    /// The same error, naming `uri` (the URI as the user wrote it) instead.
    pub fn for_uri(self, shown: &str) -> Self {
        let uri = shown.to_string();
        match self {
            StoreError::BadUri { reason, .. } => StoreError::BadUri { uri, reason },
            StoreError::MissingCredentials { hint, .. } => StoreError::MissingCredentials { uri, hint },
            StoreError::NoSuchBucket { bucket, .. } => StoreError::NoSuchBucket { uri, bucket },
            StoreError::NotFound { .. } => StoreError::NotFound { uri },
            StoreError::AccessDenied { cause, .. } => StoreError::AccessDenied { uri, cause },
            StoreError::Unreachable { cause, .. } => StoreError::Unreachable { uri, cause },
            StoreError::Changed { pinned, now, .. } => StoreError::Changed { uri, pinned, now },
            StoreError::UnsafeKey { key, reason, .. } => StoreError::UnsafeKey { uri, key, reason },
            StoreError::Other { cause, .. } => StoreError::Other { uri, cause },
            StoreError::ClockSkewed { cause, .. } => StoreError::ClockSkewed { uri, cause },
        }
    }
}

fn classify_by_text(uri: String, bucket: Option<&str>, chain: &str) -> StoreError {
    let lower = chain.to_ascii_lowercase();
    if chain.contains("NoSuchBucket") {
        return StoreError::NoSuchBucket { uri, bucket: bucket.unwrap_or_default().to_string() };
    }
    if chain.contains("AccessDenied")
        || chain.contains("InvalidAccessKeyId")
        || chain.contains("SignatureDoesNotMatch")
        || lower.contains("403 forbidden")
        || lower.contains("401 unauthorized")
    {
        return StoreError::AccessDenied { uri, cause: short_cause(chain) };
    }
    if lower.contains("connection refused")
        || lower.contains("error sending request")
        || lower.contains("dns error")
        || lower.contains("timed out")
        || lower.contains("connect")
    {
        return StoreError::Unreachable { uri, cause: short_cause(chain) };
    }
    StoreError::Other { uri, cause: short_cause(chain) }
}

/// The error and its sources as one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// Keeps a store's error readable on one line: the S3/XML error code and message when there is
/// one, else the chain without newlines, bounded in length.
fn short_cause(chain: &str) -> String {
    if let Some(code) = between(chain, "<Code>", "</Code>") {
        let status = between(chain, "status code: ", ":").map(|s| format!("{} ", s.trim())).unwrap_or_default();
        return match between(chain, "<Message>", "</Message>") {
            Some(msg) => format!("{status}{code}: {msg}"),
            None => format!("{status}{code}"),
        };
    }
    if let Some(i) = chain.find("Connection refused") {
        return chain[i..].split(':').next().unwrap_or("Connection refused").trim().to_string();
    }
    let one_line: String = chain.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 400 {
        let mut end = 400;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &one_line[..end])
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn http_store(url: &str, timeout_ms: u64) -> object_store::http::HttpStore {
        let options = object_store::ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(std::time::Duration::from_millis(timeout_ms))
            .with_connect_timeout(std::time::Duration::from_millis(timeout_ms));
        let retry = object_store::RetryConfig { max_retries: 0, ..Default::default() };
        object_store::http::HttpBuilder::new()
            .with_url(url)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_closed_port_and_a_silent_server_are_unreachable() {
        // A port nothing listens on: the connection is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = http_store(&url, 2000).head(&object_store::path::Path::from("k")).await.unwrap_err();
        let e = StoreError::from_object_store("http://x/k", None, err);
        assert!(matches!(e, StoreError::Unreachable { .. }) && e.is_transient(), "{e:?}");

        // A server that accepts and never answers: the request times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let err = http_store(&url, 300).head(&object_store::path::Path::from("k")).await.unwrap_err();
        let e = StoreError::from_object_store("http://x/k", None, err);
        assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().starts_with("http://x/k: store unreachable"), "{e}");
        drop(silent);
    }
}
