//! The Kubernetes CSI node plugin driven over its gRPC socket as kubelet drives it: publish
//! volumes onto real FUSE mounts of inputs in the loopback S3 server, read them, write outputs,
//! unpublish with sync or refusal, and the CSI rules for repeated and conflicting calls.

mod common;

use common::*;
use datumfs::csi::proto::identity_client::IdentityClient;
use datumfs::csi::proto::node_client::NodeClient;
use datumfs::csi::proto::{self as pb, volume_capability};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const BUCKET: &str = "csi-data";

/// `datumfs csi` started by the test; dropping it unmounts what it published and stops it,
/// and the node daemon its mounts started, by PID.
struct Driver {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
    env: Vec<(String, String)>,
    daemon_pid: Option<u32>,
}

impl Driver {
    fn start(env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let log = std::fs::File::create(dir.path().join("csi.log")).unwrap();
        let mut env = env;
        env.push(("DATUMFS_CACHE_DIR".into(), dir.path().join("cache").display().to_string()));
        let child = command(&dir.path().join("home"), &env)
            .arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--node-id", "node-a", "--state-dir"])
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Self { dir, child, socket, env, daemon_pid: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("datumfs csi exited with {status}: {}", d.log());
            }
            assert!(Instant::now() < deadline, "no socket after 20 s: {}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("csi.log")).unwrap_or_default()
    }

    /// A pod's target path, under a parent that exists (kubelet makes it).
    fn target(&self, pod: &str) -> PathBuf {
        let parent = self.dir.path().join(format!("pods/{pod}/volumes/kubernetes.io~csi/data"));
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    fn datumfs(&self, args: &[&str]) -> std::process::Output {
        command(&self.dir.path().join("home"), &self.env).args(args).output().unwrap()
    }

    /// The PID of the daemon serving `target`, remembered for the cleanup.
    fn daemon_of(&mut self, target: &Path) -> u32 {
        let status = json(&self.datumfs(&["status", target.to_str().unwrap(), "--json"]));
        let pid = status["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {status}")) as u32;
        self.daemon_pid = Some(pid);
        pid
    }

    async fn channel(&self) -> Channel {
        let socket = self.socket.clone();
        tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pods = self.dir.path().join("pods");
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let target = pod.path().join("volumes/kubernetes.io~csi/data/mount");
            if is_mounted(&target) {
                let _ = self.datumfs(&["unmount", "--discard", "--force", target.to_str().unwrap()]);
            }
            if is_mounted(&target) {
                let _ = std::process::Command::new("umount").arg("-l").arg(&target).status();
            }
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.daemon_pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
    }
}

fn mount_capability() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume::default())),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn publish(volume: &str, target: &Path, attributes: &[(&str, &str)]) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability()),
        volume_context: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn unpublish(volume: &str, target: &Path) -> pb::NodeUnpublishVolumeRequest {
    pb::NodeUnpublishVolumeRequest { volume_id: volume.into(), target_path: target.display().to_string() }
}

