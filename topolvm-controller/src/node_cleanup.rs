//! Clean-up after a deleted Node (TopoLVM's `internal/controller/node_controller.go` @
//! 44099e062507). topolvm-node puts the finalizer `topolvm.io/node` on its Node; when that Node is
//! deleted, this reconciler deletes the claims of our StorageClasses that were placed on it
//! (annotation `volume.kubernetes.io/selected-node`) so their pods can be placed elsewhere, and its
//! LogicalVolumes, then removes the finalizer. It needs nothing from the node: a machine that is
//! gone for good is cleaned up all the same (TopoLVM issue 868). LVM LVs on the node's disks are
//! never touched.
//!
//! A LogicalVolume still carrying topolvm-node's finalizer gets `topolvm.io/pendingdeletion=true`
//! and loses that finalizer in one patch (so a topolvm-node that is still running does not put
//! the finalizer back before it sees the deletion), then is deleted.
//!
//! Only Node metadata is watched. The node's LogicalVolumes are found by their label
//! `topolvm.io/node=<node>` plus the unlabelled ones (made by TopoLVM's controller before
//! topolvm-node labelled them) whose `spec.nodeName` is the node; Kubernetes 1.20 has no field
//! selectors for custom resources.
//!
//! With `--skip-node-finalize` the finalizer is removed without any clean-up, as in TopoLVM.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names::{
    LOGICAL_VOLUME_FINALIZER, LOGICAL_VOLUME_NODE_LABEL, NODE_FINALIZER,
    PENDING_DELETION_ANNOTATION, PENDING_DELETION_VALUE, PLUGIN_NAME, SELECTED_NODE_ANNOTATION,
    node_label_value,
};
use topolvm_runtime::kubernetes::Error;
use tracing::{info, warn};

use crate::metrics::{self, Metrics};

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub skip_node_finalize: bool,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("skip_node_finalize", &self.skip_node_finalize)
            .finish()
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Reconciles one Node: nothing unless it is being deleted and carries our finalizer.
pub async fn reconcile(
    node: Arc<PartialObjectMeta<Node>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = node.name_any();
    let finalizers = node.finalizers().to_vec();
    if node.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == NODE_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    if ctx.skip_node_finalize {
        info!(node = %name, "--skip-node-finalize: releasing the deleted node without clean-up");
    } else {
        clean_up(&ctx.client, &name).await?;
    }
    // The test makes the removal fail if someone changed the list meanwhile; the next event
    // then brings the new list.
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != NODE_FINALIZER).collect();
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
        {"op": "replace", "path": "/metadata/finalizers", "value": rest},
    ]))
    .map_err(|source| Error::Serialization {
        what: "node finalizer patch",
        source,
    })?;
    match Api::<Node>::all(ctx.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => info!(node = %name, "node finalizer removed"),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Deletes the node's claims of our StorageClasses and its LogicalVolumes.
async fn clean_up(client: &kube::Client, node: &str) -> Result<(), Error> {
    let ours: BTreeSet<String> = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|class| class.provisioner == PLUGIN_NAME)
        .map(|class| class.name_any())
        .collect();
    let claims = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    for claim in claims.items {
        let selected = claim.annotations().get(SELECTED_NODE_ANNOTATION);
        let class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_ref());
        if selected.map(String::as_str) != Some(node)
            || !class.is_some_and(|c| ours.contains(c))
            || claim.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let namespace = claim.namespace().unwrap_or_default();
        let name = claim.name_any();
        match Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => info!(%node, %namespace, claim = %name, "deleted the claim of a deleted node"),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let api = Api::<LogicalVolume>::all(client.clone());
    for volume in node_logical_volumes(&api, node).await? {
        let name = volume.name_any();
        if volume
            .finalizers()
            .iter()
            .any(|f| f == LOGICAL_VOLUME_FINALIZER)
        {
            let rest: Vec<&String> = volume
                .finalizers()
                .iter()
                .filter(|f| *f != LOGICAL_VOLUME_FINALIZER)
                .collect();
            // A merge patch replaces the whole list; the resourceVersion makes it fail rather
            // than drop a finalizer someone added since the list.
            let patch = json!({"metadata": {
                "resourceVersion": volume.resource_version(),
                "annotations": {PENDING_DELETION_ANNOTATION: PENDING_DELETION_VALUE},
                "finalizers": rest,
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(%node, logical_volume = %name, "deleted the LogicalVolume of a deleted node")
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The LogicalVolumes whose `spec.nodeName` is `node`: labelled ones by label selector, plus
/// the unlabelled ones (or all, for a node name too long to be a label value).
pub async fn node_logical_volumes(
    api: &Api<LogicalVolume>,
    node: &str,
) -> Result<Vec<LogicalVolume>, kube::Error> {
    let mut found = Vec::new();
    match node_label_value(node) {
        Some(value) => {
            let labelled =
                ListParams::default().labels(&format!("{LOGICAL_VOLUME_NODE_LABEL}={value}"));
            found.extend(api.list(&labelled).await?.items);
            let unlabelled = ListParams::default().labels(&format!("!{LOGICAL_VOLUME_NODE_LABEL}"));
            found.extend(api.list(&unlabelled).await?.items);
        }
        None => found.extend(api.list(&ListParams::default()).await?.items),
    }
    // The label is a hint; the spec says where the volume is.
    found.retain(|volume| volume.spec.node_name == node);
    Ok(found)
}

fn error_policy(node: Arc<PartialObjectMeta<Node>>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(node = %node.name_any(), %error, "node clean-up failed; retrying");
    ctx.metrics
        .reconciled(metrics::NODE, Some(error.metric_label()));
    Action::requeue(Duration::from_secs(5))
}

/// Runs the reconciler until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let nodes = Api::<PartialObjectMeta<Node>>::all(ctx.client.clone());
    info!(
        skip_node_finalize = ctx.skip_node_finalize,
        "node clean-up started"
    );
    Controller::new(nodes, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            |node, ctx: Arc<Context>| async move {
                let result = reconcile(node, ctx.clone()).await;
                if result.is_ok() {
                    ctx.metrics.reconciled(metrics::NODE, None);
                }
                result
            },
            error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("node clean-up stopped");
}

#[cfg(test)]
mod tests;
