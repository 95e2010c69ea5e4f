//! `datumfs run`: mount, run a command with the Valohai directories set, sync its outputs (even
//! when it fails, by default), unmount, and exit with the command's status.
//!
//! As a container's entrypoint (PID 1) it stands between the scheduler and the job: SIGTERM,
//! SIGINT, SIGHUP and SIGQUIT are forwarded to the command's process group, which is killed
//! (SIGKILL) `--stop-timeout` after the first of them, or at once on a second SIGTERM or SIGINT;
//! then outputs are synced and the mount goes. The command starts with default dispositions and
//! nothing blocked, whatever `run` inherited; as PID 1, `run` also reaps orphaned processes.

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
    /// After the first stop signal is forwarded, how long the command has before it is killed
    /// (a little under the 30 s most schedulers give before they kill the container).
    #[arg(long, value_name = "DURATION", default_value = "25s", env = "DATUMFS_STOP_TIMEOUT", value_parser = crate::config::parse_duration)]
    stop_timeout: std::time::Duration,
    /// A parameter NAME=VALUE for the job (repeatable): in MOUNTPOINT/config/parameters.json and
    /// the execution record. A VALUE that reads as JSON (a number, true, false, a list) is kept
    /// as that; anything else is a string.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    param: Vec<String>,
    /// A JSON or YAML file of parameters (a mapping); --param overrides its values.
    #[arg(long, value_name = "FILE")]
    parameters: Option<std::path::PathBuf>,
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
    cfg.parameters = parameters(args.parameters.as_deref(), &args.param)?;
    cfg.code = crate::catalog::CodeInfo::of_dir(&cfg.cwd);
    let store_url = cfg.store_url.clone();
    let project = cfg.project.clone();
    // A job's mountpoint is its own: made if missing (and removed again after).
    let made_mountpoint = !cfg.mountpoint.exists();
    if made_mountpoint {
        std::fs::create_dir_all(&cfg.mountpoint)
            .with_context(|| format!("creating the mountpoint {}", cfg.mountpoint.display()))?;
    }
    let mp = cfg.mountpoint.clone();
    let execution = cfg.execution.clone();
    if let Err(e) = crate::daemon::mount(cfg) {
        if made_mountpoint {
            let _ = std::fs::remove_dir(&mp);
        }
        return Err(e);
    }
    eprintln!("datumfs: mounted {} (execution {execution})", mp.display());

    let started = std::time::Instant::now();
    let log = crate::joblog::JobLog::new();
    let uploader = LogUploader::start(&store_url, project.as_deref(), &execution, log.clone());
    let status = run_command(&args.command, &mp, &execution, args.stop_timeout, &log);
    let duration = started.elapsed().as_secs_f64();
    uploader.finish();
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
    if made_mountpoint {
        let _ = std::fs::remove_dir(&mp);
    }
    // The mount has ended and written its last: the command's outcome joins the record.
    if let Err(e) = record_outcome(&store_url, project.as_deref(), &execution, code, duration) {
        eprintln!("datumfs: recording the exit status of execution {execution}: {e:#}");
    }
    if nix::unistd::getpid().as_raw() == 1 {
        // Nothing outlives PID 1: wait for every child (the daemon ending its mount included).
        reap_all(std::time::Duration::from_secs(60));
    }
    Ok(if code == 0 && !synced_ok { 1 } else { code })
}

/// The signals `run` passes on to the command.
const FORWARDED: [Signal; 4] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

