//! Node clean-up scenarios against a scripted API server: the requests are TopoLVM's (`doFinalize`
//! and `cleanupLogicalVolume` in `internal/controller/node_controller.go` @ 44099e062507):
//! StorageClasses of `topolvm.io`, the claims selected for the node deleted, each LogicalVolume
//! patched (pendingdeletion + finalizer removed in one patch) then deleted, and last the Node's
//! finalizer removed.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Context, reconcile};
use crate::metrics::Metrics;
use crate::test_api::{Step, list, pair, serve};

const NODE: &str = "worker-1";
const LV_LABELLED: &str =
    "/apis/topolvm.io/v1/logicalvolumes?&labelSelector=topolvm.io/node=worker-1";
const LV_UNLABELLED: &str = "/apis/topolvm.io/v1/logicalvolumes?&labelSelector=!topolvm.io/node";

fn node(deleting: bool, finalizers: &[&str]) -> Arc<PartialObjectMeta<Node>> {
    let mut meta = json!({"name": NODE, "finalizers": finalizers, "resourceVersion": "42"});
    if deleting {
        meta["deletionTimestamp"] = json!("2026-11-30T09:00:00Z");
    }
    Arc::new(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": meta}))
            .expect("node metadata"),
    )
}

fn storage_class(name: &str, provisioner: &str) -> Value {
    json!({"metadata": {"name": name}, "provisioner": provisioner})
}

fn claim(namespace: &str, name: &str, class: &str, selected: Option<&str>) -> Value {
    let mut claim = json!({"metadata": {"name": name, "namespace": namespace},
                           "spec": {"storageClassName": class}});
    if let Some(node) = selected {
        claim["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": node});
    }
    claim
}

fn logical_volume(name: &str, node: &str, finalizers: &[&str]) -> Value {
    json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolume",
           "metadata": {"name": name, "finalizers": finalizers, "resourceVersion": "7"},
           "spec": {"name": name, "nodeName": node, "size": "1Gi"}})
}

async fn scenario(
    node: Arc<PartialObjectMeta<Node>>,
    skip: bool,
    script: Vec<Step>,
) -> Result<Action, topolvm_runtime::kubernetes::Error> {
    let (client, handle) = pair();
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context {
        client,
        skip_node_finalize: skip,
        metrics: Metrics::register(&registry).expect("metrics"),
    });
    let server = tokio::spawn(serve(handle, script));
    let result = tokio::time::timeout(Duration::from_secs(5), reconcile(node, ctx))
        .await
        .expect("no request beyond the script");
    drop(server.await.expect("every scripted request came"));
    result
}

fn finalizer_removed(expected_before: Value, expected_after: Value) -> impl Fn(&Value) + Send {
    move |body| {
        assert_eq!(
            body,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": expected_before},
                {"op": "replace", "path": "/metadata/finalizers", "value": expected_after},
            ])
        );
    }
}

#[tokio::test]
async fn a_live_node_or_one_without_our_finalizer_is_left_alone() {
    for n in [
        node(false, &["topolvm.io/node"]),
        node(true, &["example.com/other"]),
    ] {
        let result = scenario(n, false, vec![]).await;
        assert!(result.is_ok(), "{result:?}");
    }
}

#[tokio::test]
async fn a_deleted_node_loses_its_claims_and_volumes_then_its_finalizer() {
    let script = vec![
        Step::new(
            Method::GET,
            "/apis/storage.k8s.io/v1/storageclasses?",
            list(
                "StorageClassList",
                vec![
                    storage_class("topolvm-provisioner", "topolvm.io"),
                    storage_class("other", "ebs.csi.aws.com"),
                ],
            ),
        ),
        Step::new(
            Method::GET,
            "/api/v1/persistentvolumeclaims?",
            list(
                "PersistentVolumeClaimList",
                vec![
                    claim("app", "ours", "topolvm-provisioner", Some(NODE)),
                    claim("app", "elsewhere", "topolvm-provisioner", Some("worker-2")),
                    claim("app", "not-ours", "other", Some(NODE)),
                    claim("app", "unplaced", "topolvm-provisioner", None),
                ],
            ),
        ),
        Step::new(
            Method::DELETE,
            "/api/v1/namespaces/app/persistentvolumeclaims/ours?",
            json!({}),
        ),
        Step::new(
            Method::GET,
            LV_LABELLED,
            list(
                "LogicalVolumeList",
                vec![logical_volume("pvc-1", NODE, &["topolvm.io/logicalvolume"])],
            ),
        ),
        Step::new(
            Method::GET,
            LV_UNLABELLED,
            list(
                "LogicalVolumeList",
                vec![
                    // Made by TopoLVM's controller, never labelled: found by spec.nodeName.
                    logical_volume("pvc-2", NODE, &[]),
                    logical_volume("pvc-3", "worker-2", &["topolvm.io/logicalvolume"]),
                ],
            ),
        ),
        Step::new(
            Method::PATCH,
            "/apis/topolvm.io/v1/logicalvolumes/pvc-1?",
            logical_volume("pvc-1", NODE, &[]),
        )
        .checking(|body| {
            assert_eq!(
                body,
                &json!({"metadata": {
                    "resourceVersion": "7",
                    "annotations": {"topolvm.io/pendingdeletion": "true"},
                    "finalizers": [],
                }})
            );
        }),
        Step::new(
            Method::DELETE,
            "/apis/topolvm.io/v1/logicalvolumes/pvc-1?",
            logical_volume("pvc-1", NODE, &[]),
        ),
        // Without our finalizer nothing is patched; a deletion racing with ours is fine.
        Step::new(
            Method::DELETE,
            "/apis/topolvm.io/v1/logicalvolumes/pvc-2?",
            json!({}),
        )
        .failing(404),
        Step::new(Method::PATCH, "/api/v1/nodes/worker-1?", json!({})).checking(finalizer_removed(
            json!(["example.com/keep", "topolvm.io/node"]),
            json!(["example.com/keep"]),
        )),
    ];
    let result = scenario(
        node(true, &["example.com/keep", "topolvm.io/node"]),
        false,
        script,
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn skip_node_finalize_only_releases_the_node() {
    let script = vec![
        Step::new(Method::PATCH, "/api/v1/nodes/worker-1?", json!({}))
            .checking(finalizer_removed(json!(["topolvm.io/node"]), json!([]))),
    ];
    let result = scenario(node(true, &["topolvm.io/node"]), true, script).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_failed_deletion_keeps_the_finalizer_for_the_retry() {
    let script = vec![
        Step::new(
            Method::GET,
            "/apis/storage.k8s.io/v1/storageclasses?",
            list(
                "StorageClassList",
                vec![storage_class("topolvm-provisioner", "topolvm.io")],
            ),
        ),
        Step::new(
            Method::GET,
            "/api/v1/persistentvolumeclaims?",
            list(
                "PersistentVolumeClaimList",
                vec![claim("app", "ours", "topolvm-provisioner", Some(NODE))],
            ),
        ),
        Step::new(
            Method::DELETE,
            "/api/v1/namespaces/app/persistentvolumeclaims/ours?",
            json!({}),
        )
        .failing(409),
    ];
    let result = scenario(node(true, &["topolvm.io/node"]), false, script).await;
    let error = result.expect_err("the conflict is returned");
    assert_eq!(error.metric_label(), "conflict");
}
