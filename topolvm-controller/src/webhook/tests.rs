//! The webhook against pods as the API server sends them (defaults filled in, a service account
//! token volume, `generateName`), with claims and StorageClasses from an in-memory lookup. The
//! expected annotations and resource are TopoLVM's (`Handle` and `pvcCapacity` in
//! `internal/hook/mutate_pod.go` @ 397c05639c83); the patches are applied to the pod to check what
//! the API server would store.

use std::collections::BTreeMap;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;

#[derive(Default)]
struct FakeApi {
    claims: BTreeMap<(String, String), PersistentVolumeClaim>,
    classes: BTreeMap<String, StorageClass>,
    /// Fail every lookup, as an unreachable API server.
    down: bool,
}

fn unavailable() -> kube::Error {
    kube::Error::Api(Box::new(
        serde_json::from_value(json!({"status": "Failure", "message": "etcd is down",
            "reason": "InternalError", "code": 500}))
        .expect("a Status"),
    ))
}

impl Lookup for FakeApi {
    async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, kube::Error> {
        if self.down {
            return Err(unavailable());
        }
        Ok(self
            .claims
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }
    async fn storage_class(&self, name: &str) -> Result<Option<StorageClass>, kube::Error> {
        if self.down {
            return Err(unavailable());
        }
        Ok(self.classes.get(name).cloned())
    }
}

impl FakeApi {
    fn class(mut self, name: &str, provisioner: &str, device_class: Option<&str>) -> Self {
        let mut parameters = json!({"csi.storage.k8s.io/fstype": "xfs"});
        if let Some(dc) = device_class {
            parameters["topolvm.io/device-class"] = json!(dc);
        }
        let class: StorageClass = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner,
            "parameters": parameters,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": true,
        }))
        .expect("a StorageClass");
        self.classes.insert(name.to_owned(), class);
        self
    }
    /// A claim as the API server stores it; `phase` None = just created, no status yet.
    fn claim(
        mut self,
        name: &str,
        class: &str,
        storage: Option<&str>,
        phase: Option<&str>,
    ) -> Self {
        let mut claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "volumeMode": "Filesystem", "resources": {}},
        });
        if let Some(storage) = storage {
            claim["spec"]["resources"]["requests"] = json!({"storage": storage});
        }
        if let Some(phase) = phase {
            claim["status"] = json!({"phase": phase});
        }
        self.claims.insert(
            ("app".to_owned(), name.to_owned()),
            serde_json::from_value(claim).expect("a PVC"),
        );
        self
    }
    /// The classes of a typical TopoLVM cluster: `topolvm-provisioner` (default class),
    /// `topolvm-ssd` (class ssd), `topolvm-empty` (device-class parameter ""), and `other`.
    fn cluster() -> Self {
        Self::default()
            .class("topolvm-provisioner", "topolvm.io", None)
            .class("topolvm-ssd", "topolvm.io", Some("ssd"))
            .class("topolvm-empty", "topolvm.io", Some(""))
            .class("other", "ebs.csi.aws.com", None)
    }
}

