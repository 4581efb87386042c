//! topolvm-node: the node agent of topolvm-rs, compatible with TopoLVM's.
//!
//! Built so far: [`capacity`], the Node's live capacity annotations from lvmd's Watch stream;
//! [`csi`], the CSI Identity and Node services (with inline ephemeral volumes) on the CSI socket;
//! [`volume_condition`], the health rule NodeGetVolumeStats reports;
//! with `/metrics`, `/healthz` and `/readyz`. The LogicalVolume reconciler comes next
//! (see README.md).
#![forbid(unsafe_code)]

pub mod capacity;
pub mod csi;
pub mod lvmd_client;
pub mod volume_condition;

use std::path::PathBuf;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_runtime::endpoints::{Health, metrics_routes};
use tracing::info;

use crate::lvmd_client::LvmdConnection;

/// What `run` needs besides the Kubernetes client.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub lvmd_socket: PathBuf,
    /// Go-style listen addresses (`:8080`), as TopoLVM's flags take them.
    pub metrics_bind_address: String,
    pub health_probe_bind_address: String,
    /// The CSI Identity and Node socket.
    pub csi_socket: PathBuf,
    /// kubelet's root directory: publish targets must lie under it.
    pub kubelet_dir: PathBuf,
}

/// Why topolvm-node stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("--nodename (or NODE_NAME) must not be empty")]
    NoNodeName,
    #[error(transparent)]
    Listen(#[from] topolvm_runtime::http::BindError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Csi(#[from] csi::ServeError),
}

/// Runs topolvm-node until `shutdown`.
pub async fn run(
    options: Options,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if options.node_name.is_empty() {
        return Err(RunError::NoNodeName);
    }
    let registry = prometheus::Registry::new();
    let health = Health::new();
    let lvmd_ready = health.readiness("lvmd");

    let metrics_listener = topolvm_runtime::http::bind(&options.metrics_bind_address).await?;
    let health_listener = topolvm_runtime::http::bind(&options.health_probe_bind_address).await?;
    let tasks = TaskTracker::new();
    let lvmd = LvmdConnection::socket(&options.lvmd_socket);
    let (report_sender, latest_report) = lvmd_client::report_channel();
    // Probe answers ready only while every /readyz check passes (lvmd reachable, ...).
    let probe_ready = lvmd_ready.clone();
    tasks.spawn(capacity::run(
        capacity::NodeCapacity::new(client, options.node_name.clone()),
        lvmd.clone(),
        report_sender,
        lvmd_ready,
        shutdown.clone(),
    ));
    let csi_server = csi::serve(
        csi::CsiOptions {
            socket: options.csi_socket.clone(),
            kubelet_dir: options.kubelet_dir.clone(),
            node_name: options.node_name.clone(),
        },
        lvmd.clone(),
        latest_report,
        std::sync::Arc::new(move || probe_ready.is_ready()),
        registry.clone(),
        shutdown.clone(),
    );
    info!(node = %options.node_name, lvmd = %options.lvmd_socket.display(), "topolvm-node started");
    let metrics = topolvm_runtime::http::serve(
        metrics_listener,
        None,
        metrics_routes(registry),
        shutdown.clone(),
    );
    let probes =
        topolvm_runtime::http::serve(health_listener, None, health.routes(), shutdown.clone());
    let (metrics, probes, csi_served) = tokio::join!(metrics, probes, async {
        let result = csi_server.await;
        // Without its socket the node is of no use to kubelet: stop the rest too.
        shutdown.cancel();
        result
    });
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    info!("topolvm-node stopped");
    metrics?;
    probes?;
    csi_served?;
    Ok(())
}
