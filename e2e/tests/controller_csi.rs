//! topolvm-controller's CSI Controller service against the test bed's real kube-apiserver
//! (1.20) with the LogicalVolume CRD, the real topolvm-node binary and a real lvmd on loop
//! devices (lvm2 in metadata-only mode, thick classes; root). Each process runs as its own
//! ServiceAccount with the RBAC of the rendered manifests. The requests are the sidecars' (`topolvm_e2e::csi::Sidecars`)
//! built from a real PVC, StorageClass and the cluster's Nodes.
//!
//! ```text
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node -p topolvm-controller --bin topolvm-controller
//! cargo test -p topolvm-e2e --features e2e --test controller_csi
//! ```
//!
//! `lvs` judges the LVs, the API server the objects.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tonic::Code;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_e2e::cluster::{Cluster, ClusterOptions, eventually_gone};
use topolvm_e2e::csi::{PersistentVolume, Sidecars};
use topolvm_e2e::lvm::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, eventually, workspace_binary};
use topolvm_e2e::stack::{self, AgentEndpoints, node_agent_args};
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{
    AccessMode, AccessType, MountVolume, access_mode::Mode,
};

const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";
const CLASS: &str = "ssd";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

fn lv_sizes(env: &LvmEnv, vg: &VolumeGroup) -> BTreeMap<String, u64> {
    env.lvs(vg.name(), "lv_name,lv_size")
        .iter()
        .map(|r| (r.get("lv_name").to_owned(), r.get_u64("lv_size")))
        .collect()
}

