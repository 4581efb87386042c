//! lvmd's protocol is TopoLVM's: the same package, services, methods, messages, field names,
//! numbers and types, so TopoLVM's topolvm-node can talk to our lvmd and the other way round.
//!
//! The expected table is written out from TopoLVM's `pkg/lvmd/proto/lvmd.proto` (repository
//! topolvm/topolvm, commit 5043be32; its generated `lvmd.pb.go` at 44c31e33 has the same
//! fields, including the deprecated `size_gb` ones). The actual side is `proto/lvmd.proto` as
//! protoc compiles it (the same vendored protoc that `build.rs` uses), read back as a
//! `FileDescriptorSet`.

use std::collections::BTreeMap;
use std::process::Command;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use topolvm_proto::lvmd;

/// (field name, number, type, repeated, deprecated). Message types are written with their
/// full name, as descriptors name them.
type Field = (&'static str, i32, &'static str, bool, bool);

/// [`Field`] with owned strings, for comparing with what protoc made.
type OwnedField = (String, i32, String, bool, bool);

/// Message name to its fields, sorted by number.
type Messages = BTreeMap<String, Vec<OwnedField>>;

const NO: bool = false;
const REPEATED: bool = true;
const DEPRECATED: bool = true;

fn topolvm_messages() -> BTreeMap<&'static str, Vec<Field>> {
    BTreeMap::from([
        ("Empty", vec![]),
        (
            "LogicalVolume",
            vec![
                ("name", 1, "string", NO, NO),
                ("size_gb", 2, "uint64", NO, DEPRECATED),
                ("dev_major", 3, "uint32", NO, NO),
                ("dev_minor", 4, "uint32", NO, NO),
                ("tags", 5, "string", REPEATED, NO),
                ("size_bytes", 6, "int64", NO, NO),
                ("path", 7, "string", NO, NO),
                ("attr", 8, "string", NO, NO),
            ],
        ),
        (
            "CreateLVRequest",
            vec![
                ("name", 1, "string", NO, NO),
                ("size_gb", 2, "uint64", NO, DEPRECATED),
                ("tags", 3, "string", REPEATED, NO),
                ("device_class", 4, "string", NO, NO),
                ("lvcreate_option_class", 5, "string", NO, NO),
                ("size_bytes", 6, "int64", NO, NO),
            ],
        ),
        (
            "CreateLVResponse",
            vec![("volume", 1, ".proto.LogicalVolume", NO, NO)],
        ),
        (
            "RemoveLVRequest",
            vec![
                ("name", 1, "string", NO, NO),
                ("device_class", 2, "string", NO, NO),
            ],
        ),
        (
            "CreateLVSnapshotRequest",
            vec![
                ("name", 1, "string", NO, NO),
                ("tags", 2, "string", REPEATED, NO),
                ("device_class", 3, "string", NO, NO),
                ("source_volume", 4, "string", NO, NO),
                ("size_gb", 5, "uint64", NO, DEPRECATED),
                ("access_type", 6, "string", NO, NO),
                ("size_bytes", 7, "int64", NO, NO),
            ],
        ),
        (
            "CreateLVSnapshotResponse",
            vec![("snapshot", 1, ".proto.LogicalVolume", NO, NO)],
        ),
        (
            "ResizeLVRequest",
            vec![
                ("name", 1, "string", NO, NO),
                ("size_gb", 2, "uint64", NO, DEPRECATED),
                ("device_class", 3, "string", NO, NO),
                ("size_bytes", 7, "int64", NO, NO),
            ],
        ),
        ("ResizeLVResponse", vec![("size_bytes", 1, "int64", NO, NO)]),
        (
            "GetLVListResponse",
            vec![("volumes", 1, ".proto.LogicalVolume", REPEATED, NO)],
        ),
        (
            "GetFreeBytesResponse",
            vec![("free_bytes", 1, "uint64", NO, NO)],
        ),
        (
            "GetLVListRequest",
            vec![("device_class", 1, "string", NO, NO)],
        ),
        (
            "GetFreeBytesRequest",
            vec![("device_class", 1, "string", NO, NO)],
        ),
        (
            "WatchResponse",
            vec![
                ("free_bytes", 1, "uint64", NO, NO),
                ("items", 2, ".proto.WatchItem", REPEATED, NO),
            ],
        ),
        (
            "ThinPoolItem",
            vec![
                ("data_percent", 1, "double", NO, NO),
                ("metadata_percent", 2, "double", NO, NO),
                ("overprovision_bytes", 3, "uint64", NO, NO),
                ("size_bytes", 4, "uint64", NO, NO),
            ],
        ),
        (
            "WatchItem",
            vec![
                ("free_bytes", 1, "uint64", NO, NO),
                ("device_class", 2, "string", NO, NO),
                ("size_bytes", 3, "uint64", NO, NO),
                ("thin_pool", 4, ".proto.ThinPoolItem", NO, NO),
            ],
        ),
    ])
}

/// (service, method, input, output, server streaming).
type Method = (&'static str, &'static str, &'static str, &'static str, bool);

