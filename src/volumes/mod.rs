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
}
