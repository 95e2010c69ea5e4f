//! `datumfs sync`: asks the daemon to upload new and changed outputs, shows progress, prints
//! `path -> datum://ID` lines (or the report as JSON).

use crate::control::{self, Request};
use crate::sync::{ProgressSnapshot, SyncReport};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Flags of `datumfs sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also put every writable volume's changes back under its prefix (as `datumfs volume
    /// sync` does for one).
    #[arg(long)]
    volumes: bool,
}

/// A progress bar on stderr when it is a terminal.
pub(super) fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {prefix}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// Shows `progress` on `bar` every 200 ms until the returned task is aborted (work done in this
/// process, not through a daemon).
pub(super) fn tick(
    progress: std::sync::Arc<crate::sync::Progress>,
    bar: Option<indicatif::ProgressBar>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            show(&bar, progress.snapshot());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

pub(super) fn show(bar: &Option<indicatif::ProgressBar>, p: ProgressSnapshot) {
    if let Some(b) = bar {
        b.set_length(p.bytes_total);
        b.set_position(p.bytes_done);
        b.set_prefix(format!("{}/{} files", p.files_done, p.files_total));
    }
}

/// Syncs the mount at `mp`; prints the outcome. Returns the report and whether all went well.
pub(super) fn sync_mount(mp: &Path, json: bool) -> Result<(SyncReport, bool)> {
    let socket = super::control_socket_of(mp)
        .with_context(|| format!("{} is not a datumfs mount (or its daemon is gone)", mp.display()))?;
    let bar = progress_bar("syncing");
    let resp = control::call_with_progress(&socket, &Request::Sync { mountpoint: mp.to_path_buf() }, |p| show(&bar, p))
        .with_context(|| format!("cannot reach the daemon of {}", mp.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let Some(report) = resp.status.and_then(|v| serde_json::from_value::<SyncReport>(v).ok()) else {
        bail!("sync of {} failed: {}", mp.display(), resp.error.unwrap_or_else(|| "no report".into()));
    };
    if json {
        super::print_json(&report)?;
    } else {
        for d in &report.datums {
            let note = if d.new { "" } else { "  (unchanged)" };
            println!("{} -> {}{note}", d.path, d.datum);
        }
        for (alias, datum) in &report.aliases {
            println!("alias {alias} -> {datum}");
        }
        for v in &report.versions {
            let kind = if v.starts_with("model://") { "model" } else { "dataset" };
            println!("{kind} version {v}");
        }
    }
    for s in &report.skipped {
        eprintln!("datumfs: skipped outputs/{}: {}", s.path, s.error);
    }
    for f in &report.failed {
        if f.path.starts_with("dataset://") {
            eprintln!("datumfs: {}: {}", f.path, f.error);
        } else {
            eprintln!("datumfs: outputs/{}: {}", f.path, f.error);
        }
    }
    if !resp.ok {
        eprintln!("datumfs: sync incomplete: {}", resp.error.unwrap_or_default());
        eprintln!("datumfs: nothing is lost; fix the cause and run `datumfs sync {}` again", mp.display());
    }
    Ok((report, resp.ok))
}

/// Runs `datumfs sync`.
pub fn run(args: SyncArgs) -> Result<i32> {
    let mp = super::absolute(&args.mountpoint);
    let (outputs, ok) = sync_mount(&mp, args.json && !args.volumes)?;
    if !args.volumes {
        return Ok(if ok { 0 } else { 1 });
    }
    // Outputs first, then each writable volume; the worst outcome is the exit code.
    let socket = super::control_socket_of(&mp)?;
    let status = control::call(&socket, &Request::Status { mountpoint: mp.clone() })?;
    let names: Vec<String> = status
        .status
        .as_ref()
        .and_then(|s| s["volumes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|v| v["mode"] != "ro")
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let mut code = if ok { 0 } else { 1 };
    let mut reports = Vec::new();
    for name in names {
        let (c, report) = super::volume::sync_volume(&mp, name, false, false, !args.json)?;
        code = code.max(c);
        reports.push(report);
    }
    if args.json {
        super::print_json(&serde_json::json!({ "outputs": outputs, "volumes": reports }))?;
    }
    Ok(code)
}
