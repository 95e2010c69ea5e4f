//! `datumfs run`: mount, run a command with the Valohai directories set, sync its outputs (even
//! when it fails, by default), unmount, and exit with the command's status.

use super::mount::MountArgs;
use crate::control::UnsyncedOutputs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// When `run` syncs outputs.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SyncOn {
    /// Whatever the command's status (a crashed job keeps what it wrote).
    Always,
    /// Only when the command exits 0.
    Success,
    /// Never (outputs stay staged; mount again with the same --execution to sync them).
    Never,
}

/// Flags of `datumfs run`: those of `mount`, then the command after `--`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    mount: MountArgs,
    /// When to sync outputs.
    #[arg(long, value_enum, default_value = "always", env = "DATUMFS_SYNC_ON")]
    sync_on: SyncOn,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `datumfs run`.
pub fn run(args: RunArgs) -> Result<i32> {
    let mut cfg = args.mount.into_config()?;
    if cfg.foreground {
        bail!("--foreground does not apply to `datumfs run` (the mount lives as long as the command)");
    }
    cfg.command = Some(args.command.clone());
    let mp = cfg.mountpoint.clone();
    let execution = cfg.execution.clone();
    crate::daemon::mount(cfg)?;
    eprintln!("datumfs: mounted {} (execution {execution})", mp.display());

    // The job gets Ctrl-C; we stay to sync and unmount after it.
    // SAFETY: setting a signal disposition to "ignore" has no handler to race with.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let status = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("VH_INPUTS_DIR", mp.join("inputs"))
        .env("VH_OUTPUTS_DIR", mp.join("outputs"))
        .env("VH_CONFIG_DIR", mp.join("config"))
        .env("DATUMFS_EXECUTION", &execution)
        .status()
        .with_context(|| format!("running {}", args.command[0]));
    let code = match &status {
        Ok(s) => exit_code(*s),
        Err(e) => {
            eprintln!("datumfs: {e:#}");
            127
        }
    };
    let sync = match args.sync_on {
        SyncOn::Always => true,
        SyncOn::Success => code == 0,
        SyncOn::Never => false,
    };
    let mut synced_ok = true;
    if sync {
        match super::sync::sync_mount(&mp, false) {
            Ok((_, ok)) => synced_ok = ok,
            Err(e) => {
                eprintln!("datumfs: {e:#}");
                synced_ok = false;
            }
        }
    }
    // Unsynced outputs stay staged, never thrown away by `run`.
    if let Err(e) = super::unmount::unmount(&mp, UnsyncedOutputs::Keep, false, true) {
        eprintln!("datumfs: {e:#}");
    }
    if !synced_ok || !sync {
        eprintln!(
            "datumfs: outputs of execution {execution} are kept staged; `datumfs mount {} --execution {execution}` \
             then `datumfs sync` uploads them",
            mp.display()
        );
    }
    Ok(if code == 0 && !synced_ok { 1 } else { code })
}
