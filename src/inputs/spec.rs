//! Input declarations: `--input NAME=URI` flags and `--inputs FILE` (a list of Valohai-style
//! inputs, in YAML or JSON, or a `valohai.yaml` with `--step NAME`).

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// A declaration that cannot be used.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The inputs file could not be read.
    #[error("inputs file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The inputs file is not valid YAML/JSON of the expected shape.
    #[error("inputs file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A `--input` flag is not `NAME=URI`, or a name is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// How object keys map to paths under `inputs/NAME/` for wildcard inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeepDirectories {
    /// Base names only (Valohai's default); two keys with one base name are an error.
    #[default]
    None,
    /// The path after the wildcard's fixed prefix.
    Suffix,
    /// The whole key.
    Full,
}

/// One input: a name and the URIs whose files appear under `inputs/NAME/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// The directory name under `inputs/`.
    pub name: String,
    /// Where the files come from (several URIs merge into one directory).
    pub uris: Vec<String>,
    /// Key-to-path mapping for wildcards.
    pub keep_directories: KeepDirectories,
    /// Name for the file of a single-file input.
    pub filename: Option<String>,
    /// An optional input may have no URI, or match nothing.
    pub optional: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    #[serde(default)]
    default: Option<OneOrMany>,
    #[serde(default, rename = "keep-directories", alias = "keep_directories")]
    keep_directories: Option<KeepDirectories>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "download")]
    _download: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct RawStep {
    name: String,
    #[serde(default)]
    inputs: Vec<RawInput>,
}

#[derive(Deserialize)]
struct RawStepItem {
    #[serde(default)]
    step: Option<RawStep>,
}

/// Checks an input name: one plain path segment.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if name.contains('/') || crate::keys::check_segment(name).is_err() {
        return Err(SpecError::Invalid(format!(
            "input name '{name}' must be one plain directory name (no '/', '.', '..' or control characters)"
        )));
    }
    Ok(())
}

/// Parses a `--input NAME=URI` flag.
pub fn parse_flag(flag: &str) -> Result<(String, String), SpecError> {
    let Some((name, uri)) = flag.split_once('=') else {
        return Err(SpecError::Invalid(format!("--input '{flag}': expected NAME=URI")));
    };
    check_name(name)?;
    if uri.is_empty() {
        return Err(SpecError::Invalid(format!("--input '{flag}': no URI after '='")));
    }
    Ok((name.to_string(), uri.to_string()))
}

fn convert(raw: RawInput) -> Result<InputSpec, SpecError> {
    check_name(&raw.name)?;
    let _ = raw.description;
    Ok(InputSpec {
        uris: match raw.default {
            None => vec![],
            Some(OneOrMany::One(u)) => vec![u],
            Some(OneOrMany::Many(v)) => v,
        },
        name: raw.name,
        keep_directories: raw.keep_directories.unwrap_or_default(),
        filename: raw.filename,
        optional: raw.optional,
    })
}

/// Reads an inputs file: a list of inputs, a mapping with `inputs:` (and `volumes:`), or a
/// `valohai.yaml` (then `step` picks the step; it may be omitted when the file has only one).
pub fn load_file(path: &Path, step: Option<&str>) -> Result<Vec<InputSpec>, SpecError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| SpecError::Read { path: shown.clone(), error })?;
    let parse_err = |reason: String| SpecError::Parse { path: shown.clone(), reason };
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
    let is_valohai_yaml = value
        .as_sequence()
        .is_some_and(|s| s.iter().any(|item| item.get("step").is_some() || item.get("pipeline").is_some()));
    let raws: Vec<RawInput> = if is_valohai_yaml {
        let items: Vec<RawStepItem> = serde_yaml_ng::from_value(value).map_err(|e| parse_err(e.to_string()))?;
        let steps: Vec<RawStep> = items.into_iter().filter_map(|i| i.step).collect();
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        let chosen = match step {
            Some(wanted) => steps
                .into_iter()
                .find(|s| s.name == wanted)
                .ok_or_else(|| parse_err(format!("no step named '{wanted}' (steps: {})", names.join(", "))))?,
            None if steps.len() == 1 => steps.into_iter().next().ok_or_else(|| parse_err("no steps".into()))?,
            None => {
                return Err(parse_err(format!("it has several steps; choose one with --step ({})", names.join(", "))))
            }
        };
        chosen.inputs
    } else {
        if step.is_some() {
            return Err(parse_err("--step needs a valohai.yaml (a list of steps)".into()));
        }
        // A list of inputs, or a mapping of `inputs:` and `volumes:` (read by
        // `volumes::load_file`).
        let list = match value {
            serde_yaml_ng::Value::Mapping(m) => {
                if let Some(k) = m.keys().find(|k| !matches!(k.as_str(), Some("inputs" | "volumes"))) {
                    return Err(parse_err(format!("unknown key {k:?}: expected inputs: and volumes:")));
                }
                m.get("inputs").cloned().unwrap_or(serde_yaml_ng::Value::Sequence(Vec::new()))
            }
            other => other,
        };
        serde_yaml_ng::from_value(list).map_err(|e| parse_err(format!("expected a list of inputs: {e}")))?
    };
    raws.into_iter().map(convert).collect::<Result<_, _>>().map_err(|e| parse_err(e.to_string()))
}

