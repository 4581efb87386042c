//! lvmd: the per-node daemon that owns LVM for topolvm-rs.
//!
//! Layers, each with its own error type:
//! - [`lvm`]: runs `lvm` (no shell, `LC_ALL=C`, command prefix, interruption) and decodes its
//!   JSON reports;
//! - [`state`] and [`monitor`]: the cached LVM state and the cheap detector of outside changes;
//! - [`pool`]: what a device class allocates from (thick volume group or thin pool) and what
//!   follows from it;
//! - [`service`]: device classes, capacity and the idempotent operations;
//! - [`grpc`] and [`server`]: the TopoLVM-compatible gRPC API on a Unix socket.
#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod lvm;
pub mod metrics;
pub mod monitor;
pub mod pool;
pub mod server;
pub mod service;
pub mod state;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
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

/// Runs lvmd with `config` on its Unix socket until `shutdown` is cancelled, then waits for
/// running operations.
pub async fn run(
    config: Config,
    node_name: &str,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new(node_name, Registry::new())?);
    let daemon = Daemon::start(config, metrics, shutdown.clone()).await;
    let served = server::serve(
        &daemon.config.socket_name,
        daemon.grpc.clone(),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    daemon.stopped().await;
    served.map_err(RunError::from)
}

/// An lvmd embedded in another process (topolvm-node's `--embed-lvmd`): the same services as
/// the daemon, reached through an in-process gRPC channel instead of the Unix socket. Its
/// metrics go into the host's registry; `metrics-listen` and `socket-name` of the configuration
/// are not used.
#[derive(Debug)]
pub struct Embedded {
    daemon: Daemon,
    channel: tonic::transport::Channel,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Embedded {
    /// Starts lvmd in this process. `registry` receives lvmd's metrics (all named `lvmd_*`).
    pub async fn start(
        config: Config,
        node_name: &str,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Self, RunError> {
        if let Some(addr) = config.metrics_listen {
            warn!(%addr, "embedded lvmd: metrics-listen is ignored; lvmd's metrics are served with the host's");
        }
        let config = Config {
            metrics_listen: None,
            ..config
        };
        let metrics = Arc::new(Metrics::new(node_name, registry)?);
        let daemon = Daemon::start(config, metrics, shutdown.clone()).await;
        // In-process callers are this process itself: no peer credentials to check.
        let routes = server::routes(daemon.grpc.clone(), server::PeerCheck::None).await;
        let (channel, server) = topolvm_runtime::in_process::channel(routes, shutdown);
        Ok(Self {
            daemon,
            channel,
            server: tokio::spawn(server),
        })
    }

    /// A channel to the embedded lvmd's LVService, VGService and grpc.health.v1.
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    /// Waits, after the shutdown token was cancelled, for the server, the running operations
    /// and the background tasks to finish.
    pub async fn stopped(self) {
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "embedded lvmd's server failed"),
            Err(e) => error!(error = %e, "embedded lvmd's server task failed"),
        }
        self.daemon.stopped().await;
    }
}

/// Everything lvmd runs besides its listener: the state cache, the monitor, the capacity gauges,
/// the optional metrics endpoint, and the gRPC implementation with its operation tracker.
#[derive(Debug)]
struct Daemon {
    config: Arc<Config>,
    grpc: grpc::LvmdGrpc,
    operations: TaskTracker,
    background: TaskTracker,
}

impl Daemon {
    async fn start(config: Config, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let config = Arc::new(config);
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
            if class.usable {
                info!(device_class = %class.device_class, free_bytes = class.new_volume_bytes(), "device class ready");
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
        let grpc = grpc::LvmdGrpc::new(lvmd, metrics, operations.clone(), shutdown);
        Self {
            config,
            grpc,
            operations,
            background,
        }
    }

    /// Waits for running operations and background tasks; call after cancelling the token.
    async fn stopped(self) {
        self.operations.close();
        self.operations.wait().await;
        self.background.close();
        self.background.wait().await;
        info!("lvmd stopped");
    }
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
