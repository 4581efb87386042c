//! The PersistentVolumeClaim reconciler (as TopoLVM's
//! `internal/controller/persistentvolumeclaim_controller.go` @ 47b68a852534):
//! - removes the finalizers `topolvm.io/pvc` and `topolvm.cybozu.com/pvc` that TopoLVM's PVC
//!   webhook added before v0.40 (nothing adds them any more; a claim keeping one could never
//!   be deleted; see TopoLVM issue 1157 for the stale webhook configuration, which the README
//!   tells how to remove);
//! - nudges kubelet to grow a filesystem: when a claim of our StorageClass has the condition
//!   `FileSystemResizePending=True`, every pod using it gets the annotation
//!   `topolvm.io/last-resizefs-requested-at` (RFC 3339 with nanoseconds), unless it already has
//!   one later than the condition's transition. The change makes kubelet resync the pod and call
//!   NodeExpandVolume sooner.
//!
//! Unlike TopoLVM, pods using the claim through a generic ephemeral volume are nudged too
//! (TopoLVM matches only `persistentVolumeClaim.claimName`), and the pods are patched
//! (merge patch of one annotation) rather than updated whole, so a concurrent change to the pod
//! cannot make the nudge fail or be lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use topolvm_core::names::{
    FILESYSTEM_RESIZE_PENDING_CONDITION, LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION,
    LEGACY_PVC_FINALIZERS, PLUGIN_NAME,
};
use topolvm_core::timestamp::{format_rfc3339_nano, parse_rfc3339_nano};
use topolvm_runtime::kubernetes::Error;
use tracing::{info, warn};

use crate::metrics::{self, Metrics};

/// What the reconciler needs.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pvc::Context")
    }
}

/// The JSON patch that drops the legacy finalizers, `None` when the claim has none. The test
/// operation makes it fail rather than drop a finalizer added meanwhile.
pub fn legacy_finalizer_patch(claim: &PersistentVolumeClaim) -> Option<Value> {
    let finalizers = claim.finalizers();
    let rest: Vec<&String> = finalizers
        .iter()
        .filter(|f| !LEGACY_PVC_FINALIZERS.contains(&f.as_str()))
        .collect();
    (rest.len() != finalizers.len()).then(|| {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ])
    })
}

/// When the claim's filesystem resize became pending, `None` unless the condition
/// `FileSystemResizePending` is `True`. A condition without a transition time counts as
/// pending since the epoch (any nudge is then recent enough, as in TopoLVM).
pub fn resize_pending_since(claim: &PersistentVolumeClaim) -> Option<Timestamp> {
    claim
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == FILESYSTEM_RESIZE_PENDING_CONDITION && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        })
}

/// Whether `pod` mounts the claim `claim_name`: directly, or as the claim Kubernetes makes for
/// its generic ephemeral volume (`<pod>-<volume>`).
pub fn pod_uses_claim(pod: &Pod, claim_name: &str) -> bool {
    let pod_name = pod.name_any();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|volumes| {
            volumes.iter().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim_name)
                    || (v.ephemeral.is_some() && format!("{pod_name}-{}", v.name) == claim_name)
            })
        })
}

/// Whether `pod` needs a (new) nudge: its annotation is absent, unreadable, or not later than
/// the moment the resize became pending.
pub fn needs_nudge(pod: &Pod, pending_since: Timestamp) -> bool {
    match pod
        .annotations()
        .get(LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION)
        .map(|v| parse_rfc3339_nano(v))
    {
        Some(Ok(requested)) => requested <= pending_since,
        _ => true,
    }
}

/// Reconciles one claim.
pub async fn reconcile(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace);
    if let Some(patch) = legacy_finalizer_patch(&claim) {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|source| Error::Serialization {
                what: "claim finalizer patch",
                source,
            })?;
        claims
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        info!(%namespace, claim = %name, "legacy TopoLVM finalizer removed");
        // The update brings the claim back for the rest.
        return Ok(Action::await_change());
    }
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(pending_since) = resize_pending_since(&claim) else {
        return Ok(Action::await_change());
    };
    let Some(class_name) = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
    else {
        return Ok(Action::await_change());
    };
    let class = Api::<StorageClass>::all(ctx.client.clone())
        .get_opt(class_name)
        .await?;
    if class.is_none_or(|c| c.provisioner != PLUGIN_NAME) {
        return Ok(Action::await_change());
    }
    // From the API server: a pod created moments ago must not be missed.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace);
    let now = format_rfc3339_nano(Timestamp::now());
    for pod in pods.list(&ListParams::default()).await?.items {
        if !pod_uses_claim(&pod, &name) || !needs_nudge(&pod, pending_since) {
            continue;
        }
        let patch =
            json!({"metadata": {"annotations": {LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION: now}}});
        pods.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        info!(%namespace, claim = %name, pod = %pod.name_any(), "asked kubelet to resize the filesystem");
    }
    Ok(Action::await_change())
}

