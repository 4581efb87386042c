//! lvmd: the per-node daemon that owns LVM for topolvm-rs.
//!
//! Layers, each with its own error type:
//! - [`lvm`]: runs `lvm` (no shell, `LC_ALL=C`, command prefix, interruption) and decodes its
//!   JSON reports;
//! - [`state`] and [`monitor`]: the cached LVM state and the cheap detector of outside changes;
//! - [`service`]: device classes, capacity and the idempotent operations;
//! - [`grpc`] and [`server`]: the TopoLVM-compatible gRPC API on a Unix socket.
#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod lvm;
pub mod metrics;
pub mod monitor;
pub mod server;
pub mod service;
pub mod state;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::lvm::CommandRunner;
use crate::metrics::Metrics;
use crate::service::Lvmd;
use crate::state::{RefreshReason, StateCache};

/// Why lvmd stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Server(#[from] topolvm_runtime::unix::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    MetricsListen(#[from] topolvm_runtime::http::BindError),
    #[error("metrics endpoint: {0}")]
    MetricsServe(#[from] std::io::Error),
}

/// Runs lvmd with `config` until `shutdown` is cancelled, then waits for running operations.
pub async fn run(
    config: Config,
    node_name: &str,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new(node_name)?);
    let runner = Arc::new(
        CommandRunner::new(
            config.lvm_command_prefix.clone(),
            config.lvm_command_timeout,
        )
        .with_observer(metrics.clone()),
    );
    let volume_groups: BTreeSet<String> = config
        .device_classes
        .iter()
        .map(|dc| dc.volume_group.clone())
        .collect();
    let cache = Arc::new(StateCache::new(runner.clone(), volume_groups));
    if let Err(e) = cache.refresh(RefreshReason::Startup).await {
        // Keep serving: the periodic refresh retries, and every class reports itself unavailable.
        error!(error = %e, "cannot read LVM state; all device classes are unavailable until it can");
    }
    let lvmd = Arc::new(Lvmd::new(config.clone(), cache.clone(), runner));
    for class in lvmd.capacity_report(&cache.current()).classes {
        if class.available {
            info!(device_class = %class.device_class, free_bytes = class.free, "device class ready");
        } else {
            warn!(device_class = %class.device_class, "device class unavailable: its volume group or thin pool is missing");
        }
    }

    let background = TaskTracker::new();
    background.spawn(monitor::run(
        cache.clone(),
        config.change_poll_interval,
        config.full_refresh_interval,
        shutdown.clone(),
    ));
    background.spawn(keep_capacity_metrics(
        lvmd.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = config.metrics_listen {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        background.spawn(async move {
            if let Err(e) = serve_metrics(addr, &metrics, shutdown).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }

    let operations = TaskTracker::new();
    let grpc = grpc::LvmdGrpc::new(lvmd, metrics, operations.clone(), shutdown.clone());
    let served = server::serve(&config.socket_name, grpc, shutdown.clone()).await;
    shutdown.cancel();
    operations.close();
    operations.wait().await;
    background.close();
    background.wait().await;
    info!("lvmd stopped");
    served.map_err(RunError::from)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let app = topolvm_runtime::endpoints::metrics_routes(metrics.registry().clone())
        .merge(topolvm_runtime::endpoints::Health::new().routes());
    let listener = topolvm_runtime::http::bind(&addr.to_string()).await?;
    Ok(topolvm_runtime::http::serve(listener, None, app, shutdown).await?)
}

/// Keeps the capacity gauges in step with the cache.
async fn keep_capacity_metrics(
    lvmd: Arc<Lvmd>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut rx = lvmd.cache().subscribe();
    loop {
        let snap = rx.borrow_and_update().clone();
        metrics.set_capacity(&lvmd.capacity_report(&snap));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}
