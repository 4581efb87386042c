//! Wire-level checks of the generated CSI v1 code.
//!
//! CSI is a wire protocol shared with kubelet and the CSI sidecars, so these tests look at
//! encoded bytes (field numbers, wire types, enum numbers, gRPC service and method paths)
//! rather than at Rust names. The expected numbers are the CSI spec's (v1.12.0).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use prost::Message;
use topolvm_proto::csi;

// ---------------------------------------------------------------------------
// A tiny protobuf wire reader, independent of prost's decoder.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Varint(u64),
    Len(Vec<u8>),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut out = 0u64;
    let mut shift = 0;
    loop {
        let byte = buf[*pos];
        *pos += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return out;
        }
        shift += 7;
        assert!(shift < 64, "varint too long");
    }
}

/// Splits an encoded message into its top-level (field number, value) pairs, in order.
fn fields(buf: &[u8]) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos);
        let (number, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => Value::Varint(read_varint(buf, &mut pos)),
            1 => {
                let mut b = [0; 8];
                b.copy_from_slice(&buf[pos..pos + 8]);
                pos += 8;
                Value::Fixed64(b)
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)).expect("length fits usize");
                let v = buf[pos..pos + len].to_vec();
                pos += len;
                Value::Len(v)
            }
            5 => {
                let mut b = [0; 4];
                b.copy_from_slice(&buf[pos..pos + 4]);
                pos += 4;
                Value::Fixed32(b)
            }
            other => panic!("unexpected wire type {other} for field {number}"),
        };
        out.push((number, value));
    }
    out
}

fn numbers(buf: &[u8]) -> Vec<u64> {
    fields(buf).into_iter().map(|(n, _)| n).collect()
}

/// The payload of the only occurrence of field `number`.
fn only(buf: &[u8], number: u64) -> Value {
    let mut found: Vec<Value> = fields(buf)
        .into_iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "field {number} should occur exactly once");
    found.remove(0)
}

fn len_payload(v: Value) -> Vec<u8> {
    match v {
        Value::Len(b) => b,
        other => panic!("expected a length-delimited value, got {other:?}"),
    }
}

fn varint_payload(v: Value) -> u64 {
    match v {
        Value::Varint(x) => x,
        other => panic!("expected a varint, got {other:?}"),
    }
}

/// Encodes a key (tag) for hand-built messages.
fn key(number: u64, wire_type: u64) -> u8 {
    u8::try_from(number << 3 | wire_type).expect("small field numbers only")
}

fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![
        key(number, 2),
        u8::try_from(payload.len()).expect("short payloads only"),
    ];
    out.extend_from_slice(payload);
    out
}

fn map1(k: &str, v: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_owned(), v.to_owned())])
}

/// A map field entry is a nested message with key = 1 and value = 2.
fn assert_map_entry(entry: Value, k: &str, v: &str) {
    let entry = len_payload(entry);
    assert_eq!(numbers(&entry), vec![1, 2]);
    assert_eq!(len_payload(only(&entry, 1)), k.as_bytes());
    assert_eq!(len_payload(only(&entry, 2)), v.as_bytes());
}

fn mount_capability(mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: "xfs".into(),
                mount_flags: vec!["noatime".into()],
                volume_mount_group: "1000".into(),
            },
        )),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

// ---------------------------------------------------------------------------
// Controller messages
// ---------------------------------------------------------------------------

