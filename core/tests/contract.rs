//! The TopoLVM contract, checked against TopoLVM's values as the project's reference documents
//! state them (`/work/shared/REFERENCE.md` and `/work/shared/NODE-CONTROLLER.md`, gathered from
//! TopoLVM v0.41 at 83e3dcee). Every expected value below is a literal copied from the section
//! named beside it, never one of our own constants.

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
        // NODE-CONTROLLER.md 0 "Names and constants"; REFERENCE.md "Kubernetes names".
        (names::PLUGIN_NAME, "topolvm.io", "0: CSI driver name"),
        (
            names::TOPOLOGY_NODE_KEY,
            "topology.topolvm.io/node",
            "0: topology key",
        ),
        (
            names::DEVICE_CLASS_PARAMETER,
            "topolvm.io/device-class",
            "0: StorageClass param",
        ),
        (
            names::LVCREATE_OPTION_CLASS_PARAMETER,
            "topolvm.io/lvcreate-option-class",
            "0: StorageClass param",
        ),
        (
            names::FSTYPE_PARAMETER,
            "csi.storage.k8s.io/fstype",
            "REFERENCE: StorageClass parameters",
        ),
        (
            names::CAPACITY_ANNOTATION_PREFIX,
            "capacity.topolvm.io/",
            "0: capacity annotation prefix",
        ),
        (
            names::DEFAULT_CAPACITY_ANNOTATION_KEY,
            "capacity.topolvm.io/00default",
            "0: the default class is also written as",
        ),
        (
            names::DEFAULT_DEVICE_CLASS_ANNOTATION_NAME,
            "00default",
            "0 and B.2 GetCapacity",
        ),
        (
            names::DEFAULT_DEVICE_CLASS_NAME,
            "",
            "0: empty/absent = default device class",
        ),
        (
            names::CAPACITY_RESOURCE,
            "topolvm.io/capacity",
            "0: extended resource",
        ),
        (
            names::CAPACITY_RESOURCE_VALUE,
            "1",
            "REFERENCE: requests = limits = \"1\"",
        ),
        (
            names::RESIZE_REQUESTED_AT_ANNOTATION,
            "topolvm.io/resize-requested-at",
            "0: LV resize-retry annotation",
        ),
        (
            names::PENDING_DELETION_ANNOTATION,
            "topolvm.io/pendingdeletion",
            "0: pending deletion",
        ),
        (names::PENDING_DELETION_VALUE, "true", "0: (value \"true\")"),
        (
            names::LOGICAL_VOLUME_FINALIZER,
            "topolvm.io/logicalvolume",
            "0: LV finalizer",
        ),
        (
            names::NODE_FINALIZER,
            "topolvm.io/node",
            "0: Node finalizer",
        ),
        (
            names::LAST_RESIZE_FS_REQUESTED_AT_ANNOTATION,
            "topolvm.io/last-resizefs-requested-at",
            "0: pod annotation that nudges kubelet",
        ),
        (
            names::CREATED_BY_LABEL,
            "app.kubernetes.io/created-by",
            "0: LV label added by the node",
        ),
        (
            names::CREATED_BY_VALUE,
            "topolvm-controller",
            "0: LV label added by the node",
        ),
        (
            names::DEFAULT_CSI_SOCKET,
            "/run/topolvm/csi-topolvm.sock",
            "0: default CSI socket",
        ),
        (
            names::DEFAULT_LVMD_SOCKET,
            "/run/topolvm/lvmd.sock",
            "0: default lvmd socket",
        ),
        (
            names::LEGACY_DEVICE_DIRECTORY,
            "/dev/topolvm",
            "0: legacy device directory",
        ),
        (
            names::WEBHOOK_NAMESPACE_LABEL,
            "topolvm.io/webhook",
            "B.6 namespaceSelector",
        ),
        (
            names::WEBHOOK_IGNORE_VALUE,
            "ignore",
            "B.6 namespaceSelector NotIn [ignore]",
        ),
        (
            names::POD_WEBHOOK_NAME,
            "pod-hook.topolvm.io",
            "B.6 webhook name",
        ),
        (names::POD_WEBHOOK_PATH, "/pod/mutate", "B.6 path"),
        (
            names::SELECTED_NODE_ANNOTATION,
            "volume.kubernetes.io/selected-node",
            "B.4 PVC field index",
        ),
        (
            names::FILESYSTEM_RESIZE_PENDING_CONDITION,
            "FileSystemResizePending",
            "B.5 condition",
        ),
        (
            names::DEFAULT_LEADER_ELECTION_ID,
            "topolvm",
            "B.1 --leader-election-id",
        ),
        (
            names::DEFAULT_LVMD_CONFIG_PATH,
            "/etc/topolvm/lvmd.yaml",
            "A.1 --config default",
        ),
        (
            names::DEFAULT_FSTYPE,
            "ext4",
            "REFERENCE CSI: ext4 (default when empty)",
        ),
    ];
    for (ours, topolvm, section) in table {
        assert_eq!(ours, topolvm, "NODE-CONTROLLER.md/REFERENCE.md {section}");
    }
    // NODE-CONTROLLER.md 0: legacy PVC finalizers, now only ever removed.
    assert_eq!(
        names::LEGACY_PVC_FINALIZERS,
        ["topolvm.io/pvc", "topolvm.cybozu.com/pvc"]
    );
}

