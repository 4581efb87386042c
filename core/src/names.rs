//! Every name topolvm-rs shares with Kubernetes objects, TopoLVM and LVM.
//!
//! A cluster that runs TopoLVM must be able to switch to topolvm-rs by swapping binaries, so
//! these strings are a wire contract: changing one breaks existing PVs, StorageClasses, node
//! annotations or LogicalVolume objects. `tests/contract.rs` checks each one against TopoLVM's
//! value as the reference documents state it.

/// CSI plugin name and provisioner name of StorageClasses (`topolvm.io`).
pub const PLUGIN_NAME: &str = "topolvm.io";

/// Topology segment key reported by `NodeGetInfo` and written into PV node affinity; its value
/// is the node name.
pub const TOPOLOGY_NODE_KEY: &str = "topology.topolvm.io/node";

/// Prefix of the annotations that carry capacities per device class.
///
/// On a Node the value is the free bytes of the class; on a Pod (written by the pod webhook)
/// it is the bytes the pod still needs from the class. The rest of the key is the device class
/// name, or [`DEFAULT_DEVICE_CLASS_ANNOTATION_NAME`] for the default class.
pub const CAPACITY_ANNOTATION_PREFIX: &str = "capacity.topolvm.io/";

/// Device class name that means "the class marked `default` in lvmd's config".
///
/// StorageClasses without a `topolvm.io/device-class` parameter and LogicalVolumes with an
/// empty `deviceClass` use it.
pub const DEFAULT_DEVICE_CLASS_NAME: &str = "";

/// What stands for the default device class inside capacity annotation keys: an empty suffix
/// would make the key end in `/`, which is not a valid annotation key.
pub const DEFAULT_DEVICE_CLASS_ANNOTATION_NAME: &str = "00default";

/// Capacity annotation key of the default device class (`capacity.topolvm.io/00default`).
///
/// A node writes it in addition to the key under the default class's own name.
pub const DEFAULT_CAPACITY_ANNOTATION_KEY: &str = "capacity.topolvm.io/00default";

/// Extended resource that the pod webhook adds to a pod's first container (requests = limits
/// = "1") so that kube-scheduler consults the scheduler extender for that pod.
pub const CAPACITY_RESOURCE: &str = "topolvm.io/capacity";

/// StorageClass parameter that selects the device class.
pub const DEVICE_CLASS_PARAMETER: &str = "topolvm.io/device-class";

/// Volume attribute of a CSI inline ephemeral volume (a pod's `volumes[].csi` of our driver)
/// with its size, a Kubernetes quantity; 1 GiB when absent. Its device class is the attribute
/// [`DEVICE_CLASS_PARAMETER`].
pub const INLINE_VOLUME_SIZE_ATTRIBUTE: &str = "size";

/// StorageClass parameter that selects an lvcreate option class of lvmd's config.
pub const LVCREATE_OPTION_CLASS_PARAMETER: &str = "topolvm.io/lvcreate-option-class";

/// StorageClass parameter (standard CSI) with the filesystem to create on the volume.
pub const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";

/// Filesystem used when a StorageClass names none.
pub const DEFAULT_FSTYPE: &str = "ext4";

/// Finalizer on Node objects: the controller removes it after cleaning up the node's
/// LogicalVolumes and PVCs when the node goes away.
pub const NODE_FINALIZER: &str = "topolvm.io/node";

/// Finalizer on LogicalVolume objects: the node agent removes it after removing the LV.
pub const LOGICAL_VOLUME_FINALIZER: &str = "topolvm.io/logicalvolume";

/// LogicalVolume annotation the controller sets, to the time of the request, whenever it raises
/// `spec.size`, so that every attempt is a real change of the object (and so an event) even when
/// the size asked for is the same as before. The value is Go's `time.Time.String()` of a UTC
/// time: see [`crate::timestamp::format_go_utc`]. The node agent never reads or clears it.
pub const RESIZE_REQUESTED_AT_ANNOTATION: &str = "topolvm.io/resize-requested-at";

/// LogicalVolume annotation that marks a volume whose deletion is pending: the controller sets
/// it (to [`PENDING_DELETION_VALUE`]) when it removes the finalizer of a dead node's volume, and
/// the node agent then leaves the object alone instead of adding the finalizer again.
pub const PENDING_DELETION_ANNOTATION: &str = "topolvm.io/pendingdeletion";

