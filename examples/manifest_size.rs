//! Size and speed of a dataset version manifest of N files, as one JSON record (the format
//! before chunked manifests) and as chunks: prints JSON. Used for the figures in the README.
//!
//! usage: manifest_size [FILES]

use datumfs::catalog::datasets::VersionFile;
use datumfs::catalog::manifest;
use datumfs::checksum::{Checksums, FileDigests};
use sha2::{Digest, Sha256};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let files: Vec<VersionFile> = (0..n)
        .map(|i| {
            let h = hex::encode(Sha256::digest(i.to_le_bytes()));
            VersionFile {
                path: format!("shard-{:04}/item-{i:07}.bin", i / 1000),
                datum: format!("01KB{:022}", i),
                size: 10_000 + (i as u64 % 5000),
                checksums: FileDigests::of(&Checksums { md5: h[..32].into(), sha1: h[..40].into(), sha256: h.clone() })
                    .expect("hex digests"),
                object_uri: format!("s3://bench/datumfs/data/exec-01kbench/shard-{:04}/item-{i:07}.bin", i / 1000)
                    .into(),
                packed: None,
            }
        })
        .collect();
    let t = Instant::now();
    let json = serde_json::to_vec_pretty(&files).expect("json");
    let json_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _: Vec<VersionFile> = serde_json::from_slice(&json).expect("json back");
    let json_read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut stores = Vec::new();
    let chunks = manifest::encode(&files, &mut stores).expect("encode");
    let encode_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut back = 0;
    for c in &chunks {
        back += manifest::decode(&c.reference, &c.main, Some(&c.sums), &stores).expect("decode").len();
    }
    let decode_secs = t.elapsed().as_secs_f64();
    assert_eq!(back, n);
    let main: usize = chunks.iter().map(|c| c.main.len()).sum();
    let sums: usize = chunks.iter().map(|c| c.sums.len()).sum();
    println!(
        "{{\"files\": {n}, \"json_bytes\": {}, \"json_write_s\": {json_secs:.2}, \"json_read_s\": {json_read:.2}, \
         \"chunks\": {}, \"chunk_bytes\": {main}, \"sums_bytes\": {sums}, \"encode_s\": {encode_secs:.2}, \"decode_s\": {decode_secs:.2}}}",
        json.len(),
        chunks.len()
    );
}
