//! `datumfs doctor`: checks this machine for what a mount needs, and says what to fix.

use super::datum::StoreArg;
use anyhow::Result;
use clap::Args;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Flags of `datumfs doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The cache directory to check [default: $DATUMFS_HOME/cache].
    #[arg(long, value_name = "DIR", env = "DATUMFS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// Also try the data store's conditional writes (create-only puts, compare-and-swap) with
    /// a scratch record that is deleted again: the one check that writes.
    #[arg(long)]
    check_writes: bool,
    #[command(flatten)]
    store: StoreArg,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    outcome: Outcome,
    detail: String,
}

fn check(check: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check { check, outcome, detail: detail.into() }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// The kernel's version, as (major, minor).
fn kernel() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs `datumfs doctor`; exits 1 when a check fails.
pub fn run(args: DoctorArgs) -> Result<i32> {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();

    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => checks.push(check("fuse device", Outcome::Ok, "/dev/fuse opens for reading and writing")),
        Err(e) => checks.push(check(
            "fuse device",
            Outcome::Fail,
            format!(
                "/dev/fuse: {e} (load the fuse module; in a container, pass --device /dev/fuse and the SYS_ADMIN \
                 capability, or mount on the node and share the mount)"
            ),
        )),
    }
    match (on_path("fusermount3"), root) {
        (Some(p), _) => checks.push(check("fusermount3", Outcome::Ok, p.display().to_string())),
        (None, true) => checks.push(check("fusermount3", Outcome::Warn, "not installed (root mounts without it)")),
        (None, false) => checks.push(check(
            "fusermount3",
            Outcome::Fail,
            "not installed: a user other than root needs it to mount (install the fuse3 package)",
        )),
    }
    let allow_other =
        std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"));
    checks.push(match (allow_other, root) {
        (true, _) | (_, true) => check("allow_other", Outcome::Ok, "-o allow_other is available"),
        (false, false) => check(
            "allow_other",
            Outcome::Warn,
            "/etc/fuse.conf lacks user_allow_other: -o allow_other (other users reading the mount) will be refused",
        ),
    });
    checks.push(match kernel() {
        Some((major, minor)) if (major, minor) >= (6, 9) => check(
            "passthrough",
            if root { Outcome::Ok } else { Outcome::Warn },
            format!(
                "kernel {major}.{minor} can hand cached files to the kernel (FUSE passthrough){}",
                if root { "" } else { "; it needs the daemon to run as root" }
            ),
        ),
        Some((major, minor)) => check(
            "passthrough",
            Outcome::Warn,
            format!("kernel {major}.{minor} has no FUSE passthrough (6.9+): cached reads go through the daemon"),
        ),
        None => check("passthrough", Outcome::Warn, "the kernel version is unknown"),
    });

    let cache = super::absolute(&args.cache_dir.unwrap_or_else(|| crate::config::datumfs_home().join("cache")));
    let probe = if cache.exists() {
        cache.clone()
    } else {
        cache.ancestors().find(|a| a.exists()).unwrap_or(&cache).to_path_buf()
    };
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(v) => {
            let free = v.blocks_available() * v.fragment_size();
            let inodes = v.files_available();
            let low = free < 1 << 30 || (v.files() > 0 && inodes < 10_000);
            checks.push(check(
                "cache space",
                if low { Outcome::Warn } else { Outcome::Ok },
                format!("{}: {} free, {inodes} inodes free", probe.display(), crate::util::human_bytes(free)),
            ));
        }
        Err(e) => checks.push(check("cache space", Outcome::Fail, format!("{}: {e}", probe.display()))),
    }
    match std::fs::metadata(&cache) {
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => checks.push(check(
            "cache dir",
            Outcome::Fail,
            format!("{} belongs to uid {}, not to you: use a cache dir of your own", cache.display(), m.uid()),
        )),
        Ok(m) if m.mode() & 0o077 != 0 => checks.push(check(
            "cache dir",
            Outcome::Warn,
            format!(
                "{} has mode {:o}: others can look into it (datumfs makes it 0700)",
                cache.display(),
                m.mode() & 0o777
            ),
        )),
        Ok(_) => checks.push(check("cache dir", Outcome::Ok, format!("{} is yours and private", cache.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent_writable = nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_ok();
            checks.push(check(
                "cache dir",
                if parent_writable { Outcome::Ok } else { Outcome::Fail },
                format!(
                    "{} does not exist yet; {} can{} make it",
                    cache.display(),
                    probe.display(),
                    if parent_writable { "" } else { "not" }
                ),
            ));
        }
        Err(e) => checks.push(check("cache dir", Outcome::Fail, format!("{}: {e}", cache.display()))),
    }
    let daemon = crate::daemon::control_socket(&cache);
    checks.push(
        match crate::control::call(
            &daemon,
            &crate::control::Request::Cache { action: crate::control::CacheOp::Stats { evict_after: None } },
        ) {
            Ok(r) => check("daemon", Outcome::Ok, format!("a daemon (pid {}) serves this cache dir", r.pid)),
            Err(_) => check("daemon", Outcome::Ok, "no daemon runs for this cache dir (the next mount starts one)"),
        },
    );

    // Credentials: which variables are set (never their values), and one listing of the store.
    let names: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| ["AWS_", "GOOGLE_", "AZURE_", "OS_", "ST_"].iter().any(|p| k.starts_with(p)))
        .collect();
    checks.push(check(
        "credentials",
        Outcome::Ok,
        if names.is_empty() {
            "no AWS_*, GOOGLE_*, AZURE_* or OS_* variables (the clouds' usual files and instance roles still apply)"
                .to_string()
        } else {
            format!("set: {}", names.join(", "))
        },
    ));
    let url = args.store.url();
    let store = args.store.store_catalog().and_then(|c| {
        let rt = super::datum::runtime()?;
        rt.block_on(c.projects()).map_err(anyhow::Error::from)
    });
    let answered = store.is_ok();
    checks.push(match store {
        Ok(p) => check("data store", Outcome::Ok, format!("{url} answers ({} project(s))", p.len())),
        Err(e) => check("data store", Outcome::Fail, format!("{url}: {e:#}")),
    });
    if args.check_writes && answered {
        let probes = args.store.store_catalog().and_then(|c| {
            let rt = super::datum::runtime()?;
            Ok(rt.block_on(c.data_store().probe_conditional_writes()))
        });
        match probes {
            Ok(probes) => checks.extend(probes.into_iter().map(|p| {
                let outcome = match p.kept {
                    Some(true) => Outcome::Ok,
                    Some(false) | None => Outcome::Fail,
                };
                check(p.what, outcome, p.detail)
            })),
            Err(e) => checks.push(check("conditional writes", Outcome::Fail, format!("{e:#}"))),
        }
    }

    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    if args.json {
        super::print_json(&serde_json::json!({ "ok": !failed, "checks": checks }))?;
    } else {
        for c in &checks {
            let mark = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            println!("{mark}  {:<16} {}", c.check, c.detail);
        }
    }
    Ok(if failed { 1 } else { 0 })
}