/// Value of [`PENDING_DELETION_ANNOTATION`].
pub const PENDING_DELETION_VALUE: &str = "true";

/// Pod annotation the controller sets to nudge kubelet into expanding a filesystem whose PVC
/// has the `FileSystemResizePending` condition. The value is RFC 3339 with nanoseconds: see
/// [`crate::timestamp::format_rfc3339_nano`] and [`crate::timestamp::parse_rfc3339_nano`].
/// TopoLVM uses this name even in legacy mode.
pub const LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION: &str = "topolvm.io/last-resizefs-requested-at";

/// Label the node agent puts on every LogicalVolume, with [`CREATED_BY_VALUE`].
pub const CREATED_BY_LABEL: &str = "app.kubernetes.io/created-by";

/// Value of [`CREATED_BY_LABEL`] on LogicalVolumes (TopoLVM writes the controller's name even
/// though the node agent adds the label).
pub const CREATED_BY_VALUE: &str = "topolvm-controller";

/// Finalizers that TopoLVM's removed PVC webhook (before v0.40) put on PVCs. The controller only
/// ever removes them. `topolvm.io/pvc` is used even in legacy mode.
pub const LEGACY_PVC_FINALIZERS: [&str; 2] = ["topolvm.io/pvc", "topolvm.cybozu.com/pvc"];

/// Directory where old TopoLVM versions made device nodes; the node agent only cleans it up.
pub const LEGACY_DEVICE_DIRECTORY: &str = "/dev/topolvm";

/// PVC annotation (Kubernetes') with the node kube-scheduler chose for a claim with delayed
/// binding. The controller finds a dead node's PVCs by it; the scheduler extender counts the
/// space those claims will take.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// PVC condition type (Kubernetes') that says the filesystem still has to be expanded on the
/// node.
pub const FILESYSTEM_RESIZE_PENDING_CONDITION: &str = "FileSystemResizePending";

/// Value of the extended resource [`CAPACITY_RESOURCE`] in the requests and limits of the first
/// container of a pod the webhook mutates.
pub const CAPACITY_RESOURCE_VALUE: &str = "1";

/// Name of the pod mutating webhook in its MutatingWebhookConfiguration.
pub const POD_WEBHOOK_NAME: &str = "pod-hook.topolvm.io";

/// HTTP path the pod mutating webhook is served on.
pub const POD_WEBHOOK_PATH: &str = "/pod/mutate";

/// Default name of the controller's leader-election Lease (`--leader-election-id`).
pub const DEFAULT_LEADER_ELECTION_ID: &str = "topolvm";

/// Label key on Namespaces; with value [`WEBHOOK_IGNORE_VALUE`] the webhooks skip the
/// namespace (for example the one TopoLVM itself runs in).
pub const WEBHOOK_NAMESPACE_LABEL: &str = "topolvm.io/webhook";

/// Value of [`WEBHOOK_NAMESPACE_LABEL`] that excludes a namespace from the webhooks.
pub const WEBHOOK_IGNORE_VALUE: &str = "ignore";

/// Default path of lvmd's gRPC socket.
pub const DEFAULT_LVMD_SOCKET: &str = "/run/topolvm/lvmd.sock";

/// Default path of the CSI gRPC socket of topolvm-node and topolvm-controller.
pub const DEFAULT_CSI_SOCKET: &str = "/run/topolvm/csi-topolvm.sock";

/// Default path of lvmd's configuration file.
pub const DEFAULT_LVMD_CONFIG_PATH: &str = "/etc/topolvm/lvmd.yaml";

/// Label key on LogicalVolume objects whose value is the node the LV lives on.
///
/// A node agent should watch only its own LogicalVolumes. Kubernetes 1.20 has no field
/// selectors for custom resources (`selectableFields` arrived in 1.30), so `spec.nodeName`
/// cannot be used on the server side; a label selector `topolvm.io/node=<node>` can. The key
/// is the same string as [`NODE_FINALIZER`], which is harmless: labels and finalizers are
/// separate namespaces.
///
/// A label value holds at most 63 characters while a node name may have 253: see
/// [`node_label_value`].
pub const LOGICAL_VOLUME_NODE_LABEL: &str = "topolvm.io/node";

