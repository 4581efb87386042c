//! The TopoLVM contract, checked against TopoLVM's own values. Every expected value below is a
//! literal copied from the TopoLVM source (topolvm/topolvm, or external-provisioner where said)
//! named beside it, file @ commit, never one of our own constants.

use std::collections::BTreeMap;

use topolvm_core::capacity::DEFAULT_SPARE_GB;
use topolvm_core::capacity_annotation::{
    GoParseError, NodeCapacityError, controller_node_capacity, node_capacity_annotations,
    node_capacity_patch, parse_go_int, parse_go_uint, webhook_claim_bytes, webhook_device_class,
};
use topolvm_core::names;
use topolvm_core::size::{
    DEFAULT_VOLUME_SIZE, MinimumAllocation, SizeError, VOLUME_SIZE_ALIGNMENT, VolumeAccess,
    create_volume_size, resolve_capacity_range,
};
use topolvm_core::timestamp::{format_go_utc, format_rfc3339_nano, parse_rfc3339_nano};
use topolvm_proto::lvmd::{ThinPoolItem, WatchItem, WatchResponse};

const MI: i64 = 1 << 20;
const GI: i64 = 1 << 30;

#[test]
fn names_are_topolvms() {
    let table: &[(&str, &str, &str)] = &[
        // TopoLVM's `constants.go` @ 110864718b8f unless the label names another source.
        (names::PLUGIN_NAME, "topolvm.io", "constants.go pluginName"),
        (
            names::TOPOLOGY_NODE_KEY,
            "topology.topolvm.io/node",
            "constants.go GetTopologyNodeKey",
        ),
        (
            names::DEVICE_CLASS_PARAMETER,
            "topolvm.io/device-class",
            "constants.go GetDeviceClassKey",
        ),
        (
            names::LVCREATE_OPTION_CLASS_PARAMETER,
            "topolvm.io/lvcreate-option-class",
            "constants.go GetLvcreateOptionClassKey",
        ),
        (
            names::FSTYPE_PARAMETER,
            "csi.storage.k8s.io/fstype",
            "external-provisioner controller.go @ a11af5ce7238 prefixedFsTypeKey",
        ),
        (
            names::CAPACITY_ANNOTATION_PREFIX,
            "capacity.topolvm.io/",
            "constants.go GetCapacityKeyPrefix",
        ),
        (
            names::DEFAULT_CAPACITY_ANNOTATION_KEY,
            "capacity.topolvm.io/00default",
            "constants.go DefaultDeviceClassAnnotationName; metrics_exporter.go @ 4284fc956e96 updateNode",
        ),
        (
            names::DEFAULT_DEVICE_CLASS_ANNOTATION_NAME,
            "00default",
            "constants.go DefaultDeviceClassAnnotationName",
        ),
        (
            names::DEFAULT_DEVICE_CLASS_NAME,
            "",
            "constants.go DefaultDeviceClassName",
        ),
        (
            names::CAPACITY_RESOURCE,
            "topolvm.io/capacity",
            "constants.go GetCapacityResource",
        ),
        (
            names::CAPACITY_RESOURCE_VALUE,
            "1",
            "mutate_pod.go @ 397c05639c83 Handle",
        ),
        (
            names::RESIZE_REQUESTED_AT_ANNOTATION,
            "topolvm.io/resize-requested-at",
            "constants.go GetResizeRequestedAtKey",
        ),
        (
            names::PENDING_DELETION_ANNOTATION,
            "topolvm.io/pendingdeletion",
            "constants.go GetLVPendingDeletionKey",
        ),
        (
            names::PENDING_DELETION_VALUE,
            "true",
            "node_controller.go @ 44099e062507 cleanupLogicalVolume",
        ),
        (
            names::LOGICAL_VOLUME_FINALIZER,
            "topolvm.io/logicalvolume",
            "constants.go GetLogicalVolumeFinalizer",
        ),
        (
            names::NODE_FINALIZER,
            "topolvm.io/node",
            "constants.go GetNodeFinalizer",
        ),
        (
            names::LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION,
            "topolvm.io/last-resizefs-requested-at",
            "constants.go LastResizeFSRequestedAtKey",
        ),
        (
            names::CREATED_BY_LABEL,
            "app.kubernetes.io/created-by",
            "constants.go CreatedbyLabelKey",
        ),
        (
            names::CREATED_BY_VALUE,
            "topolvm-controller",
            "constants.go CreatedbyLabelValue",
        ),
        (
            names::DEFAULT_CSI_SOCKET,
            "/run/topolvm/csi-topolvm.sock",
            "constants.go DefaultCSISocket",
        ),
        (
            names::DEFAULT_LVMD_SOCKET,
            "/run/topolvm/lvmd.sock",
            "constants.go DefaultLVMdSocket",
        ),
        (
            names::LEGACY_DEVICE_DIRECTORY,
            "/dev/topolvm",
            "constants.go LegacyDeviceDirectory",
        ),
        (
            names::WEBHOOK_NAMESPACE_LABEL,
            "topolvm.io/webhook",
            "charts/topolvm/templates/mutatingwebhooks.yaml @ 6ed2c515267d namespaceSelector",
        ),
        (
            names::WEBHOOK_IGNORE_VALUE,
            "ignore",
            "charts/topolvm/templates/mutatingwebhooks.yaml @ 6ed2c515267d namespaceSelector NotIn [ignore]",
        ),
        (
            names::POD_WEBHOOK_NAME,
            "pod-hook.topolvm.io",
            "mutate_pod.go @ 397c05639c83 kubebuilder:webhook marker name",
        ),
        (
            names::POD_WEBHOOK_PATH,
            "/pod/mutate",
            "mutate_pod.go @ 397c05639c83 kubebuilder:webhook marker path",
        ),
        (
            names::SELECTED_NODE_ANNOTATION,
            "volume.kubernetes.io/selected-node",
            "internal/controller/constants.go @ 397a3603a84d AnnSelectedNode",
        ),
        (
            names::FILESYSTEM_RESIZE_PENDING_CONDITION,
            "FileSystemResizePending",
            "persistentvolumeclaim_controller.go @ 47b68a852534 notifyKubeletToResizeFS",
        ),
        (
            names::DEFAULT_LEADER_ELECTION_ID,
            "topolvm",
            "cmd/topolvm-controller/app/root.go @ 596d23c660e4 --leader-election-id",
        ),
        (
            names::DEFAULT_LVMD_CONFIG_PATH,
            "/etc/topolvm/lvmd.yaml",
            "cmd/topolvm-node/app/root.go @ 3a660db97d5e --config default",
        ),
        (
            names::DEFAULT_FSTYPE,
            "ext4",
            "node.go @ 110864718b8f nodePublishFilesystemVolume",
        ),
    ];
    for (ours, topolvm, section) in table {
        assert_eq!(ours, topolvm, "TopoLVM {section}");
    }
    // TopoLVM's `PVCFinalizer`/`LegacyPVCFinalizer` (`constants.go` @ 110864718b8f), now only
    // ever removed (`removeUnusedFinalizer` in
    // `internal/controller/persistentvolumeclaim_controller.go` @ 47b68a852534).
    assert_eq!(
        names::LEGACY_PVC_FINALIZERS,
        ["topolvm.io/pvc", "topolvm.cybozu.com/pvc"]
    );
}

