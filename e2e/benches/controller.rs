//! Benchmark (not a test) of topolvm-controller against the test bed's real kube-apiserver, the
//! real topolvm-node and a real lvmd on a loop device (lvm2 in metadata-only mode; root). Every
//! binary is the release build:
//!
//!     cargo build --release -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node -p topolvm-controller --bin topolvm-controller
//!     cargo bench -p topolvm-e2e --features e2e --bench controller [-- PART SAMPLES VOLUMES]
//!
//! `PART` is `latency`, `memory` or both (the default).
//!
//! 1. CreateVolume latency (`SAMPLES` calls, default 50): first a bare `lvm lvcreate` + `lvremove`
//!    `SAMPLES` times on the volume group, with lvmd's own argument list (size in bytes, its tags,
//!    `-W y -y`) and its LVM configuration (the same `LVM_SYSTEM_DIR`, activation off); then
//!    lvmd, topolvm-node and topolvm-controller start on that volume group and the sidecars'
//!    CreateVolume (`topolvm_e2e::csi::Sidecars`, from a real PVC and StorageClass) is timed
//!    `SAMPLES` times, each followed by a timed DeleteVolume, so every call meets the same
//!    volume group state as the bare commands. A watch of our own splits each call into the
//!    object appearing, the node's status write and the controller's answer. The target is the
//!    bare p50 + 100 ms.
//! 2. Memory: the controller's resident set once its caches hold `VOLUMES` LogicalVolumes
//!    (default 10,000, with status, as topolvm-node leaves them). Target: at most 60 MiB.
//!
//! Set `RUST_LOG` to change the components' log level (default `info`, as deployed) and
//! `TOPOLVM_BENCH_LOGS=<dir>` to keep their logs (with timestamps) in `<dir>`.
//!
//! Results are in e2e/README.md. Nothing here asserts a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::csi::Sidecars;
use topolvm_e2e::lvm::{self as common, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, eventually, rss_kib, workspace_binary};
use topolvm_e2e::stack::{self, AgentEndpoints, node_agent_args};
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{
    AccessMode, AccessType, MountVolume, access_mode::Mode,
};

const NODE: &str = "bench-node";
const CLASS: &str = "ssd";
const MIB: u64 = 1 << 20;
/// Above ext4's minimum allocation (32 MiB), so the LV is exactly the request.
const VOLUME_BYTES: u64 = 64 * MIB;
/// Untimed CreateVolume + DeleteVolume rounds first: connections, caches, page cache.
const WARM_UP: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Figures

