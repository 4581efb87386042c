//! The reconciler against a scripted API server (`tower_test::mock::pair`) and a fake lvmd,
//! scenario by scenario. The requests expected are TopoLVM's (`Reconcile`/`createLV` in
//! `internal/controller/logicalvolume_controller.go` @ 110864718b8f): the finalizer first, CreateLV
//! named by the object's UID, the status fields TopoLVM writes; and our differences
//! (RESOURCE_EXHAUSTED for a missing class, a bad source recorded in status).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tonic::Code;
use topolvm_core::crd::{AccessType, LogicalVolume, LogicalVolumeSpec, LogicalVolumeStatus};
use topolvm_core::names;
use topolvm_proto::lvmd as pb;

use super::volumes::Volumes;
use super::{Context, Error, Metrics, reconcile};

const NODE: &str = "worker-1";
const NAME: &str = "pvc-0001";
const UID: &str = "0d6c4a56-7a4e-4d4a-9d52-1f7c3b1e2a01";
const GIB: i64 = 1 << 30;
const PATH: &str = "/apis/topolvm.io/v1/logicalvolumes/pvc-0001";

// ---- fixtures: a LogicalVolume as the controller makes it, then changed step by step ----

fn logical_volume() -> LogicalVolume {
    let mut lv = LogicalVolume::new(
        NAME,
        LogicalVolumeSpec {
            name: NAME.to_owned(),
            node_name: NODE.to_owned(),
            size: Quantity("1Gi".to_owned()),
            device_class: "ssd".to_owned(),
            ..LogicalVolumeSpec::default()
        },
    );
    lv.metadata.uid = Some(UID.to_owned());
    lv
}

trait Fixture: Sized {
    fn finalized(self) -> Self;
    fn labelled(self) -> Self;
    fn sized(self, size: &str) -> Self;
    fn created(self, current_size: &str) -> Self;
    fn failed(self, code: Code) -> Self;
    fn made_from(self, source: &str, access: Option<AccessType>) -> Self;
    fn deleting(self) -> Self;
    fn pending_deletion(self) -> Self;
}

