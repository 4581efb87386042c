//! The CSI Controller service (as TopoLVM's `internal/driver/controller.go` @ 061b806ae885 with
//! `internal/driver/internal/k8s/logicalvolume_service.go` @ 09d8771608fd): it turns CSI requests
//! into LogicalVolume objects and waits, through a watch, for the node agent's answer in their
//! status.
//!
//! - `cache`: reflector stores of LogicalVolumes and Node metadata, trimmed to what the RPCs
//!   read.
//! - `request`: validation, sizes, node choice and capacity, with no API calls.
//! - `volumes`: the object operations (create and wait, delete and wait, grow).
//! - `error`: the domain failures of an RPC, with their fields.
//! - `service`: the tonic service, the only place gRPC codes are chosen.

pub mod cache;
pub mod error;
pub mod request;
pub mod service;
pub mod volumes;

#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::core::PartialObjectMeta;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_core::size::MinimumAllocation;
use topolvm_csi_server::metrics::RpcMetrics;

pub use service::{ControllerService, METRIC_NAMES};

/// Starts the caches' watches on `tasks` and returns the service.
pub fn start(
    client: kube::Client,
    minimum: MinimumAllocation,
    registry: &prometheus::Registry,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<ControllerService, prometheus::Error> {
    let (cache, feeds) = cache::Cache::new();
    tasks.spawn(cache.clone().follow(
        feeds,
        Api::all(client.clone()),
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        shutdown.clone(),
    ));
    let metrics = RpcMetrics::register(registry, METRIC_NAMES)?;
    Ok(ControllerService::new(
        volumes::Volumes::new(client, cache),
        minimum,
        metrics,
    ))
}
