//! topolvm-node: the node agent of topolvm-rs, compatible with TopoLVM's.
//!
//! Built so far: [`capacity`], the Node's live capacity annotations from lvmd's Watch stream;
//! [`csi`], the CSI Identity and Node services (with inline ephemeral volumes) on the CSI socket;
//! [`logical_volume`], the LogicalVolume reconciler and the orphan LV scan; [`metrics`],
//! TopoLVM's capacity gauges; [`volume_condition`], the health rule NodeGetVolumeStats reports;
//! readiness on the CSIDriver object (`topolvm_runtime::existence`); lvmd either over its socket or embedded in
//! this process ([`lvmd_client`]); with `/metrics`, `/healthz` and `/readyz`; and, with
//! `--register-with-kubelet`, [`registrar`], kubelet's plugin registration without the
//! node-driver-registrar sidecar.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod csi;
pub mod logical_volume;
pub mod lvmd_client;
pub mod metrics;
pub mod registrar;
pub mod volume_condition;

use std::path::PathBuf;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_runtime::endpoints::Health;
use tracing::info;

use crate::lvmd_client::LvmdConnection;

/// How topolvm-node reaches lvmd.
#[derive(Debug, Clone)]
pub enum LvmdMode {
    /// An lvmd daemon serving this Unix socket (`--lvmd-socket`).
    Socket(PathBuf),
    /// lvmd run inside topolvm-node from this configuration (`--embed-lvmd --config`).
    Embedded(Box<lvmd::config::Config>),
}

/// What `run` needs besides the Kubernetes client.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub lvmd: LvmdMode,
    /// Go-style listen addresses (`:8080`), as TopoLVM's flags take them.
    pub metrics_bind_address: String,
    pub health_probe_bind_address: String,
    /// TopoLVM's `--secure-metrics-server`: `/metrics` over HTTPS with a self-signed
    /// certificate, for callers whose token may `get /metrics` (TokenReview and
    /// SubjectAccessReview), as controller-runtime's secure metrics server does.
    pub secure_metrics_server: bool,
    /// The CSI Identity and Node socket.
    pub csi_socket: PathBuf,
    /// kubelet's root directory: publish targets must lie under it.
    pub kubelet_dir: PathBuf,
    /// Remove an orphan LV seen orphaned this long (`--orphan-gc-after`); `None`: only report.
    pub orphan_gc_after: Option<std::time::Duration>,
    /// How often to look for orphan LVs (`--orphan-scan-interval`).
    pub orphan_scan_interval: std::time::Duration,
    /// Register the CSI socket with kubelet (`--register-with-kubelet`); `None`: the
    /// node-driver-registrar sidecar does.
    pub registrar: Option<registrar::RegistrarOptions>,
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
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("secure metrics: {0}")]
    Tls(#[from] topolvm_runtime::tls::TlsError),
    #[error("embedded lvmd: {0}")]
    EmbeddedLvmd(#[from] lvmd::RunError),
    #[error(transparent)]
    Csi(#[from] csi::ServeError),
    #[error(transparent)]
    Registrar(#[from] registrar::Error),
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
    let csi_driver_ready = health.readiness("csidriver");
    let registrar = options.registrar.clone().map(|registrar_options| {
        let registered = health.readiness(registrar::READINESS_CHECK);
        registrar::serve(registrar_options, registered, shutdown.clone())
    });

    let metrics_listener = topolvm_runtime::http::bind(&options.metrics_bind_address).await?;
    let health_listener = topolvm_runtime::http::bind(&options.health_probe_bind_address).await?;

    let (lvmd, embedded) = match options.lvmd {
        LvmdMode::Socket(path) => (LvmdConnection::socket(&path), None),
        LvmdMode::Embedded(config) => {
            let embedded = lvmd::Embedded::start(
                *config,
                &options.node_name,
                registry.clone(),
                shutdown.clone(),
            )
            .await?;
            let connection = LvmdConnection::from_channel(embedded.channel(), "embedded lvmd");
            (connection, Some(embedded))
        }
    };

    let gauges = metrics::register_capacity_gauges(&registry, &options.node_name)?;
    let capacity_health = metrics::CapacityHealth::register(&registry, &options.node_name)?;
    let (report_sender, latest_report) = lvmd_client::report_channel();
    let tasks = TaskTracker::new();
    // Probe answers ready only while lvmd is reachable and the CSIDriver object exists (the
    // checks of /readyz), and never fails (see topolvm_csi_server::identity).
    let probe_ready = {
        let (lvmd_ready, csi_driver_ready) = (lvmd_ready.clone(), csi_driver_ready.clone());
        std::sync::Arc::new(move || lvmd_ready.is_ready() && csi_driver_ready.is_ready())
    };
    tasks.spawn(capacity::run(
        capacity::NodeCapacity::new(client.clone(), options.node_name.clone()),
        lvmd.clone(),
        report_sender,
        lvmd_ready,
        capacity_health,
        shutdown.clone(),
    ));
    tasks.spawn(metrics::follow(
        gauges,
        latest_report.clone(),
        shutdown.clone(),
    ));
    // Like TopoLVM's node, not ready while the CSIDriver object is missing: kubelet would not
    // know how to mount TopoLVM volumes.
    tasks.spawn(topolvm_runtime::existence::follow(
        kube::Api::<k8s_openapi::api::storage::v1::CSIDriver>::all(client.clone()),
        topolvm_core::names::PLUGIN_NAME,
        csi_driver_ready,
        shutdown.clone(),
    ));
    let csi_server = csi::serve(
        csi::CsiOptions {
            socket: options.csi_socket.clone(),
            kubelet_dir: options.kubelet_dir.clone(),
            node_name: options.node_name.clone(),
        },
        lvmd.clone(),
        latest_report.clone(),
        probe_ready,
        registry.clone(),
        shutdown.clone(),
    );
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
    info!(node = %options.node_name, lvmd = %lvmd.description(), "topolvm-node started");
    let (metrics_tls, metrics_app) = topolvm_runtime::delegated_auth::metrics_endpoint(
        registry,
        options.secure_metrics_server,
        &client,
        &[options.node_name.clone(), "localhost".to_owned()],
    )?;
    let metrics =
        topolvm_runtime::http::serve(metrics_listener, metrics_tls, metrics_app, shutdown.clone());
    let probes =
        topolvm_runtime::http::serve(health_listener, None, health.routes(), shutdown.clone());
    let (metrics, probes, csi_served, registrar_served) = tokio::join!(
        metrics,
        probes,
        async {
            let result = csi_server.await;
            // Without its socket the node is of no use to kubelet: stop the rest too.
            shutdown.cancel();
            result
        },
        async {
            let Some(registrar) = registrar else {
                return Ok(());
            };
            let result = registrar.await;
            // Unregistered, kubelet would never call the node: stop, as the sidecar would.
            shutdown.cancel();
            result
        }
    );
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(embedded) = embedded {
        embedded.stopped().await;
    }
    info!("topolvm-node stopped");
    metrics?;
    probes?;
    csi_served?;
    registrar_served?;
    Ok(())
}
