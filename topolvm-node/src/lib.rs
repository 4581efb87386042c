//! topolvm-node: the node agent of topolvm-rs, compatible with TopoLVM's.
//!
//! Built so far: [`capacity`], the Node's live capacity annotations from lvmd's Watch stream,
//! [`logical_volume`], the LogicalVolume reconciler and orphan LV scan, and
//! [`volume_condition`], the health rule NodeGetVolumeStats will report,
//! with `/metrics`, `/healthz` and `/readyz`. The CSI node service comes next (see README.md).
#![forbid(unsafe_code)]

pub mod capacity;
pub mod logical_volume;
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
    /// Remove an orphan LV seen orphaned this long (`--orphan-gc-after`); `None`: only report.
    pub orphan_gc_after: Option<std::time::Duration>,
    /// How often to look for orphan LVs (`--orphan-scan-interval`).
    pub orphan_scan_interval: std::time::Duration,
}

/// Why topolvm-node stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("--nodename (or NODE_NAME) must not be empty")]
    NoNodeName,
    #[error(transparent)]
    Listen(#[from] topolvm_runtime::http::BindError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
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
    tasks.spawn(capacity::run(
        capacity::NodeCapacity::new(client.clone(), options.node_name.clone()),
        lvmd.clone(),
        report_sender,
        lvmd_ready,
        shutdown.clone(),
    ));
    let reconciler = logical_volume::Context::new(
        client.clone(),
        options.node_name.clone(),
        lvmd.clone(),
        logical_volume::Metrics::register(&registry)?,
    );
    tasks.spawn(logical_volume::run(
        std::sync::Arc::new(reconciler),
        shutdown.clone(),
    ));
    let orphans = logical_volume::orphans::OrphanScanner::new(
        client.clone(),
        options.node_name.clone(),
        lvmd.clone(),
        latest_report,
        logical_volume::orphans::OrphanOptions::new(
            options.orphan_scan_interval,
            options.orphan_gc_after,
        ),
        &registry,
    )?;
    tasks.spawn(orphans.run(shutdown.clone()));
    info!(node = %options.node_name, lvmd = %options.lvmd_socket.display(), "topolvm-node started");
    let metrics = topolvm_runtime::http::serve(
        metrics_listener,
        None,
        metrics_routes(registry),
        shutdown.clone(),
    );
    let probes =
        topolvm_runtime::http::serve(health_listener, None, health.routes(), shutdown.clone());
    let (metrics, probes) = tokio::join!(metrics, probes);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    info!("topolvm-node stopped");
    metrics?;
    probes?;
    Ok(())
}
