//! Volumes: a bucket prefix mounted at `MOUNTPOINT/volumes/NAME/`, read lazily through the block
//! cache as inputs are. `ro` serves it read-only (an input at another place); `rw` and `rwd`
//! are the writable kinds, whose changes are staged on the node and put back under the prefix
//! only when asked.

pub mod state;
pub mod sync;
pub mod transfer;

use crate::inputs::spec::{check_name, InputSpec, KeepDirectories, SpecError};
use serde::{Deserialize, Serialize};

/// What a mount may do to a volume's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeMode {
    /// Read only.
    #[default]
    Ro,
    /// Create and change files.
    Rw,
    /// Create, change and delete files.
    Rwd,
}

impl VolumeMode {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ro" => Some(VolumeMode::Ro),
            "rw" => Some(VolumeMode::Rw),
            "rwd" => Some(VolumeMode::Rwd),
            _ => None,
        }
    }

    /// Its name as written in `--volume`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Ro => "ro",
            VolumeMode::Rw => "rw",
            VolumeMode::Rwd => "rwd",
        }
    }
}

/// One volume of a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The directory name under `volumes/`.
    pub name: String,
    /// The prefix it shows (`s3://bucket/prefix/`, `file:///dir/`, ...).
    pub uri: String,
    /// What the mount may do to it.
    pub mode: VolumeMode,
}

impl VolumeSpec {
    /// The volume as an input: every key under its prefix, by its path below the prefix, and
    /// an empty prefix is an empty volume rather than an error.
    pub fn as_input(&self) -> InputSpec {
        let uri =
            if self.uri.ends_with('/') || self.uri.contains('*') { self.uri.clone() } else { format!("{}/", self.uri) };
        InputSpec {
            name: self.name.clone(),
            uris: vec![uri],
            keep_directories: KeepDirectories::Suffix,
            filename: None,
            optional: true,
        }
    }
}

/// Parses `--volume NAME=URI[:ro|rw|rwd]` (read-only when no mode is given).
pub fn parse_flag(flag: &str) -> Result<VolumeSpec, SpecError> {
    let bad = |why: &str| SpecError::Invalid(format!("--volume '{flag}': {why}"));
    let Some((name, rest)) = flag.split_once('=') else {
        return Err(bad("expected NAME=URI[:ro|rw|rwd]"));
    };
    check_name(name).map_err(|e| bad(&e.to_string()))?;
    let (uri, mode) = match rest.rsplit_once(':') {
        Some((uri, m)) if VolumeMode::parse(m).is_some() => (uri, VolumeMode::parse(m).unwrap_or_default()),
        Some((_, m)) if !m.starts_with("//") && !m.contains('/') && !m.is_empty() && rest.contains("://") => {
            return Err(bad(&format!("unknown mode '{m}' (ro, rw or rwd)")))
        }
        _ => (rest, VolumeMode::Ro),
    };
    if uri.is_empty() {
        return Err(bad("no URI after '='"));
    }
    Ok(VolumeSpec { name: name.to_string(), uri: uri.to_string(), mode })
}

/// A volume as an inputs file declares it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
    uri: String,
    #[serde(default)]
    mode: Option<String>,
}

/// The volumes an inputs file declares (`volumes:` in its mapping form: a list of `name`, `uri`
/// and `mode`); none for the other forms.
pub fn load_file(path: &std::path::Path) -> Result<Vec<VolumeSpec>, SpecError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| SpecError::Read { path: shown.clone(), error })?;
    let parse_err = |reason: String| SpecError::Parse { path: shown.clone(), reason };
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
    let Some(list) = value.get("volumes").cloned() else { return Ok(Vec::new()) };
    let raws: Vec<RawVolume> = serde_yaml_ng::from_value(list)
        .map_err(|e| parse_err(format!("volumes: expected a list of name, uri, mode: {e}")))?;
    raws.into_iter()
        .map(|r| {
            let flag = match r.mode {
                Some(m) => format!("{}={}:{m}", r.name, r.uri),
                None => format!("{}={}", r.name, r.uri),
            };
            parse_flag(&flag).map_err(|e| parse_err(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_a_prefix_and_a_mode() {
        let v = parse_flag("work=s3://vol/proj/:rwd").unwrap();
        assert_eq!((v.name.as_str(), v.uri.as_str(), v.mode), ("work", "s3://vol/proj/", VolumeMode::Rwd));
        let v = parse_flag("w=s3://vol/proj/").unwrap();
        assert_eq!((v.uri.as_str(), v.mode), ("s3://vol/proj/", VolumeMode::Ro));
        assert_eq!(parse_flag("w=/data/x:rw").unwrap().mode, VolumeMode::Rw);
        assert_eq!(parse_flag("w=s3://b/p").unwrap().as_input().uris, ["s3://b/p/"]);
        for bad in ["nothing", "=s3://b/", "a/b=s3://b/", "w=", "w=s3://b/p/:rx"] {
            let e = parse_flag(bad).unwrap_err().to_string();
            assert!(e.contains("--volume"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_inputs_file_declares_volumes_beside_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("inputs.yaml");
        std::fs::write(
            &f,
            "inputs:\n  - name: data\n    default: s3://b/d/\nvolumes:\n  - name: work\n    uri: s3://b/w/\n    mode: rwd\n  - name: ref\n    uri: s3://b/r/\n",
        )
        .unwrap();
        let v = load_file(&f).unwrap();
        assert_eq!((v[0].name.as_str(), v[0].mode, v[1].mode), ("work", VolumeMode::Rwd, VolumeMode::Ro));
        let inputs = crate::inputs::spec::load_file(&f, None).unwrap();
        assert_eq!((inputs.len(), inputs[0].uris[0].as_str()), (1, "s3://b/d/"));
        std::fs::write(&f, "volumes:\n  - name: w\n    uri: s3://b/w/\n    mode: rx\n").unwrap();
        let e = load_file(&f).unwrap_err().to_string();
        assert!(e.contains("inputs.yaml") && e.contains("rx"), "{e}");
        std::fs::write(&f, "inputz: []\n").unwrap();
        let e = crate::inputs::spec::load_file(&f, None).unwrap_err().to_string();
        assert!(e.contains("inputz"), "{e}");
        std::fs::write(&f, "- name: data\n  default: s3://b/d/\n").unwrap();
        assert!(load_file(&f).unwrap().is_empty(), "a plain list declares no volumes");
    }
}
