//! Benchmark (not a test) of topolvm-node at cluster scale, against the test bed's real
//! kube-apiserver and a real lvmd on a loop device (lvm2 in metadata-only mode; root):
//!
//!     cargo build --release -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node
//!     cargo bench -p topolvm-e2e --features e2e --bench node_scale [-- OTHER_NODES PER_NODE SAMPLES]
//!
//! 1. Memory: topolvm-node's resident set with only its own LogicalVolumes in the cluster
//!    (`PER_NODE`, default 100, made as our controller makes them, labelled with their node), and
//!    again after `OTHER_NODES × PER_NODE` LogicalVolumes of other nodes were added (default
//!    99 × 100, so 10,000 in all). A node agent that caches every LogicalVolume of the cluster,
//!    as TopoLVM's does, grows with the second number; ours should not.
//! 2. Capacity latency: the time from a CreateLV answered by lvmd to the Node's
//!    `capacity.topolvm.io/<class>` annotation showing the new free bytes, seen through a watch
//!    on the Node (`SAMPLES` times, default 30).
//!
//! Results are in e2e/README.md.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use topolvm_core::crd::{LogicalVolume, LogicalVolumeSpec};
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::lvm::{self as common, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, rss_kib, workspace_binary};
use topolvm_e2e::stack::{AgentEndpoints, node_agent_args};
use topolvm_proto::lvmd as pb;

const NODE: &str = "bench-node";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn logical_volume(name: &str, node: &str) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            name: name.to_owned(),
            node_name: node.to_owned(),
            size: Quantity("8Mi".to_owned()),
            device_class: "ssd".to_owned(),
            ..Default::default()
        },
    );
    lv.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            [(names::LOGICAL_VOLUME_NODE_LABEL.to_owned(), node.to_owned())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    lv
}

async fn create_all(api: &Api<LogicalVolume>, objects: Vec<LogicalVolume>) {
    stream::iter(objects)
        .map(|lv| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &lv)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}: {e}", lv.metadata.name.unwrap_or_default()))
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("creating LogicalVolumes");
}

/// Waits until every LogicalVolume of this node has a volume id.
async fn wait_provisioned(api: &Api<LogicalVolume>, want: usize) -> Duration {
    let start = Instant::now();
    let selector = format!("{}={NODE}", names::LOGICAL_VOLUME_NODE_LABEL);
    loop {
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list");
        let done = list
            .items
            .iter()
            .filter(|lv| lv.status.as_ref().is_some_and(|s| !s.volume_id.is_empty()))
            .count();
        if done == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {done} of {want} volumes provisioned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let other_nodes = numbers.first().copied().unwrap_or(99);
    let per_node = numbers.get(1).copied().unwrap_or(100);
    let samples = numbers.get(2).copied().unwrap_or(30);
    common::require_lvm();
    common::require_loop_devices();

    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let client = cluster.client();
    let lvs: Api<LogicalVolume> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());

    let env = LvmEnv::metadata_only();
    let size = (per_node as u64 + samples as u64 + 16) * 8 * MIB + GIB;
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(size)]);
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick("ssd", vg.name()));

    let dir = tempfile::tempdir().expect("tmp");
    let at = AgentEndpoints::under(dir.path());
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.args(node_agent_args(&cluster, NODE, lvmd.socket_path(), &at))
        .env("RUST_LOG", "warn");
    let node_agent = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));
    let pid = node_agent.pid().expect("topolvm-node runs");

    let own: Vec<LogicalVolume> = (0..per_node)
        .map(|i| logical_volume(&format!("own-{i}"), NODE))
        .collect();
    create_all(&lvs, own).await;
    let provisioned = wait_provisioned(&lvs, per_node).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_own, _) = rss_kib(pid);

    let start = Instant::now();
    let others: Vec<LogicalVolume> = (0..other_nodes)
        .flat_map(|n| {
            (0..per_node)
                .map(move |i| logical_volume(&format!("other-{n}-{i}"), &format!("node-{n}")))
        })
        .collect();
    let total = others.len() + per_node;
    create_all(&lvs, others).await;
    let created_in = start.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss_all, hwm_all) = rss_kib(pid);

    // Capacity latency: lvmd answers a CreateLV, then the Node's annotation changes.
    let key = names::capacity_annotation_key("ssd");
    let mut lv_client = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    let mut latencies = Vec::new();
    for i in 0..samples {
        let mut events = watcher::watch_object(nodes.clone(), NODE).boxed();
        let before = loop {
            if let Some(Ok(Some(node))) = events.next().await {
                break node
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .get(&key)
                    .cloned();
            }
        };
        let asked = Instant::now();
        lv_client
            .create_lv(pb::CreateLvRequest {
                name: format!("latency-{i}"),
                device_class: "ssd".into(),
                size_bytes: (8 * MIB) as i64,
                ..Default::default()
            })
            .await
            .expect("CreateLV");
        let answered = Instant::now();
        loop {
            let node = match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                Ok(Some(Ok(Some(node)))) => node,
                Ok(Some(Ok(None))) => panic!("the node vanished"),
                Ok(Some(Err(e))) => panic!("watching the node: {e}"),
                Ok(None) => panic!("the watch ended"),
                Err(_) => panic!("no annotation change within 30 s"),
            };
            let now = node
                .metadata
                .annotations
                .unwrap_or_default()
                .get(&key)
                .cloned();
            if now != before {
                latencies.push(answered.elapsed());
                let _ = asked;
                break;
            }
        }
    }

    println!(
        "topolvm-node at scale ({total} LogicalVolumes in the cluster, {per_node} on this node)"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| {per_node} own volumes provisioned (create to status.volumeID) | {:.1} s |",
        provisioned.as_secs_f64()
    );
    println!(
        "| RSS with only its own {per_node} LogicalVolumes | {:.1} MiB |",
        rss_own as f64 / 1024.0
    );
    println!(
        "| {} other nodes' LogicalVolumes created in | {:.1} s |",
        total - per_node,
        created_in.as_secs_f64()
    );
    println!(
        "| RSS with {total} LogicalVolumes in the cluster | {:.1} MiB (peak {:.1} MiB) |",
        rss_all as f64 / 1024.0,
        hwm_all as f64 / 1024.0
    );
    println!(
        "| lvmd change to Node annotation, {samples} samples | p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
}