const TOPOLVM_METHODS: &[Method] = &[
    (
        "LVService",
        "CreateLV",
        ".proto.CreateLVRequest",
        ".proto.CreateLVResponse",
        false,
    ),
    (
        "LVService",
        "RemoveLV",
        ".proto.RemoveLVRequest",
        ".proto.Empty",
        false,
    ),
    (
        "LVService",
        "ResizeLV",
        ".proto.ResizeLVRequest",
        ".proto.ResizeLVResponse",
        false,
    ),
    (
        "LVService",
        "CreateLVSnapshot",
        ".proto.CreateLVSnapshotRequest",
        ".proto.CreateLVSnapshotResponse",
        false,
    ),
    (
        "VGService",
        "GetLVList",
        ".proto.GetLVListRequest",
        ".proto.GetLVListResponse",
        false,
    ),
    (
        "VGService",
        "GetFreeBytes",
        ".proto.GetFreeBytesRequest",
        ".proto.GetFreeBytesResponse",
        false,
    ),
    (
        "VGService",
        "Watch",
        ".proto.Empty",
        ".proto.WatchResponse",
        true,
    ),
];

/// `proto/lvmd.proto` compiled by protoc into a descriptor.
fn our_descriptor() -> FileDescriptorProto {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("lvmd.desc");
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(protoc)
        .arg(format!("--proto_path={proto_dir}"))
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("lvmd.proto")
        .status()
        .expect("run protoc");
    assert!(status.success(), "protoc failed on proto/lvmd.proto");
    let bytes = std::fs::read(&out).expect("descriptor set");
    let mut set = FileDescriptorSet::decode(bytes.as_slice()).expect("decode descriptor set");
    assert_eq!(set.file.len(), 1);
    set.file.remove(0)
}

fn type_name(field: &prost_types::FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Enum => field.type_name().to_owned(),
        Type::String => "string".to_owned(),
        Type::Uint64 => "uint64".to_owned(),
        Type::Int64 => "int64".to_owned(),
        Type::Uint32 => "uint32".to_owned(),
        Type::Double => "double".to_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn package_is_topolvms() {
    // TopoLVM: `package proto;`, so the gRPC paths are /proto.LVService/... and
    // /proto.VGService/...
    assert_eq!(our_descriptor().package(), "proto");
}

#[test]
fn messages_match_topolvm_field_by_field() {
    let ours: Messages = our_descriptor()
        .message_type
        .iter()
        .map(|message| {
            let mut fields: Vec<_> = message
                .field
                .iter()
                .map(|f| {
                    (
                        f.name().to_owned(),
                        f.number(),
                        type_name(f),
                        f.label() == Label::Repeated,
                        f.options.as_ref().is_some_and(|o| o.deprecated()),
                    )
                })
                .collect();
            fields.sort_by_key(|f| f.1);
            (message.name().to_owned(), fields)
        })
        .collect();
    let expected: Messages = topolvm_messages()
        .into_iter()
        .map(|(name, mut fields)| {
            fields.sort_by_key(|f| f.1);
            let fields = fields
                .into_iter()
                .map(|(n, num, ty, rep, dep)| (n.to_owned(), num, ty.to_owned(), rep, dep))
                .collect();
            (name.to_owned(), fields)
        })
        .collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "message names"
    );
    for (name, fields) in &expected {
        assert_eq!(&ours[name], fields, "message {name}");
    }
}

#[test]
fn services_match_topolvm_method_by_method() {
    let descriptor = our_descriptor();
    let mut ours: Vec<(String, String, String, String, bool)> = descriptor
        .service
        .iter()
        .flat_map(|service| {
            service.method.iter().map(|m| {
                (
                    service.name().to_owned(),
                    m.name().to_owned(),
                    m.input_type().to_owned(),
                    m.output_type().to_owned(),
                    m.server_streaming(),
                )
            })
        })
        .collect();
    assert!(
        descriptor
            .service
            .iter()
            .flat_map(|s| &s.method)
            .all(|m| !m.client_streaming())
    );
    let mut expected: Vec<(String, String, String, String, bool)> = TOPOLVM_METHODS
        .iter()
        .map(|&(s, m, i, o, stream)| (s.into(), m.into(), i.into(), o.into(), stream))
        .collect();
    ours.sort();
    expected.sort();
    assert_eq!(ours, expected);
}

/// The generated Rust types come from that file: a WatchItem encodes with the field numbers of
/// the table (free_bytes 1, device_class 2, size_bytes 3, thin_pool 4 with overprovision_bytes
/// 3).
#[test]
fn generated_code_uses_the_same_numbers() {
    let item = lvmd::WatchItem {
        free_bytes: 1,
        device_class: "a".to_owned(),
        size_bytes: 2,
        thin_pool: Some(lvmd::ThinPoolItem {
            data_percent: 0.0,
            metadata_percent: 0.0,
            overprovision_bytes: 3,
            size_bytes: 0,
        }),
    };
    assert_eq!(
        item.encode_to_vec(),
        [0x08, 1, 0x12, 1, b'a', 0x18, 2, 0x22, 2, 0x18, 3]
    );
}
