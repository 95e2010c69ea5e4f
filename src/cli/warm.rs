//! `datumfs warm MOUNTPOINT/inputs/NAME[/PATH]`: fetch whole inputs into the cache ahead of a
//! job, with a progress bar (or `--json`).

use crate::control::{self, Request};
use crate::daemon::mounts;
use crate::fs::WarmReport;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Flags of `datumfs warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// A directory or file under a mount's inputs/.
    path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The datumfs mount holding `path` and the path relative to it.
fn mount_of(path: &Path) -> Result<(PathBuf, String)> {
    let mut cur = Some(path);
    while let Some(p) = cur {
        if let Some(m) = mounts::at(p).filter(|m| m.is_datumfs()) {
            let rel = path.strip_prefix(&m.mountpoint).unwrap_or(Path::new("")).to_string_lossy().into_owned();
            return Ok((m.mountpoint, rel));
        }
        cur = p.parent();
    }
    bail!("{} is not inside a datumfs mount", path.display())
}

/// Runs `datumfs warm`.
pub fn run(args: WarmArgs) -> Result<i32> {
    let path = super::absolute(&args.path);
    let (mp, rel) = mount_of(&path)?;
    let socket = super::control_socket_of(&mp).with_context(|| format!("finding the daemon of {}", mp.display()))?;
    let bar = super::sync::progress_bar("warming");
    let resp = control::call_with_progress(&socket, &Request::Warm { mountpoint: mp.clone(), path: rel }, |p| {
        super::sync::show(&bar, p)
    })
    .with_context(|| format!("cannot reach the daemon of {}", mp.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let Some(report) = resp.status.and_then(|v| serde_json::from_value::<WarmReport>(v).ok()) else {
        bail!("warm {}: {}", path.display(), resp.error.unwrap_or_else(|| "no report".into()));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} file(s), {} cached ({} already were)",
            path.display(),
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