#[test]
fn capacity_keys_per_device_class() {
    // NODE-CONTROLLER.md 0: `capacity.topolvm.io/` + `<device-class>`; B.2 GetCapacity: ""
    // maps to `00default`.
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
    // NODE-CONTROLLER.md 0: 1 GiB default, 4096-byte sector rounding.
    assert_eq!(DEFAULT_VOLUME_SIZE, 1_073_741_824);
    assert_eq!(VOLUME_SIZE_ALIGNMENT, 4096);
    // REFERENCE.md lvmd: `spare-gb` (default 10).
    assert_eq!(DEFAULT_SPARE_GB, 10);
    // NODE-CONTROLLER.md B.1 flags: --minimum-allocation-block 8Mi, -ext4 32Mi, -xfs 300Mi,
    // -btrfs 200Mi.
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

/// NODE-CONTROLLER.md B.2 CreateVolume steps 2 and 4, with TopoLVM's default minimums.
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

/// NODE-CONTROLLER.md B.2 ControllerExpandVolume step 1: capacity conversion (step 4 of
/// CreateVolume, no minimum) errors are InvalidArgument.
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

/// NODE-CONTROLLER.md B.2 ControllerExpandVolume step 5: `time.Now().UTC().String()`, Go's
/// default time format, e.g. `2025-01-02 03:04:05.123456789 +0000 UTC`.
#[test]
fn resize_requested_at_is_gos_default_time_format() {
    let t = "2025-01-02T03:04:05.123456789Z".parse().expect("time");
    assert_eq!(format_go_utc(t), "2025-01-02 03:04:05.123456789 +0000 UTC");
}

/// NODE-CONTROLLER.md 0 and B.5: `topolvm.io/last-resizefs-requested-at` is RFC3339Nano.
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

/// NODE-CONTROLLER.md A.3: one `capacity.topolvm.io/<dc>` per WatchItem, thick = VG free less
/// spare (`free_bytes`), thin = `thin_pool.overprovision_bytes` (not the raw VG free that thin
/// items carry in `free_bytes`), `00default` = `WatchResponse.free_bytes`; values are decimal
/// byte strings.
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

/// How each reader parses the values (REFERENCE.md scheduler extender: "bad capacity
/// annotation"; TopoLVM's scheduler uses `strconv.ParseUint`, its controller
/// `strconv.ParseInt` in `internal/driver/internal/k8s/node_service.go`; NODE-CONTROLLER.md B.2
/// GetCapacity: "value not parseable -> Internal", annotation missing -> 0).
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

/// NODE-CONTROLLER.md B.6 handler: "size = `spec.resources.requests.storage` as a byte value;
/// absent or 0 -> 1 GiB"; "dc = the StorageClass parameter `topolvm.io/device-class` if the key
/// is present, else `00default`. A present-but-empty value gives dc "", and such volumes are
/// silently skipped." We differ on purpose in the last point (NODE-CONTROLLER.md E: "The webhook
/// skips a StorageClass whose `device-class` is set to the empty string"): an empty parameter is
/// the default class, as CreateVolume reads it.
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
