//! The Controller service against the CSI spec's (v1.12.0) and TopoLVM's codes
//! (`internal/driver/controller.go` @ 061b806ae885) and csi-sanity's expectations
//! (kubernetes-csi/csi-test `pkg/sanity/controller.go` @ 02c01f2d060a), with a scripted API
//! server (`tower_test::mock::pair`) where an RPC reaches the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::client::Body;
use serde_json::{Value, json};
use tonic::Code;
use topolvm_core::crd::{LogicalVolume, LogicalVolumeSpec, LogicalVolumeStatus};
use topolvm_core::size::{MIB, MinimumAllocation};
use topolvm_proto::csi;
use topolvm_proto::csi::controller_server::Controller;
use topolvm_proto::csi::volume_capability::{
    AccessMode, AccessType as CapType, BlockVolume, MountVolume, access_mode::Mode,
};

use super::cache::{Cache, NodeRecord};
use super::error::Error;
use super::request;
use super::service::{ControllerService, METRIC_NAMES, status_of};
use super::volumes::Volumes;
use topolvm_csi_server::metrics::RpcMetrics;

const GIB: i64 = 1 << 30;
const KEY: &str = "topology.topolvm.io/node";

type Answer = (u16, Value);
type Script = Box<dyn Fn(&Method, &str, &Value) -> Answer + Send + Sync>;

/// A scripted API server: answers every request with `script` and records what it was asked.
struct Api {
    seen: Arc<Mutex<Vec<(Method, String, Value)>>>,
}

impl Api {
    fn seen(&self) -> Vec<(Method, String, Value)> {
        self.seen.lock().expect("test fixture").clone()
    }
}

fn mock(script: Script) -> (kube::Client, Api) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("test fixture");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, answer) = script(&method, &path, &body);
            record
                .lock()
                .expect("test fixture")
                .push((method, path, body));
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        serde_json::to_vec(&answer).expect("test fixture"),
                    ))
                    .expect("test fixture"),
            );
        }
    });
    (kube::Client::new(service, "default"), Api { seen })
}

fn not_found() -> Answer {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn no_api() -> Script {
    Box::new(|method, path, _| panic!("unexpected API call {method} {path}"))
}

fn node(capacity: &[(&str, &str)]) -> NodeRecord {
    NodeRecord {
        topology: None,
        capacity: capacity
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A service whose caches already listed `nodes` and `volumes`.
fn service(
    script: Script,
    nodes: &[(&str, NodeRecord)],
    volumes: &[LogicalVolume],
) -> (ControllerService, Arc<Cache>, Api) {
    let (client, api) = mock(script);
    let cache = Cache::loaded(
        nodes
            .iter()
            .map(|(n, r)| ((*n).to_owned(), r.clone()))
            .collect(),
        volumes,
    );
    let registry = prometheus::Registry::new();
    let service = ControllerService::new(
        Volumes::new(client, cache.clone()),
        MinimumAllocation::default(),
        RpcMetrics::register(&registry, METRIC_NAMES).expect("test fixture"),
    );
    (service, cache, api)
}

fn mount(fs: &str, mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(CapType::Mount(MountVolume {
            fs_type: fs.to_owned(),
            ..Default::default()
        })),
    }
}

fn block(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(CapType::Block(BlockVolume {})),
    }
}

fn range(required: i64, limit: i64) -> Option<csi::CapacityRange> {
    Some(csi::CapacityRange {
        required_bytes: required,
        limit_bytes: limit,
    })
}

fn create(
    name: &str,
    caps: Vec<csi::VolumeCapability>,
    range: Option<csi::CapacityRange>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: range,
        volume_capabilities: caps,
        ..Default::default()
    }
}

fn segment(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([(KEY.to_owned(), node.to_owned())]),
    }
}

fn lv(name: &str, uid: &str, node: &str, size: &str) -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        name,
        LogicalVolumeSpec {
            name: name.to_owned(),
            node_name: node.to_owned(),
            size: Quantity(size.to_owned()),
            ..LogicalVolumeSpec::default()
        },
    );
    lv.metadata.uid = Some(uid.to_owned());
    lv.metadata.generation = Some(1);
    lv
}

fn ready(mut lv: LogicalVolume) -> LogicalVolume {
    let size = lv.spec.size.clone();
    lv.status = Some(LogicalVolumeStatus {
        volume_id: lv.metadata.uid.clone().expect("test fixture"),
        current_size: Some(size),
        ..Default::default()
    });
    lv
}

