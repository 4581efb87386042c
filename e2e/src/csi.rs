//! Playing kubelet's part on the CSI socket: the one documented way tests publish volumes.
//!
//! The test bed has no kubelet, so tests send the CSI Node requests kubelet would send for a
//! pod's volume, built from the same inputs (the PersistentVolume, the pod, the CSIDriver's
//! `podInfoOnMount`). Where each fact comes from, in kubernetes/kubernetes:
//!
//! - **Filesystem target**: `<kubelet-dir>/pods/<pod-uid>/volumes/kubernetes.io~csi/<pv>/mount`
//!   (`pkg/volume/csi/csi_mounter.go` GetPath: the pod's volume dir for plugin
//!   `kubernetes.io/csi`, escaped as `kubernetes.io~csi`, the volume spec name, then `mount`).
//!   kubelet creates only the parent with mode 0750 (it writes `vol_data.json` there); the driver
//!   creates the target itself (csi_mounter.go SetUpAt: `os.MkdirAll(parentDir, 0750)`).
//! - **Block target**:
//!   `<kubelet-dir>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod-uid>`
//!   (`pkg/volume/csi/csi_block.go` getPublishPath); kubelet creates the parent with 0750, the
//!   driver the file (publishVolumeForBlock's comment: "driver is responsible for creating
//!   publishPath itself").
//! - **Capability**: the access mode is the PV's *first* access mode (csi_mounter.go and
//!   csi_block.go: `accessMode = PersistentVolume.Spec.AccessModes[0]`, ReadWriteOnce when
//!   there is none), mapped by `pkg/volume/csi/csi_client.go` asCSIAccessModeV1 (ReadWriteOnce →
//!   SINGLE_NODE_WRITER, ReadOnlyMany → MULTI_NODE_READER_ONLY, ReadWriteMany →
//!   MULTI_NODE_MULTI_WRITER; ReadWriteOncePod → SINGLE_NODE_WRITER for a driver without the
//!   SINGLE_NODE_MULTI_WRITER capability, as ours). fs volumes get a mount capability with the
//!   PV's `spec.csi.fsType` and `spec.mountOptions`; block volumes a block capability and no
//!   mount options (csi_block.go passes `fsTypeBlockName` and `[]string{}`).
//! - **readonly**: `spec.csi.readOnly` of the PV (or the pod's volume source) for persistent
//!   volumes; `readOnly` of the inline `csi` source for inline volumes.
//! - **staging_target_path**: empty, because the driver has no STAGE_UNSTAGE_VOLUME
//!   (csi_mounter.go fills deviceMountPath only when `NodeSupportsStageUnstage`).
//! - **volume_context**: the PV's `spec.csi.volumeAttributes`, plus, when the CSIDriver has
//!   `podInfoOnMount: true` (TopoLVM's chart sets it), `csi.storage.k8s.io/pod.name`,
//!   `pod.namespace`, `pod.uid`, `serviceAccount.name` and `csi.storage.k8s.io/ephemeral`
//!   (`"true"` for inline volumes, else `"false"`) (csi_mounter.go getPodInfoAttrs). Block
//!   publishes carry the volume attributes only (csi_block.go publishVolumeForBlock).
//! - **Inline ephemeral volumes**: volume_id = `csi-` + hex SHA-256 of pod UID + volume name
//!   (csi_mounter.go makeVolumeHandle); access mode ReadWriteOnce, no mount options
//!   (SetUpAt's `volSrc != nil` branch).
//! - **Unpublish**: `volume_id` and the same target path (csi_mounter.go TearDownAt,
//!   csi_block.go unpublishVolumeForBlock, skipped when the publish path is already gone).
//! - **Stats**: volume_id and, for filesystems, the mount target (`pkg/volume/csi/csi_plugin.go`
//!   NewMounter: `NewMetricsCsi(volumeHandle, mounter.GetPath(), ...)`); for block volumes this
//!   helper uses the publish path (not checked against kubelet's block metrics).
//! - **Expand**: `pkg/volume/csi/expander.go` nodeExpandWithClient: volume_id = the PV's
//!   volumeHandle, the new size, a capability from the PV's fsType, mountOptions and first access
//!   mode (block: `fsTypeBlockName`), volume_path = kubelet's DeviceMountPath (the pod's mount
//!   target for an in-use filesystem) or, for block, the device path. kubelet also sends its
//!   device stage path as staging_target_path; this helper sends it empty (our driver has no
//!   staging and ignores it).
//!
//! Product code must not depend on this module.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tonic::Status;
use tonic::transport::Channel;
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};

