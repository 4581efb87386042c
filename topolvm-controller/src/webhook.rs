//! The pod mutating webhook `/pod/mutate` (as TopoLVM's `internal/hook/mutate_pod.go` @
//! 397c05639c83): a pod that will need TopoLVM volumes gets, per device class, the annotation
//! `capacity.topolvm.io/<class>` with the bytes it still needs, and on its first container the
//! extended resource `topolvm.io/capacity` (requests = limits = 1), which makes kube-scheduler
//! consult topolvm-scheduler for it.
//!
//! Counted, per device class ([`topolvm_core::capacity_annotation`] says how):
//! - claims of a StorageClass of our provisioner that are not bound yet;
//! - generic ephemeral volumes (`ephemeral.volumeClaimTemplate`) of such a StorageClass;
//! - CSI inline ephemeral volumes of our driver (`csi.driver: topolvm.io`).
//!
//! Differences from TopoLVM, on purpose:
//! - a bound claim is skipped on its own; TopoLVM leaves the whole pod unmutated as soon as one
//!   TopoLVM claim is bound, so its other, unbound claims go unaccounted;
//! - a StorageClass whose `topolvm.io/device-class` is empty counts under the default class
//!   (TopoLVM skips the volume silently);
//! - inline ephemeral volumes are counted (TopoLVM dropped them with inline volume support);
//! - the patch is computed from the pod exactly as the API server sent it, so fields our types
//!   do not know cannot turn into spurious patch operations.
//!
//! The webhook is stateless and answers on every replica. The StorageClass and claim lookups
//! go to the API server (a pod's own claims usually were created moments earlier, so a cache
//! could miss them, which is why TopoLVM falls back to the API on a miss anyway).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Deserialize;
use serde_json::{Value, json};
use topolvm_core::capacity_annotation::{
    webhook_claim_bytes, webhook_device_class, webhook_inline_bytes,
};
use topolvm_core::names::{
    CAPACITY_RESOURCE, CAPACITY_RESOURCE_VALUE, DEFAULT_DEVICE_CLASS_ANNOTATION_NAME,
    DEVICE_CLASS_PARAMETER, PLUGIN_NAME, POD_WEBHOOK_PATH, capacity_annotation_key,
};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// The two AdmissionReview versions the API server may send (the configuration lists both).
const REVIEW_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];
/// Largest request body taken: the API server caps objects at 3 MiB; a review carries the
/// object twice at most.
const MAX_BODY: usize = 8 << 20;

/// What the webhook reads from the API server.
pub trait Lookup: Send + Sync + 'static {
    /// The claim `namespace/name`, `None` when it does not exist.
    fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PersistentVolumeClaim>, kube::Error>> + Send;
    /// The StorageClass `name`, `None` when it does not exist.
    fn storage_class(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StorageClass>, kube::Error>> + Send;
}

/// [`Lookup`] by GET requests to the API server.
#[derive(Clone)]
pub struct ApiLookup(pub kube::Client);

impl std::fmt::Debug for ApiLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiLookup")
    }
}

impl Lookup for ApiLookup {
    async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, kube::Error> {
        kube::Api::<PersistentVolumeClaim>::namespaced(self.0.clone(), namespace)
            .get_opt(name)
            .await
    }
    async fn storage_class(&self, name: &str) -> Result<Option<StorageClass>, kube::Error> {
        kube::Api::<StorageClass>::all(self.0.clone())
            .get_opt(name)
            .await
    }
}

/// Why a pod was not admitted as is.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The pod cannot be served (TopoLVM's "pod has no containers").
    #[error("{0}")]
    Denied(String),
    /// The API server could not be asked; the pod may be fine (answered with code 500).
    #[error("looking up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The pod object in the review is not a pod (code 400).
    #[error("the request's object is not a Pod: {0}")]
    BadPod(#[source] serde_json::Error),
}

/// Bytes a pod still needs per device class (capacity annotation name, e.g. `00default`).
pub type Requests = BTreeMap<String, u64>;

/// The StorageClasses looked up during one review, so each is asked for once.
struct Classes<'a, L> {
    lookup: &'a L,
    seen: BTreeMap<String, Option<StorageClass>>,
}

impl<L: Lookup> Classes<'_, L> {
    /// The device class under which a claim of `class_name` counts, `None` when the class is
    /// not ours (or missing, or unnamed).
    async fn device_class(&mut self, class_name: Option<&str>) -> Result<Option<String>, Refusal> {
        let Some(name) = class_name.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        if !self.seen.contains_key(name) {
            let found =
                self.lookup
                    .storage_class(name)
                    .await
                    .map_err(|source| Refusal::Lookup {
                        what: format!("StorageClass {name}"),
                        source,
                    })?;
            self.seen.insert(name.to_owned(), found);
        }
        Ok(self
            .seen
            .get(name)
            .and_then(Option::as_ref)
            .filter(|class| class.provisioner == PLUGIN_NAME)
            .map(|class| {
                webhook_device_class(&class.parameters.clone().unwrap_or_default()).to_owned()
            }))
    }
}