impl Fixture for LogicalVolume {
    fn finalized(mut self) -> Self {
        self.metadata.finalizers = Some(vec![names::LOGICAL_VOLUME_FINALIZER.to_owned()]);
        self
    }
    fn labelled(mut self) -> Self {
        self.metadata.labels = Some(
            [
                (names::CREATED_BY_LABEL, names::CREATED_BY_VALUE),
                (names::LOGICAL_VOLUME_NODE_LABEL, NODE),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        self
    }
    fn sized(mut self, size: &str) -> Self {
        self.spec.size = Quantity(size.to_owned());
        self
    }
    fn created(mut self, current_size: &str) -> Self {
        self.status = Some(LogicalVolumeStatus {
            volume_id: UID.to_owned(),
            current_size: Some(Quantity(current_size.to_owned())),
            ..LogicalVolumeStatus::default()
        });
        self
    }
    fn failed(mut self, code: Code) -> Self {
        self.status = Some(LogicalVolumeStatus {
            code: code as i32,
            message: "earlier failure".to_owned(),
            ..LogicalVolumeStatus::default()
        });
        self
    }
    fn made_from(mut self, source: &str, access: Option<AccessType>) -> Self {
        self.spec.source = source.to_owned();
        self.spec.access_type = access;
        self
    }
    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        self
    }
    fn pending_deletion(mut self) -> Self {
        self.metadata.annotations = Some(
            [(
                names::PENDING_DELETION_ANNOTATION.to_owned(),
                names::PENDING_DELETION_VALUE.to_owned(),
            )]
            .into(),
        );
        self
    }
}

/// A LogicalVolume `name` on this node whose LV is `volume_id` of `current_size`.
fn source_volume(name: &str, volume_id: &str, current_size: &str) -> LogicalVolume {
    let mut source = logical_volume()
        .finalized()
        .labelled()
        .created(current_size);
    source.metadata.name = Some(name.to_owned());
    source.metadata.uid = Some(volume_id.to_owned());
    source.spec.name = name.to_owned();
    if let Some(status) = source.status.as_mut() {
        status.volume_id = volume_id.to_owned();
    }
    source
}

// ---- a fake lvmd: records calls, answers what the scenario says ----

#[derive(Debug, Clone, PartialEq)]
enum Call {
    CreateLv(pb::CreateLvRequest),
    CreateSnapshot(pb::CreateLvSnapshotRequest),
    Resize(pb::ResizeLvRequest),
    Remove(pb::RemoveLvRequest),
    List(String),
}

#[derive(Debug, Default)]
struct FakeLvmd {
    calls: Mutex<Vec<Call>>,
    /// The answer to every mutation: `None` = success.
    fail_with: Option<tonic::Status>,
    /// What GetLVList answers.
    lvs: Vec<pb::LogicalVolume>,
}

impl FakeLvmd {
    fn failing(status: tonic::Status) -> Self {
        Self {
            fail_with: Some(status),
            ..Self::default()
        }
    }
    fn record(&self, call: Call) -> Result<(), tonic::Status> {
        self.calls.lock().expect("calls").push(call);
        match &self.fail_with {
            Some(status) => Err(status.clone()),
            None => Ok(()),
        }
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Volumes for Arc<FakeLvmd> {
    async fn create_lv(&self, r: pb::CreateLvRequest) -> Result<pb::LogicalVolume, tonic::Status> {
        self.record(Call::CreateLv(r.clone()))?;
        Ok(pb::LogicalVolume {
            name: r.name,
            size_bytes: r.size_bytes,
            ..Default::default()
        })
    }
    async fn create_snapshot(
        &self,
        r: pb::CreateLvSnapshotRequest,
    ) -> Result<pb::LogicalVolume, tonic::Status> {
        self.record(Call::CreateSnapshot(r.clone()))?;
        Ok(pb::LogicalVolume {
            name: r.name,
            size_bytes: r.size_bytes,
            ..Default::default()
        })
    }
    async fn resize_lv(&self, r: pb::ResizeLvRequest) -> Result<i64, tonic::Status> {
        let size = r.size_bytes;
        self.record(Call::Resize(r))?;
        Ok(size)
    }
    async fn remove_lv(&self, r: pb::RemoveLvRequest) -> Result<(), tonic::Status> {
        self.record(Call::Remove(r))
    }
    async fn list_lvs(&self, class: &str) -> Result<Vec<pb::LogicalVolume>, tonic::Status> {
        self.calls
            .lock()
            .expect("calls")
            .push(Call::List(class.to_owned()));
        Ok(self.lvs.clone())
    }
}

// ---- a scripted API server ----

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the reconciler must send, and the answer it gets.
struct Expect {
    method: Method,
    path: &'static str,
    /// For patches: the Content-Type, which says which kind of patch it is.
    content_type: Option<&'static str>,
    /// Checks the request body (JSON).
    check: Box<dyn Fn(&Value) + Send>,
    status: u16,
    answer: Value,
}

fn patch(kind: &'static str, check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect {
        method: Method::PATCH,
        path: PATH,
        content_type: Some(kind),
        check: Box::new(check),
        status: 200,
        answer: json!({}),
    }
}

const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

fn status_patch(check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect {
        path: "/apis/topolvm.io/v1/logicalvolumes/pvc-0001/status",
        ..patch(MERGE, check)
    }
}

fn get(path: &'static str, found: Option<&LogicalVolume>) -> Expect {
    let (status, answer) = match found {
        Some(lv) => (200, serde_json::to_value(lv).expect("json")),
        None => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    };
    Expect {
        method: Method::GET,
        path,
        content_type: None,
        check: Box::new(|_| {}),
        status,
        answer,
    }
}

/// Serves `script` in order, answering each patch with `object` (the reconciler does not read
/// the answer's content), then lets the reconcile finish. A request beyond the script is never
/// answered, so the reconcile hangs and the scenario's timeout fails it.
async fn serve(mut handle: Handle, script: Vec<Expect>, object: LogicalVolume) -> Handle {
    for (step, expect) in script.into_iter().enumerate() {
        let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "step {step}: no request, expected {} {}",
                expect.method, expect.path
            )
        });
        assert_eq!(
            request.method(),
            expect.method,
            "step {step}: {}",
            request.uri()
        );
        assert_eq!(request.uri().path(), expect.path, "step {step}");
        if let Some(kind) = expect.content_type {
            assert_eq!(
                request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some(kind),
                "step {step}: kind of patch"
            );
        }
        let body = request.into_body().collect_bytes().await.expect("body");
        if !body.is_empty() {
            let body: Value = serde_json::from_slice(&body).expect("JSON body");
            (expect.check)(&body);
        }
        let answer = if expect.status == 200 && expect.method == Method::PATCH {
            serde_json::to_value(&object).expect("json")
        } else {
            expect.answer
        };
        respond.send_response(
            Response::builder()
                .status(expect.status)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response"),
        );
    }
    // Kept alive: a dropped handle would fail an extra request instead of leaving it hanging.
    handle
}

