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
//!
//! The Node's own metadata is watched too, so that a Node object that comes back after it was
//! deleted (kubelet registers it again), or that someone stripped of the finalizer or of an
//! annotation, gets them again at once, although lvmd sends nothing while the volume group does
//! not change. A Node being deleted is never written to, and a missing Node is not an error:
//! there is nothing to publish on until it exists again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use topolvm_core::capacity_annotation::node_capacity_patch;
use topolvm_core::names::NODE_FINALIZER;
use topolvm_proto::lvmd as pb;
use topolvm_runtime::endpoints::Readiness;
use tracing::{debug, info, warn};

use crate::lvmd_client::{LvmdConnection, ReportSender};
use crate::metrics::CapacityHealth;

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
    /// when they already are, when the Node is being deleted (topolvm-controller's cleanup
    /// removes the finalizer, and adding it back would block the deletion) or when there is no
    /// Node object (the Node watch brings it back when it is created again).
    pub async fn publish(&self, watch: &pb::WatchResponse) -> Result<(), CapacityError> {
        for _ in 0..CONFLICT_RETRIES {
            let Some(node) = self
                .nodes
                .get_metadata_opt(&self.node_name)
                .await
                .map_err(|e| self.node_error(e))?
            else {
                info!(node = %self.node_name, "no Node object; capacity is published when it exists again");
                return Ok(());
            };
            let Some(body) = node_patch(&node.metadata, watch) else {
                return Ok(());
            };
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
                    debug!(node = %self.node_name, patch = %body, "capacity annotations updated");
                    return Ok(());
                }
                // A changed Node (409) is read again; so is one deleted since the read (404),
                // which the next round then finds missing.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                    continue;
                }
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

    /// Every version of this Node's metadata as the API server announces it (a metadata-only
    /// watch of the one object), retried with backoff when the watch fails.
    fn node_changes(&self) -> BoxStream<'static, PartialObjectMeta<Node>> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let node = self.node_name.clone();
        let metadata: Api<PartialObjectMeta<Node>> = Api::all(self.nodes.clone().into_client());
        watcher(metadata, config)
            .default_backoff()
            .applied_objects()
            .filter_map(move |result| {
                let node = node.clone();
                async move {
                    result
                        .inspect_err(|error| debug!(%node, %error, "watching the node"))
                        .ok()
                }
            })
            .boxed()
    }
}

/// The merge patch that brings a Node with metadata `meta` in line with `watch` (capacity
/// annotations, our finalizer), guarded by its resourceVersion; `None` when nothing is to be
/// changed or the Node is being deleted.
pub fn node_patch(meta: &ObjectMeta, watch: &pb::WatchResponse) -> Option<serde_json::Value> {
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let current = meta.annotations.clone().unwrap_or_default();
    let change = node_capacity_patch(watch, None, &current);
    let mut finalizers = meta.finalizers.clone().unwrap_or_default();
    let add_finalizer = !finalizers.iter().any(|f| f == NODE_FINALIZER);
    if change.is_empty() && !add_finalizer {
        return None;
    }
    let mut body = change.to_merge_patch();
    // The resource version makes the patch fail with a conflict instead of overwriting a
    // finalizer list someone changed since the read, or writing to a Node whose deletion began
    // since.
    body["metadata"]["resourceVersion"] = serde_json::json!(meta.resource_version);
    if add_finalizer {
        finalizers.push(NODE_FINALIZER.to_owned());
        body["metadata"]["finalizers"] = serde_json::json!(finalizers);
    }
    Some(body)
}

