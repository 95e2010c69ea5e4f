//! Validated settings built from flags, environment and files. No I/O handles live here.

use crate::inputs::spec::InputSpec;
use std::path::PathBuf;

/// `$DATUMFS_HOME`, defaulting to `~/.local/share/datumfs`.
pub fn datumfs_home() -> PathBuf {
    if let Some(h) = std::env::var_os("DATUMFS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/datumfs")
}

/// Parses `50GiB`, `512MiB`, `1M`, `4096`, `1.5GB` into bytes (binary units for `K/M/G/T` too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("'{text}' is not a size (examples: 4096, 512KiB, 1MiB, 50GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{text}': unknown unit '{unit}' (use B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses `7d`, `12h`, `30m`, `2s` (humantime's forms) into a duration.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration ({e}; examples: 7d, 12h, 30m, 90s)"))
}

/// Free space to keep: bytes, or a percentage of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MinFree {
    /// Bytes.
    Bytes(u64),
    /// Percent of the filesystem's size.
    Percent(f64),
}

impl MinFree {
    /// In bytes, for a filesystem of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// Parses `10GiB` or `5%`.
pub fn parse_min_free(text: &str) -> Result<MinFree, String> {
    match text.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<f64>() {
            Ok(v) if (0.0..100.0).contains(&v) => Ok(MinFree::Percent(v)),
            _ => Err(format!("'{text}': a percentage must be between 0% and 100%")),
        },
        None => parse_size(text).map(MinFree::Bytes),
    }
}

/// Everything `datumfs mount` needs, validated.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MountConfig {
    /// Absolute mountpoint.
    pub mountpoint: PathBuf,
    /// Declared inputs.
    pub inputs: Vec<InputSpec>,
    /// Volumes, served under `volumes/`.
    #[serde(default)]
    pub volumes: Vec<crate::volumes::VolumeSpec>,
    /// Data store URL.
    pub store_url: String,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Cache size cap in bytes: least recently used objects are evicted to stay under it.
    pub cache_size: Option<u64>,
    /// Cached objects not read for this long are evicted.
    pub evict_after: std::time::Duration,
    /// Free space to keep on the cache's filesystem.
    pub cache_min_free: Option<MinFree>,
    /// Block size in bytes.
    pub block_size: u64,
    /// Largest read-ahead window in bytes.
    pub read_ahead: u64,
    /// Outputs smaller than this go into packs at sync (0: none do).
    pub pack_below: u64,
    /// Stay in the foreground (containers).
    pub foreground: bool,
    /// Extra mount options (`allow_other`, `ro`, ...).
    pub options: Vec<String>,
    /// Owner shown for files.
    pub uid: u32,
    /// Group shown for files.
    pub gid: u32,
    /// Log filter (tracing's syntax).
    pub log_level: String,
    /// The execution id: names the staged outputs and every datum they become.
    pub execution: String,
    /// The command run in the mount (`datumfs run`), for the execution record.
    pub command: Option<Vec<String>>,
    /// Where the daemon serves Prometheus metrics (`HOST:PORT`), if anywhere.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// The project of the store whose names the mount uses (`None`: the default project).
    #[serde(default)]
    pub project: Option<String>,
    /// The job's parameters (`datumfs run`): `config/parameters.json` and the execution record.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// The code the job runs (`datumfs run` in a git checkout), for the execution record.
    #[serde(default)]
    pub code: Option<crate::catalog::CodeInfo>,
    /// The directory relative local paths in inputs are taken from.
    pub cwd: PathBuf,
}

impl MountConfig {
    /// Where this execution's outputs are staged.
    pub fn staging_dir(&self) -> PathBuf {
        self.cache_dir.join("outputs").join(&self.execution)
    }

    /// Where writable volume `name` keeps its staged changes and state (under the execution,
    /// so a remount with the same execution id finds them).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.cache_dir.join("volumes").join(&self.execution).join(name)
    }

    /// The daemon's log file.
    pub fn log_file(&self) -> PathBuf {
        self.cache_dir.join("datumfs.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("lots").unwrap_err().contains("lots"));
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn min_free_and_durations() {
        assert_eq!(parse_min_free("5%").unwrap().bytes(1000), 50);
        assert_eq!(parse_min_free("1MiB").unwrap(), MinFree::Bytes(1 << 20));
        assert!(parse_min_free("150%").is_err());
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 24 * 3600);
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }
}
