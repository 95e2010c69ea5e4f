//! The Kubernetes CSI node plugin (`datumfs csi`): a pod's volume attributes become a
//! `datumfs mount` at the pod's target path, and unpublishing it a `datumfs unmount`.
//!
//! Owns the mapping from volume attributes to mount flags, the record of each publication (kept
//! under the driver's state dir, so that a restarted driver still knows how to take a volume
//! down) and the publish/unpublish rules of the CSI spec (idempotent calls, ALREADY_EXISTS for a
//! target published with other settings). It never mounts by itself: it runs the `datumfs`
//! binary, whose mounts of one cache dir all join the node's one daemon, so every pod on the
//! node shares the cache. The gRPC side is in `service`.

mod service;

/// The CSI v1 messages and services, generated from `proto/csi.proto` at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

pub use service::serve;

use crate::daemon::mounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name the driver registers under (the CSIDriver object's name).
pub const DRIVER_NAME: &str = "csi.datumfs.io";

/// Volume attributes the container orchestrator adds itself (pod name, namespace, ...): read by
/// nobody here, and never taken for mount flags.
const ORCHESTRATOR_PREFIX: &str = "csi.storage.k8s.io/";

/// Why a CSI call failed; each kind is one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// The request is malformed or names something datumfs does not take (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The target is already published with other settings (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// The volume cannot be taken down as asked, e.g. its outputs are not synced
    /// (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Mounting or unmounting failed (INTERNAL), with the command's own message.
    #[error("{0}")]
    Internal(String),
}

/// What unpublishing does with outputs (and writable volumes) not yet synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnpublish {
    /// Refuse (FAILED_PRECONDITION) until they are synced; nothing is lost.
    #[default]
    Refuse,
    /// Sync them, and unmount only once that succeeded.
    Sync,
    /// Throw them away.
    Discard,
}

impl OnUnpublish {
    fn parse(text: &str) -> Result<Self, CsiError> {
        match text {
            "refuse" => Ok(Self::Refuse),
            "sync" => Ok(Self::Sync),
            "discard" => Ok(Self::Discard),
            other => Err(CsiError::InvalidArgument(format!(
                "volume attribute on-unpublish: '{other}' is not one of refuse, sync, discard"
            ))),
        }
    }
}

/// The part of a NodePublishVolume request the driver acts on.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    /// The volume's id (unique per inline volume; a PersistentVolume's volumeHandle).
    pub volume_id: String,
    /// Where the pod expects the volume (an absolute path the orchestrator chose).
    pub target_path: PathBuf,
    /// Publish read-only (no outputs).
    pub readonly: bool,
    /// The volume capability's mount flags (a PersistentVolume's mountOptions), as fstab
    /// options.
    pub mount_flags: Vec<String>,
    /// The volume attributes (an inline volume's volumeAttributes, a PersistentVolume's
    /// volumeAttributes).
    pub attributes: BTreeMap<String, String>,
}

/// What a publish made, kept so that unpublish (and a restarted driver) can take it down and
/// a repeated publish can be told from a conflicting one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The volume published.
    pub volume_id: String,
    /// Where.
    pub target_path: PathBuf,
    /// The `datumfs mount` flags it was mounted with.
    pub flags: Vec<String>,
    /// What unpublishing does with unsynced outputs.
    pub on_unpublish: OnUnpublish,
}

/// The `datumfs mount` flags for a publish request, and what its unpublish will do.
///
/// Every attribute is a long flag of `datumfs mount`, `-` or `_` alike (`input`, `volume`,
/// `store`, `execution`, `project`, `cache-size`, ...); `input` and `volume` take several values,
/// one per line or separated by `;`; switches take `true` or `false`. `on-unpublish` is the
/// driver's own (refuse, sync, discard). `allow_other` is on unless `allow-other: "false"`, since
/// a pod's processes rarely run as the driver's user.
pub fn mount_flags(req: &PublishRequest) -> Result<(Vec<String>, OnUnpublish), CsiError> {
    let mut options = Vec::new();
    let mut on_unpublish = OnUnpublish::default();
    let mut allow_other = true;
    for (key, value) in &req.attributes {
        if key.starts_with(ORCHESTRATOR_PREFIX) {
            continue;
        }
        match key.replace('_', "-").as_str() {
            "on-unpublish" => on_unpublish = OnUnpublish::parse(value.trim())?,
            "allow-other" => allow_other = !matches!(value.trim(), "false" | "no" | "0"),
            "foreground" => return Err(CsiError::InvalidArgument(
                "volume attribute foreground: a published volume is served by the node's daemon, not in the foreground"
                    .into(),
            )),
            _ => {
                for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    options.push(format!("{key}={line}"));
                }
                if value.trim().is_empty() {
                    return Err(CsiError::InvalidArgument(format!("volume attribute {key} is empty")));
                }
            }
        }
    }
    for flag in &req.mount_flags {
        options.extend(flag.split(',').filter(|o| !o.is_empty()).map(str::to_string));
    }
    if allow_other {
        options.push("allow_other".into());
    }
    if req.readonly {
        options.push("ro".into());
    }
    let flags = crate::cli::mount_helper::options_to_flags(options)
        .map_err(|e| CsiError::InvalidArgument(format!("volume {}: {e:#}", req.volume_id)))?;
    // Values are checked as `datumfs mount` will check them (sizes, durations, ...), so that a
    // typo is the pod's INVALID_ARGUMENT rather than a failed mount.
    let mut argv = vec!["datumfs".to_string(), "mount".to_string(), req.target_path.display().to_string()];
    argv.extend(flags.iter().cloned());
    crate::cli::check_args(&argv).map_err(|e| CsiError::InvalidArgument(format!("volume {}: {e}", req.volume_id)))?;
    Ok((flags, on_unpublish))
}

