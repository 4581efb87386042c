//! A crash storm through the whole local stack: operations on claims — create (a claim and a pod
//! using it), expand, snapshot (CreateSnapshot as external-snapshotter sends it, then
//! DeleteSnapshot a few operations later) and delete (pod and claim) — issued without waiting
//! for each other, while lvmd (with its `lvm` children, as a container runtime kills them),
//! topolvm-node and topolvm-controller are killed with SIGKILL at random moments and started
//! again; a claim being snapshotted keeps snapshot-controller's finalizer until its
//! CreateSnapshot has a final answer, as in a cluster. Then everything must settle: every live
//! claim Bound with its PV, LogicalVolume and LV; every deleted claim gone with all of them; no
//! PV Released or Failed; every Node's capacity annotation equal to `vgs` free. [`run`] panics
//! with what is left when something does not settle, and reports the LVs without their
//! LogicalVolume (orphans) and those missing.
//!
//! On the host (metadata-only LVM) lvmd refuses thick snapshots, which must then leave nothing
//! behind; in the VM (real device-mapper) they are made, and their origins are expanded and
//! deleted while they exist. With [`StormOptions::kubelet`] (VM only) the stack is one node with
//! a real kubelet, the pods really run, and the node side is judged by what kubelet reports too:
//! every live claim's pod running with its volume, its capacity and kubelet's volume stats at
//! the asked size, no volume mounted for a pod that is gone. Run by `tests/crash_storm.rs` and
//! topolvm-node's VM tier.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;

use crate::csi::Sidecars;
use crate::process::eventually;
use crate::stack::{self, DEVICE_CLASS, Stack, StackOptions};

/// The fixed seed when none is given.
pub const DEFAULT_SEED: u64 = 0x5EED_0F70_B01F;
/// How many operations a snapshot lives before its DeleteSnapshot.
const SNAPSHOT_LIFE: u32 = 4;

/// What to run.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub seed: u64,
    pub operations: u32,
    /// Real device-mapper (the VM) instead of metadata-only LVM on loop devices.
    pub real_activation: bool,
    /// One node with a real kubelet and containerd (the VM only), whose pods really run,
    /// instead of two nodes whose pods are only scheduled; see [`run`].
    pub kubelet: bool,
    /// The longest pause between two operations (a random share of it each time).
    pub pause: Duration,
    /// A crash before an operation with a chance of one in this many.
    pub kill_one_in: u64,
    /// How the operations are drawn.
    pub mix: Mix,
}

/// The relative weights of the operations. An expansion or a snapshot needs a Bound claim and is
/// skipped while there is none; a create is drawn instead of anything else while no claim lives.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub create: u64,
    pub expand: u64,
    pub snapshot: u64,
    pub delete: u64,
}

impl Default for Mix {
    /// 40 % creates, 20 % expansions, 10 % snapshots, 30 % deletions.
    fn default() -> Self {
        Self {
            create: 4,
            expand: 2,
            snapshot: 1,
            delete: 3,
        }
    }
}

