//! The whole provisioning path up to a mounted filesystem, with real device-mapper: the whole
//! local stack (`topolvm_e2e::stack`: control plane with our extender and webhook, lvmd,
//! topolvm-node, topolvm-scheduler, topolvm-controller, the sidecars' stand-in) runs inside the
//! VM, because the LV must be a real block device to format and mount, and the VM has no network
//! to a control plane on the host. The test plays kubelet (NodePublishVolume into the pod's
//! directory, NodeExpandVolume) through `topolvm_e2e::csi::Kubelet`.
//!
//! A claim and its pod → Bound → published (ext4 made by topolvm-node) → data written →
//! expanded (the claim; then kubelet's NodeExpandVolume) and seen by statvfs → a VolumeSnapshot
//! → the data changed → a claim restored from the snapshot holding the data of the snapshot's
//! time (on this thick class, lvmd's block copy of a copy-on-write snapshot) → all removed.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use topolvm_core::names;
use topolvm_e2e::csi::{Kubelet, PersistentVolume as PvView, Pod as PodView};
use topolvm_e2e::process::eventually;
use topolvm_e2e::sidecar_loop::snapshot_resource;
use topolvm_e2e::stack::{DEVICE_CLASS, Stack, StackOptions};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(240);

async fn apply(client: &Client, object: serde_json::Value) {
    let kind = object["kind"].as_str().expect("kind").to_owned();
    let api: Api<DynamicObject> = match kind.as_str() {
        "StorageClass" => Api::all_with(
            client.clone(),
            &kube::api::ApiResource::erase::<StorageClass>(&()),
        ),
        "PersistentVolumeClaim" => Api::namespaced_with(
            client.clone(),
            "default",
            &kube::api::ApiResource::erase::<PersistentVolumeClaim>(&()),
        ),
        "Pod" => Api::namespaced_with(
            client.clone(),
            "default",
            &kube::api::ApiResource::erase::<Pod>(&()),
        ),
        "VolumeSnapshotClass" => Api::all_with(
            client.clone(),
            &snapshot_resource("VolumeSnapshotClass", "volumesnapshotclasses"),
        ),
        "VolumeSnapshot" => Api::namespaced_with(
            client.clone(),
            "default",
            &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
        ),
        other => panic!("no API for {other}"),
    };
    let object: DynamicObject = serde_json::from_value(object).expect("an object");
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating a {kind}: {e}"));
}

fn claim(name: &str, bytes: u64, source: Option<&str>) -> serde_json::Value {
    let mut claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "topolvm-ext4",
                 "resources": {"requests": {"storage": bytes.to_string()}}},
    });
    if let Some(snapshot) = source {
        claim["spec"]["dataSource"] = json!({"apiGroup": "snapshot.storage.k8s.io",
                                             "kind": "VolumeSnapshot", "name": snapshot});
    }
    claim
}

fn pod(name: &str, claim: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.invalid/app"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
    })
}

/// The claim's PV once the claim is Bound, as kubelet reads it.
async fn bound_pv(client: &Client, claim: &str) -> PvView {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    let pv_name = eventually(&format!("claim {claim} Bound"), WAIT, || {
        let claims = claims.clone();
        async move {
            let c = claims.get(claim).await.ok()?;
            (c.status.as_ref()?.phase.as_deref()? == "Bound").then(|| c.spec?.volume_name)?
        }
    })
    .await;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .expect("the PV");
    let csi = pv.spec.and_then(|s| s.csi).expect("a CSI PV");
    let mut view = PvView::filesystem(
        &pv_name,
        &csi.volume_handle,
        &csi.fs_type.unwrap_or_default(),
    );
    view.volume_attributes = csi.volume_attributes.unwrap_or_default();
    view
}

/// The pod as kubelet knows it (its UID, once kube-scheduler placed it).
async fn placed_pod(client: &Client, name: &str) -> PodView {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let pod = eventually(&format!("pod {name} placed"), WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.ok()?;
            p.spec.as_ref()?.node_name.as_ref()?;
            Some(p)
        }
    })
    .await;
    let mut view = PodView::new(name);
    view.uid = pod.uid().expect("uid");
    view
}

