//! The CSI Identity and Node services over gRPC on a unix socket: request checks and status
//! codes here, the work in `Driver`.

use super::proto::identity_server::{Identity, IdentityServer};
use super::proto::node_server::{Node, NodeServer};
use super::proto::{self as pb, node_service_capability, volume_capability};
use super::{CsiError, Driver, PublishRequest, DRIVER_NAME};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::{Request, Response, Status};

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Self {
        match e {
            CsiError::InvalidArgument(m) => Status::invalid_argument(m),
            CsiError::AlreadyExists(m) => Status::already_exists(m),
            CsiError::FailedPrecondition(m) => Status::failed_precondition(m),
            CsiError::Internal(m) => Status::internal(m),
        }
    }
}

/// Both services share one driver.
#[derive(Clone)]
struct Plugin(Arc<Driver>);

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        // Node service only: volumes are described by their attributes, nothing is provisioned.
        Ok(Response::new(pb::GetPluginCapabilitiesResponse { capabilities: Vec::new() }))
    }

    async fn probe(&self, _: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        // Ready when mounts can be made: FUSE is there.
        let ready = Path::new("/dev/fuse").exists();
        Ok(Response::new(pb::ProbeResponse { ready: Some(ready) }))
    }
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.target_path.is_empty() {
            return Err(Status::invalid_argument("target_path is missing"));
        }
        let Some(capability) = req.volume_capability else {
            return Err(Status::invalid_argument("volume_capability is missing"));
        };
        let mount_flags = match capability.access_type {
            Some(volume_capability::AccessType::Mount(m)) => {
                if !m.fs_type.is_empty() && m.fs_type != "fuse.datumfs" && m.fs_type != "datumfs" {
                    return Err(Status::invalid_argument(format!(
                        "fs_type '{}': datumfs volumes are fuse.datumfs",
                        m.fs_type
                    )));
                }
                m.mount_flags
            }
            Some(volume_capability::AccessType::Block(_)) => {
                return Err(Status::invalid_argument("datumfs volumes are filesystems, not block devices"))
            }
            None => return Err(Status::invalid_argument("volume_capability has no access type")),
        };
        tracing::info!(volume = %req.volume_id, target = %req.target_path, "publish");
        let publish = PublishRequest {
            volume_id: req.volume_id,
            target_path: PathBuf::from(req.target_path),
            readonly: req.readonly,
            mount_flags,
            attributes: req.volume_context.into_iter().collect(),
        };
        self.0.publish(publish).await.map_err(|e| {
            tracing::warn!("publish failed: {e}");
            Status::from(e)
        })?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        tracing::info!(volume = %req.volume_id, target = %req.target_path, "unpublish");
        self.0.unpublish(&req.volume_id, Path::new(&req.target_path)).await.map_err(|e| {
            tracing::warn!("unpublish failed: {e}");
            Status::from(e)
        })?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        // No staging: each pod's target is its own mount of the node's shared daemon.
        let single_node_multi_writer = pb::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                r#type: node_service_capability::rpc::Type::SingleNodeMultiWriter as i32,
            })),
        };
        Ok(Response::new(pb::NodeGetCapabilitiesResponse { capabilities: vec![single_node_multi_writer] }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.0.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// The socket path of an endpoint given as `unix:///PATH`, `unix:PATH` or a plain path.
fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    if path.is_empty() || endpoint.contains("://") && !endpoint.starts_with("unix://") {
        bail!("endpoint '{endpoint}': give unix:///PATH (a unix socket)");
    }
    Ok(PathBuf::from(path))
}

/// Serves the Identity and Node services of `driver` at `endpoint` until SIGTERM or SIGINT.
pub async fn serve(endpoint: &str, driver: Driver) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let path = socket_path(endpoint)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by a driver that did not stop cleanly would refuse the bind.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    tracing::info!(endpoint = %path.display(), node = driver.node_id(), "serving the CSI Identity and Node services");
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(stream, _)| stream);
        Some((conn, listener))
    });
    let plugin = Plugin(Arc::new(driver));
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stopping (published volumes stay mounted)");
    };
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(plugin.clone()))
        .add_service(NodeServer::new(plugin))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    let _ = std::fs::remove_file(&path);
    result.context("serving gRPC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("unix:/csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("tcp://127.0.0.1:10000").unwrap_err().to_string().contains("unix"));
    }
}
