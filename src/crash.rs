//! Crash points, for tests that kill the process at a chosen step of its work and check that
//! nothing was lost, duplicated or listed that does not exist.
//!
//! `DATUMFS_CRASH_AT=NAME[:N]` makes the process kill itself with SIGKILL (as `kill -9` would,
//! nothing flushed or unwound) the Nth time (default the first) it passes the point `NAME`.
//! Unset, a crash point costs one relaxed atomic load.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const CRASH_AT_ENV: &str = "DATUMFS_CRASH_AT";

/// Every crash point, in the order a sync passes them (for tests that loop over all).
pub const POINTS: &[&str] = &[
    "sync-planned",
    "upload-done",
    "datum-recorded",
    "pack-uploaded",
    "pack-recorded",
    "alias-moved",
    "state-flushed",
    "index-written",
    "version-published",
    "execution-recorded",
];

/// The crash points of a volume sync, in the order it passes them.
pub const VOLUME_POINTS: &[&str] = &["volume-put", "volume-marked", "volume-deleted"];

struct Armed {
    name: String,
    at: u32,
    passed: AtomicU32,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(CRASH_AT_ENV).ok()?;
            let (name, at) = match v.split_once(':') {
                Some((n, at)) => (n.to_string(), at.parse().unwrap_or(1)),
                None => (v, 1),
            };
            Some(Armed { name, at: at.max(1), passed: AtomicU32::new(0) })
        })
        .as_ref()
}

/// Passes crash point `name`: kills the process if it is the armed one, the time it is armed for.
pub fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.name == name && a.passed.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        tracing::error!("crash point {name} reached: killing the process");
        // SAFETY: a signal to ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
