//! Datum index records: the datums one sync made, in one record, so that listing datums costs
//! a request per sync rather than one per datum.
//!
//! A sync (or push) writes its index records after every datum record they name is stored
//! (`index/executions/<EXECUTION>/<ID>.json`): the records of the datums uploaded alone, and
//! the ids of the packs it made (a pack's record already holds its datums). Index records are
//! create-only and never change, as datum records never do. They only ever speed a listing up:
//! a datum made by a sync that was killed before its index record was written is still found,
//! from the datum records themselves.
//!
//! A store-wide listing that finds many index and pack records not yet merged (`COMPACT_AT`)
//! merges them into one compacted record (`index-compacted/<ID>.json.zst`, zstd-compressed
//! JSON naming the records it holds), so the next listing reads that one record and only the
//! records written since. A newer compacted record supersedes older ones, which are then deleted;
//! the index and pack records themselves stay (they are still the truth, and a listing that
//! finds no compacted record reads them).

use super::packs::PackRecord;
use super::{new_id, Catalog, CatalogError, DatumRecord, ExecutionRecord};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Datum records one index record holds at most (a sync making more writes several).
pub const INDEX_MAX: usize = 10_000;

/// Datum records read at once when the index does not hold them.
const READS_IN_FLIGHT: usize = 32;

/// The datums one sync or push made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatumIndex {
    /// The index record's id (a ULID).
    pub id: String,
    /// The execution whose sync (or push) made the datums.
    pub execution: String,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// The records of the datums uploaded alone.
    #[serde(default)]
    pub datums: Vec<DatumRecord>,
    /// The packs it made (their records hold their datums).
    #[serde(default)]
    pub packs: Vec<String>,
}

fn index_dir(execution: &str) -> String {
    format!("index/executions/{execution}")
}

/// Index and pack records a store-wide listing reads one by one before it merges them.
pub const COMPACT_AT: usize = 64;

/// Where compacted records live (beside `index/`, not under it).
const COMPACTED_DIR: &str = "index-compacted";

/// The largest a compacted record may decompress to (it is read from a store others may write).
const COMPACTED_MAX: u64 = 4 << 30;

/// Index and pack records merged into one, so that a listing reads one record for all of them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CompactedIndex {
    /// Its id (a ULID: the newest supersedes the others).
    id: String,
    /// When it was written (RFC 3339).
    created_at: String,
    /// The keys of the index records it holds.
    indexes: Vec<String>,
    /// The keys of the pack records it holds.
    packs: Vec<String>,
    /// Their datums.
    datums: Vec<DatumRecord>,
}

impl Catalog {
    /// Records that `execution` made `datums` and `packs`, whose records are all stored
    /// already.
    pub async fn put_index(
        &self,
        execution: &str,
        datums: Vec<DatumRecord>,
        packs: Vec<String>,
    ) -> Result<(), CatalogError> {
        if datums.is_empty() && packs.is_empty() {
            return Ok(());
        }
        let mut chunks: Vec<Vec<DatumRecord>> = Vec::new();
        let mut rest = datums;
        while rest.len() > INDEX_MAX {
            let tail = rest.split_off(INDEX_MAX);
            chunks.push(std::mem::replace(&mut rest, tail));
        }
        chunks.push(rest);
        let mut packs = Some(packs);
        for datums in chunks {
            let rec = DatumIndex {
                id: new_id(),
                execution: execution.to_string(),
                created_at: super::now(),
                datums,
                packs: packs.take().unwrap_or_default(),
            };
            let key = self.ds.record_key(&format!("{}/{}.json", index_dir(execution), rec.id));
            self.put(&key, &rec, PutMode::Create).await.map_err(|e| self.store_err(&key, e))?;
        }
        Ok(())
    }