#[test]
fn create_volume_request_field_numbers() {
    use csi::volume_capability::access_mode::Mode;
    let req = csi::CreateVolumeRequest {
        name: "pvc-1".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        parameters: map1("topolvm.io/device-class", "ssd"),
        secrets: map1("user", "secret"),
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: "snap-1".into(),
                },
            )),
        }),
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![csi::Topology {
                segments: map1("topology.topolvm.io/node", "n1"),
            }],
            preferred: vec![],
        }),
        mutable_parameters: map1("iops", "100"),
    };
    let buf = req.encode_to_vec();

    // name 1, capacity_range 2, volume_capabilities 3, parameters 4, secrets 5,
    // volume_content_source 6, accessibility_requirements 7, mutable_parameters 8;
    // every one of them length-delimited.
    assert_eq!(numbers(&buf), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(fields(&buf).iter().all(|(_, v)| matches!(v, Value::Len(_))));

    assert_eq!(len_payload(only(&buf, 1)), b"pvc-1");
    let range = len_payload(only(&buf, 2));
    assert_eq!(fields(&range), vec![(1, Value::Varint(1 << 30))]);
    assert_map_entry(only(&buf, 4), "topolvm.io/device-class", "ssd");
    assert_map_entry(only(&buf, 5), "user", "secret");
    assert_map_entry(only(&buf, 8), "iops", "100");

    // VolumeContentSource: snapshot = 1 (oneof), SnapshotSource.snapshot_id = 1.
    let source = len_payload(only(&buf, 6));
    let snapshot = len_payload(only(&source, 1));
    assert_eq!(len_payload(only(&snapshot, 1)), b"snap-1");

    // TopologyRequirement.requisite = 1, Topology.segments = 1.
    let requirement = len_payload(only(&buf, 7));
    let topology = len_payload(only(&requirement, 1));
    assert_map_entry(only(&topology, 1), "topology.topolvm.io/node", "n1");

    // And prost reads its own bytes back.
    assert_eq!(
        csi::CreateVolumeRequest::decode(buf.as_slice()).expect("decodes"),
        req
    );
}

#[test]
fn volume_capability_layout() {
    use csi::volume_capability::access_mode::Mode;
    let buf = mount_capability(Mode::SingleNodeMultiWriter).encode_to_vec();
    // oneof access_type { block = 1; mount = 2; } access_mode = 3.
    assert_eq!(numbers(&buf), vec![2, 3]);
    let mount = len_payload(only(&buf, 2));
    // MountVolume: fs_type 1, mount_flags 2, volume_mount_group 3.
    assert_eq!(numbers(&mount), vec![1, 2, 3]);
    assert_eq!(len_payload(only(&mount, 1)), b"xfs");
    assert_eq!(len_payload(only(&mount, 3)), b"1000");
    // AccessMode.mode = 1, SINGLE_NODE_MULTI_WRITER = 7.
    assert_eq!(len_payload(only(&buf, 3)), vec![0x08, 7]);

    let block = csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
        access_mode: None,
    };
    // An empty BlockVolume still shows up as field 1 with a zero-length payload.
    assert_eq!(block.encode_to_vec(), vec![key(1, 2), 0]);
}

#[test]
fn access_mode_numbers() {
    use csi::volume_capability::access_mode::Mode;
    let expected = [
        (Mode::Unknown, 0, "UNKNOWN"),
        (Mode::SingleNodeWriter, 1, "SINGLE_NODE_WRITER"),
        (Mode::SingleNodeReaderOnly, 2, "SINGLE_NODE_READER_ONLY"),
        (Mode::MultiNodeReaderOnly, 3, "MULTI_NODE_READER_ONLY"),
        (Mode::MultiNodeSingleWriter, 4, "MULTI_NODE_SINGLE_WRITER"),
        (Mode::MultiNodeMultiWriter, 5, "MULTI_NODE_MULTI_WRITER"),
        (Mode::SingleNodeSingleWriter, 6, "SINGLE_NODE_SINGLE_WRITER"),
        (Mode::SingleNodeMultiWriter, 7, "SINGLE_NODE_MULTI_WRITER"),
    ];
    for (mode, number, name) in expected {
        assert_eq!(mode as i32, number, "{name}");
        assert_eq!(mode.as_str_name(), name);
        assert_eq!(Mode::try_from(number), Ok(mode));
    }
}