#[test]
fn capacity_keys_per_device_class() {
    // TopoLVM's `GetCapacityKeyPrefix` + `<device-class>` (`constants.go` @ 110864718b8f); ""
    // maps to `00default` (`extractCapacityFromAnnotation` in
    // `internal/driver/internal/k8s/node_service.go` @ 44099e062507).
    assert_eq!(
        names::capacity_annotation_key("ssd"),
        "capacity.topolvm.io/ssd"
    );
    assert_eq!(
        names::capacity_annotation_key(""),
        "capacity.topolvm.io/00default"
    );
}

#[test]
fn numbers_are_topolvms() {
    // TopoLVM's `DefaultSize` (1 GiB) and `MinimumSectorSize` (4096) in `constants.go` @
    // 110864718b8f.
    assert_eq!(DEFAULT_VOLUME_SIZE, 1_073_741_824);
    assert_eq!(VOLUME_SIZE_ALIGNMENT, 4096);
    // TopoLVM's lvmd: `spare-gb` (`pkg/lvmd/types/types.go` @ 228e54a27810), default
    // `defaultSpareGB = 10` (`internal/lvmd/device_class_manager.go` @ 632afc8b5b8f).
    assert_eq!(DEFAULT_SPARE_GB, 10);
    // TopoLVM's flag defaults (`cmd/topolvm-controller/app/root.go` @ 596d23c660e4):
    // --minimum-allocation-block 8Mi, -ext4 32Mi, -xfs 300Mi, -btrfs 200Mi.
    let minimums = MinimumAllocation::default();
    assert_eq!(minimums.for_access(VolumeAccess::Block), 8 * 1_048_576);
    for (fs_type, mebibytes) in [("ext4", 32), ("xfs", 300), ("btrfs", 200)] {
        assert_eq!(
            minimums.for_access(VolumeAccess::Mount { fs_type }),
            mebibytes * 1_048_576,
            "{fs_type}"
        );
    }
}