/// The podInfoOnMount keys kubelet adds to the volume context.
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// The pod a volume is published for.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

impl Pod {
    /// A pod in `default` with the `default` service account and a fresh UID-like ID.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let hex = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
        Self {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ),
            service_account: "default".to_owned(),
        }
    }
}

/// The parts of a PersistentVolume kubelet reads when publishing it.
#[derive(Debug, Clone)]
pub struct PersistentVolume {
    /// `metadata.name`, the volume spec name in kubelet's paths.
    pub name: String,
    /// `spec.csi.volumeHandle`.
    pub volume_handle: String,
    /// `spec.volumeMode: Block`.
    pub block: bool,
    /// `spec.csi.fsType` (empty: the driver's default).
    pub fs_type: String,
    /// `spec.mountOptions` (from the StorageClass).
    pub mount_options: Vec<String>,
    /// `spec.accessModes`, e.g. `ReadWriteOnce`.
    pub access_modes: Vec<String>,
    /// `spec.csi.readOnly`.
    pub read_only: bool,
    /// `spec.csi.volumeAttributes`.
    pub volume_attributes: BTreeMap<String, String>,
}

impl PersistentVolume {
    /// A ReadWriteOnce filesystem PV of `fs_type` for the volume `volume_handle`.
    pub fn filesystem(name: &str, volume_handle: &str, fs_type: &str) -> Self {
        Self {
            name: name.to_owned(),
            volume_handle: volume_handle.to_owned(),
            block: false,
            fs_type: fs_type.to_owned(),
            mount_options: Vec::new(),
            access_modes: vec!["ReadWriteOnce".to_owned()],
            read_only: false,
            volume_attributes: BTreeMap::new(),
        }
    }

    /// A ReadWriteOnce block PV for the volume `volume_handle`.
    pub fn block(name: &str, volume_handle: &str) -> Self {
        Self {
            block: true,
            fs_type: String::new(),
            ..Self::filesystem(name, volume_handle, "")
        }
    }
}

/// A pod's inline `csi` volume source (`spec.volumes[].csi`).
#[derive(Debug, Clone)]
pub struct InlineVolume {
    /// The volume's name in the pod.
    pub name: String,
    pub fs_type: Option<String>,
    pub read_only: bool,
    pub volume_attributes: BTreeMap<String, String>,
}

/// kubelet's access-mode mapping for a driver without SINGLE_NODE_MULTI_WRITER.
pub fn csi_access_mode(kubernetes_mode: &str) -> Mode {
    match kubernetes_mode {
        "ReadWriteOnce" | "ReadWriteOncePod" => Mode::SingleNodeWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        _ => Mode::Unknown,
    }
}

/// The volume ID kubelet gives an inline volume: `csi-` + hex(sha256(pod UID + volume name)).
pub fn inline_volume_id(pod_uid: &str, volume_name: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{pod_uid}{volume_name}").as_bytes(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("csi-{hex}")
}

/// kubelet's side of the CSI socket.
#[derive(Debug, Clone)]
pub struct Kubelet {
    node: csi::node_client::NodeClient<Channel>,
    identity: csi::identity_client::IdentityClient<Channel>,
    kubelet_dir: PathBuf,
    /// The CSIDriver's `podInfoOnMount` (true in TopoLVM's chart).
    pub pod_info_on_mount: bool,
}