    /// Every datum, oldest first (ids sort by time): from the newest compacted record, the index
    /// and pack records it does not hold, and only the datums no index record holds read one by
    /// one. A datum uploaded alone is listed only if its own record exists. Merges the records
    /// read one by one into a new compacted record once there are `COMPACT_AT` of them.
    pub async fn datums(&self) -> Result<Vec<DatumRecord>, CatalogError> {
        let (stored, index_keys, pack_keys, compacted) = futures::try_join!(
            self.list_keys("datums"),
            self.list_keys("index"),
            self.list_keys("packs"),
            self.list_keys(COMPACTED_DIR),
        )?;
        let stored: HashSet<String> =
            stored.iter().map(|k| k.filename().unwrap_or_default().trim_end_matches(".json").to_string()).collect();
        // The newest compacted record that can be read; a broken one is passed over.
        let mut compacted_keys = compacted;
        compacted_keys.sort_by(|a, b| b.as_ref().cmp(a.as_ref()));
        let mut base = CompactedIndex::default();
        let mut base_key = None;
        for key in &compacted_keys {
            match self.read_compacted(key).await {
                Ok(Some(c)) => {
                    base = c;
                    base_key = Some(key.clone());
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; listing without it"),
            }
        }
        let (held_indexes, held_packs): (HashSet<&str>, HashSet<&str>) =
            (base.indexes.iter().map(String::as_str).collect(), base.packs.iter().map(String::as_str).collect());
        let new_indexes: Vec<Path> = index_keys.into_iter().filter(|k| !held_indexes.contains(k.as_ref())).collect();
        let new_packs: Vec<Path> = pack_keys.into_iter().filter(|k| !held_packs.contains(k.as_ref())).collect();
        let (read_indexes, read_packs) =
            futures::try_join!(self.read_keys::<DatumIndex>(new_indexes), self.read_keys::<PackRecord>(new_packs),)?;
        let unmerged = read_indexes.len() + read_packs.len();
        let mut merged = CompactedIndex { id: new_id(), created_at: super::now(), ..base };
        for (key, i) in read_indexes {
            merged.indexes.push(key.to_string());
            merged.datums.extend(i.datums);
        }
        for (key, p) in read_packs {
            merged.packs.push(key.to_string());
            merged.datums.extend(p.datums);
        }
        if unmerged >= COMPACT_AT {
            if let Err(e) = self.put_compacted(&merged, base_key.as_ref()).await {
                tracing::warn!("compacting the datum index: {e}");
            }
        }

        let mut found: BTreeMap<String, DatumRecord> = BTreeMap::new();
        for d in merged.datums {
            // Packed datums have no record of their own; their pack's record holds them.
            if d.packed.is_some() || stored.contains(&d.id) {
                found.insert(d.id.clone(), d);
            }
        }
        let missing: Vec<String> = stored.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
        found.extend(self.read_datums(missing).await?.into_iter().map(|d| (d.id.clone(), d)));
        Ok(found.into_values().collect())
    }

    /// The compacted record at `key` (`None` if it was deleted meanwhile).
    async fn read_compacted(&self, key: &Path) -> Result<Option<CompactedIndex>, CatalogError> {
        let bytes = match self.ds.handle.inner.get(key).await {
            Ok(r) => r.bytes().await.map_err(|e| self.store_err(key, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(key, e).into()),
        };
        let malformed = |reason: String| CatalogError::Malformed { uri: self.ds.uri_of(key), reason };
        let raw = crate::util::zstd_decompress_bounded(&bytes, COMPACTED_MAX).map_err(malformed)?;
        serde_json::from_slice(&raw).map(Some).map_err(|e| malformed(e.to_string()))
    }

    /// Stores `merged` (create-only, under its own id) and deletes `superseded`, the compacted
    /// record it was built on.
    async fn put_compacted(&self, merged: &CompactedIndex, superseded: Option<&Path>) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&format!("{COMPACTED_DIR}/{}.json.zst", merged.id));
        let raw = serde_json::to_vec(merged)
            .map_err(|e| CatalogError::Malformed { uri: self.ds.uri_of(&key), reason: e.to_string() })?;
        let body = tokio::task::block_in_place(|| zstd::bulk::compress(&raw, 3))
            .map_err(|e| CatalogError::Malformed { uri: self.ds.uri_of(&key), reason: e.to_string() })?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.ds.handle.inner.put_opts(&key, PutPayload::from(body), opts).await.map_err(|e| self.store_err(&key, e))?;
        if let Some(old) = superseded {
            if let Err(e) = self.ds.handle.inner.delete(old).await {
                tracing::warn!("deleting the superseded compacted index {}: {e}", self.ds.uri_of(old));
            }
        }
        Ok(())
    }

