//! topolvm-scheduler: the kube-scheduler extender of topolvm-rs, compatible with TopoLVM's.
//!
//! kube-scheduler calls it for pods that request `topolvm.io/capacity`: `POST /predicate` drops
//! nodes whose volume groups cannot hold the pod's volumes, `POST /prioritize` prefers nodes with
//! more free space. Capacities come from annotations (`capacity.topolvm.io/<device-class>`) that
//! topolvm-node writes on Nodes and the pod webhook writes on Pods.
//!
//! Layers, each with its own error type:
//! - [`config`]: the configuration file;
//! - [`wire`]: kube-scheduler's JSON, read and written as its Go code does;
//! - [`decision`]: TopoLVM's filter and score rules for one node;
//! - [`accounting`] and [`cluster`]: capacity promised to pods whose volumes do not exist yet
//!   (with `--watch-cluster`);
//! - [`extender`]: the two verbs over a request body;
//! - [`http`]: routes, errors as responses, request metrics (served by
//!   [`topolvm_runtime::http`], which does TLS and shutdown).
#![forbid(unsafe_code)]

pub mod accounting;
pub mod cluster;
pub mod config;
pub mod decision;
pub mod extender;
pub mod http;
pub mod metrics;
pub mod wire;

use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use crate::config::Config;
pub use crate::http::{AppState, app};

/// Why the extender stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] topolvm_runtime::http::BindError),
    #[error(transparent)]
    Tls(#[from] topolvm_runtime::tls::TlsError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the application state; with `cluster`, the extender accounts for promised capacity.
pub fn state(
    config: &Config,
    metrics: Arc<metrics::Metrics>,
    cluster: Option<Arc<cluster::ClusterState>>,
) -> AppState {
    AppState {
        extender: Arc::new(extender::Extender::new(
            config.scoring.clone(),
            cluster,
            metrics.clone(),
        )),
        metrics,
        max_request_bytes: config.max_request_bytes,
    }
}

/// Runs the extender until `shutdown`; with a Kubernetes `client` it also watches the cluster.
pub async fn run(
    config: Config,
    client: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(metrics::Metrics::new()?);
    let tls = config
        .tls
        .as_ref()
        .map(topolvm_runtime::tls::acceptor)
        .transpose()?;
    let listener = topolvm_runtime::http::bind(&config.listen).await?;

    let background = TaskTracker::new();
    let cluster = client.map(|client| {
        let (cluster, node_writer) =
            cluster::ClusterState::new(config.reservation_ttl, metrics.clone());
        background.spawn(cluster::watch(
            client,
            cluster.clone(),
            node_writer,
            shutdown.clone(),
        ));
        cluster
    });
    match &cluster {
        Some(_) => info!(
            reservation_ttl = ?config.reservation_ttl,
            "watching pods, claims and nodes: capacity promised to placed pods counts"
        ),
        None => info!("no cluster watch: deciding from node annotations alone, as TopoLVM does"),
    }

    let app = app(state(&config, metrics, cluster));
    info!(listen = %config.listen, "serving the scheduler extender");
    let served = topolvm_runtime::http::serve(listener, tls, app, shutdown.clone()).await;
    shutdown.cancel();
    background.close();
    background.wait().await;
    info!("topolvm-scheduler stopped");
    served.map_err(RunError::from)
}
