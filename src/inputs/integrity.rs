//! Input integrity history: the checksums of each input URI, recorded in the data store so that
//! every node sharing the store can warn when an input's content differs from its last use.
//!
//! Files are recorded in batches, one record per directory (`integrity/dirs/<sha256(dir)>.json`,
//! the directory's files by name), updated by compare-and-swap: reading ten thousand files of a
//! few directories costs a few requests, not two per file. Records of single URIs written
//! before (`integrity/<sha256(uri)>.json`) are still consulted, once per URI, when the store holds
//! any.
//!
//! Files of datums (`datum://`, `dataset://`) are not recorded: their bytes are checked against the
//! sha256 of the datum's record instead, and a datum never changes.

use crate::catalog::{Catalog, CatalogError};
use crate::checksum::Checksums;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

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
    /// The execution that read it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// One file's last recorded read, in its directory's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileIntegrity {
    /// Its size.
    pub size: u64,
    /// The version (ETag) that was read.
    pub version: String,
    /// Its checksums.
    pub checksums: Checksums,
    /// When that content was first recorded (RFC 3339).
    pub recorded_at: String,
    /// Which host recorded it.
    pub host: String,
    /// The execution that read it then, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// The integrity record of one directory of input URIs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirIntegrity {
    /// The directory's URI.
    pub dir: String,
    /// Its files, by name.
    pub files: BTreeMap<String, FileIntegrity>,
}

fn legacy_rel(uri: &str) -> String {
    format!("integrity/{}.json", hex::encode(Sha256::digest(uri.as_bytes())))
}

fn dir_rel(dir: &str) -> String {
    format!("integrity/dirs/{}.json", hex::encode(Sha256::digest(dir.as_bytes())))
}

/// The directory and name of a URI.
fn split(uri: &str) -> (&str, &str) {
    uri.rsplit_once('/').unwrap_or(("", uri))
}

/// Whether the store holds single-URI records written before directory records.
pub async fn has_legacy_records(catalog: &Catalog) -> bool {
    let ds = catalog.store();
    let prefix = ds.record_key("integrity");
    match ds.handle.inner.list_with_delimiter(Some(&prefix)).await {
        Ok(l) => !l.objects.is_empty(),
        Err(_) => true, // unknown: consult them
    }
}

fn warning(uri: &str, old: &FileIntegrity, new: &IntegrityRecord) -> Option<String> {
    (old.checksums.sha256 != new.checksums.sha256).then(|| {
        let by = old.execution.as_deref().map(|e| format!(" by execution {e}")).unwrap_or_default();
        format!(
            "input {uri} differs from its last use (that content first recorded {} on {}{by}): sha256 {} -> {}, md5 {} -> {}",
            old.recorded_at, old.host, old.checksums.sha256, new.checksums.sha256, old.checksums.md5, new.checksums.md5
        )
    })
}

fn entry(rec: &IntegrityRecord) -> FileIntegrity {
    FileIntegrity {
        size: rec.size,
        version: rec.version.clone(),
        checksums: rec.checksums.clone(),
        recorded_at: rec.recorded_at.clone(),
        host: rec.host.clone(),
        execution: rec.execution.clone(),
    }
}

/// Records `recs` (reads of many URIs) and returns a warning for each whose content differs from
/// its last recorded use. One read per directory, and one compare-and-swap write for each
/// directory where something is new; the same content read again rewrites nothing.
pub async fn record_batch(
    catalog: &Catalog,
    recs: &[IntegrityRecord],
    legacy: bool,
) -> Result<Vec<String>, CatalogError> {
    record_batch_sized(catalog, recs, legacy, &mut HashMap::new()).await
}

/// Directory records up to this many files are rewritten at every flush; bigger ones wait for
/// reads that grow them by half (see [`split_due`]).
pub const SMALL_DIR: usize = 4_000;