/// Runs the command in a process group of its own (the terminal's foreground group when `run`
/// has a terminal), forwarding stop signals and killing it after `stop_timeout`; returns how it
/// ended. Orphans reparented to `run` are reaped meanwhile.
fn run_command(
    command: &[String],
    mp: &std::path::Path,
    execution: &str,
    stop_timeout: std::time::Duration,
    log: &std::sync::Arc<crate::joblog::JobLog>,
) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Blocked here (and in the signal thread, which inherits it): they are taken by sigwait.
    let mut caught = SigSet::empty();
    for s in FORWARDED {
        caught.add(s);
    }
    caught.add(Signal::SIGTTOU); // handing the terminal over and back
    caught.thread_block().context("blocking signals")?;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("VH_INPUTS_DIR", mp.join("inputs"))
        .env("VH_OUTPUTS_DIR", mp.join("outputs"))
        .env("VH_CONFIG_DIR", mp.join("config"))
        .env("DATUMFS_EXECUTION", execution)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            // Every signal to its default, the C library's own (32, 33) included: the kernel's
            // call, since libc refuses those. All zeros is SIG_DFL, no flags, empty mask.
            let default = [0u64; 4];
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), std::ptr::null_mut::<u64>(), 8usize);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("running {}", command[0]));
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = caught.thread_unblock();
            return Err(e);
        }
    };
    // Its output reaches the terminal as it comes, and the log.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    type Source = Option<Box<dyn std::io::Read + Send>>;
    type Sink = Box<dyn std::io::Write + Send>;
    let streams: [(Source, Sink); 2] = [
        (child.stdout.take().map(|s| Box::new(s) as _), Box::new(std::io::stdout())),
        (child.stderr.take().map(|s| Box::new(s) as _), Box::new(std::io::stderr())),
    ];
    let mut copiers = 0;
    for (from, to) in streams {
        let Some(from) = from else { continue };
        let (tee, tx) = (log.tee(from, to), done_tx.clone());
        std::thread::spawn(move || {
            let _ = tee.join();
            let _ = tx.send(());
        });
        copiers += 1;
    }
    let pid = Pid::from_raw(child.id() as i32);
    // Both sides set the group, as shells do, so neither races the other.
    let _ = nix::unistd::setpgid(pid, pid);
    // SAFETY (the terminal calls): plain calls on descriptor 0.
    let tty = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
    if tty {
        // Ctrl-C then reaches the job from the terminal, once (not again through us).
        unsafe { libc::tcsetpgrp(0, pid.as_raw()) };
    }
    let ended = std::sync::Arc::new(AtomicBool::new(false));
    {
        let ended = ended.clone();
        std::thread::spawn(move || forward_signals(caught, pid, stop_timeout, ended));
    }
    let status = wait_for(pid);
    ended.store(true, Ordering::SeqCst);
    // The last output still in the pipes; a background process of the job that keeps them
    // open does not hold the run up past a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for _ in 0..copiers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    if tty {
        unsafe { libc::tcsetpgrp(0, libc::getpgrp()) };
    }
    drop(child);
    status
}

/// Forwards stop signals to process group `group` until the command has ended; kills the group
/// `stop_timeout` after the first, or at a second SIGTERM or SIGINT.
fn forward_signals(
    caught: SigSet,
    group: Pid,
    stop_timeout: std::time::Duration,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let kill_group = {
        let ended = ended.clone();
        move |sig: Signal| {
            if !ended.load(Ordering::SeqCst) {
                let _ = nix::sys::signal::killpg(group, sig);
            }
        }
    };
    let mut stopping = false;
    loop {
        let Ok(sig) = caught.wait() else { continue };
        if sig == Signal::SIGTTOU || ended.load(Ordering::SeqCst) {
            continue;
        }
        let stop = matches!(sig, Signal::SIGTERM | Signal::SIGINT);
        if stopping && stop {
            eprintln!("datumfs: {sig} again: killing the command");
            kill_group(Signal::SIGKILL);
            continue;
        }
        kill_group(sig);
        if !stopping {
            stopping = true;
            eprintln!(
                "datumfs: {sig} passed on to the command; it is killed in {} if still running",
                humantime::format_duration(stop_timeout)
            );
            let kill_group = kill_group.clone();
            std::thread::spawn(move || {
                std::thread::sleep(stop_timeout);
                kill_group(Signal::SIGKILL);
            });
        }
    }
}

