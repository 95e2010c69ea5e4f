//! Output metadata: sidecars `<file>.metadata.json` and lines of `valohai.metadata.jsonl`,
//! turned into a datum's tags, alias and custom properties.

use serde_json::{Map, Value};
use std::path::Path;

/// The metadata file at the top of outputs.
pub const JSONL: &str = "valohai.metadata.jsonl";
/// The suffix of sidecar files.
pub const SIDECAR_SUFFIX: &str = ".metadata.json";

/// Metadata attached to one datum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatumMeta {
    /// `valohai.tags`.
    pub tags: Vec<String>,
    /// `valohai.alias`.
    pub alias: Option<String>,
    /// `valohai.dataset-versions`: the dataset versions (`dataset://NAME/VERSION`) the datum
    /// joins when the execution's sync completes (also kept in the properties).
    pub dataset_versions: Vec<String>,
    /// Every other key.
    pub properties: Map<String, Value>,
}

/// A metadata file or key that cannot be used: names the file as the user sees it and the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct MetadataError {
    /// The file (`outputs/x.metadata.json`, `outputs/valohai.metadata.jsonl line 3`, or the
    /// output whose metadata holds the bad key).
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

fn bad(file: impl Into<String>, problem: impl Into<String>) -> MetadataError {
    MetadataError { file: file.into(), problem: problem.into() }
}

/// Whether a staged path is metadata rather than an output.
pub fn is_metadata_file(rel: &str) -> bool {
    rel == JSONL || rel.ends_with(SIDECAR_SUFFIX)
}

/// `valohai.metadata.jsonl`, checked, with each file's lines found by name. Only an index is
/// kept in memory, 32 bytes per line: a job that describes each of a hundred thousand outputs
/// would otherwise hold a parsed JSON object per file (about 2 KB each), a map from each name to
/// its lines (about 190 bytes each), or the text itself (about 90 bytes a line), for the whole
/// sync. Lines are read again from the file as it was opened: a file replaced since (written
/// anew and renamed over) still reads as it was; appended lines are not seen; a line whose
/// bytes changed in place is an error naming it, never other metadata taken silently.
#[derive(Debug, Clone, Default)]
pub struct Jsonl {
    /// The file, open since it was read.
    file: Option<std::sync::Arc<std::fs::File>>,
    /// Its lines, sorted by the hash of the file each names and, within one hash, in file order.
    lines: Vec<Line>,
}

/// Where one line of the jsonl is, and what it held.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// The hash of the file it names.
    name: u64,
    /// The hash of its bytes when read.
    text: u64,
    /// Its first byte in the file.
    start: u64,
    /// Its length, without the line end.
    len: u32,
    /// Its number (from 1), for messages.
    number: u32,
}

fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn name_hash(file: &str) -> u64 {
    hash_of(file.as_bytes())
}

/// The file a checked line names, as the index keys it.
fn named_file(line: &Map<String, Value>) -> Option<&str> {
    Some(line.get("file")?.as_str()?.trim_start_matches("./"))
}

fn jsonl_line(number: u32) -> String {
    format!("outputs/{JSONL} line {number}")
}

impl Jsonl {
    /// The merged metadata of `file` (later lines override earlier keys), or why its lines can
    /// no longer be read as they were.
    pub fn get(&self, file: &str) -> Result<Option<Map<String, Value>>, MetadataError> {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.file else { return Ok(None) };
        let hash = name_hash(file);
        let first = self.lines.partition_point(|l| l.name < hash);
        let mut out = Map::new();
        let mut found = false;
        let mut buf = Vec::new();
        for line in self.lines[first..].iter().take_while(|l| l.name == hash) {
            buf.resize(line.len as usize, 0);
            f.read_exact_at(&mut buf, line.start).map_err(|e| bad(jsonl_line(line.number), e.to_string()))?;
            if hash_of(&buf) != line.text {
                return Err(bad(jsonl_line(line.number), "changed in place during the sync"));
            }
            // Checked when read: parses again, and only lines naming this very file count.
            if let Ok(Value::Object(mut line)) = serde_json::from_slice::<Value>(&buf) {
                if named_file(&line) != Some(file) {
                    continue;
                }
                found = true;
                if let Some(Value::Object(meta)) = line.remove("metadata") {
                    out.extend(meta);
                }
            }
        }
        Ok(found.then_some(out))
    }
}