/// Name, required_bytes, limit_bytes, minimum allocation, expected size.
type SizeCase = (&'static str, i64, i64, u64, Result<u64, SizeError>);

/// TopoLVM's `CreateVolume` sizing (`MinMaxAllocationsFromSettings` in
/// `internal/driver/allocation_settings.go` @ a967c95da14f, then `convertRequestCapacityBytes` in
/// `internal/driver/controller.go` @ 061b806ae885), with TopoLVM's default minimums.
#[test]
fn create_volume_sizes_follow_b2() {
    let minimums = MinimumAllocation::default();
    let mount = |fs_type| minimums.for_access(VolumeAccess::Mount { fs_type });
    let block = minimums.for_access(VolumeAccess::Block);
    let gib = GI as u64;
    let mib = MI as u64;
    let cases: Vec<SizeCase> = vec![
        // Step 2 note: "with ext4 and no request, the result is 32Mi, not 1Gi".
        ("ext4, nothing asked", 0, 0, mount("ext4"), Ok(32 * mib)),
        ("xfs, nothing asked", 0, 0, mount("xfs"), Ok(300 * mib)),
        ("btrfs, nothing asked", 0, 0, mount("btrfs"), Ok(200 * mib)),
        ("block, nothing asked", 0, 0, block, Ok(8 * mib)),
        // Step 2: "An fs_type not in the map, including "", means no minimum", so step 4's
        // "required = 0 -> 1Gi" applies.
        ("empty fs_type, nothing asked", 0, 0, mount(""), Ok(gib)),
        (
            "unknown fs_type, nothing asked",
            0,
            0,
            mount("zfs"),
            Ok(gib),
        ),
        ("empty fs_type, 1 byte", 1, 0, mount(""), Ok(4096)),
        // Step 2: required below the minimum is raised to it.
        ("ext4, 1 MiB asked", MI, 0, mount("ext4"), Ok(32 * mib)),
        (
            "ext4, 100 MiB asked",
            100 * MI,
            0,
            mount("ext4"),
            Ok(100 * mib),
        ),
        // Step 2 raises before step 4 checks the limit.
        (
            "ext4 minimum above the limit",
            MI,
            16 * MI,
            mount("ext4"),
            Err(SizeError::RequiredExceedsLimit {
                required: 32 * mib,
                limit: 16 * mib,
            }),
        ),
        // Step 4: "required = 0 -> 1Gi, unless 0 < limit < 1Gi, in which case limit rounded
        // down to 4096 (0 -> InvalidArgument)".
        ("limit above 1Gi", 0, 2 * GI, mount(""), Ok(gib)),
        ("limit equal to 1Gi", 0, GI, mount(""), Ok(gib)),
        (
            "limit below 1Gi",
            0,
            512 * MI + 100,
            mount(""),
            Ok(512 * mib),
        ),
        (
            "limit below one sector",
            0,
            4095,
            mount(""),
            Err(SizeError::LimitBelowAlignment { limit: 4095 }),
        ),
        // Step 4: "round required up to a multiple of 4096; if that now exceeds the limit ->
        // InvalidArgument".
        ("required rounded up", 5000, 0, mount(""), Ok(8192)),
        (
            "required rounded up under the limit",
            5000,
            8192,
            mount(""),
            Ok(8192),
        ),
        (
            "rounding passes the limit",
            5000,
            5000,
            mount(""),
            Err(SizeError::RoundedExceedsLimit {
                rounded: 8192,
                limit: 5000,
            }),
        ),
        // Step 4: "limit > 0 and required > limit -> InvalidArgument".
        (
            "required over the limit",
            2 * GI,
            GI,
            mount(""),
            Err(SizeError::RequiredExceedsLimit {
                required: 2 * gib,
                limit: gib,
            }),
        ),
        // Step 4: "negative required or limit -> InvalidArgument". A negative required is
        // below every minimum, so step 2 has already raised it (to 0 without a minimum).
        (
            "negative limit",
            0,
            -1,
            mount(""),
            Err(SizeError::NegativeLimit(-1)),
        ),
        ("negative required, no minimum", -1, 0, mount(""), Ok(gib)),
        (
            "negative required, ext4",
            -1,
            0,
            mount("ext4"),
            Ok(32 * mib),
        ),
    ];
    for (name, required, limit, minimum, expected) in cases {
        assert_eq!(
            create_volume_size(required, limit, minimum),
            expected,
            "{name}"
        );
    }
}

/// TopoLVM's `ControllerExpandVolume` (`internal/driver/controller.go` @ 061b806ae885): the
/// capacity conversion (`convertRequestCapacityBytes`, as in CreateVolume but with no minimum)
/// fails with InvalidArgument.
#[test]
fn expand_sizes_follow_b2() {
    assert_eq!(
        resolve_capacity_range(-1, 0),
        Err(SizeError::NegativeRequired(-1))
    );
    assert_eq!(
        resolve_capacity_range(3 * GI + 1, 0),
        Ok(3 * GI as u64 + 4096)
    );
    assert_eq!(resolve_capacity_range(0, 0), Ok(1_073_741_824));
}

/// TopoLVM's `updateSpecSize` (`internal/driver/internal/k8s/logicalvolume_service.go` @
/// 09d8771608fd): `time.Now().UTC().String()`, Go's default time format, e.g.
/// `2025-01-02 03:04:05.123456789 +0000 UTC`.
#[test]
fn resize_requested_at_is_gos_default_time_format() {
    let t = "2025-01-02T03:04:05.123456789Z".parse().expect("time");
    assert_eq!(format_go_utc(t), "2025-01-02 03:04:05.123456789 +0000 UTC");
}

/// TopoLVM's `LastResizeFSRequestedAtKey` (`constants.go` @ 110864718b8f) is written and read as
/// `time.RFC3339Nano` (`notifyKubeletToResizeFS` in
/// `internal/controller/persistentvolumeclaim_controller.go` @ 47b68a852534).
#[test]
fn last_resizefs_requested_at_is_rfc3339_nano() {
    let t = "2025-01-02T03:04:05.123456789Z".parse().expect("time");
    assert_eq!(format_rfc3339_nano(t), "2025-01-02T03:04:05.123456789Z");
    assert_eq!(parse_rfc3339_nano("2025-01-02T03:04:05.123456789Z"), Ok(t));
    assert!(parse_rfc3339_nano("2025-01-02 03:04:05.123456789 +0000 UTC").is_err());
}

fn thick(class: &str, free_bytes: u64) -> WatchItem {
    WatchItem {
        device_class: class.to_owned(),
        free_bytes,
        size_bytes: 200 << 30,
        thin_pool: None,
    }
}

fn thin(class: &str, raw_vg_free: u64, overprovision_bytes: u64) -> WatchItem {
    WatchItem {
        device_class: class.to_owned(),
        free_bytes: raw_vg_free,
        size_bytes: 200 << 30,
        thin_pool: Some(ThinPoolItem {
            data_percent: 10.0,
            metadata_percent: 2.0,
            overprovision_bytes,
            size_bytes: 100 << 30,
        }),
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// TopoLVM's `updateNode` (`internal/runners/metrics_exporter.go` @ 4284fc956e96) with lvmd's
/// `send` (`internal/lvmd/vgservice.go` @ 10cb5cf5ef02): one `capacity.topolvm.io/<dc>` per
/// WatchItem, thick = VG free less spare (`free_bytes`), thin = `thin_pool.overprovision_bytes`
/// (not the raw VG free that thin items carry in `free_bytes`), `00default` =
/// `WatchResponse.free_bytes`; values are decimal byte strings.
#[test]
fn watch_message_becomes_node_annotations_per_a3() {
    let watch = WatchResponse {
        free_bytes: 96_636_764_160, // 90 GiB: the default (thick) class
        items: vec![
            thick("ssd", 96_636_764_160),
            thin("thin", 7_516_192_768, 32_212_254_720), // raw VG free 7 GiB, overprovision 30 GiB
        ],
    };
    assert_eq!(
        node_capacity_annotations(&watch, None),
        annotations(&[
            ("capacity.topolvm.io/00default", "96636764160"),
            ("capacity.topolvm.io/ssd", "96636764160"),
            ("capacity.topolvm.io/thin", "32212254720"),
        ])
    );
}

/// TopoLVM issue 622 (fixed by PR 632): with a thin default class, `00default` is the thin
/// pool's overprovisioned free space, exactly what the class's own key says.
#[test]
fn default_thin_class_gets_the_same_value_under_00default() {
    let watch = WatchResponse {
        free_bytes: 32_212_254_720,
        items: vec![thin("thinpool", 7_516_192_768, 32_212_254_720)],
    };
    for default_class in [None, Some("thinpool")] {
        let node = node_capacity_annotations(&watch, default_class);
        assert_eq!(node["capacity.topolvm.io/00default"], "32212254720");
        assert_eq!(node["capacity.topolvm.io/thinpool"], "32212254720");
    }
}

/// TopoLVM issue 293: annotations of device classes removed from lvmd's config stay forever in
/// TopoLVM; we remove them, and nothing else.
#[test]
fn annotations_of_removed_device_classes_are_removed() {
    let watch = WatchResponse {
        free_bytes: 10,
        items: vec![thick("ssd", 10)],
    };
    let current = annotations(&[
        ("capacity.topolvm.io/00default", "10"),
        ("capacity.topolvm.io/ssd", "10"),
        ("capacity.topolvm.io/hdd", "500"),
        ("node.alpha.kubernetes.io/ttl", "0"),
        ("capacity.topolvm.cybozu.com/hdd", "500"),
    ]);
    let patch = node_capacity_patch(&watch, None, &current);
    assert!(patch.set.is_empty(), "{patch:?}");
    assert_eq!(patch.remove, ["capacity.topolvm.io/hdd"]);
    assert_eq!(
        patch.to_merge_patch(),
        serde_json::json!({"metadata": {"annotations": {"capacity.topolvm.io/hdd": null}}})
    );
}

/// How each reader parses the values (TopoLVM's scheduler: `filterNode` in
/// `internal/scheduler/predicate.go` @ 86e72f5317ce, `strconv.ParseUint`, "bad capacity
/// annotation: "; its controller: `strconv.ParseInt` in `extractCapacityFromAnnotation`,
/// `internal/driver/internal/k8s/node_service.go` @ 44099e062507; `GetCapacity` in
/// `internal/driver/controller.go` @ 061b806ae885: a parse error -> Internal, annotation missing
/// -> 0).
#[test]
fn readers_parse_like_topolvm() {
    // A sign: the scheduler's ParseUint refuses it, the controller's ParseInt takes it.
    assert_eq!(parse_go_uint("+5"), Err(GoParseError::Syntax));
    assert_eq!(parse_go_int("+5"), Ok(5));
    assert_eq!(parse_go_uint("18446744073709551615"), Ok(u64::MAX));
    assert_eq!(
        parse_go_int("18446744073709551615"),
        Err(GoParseError::Range)
    );

    let node = annotations(&[
        ("capacity.topolvm.io/00default", "1073741824"),
        ("capacity.topolvm.io/ssd", "12x"),
    ]);
    assert_eq!(controller_node_capacity(&node, ""), Ok(1_073_741_824));
    assert_eq!(
        controller_node_capacity(&node, "00default"),
        Ok(1_073_741_824)
    );
    let bad = controller_node_capacity(&node, "ssd").expect_err("12x");
    assert!(matches!(bad, NodeCapacityError::Unparseable { .. }));
    assert_eq!(bad.ignored_value(), 0);
    let missing = controller_node_capacity(&node, "hdd").expect_err("missing");
    assert_eq!(missing, NodeCapacityError::Missing);
    assert_eq!(missing.ignored_value(), 0);
}

/// TopoLVM's `pvcCapacity` (`internal/hook/mutate_pod.go` @ 397c05639c83): size =
/// `spec.resources.requests.storage` as a byte value, absent or 0 -> `DefaultSize` (1 GiB); dc =
/// the StorageClass parameter `topolvm.io/device-class` if the key is present, else `00default`;
/// a present-but-empty value gives dc "", which `volumesCapacity` skips
/// (`if len(dc) == 0 { continue }`). We differ on purpose in the last point (TopoLVM's
/// `volumesCapacity` skips a claim whose StorageClass sets `device-class` to the empty string):
/// an empty parameter is the default class, as CreateVolume reads it.
#[test]
fn pod_webhook_counts_claims_per_b6() {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    assert_eq!(webhook_claim_bytes(None), Ok(1_073_741_824));
    assert_eq!(
        webhook_claim_bytes(Some(&Quantity("0".into()))),
        Ok(1_073_741_824)
    );
    assert_eq!(
        webhook_claim_bytes(Some(&Quantity("5Gi".into()))),
        Ok(5_368_709_120)
    );

    assert_eq!(webhook_device_class(&BTreeMap::new()), "00default");
    let with = |value: &str| annotations(&[("topolvm.io/device-class", value)]);
    assert_eq!(webhook_device_class(&with("ssd")), "ssd");
    assert_eq!(webhook_device_class(&with("")), "00default");
}