#[test]
fn controller_capability_numbers() {
    use csi::controller_service_capability::rpc::Type;
    let expected = [
        (Type::Unknown, 0, "UNKNOWN"),
        (Type::CreateDeleteVolume, 1, "CREATE_DELETE_VOLUME"),
        (Type::PublishUnpublishVolume, 2, "PUBLISH_UNPUBLISH_VOLUME"),
        (Type::ListVolumes, 3, "LIST_VOLUMES"),
        (Type::GetCapacity, 4, "GET_CAPACITY"),
        (Type::CreateDeleteSnapshot, 5, "CREATE_DELETE_SNAPSHOT"),
        (Type::ListSnapshots, 6, "LIST_SNAPSHOTS"),
        (Type::CloneVolume, 7, "CLONE_VOLUME"),
        (Type::PublishReadonly, 8, "PUBLISH_READONLY"),
        (Type::ExpandVolume, 9, "EXPAND_VOLUME"),
        (
            Type::ListVolumesPublishedNodes,
            10,
            "LIST_VOLUMES_PUBLISHED_NODES",
        ),
        (Type::VolumeCondition, 11, "VOLUME_CONDITION"),
        (Type::GetVolume, 12, "GET_VOLUME"),
        (Type::SingleNodeMultiWriter, 13, "SINGLE_NODE_MULTI_WRITER"),
        (Type::ModifyVolume, 14, "MODIFY_VOLUME"),
        (Type::GetSnapshot, 15, "GET_SNAPSHOT"),
    ];
    for (ty, number, name) in expected {
        assert_eq!(ty as i32, number, "{name}");
        assert_eq!(ty.as_str_name(), name);
    }

    // ControllerGetCapabilitiesResponse.capabilities = 1,
    // ControllerServiceCapability { oneof type { RPC rpc = 1; } }, RPC.type = 1.
    let resp = csi::ControllerGetCapabilitiesResponse {
        capabilities: vec![csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(
                csi::controller_service_capability::Rpc {
                    r#type: Type::ExpandVolume as i32,
                },
            )),
        }],
    };
    assert_eq!(
        resp.encode_to_vec(),
        vec![key(1, 2), 4, key(1, 2), 2, 0x08, 9]
    );
}

#[test]
fn plugin_capability_numbers() {
    use csi::plugin_capability::{service, volume_expansion};
    assert_eq!(service::Type::Unknown as i32, 0);
    assert_eq!(service::Type::ControllerService as i32, 1);
    assert_eq!(service::Type::VolumeAccessibilityConstraints as i32, 2);
    assert_eq!(service::Type::GroupControllerService as i32, 3);
    assert_eq!(service::Type::SnapshotMetadataService as i32, 4);
    assert_eq!(volume_expansion::Type::Online as i32, 1);
    assert_eq!(volume_expansion::Type::Offline as i32, 2);

    // oneof type { Service service = 1; VolumeExpansion volume_expansion = 2; }
    let resp = csi::GetPluginCapabilitiesResponse {
        capabilities: vec![
            csi::PluginCapability {
                r#type: Some(csi::plugin_capability::Type::Service(
                    csi::plugin_capability::Service {
                        r#type: service::Type::VolumeAccessibilityConstraints as i32,
                    },
                )),
            },
            csi::PluginCapability {
                r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                    csi::plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    },
                )),
            },
        ],
    };
    let buf = resp.encode_to_vec();
    #[rustfmt::skip]
    let expected = vec![
        key(1, 2), 4, key(1, 2), 2, 0x08, 2,
        key(1, 2), 4, key(2, 2), 2, 0x08, 1,
    ];
    assert_eq!(buf, expected);
}

#[test]
fn identity_messages() {
    let info = csi::GetPluginInfoResponse {
        name: "topolvm.io".into(),
        vendor_version: "0.1.0".into(),
        manifest: map1("k", "v"),
    };
    let buf = info.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3]);
    assert_eq!(len_payload(only(&buf, 1)), b"topolvm.io");
    assert_map_entry(only(&buf, 3), "k", "v");

    // ProbeResponse.ready is a google.protobuf.BoolValue (Option<bool> in Rust): an explicit
    // `false` is sent as an empty BoolValue message, unset sends nothing at all.
    assert_eq!(
        csi::ProbeResponse { ready: Some(false) }.encode_to_vec(),
        vec![key(1, 2), 0]
    );
    assert_eq!(
        csi::ProbeResponse { ready: Some(true) }.encode_to_vec(),
        vec![key(1, 2), 2, 0x08, 1]
    );
    assert!(
        csi::ProbeResponse { ready: None }
            .encode_to_vec()
            .is_empty()
    );
}