impl StormOptions {
    /// The seed from `TOPOLVM_STORM_SEED` and the size from `TOPOLVM_STORM_OPS`, else the fixed
    /// seed and `operations`; pauses of up to 300 ms, a crash one operation in eight, the
    /// default [`Mix`].
    pub fn from_env(operations: u32) -> Self {
        let seed = std::env::var("TOPOLVM_STORM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SEED);
        let operations = std::env::var("TOPOLVM_STORM_OPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(operations);
        Self {
            seed,
            operations,
            real_activation: false,
            kubelet: false,
            pause: Duration::from_millis(300),
            kill_one_in: 8,
            mix: Mix::default(),
        }
    }
}

/// What a storm did and found.
#[derive(Default, Debug, Clone)]
pub struct StormReport {
    pub seed: u64,
    pub operations: u32,
    pub creates: u32,
    pub expands: u32,
    /// CreateSnapshot requests issued, and how many of them got a final refusal or a snapshot.
    pub snapshots: u32,
    pub snapshot_refusals: u32,
    pub snapshots_made: u32,
    pub deletes: u32,
    pub kills_lvmd: u32,
    pub kills_node: u32,
    pub kills_controller: u32,
    /// Claims Bound at the end.
    pub bound: usize,
    /// LVs on disk without their LogicalVolume.
    pub orphans: Vec<String>,
    /// LogicalVolumes whose LV is not on disk.
    pub missing: Vec<String>,
}

impl StormReport {
    /// Panics when an LV is left without its LogicalVolume or a LogicalVolume without its LV.
    pub fn assert_nothing_lost(&self) {
        assert!(self.orphans.is_empty(), "orphan LVs: {:?}", self.orphans);
        assert!(self.missing.is_empty(), "LVs missing: {:?}", self.missing);
    }
}

impl std::fmt::Display for StormReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crash storm seed={:#x}: {} operations ({} creates, {} expands, {} snapshots: {} made, {} refused; {} deletes), \
             {} kills (lvmd {}, topolvm-node {}, topolvm-controller {}); at the end {} claims Bound, {} orphan LVs, \
             {} LVs missing, 0 stuck claims, PVs or LogicalVolumes, annotations equal to vgs",
            self.seed,
            self.operations,
            self.creates,
            self.expands,
            self.snapshots,
            self.snapshots_made,
            self.snapshot_refusals,
            self.deletes,
            self.kills_lvmd + self.kills_node + self.kills_controller,
            self.kills_lvmd,
            self.kills_node,
            self.kills_controller,
            self.bound,
            self.orphans.len(),
            self.missing.len(),
        )
    }
}

const MIB: u64 = 1 << 20;
const CLASS: &str = "storm";
const MAX_LIVE: usize = 12;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Creates the claim and tries its pod once; false when the pod was refused (the webhook is
/// down with its controller) and must be tried again.
async fn create(client: &Client, name: &str, bytes: u64, runs: bool) -> bool {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::claim(name, CLASS, bytes))
        .await
        .expect("creating a claim");
    create_pod(client, name, runs).await
}

/// The pod using claim `name` (one kubelet can run when `runs`); false when the API server
/// refused it.
async fn create_pod(client: &Client, name: &str, runs: bool) -> bool {
    let pod = if runs {
        crate::kubelet::claim_pod(name, name)
    } else {
        stack::pod(name, name)
    };
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .is_ok()
}

/// A VolumeSnapshot's life as external-snapshotter drives it: CreateSnapshot repeated until its
/// answer is final, then (for a snapshot made, once the user deletes the VolumeSnapshot at
/// operation `at`) DeleteSnapshot repeated until it succeeds.
#[derive(Debug)]
enum SnapshotJob {
    Create {
        uid: String,
        handle: String,
        claim: String,
    },
    Delete {
        snapshot_id: String,
        at: u32,
    },
}

/// snapshot-controller's finalizer on a snapshot's source claim while the snapshot is not ready
/// (external-snapshotter, pkg/common-controller/snapshot_controller.go, `isPVCBeingUsed` and
/// `removePVCFinalizer`, at 6464d8261aaa): a claim deleted then stays until its CreateSnapshot
/// has a final answer, so the source is never gone under a CreateSnapshot repeated.
const SOURCE_PROTECTION: &str = "snapshot.storage.kubernetes.io/pvc-as-source-protection";

/// Adds (`on`) or removes [`SOURCE_PROTECTION`] on claim `name` as snapshot-controller does: a
/// read and an update, again on a conflict; nothing to do for a claim that is gone.
async fn protect_source(client: &Client, name: &str, on: bool) {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    loop {
        let Ok(mut claim) = claims.get(name).await else {
            return;
        };
        let finalizers = claim.metadata.finalizers.get_or_insert_default();
        if finalizers.iter().any(|f| f == SOURCE_PROTECTION) == on {
            return;
        }
        if on {
            finalizers.push(SOURCE_PROTECTION.to_owned());
        } else {
            finalizers.retain(|f| f != SOURCE_PROTECTION);
        }
        match claims.replace(name, &PostParams::default(), &claim).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("updating claim {name}'s finalizers: {e}"),
        }
    }
}

/// Whether the sidecars try a call again after this code (the connection lost, the deadline
/// passed, the driver busy), as opposed to a final answer.
fn retried(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | DeadlineExceeded | Unknown | Aborted | Cancelled
    )
}

