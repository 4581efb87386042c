//! Labels LogicalVolumes made without our node label (by TopoLVM's controller, or by ours
//! during a rolling switch from TopoLVM) so the reconciler's label-selected watch sees them.
//!
//! A watch on `!topolvm.io/node` rather than a one-time list: objects keep arriving without
//! the label as long as an old controller runs, and a list at start-up would miss those made
//! later. No store is kept: each object is looked at once and, when it belongs here, labelled,
//! after which it leaves this watch and enters the reconciler's. The traffic is the unlabelled
//! objects only, which are few once every node runs topolvm-rs (TopoLVM's own node watches
//! every object of the cluster).

use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use tracing::{info, warn};

const LABEL_ATTEMPTS: u32 = 5;

/// The selector of objects that still lack the node label.
pub fn unlabelled() -> watcher::Config {
    watcher::Config::default().labels(&format!("!{}", names::LOGICAL_VOLUME_NODE_LABEL))
}

/// Watches unlabelled LogicalVolumes until `shutdown`, labelling those of `node_name`.
pub async fn run(api: Api<LogicalVolume>, node_name: String, shutdown: CancellationToken) {
    let Some(label) = names::node_label_value(&node_name).map(str::to_owned) else {
        // The reconciler watches every object for such a node; there is nothing to label.
        return;
    };
    let stream = watcher(api.clone(), unlabelled())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(lv)) if lv.spec.node_name == node_name => {
                label_object(&api, &lv, &label).await;
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                warn!(%error, "watching unlabelled LogicalVolumes");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => return,
        }
    }
}

async fn label_object(api: &Api<LogicalVolume>, lv: &LogicalVolume, label: &str) {
    let name = lv.name_any();
    let patch = json!({ "metadata": { "labels": { names::LOGICAL_VOLUME_NODE_LABEL: label } } });
    // The watch shows the object again only when it changes, so a failed patch is retried
    // here; a 404 means it is gone and needs no label.
    for attempt in 1..=LABEL_ATTEMPTS {
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(logicalvolume = %name, "labelled a LogicalVolume of this node");
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(error) => {
                warn!(logicalvolume = %name, %error, attempt, "labelling a LogicalVolume");
                tokio::time::sleep(Duration::from_secs(attempt.into())).await;
            }
        }
    }
}
