//! Live capacity: every message of lvmd's Watch stream becomes the Node's capacity annotations
//! (`capacity.topolvm.io/<class>` and `capacity.topolvm.io/00default`) and the `topolvm.io/node`
//! finalizer, within one API request of the change. lvmd sends a message for its own mutations
//! and for changes made behind its back (a `vgextend`, an admin's `lvcreate`), so the Node follows
//! the volume group in about a second; TopoLVM's node refreshes only on its own operations and
//! every 10 minutes (its issues 399 and 873). Annotations of device classes lvmd no longer
//! reports are removed (TopoLVM issue 293).
//!
//! When lvmd goes away the stream is opened again with backoff, readiness reports false
//! meanwhile, and the first message of the new stream (lvmd's current state) is published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use topolvm_core::capacity_annotation::node_capacity_patch;
use topolvm_core::names::NODE_FINALIZER;
use topolvm_proto::lvmd as pb;
use topolvm_runtime::endpoints::Readiness;
use tracing::{debug, info, warn};

use crate::lvmd_client::{LvmdConnection, ReportSender};

/// The first and the longest wait before opening lvmd's Watch stream again.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a patch that lost a race with another writer of the Node is tried again.
const CONFLICT_RETRIES: usize = 5;

/// Why one Watch stream ended.
#[derive(Debug, Error)]
pub enum CapacityError {
    #[error("lvmd's Watch stream: {0}")]
    Watch(#[from] tonic::Status),
    #[error("lvmd closed the Watch stream")]
    StreamEnded,
    #[error("node {node}: {source}")]
    Node { node: String, source: kube::Error },
}

/// Publishes lvmd's capacity on one Node.
#[derive(Debug, Clone)]
pub struct NodeCapacity {
    nodes: Api<Node>,
    node_name: String,
}

impl NodeCapacity {
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Self {
            nodes: Api::all(client),
            node_name: node_name.into(),
        }
    }

    fn node_error(&self, source: kube::Error) -> CapacityError {
        CapacityError::Node {
            node: self.node_name.clone(),
            source,
        }
    }

    /// Brings the Node's capacity annotations and finalizer in line with `watch`. Sends nothing
    /// when they already are. A Node being deleted is left alone: topolvm-controller's cleanup
    /// removes the finalizer, and adding it back would block the deletion.
    pub async fn publish(&self, watch: &pb::WatchResponse) -> Result<(), CapacityError> {
        for _ in 0..CONFLICT_RETRIES {
            let node = self
                .nodes
                .get_metadata(&self.node_name)
                .await
                .map_err(|e| self.node_error(e))?;
            let meta = node.metadata;
            if meta.deletion_timestamp.is_some() {
                debug!(node = %self.node_name, "the node is being deleted; its capacity is left as it is");
                return Ok(());
            }
            let current: BTreeMap<String, String> = meta.annotations.unwrap_or_default();
            let change = node_capacity_patch(watch, None, &current);
            let mut finalizers = meta.finalizers.unwrap_or_default();
            let add_finalizer = !finalizers.iter().any(|f| f == NODE_FINALIZER);
            if change.is_empty() && !add_finalizer {
                return Ok(());
            }
            let mut body = change.to_merge_patch();
            // The resource version makes the patch fail with a conflict instead of overwriting
            // a finalizer list someone changed since the read.
            body["metadata"]["resourceVersion"] = serde_json::json!(meta.resource_version);
            if add_finalizer {
                finalizers.push(NODE_FINALIZER.to_owned());
                body["metadata"]["finalizers"] = serde_json::json!(finalizers);
            }
            match self
                .nodes
                .patch_metadata(
                    &self.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&body),
                )
                .await
            {
                Ok(_) => {
                    debug!(node = %self.node_name, set = ?change.set, removed = ?change.remove, "capacity annotations updated");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(self.node_error(e)),
            }
        }
        Err(self.node_error(kube::Error::Api(
            kube::core::Status::failure(
                "the node kept changing under the capacity patch",
                "Conflict",
            )
            .with_code(409)
            .boxed(),
        )))
    }
}

/// Follows lvmd's Watch stream until `shutdown`, publishing every message on the Node; opens the
/// stream again with backoff whenever it ends or a publish fails. `readiness` is true while a
/// stream is open and its last message was published. Every message is also handed to
/// `latest` for the other parts of topolvm-node.
pub async fn run(
    publisher: NodeCapacity,
    lvmd: LvmdConnection,
    latest: ReportSender,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = follow(&publisher, &lvmd, &latest, &readiness, &mut backoff) => outcome,
        };
        readiness.set_ready(false);
        warn!(error = %outcome, retry_in = ?backoff, "capacity updates interrupted");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One Watch stream, until it fails.
async fn follow(
    publisher: &NodeCapacity,
    lvmd: &LvmdConnection,
    latest: &ReportSender,
    readiness: &Readiness,
    backoff: &mut Duration,
) -> CapacityError {
    let mut stream = match lvmd.vg().watch(pb::Empty {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return CapacityError::StreamEnded,
            Err(status) => return status.into(),
        };
        let message = Arc::new(message);
        latest.send_replace(Some(message.clone()));
        if let Err(e) = publisher.publish(&message).await {
            return e;
        }
        if !readiness.is_ready() {
            info!(node = %publisher.node_name, "publishing lvmd's capacity on the node");
        }
        readiness.set_ready(true);
        *backoff = BACKOFF_START;
    }
}
