//! Property tests on everything datumfs reads from outside: URIs and `--input` flags, inputs
//! files and valohai.yaml, metadata sidecars and valohai.metadata.jsonl, manifest chunks and
//! catalog records from a store someone else can write to, control messages, and object keys
//! turned into paths. Whatever the input: no panic, no path escape, and an error that names the
//! thing it is about. Cases found once are kept below as plain regression tests.

use datumfs::catalog::datasets::VersionFile;
use datumfs::catalog::manifest;
use datumfs::checksum::{Checksums, FileDigests};
use datumfs::keys::relative_segments;
use proptest::prelude::*;
use std::path::Path;

/// Strings made of the characters that matter to paths and URIs, and anything else.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(
            prop_oneof![
                Just("/".to_string()),
                Just("..".to_string()),
                Just(".".to_string()),
                Just("\0".to_string()),
                Just("\n".to_string()),
                Just("://".to_string()),
                Just("s3".to_string()),
                Just("dataset".to_string()),
                Just("datum".to_string()),
                Just("*".to_string()),
                Just("?".to_string()),
                Just("%2e".to_string()),
                Just("=".to_string()),
                Just(":".to_string()),
                "[a-z]{1,4}",
                any::<char>().prop_map(String::from),
            ],
            0..12
        )
        .prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_key_becomes_segments_that_never_leave_the_input(key in tricky()) {
        if let Ok(segments) = relative_segments(&key) {
            let root = Path::new("/input");
            let mut p = root.to_path_buf();
            for s in &segments {
                prop_assert!(!s.is_empty() && *s != "." && *s != ".." && !s.contains('/') && !s.contains('\0'));
                prop_assert!(!s.chars().any(char::is_control));
                p.push(s);
            }
            prop_assert!(p.starts_with(root) && p != root);
            prop_assert_eq!(p.components().count(), segments.len() + 2);
        }
    }

    #[test]
    fn any_uri_parses_or_is_refused_with_its_name(uri in tricky()) {
        match datumfs::uri::parse(&uri, Path::new("/work")) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_input_flag_parses_or_is_refused_naming_it(flag in tricky()) {
        if let Err(e) = datumfs::inputs::spec::parse_flag(&flag) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn any_inputs_file_loads_or_is_refused_naming_the_file(text in tricky(), step in proptest::option::of("[a-z]{1,3}")) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.yaml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = datumfs::inputs::spec::load_file(&path, step.as_deref()) {
            prop_assert!(e.to_string().contains("inputs.yaml"), "{}", e);
        }
    }

    #[test]
    fn any_inputs_file_shaped_like_one_loads_or_is_refused(
        names in proptest::collection::vec(tricky(), 1..4),
        uris in proptest::collection::vec(tricky(), 1..4),
        step in any::<bool>(),
    ) {
        let items: Vec<String> = names
            .iter()
            .zip(uris.iter().cycle())
            .map(|(n, u)| format!("  - name: {}\n    default: {}\n", serde_json::to_string(n).unwrap(), serde_json::to_string(u).unwrap()))
            .collect();
        let text = if step {
            format!("- step:\n    name: train\n    inputs:\n{}", items.iter().map(|i| format!("  {}", i.replace('\n', "\n  "))).collect::<String>())
        } else {
            items.concat()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("valohai.yaml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = datumfs::inputs::spec::load_file(&path, None) {
            prop_assert!(e.to_string().contains("valohai.yaml"), "{}", e);
        }
    }

    #[test]
    fn any_sidecar_or_jsonl_is_used_or_refused_naming_the_file(text in tricky(), json in json_value(), rel in "[a-z]{1,3}(/[a-z]{1,3})?") {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(&rel), b"data").unwrap();
        let sidecar = format!("{rel}.metadata.json");
        for body in [text.clone(), json.to_string()] {
            std::fs::write(root.join(&sidecar), &body).unwrap();
            match datumfs::sync::metadata::read_sidecar(root, &rel) {
                Ok(Some(map)) => {
                    if let Err(e) = datumfs::sync::metadata::interpret(&rel, map) {
                        prop_assert!(e.to_string().contains(&rel), "{}", e);
                    }
                }
                Ok(None) => {}
                Err(e) => prop_assert!(e.to_string().contains(&sidecar), "{}", e),
            }
            std::fs::write(root.join("valohai.metadata.jsonl"), format!("{body}\n{{\"file\": \"{rel}\", \"metadata\": {json}}}\n")).unwrap();
            match datumfs::sync::metadata::read_jsonl(root) {
                Ok(jsonl) => {
                    let _ = datumfs::sync::metadata::for_file(root, &rel, &jsonl);
                }
                Err(e) => prop_assert!(e.to_string().contains("valohai.metadata.jsonl"), "{}", e),
            }
        }
    }

    #[test]
    fn a_damaged_manifest_chunk_is_refused_naming_it_never_misread(
        n in 1usize..40,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut files: Vec<VersionFile> = (0..n).map(|i| file(&format!("dir{}/f{i:03}.bin", i % 3), i as u64)).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut stores = Vec::new();
        let chunks = manifest::encode(&files, &mut stores).unwrap();
        let chunk = &chunks[0];
        // The stored bytes are damaged below their checksum (as one who rewrites both would):
        // decompressed, changed, compressed again, and named by their new sha256.
        let mut raw = zstd::stream::decode_all(&chunk.main[..]).unwrap();
        for (at, byte) in &flips {
            let i = at.index(raw.len());
            raw[i] ^= byte | 1;
        }
        if let Some(c) = cut {
            raw.truncate(c.index(raw.len()));
        }
        let stored = zstd::stream::encode_all(&raw[..], 3).unwrap();
        use sha2::Digest;
        let mut reference = chunk.reference.clone();
        reference.id = hex::encode(sha2::Sha256::digest(&stored));
        match manifest::decode(&reference, &stored, None, &stores) {
            // A change that still decodes is a chunk like any other (its paths are checked
            // when the version is laid out as a tree); it holds what its reference says.
            Ok(read) => prop_assert_eq!(read.len() as u64, reference.count),
            Err(e) => prop_assert!(e.to_string().contains(&reference.id[..12]), "{}", e),
        }
        // Damage without a new checksum is always caught.
        let mut bad = chunk.main.clone();
        let i = flips[0].0.index(bad.len());
        bad[i] ^= 0x55;
        let err = manifest::decode(&chunk.reference, &bad, None, &stores).unwrap_err();
        prop_assert!(err.to_string().contains(&chunk.reference.id[..12]), "{}", err);
    }

    #[test]
    fn any_control_message_or_catalog_record_is_refused_without_panic(text in tricky(), json in json_value()) {
        for body in [text.as_str(), &json.to_string()] {
            let _ = serde_json::from_str::<datumfs::control::Request>(body);
            let _ = serde_json::from_str::<datumfs::catalog::DatumRecord>(body);
            let _ = serde_json::from_str::<datumfs::catalog::ExecutionRecord>(body);
            let _ = serde_json::from_str::<datumfs::catalog::packs::PackRecord>(body);
            let _ = serde_json::from_str::<datumfs::catalog::index::DatumIndex>(body);
        }
    }
}