impl Kubelet {
    /// Connects to the driver's socket as a kubelet whose root directory is `kubelet_dir`.
    pub async fn connect(
        socket: &Path,
        kubelet_dir: &Path,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = topolvm_runtime::unix::connect(socket).await?;
        Ok(Self {
            node: csi::node_client::NodeClient::new(channel.clone()),
            identity: csi::identity_client::IdentityClient::new(channel),
            kubelet_dir: kubelet_dir.to_owned(),
            pod_info_on_mount: true,
        })
    }

    pub fn kubelet_dir(&self) -> &Path {
        &self.kubelet_dir
    }

    /// The node service client, for requests kubelet never sends (tests of refusals).
    pub fn node(&mut self) -> &mut csi::node_client::NodeClient<Channel> {
        &mut self.node
    }

    pub fn identity(&mut self) -> &mut csi::identity_client::IdentityClient<Channel> {
        &mut self.identity
    }

    /// Where a filesystem volume `pv_name` of `pod` is published.
    pub fn filesystem_target(&self, pod: &Pod, pv_name: &str) -> PathBuf {
        filesystem_target(&self.kubelet_dir, &pod.uid, pv_name)
    }

    /// Where a block volume `pv_name` of `pod` is published.
    pub fn block_target(&self, pod: &Pod, pv_name: &str) -> PathBuf {
        self.kubelet_dir
            .join("plugins/kubernetes.io/csi/volumeDevices/publish")
            .join(pv_name)
            .join(&pod.uid)
    }

    /// The target of `pv` for `pod`.
    pub fn target(&self, pv: &PersistentVolume, pod: &Pod) -> PathBuf {
        if pv.block {
            self.block_target(pod, &pv.name)
        } else {
            self.filesystem_target(pod, &pv.name)
        }
    }

    fn pod_info(&self, pod: &Pod, ephemeral: bool) -> HashMap<String, String> {
        if !self.pod_info_on_mount {
            return HashMap::new();
        }
        HashMap::from([
            (POD_NAME_KEY.to_owned(), pod.name.clone()),
            (POD_NAMESPACE_KEY.to_owned(), pod.namespace.clone()),
            (POD_UID_KEY.to_owned(), pod.uid.clone()),
            (SERVICE_ACCOUNT_KEY.to_owned(), pod.service_account.clone()),
            (EPHEMERAL_KEY.to_owned(), ephemeral.to_string()),
        ])
    }