/// Runs one reconcile of `lv` against `script` and `lvmd`.
async fn scenario(
    lv: LogicalVolume,
    lvmd: Arc<FakeLvmd>,
    script: Vec<Expect>,
) -> Result<Action, Error> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context::new(
        client,
        NODE.to_owned(),
        lvmd,
        Metrics::register(&registry).expect("metrics"),
    ));
    let server = tokio::spawn(serve(handle, script, lv.clone()));
    let result = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(lv), ctx))
        .await
        .expect("the reconcile made no request beyond the script and finished");
    drop(
        server
            .await
            .expect("every scripted request came, as expected"),
    );
    result
}

fn finalizer_added(body: &Value) {
    let ops = body.as_array().expect("a JSON patch");
    assert!(
        ops.iter().any(|op| op["op"] == "add"
            && op["path"] == "/metadata/finalizers"
            && op["value"] == json!([names::LOGICAL_VOLUME_FINALIZER])),
        "{body}"
    );
}

fn labels_added(body: &Value) {
    let labels = &body["metadata"]["labels"];
    assert_eq!(
        labels[names::CREATED_BY_LABEL],
        "topolvm-controller",
        "{body}"
    );
    assert_eq!(labels[names::LOGICAL_VOLUME_NODE_LABEL], NODE, "{body}");
}

fn failure_recorded(code: Code, message_has: &'static str) -> impl Fn(&Value) + Send {
    move |body| {
        assert_eq!(body["status"]["code"], json!(code as i32), "{body}");
        let message = body["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(message_has),
            "{message:?} lacks {message_has:?}"
        );
        assert!(body["status"].get("volumeID").is_none(), "{body}");
    }
}

// ---- scenarios ----

#[tokio::test]
async fn the_finalizer_comes_first_and_nothing_else() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume(),
        lvmd.clone(),
        vec![patch(JSON_PATCH, finalizer_added)],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lvmd.calls(), []);
}

#[tokio::test]
async fn create_labels_then_creates_the_lv_named_by_uid_and_records_it() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume().finalized(),
        lvmd.clone(),
        vec![
            patch(MERGE, labels_added),
            status_patch(|body| {
                assert_eq!(
                    body["status"],
                    json!({"volumeID": UID, "currentSize": "1Gi", "code": 0, "message": null}),
                    "TopoLVM's success status; null clears the message"
                );
            }),
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [Call::CreateLv(pb::CreateLvRequest {
            name: UID.to_owned(),
            tags: vec!["topolvm.io/logicalvolume=pvc-0001".to_owned()],
            device_class: "ssd".to_owned(),
            size_bytes: GIB,
            ..Default::default()
        })]
    );
}

#[tokio::test]
async fn a_class_this_node_lacks_is_resource_exhausted_so_the_pod_is_rescheduled() {
    let lvmd = Arc::new(FakeLvmd::failing(tonic::Status::not_found(
        "device class not found: ssd",
    )));
    let result = scenario(
        logical_volume().finalized().labelled(),
        lvmd.clone(),
        vec![status_patch(failure_recorded(
            Code::ResourceExhausted,
            "device class ssd is not on node worker-1",
        ))],
    )
    .await;
    assert!(matches!(result, Err(Error::Finalizer(_))), "{result:?}");
    assert_eq!(lvmd.calls().len(), 1);
}

#[tokio::test]
async fn other_lvmd_errors_are_recorded_with_their_code() {
    let lvmd = Arc::new(FakeLvmd::failing(tonic::Status::resource_exhausted(
        "no enough space left on VG: free=0, requested=1073741824",
    )));
    let result = scenario(
        logical_volume().finalized().labelled(),
        lvmd,
        vec![status_patch(failure_recorded(
            Code::ResourceExhausted,
            "no enough space",
        ))],
    )
    .await;
    let error = result.expect_err("the failure is retried");
    assert_eq!(error.metric_label(), "lvmd");
}

