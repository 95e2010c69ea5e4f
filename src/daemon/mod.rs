//! Process life of a mount: checks before forking, daemonizing with a readiness pipe (so
//! `datumfs mount` returns only once the mount is live, or fails with the daemon's message), the
//! cache-dir lock, the runtime, wiring of the parts, signals, and a clean shutdown.

mod execution;
pub mod logging;
pub mod mounts;

use crate::cache::{self, Cache};
use crate::catalog::Catalog;
use crate::config::MountConfig;
use crate::control::{self, UnsyncedOutputs};
use crate::fs::{Fs, FsSettings};
use crate::fuse::FuseAdapter;
use crate::inputs::{resolve, uri};
use crate::outputs::state::SyncState;
use crate::outputs::Staging;
use crate::reader::{ReadConfig, Reader};
use crate::store::data::DataStore;
use crate::store::StoreRegistry;
use crate::sync::Syncer;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The control socket of the daemon owning `cache_dir` (kept short: socket paths are limited).
pub fn control_socket(cache_dir: &Path) -> PathBuf {
    let p = cache_dir.join("control.sock");
    if p.as_os_str().len() < 100 {
        return p;
    }
    let tag = hex::encode(&crate::cache::ObjectId::of("socket", &cache_dir.to_string_lossy(), "").0[..8]);
    std::env::temp_dir().join(format!("datumfs-{tag}.sock"))
}

/// Checks that can fail before anything is started: the mountpoint and the URIs' syntax.
pub fn preflight(cfg: &MountConfig) -> Result<()> {
    let mp = &cfg.mountpoint;
    if mounts::is_dead(mp) {
        eprintln!("datumfs: {} is a dead mount (its daemon is gone); cleaning it up", mp.display());
        mounts::detach(mp).with_context(|| format!("could not clean up the dead mount at {}", mp.display()))?;
    }
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("mountpoint {} is not a directory", mp.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist (create it first: mkdir -p {})", mp.display(), mp.display())
        }
        Err(e) => bail!("mountpoint {}: {e}", mp.display()),
    }
    if let Some(m) = mounts::at(mp) {
        bail!("mountpoint {} is busy: a {} filesystem is already mounted there", mp.display(), m.fstype);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    for input in &cfg.inputs {
        if input.uris.is_empty() && !input.optional {
            bail!("input '{}' has no URI: give one with --input {}=URI", input.name, input.name);
        }
        for u in &input.uris {
            uri::parse(u, &cwd).map_err(|e| anyhow!("input '{}': {e}", input.name))?;
        }
    }
    uri::parse(&cfg.store_url, &cwd).map_err(|e| anyhow!("--store: {e}"))?;
    Ok(())
}

/// `datumfs mount`: in the foreground, or as a daemon that reports readiness through a pipe.
pub fn mount(cfg: MountConfig) -> Result<()> {
    preflight(&cfg)?;
    if cfg.foreground {
        return serve(cfg, None);
    }
    let (read_end, write_end) = nix::unistd::pipe().context("creating the readiness pipe")?;
    // SAFETY: no threads exist yet (no runtime, no logging), so the child may run anything.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.trim().is_empty() => {
                    bail!("the datumfs daemon exited before the mount was ready; see {}", cfg.log_file().display())
                }
                None => bail!("{}", msg.trim()),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            redirect_stdio();
            let code = match serve(cfg, Some(write_end)) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Holds the cache dir for this process; released when dropped.
pub(crate) struct CacheLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Waits until no process holds the cache-dir lock at `path` (a daemon that is exiting).
pub fn wait_cache_lock_free(path: &Path, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let Ok(file) = std::fs::File::open(path) else { return true };
        if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Takes the cache dir for this process, or fails naming the process that holds it.
pub(crate) fn lock_cache_dir(dir: &Path) -> Result<CacheLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cache lock {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.write_all(format!("{}\n", std::process::id()).as_bytes());
            Ok(CacheLock { _lock: lock })
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "cache dir {} is in use by another datumfs daemon (pid {}); unmount its mounts or use another --cache-dir",
                dir.display(),
                holder.trim()
            )
        }
    }
}

