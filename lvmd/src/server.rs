//! lvmd's gRPC endpoint: LVService and VGService for root callers only, plus grpc.health.v1,
//! served on the Unix socket by [`topolvm_runtime::unix`].

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use topolvm_proto::lvmd as pb;
use topolvm_runtime::unix::{self, require_root_peer};

use crate::grpc::LvmdGrpc;

/// Who may call lvmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// Only root over the Unix socket: lvmd creates and removes volumes on the host's disks.
    RootOnly,
    /// No check: the caller is the process lvmd is embedded in.
    None,
}

/// lvmd's services, with grpc.health.v1.
pub async fn routes(grpc: LvmdGrpc, peers: PeerCheck) -> Routes {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::lv_service_server::LvServiceServer<LvmdGrpc>>()
        .await;
    health_reporter
        .set_serving::<pb::vg_service_server::VgServiceServer<LvmdGrpc>>()
        .await;
    let routes = Routes::new(health_service);
    match peers {
        PeerCheck::RootOnly => routes
            .add_service(pb::lv_service_server::LvServiceServer::with_interceptor(
                grpc.clone(),
                require_root_peer,
            ))
            .add_service(pb::vg_service_server::VgServiceServer::with_interceptor(
                grpc,
                require_root_peer,
            )),
        PeerCheck::None => routes
            .add_service(pb::lv_service_server::LvServiceServer::new(grpc.clone()))
            .add_service(pb::vg_service_server::VgServiceServer::new(grpc)),
    }
}

/// Binds `path` and serves lvmd on it until `shutdown`; requests in flight finish first.
pub async fn serve(
    path: &Path,
    grpc: LvmdGrpc,
    shutdown: CancellationToken,
) -> Result<(), unix::Error> {
    let listener = unix::bind(path).await?;
    unix::serve(
        listener,
        path,
        routes(grpc, PeerCheck::RootOnly).await,
        shutdown,
    )
    .await
}
