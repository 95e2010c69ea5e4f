//! `datumfs warm MOUNTPOINT/inputs/NAME[/PATH]` (or `volumes/NAME[/PATH]`) or `datumfs warm
//! URI`: fetch whole inputs into the cache ahead of a job, with a progress bar (or `--json`). A
//! URI is warmed by the daemon of the cache dir when one runs, or directly (holding the cache's
//! lock) when none does.

use crate::control::{self, Request};
use crate::daemon::mounts;
use crate::fs::WarmReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Flags of `datumfs warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// A directory or file under a mount's inputs/ or volumes/, or a URI as --input takes it
    /// (s3://..., datum://..., dataset://..., a local path outside any mount).
    target: String,
    /// Cache directory, for a URI [default: $DATUMFS_HOME/cache].
    #[arg(long, value_name = "DIR", env = "DATUMFS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: super::datum::StoreArg,
}

/// The datumfs mount holding `path` and the path relative to it.
fn mount_of(path: &Path) -> Option<(PathBuf, String)> {
    let mut cur = Some(path);
    while let Some(p) = cur {
        if let Some(m) = mounts::at(p).filter(|m| m.is_datumfs()) {
            let rel = path.strip_prefix(&m.mountpoint).unwrap_or(Path::new("")).to_string_lossy().into_owned();
            return Some((m.mountpoint, rel));
        }
        cur = p.parent();
    }
    None
}

/// Warms `rel` of the mount at `mp` through its daemon.
fn warm_in_mount(mp: &Path, rel: String) -> Result<control::Response> {
    let socket = super::control_socket_of(mp).with_context(|| format!("finding the daemon of {}", mp.display()))?;
    let bar = super::sync::progress_bar("warming");
    let req = Request::Warm { mountpoint: mp.to_path_buf(), path: rel };
    let resp = control::call_with_progress(&socket, &req, |p| super::sync::show(&bar, p))
        .with_context(|| format!("cannot reach the daemon of {}", mp.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(resp)
}

/// Warms a URI into the cache at `cache_dir`: through its daemon when one runs, else directly.
fn warm_uri(uri: &str, cache_dir: &Path, store: &str) -> Result<control::Response> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    crate::uri::parse(uri, &cwd)?;
    let socket = crate::daemon::control_socket(cache_dir);
    let bar = super::sync::progress_bar("warming");
    let req = Request::WarmUri {
        uri: uri.to_string(),
        store: store.to_string(),
        cwd: cwd.clone(),
        environment: crate::daemon::store_environment(),
    };
    let resp = match control::call_with_progress(&socket, &req, |p| super::sync::show(&bar, p)) {
        Ok(resp) => resp,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            warm_directly(uri, cache_dir, store, &cwd, &bar)?
        }
        Err(e) => bail!("cannot reach the datumfs daemon of cache dir {}: {e}", cache_dir.display()),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(resp)
}

/// Opens the cache (holding its lock, as a daemon would) and warms `uri` into it.
fn warm_directly(
    uri: &str,
    cache_dir: &Path,
    store: &str,
    cwd: &Path,
    bar: &Option<indicatif::ProgressBar>,
) -> Result<control::Response> {
    crate::cache::create_private_dir(cache_dir)?;
    let _lock = crate::daemon::lock_cache_dir(cache_dir)?;
    let cache = std::sync::Arc::new(crate::cache::Cache::open(cache_dir, 1 << 20)?);
    let rt = super::datum::runtime()?;
    let registry = crate::store::StoreRegistry::new();
    let catalog = crate::catalog::Catalog::new(
        crate::store::data::DataStore::open(store, &registry).map_err(|e| anyhow::anyhow!("--store: {e}"))?,
    );
    let reader = std::sync::Arc::new(crate::reader::Reader::new(crate::reader::ReadConfig::default()));
    let progress = std::sync::Arc::new(crate::sync::Progress::default());
    let res = rt.block_on(async {
        let ticker = super::sync::tick(progress.clone(), bar.clone());
        let what =
            crate::fs::WarmUri { uri, cwd, cache: cache.clone(), reader, registry: &registry, catalog: Some(&catalog) };
        let r = crate::fs::warm_uri(what, &progress).await;
        ticker.abort();
        r
    });
    cache.flush()?;
    Ok(crate::daemon::warm_answer(res))
}

/// Runs `datumfs warm`.
pub fn run(args: WarmArgs) -> Result<i32> {
    let in_mount = if args.target.contains("://") { None } else { mount_of(&super::absolute(Path::new(&args.target))) };
    let resp = match in_mount {
        Some((mp, rel)) => warm_in_mount(&mp, rel)?,
        None => {
            let dir = args.cache_dir.clone().unwrap_or_else(|| crate::config::datumfs_home().join("cache"));
            warm_uri(&args.target, &super::absolute(&dir), &args.store.url())?
        }
    };
    let path = &args.target;
    let Some(report) = resp.status.and_then(|v| serde_json::from_value::<WarmReport>(v).ok()) else {
        bail!("warm {path}: {}", resp.error.unwrap_or_else(|| "no report".into()));
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        println!(
            "{path}: {} file(s), {} cached ({} already were)",
            report.files,
            super::human_bytes(report.bytes),
            report.already_cached
        );
    }
    for (p, e) in &report.failed {
        eprintln!("datumfs: {p}: {e}");
    }
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