fn mount_options(cfg: &MountConfig) -> fuser::Config {
    use fuser::{MountOption, SessionACL};
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("datumfs".into()),
        MountOption::Subtype("datumfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for opt in cfg.options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "allow_other" => config.acl = SessionACL::All,
            "allow_root" => config.acl = SessionACL::RootAndOwner,
            "ro" => config.mount_options.push(MountOption::RO),
            "rw" | "default_permissions" | "nodev" | "nosuid" => {}
            "exec" => config.mount_options.push(MountOption::Exec),
            "noexec" => config.mount_options.push(MountOption::NoExec),
            "noatime" => config.mount_options.push(MountOption::NoAtime),
            other => config.mount_options.push(MountOption::CUSTOM(other.to_string())),
        }
    }
    config.n_threads = Some(4);
    config.clone_fd = true;
    config
}

/// Sets the mount up, reports readiness, serves until unmounted, then shuts down cleanly.
fn serve(cfg: MountConfig, ready: Option<OwnedFd>) -> Result<()> {
    let mut ready = ready.map(std::fs::File::from);
    let result = serve_inner(&cfg, &mut ready);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
        if let Some(mut r) = ready.take() {
            let _ = r.write_all(format!("{e:#}").as_bytes());
        } else if !cfg.foreground {
            eprintln!("datumfs: {e:#}");
        }
    }
    result
}