struct Summary {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(samples: &[Duration]) -> Self {
        let mut s = samples.to_vec();
        s.sort();
        let at = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {} | {} | {} |",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Where the components write their logs: `TOPOLVM_BENCH_LOGS` or a temporary directory.
struct LogDir {
    _tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl LogDir {
    fn new(part: &str) -> Self {
        match std::env::var_os("TOPOLVM_BENCH_LOGS") {
            Some(dir) => {
                let path = PathBuf::from(dir).join(part);
                std::fs::create_dir_all(&path).expect("creating the log directory");
                Self { _tmp: None, path }
            }
            None => {
                let tmp = tempfile::tempdir().expect("tmp");
                Self {
                    path: tmp.path().to_owned(),
                    _tmp: Some(tmp),
                }
            }
        }
    }
}

fn log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}

fn start_node_agent(cluster: &Cluster, lvmd: &Lvmd, dir: &Path) -> ManagedProcess {
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.args(node_agent_args(
        cluster,
        NODE,
        lvmd.socket_path(),
        &AgentEndpoints::under(&dir.join("node")),
    ))
    .env("RUST_LOG", log_level());
    ManagedProcess::spawn("topolvm-node", cmd, &dir.join("node.log"))
}

// ---------------------------------------------------------------------------------------------
// 1. CreateVolume latency

async fn make_pvc(api: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    api.create(
        &PostParams::default(),
        &stack::claim(name, "topolvm-ssd", VOLUME_BYTES),
    )
    .await
    .unwrap_or_else(|e| panic!("creating PVC {name}: {e}"))
}

/// Runs `lvm <args>` in `env` and returns how long it took; panics if it fails.
fn timed_lvm(env: &LvmEnv, args: &[String]) -> Duration {
    let started = Instant::now();
    let out = env
        .command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running lvm");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "lvm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// `lvcreate` + `lvremove` as lvmd runs them for a thick class (lvmd/src/lvm/args.rs), timed.
fn bare_lvm(env: &LvmEnv, vg: &str, samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut created = Vec::new();
    let mut removed = Vec::new();
    for i in 0..WARM_UP + samples {
        let name = format!("bare-{i}");
        let mut create: Vec<String> = [
            "lvcreate",
            "-n",
            &name,
            "-L",
            &format!("{VOLUME_BYTES}b"),
            "-W",
            "y",
            "-y",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for tag in [
            names::LV_TAG_MANAGED.to_owned(),
            names::lv_tag_volume_id(&name),
            names::lv_tag_device_class(CLASS),
        ] {
            create.push("--addtag".to_owned());
            create.push(tag);
        }
        create.push(vg.to_owned());
        let c = timed_lvm(env, &create);
        let r = timed_lvm(
            env,
            &[
                "lvremove".to_owned(),
                "-y".to_owned(),
                format!("{vg}/{name}"),
            ],
        );
        if i >= WARM_UP {
            created.push(c);
            removed.push(r);
        }
    }
    (created, removed)
}

/// When our own watch first saw each LogicalVolume, and first saw its `status.volumeID`.
#[derive(Default)]
struct Sightings {
    created: HashMap<String, Instant>,
    provisioned: HashMap<String, Instant>,
}

fn watch_logical_volumes(api: Api<LogicalVolume>) -> Arc<Mutex<Sightings>> {
    let sightings = Arc::new(Mutex::new(Sightings::default()));
    let out = sightings.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            if let Ok(watcher::Event::Apply(lv) | watcher::Event::InitApply(lv)) = event {
                let mut s = out.lock().expect("sightings");
                let name = lv.name_any();
                s.created.entry(name.clone()).or_insert(now);
                if lv.status.as_ref().is_some_and(|s| !s.volume_id.is_empty()) {
                    s.provisioned.entry(name).or_insert(now);
                }
            }
        }
    });
    sightings
}

async fn latency(samples: usize) {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let admin = cluster.client();
    let class = Api::<StorageClass>::all(admin.clone())
        .create(
            &PostParams::default(),
            &stack::storage_class_of("topolvm-ssd", CLASS, Some("ext4")),
        )
        .await
        .expect("StorageClass");
    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(1 << 30)]);

    // The bare commands first, while nothing else touches the volume group.
    let (bare_create, bare_remove) = bare_lvm(&env, vg.name(), samples);

    let dir = LogDir::new("latency");
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));
    let mut node_agent = start_node_agent(&cluster, &lvmd, &dir.path);
    let (mut controller, mut sidecars) =
        stack::start_controller(&cluster, &dir.path, &log_level()).await;
    // The node agent is up once its capacity annotation reaches the controller.
    eventually("the controller to see the node's capacity", WAIT, || {
        let mut sidecars = sidecars.clone();
        let request = Sidecars::get_capacity_request(&class, Some(NODE));
        async move {
            let bytes = sidecars.get_capacity(request).await.ok()?;
            (bytes > 0).then_some(())
        }
    })
    .await;

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), "default");
    let nodes: Vec<Node> = Api::<Node>::all(admin.clone())
        .list(&Default::default())
        .await
        .expect("nodes")
        .items;
    let mut requests = Vec::new();
    for i in 0..WARM_UP + samples {
        let pvc = make_pvc(&pvcs, &format!("bench-{i}")).await;
        requests
            .push(Sidecars::create_volume_request(&pvc, &class, NODE, &nodes).expect("request"));
    }
    let sightings = watch_logical_volumes(Api::all(admin.clone()));
    // Let the watch list before the first call.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut create = Vec::new();
    let mut object_seen = Vec::new();
    let mut status_seen = Vec::new();
    let mut answer_after_status = Vec::new();
    let mut delete = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let name = request.name.clone();
        let asked = Instant::now();
        let volume = sidecars
            .create_volume(request)
            .await
            .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"));
        let answered = Instant::now();
        assert_eq!(volume.capacity_bytes, VOLUME_BYTES as i64);
        let deleting = Instant::now();
        sidecars
            .delete_volume(&volume.volume_id)
            .await
            .unwrap_or_else(|e| panic!("DeleteVolume {name}: {e}"));
        let deleted = Instant::now();
        if i < WARM_UP {
            continue;
        }
        create.push(answered - asked);
        delete.push(deleted - deleting);
        let s = sightings.lock().expect("sightings");
        if let (Some(&made), Some(&done)) = (s.created.get(&name), s.provisioned.get(&name)) {
            object_seen.push(made.saturating_duration_since(asked));
            status_seen.push(done.saturating_duration_since(asked));
            answer_after_status.push(answered.saturating_duration_since(done));
        }
    }
    let lvs_left = env.lv_names(vg.name());
    assert!(lvs_left.is_empty(), "LVs left behind: {lvs_left:?}");
    node_agent.assert_running();
    controller.assert_running();
    let (rss, hwm) = rss_kib(controller.pid().expect("pid"));

    let bare = Summary::of(&bare_create);
    let through = Summary::of(&create);
    println!();
    println!("CreateVolume through topolvm-controller + topolvm-node + lvmd against bare lvm");
    println!(
        "({samples} samples each, {} MiB thick volume, lvm2 metadata-only)",
        VOLUME_BYTES / MIB
    );
    println!("| call | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!("{}", bare.row("bare `lvcreate`"));
    println!("{}", through.row("CreateVolume"));
    if !status_seen.is_empty() {
        println!(
            "{}",
            Summary::of(&object_seen).row("… call to LogicalVolume seen by a watch")
        );
        println!(
            "{}",
            Summary::of(&status_seen).row("… call to status.volumeID seen by a watch")
        );
        println!(
            "{}",
            Summary::of(&answer_after_status).row("… status seen to answer")
        );
    }
    println!("{}", Summary::of(&bare_remove).row("bare `lvremove`"));
    println!("{}", Summary::of(&delete).row("DeleteVolume"));
    let target = bare.p50 + Duration::from_millis(100);
    let verdict = if through.p50 <= target {
        format!("met, {} to spare", ms(target - through.p50))
    } else {
        format!("missed by {}", ms(through.p50 - target))
    };
    println!(
        "target: CreateVolume p50 <= bare p50 + 100 ms = {}; measured {}: {verdict}",
        ms(target),
        ms(through.p50)
    );
    println!(
        "controller RSS after the run: {} (peak {})",
        mib(rss),
        mib(hwm)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Memory with many LogicalVolumes

async fn memory(count: usize) {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let api: Api<LogicalVolume> = Api::all(cluster.client());
    let name_of = |i: usize| format!("pvc-{i:08}-0000-4000-8000-000000000000");
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let name = name_of(i);
            async move {
                let lv: LogicalVolume = serde_json::from_value(json!({
                    "apiVersion": "topolvm.io/v1",
                    "kind": "LogicalVolume",
                    "metadata": {
                        "name": name,
                        "labels": {
                            names::LOGICAL_VOLUME_NODE_LABEL: NODE,
                            names::CREATED_BY_LABEL: names::CREATED_BY_VALUE,
                        },
                        "finalizers": [names::LOGICAL_VOLUME_FINALIZER],
                    },
                    "spec": {"name": name, "nodeName": NODE, "size": "1Gi", "deviceClass": CLASS},
                }))
                .expect("a LogicalVolume");
                let created = api
                    .create(&PostParams::default(), &lv)
                    .await
                    .expect("create");
                let status = json!({"status": {
                    "volumeID": created.uid().expect("uid"),
                    "currentSize": "1Gi",
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .expect("status");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let made_in = started.elapsed();

    let dir = LogDir::new("memory");
    let (controller, mut sidecars) =
        stack::start_controller(&cluster, &dir.path, &log_level()).await;
    let pid = controller.pid().expect("pid");
    let (rss_started, _) = rss_kib(pid);
    // GetCapacity waits for the caches' first listing: once it answers, all are loaded.
    sidecars.timeout = Duration::from_secs(120);
    let loading = Instant::now();
    sidecars
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .expect("GetCapacity");
    let loaded_in = loading.elapsed();
    // A lookup by id that must come from the cache.
    let last = api.get(&name_of(count - 1)).await.expect("get");
    let confirmed = sidecars
        .controller()
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: last.uid().expect("uid"),
            volume_capabilities: vec![csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }],
            ..Default::default()
        })
        .await
        .expect("validate");
    assert!(confirmed.into_inner().confirmed.is_some());
    // Let the allocator settle after the listing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, hwm) = rss_kib(pid);

    println!();
    println!("topolvm-controller with {count} LogicalVolumes (with status) in the cluster");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| {count} LogicalVolumes made in | {:.1} s |",
        made_in.as_secs_f64()
    );
    println!("| RSS at start | {} |", mib(rss_started));
    println!(
        "| caches loaded (first GetCapacity answered) in | {:.1} s |",
        loaded_in.as_secs_f64()
    );
    println!(
        "| RSS with the caches loaded | {} (peak {}) |",
        mib(rss),
        mib(hwm)
    );
    println!("target: RSS <= 60 MiB");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let samples = numbers.first().copied().unwrap_or(50).max(1);
    let volumes = numbers.get(1).copied().unwrap_or(10_000).max(1);
    let only_latency = args.iter().any(|a| a == "latency");
    let only_memory = args.iter().any(|a| a == "memory");
    let (run_latency, run_memory) = match (only_latency, only_memory) {
        (false, false) => (true, true),
        chosen => chosen,
    };
    common::require_lvm();
    common::require_loop_devices();
    if run_latency {
        latency(samples).await;
    }
    if run_memory {
        memory(volumes).await;
    }
}
