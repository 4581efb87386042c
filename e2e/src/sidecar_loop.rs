//! The controller sidecars' part in provisioning, as a loop over the API server: what
//! external-provisioner and external-resizer do with claims and volumes, for the local stack
//! (`scripts/demo.sh`) and the whole-stack tests. The requests it sends are [`Sidecars`]'s; this
//! module adds when it sends them and what it writes back to the API server:
//!
//! - **Provisioning** (external-provisioner): a claim of a StorageClass whose provisioner is
//!   `topolvm.io`, unbound, not being deleted and with kube-scheduler's
//!   `volume.kubernetes.io/selected-node` (WaitForFirstConsumer), gets a CreateVolume; on
//!   success a PersistentVolume `pvc-<claim uid>` pre-bound to the claim (claimRef with uid),
//!   annotated `pv.kubernetes.io/provisioned-by: topolvm.io`, with the volume's size, the
//!   claim's access modes and volume mode, the class's reclaim policy and mount options, the CSI
//!   source (driver, handle, the class's `csi.storage.k8s.io/fstype`, the volume context) and a
//!   required node affinity from `accessible_topology`. kube-controller-manager binds it. On
//!   `RESOURCE_EXHAUSTED` the selected-node annotation is removed so kube-scheduler places the
//!   pod again (external-provisioner's rescheduling); every failure is a `ProvisioningFailed`
//!   Warning Event on the claim.
//! - **Deletion** (external-provisioner): a volume of ours `Released` with reclaim policy
//!   `Delete` gets a DeleteVolume, then the PersistentVolume is deleted.
//! - **Expansion** (external-resizer): a bound claim of a class with `allowVolumeExpansion`
//!   whose request exceeds its volume's capacity gets a ControllerExpandVolume; then the
//!   volume's capacity is raised, and the claim gets `FileSystemResizePending` when the node
//!   must grow the filesystem, or its new `status.capacity` when not.
//!
//! - **Snapshots** (snapshot-controller and external-snapshotter in one): a VolumeSnapshot of a
//!   bound claim of ours, with a VolumeSnapshotClass of driver `topolvm.io`, gets a CreateSnapshot
//!   (name `snapshot-<uid>`), a VolumeSnapshotContent `snapcontent-<uid>` with the handle, and
//!   `readyToUse`; a VolumeSnapshot being deleted gets a DeleteSnapshot, its content deleted and
//!   its finalizer removed. A claim whose `dataSource` is a ready VolumeSnapshot (or a bound
//!   claim) is provisioned from it. The `snapshot.storage.k8s.io/v1` CRDs come from
//!   [`install_snapshot_crds`]: schema-less stand-ins, not external-snapshotter's.
//!
//! Level-triggered: every change of a claim or volume (and a tick every second) makes one pass
//! over all claims and volumes. Not product code: the chart deploys the real sidecars.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use topolvm_core::names;
use topolvm_core::quantity::format_bytes_quantity;
use topolvm_proto::csi;
use tracing::{info, warn};

use crate::csi::Sidecars;

/// The group of external-snapshotter's API.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// The finalizer that keeps a VolumeSnapshot until its snapshot is deleted.
pub const SNAPSHOT_FINALIZER: &str =
    "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";

/// `snapshot.storage.k8s.io/v1` `kind` (plural `plural`).
pub fn snapshot_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: SNAPSHOT_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{SNAPSHOT_GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Installs CRDs for VolumeSnapshotClass, VolumeSnapshotContent (cluster-scoped) and
/// VolumeSnapshot (namespaced), v1, with a status subresource and no schema beyond "an
/// object": enough for the API server to store what [`run`] and the tests write.
pub async fn install_snapshot_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (kind, plural, scope, status) in [
        (
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            "Cluster",
            false,
        ),
        (
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            "Cluster",
            true,
        ),
        ("VolumeSnapshot", "volumesnapshots", "Namespaced", true),
    ] {
        let mut version = json!({
            "name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object",
                                           "x-kubernetes-preserve-unknown-fields": true}},
        });
        if status {
            version["subresources"] = json!({"status": {}});
        }
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            // The API server protects *.k8s.io groups: external-snapshotter's CRDs name the
            // pull request that approved the API.
            "metadata": {"name": format!("{plural}.{SNAPSHOT_GROUP}"),
                         "annotations": {"api-approved.kubernetes.io":
                             "https://github.com/kubernetes-csi/external-snapshotter/pull/419"}},
            "spec": {"group": SNAPSHOT_GROUP, "scope": scope,
                     "names": {"kind": kind, "plural": plural,
                               "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                     "versions": [version]},
        }))
        .expect("a CRD");
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("installing the {kind} CRD: {e}"),
        }
        let name = format!("{plural}.{SNAPSHOT_GROUP}");
        crate::process::eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// The annotation kube-scheduler puts on a WaitForFirstConsumer claim.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// The annotation external-provisioner puts on the volumes it made.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";

