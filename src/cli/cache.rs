//! `datumfs cache stats|evict|verify`: through the owning daemon's control socket when one
//! runs, directly on the cache dir otherwise.

use crate::cache::{Cache, CacheReport, EvictReport, EvictWhat, VerifyReport};
use crate::control::{self, CacheOp, Request};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `datumfs cache ...`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
    /// The cache directory [default: $DATUMFS_HOME/cache].
    #[arg(long, value_name = "DIR", env = "DATUMFS_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Size, objects, blocks, hit figures, oldest access, and what the next eviction would remove.
    Stats {
        /// The eviction age to report on [default: the daemon's --evict-after, or 7d].
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
        evict_after: Option<Duration>,
    },
    /// Evict cached objects (never one that is open).
    Evict {
        /// Those not read for this long.
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration, conflicts_with = "all")]
        older_than: Option<Duration>,
        /// Everything.
        #[arg(long)]
        all: bool,
        /// Objects by URI.
        uris: Vec<String>,
    },
    /// Re-read every cached block and check its checksum.
    Verify {
        /// Drop bad blocks (they are fetched again when next read).
        #[arg(long)]
        repair: bool,
    },
}

/// Runs the operation in the daemon that owns `dir`, or directly when none does.
fn run_op(dir: &std::path::Path, op: CacheOp) -> Result<serde_json::Value> {
    let socket = crate::daemon::control_socket(dir);
    if socket.exists() {
        if let Ok(resp) = control::call(&socket, &Request::Cache { action: op.clone() }) {
            if !resp.ok {
                bail!("{}", resp.error.unwrap_or_else(|| "the daemon refused".into()));
            }
            return resp.status.ok_or_else(|| anyhow!("the daemon sent no answer"));
        }
    }
    if !dir.join("index").exists() {
        bail!("{} holds no datumfs cache", dir.display());
    }
    let _lock = crate::daemon::lock_cache_dir(dir)?;
    let cache = Cache::open(dir, 1 << 20)?;
    let v = match op {
        CacheOp::Stats { evict_after } => {
            let after = Duration::from_secs(evict_after.unwrap_or(7 * 24 * 3600));
            serde_json::to_value(cache.report(after)?)?
        }
        CacheOp::Evict { what } => serde_json::to_value(cache.evict(&what)?)?,
        CacheOp::Verify { repair } => serde_json::to_value(cache.verify_blocks(repair)?)?,
    };
    cache.flush()?;
    Ok(v)
}

/// Runs `datumfs cache`.
pub fn run(args: CacheArgs) -> Result<i32> {
    let dir = super::absolute(&args.cache_dir.unwrap_or_else(|| crate::config::datumfs_home().join("cache")));
    let op = match &args.command {
        CacheCommand::Stats { evict_after } => CacheOp::Stats { evict_after: evict_after.map(|d| d.as_secs()) },
        CacheCommand::Evict { older_than, all, uris } => {
            let what = match (older_than, all, uris.is_empty()) {
                (Some(d), false, true) => EvictWhat::OlderThan(d.as_secs()),
                (None, true, true) => EvictWhat::All,
                (None, false, false) => EvictWhat::Uris(uris.clone()),
                _ => bail!("say what to evict: --older-than DURATION, --all, or URIs (one of them)"),
            };
            CacheOp::Evict { what }
        }
        CacheCommand::Verify { repair } => CacheOp::Verify { repair: *repair },
    };
    let v = run_op(&dir, op).with_context(|| format!("cache {}", dir.display()))?;
    if args.json {
        super::print_json(&v)?;
    }
    Ok(match args.command {
        CacheCommand::Stats { .. } => {
            let r: CacheReport = serde_json::from_value(v)?;
            if !args.json {
                println!(
                    "cache {}: {} on disk, {} objects, {} blocks",
                    r.dir.display(),
                    super::human_bytes(r.disk_bytes),
                    r.objects,
                    r.blocks
                );
                if let (Some(hit), Some(fetched)) = (r.hit_bytes, r.fetched_bytes) {
                    let rate = if hit + fetched > 0 { 100.0 * hit as f64 / (hit + fetched) as f64 } else { 0.0 };
                    println!(
                        "  since the daemon started: {} served from cache, {} fetched ({rate:.0}% hits)",
                        super::human_bytes(hit),
                        super::human_bytes(fetched)
                    );
                }
                if let Some(t) = r.oldest_access {
                    let age = crate::cache::now_secs().saturating_sub(t);
                    println!("  oldest access: {} ago", humantime::format_duration(Duration::from_secs(age)));
                }
                let n = &r.next_eviction;
                println!(
                    "  next eviction by age would remove {} object(s), {}",
                    n.objects,
                    super::human_bytes(n.bytes)
                );
            }
            0
        }
        CacheCommand::Evict { .. } => {
            let r: EvictReport = serde_json::from_value(v)?;
            if !args.json {
                println!(
                    "evicted {} object(s), {} freed; {} kept because they are open",
                    r.objects,
                    super::human_bytes(r.bytes),
                    r.kept_open
                );
            }
            0
        }
        CacheCommand::Verify { repair } => {
            let r: VerifyReport = serde_json::from_value(v)?;
            if !args.json {
                println!("checked {} block(s) of {} object(s): {} bad", r.blocks, r.objects, r.bad.len());
                for (uri, block) in &r.bad {
                    println!("  bad block {block} of {uri}{}", if repair { " (dropped)" } else { "" });
                }
            }
            if r.bad.is_empty() || repair {
                0
            } else {
                1
            }
        }
    })
}