fn failed(mut lv: LogicalVolume, code: Code) -> LogicalVolume {
    let status = lv.status.get_or_insert_with(Default::default);
    status.code = code as i32;
    status.message = "refused".to_owned();
    lv
}

fn with_timeout<T>(message: T, timeout: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("grpc-timeout", timeout.parse().expect("test fixture"));
    request
}

async fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Every RPC with every bad input the CSI spec names, and the code the spec (or TopoLVM, where
/// the spec is silent) requires. None of these may reach the API server.
#[tokio::test]
async fn bad_requests_get_the_codes_of_the_csi_spec() {
    let (svc, _, api) = service(no_api(), &[("n1", node(&[]))], &[]);
    let rwo = Mode::SingleNodeWriter;
    let cases: Vec<(&str, csi::CreateVolumeRequest)> = vec![
        ("no name", create("", vec![mount("ext4", rwo)], None)),
        ("no capabilities", create("pvc-1", vec![], None)),
        (
            "capability without access type",
            create(
                "pvc-1",
                vec![csi::VolumeCapability {
                    access_mode: Some(AccessMode { mode: rwo as i32 }),
                    access_type: None,
                }],
                None,
            ),
        ),
        (
            "multi-node writer",
            create(
                "pvc-1",
                vec![mount("ext4", Mode::MultiNodeMultiWriter)],
                None,
            ),
        ),
        (
            "reader-only mode among supported ones",
            create(
                "pvc-1",
                vec![block(rwo), block(Mode::MultiNodeReaderOnly)],
                None,
            ),
        ),
        (
            "negative required",
            create("pvc-1", vec![block(rwo)], range(-1, 0)),
        ),
        (
            "negative limit",
            create("pvc-1", vec![block(rwo)], range(0, -1)),
        ),
        (
            "required above limit",
            create("pvc-1", vec![block(rwo)], range(2 * GIB, GIB)),
        ),
        (
            "rounded up above limit",
            create("pvc-1", vec![block(rwo)], range(GIB + 1, GIB + 2)),
        ),
        (
            "not an object name",
            create("pvc_1", vec![block(rwo)], None),
        ),
        (
            "requirements without our key",
            csi::CreateVolumeRequest {
                accessibility_requirements: Some(csi::TopologyRequirement {
                    requisite: vec![csi::Topology {
                        segments: HashMap::from([("zone".to_owned(), "a".to_owned())]),
                    }],
                    preferred: vec![],
                }),
                ..create("pvc-1", vec![block(rwo)], None)
            },
        ),
        (
            "content source without type",
            csi::CreateVolumeRequest {
                volume_content_source: Some(csi::VolumeContentSource { r#type: None }),
                ..create("pvc-1", vec![block(rwo)], None)
            },
        ),
    ];
    for (what, req) in cases {
        assert_eq!(
            code_of(Controller::create_volume(&svc, tonic::Request::new(req)).await).await,
            Code::InvalidArgument,
            "CreateVolume: {what}"
        );
    }
    // The CSI spec: a content source that does not exist is NOT_FOUND (an empty id too).
    let empty_snapshot = csi::CreateVolumeRequest {
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: String::new(),
                },
            )),
        }),
        ..create("pvc-1", vec![block(rwo)], None)
    };
    assert_eq!(
        code_of(Controller::create_volume(&svc, tonic::Request::new(empty_snapshot)).await).await,
        Code::NotFound
    );

    let delete = |id: &str| csi::DeleteVolumeRequest {
        volume_id: id.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        code_of(svc.delete_volume(tonic::Request::new(delete(""))).await).await,
        Code::InvalidArgument,
        "DeleteVolume without id"
    );
    assert_eq!(
        code_of(
            svc.delete_snapshot(tonic::Request::new(csi::DeleteSnapshotRequest::default()))
                .await
        )
        .await,
        Code::InvalidArgument,
        "DeleteSnapshot without id"
    );
    let expand = |id: &str, r| csi::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range: r,
        ..Default::default()
    };
    for (what, req) in [
        ("no id", expand("", range(GIB, 0))),
        ("no capacity range", expand("vol", None)),
        ("negative required", expand("vol", range(-5, 0))),
        ("required above limit", expand("vol", range(2 * GIB, GIB))),
    ] {
        assert_eq!(
            code_of(svc.controller_expand_volume(tonic::Request::new(req)).await).await,
            Code::InvalidArgument,
            "ControllerExpandVolume: {what}"
        );
    }
    for (what, req) in [
        (
            "no name",
            csi::CreateSnapshotRequest {
                source_volume_id: "vol".to_owned(),
                ..Default::default()
            },
        ),
        (
            "no source",
            csi::CreateSnapshotRequest {
                name: "snap".to_owned(),
                ..Default::default()
            },
        ),
    ] {
        assert_eq!(
            code_of(svc.create_snapshot(tonic::Request::new(req)).await).await,
            Code::InvalidArgument,
            "CreateSnapshot: {what}"
        );
    }
    for (what, req) in [
        (
            "no id",
            csi::ValidateVolumeCapabilitiesRequest {
                volume_capabilities: vec![block(rwo)],
                ..Default::default()
            },
        ),
        (
            "no capabilities",
            csi::ValidateVolumeCapabilitiesRequest {
                volume_id: "vol".to_owned(),
                ..Default::default()
            },
        ),
    ] {
        assert_eq!(
            code_of(
                svc.validate_volume_capabilities(tonic::Request::new(req))
                    .await
            )
            .await,
            Code::InvalidArgument,
            "ValidateVolumeCapabilities: {what}"
        );
    }
    // What the capability list does not announce.
    assert_eq!(
        code_of(
            svc.list_volumes(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.controller_publish_volume(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.controller_unpublish_volume(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.list_snapshots(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.get_snapshot(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.controller_get_volume(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert_eq!(
        code_of(
            svc.controller_modify_volume(tonic::Request::new(Default::default()))
                .await
        )
        .await,
        Code::Unimplemented
    );
    assert!(api.seen().is_empty());
}

#[tokio::test]
async fn capabilities_are_topolvms() {
    use csi::controller_service_capability::{Type, rpc};
    let (svc, _, _) = service(no_api(), &[], &[]);
    let caps = svc
        .controller_get_capabilities(tonic::Request::new(Default::default()))
        .await
        .expect("test fixture")
        .into_inner()
        .capabilities;
    let types: Vec<rpc::Type> = caps
        .iter()
        .map(|c| match c.r#type {
            Some(Type::Rpc(r)) => rpc::Type::try_from(r.r#type).expect("test fixture"),
            None => panic!("empty capability"),
        })
        .collect();
    assert_eq!(
        types,
        [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::CloneVolume,
            rpc::Type::GetCapacity,
            rpc::Type::ExpandVolume,
            rpc::Type::CreateDeleteSnapshot
        ]
    );
}

/// Sizes as TopoLVM computes them (allocation_settings.go, convertRequestCapacityBytes).
#[test]
fn sizes_follow_minimum_allocation_and_rounding() {
    let min = MinimumAllocation::default();
    let rwo = Mode::SingleNodeWriter;
    let size = |caps: &[csi::VolumeCapability], r: Option<csi::CapacityRange>| {
        let access = request::check_create_capabilities(caps).expect("test fixture");
        request::create_size(r.as_ref(), access, &min).map_err(|e| status_of(&e).code())
    };
    // ext4 with no request: the minimum, 32Mi, not the 1Gi default (TopoLVM's documented quirk).
    assert_eq!(size(&[mount("ext4", rwo)], None), Ok(32 * MIB));
    assert_eq!(
        size(&[mount("xfs", rwo)], range(MIB as i64, 0)),
        Ok(300 * MIB)
    );
    assert_eq!(size(&[block(rwo)], range(1, 0)), Ok(8 * MIB));
    // An fs type without a minimum, and the empty one: the 1Gi default, rounding to 4096.
    assert_eq!(size(&[mount("", rwo)], None), Ok(1 << 30));
    assert_eq!(
        size(&[mount("zfs", rwo)], range(GIB + 1, 0)),
        Ok((1 << 30) + 4096)
    );
    // Only the first capability decides.
    assert_eq!(size(&[block(rwo), mount("xfs", rwo)], None), Ok(8 * MIB));
    // A minimum above the limit is refused rather than silently capped.
    assert_eq!(
        size(&[mount("xfs", rwo)], range(0, 100 * MIB as i64)),
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        request::expand_size(range(0, 0).as_ref()).expect("test fixture"),
        1 << 30
    );
}

#[test]
fn node_choice() {
    let nodes = [
        (
            "a",
            node(&[
                ("capacity.topolvm.io/00default", "5368709120"),
                ("capacity.topolvm.io/ssd", "100"),
            ]),
        ),
        (
            "b",
            node(&[("capacity.topolvm.io/00default", "10737418240")]),
        ),
        ("c", node(&[])),
    ];
    let choose = |req: Option<&csi::TopologyRequirement>, class: &str, size: u64| {
        let mut iter = nodes.iter().map(|(n, r)| (*n, r));
        request::choose_node(req, class, size, &mut iter).map_err(|e| status_of(&e).code())
    };
    // No requirements: the most free space of the class.
    assert_eq!(choose(None, "", 1 << 30), Ok("b".to_owned()));
    assert_eq!(choose(None, "ssd", 100), Ok("a".to_owned()));
    assert_eq!(choose(None, "ssd", 101), Err(Code::ResourceExhausted));
    assert_eq!(choose(None, "hdd", 1), Err(Code::ResourceExhausted));
    // Requirements: preferred first, then requisite, no capacity check (the node decides).
    let req = csi::TopologyRequirement {
        requisite: vec![segment("a"), segment("b"), segment("c")],
        preferred: vec![segment("c"), segment("a"), segment("b")],
    };
    assert_eq!(choose(Some(&req), "", 1 << 40), Ok("c".to_owned()));
    let requisite_only = csi::TopologyRequirement {
        requisite: vec![segment("a")],
        preferred: vec![],
    };
    assert_eq!(choose(Some(&requisite_only), "", 1), Ok("a".to_owned()));
    let mut empty = std::iter::empty();
    assert_eq!(
        request::choose_node(None, "", 1, &mut empty).map_err(|e| status_of(&e).code()),
        Err(Code::Internal)
    );
    assert!(request::node_allowed(Some(&req), "b"));
    assert!(!request::node_allowed(Some(&requisite_only), "b"));
    assert!(request::node_allowed(None, "b"));
}

#[tokio::test]
async fn get_capacity_sums_or_reads_one_node_and_never_fails_for_a_missing_one() {
    let mut labelled = node(&[
        ("capacity.topolvm.io/00default", "300"),
        ("capacity.topolvm.io/ssd", "7"),
    ]);
    labelled.topology = Some("n1".to_owned());
    let mut unannotated = node(&[]);
    unannotated.topology = Some("n2".to_owned());
    let mut broken = node(&[("capacity.topolvm.io/00default", "lots")]);
    broken.topology = Some("n3".to_owned());
    let (svc, _, _) = service(
        no_api(),
        &[("n1", labelled), ("n2", unannotated), ("n3", broken)],
        &[],
    );
    let ask = |class: Option<&str>, topology: Option<csi::Topology>| {
        let svc = svc.clone();
        let parameters = class
            .map(|c| HashMap::from([("topolvm.io/device-class".to_owned(), c.to_owned())]))
            .unwrap_or_default();
        async move {
            svc.get_capacity(tonic::Request::new(csi::GetCapacityRequest {
                parameters,
                accessible_topology: topology,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().available_capacity)
            .map_err(|s| s.code())
        }
    };
    // Summed; the unparseable "lots" counts as Go's ParseInt fallback, 0.
    assert_eq!(ask(None, None).await, Ok(300));
    assert_eq!(ask(Some("ssd"), None).await, Ok(7));
    assert_eq!(ask(None, Some(segment("n1"))).await, Ok(300));
    // Issue 1201: a node not annotated yet, or unknown, is 0, not an error.
    assert_eq!(ask(None, Some(segment("n2"))).await, Ok(0));
    assert_eq!(ask(None, Some(segment("nowhere"))).await, Ok(0));
    assert_eq!(
        ask(
            None,
            Some(csi::Topology {
                segments: HashMap::from([("zone".to_owned(), "a".to_owned())])
            })
        )
        .await,
        Ok(0)
    );
    assert_eq!(ask(None, Some(segment("n3"))).await, Err(Code::Internal));
}

/// A volume already made by an earlier call is answered from the object, without a new one;
/// the same name with another size is ALREADY_EXISTS (CSI spec, csi-sanity).
#[tokio::test]
async fn create_is_idempotent_by_name_and_refuses_incompatible_repeats() {
    let existing = ready(lv("pvc-abc", "uid-1", "n1", "1Gi"));
    let answer = existing.clone();
    let (svc, _, api) = service(
        Box::new(move |method, path, _| {
            assert_eq!(method, Method::GET, "{path}");
            assert_eq!(path, "/apis/topolvm.io/v1/logicalvolumes/pvc-abc");
            (200, serde_json::to_value(&answer).expect("test fixture"))
        }),
        &[(
            "n1",
            node(&[("capacity.topolvm.io/00default", "10737418240")]),
        )],
        &[],
    );
    // Upper case is lower-cased (csi-sanity's names).
    let req = create(
        "PVC-ABC",
        vec![block(Mode::SingleNodeWriter)],
        range(GIB, 0),
    );
    let volume = svc
        .create_volume(tonic::Request::new(req))
        .await
        .expect("test fixture")
        .into_inner()
        .volume
        .expect("test fixture");
    assert_eq!(volume.volume_id, "uid-1");
    assert_eq!(volume.capacity_bytes, GIB);
    assert_eq!(volume.accessible_topology, vec![segment("n1")]);
    let other_size = create(
        "pvc-abc",
        vec![block(Mode::SingleNodeWriter)],
        range(2 * GIB, 0),
    );
    assert_eq!(
        code_of(svc.create_volume(tonic::Request::new(other_size)).await).await,
        Code::AlreadyExists
    );
    assert!(api.seen().iter().all(|(m, _, _)| m == Method::GET));
}

/// A new volume: the object is created with our node label; the answer comes when the node's
/// status arrives through the cache.
#[tokio::test]
async fn create_makes_a_labelled_object_and_answers_when_the_node_does() {
    let (svc, cache, api) = service(
        Box::new(|method, _, body| match *method {
            Method::GET => not_found(),
            Method::POST => {
                let mut created = body.clone();
                created["metadata"]["uid"] = json!("uid-9");
                created["metadata"]["generation"] = json!(1);
                (201, created)
            }
            _ => panic!("unexpected {method}"),
        }),
        &[],
        &[],
    );
    let req = csi::CreateVolumeRequest {
        parameters: HashMap::from([("topolvm.io/device-class".to_owned(), "ssd".to_owned())]),
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![segment("n1"), segment("n2")],
            preferred: vec![segment("n2"), segment("n1")],
        }),
        ..create(
            "pvc-new",
            vec![mount("", Mode::SingleNodeWriter)],
            range(GIB, 0),
        )
    };
    let call = tokio::spawn({
        let svc = svc.clone();
        async move { svc.create_volume(tonic::Request::new(req)).await }
    });
    // The node agent's answer, as the watch would deliver it.
    let mut node_side = lv("pvc-new", "uid-9", "n2", "1Gi");
    node_side.spec.device_class = "ssd".to_owned();
    loop {
        if api.seen().iter().any(|(m, _, _)| m == Method::POST) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache.apply_volume(&ready(node_side));
    let volume = call
        .await
        .expect("test fixture")
        .expect("test fixture")
        .into_inner()
        .volume
        .expect("test fixture");
    assert_eq!(volume.volume_id, "uid-9");
    assert_eq!(volume.accessible_topology, vec![segment("n2")]);
    let posted = api
        .seen()
        .into_iter()
        .find(|(m, _, _)| m == Method::POST)
        .expect("test fixture")
        .2;
    assert_eq!(posted["metadata"]["name"], "pvc-new");
    assert_eq!(posted["metadata"]["labels"]["topolvm.io/node"], "n2");
    assert_eq!(posted["spec"]["nodeName"], "n2");
    assert_eq!(posted["spec"]["deviceClass"], "ssd");
    assert_eq!(posted["spec"]["size"], "1Gi");
}

/// The node's refusal is passed on with its code (RESOURCE_EXHAUSTED makes the provisioner
/// reschedule) and the object is deleted so that a retry starts afresh.
#[tokio::test]
async fn a_refusal_returns_the_nodes_code_and_deletes_the_object() {
    let refused = failed(lv("pvc-x", "uid-x", "n1", "1Gi"), Code::ResourceExhausted);
    let answer = refused.clone();
    let (svc, _, api) = service(
        Box::new(move |method, _, _| match *method {
            Method::GET => (200, serde_json::to_value(&answer).expect("test fixture")),
            Method::DELETE => (200, serde_json::to_value(&answer).expect("test fixture")),
            _ => panic!("unexpected {method}"),
        }),
        &[],
        &[],
    );
    let req = csi::CreateVolumeRequest {
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![segment("n1")],
            preferred: vec![],
        }),
        ..create("pvc-x", vec![block(Mode::SingleNodeWriter)], range(GIB, 0))
    };
    assert_eq!(
        code_of(svc.create_volume(tonic::Request::new(req)).await).await,
        Code::ResourceExhausted
    );
    let deleted: Vec<_> = api
        .seen()
        .into_iter()
        .filter(|(m, _, _)| m == Method::DELETE)
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].2["preconditions"]["uid"], "uid-x");
}

/// The request's deadline ends the wait with DEADLINE_EXCEEDED; the object stays for a retry.
#[tokio::test]
async fn the_grpc_deadline_ends_the_wait_and_keeps_the_object() {
    let pending = lv("pvc-slow", "uid-s", "n1", "1Gi");
    let answer = pending.clone();
    let (svc, _, api) = service(
        Box::new(move |method, _, _| match *method {
            Method::GET => (200, serde_json::to_value(&answer).expect("test fixture")),
            _ => panic!("unexpected {method}"),
        }),
        &[],
        &[],
    );
    let req = csi::CreateVolumeRequest {
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: vec![segment("n1")],
            preferred: vec![],
        }),
        ..create(
            "pvc-slow",
            vec![block(Mode::SingleNodeWriter)],
            range(GIB, 0),
        )
    };
    let started = std::time::Instant::now();
    assert_eq!(
        code_of(svc.create_volume(with_timeout(req, "100m")).await).await,
        Code::DeadlineExceeded
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(api.seen().iter().all(|(m, _, _)| m == Method::GET));
}

/// Deleting a volume whose Node is gone does not wait for an agent that will never come
/// (issue 868): the finalizer is removed with the pending-deletion mark, then the object is
/// deleted.
#[tokio::test]
async fn delete_with_the_node_gone_removes_the_finalizer_itself() {
    let mut orphan = ready(lv("pvc-o", "uid-o", "gone", "1Gi"));
    orphan.metadata.finalizers = Some(vec![
        "topolvm.io/logicalvolume".to_owned(),
        "other/keep".to_owned(),
    ]);
    orphan.metadata.resource_version = Some("42".to_owned());
    let answer = orphan.clone();
    let (svc, cache, api) = service(
        Box::new(move |method, path, _| match (method.clone(), path) {
            (Method::GET, "/api/v1/nodes/gone") => not_found(),
            (Method::GET, _) | (Method::PATCH, _) | (Method::DELETE, _) => {
                (200, serde_json::to_value(&answer).expect("test fixture"))
            }
            _ => panic!("unexpected {method} {path}"),
        }),
        &[],
        &[orphan.clone()],
    );
    let call = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.delete_volume(tonic::Request::new(csi::DeleteVolumeRequest {
                volume_id: "uid-o".to_owned(),
                ..Default::default()
            }))
            .await
        }
    });
    loop {
        if api.seen().iter().any(|(m, _, _)| m == Method::DELETE) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache.delete_volume("pvc-o");
    call.await.expect("test fixture").expect("test fixture");
    let patch = api
        .seen()
        .into_iter()
        .find(|(m, _, _)| m == Method::PATCH)
        .expect("a patch")
        .2;
    assert_eq!(patch["metadata"]["finalizers"], json!(["other/keep"]));
    assert_eq!(
        patch["metadata"]["annotations"]["topolvm.io/pendingdeletion"],
        "true"
    );
    assert_eq!(patch["metadata"]["resourceVersion"], "42");
    // An unknown id is success (CSI spec: DeleteVolume is idempotent).
    let (svc, _, _) = service(
        Box::new(|method, _, _| {
            assert_eq!(*method, Method::GET);
            (
                200,
                json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolumeList", "metadata": {}, "items": []}),
            )
        }),
        &[],
        &[],
    );
    svc.delete_volume(tonic::Request::new(csi::DeleteVolumeRequest {
        volume_id: "fake-vol-id".to_owned(),
        ..Default::default()
    }))
    .await
    .expect("test fixture");
}

/// An earlier failed resize leaves `status.code` set: it is cleared before `spec.size` is
/// raised, and a failure is only taken from the generation this call wrote.
#[tokio::test]
async fn expand_never_returns_the_code_of_an_earlier_attempt() {
    let mut stale = failed(
        ready(lv("pvc-e", "uid-e", "n1", "1Gi")),
        Code::ResourceExhausted,
    );
    stale.metadata.generation = Some(2);
    let raised = {
        let mut lv = stale.clone();
        lv.spec.size = Quantity("2Gi".to_owned());
        lv.status.as_mut().expect("test fixture").code = 0;
        lv.metadata.generation = Some(3);
        lv
    };
    let answer = raised.clone();
    let (svc, cache, api) = service(
        Box::new(move |method, _, _| match *method {
            Method::PATCH => (200, serde_json::to_value(&answer).expect("test fixture")),
            _ => panic!("unexpected {method}"),
        }),
        &[("n1", node(&[]))],
        &[stale.clone()],
    );
    let call = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.controller_expand_volume(tonic::Request::new(csi::ControllerExpandVolumeRequest {
                volume_id: "uid-e".to_owned(),
                capacity_range: range(2 * GIB, 0),
                volume_capability: Some(mount("ext4", Mode::SingleNodeWriter)),
                ..Default::default()
            }))
            .await
        }
    });
    while api.seen().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A late watch event of the old generation, still failed: must not be the answer.
    cache.apply_volume(&stale);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !call.is_finished(),
        "answered from the earlier attempt's failure"
    );
    let mut grown = raised.clone();
    grown.status.as_mut().expect("test fixture").current_size = Some(Quantity("2Gi".to_owned()));
    cache.apply_volume(&grown);
    let answer = call
        .await
        .expect("test fixture")
        .expect("test fixture")
        .into_inner();
    assert_eq!(answer.capacity_bytes, 2 * GIB);
    assert!(answer.node_expansion_required);
    let seen = api.seen();
    // First the status clear, then the spec with TopoLVM's annotation.
    assert!(seen[0].1.ends_with("/pvc-e/status"), "{seen:?}");
    assert_eq!(seen[0].2["status"]["code"], 0);
    assert_eq!(seen[1].2["spec"]["size"], "2Gi");
    let at = seen[1].2["metadata"]["annotations"]["topolvm.io/resize-requested-at"]
        .as_str()
        .expect("test fixture");
    assert!(at.ends_with(" +0000 UTC"), "{at}");
    // Already big enough: no write, and no node expansion for block.
    let (svc, _, _) = service(no_api(), &[], &[ready(lv("pvc-f", "uid-f", "n1", "1Gi"))]);
    let answer = svc
        .controller_expand_volume(tonic::Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: "uid-f".to_owned(),
            capacity_range: range(GIB / 2, 0),
            volume_capability: Some(block(Mode::SingleNodeWriter)),
            ..Default::default()
        }))
        .await
        .expect("test fixture")
        .into_inner();
    assert_eq!(answer.capacity_bytes, GIB);
    assert!(!answer.node_expansion_required);
}

