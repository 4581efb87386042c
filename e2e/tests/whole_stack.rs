//! The whole provisioning path on the test bed (root; metadata-only LVM on loop devices): a
//! claim of a WaitForFirstConsumer StorageClass and a pod using it go through the real
//! kube-apiserver, our pod webhook (registered for real, over TLS), kube-scheduler asking
//! topolvm-scheduler, kube-controller-manager's binder, topolvm-controller, topolvm-node and
//! lvmd; the sidecars' part is `topolvm_e2e::sidecar_loop`. The judges are the API server's
//! objects and `lvs`.
//!
//! ```text
//! cargo build -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins
//! cargo test -p topolvm-e2e --features e2e --test whole_stack
//! ```
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use topolvm_core::crd::LogicalVolume;
use topolvm_core::names;
use topolvm_e2e::lvm::{Disk, LvmEnv, VolumeGroup};
use topolvm_e2e::process::eventually;
use topolvm_e2e::stack::{self, DEVICE_CLASS, Stack, StackOptions};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(90);
const CLASS: &str = "topolvm-provisioner";

async fn storage_class(client: &Client) {
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &stack::storage_class(CLASS, "ext4"))
        .await
        .expect("creating the StorageClass");
}

async fn claim(client: &Client, name: &str, bytes: u64) {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::claim(name, CLASS, bytes))
        .await
        .unwrap_or_else(|e| panic!("creating claim {name}: {e}"));
}

async fn pod(client: &Client, name: &str, claim: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::pod(name, claim))
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"))
}

/// The claim's volume name once it is Bound.
async fn bound(client: &Client, name: &str) -> String {
    bound_within(client, name, WAIT).await
}

async fn bound_within(client: &Client, name: &str, within: Duration) -> String {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    eventually(&format!("claim {name} Bound"), within, || {
        let claims = claims.clone();
        async move {
            let c = claims.get(name).await.ok()?;
            let phase = c.status.as_ref()?.phase.as_deref()?;
            (phase == "Bound").then(|| c.spec?.volume_name)?
        }
    })
    .await
}

fn capacity(node: &Node) -> Option<u64> {
    node.annotations()
        .get(&names::capacity_annotation_key(DEVICE_CLASS))?
        .parse()
        .ok()
}

async fn annotation(client: &Client, node: &str) -> u64 {
    let node = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .expect("get node");
    capacity(&node).expect("a capacity annotation")
}

/// LV name → size in the volume group.
fn lv_sizes(env: &LvmEnv, vg: &VolumeGroup) -> BTreeMap<String, u64> {
    env.lvs(vg.name(), "lv_name,lv_size")
        .iter()
        .map(|r| (r.get("lv_name").to_owned(), r.get_u64("lv_size")))
        .collect()
}

async fn force_delete_pod(client: &Client, name: &str) {
    // No kubelet confirms a graceful deletion: delete at once, as `--grace-period=0 --force`.
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
}