/// Follows lvmd's Watch stream until `shutdown`, publishing every message on the Node; opens the
/// stream again with backoff whenever it ends or a publish fails. `readiness` is true while a
/// stream is open and its last message was published, and so is `health`'s synced state;
/// `health` also says whether lvmd answers. Every message is also handed to
/// `latest` for the other parts of topolvm-node. A change of the Node that leaves it out of
/// line with the latest message (created again, finalizer or annotation removed) publishes
/// that message again.
pub async fn run(
    publisher: NodeCapacity,
    lvmd: LvmdConnection,
    latest: ReportSender,
    readiness: Readiness,
    health: CapacityHealth,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    let mut node_changes = publisher.node_changes();
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = follow(&publisher, &lvmd, &latest, &readiness, &health, &mut backoff, &mut node_changes) => outcome,
        };
        readiness.set_ready(false);
        health.set_capacity_synced(false);
        // A Node that cannot be written says nothing about lvmd.
        if !matches!(outcome, CapacityError::Node { .. }) {
            health.set_lvmd_reachable(false);
        }
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
    health: &CapacityHealth,
    backoff: &mut Duration,
    node_changes: &mut BoxStream<'static, PartialObjectMeta<Node>>,
) -> CapacityError {
    let mut stream = match lvmd.vg().watch(pb::Empty {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    loop {
        let received = tokio::select! {
            received = stream.message() => received,
            Some(node) = node_changes.next() => {
                // The message last published, if the Node has drifted from it.
                let report = latest.borrow().clone();
                let Some(report) = report.filter(|r| node_patch(&node.metadata, r).is_some()) else {
                    continue;
                };
                debug!(node = %publisher.node_name, "the node changed; publishing the capacity again");
                if let Err(e) = publisher.publish(&report).await {
                    return e;
                }
                continue;
            }
        };
        let message = match received {
            Ok(Some(message)) => message,
            Ok(None) => return CapacityError::StreamEnded,
            Err(status) => return status.into(),
        };
        health.set_lvmd_reachable(true);
        let message = Arc::new(message);
        latest.send_replace(Some(message.clone()));
        if let Err(e) = publisher.publish(&message).await {
            return e;
        }
        if !readiness.is_ready() {
            info!(node = %publisher.node_name, "publishing lvmd's capacity on the node");
        }
        readiness.set_ready(true);
        health.set_capacity_synced(true);
        *backoff = BACKOFF_START;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    /// lvmd's report of one thick default class `ssd` with 1000 bytes free.
    fn report() -> pb::WatchResponse {
        pb::WatchResponse {
            free_bytes: 1000,
            items: vec![pb::WatchItem {
                free_bytes: 1000,
                device_class: "ssd".into(),
                size_bytes: 4000,
                thin_pool: None,
            }],
        }
    }

    /// A Node as kubelet registers it: someone else's finalizer and annotation, none of ours.
    fn registered() -> ObjectMeta {
        ObjectMeta {
            name: Some("node-a".into()),
            resource_version: Some("42".into()),
            annotations: Some([("example.com/keep".to_owned(), "me".to_owned())].into()),
            finalizers: Some(vec!["example.com/other".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn a_registered_node_gets_the_finalizer_and_capacity_guarded_by_its_version() {
        let body = node_patch(&registered(), &report()).expect("a patch");
        assert_eq!(
            body,
            json!({"metadata": {
                "resourceVersion": "42",
                "finalizers": ["example.com/other", "topolvm.io/node"],
                "annotations": {
                    "capacity.topolvm.io/00default": "1000",
                    "capacity.topolvm.io/ssd": "1000",
                },
            }})
        );
    }

    #[test]
    fn a_node_in_line_with_the_report_is_left_alone() {
        let mut meta = registered();
        meta.finalizers = Some(vec!["example.com/other".into(), NODE_FINALIZER.into()]);
        meta.annotations = Some(
            [
                ("example.com/keep", "me"),
                ("capacity.topolvm.io/00default", "1000"),
                ("capacity.topolvm.io/ssd", "1000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        assert_eq!(node_patch(&meta, &report()), None);
        // Only the finalizer missing (someone removed it): it comes back, nothing else changes.
        meta.finalizers = None;
        assert_eq!(
            node_patch(&meta, &report()),
            Some(json!({"metadata": {
                "resourceVersion": "42",
                "finalizers": [NODE_FINALIZER],
                "annotations": {},
            }}))
        );
    }

    #[test]
    fn a_node_being_deleted_is_never_written() {
        let mut meta = registered();
        meta.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(node_patch(&meta, &report()), None);
        // Also when it still has the finalizer and stale capacity.
        meta.finalizers = Some(vec![NODE_FINALIZER.into()]);
        assert_eq!(node_patch(&meta, &report()), None);
    }
}