    /// The datums of execution `rec`, oldest first: those its record names and those its
    /// index records hold (a sync that ended before the execution record was written leaves
    /// its datums there), each once.
    pub async fn execution_datums(&self, rec: &ExecutionRecord) -> Result<Vec<DatumRecord>, CatalogError> {
        let indexes: Vec<DatumIndex> = self.read_all(&index_dir(&rec.id)).await?;
        let mut found: BTreeMap<String, DatumRecord> = BTreeMap::new();
        let mut packs: Vec<String> = Vec::new();
        for i in indexes {
            found.extend(i.datums.into_iter().map(|d| (d.id.clone(), d)));
            packs.extend(i.packs);
        }
        packs.sort();
        packs.dedup();
        for id in packs {
            if let Some(p) = self.pack(&id).await? {
                found.extend(p.datums.iter().map(|d| (d.id.clone(), d.clone())));
            }
        }
        let missing: Vec<String> = rec.outputs.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
        found.extend(self.read_datums(missing).await?.into_iter().map(|d| (d.id.clone(), d)));
        Ok(found.into_values().collect())
    }

    /// The datums `ids`, read one by one (several at once).
    async fn read_datums(&self, ids: Vec<String>) -> Result<Vec<DatumRecord>, CatalogError> {
        futures::stream::iter(ids.into_iter().map(|id| async move { self.datum(&id).await }))
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};

    fn counted() -> (Catalog, std::sync::Arc<FaultyStore>) {
        use crate::store::{data::DataStore, StoreHandle};
        let store = std::sync::Arc::new(FaultyStore::new(std::sync::Arc::new(object_store::memory::InMemory::new())));
        let handle = std::sync::Arc::new(StoreHandle::new("mem://d", store.clone()));
        (
            Catalog::new(DataStore {
                handle,
                prefix: "p".into(),
                url: "mem://d/p".into(),
                local_dir: None,
                project: None,
            }),
            store,
        )
    }

    fn datum(execution: &str, n: usize, tag: &str) -> DatumRecord {
        let id = new_id();
        DatumRecord {
            uri: format!("datum://{id}"),
            id,
            store: "mem://d/p".into(),
            key: format!("data/{execution}/f{n}"),
            object_uri: format!("mem://d/data/{execution}/f{n}"),
            size: n as u64,
            checksums: crate::checksum::Checksums { md5: "m".into(), sha1: "s".into(), sha256: format!("{n:064x}") },
            created_at: super::super::now(),
            execution: Some(execution.into()),
            path: format!("f{n}"),
            tags: vec![tag.into()],
            alias: None,
            properties: Default::default(),
            packed: None,
        }
    }