/// A claim and its pod from creation to an LV, grown, and removed; a claim that fits nowhere
/// waits until a node grows; a deleted Node loses its claims and volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_goes_from_pod_to_lv_and_back() {
    let mut stack = Stack::start(StackOptions::nodes(2, 512 * MIB)).await;
    let client = stack.cluster.client();
    storage_class(&client).await;
    let before: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for n in &stack.nodes {
            m.insert(n.name.clone(), annotation(&client, &n.name).await);
        }
        m
    };

    // 1. The claim and its pod, as a user applies them.
    claim(&client, "data", 100 * MIB).await;
    let created = pod(&client, "app", "data").await;
    assert_eq!(
        created
            .annotations()
            .get(&names::capacity_annotation_key(DEVICE_CLASS))
            .map(String::as_str),
        Some((100 * MIB).to_string().as_str()),
        "the webhook wrote the claim's size under its device class"
    );
    let pv_name = bound(&client, "data").await;
    let bound_at = Instant::now();
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let node = eventually("the pod placed", WAIT, || {
        let pods = pods.clone();
        async move { pods.get("app").await.ok()?.spec?.node_name }
    })
    .await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    let selected = claims.get("data").await.expect("claim");
    assert_eq!(
        selected
            .annotations()
            .get("volume.kubernetes.io/selected-node"),
        Some(&node),
        "kube-scheduler selected the pod's node for the claim"
    );
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .expect("the PV");
    let spec = pv.spec.clone().expect("spec");
    assert_eq!(
        spec.capacity.as_ref().and_then(|c| c.get("storage")),
        Some(&Quantity("100Mi".to_owned())),
        "the PV's capacity is a quantity, as external-provisioner writes it"
    );
    let affinity = serde_json::to_value(&spec.node_affinity).expect("json");
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": names::TOPOLOGY_NODE_KEY, "operator": "In", "values": [node]})
    );
    let handle = spec.csi.expect("a CSI volume").volume_handle;
    let lv_objects: Api<LogicalVolume> = Api::all(client.clone());
    let object = lv_objects.get(&pv_name).await.expect("the LogicalVolume");
    assert_eq!(object.spec.node_name, node);
    assert_eq!(
        object.status.as_ref().map(|s| s.volume_id.as_str()),
        Some(handle.as_str())
    );
    let stack_node = stack.node(&node);
    assert_eq!(
        lv_sizes(&stack.env, &stack_node.vg).get(&handle),
        Some(&(100 * MIB)),
        "the LV exists in the node's volume group"
    );
    let dropped = eventually("the capacity annotation drops", WAIT, || {
        let client = client.clone();
        let node = node.clone();
        let was = before[&node];
        async move {
            let now = annotation(&client, &node).await;
            (now < was).then_some(now)
        }
    })
    .await;
    println!(
        "capacity annotation of {node} dropped {} ms after the claim was Bound",
        bound_at.elapsed().as_millis()
    );
    assert_eq!(dropped, stack_node.vg.sizes().get_u64("vg_free"));

    // 2. Expansion: the LV grows, the PV follows.
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"resources": {"requests": {"storage": (200 * MIB).to_string()}}}}),
            ),
        )
        .await
        .expect("growing the claim");
    eventually("the LV grown", WAIT, || async {
        (lv_sizes(&stack.env, &stack_node.vg).get(&handle) == Some(&(200 * MIB))).then_some(())
    })
    .await;
    eventually("the PV grown", WAIT, || {
        let client = client.clone();
        let pv_name = pv_name.clone();
        async move {
            let pv = Api::<PersistentVolume>::all(client)
                .get(&pv_name)
                .await
                .ok()?;
            let size = pv.spec?.capacity?.get("storage")?.0.clone();
            (size == "200Mi").then_some(())
        }
    })
    .await;

    // 3. Deleting the pod and the claim removes the volume and gives the space back.
    force_delete_pod(&client, "app").await;
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("deleting the claim");
    eventually("the LV removed", WAIT, || async {
        (!lv_sizes(&stack.env, &stack_node.vg).contains_key(&handle)).then_some(())
    })
    .await;
    eventually("the PV and the LogicalVolume gone", WAIT, || {
        let client = client.clone();
        let pv_name = pv_name.clone();
        async move {
            let pv = Api::<PersistentVolume>::all(client.clone())
                .get_opt(&pv_name)
                .await
                .ok()?;
            let lv = Api::<LogicalVolume>::all(client)
                .get_opt(&pv_name)
                .await
                .ok()?;
            (pv.is_none() && lv.is_none()).then_some(())
        }
    })
    .await;
    eventually("the annotation restored", WAIT, || {
        let client = client.clone();
        let node = node.clone();
        let was = before[&node];
        async move { (annotation(&client, &node).await == was).then_some(()) }
    })
    .await;

    // 4. A claim bigger than any node waits, unschedulable, until a node grows.
    claim(&client, "big", 700 * MIB).await;
    pod(&client, "big", "big").await;
    eventually("the big pod reported unschedulable", WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("big").await.ok()?;
            let conditions = p.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        pods.get("big")
            .await
            .expect("pod")
            .spec
            .and_then(|s| s.node_name),
        None
    );
    let grown = stack.nodes[1].name.clone();
    stack.nodes[1].vg.extend(Disk::loop_device(512 * MIB));
    // kube-scheduler 1.20 retries an unschedulable pod on a Node change it watches (not an
    // annotation) or after a minute in its unschedulable queue: allow for the minute.
    let pv_big = bound_within(&client, "big", Duration::from_secs(180)).await;
    let placed = eventually("the big pod placed", WAIT, || {
        let pods = pods.clone();
        async move { pods.get("big").await.ok()?.spec?.node_name }
    })
    .await;
    assert_eq!(placed, grown, "placed on the node that grew");
    let handle_big = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_big)
        .await
        .expect("PV")
        .spec
        .and_then(|s| s.csi)
        .expect("csi")
        .volume_handle;
    assert_eq!(
        lv_sizes(&stack.env, &stack.nodes[1].vg).get(&handle_big),
        Some(&(700 * MIB))
    );

    // 5. The grown node is deleted: its claim and LogicalVolume go, then the Node.
    Api::<Node>::all(client.clone())
        .delete(&grown, &DeleteParams::default())
        .await
        .expect("deleting the node");
    // The claim is deleted; it goes once kube-controller-manager's pod GC has removed the pod
    // of the vanished node, which takes it 40 s: being deleted is enough here.
    eventually(
        "the node's claim deleted, its LogicalVolume and the Node gone",
        WAIT,
        || {
            let client = client.clone();
            let grown = grown.clone();
            let pv_big = pv_big.clone();
            async move {
                let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
                    .get_opt("big")
                    .await
                    .ok()?;
                let lv = Api::<LogicalVolume>::all(client.clone())
                    .get_opt(&pv_big)
                    .await
                    .ok()?;
                let node = Api::<Node>::all(client).get_opt(&grown).await.ok()?;
                let claim_deleted = claim.is_none_or(|c| c.metadata.deletion_timestamp.is_some());
                (claim_deleted && lv.is_none() && node.is_none()).then_some(())
            }
        },
    )
    .await;
    stack.controller.assert_running();
    stack.scheduler.assert_running();
}