/// Only SINGLE_NODE_WRITER block or mount is confirmed (the CSI spec: `confirmed` only when
/// every capability is supported; TopoLVM confirms anything).
#[tokio::test]
async fn validate_confirms_only_what_is_supported() {
    let (svc, _, _) = service(no_api(), &[], &[ready(lv("pvc-v", "uid-v", "n1", "1Gi"))]);
    let ask = |caps: Vec<csi::VolumeCapability>| {
        let svc = svc.clone();
        async move {
            svc.validate_volume_capabilities(tonic::Request::new(
                csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: "uid-v".to_owned(),
                    volume_capabilities: caps,
                    ..Default::default()
                },
            ))
            .await
            .expect("test fixture")
            .into_inner()
        }
    };
    let ok = ask(vec![
        mount("xfs", Mode::SingleNodeWriter),
        block(Mode::SingleNodeWriter),
    ])
    .await;
    assert_eq!(
        ok.confirmed
            .expect("test fixture")
            .volume_capabilities
            .len(),
        2
    );
    let no = ask(vec![mount("xfs", Mode::MultiNodeMultiWriter)]).await;
    assert!(no.confirmed.is_none());
    assert!(
        no.message.contains("MULTI_NODE_MULTI_WRITER"),
        "{}",
        no.message
    );
}

