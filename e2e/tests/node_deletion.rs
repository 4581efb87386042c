//! A Node deleted while its topolvm-node still runs, against the test bed's real kube-apiserver
//! 1.20 (with kube-controller-manager, whose pvc-protection controller lets a deleted claim go),
//! the real topolvm-node and a real lvmd on a loop device (lvm2 in metadata-only mode; root).
//! Each process runs as its own ServiceAccount with the rendered manifests' RBAC; the volume is
//! made through CreateVolume as the provisioner sends it (`topolvm_e2e::csi::Sidecars`).
//!
//! ```text
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node -p topolvm-controller --bin topolvm-controller
//! cargo test -p topolvm-e2e --features e2e --test node_deletion
//! ```
//!
//! What the API server and `lvs` must show:
//! - the controller deletes the node's claim and LogicalVolume and removes the finalizer, and
//!   the Node goes;
//! - topolvm-node, which keeps running, never puts its finalizer back on the Node being deleted
//!   (an lvmd change while the deletion is held by another finalizer is not published on it),
//!   stays alive, healthy and ready, and its CSI socket answers;
//! - the LV stays on disk (nobody runs RemoveLV for a LogicalVolume deleted without topolvm-node's
//!   finalizer); the orphan scan reports it (gauge, Event) and, run with `--orphan-gc-after`,
//!   removes it, while an LV made by hand without our tag stays;
//! - when the Node object comes back, as kubelet's re-registration makes it, topolvm-node puts
//!   its finalizer and capacity annotations back without any change on the lvmd side.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions, eventually_gone};
use topolvm_e2e::csi::{Kubelet, Sidecars};
use topolvm_e2e::lvm::{self as common, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, eventually, workspace_binary};
use topolvm_e2e::stack::{self, AgentEndpoints, node_agent_args};

const NODE: &str = "node-a";
const CLASS: &str = "ssd";
const STORAGE_CLASS: &str = "topolvm-ssd";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);
/// A finalizer of the test's own that holds the Node in deletion after ours is gone.
const HOLD: &str = "example.com/hold";

/// One topolvm-node process and its endpoints.
struct NodeAgent {
    process: ManagedProcess,
    health: SocketAddr,
    metrics: SocketAddr,
    socket: std::path::PathBuf,
    kubelet_dir: std::path::PathBuf,
}

impl NodeAgent {
    fn start(cluster: &Cluster, lvmd: &Lvmd, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let at = AgentEndpoints::under(&dir.join(name));
        let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
        cmd.args(node_agent_args(cluster, NODE, lvmd.socket_path(), &at))
            .args(extra)
            .env("RUST_LOG", "topolvm_node=debug,info");
        let process = ManagedProcess::spawn(name, cmd, &dir.join(format!("{name}.log")));
        Self {
            process,
            health: at.health,
            metrics: at.metrics,
            socket: at.csi_socket,
            kubelet_dir: at.kubelet_dir,
        }
    }

    async fn get(&self, addr: SocketAddr, path: &str) -> Option<String> {
        common::http_get(addr, path).await.ok()
    }

