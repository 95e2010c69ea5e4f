//! `datumfs volume`: syncing a mounted writable volume back to its prefix, and moving trees
//! between local disk and a prefix without a job.

use crate::control::{self, Request};
use crate::store::data::DataStore;
use crate::store::StoreRegistry;
use crate::sync::Progress;
use crate::volumes::transfer::{self, TransferReport};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// `datumfs volume ...`.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Put a mounted rw/rwd volume's changes back under its prefix: new and changed files are
    /// put, files deleted in the mount are deleted (rwd only). Each put and delete is
    /// conditional on the version the mount read; a key changed in the bucket since is a
    /// conflict, left alone and kept staged. Exits 3 on conflicts, 1 on other failures.
    Sync {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The volume's name (its directory under volumes/).
        name: String,
        /// Only say what would be put, deleted, refused or in conflict; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Overwrite and delete whatever the bucket has now, conflicts included.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload a local tree under a prefix (16 files at once, multipart for big files); files
    /// already there with the same content are skipped, so a rerun finishes an interrupted push.
    Push {
        /// The local directory.
        local: PathBuf,
        /// The prefix, e.g. s3://bucket/project/.
        uri: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download every object under a prefix into a local directory (each file written whole or
    /// not at all); files already the same are skipped.
    Pull {
        /// The prefix, e.g. s3://bucket/project/.
        uri: String,
        /// The local directory (made if missing).
        local: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `datumfs volume`.
pub fn run(args: VolumeArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (uri, local, json, pushing) = match args.command {
        VolumeCommand::Sync { mountpoint, name, dry_run, force, json } => {
            let (code, report) = sync_volume(&mountpoint, name, dry_run, force, !json)?;
            if json {
                super::print_json(&report)?;
            }
            return Ok(code);
        }
        VolumeCommand::Push { local, uri, json } => (uri, local, json, true),
        VolumeCommand::Pull { uri, local, json } => (uri, local, json, false),
    };
    let local = super::absolute(&local);
    if pushing && !local.is_dir() {
        return Err(anyhow!("{}: not a directory", local.display()));
    }
    let ds = DataStore::open(uri.trim_end_matches('/'), &StoreRegistry::new()).map_err(|e| anyhow!("{e}"))?;
    let progress = Arc::new(Progress::default());
    let bar = super::sync::progress_bar(if pushing { "pushing" } else { "pulling" });
    let report: TransferReport = rt.block_on(async {
        let ticker = super::sync::tick(progress.clone(), bar.clone());
        let r = if pushing {
            transfer::push(&ds, &local, &progress).await
        } else {
            transfer::pull(&ds, &local, &progress).await
        };
        ticker.abort();
        r
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        super::print_json(&report)?;
    } else {
        let verb = if pushing { "put" } else { "fetched" };
        println!(
            "{}: {} file(s) {verb} ({}), {} already the same",
            report.uri,
            report.moved.len(),
            crate::util::human_bytes(report.bytes),
            report.unchanged.len()
        );
    }
    for s in &report.skipped {
        eprintln!("datumfs: skipped {}: {}", s.path, s.error);
    }
    for f in &report.failed {
        eprintln!("datumfs: {}: {}", if f.path.is_empty() { &report.uri } else { &f.path }, f.error);
    }
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}

/// Runs `datumfs volume sync` (and `datumfs sync --volumes`, once per volume); returns the
/// exit code (0 all synced, 3 conflicts, 1 other failures) and the report, whose lines are
/// printed when `print` (problems always go to stderr).
pub(super) fn sync_volume(
    mountpoint: &std::path::Path,
    name: String,
    dry_run: bool,
    force: bool,
    print: bool,
) -> Result<(i32, serde_json::Value)> {
    let mp = super::absolute(mountpoint);
    let socket = super::control_socket_of(&mp)
        .map_err(|e| anyhow!("{} is not a datumfs mount (or its daemon is gone): {e}", mp.display()))?;
    let bar = super::sync::progress_bar(if dry_run { "checking" } else { "syncing" });
    let req = Request::VolumeSync { mountpoint: mp.clone(), name: name.clone(), dry_run, force };
    let resp = control::call_with_progress(&socket, &req, |p| super::sync::show(&bar, p))
        .map_err(|e| anyhow!("cannot reach the daemon of {}: {e}", mp.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let Some(report) = resp.status else {
        return Err(anyhow!(
            "volume sync of {name} failed: {}",
            resp.error.unwrap_or_else(|| "the daemon gave no report".into())
        ));
    };
    if print {
        let would = if dry_run { "would put" } else { "put" };
        for p in report["put"].as_array().into_iter().flatten() {
            println!(
                "{would} {} ({}, {} bytes)",
                p["key"].as_str().unwrap_or(""),
                p["why"].as_str().unwrap_or(""),
                p["size"]
            );
        }
        let would = if dry_run { "would delete" } else { "deleted" };
        for k in report["deleted"].as_array().into_iter().flatten() {
            println!("{would} {}", k.as_str().unwrap_or(""));
        }
    }
    for c in report["conflicts"].as_array().into_iter().flatten() {
        let show = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| "absent".into());
        eprintln!(
            "datumfs: conflict: {} changed in the bucket since the mount read it (mount read {}, bucket has {}); \
             not {}, kept staged",
            c["key"].as_str().unwrap_or(""),
            show(&c["mount_saw"]),
            show(&c["bucket_has"]),
            if c["action"] == "delete" { "deleted" } else { "overwritten" }
        );
    }
    for (what, list) in [("refused", "refused"), ("skipped", "skipped"), ("failed", "failed")] {
        for f in report[list].as_array().into_iter().flatten() {
            eprintln!("datumfs: {what} {}: {}", f["key"].as_str().unwrap_or(""), f["reason"].as_str().unwrap_or(""));
        }
    }
    for k in report["changed_while_put"].as_array().into_iter().flatten() {
        eprintln!("datumfs: {} changed while it was put; it stays a change to sync again", k.as_str().unwrap_or(""));
    }
    let conflicts = report["conflicts"].as_array().is_some_and(|c| !c.is_empty());
    let code = match (resp.ok, conflicts) {
        (true, _) => 0,
        (false, true) => 3,
        (false, false) => 1,
    };
    Ok((code, report))
}