/// The claim's storage request (`spec.resources.requests.storage`) in bytes, 1 GiB when absent.
fn claim_bytes(spec: &PersistentVolumeClaimSpec, what: &str) -> Result<u64, Refusal> {
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    webhook_claim_bytes(request)
        .map_err(|e| Refusal::Denied(format!("{what}: storage request: {e}")))
}

/// Whether a claim still waits for its volume. A claim the API server has just stored has no
/// status yet; `Lost` claims are not counted (as in TopoLVM: only Pending is).
fn is_unbound(claim: &PersistentVolumeClaim) -> bool {
    matches!(
        claim.status.as_ref().and_then(|s| s.phase.as_deref()),
        None | Some("") | Some("Pending")
    )
}

/// What `pod` (in `namespace`) still needs from TopoLVM, per device class.
pub async fn requests<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
) -> Result<Requests, Refusal> {
    let mut classes = Classes {
        lookup,
        seen: BTreeMap::new(),
    };
    let mut needs = Requests::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    for volume in volumes {
        let counted = if let Some(source) = &volume.persistent_volume_claim {
            let name = &source.claim_name;
            let claim = lookup
                .claim(namespace, name)
                .await
                .map_err(|source| Refusal::Lookup {
                    what: format!("PersistentVolumeClaim {namespace}/{name}"),
                    source,
                })?;
            // A claim that does not exist yet cannot be placed; the pod waits for it anyway.
            let Some(claim) = claim else { continue };
            let Some(spec) = claim.spec.as_ref() else {
                continue;
            };
            match classes
                .device_class(spec.storage_class_name.as_deref())
                .await?
            {
                Some(class) if is_unbound(&claim) => {
                    Some((class, claim_bytes(spec, &format!("claim {name}"))?))
                }
                _ => None,
            }
        } else if let Some(template) = volume
            .ephemeral
            .as_ref()
            .and_then(|e| e.volume_claim_template.as_ref())
        {
            // Created with the pod, so never bound yet.
            match classes
                .device_class(template.spec.storage_class_name.as_deref())
                .await?
            {
                Some(class) => Some((
                    class,
                    claim_bytes(&template.spec, &format!("ephemeral volume {}", volume.name))?,
                )),
                None => None,
            }
        } else if let Some(csi) = volume.csi.as_ref().filter(|c| c.driver == PLUGIN_NAME) {
            let attributes = csi.volume_attributes.clone().unwrap_or_default();
            let bytes = webhook_inline_bytes(&attributes)
                .map_err(|e| Refusal::Denied(format!("inline volume {}: {e}", volume.name)))?;
            let class = match attributes.get(DEVICE_CLASS_PARAMETER) {
                Some(class) if !class.is_empty() => class.clone(),
                _ => DEFAULT_DEVICE_CLASS_ANNOTATION_NAME.to_owned(),
            };
            Some((class, bytes))
        } else {
            None
        };
        if let Some((class, bytes)) = counted {
            let total = needs.entry(class).or_default();
            *total = total.saturating_add(bytes);
        }
    }
    Ok(needs)
}

/// The pod as the API server sent it (`raw`) with the annotations and the extended resource of
/// `needs`, as a JSON patch (RFC 6902) from `raw`. Empty when the pod carries them already.
pub fn patch(raw: &Value, needs: &Requests) -> json_patch::Patch {
    let mut mutated = raw.clone();
    for (class, bytes) in needs {
        mutated["metadata"]["annotations"][capacity_annotation_key(class)] =
            Value::String(bytes.to_string());
    }
    if let Some(first) = mutated["spec"]["containers"]
        .as_array_mut()
        .and_then(|c| c.first_mut())
    {
        for kind in ["requests", "limits"] {
            first["resources"][kind][CAPACITY_RESOURCE] =
                Value::String(CAPACITY_RESOURCE_VALUE.to_owned());
        }
    }
    json_patch::diff(raw, &mutated)
}

/// The answer to one review, before it is wrapped into an AdmissionReview.
#[derive(Debug)]
pub enum Answer {
    /// Allowed without changes.
    Allowed,
    /// Allowed with this patch.
    Mutated(json_patch::Patch),
    /// Refused, with the HTTP-like code the API server shows (403 denied, 400, 500).
    Refused { code: u16, message: String },
}