    /// The value of the first series of `metric` whose labels contain `label`.
    async fn metric(&self, metric: &str, label: &str) -> Option<f64> {
        let text = self.get(self.metrics, "/metrics").await?;
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Alive, `/healthz` and `/readyz` answer 200, and the CSI Probe says ready.
    async fn assert_sane(&mut self) {
        self.process.assert_running();
        assert!(
            self.get(self.health, "/healthz").await.is_some(),
            "/healthz fails"
        );
        let readyz = common::http_get(self.health, "/readyz").await;
        assert!(readyz.is_ok(), "/readyz: {readyz:?}");
        let mut kubelet = Kubelet::connect(&self.socket, &self.kubelet_dir)
            .await
            .expect("the CSI socket accepts connections");
        assert_eq!(
            kubelet.probe().await.expect("Probe answers"),
            Some(true),
            "Probe"
        );
    }
}

/// The Node's `ssd` capacity annotation and whether it carries our finalizer; `None` when the
/// Node does not exist.
async fn node_state(nodes: &Api<Node>) -> Option<(Option<String>, bool)> {
    let node = nodes.get_opt(NODE).await.expect("get node")?;
    let capacity = node
        .annotations()
        .get(&names::capacity_annotation_key(CLASS))
        .cloned();
    let finalized = node.finalizers().iter().any(|f| f == names::NODE_FINALIZER);
    Some((capacity, finalized))
}

fn lv_names(env: &LvmEnv, vg: &VolumeGroup) -> Vec<String> {
    env.lv_names(vg.name())
}

async fn events_with_reason(client: &kube::Client, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_under_its_running_agent_is_cleaned_up_and_comes_back() {
    let cluster = Cluster::start(ClusterOptions::api_only().with_controller_manager()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let admin = cluster.client();
    let nodes: Api<Node> = Api::all(admin.clone());
    let volumes: Api<LogicalVolume> = Api::all(admin.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), "default");
    // The CSIDriver object as TopoLVM's chart ships it: topolvm-node is not ready without it.
    let driver: CSIDriver = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": names::PLUGIN_NAME},
        "spec": {"attachRequired": false, "podInfoOnMount": true},
    }))
    .expect("a CSIDriver");
    Api::<CSIDriver>::all(admin.clone())
        .create(&PostParams::default(), &driver)
        .await
        .expect("CSIDriver");
    let class = stack::storage_class_of(STORAGE_CLASS, CLASS, Some("ext4"));
    let class = Api::<StorageClass>::all(admin.clone())
        .create(&PostParams::default(), &class)
        .await
        .expect("StorageClass");

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(128 * MIB)]);
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));
    let dir = tempfile::tempdir().expect("tmp");
    // Reports orphans every second, removes none.
    let mut agent = NodeAgent::start(
        &cluster,
        &lvmd,
        dir.path(),
        "topolvm-node",
        &["--orphan-scan-interval=1s"],
    );

    let (mut controller, mut sidecars) =
        stack::start_controller(&cluster, dir.path(), "topolvm_controller=debug,info").await;

    // topolvm-node owns its Node: finalizer and capacity.
    let free = vg.sizes().get_u64("vg_free").to_string();
    eventually("the node's finalizer and capacity", WAIT, || async {
        (node_state(&nodes).await == Some((Some(free.clone()), true))).then_some(())
    })
    .await;
    eventually("topolvm-node ready", WAIT, || async {
        common::http_get(agent.health, "/readyz").await.ok()
    })
    .await;

    // A claim the scheduler placed on the node, and its volume made through CreateVolume.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default",
                     "annotations": {names::SELECTED_NODE_ANNOTATION: NODE}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                 "resources": {"requests": {"storage": "32Mi"}}},
    }))
    .expect("a claim");
    let pvc = claims
        .create(&PostParams::default(), &pvc)
        .await
        .expect("claim");
    let all_nodes = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items;
    let request = Sidecars::create_volume_request(&pvc, &class, NODE, &all_nodes).expect("request");
    let volume = sidecars
        .create_volume(request.clone())
        .await
        .expect("CreateVolume");
    let lv_name = volume.volume_id.clone();
    assert!(lv_names(&env, &vg).contains(&lv_name), "the LV is in lvs");
    assert!(volumes.get_opt(&request.name).await.expect("get").is_some());

    // Every version of the Node from here on, as a watch delivers them.
    let versions: Arc<Mutex<Vec<Node>>> = Arc::default();
    let recorder = {
        let versions = versions.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={NODE}"));
            let mut stream = std::pin::pin!(watcher(nodes, config));
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event {
                    versions.lock().expect("lock").push(node);
                }
            }
        })
    };

    // Delete the Node, held in deletion by a finalizer of ours so that topolvm-node has a
    // Node being deleted to (not) write to.
    nodes
        .patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [names::NODE_FINALIZER, HOLD]}})),
        )
        .await
        .expect("the test's finalizer");
    nodes
        .delete(NODE, &DeleteParams::default())
        .await
        .expect("deleting the node");
    eventually("the controller releases the node", WAIT, || async {
        (node_state(&nodes).await.is_some_and(|(_, ours)| !ours)).then_some(())
    })
    .await;
    // Released only after the clean-up: the claim is being deleted (pvc-protection may keep it
    // a moment) and the LogicalVolume is gone.
    assert!(
        volumes.get_opt(&request.name).await.expect("get").is_none(),
        "the LogicalVolume was deleted before the node was released"
    );
    eventually_gone(&claims, "data", "the claim is deleted", WAIT).await;

    // lvmd changes while the Node is being deleted: topolvm-node sees it (its gauge follows)
    // but neither puts the finalizer back nor touches the capacity of a Node being deleted.
    let capacity_when_deleted = node_state(&nodes).await.expect("still there").0;
    vg.create_lv_by_hand("by-hand", "8m");
    let free_now = vg.sizes().get_u64("vg_free");
    eventually("topolvm-node sees the change", WAIT, || async {
        (agent
            .metric(
                "topolvm_volumegroup_available_bytes",
                "device_class=\"ssd\"",
            )
            .await
            == Some(free_now as f64))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node_state(&nodes).await,
        Some((capacity_when_deleted, false)),
        "topolvm-node wrote to a Node being deleted"
    );
    agent.assert_sane().await;

    // The last finalizer goes: the Node is gone.
    nodes
        .patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("removing the test's finalizer");
    eventually("the node is gone", WAIT, || async {
        node_state(&nodes).await.is_none().then_some(())
    })
    .await;
    {
        let versions = versions.lock().expect("lock");
        let deleting: Vec<&Node> = versions
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_some())
            .collect();
        assert!(!deleting.is_empty(), "the watch saw the deletion");
        let released = deleting
            .iter()
            .position(|n| !n.finalizers().iter().any(|f| f == names::NODE_FINALIZER))
            .expect("a version without our finalizer");
        for later in &deleting[released..] {
            assert!(
                !later
                    .finalizers()
                    .iter()
                    .any(|f| f == names::NODE_FINALIZER),
                "the finalizer came back: {:?}",
                later.finalizers()
            );
        }
    }
    recorder.abort();

    // topolvm-node keeps running without its Node: alive, healthy, ready, socket answering.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.assert_sane().await;

    // The LV is still on disk: an orphan, reported (gauge and Event) but kept without GC.
    assert!(lv_names(&env, &vg).contains(&lv_name), "the LV is kept");
    eventually("the orphan is reported", WAIT, || async {
        (agent
            .metric("topolvm_node_orphan_volumes", "device_class=\"ssd\"")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    let reported = events_with_reason(&admin, "OrphanVolume").await;
    assert!(
        reported
            .iter()
            .any(|e| e.message.as_deref().unwrap_or_default().contains(&lv_name)),
        "an OrphanVolume Event names the LV: {reported:?}"
    );
    assert!(
        lv_names(&env, &vg).contains(&lv_name),
        "reported, not removed"
    );

    // Kubelet registers the Node again (no lvmd change meanwhile): topolvm-node puts its
    // finalizer and capacity back.
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {
            "kubernetes.io/hostname": NODE, names::TOPOLOGY_NODE_KEY: NODE}},
    }))
    .expect("a Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("re-creating the node");
    let free_now = free_now.to_string();
    eventually("the finalizer and capacity are back", WAIT, || async {
        (node_state(&nodes).await == Some((Some(free_now.clone()), true))).then_some(())
    })
    .await;
    agent.assert_sane().await;
    controller.assert_running();

    // Run with --orphan-gc-after, the orphan goes; the LV made by hand (not ours) stays, and
    // the Node's capacity follows.
    agent.process.stop();
    let mut agent = NodeAgent::start(
        &cluster,
        &lvmd,
        dir.path(),
        "topolvm-node-gc",
        &["--orphan-scan-interval=1s", "--orphan-gc-after=1s"],
    );
    eventually("the orphan LV is removed", WAIT, || async {
        (!lv_names(&env, &vg).contains(&lv_name)).then_some(())
    })
    .await;
    assert!(lv_names(&env, &vg).contains(&"by-hand".to_owned()));
    let removed = events_with_reason(&admin, "OrphanVolumeRemoved").await;
    assert!(
        removed
            .iter()
            .any(|e| e.message.as_deref().unwrap_or_default().contains(&lv_name)),
        "an OrphanVolumeRemoved Event names the LV: {removed:?}"
    );
    let free_after = vg.sizes().get_u64("vg_free").to_string();
    eventually("the capacity follows the removal", WAIT, || async {
        (node_state(&nodes).await == Some((Some(free_after.clone()), true))).then_some(())
    })
    .await;
    agent.assert_sane().await;
    controller.assert_running();
}
