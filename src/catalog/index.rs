//! Datum index records: the datums one sync made, in one record, so that listing datums costs
//! a request per sync rather than one per datum.
//!
//! A sync (or push) writes its index records after every datum record they name is stored
//! (`index/executions/<EXECUTION>/<ID>.json`): the records of the datums uploaded alone, and
//! the ids of the packs it made (a pack's record already holds its datums). Index records are
//! create-only and never change, as datum records never do. They only ever speed a listing up:
//! a datum made by a sync that was killed before its index record was written is still found,
//! from the datum records themselves.

use super::{new_id, Catalog, CatalogError, DatumRecord, ExecutionRecord};
use futures::{StreamExt, TryStreamExt};
use object_store::PutMode;
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

    /// Every datum, oldest first (ids sort by time): from the index records and pack records,
    /// with only the datums no index record holds read one by one. A datum is listed only if
    /// its own record (or its pack's) exists.
    pub async fn datums(&self) -> Result<Vec<DatumRecord>, CatalogError> {
        let prefix = self.ds.record_key("datums");
        let stored: HashSet<String> = self
            .ds
            .handle
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location.filename().unwrap_or_default().trim_end_matches(".json").to_string())
            .try_collect()
            .await
            .map_err(|e| self.store_err(&prefix, e))?;
        let indexes: Vec<DatumIndex> = self.read_all("index").await?;
        let mut found: BTreeMap<String, DatumRecord> = BTreeMap::new();
        for d in indexes.into_iter().flat_map(|i| i.datums) {
            if stored.contains(&d.id) {
                found.insert(d.id.clone(), d);
            }
        }
        let missing: Vec<String> = stored.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
        found.extend(self.read_datums(missing).await?.into_iter().map(|d| (d.id.clone(), d)));
        for pack in self.packs().await? {
            found.extend(pack.datums.into_iter().map(|d| (d.id.clone(), d)));
        }
        Ok(found.into_values().collect())
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
}
