//! One daemon per cache dir, serving every mount made on it: the first `datumfs mount` starts
//! it, later ones join it through the control socket, so all mounts on a node share one cache,
//! one download per block and one memory budget. Each mount has its own FUSE session (on its
//! own thread) and execution; the daemon leaves when its last mount is gone.

use super::events::MountRecorder;
use super::execution::{self, Execution};
use super::mounts;
use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::config::{MinFree, MountConfig};
use crate::control::{Handler, Request, Response, UnsyncedOutputs};
use crate::fs::{Fs, FsParts, FsSettings};
use crate::fuse::MountSettings;
use crate::inputs::resolve;
use crate::outputs::state::SyncState;
use crate::outputs::Staging;
use crate::reader::Reader;
use crate::store::data::DataStore;
use crate::store::StoreRegistry;
use crate::sync::{ProgressSnapshot, Syncer};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The settings that belong to the cache dir rather than to one mount: the daemon's first mount
/// sets them; a mount that joins with other values is told which ones apply.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Cap in bytes.
    pub cache_size: Option<u64>,
    /// Block size in bytes.
    pub block_size: u64,
    /// Largest read-ahead window in bytes.
    pub read_ahead: u64,
    /// Idle time after which cached objects are evicted.
    pub evict_after: Duration,
    /// Free space kept on the cache's filesystem.
    pub cache_min_free: Option<MinFree>,
}

impl CacheSettings {
    /// The cache-wide part of a mount's settings.
    pub fn of(cfg: &MountConfig) -> Self {
        Self {
            cache_size: cfg.cache_size,
            block_size: cfg.block_size,
            read_ahead: cfg.read_ahead,
            evict_after: cfg.evict_after,
            cache_min_free: cfg.cache_min_free,
        }
    }

    /// One line per setting where `asked` differs from these (which apply).
    fn differences(&self, asked: &CacheSettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |flag: &str, differs: bool, applies: String| {
            if differs {
                out.push(format!("{flag} ignored: the cache's daemon runs with {applies}"));
            }
        };
        let size = |s: Option<u64>| s.map(crate::util::human_bytes).unwrap_or_else(|| "no cap".into());
        note("--cache-size", self.cache_size != asked.cache_size, size(self.cache_size));
        note("--block-size", self.block_size != asked.block_size, crate::util::human_bytes(self.block_size));
        note("--read-ahead", self.read_ahead != asked.read_ahead, crate::util::human_bytes(self.read_ahead));
        note(
            "--evict-after",
            self.evict_after != asked.evict_after,
            humantime::format_duration(self.evict_after).to_string(),
        );
        let floor = match self.cache_min_free {
            None => "no free-space floor".to_string(),
            Some(MinFree::Bytes(b)) => crate::util::human_bytes(b),
            Some(MinFree::Percent(p)) => format!("{p}%"),
        };
        note("--cache-min-free", self.cache_min_free != asked.cache_min_free, floor);
        out
    }
}

/// A mount being served.
struct Served {
    execution: Arc<Execution>,
    /// Turns true once the mount's session has ended and its execution is finished.
    done: tokio::sync::watch::Receiver<bool>,
}

#[derive(Default)]
struct Mounts {
    serving: HashMap<PathBuf, Arc<Served>>,
    /// Mounts being set up: mountpoint -> execution id.
    starting: HashMap<PathBuf, String>,
    /// Set once the daemon has decided to exit; new mounts are refused.
    closing: bool,
}

impl Mounts {
    fn idle(&self) -> bool {
        self.serving.is_empty() && self.starting.is_empty()
    }
}

/// A mount asked of a daemon that is shutting down (the client starts a new daemon).
#[derive(Debug, thiserror::Error)]
#[error("the cache's daemon is shutting down")]
pub struct Closing;

/// The daemon of one cache dir.
pub struct Node {
    me: std::sync::Weak<Node>,
    cache_dir: PathBuf,
    cache: Arc<Cache>,
    reader: Arc<Reader>,
    registry: StoreRegistry,
    socket: PathBuf,
    environment: String,
    settings: CacheSettings,
    mounts: Mutex<Mounts>,
    changed: Condvar,
}

