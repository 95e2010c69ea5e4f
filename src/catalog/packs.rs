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

/// One pack and the records of every datum in it. Stored with what its datums share written
/// once (see [`StoredPack`]); records written before that, with every datum whole, still read.
#[derive(Debug, Clone, PartialEq)]
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

/// A pack record as stored. A pack's datums share their store, key, object, creation time,
/// execution and pack: those are written once, and each datum is its path, size, offset,
/// checksums and metadata (about a third of a whole datum record). A pack whose datums do not
/// all share them is stored with every datum whole, as records were before.
#[derive(Serialize)]
struct StoredPack<'a> {
    id: &'a str,
    key: &'a str,
    object_uri: &'a str,
    size: u64,
    created_at: &'a str,
    execution: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<StoredMember<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datums: Option<&'a [DatumRecord]>,
}

/// One datum of a [`StoredPack`]. Its id is left out when it is its place's member id.
#[derive(Serialize)]
struct StoredMember<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    path: &'a str,
    size: u64,
    offset: u64,
    checksums: &'a crate::checksum::Checksums,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: &'a Option<String>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    properties: &'a serde_json::Map<String, serde_json::Value>,
}

impl PackRecord {
    /// Its datums as members of a [`StoredPack`], if they all share the pack's fields.
    fn members(&self) -> Option<(&str, Vec<StoredMember<'_>>)> {
        let store = self.datums.first()?.store.as_str();
        let shares = |d: &DatumRecord| {
            d.store == store
                && d.key == self.key
                && d.object_uri == self.object_uri
                && d.created_at == self.created_at
                && d.execution == self.execution
                && d.uri.strip_prefix("datum://") == Some(d.id.as_str())
                && d.packed.as_ref().is_some_and(|p| p.pack == self.id && p.pack_size == self.size)
        };
        if !self.datums.iter().all(shares) {
            return None;
        }
        let members = self.datums.iter().enumerate().map(|(n, d)| StoredMember {
            id: (member_id(&self.id, n).as_deref() != Some(d.id.as_str())).then_some(d.id.as_str()),
            path: &d.path,
            size: d.size,
            offset: d.packed.as_ref().map_or(0, |p| p.offset),
            checksums: &d.checksums,
            tags: &d.tags,
            alias: &d.alias,
            properties: &d.properties,
        });
        Some((store, members.collect()))
    }
}

impl Serialize for PackRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (store, members, datums) = match self.members() {
            Some((store, members)) => (Some(store), Some(members), None),
            None => (None, None, Some(self.datums.as_slice())),
        };
        StoredPack {
            id: &self.id,
            key: &self.key,
            object_uri: &self.object_uri,
            size: self.size,
            created_at: &self.created_at,
            execution: &self.execution,
            store,
            members,
            datums,
        }
        .serialize(serializer)
    }
}

/// A [`StoredPack`] read back, in either form.
#[derive(Deserialize)]
struct ReadPack {
    id: String,
    key: String,
    object_uri: String,
    size: u64,
    created_at: String,
    execution: Option<String>,
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    members: Option<Vec<ReadMember>>,
    #[serde(default)]
    datums: Vec<DatumRecord>,
}