#[test]
fn kubelet_publishes_reads_and_unpublishes_volumes() {
    if !fuse_available() || !nix::unistd::geteuid().is_root() {
        return;
    }
    let s3 = S3Server::start();
    s3.bucket(BUCKET);
    s3.bucket("csi-records");
    let weights = bytes(11, 700_000);
    s3.put(BUCKET, "train/weights.bin", &weights);
    s3.put(BUCKET, "train/labels/a.txt", b"cat\n");
    let mut env = s3.env();
    env.push(("DATUMFS_STORE".into(), "s3://csi-records/datumfs".into()));
    let mut driver = Driver::start(env);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let channel = rt.block_on(driver.channel());
    let mut identity = IdentityClient::new(channel.clone());
    let mut node = NodeClient::new(channel);

    // What the node driver registrar and kubelet ask first.
    let info = rt.block_on(identity.get_plugin_info(pb::GetPluginInfoRequest {})).unwrap().into_inner();
    assert_eq!(info.name, "csi.datumfs.io");
    assert!(!info.vendor_version.is_empty());
    let probe = rt.block_on(identity.probe(pb::ProbeRequest {})).unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = rt.block_on(identity.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})).unwrap();
    assert!(caps.into_inner().capabilities.is_empty(), "a node-only plugin offers no controller");
    let node_info = rt.block_on(node.node_get_info(pb::NodeGetInfoRequest {})).unwrap().into_inner();
    assert_eq!(node_info.node_id, "node-a");
    let node_caps = rt.block_on(node.node_get_capabilities(pb::NodeGetCapabilitiesRequest {})).unwrap().into_inner();
    let staged = node_caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(pb::node_service_capability::Type::Rpc(r)) if r.r#type == pb::node_service_capability::rpc::Type::StageUnstageVolume as i32)
    });
    assert!(!staged, "no staging: NodePublishVolume mounts directly");

    // Publish: inputs from the bucket, outputs synced when the pod goes.
    let input = format!("train=s3://{BUCKET}/train/");
    let attributes = [("input", input.as_str()), ("execution", "csi-e1"), ("on-unpublish", "sync")];
    let t1 = driver.target("pod-1");
    rt.block_on(node.node_publish_volume(publish("vol-1", &t1, &attributes))).unwrap();
    assert!(is_mounted(&t1), "{}", driver.log());
    assert_eq!(std::fs::read(t1.join("inputs/train/weights.bin")).unwrap(), weights);
    assert_eq!(std::fs::read(t1.join("inputs/train/labels/a.txt")).unwrap(), b"cat\n");
    let result = bytes(12, 50_000);
    std::fs::write(t1.join("outputs/result.bin"), &result).unwrap();

    // The same call again is fine; the same target with other attributes is not.
    rt.block_on(node.node_publish_volume(publish("vol-1", &t1, &attributes))).unwrap();
    let other = rt
        .block_on(node.node_publish_volume(publish("vol-1", &t1, &[("input", input.as_str()), ("execution", "x")])))
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");

    // A second pod's volume joins the same node daemon (one cache for the node), and refuses
    // to go while its outputs are unsynced.
    let t2 = driver.target("pod-2");
    rt.block_on(node.node_publish_volume(publish("vol-2", &t2, &[("input", input.as_str()), ("execution", "csi-e2")])))
        .unwrap();
    assert_eq!(std::fs::read(t2.join("inputs/train/labels/a.txt")).unwrap(), b"cat\n");
    assert_eq!(driver.daemon_of(&t1), driver.daemon_of(&t2), "both pods' mounts are served by the node's daemon");
    std::fs::write(t2.join("outputs/unsynced.txt"), b"keep me").unwrap();
    let refused = rt.block_on(node.node_unpublish_volume(unpublish("vol-2", &t2))).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(is_mounted(&t2), "a refused unpublish leaves the volume mounted");
    assert_eq!(std::fs::read(t2.join("outputs/unsynced.txt")).unwrap(), b"keep me");

    // Unpublish with sync: the outputs are datums of the execution, the target is gone.
    rt.block_on(node.node_unpublish_volume(unpublish("vol-1", &t1))).unwrap();
    assert!(!is_mounted(&t1));
    assert!(!t1.exists(), "the target path is removed");
    let datums = json(&driver.datumfs(&["datum", "ls", "--execution", "csi-e1", "--json"]));
    let synced: Vec<&serde_json::Value> =
        datums.as_array().unwrap().iter().filter(|d| d["path"] == "result.bin").collect();
    assert_eq!(synced.len(), 1, "{datums}");
    assert_eq!(synced[0]["checksums"]["sha256"], sha256(&result));
    // Unpublishing again (kubelet retries) is fine.
    rt.block_on(node.node_unpublish_volume(unpublish("vol-1", &t1))).unwrap();

    // Bad requests are named and mount nothing.
    let t3 = driver.target("pod-3");
    let bad = rt.block_on(node.node_publish_volume(publish("vol-3", &t3, &[("cache-sise", "1G")]))).unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("cache-sise"), "{}", bad.message());
    let mut block = publish("vol-3", &t3, &[("input", input.as_str())]);
    block.volume_capability = Some(pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(volume_capability::BlockVolume {})),
        access_mode: None,
    });
    let bad = rt.block_on(node.node_publish_volume(block)).unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // A mount that fails (a bucket that does not exist) says why, in kubelet's event.
    let missing = "in=s3://no-such-bucket/x/";
    let failed = rt.block_on(node.node_publish_volume(publish("vol-3", &t3, &[("input", missing)]))).unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
    assert!(failed.message().contains("no-such-bucket"), "{}", failed.message());
    let _ = rt.block_on(node.node_unpublish_volume(unpublish("vol-3", &t3)));
    assert!(!is_mounted(&t3));

    // Once its outputs are synced by hand, the refused volume goes too.
    let out = driver.datumfs(&["sync", t2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(node.node_unpublish_volume(unpublish("vol-2", &t2))).unwrap();
    assert!(!is_mounted(&t2));
}

#[test]
fn the_example_manifests_are_valid_volumes() {
    use serde::Deserialize;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut volumes = 0;
    for file in ["csidriver.yaml", "daemonset.yaml", "example-pod.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind"));
            // Inline volumes of a pod, and a PersistentVolume's csi source.
            let mut sources = Vec::new();
            if kind == "Pod" {
                sources.extend(doc["spec"]["volumes"].as_sequence().into_iter().flatten().map(|v| v["csi"].clone()));
            }
            if kind == "PersistentVolume" {
                sources.push(doc["spec"]["csi"].clone());
            }
            if kind == "CSIDriver" {
                assert_eq!(doc["metadata"]["name"].as_str(), Some(datumfs::csi::DRIVER_NAME));
            }
            for csi in sources.iter().filter(|c| c["driver"].as_str() == Some(datumfs::csi::DRIVER_NAME)) {
                let attributes = csi["volumeAttributes"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
                    .collect();
                let mount_flags = doc["spec"]["mountOptions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|o| o.as_str().unwrap().to_string())
                    .collect();
                let req = datumfs::csi::PublishRequest {
                    volume_id: "v".into(),
                    target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/data/mount".into(),
                    readonly: csi["readOnly"].as_bool().unwrap_or(false),
                    mount_flags,
                    attributes,
                };
                let (flags, _) = datumfs::csi::mount_flags(&req).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(flags.iter().any(|f| f == "--input"), "{file}: {flags:?}");
                volumes += 1;
            }
        }
    }
    assert_eq!(volumes, 2, "the example pod's inline volume and the PersistentVolume");
}
