//! Process life of the daemon: checks before forking, joining the running daemon of the cache
//! dir or starting one with a readiness pipe (so `datumfs mount` returns only once the mount is
//! live, or fails with the daemon's message), the cache-dir lock, the runtime, signals, and a
//! clean shutdown after the last mount.

pub mod events;
mod execution;
pub mod logging;
pub mod mounts;
pub mod node;

use crate::cache::{self, Cache};
use crate::config::MountConfig;
use crate::control;
use crate::reader::{ReadConfig, Reader};
use crate::uri;
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

/// `datumfs mount`: joins the daemon of the cache dir when one runs; otherwise starts one, in
/// the foreground or as a daemon that reports readiness through a pipe.
pub fn mount(cfg: MountConfig) -> Result<()> {
    preflight(&cfg)?;
    if cfg.foreground {
        return serve(cfg, None);
    }
    cache::create_private_dir(&cfg.cache_dir)?;
    // One `datumfs mount` at a time per cache dir decides between joining and starting, so two
    // mounts started together end up in one daemon.
    let start_lock = start_lock(&cfg.cache_dir)?;
    match join(&cfg)? {
        Join::Joined => return Ok(()),
        Join::NoDaemon => {}
        Join::Closing => {
            // It is leaving; start the next one once its lock is free.
            wait_cache_lock_free(&cfg.cache_dir.join("lock"), std::time::Duration::from_secs(30));
        }
    }
    let (read_end, write_end) = nix::unistd::pipe().context("creating the readiness pipe")?;
    // SAFETY: no threads exist yet (no runtime, no logging), so the child may run anything.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            if msg.strip_prefix("ok").is_none() {
                // A daemon that failed to start still holds the cache dir's lock until it has
                // exited: wait for that, so that the next mount of the cache dir finds it free.
                let _ = nix::sys::wait::waitpid(child, None);
            }
            drop(start_lock);
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
            // The start lock stays with the parent: closing our copy of the descriptor does not
            // release it (the parent's copy still refers to the locked file).
            drop(start_lock);
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

/// Opens (creating, private) a lock file.
fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("lock file {}", path.display()))
}

/// Takes `CACHE_DIR/start.lock`, waiting for another `datumfs mount` that holds it.
fn start_lock(cache_dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = cache_dir.join("start.lock");
    let file = open_lock_file(&path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(file)
}

enum Join {
    Joined,
    NoDaemon,
    Closing,
}

/// Asks the daemon of the cache dir, if one runs, to serve this mount too.
fn join(cfg: &MountConfig) -> Result<Join> {
    let socket = control_socket(&cfg.cache_dir);
    let request = control::Request::Mount { config: Box::new(cfg.clone()), environment: store_environment() };
    match control::call(&socket, &request) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            Ok(Join::NoDaemon)
        }
        Err(e) => bail!("cannot reach the datumfs daemon of cache dir {}: {e}", cfg.cache_dir.display()),
        Ok(resp) if resp.ok => {
            let notes = resp.status.as_ref().and_then(|s| s["notes"].as_array().cloned()).unwrap_or_default();
            for note in notes.iter().filter_map(|n| n.as_str()) {
                eprintln!("datumfs: {note}");
            }
            Ok(Join::Joined)
        }
        Ok(resp) if resp.status.as_ref().is_some_and(|s| s["closing"] == true) => Ok(Join::Closing),
        Ok(resp) => bail!("{}", resp.error.unwrap_or_else(|| "the daemon refused the mount".into())),
    }
}