/// One attempt at each job due at operation `op`; returns those still open.
async fn advance(
    jobs: Vec<SnapshotJob>,
    client: &Client,
    socket: &std::path::Path,
    counts: &mut StormReport,
    op: u32,
) -> Vec<SnapshotJob> {
    let Ok(mut sidecars) = Sidecars::connect(socket).await else {
        return jobs;
    };
    let mut open = Vec::new();
    for job in jobs {
        match job {
            SnapshotJob::Create { uid, handle, claim } => {
                let request = Sidecars::create_snapshot_request(&uid, &handle, &BTreeMap::new());
                match sidecars.create_snapshot(request).await {
                    Ok(made) => {
                        counts.snapshots_made += 1;
                        protect_source(client, &claim, false).await;
                        open.push(SnapshotJob::Delete {
                            snapshot_id: made.snapshot_id,
                            at: op.saturating_add(SNAPSHOT_LIFE),
                        });
                    }
                    Err(status) if retried(status.code()) => {
                        open.push(SnapshotJob::Create { uid, handle, claim });
                    }
                    Err(status) => {
                        println!("storm: CreateSnapshot {uid} refused: {status:?}");
                        counts.snapshot_refusals += 1;
                        protect_source(client, &claim, false).await;
                    }
                }
            }
            SnapshotJob::Delete { snapshot_id, at } => {
                if op < at || sidecars.delete_snapshot(&snapshot_id).await.is_err() {
                    open.push(SnapshotJob::Delete { snapshot_id, at });
                }
            }
        }
    }
    open
}

/// The claims of `live` that are Bound now, with their sizes.
async fn bound(
    claims: &Api<PersistentVolumeClaim>,
    live: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let Ok(list) = claims.list(&ListParams::default()).await else {
        return BTreeMap::new();
    };
    list.items
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .filter_map(|c| Some((c.name_any(), *live.get(&c.name_any())?)))
        .collect()
}

/// Deletes pod and claim `name`. Without a kubelet the pod goes at once (nothing would ever
/// finish its termination); a running pod gets its grace period, and its claim goes once kubelet
/// tore the pod's volume down.
async fn delete(client: &Client, name: &str, runs: bool) {
    let params = if runs {
        DeleteParams::default()
    } else {
        DeleteParams::default().grace_period(0)
    };
    let _ = Api::<Pod>::namespaced(client.clone(), "default")
        .delete(name, &params)
        .await;
    let _ = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .delete(name, &DeleteParams::default())
        .await;
}

