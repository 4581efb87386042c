//! topolvm-controller: the controller of topolvm-rs, compatible with TopoLVM's (`subMain` in
//! `cmd/topolvm-controller/app/run.go` @ 47b68a852534). Every replica serves the CSI Identity and
//! Controller services on its socket (the sidecars elect their own leader) and the pod webhook; the
//! reconcilers run only on the replica holding the leader election Lease.
//!
//! Modules: [`csi`] (the Identity and Controller services on the CSI socket), [`webhook`] (the
//! pod mutating webhook), [`node_cleanup`] (after a deleted Node), [`pvc`] (legacy finalizers,
//! the filesystem-resize nudge), [`stray`] (LogicalVolumes no PV or claim refers to),
//! [`metrics`]. `run` wires them: the CSI socket and the webhook on every replica, the
//! reconcilers in the leader-only block.
#![forbid(unsafe_code)]

pub mod csi;
pub mod metrics;
pub mod node_cleanup;
pub mod pvc;
pub mod stray;
#[cfg(test)]
mod test_api;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::storage::v1::CSIDriver;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use topolvm_core::names::PLUGIN_NAME;
use topolvm_core::size::MinimumAllocation;
use topolvm_csi_server::identity::IdentityService;
use topolvm_runtime::endpoints::Health;
use topolvm_runtime::leader::{Candidate, Timing};
use topolvm_runtime::tls::TlsFiles;
use tracing::{error, info};

use crate::metrics::Metrics;

/// controller-runtime's certificate directory when `--cert-dir` is empty.
pub const DEFAULT_CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";

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
    /// The scan for stray LogicalVolumes (`--stray-volume-*`).
    pub stray: stray::StrayOptions,
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
    let webhook_listener = if options.enable_webhooks {
        Some(topolvm_runtime::http::bind(&options.webhook_addr).await?)
    } else {
        None
    };
    let controller_metrics = Metrics::register(&registry)?;
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

    // Leader-only work: the reconcilers.
    let reconcilers = Reconcilers {
        client: client.clone(),
        metrics: controller_metrics.clone(),
        skip_node_finalize: options.skip_node_finalize,
        stray: options.stray,
    };
    let leader_shutdown = shutdown.clone();
    let leading = async move {
        let Some(candidate) = candidate else {
            info!("leader election off: running the reconcilers");
            reconcilers.run(leader_shutdown.clone()).await;
            return Ok(());
        };
        let Some(leadership) = candidate.acquire(leader_shutdown.clone()).await else {
            return Ok(());
        };
        let lost = leadership.lost();
        let stop = leader_shutdown.child_token();
        let running = tokio::spawn(reconcilers.clone().run(stop.clone()));
        tokio::select! {
            _ = leader_shutdown.cancelled() => {}
            _ = lost.cancelled() => {
                error!("leadership lost; stopping so that a restart competes again");
                leader_shutdown.cancel();
            }
        }
        stop.cancel();
        let _ = running.await;
        leadership.finished().await
    };

    // The webhook, on every replica: it is stateless.
    let webhook = {
        let shutdown = shutdown.clone();
        // Only a served webhook has a readiness check: `--enable-webhooks=false` must not leave
        // /readyz failing for good.
        let ready = webhook_listener
            .as_ref()
            .map(|_| health.readiness("webhook"));
        let app = webhook::routes(webhook::ApiLookup(client.clone()), controller_metrics);
        let cert_dir = webhook_cert_dir(&options.cert_dir);
        async move {
            let Some(listener) = webhook_listener else {
                return Ok(());
            };
            let Some(tls) = webhook_tls(&cert_dir, &shutdown).await else {
                return Ok(());
            };
            if let Some(ready) = &ready {
                ready.set_ready(true);
            }
            topolvm_runtime::http::serve(listener, Some(tls), app, shutdown).await
        }
    };

    info!(csi_socket = %options.csi_socket.display(), "topolvm-controller started");
    let (metrics_tls, metrics_app) = topolvm_runtime::delegated_auth::metrics_endpoint(
        registry,
        options.secure_metrics_server,
        &client,
        &["localhost".to_owned()],
    )?;
    let metrics =
        topolvm_runtime::http::serve(metrics_listener, metrics_tls, metrics_app, shutdown.clone());
    let probes =
        topolvm_runtime::http::serve(health_listener, None, health.routes(), shutdown.clone());
    let (metrics, probes, csi, leading, webhook) =
        tokio::join!(metrics, probes, csi, leading, webhook);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    info!("topolvm-controller stopped");
    metrics?;
    probes?;
    csi?;
    leading?;
    webhook?;
    Ok(())
}

/// The leader-only work.
#[derive(Clone)]
struct Reconcilers {
    client: kube::Client,
    metrics: Metrics,
    skip_node_finalize: bool,
    stray: stray::StrayOptions,
}

impl Reconcilers {
    /// Runs the node clean-up, the claim reconciler and the stray scan until `stop`; the leader
    /// gauge is 1 meanwhile.
    async fn run(self, stop: CancellationToken) {
        self.metrics.leader.set(1);
        let nodes = node_cleanup::run(
            Arc::new(node_cleanup::Context {
                client: self.client.clone(),
                skip_node_finalize: self.skip_node_finalize,
                metrics: self.metrics.clone(),
            }),
            stop.clone(),
        );
        let claims = pvc::run(
            Arc::new(pvc::Context {
                client: self.client.clone(),
                metrics: self.metrics.clone(),
            }),
            stop.clone(),
        );
        let strays = stray::run(self.client.clone(), self.stray, self.metrics.clone(), stop);
        tokio::join!(nodes, claims, strays);
        self.metrics.leader.set(0);
    }
}

/// `--cert-dir`, or controller-runtime's default when empty.
fn webhook_cert_dir(flag: &str) -> PathBuf {
    if flag.is_empty() {
        PathBuf::from(DEFAULT_CERT_DIR)
    } else {
        PathBuf::from(flag)
    }
}

/// The webhook's TLS acceptor on `tls.crt` and `tls.key` of `dir` (re-read when they change).
/// While they cannot be loaded (a Secret not mounted yet), it logs and tries again, and the
/// webhook's readiness stays false. `None` on shutdown.
async fn webhook_tls(dir: &std::path::Path, shutdown: &CancellationToken) -> Option<TlsAcceptor> {
    let files = TlsFiles {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
    };
    let mut logged = false;
    loop {
        match topolvm_runtime::tls::acceptor(&files) {
            Ok(acceptor) => return Some(acceptor),
            Err(e) if !logged => {
                error!(error = %e, dir = %dir.display(), "cannot load the webhook's certificate; retrying (the webhook is not ready)");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}