/// LVM tag our lvmd puts on every LV it creates, so LVs that no LogicalVolume object refers
/// to any more can be found (and LVs made by hand are never touched).
pub const LV_TAG_MANAGED: &str = "topolvm.io/managed";

/// Prefix of the LVM tag that records the volume id (the LogicalVolume's `status.volumeID`,
/// which is also the LV's name) on LVs our lvmd creates.
pub const LV_TAG_VOLUME_ID_PREFIX: &str = "topolvm.io/volume=";

/// Prefix of the LVM tag that records the device class an LV was created for, on LVs our lvmd
/// creates: two classes may share a volume group, and lvmd acts on a volume only through its own
/// class.
pub const LV_TAG_DEVICE_CLASS_PREFIX: &str = "topolvm.io/device-class=";

/// Prefix of the LVM tag that marks a CSI inline ephemeral volume (a pod's `csi:` volume, which
/// has no LogicalVolume object) with the UID of the pod it was made for. Such an LV is an
/// orphan once no pod with that UID exists on its node.
pub const LV_TAG_EPHEMERAL_POD_PREFIX: &str = "topolvm.io/ephemeral-pod=";

/// Prefix of the LVM tag topolvm-node asks lvmd to put on the LV of a LogicalVolume, naming the
/// object (`topolvm.io/logicalvolume=<metadata.name>`). The LV's name is the object's UID, which
/// cannot be looked up directly; with this tag one GET tells whether the object still exists,
/// so an orphan LV is confirmed without listing every LogicalVolume of the cluster.
pub const LV_TAG_LOGICAL_VOLUME_PREFIX: &str = "topolvm.io/logicalvolume=";

/// Prefix of the LVM tag lvmd puts on a volume it fills by copying another one
/// (`topolvm.io/copy-source=<source LV>`). LVM cannot take a copy-on-write snapshot of a thick
/// snapshot, so a restore or clone from one is a new plain volume holding a block-for-block copy.
pub const LV_TAG_COPY_SOURCE_PREFIX: &str = "topolvm.io/copy-source=";

/// LVM tag on a volume whose copy (see [`LV_TAG_COPY_SOURCE_PREFIX`]) has not finished. lvmd
/// removes it once every block is written and synced; a request that finds it redoes the copy,
/// so a crash halfway never hands out a half-copied volume.
pub const LV_TAG_COPY_PENDING: &str = "topolvm.io/copy-pending";

/// Longest LVM tag lvmd writes or accepts: the documented limit (Red Hat's "Configuring and
/// managing logical volumes", RHEL 8, "LVM object tags": "strings of up to 1024 characters").
/// lvm2 2.03.16 itself stores longer ones, but a tag rides on every `lvs` row.
pub const LVM_TAG_MAX_LEN: usize = 1024;

/// Longest label value Kubernetes accepts.
pub const LABEL_VALUE_MAX_LEN: usize = 63;

/// Returns the capacity annotation key (on Nodes and Pods) for a device class.
///
/// The default class may be given either as [`DEFAULT_DEVICE_CLASS_NAME`] (`""`) or as
/// [`DEFAULT_DEVICE_CLASS_ANNOTATION_NAME`]; both give `capacity.topolvm.io/00default`.
///
/// ```
/// use topolvm_core::names::capacity_annotation_key;
/// assert_eq!(capacity_annotation_key(""), "capacity.topolvm.io/00default");
/// assert_eq!(capacity_annotation_key("ssd"), "capacity.topolvm.io/ssd");
/// ```
pub fn capacity_annotation_key(device_class: &str) -> String {
    let suffix = if device_class == DEFAULT_DEVICE_CLASS_NAME {
        DEFAULT_DEVICE_CLASS_ANNOTATION_NAME
    } else {
        device_class
    };
    format!("{CAPACITY_ANNOTATION_PREFIX}{suffix}")
}