fn file(path: &str, i: u64) -> VersionFile {
    VersionFile {
        path: path.to_string(),
        datum: format!("01K{:023}", i),
        size: i * 100,
        checksums: FileDigests::of(&Checksums {
            md5: format!("{i:032x}"),
            sha1: format!("{i:040x}"),
            sha256: format!("{i:064x}"),
        })
        .unwrap(),
        object_uri: format!("s3://bucket/data/{path}").into(),
        packed: None,
    }
}

/// Any JSON value, a few levels deep, with the keys metadata uses among others.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        tricky().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("valohai.tags".to_string()),
                        Just("valohai.alias".to_string()),
                        Just("valohai.dataset-versions".to_string()),
                        Just("file".to_string()),
                        Just("metadata".to_string()),
                        Just("uri".to_string()),
                        "[a-z.]{1,8}",
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Found by the properties above: an input name refused inside an inputs file named neither
/// the file nor the input's place in it.
#[test]
fn regression_a_bad_input_name_in_an_inputs_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inputs.yaml");
    std::fs::write(&path, "- name: \".\"\n  default: \"\"\n").unwrap();
    let e = datumfs::inputs::spec::load_file(&path, None).unwrap_err().to_string();
    assert!(e.contains("inputs.yaml") && e.contains("input name '.'"), "{e}");
}
