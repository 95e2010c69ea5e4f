//! `datumfs csi`: the Kubernetes CSI node plugin, serving until SIGTERM or SIGINT.

use crate::csi::{self, Driver};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags of `datumfs csi`. The mounts it makes read everything else (cache dir, store,
/// credentials, cache settings) from its environment and configuration files, as
/// `datumfs mount` does.
#[derive(Debug, Args)]
pub struct CsiArgs {
    /// The socket to serve on: unix:///PATH or a path (what kubelet and the node driver
    /// registrar are given as the driver's endpoint).
    #[arg(long, value_name = "unix:///PATH", env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's id [default: $KUBE_NODE_NAME, else the host name].
    #[arg(long, value_name = "ID", env = "KUBE_NODE_NAME")]
    node_id: Option<String>,
    /// Where the driver records each published volume, so that a restarted driver can still
    /// take it down as asked.
    #[arg(long, value_name = "DIR", env = "DATUMFS_CSI_STATE_DIR", default_value = "/var/lib/datumfs/csi")]
    state_dir: PathBuf,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", env = "DATUMFS_LOG", default_value = "info")]
    log_level: String,
}

/// Runs `datumfs csi`.
pub fn run(args: CsiArgs) -> Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level '{}'", args.log_level))?;
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let node_id = args.node_id.filter(|n| !n.is_empty()).unwrap_or_else(crate::util::hostname);
    let program = std::env::current_exe().context("finding the datumfs binary")?;
    let driver = Driver::new(node_id, args.state_dir.clone(), program)
        .with_context(|| format!("state dir {}", args.state_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(csi::serve(&args.endpoint, driver))?;
    Ok(0)
}