#[test]
fn get_capacity_layout() {
    let resp = csi::GetCapacityResponse {
        available_capacity: 300,
        maximum_volume_size: Some(5),
        minimum_volume_size: Some(0),
    };
    let buf = resp.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3]);
    assert_eq!(varint_payload(only(&buf, 1)), 300);
    // Int64Value wrappers: the inner value is field 1.
    assert_eq!(len_payload(only(&buf, 2)), vec![0x08, 5]);
    assert_eq!(len_payload(only(&buf, 3)), Vec::<u8>::new());

    let req = csi::GetCapacityRequest {
        volume_capabilities: vec![],
        parameters: map1("topolvm.io/device-class", "hdd"),
        accessible_topology: Some(csi::Topology {
            segments: map1("n", "1"),
        }),
    };
    assert_eq!(numbers(&req.encode_to_vec()), vec![2, 3]);
}

#[test]
fn controller_publish_and_expand_layout() {
    let publish = csi::ControllerPublishVolumeRequest {
        volume_id: "v".into(),
        node_id: "n".into(),
        volume_capability: None,
        readonly: true,
        secrets: map1("a", "b"),
        volume_context: map1("c", "d"),
    };
    let buf = publish.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 4, 5, 6]);
    assert_eq!(varint_payload(only(&buf, 4)), 1);

    let expand = csi::ControllerExpandVolumeRequest {
        volume_id: "v".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 0,
            limit_bytes: 7,
        }),
        secrets: map1("a", "b"),
        volume_capability: Some(csi::VolumeCapability::default()),
    };
    let buf = expand.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3, 4]);
    // CapacityRange.limit_bytes = 2.
    assert_eq!(
        fields(&len_payload(only(&buf, 2))),
        vec![(2, Value::Varint(7))]
    );

    let resp = csi::ControllerExpandVolumeResponse {
        capacity_bytes: 8,
        node_expansion_required: true,
    };
    assert_eq!(resp.encode_to_vec(), vec![0x08, 8, 0x10, 1]);

    let modify = csi::ControllerModifyVolumeRequest {
        volume_id: "v".into(),
        secrets: map1("a", "b"),
        mutable_parameters: map1("iops", "3000"),
    };
    assert_eq!(numbers(&modify.encode_to_vec()), vec![1, 2, 3]);
}

#[test]
fn snapshot_layout() {
    let snap = csi::Snapshot {
        size_bytes: 10,
        snapshot_id: "s".into(),
        source_volume_id: "v".into(),
        creation_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        ready_to_use: true,
        group_snapshot_id: "g".into(),
    };
    let buf = snap.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3, 4, 5, 6]);
    // google.protobuf.Timestamp: seconds = 1, nanos = 2.
    let ts = len_payload(only(&buf, 4));
    assert_eq!(
        fields(&ts),
        vec![(1, Value::Varint(1_700_000_000)), (2, Value::Varint(5))]
    );

    let list = csi::ListSnapshotsRequest {
        max_entries: 1,
        starting_token: "t".into(),
        source_volume_id: "v".into(),
        snapshot_id: "s".into(),
        secrets: map1("a", "b"),
    };
    assert_eq!(numbers(&list.encode_to_vec()), vec![1, 2, 3, 4, 5]);
}

// ---------------------------------------------------------------------------
// Node messages
// ---------------------------------------------------------------------------