/// Returns the device class part of a capacity annotation key (everything after
/// [`CAPACITY_ANNOTATION_PREFIX`]), or `None` when the key does not start with the prefix.
///
/// This is TopoLVM's rule: its scheduler extender takes every pod annotation key with the
/// prefix and whatever follows it, an empty rest included, and looks that same key up on the
/// nodes (`extractRequestedSize` in `internal/scheduler/predicate.go` @ `86e72f5317ce`,
/// `scoreNodes` in `internal/scheduler/prioritize.go` @ `46f8ac98fe59`, topolvm/topolvm). The
/// API server refuses an annotation key ending in `/`, so only a request body can carry one.
///
/// The default class comes back as [`DEFAULT_DEVICE_CLASS_ANNOTATION_NAME`], exactly as it
/// appears in the key: the scheduler extender looks the same suffix up on nodes, and per-class
/// divisors for the default class are keyed by it. So an empty rest is a class named `""` in
/// the key, not the default class: it does not round-trip through [`capacity_annotation_key`].
pub fn capacity_annotation_device_class(key: &str) -> Option<&str> {
    key.strip_prefix(CAPACITY_ANNOTATION_PREFIX)
}

/// A device class as a person reads it in a message: `(default)` for the default class in
/// either spelling, else the class's own name.
pub fn device_class_for_humans(device_class: &str) -> &str {
    if is_default_device_class(device_class) {
        "(default)"
    } else {
        device_class
    }
}

/// Returns true when `device_class` names the default class in either spelling.
pub fn is_default_device_class(device_class: &str) -> bool {
    device_class == DEFAULT_DEVICE_CLASS_NAME
        || device_class == DEFAULT_DEVICE_CLASS_ANNOTATION_NAME
}

/// Returns the LVM tag that records `volume_id` on an LV (`topolvm.io/volume=<volume_id>`).
pub fn lv_tag_volume_id(volume_id: &str) -> String {
    format!("{LV_TAG_VOLUME_ID_PREFIX}{volume_id}")
}

/// Returns the volume id recorded by a tag made with [`lv_tag_volume_id`], or `None` for any
/// other tag (including one with an empty id).
pub fn parse_lv_tag_volume_id(tag: &str) -> Option<&str> {
    tag.strip_prefix(LV_TAG_VOLUME_ID_PREFIX)
        .filter(|id| !id.is_empty())
}

/// Returns true when an LV's tags hold none of lvmd's own ([`LV_TAG_MANAGED`], a volume id tag,
/// a device class tag): lvmd did not make it (an admin did, or TopoLVM, whose node sends
/// CreateLV without `tags`: `internal/controller/logicalvolume_controller.go`, topolvm/topolvm).
pub fn has_no_lvmd_tags<S: AsRef<str>>(tags: &[S]) -> bool {
    tags.iter().map(AsRef::as_ref).all(|t| {
        t != LV_TAG_MANAGED
            && parse_lv_tag_volume_id(t).is_none()
            && parse_lv_tag_device_class(t).is_none()
    })
}

/// Returns the LVM tag that records the device class of an LV
/// (`topolvm.io/device-class=<device_class>`).
pub fn lv_tag_device_class(device_class: &str) -> String {
    format!("{LV_TAG_DEVICE_CLASS_PREFIX}{device_class}")
}

/// Returns the device class recorded by a tag made with [`lv_tag_device_class`], or `None` for
/// any other tag.
pub fn parse_lv_tag_device_class(tag: &str) -> Option<&str> {
    tag.strip_prefix(LV_TAG_DEVICE_CLASS_PREFIX)
        .filter(|class| !class.is_empty())
}

/// Returns the LVM tag naming the volume an LV was copied from
/// (`topolvm.io/copy-source=<source>`).
pub fn lv_tag_copy_source(source: &str) -> String {
    format!("{LV_TAG_COPY_SOURCE_PREFIX}{source}")
}

/// Returns the source recorded by a tag made with [`lv_tag_copy_source`], or `None` for any
/// other tag.
pub fn parse_lv_tag_copy_source(tag: &str) -> Option<&str> {
    tag.strip_prefix(LV_TAG_COPY_SOURCE_PREFIX)
        .filter(|source| !source.is_empty())
}

/// Returns true when LVM accepts `tag` as a tag: 1 to [`LVM_TAG_MAX_LEN`] characters from
/// `A-Z a-z 0-9 _ + . - / = ! : # &`, not starting with a hyphen (LVM would read it as an
/// option).
pub fn is_valid_lvm_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= LVM_TAG_MAX_LEN
        && !tag.starts_with('-')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-/=!:#&".contains(&b))
}

