//! `datumfs unmount`.

use crate::control::{self, Request, UnsyncedOutputs};
use crate::daemon::mounts;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Flags of `datumfs unmount`.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Detach the mount even when files are open or the daemon does not answer (unsynced
    /// outputs stay staged for a later mount with the same --execution).
    #[arg(long)]
    force: bool,
    /// Sync outputs first; do not unmount if that fails.
    #[arg(long, conflicts_with = "discard")]
    sync: bool,
    /// Throw unsynced outputs away.
    #[arg(long)]
    discard: bool,
}

/// Whether process `pid` still runs (a zombie waiting for its parent counts as gone).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Runs `datumfs unmount`.
pub fn run(args: UnmountArgs) -> Result<i32> {
    let mode = if args.discard { UnsyncedOutputs::Discard } else { UnsyncedOutputs::Refuse };
    unmount(&args.mountpoint, mode, args.sync, args.force)
}

/// Unmounts `mountpoint` (syncing first with `sync`); `force` detaches when the daemon cannot.
pub(super) fn unmount(mountpoint: &std::path::Path, mode: UnsyncedOutputs, sync: bool, force: bool) -> Result<i32> {
    let mp = super::absolute(mountpoint);
    if mounts::is_dead(&mp) {
        mounts::detach(&mp)?;
        eprintln!("datumfs: {} was a dead mount (its daemon had gone); cleaned up", mp.display());
        return Ok(0);
    }
    let Some(entry) = mounts::at(&mp) else { bail!("{} is not mounted", mp.display()) };
    if !entry.is_datumfs() {
        bail!("{} is not a datumfs mount (it is {})", mp.display(), entry.fstype);
    }
    if sync {
        let (_, ok) = super::sync::sync_mount(&mp, false)?;
        if !ok {
            bail!("not unmounting {}: its outputs did not all sync", mp.display());
        }
    }
    let answer = super::control_socket_of(&mp)
        .and_then(|sock| control::call(&sock, &Request::Unmount { mountpoint: mp.clone(), unsynced: mode }));
    let failure = match answer {
        Ok(resp) if resp.ok => {
            // The daemon answers once the mount is gone and its outputs are settled; after its
            // last mount it exits too, which is over once its cache lock is free.
            let deadline = Instant::now() + Duration::from_secs(30);
            let exits = resp.status.as_ref().is_some_and(|s| s["daemon_exits"] == true);
            while ((exits && pid_alive(resp.pid)) || mounts::at(&mp).is_some()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let lock = resp.status.as_ref().and_then(|s| s["cache_lock"].as_str()).map(PathBuf::from);
            if let (true, Some(lock)) = (exits, lock) {
                crate::daemon::wait_cache_lock_free(&lock, deadline.saturating_duration_since(Instant::now()));
            }
            if mounts::at(&mp).is_none() {
                return Ok(0);
            }
            "the daemon did not finish within 30 s".to_string()
        }
        Ok(resp) if !force => {
            bail!("could not unmount {}: {}", mp.display(), resp.error.unwrap_or_else(|| "the daemon refused".into()))
        }
        Ok(resp) => resp.error.unwrap_or_else(|| "the daemon refused".into()),
        // The daemon may have gone as it unmounted; what counts is that the mount is gone.
        Err(_) if mounts::at(&mp).is_none() => return Ok(0),
        Err(e) => format!("cannot reach its daemon: {e}"),
    };
    if force {
        mounts::detach(&mp)?;
        eprintln!("datumfs: {}: {failure}; detached it (--force)", mp.display());
        return Ok(0);
    }
    bail!("could not unmount {}: {failure} (close open files, or use --force to detach)", mp.display())
}