#[tokio::test]
async fn a_missing_source_is_recorded_not_waited_for() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .made_from("pvc-gone", Some(AccessType::ReadOnly)),
        lvmd.clone(),
        vec![
            get("/apis/topolvm.io/v1/logicalvolumes/pvc-gone", None),
            status_patch(failure_recorded(Code::NotFound, "pvc-gone does not exist")),
        ],
    )
    .await;
    assert!(result.is_err());
    assert_eq!(lvmd.calls(), [], "lvmd is not asked");
}

#[tokio::test]
async fn a_snapshot_smaller_than_its_source_is_invalid() {
    let source = source_volume("pvc-src", "1111aaaa-7a4e-4d4a-9d52-1f7c3b1e2a01", "2Gi");
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .made_from("pvc-src", Some(AccessType::ReadWrite)),
        lvmd.clone(),
        vec![
            get("/apis/topolvm.io/v1/logicalvolumes/pvc-src", Some(&source)),
            status_patch(failure_recorded(Code::InvalidArgument, "smaller than")),
        ],
    )
    .await;
    assert!(result.is_err());
    assert_eq!(lvmd.calls(), []);
}

#[tokio::test]
async fn a_source_without_access_type_is_invalid() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .made_from("pvc-src", None),
        lvmd.clone(),
        vec![status_patch(failure_recorded(
            Code::InvalidArgument,
            "accessType",
        ))],
    )
    .await;
    assert!(result.is_err());
    assert_eq!(lvmd.calls(), []);
}

#[tokio::test]
async fn a_snapshot_names_its_source_volume_and_access_type() {
    let source_id = "1111aaaa-7a4e-4d4a-9d52-1f7c3b1e2a01";
    let source = source_volume("pvc-src", source_id, "1Gi");
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .made_from("pvc-src", Some(AccessType::ReadOnly)),
        lvmd.clone(),
        vec![
            get("/apis/topolvm.io/v1/logicalvolumes/pvc-src", Some(&source)),
            status_patch(|body| {
                assert_eq!(body["status"]["volumeID"], UID);
                assert_eq!(body["status"]["currentSize"], "1Gi");
            }),
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [Call::CreateSnapshot(pb::CreateLvSnapshotRequest {
            name: UID.to_owned(),
            tags: vec!["topolvm.io/logicalvolume=pvc-0001".to_owned()],
            device_class: "ssd".to_owned(),
            source_volume: source_id.to_owned(),
            access_type: "ro".to_owned(),
            size_bytes: GIB,
            ..Default::default()
        })]
    );
}

#[tokio::test]
async fn a_larger_spec_size_resizes_and_records_the_new_size() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .created("1Gi")
            .sized("2Gi"),
        lvmd.clone(),
        vec![status_patch(|body| {
            assert_eq!(
                body["status"],
                json!({"currentSize": "2Gi", "code": 0, "message": null})
            );
        })],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [
            // The first reconcile of a made volume looks for TopoLVM's untagged LVs, once.
            Call::List("ssd".to_owned()),
            Call::Resize(pb::ResizeLvRequest {
                name: UID.to_owned(),
                device_class: "ssd".to_owned(),
                size_bytes: 2 * GIB,
                ..Default::default()
            })
        ]
    );
}

/// An LV TopoLVM made (named by the object's UID, none of lvmd's tags, the recorded size) is
/// adopted by a CreateLV of exactly its name and size before the resize, which lvmd would
/// refuse for an untagged LV.
#[tokio::test]
async fn an_lv_topolvm_made_is_adopted_before_it_is_resized() {
    let lvmd = Arc::new(FakeLvmd {
        lvs: vec![pb::LogicalVolume {
            name: UID.to_owned(),
            size_bytes: GIB,
            ..Default::default()
        }],
        ..FakeLvmd::default()
    });
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .created("1Gi")
            .sized("2Gi"),
        lvmd.clone(),
        vec![status_patch(|body| {
            assert_eq!(body["status"]["currentSize"], "2Gi");
        })],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [
            Call::List("ssd".to_owned()),
            Call::CreateLv(pb::CreateLvRequest {
                name: UID.to_owned(),
                tags: vec!["topolvm.io/logicalvolume=pvc-0001".to_owned()],
                device_class: "ssd".to_owned(),
                size_bytes: GIB,
                ..Default::default()
            }),
            Call::Resize(pb::ResizeLvRequest {
                name: UID.to_owned(),
                device_class: "ssd".to_owned(),
                size_bytes: 2 * GIB,
                ..Default::default()
            })
        ]
    );
}