/// A [`StoredMember`] read back.
#[derive(Deserialize)]
struct ReadMember {
    #[serde(default)]
    id: Option<String>,
    path: String,
    size: u64,
    offset: u64,
    checksums: crate::checksum::Checksums,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for PackRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let read = ReadPack::deserialize(deserializer)?;
        let mut datums = read.datums;
        if let Some(members) = read.members {
            let store = read.store.ok_or_else(|| D::Error::missing_field("store"))?;
            datums.reserve_exact(members.len());
            for (n, m) in members.into_iter().enumerate() {
                let id = match m.id {
                    Some(id) => id,
                    None => member_id(&read.id, n)
                        .ok_or_else(|| D::Error::custom(format!("member {n} of pack {} has no id", read.id)))?,
                };
                datums.push(DatumRecord {
                    uri: format!("datum://{id}"),
                    id,
                    store: store.clone(),
                    key: read.key.clone(),
                    object_uri: read.object_uri.clone(),
                    size: m.size,
                    checksums: m.checksums,
                    created_at: read.created_at.clone(),
                    execution: read.execution.clone(),
                    path: m.path,
                    tags: m.tags,
                    alias: m.alias,
                    properties: m.properties,
                    packed: Some(super::PackedIn { pack: read.id.clone(), offset: m.offset, pack_size: read.size }),
                });
            }
        }
        Ok(PackRecord {
            id: read.id,
            key: read.key,
            object_uri: read.object_uri,
            size: read.size,
            created_at: read.created_at,
            execution: read.execution,
            datums,
        })
    }
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
        // Without indentation: a record of thousands of datums is not read by eye, and
        // indentation made it a fifth bigger.
        let body = serde_json::to_vec(rec).map_err(|e| CatalogError::Malformed {
            uri: self.ds.uri_of(&key),
            reason: format!("could not write the pack record: {e}"),
        })?;
        match self.put_body(&key, body, PutMode::Create).await {
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

    fn pack_of_three() -> PackRecord {
        let id = new_pack_id();
        let mut rec = record(
            id.clone(),
            format!("data/e/.packs/{id}.tar"),
            format!("s3://b/data/e/.packs/{id}.tar"),
            4096,
            Some("e".into()),
        );
        for n in 0..3 {
            let datum = member_id(&id, n).unwrap();
            rec.datums.push(DatumRecord {
                uri: format!("datum://{datum}"),
                id: datum,
                store: "s3://b".into(),
                key: rec.key.clone(),
                object_uri: rec.object_uri.clone(),
                size: 100 + n as u64,
                checksums: crate::checksum::Checksums {
                    md5: format!("{n:032x}"),
                    sha1: format!("{n:040x}"),
                    sha256: format!("{n:064x}"),
                },
                created_at: rec.created_at.clone(),
                execution: rec.execution.clone(),
                path: format!("dir/f{n}.bin"),
                tags: if n == 1 { vec!["t".into()] } else { Vec::new() },
                alias: (n == 2).then(|| "best".into()),
                properties: if n == 0 {
                    serde_json::json!({"k": [1, 2]}).as_object().unwrap().clone()
                } else {
                    Default::default()
                },
                packed: Some(super::super::PackedIn {
                    pack: id.clone(),
                    offset: 512 + 1024 * n as u64,
                    pack_size: 4096,
                }),
            });
        }
        rec
    }

    #[test]
    fn a_pack_record_writes_what_its_datums_share_once_and_reads_back_whole() {
        let rec = pack_of_three();
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(text.matches(rec.object_uri.as_str()).count(), 1, "the object is named once: {text}");
        assert!(!text.contains("\"datums\""));
        assert_eq!(serde_json::from_str::<PackRecord>(&text).unwrap(), rec);
        let whole = serde_json::to_string(&StoredPack {
            id: &rec.id,
            key: &rec.key,
            object_uri: &rec.object_uri,
            size: rec.size,
            created_at: &rec.created_at,
            execution: &rec.execution,
            store: None,
            members: None,
            datums: Some(&rec.datums),
        })
        .unwrap();
        assert!(text.len() * 2 < whole.len(), "{} bytes against {} with every datum whole", text.len(), whole.len());
    }

    #[test]
    fn a_pack_record_written_with_every_datum_whole_still_reads() {
        let rec = pack_of_three();
        // The form every pack record had before: the struct's fields, every datum whole.
        let mut old = serde_json::json!({
            "id": rec.id, "key": rec.key, "object_uri": rec.object_uri, "size": rec.size,
            "created_at": rec.created_at, "execution": rec.execution,
        });
        old["datums"] = serde_json::to_value(&rec.datums).unwrap();
        assert_eq!(serde_json::from_value::<PackRecord>(old).unwrap(), rec);
    }

    #[test]
    fn datums_that_do_not_share_the_packs_fields_are_written_whole() {
        let mut rec = pack_of_three();
        rec.datums[1].created_at = "2020-01-01T00:00:00Z".into();
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains("\"datums\"") && !text.contains("\"members\""));
        assert_eq!(serde_json::from_str::<PackRecord>(&text).unwrap(), rec);
        // A member out of its place keeps its own id.
        let mut rec = pack_of_three();
        rec.datums.swap(0, 2);
        let back = serde_json::from_str::<PackRecord>(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn a_pack_record_without_its_store_is_refused_by_name() {
        let rec = pack_of_three();
        let mut v = serde_json::to_value(&rec).unwrap();
        v.as_object_mut().unwrap().remove("store");
        let err = serde_json::from_value::<PackRecord>(v).unwrap_err().to_string();
        assert!(err.contains("store"), "{err}");
    }
}
