//! Our extender against TopoLVM's own: every file of `tests/topolvm-extender/` (recorded from
//! TopoLVM, see its README) is a request body shaped like kube-scheduler's and the answers TopoLVM's Go
//! handler (`internal/scheduler`, v0.41) gave to it under a configuration. Ours, started with the
//! same configuration and sent the same body, must give the same filter result and scores.
//!
//! What "the same" means is what kube-scheduler can tell apart, read the way its Go decoder
//! reads the answer (keys matched case-insensitively, `null` or an absent field as empty):
//! - `/predicate`: the same HTTP status; the same passing nodes, in order and as the same node
//!   objects (kube-scheduler up to 1.20 passes them on); the same failed nodes, each with one of
//!   the reasons TopoLVM gave it (`predicate.reasons_seen`: TopoLVM checks a pod's classes in Go
//!   map order, so a node failing on two classes gets either reason); the same `Error`.
//! - `/prioritize`: the same HTTP status and the same `(host, score)` list in order.
//! - An answer of TopoLVM that is not JSON is an error text (`http.Error`); kube-scheduler reads
//!   only the status of such an answer, so ours must have a status of the same class (4xx, 5xx)
//!   and its body is not compared.
//!
//! A missing or short directory fails the test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Answer, plain_state, post};
use serde::Deserialize;
use serde_json::Value;
use topolvm_scheduler::config::Config;

/// How many fixtures there are at least: 16 cases under each of 2 configurations (the
/// directory's README). Fewer means the directory is not the one recorded from TopoLVM.
const MIN_FIXTURES: usize = 32;

/// `tests/topolvm-extender` of this crate.
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topolvm-extender")
}

#[derive(Debug, Deserialize)]
struct Fixture {
    /// The scheduler configuration TopoLVM ran with (`default-divisor`, `divisors`).
    config: Value,
    request: Value,
    predicate: Recorded,
    prioritize: Recorded,
}

#[derive(Debug, Deserialize)]
struct Recorded {
    status: u16,
    body: Value,
    /// Predicate only: every reason TopoLVM gave each failed node over repeated calls.
    #[serde(default)]
    reasons_seen: BTreeMap<String, Vec<String>>,
}

fn load_fixtures() -> Vec<(String, Fixture)> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "TopoLVM's extender answers are expected in {}: {e}",
            dir.display()
        )
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= MIN_FIXTURES,
        "{} fixture files (*.json) in {}, expected at least {MIN_FIXTURES}",
        paths.len(),
        dir.display()
    );
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let fixture =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, fixture)
        })
        .collect()
}

/// A field of a Go-decoded object: the exact key if present, else one equal ignoring ASCII
/// case (`encoding/json`'s rule). `null` reads as absent.
fn go_field<'v>(object: &'v Value, name: &str) -> Option<&'v Value> {
    let map = object.as_object()?;
    map.get(name)
        .or_else(|| {
            map.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
        })
        .filter(|value| !value.is_null())
}

/// What kube-scheduler reads of an `ExtenderFilterResult`.
#[derive(Debug, PartialEq)]
struct Filtered {
    /// The passing nodes: full objects (`Nodes.items`), or names only (`NodeNames`).
    passed: Passed,
    failed: BTreeMap<String, String>,
    error: String,
}

#[derive(Debug, PartialEq)]
enum Passed {
    Nodes(Vec<Value>),
    Names(Vec<String>),
}

