//! topolvm-node's live capacity against the test bed's real kube-apiserver and a real lvmd on
//! loop devices (lvm2 in metadata-only mode; root):
//!
//! ```text
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node
//! cargo test -p topolvm-e2e --features e2e --test node_capacity
//! ```
//!
//! The Node gets TopoLVM's capacity annotations (what `vgs` says is free, as spare-gb is 0) and
//! the `topolvm.io/node` finalizer; they follow a CreateLV and an admin's `vgextend` within 2 s
//! (TopoLVM: on its own operations, else up to 10 minutes); an annotation of a device class lvmd
//! does not report is removed and other annotations are left alone; after lvmd restarts the
//! annotations follow again. `/readyz` and the CSI Probe are false (not an error) until the
//! CSIDriver object exists. With
//! `--embed-lvmd` one topolvm-node process does all of this with lvmd inside it, binds no lvmd
//! socket, and exports TopoLVM's `topolvm_*` gauges and lvmd's `lvmd_*` ones once each.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::api::{Patch, PatchParams};
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::csi::Kubelet;
use topolvm_e2e::lvm::{
    self as common, DEFAULT_LOOP_SIZE, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup,
};
use topolvm_e2e::process::{ManagedProcess, free_port, workspace_binary};
use topolvm_e2e::stack::{AgentEndpoints, node_agent_args};
use topolvm_proto::lvmd as pb;

const NODE: &str = "node-a";
const MIB: u64 = 1 << 20;

/// The Node's capacity annotations, its other annotations, and whether it has our finalizer.
async fn node_state(nodes: &Api<Node>, node: &str) -> (BTreeMap<String, String>, bool) {
    let node = nodes.get(node).await.expect("get node");
    let finalized = node
        .metadata
        .finalizers
        .unwrap_or_default()
        .iter()
        .any(|f| f == names::NODE_FINALIZER);
    (node.metadata.annotations.unwrap_or_default(), finalized)
}

/// Waits until Node `node`'s `ssd` capacity annotation (and `00default`, the same class) is
/// `bytes`, or panics after `within`.
async fn wait_for_capacity(
    nodes: &Api<Node>,
    node: &str,
    bytes: u64,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    let want = bytes.to_string();
    loop {
        let (annotations, _) = node_state(nodes, node).await;
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

/// The CSIDriver object TopoLVM's chart installs (`charts/topolvm/templates/csidriver.yaml`).
async fn create_csi_driver(client: kube::Client) {
    let driver = CSIDriver {
        metadata: ObjectMeta {
            name: Some(names::PLUGIN_NAME.to_owned()),
            ..Default::default()
        },
        spec: CSIDriverSpec {
            attach_required: Some(false),
            pod_info_on_mount: Some(true),
            ..Default::default()
        },
    };
    Api::<CSIDriver>::all(client)
        .create(&PostParams::default(), &driver)
        .await
        .expect("create the CSIDriver object");
}

/// Polls `/readyz` until it answers `want` (`ok`, or a body naming the failing check).
async fn wait_for_readyz(health: SocketAddr, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let body = common::http_get(health, "/readyz")
            .await
            .unwrap_or_default();
        if body.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz does not say {want:?} within {within:?}: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        LvmdOptions::workspace_thick("ssd", vg.name()).extra("full-refresh-interval: 10m"),
    );

    let dir = tempfile::tempdir().expect("tmp");
    // The CSI socket in the test's own dir, never the host's /run/topolvm.
    let at = AgentEndpoints::under(dir.path());
    let health = at.health;
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.args(node_agent_args(&cluster, NODE, lvmd.socket_path(), &at))
        .env("RUST_LOG", "topolvm_node=debug,info");
    let _node_agent = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));

    // Start-up: the process, its client and the first Watch message.
    wait_for_capacity(
        &nodes,
        NODE,
        vg_free(&vg),
        Duration::from_secs(20),
        "start-up",
    )
    .await;
    let (annotations, finalized) = node_state(&nodes, NODE).await;
    assert!(finalized, "the node carries {}", names::NODE_FINALIZER);
    assert_eq!(
        annotations.get("example.com/keep").map(String::as_str),
        Some("me")
    );
    assert!(
        !annotations.contains_key(&names::capacity_annotation_key("removed-class")),
        "a class lvmd does not report loses its annotation: {annotations:?}"
    );
    // Not ready without the CSIDriver object (kubelet could not mount TopoLVM volumes); ready
    // within moments of its creation.
    // The CSI Probe says the same, as `ready=false` rather than an error (TopoLVM's error makes
    // external-provisioner exit).
    let not_ready = common::http_get(health, "/readyz")
        .await
        .expect_err("not ready without the CSIDriver object");
    assert!(not_ready.to_string().contains(" 500 "), "{not_ready}");
    let mut kubelet = Kubelet::connect(&dir.path().join("csi.sock"), &dir.path().join("kubelet"))
        .await
        .expect("the CSI socket");
    assert_eq!(kubelet.probe().await.expect("Probe answers"), Some(false));
    create_csi_driver(cluster.client()).await;
    wait_for_readyz(health, "ok", Duration::from_secs(5)).await;
    assert_eq!(kubelet.probe().await.expect("Probe answers"), Some(true));

    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
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
        NODE,
        vg_free(&vg),
        Duration::from_secs(2),
        "after CreateLV",
    )
    .await;

    vg.extend(Disk::loop_device(DEFAULT_LOOP_SIZE));
    wait_for_capacity(
        &nodes,
        NODE,
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
        NODE,
        vg_free(&vg),
        Duration::from_secs(15),
        "after lvmd restarted",
    )
    .await;
}