/// A pod as the API server hands it to a mutating webhook on CREATE (kubectl create of a Pod
/// with a token volume added by the ServiceAccount admission plugin and defaults filled in).
fn pod(volumes: Value) -> Value {
    let mut all = vec![json!({"name": "kube-api-access-x2v9k", "projected": {
        "defaultMode": 420,
        "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}})];
    all.extend(volumes.as_array().cloned().unwrap_or_default());
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"generateName": "web-", "namespace": "app", "creationTimestamp": null,
                     "labels": {"app": "web"}},
        "spec": {
            "volumes": all,
            "containers": [
                {"name": "web", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m"}},
                 "volumeMounts": [{"name": "kube-api-access-x2v9k", "readOnly": true,
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
                {"name": "sidecar", "image": "busybox", "resources": {},
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "Always"}
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

fn claim_volume(name: &str, claim: &str) -> Value {
    json!({"name": name, "persistentVolumeClaim": {"claimName": claim}})
}

fn ephemeral_volume(name: &str, class: Option<&str>, storage: &str) -> Value {
    let mut spec = json!({"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": storage}}});
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    json!({"name": name, "ephemeral": {"volumeClaimTemplate": {"spec": spec}}})
}

fn inline_volume(name: &str, driver: &str, attributes: Value) -> Value {
    json!({"name": name, "csi": {"driver": driver, "volumeAttributes": attributes}})
}

/// The pod after the answer's patch, as the API server would store it.
async fn admitted(api: &FakeApi, raw: &Value) -> (Answer, Value) {
    let answer = admit(raw, "app", api).await;
    let mut patched = raw.clone();
    if let Answer::Mutated(patch) = &answer {
        json_patch::patch(&mut patched, patch).expect("the patch applies to the pod");
    }
    (answer, patched)
}

/// The `capacity.topolvm.io/*` annotations of a pod.
fn capacity_annotations(pod: &Value) -> BTreeMap<String, String> {
    pod["metadata"]["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with("capacity.topolvm.io/"))
                .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// TopoLVM's resource on the first container only, requests = limits = "1", next to what the
/// container asked for already.
fn assert_capacity_resource(pod: &Value) {
    let first = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(first["requests"]["topolvm.io/capacity"], "1", "{first}");
    assert_eq!(first["limits"]["topolvm.io/capacity"], "1", "{first}");
    assert_eq!(first["requests"]["cpu"], "100m", "kept: {first}");
    assert_eq!(pod["spec"]["containers"][1]["resources"], json!({}));
}

#[tokio::test]
async fn an_unbound_claim_is_annotated_in_bytes_under_its_class() {
    let api = FakeApi::cluster()
        .claim("data", "topolvm-ssd", Some("5Gi"), Some("Pending"))
        .claim("logs", "topolvm-provisioner", None, None);
    let raw = pod(json!([
        claim_volume("data", "data"),
        claim_volume("logs", "logs")
    ]));
    let (answer, patched) = admitted(&api, &raw).await;
    assert_eq!(answer.metric_label(), "mutated");
    assert_eq!(
        capacity_annotations(&patched),
        map(&[
            ("capacity.topolvm.io/ssd", "5368709120"),
            // No request: TopoLVM's 1 GiB default; the default class is `00default`.
            ("capacity.topolvm.io/00default", "1073741824"),
        ])
    );
    assert_capacity_resource(&patched);
    // Nothing else changed.
    let mut unpatched = patched.clone();
    unpatched["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    for kind in ["requests", "limits"] {
        if let Some(r) = unpatched["spec"]["containers"][0]["resources"][kind].as_object_mut() {
            r.remove("topolvm.io/capacity");
        }
    }
    unpatched["spec"]["containers"][0]["resources"]
        .as_object_mut()
        .expect("resources")
        .retain(|_, v| v.as_object().is_none_or(|o| !o.is_empty()));
    assert_eq!(unpatched, raw);
}

#[tokio::test]
async fn claims_of_one_class_are_summed() {
    let api = FakeApi::cluster()
        .claim("a", "topolvm-ssd", Some("1Gi"), None)
        .claim("b", "topolvm-ssd", Some("512Mi"), None);
    let raw = pod(json!([claim_volume("a", "a"), claim_volume("b", "b")]));
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(
        capacity_annotations(&patched),
        map(&[("capacity.topolvm.io/ssd", "1610612736")])
    );
}

/// TopoLVM leaves the whole pod unmutated once one claim is bound (`volumesCapacity` returns nil on
/// `isAlreadyBound`, `internal/hook/mutate_pod.go` @ 397c05639c83); we skip only the bound claim.
#[tokio::test]
async fn a_bound_claim_does_not_hide_the_other_unbound_claims() {
    let api = FakeApi::cluster()
        .claim("old", "topolvm-ssd", Some("10Gi"), Some("Bound"))
        .claim("new", "topolvm-ssd", Some("2Gi"), Some("Pending"));
    let raw = pod(json!([
        claim_volume("old", "old"),
        claim_volume("new", "new")
    ]));
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(
        capacity_annotations(&patched),
        map(&[("capacity.topolvm.io/ssd", "2147483648")])
    );
    assert_capacity_resource(&patched);
}

#[tokio::test]
async fn only_bound_claims_leave_the_pod_alone() {
    let api = FakeApi::cluster().claim("old", "topolvm-ssd", Some("10Gi"), Some("Bound"));
    let raw = pod(json!([claim_volume("old", "old")]));
    let (answer, patched) = admitted(&api, &raw).await;
    assert_eq!(answer.metric_label(), "allowed");
    assert_eq!(patched, raw);
}

#[tokio::test]
async fn generic_ephemeral_volumes_count_with_their_template() {
    let api = FakeApi::cluster();
    let raw = pod(json!([
        ephemeral_volume("scratch", Some("topolvm-provisioner"), "3Gi"),
        // No StorageClass named: TopoLVM skips it, and so do we.
        ephemeral_volume("unnamed", None, "7Gi"),
    ]));
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(
        capacity_annotations(&patched),
        map(&[("capacity.topolvm.io/00default", "3221225472")])
    );
}

#[tokio::test]
async fn inline_volumes_of_our_driver_count_with_their_attributes() {
    let api = FakeApi::cluster();
    let raw = pod(json!([
        inline_volume(
            "cache",
            "topolvm.io",
            json!({"size": "200Mi", "topolvm.io/device-class": "ssd"})
        ),
        inline_volume("tmp", "topolvm.io", json!({})),
        inline_volume(
            "secrets",
            "secrets-store.csi.k8s.io",
            json!({"size": "5Gi"})
        ),
    ]));
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(
        capacity_annotations(&patched),
        map(&[
            ("capacity.topolvm.io/ssd", "209715200"),
            ("capacity.topolvm.io/00default", "1073741824"),
        ])
    );
}

#[tokio::test]
async fn an_inline_volume_topolvm_node_would_refuse_is_denied() {
    let api = FakeApi::cluster();
    let raw = pod(json!([inline_volume(
        "bad",
        "topolvm.io",
        json!({"size": "lots"})
    )]));
    let (answer, _) = admitted(&api, &raw).await;
    match answer {
        Answer::Refused { code: 403, message } => assert!(message.contains("lots"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn other_provisioners_missing_claims_and_missing_classes_are_skipped() {
    let api = FakeApi::cluster()
        .claim("ebs", "other", Some("5Gi"), None)
        .claim("ghost-class", "no-such-class", Some("5Gi"), None);
    let raw = pod(json!([
        claim_volume("ebs", "ebs"),
        claim_volume("ghost-class", "ghost-class"),
        claim_volume("not-yet", "not-created-yet"),
        ephemeral_volume("scratch", Some("other"), "1Gi"),
        {"name": "tmp", "emptyDir": {}},
    ]));
    let (answer, patched) = admitted(&api, &raw).await;
    assert_eq!(answer.metric_label(), "allowed");
    assert_eq!(patched, raw);
}

/// TopoLVM skips a StorageClass whose device-class parameter is "" (`volumesCapacity`,
/// `internal/hook/mutate_pod.go` @ 397c05639c83); the CSI controller makes such volumes in the
/// default class, so we count them there.
#[tokio::test]
async fn an_empty_device_class_parameter_is_the_default_class() {
    let api = FakeApi::cluster().claim("data", "topolvm-empty", Some("2Gi"), None);
    let raw = pod(json!([claim_volume("data", "data")]));
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(
        capacity_annotations(&patched),
        map(&[("capacity.topolvm.io/00default", "2147483648")])
    );
}

#[tokio::test]
async fn a_pod_without_containers_is_denied_as_topolvm_does() {
    let mut raw = pod(json!([]));
    raw["spec"]["containers"] = json!([]);
    let (answer, _) = admitted(&FakeApi::cluster(), &raw).await;
    match answer {
        Answer::Refused { code, message } => {
            assert_eq!((code, message.as_str()), (403, "pod has no containers"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_pod_without_topolvm_volumes_is_allowed_unchanged() {
    let raw = pod(json!([]));
    let (answer, patched) = admitted(&FakeApi::cluster(), &raw).await;
    assert_eq!(answer.metric_label(), "allowed");
    assert_eq!(patched, raw);
}

#[tokio::test]
async fn existing_annotations_are_kept_and_ours_overwritten() {
    let api = FakeApi::cluster().claim("data", "topolvm-ssd", Some("1Gi"), None);
    let mut raw = pod(json!([claim_volume("data", "data")]));
    raw["metadata"]["annotations"] = json!({"team": "storage", "capacity.topolvm.io/ssd": "5"});
    let (_, patched) = admitted(&api, &raw).await;
    assert_eq!(patched["metadata"]["annotations"]["team"], "storage");
    assert_eq!(
        patched["metadata"]["annotations"]["capacity.topolvm.io/ssd"],
        "1073741824"
    );
    // A second pass over the result changes nothing.
    let (again, _) = admitted(&api, &patched).await;
    assert_eq!(again.metric_label(), "allowed");
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_not_a_silent_admission() {
    let api = FakeApi {
        down: true,
        ..FakeApi::cluster()
    };
    let raw = pod(json!([claim_volume("data", "data")]));
    let (answer, _) = admitted(&api, &raw).await;
    assert_eq!(answer.metric_label(), "error");
    assert!(matches!(answer, Answer::Refused { code: 500, .. }));
}

// ---- over HTTP, as the API server calls it ----

async fn post_review(body: Value) -> (u16, Value) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics");
    let api = FakeApi::cluster().claim("data", "topolvm-ssd", Some("1Gi"), None);
    let response = routes(api, metrics)
        .oneshot(
            Request::post("/pod/mutate")
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn review(api_version: &str, object: Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "app", "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": object, "oldObject": null, "dryRun": false,
        }
    })
}

/// Kubernetes' admission contract (k8s.io/api admission/v1 and v1beta1 types): the response is
/// an AdmissionReview of the request's version with the request's uid; `patch` is a base64
/// JSON Patch with `patchType: JSONPatch`.
#[tokio::test]
async fn both_review_versions_get_an_answer_in_their_own_version() {
    for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
        let raw = pod(json!([claim_volume("data", "data")]));
        let (status, body) = post_review(review(version, raw.clone())).await;
        assert_eq!(status, 200);
        assert_eq!(body["apiVersion"], version);
        assert_eq!(body["kind"], "AdmissionReview");
        let response = &body["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("base64 patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
        let mut patched = raw;
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(
            patched["metadata"]["annotations"]["capacity.topolvm.io/ssd"],
            "1073741824"
        );
    }
}

#[tokio::test]
async fn a_denial_carries_its_reason() {
    let mut raw = pod(json!([]));
    raw["spec"]["containers"] = json!([]);
    let (status, body) = post_review(review("admission.k8s.io/v1", raw)).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        body["response"]["status"]["message"],
        "pod has no containers"
    );
    assert_eq!(body["response"]["status"]["code"], 403);
}

#[tokio::test]
async fn garbage_is_a_bad_request() {
    let (status, _) = post_review(json!({"hello": "world"})).await;
    assert_eq!(status, 400);
    let (status, _) = post_review(review("admission.k8s.io/v2", pod(json!([])))).await;
    assert_eq!(status, 400);
}

#[test]
fn decode_review_reads_the_request_and_refuses_the_rest() {
    let raw = pod(json!([]));
    let body = serde_json::to_vec(&review("admission.k8s.io/v1beta1", raw.clone())).expect("json");
    let decoded = decode_review(&body).expect("a review");
    assert_eq!(decoded.api_version, "admission.k8s.io/v1beta1");
    assert_eq!(decoded.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(decoded.namespace, "app");
    assert_eq!(decoded.object, raw);
    assert!(matches!(
        decode_review(b"{\"apiVersion\":\"admission.k8s.io/v1\""),
        Err(BadReview::NotJson(_))
    ));
    assert!(matches!(
        decode_review(br#"{"apiVersion":"admission.k8s.io/v1","request":null}"#),
        Err(BadReview::NoRequest)
    ));
    let body = serde_json::to_vec(&review("admission.k8s.io/v2", raw)).expect("json");
    assert!(matches!(
        decode_review(&body),
        Err(BadReview::UnknownVersion(v)) if v == "admission.k8s.io/v2"
    ));
}
