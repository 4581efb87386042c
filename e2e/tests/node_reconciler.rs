//! topolvm-node's LogicalVolume reconciler and orphan scan against the test bed's real
//! kube-apiserver (1.20) and a real lvmd on loop devices (lvm2 in metadata-only mode, thick
//! classes only; root), with topolvm-node running under its own RBAC identity:
//!
//! ```text
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node
//! cargo test -p topolvm-e2e --features e2e --test node_reconciler
//! ```
//!
//! A LogicalVolume made as TopoLVM's controller makes it (no labels) gets our node label,
//! TopoLVM's created-by label and finalizer, an LV named by its UID with our tags (`lvs` is the
//! judge), and TopoLVM's status; growing it grows the LV; an unknown device class is status code
//! 8 (RESOURCE_EXHAUSTED); topolvm-node killed with SIGKILL at each step and restarted loses and
//! doubles nothing; deleting the object removes the LV and then the object. An LV with our tags
//! whose LogicalVolume is gone is reported (Event on the Node, gauge) and, with
//! `--orphan-gc-after`, removed; an LV made by hand is never touched.
#![cfg(feature = "e2e")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions, eventually_gone};
use topolvm_e2e::lvm::{
    self as common, DEFAULT_LOOP_SIZE, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup,
};
use topolvm_e2e::process::{ManagedProcess, eventually, free_port, workspace_binary};
use topolvm_proto::lvmd as pb;

const NODE: &str = "node-a";
const CLASS: &str = "ssd";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// topolvm-node as a DaemonSet would run it, killed or restarted at will.
struct NodeAgent {
    process: Option<ManagedProcess>,
    lvmd_socket: PathBuf,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    metrics: SocketAddr,
    starts: usize,
}

impl NodeAgent {
    fn new(lvmd_socket: &Path, kubeconfig: &Path, log_dir: &Path) -> Self {
        Self {
            process: None,
            lvmd_socket: lvmd_socket.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            log_dir: log_dir.to_owned(),
            metrics: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            starts: 0,
        }
    }

    fn start(&mut self, orphan_gc_after: Option<&str>) {
        assert!(self.process.is_none(), "already running");
        self.starts += 1;
        let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
        cmd.arg("--nodename")
            .arg(NODE)
            .arg("--lvmd-socket")
            .arg(&self.lvmd_socket)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--metrics-bind-address")
            .arg(self.metrics.to_string())
            .arg("--health-probe-bind-address")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--orphan-scan-interval")
            .arg("1s")
            // The CSI socket in the test's own dir, never the host's /run/topolvm.
            .arg("--csi-socket")
            .arg(self.log_dir.join("csi.sock"))
            .arg("--kubelet-dir")
            .arg(self.log_dir.join("kubelet"))
            .env("RUST_LOG", "topolvm_node=debug,info");
        if let Some(after) = orphan_gc_after {
            cmd.arg("--orphan-gc-after").arg(after);
        }
        let log = self.log_dir.join(format!("node-{}.log", self.starts));
        self.process = Some(ManagedProcess::spawn("topolvm-node", cmd, &log));
    }

    /// SIGKILL, as a crash or an OOM kill.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    fn assert_running(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.assert_running();
        }
    }
}

/// A LogicalVolume as TopoLVM's controller creates it: no labels, no finalizer, no status.
async fn create_as_topolvm_controller(
    api: &Api<LogicalVolume>,
    name: &str,
    class: &str,
    size: &str,
) -> LogicalVolume {
    let lv: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "topolvm.io/v1",
        "kind": "LogicalVolume",
        "metadata": {"name": name},
        "spec": {"name": name, "nodeName": NODE, "size": size, "deviceClass": class},
    }))
    .expect("a LogicalVolume");
    api.create(&PostParams::default(), &lv)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"))
}

/// The LV rows (`lv_name`, `lv_size`, `lv_tags`) of the volume group.
fn lvs(env: &LvmEnv, vg: &VolumeGroup) -> Vec<common::ReportRow> {
    env.lvs(vg.name(), "lv_name,lv_size,lv_tags")
}