/// An untagged LV smaller than the size recorded for it is not the volume the object
/// describes: it is not adopted, and nothing is changed.
#[tokio::test]
async fn an_untagged_lv_smaller_than_recorded_is_not_adopted() {
    let lvmd = Arc::new(FakeLvmd {
        lvs: vec![pb::LogicalVolume {
            name: UID.to_owned(),
            size_bytes: GIB / 2,
            ..Default::default()
        }],
        ..FakeLvmd::default()
    });
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .created("1Gi")
            .sized("2Gi"),
        lvmd.clone(),
        vec![],
    )
    .await;
    assert_eq!(result.expect_err("refused").metric_label(), "refused");
    assert_eq!(lvmd.calls(), [Call::List("ssd".to_owned())]);
}

/// An LV with lvmd's tags is ours already: no adoption, whatever its name.
#[tokio::test]
async fn a_tagged_lv_is_not_adopted_again() {
    let lvmd = Arc::new(FakeLvmd {
        lvs: vec![pb::LogicalVolume {
            name: UID.to_owned(),
            size_bytes: GIB,
            tags: vec!["topolvm.io/managed".to_owned()],
            ..Default::default()
        }],
        ..FakeLvmd::default()
    });
    let result = scenario(
        logical_volume().finalized().labelled().created("1Gi"),
        lvmd.clone(),
        vec![],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lvmd.calls(), [Call::List("ssd".to_owned())]);
}

#[tokio::test]
async fn an_lv_of_its_size_is_left_alone() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume().finalized().labelled().created("1Gi"),
        lvmd.clone(),
        vec![],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lvmd.calls(), [Call::List("ssd".to_owned())]);
}

#[tokio::test]
async fn deletion_removes_the_lv_then_the_finalizer() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .created("1Gi")
            .deleting(),
        lvmd.clone(),
        vec![patch(JSON_PATCH, |body| {
            let ops = body.as_array().expect("a JSON patch");
            assert!(
                ops.iter()
                    .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
                "{body}"
            );
        })],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [
            Call::List("ssd".to_owned()),
            Call::Remove(pb::RemoveLvRequest {
                name: UID.to_owned(),
                device_class: "ssd".to_owned(),
            })
        ]
    );
}

#[tokio::test]
async fn deletion_before_any_status_removes_by_uid_and_a_missing_lv_is_fine() {
    let lvmd = Arc::new(FakeLvmd::failing(tonic::Status::not_found(
        "no such volume",
    )));
    let result = scenario(
        logical_volume().finalized().labelled().deleting(),
        lvmd.clone(),
        vec![patch(JSON_PATCH, |_| {})],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lvmd.calls(),
        [Call::Remove(pb::RemoveLvRequest {
            name: UID.to_owned(),
            device_class: "ssd".to_owned(),
        })]
    );
}

#[tokio::test]
async fn a_failed_removal_keeps_the_finalizer() {
    let lvmd = Arc::new(FakeLvmd::failing(tonic::Status::unavailable(
        "lvmd is down",
    )));
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .created("1Gi")
            .deleting(),
        lvmd.clone(),
        vec![],
    )
    .await;
    let error = result.expect_err("retried later");
    assert_eq!(error.metric_label(), "lvmd");
    assert_eq!(lvmd.calls().len(), 2, "GetLVList, then the failed RemoveLV");
}

#[tokio::test]
async fn pending_deletion_is_left_alone() {
    let lvmd = Arc::new(FakeLvmd::default());
    for lv in [
        logical_volume().pending_deletion(),
        logical_volume().finalized().pending_deletion().deleting(),
    ] {
        let result = scenario(lv, lvmd.clone(), vec![]).await;
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(lvmd.calls(), []);
}

#[tokio::test]
async fn a_failed_creation_is_not_retried() {
    let lvmd = Arc::new(FakeLvmd::default());
    let result = scenario(
        logical_volume()
            .finalized()
            .labelled()
            .failed(Code::ResourceExhausted),
        lvmd.clone(),
        vec![],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lvmd.calls(), []);
}

#[tokio::test]
async fn another_nodes_object_is_not_touched() {
    let lvmd = Arc::new(FakeLvmd::default());
    let mut lv = logical_volume();
    lv.spec.node_name = "worker-2".to_owned();
    let result = scenario(lv, lvmd.clone(), vec![]).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lvmd.calls(), []);
}

