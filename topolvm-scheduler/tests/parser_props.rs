//! Property tests of the request parser: no input panics or yields a server error.

mod common;

use axum::http::StatusCode;
use common::*;
use proptest::prelude::*;
use topolvm_scheduler::config::Config;
use topolvm_scheduler::wire::parse_extender_args;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// Strings that look like pieces of an ExtenderArgs body, to reach deeper than random bytes.
fn json_ish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just(r#"{"Pod":"#.to_owned()),
        Just(r#""Nodes":{"items":["#.to_owned()),
        Just(r#""NodeNames":["#.to_owned()),
        Just(r#"{"metadata":{"name":"n","annotations":{"capacity.topolvm.io/ssd":"#.to_owned()),
        Just(r#""18446744073709551616""#.to_owned()),
        Just(r#""-5""#.to_owned()),
        Just("null".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        "\"[a-z0-9./-]{0,12}\"",
        "-?[0-9]{1,25}",
    ];
    prop::collection::vec(atoms, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_5xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_extender_args(&body);
        let state = plain_state(&Config::default());
        let rt = runtime();
        for path in ["/predicate", "/prioritize"] {
            let answer = rt.block_on(post(&state, path, body.clone()));
            prop_assert!(
                answer.status == StatusCode::OK || answer.status == StatusCode::BAD_REQUEST,
                "{} {}", path, answer.status
            );
        }
    }

    #[test]
    fn json_like_input_never_panics_or_5xx(body in json_ish()) {
        let state = plain_state(&Config::default());
        let rt = runtime();
        for path in ["/predicate", "/prioritize"] {
            let answer = rt.block_on(post(&state, path, body.clone()));
            prop_assert!(
                answer.status == StatusCode::OK || answer.status == StatusCode::BAD_REQUEST,
                "{} {} for {:?}", path, answer.status, body
            );
        }
    }

    #[test]
    fn any_annotation_values_are_answered(
        requested in prop::collection::vec(("[a-c]", ".{0,24}"), 0..4),
        node_values in prop::collection::vec(prop::collection::vec(("[a-c]", ".{0,24}"), 0..4), 0..6),
    ) {
        let mut pod_annotations = serde_json::Map::new();
        for (class, value) in &requested {
            pod_annotations.insert(format!("capacity.topolvm.io/{class}"), value.clone().into());
        }
        let items: Vec<serde_json::Value> = node_values.iter().enumerate().map(|(i, values)| {
            let mut annotations = serde_json::Map::new();
            for (class, value) in values {
                annotations.insert(format!("capacity.topolvm.io/{class}"), value.clone().into());
            }
            serde_json::json!({"metadata": {"name": format!("n{i}"), "annotations": annotations}})
        }).collect();
        let body = serde_json::json!({
            "Pod": {"metadata": {"uid": "u", "annotations": pod_annotations}},
            "Nodes": {"metadata": {}, "items": items},
            "NodeNames": null,
        }).to_string();
        let state = plain_state(&Config::default());
        let rt = runtime();
        let filter = rt.block_on(post(&state, "/predicate", body.clone()));
        prop_assert_eq!(filter.status, StatusCode::OK);
        let json = filter.json();
        let passed = passed_names(&json).len();
        let failed = json["FailedNodes"].as_object().map_or(0, |m| m.len());
        prop_assert_eq!(passed + failed, node_values.len());
        let scores = rt.block_on(post(&state, "/prioritize", body));
        prop_assert_eq!(scores.status, StatusCode::OK);
        for entry in scores.json().as_array().expect("list") {
            let score = entry["Score"].as_i64().expect("score");
            prop_assert!((0..=10).contains(&score));
        }
    }
}