impl Passed {
    fn names(&self) -> Vec<String> {
        match self {
            Passed::Nodes(items) => items
                .iter()
                .map(|item| {
                    go_field(item, "metadata")
                        .and_then(|meta| go_field(meta, "name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
            Passed::Names(names) => names.clone(),
        }
    }
}

fn filtered(body: &Value) -> Result<Filtered, String> {
    let passed = match go_field(body, "Nodes") {
        Some(nodes) => Passed::Nodes(
            go_field(nodes, "items")
                .map(|items| items.as_array().cloned().ok_or("Nodes.items is not a list"))
                .transpose()?
                .unwrap_or_default(),
        ),
        None => Passed::Names(
            go_field(body, "NodeNames")
                .map(|names| {
                    names
                        .as_array()
                        .ok_or("NodeNames is not a list")?
                        .iter()
                        .map(|n| {
                            n.as_str()
                                .map(str::to_owned)
                                .ok_or("a NodeName is not a string")
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
        ),
    };
    let failed = match go_field(body, "FailedNodes") {
        None => BTreeMap::new(),
        Some(map) => map
            .as_object()
            .ok_or("FailedNodes is not an object")?
            .iter()
            .map(|(node, reason)| {
                reason
                    .as_str()
                    .map(|r| (node.clone(), r.to_owned()))
                    .ok_or_else(|| format!("FailedNodes.{node} is not a string"))
            })
            .collect::<Result<_, _>>()?,
    };
    let error = go_field(body, "Error")
        .map(|e| e.as_str().map(str::to_owned).ok_or("Error is not a string"))
        .transpose()?
        .unwrap_or_default();
    Ok(Filtered {
        passed,
        failed,
        error,
    })
}

/// A `HostPriorityList` as `(host, score)` pairs; `null` is the empty list.
fn scores(body: &Value) -> Result<Vec<(String, i64)>, String> {
    if body.is_null() {
        return Ok(Vec::new());
    }
    body.as_array()
        .ok_or("not a list")?
        .iter()
        .map(|entry| {
            let host = go_field(entry, "Host").and_then(Value::as_str);
            let score = go_field(entry, "Score").and_then(Value::as_i64);
            match (host, score) {
                (Some(host), Some(score)) => Ok((host.to_owned(), score)),
                _ => Err(format!("{entry} is not a HostPriority")),
            }
        })
        .collect()
}

/// Compares the status and returns the two JSON bodies when both answers are JSON, `None` when
/// TopoLVM's answer is an error text (then only the status class must agree).
fn compare_status(
    verb: &str,
    recorded: &Recorded,
    ours: &Answer,
    problems: &mut Vec<String>,
) -> Option<Value> {
    let ours_status = ours.status.as_u16();
    if let Value::String(text) = &recorded.body {
        if ours_status / 100 != recorded.status / 100 {
            problems.push(format!(
                "{verb}: TopoLVM answered {} ({text:?}), we answered {ours_status}",
                recorded.status
            ));
        }
        return None;
    }
    if ours_status != recorded.status {
        problems.push(format!(
            "{verb}: TopoLVM answered {}, we answered {ours_status}",
            recorded.status
        ));
        return None;
    }
    match serde_json::from_slice(&ours.body) {
        Ok(body) => Some(body),
        Err(e) => {
            problems.push(format!("{verb}: our answer is not JSON: {e}"));
            None
        }
    }
}

fn compare_predicate(recorded: &Recorded, ours: &Answer, problems: &mut Vec<String>) {
    let Some(our_body) = compare_status("predicate", recorded, ours, problems) else {
        return;
    };
    let (theirs, ours) = match (filtered(&recorded.body), filtered(&our_body)) {
        (Ok(theirs), Ok(ours)) => (theirs, ours),
        (theirs, ours) => {
            problems.push(format!(
                "predicate: unreadable answer: TopoLVM {:?}, ours {:?}",
                theirs.err(),
                ours.err()
            ));
            return;
        }
    };
    if ours.passed.names() != theirs.passed.names() {
        problems.push(format!(
            "predicate: passing nodes: TopoLVM {:?}, ours {:?}",
            theirs.passed.names(),
            ours.passed.names()
        ));
    } else if ours.passed != theirs.passed {
        problems.push("predicate: the passing node objects differ from TopoLVM's".to_owned());
    }
    let failed_names = |f: &Filtered| f.failed.keys().cloned().collect::<Vec<_>>();
    if failed_names(&ours) != failed_names(&theirs) {
        problems.push(format!(
            "predicate: failed nodes: TopoLVM {:?}, ours {:?}",
            failed_names(&theirs),
            failed_names(&ours)
        ));
    }
    for (node, reason) in &ours.failed {
        let seen = recorded.reasons_seen.get(node);
        if seen.is_none_or(|seen| !seen.contains(reason)) {
            problems.push(format!(
                "predicate: {node} failed with {reason:?}; TopoLVM gave {seen:?}"
            ));
        }
    }
    if ours.error != theirs.error {
        problems.push(format!(
            "predicate: Error: TopoLVM {:?}, ours {:?}",
            theirs.error, ours.error
        ));
    }
}

fn compare_prioritize(recorded: &Recorded, ours: &Answer, problems: &mut Vec<String>) {
    let Some(our_body) = compare_status("prioritize", recorded, ours, problems) else {
        return;
    };
    match (scores(&recorded.body), scores(&our_body)) {
        (Ok(theirs), Ok(ours)) if theirs == ours => {}
        (Ok(theirs), Ok(ours)) => problems.push(format!(
            "prioritize: scores: TopoLVM {theirs:?}, ours {ours:?}"
        )),
        (theirs, ours) => problems.push(format!(
            "prioritize: unreadable answer: TopoLVM {:?}, ours {:?}",
            theirs.err(),
            ours.err()
        )),
    }
}

/// The request with its top-level keys spelled as TopoLVM's own copies of the types tag them
/// (`pod`, `nodes`, `nodenames`).
fn with_topolvms_spelling(request: &Value) -> Value {
    let Some(map) = request.as_object() else {
        return request.clone();
    };
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
            .collect(),
    )
}

async fn check(fixture: &Fixture, request: &Value) -> Vec<String> {
    let yaml = fixture.config.to_string();
    let config = match Config::parse(&yaml) {
        Ok(config) => config,
        Err(e) => return vec![format!("configuration {yaml} does not load: {e}")],
    };
    let state = plain_state(&config);
    let body = request.to_string();
    let mut problems = Vec::new();
    let answer = post(&state, "/predicate", body.clone()).await;
    compare_predicate(&fixture.predicate, &answer, &mut problems);
    let answer = post(&state, "/prioritize", body).await;
    compare_prioritize(&fixture.prioritize, &answer, &mut problems);
    problems
}

#[tokio::test]
async fn answers_are_topolvms() {
    let mut problems = Vec::new();
    let fixtures = load_fixtures();
    for (name, fixture) in &fixtures {
        for problem in check(fixture, &fixture.request).await {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} fixtures answered differently from TopoLVM:\n{}",
        problems
            .iter()
            .filter_map(|p| p.split(':').next())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        fixtures.len(),
        problems.join("\n")
    );
}

/// kube-scheduler writes `Pod`, `Nodes`, `NodeNames`; TopoLVM's types are tagged `pod`, `nodes`,
/// `nodenames`, and Go's decoder matches either spelling, so TopoLVM answers both alike.
#[tokio::test]
async fn answers_are_topolvms_with_lower_case_keys() {
    let mut problems = Vec::new();
    for (name, fixture) in &load_fixtures() {
        for problem in check(fixture, &with_topolvms_spelling(&fixture.request)).await {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
