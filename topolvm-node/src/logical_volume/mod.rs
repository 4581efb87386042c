//! The LogicalVolume reconciler: makes, grows and removes the LVs of this node's LogicalVolume
//! objects through lvmd, as TopoLVM's topolvm-node does
//! (`internal/controller/logicalvolume_controller.go` @ 110864718b8f), plus [`orphans`], the scan
//! for LVs whose object is gone.
//!
//! Differences from TopoLVM, on purpose:
//! - Only this node's objects are watched (label `topolvm.io/node=<node>`); TopoLVM's node
//!   caches every LogicalVolume of the cluster. Objects made without the label (by TopoLVM's
//!   controller, or ours before a rolling switch finished) are labelled by [`backfill`].
//! - A device class this node does not have is `RESOURCE_EXHAUSTED`, so the provisioner picks
//!   another node (TopoLVM records `Internal` and the pod is stuck: issue 909).
//! - A bad `spec.source` or `accessType` is recorded in `status.code`, so the controller does
//!   not wait for nothing until the provisioner times out.
//! - No GetLVList before CreateLV: our lvmd's CreateLV is idempotent by name and size and
//!   adopts TopoLVM's untagged LV of the same name, so a retry after a crash anywhere finds the
//!   LV that was made.
//! - An object that already has its volume (`status.volumeID`, as TopoLVM left it before the
//!   switch) has its untagged LV adopted before any resize or removal, which lvmd refuses for an
//!   LV without its tags; one GetLVList per device class serves every object of it.

pub mod backfill;
pub mod orphans;
mod reconcile;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_runtime::kubernetes;
use tracing::{info, warn};

pub use reconcile::{Context, reconcile};
use volumes::Volumes;

/// Why reconciling one LogicalVolume failed; the controller retries it with backoff. Its
/// Kubernetes-side failures are runtime's [`kubernetes::Error`], labelled in its vocabulary;
/// lvmd's and the reconciler's own are added here.
#[derive(Debug, Error)]
pub enum Error {
    #[error("LogicalVolume {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kubernetes::Error,
    },
    /// An object the API server would not send (no uid).
    #[error(transparent)]
    Object(kubernetes::Error),
    #[error("LogicalVolume {name}: lvmd {operation}: {status}")]
    Lvmd {
        name: String,
        operation: &'static str,
        status: tonic::Status,
    },
    /// Recorded in `status.code`; returned so the retry is logged and counted.
    #[error("LogicalVolume {name}: {message}")]
    Refused { name: String, message: String },
    #[error("LogicalVolume {name}: source {source_name} has no volume yet")]
    SourceNotReady { name: String, source_name: String },
    #[error("finalizer topolvm.io/logicalvolume: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// An object without `field`.
    pub fn incomplete(lv: &LogicalVolume, field: &str) -> Self {
        Self::Object(kubernetes::Error::InvalidObject {
            kind: "LogicalVolume",
            name: lv.name_any(),
            reason: format!("no {field}"),
        })
    }

    /// The value of the `error` label of `topolvm_node_logicalvolume_reconcile_errors_total`:
    /// runtime's labels for Kubernetes-side failures, and `lvmd`, `refused`,
    /// `source_not_ready`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } | Error::Object(source) => source.metric_label(),
            Error::Lvmd { .. } => "lvmd",
            Error::Refused { .. } => "refused",
            Error::SourceNotReady { .. } => "source_not_ready",
            Error::Finalizer(inner) => {
                kubernetes::finalizer_metric_label(inner.as_ref(), Error::metric_label)
            }
        }
    }
}

/// The reconciler's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "topolvm_node_logicalvolume_reconciles_total",
                "LogicalVolume reconciliations by result (ok or error).",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "topolvm_node_logicalvolume_reconcile_errors_total",
                "Failed LogicalVolume reconciliations by kind of error.",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "topolvm_node_logicalvolume_reconcile_duration_seconds",
                "How long one LogicalVolume reconciliation took.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            reconciles,
            errors,
            duration,
        })
    }

    fn record(&self, result: &Result<Action, Error>, seconds: f64) {
        self.duration.observe(seconds);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.reconciles.with_label_values(&[outcome]).inc();
    }

    fn record_error(&self, error: &Error) {
        self.errors.with_label_values(&[error.metric_label()]).inc();
    }
}

/// The watcher configuration that selects this node's objects: by label, or (for a node name
/// too long for a label value) all objects, which `reconcile` then filters by `spec.nodeName`.
pub fn own_objects(node_name: &str) -> watcher::Config {
    match names::node_label_value(node_name) {
        Some(value) => watcher::Config::default()
            .labels(&format!("{}={value}", names::LOGICAL_VOLUME_NODE_LABEL)),
        None => watcher::Config::default(),
    }
}

/// Runs the reconciler and the backfill of unlabelled objects until `shutdown`.
pub async fn run<V: Volumes>(context: Arc<Context<V>>, shutdown: CancellationToken) {
    let api: Api<LogicalVolume> = Api::all(context.client.clone());
    let node = context.node_name.clone();
    if names::node_label_value(&node).is_none() {
        warn!(%node, "the node name cannot be a label value: watching every LogicalVolume of the cluster");
    }
    let backfill_stop = shutdown.child_token();
    let backfill = tokio::spawn(backfill::run(
        api.clone(),
        node.clone(),
        backfill_stop.clone(),
    ));
    info!(%node, "LogicalVolume reconciler started");
    Controller::new(api, own_objects(&node))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::reconcile_timed, reconcile::error_policy, context)
        .for_each(|_| futures::future::ready(()))
        .await;
    backfill_stop.cancel();
    let _ = backfill.await;
    info!(%node, "LogicalVolume reconciler stopped");
}

/// Retry delay after `failures` failures in a row: 1 s doubling to 5 min.
fn backoff(failures: u32) -> Duration {
    let seconds = 1u64 << failures.min(9);
    Duration::from_secs(seconds.min(300))
}

#[cfg(test)]
mod tests;