/// A fingerprint of the environment that decides which stores a mount can reach and as whom:
/// a daemon serves only mounts made with the same one. Values are hashed, never kept or logged.
pub fn store_environment() -> String {
    use sha2::Digest;
    let relevant = |k: &str| {
        ["AWS_", "GOOGLE_", "AZURE_", "GCS_", "OBJECT_STORE_", "OS_", "ST_"].iter().any(|p| k.starts_with(p))
            || ["HOME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"].contains(&k.to_ascii_uppercase().as_str())
    };
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| relevant(k))
        .collect();
    vars.sort();
    let mut h = sha2::Sha256::new();
    for (k, v) in vars {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())
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
    let path = dir.join("lock");
    let file = open_lock_file(&path)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.write_all(format!("{}\n", std::process::id()).as_bytes());
            Ok(CacheLock { _lock: lock })
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "cache dir {} is in use by another datumfs daemon (pid {}); mount without --foreground to join it, unmount its mounts, or use another --cache-dir",
                dir.display(),
                holder.trim()
            )
        }
    }
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

/// Allocator tuning for a long-running daemon. glibc gives each thread that allocates its own arena (up to 8 per core); the daemon's many
/// short-lived blocking threads then pin freed buffers in dozens of arenas (a 1 GiB sync
/// peaked at 290 MiB RSS; 160 MiB with 4 arenas, 114 MiB with 2).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Buffers of a MiB and more (packs being built, manifest chunks, fetched runs) are
        // mapped on their own and unmapped when freed. Left to itself, glibc raises this
        // threshold to the size of the last such buffer freed, and the next ones then come from
        // the heap, where they stay counted in RSS long after they are freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The answer to a warm request: failed when any file could not be fetched, with the report.
pub(crate) fn warm_answer(res: Result<crate::fs::WarmReport, String>) -> control::Response {
    match res {
        Ok(r) if r.failed.is_empty() => control::Response::ok(serde_json::to_value(&r).ok()),
        Ok(r) => control::Response::failed(
            format!("{} file(s) could not be fetched", r.failed.len()),
            serde_json::to_value(&r).ok(),
        ),
        Err(e) => control::Response::failed(e, None),
    }
}

/// How often the daemon hands freed memory back to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands memory freed by the allocator back to the system: resolving a large input (a dataset
/// manifest of many files) leaves hundreds of MB free but still counted in RSS otherwise.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
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
    let socket = control_socket(&cfg.cache_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("control socket {}", socket.display()))?
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    }
    let reader = Reader::new(ReadConfig { max_readahead: cfg.read_ahead, ..ReadConfig::default() });
    let node = node::Node::new(
        cfg.cache_dir.clone(),
        cache.clone(),
        reader,
        socket.clone(),
        store_environment(),
        node::CacheSettings::of(cfg),
    );
    crate::metrics::watch_cache(cache.clone());
    if let Some(addr) = &cfg.metrics_addr {
        let _guard = runtime.enter();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr.as_str()))
            .with_context(|| format!("--metrics-addr {addr}"))?;
        runtime.spawn(crate::metrics::serve(listener));
    }
    if let Err(e) = runtime.block_on(node.add_mount(cfg.clone())) {
        let _ = std::fs::remove_file(&socket);
        return Err(e);
    }

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
    // Memory freed inside the heap (a sync's plan, files read and hashed) stays counted in RSS
    // until it is handed back: a walk over 20,000 packed files held 148 MiB, 83 MiB once
    // trimmed. A trim every few seconds costs a few milliseconds.
    runtime.spawn(async {
        loop {
            tokio::time::sleep(TRIM_EVERY).await;
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    });
    let in_flight = control::InFlight::default();
    runtime.spawn(control::serve(listener, node.clone(), in_flight.clone()));
    {
        let node = node.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
            else {
                return;
            };
            loop {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {}, _ = hup.recv() => {} }
                tracing::info!("signal received: unmounting every mount");
                let node = node.clone();
                let _ = tokio::task::spawn_blocking(move || node.unmount_all()).await;
            }
        });
    }

    if let Some(mut r) = ready.take() {
        let _ = r.write_all(b"ok");
    }
    node.wait_until_idle();
    tracing::info!("last mount gone: the daemon of {} exits", cfg.cache_dir.display());
    // Let the answer to the last `unmount` (and any other request) reach its client.
    in_flight.wait_idle(std::time::Duration::from_secs(3));
    if let Err(e) = cache.flush() {
        tracing::warn!("{e}");
    }
    let _ = std::fs::remove_file(&socket);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
