//! Shared helpers of the integration tests: application state and one-shot requests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use topolvm_scheduler::cluster::{ClusterState, NodeCacheWriter};
use topolvm_scheduler::config::Config;
use topolvm_scheduler::metrics::Metrics;
use topolvm_scheduler::{AppState, app};
use tower::ServiceExt;

/// State of an extender without a cluster view (TopoLVM's behaviour).
pub fn plain_state(config: &Config) -> AppState {
    topolvm_scheduler::state(config, Arc::new(Metrics::new().expect("metrics")), None)
}

/// State of an extender with a cluster view fed by the test; reservations live for `ttl`.
pub fn cluster_state(
    config: &Config,
    ttl: Duration,
) -> (AppState, Arc<ClusterState>, NodeCacheWriter) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (cluster, writer) = ClusterState::new(ttl, metrics.clone());
    (
        topolvm_scheduler::state(config, metrics, Some(cluster.clone())),
        cluster,
        writer,
    )
}

/// A finished response: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub allow: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub async fn send(state: &AppState, request: Request<Body>) -> Answer {
    let response = app(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    };
    let content_type = header("content-type");
    let allow = header("allow");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        allow,
        body,
    }
}

pub async fn post(state: &AppState, path: &str, body: impl Into<Body>) -> Answer {
    send(
        state,
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.into())
            .expect("request"),
    )
    .await
}

pub async fn get(state: &AppState, path: &str) -> Answer {
    send(
        state,
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

/// An `ExtenderArgs` body shaped like kube-scheduler's, with minimal objects.
pub struct Args {
    pod: serde_json::Value,
    nodes: Vec<serde_json::Value>,
}

pub fn pod(uid: &str) -> Args {
    Args {
        pod: serde_json::json!({
            "metadata": {"name": format!("pod-{uid}"), "namespace": "default", "uid": uid, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"}
        }),
        nodes: Vec::new(),
    }
}

impl Args {
    pub fn requesting(mut self, class: &str, bytes: u64) -> Self {
        self.pod["metadata"]["annotations"][format!("capacity.topolvm.io/{class}")] =
            bytes.to_string().into();
        self
    }

    /// Adds a node with capacity annotations `(class, value)`.
    pub fn node(mut self, name: &str, capacity: &[(&str, &str)]) -> Self {
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            "node.alpha.kubernetes.io/ttl".to_owned(),
            serde_json::Value::from("0"),
        );
        for (class, value) in capacity {
            annotations.insert(
                format!("capacity.topolvm.io/{class}"),
                serde_json::Value::from(*value),
            );
        }
        self.nodes.push(serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }));
        self
    }

    /// The body with full node objects (`nodeCacheCapable: false`).
    pub fn with_nodes(&self) -> String {
        serde_json::json!({
            "Pod": self.pod,
            "Nodes": {"metadata": {}, "items": self.nodes},
            "NodeNames": null
        })
        .to_string()
    }

    /// The body with node names only (`nodeCacheCapable: true`).
    pub fn with_node_names(&self) -> String {
        let names: Vec<&serde_json::Value> =
            self.nodes.iter().map(|n| &n["metadata"]["name"]).collect();
        serde_json::json!({"Pod": self.pod, "Nodes": null, "NodeNames": names}).to_string()
    }
}

/// Names of the nodes that passed a filter answer, in either mode.
pub fn passed_names(answer: &serde_json::Value) -> Vec<String> {
    if let Some(items) = answer["Nodes"]["items"].as_array() {
        items
            .iter()
            .map(|n| n["metadata"]["name"].as_str().expect("name").to_owned())
            .collect()
    } else {
        answer["NodeNames"]
            .as_array()
            .expect("NodeNames")
            .iter()
            .map(|n| n.as_str().expect("name").to_owned())
            .collect()
    }
}

/// `(node, reason)` pairs of a filter answer, sorted.
pub fn failed(answer: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = answer["FailedNodes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("reason").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