/// 20 pods with a claim each, created at once over 3 nodes that hold 7 such volumes each: every
/// claim is provisioned where it fits, none is refused for want of space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_claims_never_over_commits_a_node() {
    let stack = Stack::start(StackOptions::nodes(3, 1024 * MIB)).await;
    let client = stack.cluster.client();
    storage_class(&client).await;
    let size = 128 * MIB;
    let mut fits = BTreeMap::new();
    for n in &stack.nodes {
        let free = annotation(&client, &n.name).await;
        fits.insert(n.name.clone(), free / size);
    }
    assert!(fits.values().sum::<u64>() >= 20, "{fits:?}");
    let started = Instant::now();
    let creations = (0..20).map(|i| {
        let client = client.clone();
        async move {
            claim(&client, &format!("burst-{i}"), size).await;
            pod(&client, &format!("burst-{i}"), &format!("burst-{i}")).await;
        }
    });
    futures::future::join_all(creations).await;
    for i in 0..20 {
        bound(&client, &format!("burst-{i}")).await;
    }
    println!(
        "20 claims Bound over 3 nodes in {} ms",
        started.elapsed().as_millis()
    );
    let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
    for n in &stack.nodes {
        let count = lv_sizes(&stack.env, &n.vg).len() as u64;
        assert!(count <= fits[&n.name], "{}: {count} volumes", n.name);
        per_node.insert(n.name.clone(), count);
    }
    assert_eq!(per_node.values().sum::<u64>(), 20, "{per_node:?}");
    let refusals: Vec<String> = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ProvisioningFailed"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        refusals.is_empty(),
        "no claim was sent where it did not fit: {refusals:?}"
    );
    println!("volumes per node: {per_node:?}");
}