fn error_policy(claim: Arc<PersistentVolumeClaim>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(claim = %claim.name_any(), %error, "claim reconcile failed; retrying");
    ctx.metrics
        .reconciled(metrics::PVC, Some(error.metric_label()));
    Action::requeue(Duration::from_secs(5))
}

/// Runs the reconciler until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let claims = Api::<PersistentVolumeClaim>::all(ctx.client.clone());
    info!("claim reconciler started");
    Controller::new(claims, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            |claim, ctx: Arc<Context>| async move {
                let result = reconcile(claim, ctx.clone()).await;
                if result.is_ok() {
                    ctx.metrics.reconciled(metrics::PVC, None);
                }
                result
            },
            error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("claim reconciler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(value: Value) -> PersistentVolumeClaim {
        serde_json::from_value(value).expect("a claim")
    }

    fn pod(name: &str, volumes: Value, annotation: Option<&str>) -> Pod {
        let mut pod = json!({"metadata": {"name": name, "namespace": "app"},
                             "spec": {"containers": [{"name": "c"}], "volumes": volumes}});
        if let Some(at) = annotation {
            pod["metadata"]["annotations"] = json!({"topolvm.io/last-resizefs-requested-at": at});
        }
        serde_json::from_value(pod).expect("a pod")
    }

    #[test]
    fn both_legacy_finalizers_go_and_others_stay() {
        let c = claim(json!({"metadata": {"name": "data", "finalizers": [
            "kubernetes.io/pvc-protection", "topolvm.io/pvc", "topolvm.cybozu.com/pvc"]}}));
        assert_eq!(
            legacy_finalizer_patch(&c),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers",
                 "value": ["kubernetes.io/pvc-protection", "topolvm.io/pvc", "topolvm.cybozu.com/pvc"]},
                {"op": "replace", "path": "/metadata/finalizers",
                 "value": ["kubernetes.io/pvc-protection"]},
            ]))
        );
        let clean = claim(json!({"metadata": {"name": "data",
            "finalizers": ["kubernetes.io/pvc-protection"]}}));
        assert_eq!(legacy_finalizer_patch(&clean), None);
    }

    /// The condition as kubelet's resize controller sets it (k8s.io/api core/v1
    /// PersistentVolumeClaimConditionType `FileSystemResizePending`).
    #[test]
    fn only_a_true_resize_pending_condition_counts() {
        let with = |status: &str| {
            claim(json!({"metadata": {"name": "d"}, "status": {"conditions": [
                {"type": "FileSystemResizePending", "status": status,
                 "lastTransitionTime": "2026-11-30T09:00:00Z"}]}}))
        };
        assert_eq!(
            resize_pending_since(&with("True")),
            Some("2026-11-30T09:00:00Z".parse().expect("time"))
        );
        assert_eq!(resize_pending_since(&with("False")), None);
        let resizing = claim(json!({"metadata": {"name": "d"}, "status": {"conditions": [
            {"type": "Resizing", "status": "True"}]}}));
        assert_eq!(resize_pending_since(&resizing), None);
    }

    #[test]
    fn pods_using_the_claim_directly_or_as_an_ephemeral_volume() {
        let direct = pod(
            "web",
            json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]),
            None,
        );
        let ephemeral = pod(
            "web",
            json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
            "spec": {"accessModes": ["ReadWriteOnce"]}}}}]),
            None,
        );
        assert!(pod_uses_claim(&direct, "data"));
        assert!(!pod_uses_claim(&direct, "other"));
        assert!(pod_uses_claim(&ephemeral, "web-scratch"));
        assert!(!pod_uses_claim(&ephemeral, "scratch"));
    }

    #[test]
    fn a_nudge_later_than_the_condition_is_enough() {
        let since: Timestamp = "2026-11-30T09:00:00Z".parse().expect("time");
        let volumes = json!([]);
        assert!(needs_nudge(&pod("p", volumes.clone(), None), since));
        assert!(needs_nudge(
            &pod("p", volumes.clone(), Some("2026-11-30T08:59:59.999999999Z")),
            since
        ));
        assert!(needs_nudge(
            &pod("p", volumes.clone(), Some("not a time")),
            since
        ));
        // "later than" the transition, as TopoLVM compares: the same instant is not enough.
        assert!(needs_nudge(
            &pod("p", volumes.clone(), Some("2026-11-30T09:00:00Z")),
            since
        ));
        assert!(!needs_nudge(
            &pod("p", volumes.clone(), Some("2026-11-30T09:00:00.000000001Z")),
            since
        ));
        // Go's RFC3339Nano with an offset, as TopoLVM may have written it in a local zone.
        assert!(!needs_nudge(
            &pod("p", volumes, Some("2026-11-30T18:00:01+09:00")),
            since
        ));
    }
}
