//! `datumfs mount`.

use crate::config::{self, MountConfig};
use crate::inputs::spec;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags of `datumfs mount`; each is also read from the `DATUMFS_*` variable it names.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount (an existing, empty directory).
    #[arg(env = "DATUMFS_MOUNTPOINT")]
    mountpoint: PathBuf,
    /// An input: NAME=URI (s3://, gs://, az://, abfs(s)://, http(s)://, file://, a local path; a
    /// trailing '/' or a wildcard selects many). Repeat a NAME to merge URIs into one input.
    /// DATUMFS_INPUT takes several, separated by ';'.
    #[arg(long = "input", value_name = "NAME=URI", env = "DATUMFS_INPUT", value_delimiter = ';')]
    input: Vec<String>,
    /// A volume: NAME=URI[:ro|rw|rwd], a prefix served at MOUNTPOINT/volumes/NAME/ (read-only
    /// unless rw: create and change files, or rwd: delete them too). DATUMFS_VOLUME takes
    /// several, separated by ';'.
    #[arg(long = "volume", value_name = "NAME=URI[:MODE]", env = "DATUMFS_VOLUME", value_delimiter = ';')]
    volume: Vec<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (store requests by operation and
    /// outcome with latencies, fetches in flight, read-ahead, failed reads, bytes served and
    /// synced and outputs pending per mount, cache hits, fetches, evictions and size); the
    /// daemon of the cache dir serves them for all its mounts, from the first mount that asks.
    #[arg(long, value_name = "HOST:PORT", env = "DATUMFS_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// The project whose datums, datasets, models and aliases inputs name, and where the
    /// execution and its outputs are recorded [default: the store's default project].
    #[arg(long, value_name = "NAME", env = "DATUMFS_PROJECT")]
    project: Option<String>,
    /// A YAML or JSON file listing inputs as a Valohai step does (name, default,
    /// keep-directories, filename, optional), or a valohai.yaml (with --step).
    #[arg(long = "inputs", value_name = "FILE", env = "DATUMFS_INPUTS")]
    inputs_file: Option<PathBuf>,
    /// The step of a valohai.yaml whose inputs to mount.
    #[arg(long, value_name = "NAME", env = "DATUMFS_STEP")]
    step: Option<String>,
    /// Data store URL for datumfs's records [default: $DATUMFS_HOME/store, a local store].
    #[arg(long, value_name = "URL", env = "DATUMFS_STORE")]
    store: Option<String>,
    /// Cache directory [default: $DATUMFS_HOME/cache; DATUMFS_HOME defaults to ~/.local/share/datumfs].
    #[arg(long, value_name = "DIR", env = "DATUMFS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Cache size cap, e.g. 50GiB.
    #[arg(long, value_name = "SIZE", env = "DATUMFS_CACHE_SIZE", value_parser = config::parse_size)]
    cache_size: Option<u64>,
    /// Free space to keep on the cache's filesystem, e.g. 10GiB or 5% (evicts like the cap).
    #[arg(long, value_name = "SIZE|PERCENT", env = "DATUMFS_CACHE_MIN_FREE", value_parser = config::parse_min_free)]
    cache_min_free: Option<config::MinFree>,
    /// Evict cached objects not read for this long (7d, 12h, 30m, ...).
    #[arg(long, value_name = "DURATION", env = "DATUMFS_EVICT_AFTER", default_value = "7d", value_parser = config::parse_duration)]
    evict_after: std::time::Duration,
    /// Cache block size (4KiB to 64MiB).
    #[arg(long, value_name = "SIZE", env = "DATUMFS_BLOCK_SIZE", default_value = "1MiB", value_parser = config::parse_size)]
    block_size: u64,
    /// Largest read-ahead window for sequential readers.
    #[arg(long, value_name = "SIZE", env = "DATUMFS_READ_AHEAD", default_value = "64MiB", value_parser = config::parse_size)]
    read_ahead: u64,
    /// Outputs smaller than this are uploaded at sync inside pack objects (plain tars of tens of
    /// MiB), each still a datum of its own; 0 uploads every file as an object of its own.
    #[arg(long, value_name = "SIZE", env = "DATUMFS_PACK_BELOW", default_value = "1MiB", value_parser = config::parse_size)]
    pack_below: u64,
    /// Stay in the foreground and log to stderr too (for containers).
    #[arg(long, env = "DATUMFS_FOREGROUND")]
    foreground: bool,
    /// Mount options, comma-separated: allow_other, allow_root, ro, noexec, noatime, ...
    #[arg(short = 'o', value_name = "OPTIONS", env = "DATUMFS_OPTIONS")]
    options: Vec<String>,
    /// Owner shown for every file [default: the mounting user].
    #[arg(long, env = "DATUMFS_UID")]
    uid: Option<u32>,
    /// Group shown for every file [default: the mounting user's group].
    #[arg(long, env = "DATUMFS_GID")]
    gid: Option<u32>,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", env = "DATUMFS_LOG", default_value = "info")]
    log_level: String,
    /// Execution id [default: a new one]. Mounting again with the same id brings back its staged
    /// outputs (after a crash) and their sync state.
    #[arg(long, value_name = "ID", env = "DATUMFS_EXECUTION")]
    execution: Option<String>,
}