/// `valohai.metadata.jsonl` (empty when there is none), or the first malformed line's error.
pub fn read_jsonl(root: &Path) -> Result<Jsonl, MetadataError> {
    use std::io::BufRead;
    let path = root.join(JSONL);
    let whole = || format!("outputs/{JSONL}");
    let file = match std::fs::File::open(&path) {
        Ok(f) => std::sync::Arc::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Jsonl::default()),
        Err(e) => return Err(bad(whole(), e.to_string())),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &*file);
    let (mut lines, mut buf, mut start, mut number) = (Vec::new(), Vec::new(), 0u64, 0u32);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| bad(whole(), e.to_string()))?;
        if n == 0 {
            break;
        }
        number = number.saturating_add(1);
        let at = start;
        start += n as u64;
        let text = buf.trim_ascii_end();
        if text.is_empty() {
            continue;
        }
        let bad = |why: String| bad(jsonl_line(number), why);
        let len = u32::try_from(text.len()).map_err(|_| bad("longer than 4 GiB".into()))?;
        let v: Map<String, Value> = match serde_json::from_slice(text) {
            Ok(Value::Object(v)) => v,
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let file = named_file(&v).ok_or_else(|| bad("no \"file\" string".into()))?;
        v.get("metadata").and_then(Value::as_object).ok_or_else(|| bad("no \"metadata\" object".into()))?;
        lines.push(Line { name: name_hash(file), text: hash_of(text), start: at, len, number });
    }
    // Stable: one file's lines stay in file order.
    lines.sort_by_key(|l| l.name);
    lines.shrink_to_fit();
    Ok(Jsonl { file: Some(file), lines })
}

/// Reads the sidecar of `rel` if it has one (`None`), or its parse error.
pub fn read_sidecar(root: &Path, rel: &str) -> Result<Option<Map<String, Value>>, MetadataError> {
    let shown = format!("outputs/{rel}{SIDECAR_SUFFIX}");
    let text = match std::fs::read_to_string(root.join(format!("{rel}{SIDECAR_SUFFIX}"))) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(shown, e.to_string())),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(bad(shown, "not a JSON object")),
        Err(e) => Err(bad(shown, format!("malformed JSON: {e}"))),
    }
}

/// Turns merged metadata keys into a datum's metadata, checking the keys datumfs interprets.
pub fn interpret(rel: &str, raw: Map<String, Value>) -> Result<DatumMeta, MetadataError> {
    let mut meta = DatumMeta::default();
    for (k, v) in raw {
        match k.as_str() {
            "valohai.tags" => {
                let tags = v.as_array().ok_or_else(|| bad(format!("outputs/{rel}"), "valohai.tags must be a list"))?;
                for t in tags {
                    let t = t
                        .as_str()
                        .ok_or_else(|| bad(format!("outputs/{rel}"), "valohai.tags must be a list of strings"))?;
                    if !meta.tags.iter().any(|x| x == t) {
                        meta.tags.push(t.to_string());
                    }
                }
            }
            "valohai.alias" => {
                let a = v.as_str().ok_or_else(|| bad(format!("outputs/{rel}"), "valohai.alias must be a string"))?;
                crate::catalog::check_alias(a)
                    .map_err(|e| bad(format!("outputs/{rel}"), format!("valohai.alias {e}")))?;
                meta.alias = Some(a.to_string());
            }
            "valohai.dataset-versions" => {
                meta.dataset_versions = dataset_versions(rel, &v)?;
                meta.properties.insert(k, v);
            }
            "valohai.model-versions" => {
                model_versions(rel, &v)?;
                meta.properties.insert(k, v);
            }
            _ => {
                meta.properties.insert(k, v);
            }
        }
    }
    Ok(meta)
}