/// Runs the loop until the task is dropped. `socket` is topolvm-controller's CSI socket; the
/// connection is made (and made again) as needed.
pub async fn run(client: Client, socket: PathBuf) {
    let changed = std::sync::Arc::new(Notify::new());
    let watches = {
        let changed = changed.clone();
        let claims = watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        )
        .map(|_| ());
        let volumes = watcher(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
        )
        .map(|_| ());
        futures::stream::select(claims, volumes).for_each(move |()| {
            changed.notify_one();
            std::future::ready(())
        })
    };
    let passes = async {
        let mut sidecars: Option<Sidecars> = None;
        loop {
            if sidecars.is_none() {
                sidecars = Sidecars::connect(&socket).await.ok();
            }
            if let Some(s) = sidecars.as_mut()
                && let Err(e) = pass(&client, s).await
            {
                warn!(error = %e, "sidecar pass failed");
            }
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    };
    tokio::select! {
        () = watches => {}
        () = passes => {}
    }
}

fn storage_bytes(list: Option<&BTreeMap<String, Quantity>>) -> Option<u64> {
    list.and_then(|l| l.get("storage"))
        .and_then(|q| topolvm_core::quantity::quantity_bytes(q).ok())
}

/// One pass over every claim and volume.
async fn pass(client: &Client, sidecars: &mut Sidecars) -> Result<(), kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let classes: BTreeMap<String, StorageClass> = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.provisioner == names::PLUGIN_NAME)
        .map(|c| (c.name_any(), c))
        .collect();
    let pvs: BTreeMap<String, PersistentVolume> = volumes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|v| (v.name_any(), v))
        .collect();
    for claim in claims.list(&ListParams::default()).await?.items {
        let Some(class) = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_ref())
            .and_then(|name| classes.get(name))
        else {
            continue;
        };
        let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
        match bound_to {
            None => provision(client, sidecars, &claim, class, &pvs).await?,
            Some(pv) => {
                if let Some(pv) = pvs.get(&pv) {
                    expand(client, sidecars, &claim, class, pv).await?;
                }
            }
        }
    }
    for pv in pvs.values() {
        delete_released(client, sidecars, pv).await?;
    }
    snapshots(client, sidecars, &pvs).await
}

/// The field at `path` of a dynamic object, as a string.
fn field<'a>(object: &'a DynamicObject, path: &[&str]) -> Option<&'a str> {
    let mut value = &object.data;
    for key in path {
        value = value.get(key)?;
    }
    value.as_str()
}

