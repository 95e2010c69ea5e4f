//! `datumfs volume`: moving trees between local disk and a prefix, without a job.

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
