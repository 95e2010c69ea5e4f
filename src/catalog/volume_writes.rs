//! Which execution last wrote a bucket key through a volume sync.
//!
//! Each volume sync that wrote or deleted keys leaves one create-only record of them under
//! `index/volume-syncs/<BUCKET>/<TIME>-<ID>.json`, where `<BUCKET>` names the bucket (a hash
//! of `scheme://bucket`, so every prefix of one bucket shares it) and `<TIME>` sorts the
//! records oldest first. `datumfs lineage s3://bucket/key` lists them and reads from the
//! newest back until one names the key: one request per sync, none per key written.

use super::{new_id, Catalog, CatalogError, VolumeWrite};
use object_store::PutMode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The keys one volume sync wrote or deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeSyncRecord {
    /// The execution whose mount synced.
    pub execution: String,
    /// When (RFC 3339).
    pub at: String,
    /// What it wrote and deleted.
    pub writes: Vec<VolumeWrite>,
}

/// The bucket part of a key URI (`s3://bucket` of `s3://bucket/a/b`).
fn bucket_of(uri: &str) -> &str {
    let after_scheme = uri.find("://").map(|i| i + 3).unwrap_or(0);
    match uri[after_scheme..].find('/') {
        Some(i) => &uri[..after_scheme + i],
        None => uri,
    }
}

fn dir_of(uri: &str) -> String {
    let h = hex::encode(Sha256::digest(bucket_of(uri).as_bytes()));
    format!("index/volume-syncs/{}", &h[..16])
}

impl Catalog {
    /// Records what one volume sync of `execution` wrote and deleted (all in one bucket).
    pub async fn put_volume_sync(&self, execution: &str, writes: Vec<VolumeWrite>) -> Result<(), CatalogError> {
        let Some(first) = writes.first() else { return Ok(()) };
        let at = super::now();
        let name = format!("{}/{}-{}.json", dir_of(&first.uri), at.replace(':', ""), new_id());
        let key = self.ds.record_key(&name);
        let rec = VolumeSyncRecord { execution: execution.to_string(), at, writes };
        self.put(&key, &rec, PutMode::Create).await.map_err(|e| self.store_err(&key, e))?;
        Ok(())
    }

    /// The last write (or delete) of the key at `uri` by a volume sync, and its execution.
    pub async fn last_volume_write(&self, uri: &str) -> Result<Option<(String, VolumeWrite)>, CatalogError> {
        let mut keys = self.list_keys(&dir_of(uri)).await?;
        keys.sort();
        for key in keys.iter().rev() {
            let Some((rec, _)) = self.read::<VolumeSyncRecord>(key).await? else { continue };
            if let Some(w) = rec.writes.into_iter().rev().find(|w| w.uri == uri) {
                return Ok(Some((rec.execution, w)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_bucket_share_a_directory() {
        assert_eq!(bucket_of("s3://vol/proj/a.txt"), "s3://vol");
        assert_eq!(dir_of("s3://vol/a"), dir_of("s3://vol/other/b"));
        assert_ne!(dir_of("s3://vol/a"), dir_of("s3://vol2/a"));
    }
}