async fn snapshots(
    client: &Client,
    sidecars: &mut Sidecars,
    pvs: &BTreeMap<String, PersistentVolume>,
) -> Result<(), kube::Error> {
    let snapshot_api = snapshot_resource("VolumeSnapshot", "volumesnapshots");
    let content_api = snapshot_resource("VolumeSnapshotContent", "volumesnapshotcontents");
    let class_api = snapshot_resource("VolumeSnapshotClass", "volumesnapshotclasses");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &snapshot_api);
    let Ok(list) = all.list(&ListParams::default()).await else {
        // No snapshot CRDs in this cluster.
        return Ok(());
    };
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &content_api);
    for snapshot in list.items {
        let (Some(uid), Some(namespace)) = (snapshot.uid(), snapshot.namespace()) else {
            continue;
        };
        let name = snapshot.name_any();
        let namespaced: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &snapshot_api);
        let content_name = format!("snapcontent-{uid}");
        if snapshot.metadata.deletion_timestamp.is_some() {
            if let Ok(Some(content)) = contents.get_opt(&content_name).await {
                if let Some(handle) = field(&content, &["status", "snapshotHandle"])
                    && let Err(status) = sidecars.delete_snapshot(handle).await
                {
                    warn!(snapshot = %name, code = ?status.code(), "DeleteSnapshot failed");
                    continue;
                }
                let _ = contents
                    .delete(&content_name, &DeleteParams::default())
                    .await;
            }
            let finalizers: Vec<String> = snapshot
                .finalizers()
                .iter()
                .filter(|f| *f != SNAPSHOT_FINALIZER)
                .cloned()
                .collect();
            namespaced
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})),
                )
                .await?;
            continue;
        }
        if field(&snapshot, &["status", "boundVolumeSnapshotContentName"]).is_some() {
            continue;
        }
        let Some(claim_name) = field(&snapshot, &["spec", "source", "persistentVolumeClaimName"])
        else {
            continue;
        };
        let parameters: BTreeMap<String, String> =
            match field(&snapshot, &["spec", "volumeSnapshotClassName"]) {
                Some(class) => {
                    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &class_api);
                    let Ok(class) = classes.get(class).await else {
                        continue;
                    };
                    if field(&class, &["driver"]) != Some(names::PLUGIN_NAME) {
                        continue;
                    }
                    serde_json::from_value(
                        class.data.get("parameters").cloned().unwrap_or(json!({})),
                    )
                    .unwrap_or_default()
                }
                None => BTreeMap::new(),
            };
        let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
            .get_opt(claim_name)
            .await?;
        let Some(handle) = claim
            .and_then(|c| c.spec?.volume_name)
            .and_then(|pv| pvs.get(&pv))
            .and_then(|pv| pv.spec.as_ref()?.csi.as_ref())
            .map(|c| c.volume_handle.clone())
        else {
            continue;
        };
        if !snapshot
            .finalizers()
            .iter()
            .any(|f| f == SNAPSHOT_FINALIZER)
        {
            let mut finalizers = snapshot.finalizers().to_vec();
            finalizers.push(SNAPSHOT_FINALIZER.to_owned());
            namespaced
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})),
                )
                .await?;
        }
        let request = Sidecars::create_snapshot_request(&uid, &handle, &parameters);
        let made = match sidecars.create_snapshot(request).await {
            Ok(made) => made,
            Err(status) => {
                warn!(snapshot = %name, code = ?status.code(), message = status.message(), "CreateSnapshot failed");
                continue;
            }
        };
        let created = made
            .creation_time
            .as_ref()
            .and_then(|t| k8s_openapi::jiff::Timestamp::new(t.seconds, t.nanos).ok())
            .map(topolvm_core::timestamp::format_rfc3339_nano);
        let content = DynamicObject::new(&content_name, &content_api).data(json!({
            "spec": {"driver": names::PLUGIN_NAME, "deletionPolicy": "Delete",
                     "source": {"volumeHandle": handle},
                     "volumeSnapshotRef": {"apiVersion": format!("{SNAPSHOT_GROUP}/v1"),
                                           "kind": "VolumeSnapshot", "namespace": namespace,
                                           "name": name, "uid": uid}},
        }));
        match contents.create(&PostParams::default(), &content).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e),
        }
        contents
            .patch_status(
                &content_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {
                    "snapshotHandle": made.snapshot_id, "readyToUse": made.ready_to_use,
                    "restoreSize": made.size_bytes}})),
            )
            .await?;
        namespaced
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {
                    "boundVolumeSnapshotContentName": content_name,
                    "readyToUse": made.ready_to_use, "restoreSize": made.size_bytes.to_string(),
                    "creationTime": created}})),
            )
            .await?;
        info!(snapshot = %name, handle = %made.snapshot_id, "snapshot made");
    }
    Ok(())
}