// ---- the orphan scan ----

mod orphan_scan {
    use super::*;
    use crate::logical_volume::orphans::{OrphanOptions, OrphanScanner};

    fn lv_with_tags(name: &str, tags: &[String]) -> pb::LogicalVolume {
        pb::LogicalVolume {
            name: name.to_owned(),
            size_bytes: 8 << 20,
            tags: tags.to_vec(),
            ..Default::default()
        }
    }

    fn ours(name: &str, object: &str) -> pb::LogicalVolume {
        lv_with_tags(
            name,
            &[
                names::LV_TAG_MANAGED.to_owned(),
                names::lv_tag_volume_id(name),
                names::lv_tag_device_class("ssd"),
                names::lv_tag_logical_volume(object),
            ],
        )
    }

    fn post_event(reason: &'static str) -> Expect {
        Expect {
            method: Method::POST,
            path: "/api/v1/namespaces/default/events",
            content_type: None,
            check: Box::new(move |body| {
                assert_eq!(body["reason"], reason, "{body}");
                assert_eq!(body["type"], "Warning", "{body}");
                assert_eq!(body["involvedObject"]["kind"], "Node", "{body}");
                assert_eq!(body["involvedObject"]["name"], NODE, "{body}");
            }),
            status: 201,
            answer: json!({"metadata": {"name": "e", "namespace": "default"},
                           "involvedObject": {"kind": "Node", "name": NODE}}),
        }
    }

    fn server_error(path: &'static str) -> Expect {
        Expect {
            status: 500,
            answer: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "InternalError", "code": 500, "message": "etcd is away"}),
            ..get(path, None)
        }
    }

    /// One scan of `lvmd`'s volumes (class `ssd`) against `script`; returns the orphans' names
    /// and the gauge's text.
    async fn scan(
        lvmd: Arc<FakeLvmd>,
        report: bool,
        gc_after: Option<Duration>,
        script: Vec<Expect>,
    ) -> (Result<Vec<String>, String>, String) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let registry = prometheus::Registry::new();
        let watch = report.then(|| {
            Arc::new(pb::WatchResponse {
                items: vec![pb::WatchItem {
                    device_class: "ssd".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        });
        let (_sender, latest) = tokio::sync::watch::channel(watch);
        let mut scanner = OrphanScanner::new(
            client,
            NODE.to_owned(),
            lvmd,
            latest,
            OrphanOptions {
                gc_after,
                ..OrphanOptions::default()
            },
            &registry,
        )
        .expect("scanner");
        let server = tokio::spawn(serve(handle, script, logical_volume()));
        let result = tokio::time::timeout(Duration::from_secs(5), scanner.scan())
            .await
            .expect("no request beyond the script");
        drop(scanner);
        drop(server.await.expect("every scripted request came"));
        let gauge = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("text");
        let names = result
            .map(|orphans| orphans.into_iter().map(|o| o.name).collect())
            .map_err(|e| e.to_string());
        (names, gauge)
    }

    #[tokio::test]
    async fn an_lv_whose_object_is_gone_is_reported_and_kept_without_gc() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![ours("lv-1", "pvc-gone")],
            ..FakeLvmd::default()
        });
        let (orphans, gauge) = scan(
            lvmd.clone(),
            true,
            None,
            vec![
                get("/apis/topolvm.io/v1/logicalvolumes/pvc-gone", None),
                post_event("OrphanVolume"),
            ],
        )
        .await;
        assert_eq!(orphans, Ok(vec!["lv-1".to_owned()]));
        assert!(
            gauge.contains("topolvm_node_orphan_volumes{device_class=\"ssd\",node=\"worker-1\"} 1"),
            "{gauge}"
        );
        assert_eq!(
            lvmd.calls(),
            [Call::List("ssd".to_owned())],
            "nothing removed"
        );
    }

    #[tokio::test]
    async fn with_gc_an_orphan_seen_long_enough_is_removed_in_its_class() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![ours("lv-1", "pvc-gone")],
            ..FakeLvmd::default()
        });
        let (orphans, _) = scan(
            lvmd.clone(),
            true,
            Some(Duration::ZERO),
            vec![
                get("/apis/topolvm.io/v1/logicalvolumes/pvc-gone", None),
                post_event("OrphanVolume"),
                post_event("OrphanVolumeRemoved"),
            ],
        )
        .await;
        assert_eq!(orphans, Ok(vec!["lv-1".to_owned()]));
        assert_eq!(
            lvmd.calls(),
            [
                Call::List("ssd".to_owned()),
                Call::Remove(pb::RemoveLvRequest {
                    name: "lv-1".to_owned(),
                    device_class: "ssd".to_owned(),
                }),
            ]
        );
    }

    #[tokio::test]
    async fn an_api_server_error_gives_no_verdict_and_removes_nothing() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![ours("lv-1", "pvc-x")],
            ..FakeLvmd::default()
        });
        let (orphans, gauge) = scan(
            lvmd.clone(),
            true,
            Some(Duration::ZERO),
            vec![server_error("/apis/topolvm.io/v1/logicalvolumes/pvc-x")],
        )
        .await;
        assert!(orphans.is_err(), "{orphans:?}");
        assert!(!gauge.contains("topolvm_node_orphan_volumes{"), "{gauge}");
        assert_eq!(lvmd.calls(), [Call::List("ssd".to_owned())]);
    }

    #[tokio::test]
    async fn an_lv_whose_object_lives_is_not_an_orphan() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![ours(UID, NAME)],
            ..FakeLvmd::default()
        });
        let live = logical_volume();
        let (orphans, gauge) = scan(
            lvmd,
            true,
            Some(Duration::ZERO),
            vec![get(PATH, Some(&live))],
        )
        .await;
        assert_eq!(orphans, Ok(vec![]));
        assert!(
            gauge.contains("topolvm_node_orphan_volumes{device_class=\"ssd\",node=\"worker-1\"} 0"),
            "{gauge}"
        );
    }

    #[tokio::test]
    async fn lvs_without_our_tag_are_never_looked_at() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![
                lv_with_tags("by-hand", &[]),
                lv_with_tags("0d6c4a56-7a4e-4d4a-9d52-1f7c3b1e2a99", &[]),
            ],
            ..FakeLvmd::default()
        });
        let (orphans, _) = scan(lvmd.clone(), true, Some(Duration::ZERO), vec![]).await;
        assert_eq!(orphans, Ok(vec![]));
        assert_eq!(lvmd.calls(), [Call::List("ssd".to_owned())]);
    }

    #[tokio::test]
    async fn before_lvmds_first_report_nothing_is_scanned() {
        let lvmd = Arc::new(FakeLvmd {
            lvs: vec![ours("lv-1", "pvc-gone")],
            ..FakeLvmd::default()
        });
        let (orphans, _) = scan(lvmd.clone(), false, Some(Duration::ZERO), vec![]).await;
        assert_eq!(orphans, Ok(vec![]));
        assert_eq!(lvmd.calls(), []);
    }
}