/// Returns true when Kubernetes accepts `value` as a label value: at most 63 characters,
/// empty or starting and ending with an alphanumeric character, with `-`, `_` and `.` allowed
/// inside.
pub fn is_valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    let alnum_ends = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    value.len() <= LABEL_VALUE_MAX_LEN
        && alnum_ends
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Returns true when `name` can be a device class name: it becomes the name part of the
/// annotation key `capacity.topolvm.io/<name>`, which Kubernetes limits to 1 to 63 characters
/// from `A-Z a-z 0-9 - _ .`, starting and ending with a letter or digit (the same rule as a
/// non-empty label value).
///
/// TopoLVM checks nothing here and fails later, when the node cannot write the annotation.
pub fn is_valid_device_class_name(name: &str) -> bool {
    !name.is_empty() && is_valid_label_value(name)
}

/// Returns the value of [`LOGICAL_VOLUME_NODE_LABEL`] for a node, or `None` when the node's
/// name cannot be a label value (node names may be up to 253 characters long, label values
/// only 63). For such nodes the label is left off and the node agent has to watch all
/// LogicalVolumes and compare `spec.nodeName` itself.
pub fn node_label_value(node_name: &str) -> Option<&str> {
    (!node_name.is_empty() && is_valid_label_value(node_name)).then_some(node_name)
}

/// Returns the LVM tag that names the LogicalVolume object of an LV
/// (`topolvm.io/logicalvolume=<name>`).
pub fn lv_tag_logical_volume(name: &str) -> String {
    format!("{LV_TAG_LOGICAL_VOLUME_PREFIX}{name}")
}

/// Returns the LogicalVolume name recorded by a tag made with [`lv_tag_logical_volume`], or
/// `None` for any other tag (including one with an empty name).
pub fn parse_lv_tag_logical_volume(tag: &str) -> Option<&str> {
    tag.strip_prefix(LV_TAG_LOGICAL_VOLUME_PREFIX)
        .filter(|name| !name.is_empty())
}

/// The LVM tag that marks an inline ephemeral volume made for the pod `pod_uid`.
pub fn lv_tag_ephemeral_pod(pod_uid: &str) -> String {
    format!("{LV_TAG_EPHEMERAL_POD_PREFIX}{pod_uid}")
}