/// The CSI content source of a claim's `dataSource`: a ready VolumeSnapshot's handle or a bound
/// claim's volume. `Err(())` while the source is not usable yet.
async fn content_source(
    client: &Client,
    claim: &PersistentVolumeClaim,
    pvs: &BTreeMap<String, PersistentVolume>,
) -> Result<Option<csi::VolumeContentSource>, ()> {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let Some(source) = claim.spec.as_ref().and_then(|s| s.data_source.clone()) else {
        return Ok(None);
    };
    let namespace = claim.namespace().unwrap_or_default();
    let kind = match (source.api_group.as_deref(), source.kind.as_str()) {
        (Some(SNAPSHOT_GROUP), "VolumeSnapshot") => {
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &namespace,
                &snapshot_resource("VolumeSnapshot", "volumesnapshots"),
            );
            let snapshot = api.get(&source.name).await.map_err(|_| ())?;
            if snapshot.data["status"]["readyToUse"] != json!(true) {
                return Err(());
            }
            let content =
                field(&snapshot, &["status", "boundVolumeSnapshotContentName"]).ok_or(())?;
            let contents: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &snapshot_resource("VolumeSnapshotContent", "volumesnapshotcontents"),
            );
            let content = contents.get(content).await.map_err(|_| ())?;
            let handle = field(&content, &["status", "snapshotHandle"]).ok_or(())?;
            Type::Snapshot(SnapshotSource {
                snapshot_id: handle.to_owned(),
            })
        }
        (None | Some(""), "PersistentVolumeClaim") => {
            let source_claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
                .get(&source.name)
                .await
                .map_err(|_| ())?;
            let pv = source_claim.spec.and_then(|s| s.volume_name).ok_or(())?;
            let handle = pvs
                .get(&pv)
                .and_then(|pv| pv.spec.as_ref()?.csi.as_ref())
                .map(|c| c.volume_handle.clone())
                .ok_or(())?;
            Type::Volume(VolumeSource { volume_id: handle })
        }
        _ => return Err(()),
    };
    Ok(Some(csi::VolumeContentSource { r#type: Some(kind) }))
}

async fn provision(
    client: &Client,
    sidecars: &mut Sidecars,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pvs: &BTreeMap<String, PersistentVolume>,
) -> Result<(), kube::Error> {
    let (Some(uid), Some(namespace)) = (claim.uid(), claim.namespace()) else {
        return Ok(());
    };
    let Some(node) = claim.annotations().get(SELECTED_NODE_ANNOTATION).cloned() else {
        return Ok(());
    };
    let pv_name = format!("pvc-{uid}");
    if claim.metadata.deletion_timestamp.is_some() || pvs.contains_key(&pv_name) {
        return Ok(());
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut request = match Sidecars::create_volume_request(claim, class, &node, &nodes) {
        Ok(r) => r,
        Err(e) => {
            event(client, claim, "ProvisioningFailed", &e.to_string()).await;
            return Ok(());
        }
    };
    match content_source(client, claim, pvs).await {
        Ok(source) => request.volume_content_source = source,
        // The source is not ready yet: the next pass tries again.
        Err(()) => return Ok(()),
    }
    let volume = match sidecars.create_volume(request).await {
        Ok(v) => v,
        Err(status) => {
            let message = format!("CreateVolume: {}: {}", status.code(), status.message());
            warn!(claim = %claim.name_any(), %message, "provisioning failed");
            event(client, claim, "ProvisioningFailed", &message).await;
            if status.code() == tonic::Code::ResourceExhausted {
                // external-provisioner's rescheduling: kube-scheduler picks a node again.
                let patch = json!({"metadata": {"annotations": {SELECTED_NODE_ANNOTATION: null}}});
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
                    .patch(
                        &claim.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
            return Ok(());
        }
    };
    let spec = claim.spec.clone().unwrap_or_default();
    let parameters = class.parameters.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let terms: Vec<serde_json::Value> = volume
        .accessible_topology
        .iter()
        .map(|t| {
            let expressions: Vec<serde_json::Value> = t
                .segments
                .iter()
                .map(|(k, v)| json!({"key": k, "operator": "In", "values": [v]}))
                .collect();
            json!({"matchExpressions": expressions})
        })
        .collect();
    let mut csi_source = json!({
        "driver": names::PLUGIN_NAME,
        "volumeHandle": volume.volume_id,
        "volumeAttributes": volume.volume_context,
    });
    if !block && let Some(fs) = parameters.get("csi.storage.k8s.io/fstype") {
        csi_source["fsType"] = json!(fs);
    }
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name,
                     "annotations": {PROVISIONED_BY_ANNOTATION: names::PLUGIN_NAME}},
        "spec": {
            // external-provisioner: resource.NewQuantity(capacity, resource.BinarySI).
            "capacity": {"storage": format_bytes_quantity(u64::try_from(volume.capacity_bytes).unwrap_or_default())},
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "volumeMode": if block { "Block" } else { "Filesystem" },
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.name_any(),
            "mountOptions": class.mount_options.clone().unwrap_or_default(),
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": namespace, "name": claim.name_any(), "uid": uid},
            "csi": csi_source,
            "nodeAffinity": {"required": {"nodeSelectorTerms": terms}},
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    match Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
    {
        Ok(_) => {
            info!(claim = %claim.name_any(), volume = %volume.volume_id, %node, "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn expand(
    client: &Client,
    sidecars: &mut Sidecars,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    pv: &PersistentVolume,
) -> Result<(), kube::Error> {
    if class.allow_volume_expansion != Some(true) || claim.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let requested = storage_bytes(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    );
    let current = storage_bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
    let (Some(requested), Some(current)) = (requested, current) else {
        return Ok(());
    };
    let Some(handle) = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
    else {
        return Ok(());
    };
    if requested <= current {
        return Ok(());
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let csi_spec = spec.csi.clone().unwrap_or_default();
    let view = crate::csi::PersistentVolume {
        name: pv.name_any(),
        volume_handle: handle,
        block: spec.volume_mode.as_deref() == Some("Block"),
        fs_type: csi_spec.fs_type.clone().unwrap_or_default(),
        mount_options: spec.mount_options.clone().unwrap_or_default(),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        read_only: csi_spec.read_only.unwrap_or(false),
        volume_attributes: csi_spec.volume_attributes.clone().unwrap_or_default(),
    };
    let request = Sidecars::expand_request(&view, i64::try_from(requested).unwrap_or(i64::MAX));
    let answer: csi::ControllerExpandVolumeResponse = match sidecars.expand(request).await {
        Ok(a) => a,
        Err(status) => {
            let message = format!(
                "ControllerExpandVolume: {}: {}",
                status.code(),
                status.message()
            );
            event(client, claim, "VolumeResizeFailed", &message).await;
            return Ok(());
        }
    };
    // external-resizer writes the new size as a BinarySI quantity too.
    let size = format_bytes_quantity(u64::try_from(answer.capacity_bytes).unwrap_or_default());
    Api::<PersistentVolume>::all(client.clone())
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"capacity": {"storage": size}}})),
        )
        .await?;
    let status = if answer.node_expansion_required {
        json!({"status": {"conditions": [{
            "type": "FileSystemResizePending", "status": "True",
            "lastTransitionTime": topolvm_core::timestamp::format_rfc3339_nano(k8s_openapi::jiff::Timestamp::now()),
            "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node."}]}})
    } else {
        json!({"status": {"capacity": {"storage": size}}})
    };
    Api::<PersistentVolumeClaim>::namespaced(
        client.clone(),
        &claim.namespace().unwrap_or_default(),
    )
    .patch_status(
        &claim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    info!(claim = %claim.name_any(), bytes = answer.capacity_bytes, "expanded");
    Ok(())
}

async fn delete_released(
    client: &Client,
    sidecars: &mut Sidecars,
    pv: &PersistentVolume,
) -> Result<(), kube::Error> {
    let ours = pv
        .annotations()
        .get(PROVISIONED_BY_ANNOTATION)
        .map(String::as_str)
        == Some(names::PLUGIN_NAME);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let spec = pv.spec.clone().unwrap_or_default();
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    if !ours || !released || !delete || pv.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some(handle) = spec.csi.map(|c| c.volume_handle) else {
        return Ok(());
    };
    if let Err(status) = sidecars.delete_volume(&handle).await {
        warn!(volume = %handle, code = ?status.code(), message = status.message(), "DeleteVolume failed");
        return Ok(());
    }
    match Api::<PersistentVolume>::all(client.clone())
        .delete(&pv.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {
            info!(volume = %handle, pv = %pv.name_any(), "deleted");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A Warning Event on the claim, as the sidecars record their failures; best effort.
async fn event(client: &Client, claim: &PersistentVolumeClaim, reason: &str, message: &str) {
    let namespace = claim.namespace().unwrap_or_default();
    let now = topolvm_core::timestamp::format_rfc3339_nano(k8s_openapi::jiff::Timestamp::now());
    let event: Result<Event, _> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", claim.name_any()), "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "namespace": namespace, "name": claim.name_any(),
                           "uid": claim.uid()},
        "reason": reason, "message": message, "type": "Warning",
        "source": {"component": "topolvm.io_sidecar-stand-in"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }));
    if let Ok(event) = event
        && let Err(e) = Api::<Event>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await
    {
        warn!(error = %e, "recording an event");
    }
}
