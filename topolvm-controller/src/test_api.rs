//! A scripted API server for unit tests (`tower_test::mock::pair`): each step names the request
//! the code must send next and the answer it gets; a request beyond the script is never
//! answered, so the code under test hangs and the scenario's timeout fails it.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and its answer.
pub struct Step {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/nodes/n1` or `/apis/...?labelSelector=...`.
    pub uri: String,
    /// Checks the request body (JSON), when there is one.
    pub check: Box<dyn Fn(&Value) + Send>,
    pub status: u16,
    pub answer: Value,
}

impl Step {
    pub fn new(method: Method, uri: impl Into<String>, answer: Value) -> Self {
        Self {
            method,
            uri: uri.into(),
            check: Box::new(|_| {}),
            status: 200,
            answer,
        }
    }
    pub fn checking(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
    pub fn failing(mut self, status: u16) -> Self {
        self.status = status;
        self.answer = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": status, "reason": if status == 404 { "NotFound" } else { "Conflict" },
            "message": "scripted failure"});
        self
    }
}

/// A list answer of `kind` with `items`.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Serves `script` in order and returns the handle (kept alive, so an extra request hangs).
pub async fn serve(mut handle: Handle, script: Vec<Step>) -> Handle {
    for (n, step) in script.into_iter().enumerate() {
        let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "step {n}: no request, expected {} {}",
                step.method, step.uri
            )
        });
        let uri = request.uri().to_string();
        let uri = urlencoding_decode(&uri);
        assert_eq!(
            (request.method().clone(), uri.as_str()),
            (step.method.clone(), step.uri.as_str()),
            "step {n}"
        );
        let body = request.into_body().collect_bytes().await.expect("body");
        if !body.is_empty() {
            let body: Value = serde_json::from_slice(&body).expect("a JSON body");
            (step.check)(&body);
        }
        respond.send_response(
            Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&step.answer).expect("json")))
                .expect("response"),
        );
    }
    handle
}

/// Percent-decoding of the few characters kube escapes in a query, so scripts read plainly.
fn urlencoding_decode(uri: &str) -> String {
    uri.replace("%3D", "=")
        .replace("%21", "!")
        .replace("%2F", "/")
        .replace("%2C", ",")
}

/// A client talking to a scripted server, and the server's handle.
pub fn pair() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}