/// The selectors the API server evaluates (their syntax is Kubernetes' label selector syntax:
/// `key=value` and `!key`); the e2e test proves the real API server applies them.
#[test]
fn this_nodes_objects_by_label_and_the_unlabelled_for_backfill() {
    assert_eq!(
        super::own_objects("worker-1").label_selector.as_deref(),
        Some("topolvm.io/node=worker-1")
    );
    let long = format!("{}.example.com", "n".repeat(60));
    assert_eq!(super::own_objects(&long).label_selector, None);
    assert_eq!(
        super::backfill::unlabelled().label_selector.as_deref(),
        Some("!topolvm.io/node")
    );
}

/// A failed resize is recorded only onto the version of the object it was attempted for:
/// topolvm-controller clears an earlier failure and then raises spec.size, and the failure of
/// the size asked before must not land on the new request (the API server answers 409).
#[tokio::test]
async fn a_failed_resize_is_written_only_onto_the_version_it_was_for() {
    let lvmd = Arc::new(FakeLvmd::failing(tonic::Status::resource_exhausted(
        "not enough space",
    )));
    let mut lv = logical_volume()
        .finalized()
        .labelled()
        .created("1Gi")
        .sized("2Gi");
    lv.metadata.resource_version = Some("77".to_owned());
    let result = scenario(
        lv,
        lvmd.clone(),
        vec![status_patch(|body| {
            assert_eq!(body["metadata"]["resourceVersion"], "77", "{body}");
            assert_eq!(
                body["status"],
                json!({"code": Code::ResourceExhausted as i32, "message": "not enough space"})
            );
        })],
    )
    .await;
    assert!(result.is_err(), "{result:?}");
}