/// `valohai.dataset-versions`: a list of `dataset://NAME/VERSION` strings, or of objects with
/// such a `uri` (Valohai's longer form).
pub fn dataset_versions(rel: &str, v: &Value) -> Result<Vec<String>, MetadataError> {
    let file = format!("outputs/{rel}");
    let bad = || bad(file.clone(), "valohai.dataset-versions must be a list of \"dataset://NAME/VERSION\"");
    let mut out = Vec::new();
    for item in v.as_array().ok_or_else(bad)? {
        let uri = match item {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("uri").and_then(Value::as_str).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !uri.starts_with("dataset://") {
            return Err(bad());
        }
        let (name, version) = crate::catalog::datasets::split_ref(uri)
            .map_err(|e| MetadataError { file: file.clone(), problem: format!("valohai.dataset-versions: {e}") })?;
        let canonical = format!("dataset://{name}/{version}");
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// A model a file goes to, as `valohai.model-versions` says.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ModelTarget {
    /// The model's name.
    pub model: String,
    /// Tags for the version.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The version's release note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_note: Option<String>,
}

/// `valohai.model-versions`: a list of `model://NAME/` strings, or of objects with a
/// `model_uri` and optional `model_version_tags` and `model_release_note`. The version is
/// the next one of the model, one per execution.
pub fn model_versions(rel: &str, v: &Value) -> Result<Vec<ModelTarget>, MetadataError> {
    let file = format!("outputs/{rel}");
    let bad = |why: &str| {
        bad(
            file.clone(),
            format!(
                "valohai.model-versions must be a list of \"model://NAME/\" or of {{\"model_uri\": \"model://NAME/\", \
                 \"model_version_tags\": [...], \"model_release_note\": \"...\"}}: {why}"
            ),
        )
    };
    let mut out: Vec<ModelTarget> = Vec::new();
    for item in v.as_array().ok_or_else(|| bad("not a list"))? {
        let (uri, tags, note) = match item {
            Value::String(s) => (s.as_str(), Vec::new(), None),
            Value::Object(o) => {
                let uri =
                    o.get("model_uri").and_then(Value::as_str).ok_or_else(|| bad("an object without model_uri"))?;
                let tags = match o.get("model_version_tags") {
                    None => Vec::new(),
                    Some(t) => t
                        .as_array()
                        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| bad("model_version_tags is not a list of strings"))?,
                };
                let note = match o.get("model_release_note") {
                    None => None,
                    Some(n) => Some(n.as_str().ok_or_else(|| bad("model_release_note is not a string"))?.to_string()),
                };
                (uri, tags, note)
            }
            _ => return Err(bad("an item is neither a string nor an object")),
        };
        if !uri.starts_with("model://") {
            return Err(bad(&format!("'{uri}' is not a model:// URI")));
        }
        let (model, which) = crate::catalog::models::split(uri).map_err(|e| bad(&e.to_string()))?;
        if let Some(w) = which {
            return Err(bad(&format!(
                "'{uri}' names version {w}: versions are numbered by datumfs; write model://{model}/"
            )));
        }
        match out.iter_mut().find(|t| t.model == model) {
            Some(t) => {
                t.tags.extend(tags.into_iter().filter(|x| !t.tags.contains(x)).collect::<Vec<_>>());
                t.release_note = note.or(t.release_note.take());
            }
            None => out.push(ModelTarget { model, tags, release_note: note }),
        }
    }
    Ok(out)
}

/// The metadata of `rel`: its jsonl entries, overridden key by key by its sidecar.
pub fn for_file(root: &Path, rel: &str, jsonl: &Jsonl) -> Result<DatumMeta, MetadataError> {
    let mut raw = jsonl.get(rel)?.unwrap_or_default();
    if let Some(side) = read_sidecar(root, rel)? {
        raw.extend(side);
    }
    interpret(rel, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_overrides_jsonl_and_keys_are_interpreted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(JSONL),
            "{\"file\": \"m.bin\", \"metadata\": {\"valohai.tags\": [\"a\"], \"lr\": 1}}\n\
             {\"file\": \"m.bin\", \"metadata\": {\"lr\": 2}}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("m.bin.metadata.json"), r#"{"valohai.alias": "best", "x": "y"}"#).unwrap();
        let jsonl = read_jsonl(dir.path()).unwrap();
        let m = for_file(dir.path(), "m.bin", &jsonl).unwrap();
        assert_eq!(m.tags, vec!["a"]);
        assert_eq!(m.alias.as_deref(), Some("best"));
        assert_eq!(m.properties["lr"], 2);
        assert_eq!(m.properties["x"], "y");
        let v = interpret(
            "a.bin",
            serde_json::from_str(
                r#"{"valohai.dataset-versions": ["dataset://imgs/v1", {"uri": "dataset://imgs/v2"}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(v.dataset_versions, ["dataset://imgs/v1", "dataset://imgs/v2"]);
        let e = interpret("a.bin", serde_json::from_str(r#"{"valohai.dataset-versions": ["imgs/v1"]}"#).unwrap());
        assert_eq!(e.unwrap_err().file, "outputs/a.bin");
    }

    #[test]
    fn each_file_gets_its_own_lines_merged_in_order_among_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!("{{\"file\": \"./d/f{i}.bin\", \"metadata\": {{\"n\": {i}, \"k\": \"first\"}}}}\n"));
        }
        text.push_str("\n{\"file\": \"d/f7.bin\", \"metadata\": {\"k\": \"second\"}}\n");
        std::fs::write(dir.path().join(JSONL), text).unwrap();
        let jsonl = read_jsonl(dir.path()).unwrap();
        for i in 0..2000 {
            let m = jsonl.get(&format!("d/f{i}.bin")).unwrap().unwrap();
            assert_eq!(m["n"], i, "d/f{i}.bin");
            assert_eq!(m["k"], if i == 7 { "second" } else { "first" });
        }
        assert!(jsonl.get("d/f2000.bin").unwrap().is_none() && jsonl.get("f7.bin").unwrap().is_none());
        let err = read_jsonl_text(dir.path(), "[1]\n");
        assert!(err.contains("line 1") && err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn lines_read_later_are_the_lines_read_first_or_an_error_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let line = |f: &str, n: u32| format!("{{\"file\": \"{f}\", \"metadata\": {{\"n\": {n}}}}}\n");
        std::fs::write(dir.path().join(JSONL), line("a.bin", 1) + &line("b.bin", 2)).unwrap();
        let jsonl = read_jsonl(dir.path()).unwrap();
        // Appended after reading: not part of this sync.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(JSONL)).unwrap();
        std::io::Write::write_all(&mut f, line("a.bin", 3).as_bytes()).unwrap();
        assert_eq!(jsonl.get("a.bin").unwrap().unwrap()["n"], 1);
        // Written anew and renamed over: the file as it was read is still what counts.
        std::fs::write(dir.path().join("new"), line("a.bin", 7) + &line("b.bin", 8)).unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join(JSONL)).unwrap();
        assert_eq!(jsonl.get("b.bin").unwrap().unwrap()["n"], 2);
        // Changed in place: an error that names the line, never other metadata.
        let jsonl = read_jsonl(dir.path()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(JSONL))
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, line("b.bin", 9).as_bytes(), 0))
            .unwrap();
        let err = jsonl.get("a.bin").unwrap_err();
        assert!(err.file.ends_with("line 1") && err.problem.contains("changed"), "{err}");
        assert_eq!(jsonl.get("b.bin").unwrap().unwrap()["n"], 8);
    }

    fn read_jsonl_text(dir: &Path, text: &str) -> String {
        std::fs::write(dir.join(JSONL), text).unwrap();
        read_jsonl(dir).unwrap_err().to_string()
    }

    #[test]
    fn malformed_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.bin.metadata.json"), "{oops").unwrap();
        let err = for_file(dir.path(), "m.bin", &Jsonl::default()).unwrap_err();
        assert!(err.file == "outputs/m.bin.metadata.json" && err.problem.contains("malformed"), "{err}");
        std::fs::write(dir.path().join(JSONL), "{\"file\": \"a\"}\nnot json\n").unwrap();
        let err = read_jsonl(dir.path()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let bad_tags = interpret("a", serde_json::from_str(r#"{"valohai.tags": "x"}"#).unwrap()).unwrap_err();
        assert!(bad_tags.problem.contains("list"), "{bad_tags}");
    }
}