#[test]
fn refusals_keep_the_nodes_code() {
    for code in [
        Code::ResourceExhausted,
        Code::NotFound,
        Code::Unimplemented,
        Code::OutOfRange,
    ] {
        let e = Error::Refused {
            code: code as i32,
            message: "m".to_owned(),
        };
        assert_eq!(status_of(&e).code(), code);
    }
}

#[test]
fn object_names() {
    assert_eq!(
        request::object_name("PVC-0A", "name").expect("test fixture"),
        "pvc-0a"
    );
    let long = format!("a{}", "B".repeat(127));
    assert_eq!(
        request::object_name(&long, "name").expect("test fixture"),
        long.to_lowercase()
    );
    assert!(request::object_name("-x", "name").is_err());
    assert!(request::object_name(&"a".repeat(254), "name").is_err());
}

#[test]
fn grpc_timeouts() {
    use super::service::parse_grpc_timeout;
    assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
    assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
    assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout("123456789S"), None);
    assert_eq!(parse_grpc_timeout("S"), None);
    assert_eq!(parse_grpc_timeout("5x"), None);
    let _ = BTreeMap::<(), ()>::new();
}

fn from_volume(id: &str) -> Option<csi::VolumeContentSource> {
    Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.to_owned(),
            },
        )),
    })
}

