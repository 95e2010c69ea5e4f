//! Packs: many small datums uploaded as one object, a plain tar that other tools can read.
//!
//! A sync puts files below a size threshold into packs of tens of MiB instead of one object
//! each. Every file stays a datum of its own: its record names the pack, the offset of its
//! bytes in it and its checksums. The records of one pack are stored together, in one pack
//! record (`packs/<PACK>.json`) written once the pack is stored, so a pack of thousands of
//! files costs two requests instead of two per file. A packed datum's id is its pack's id (a
//! ULID whose low [`MEMBER_BITS`] bits are zero) with its member number in those bits, so a
//! datum is found by its id alone, without an index.
//!
//! Purging a packed datum rewrites its pack with zeros over that datum's bytes: the tar stays
//! valid, the other members keep their offsets, and their reads, checked against their own
//! sha256 rather than the pack's ETag, go on as before.

use super::{lock_local, now, Catalog, CatalogError, DatumRecord};
use crate::store::StoreError;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Bits of a packed datum's id that hold its member number.
pub const MEMBER_BITS: u32 = 20;
/// Members a pack holds at most.
pub const MAX_MEMBERS: usize = 1 << MEMBER_BITS;
const MEMBER_MASK: u128 = (1 << MEMBER_BITS) - 1;

/// A new pack id: a ULID (time-ordered like datum ids) with the member bits clear.
pub fn new_pack_id() -> String {
    ulid::Ulid(ulid::Ulid::generate().0 & !MEMBER_MASK).to_string()
}

/// The id of member `n` of pack `pack`.
pub fn member_id(pack: &str, n: usize) -> Option<String> {
    let p = ulid::Ulid::from_string(pack).ok()?;
    (n < MAX_MEMBERS && p.0 & MEMBER_MASK == 0).then(|| ulid::Ulid(p.0 | n as u128).to_string())
}

/// The pack a datum id would belong to if it were packed.
pub fn pack_of(id: &str) -> Option<String> {
    Some(ulid::Ulid(ulid::Ulid::from_string(id).ok()?.0 & !MEMBER_MASK).to_string())
}

/// One pack and the records of every datum in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackRecord {
    /// The pack id.
    pub id: String,
    /// The pack object's key in the data store.
    pub key: String,
    /// Its URI.
    pub object_uri: String,
    /// Its size.
    pub size: u64,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// The execution whose sync made it.
    pub execution: Option<String>,
    /// Its datums, in the order of their bytes in the pack.
    pub datums: Vec<DatumRecord>,
}

/// Pack records kept in memory: looking up many datums of one pack reads its record once.
pub(super) type PackCache = moka::sync::Cache<String, Arc<PackRecord>>;

/// The pack record cache of a new catalog.
pub(super) fn new_cache() -> PackCache {
    moka::sync::Cache::builder().max_capacity(16).build()
}

fn pack_rel(id: &str) -> String {
    format!("packs/{id}.json")
}

impl Catalog {
    /// Stores a pack's record (create-only; storing the same record again, as a resumed sync
    /// does, is a no-op).
    pub async fn put_pack(&self, rec: &PackRecord) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&pack_rel(&rec.id));
        match self.put(&key, rec, PutMode::Create).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                match self.read::<PackRecord>(&key).await? {
                    Some((old, _)) if old.key == rec.key && old.datums.len() == rec.datums.len() => Ok(()),
                    _ => Err(CatalogError::BadName {
                        name: rec.id.clone(),
                        reason: "a different pack record already has this id".into(),
                    }),
                }
            }
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// The pack `id`'s record, if there is one.
    pub async fn pack(&self, id: &str) -> Result<Option<Arc<PackRecord>>, CatalogError> {
        if let Some(rec) = self.packs.get(id) {
            return Ok(Some(rec));
        }
        let Some((rec, _)) = self.read::<PackRecord>(&self.ds.record_key(&pack_rel(id))).await? else {
            return Ok(None);
        };
        let rec = Arc::new(rec);
        self.packs.insert(id.to_string(), rec.clone());
        Ok(Some(rec))
    }

    /// The packed datum `id`, if it is one.
    pub(super) async fn packed_datum(&self, id: &str) -> Result<Option<DatumRecord>, CatalogError> {
        let Some(pack) = pack_of(id) else { return Ok(None) };
        Ok(self.pack(&pack).await?.and_then(|p| p.datums.iter().find(|d| d.id == id).cloned()))
    }

    /// Every pack record, in no particular order.
    pub async fn packs(&self) -> Result<Vec<PackRecord>, CatalogError> {
        self.read_all("packs").await
    }

    /// Overwrites a packed datum's bytes in its pack with zeros (purge). Concurrent purges of
    /// one pack never undo each other: the rewrite is conditional on the pack's version (a lock
    /// in a local store).
    pub(super) async fn blank_in_pack(&self, rec: &DatumRecord) -> Result<(), CatalogError> {
        let Some(place) = &rec.packed else { return Ok(()) };
        let key = Path::from(rec.key.as_str());
        let _lock = match &self.ds.local_dir {
            Some(dir) => Some(lock_local(dir, &pack_rel(&place.pack)).await.map_err(|e| StoreError::Other {
                uri: self.ds.uri_of(&key),
                cause: format!("could not lock the pack for rewriting: {e}"),
            })?),
            None => None,
        };
        for _ in 0..super::CAS_TRIES {
            let res = match self.ds.handle.inner.get(&key).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(self.store_err(&key, e).into()),
            };
            let version = UpdateVersion { e_tag: res.meta.e_tag.clone(), version: res.meta.version.clone() };
            let mut bytes = res.bytes().await.map_err(|e| self.store_err(&key, e))?.to_vec();
            let range = place.offset as usize..(place.offset + rec.size) as usize;
            let Some(member) = bytes.get_mut(range) else {
                return Err(CatalogError::Malformed {
                    uri: self.ds.uri_of(&key),
                    reason: format!("the pack is too short to hold datum://{}", rec.id),
                });
            };
            if member.iter().all(|&b| b == 0) {
                return Ok(());
            }
            member.fill(0);
            let mode = if self.ds.local_dir.is_some() { PutMode::Overwrite } else { PutMode::Update(version) };
            let opts = PutOptions { mode, ..Default::default() };
            match self.ds.handle.inner.put_opts(&key, PutPayload::from(bytes), opts).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(self.store_err(&key, e).into()),
            }
        }
        Err(CatalogError::Contended { uri: self.ds.uri_of(&key), tries: super::CAS_TRIES })
    }
}

/// A pack record made now.
pub fn record(id: String, key: String, object_uri: String, size: u64, execution: Option<String>) -> PackRecord {
    PackRecord { id, key, object_uri, size, created_at: now(), execution, datums: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_lead_back_to_their_pack() {
        let pack = new_pack_id();
        assert_eq!(member_id(&pack, 0).as_deref(), Some(pack.as_str()));
        let m = member_id(&pack, 12345).unwrap();
        assert!(super::super::is_id(&m));
        assert_ne!(m, pack);
        assert_eq!(pack_of(&m).as_deref(), Some(pack.as_str()));
        assert!(member_id(&pack, MAX_MEMBERS).is_none());
        assert!(member_id(&m, 1).is_none(), "a member id is not a pack id");
        assert!(m > pack && member_id(&pack, 12346).unwrap() > m, "members sort in pack order");
    }
}
