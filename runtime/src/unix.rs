//! gRPC over a Unix socket: the server side (socket hygiene, peer credentials, graceful
//! shutdown) and the client connector, the way lvmd and the CSI endpoints are served and reached.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tracing::info;

use crate::authority::AuthorityRepair;

/// Why a socket could not be served.
#[derive(Debug, Error)]
pub enum Error {
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

/// The uid of the process at the other end of the request's connection, from the kernel's
/// peer credentials (`SO_PEERCRED`); `None` when the request did not come over a Unix socket.
pub fn peer_uid<T>(request: &Request<T>) -> Option<u32> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// An interceptor that lets only root callers through (`PERMISSION_DENIED` otherwise): for
/// sockets whose server changes the host, such as lvmd's.
#[allow(clippy::result_large_err)]
pub fn require_root_peer(request: Request<()>) -> Result<Request<()>, Status> {
    match peer_uid(&request) {
        Some(0) => Ok(request),
        Some(uid) => Err(Status::permission_denied(format!(
            "this socket serves only root; the caller runs as uid {uid}"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown",
        )),
    }
}

/// Binds `path`: removes a stale socket left by a crashed server, refuses to replace anything
/// else or a socket someone still serves, creates the directory, and makes the socket mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::Socket {
                    path: path.to_owned(),
                    message: "another process is serving on it".to_owned(),
                });
            }
            info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(Error::Socket {
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

/// Serves `routes` on `listener` (bound at `path` by [`bind`]) until `shutdown`; requests in
/// flight finish first. Removes the socket file at the end.
///
/// Clients that send the socket's path as the HTTP/2 `:authority` (kubelet before 1.26, gRPC
/// C-core, grpc-java), which the HTTP/2 layer would refuse, are served as if they had sent
/// `localhost` ([`crate::authority`]).
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    routes: Routes,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    info!(path = %path.display(), "serving gRPC");
    let result = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|accepted| accepted.map(AuthorityRepair::new)),
            shutdown.cancelled(),
        )
        .await;
    let _ = std::fs::remove_file(path);
    result.map_err(Error::from)
}

/// A client channel to the gRPC server listening on `socket`. Requests carry the authority
/// `localhost`, as gRPC-Go's do; every connection goes to the socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_mode_is_0600() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("run/server.sock");
        std::fs::create_dir_all(dir.path().join("run")).expect("dir");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let _listener = bind(&path).await.expect("bind over a stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn missing_directory_is_created() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a/b/server.sock");
        let _listener = bind(&path).await.expect("bind");
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("meta")
                .file_type()
                .is_socket()
        );
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
