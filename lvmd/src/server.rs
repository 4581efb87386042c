//! lvmd's gRPC endpoint: LVService and VGService for root callers only, plus grpc.health.v1,
//! served on the Unix socket by [`topolvm_runtime::unix`].

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use topolvm_proto::lvmd as pb;
use topolvm_runtime::unix::{self, require_root_peer};

use crate::grpc::LvmdGrpc;

/// lvmd's services. Only root may drive lvmd: it creates and removes volumes on the host's disks.
pub async fn routes(grpc: LvmdGrpc) -> Routes {
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
    Routes::new(health_service).add_service(lv).add_service(vg)
}

/// Binds `path` and serves lvmd on it until `shutdown`; requests in flight finish first.
pub async fn serve(
    path: &Path,
    grpc: LvmdGrpc,
    shutdown: CancellationToken,
) -> Result<(), unix::Error> {
    let listener = unix::bind(path).await?;
    unix::serve(listener, path, routes(grpc).await, shutdown).await
}