/// The `name{labels} value` lines of `text` whose name is `metric`.
fn series<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lvmd_serves_the_node_from_one_process() {
    const NODE_B: &str = "node-b";
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.make_node(NODE_B, &[], &[]).await;
    create_csi_driver(cluster.client()).await;
    let nodes: Api<Node> = Api::all(cluster.client());

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    // The lvmd.yaml an lvmd daemon would read; this one is only written, never started.
    let config = Lvmd::configure(&env, LvmdOptions::workspace_thick("ssd", vg.name()));

    let dir = tempfile::tempdir().expect("tmp");
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    env.apply(&mut cmd);
    cmd.arg("--nodename")
        .arg(NODE_B)
        .arg("--embed-lvmd")
        .arg("--config")
        .arg(config.config_path())
        .arg("--csi-socket")
        .arg(dir.path().join("csi.sock"))
        .arg("--kubelet-dir")
        .arg(dir.path().join("kubelet"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-node"))
        .arg("--metrics-bind-address")
        .arg(metrics.to_string())
        .arg("--health-probe-bind-address")
        .arg(health.to_string())
        .env("RUST_LOG", "topolvm_node=debug,lvmd=debug,info");
    let _node_agent = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));

    wait_for_capacity(
        &nodes,
        NODE_B,
        vg_free(&vg),
        Duration::from_secs(20),
        "the embedded lvmd's capacity never reached the node",
    )
    .await;
    wait_for_readyz(health, "ok", Duration::from_secs(5)).await;
    assert!(
        !config.socket_path().exists(),
        "an embedded lvmd binds no socket"
    );

    // An admin's lvcreate behind lvmd's back: the embedded lvmd's monitor sees it too.
    vg.create_lv_by_hand("outside", "8m");
    let want = vg_free(&vg);
    wait_for_capacity(
        &nodes,
        NODE_B,
        want,
        Duration::from_secs(5),
        "the node does not follow an outside lvcreate",
    )
    .await;

    // One /metrics with TopoLVM's gauge (its value what `vgs` says is free, spare-gb being 0)
    // and lvmd's own, each series once.
    let text = common::http_get(metrics, "/metrics")
        .await
        .expect("/metrics");
    let topolvm = series(&text, "topolvm_volumegroup_available_bytes");
    assert_eq!(
        topolvm,
        vec![format!(
            r#"topolvm_volumegroup_available_bytes{{device_class="ssd",node="{NODE_B}"}} {want}"#
        )],
        "{text}"
    );
    let lvmd_gauge = series(&text, "lvmd_volumegroup_available_bytes");
    assert_eq!(lvmd_gauge.len(), 1, "{text}");
    assert!(
        !series(&text, "lvmd_lvm_commands_total").is_empty(),
        "lvmd's command counters are served with the node's metrics: {text}"
    );
    let names: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        names.len(),
        unique.len(),
        "a metric family is exported twice: {text}"
    );
}