#[test]
fn node_publish_volume_request_target_path_is_field_4() {
    let req = csi::NodePublishVolumeRequest {
        target_path: "/mnt".into(),
        ..Default::default()
    };
    assert_eq!(req.encode_to_vec(), vec![0x22, 4, b'/', b'm', b'n', b't']);

    // Decode bytes laid out the way kubelet sends them, built by hand here.
    let mut raw = len_field(1, b"vol-1");
    raw.extend(len_field(
        2,
        &[len_field(1, b"dev"), len_field(2, b"/dev/x")].concat(),
    ));
    raw.extend(len_field(3, b"/stage"));
    raw.extend(len_field(4, b"/target"));
    raw.extend(len_field(5, &len_field(3, &[0x08, 1])));
    raw.extend([key(6, 0), 1]);
    raw.extend(len_field(
        7,
        &[len_field(1, b"s"), len_field(2, b"t")].concat(),
    ));
    raw.extend(len_field(
        8,
        &[len_field(1, b"c"), len_field(2, b"d")].concat(),
    ));
    let req = csi::NodePublishVolumeRequest::decode(raw.as_slice()).expect("decodes");
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.publish_context, map1("dev", "/dev/x"));
    assert_eq!(req.staging_target_path, "/stage");
    assert_eq!(req.target_path, "/target");
    let mode = req
        .volume_capability
        .and_then(|c| c.access_mode)
        .map(|m| m.mode);
    assert_eq!(
        mode,
        Some(csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32)
    );
    assert!(req.readonly);
    assert_eq!(req.secrets, map1("s", "t"));
    assert_eq!(req.volume_context, map1("c", "d"));
}

#[test]
fn node_stage_and_unpublish_layout() {
    let stage = csi::NodeStageVolumeRequest {
        volume_id: "v".into(),
        publish_context: map1("a", "b"),
        staging_target_path: "/s".into(),
        volume_capability: Some(csi::VolumeCapability::default()),
        secrets: map1("c", "d"),
        volume_context: map1("e", "f"),
    };
    let buf = stage.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(len_payload(only(&buf, 3)), b"/s");

    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: "/s".into(),
    };
    assert_eq!(numbers(&unstage.encode_to_vec()), vec![1, 2]);

    let unpublish = csi::NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: "/t".into(),
    };
    assert_eq!(len_payload(only(&unpublish.encode_to_vec(), 2)), b"/t");
}

#[test]
fn node_capability_numbers() {
    use csi::node_service_capability::rpc::Type;
    assert_eq!(Type::Unknown as i32, 0);
    assert_eq!(Type::StageUnstageVolume as i32, 1);
    assert_eq!(Type::GetVolumeStats as i32, 2);
    assert_eq!(Type::ExpandVolume as i32, 3);
    assert_eq!(Type::VolumeCondition as i32, 4);
    assert_eq!(Type::SingleNodeMultiWriter as i32, 5);
    assert_eq!(Type::VolumeMountGroup as i32, 6);
    assert_eq!(Type::GetVolumeStats.as_str_name(), "GET_VOLUME_STATS");
    assert_eq!(Type::VolumeCondition.as_str_name(), "VOLUME_CONDITION");

    let cap = csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(
            csi::node_service_capability::Rpc {
                r#type: Type::ExpandVolume as i32,
            },
        )),
    };
    assert_eq!(cap.encode_to_vec(), vec![key(1, 2), 2, 0x08, 3]);
}

#[test]
fn node_info_and_stats_layout() {
    let info = csi::NodeGetInfoResponse {
        node_id: "node-1".into(),
        max_volumes_per_node: 64,
        accessible_topology: Some(csi::Topology {
            segments: map1("k", "v"),
        }),
    };
    let buf = info.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3]);
    assert_eq!(varint_payload(only(&buf, 2)), 64);

    let stats = csi::NodeGetVolumeStatsResponse {
        usage: vec![csi::VolumeUsage {
            available: 1,
            total: 2,
            used: 3,
            unit: csi::volume_usage::Unit::Inodes as i32,
        }],
        volume_condition: Some(csi::VolumeCondition {
            abnormal: true,
            message: "m".into(),
        }),
    };
    let buf = stats.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2]);
    // VolumeUsage: available 1, total 2, used 3, unit 4 (BYTES = 1, INODES = 2).
    assert_eq!(
        len_payload(only(&buf, 1)),
        vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 2]
    );
    // VolumeCondition: abnormal 1, message 2.
    assert_eq!(
        len_payload(only(&buf, 2)),
        vec![0x08, 1, key(2, 2), 1, b'm']
    );

    let req = csi::NodeGetVolumeStatsRequest {
        volume_id: "v".into(),
        volume_path: "/p".into(),
        staging_target_path: "/s".into(),
    };
    assert_eq!(numbers(&req.encode_to_vec()), vec![1, 2, 3]);

    let expand = csi::NodeExpandVolumeRequest {
        volume_id: "v".into(),
        volume_path: "/p".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1,
            limit_bytes: 0,
        }),
        staging_target_path: "/s".into(),
        volume_capability: Some(csi::VolumeCapability::default()),
        secrets: map1("a", "b"),
    };
    assert_eq!(numbers(&expand.encode_to_vec()), vec![1, 2, 3, 4, 5, 6]);
}