/// Runs a storm on a new two-node stack; see the module documentation.
pub async fn run(options: StormOptions) -> StormReport {
    let StormOptions {
        seed,
        operations: ops,
        real_activation,
        kubelet,
        pause,
        kill_one_in,
        mix,
    } = options;
    // Spread the seed (xorshift must not start at 0; seeds 2 and 3 must differ).
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Two kubelets in one guest would collide (kubelet writes outside its root directory).
    let mut options = StackOptions::nodes(if kubelet { 1 } else { 2 }, 2048 * MIB);
    options.real_activation = real_activation;
    options.kubelet = kubelet;
    // Claims are 2 to 5 units and grow by one; the VM's scratch disks (one per node) are the
    // loop devices' size, and thick snapshots take as much again.
    let unit = if real_activation { 8 * MIB } else { 16 * MIB };
    // A claim deleted while its CreateVolume was cut short by a crash leaves a LogicalVolume no
    // claim or PV refers to (TopoLVM issue 1104): the stray scan removes it, here quickly.
    options.controller_args = vec![
        "--stray-volume-grace-period=5s".into(),
        "--stray-volume-scan-interval=2s".into(),
    ];
    let mut stack = Stack::start(options).await;
    let client = stack.cluster.client();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &stack::storage_class(CLASS, "ext4"))
        .await
        .expect("creating the StorageClass");
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    let pvs = Api::<PersistentVolume>::all(client.clone());

    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut counts = StormReport {
        seed,
        operations: ops,
        ..StormReport::default()
    };
    // What is down and when it comes back (in operations).
    let mut down: Vec<(usize, u32)> = Vec::new(); // (component, restart at op)
    let components = 1 + 2 * stack.nodes.len(); // controller, then (lvmd, node) per node
    let mut next_name = 0;
    // Pods refused while the webhook was down, tried again at every operation as a user would.
    let mut refused_pods: BTreeSet<String> = BTreeSet::new();
    // Snapshot requests in flight: external-snapshotter repeats one until its answer is final.
    let mut snapshot_jobs: Vec<SnapshotJob> = Vec::new();
    for op in 0..ops {
        if op > 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(pause.as_millis() as u64))).await;
        }
        snapshot_jobs = advance(
            std::mem::take(&mut snapshot_jobs),
            &client,
            &stack.controller_socket,
            &mut counts,
            op,
        )
        .await;
        let mut still_refused = BTreeSet::new();
        for name in std::mem::take(&mut refused_pods) {
            if live.contains_key(&name) && !create_pod(&client, &name, kubelet).await {
                still_refused.insert(name);
            }
        }
        refused_pods = still_refused;
        // Restarts due now.
        let mut still_down = Vec::new();
        for (component, at) in down.drain(..) {
            if at <= op {
                match component {
                    0 => stack.restart_controller(),
                    c if c % 2 == 1 => stack.nodes[(c - 1) / 2].lvmd.restart(),
                    c => stack.restart_agent((c - 2) / 2),
                }
            } else {
                still_down.push((component, at));
            }
        }
        down = still_down;
        // Now and then a crash of a component that is up.
        if rng.below(kill_one_in) == 0 {
            let component = rng.below(components as u64) as usize;
            if !down.iter().any(|(c, _)| *c == component) {
                match component {
                    0 => {
                        stack.kill_controller();
                        counts.kills_controller += 1;
                    }
                    c if c % 2 == 1 => {
                        stack.nodes[(c - 1) / 2].lvmd.kill9_with_children();
                        counts.kills_lvmd += 1;
                    }
                    c => {
                        stack.kill_agent((c - 2) / 2);
                        counts.kills_node += 1;
                    }
                }
                down.push((component, op + 1 + rng.below(4) as u32));
            }
        }
        let choice = rng.below(mix.create + mix.expand + mix.snapshot + mix.delete);
        let pick = |rng: &mut Rng, live: &BTreeMap<String, u64>| {
            live.keys()
                .nth(rng.below(live.len() as u64) as usize)
                .cloned()
        };
        if live.is_empty() || (choice < mix.create && live.len() < MAX_LIVE) {
            let name = format!("storm-{next_name}");
            next_name += 1;
            let bytes = (2 + rng.below(4)) * unit;
            if !create(&client, &name, bytes, kubelet).await {
                refused_pods.insert(name.clone());
            }
            live.insert(name, bytes);
            counts.creates += 1;
        } else if choice < mix.create + mix.expand {
            // Only a Bound claim may grow (the API server refuses the others).
            let Some(name) = pick(&mut rng, &bound(&claims, &live).await) else {
                continue;
            };
            let bytes = live[&name] + unit;
            let patch =
                json!({"spec": {"resources": {"requests": {"storage": bytes.to_string()}}}});
            if claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                live.insert(name, bytes);
                counts.expands += 1;
            }
        } else if choice < mix.create + mix.expand + mix.snapshot {
            let Some(name) = pick(&mut rng, &bound(&claims, &live).await) else {
                continue;
            };
            // external-snapshotter's request for a VolumeSnapshot of a bound claim.
            let handle = async {
                let volume = claims.get(&name).await.ok()?.spec?.volume_name?;
                Some(pvs.get(&volume).await.ok()?.spec?.csi?.volume_handle)
            }
            .await;
            if let Some(handle) = handle {
                counts.snapshots += 1;
                protect_source(&client, &name, true).await;
                snapshot_jobs.push(SnapshotJob::Create {
                    uid: format!("storm-{op}"),
                    handle,
                    claim: name,
                });
            }
        } else {
            let Some(name) = pick(&mut rng, &live) else {
                continue;
            };
            delete(&client, &name, kubelet).await;
            live.remove(&name);
            deleted.insert(name);
            counts.deletes += 1;
        }
    }
    for (component, _) in down.drain(..) {
        match component {
            0 => stack.restart_controller(),
            c if c % 2 == 1 => stack.nodes[(c - 1) / 2].lvmd.restart(),
            c => stack.restart_agent((c - 2) / 2),
        }
    }
    let settle_snapshots = std::time::Instant::now() + Duration::from_secs(120);
    while !snapshot_jobs.is_empty() {
        assert!(
            std::time::Instant::now() < settle_snapshots,
            "snapshot requests without a final answer: {snapshot_jobs:?}"
        );
        snapshot_jobs = advance(
            std::mem::take(&mut snapshot_jobs),
            &client,
            &stack.controller_socket,
            &mut counts,
            u32::MAX,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in std::mem::take(&mut refused_pods) {
        eventually("a refused pod admitted", Duration::from_secs(60), || {
            let client = client.clone();
            let name = name.clone();
            async move { create_pod(&client, &name, kubelet).await.then_some(()) }
        })
        .await;
    }

    // Everything settles: every live claim Bound at its size, every deleted one gone.
    let settle = Duration::from_secs(240);
    for (name, bytes) in &live {
        eventually(
            &format!("{name} Bound at {bytes} bytes or more"),
            settle,
            || {
                let claims = claims.clone();
                let pvs = pvs.clone();
                async move {
                    let c = claims.get(name).await.ok()?;
                    if c.status?.phase.as_deref() != Some("Bound") {
                        return None;
                    }
                    let pv = pvs.get(&c.spec?.volume_name?).await.ok()?;
                    let size =
                        topolvm_core::quantity::quantity_bytes(pv.spec?.capacity?.get("storage")?)
                            .ok()?;
                    (size >= *bytes).then_some(())
                }
            },
        )
        .await;
    }
    // Deleted claims go with their PVs and LogicalVolumes; what is left is described on failure.
    let deadline = std::time::Instant::now() + settle;
    loop {
        let left: Vec<PersistentVolumeClaim> = claims
            .list(&ListParams::default())
            .await
            .expect("claims")
            .items
            .into_iter()
            .filter(|c| deleted.contains(&c.name_any()))
            .collect();
        let pv_left = pvs.list(&ListParams::default()).await.expect("PVs").items;
        let lv_left = Api::<LogicalVolume>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("LogicalVolumes")
            .items;
        if left.is_empty() && pv_left.len() == live.len() && lv_left.len() == live.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let claims: Vec<String> = left
                .iter()
                .map(|c| {
                    format!(
                        "{} phase={:?} deleting={} finalizers={:?}",
                        c.name_any(),
                        c.status.as_ref().and_then(|s| s.phase.clone()),
                        c.metadata.deletion_timestamp.is_some(),
                        c.finalizers()
                    )
                })
                .collect();
            let pv_desc: Vec<String> = pv_left
                .iter()
                .map(|p| {
                    format!(
                        "{} phase={:?} claim={:?}",
                        p.name_any(),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.spec
                            .as_ref()
                            .and_then(|s| s.claim_ref.as_ref())
                            .and_then(|r| r.name.clone())
                    )
                })
                .collect();
            let lv_desc: Vec<String> = lv_left
                .iter()
                .map(|l| {
                    format!(
                        "{} node={} deleting={} finalizers={:?} annotations={:?} status={:?}",
                        l.name_any(),
                        l.spec.node_name,
                        l.metadata.deletion_timestamp.is_some(),
                        l.finalizers(),
                        l.annotations(),
                        l.status
                    )
                })
                .collect();
            panic!(
                "not settled within {settle:?}: live {live:?}\nclaims left: {claims:#?}\nPVs: {pv_desc:#?}\nLogicalVolumes: {lv_desc:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pv_list = pvs.list(&ListParams::default()).await.expect("PVs").items;
    for pv in &pv_list {
        let phase = pv.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Bound"), "{}", pv.name_any());
    }
    // Every LV belongs to a LogicalVolume of its node, and every LogicalVolume has its LV.
    let objects = Api::<LogicalVolume>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("LogicalVolumes")
        .items;
    let mut orphans = Vec::new();
    let mut missing = Vec::new();
    for node in &stack.nodes {
        let on_disk: BTreeSet<String> = stack
            .env
            .lvs(node.vg.name(), "lv_name")
            .iter()
            .map(|r| r.get("lv_name").to_owned())
            .collect();
        let expected: BTreeSet<String> = objects
            .iter()
            .filter(|o| o.spec.node_name == node.name)
            .filter_map(|o| o.status.as_ref().map(|s| s.volume_id.clone()))
            .collect();
        orphans.extend(on_disk.difference(&expected).cloned());
        missing.extend(expected.difference(&on_disk).cloned());
        eventually(
            &format!("{}'s annotation settled", node.name),
            settle,
            || {
                let client = client.clone();
                let vg = &node.vg;
                let name = node.name.clone();
                async move {
                    let n = Api::<Node>::all(client).get(&name).await.ok()?;
                    let value: u64 = n
                        .annotations()
                        .get(&names::capacity_annotation_key(DEVICE_CLASS))?
                        .parse()
                        .ok()?;
                    (value == vg.sizes().get_u64("vg_free")).then_some(())
                }
            },
        )
        .await;
    }
    if kubelet {
        kubelet_agrees(&stack, &live, settle).await;
    }
    stack.controller.assert_running();
    for node in &mut stack.nodes {
        node.agent.assert_running();
    }
    counts.bound = live.len();
    counts.orphans = orphans;
    counts.missing = missing;
    counts
}

/// The node side as kubelet reports it, once the API objects settled: every live claim's pod
/// runs with its volume mounted where kubelet asked topolvm-node to publish it, and its claim's
/// capacity is at least what was asked (kubelet's NodeExpandVolume after each expansion);
/// kubelet's `kubelet_volume_stats_*` has each live claim at a filesystem of about that size;
/// every deleted claim's pod is gone, and nothing is mounted under kubelet's root for a pod that
/// does not exist.
async fn kubelet_agrees(stack: &Stack, live: &BTreeMap<String, u64>, settle: Duration) {
    let client = stack.cluster.client();
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    let runtime = stack.nodes[0]
        .runtime
        .as_ref()
        .expect("a storm with kubelet runs one");
    let pods_dir = runtime.kubelet.root_dir().join("pods");
    for (name, bytes) in live {
        eventually(
            &format!("pod {name} running with its volume"),
            settle,
            || {
                let pods = pods.clone();
                async move {
                    let pod = pods.get(name).await.ok()?;
                    let statuses = pod.status?.container_statuses?;
                    statuses
                        .iter()
                        .all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
                        .then_some(())
                }
            },
        )
        .await;
        eventually(
            &format!("{name}'s capacity at {bytes} bytes or more"),
            settle,
            || {
                let claims = claims.clone();
                async move {
                    let c = claims.get(name).await.ok()?;
                    let capacity = c.status?.capacity?;
                    let size =
                        topolvm_core::quantity::quantity_bytes(capacity.get("storage")?).ok()?;
                    (size >= *bytes).then_some(())
                }
            },
        )
        .await;
        let uid = pods.get(name).await.expect("the pod").uid().expect("a uid");
        let pv = claims
            .get(name)
            .await
            .expect("the claim")
            .spec
            .and_then(|s| s.volume_name)
            .expect("a bound claim");
        let target = crate::csi::filesystem_target(runtime.kubelet.root_dir(), &uid, &pv);
        assert!(
            crate::mounts::mount_points_under(&target).contains(&target),
            "{name}'s volume not mounted at {target:?}"
        );
    }
    // kubelet gathers volume stats every volumeStatsAggPeriod (10 s in the test bed).
    eventually(
        "kubelet_volume_stats_* of every live claim",
        settle,
        || async {
            let metrics = runtime.kubelet.metrics().await.ok()?;
            live.iter()
                .all(|(name, bytes)| {
                    let label = format!("persistentvolumeclaim=\"{name}\"");
                    metrics
                        .lines()
                        .filter(|l| l.starts_with("kubelet_volume_stats_capacity_bytes{"))
                        .filter(|l| l.contains(&label))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        // ext4's own metadata takes up to a fifth of these small filesystems.
                        .any(|capacity| capacity >= *bytes as f64 * 0.75)
                })
                .then_some(())
        },
    )
    .await;
    let all = pods.list(&ListParams::default()).await.expect("pods").items;
    let left: Vec<String> = all
        .iter()
        .map(|p| p.name_any())
        .filter(|n| !live.contains_key(n))
        .collect();
    assert!(left.is_empty(), "pods of deleted claims left: {left:?}");
    let uids: BTreeSet<String> = all.iter().filter_map(|p| p.uid()).collect();
    let stale: Vec<std::path::PathBuf> = crate::mounts::mount_points_under(&pods_dir)
        .into_iter()
        .filter(|point| {
            let uid = point
                .strip_prefix(&pods_dir)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            uid.is_none_or(|uid| !uids.contains(&uid))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "volumes mounted for pods that are gone: {stale:?}"
    );
}