/// A PVC of `bytes` in the API server (for its UID).
async fn make_pvc(
    client: &kube::Client,
    name: &str,
    class: &str,
    bytes: u64,
) -> PersistentVolumeClaim {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::claim(name, class, bytes))
        .await
        .unwrap_or_else(|e| panic!("creating PVC {name}: {e}"))
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_service_drives_real_volumes_through_the_node() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    cluster.make_node(OTHER_NODE, &[], &[]).await;
    let admin = cluster.client();
    let lvs_api: Api<LogicalVolume> = Api::all(admin.clone());
    let nodes_api: Api<Node> = Api::all(admin.clone());
    let classes: Api<StorageClass> = Api::all(admin.clone());
    let ssd = classes
        .create(
            &PostParams::default(),
            &stack::storage_class_of("topolvm-ssd", CLASS, Some("ext4")),
        )
        .await
        .expect("StorageClass");
    let missing = classes
        .create(
            &PostParams::default(),
            &stack::storage_class_of("topolvm-hdd", "hdd", Some("ext4")),
        )
        .await
        .expect("StorageClass");

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(128 * MIB)]);
    let lvmd = Lvmd::start(&env, LvmdOptions::workspace_thick(CLASS, vg.name()));
    let dir = tempfile::tempdir().expect("tmp");

    let mut node_cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    node_cmd
        .args(node_agent_args(
            &cluster,
            NODE,
            lvmd.socket_path(),
            &AgentEndpoints::under(&dir.path().join("node")),
        ))
        .env("RUST_LOG", "topolvm_node=debug,info");
    let mut node_agent =
        ManagedProcess::spawn("topolvm-node", node_cmd, &dir.path().join("node.log"));

    let (mut controller, mut sidecars) =
        stack::start_controller(&cluster, dir.path(), "topolvm_controller=debug,info").await;

    // The node agent reports its capacity on the Node; GetCapacity reads it.
    let annotated: u64 = eventually("the capacity annotation", WAIT, || async {
        let node = nodes_api.get(NODE).await.ok()?;
        node.annotations()
            .get(&names::capacity_annotation_key(CLASS))
            .and_then(|v| v.parse().ok())
    })
    .await;
    let free = vg.sizes().get_u64("vg_free");
    assert_eq!(annotated, free, "the annotation is lvmd's free space");
    let free = i64::try_from(free).expect("i64");
    let capacity = |node: Option<&str>| Sidecars::get_capacity_request(&ssd, node);
    let at_node = eventually("GetCapacity to see the annotation", WAIT, || {
        let mut sidecars = sidecars.clone();
        let request = capacity(Some(NODE));
        async move {
            let bytes = sidecars.get_capacity(request).await.expect("GetCapacity");
            (bytes != 0).then_some(bytes)
        }
    })
    .await;
    assert_eq!(at_node, free);
    // node-b has no annotation: 0, not an error (issue 1201); the sum counts it as 0.
    assert_eq!(
        sidecars
            .get_capacity(capacity(Some(OTHER_NODE)))
            .await
            .expect("GetCapacity"),
        0
    );
    assert_eq!(
        sidecars
            .get_capacity(capacity(None))
            .await
            .expect("GetCapacity"),
        free
    );

    // 1. CreateVolume as the provisioner sends it for a PVC scheduled to node-a.
    let all_nodes = nodes_api
        .list(&Default::default())
        .await
        .expect("nodes")
        .items;
    let pvc = make_pvc(&admin, "data", "topolvm-ssd", 16 * MIB).await;
    let request = Sidecars::create_volume_request(&pvc, &ssd, NODE, &all_nodes).expect("request");
    let name = request.name.clone();
    // Our own watch, to time the answer against the node's status write.
    let status_seen = {
        let api = lvs_api.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut stream = std::pin::pin!(watcher(api, config));
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(lv) | watcher::Event::InitApply(lv)) = event
                    && lv.status.as_ref().is_some_and(|s| !s.volume_id.is_empty())
                {
                    return Instant::now();
                }
            }
            Instant::now()
        })
    };
    let volume = sidecars
        .create_volume(request.clone())
        .await
        .expect("CreateVolume");
    let answered = Instant::now();
    let seen = status_seen.await.expect("watch");
    match answered.checked_duration_since(seen) {
        Some(after) => {
            println!("CreateVolume answered {after:?} after this test's watch saw status.volumeID")
        }
        None => println!(
            "CreateVolume answered {:?} before this test's watch saw status.volumeID",
            seen.duration_since(answered)
        ),
    }
    let lv = lvs_api.get(&name).await.expect("the LogicalVolume");
    assert_eq!(volume.volume_id, lv.uid().expect("uid"));
    assert_eq!(lv.spec.node_name, NODE);
    assert_eq!(
        lv.labels()
            .get(names::LOGICAL_VOLUME_NODE_LABEL)
            .map(String::as_str),
        Some(NODE)
    );
    // 16Mi asked, but ext4's minimum allocation (TopoLVM's default 32Mi) applies.
    assert_eq!(volume.capacity_bytes, 32 * MIB as i64);
    assert_eq!(
        volume.accessible_topology[0].segments[names::TOPOLOGY_NODE_KEY],
        NODE
    );
    assert_eq!(
        lv_sizes(&env, &vg).get(&volume.volume_id),
        Some(&(32 * MIB))
    );

    // 2. The same request again: the same volume, nothing new.
    let again = sidecars
        .create_volume(request.clone())
        .await
        .expect("repeat");
    assert_eq!(again.volume_id, volume.volume_id);
    assert_eq!(lv_sizes(&env, &vg).len(), 1);
    // The same name with another size: ALREADY_EXISTS.
    let mut bigger = request.clone();
    bigger.capacity_range = Some(csi::CapacityRange {
        required_bytes: 40 * MIB as i64,
        limit_bytes: 0,
    });
    assert_eq!(
        code(sidecars.create_volume(bigger).await),
        Code::AlreadyExists
    );

    // 3. Snapshots of a thick class need device-mapper, absent here: either lvmd makes one
    // (then it is deleted again) or the refusal comes back and no object stays.
    let snap_request =
        Sidecars::create_snapshot_request("0001", &volume.volume_id, &BTreeMap::new());
    match sidecars.create_snapshot(snap_request.clone()).await {
        Ok(snapshot) => {
            println!("thick snapshot made on the host: {}", snapshot.snapshot_id);
            assert_eq!(snapshot.source_volume_id, volume.volume_id);
            assert!(lv_sizes(&env, &vg).contains_key(&snapshot.snapshot_id));
            sidecars
                .delete_snapshot(&snapshot.snapshot_id)
                .await
                .expect("DeleteSnapshot");
            assert!(!lv_sizes(&env, &vg).contains_key(&snapshot.snapshot_id));
        }
        Err(status) => {
            println!(
                "thick snapshot refused on the host: {:?} {}",
                status.code(),
                status.message()
            );
        }
    }
    eventually_gone(
        &lvs_api,
        &snap_request.name,
        "no snapshot object left",
        WAIT,
    )
    .await;
    assert_eq!(
        code(
            sidecars
                .create_snapshot(Sidecars::create_snapshot_request(
                    "0002",
                    "no-such-volume",
                    &BTreeMap::new()
                ))
                .await
        ),
        Code::NotFound
    );

    // 4. Out of space on the node: lvmd's RESOURCE_EXHAUSTED reaches the provisioner (it
    // reschedules) and nothing is left behind.
    let huge = make_pvc(&admin, "huge", "topolvm-ssd", 1024 * MIB).await;
    let huge_request =
        Sidecars::create_volume_request(&huge, &ssd, NODE, &all_nodes).expect("request");
    assert_eq!(
        code(sidecars.create_volume(huge_request.clone()).await),
        Code::ResourceExhausted
    );
    eventually_gone(
        &lvs_api,
        &huge_request.name,
        "the refused object deleted",
        WAIT,
    )
    .await;
    assert_eq!(lv_sizes(&env, &vg).len(), 1);

    // 5. A device class the node lacks: RESOURCE_EXHAUSTED too (issue 909), nothing left.
    let other_class = make_pvc(&admin, "other-class", "topolvm-hdd", 16 * MIB).await;
    let other_request =
        Sidecars::create_volume_request(&other_class, &missing, NODE, &all_nodes).expect("request");
    assert_eq!(
        code(sidecars.create_volume(other_request.clone()).await),
        Code::ResourceExhausted
    );
    eventually_gone(
        &lvs_api,
        &other_request.name,
        "the refused object deleted",
        WAIT,
    )
    .await;

    // 6. Expand: the LV grows; too much is RESOURCE_EXHAUSTED; a smaller retry then succeeds
    // without the earlier error.
    let pv = PersistentVolume::filesystem(&name, &volume.volume_id, "ext4");
    let grown = sidecars
        .expand(Sidecars::expand_request(&pv, 48 * MIB as i64))
        .await
        .expect("expand");
    assert_eq!(grown.capacity_bytes, 48 * MIB as i64);
    assert!(grown.node_expansion_required);
    assert_eq!(
        lv_sizes(&env, &vg).get(&volume.volume_id),
        Some(&(48 * MIB))
    );
    let too_big = sidecars
        .expand(Sidecars::expand_request(&pv, 1 << 30))
        .await;
    assert_eq!(code(too_big), Code::ResourceExhausted);
    let retried = sidecars
        .expand(Sidecars::expand_request(&pv, 64 * MIB as i64))
        .await
        .expect("a smaller expand after a failed one");
    assert_eq!(retried.capacity_bytes, 64 * MIB as i64);
    assert_eq!(
        lv_sizes(&env, &vg).get(&volume.volume_id),
        Some(&(64 * MIB))
    );

    // 7. ValidateVolumeCapabilities confirms only what we support.
    let validate = |mode: Mode| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: volume.volume_id.clone(),
        volume_capabilities: vec![csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }],
        ..Default::default()
    };
    let ok = sidecars
        .controller()
        .validate_volume_capabilities(validate(Mode::SingleNodeWriter))
        .await
        .expect("validate")
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = sidecars
        .controller()
        .validate_volume_capabilities(validate(Mode::MultiNodeMultiWriter))
        .await
        .expect("validate")
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());
    let mut unknown = validate(Mode::SingleNodeWriter);
    unknown.volume_id = "no-such-volume".to_owned();
    assert_eq!(
        code(
            sidecars
                .controller()
                .validate_volume_capabilities(unknown)
                .await
        ),
        Code::NotFound
    );

    // 8. Delete: the LV goes, then the object.
    sidecars
        .delete_volume(&volume.volume_id)
        .await
        .expect("DeleteVolume");
    assert!(lvs_api.get_opt(&name).await.expect("get").is_none());
    assert!(!lv_sizes(&env, &vg).contains_key(&volume.volume_id));
    // Again, and an id never seen: OK.
    sidecars
        .delete_volume(&volume.volume_id)
        .await
        .expect("repeat");
    sidecars
        .delete_volume("fake-vol-id")
        .await
        .expect("unknown id");

    // 9. A volume on node-b, which nobody serves: the request's deadline ends the wait with
    // DEADLINE_EXCEEDED and the object stays for the retry.
    let stranded = make_pvc(&admin, "stranded", "topolvm-ssd", 16 * MIB).await;
    let stranded_request =
        Sidecars::create_volume_request(&stranded, &ssd, OTHER_NODE, &all_nodes).expect("request");
    sidecars.timeout = Duration::from_secs(2);
    assert_eq!(
        code(sidecars.create_volume(stranded_request.clone()).await),
        Code::DeadlineExceeded
    );
    sidecars.timeout = topolvm_e2e::csi::PROVISIONER_TIMEOUT;
    let stranded_lv = lvs_api
        .get(&stranded_request.name)
        .await
        .expect("the object stays");
    // Play a node-b that made the volume and then vanished with its Node object.
    let uid = stranded_lv.uid().expect("uid");
    lvs_api
        .patch(
            &stranded_request.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [names::LOGICAL_VOLUME_FINALIZER]}})),
        )
        .await
        .expect("finalizer");
    lvs_api
        .patch_status(
            &stranded_request.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"volumeID": uid, "currentSize": "16Mi"}})),
        )
        .await
        .expect("status");
    nodes_api
        .delete(OTHER_NODE, &DeleteParams::default())
        .await
        .expect("delete node-b");
    let started = Instant::now();
    sidecars
        .delete_volume(&uid)
        .await
        .expect("DeleteVolume with the node gone");
    println!(
        "DeleteVolume with the Node gone took {:?}",
        started.elapsed()
    );
    assert!(
        lvs_api
            .get_opt(&stranded_request.name)
            .await
            .expect("get")
            .is_none()
    );

    node_agent.assert_running();
    controller.assert_running();
}
