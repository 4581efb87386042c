//! The Unix socket server: socket hygiene, peer credentials, health, graceful shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};
use topolvm_proto::lvmd as pb;
use tracing::info;

use crate::grpc::LvmdGrpc;

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Only root may drive lvmd: it creates and removes volumes on the host's disks.
#[allow(clippy::result_large_err)]
pub fn require_root_peer(request: Request<()>) -> Result<Request<()>, Status> {
    let uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    match uid {
        Some(0) => Ok(request),
        Some(uid) => Err(Status::permission_denied(format!(
            "lvmd serves only root; the caller runs as uid {uid}"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown",
        )),
    }
}

/// Binds `path`: removes a stale socket left by a crashed lvmd, refuses to replace anything
/// else or a socket someone still serves, and makes the new socket mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServerError::Socket {
                    path: path.to_owned(),
                    message: "another process is serving on it".to_owned(),
                });
            }
            info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(ServerError::Socket {
                path: path.to_owned(),
                message: "exists and is not a socket; refusing to replace it".to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves LVService, VGService and grpc.health.v1 on `listener` until `shutdown`; in-flight
/// requests finish first. Removes the socket file at the end.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    grpc: LvmdGrpc,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::lv_service_server::LvServiceServer<LvmdGrpc>>()
        .await;
    health_reporter
        .set_serving::<pb::vg_service_server::VgServiceServer<LvmdGrpc>>()
        .await;
    let lv =
        pb::lv_service_server::LvServiceServer::with_interceptor(grpc.clone(), require_root_peer);
    let vg = pb::vg_service_server::VgServiceServer::with_interceptor(grpc, require_root_peer);
    info!(path = %path.display(), "serving lvmd");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(lv)
        .add_service(vg)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    let _ = std::fs::remove_file(path);
    result.map_err(ServerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_mode_is_0600() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("lvmd.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let _listener = bind(&path).await.expect("bind over a stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn live_socket_and_regular_file_are_not_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let live = dir.path().join("live.sock");
        let _serving = bind(&live).await.expect("first bind");
        let err = bind(&live).await.expect_err("second bind");
        assert!(
            err.to_string().contains("another process is serving"),
            "{err}"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").expect("write");
        let err = bind(&file).await.expect_err("regular file");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    }

    #[test]
    fn requests_without_credentials_are_refused() {
        let status = require_root_peer(Request::new(())).expect_err("no credentials");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