impl MountArgs {
    /// The validated settings.
    pub fn into_config(self) -> Result<MountConfig> {
        if !(4096..=64 << 20).contains(&self.block_size) {
            bail!("--block-size {}: must be between 4KiB and 64MiB", self.block_size);
        }
        let flags = self.input.iter().map(|f| spec::parse_flag(f)).collect::<Result<Vec<_>, _>>()?;
        let from_file = match &self.inputs_file {
            Some(path) => spec::load_file(path, self.step.as_deref())?,
            None if self.step.is_some() => bail!("--step needs --inputs FILE (a valohai.yaml)"),
            None => vec![],
        };
        let inputs = spec::combine(from_file, &flags)?;
        let twice = |list: &[crate::volumes::VolumeSpec]| {
            list.iter()
                .enumerate()
                .find(|(i, v)| list[..*i].iter().any(|w| w.name == v.name))
                .map(|(_, v)| v.name.clone())
        };
        let flagged = self.volume.iter().map(|v| crate::volumes::parse_flag(v)).collect::<Result<Vec<_>, _>>()?;
        let mut volumes = match &self.inputs_file {
            Some(path) => crate::volumes::load_file(path)?,
            None => Vec::new(),
        };
        if let Some(name) = twice(&flagged).or_else(|| twice(&volumes)) {
            bail!("--volume {name}: the name is given twice");
        }
        // A flag replaces the file's volume of the same name.
        volumes.retain(|w| flagged.iter().all(|v| v.name != w.name));
        volumes.extend(flagged);
        let execution = match self.execution {
            Some(id) => {
                crate::catalog::check_name(&id, "an execution id")?;
                id
            }
            None => format!("exec-{}", crate::catalog::new_id().to_ascii_lowercase()),
        };
        let home = config::datumfs_home();
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        let store = crate::config_file::store_for(self.store.as_deref(), self.project.as_deref());
        let store_url = match store.map(|s| crate::config_file::resolve_store(&s)) {
            // A local store is named by its absolute path: the daemon serving the mount may
            // run in another directory.
            Some(s) => match crate::uri::parse(&s, &cwd) {
                Ok(u) if u.scheme == crate::uri::Scheme::File => format!("file:///{}", u.key),
                _ => s,
            },
            None => format!("file://{}", super::absolute(&home.join("store")).display()),
        };
        Ok(MountConfig {
            mountpoint: super::absolute(&self.mountpoint),
            inputs,
            volumes,
            store_url,
            cache_dir: super::absolute(&self.cache_dir.unwrap_or_else(|| home.join("cache"))),
            cache_size: self.cache_size,
            evict_after: self.evict_after,
            cache_min_free: self.cache_min_free,
            block_size: self.block_size,
            read_ahead: self.read_ahead.max(self.block_size),
            pack_below: self.pack_below,
            foreground: self.foreground,
            options: self.options,
            uid: self.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
            gid: self.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
            log_level: self.log_level,
            execution,
            command: None,
            project: self.project,
            metrics_addr: self.metrics_addr,
            parameters: None,
            code: None,
            cwd,
        })
    }
}

/// Runs `datumfs mount`.
pub fn run(args: MountArgs) -> Result<i32> {
    let cfg = args.into_config()?;
    crate::daemon::mount(cfg)?;
    Ok(0)
}