impl Answer {
    /// The value of the `result` label of `topolvm_controller_webhook_admissions_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Answer::Allowed => "allowed",
            Answer::Mutated(_) => "mutated",
            Answer::Refused { code: 403, .. } => "denied",
            Answer::Refused { .. } => "error",
        }
    }
}

/// Decides on the pod `raw` (the request's `object`), created in `request_namespace`.
pub async fn admit<L: Lookup>(raw: &Value, request_namespace: &str, lookup: &L) -> Answer {
    let refused = |refusal: Refusal| {
        let code = match &refusal {
            Refusal::Denied(_) => 403,
            Refusal::Lookup { .. } => 500,
            Refusal::BadPod(_) => 400,
        };
        Answer::Refused {
            code,
            message: refusal.to_string(),
        }
    };
    let pod: Pod = match serde_json::from_value(raw.clone()) {
        Ok(pod) => pod,
        Err(e) => return refused(Refusal::BadPod(e)),
    };
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    if containers == 0 {
        return refused(Refusal::Denied("pod has no containers".to_owned()));
    }
    // A pod created through a namespaced request may leave its own namespace empty.
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(request_namespace);
    let needs = match requests(&pod, namespace, lookup).await {
        Ok(needs) => needs,
        Err(refusal) => return refused(refusal),
    };
    if needs.is_empty() {
        return Answer::Allowed;
    }
    let patch = patch(raw, &needs);
    if patch.0.is_empty() {
        Answer::Allowed
    } else {
        Answer::Mutated(patch)
    }
}

/// The parts of an AdmissionReview the webhook reads, as they arrive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReview {
    api_version: String,
    request: Option<RawRequest>,
}

#[derive(Debug, Deserialize)]
struct RawRequest {
    uid: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    object: Value,
}

/// An AdmissionReview request the webhook answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`; the answer is in the same version.
    pub api_version: String,
    /// The request's uid, which the answer repeats.
    pub uid: String,
    /// The namespace of the request (a pod may leave its own empty).
    pub namespace: String,
    /// The pod as the API server sent it.
    pub object: Value,
}

/// Why a request body is not an AdmissionReview the webhook answers (a 400 response).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("not an AdmissionReview: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("AdmissionReview without a request")]
    NoRequest,
    #[error("AdmissionReview version {0:?} is not one of {REVIEW_VERSIONS:?}")]
    UnknownVersion(String),
}

/// Decodes the body of `POST /pod/mutate`.
pub fn decode_review(body: &[u8]) -> Result<Review, BadReview> {
    let review: RawReview = serde_json::from_slice(body)?;
    let request = review.request.ok_or(BadReview::NoRequest)?;
    if !REVIEW_VERSIONS.contains(&review.api_version.as_str()) {
        return Err(BadReview::UnknownVersion(review.api_version));
    }
    Ok(Review {
        api_version: review.api_version,
        uid: request.uid,
        namespace: request.namespace,
        object: request.object,
    })
}

/// The AdmissionReview answering `uid`, in the version it was asked in.
fn review_response(api_version: &str, uid: &str, answer: &Answer) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    match answer {
        Answer::Allowed => {}
        Answer::Mutated(patch) => {
            let bytes = serde_json::to_vec(patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Answer::Refused { code, message } => {
            response["allowed"] = json!(false);
            response["status"] = json!({"code": code, "message": message});
        }
    }
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

struct WebhookState<L> {
    lookup: L,
    metrics: Metrics,
}

async fn mutate_pod<L: Lookup>(State(state): State<Arc<WebhookState<L>>>, body: Bytes) -> Response {
    let request = match decode_review(&body) {
        Ok(request) => request,
        Err(e) => {
            state.metrics.admitted("error");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    let answer = admit(&request.object, &request.namespace, &state.lookup).await;
    state.metrics.admitted(answer.metric_label());
    let pod = request.object["metadata"]["name"]
        .as_str()
        .or(request.object["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    match &answer {
        Answer::Mutated(patch) => {
            info!(uid = %request.uid, namespace = %request.namespace, pod, operations = patch.0.len(), "pod mutated")
        }
        Answer::Allowed => {
            debug!(uid = %request.uid, namespace = %request.namespace, pod, "pod admitted unchanged")
        }
        Answer::Refused { code, message } => {
            warn!(uid = %request.uid, namespace = %request.namespace, pod, code, message, "pod refused")
        }
    }
    axum::Json(review_response(&request.api_version, &request.uid, &answer)).into_response()
}

/// The webhook's routes: `POST /pod/mutate`.
pub fn routes<L: Lookup>(lookup: L, metrics: Metrics) -> Router {
    Router::new()
        .route(POD_WEBHOOK_PATH, post(mutate_pod::<L>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(WebhookState { lookup, metrics }))
}

#[cfg(test)]
mod tests;
