//! `deploy/monitoring/`: the Grafana dashboard and the PrometheusRule use only metrics, labels and
//! label values that the real binaries export. The whole stack runs on the test bed: the real
//! kube-apiserver, lvmd on loop devices (metadata-only lvm2, so a thick class), a topolvm-node on
//! it, a second topolvm-node fed a thin pool by a stand-in lvmd (the host has no device-mapper, so
//! no real thin pool), topolvm-controller and topolvm-scheduler. One CSI volume is created (and one
//! refused for lack of space), kubelet's NodeGetInfo is sent, and each `/metrics` is scraped; every
//! expression of both files is parsed as PromQL (`promql-parser`) and each selector's metric name
//! (histograms by their `_bucket`/`_sum`/`_count` series), matcher label names and exact-match
//! values, `by`/`on` labels, legend and annotation `{{label}}`s are looked up in what was scraped.
//! Misspelt names, labels and values are shown to be caught. A real Prometheus (Debian's,
//! `e2e/scripts/fetch-prometheus.sh`) then scrapes the same endpoints with the rule file loaded
//! (which `promtool check rules` accepts): every rule evaluates without error, every dashboard
//! query is accepted, the `node` and `device_class` variables list the cluster's nodes and classes,
//! and of the thin pool, lvmd, orphan and leader alerts exactly the expected ones are active (the
//! thin node's pool is reported over the thresholds); failing CSI calls make the CSI error-rate
//! alerts active for their methods. Then lvmd is stopped: the node's series change as the lvmd and
//! staleness alerts expect, and Prometheus raises TopoLVMLvmdUnreachable for that node. Root:
//!
//! ```text
//! e2e/scripts/build-control-plane.sh && e2e/scripts/fetch-prometheus.sh
//! cargo build -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins
//! cargo test -p topolvm-e2e --features e2e --test monitoring
//! ```
//!
//! The files' structure is checked in the unit tier (`topolvm_e2e::monitoring`): the PrometheusRule round-trips through our typed
//! struct (no unknown or lost field), each alert has a severity, a summary, a description and a
//! `for:`; the dashboard has its variables and every panel a Prometheus target on
//! `${datasource}`.
#![cfg(feature = "e2e")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use topolvm_core::names;
use topolvm_e2e::csi::{Kubelet, Sidecars};
use topolvm_e2e::lvm::{self as common, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::monitoring::{
    Exported, PrometheusRule, RuleGroup, check_all, check_expr, load_dashboard, load_rules,
    parse_sample, substitute_grafana_variables,
};
use topolvm_e2e::process::{ManagedProcess, eventually, free_port, workspace_binary};
use topolvm_e2e::stack::{self, AgentEndpoints};
use topolvm_e2e::{Cluster, ClusterOptions};
use topolvm_proto::csi;
use topolvm_proto::lvmd as pb;

const NODE: &str = "node-a";
const THIN_NODE: &str = "node-thin";
const CLASS: &str = "ssd";
const THIN_CLASS: &str = "thin";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The stand-in lvmd of the thin node.

/// Reports one thin class whose pool is 96.5% (data) and 81.25% (metadata) used, and no LVs:
/// above the data alerts' thresholds and the metadata warning's, below its critical one.
#[derive(Debug, Clone)]
struct ThinPoolLvmd;

type WatchStream = Pin<
    Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::vg_service_server::VgService for ThinPoolLvmd {
    async fn get_lv_list(
        &self,
        _request: Request<pb::GetLvListRequest>,
    ) -> Result<Response<pb::GetLvListResponse>, Status> {
        Ok(Response::new(pb::GetLvListResponse { volumes: vec![] }))
    }

    async fn get_free_bytes(
        &self,
        _request: Request<pb::GetFreeBytesRequest>,
    ) -> Result<Response<pb::GetFreeBytesResponse>, Status> {
        Ok(Response::new(pb::GetFreeBytesResponse {
            free_bytes: 30 << 30,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _request: Request<pb::Empty>) -> Result<Response<WatchStream>, Status> {
        let report = pb::WatchResponse {
            free_bytes: 30 << 30,
            items: vec![pb::WatchItem {
                device_class: THIN_CLASS.to_owned(),
                free_bytes: 2 << 30,
                size_bytes: 20 << 30,
                thin_pool: Some(pb::ThinPoolItem {
                    data_percent: 96.5,
                    metadata_percent: 81.25,
                    overprovision_bytes: 30 << 30,
                    size_bytes: 10 << 30,
                }),
            }],
        };
        // One message, then the stream stays open as lvmd's does while nothing changes.
        let stream =
            futures::stream::once(async move { Ok(report) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

// ---------------------------------------------------------------------------------------------
// The stack.

fn topolvm_node(
    cluster: &Cluster,
    dir: &Path,
    node: &str,
    lvmd_socket: &Path,
) -> (ManagedProcess, SocketAddr, PathBuf) {
    let at = AgentEndpoints::under(&dir.join(node));
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.args(stack::node_agent_args(cluster, node, lvmd_socket, &at))
        .arg("--orphan-scan-interval")
        .arg("1s")
        .env("RUST_LOG", "topolvm_node=debug,info");
    let process = ManagedProcess::spawn(
        &format!("topolvm-node {node}"),
        cmd,
        &dir.join(format!("{node}.log")),
    );
    (process, at.metrics, at.csi_socket)
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    common::http_get(addr, "/metrics").await.ok()
}

/// The value of the one series of `name` with exactly `labels` in a scrape.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (n, l) = parse_sample(line)?;
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut got = l;
        want.sort();
        got.sort();
        (n == name && got == want).then(|| line.rsplit(' ').next()?.parse().ok())?
    })
}

async fn make_pvc(client: &kube::Client, name: &str, bytes: u64) -> PersistentVolumeClaim {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &stack::claim(name, "topolvm-ssd", bytes),
        )
        .await
        .expect("creating a PVC")
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus (Debian's, cached by e2e/scripts/fetch-prometheus.sh) scraping the stack.

fn prometheus_bin() -> PathBuf {
    let dir = std::env::var_os("TOPOLVM_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/topolvm-rs/prometheus/bin"));
    let bin = dir.join("prometheus");
    assert!(
        bin.exists(),
        "{} missing: run e2e/scripts/fetch-prometheus.sh",
        bin.display()
    );
    bin
}

#[derive(Debug, Serialize)]
struct RuleFile<'a> {
    groups: &'a [RuleGroup],
}

/// Prometheus scraping `targets` every second and evaluating `rules` every second.
fn start_prometheus(
    dir: &Path,
    rules: &PrometheusRule,
    targets: &[(&str, SocketAddr)],
) -> (ManagedProcess, SocketAddr) {
    let rule_file = dir.join("rules.yaml");
    std::fs::write(
        &rule_file,
        serde_yaml::to_string(&RuleFile {
            groups: &rules.spec.groups,
        })
        .expect("rules"),
    )
    .expect("rule file");
    let scrape_configs: Vec<serde_json::Value> = targets
        .iter()
        .map(|(job, addr)| json!({"job_name": job, "static_configs": [{"targets": [addr.to_string()]}]}))
        .collect();
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rule_file],
        "scrape_configs": scrape_configs,
    });
    let promtool = prometheus_bin().with_file_name("promtool");
    let checked = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rule_file)
        .output()
        .expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, serde_yaml::to_string(&config).expect("yaml")).expect("config");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let process = ManagedProcess::spawn("prometheus", cmd, &dir.join("prometheus.log"));
    (process, addr)
}