// ---------------------------------------------------------------------------
// GroupController and SnapshotMetadata messages
// ---------------------------------------------------------------------------

#[test]
fn group_snapshot_layout() {
    use csi::group_controller_service_capability::rpc::Type;
    assert_eq!(Type::CreateDeleteGetVolumeGroupSnapshot as i32, 1);

    let req = csi::CreateVolumeGroupSnapshotRequest {
        name: "g".into(),
        source_volume_ids: vec!["a".into(), "b".into()],
        secrets: map1("s", "t"),
        parameters: map1("p", "q"),
    };
    assert_eq!(numbers(&req.encode_to_vec()), vec![1, 2, 2, 3, 4]);

    let group = csi::VolumeGroupSnapshot {
        group_snapshot_id: "g".into(),
        snapshots: vec![csi::Snapshot::default()],
        creation_time: Some(prost_types::Timestamp::default()),
        ready_to_use: true,
    };
    assert_eq!(numbers(&group.encode_to_vec()), vec![1, 2, 3, 4]);
}

#[test]
fn snapshot_metadata_layout() {
    assert_eq!(csi::BlockMetadataType::Unknown as i32, 0);
    assert_eq!(csi::BlockMetadataType::FixedLength as i32, 1);
    assert_eq!(csi::BlockMetadataType::VariableLength as i32, 2);

    let req = csi::GetMetadataDeltaRequest {
        base_snapshot_id: "a".into(),
        target_snapshot_id: "b".into(),
        starting_offset: 4096,
        max_results: 10,
        secrets: map1("s", "t"),
    };
    assert_eq!(numbers(&req.encode_to_vec()), vec![1, 2, 3, 4, 5]);

    let resp = csi::GetMetadataAllocatedResponse {
        block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
        volume_capacity_bytes: 1024,
        block_metadata: vec![csi::BlockMetadata {
            byte_offset: 0,
            size_bytes: 512,
        }],
    };
    let buf = resp.encode_to_vec();
    assert_eq!(numbers(&buf), vec![1, 2, 3]);
    assert_eq!(varint_payload(only(&buf, 1)), 2);
    // BlockMetadata: byte_offset 1 (zero, so omitted), size_bytes 2.
    assert_eq!(len_payload(only(&buf, 3)), vec![0x10, 0x80, 0x04]);
}

// ---------------------------------------------------------------------------
// Services: generated tonic traits, servers and clients, gRPC names and paths.
// ---------------------------------------------------------------------------