impl Node {
    /// A daemon for the cache at `cache_dir`, answering on `socket`.
    pub fn new(
        cache_dir: PathBuf,
        cache: Arc<Cache>,
        reader: Reader,
        socket: PathBuf,
        environment: String,
        settings: CacheSettings,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            cache_dir,
            cache,
            reader: Arc::new(reader),
            registry: StoreRegistry::new(),
            socket,
            environment,
            settings,
            mounts: Mutex::new(Mounts::default()),
            changed: Condvar::new(),
        })
    }

    fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mounts> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts `cfg` and serves it; returns the notes for the user (cache settings that do not
    /// apply).
    pub async fn add_mount(self: &Arc<Self>, cfg: MountConfig) -> Result<Vec<String>> {
        let mp = cfg.mountpoint.clone();
        {
            let mut m = self.lock();
            if m.closing {
                return Err(Closing.into());
            }
            if m.serving.contains_key(&mp) || m.starting.contains_key(&mp) {
                bail!("mountpoint {} is busy: this daemon already serves it", mp.display());
            }
            let elsewhere = m
                .serving
                .iter()
                .map(|(p, s)| (p, &s.execution.id))
                .chain(m.starting.iter())
                .find(|(_, id)| **id == cfg.execution);
            if let Some((other, _)) = elsewhere {
                bail!("execution {} is already mounted at {}", cfg.execution, other.display());
            }
            m.starting.insert(mp.clone(), cfg.execution.clone());
        }
        let result = self.start(&cfg).await;
        let mut m = self.lock();
        m.starting.remove(&mp);
        let notes = match result {
            Ok((served, session, done)) => {
                m.serving.insert(mp.clone(), served.clone());
                let node = self.clone();
                let spawned = std::thread::Builder::new().name("datumfs-fuse".into()).spawn(move || {
                    let run = session.run();
                    if let Err(e) = run {
                        tracing::error!("FUSE session for {} ended with an error: {e}", mp.display());
                    }
                    tracing::info!("unmounted {}", mp.display());
                    served.execution.finish();
                    crate::metrics::forget_mount(&mp);
                    node.lock().serving.remove(&mp);
                    drop(served);
                    super::release_free_memory();
                    let _ = done.send(true);
                    node.changed.notify_all();
                });
                if let Err(e) = spawned {
                    m.serving.remove(&cfg.mountpoint);
                    let _ = mounts::detach(&cfg.mountpoint);
                    drop(m);
                    self.changed.notify_all();
                    bail!("starting the FUSE session thread: {e}");
                }
                tracing::info!(
                    "mounted {} (execution {}, cache {}, pid {}, {} mount(s))",
                    cfg.mountpoint.display(),
                    cfg.execution,
                    self.cache_dir.display(),
                    std::process::id(),
                    m.serving.len()
                );
                Ok(self.settings.differences(&CacheSettings::of(&cfg)))
            }
            Err(e) => Err(e),
        };
        drop(m);
        self.changed.notify_all();
        super::release_free_memory();
        notes
    }

    /// Everything a mount needs, up to a live FUSE session (not yet running).
    async fn start(
        &self,
        cfg: &MountConfig,
    ) -> Result<(Arc<Served>, crate::fuse::Mounted, tokio::sync::watch::Sender<bool>)> {
        let data_store = DataStore::open(&cfg.store_url, &self.registry).map_err(|e| anyhow!("--store: {e}"))?;
        let catalog = Catalog::new(data_store)
            .for_project(cfg.project.as_deref())
            .await
            .map_err(|e| anyhow!("--project: {e}"))?;
        let data_store = catalog.store().clone();
        let jobs = cfg
            .inputs
            .iter()
            .filter(|i| !i.uris.is_empty())
            .map(|spec| resolve::resolve(spec, &self.registry, Some(&catalog), &cfg.cwd, Some(&self.cache_dir)));
        let resolved = futures::future::try_join_all(jobs).await?;
        let volume_jobs = cfg.volumes.iter().map(|v| async {
            let input = v.as_input();
            let r = resolve::resolve(&input, &self.registry, Some(&catalog), &cfg.cwd, Some(&self.cache_dir)).await;
            let resolved = r.map_err(|e| anyhow!("--volume {}: {e}", v.name))?;
            let state = match v.mode {
                crate::volumes::VolumeMode::Ro => None,
                _ => Some(Arc::new(
                    crate::volumes::state::VolumeState::open(&cfg.volume_dir(&v.name), &v.uri)
                        .map_err(|e| anyhow!("--volume {}: {e}", v.name))?,
                )),
            };
            Ok::<_, anyhow::Error>(crate::fs::VolumePart { spec: v.clone(), resolved, state })
        });
        let volumes = futures::future::try_join_all(volume_jobs).await?;
        let staging = Arc::new(
            Staging::open(&cfg.staging_dir(), crate::fs::OUTPUTS)
                .with_context(|| format!("outputs staging {}", cfg.staging_dir().display()))?,
        );
        let state = SyncState::open(self.cache.index(), &cfg.execution)?;
        let settings = FsSettings {
            mountpoint: cfg.mountpoint.clone(),
            uid: cfg.uid,
            gid: cfg.gid,
            control_socket: self.socket.clone(),
        };
        let recorder = MountRecorder::new(Some(data_store.clone()), Some(cfg.execution.clone()));
        let parts = FsParts {
            inputs: resolved,
            volumes,
            cache: self.cache.clone(),
            reader: self.reader.clone(),
            data_store: Some(data_store.url.clone()),
            staging: staging.clone(),
            events: recorder.clone(),
            parameters: cfg.parameters.clone(),
        };
        let fs = Arc::new(Fs::new(parts, settings).context("opening the volumes' staged trees")?);
        let (mounted_fs, mountpoint, options) = (fs.clone(), cfg.mountpoint.clone(), cfg.options.clone());
        let (uid, gid, max_readahead) = (cfg.uid, cfg.gid, self.settings.read_ahead.min(u32::MAX as u64) as u32);
        let session = tokio::task::spawn_blocking(move || {
            crate::fuse::mount(mounted_fs, &mountpoint, &MountSettings { uid, gid, max_readahead, options: &options })
        })
        .await
        .map_err(|e| anyhow!("mounting {}: {e}", cfg.mountpoint.display()))?
        .with_context(|| format!("mounting {}", cfg.mountpoint.display()))?;
        let execution = Arc::new(Execution {
            id: cfg.execution.clone(),
            command: cfg.command.clone(),
            parameters: cfg.parameters.clone(),
            code: cfg.code.clone(),
            started_at: crate::catalog::now(),
            mountpoint: cfg.mountpoint.clone(),
            fs,
            recorder,
            staging,
            state,
            syncer: Syncer::new(catalog, cfg.execution.clone(), cfg.pack_below),
            sync_lock: tokio::sync::Mutex::new(()),
            on_exit: std::sync::Mutex::new(UnsyncedOutputs::Keep),
            config_json: serde_json::json!({
                "cache_size": self.settings.cache_size,
                "block_size": self.settings.block_size,
                "read_ahead": self.settings.read_ahead,
                "log_file": self.cache_dir.join("datumfs.log"),
                "control_socket": self.socket,
                "cache_lock": self.cache_dir.join("lock"),
                "evict_after_secs": self.settings.evict_after.as_secs(),
            }),
        });
        execution.record_start().await;
        let watched = Arc::downgrade(&execution);
        crate::metrics::watch_outputs(
            &cfg.mountpoint,
            Box::new(move || watched.upgrade()?.pending().ok().map(|p| (p.files, p.bytes))),
        );
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        Ok((Arc::new(Served { execution, done: done_rx }), session, done_tx))
    }

    /// Blocks until no mount is served or being set up, then refuses new ones.
    pub fn wait_until_idle(&self) {
        let mut m = self.lock();
        while !m.idle() {
            m = self.changed.wait(m).unwrap_or_else(|e| e.into_inner());
        }
        m.closing = true;
    }

    /// Unmounts everything (on SIGTERM/SIGINT/SIGHUP): detaches what is busy.
    pub fn unmount_all(&self) {
        let points: Vec<PathBuf> = self.lock().serving.keys().cloned().collect();
        for mp in points {
            tracing::info!("unmounting {}", mp.display());
            if mounts::unmount(&mp).is_err() {
                let _ = mounts::detach(&mp);
            }
        }
    }

    fn served(&self, mountpoint: &Path) -> Result<Arc<Served>, Response> {
        self.lock().serving.get(mountpoint).cloned().ok_or_else(|| {
            Response::failed(
                format!("{} is not served by the daemon of {}", mountpoint.display(), self.cache_dir.display()),
                None,
            )
        })
    }

    async fn unmount(&self, mountpoint: &Path, unsynced: UnsyncedOutputs) -> Response {
        let served = match self.served(mountpoint) {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let execution = served.execution.clone();
        let mut resp = tokio::task::spawn_blocking(move || execution.unmount(unsynced))
            .await
            .unwrap_or_else(|e| Response::failed(format!("internal error: {e}"), None));
        if resp.ok {
            // Answer once the mount's outputs are settled (kept, removed or discarded), so a
            // remount with the same execution right after finds them as they will stay.
            let mut done = served.done.clone();
            if tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await.is_err() {
                tracing::warn!("{}: the session did not end within 30 s of unmounting", mountpoint.display());
            }
            let last = self.lock().idle();
            resp.status = Some(serde_json::json!({
                "daemon_exits": last,
                "cache_lock": self.cache_dir.join("lock"),
            }));
        }
        resp
    }

    /// Refuses a request made with other store credentials or endpoints than the daemon's.
    fn same_environment(&self, environment: &str) -> Result<(), Response> {
        if environment == self.environment {
            return Ok(());
        }
        Err(Response::failed(
            format!(
                "the datumfs daemon of cache dir {} (pid {}) runs with other store credentials or endpoints \
                 (AWS_*, GOOGLE_*, AZURE_* variables, HOME); use another --cache-dir, or unmount that \
                 daemon's mounts first",
                self.cache_dir.display(),
                std::process::id()
            ),
            None,
        ))
    }

    async fn warm_uri(
        &self,
        uri: &str,
        store: &str,
        cwd: &Path,
        progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>,
    ) -> Response {
        let catalog = match DataStore::open(store, &self.registry) {
            Ok(ds) => Catalog::new(ds),
            Err(e) => return Response::failed(format!("--store: {e}"), None),
        };
        let counters = Arc::new(crate::sync::Progress::default());
        let ticker = execution::ticker(counters.clone(), progress);
        let what = crate::fs::WarmUri {
            uri,
            cwd,
            cache: self.cache.clone(),
            reader: self.reader.clone(),
            registry: &self.registry,
            catalog: Some(&catalog),
        };
        let res = crate::fs::warm_uri(what, &counters).await;
        ticker.abort();
        super::warm_answer(res)
    }

    async fn status(&self, served: &Served) -> serde_json::Value {
        let mut status = served.execution.status().await;
        let mounts: Vec<PathBuf> = self.lock().serving.keys().cloned().collect();
        status["daemon"] = serde_json::json!({
            "pid": std::process::id(),
            "cache_dir": self.cache_dir,
            "mounts": mounts,
        });
        status
    }
}

#[async_trait::async_trait]
impl Handler for Node {
    async fn handle(&self, req: Request, progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>) -> Response {
        match req {
            Request::Mount { config, environment } => {
                if let Err(resp) = self.same_environment(&environment) {
                    return resp;
                }
                // Mount setup runs apart from the request so that a client that goes away
                // cannot leave it half done.
                let node = match self.me() {
                    Some(n) => n,
                    None => return Response::failed(Closing.to_string(), None),
                };
                match tokio::spawn(async move { node.add_mount(*config).await }).await {
                    Ok(Ok(notes)) => Response::ok(Some(serde_json::json!({ "notes": notes }))),
                    Ok(Err(e)) if e.is::<Closing>() => {
                        Response::failed(Closing.to_string(), Some(serde_json::json!({ "closing": true })))
                    }
                    Ok(Err(e)) => Response::failed(format!("{e:#}"), None),
                    Err(e) => Response::failed(format!("internal error: {e}"), None),
                }
            }
            Request::Status { mountpoint } => match self.served(&mountpoint) {
                Ok(s) => Response::ok(Some(self.status(&s).await)),
                Err(resp) => resp,
            },
            Request::Sync { mountpoint } => match self.served(&mountpoint) {
                Ok(s) => s.execution.sync(progress).await,
                Err(resp) => resp,
            },
            Request::VolumeSync { mountpoint, name, dry_run, force } => match self.served(&mountpoint) {
                Ok(s) => {
                    let options = crate::volumes::sync::SyncOptions { dry_run, force };
                    s.execution.volume_sync(&name, options, &self.registry, progress).await
                }
                Err(resp) => resp,
            },
            Request::Warm { mountpoint, path } => match self.served(&mountpoint) {
                Ok(s) => s.execution.warm(&path, progress).await,
                Err(resp) => resp,
            },
            Request::Cache { action } => {
                execution::cache_op(self.cache.clone(), self.settings.evict_after, action).await
            }
            Request::Unmount { mountpoint, unsynced } => self.unmount(&mountpoint, unsynced).await,
            Request::WarmUri { uri, store, cwd, environment } => {
                if let Err(resp) = self.same_environment(&environment) {
                    return resp;
                }
                self.warm_uri(&uri, &store, &cwd, progress).await
            }
        }
    }
}