    #[tokio::test]
    async fn listing_costs_requests_per_sync_not_per_datum_and_misses_nothing_unindexed() {
        let (c, store) = counted();
        let mut made: Vec<DatumRecord> =
            (0..2_500).map(|n| datum("e1", n, if n % 2 == 0 { "even" } else { "odd" })).collect();
        made.sort_by(|a, b| a.id.cmp(&b.id));
        for d in &made {
            c.put_datum(d).await.unwrap();
        }
        // 100 were made by a sync killed before its index record was written.
        c.put_index("e1", made[100..].to_vec(), Vec::new()).await.unwrap();
        let gets = store.count(Op::Get);
        assert_eq!(c.datums().await.unwrap(), made, "every datum once, oldest first");
        let reads = store.count(Op::Get) - gets;
        assert!(reads <= 100 + 5, "{reads} reads to list 2,500 datums of which 100 unindexed");

        // One execution: its record names some, its index holds others.
        let exec = ExecutionRecord {
            outputs: made[..500].iter().map(|d| d.id.clone()).collect(),
            ..ExecutionRecord::new("e1", "t", "h")
        };
        let gets = store.count(Op::Get);
        assert_eq!(c.execution_datums(&exec).await.unwrap(), made, "the record's outputs and the index's, each once");
        assert!(store.count(Op::Get) - gets <= 100 + 5);

        // An index entry whose datum record does not exist is not listed.
        let ghost = datum("e1", 9_999, "even");
        c.put_index("e1", vec![ghost.clone()], Vec::new()).await.unwrap();
        assert!(!c.datums().await.unwrap().iter().any(|d| d.id == ghost.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_compacts_many_index_records_and_later_listings_read_one() {
        let (c, store) = counted();
        let mut made = Vec::new();
        // 150 syncs of one datum each, and 20 packs of 3.
        for n in 0..150 {
            let d = datum(&format!("e{n}"), n, "t");
            c.put_datum(&d).await.unwrap();
            c.put_index(&format!("e{n}"), vec![d.clone()], Vec::new()).await.unwrap();
            made.push(d);
        }
        for p in 0..20 {
            let pack = crate::catalog::packs::pack_of(&crate::catalog::new_id()).unwrap();
            let datums: Vec<DatumRecord> = (0..3)
                .map(|m| DatumRecord {
                    id: crate::catalog::packs::member_id(&pack, m).unwrap(),
                    packed: Some(crate::catalog::PackedIn {
                        pack: pack.clone(),
                        offset: 512 * m as u64,
                        pack_size: 4096,
                    }),
                    ..datum("packer", 1000 + p * 3 + m, "t")
                })
                .collect();
            made.extend(datums.iter().cloned());
            let rec = PackRecord {
                id: pack.clone(),
                key: format!("data/packer/.packs/{pack}.tar"),
                object_uri: "mem://d/x".into(),
                size: 4096,
                created_at: super::super::now(),
                execution: Some("packer".into()),
                datums,
            };
            c.put_pack(&rec).await.unwrap();
        }
        made.sort_by(|a, b| a.id.cmp(&b.id));

        let gets = store.count(Op::Get);
        assert_eq!(c.datums().await.unwrap(), made, "the first listing reads every record");
        assert!(store.count(Op::Get) - gets >= 170);
        let gets = store.count(Op::Get);
        assert_eq!(c.datums().await.unwrap(), made, "the compacted record holds them all");
        let reads = store.count(Op::Get) - gets;
        assert!(reads <= 2, "{reads} reads after compaction");

        // A sync after the compaction: its index record is read on its own.
        let late = datum("late", 7, "t");
        c.put_datum(&late).await.unwrap();
        c.put_index("late", vec![late.clone()], Vec::new()).await.unwrap();
        made.push(late);
        let gets = store.count(Op::Get);
        assert_eq!(c.datums().await.unwrap(), made);
        assert!(store.count(Op::Get) - gets <= 3);

        // A datum whose record is gone (purged) is not listed, although the compacted record holds it.
        let gone = made.remove(3);
        c.store().handle.inner.delete(&c.ds.record_key(&format!("datums/{}.json", gone.id))).await.unwrap();
        assert_eq!(c.datums().await.unwrap(), made);

        // A damaged compacted record is passed over: the records themselves are read.
        let compacted = c.list_keys(COMPACTED_DIR).await.unwrap();
        assert_eq!(compacted.len(), 1, "the superseded compacted record was deleted");
        c.store().handle.inner.put(&compacted[0], PutPayload::from_static(b"not zstd")).await.unwrap();
        assert_eq!(c.datums().await.unwrap(), made);
        // ... and replaced by a new one.
        let gets = store.count(Op::Get);
        assert_eq!(c.datums().await.unwrap(), made);
        assert!(store.count(Op::Get) - gets <= 3);
    }
}