fn size_of(target: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(target).expect("statvfs");
    st.blocks() * st.fragment_size()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_mounted_written_grown_snapshotted_and_restored() {
    let mut options = StackOptions::nodes(1, 0);
    options.real_activation = true;
    let stack = Stack::start(options).await;
    let client = stack.cluster.client();
    let node = &stack.nodes[0];
    apply(
        &client,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "topolvm-ext4"}, "provisioner": names::PLUGIN_NAME,
               "parameters": {"csi.storage.k8s.io/fstype": "ext4",
                              names::DEVICE_CLASS_PARAMETER: DEVICE_CLASS},
               "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true}),
    )
    .await;
    apply(
        &client,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "topolvm"}, "driver": names::PLUGIN_NAME,
               "deletionPolicy": "Delete"}),
    )
    .await;

    // 1. Claim and pod → Bound → published → data written.
    apply(&client, claim("data", 64 * MIB, None)).await;
    apply(&client, pod("app", "data")).await;
    let pv = bound_pv(&client, "data").await;
    let app = placed_pod(&client, "app").await;
    let mut kubelet = Kubelet::connect(&node.csi_socket, &node.kubelet_dir)
        .await
        .expect("the node's CSI socket");
    let target = kubelet.publish(&pv, &app).await.expect("NodePublishVolume");
    std::fs::write(target.join("note"), b"written before the snapshot").expect("write");
    nix::unistd::sync();
    let before = size_of(&target);

    // 2. Expansion: the claim, then kubelet's NodeExpandVolume; statvfs sees it.
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"resources": {"requests": {"storage": (128 * MIB).to_string()}}}}),
            ),
        )
        .await
        .expect("growing the claim");
    eventually("FileSystemResizePending", WAIT, || {
        let client = client.clone();
        async move {
            let c = Api::<PersistentVolumeClaim>::namespaced(client, "default")
                .get("data")
                .await
                .ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "FileSystemResizePending" && c.status == "True")
                .then_some(())
        }
    })
    .await;
    kubelet
        .expand(&pv, &target, (128 * MIB) as i64)
        .await
        .expect("NodeExpandVolume");
    let after = size_of(&target);
    assert!(
        after > before + 48 * MIB,
        "the filesystem grew online: {before} -> {after} bytes"
    );

    // 3. A VolumeSnapshot; then the data changes.
    apply(
        &client,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": "snap", "namespace": "default"},
               "spec": {"volumeSnapshotClassName": "topolvm",
                        "source": {"persistentVolumeClaimName": "data"}}}),
    )
    .await;
    let snapshots: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
    );
    eventually("the snapshot ready", WAIT, || {
        let snapshots = snapshots.clone();
        async move {
            let s = snapshots.get("snap").await.ok()?;
            (s.data["status"]["readyToUse"] == json!(true)).then_some(())
        }
    })
    .await;
    std::fs::write(target.join("note"), b"written after the snapshot").expect("write");
    nix::unistd::sync();

    // 4. A claim restored from the snapshot holds the data of the snapshot's time.
    apply(&client, claim("restored", 128 * MIB, Some("snap"))).await;
    apply(&client, pod("reader", "restored")).await;
    let restored = bound_pv(&client, "restored").await;
    let reader = placed_pod(&client, "reader").await;
    let restored_target = kubelet
        .publish(&restored, &reader)
        .await
        .expect("NodePublishVolume of the restored claim");
    assert_eq!(
        std::fs::read(restored_target.join("note")).expect("read"),
        b"written before the snapshot"
    );
    assert_eq!(
        std::fs::read(target.join("note")).expect("read"),
        b"written after the snapshot"
    );

    // 5. Everything removed: unpublished, pods and claims deleted, the snapshot deleted.
    kubelet
        .unpublish(&restored.volume_handle, &restored_target)
        .await
        .expect("unpublish");
    kubelet
        .unpublish(&pv.volume_handle, &target)
        .await
        .expect("unpublish");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    for name in ["reader", "app"] {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .expect("deleting a pod");
    }
    claims
        .delete("restored", &DeleteParams::default())
        .await
        .expect("deleting a claim");
    snapshots
        .delete("snap", &DeleteParams::default())
        .await
        .expect("deleting the snapshot");
    // A thick origin cannot go while it has snapshots: delete it once the snapshot is gone.
    eventually("the snapshot gone", WAIT, || {
        let snapshots = snapshots.clone();
        async move {
            snapshots
                .get_opt("snap")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("deleting a claim");
    eventually("every LV removed", WAIT, || async {
        stack
            .env
            .lvs(node.vg.name(), "lv_name")
            .is_empty()
            .then_some(())
    })
    .await;
    let pvs = Api::<PersistentVolume>::all(client.clone());
    eventually("every PV removed", WAIT, || {
        let pvs = pvs.clone();
        async move {
            pvs.list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
}
