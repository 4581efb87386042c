//! topolvm-controller: the controller of topolvm-rs, compatible with TopoLVM's
//! (NODE-CONTROLLER.md B). Every replica serves the CSI Identity and Controller services on its
//! socket (the sidecars elect their own leader) and the pod webhook; the reconcilers run only on
//! the replica holding the leader election Lease.
//!
//! Built so far: start-up, flags, metrics (optionally secure), health and readiness (the
//! CSIDriver object), the Identity and Controller services ([`csi`]) and leader election. See README.md for what is still
//! to come.
#![forbid(unsafe_code)]

pub mod csi;

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::storage::v1::CSIDriver;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_core::csi_identity::IdentityService;
use topolvm_core::names::PLUGIN_NAME;
use topolvm_core::size::MinimumAllocation;
use topolvm_runtime::endpoints::{Health, metrics_routes};
use topolvm_runtime::leader::{Candidate, Timing};
use tracing::{error, info};

/// How the Lease is named and timed (`--leader-election-*`).
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub id: String,
    /// Empty: this pod's namespace (`POD_NAMESPACE`, else the service account's namespace file).
    pub namespace: String,
    pub timing: Timing,
}

/// What `run` needs besides the Kubernetes client.
#[derive(Debug, Clone)]
pub struct Options {
    pub csi_socket: PathBuf,
    /// Go-style listen addresses (`:8080`), as TopoLVM's flags take them.
    pub metrics_bind_address: String,
    pub secure_metrics_server: bool,
    pub health_probe_bind_address: String,
    pub webhook_addr: String,
    pub cert_dir: String,
    pub enable_webhooks: bool,
    /// `None`: `--leader-election=false`, this replica runs the reconcilers unconditionally.
    pub leader_election: Option<LeaderElection>,
    pub skip_node_finalize: bool,
    pub minimum_allocation: MinimumAllocation,
}

/// Why topolvm-controller stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Listen(#[from] topolvm_runtime::http::BindError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("secure metrics: {0}")]
    Tls(#[from] topolvm_runtime::tls::TlsError),
    #[error(transparent)]
    Socket(#[from] topolvm_runtime::unix::Error),
    #[error("leader election: {0}")]
    Leader(#[from] topolvm_runtime::leader::Error),
    #[error(
        "--leader-election-namespace is empty and this pod's namespace is unknown (set POD_NAMESPACE)"
    )]
    NoNamespace,
}

/// The namespace of the Lease: the flag, else the pod's (`POD_NAMESPACE` from the downward API,
/// else the service account's namespace file, as client-go finds it).
fn lease_namespace(flag: &str) -> Result<String, RunError> {
    if !flag.is_empty() {
        return Ok(flag.to_owned());
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return Ok(ns);
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|ns| ns.trim().to_owned())
        .ok()
        .filter(|ns| !ns.is_empty())
        .ok_or(RunError::NoNamespace)
}

/// A unique identity for this replica's Lease candidacy: host name and process id.
fn candidate_identity() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}_{}", std::process::id())
}

/// Runs topolvm-controller until `shutdown`, or until this replica loses the leadership it
/// held (an error: the process must restart, as controller-runtime's do).
pub async fn run(
    options: Options,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let registry = prometheus::Registry::new();
    let health = Health::new();
    let csi_driver_ready = health.readiness("csidriver");

    let metrics_listener = topolvm_runtime::http::bind(&options.metrics_bind_address).await?;
    let health_listener = topolvm_runtime::http::bind(&options.health_probe_bind_address).await?;
    let csi_listener = topolvm_runtime::unix::bind(&options.csi_socket).await?;
    let candidate = match &options.leader_election {
        Some(election) => Some(Candidate::new(
            client.clone(),
            &lease_namespace(&election.namespace)?,
            &election.id,
            &candidate_identity(),
            election.timing,
        )?),
        None => None,
    };

    let tasks = TaskTracker::new();
    tasks.spawn(topolvm_runtime::existence::follow(
        kube::Api::<CSIDriver>::all(client.clone()),
        PLUGIN_NAME,
        csi_driver_ready.clone(),
        shutdown.clone(),
    ));

    // The CSI socket, on every replica.
    let probe_ready = {
        let ready = csi_driver_ready.clone();
        Arc::new(move || ready.is_ready())
    };
    let controller = csi::start(
        client.clone(),
        options.minimum_allocation.clone(),
        &registry,
        &tasks,
        &shutdown,
    )?;
    let routes = tonic::service::Routes::new(
        IdentityService::new(env!("CARGO_PKG_VERSION"), probe_ready).server(),
    )
    .add_service(controller.server());
    let csi_socket = options.csi_socket.clone();
    let csi_shutdown = shutdown.clone();
    let csi = async move {
        let result =
            topolvm_runtime::unix::serve(csi_listener, &csi_socket, routes, csi_shutdown.clone())
                .await;
        // Without its socket the controller is of no use to the sidecars: stop the rest too.
        csi_shutdown.cancel();
        result
    };

    // Leader-only work.
    let leader_shutdown = shutdown.clone();
    let leading = async move {
        let Some(candidate) = candidate else {
            leader_shutdown.cancelled().await;
            return Ok(());
        };
        let Some(leadership) = candidate.acquire(leader_shutdown.clone()).await else {
            return Ok(());
        };
        let lost = leadership.lost();
        tokio::select! {
            _ = leader_shutdown.cancelled() => {}
            _ = lost.cancelled() => {
                error!("leadership lost; stopping so that a restart competes again");
                leader_shutdown.cancel();
            }
        }
        leadership.finished().await
    };

    info!(csi_socket = %options.csi_socket.display(), "topolvm-controller started");
    let (metrics_tls, metrics_app) = if options.secure_metrics_server {
        let acceptor = topolvm_runtime::tls::self_signed_acceptor(&["localhost".to_owned()])?;
        let auth = topolvm_runtime::delegated_auth::DelegatedAuth::new(client.clone());
        (
            Some(acceptor),
            topolvm_runtime::delegated_auth::protect(metrics_routes(registry), auth),
        )
    } else {
        (None, metrics_routes(registry))
    };
    let metrics =
        topolvm_runtime::http::serve(metrics_listener, metrics_tls, metrics_app, shutdown.clone());
    let probes =
        topolvm_runtime::http::serve(health_listener, None, health.routes(), shutdown.clone());
    let (metrics, probes, csi, leading) = tokio::join!(metrics, probes, csi, leading);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    info!("topolvm-controller stopped");
    metrics?;
    probes?;
    csi?;
    leading?;
    Ok(())
}
