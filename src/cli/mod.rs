//! The command line: clap types, one file per subcommand, human and `--json` output.

mod cache;
mod config;
mod csi;
mod dataset;
mod datum;
mod docs;
mod doctor;
mod execution;
mod model;
mod mount;
pub mod mount_helper;
mod project;
mod run;
mod status;
mod sync;
mod unmount;
mod volume;
mod warm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// datumfs: object-store data as plain files for machine-learning jobs.
#[derive(Debug, Parser)]
#[command(name = "datumfs", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount inputs (read-only, lazily fetched, cached) and outputs at MOUNTPOINT.
    Mount(Box<mount::MountArgs>),
    /// Unmount a datumfs mount and stop its daemon.
    Unmount(unmount::UnmountArgs),
    /// Show what a mount (or every datumfs mount) serves, its cache and the checksums read.
    Status(status::StatusArgs),
    /// Upload new and changed outputs of a mount as datums.
    Sync(sync::SyncArgs),
    /// Mount, run a command, sync its outputs, unmount; exits with the command's status.
    Run(Box<run::RunArgs>),
    /// Turn local files or directories into datums, without a job.
    Push(datum::PushArgs),
    /// Datums in the catalog: show, ls, get, purge.
    Datum(datum::DatumArgs),
    /// Datasets: versioned collections of datums, and their aliases.
    Dataset(dataset::DatasetArgs),
    /// Models: versions made by jobs or from datums, approved or rejected.
    Model(model::ModelArgs),
    /// Executions: what each mount or job read, ran and wrote.
    Execution(execution::ExecutionArgs),
    /// Projects: namespaces of their own in one data store.
    Project(project::ProjectArgs),
    /// The effective settings and where each came from (flag defaults, environment, files).
    Config(config::ConfigArgs),
    /// Shell completions (bash, zsh, fish), printed.
    Completions(docs::CompletionsArgs),
    /// Man pages, made from these very definitions.
    Man(docs::ManArgs),
    /// Check this machine for what datumfs needs (FUSE, space, permissions, the store).
    Doctor(doctor::DoctorArgs),
    /// Kubernetes CSI node plugin: serve the Identity and Node services on a unix socket.
    Csi(csi::CsiArgs),
    /// What made a datum, and what read it.
    Lineage(datum::LineageArgs),
    /// The node's cache: stats, evict, verify (with or without a running daemon).
    Cache(cache::CacheArgs),
    /// Fetch whole inputs (a directory or file under MOUNTPOINT/inputs/) into the cache ahead of a job.
    Warm(warm::WarmArgs),
    /// Volumes without a job: push a local tree to a prefix, pull a prefix to local disk.
    Volume(volume::VolumeArgs),
}

/// Parses the command line and runs it; returns the exit code.
pub fn run() -> Result<i32> {
    // Configuration files become the environment the flags read, before anything else runs.
    crate::config_file::apply()?;
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    // `mount -t fuse.datumfs` and /etc/fstab: mount(8)'s helper call, as `datumfs mount`.
    let cli = if mount_helper::is_helper_call(&args) {
        Cli::try_parse_from(mount_helper::translate(&args)?)?
    } else {
        Cli::parse()
    };
    match cli.command {
        Command::Mount(a) => mount::run(*a),
        Command::Unmount(a) => unmount::run(a),
        Command::Status(a) => status::run(a),
        Command::Sync(a) => sync::run(a),
        Command::Run(a) => run::run(*a),
        Command::Push(a) => datum::run_push(a),
        Command::Datum(a) => datum::run_datum(a),
        Command::Dataset(a) => dataset::run(a),
        Command::Model(a) => model::run(a),
        Command::Execution(a) => execution::run(a),
        Command::Project(a) => project::run(a),
        Command::Config(a) => config::run(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Csi(a) => csi::run(a),
        Command::Lineage(a) => datum::run_lineage(a),
        Command::Cache(a) => cache::run(a),
        Command::Warm(a) => warm::run(a),
        Command::Volume(a) => volume::run(a),
    }
}

/// Checks a `datumfs ...` command line as the command itself would parse it (flags, values,
/// sizes, durations), without running it; the first line of clap's message when it fails.
pub fn check_args(argv: &[String]) -> Result<(), String> {
    use clap::Parser;
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            Err(text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string())
        }
    }
}

/// `path` made absolute against the working directory (symlinks resolved when it exists).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| "/".into()).join(path)
    }
}

/// Makes a reader that stops early (`datumfs dataset ls | head -3`) end the command quietly:
/// Rust's `println!` panics when stdout is a closed pipe, and that panic would otherwise print a
/// backtrace note and exit with 101. Any other panic keeps the default report.
pub fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Prints `value` as pretty JSON on stdout in one write, so that a reader that stops early
/// (`| grep -q`, `| head`) never catches the command between two writes; a reader that is
/// gone (broken pipe) is not an error.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub(crate) use crate::util::human_bytes;

/// Reads an extended attribute of `path`.
fn read_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// The control socket of the daemon serving `mountpoint`.
fn control_socket_of(mountpoint: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let raw = read_xattr(mountpoint, crate::fs::CONTROL_XATTR)?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(raw)))
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is for in `--help`, and each
    /// option's help is its own (a doc comment left above the wrong field shows up as one field
    /// without help and another with two).
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "datumfs", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