fn lv_names(env: &LvmEnv, vg: &VolumeGroup) -> BTreeSet<String> {
    lvs(env, vg)
        .iter()
        .map(|r| r.get("lv_name").to_owned())
        .collect()
}

/// Waits until `name` is ready: our labels and finalizer, status.volumeID = its UID and
/// status.currentSize = `size`; returns it.
async fn wait_ready(api: &Api<LogicalVolume>, name: &str, size: &str) -> LogicalVolume {
    eventually(&format!("{name} ready with {size}"), WAIT, || async {
        let lv = api.get(name).await.expect("get");
        let labels = lv.labels();
        let status = lv.status.clone().unwrap_or_default();
        let ready = labels
            .get(names::LOGICAL_VOLUME_NODE_LABEL)
            .map(String::as_str)
            == Some(NODE)
            && labels.get(names::CREATED_BY_LABEL).map(String::as_str)
                == Some("topolvm-controller")
            && lv
                .finalizers()
                .iter()
                .any(|f| f == "topolvm.io/logicalvolume")
            && Some(status.volume_id.as_str()) == lv.uid().as_deref()
            && status.current_size.as_ref().map(|q| q.0.as_str()) == Some(size)
            && status.code == 0;
        ready.then_some(lv)
    })
    .await
}

async fn metrics(agent: &NodeAgent) -> String {
    common::http_get(agent.metrics, "/metrics")
        .await
        .unwrap_or_default()
}

async fn node_events(events: &Api<Event>, reason: &str) -> Vec<String> {
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.involved_object.kind.as_deref() == Some("Node")
                && e.involved_object.name.as_deref() == Some(NODE)
        })
        .filter_map(|e| e.message)
        .collect()
}

