//! Golden files: a request body shaped exactly as kube-scheduler's Go code serializes
//! `ExtenderArgs` (full Node objects with managedFields and status, `"NodeNames":null`), and the
//! exact answers kube-scheduler decodes.

mod common;

use axum::http::StatusCode;
use common::*;
use topolvm_scheduler::config::Config;

fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.trim_end_matches('\n').to_owned()
}

#[tokio::test]
async fn predicate_answer_is_byte_exact() {
    let state = plain_state(&Config::default());
    let answer = post(&state, "/predicate", golden("predicate_request.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), golden("predicate_response.json"));
}

#[tokio::test]
async fn prioritize_answer_is_byte_exact() {
    let state = plain_state(&Config::default());
    let answer = post(&state, "/prioritize", golden("predicate_request.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), golden("prioritize_response.json"));
}

#[tokio::test]
async fn pod_without_requests_gets_every_node_back_unchanged() {
    let state = plain_state(&Config::default());
    let answer = post(&state, "/predicate", golden("predicate_no_request.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), golden("predicate_no_request_response.json"));
}

#[tokio::test]
async fn topolvms_lower_case_keys_are_read_too() {
    // TopoLVM's own copies of the types carry tags `pod`, `nodes`, `nodenames`; Go matches keys
    // case-insensitively, so both spellings reach the same fields.
    let state = plain_state(&Config::default());
    let body = golden("predicate_request.json")
        .replacen(r#"{"Pod":"#, r#"{"pod":"#, 1)
        .replacen(
            r#","Nodes":{"metadata":{},"items":"#,
            r#","nodes":{"metadata":{},"items":"#,
            1,
        )
        .replacen(r#","NodeNames":null}"#, r#","nodenames":null}"#, 1);
    assert!(body.starts_with(r#"{"pod":"#));
    let answer = post(&state, "/predicate", body).await;
    assert_eq!(answer.text(), golden("predicate_response.json"));
}