/// Compile-time proof that the generated server traits and wrappers exist.
#[test]
fn server_traits_exist() {
    use csi::controller_server::{Controller, ControllerServer};
    use csi::group_controller_server::{GroupController, GroupControllerServer};
    use csi::identity_server::{Identity, IdentityServer};
    use csi::node_server::{Node, NodeServer};
    use csi::snapshot_metadata_server::SnapshotMetadataServer;
    use tonic::server::NamedService;

    fn serve_identity<T: Identity>(svc: T) -> IdentityServer<T> {
        IdentityServer::new(svc)
    }
    let _: IdentityServer<Plugin> = serve_identity(Plugin);

    let _: Option<ControllerServer<Box<dyn Controller>>> = None;
    let _: Option<NodeServer<Box<dyn Node>>> = None;
    let _: Option<GroupControllerServer<Box<dyn GroupController>>> = None;
    let _: Option<csi::node_client::NodeClient<tonic::transport::Channel>> = None;
    let _: Option<csi::controller_client::ControllerClient<tonic::transport::Channel>> = None;
    let _: Option<csi::identity_client::IdentityClient<tonic::transport::Channel>> = None;

    assert_eq!(
        <IdentityServer<()> as NamedService>::NAME,
        "csi.v1.Identity"
    );
    assert_eq!(
        <ControllerServer<()> as NamedService>::NAME,
        "csi.v1.Controller"
    );
    assert_eq!(<NodeServer<()> as NamedService>::NAME, "csi.v1.Node");
    assert_eq!(
        <GroupControllerServer<()> as NamedService>::NAME,
        "csi.v1.GroupController"
    );
    assert_eq!(
        <SnapshotMetadataServer<()> as NamedService>::NAME,
        "csi.v1.SnapshotMetadata"
    );
}

/// A minimal Identity implementation used to drive the generated server.
struct Plugin;

#[tonic::async_trait]
impl csi::identity_server::Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _request: tonic::Request<csi::GetPluginInfoRequest>,
    ) -> Result<tonic::Response<csi::GetPluginInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::GetPluginInfoResponse {
            name: "topolvm.io".into(),
            vendor_version: "test".into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: tonic::Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::GetPluginCapabilitiesResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            csi::GetPluginCapabilitiesResponse::default(),
        ))
    }

    async fn probe(
        &self,
        _request: tonic::Request<csi::ProbeRequest>,
    ) -> Result<tonic::Response<csi::ProbeResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::ProbeResponse {
            ready: Some(true),
        }))
    }
}

/// Polls a future that never waits on I/O or timers to completion.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("future did not complete");
}

/// Sends one unary gRPC call through the generated server (no network) and returns the
/// grpc-status (None when OK) and the raw response message bytes.
fn unary_call(path: &str, message: &[u8]) -> (Option<String>, Vec<u8>) {
    use tonic::codegen::{Body as _, Service as _};

    // gRPC framing: uncompressed flag, 4-byte big-endian length, message.
    let mut frame = vec![0u8];
    frame.extend(
        u32::try_from(message.len())
            .expect("small message")
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    let body = String::from_utf8(frame).expect("test messages are ASCII");

    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://plugin{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("valid request");

    let mut server = csi::identity_server::IdentityServer::new(Plugin);
    let response = block_on(server.call(request)).expect("infallible");
    let header_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("?").to_owned());

    let mut body = response.into_body();
    let mut data = Vec::new();
    let mut trailer_status = None;
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    trailer_status = trailers
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap_or("?").to_owned());
                } else if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
            Poll::Ready(Some(Err(status))) => panic!("body error: {status}"),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("response body unexpectedly pending"),
        }
    }
    let status = header_status.or(trailer_status).filter(|s| s != "0");
    let message = if data.len() >= 5 {
        data[5..].to_vec()
    } else {
        Vec::new()
    };
    (status, message)
}

#[test]
fn identity_method_paths_route_to_the_trait() {
    let (status, message) = unary_call("/csi.v1.Identity/GetPluginInfo", &[]);
    assert_eq!(status, None);
    let info = csi::GetPluginInfoResponse::decode(message.as_slice()).expect("decodes");
    assert_eq!(info.name, "topolvm.io");

    let (status, message) = unary_call("/csi.v1.Identity/Probe", &[]);
    assert_eq!(status, None);
    assert_eq!(message, vec![key(1, 2), 2, 0x08, 1]);

    let (status, _) = unary_call("/csi.v1.Identity/GetPluginCapabilities", &[]);
    assert_eq!(status, None);

    // A path that is not part of the service is answered with UNIMPLEMENTED (12).
    let (status, _) = unary_call("/csi.v1.Identity/NoSuchMethod", &[]);
    assert_eq!(status.as_deref(), Some("12"));
}