    /// The capability kubelet sends for `pv`.
    pub fn capability(pv: &PersistentVolume) -> csi::VolumeCapability {
        let mode = pv
            .access_modes
            .first()
            .map_or(Mode::SingleNodeWriter, |m| csi_access_mode(m));
        csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(if pv.block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: pv.fs_type.clone(),
                    mount_flags: pv.mount_options.clone(),
                    volume_mount_group: String::new(),
                })
            }),
        }
    }

    /// The NodePublishVolume kubelet sends for `pv` in `pod`.
    pub fn publish_request(
        &self,
        pv: &PersistentVolume,
        pod: &Pod,
    ) -> csi::NodePublishVolumeRequest {
        let mut context: HashMap<String, String> = pv
            .volume_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !pv.block {
            context.extend(self.pod_info(pod, false));
        }
        csi::NodePublishVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            publish_context: HashMap::new(),
            staging_target_path: String::new(),
            target_path: self.target(pv, pod).to_string_lossy().into_owned(),
            volume_capability: Some(Self::capability(pv)),
            readonly: pv.read_only,
            secrets: HashMap::new(),
            volume_context: context,
        }
    }

    /// Makes the target's parent as kubelet does (mode 0750).
    fn make_parent(target: &Path) -> Result<(), Status> {
        let parent = target
            .parent()
            .ok_or_else(|| Status::internal("target has no parent"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| Status::internal(format!("kubelet: mkdir {}: {e}", parent.display())))
    }

    /// Publishes `pv` for `pod` as kubelet does; returns the target.
    pub async fn publish(&mut self, pv: &PersistentVolume, pod: &Pod) -> Result<PathBuf, Status> {
        let request = self.publish_request(pv, pod);
        let target = PathBuf::from(&request.target_path);
        Self::make_parent(&target)?;
        self.node.node_publish_volume(request).await?;
        Ok(target)
    }

    /// The NodePublishVolume kubelet sends for an inline volume of `pod`.
    pub fn inline_publish_request(
        &self,
        volume: &InlineVolume,
        pod: &Pod,
    ) -> csi::NodePublishVolumeRequest {
        let mut context: HashMap<String, String> = volume
            .volume_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        context.extend(self.pod_info(pod, true));
        csi::NodePublishVolumeRequest {
            volume_id: inline_volume_id(&pod.uid, &volume.name),
            target_path: self
                .filesystem_target(pod, &volume.name)
                .to_string_lossy()
                .into_owned(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume {
                    fs_type: volume.fs_type.clone().unwrap_or_default(),
                    mount_flags: Vec::new(),
                    volume_mount_group: String::new(),
                })),
            }),
            readonly: volume.read_only,
            volume_context: context,
            ..Default::default()
        }
    }

    /// Publishes an inline volume of `pod`; returns its volume ID and target.
    pub async fn publish_inline(
        &mut self,
        volume: &InlineVolume,
        pod: &Pod,
    ) -> Result<(String, PathBuf), Status> {
        let request = self.inline_publish_request(volume, pod);
        let target = PathBuf::from(&request.target_path);
        let id = request.volume_id.clone();
        Self::make_parent(&target)?;
        self.node.node_publish_volume(request).await?;
        Ok((id, target))
    }

    /// NodeUnpublishVolume of `volume_id` at `target`.
    pub async fn unpublish(&mut self, volume_id: &str, target: &Path) -> Result<(), Status> {
        self.node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id.to_owned(),
                target_path: target.to_string_lossy().into_owned(),
            })
            .await?;
        Ok(())
    }

    /// NodeGetVolumeStats of `volume_id` at `path`.
    pub async fn stats(
        &mut self,
        volume_id: &str,
        path: &Path,
    ) -> Result<csi::NodeGetVolumeStatsResponse, Status> {
        Ok(self
            .node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: volume_id.to_owned(),
                volume_path: path.to_string_lossy().into_owned(),
                staging_target_path: String::new(),
            })
            .await?
            .into_inner())
    }

    /// NodeExpandVolume of `pv` published at `path`, to `new_size` bytes; returns capacity_bytes.
    pub async fn expand(
        &mut self,
        pv: &PersistentVolume,
        path: &Path,
        new_size: i64,
    ) -> Result<i64, Status> {
        Ok(self
            .node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: pv.volume_handle.clone(),
                volume_path: path.to_string_lossy().into_owned(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: new_size,
                    limit_bytes: 0,
                }),
                staging_target_path: String::new(),
                volume_capability: Some(Self::capability(pv)),
                secrets: HashMap::new(),
            })
            .await?
            .into_inner()
            .capacity_bytes)
    }

    /// Probe's `ready`.
    pub async fn probe(&mut self) -> Result<Option<bool>, Status> {
        Ok(self
            .identity
            .probe(csi::ProbeRequest {})
            .await?
            .into_inner()
            .ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_volume_id_is_kubelets_hash() {
        // sha256("7d1e8f5c-1111-2222-3333-444455556666scratch") by sha256sum(1).
        assert_eq!(
            inline_volume_id("7d1e8f5c-1111-2222-3333-444455556666", "scratch"),
            "csi-7419c68149e62766d014dc1b8f7f720ade5fd6f05c9eafc9b4fd1a18b61c4e6a"
        );
    }

    #[test]
    fn pod_uids_look_like_kubernetes_uids() {
        let uid = Pod::new("p").uid;
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
    }
}

// ---------------------------------------------------------------------------------------
// The controller sidecars' side of the CSI socket.
// ---------------------------------------------------------------------------------------

/// The `csi.storage.k8s.io/` StorageClass keys external-provisioner consumes and removes before
/// CreateVolume (`removePrefixedParameters` in kubernetes-csi/external-provisioner
/// `pkg/controller/controller.go` @ `a11af5ce7238`; the two `controller-modify-secret-*` keys
/// since v6.2.0, `CHANGELOG/CHANGELOG-6.2.md` PR #1440). Any other key with that prefix makes it
/// fail.
pub const PROVISIONER_STRIPPED_KEYS: [&str; 17] = [
    "csi.storage.k8s.io/fstype",
    "csi.storage.k8s.io/secret-name",
    "csi.storage.k8s.io/secret-namespace",
    "csi.storage.k8s.io/provisioner-secret-name",
    "csi.storage.k8s.io/provisioner-secret-namespace",
    "csi.storage.k8s.io/controller-publish-secret-name",
    "csi.storage.k8s.io/controller-publish-secret-namespace",
    "csi.storage.k8s.io/node-stage-secret-name",
    "csi.storage.k8s.io/node-stage-secret-namespace",
    "csi.storage.k8s.io/node-publish-secret-name",
    "csi.storage.k8s.io/node-publish-secret-namespace",
    "csi.storage.k8s.io/controller-expand-secret-name",
    "csi.storage.k8s.io/controller-expand-secret-namespace",
    "csi.storage.k8s.io/node-expand-secret-name",
    "csi.storage.k8s.io/node-expand-secret-namespace",
    "csi.storage.k8s.io/controller-modify-secret-name",
    "csi.storage.k8s.io/controller-modify-secret-namespace",
];

/// external-provisioner's default `--timeout`, sent as the gRPC deadline of every call.
pub const PROVISIONER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the provisioner would not send a request for these objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotProvisionable(pub String);

impl std::fmt::Display for NotProvisionable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotProvisionable {}

fn with_deadline<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Stand-in for the csi-provisioner, csi-resizer and csi-snapshotter sidecars, which the test
/// bed does not run: it builds exactly the Controller requests they build from Kubernetes
/// objects (external-provisioner's `prepareProvision` in `pkg/controller/controller.go` @
/// `a11af5ce7238` and `GenerateAccessibilityRequirements` in `pkg/controller/topology.go` @
/// `099f314e13c8`), so tests drive topolvm-controller as a cluster would. Product code never uses
/// it.
///
/// - **CreateVolume** (external-provisioner with TopoLVM's chart flags: Topology on, no
///   `--strict-topology`, no `--extra-create-metadata`, no `--default-fstype`):
///   name `pvc-<PVC uid>`; parameters = StorageClass parameters without
///   [`PROVISIONER_STRIPPED_KEYS`] (another `csi.storage.k8s.io/` key is refused); one
///   capability per PVC access mode (block for `volumeMode: Block`, else mount with the
///   StorageClass's `csi.storage.k8s.io/fstype` and `mountOptions`); `capacity_range` with
///   only `required_bytes` (the storage request, rounded up); `requisite` = one
///   `topology.topolvm.io/node` term per Node labelled with it, sorted and de-duplicated;
///   `preferred` = requisite rotated so the selected node's term comes first. StorageClass
///   `allowedTopologies` is not modelled (refused).
/// - **GetCapacity**: the raw StorageClass parameters (not stripped), no capabilities, one
///   segment `{topology.topolvm.io/node: <node>}`.
/// - **DeleteVolume**: the PV's volumeHandle.
/// - **ControllerExpandVolume** (external-resizer): the PV's volumeHandle, `required_bytes` = the
///   new request, the capability from the PV (first access mode; block, or mount with the PV's
///   fsType and mountOptions).
/// - **CreateSnapshot** (external-snapshotter): name `snapshot-<VolumeSnapshot uid>`, the
///   source PV's volumeHandle, the VolumeSnapshotClass parameters without the
///   `csi.storage.k8s.io/snapshotter-secret-*` keys.
///
/// Every call carries [`PROVISIONER_TIMEOUT`] as its gRPC deadline, as the sidecars do.
#[derive(Debug, Clone)]
pub struct Sidecars {
    controller: csi::controller_client::ControllerClient<Channel>,
    /// The deadline of every call.
    pub timeout: std::time::Duration,
}

impl Sidecars {
    /// Connects to the controller's CSI socket.
    pub async fn connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let channel = topolvm_runtime::unix::connect(socket).await?;
        Ok(Self {
            controller: csi::controller_client::ControllerClient::new(channel),
            timeout: PROVISIONER_TIMEOUT,
        })
    }

    /// The raw client, for requests no sidecar sends (bad input).
    pub fn controller(&mut self) -> &mut csi::controller_client::ControllerClient<Channel> {
        &mut self.controller
    }

    /// external-provisioner's CreateVolumeRequest for `pvc` of `class`, with the scheduler's
    /// `selected_node` and the cluster's `nodes`.
    pub fn create_volume_request(
        pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
        class: &k8s_openapi::api::storage::v1::StorageClass,
        selected_node: &str,
        nodes: &[k8s_openapi::api::core::v1::Node],
    ) -> Result<csi::CreateVolumeRequest, NotProvisionable> {
        let uid = pvc
            .metadata
            .uid
            .as_deref()
            .ok_or_else(|| NotProvisionable("the PVC has no uid".into()))?;
        let class_parameters = class.parameters.clone().unwrap_or_default();
        let mut parameters = HashMap::new();
        for (key, value) in &class_parameters {
            if PROVISIONER_STRIPPED_KEYS.contains(&key.as_str()) {
                continue;
            }
            if key.starts_with("csi.storage.k8s.io/") {
                return Err(NotProvisionable(format!(
                    "unknown StorageClass parameter {key}"
                )));
            }
            parameters.insert(key.clone(), value.clone());
        }
        if class.allowed_topologies.is_some() {
            return Err(NotProvisionable(
                "allowedTopologies is not modelled by this stand-in".into(),
            ));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let fs_type = class_parameters
            .get("csi.storage.k8s.io/fstype")
            .cloned()
            .unwrap_or_default();
        let block = spec.volume_mode.as_deref() == Some("Block");
        let modes = spec.access_modes.clone().unwrap_or_default();
        if modes.iter().any(|m| m == "ReadWriteOncePod") && modes.len() > 1 {
            return Err(NotProvisionable(
                "ReadWriteOncePod cannot be combined with another access mode".into(),
            ));
        }
        let volume_capabilities = modes
            .iter()
            .map(|mode| csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: csi_access_mode(mode) as i32,
                }),
                access_type: Some(if block {
                    AccessType::Block(BlockVolume {})
                } else {
                    AccessType::Mount(MountVolume {
                        fs_type: fs_type.clone(),
                        mount_flags: class.mount_options.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                }),
            })
            .collect();
        let required_bytes = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(topolvm_core::quantity::quantity_bytes)
            .transpose()
            .map_err(|e| NotProvisionable(format!("storage request: {e}")))?
            .ok_or_else(|| NotProvisionable("the PVC requests no storage".into()))?;
        let requirements = Self::topology_requirement(selected_node, nodes)?;
        Ok(csi::CreateVolumeRequest {
            name: format!("pvc-{uid}"),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: i64::try_from(required_bytes)
                    .map_err(|_| NotProvisionable("storage request too large".into()))?,
                limit_bytes: 0,
            }),
            volume_capabilities,
            parameters,
            accessibility_requirements: Some(requirements),
            ..Default::default()
        })
    }

    /// `requisite` from every Node with the topology key; `preferred` rotated to the selected
    /// node (`EP:pkg/controller/topology.go`, non-strict).
    pub fn topology_requirement(
        selected_node: &str,
        nodes: &[k8s_openapi::api::core::v1::Node],
    ) -> Result<csi::TopologyRequirement, NotProvisionable> {
        let key = topolvm_core::names::TOPOLOGY_NODE_KEY;
        let value_of = |node: &k8s_openapi::api::core::v1::Node| {
            node.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
        };
        let selected = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(selected_node))
            .and_then(value_of)
            .ok_or_else(|| {
                NotProvisionable(format!(
                    "the selected node {selected_node} lacks the label {key}"
                ))
            })?;
        let mut values: Vec<String> = nodes.iter().filter_map(value_of).collect();
        values.sort();
        values.dedup();
        let term = |v: &String| csi::Topology {
            segments: HashMap::from([(key.to_owned(), v.clone())]),
        };
        let requisite: Vec<csi::Topology> = values.iter().map(term).collect();
        let at = values.iter().position(|v| *v == selected).unwrap_or(0);
        let mut preferred = requisite.clone();
        preferred.rotate_left(at);
        Ok(csi::TopologyRequirement {
            requisite,
            preferred,
        })
    }

    pub async fn create_volume(
        &mut self,
        request: csi::CreateVolumeRequest,
    ) -> Result<csi::Volume, Status> {
        let response = self
            .controller
            .create_volume(with_deadline(request, self.timeout))
            .await?;
        response
            .into_inner()
            .volume
            .ok_or_else(|| Status::internal("CreateVolume answered without a volume"))
    }

    pub async fn delete_volume(&mut self, volume_handle: &str) -> Result<(), Status> {
        let request = csi::DeleteVolumeRequest {
            volume_id: volume_handle.to_owned(),
            ..Default::default()
        };
        self.controller
            .delete_volume(with_deadline(request, self.timeout))
            .await?;
        Ok(())
    }

    /// The capacity-tracking request for `class` on `node` (None: without a segment, as
    /// csi-sanity asks).
    pub fn get_capacity_request(
        class: &k8s_openapi::api::storage::v1::StorageClass,
        node: Option<&str>,
    ) -> csi::GetCapacityRequest {
        csi::GetCapacityRequest {
            volume_capabilities: Vec::new(),
            parameters: class
                .parameters
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            accessible_topology: node.map(|n| csi::Topology {
                segments: HashMap::from([(
                    topolvm_core::names::TOPOLOGY_NODE_KEY.to_owned(),
                    n.to_owned(),
                )]),
            }),
        }
    }

    pub async fn get_capacity(&mut self, request: csi::GetCapacityRequest) -> Result<i64, Status> {
        let response = self
            .controller
            .get_capacity(with_deadline(request, self.timeout))
            .await?;
        Ok(response.into_inner().available_capacity)
    }

    /// external-resizer's request to grow `pv` to `new_bytes`.
    pub fn expand_request(
        pv: &PersistentVolume,
        new_bytes: i64,
    ) -> csi::ControllerExpandVolumeRequest {
        csi::ControllerExpandVolumeRequest {
            volume_id: pv.volume_handle.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: new_bytes,
                limit_bytes: 0,
            }),
            secrets: HashMap::new(),
            volume_capability: Some(Kubelet::capability(pv)),
        }
    }

    pub async fn expand(
        &mut self,
        request: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        Ok(self
            .controller
            .controller_expand_volume(with_deadline(request, self.timeout))
            .await?
            .into_inner())
    }

    /// external-snapshotter's request for a VolumeSnapshot of uid `snapshot_uid` of the volume
    /// `source_handle`, with the VolumeSnapshotClass `parameters`.
    pub fn create_snapshot_request(
        snapshot_uid: &str,
        source_handle: &str,
        parameters: &BTreeMap<String, String>,
    ) -> csi::CreateSnapshotRequest {
        csi::CreateSnapshotRequest {
            source_volume_id: source_handle.to_owned(),
            name: format!("snapshot-{snapshot_uid}"),
            secrets: HashMap::new(),
            parameters: parameters
                .iter()
                .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/snapshotter-secret-"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub async fn create_snapshot(
        &mut self,
        request: csi::CreateSnapshotRequest,
    ) -> Result<csi::Snapshot, Status> {
        self.controller
            .create_snapshot(with_deadline(request, self.timeout))
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| Status::internal("CreateSnapshot answered without a snapshot"))
    }

    pub async fn delete_snapshot(&mut self, snapshot_handle: &str) -> Result<(), Status> {
        let request = csi::DeleteSnapshotRequest {
            snapshot_id: snapshot_handle.to_owned(),
            ..Default::default()
        };
        self.controller
            .delete_snapshot(with_deadline(request, self.timeout))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod sidecar_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Node, PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::api::storage::v1::StorageClass;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str, label: Option<&str>) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.to_owned());
        node.metadata.labels = label.map(|l| {
            BTreeMap::from([(
                topolvm_core::names::TOPOLOGY_NODE_KEY.to_owned(),
                l.to_owned(),
            )])
        });
        node
    }

    /// external-provisioner's request for a WaitForFirstConsumer PVC (`prepareProvision` @
    /// a11af5ce7238, `GenerateAccessibilityRequirements` @ 099f314e13c8; the example of issue
    /// 909: requisite = all nodes, preferred starting with the selected one).
    #[test]
    fn create_volume_request_is_the_provisioners() {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.uid = Some("1234-abcd".to_owned());
        pvc.spec = Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOncePod".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity("1.5Gi".to_owned()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        });
        let class = StorageClass {
            parameters: Some(BTreeMap::from([
                ("csi.storage.k8s.io/fstype".to_owned(), "xfs".to_owned()),
                ("topolvm.io/device-class".to_owned(), "ssd".to_owned()),
            ])),
            mount_options: Some(vec!["noatime".to_owned()]),
            ..Default::default()
        };
        let nodes = [
            node("w3", Some("w3")),
            node("w1", Some("w1")),
            node("cp", None),
            node("w2", Some("w2")),
        ];
        let req =
            Sidecars::create_volume_request(&pvc, &class, "w2", &nodes).expect("test fixture");
        assert_eq!(req.name, "pvc-1234-abcd");
        assert_eq!(
            req.parameters,
            HashMap::from([("topolvm.io/device-class".to_owned(), "ssd".to_owned())])
        );
        assert_eq!(
            req.capacity_range.expect("test fixture").required_bytes,
            1610612736
        );
        assert_eq!(req.volume_capabilities.len(), 1);
        let cap = &req.volume_capabilities[0];
        assert_eq!(
            cap.access_mode.expect("test fixture").mode,
            Mode::SingleNodeWriter as i32
        );
        match &cap.access_type {
            Some(AccessType::Mount(m)) => {
                assert_eq!(m.fs_type, "xfs");
                assert_eq!(m.mount_flags, ["noatime"]);
            }
            other => panic!("{other:?}"),
        }
        let names = |terms: &[csi::Topology]| -> Vec<String> {
            terms
                .iter()
                .map(|t| t.segments[topolvm_core::names::TOPOLOGY_NODE_KEY].clone())
                .collect()
        };
        let topology = req.accessibility_requirements.expect("test fixture");
        assert_eq!(names(&topology.requisite), ["w1", "w2", "w3"]);
        assert_eq!(names(&topology.preferred), ["w2", "w3", "w1"]);

        let mut bad = class.clone();
        bad.parameters
            .as_mut()
            .expect("test fixture")
            .insert("csi.storage.k8s.io/unknown".to_owned(), "x".to_owned());
        assert!(Sidecars::create_volume_request(&pvc, &bad, "w2", &nodes).is_err());
        // GetCapacity keeps the raw parameters.
        let capacity = Sidecars::get_capacity_request(&class, Some("w1"));
        assert_eq!(capacity.parameters.len(), 2);
        assert!(capacity.volume_capabilities.is_empty());
    }
}

/// Where kubelet with root `kubelet_dir` publishes filesystem volume `pv_name` of the pod with
/// uid `pod_uid` (see the module documentation).
pub fn filesystem_target(kubelet_dir: &Path, pod_uid: &str, pv_name: &str) -> PathBuf {
    kubelet_dir
        .join("pods")
        .join(pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(pv_name)
        .join("mount")
}