/// glibc gives each thread that allocates its own arena (up to 8 per core); the daemon's many
/// short-lived blocking threads then pin freed buffers in dozens of arenas (a 1 GiB sync
/// peaked at 290 MiB RSS; 160 MiB with 4 arenas, 114 MiB with 2).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn serve_inner(cfg: &MountConfig, ready: &mut Option<std::fs::File>) -> Result<()> {
    limit_malloc_arenas();
    cache::create_private_dir(&cfg.cache_dir)?;
    // Held until the process is gone (never dropped): the index's own lock lives as long as any
    // thread still holds the cache, so releasing ours earlier would let a new daemon in too soon.
    std::mem::forget(lock_cache_dir(&cfg.cache_dir)?);
    logging::init(&cfg.log_file(), &cfg.log_level, cfg.foreground)
        .with_context(|| format!("log file {}", cfg.log_file().display()))?;
    std::panic::set_hook(Box::new(|info| tracing::error!("internal error (please report it): {info}")));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(64)
        .thread_name("datumfs-rt")
        .enable_all()
        .build()
        .context("starting the runtime")?;

    let registry = StoreRegistry::new();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let data_store = DataStore::open(&cfg.store_url, &registry).map_err(|e| anyhow!("--store: {e}"))?;
    let catalog = Catalog::new(data_store.clone());
    let resolved = runtime.block_on(async {
        let jobs = cfg
            .inputs
            .iter()
            .filter(|i| !i.uris.is_empty())
            .map(|spec| resolve::resolve(spec, &registry, Some(&catalog), &cwd));
        futures::future::try_join_all(jobs).await
    })?;
    let cache = Arc::new(Cache::open(&cfg.cache_dir, cfg.block_size)?);
    cache.set_cap(cfg.cache_size);
    if let Some(min_free) = cfg.cache_min_free {
        let total = nix::sys::statvfs::statvfs(&cfg.cache_dir).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0);
        cache.set_min_free(min_free.bytes(total));
    }
    // Index and files agree before anything is served (a crash may have left either behind);
    // then what nobody read for --evict-after goes, now and every while.
    cache.reconcile()?;
    if let Err(e) = cache.evict(&crate::cache::EvictWhat::OlderThan(cfg.evict_after.as_secs())) {
        tracing::warn!("{e}");
    }
    let staging = Arc::new(
        Staging::open(&cfg.staging_dir(), crate::fs::tree::OUTPUTS)
            .with_context(|| format!("outputs staging {}", cfg.staging_dir().display()))?,
    );
    let state = SyncState::open(cache.index(), &cfg.execution)?;
    let reader = Reader::new(ReadConfig { max_readahead: cfg.read_ahead, ..ReadConfig::default() });
    let socket = control_socket(&cfg.cache_dir);
    let settings =
        FsSettings { mountpoint: cfg.mountpoint.clone(), uid: cfg.uid, gid: cfg.gid, control_socket: socket.clone() };
    let fs = {
        let _guard = runtime.enter();
        Arc::new(Fs::new(resolved, cache.clone(), reader, Some(data_store), settings, Some(staging.clone())))
    };

    let _ = std::fs::remove_file(&socket);
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("control socket {}", socket.display()))?
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    }

    let adapter = FuseAdapter::new(fs.clone(), cfg.uid, cfg.gid, cfg.read_ahead.min(u32::MAX as u64) as u32);
    let session = fuser::Session::new(adapter, &cfg.mountpoint, &mount_options(cfg))
        .with_context(|| format!("mounting {}", cfg.mountpoint.display()))?;

    let execution = Arc::new(execution::Execution {
        id: cfg.execution.clone(),
        command: cfg.command.clone(),
        started_at: crate::catalog::now(),
        mountpoint: cfg.mountpoint.clone(),
        fs: fs.clone(),
        staging,
        state,
        syncer: Syncer { catalog, execution: cfg.execution.clone() },
        sync_lock: tokio::sync::Mutex::new(()),
        on_exit: std::sync::Mutex::new(UnsyncedOutputs::Keep),
        config_json: serde_json::json!({
            "cache_size": cfg.cache_size,
            "block_size": cfg.block_size,
            "read_ahead": cfg.read_ahead,
            "log_file": cfg.log_file(),
            "control_socket": socket,
            "cache_lock": cfg.cache_dir.join("lock"),
            "evict_after_secs": cfg.evict_after.as_secs(),
        }),
        cache: cache.clone(),
        evict_after: cfg.evict_after,
    });
    runtime.block_on(execution.record_start());
    {
        let (cache, after) = (cache.clone(), cfg.evict_after);
        // Often enough that nothing outlives --evict-after by more than a tenth of it (checked
        // at most every second and at least every ten minutes).
        let every = (after / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(600));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let cache = cache.clone();
                let what = crate::cache::EvictWhat::OlderThan(after.as_secs());
                match tokio::task::spawn_blocking(move || cache.evict(&what)).await {
                    Ok(Err(e)) => tracing::warn!("eviction: {e}"),
                    Err(e) => tracing::warn!("eviction task: {e}"),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
    let in_flight = control::InFlight::default();
    runtime.spawn(control::serve(listener, execution.clone(), in_flight.clone()));
    {
        let mountpoint = cfg.mountpoint.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
            else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {}, _ = hup.recv() => {} }
            tracing::info!("signal received: unmounting {}", mountpoint.display());
            if mounts::unmount(&mountpoint).is_err() {
                let _ = mounts::detach(&mountpoint);
            }
        });
    }

    tracing::info!(
        "mounted {} (execution {}, cache {}, pid {})",
        cfg.mountpoint.display(),
        cfg.execution,
        cfg.cache_dir.display(),
        std::process::id()
    );
    if let Some(mut r) = ready.take() {
        let _ = r.write_all(b"ok");
    }
    let run = session.run();
    tracing::info!("unmounted {}", cfg.mountpoint.display());
    execution.finish();
    // Let the answer to `unmount` (and any other request) reach its client before exiting.
    in_flight.wait_idle(std::time::Duration::from_secs(3));
    if let Err(e) = cache.flush() {
        tracing::warn!("{e}");
    }
    let _ = std::fs::remove_file(&socket);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    run.map_err(|e| anyhow!("FUSE session for {} ended with an error: {e}", cfg.mountpoint.display()))
}