/// The node plugin: publishes and unpublishes volumes through the `datumfs` binary.
#[derive(Debug)]
pub struct Driver {
    node_id: String,
    state_dir: PathBuf,
    program: PathBuf,
    /// One publish or unpublish at a time: the orchestrator retries calls it gave up waiting
    /// for, and two calls on one target must not interleave.
    busy: tokio::sync::Mutex<()>,
}

impl Driver {
    /// A driver for node `node_id` keeping its records in `state_dir` (created, private) and
    /// mounting with the `datumfs` binary at `program`.
    pub fn new(node_id: String, state_dir: PathBuf, program: PathBuf) -> std::io::Result<Self> {
        crate::util::create_private_dir(&state_dir.join("publications"))?;
        Ok(Self { node_id, state_dir, program, busy: tokio::sync::Mutex::new(()) })
    }

    /// The node's id, as NodeGetInfo reports it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        let id = crate::cache::ObjectId::of("csi-target", &target.to_string_lossy(), "");
        self.state_dir.join("publications").join(format!("{}.json", hex::encode(&id.0[..16])))
    }

    fn record(&self, target: &Path) -> Option<Publication> {
        let text = std::fs::read(self.record_path(target)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save_record(&self, publication: &Publication) -> std::io::Result<()> {
        let path = self.record_path(&publication.target_path);
        let text = serde_json::to_vec_pretty(publication).map_err(std::io::Error::other)?;
        crate::util::write_file_atomically(&path, &text)
    }

    /// NodePublishVolume: mounts the volume at its target path, or confirms it is mounted there
    /// already with the same settings.
    pub async fn publish(&self, req: PublishRequest) -> Result<(), CsiError> {
        if req.volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        if !req.target_path.is_absolute() {
            return Err(CsiError::InvalidArgument(format!(
                "target_path '{}' is not an absolute path",
                req.target_path.display()
            )));
        }
        let (flags, on_unpublish) = mount_flags(&req)?;
        let publication =
            Publication { volume_id: req.volume_id.clone(), target_path: req.target_path.clone(), flags, on_unpublish };
        let _busy = self.busy.lock().await;
        let target = &req.target_path;
        if mounts::is_dead(target) {
            tracing::warn!(target = %target.display(), "the daemon of a published volume is gone; mounting it again");
            mounts::detach(target).map_err(|e| CsiError::Internal(format!("{}: {e}", target.display())))?;
        }
        if let Some(entry) = mounts::at(target) {
            return match self.record(target) {
                Some(old) if old == publication => Ok(()),
                Some(old) if old.volume_id != publication.volume_id => Err(CsiError::AlreadyExists(format!(
                    "{} is already published for volume {}",
                    target.display(),
                    old.volume_id
                ))),
                Some(_) => Err(CsiError::AlreadyExists(format!(
                    "volume {} is already published at {} with other attributes",
                    req.volume_id,
                    target.display()
                ))),
                None => Err(CsiError::AlreadyExists(format!(
                    "{} is already a mount point ({}) that this driver did not make",
                    target.display(),
                    entry.fstype
                ))),
            };
        }
        std::fs::create_dir_all(target)
            .map_err(|e| CsiError::Internal(format!("creating target {}: {e}", target.display())))?;
        let mut args = vec!["mount".to_string(), target.display().to_string()];
        args.extend(publication.flags.iter().cloned());
        self.datumfs(&args).await.map_err(|e| CsiError::Internal(format!("mounting volume {}: {e}", req.volume_id)))?;
        if let Err(e) = self.save_record(&publication) {
            // A mount without its record could not be unpublished as asked: take it down again.
            let _ = self.datumfs(&["unmount".into(), target.display().to_string()]).await;
            return Err(CsiError::Internal(format!("recording volume {}: {e}", req.volume_id)));
        }
        tracing::info!(volume = %req.volume_id, target = %target.display(), "published");
        Ok(())
    }

    /// NodeUnpublishVolume: unmounts the target (syncing, refusing or discarding unsynced
    /// outputs as the volume's `on-unpublish` says) and removes it; a target that is not
    /// mounted is simply cleaned up.
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), CsiError> {
        if volume_id.is_empty() {
            return Err(CsiError::InvalidArgument("volume_id is missing".into()));
        }
        if target.as_os_str().is_empty() {
            return Err(CsiError::InvalidArgument("target_path is missing".into()));
        }
        let _busy = self.busy.lock().await;
        let record = self.record(target);
        let mode = record.as_ref().map(|r| r.on_unpublish).unwrap_or_default();
        if mounts::is_dead(target) {
            mounts::detach(target).map_err(|e| CsiError::Internal(format!("{}: {e}", target.display())))?;
        }
        if let Some(entry) = mounts::at(target) {
            if !entry.is_datumfs() {
                return Err(CsiError::FailedPrecondition(format!(
                    "{} is a {} mount, not datumfs's",
                    target.display(),
                    entry.fstype
                )));
            }
            let mut args = vec!["unmount".to_string(), target.display().to_string()];
            match mode {
                OnUnpublish::Refuse => {}
                OnUnpublish::Sync => args.push("--sync".into()),
                OnUnpublish::Discard => args.push("--discard".into()),
            }
            if let Err(e) = self.datumfs(&args).await {
                let unsynced = e.contains("unsynced") || e.contains("not synced") || e.contains("did not all sync");
                let msg = format!("unpublishing volume {volume_id} at {}: {e}", target.display());
                return Err(if unsynced { CsiError::FailedPrecondition(msg) } else { CsiError::Internal(msg) });
            }
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CsiError::Internal(format!("removing target {}: {e}", target.display()))),
        }
        match std::fs::remove_file(self.record_path(target)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CsiError::Internal(format!("removing the record of {}: {e}", target.display()))),
        }
        tracing::info!(volume = %volume_id, target = %target.display(), "unpublished");
        Ok(())
    }

    /// Runs the datumfs binary with `args`; its error message when it fails.
    async fn datumfs(&self, args: &[String]) -> Result<(), String> {
        let out = tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", self.program.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().trim_start_matches("datumfs: ");
        Err(if err.is_empty() { format!("datumfs {} exited with {}", args[0], out.status) } else { err.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attributes: &[(&str, &str)]) -> PublishRequest {
        PublishRequest {
            volume_id: "v1".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/data/mount".into(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn attributes_become_mount_flags() {
        let req = request(&[
            ("input", "train=s3://b/train/\nval=s3://b/val/"),
            ("cache_size", "10GiB"),
            ("on-unpublish", "sync"),
            ("csi.storage.k8s.io/pod.name", "trainer-0"),
            ("execution", "e-42"),
        ]);
        let (flags, mode) = mount_flags(&req).unwrap();
        assert_eq!(mode, OnUnpublish::Sync);
        assert_eq!(
            flags,
            [
                "--cache-size",
                "10GiB",
                "--execution",
                "e-42",
                "--input",
                "train=s3://b/train/",
                "--input",
                "val=s3://b/val/",
                "-o",
                "allow_other"
            ]
        );
        let mut ro = request(&[("allow-other", "false")]);
        ro.readonly = true;
        ro.mount_flags = vec!["noatime,cache_min_free=5%".into()];
        assert_eq!(mount_flags(&ro).unwrap().0, ["--cache-min-free", "5%", "-o", "noatime,ro"]);
    }

    #[test]
    fn bad_attributes_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("inputs_dir", "x")], "inputs_dir"),
            (&[("cache-size", "ten gigs")], "cache-size"),
            (&[("on-unpublish", "later")], "later"),
            (&[("foreground", "true")], "foreground"),
            (&[("input", "  ")], "input"),
        ];
        for (attributes, named) in cases {
            let e = mount_flags(&request(attributes)).unwrap_err();
            assert!(matches!(e, CsiError::InvalidArgument(_)), "{e:?}");
            assert!(e.to_string().contains(named), "{e} should name {named}");
        }
    }
}