/// Waits for `pid` to end, reaping any other child (orphans reparented to PID 1, the daemon)
/// that ends meanwhile.
fn wait_for(pid: Pid) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, into a local.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid.as_raw() {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e).context("waiting for the command");
            }
        }
    }
}

/// Waits (at most `limit`) until no child is left.
fn reap_all(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: waitpid on any child, into a local.
        let got = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if got < 0 {
            return; // ECHILD: none left
        }
        if got == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The job's parameters: `file`'s mapping (JSON or YAML), then each `NAME=VALUE` flag.
fn parameters(
    file: Option<&std::path::Path>,
    flags: &[String],
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    if file.is_none() && flags.is_empty() {
        return Ok(None);
    }
    let mut out = serde_json::Map::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("--parameters {}", path.display()))?;
        let value: serde_json::Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("--parameters {}: not JSON or YAML", path.display()))?;
        match value {
            serde_json::Value::Object(m) => out.extend(m),
            _ => bail!("--parameters {}: expected a mapping of names to values", path.display()),
        }
    }
    for flag in flags {
        let Some((name, value)) = flag.split_once('=') else {
            bail!("--param '{flag}': expected NAME=VALUE");
        };
        if name.is_empty() {
            bail!("--param '{flag}': the name is empty");
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        out.insert(name.to_string(), value);
    }
    Ok(Some(out))
}

/// Adds the command's exit status and run time to the execution record.
fn record_outcome(store_url: &str, project: Option<&str>, execution: &str, code: i32, duration: f64) -> Result<()> {
    let ds =
        crate::store::data::DataStore::open(store_url, &crate::store::StoreRegistry::new())?.in_project(project)?;
    let catalog = crate::catalog::Catalog::new(ds);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        if let Some(mut rec) = catalog.find_execution(execution).await? {
            rec.exit_status = Some(code);
            rec.duration_secs = Some((duration * 1000.0).round() / 1000.0);
            catalog.put_execution(&rec).await?;
        }
        Ok::<(), crate::catalog::CatalogError>(())
    })?;
    Ok(())
}

/// Puts the job's log in the data store every [`LOG_EVERY`] while it changes, and once more at
/// the end.
struct LogUploader {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often a running job's log is put in the store.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl LogUploader {
    fn start(
        store_url: &str,
        project: Option<&str>,
        execution: &str,
        log: std::sync::Arc<crate::joblog::JobLog>,
    ) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (store_url, execution, project) =
            (store_url.to_string(), execution.to_string(), project.map(str::to_string));
        let thread = std::thread::spawn(move || {
            // Stop signals are for the signal thread to take (the kernel gives a process's
            // signal to any thread not blocking it); threads made here inherit that.
            let mut caught = SigSet::empty();
            for s in FORWARDED {
                caught.add(s);
            }
            caught.add(Signal::SIGTTOU);
            let _ = caught.thread_block();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let opened = crate::store::data::DataStore::open(&store_url, &crate::store::StoreRegistry::new())
                .map_err(|e| e.to_string())
                .and_then(|ds| ds.in_project(project.as_deref()).map_err(|e| e.to_string()));
            let catalog = match opened {
                Ok(ds) => crate::catalog::Catalog::new(ds),
                Err(e) => return eprintln!("datumfs: the job's log will not be kept: {e}"),
            };
            let mut sent = 0;
            loop {
                let last = !matches!(stopped.recv_timeout(LOG_EVERY), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                let (text, version) = log.contents();
                if version != sent {
                    match rt.block_on(catalog.put_log(&execution, text)) {
                        Ok(()) => sent = version,
                        Err(e) if last => eprintln!("datumfs: keeping the job's log: {e}"),
                        Err(_) => {} // tried again at the next turn
                    }
                }
                if last {
                    return;
                }
            }
        });
        Self { stop, thread }
    }

    /// Puts the final log and waits for that.
    fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
