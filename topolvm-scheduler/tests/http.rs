//! Every route and every bad input, through the router.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use topolvm_scheduler::config::Config;

const GIB: u64 = 1 << 30;

fn config() -> Config {
    Config::default()
}

#[tokio::test]
async fn status_is_ok() {
    let state = plain_state(&config());
    let answer = get(&state, "/status").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "ok");
}

#[tokio::test]
async fn predicate_filters_with_topolvms_reasons() {
    let state = plain_state(&config());
    let body = pod("u1")
        .requesting("ssd", 5 * GIB)
        .node("big", &[("ssd", &(10 * GIB).to_string())])
        .node("exact", &[("ssd", &(5 * GIB).to_string())])
        .node("small", &[("ssd", &(5 * GIB - 1).to_string())])
        .node("none", &[])
        .node("bad", &[("ssd", "ten")])
        .with_nodes();
    let answer = post(&state, "/predicate", body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let json = answer.json();
    assert_eq!(passed_names(&json), ["big", "exact"]);
    assert_eq!(
        failed(&json),
        [
            ("bad".to_owned(), "bad capacity annotation: ten".to_owned()),
            ("none".to_owned(), "no capacity annotation".to_owned()),
            ("small".to_owned(), "out of VG free space".to_owned()),
        ]
    );
    assert_eq!(json["NodeNames"], serde_json::Value::Null);
    assert_eq!(json["FailedAndUnresolvableNodes"], serde_json::Value::Null);
    assert_eq!(json["Error"], "");
    // The passing nodes come back whole, status included.
    assert_eq!(
        json["Nodes"]["items"][0]["status"]["conditions"][0]["type"],
        "Ready"
    );
}

#[tokio::test]
async fn pod_without_requests_passes_everywhere() {
    let state = plain_state(&config());
    let body = pod("u1")
        .node("a", &[])
        .node("b", &[("ssd", "x")])
        .with_nodes();
    let json = post(&state, "/predicate", body).await.json();
    assert_eq!(passed_names(&json), ["a", "b"]);
    assert_eq!(json["FailedNodes"], serde_json::Value::Null);
}

#[tokio::test]
async fn prioritize_scores_like_topolvm() {
    let state =
        plain_state(&Config::parse("default-divisor: 1\ndivisors:\n  hdd: 10\n").expect("config"));
    let body = pod("u1")
        .requesting("ssd", GIB)
        .node("n8", &[("ssd", &(8 * GIB).to_string())])
        .node("n1024", &[("ssd", &(1024 * GIB).to_string())])
        .node("none", &[])
        .with_nodes();
    let answer = post(&state, "/prioritize", body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.text(),
        r#"[{"Host":"n8","Score":3},{"Host":"n1024","Score":10},{"Host":"none","Score":0}]"#
    );
    let body = pod("u1")
        .requesting("hdd", GIB)
        .node("h", &[("hdd", &(40 * GIB).to_string())])
        .with_nodes();
    let answer = post(&state, "/prioritize", body).await;
    assert_eq!(answer.text(), r#"[{"Host":"h","Score":2}]"#);
}

#[tokio::test]
async fn prioritize_without_requests_is_an_empty_list() {
    let state = plain_state(&config());
    let answer = post(&state, "/prioritize", pod("u1").node("a", &[]).with_nodes()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "[]");
}

#[tokio::test]
async fn node_names_without_a_cluster_view_fail_with_an_explanation() {
    let state = plain_state(&config());
    let args = pod("u1").requesting("ssd", 1).node("a", &[("ssd", "5")]);
    let json = post(&state, "/predicate", args.with_node_names())
        .await
        .json();
    assert_eq!(json["Nodes"], serde_json::Value::Null);
    assert_eq!(json["NodeNames"], serde_json::json!([]));
    let reason = json["FailedNodes"]["a"].as_str().expect("reason");
    assert!(reason.contains("--watch-cluster"), "{reason}");
    // A pod without requests still passes by name.
    let json = post(
        &state,
        "/predicate",
        pod("u1").node("a", &[]).with_node_names(),
    )
    .await
    .json();
    assert_eq!(json["NodeNames"], serde_json::json!(["a"]));
    let answer = post(&state, "/prioritize", args.with_node_names()).await;
    assert_eq!(answer.text(), r#"[{"Host":"a","Score":0}]"#);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let config = Config::parse("max-request-bytes: 1000").expect("config");
    let state = plain_state(&config);
    let big = format!(
        r#"{{"Pod":{{}},"NodeNames":[],"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    for path in ["/predicate", "/prioritize"] {
        let answer = post(&state, path, big.clone()).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(
            answer.text().contains("larger than 1000 bytes"),
            "{}",
            answer.text()
        );
    }
    // Without a Content-Length (chunked), the limit still holds while reading.
    let stream = futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 200]))),
    );
    let answer = send(
        &state,
        Request::builder()
            .method(Method::POST)
            .uri("/predicate")
            .body(Body::from_stream(stream))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is read.
    let fits = format!(
        r#"{{"Pod":{{}},"NodeNames":[],"pad":"{}"}}"#,
        "x".repeat(900)
    );
    assert_eq!(
        post(&state, "/predicate", fits).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_default_limit_is_10_mib() {
    let state = plain_state(&config());
    let body = format!(
        r#"{{"Pod":{{}},"NodeNames":[],"pad":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let answer = post(&state, "/predicate", body).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn bad_requests_are_400_with_a_message() {
    let state = plain_state(&config());
    let cases: &[(&str, &str)] = &[
        ("", "EOF"),
        ("{", "EOF"),
        ("not json", "expected"),
        ("[]", "expected an ExtenderArgs object"),
        (r#"{"Nodes":{"items":[]}}"#, "has no Pod"),
        (r#"{"Pod":null,"Nodes":{"items":[]}}"#, "has no Pod"),
        (r#"{"Pod":{}}"#, "neither Nodes nor NodeNames"),
        (
            r#"{"Pod":{},"Nodes":null,"NodeNames":null}"#,
            "neither Nodes nor NodeNames",
        ),
        (
            r#"{"Pod":{},"Nodes":{"items":[{"metadata":{"name":5}}]}}"#,
            "Nodes.items[0]",
        ),
        (
            r#"{"Pod":{},"Nodes":{"items":{}}}"#,
            "expected a list of Node objects",
        ),
        (
            r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/ssd":1}}},"NodeNames":[]}"#,
            "invalid type",
        ),
        (r#"{"Pod":{},"NodeNames":[]}x"#, "trailing characters"),
    ];
    for path in ["/predicate", "/prioritize"] {
        for (body, needle) in cases {
            let answer = post(&state, path, body.to_string()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path} {body:?}");
            assert_eq!(answer.content_type.as_deref(), Some("application/json"));
            let message = answer.json()["message"]
                .as_str()
                .expect("message")
                .to_owned();
            assert!(message.contains(needle), "{path} {body:?}: {message}");
        }
    }
    let answer = post(&state, "/predicate", vec![0xff, 0xfe]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn wrong_methods_and_paths() {
    let state = plain_state(&config());
    for (method, path, allowed) in [
        (Method::GET, "/predicate", "POST"),
        (Method::PUT, "/prioritize", "POST"),
        (Method::POST, "/status", "GET,HEAD"),
        (Method::DELETE, "/metrics", "GET,HEAD"),
    ] {
        let answer = send(
            &state,
            Request::builder()
                .method(method.clone())
                .uri(path)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.allow.as_deref(), Some(allowed), "{method} {path}");
        let message = answer.json()["message"]
            .as_str()
            .expect("message")
            .to_owned();
        assert!(message.contains(method.as_str()), "{message}");
    }
    let answer = get(&state, "/nothing").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        answer.json()["message"]
            .as_str()
            .expect("message")
            .contains("/nothing")
    );
}

#[tokio::test]
async fn metrics_count_requests_and_filtered_nodes() {
    let state = plain_state(&config());
    let body = pod("u1")
        .requesting("ssd", 10)
        .node("a", &[("ssd", "5")])
        .node("b", &[])
        .node("c", &[("ssd", "x")])
        .with_nodes();
    post(&state, "/predicate", body).await;
    post(&state, "/predicate", "{").await;
    post(&state, "/prioritize", pod("u1").node("a", &[]).with_nodes()).await;
    let answer = get(&state, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let text = answer.text();
    for want in [
        r#"topolvm_scheduler_requests_total{outcome="ok",verb="predicate"} 1"#,
        r#"topolvm_scheduler_requests_total{outcome="bad_request",verb="predicate"} 1"#,
        r#"topolvm_scheduler_requests_total{outcome="ok",verb="prioritize"} 1"#,
        r#"topolvm_scheduler_filtered_nodes_total{reason="out_of_vg_free_space"} 1"#,
        r#"topolvm_scheduler_filtered_nodes_total{reason="no_capacity_annotation"} 1"#,
        r#"topolvm_scheduler_filtered_nodes_total{reason="bad_capacity_annotation"} 1"#,
        "topolvm_scheduler_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
}

#[tokio::test]
async fn large_bodies_are_decided_off_the_runtime_thread() {
    // Above the inline limit the verb runs on the blocking pool; the answer is the same.
    let state = plain_state(&config());
    let mut args = pod("u1").requesting("ssd", 1);
    for i in 0..12000 {
        args = args.node(&format!("node-{i:04}"), &[("ssd", "5")]);
    }
    let body = args.with_nodes();
    assert!(body.len() > 1 << 20, "{}", body.len());
    let json = post(&state, "/predicate", body).await.json();
    assert_eq!(passed_names(&json).len(), 12000);
}