/// Splits `pending` reads into those to record now and those to keep for a later flush: a
/// directory whose record holds many files (`sizes`, as last written) is rewritten only once the
/// reads waiting for it would grow it by half, so reading a flat directory of a hundred thousand
/// files rewrites its record a handful of times, not once per batch. `all` (the mount's end):
/// everything is due.
pub fn split_due(
    pending: Vec<IntegrityRecord>,
    sizes: &HashMap<String, usize>,
    all: bool,
) -> (Vec<IntegrityRecord>, Vec<IntegrityRecord>) {
    if all {
        return (pending, Vec::new());
    }
    let mut waiting: HashMap<&str, usize> = HashMap::new();
    for r in &pending {
        *waiting.entry(split(&r.uri).0).or_default() += 1;
    }
    let due: std::collections::HashSet<String> = waiting
        .into_iter()
        .filter(|(dir, n)| sizes.get(*dir).is_none_or(|&size| size <= SMALL_DIR || n * 2 >= size))
        .map(|(dir, _)| dir.to_string())
        .collect();
    pending.into_iter().partition(|r| due.contains(split(&r.uri).0))
}

/// [`record_batch`], noting in `sizes` how many files each directory's record holds now.
pub async fn record_batch_sized(
    catalog: &Catalog,
    recs: &[IntegrityRecord],
    legacy: bool,
    sizes: &mut HashMap<String, usize>,
) -> Result<Vec<String>, CatalogError> {
    let mut by_dir: BTreeMap<&str, Vec<&IntegrityRecord>> = BTreeMap::new();
    for r in recs {
        by_dir.entry(split(&r.uri).0).or_default().push(r);
    }
    let mut warnings = Vec::new();
    for (dir, recs) in by_dir {
        let rel = dir_rel(dir);
        let now: DirIntegrity = catalog.read_record(&rel).await?.unwrap_or_default();
        // What the records said before: the directory record, else a single-URI record.
        let mut previous: BTreeMap<&str, FileIntegrity> = BTreeMap::new();
        for r in &recs {
            let name = split(&r.uri).1;
            if let Some(old) = now.files.get(name) {
                previous.insert(name, old.clone());
            } else if legacy {
                if let Some(old) = catalog.read_record::<IntegrityRecord>(&legacy_rel(&r.uri)).await.ok().flatten() {
                    previous.insert(name, entry(&old));
                }
            }
        }
        warnings.extend(recs.iter().filter_map(|r| warning(&r.uri, previous.get(split(&r.uri).1)?, r)));
        let changed = |files: &BTreeMap<String, FileIntegrity>, r: &IntegrityRecord| {
            files
                .get(split(&r.uri).1)
                .is_none_or(|old| (old.size, &old.version, &old.checksums) != (r.size, &r.version, &r.checksums))
        };
        if !recs.iter().any(|r| changed(&now.files, r)) {
            sizes.insert(dir.to_string(), now.files.len());
            continue;
        }
        let written: DirIntegrity = catalog
            .update(&rel, |current: Option<DirIntegrity>| {
                let mut current =
                    current.unwrap_or_else(|| DirIntegrity { dir: dir.to_string(), ..Default::default() });
                for r in &recs {
                    if changed(&current.files, r) {
                        current.files.insert(split(&r.uri).1.to_string(), entry(r));
                    }
                }
                Ok(current)
            })
            .await?;
        sizes.insert(dir.to_string(), written.files.len());
    }
    Ok(warnings)
}

