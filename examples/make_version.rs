//! Writes a generated dataset version of N files straight into a local data store, as chunked
//! manifests, for benchmarks of versions too large to make from real files (1 to 10 million).
//! Its files cycle over the given datums (their records must exist in the store), at paths
//! `shard-NNNN/item-NNNNNNNN.bin`, 1,000 per directory. The dataset must exist.
//!
//! usage: make_version STORE_DIR DATASET VERSION FILES DATUM_ID...

use datumfs::catalog::datasets::VersionFile;
use datumfs::catalog::manifest;
use datumfs::catalog::DatumRecord;
use datumfs::checksum::FileDigests;
use std::path::Path;

/// Files encoded at once (the generator's memory, not the version's chunking).
const SEGMENT: usize = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, dataset, version, count, ids @ ..] = args.as_slice() else {
        eprintln!("usage: make_version STORE_DIR DATASET VERSION FILES DATUM_ID...");
        std::process::exit(2);
    };
    let n: usize = count.parse().expect("FILES is a number");
    let root = Path::new(store).join(".datumfs");
    let datums: Vec<DatumRecord> = ids
        .iter()
        .map(|id| {
            let id = id.trim_start_matches("datum://");
            let text = std::fs::read(root.join(format!("datums/{id}.json"))).expect("datum record");
            serde_json::from_slice(&text).expect("datum record")
        })
        .collect();
    assert!(!datums.is_empty(), "give at least one datum");
    let uris: Vec<std::sync::Arc<str>> = datums.iter().map(|d| d.object_uri.as_str().into()).collect();
    let digests: Vec<FileDigests> =
        datums.iter().map(|d| FileDigests::of(&d.checksums).expect("datum checksums")).collect();
    let chunk_dir = root.join(format!("datasets/{dataset}/chunks"));
    std::fs::create_dir_all(&chunk_dir).expect("chunk dir");
    let mut stores = Vec::new();
    let mut refs = Vec::new();
    let mut bytes = 0u64;
    for start in (0..n).step_by(SEGMENT) {
        let files: Vec<VersionFile> = (start..n.min(start + SEGMENT))
            .map(|i| {
                let d = &datums[i % datums.len()];
                VersionFile {
                    path: format!("shard-{:04}/item-{i:08}.bin", i / 1000),
                    datum: d.id.clone(),
                    size: d.size,
                    checksums: digests[i % datums.len()],
                    object_uri: uris[i % datums.len()].clone(),
                    packed: d.packed.clone(),
                }
            })
            .collect();
        bytes += files.iter().map(|f| f.size).sum::<u64>();
        for c in manifest::encode(&files, &mut stores).expect("encode") {
            std::fs::write(chunk_dir.join(&c.reference.id), &c.main).expect("write chunk");
            std::fs::write(chunk_dir.join(&c.reference.sums), &c.sums).expect("write chunk");
            refs.push(c.reference);
        }
    }
    let record = serde_json::json!({
        "dataset": dataset,
        "version": version,
        "created_at": "2026-11-01T00:00:00Z",
        "host": "bench",
        "format": 2,
        "count": n,
        "bytes": bytes,
        "stores": stores,
        "chunks": refs,
    });
    let dir = root.join(format!("datasets/{dataset}/versions"));
    std::fs::create_dir_all(&dir).expect("version dir");
    std::fs::write(dir.join(format!("{version}.json")), serde_json::to_vec(&record).expect("json")).expect("record");
    println!("{{\"files\": {n}, \"chunks\": {}}}", refs.len());
}