/// Clones and restores (TopoLVM's `CreateVolume`/`validateContentSource`,
/// `internal/driver/controller.go` @ 061b806ae885): the source decides the node; a smaller size
/// is OUT_OF_RANGE (CSI spec: unsupported capacity), another device class or a node the
/// requirements exclude INVALID_ARGUMENT, a missing source NOT_FOUND.
#[tokio::test]
async fn content_sources_pin_the_node_and_are_checked() {
    let mut source = ready(lv("pvc-src", "uid-src", "n1", "2Gi"));
    source.spec.device_class = "ssd".to_owned();
    let (svc, cache, api) = service(
        Box::new(|method, path, body| match (method.clone(), path) {
            (Method::GET, "/apis/topolvm.io/v1/logicalvolumes") => (
                200,
                json!({"apiVersion": "topolvm.io/v1", "kind": "LogicalVolumeList", "metadata": {}, "items": []}),
            ),
            (Method::GET, _) => not_found(),
            (Method::POST, _) => {
                let mut created = body.clone();
                created["metadata"]["uid"] = json!("uid-clone");
                (201, created)
            }
            _ => panic!("unexpected {method} {path}"),
        }),
        &[],
        &[source],
    );
    let ssd = HashMap::from([("topolvm.io/device-class".to_owned(), "ssd".to_owned())]);
    let clone = |size: i64, id: &str, params: &HashMap<String, String>, node: Option<&str>| {
        csi::CreateVolumeRequest {
            parameters: params.clone(),
            volume_content_source: from_volume(id),
            accessibility_requirements: node.map(|n| csi::TopologyRequirement {
                requisite: vec![segment(n)],
                preferred: vec![],
            }),
            ..create(
                "pvc-clone",
                vec![block(Mode::SingleNodeWriter)],
                range(size, 0),
            )
        }
    };
    for (what, req, want) in [
        (
            "missing source",
            clone(2 * GIB, "uid-nope", &ssd, None),
            Code::NotFound,
        ),
        (
            "smaller than the source",
            clone(GIB, "uid-src", &ssd, None),
            Code::OutOfRange,
        ),
        (
            "other device class",
            clone(2 * GIB, "uid-src", &HashMap::new(), None),
            Code::InvalidArgument,
        ),
        (
            "node excluded",
            clone(2 * GIB, "uid-src", &ssd, Some("n2")),
            Code::InvalidArgument,
        ),
    ] {
        assert_eq!(
            code_of(svc.create_volume(tonic::Request::new(req)).await).await,
            want,
            "{what}"
        );
    }
    let call = tokio::spawn({
        let svc = svc.clone();
        let req = clone(2 * GIB, "uid-src", &ssd, Some("n1"));
        async move { svc.create_volume(tonic::Request::new(req)).await }
    });
    while !api.seen().iter().any(|(m, _, _)| m == Method::POST) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut made = ready(lv("pvc-clone", "uid-clone", "n1", "2Gi"));
    made.spec.source = "pvc-src".to_owned();
    cache.apply_volume(&made);
    let volume = call
        .await
        .expect("test fixture")
        .expect("test fixture")
        .into_inner()
        .volume
        .expect("test fixture");
    // The provisioner fails a clone whose answer does not echo the source.
    assert_eq!(volume.content_source, from_volume("uid-src"));
    let posted = api
        .seen()
        .into_iter()
        .find(|(m, _, _)| m == Method::POST)
        .expect("test fixture")
        .2;
    assert_eq!(posted["spec"]["source"], "pvc-src");
    assert_eq!(posted["spec"]["accessType"], "rw");
    assert_eq!(posted["spec"]["nodeName"], "n1");
}

/// `topolvm_controller_csi_requests_total{method,code}` counts every call by its code.
#[tokio::test]
async fn requests_are_counted_by_method_and_code() {
    let (client, _) = mock(no_api());
    let registry = prometheus::Registry::new();
    let svc = ControllerService::new(
        Volumes::new(client, Cache::new().0),
        MinimumAllocation::default(),
        RpcMetrics::register(&registry, METRIC_NAMES).expect("test fixture"),
    );
    let _ = svc
        .delete_volume(tonic::Request::new(csi::DeleteVolumeRequest::default()))
        .await;
    let _ = svc
        .controller_get_capabilities(tonic::Request::new(Default::default()))
        .await;
    let text = {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .expect("test fixture");
        String::from_utf8(out).expect("test fixture")
    };
    assert!(
        text.contains(
            r#"topolvm_controller_csi_requests_total{code="InvalidArgument",method="DeleteVolume"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"topolvm_controller_csi_requests_total{code="OK",method="ControllerGetCapabilities"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        "topolvm_controller_csi_request_duration_seconds_count{method=\"DeleteVolume\"} 1"
    ));
}