/// The pod UID of an [`LV_TAG_EPHEMERAL_POD_PREFIX`] tag, or `None` for any other tag.
pub fn parse_lv_tag_ephemeral_pod(tag: &str) -> Option<&str> {
    tag.strip_prefix(LV_TAG_EPHEMERAL_POD_PREFIX)
        .filter(|uid| !uid.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_key_of_the_default_class_in_both_spellings() {
        assert_eq!(capacity_annotation_key(""), "capacity.topolvm.io/00default");
        assert_eq!(
            capacity_annotation_key("00default"),
            "capacity.topolvm.io/00default"
        );
        assert_eq!(capacity_annotation_key("ssd"), "capacity.topolvm.io/ssd");
        assert_eq!(
            capacity_annotation_key("hdd-1"),
            "capacity.topolvm.io/hdd-1"
        );
    }

    #[test]
    fn capacity_key_parses_back_to_its_class() {
        assert_eq!(
            capacity_annotation_device_class("capacity.topolvm.io/ssd"),
            Some("ssd")
        );
        assert_eq!(
            capacity_annotation_device_class(&capacity_annotation_key("")),
            Some("00default")
        );
        // TopoLVM's extender reads an empty class after the prefix (predicate.go @ 86e72f5317ce).
        assert_eq!(
            capacity_annotation_device_class("capacity.topolvm.io/"),
            Some("")
        );
        assert_eq!(
            capacity_annotation_device_class("topolvm.io/capacity"),
            None
        );
        assert_eq!(
            capacity_annotation_device_class("capacity.topolvm.cybozu.com/ssd"),
            None
        );
    }

    #[test]
    fn default_class_is_recognised_in_both_spellings() {
        assert!(is_default_device_class(""));
        assert!(is_default_device_class("00default"));
        assert!(!is_default_device_class("ssd"));
        assert!(!is_default_device_class("default"));
        assert_eq!(device_class_for_humans(""), "(default)");
        assert_eq!(device_class_for_humans("00default"), "(default)");
        assert_eq!(device_class_for_humans("ssd"), "ssd");
    }

    #[test]
    fn volume_id_tag_round_trips() {
        let tag = lv_tag_volume_id("pvc-0a1b2c3d-4e5f");
        assert_eq!(tag, "topolvm.io/volume=pvc-0a1b2c3d-4e5f");
        assert_eq!(parse_lv_tag_volume_id(&tag), Some("pvc-0a1b2c3d-4e5f"));
        assert!(is_valid_lvm_tag(&tag));
    }

    #[test]
    fn logical_volume_tag_round_trips_and_is_a_valid_lvm_tag() {
        // A LogicalVolume is named like a PV (`pvc-<uid>`), a DNS-1123 subdomain.
        let tag = lv_tag_logical_volume("pvc-0a1b2c3d-4e5f.x");
        assert_eq!(tag, "topolvm.io/logicalvolume=pvc-0a1b2c3d-4e5f.x");
        assert!(is_valid_lvm_tag(&tag));
        assert_eq!(
            parse_lv_tag_logical_volume(&tag),
            Some("pvc-0a1b2c3d-4e5f.x")
        );
        assert_eq!(
            parse_lv_tag_logical_volume("topolvm.io/logicalvolume="),
            None
        );
        assert_eq!(parse_lv_tag_logical_volume(&lv_tag_volume_id("x")), None);
    }

    #[test]
    fn other_tags_are_not_volume_ids() {
        assert_eq!(parse_lv_tag_volume_id(LV_TAG_MANAGED), None);
        assert_eq!(parse_lv_tag_volume_id("topolvm.io/volume="), None);
        assert_eq!(parse_lv_tag_volume_id("topolvm.io/volume"), None);
        assert_eq!(parse_lv_tag_volume_id("foo=bar"), None);
        assert_eq!(parse_lv_tag_volume_id(""), None);
    }

    #[test]
    fn lvm_tag_validity() {
        assert!(is_valid_lvm_tag(LV_TAG_MANAGED));
        assert!(is_valid_lvm_tag("a_b+c.d-e/f=g!h:i#j&k"));
        assert!(!is_valid_lvm_tag(""));
        assert!(!is_valid_lvm_tag("-leading-hyphen"));
        assert!(!is_valid_lvm_tag("has space"));
        assert!(!is_valid_lvm_tag("comma,"));
        assert!(!is_valid_lvm_tag("ü"));
        // The documented limit, 1024 characters (LVM_TAG_MAX_LEN cites it).
        assert!(is_valid_lvm_tag(&"a".repeat(1024)));
        assert!(!is_valid_lvm_tag(&"a".repeat(1025)));
        // The longest tag lvmd makes: a LogicalVolume named with Kubernetes' longest name, a
        // 253-character DNS subdomain (k8s.io/apimachinery validation.DNS1123SubdomainMaxLength).
        assert!(is_valid_lvm_tag(&lv_tag_logical_volume(&"n".repeat(253))));
    }

    #[test]
    fn label_value_validity() {
        assert!(is_valid_label_value(""));
        assert!(is_valid_label_value("node-1.example.com"));
        assert!(is_valid_label_value("a"));
        assert!(is_valid_label_value("A_b"));
        assert!(!is_valid_label_value("-a"));
        assert!(!is_valid_label_value("a."));
        assert!(!is_valid_label_value("a/b"));
        assert!(is_valid_label_value(&"a".repeat(63)));
        assert!(!is_valid_label_value(&"a".repeat(64)));
    }

    /// Kubernetes' qualified-name rule for the name part of an annotation key
    /// (`apimachinery/pkg/util/validation`: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at
    /// most 63 characters).
    #[test]
    fn device_class_names_must_fit_an_annotation_key() {
        for ok in [
            "ssd",
            "hdd-1",
            "a",
            "nvme_0.fast",
            "00default",
            &"a".repeat(63),
        ] {
            assert!(is_valid_device_class_name(ok), "{ok:?}");
        }
        for bad in ["", "-ssd", "ssd-", ".a", "a b", "a/b", "ü", &"a".repeat(64)] {
            assert!(!is_valid_device_class_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn node_label_value_only_for_names_that_fit() {
        assert_eq!(node_label_value("worker-1"), Some("worker-1"));
        assert_eq!(node_label_value(""), None);
        let long = format!("{}.example.com", "n".repeat(60));
        assert_eq!(node_label_value(&long), None);
    }
}
