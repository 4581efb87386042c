//! topolvm-node's live capacity against the test bed's real kube-apiserver and a real lvmd on
//! loop devices (lvm2 in metadata-only mode; root):
//!
//! ```text
//! cargo build -p lvmd --bin lvmd
//! cargo test -p topolvm-node --features e2e --test capacity
//! ```
//!
//! The Node gets TopoLVM's capacity annotations (what `vgs` says is free, as spare-gb is 0) and
//! the `topolvm.io/node` finalizer; they follow a CreateLV and an admin's `vgextend` within 2 s
//! (TopoLVM: on its own operations, else up to 10 minutes); an annotation of a device class lvmd
//! does not report is removed and other annotations are left alone; after lvmd restarts the
//! annotations follow again.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::lvm::{
    self as common, DEFAULT_LOOP_SIZE, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup,
};
use topolvm_e2e::process::{ManagedProcess, free_port};
use topolvm_proto::lvmd as pb;

const NODE: &str = "node-a";
const MIB: u64 = 1 << 20;

/// The lvmd binary of this workspace, next to this test's own target directory.
fn lvmd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let lvmd = dir.join("lvmd");
    assert!(
        lvmd.exists(),
        "{} is missing: run `cargo build -p lvmd --bin lvmd` first",
        lvmd.display()
    );
    lvmd
}

/// The Node's capacity annotations, its other annotations, and whether it has our finalizer.
async fn node_state(nodes: &Api<Node>) -> (BTreeMap<String, String>, bool) {
    let node = nodes.get(NODE).await.expect("get node");
    let finalized = node
        .metadata
        .finalizers
        .unwrap_or_default()
        .iter()
        .any(|f| f == names::NODE_FINALIZER);
    (node.metadata.annotations.unwrap_or_default(), finalized)
}

/// Waits until the Node's `ssd` capacity annotation (and `00default`, the same class) is
/// `bytes`, or panics after `within`.
async fn wait_for_capacity(nodes: &Api<Node>, bytes: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let want = bytes.to_string();
    loop {
        let (annotations, _) = node_state(nodes).await;
        let ssd = annotations.get(&names::capacity_annotation_key("ssd"));
        let default = annotations.get(names::DEFAULT_CAPACITY_ANNOTATION_KEY);
        if ssd == Some(&want) && default == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the node's capacity is not {want} within {within:?}: {annotations:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vg_free(vg: &VolumeGroup) -> u64 {
    vg.sizes().get_u64("vg_free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_capacity_follows_lvm_within_seconds() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.make_node(NODE, &[], &[("removed-class", 5)]).await;
    let nodes: Api<Node> = Api::all(cluster.client());
    nodes
        .patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"example.com/keep": "me"}}}),
            ),
        )
        .await
        .expect("an annotation of someone else");

    let env = LvmEnv::metadata_only();
    let mut vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let mut lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(lvmd_binary(), common::thick_default_class("ssd", vg.name()))
            .extra("full-refresh-interval: 10m"),
    );

    let dir = tempfile::tempdir().expect("tmp");
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topolvm-node"));
    cmd.arg("--nodename")
        .arg(NODE)
        .arg("--lvmd-socket")
        .arg(lvmd.socket_path())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-node"))
        .arg("--metrics-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--health-probe-bind-address")
        .arg(health.to_string())
        // The CSI socket in the test's own dir, never the host's /run/topolvm.
        .arg("--csi-socket")
        .arg(dir.path().join("csi.sock"))
        .arg("--kubelet-dir")
        .arg(dir.path().join("kubelet"))
        .env("RUST_LOG", "topolvm_node=debug,info");
    let _node_agent = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));

    // Start-up: the process, its client and the first Watch message.
    wait_for_capacity(&nodes, vg_free(&vg), Duration::from_secs(20), "start-up").await;
    let (annotations, finalized) = node_state(&nodes).await;
    assert!(finalized, "the node carries {}", names::NODE_FINALIZER);
    assert_eq!(
        annotations.get("example.com/keep").map(String::as_str),
        Some("me")
    );
    assert!(
        !annotations.contains_key(&names::capacity_annotation_key("removed-class")),
        "a class lvmd does not report loses its annotation: {annotations:?}"
    );
    let ready = common::http_get(health, "/readyz").await.expect("/readyz");
    assert_eq!(ready.trim(), "ok");

    let mut lv = lvmd.lv_client().await;
    lv.create_lv(pb::CreateLvRequest {
        name: "vol1".into(),
        device_class: "ssd".into(),
        size_bytes: (8 * MIB) as i64,
        ..Default::default()
    })
    .await
    .expect("CreateLV");
    wait_for_capacity(
        &nodes,
        vg_free(&vg),
        Duration::from_secs(2),
        "after CreateLV",
    )
    .await;

    vg.extend(Disk::loop_device(DEFAULT_LOOP_SIZE));
    wait_for_capacity(
        &nodes,
        vg_free(&vg),
        Duration::from_secs(2),
        "after vgextend",
    )
    .await;

    // lvmd goes away and comes back: the stream is opened again and the node follows again.
    lvmd.restart();
    vg.create_lv_by_hand("outside", "8m");
    wait_for_capacity(
        &nodes,
        vg_free(&vg),
        Duration::from_secs(15),
        "after lvmd restarted",
    )
    .await;
}