/// Combines the file's inputs with `--input` flags: a flag's URIs replace the file's default for
/// that name (as an execution overrides a step's default); repeated flags add URIs.
pub fn combine(file: Vec<InputSpec>, flags: &[(String, String)]) -> Result<Vec<InputSpec>, SpecError> {
    let mut out = file;
    let mut seen = std::collections::HashSet::new();
    for spec in &out {
        if !seen.insert(spec.name.clone()) {
            return Err(SpecError::Invalid(format!("input '{}' is declared twice in the inputs file", spec.name)));
        }
    }
    let mut overridden = std::collections::HashSet::new();
    for (name, uri) in flags {
        match out.iter_mut().find(|s| &s.name == name) {
            Some(spec) => {
                if overridden.insert(name.clone()) {
                    spec.uris.clear();
                }
                spec.uris.push(uri.clone());
            }
            None => {
                overridden.insert(name.clone());
                out.push(InputSpec {
                    name: name.clone(),
                    uris: vec![uri.clone()],
                    keep_directories: KeepDirectories::default(),
                    filename: None,
                    optional: false,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn inputs_list_yaml_and_json() {
        let f = write("- name: images\n  default: s3://b/i/*.jpg\n  keep-directories: suffix\n- name: labels\n  default: [s3://b/l.csv, s3://b/m.csv]\n  optional: true\n");
        let v = load_file(f.path(), None).unwrap();
        assert_eq!(v[0].keep_directories, KeepDirectories::Suffix);
        assert_eq!(v[1].uris.len(), 2);
        assert!(v[1].optional);
        let j = write(r#"[{"name": "x", "default": "s3://b/x", "filename": "y.bin"}]"#);
        assert_eq!(load_file(j.path(), None).unwrap()[0].filename.as_deref(), Some("y.bin"));
    }

    #[test]
    fn valohai_yaml_steps() {
        let f = write("- step:\n    name: train\n    image: python\n    command: python t.py\n    inputs:\n      - name: data\n        default: s3://b/d/\n- step:\n    name: eval\n    inputs: []\n");
        assert_eq!(load_file(f.path(), Some("train")).unwrap()[0].name, "data");
        let e = load_file(f.path(), None).unwrap_err().to_string();
        assert!(e.contains("--step") && e.contains("train"), "{e}");
        assert!(load_file(f.path(), Some("nope")).unwrap_err().to_string().contains("no step named 'nope'"));
    }

    #[test]
    fn malformed_files_name_the_file() {
        let f = write("- name: [unclosed\n");
        let e = load_file(f.path(), None).unwrap_err().to_string();
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        let f = write("- name: x\n  keep-directories: sideways\n");
        assert!(load_file(f.path(), None).is_err());
    }

    #[test]
    fn flags_override_and_add() {
        let file = vec![InputSpec {
            name: "d".into(),
            uris: vec!["s3://b/old".into()],
            keep_directories: KeepDirectories::Full,
            filename: None,
            optional: false,
        }];
        let flags =
            vec![("d".into(), "s3://b/new1".into()), ("d".into(), "s3://b/new2".into()), ("e".into(), "/tmp".into())];
        let v = combine(file, &flags).unwrap();
        assert_eq!(v[0].uris, vec!["s3://b/new1", "s3://b/new2"]);
        assert_eq!(v[0].keep_directories, KeepDirectories::Full);
        assert_eq!(v[1].name, "e");
        assert!(parse_flag("noequals").is_err());
        assert!(parse_flag("../x=s3://b/k").is_err());
        assert_eq!(parse_flag("a=s3://b/k=v").unwrap(), ("a".into(), "s3://b/k=v".into()));
    }
}
