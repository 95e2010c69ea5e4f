//! Input integrity history: the checksums of each input URI, recorded in the data store so that
//! every node sharing the store can warn when an input's content differs from its last use.

use crate::checksum::Checksums;
use crate::store::data::DataStore;
use crate::store::StoreError;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What was read from one URI, once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntegrityRecord {
    /// The input file's URI.
    pub uri: String,
    /// Its size.
    pub size: u64,
    /// The version (ETag) that was read.
    pub version: String,
    /// Its checksums.
    pub checksums: Checksums,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Which host recorded it.
    pub host: String,
}

fn record_rel(uri: &str) -> String {
    format!("integrity/{}.json", hex::encode(Sha256::digest(uri.as_bytes())))
}

/// Records `new` for its URI and returns a warning when the previous record differs.
pub async fn record(ds: &DataStore, new: &IntegrityRecord) -> Result<Option<String>, StoreError> {
    let key = ds.record_key(&record_rel(&new.uri));
    let shown = ds.handle.uri_of(key.as_ref());
    let err = |e| StoreError::from_object_store(&shown, ds.handle.bucket.as_deref(), e);
    let previous: Option<IntegrityRecord> = match ds.handle.inner.get(&key).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(err)?;
            match serde_json::from_slice(&bytes) {
                Ok(rec) => Some(rec),
                Err(e) => {
                    tracing::warn!("{shown}: unreadable integrity record ({e}); replacing it");
                    None
                }
            }
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(err(e)),
    };
    let warning = previous.as_ref().and_then(|old| {
        (old.checksums.sha256 != new.checksums.sha256).then(|| {
            format!(
                "input {} differs from its last use (that content first recorded {} on {}): sha256 {} -> {}, md5 {} -> {}",
                new.uri,
                old.recorded_at,
                old.host,
                old.checksums.sha256,
                new.checksums.sha256,
                old.checksums.md5,
                new.checksums.md5
            )
        })
    });
    // The same content read again rewrites nothing: only when or where it was read would change.
    let same = previous.as_ref().is_some_and(|old| {
        (&old.uri, old.size, &old.version, &old.checksums) == (&new.uri, new.size, &new.version, &new.checksums)
    });
    if !same {
        let body = serde_json::to_vec_pretty(new).unwrap_or_default();
        ds.handle.inner.put(&key, PutPayload::from(body)).await.map_err(err)?;
    }
    Ok(warning)
}

pub use crate::util::hostname;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreHandle;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn rec(sha: &str) -> IntegrityRecord {
        IntegrityRecord {
            uri: "s3://b/k".into(),
            size: 1,
            version: "e1".into(),
            checksums: Checksums { md5: "m".into(), sha1: "s".into(), sha256: sha.into() },
            recorded_at: "t".into(),
            host: "h".into(),
        }
    }

    #[tokio::test]
    async fn warns_when_content_differs() {
        let ds = DataStore {
            handle: Arc::new(StoreHandle::new("mem://d", Arc::new(InMemory::new()))),
            prefix: "p".into(),
            url: "mem://d/p".into(),
            local_dir: None,
        };
        assert_eq!(record(&ds, &rec("aa")).await.unwrap(), None);
        assert_eq!(record(&ds, &rec("aa")).await.unwrap(), None);
        let w = record(&ds, &rec("bb")).await.unwrap().expect("a warning");
        assert!(w.contains("s3://b/k") && w.contains("aa -> bb"), "{w}");
    }
}