/// A pod bound to this node (no kubelet runs it); returns its UID.
async fn make_pod_on_node(cluster: &Cluster) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client(), "default");
    // No controller-manager makes the default ServiceAccount, which admission requires.
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("account");
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating the default ServiceAccount: {e}"),
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ephemeral-owner"},
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "example.invalid/none"}],
        },
    }))
    .expect("a pod");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating a pod on the node");
    pod.uid().expect("uid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_volumes_become_lvs_through_crashes_and_orphans_are_found() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let api: Api<LogicalVolume> = Api::all(cluster.client());
    let events: Api<Event> = Api::namespaced(cluster.client(), "default");

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));
    let mut lvmd_lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut agent = NodeAgent::new(
        lvmd.socket_path(),
        cluster.kubeconfig("topolvm-node"),
        dir.path(),
    );
    agent.start(None);

    // An LV made by hand, which must survive everything below.
    vg.create_lv_by_hand("by-hand", "8m");

    // Another node's object, as TopoLVM's controller makes it: never touched.
    let other: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "topolvm.io/v1",
        "kind": "LogicalVolume",
        "metadata": {"name": "lv-other"},
        "spec": {"name": "lv-other", "nodeName": "node-b", "size": "8Mi", "deviceClass": CLASS},
    }))
    .expect("a LogicalVolume");
    api.create(&PostParams::default(), &other)
        .await
        .expect("another node's object");

    // 1. Create, as TopoLVM's controller does it.
    create_as_topolvm_controller(&api, "lv-a", CLASS, "16Mi").await;
    let lv_a = wait_ready(&api, "lv-a", "16Mi").await;
    let uid_a = lv_a.uid().expect("uid");
    let row = lvs(&env, &vg)
        .into_iter()
        .find(|r| r.get("lv_name") == uid_a)
        .expect("an LV named by the object's UID");
    assert_eq!(row.get_u64("lv_size"), 16 * MIB);
    let tags = row.tags("lv_tags");
    for tag in [
        names::LV_TAG_MANAGED.to_owned(),
        names::lv_tag_logical_volume("lv-a"),
        names::lv_tag_device_class(CLASS),
    ] {
        assert!(tags.contains(&tag), "{tag} in {tags:?}");
    }

    // 2. SIGKILL and restart: nothing changes, nothing is made twice.
    agent.kill();
    agent.start(None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.assert_running();
    assert_eq!(
        lv_names(&env, &vg),
        BTreeSet::from(["by-hand".to_owned(), uid_a.clone()])
    );
    assert_eq!(wait_ready(&api, "lv-a", "16Mi").await.status, lv_a.status);

    let other = api.get("lv-other").await.expect("get");
    assert!(
        other.labels().is_empty() && other.finalizers().is_empty() && other.status.is_none(),
        "another node's object is left alone: {:?}",
        other.metadata
    );
    api.delete("lv-other", &DeleteParams::default())
        .await
        .expect("delete lv-other");

    // 3. Grow.
    grow_to_32_mib(&api, &env, &vg, "lv-a", &uid_a).await;

    // 4. A device class this node does not have: RESOURCE_EXHAUSTED (8), so the provisioner
    // reschedules; no LV.
    create_as_topolvm_controller(&api, "lv-bad", "nvme", "8Mi").await;
    let bad = eventually("lv-bad's status code", WAIT, || async {
        let lv = api.get("lv-bad").await.expect("get");
        lv.status.filter(|s| s.code != 0)
    })
    .await;
    assert_eq!(bad.code, 8, "{bad:?}");
    assert!(bad.message.contains("nvme"), "{bad:?}");
    assert!(bad.volume_id.is_empty());

    // 5. Killed while objects arrive, and killed between CreateLV and the status write (played
    // by calling lvmd's CreateLV as the node would have): after the restart each object has
    // exactly its one LV.
    agent.kill();
    create_as_topolvm_controller(&api, "lv-b", CLASS, "8Mi").await;
    let lv_c = create_as_topolvm_controller(&api, "lv-c", CLASS, "8Mi").await;
    let uid_c = lv_c.uid().expect("uid");
    lvmd_lv
        .create_lv(pb::CreateLvRequest {
            name: uid_c.clone(),
            device_class: CLASS.into(),
            size_bytes: (8 * MIB) as i64,
            tags: vec![names::lv_tag_logical_volume("lv-c")],
            ..Default::default()
        })
        .await
        .expect("CreateLV before the crash");
    agent.start(None);
    let uid_b = wait_ready(&api, "lv-b", "8Mi").await.uid().expect("uid");
    wait_ready(&api, "lv-c", "8Mi").await;
    assert_eq!(
        lv_names(&env, &vg),
        BTreeSet::from([
            "by-hand".to_owned(),
            uid_a.clone(),
            uid_b.clone(),
            uid_c.clone()
        ]),
        "one LV per object, never two"
    );

    // 5b. Killed in the middle of a burst: some objects are done, some half-way (finalizer or
    // label patched, CreateLV sent or not); after the restart each has exactly one LV.
    let burst: Vec<String> = (0..6).map(|i| format!("lv-burst-{i}")).collect();
    for name in &burst {
        create_as_topolvm_controller(&api, name, CLASS, "8Mi").await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    agent.kill();
    agent.start(None);
    let mut burst_uids = BTreeSet::new();
    for name in &burst {
        burst_uids.insert(wait_ready(&api, name, "8Mi").await.uid().expect("uid"));
    }
    let mut expected: BTreeSet<String> = BTreeSet::from([
        "by-hand".to_owned(),
        uid_a.clone(),
        uid_b.clone(),
        uid_c.clone(),
    ]);
    expected.extend(burst_uids.iter().cloned());
    assert_eq!(
        lv_names(&env, &vg),
        expected,
        "one LV per object after a crash mid-burst"
    );
    for name in &burst {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.kill();
    agent.start(None);
    eventually("the burst's LVs gone", WAIT, || async {
        let names = lv_names(&env, &vg);
        burst_uids.is_disjoint(&names).then_some(())
    })
    .await;
    eventually("the burst's objects gone", WAIT, || async {
        let left = api.list(&ListParams::default()).await.expect("list").items;
        left.iter()
            .all(|lv| !lv.name_any().starts_with("lv-burst-"))
            .then_some(())
    })
    .await;

    // 6. Deleted while the node is down: after the restart the LV goes, then the object.
    agent.kill();
    api.delete("lv-a", &DeleteParams::default())
        .await
        .expect("delete lv-a");
    assert!(
        api.get_opt("lv-a").await.expect("get").is_some(),
        "the finalizer holds the object while the node is down"
    );
    agent.start(None);
    eventually_gone(&api, "lv-a", "lv-a gone", WAIT).await;
    assert!(!lv_names(&env, &vg).contains(&uid_a), "lv-a's LV is gone");

    // 7. Orphans: an LV with our tags whose object never existed (found by a GET of its name
    // tag); one whose name tag names a live object of another UID; one without the name tag
    // (found by the LIST); an inline ephemeral volume whose pod is gone. The ephemeral volume
    // of a pod that is still on the node is not an orphan.
    let pod_uid = make_pod_on_node(&cluster).await;
    let ghost = "0f0f0f0f-1111-4222-8333-944444444444";
    let impostor = "0e0e0e0e-1111-4222-8333-944444444444";
    let orphans = [ghost, impostor, "plain-orphan", "eph-dead"];
    for (name, tags) in [
        (ghost, vec![names::lv_tag_logical_volume("ghost")]),
        (impostor, vec![names::lv_tag_logical_volume("lv-b")]),
        ("plain-orphan", vec![]),
        (
            "eph-dead",
            vec![names::lv_tag_ephemeral_pod(
                "0d0d0d0d-1111-4222-8333-944444444444",
            )],
        ),
        ("eph-alive", vec![names::lv_tag_ephemeral_pod(&pod_uid)]),
    ] {
        lvmd_lv
            .create_lv(pb::CreateLvRequest {
                name: name.into(),
                device_class: CLASS.into(),
                size_bytes: (8 * MIB) as i64,
                tags,
                ..Default::default()
            })
            .await
            .expect("an LV whose object does not exist");
    }
    let gauge =
        format!("topolvm_node_orphan_volumes{{device_class=\"{CLASS}\",node=\"{NODE}\"}} 4");
    eventually("the orphan gauge", WAIT, || async {
        metrics(&agent).await.contains(&gauge).then_some(())
    })
    .await;
    let reported = eventually("orphan Events on the Node", WAIT, || async {
        let messages = node_events(&events, "OrphanVolume").await;
        let all = orphans.iter().all(|name| {
            messages
                .iter()
                .any(|m| m.starts_with(&format!("LV {name} ")))
        });
        all.then_some(messages)
    })
    .await;
    for healthy in [
        &uid_b,
        &uid_c,
        &"by-hand".to_owned(),
        &"eph-alive".to_owned(),
    ] {
        assert!(
            !reported
                .iter()
                .any(|m| m.starts_with(&format!("LV {healthy} "))),
            "{healthy} is not an orphan: {reported:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lv_names(&env, &vg).contains(ghost),
        "without --orphan-gc-after orphans are only reported"
    );

    // 8. With --orphan-gc-after, orphans are removed once seen that long; the rest stays.
    agent.stop();
    agent.start(Some("2s"));
    eventually("orphans removed", WAIT, || async {
        let names = lv_names(&env, &vg);
        orphans
            .iter()
            .all(|orphan| !names.contains(*orphan))
            .then_some(())
    })
    .await;
    assert_eq!(
        lv_names(&env, &vg),
        BTreeSet::from([
            "by-hand".to_owned(),
            "eph-alive".to_owned(),
            uid_b.clone(),
            uid_c.clone()
        ]),
        "the hand-made LV and the LVs of live objects and pods stay"
    );
    eventually("the removal Events", WAIT, || async {
        let messages = node_events(&events, "OrphanVolumeRemoved").await;
        messages
            .iter()
            .any(|m| m.starts_with(&format!("LV {ghost} ")))
            .then_some(())
    })
    .await;

    // 9. Clean up through the reconciler: every object goes, with its LV.
    for name in ["lv-b", "lv-c", "lv-bad"] {
        api.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    eventually("every object gone", WAIT, || async {
        let left = api.list(&ListParams::default()).await.expect("list").items;
        left.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        lv_names(&env, &vg),
        BTreeSet::from(["by-hand".to_owned(), "eph-alive".to_owned()])
    );
    agent.assert_running();
}

/// A cluster switching from TopoLVM: a LogicalVolume as TopoLVM leaves it (TopoLVM's finalizer
/// and created-by label, `status.volumeID` = its UID, `status.currentSize`, none of our labels)
/// with the untagged LV TopoLVM's lvmd made for it, named by that UID. topolvm-rs started in
/// TopoLVM's place must grow it when `spec.size` rises and remove it when the object is deleted
/// (lvmd refuses both for an untagged LV, so the node adopts it first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_topolvm_made_is_adopted_then_grown_and_removed() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    let api: Api<LogicalVolume> = Api::all(cluster.client());

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(DEFAULT_LOOP_SIZE)]);

    // What TopoLVM's controller and node left behind (`Reconcile`/`createLV` in
    // `internal/controller/logicalvolume_controller.go` @ 110864718b8f: the node adds the
    // created-by label and the finalizer, then writes volumeID and currentSize).
    let made: LogicalVolume = serde_json::from_value(json!({
        "apiVersion": "topolvm.io/v1",
        "kind": "LogicalVolume",
        "metadata": {
            "name": "lv-switched",
            "labels": {names::CREATED_BY_LABEL: names::CREATED_BY_VALUE},
            "finalizers": [names::LOGICAL_VOLUME_FINALIZER],
        },
        "spec": {"name": "lv-switched", "nodeName": NODE, "size": "16Mi", "deviceClass": CLASS},
    }))
    .expect("a LogicalVolume");
    let made = api
        .create(&PostParams::default(), &made)
        .await
        .expect("creating TopoLVM's object");
    let uid = made.uid().expect("uid");
    vg.create_lv_by_hand(&uid, "16m");
    api.patch_status(
        "lv-switched",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"volumeID": uid, "currentSize": "16Mi", "code": 0}})),
    )
    .await
    .expect("TopoLVM's status");
    assert!(
        lvs(&env, &vg)
            .iter()
            .any(|r| r.get("lv_name") == uid && r.tags("lv_tags").is_empty()),
        "the LV starts untagged, as TopoLVM's lvmd makes it"
    );
    // Our lvmd in place of TopoLVM's, on the volume group as TopoLVM left it.
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));

    let dir = tempfile::tempdir().expect("tmp");
    let mut agent = NodeAgent::new(
        lvmd.socket_path(),
        cluster.kubeconfig("topolvm-node"),
        dir.path(),
    );
    agent.start(None);

    // Adopted at the first reconcile, before anything asks for a change.
    eventually("the LV adopted with our tags", WAIT, || async {
        lvs(&env, &vg)
            .iter()
            .any(|r| {
                r.get("lv_name") == uid
                    && r.tags("lv_tags")
                        .contains(&names::LV_TAG_MANAGED.to_owned())
                    && r.tags("lv_tags")
                        .contains(&names::lv_tag_logical_volume("lv-switched"))
            })
            .then_some(())
    })
    .await;

    // Grow: the LV follows spec.size, and the status says so.
    grow_to_32_mib(&api, &env, &vg, "lv-switched", &uid).await;

    // Delete: the LV goes, then the object with it.
    api.delete("lv-switched", &DeleteParams::default())
        .await
        .expect("delete");
    eventually_gone(&api, "lv-switched", "the object gone", WAIT).await;
    assert!(!lv_names(&env, &vg).contains(&uid), "the LV is removed");
    agent.assert_running();
}

/// Raises the object's `spec.size` to 32 MiB, waits for the status to say so, and checks with
/// `lvs` that the LV has that size.
async fn grow_to_32_mib(
    api: &Api<LogicalVolume>,
    env: &LvmEnv,
    vg: &VolumeGroup,
    name: &str,
    uid: &str,
) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "32Mi"}})),
    )
    .await
    .unwrap_or_else(|e| panic!("growing {name}: {e}"));
    wait_ready(api, name, "32Mi").await;
    let size = lvs(env, vg)
        .into_iter()
        .find(|r| r.get("lv_name") == uid)
        .unwrap_or_else(|| panic!("{name}'s LV"))
        .get_u64("lv_size");
    assert_eq!(size, 32 * MIB, "lvs shows the new size of {name}");
}
