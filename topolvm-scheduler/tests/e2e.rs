//! End to end with the real kube-scheduler (1.20, from the e2e test bed) configured to call this
//! extender over HTTP: placement by capacity annotations, preference for the larger node, a pod
//! left pending when nothing fits, and a burst of pods that must not over-commit two small nodes.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use topolvm_core::names;
use topolvm_e2e::process::{ManagedProcess, free_port};
use topolvm_e2e::{Cluster, ClusterOptions};

const GIB: u64 = 1 << 30;
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The extender binary on a free port, plus a kube-scheduler that calls it.
struct Setup {
    cluster: Cluster,
    _extender: ManagedProcess,
    _dir: tempfile::TempDir,
}

async fn start(watch_cluster: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let config = dir.path().join("scheduler-config.yaml");
    std::fs::write(
        &config,
        format!("listen: \"127.0.0.1:{port}\"\ndefault-divisor: 1\n"),
    )
    .expect("config");
    // The cluster must exist before a watching extender can get its kubeconfig; an extender that
    // starts a moment after kube-scheduler is fine (kube-scheduler retries pods).
    let cluster = Cluster::start(
        ClusterOptions::api_only().with_scheduler_extender(format!("http://127.0.0.1:{port}")),
    )
    .await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topolvm-scheduler"));
    cmd.arg("--config").arg(&config).env("RUST_LOG", "debug");
    if watch_cluster {
        cmd.arg("--watch-cluster")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig("topolvm-scheduler"));
    }
    let extender =
        ManagedProcess::spawn("topolvm-scheduler", cmd, &dir.path().join("extender.log"));
    wait_for_http(port).await;
    Setup {
        cluster,
        _extender: extender,
        _dir: dir,
    }
}

async fn wait_for_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the extender did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod asking for `bytes` of the default device class, as the pod webhook would annotate it,
/// with the extended resource that makes kube-scheduler call the extender.
fn pod(name: &str, bytes: u64, claim: Option<&str>) -> Pod {
    let mut spec = serde_json::json!({
        "containers": [{"name": "c", "image": "none",
            "resources": {"requests": {names::CAPACITY_RESOURCE: "1"},
                          "limits": {names::CAPACITY_RESOURCE: "1"}}}],
    });
    if let Some(claim) = claim {
        spec["volumes"] =
            serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {names::DEFAULT_CAPACITY_ANNOTATION_KEY: bytes.to_string()}},
        "spec": spec,
    }))
    .expect("pod")
}

async fn node_of(pods: &Api<Pod>, name: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let p = pods.get(name).await.expect("get pod");
        if let Some(node) = p.spec.and_then(|s| s.node_name) {
            return Some(node);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pods land only where the annotation has room, the larger node is preferred, and a pod that
/// fits nowhere stays pending.
#[tokio::test]
async fn kube_scheduler_places_pods_by_capacity() {
    let setup = start(false).await;
    let c = &setup.cluster;
    c.make_node("tiny", &[], &[("", GIB)]).await;
    c.make_node("small", &[], &[("", 20 * GIB)]).await;
    c.make_node("large", &[], &[("", 900 * GIB)]).await;
    c.make_node("unannotated", &[], &[]).await;
    let pods: Api<Pod> = Api::namespaced(c.client(), "default");

    // 10 GiB fits small and large; large scores higher (log2 of free GiB).
    pods.create(&PostParams::default(), &pod("fits-two", 10 * GIB, None))
        .await
        .expect("create");
    assert_eq!(
        node_of(&pods, "fits-two", Duration::from_secs(60))
            .await
            .as_deref(),
        Some("large")
    );

    // 500 GiB fits only large.
    pods.create(&PostParams::default(), &pod("fits-one", 500 * GIB, None))
        .await
        .expect("create");
    assert_eq!(
        node_of(&pods, "fits-one", Duration::from_secs(60))
            .await
            .as_deref(),
        Some("large")
    );

    // 1 TiB fits nowhere: the pod stays pending, marked unschedulable.
    pods.create(&PostParams::default(), &pod("fits-none", 1024 * GIB, None))
        .await
        .expect("create");
    assert_eq!(
        node_of(&pods, "fits-none", Duration::from_secs(10)).await,
        None
    );
    let status = pods
        .get("fits-none")
        .await
        .expect("get")
        .status
        .unwrap_or_default();
    let unschedulable = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|cond| cond.type_ == "PodScheduled" && cond.status == "False");
    assert!(unschedulable, "the pod is reported unschedulable");
}

/// A burst of pods whose claims are not provisioned yet must not over-commit two small nodes
/// (TopoLVM issue 117): with the cluster watch, the extender counts what it already promised.
#[tokio::test]
async fn a_burst_of_pods_does_not_over_commit() {
    let setup = start(true).await;
    let c = &setup.cluster;
    // Each node has room for two 4 GiB volumes, not three.
    c.make_node("node-a", &[], &[("", 10 * GIB)]).await;
    c.make_node("node-b", &[], &[("", 10 * GIB)]).await;
    let sc: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "topolvm-provisioner"},
        "provisioner": names::PLUGIN_NAME,
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .expect("storage class");
    Api::<StorageClass>::all(c.client())
        .create(&PostParams::default(), &sc)
        .await
        .expect("storage class");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client(), "default");
    let pods: Api<Pod> = Api::namespaced(c.client(), "default");
    // No provisioner runs: claims stay unbound, as they are while topolvm-controller works.
    for i in 0..6 {
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("data-{i}"), "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "topolvm-provisioner",
                     "resources": {"requests": {"storage": "4Gi"}}},
        }))
        .expect("claim");
        claims
            .create(&PostParams::default(), &claim)
            .await
            .expect("claim");
    }
    for i in 0..6 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("burst-{i}"), 4 * GIB, Some(&format!("data-{i}"))),
        )
        .await
        .expect("pod");
    }

    // kube-scheduler records its choice on each claim (selected-node) and then waits for the
    // volume; count the choices per node until four pods are placed, checking every time that
    // no node was promised more than it has.
    let deadline = Instant::now() + Duration::from_secs(120);
    let placed = loop {
        let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
        for claim in claims
            .list(&ListParams::default())
            .await
            .expect("claims")
            .items
        {
            if let Some(node) = claim
                .metadata
                .annotations
                .unwrap_or_default()
                .get(SELECTED_NODE)
            {
                *per_node.entry(node.clone()).or_default() += 1;
            }
        }
        assert!(
            per_node.values().all(|n| *n <= 2),
            "a node was over-committed: {per_node:?}\nscheduler log:\n{}",
            c.log_tail("kube-scheduler", 30)
        );
        let total: u32 = per_node.values().sum();
        if total == 4 || Instant::now() >= deadline {
            break per_node;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        placed.values().sum::<u32>(),
        4,
        "two per node fit: {placed:?}"
    );
    // And the remaining two stay unplaced.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let selected = claims
        .list(&ListParams::default())
        .await
        .expect("claims")
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SELECTED_NODE))
        })
        .count();
    assert_eq!(selected, 4);
}