/// `text` for a URL query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data` of a Prometheus API answer, or its error.
async fn prometheus_api(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let body = common::http_get(addr, path)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
    if answer["status"] == "success" {
        Ok(answer["data"].clone())
    } else {
        Err(format!("GET {path}: {answer}"))
    }
}

/// The alerts Prometheus has pending or firing, as (alert name, value of the label `key`).
async fn active_alerts(addr: SocketAddr, key: &str) -> Option<BTreeSet<(String, String)>> {
    let data = prometheus_api(addr, "/api/v1/alerts").await.ok()?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_owned();
                (label("alertname"), label(key))
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let rules = load_rules();
    let dashboard = load_dashboard();

    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    cluster.make_node(THIN_NODE, &[], &[]).await;
    let admin = cluster.client();
    let dir = tempfile::tempdir().expect("tmp");

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(128 * MIB)]);
    let mut lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));
    let (_node_agent, node_metrics, node_csi) =
        topolvm_node(&cluster, dir.path(), NODE, lvmd.socket_path());

    let thin_socket = dir.path().join("thin-lvmd.sock");
    let stop_thin = CancellationToken::new();
    let _stop_thin_on_drop = stop_thin.clone().drop_guard();
    {
        let listener = topolvm_runtime::unix::bind(&thin_socket)
            .await
            .expect("bind");
        let routes =
            tonic::service::Routes::new(pb::vg_service_server::VgServiceServer::new(ThinPoolLvmd));
        let socket = thin_socket.clone();
        let stop = stop_thin.clone();
        tokio::spawn(async move {
            let _ = topolvm_runtime::unix::serve(listener, &socket, routes, stop).await;
        });
    }
    let (_thin_agent, thin_metrics, _) =
        topolvm_node(&cluster, dir.path(), THIN_NODE, &thin_socket);

    let controller_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let controller_socket = dir.path().join("controller.sock");
    let mut cmd = Command::new(workspace_binary("topolvm-controller", "topolvm-controller"));
    cmd.arg("--csi-socket")
        .arg(&controller_socket)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-controller"))
        .arg("--leader-election=false")
        .arg("--enable-webhooks=false")
        .arg("--metrics-bind-address")
        .arg(controller_metrics.to_string())
        .arg("--health-probe-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "topolvm_controller=debug,info");
    let _controller = ManagedProcess::spawn(
        "topolvm-controller",
        cmd,
        &dir.path().join("controller.log"),
    );

    let scheduler_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let scheduler_config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &scheduler_config,
        format!("listen: \"{scheduler_addr}\"\ndefault-divisor: 1\n"),
    )
    .expect("scheduler config");
    let mut cmd = Command::new(workspace_binary("topolvm-scheduler", "topolvm-scheduler"));
    cmd.arg("--config").arg(&scheduler_config);
    let _scheduler =
        ManagedProcess::spawn("topolvm-scheduler", cmd, &dir.path().join("scheduler.log"));

    // Drive the labelled series: a CSI volume created through the node (and one refused for
    // lack of space), kubelet's NodeGetInfo on the node, a scrape of the extender.
    eventually("the controller's socket", WAIT, || async {
        controller_socket.exists().then_some(())
    })
    .await;
    let mut sidecars = Sidecars::connect(&controller_socket)
        .await
        .expect("connect");
    let nodes: Api<Node> = Api::all(admin.clone());
    eventually("node-a's capacity annotation", WAIT, || async {
        let node = nodes.get(NODE).await.ok()?;
        node.metadata
            .annotations?
            .contains_key(&names::capacity_annotation_key(CLASS))
            .then_some(())
    })
    .await;
    let ssd = Api::<StorageClass>::all(admin.clone())
        .create(
            &PostParams::default(),
            &stack::storage_class_of("topolvm-ssd", CLASS, None),
        )
        .await
        .expect("StorageClass");
    let all_nodes = nodes.list(&Default::default()).await.expect("nodes").items;
    let pvc = make_pvc(&admin, "data", 16 * MIB).await;
    let request = Sidecars::create_volume_request(&pvc, &ssd, NODE, &all_nodes).expect("request");
    // The controller's cache may not hold the annotation yet: retried as the provisioner does.
    eventually("CreateVolume", WAIT, || {
        let mut sidecars = sidecars.clone();
        let request = request.clone();
        async move { sidecars.create_volume(request).await.ok() }
    })
    .await;
    let huge = make_pvc(&admin, "huge", 1024 * MIB).await;
    let huge_request =
        Sidecars::create_volume_request(&huge, &ssd, NODE, &all_nodes).expect("request");
    let refused = sidecars.create_volume(huge_request).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::ResourceExhausted)
    );
    let mut kubelet = Kubelet::connect(&node_csi, &dir.path().join(format!("{NODE}-kubelet")))
        .await
        .expect("the node's CSI socket");
    kubelet
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo");

    let endpoints = [
        ("lvmd", lvmd.metrics_addr()),
        ("topolvm-node", node_metrics),
        ("topolvm-node-thin", thin_metrics),
        ("topolvm-controller", controller_metrics),
        ("topolvm-scheduler", scheduler_addr),
    ];
    // Series appear as their first event happens (the orphan scan, a reconcile, the extender's
    // own /metrics request): scrape until nothing is missing, or report what still is.
    let mut last_errors = Vec::new();
    let mut exported = Exported::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        exported = Exported::default();
        for (name, addr) in endpoints {
            match scrape(addr).await {
                Some(text) => exported.add(&text),
                None => println!("{name}: no /metrics answer yet"),
            }
        }
        last_errors = check_all(&rules, &dashboard, &exported);
        if last_errors.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last_errors.is_empty(),
        "the dashboard and alerts use what the binaries do not export:\n{}\nexported: {:#?}",
        last_errors.join("\n"),
        exported.series.keys().collect::<Vec<_>>()
    );
    println!(
        "{} series names scraped from {} endpoints; every expression checked",
        exported.series.len(),
        endpoints.len()
    );

    // The checker catches a misspelt name, a misspelt label, a value the binaries never use
    // (tonic's `Ok` for gRPC-Go's `OK`), a legend label the result lacks and a syntax error.
    for (expr, wanted) in [
        (
            "topolvm_node_lvmd_reachble == 0",
            "no metric topolvm_node_lvmd_reachble",
        ),
        (
            r#"topolvm_thinpool_data_percent{deviceclass="thin"}"#,
            "has no label deviceclass",
        ),
        (
            r#"rate(topolvm_controller_csi_requests_total{code!="Ok"}[5m])"#,
            "the value was never exported",
        ),
        (
            "sum by (nodename) (topolvm_volumegroup_size_bytes)",
            "has no label nodename",
        ),
        (
            "histogram_quantile(0.9, rate(topolvm_node_csi_request_duration_seconds_sum[5m]))",
            "without le",
        ),
        (
            "sum(rate(topolvm_node_csi_requests_total[5m])",
            "not PromQL",
        ),
    ] {
        let mut errors = Vec::new();
        check_expr("probe", expr, &exported, &mut errors);
        assert!(
            errors.iter().any(|e| e.contains(wanted)),
            "{expr}: expected an error containing {wanted:?}, got {errors:?}"
        );
    }
    let mut errors = Vec::new();
    let labels = check_expr(
        "probe",
        "sum by (method) (rate(topolvm_node_csi_requests_total[5m]))",
        &exported,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(labels, BTreeSet::from(["method".to_owned()]));

    // A real Prometheus scrapes the same endpoints and loads the rules: every rule evaluates
    // without error, every dashboard query is accepted, the variables' label values are the
    // cluster's nodes and classes, and the thin pool alerts are active for the thin node only.
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).expect("prometheus dir");
    let (_prometheus, prometheus) = start_prometheus(&prometheus_dir, &rules, &endpoints);
    eventually("Prometheus to scrape every target", WAIT, || async {
        let data = prometheus_api(prometheus, "/api/v1/targets").await.ok()?;
        let targets = data["activeTargets"].as_array()?;
        (targets.len() == endpoints.len() && targets.iter().all(|t| t["health"] == "up"))
            .then_some(())
    })
    .await;
    let rule_health = eventually("every rule evaluated", WAIT, || async {
        let data = prometheus_api(prometheus, "/api/v1/rules").await.ok()?;
        let rules: Vec<(String, String, String)> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (field("name"), field("health"), field("lastError"))
            })
            .collect();
        rules
            .iter()
            .all(|(_, health, _)| health != "unknown")
            .then_some(rules)
    })
    .await;
    assert_eq!(
        rule_health.len(),
        rules
            .spec
            .groups
            .iter()
            .map(|g| g.rules.len())
            .sum::<usize>()
    );
    for (name, health, error) in &rule_health {
        assert_eq!(health, "ok", "rule {name}: {error}");
    }
    for panel in &dashboard.panels {
        for target in &panel.targets {
            let expr = substitute_grafana_variables(&target.expr).expect("checked above");
            let path = format!("/api/v1/query?query={}", url_encode(&expr));
            if let Err(e) = prometheus_api(prometheus, &path).await {
                panic!("panel {:?}: Prometheus refuses {expr}: {e}", panel.title);
            }
        }
    }
    for (label, want) in [
        ("node", [NODE, THIN_NODE]),
        ("device_class", [CLASS, THIN_CLASS]),
    ] {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode("topolvm_volumegroup_size_bytes")
        );
        let values = prometheus_api(prometheus, &path)
            .await
            .expect("label values");
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(values, json!(want), "the {label} variable's values");
    }
    let watched = [
        "TopoLVMThinPoolDataUsageHigh",
        "TopoLVMThinPoolDataUsageCritical",
        "TopoLVMThinPoolMetadataUsageHigh",
        "TopoLVMThinPoolMetadataUsageCritical",
        "TopoLVMLvmdUnreachable",
        "TopoLVMOrphanVolumes",
        "TopoLVMControllerNoLeader",
    ];
    let active = |extra: Option<(&str, &str)>| {
        let mut want: BTreeSet<(String, String)> = [
            "TopoLVMThinPoolDataUsageHigh",
            "TopoLVMThinPoolDataUsageCritical",
            "TopoLVMThinPoolMetadataUsageHigh",
        ]
        .into_iter()
        .map(|a| (a.to_owned(), THIN_NODE.to_owned()))
        .collect();
        want.extend(extra.map(|(a, n)| (a.to_owned(), n.to_owned())));
        async move {
            let mut last = BTreeSet::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while tokio::time::Instant::now() < deadline {
                last = active_alerts(prometheus, "node")
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(a, _)| watched.contains(&a.as_str()))
                    .collect();
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!("active alerts {last:?}, expected {want:?}");
        }
    };
    active(None).await;

    // Failing CSI calls (an empty volume ID is INVALID_ARGUMENT to both services) make the
    // error-rate alerts active for exactly those methods. A counter's first sample is no
    // increase to rate(), so one failure is scraped before the ones that count.
    let fail_both = |times: usize| {
        let mut sidecars = sidecars.clone();
        let socket = node_csi.clone();
        let kubelet_dir = dir.path().join(format!("{NODE}-kubelet"));
        async move {
            let mut kubelet = Kubelet::connect(&socket, &kubelet_dir)
                .await
                .expect("the node's CSI socket");
            for _ in 0..times {
                let deleted = sidecars.delete_volume("").await;
                assert_eq!(
                    deleted.map_err(|s| s.code()),
                    Err(tonic::Code::InvalidArgument)
                );
                let published = kubelet
                    .node()
                    .node_publish_volume(csi::NodePublishVolumeRequest::default())
                    .await;
                assert_eq!(
                    published.map(|_| ()).map_err(|s| s.code()),
                    Err(tonic::Code::InvalidArgument)
                );
            }
        }
    };
    fail_both(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fail_both(5).await;
    let want_csi: BTreeSet<(String, String)> = [
        ("TopoLVMControllerCSIErrors", "DeleteVolume"),
        ("TopoLVMNodeCSIErrors", "NodePublishVolume"),
    ]
    .into_iter()
    .map(|(a, m)| (a.to_owned(), m.to_owned()))
    .collect();
    let mut seen_csi = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && seen_csi != want_csi {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen_csi = active_alerts(prometheus, "method")
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(a, _)| a.ends_with("CSIErrors"))
            .collect();
    }
    assert_eq!(seen_csi, want_csi, "the CSI error alerts");

    // The values the alerts read: the thin pool's percentages as lvmd (here its stand-in)
    // reported them; lvmd reachable and the annotations synced now on both nodes.
    let thin_text = scrape(thin_metrics).await.expect("scrape");
    let thin_labels = [("node", THIN_NODE), ("device_class", THIN_CLASS)];
    assert_eq!(
        value(&thin_text, "topolvm_thinpool_data_percent", &thin_labels),
        Some(96.5)
    );
    assert_eq!(
        value(
            &thin_text,
            "topolvm_thinpool_metadata_percent",
            &thin_labels
        ),
        Some(81.25)
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let synced = "topolvm_node_capacity_synced_timestamp_seconds";
    let reachable = "topolvm_node_lvmd_reachable";
    let text = scrape(node_metrics).await.expect("scrape");
    assert_eq!(value(&text, reachable, &[("node", NODE)]), Some(1.0));
    let before = now();
    let at = value(
        &scrape(node_metrics).await.expect("scrape"),
        synced,
        &[("node", NODE)],
    )
    .expect("the synced timestamp");
    assert!(at >= before - 1.0 && at <= now() + 1.0, "{at} vs {before}");

    // lvmd stops: topolvm-node says so, and the synced timestamp stops at that moment, so
    // `time() - it` grows as TopoLVMNodeCapacityStale expects.
    let stopped_at = now();
    lvmd.sigterm_and_wait(Duration::from_secs(20));
    let frozen = eventually("lvmd unreachable on node-a", WAIT, || async {
        let text = scrape(node_metrics).await?;
        (value(&text, reachable, &[("node", NODE)]) == Some(0.0))
            .then(|| value(&text, synced, &[("node", NODE)]))?
    })
    .await;
    assert!(
        frozen >= stopped_at - 1.0 && frozen <= now(),
        "frozen at {frozen}, lvmd stopped at {stopped_at}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = value(
        &scrape(node_metrics).await.expect("scrape"),
        synced,
        &[("node", NODE)],
    );
    assert_eq!(
        later,
        Some(frozen),
        "the timestamp stays while lvmd is away"
    );
    // Prometheus sees it too: TopoLVMLvmdUnreachable becomes active for node-a.
    active(Some(("TopoLVMLvmdUnreachable", NODE))).await;
    // The thin node, whose lvmd stays, is untouched.
    let thin_text = scrape(thin_metrics).await.expect("scrape");
    assert_eq!(
        value(&thin_text, reachable, &[("node", THIN_NODE)]),
        Some(1.0)
    );
    assert!(value(&thin_text, synced, &[("node", THIN_NODE)]).is_some_and(|t| t > frozen));
}