pub use crate::util::hostname;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};
    use object_store::ObjectStoreExt;

    fn rec(uri: &str, sha: &str) -> IntegrityRecord {
        IntegrityRecord {
            uri: uri.into(),
            size: 1,
            version: "e1".into(),
            checksums: Checksums { md5: "m".into(), sha1: "s".into(), sha256: sha.into() },
            recorded_at: "t".into(),
            host: "h".into(),
            execution: None,
        }
    }

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

    #[tokio::test]
    async fn warns_when_content_differs_and_costs_requests_per_directory_not_per_file() {
        let (c, store) = counted();
        let first: Vec<_> = (0..1000).map(|i| rec(&format!("s3://b/train/{}/f{i}.jpg", i % 4), "aa")).collect();
        assert!(record_batch(&c, &first, false).await.unwrap().is_empty());
        let requests = store.count(Op::Get) + store.count(Op::Put) + store.count(Op::ConditionalPut);
        assert!(requests <= 4 * 3, "{requests} requests for 1000 files in 4 directories");
        // The same content again: read, nothing written.
        let puts = store.count(Op::ConditionalPut) + store.count(Op::Put);
        assert!(record_batch(&c, &first, false).await.unwrap().is_empty());
        assert_eq!(store.count(Op::ConditionalPut) + store.count(Op::Put), puts);
        // One file changed: one warning naming it and both sha256.
        let mut again = first.clone();
        again[5] = rec(&first[5].uri, "bb");
        let w = record_batch(&c, &again, false).await.unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains(&first[5].uri) && w[0].contains("aa -> bb"), "{}", w[0]);
        assert!(record_batch(&c, &again, false).await.unwrap().is_empty(), "the new content is now the last use");
    }

    #[tokio::test]
    async fn single_uri_records_written_before_are_still_compared() {
        let (c, _) = counted();
        let old = rec("s3://b/k", "aa");
        let key = c.store().record_key(&legacy_rel(&old.uri));
        c.store().handle.inner.put(&key, serde_json::to_vec(&old).unwrap().into()).await.unwrap();
        assert!(has_legacy_records(&c).await);
        let w = record_batch(&c, &[rec("s3://b/k", "bb")], true).await.unwrap();
        assert!(w.len() == 1 && w[0].contains("aa -> bb"), "{w:?}");
        let (fresh, _) = counted();
        assert!(!has_legacy_records(&fresh).await);
    }

    #[test]
    fn reads_of_a_big_directory_wait_until_they_would_grow_its_record_by_half() {
        let reads = |dir: &str, n: usize| (0..n).map(|i| rec(&format!("{dir}/f{i}"), "aa")).collect::<Vec<_>>();
        let mut pending = reads("s3://b/big", 3_000);
        pending.extend(reads("s3://b/small", 10));
        pending.extend(reads("s3://b/new", 5));
        let sizes: HashMap<String, usize> =
            [("s3://b/big".to_string(), 10_000), ("s3://b/small".to_string(), 100)].into_iter().collect();
        let (now, later) = split_due(pending.clone(), &sizes, false);
        assert_eq!(now.len(), 15, "the small and the unknown directory are due");
        assert_eq!(later.len(), 3_000, "3,000 reads would not grow 10,000 by half");
        let mut more = later;
        more.extend((3_000..5_000).map(|i| rec(&format!("s3://b/big/f{i}"), "aa")));
        assert_eq!(split_due(more, &sizes, false).0.len(), 5_000, "5,000 would");
        let (all, none) = split_due(pending, &sizes, true);
        assert_eq!((all.len(), none.len()), (3_015, 0), "at the mount's end everything is due");
    }

    #[tokio::test]
    async fn a_batch_notes_how_many_files_each_directory_record_holds() {
        let c = Catalog::in_memory();
        let mut sizes = HashMap::new();
        let first: Vec<_> = (0..5).map(|i| rec(&format!("s3://b/d/f{i}"), "aa")).collect();
        record_batch_sized(&c, &first, false, &mut sizes).await.unwrap();
        assert_eq!(sizes.get("s3://b/d"), Some(&5));
        let second: Vec<_> = (3..8).map(|i| rec(&format!("s3://b/d/f{i}"), "aa")).collect();
        record_batch_sized(&c, &second, false, &mut sizes).await.unwrap();
        assert_eq!(sizes.get("s3://b/d"), Some(&8));
    }
}
