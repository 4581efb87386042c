//! `deploy/monitoring/`: the Grafana dashboard and the PrometheusRule use only metrics, labels and
//! label values that the real binaries export. The whole stack runs on the test bed: the real
//! kube-apiserver, lvmd on loop devices (metadata-only lvm2, so a thick class), a topolvm-node on
//! it, a second topolvm-node fed a thin pool by a stand-in lvmd (the host has no device-mapper, so
//! no real thin pool), topolvm-controller and topolvm-scheduler. One CSI volume is created (and one
//! refused for lack of space), kubelet's NodeGetInfo is sent, and each `/metrics` is scraped; every
//! expression of both files is parsed as PromQL (`promql-parser`) and each selector's metric name
//! (histograms by their `_bucket`/`_sum`/`_count` series), matcher label names and exact-match
//! values, `by`/`on` labels, legend and annotation `{{label}}`s are looked up in what was scraped.
//! Misspelt names, labels and values are shown to be caught. A real Prometheus (Debian's,
//! `e2e/scripts/fetch-prometheus.sh`) then scrapes the same endpoints with the rule file loaded
//! (which `promtool check rules` accepts): every rule evaluates without error, every dashboard
//! query is accepted, the `node` and `device_class` variables list the cluster's nodes and classes,
//! and of the thin pool, lvmd, orphan and leader alerts exactly the expected ones are active (the
//! thin node's pool is reported over the thresholds); failing CSI calls make the CSI error-rate
//! alerts active for their methods. Then lvmd is stopped: the node's series change as the lvmd and
//! staleness alerts expect, and Prometheus raises TopoLVMLvmdUnreachable for that node. Root:
//!
//! ```text
//! e2e/scripts/build-control-plane.sh && e2e/scripts/fetch-prometheus.sh
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node -p topolvm-scheduler --bin topolvm-scheduler
//! cargo test -p topolvm-controller --features e2e --test monitoring
//! ```
//!
//! The files' structure is checked too: the PrometheusRule round-trips through our typed
//! struct (no unknown or lost field), each alert has a severity, a summary, a description and a
//! `for:`; the dashboard has its variables and every panel a Prometheus target on
//! `${datasource}`.
#![cfg(feature = "e2e")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::PostParams;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self as promql, Expr, LabelModifier, VectorMatchCardinality};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use topolvm_core::names;
use topolvm_e2e::csi::{Kubelet, Sidecars};
use topolvm_e2e::lvm::{self as common, Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_e2e::process::{ManagedProcess, eventually, free_port, workspace_binary};
use topolvm_e2e::stack;
use topolvm_e2e::{Cluster, ClusterOptions};
use topolvm_proto::csi;
use topolvm_proto::lvmd as pb;

const NODE: &str = "node-a";
const THIN_NODE: &str = "node-thin";
const CLASS: &str = "ssd";
const THIN_CLASS: &str = "thin";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn monitoring_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// The PrometheusRule, typed (the fields of monitoring.coreos.com/v1 we use).

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: RuleMetadata,
    spec: RuleSpec,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleMetadata {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// The rule file, with its structure checked: it round-trips through [`PrometheusRule`]
/// unchanged and every alert is complete.
fn load_rules() -> PrometheusRule {
    let path = monitoring_file("topolvm-rs-alerts.yaml");
    let text = std::fs::read_to_string(&path).expect("the rule file");
    let raw: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let rules: PrometheusRule = serde_yaml::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{}: not a PrometheusRule: {e}", path.display()));
    assert_eq!(
        serde_yaml::to_value(&rules).expect("serialize"),
        raw,
        "the PrometheusRule changes on a round trip through its type"
    );
    assert_eq!(rules.api_version, "monitoring.coreos.com/v1");
    assert_eq!(rules.kind, "PrometheusRule");
    let mut names = BTreeSet::new();
    for rule in rules.spec.groups.iter().flat_map(|g| &g.rules) {
        let name = rule.alert.as_deref().expect("only alerting rules");
        assert!(names.insert(name), "alert {name} twice");
        assert!(
            matches!(
                rule.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{name}: severity warning or critical"
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{name}: no {key}"
            );
        }
        let wait = rule.for_.as_deref().unwrap_or_default();
        assert!(
            prometheus_duration(wait).is_some_and(|d| d >= Duration::from_secs(60)),
            "{name}: for: {wait:?} is not a Prometheus duration of a minute or more"
        );
    }
    assert!(!names.is_empty());
    rules
}

/// A Prometheus duration (`90s`, `1h30m`).
fn prometheus_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => {
                total += Duration::from_millis(n);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            "y" => 31_536_000,
            _ => return None,
        };
        total += Duration::from_secs(n * seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

// ---------------------------------------------------------------------------------------------
// The dashboard (the parts of Grafana's JSON model we rely on).

#[derive(Debug, Deserialize)]
struct Dashboard {
    uid: String,
    title: String,
    panels: Vec<Panel>,
    templating: Templating,
}

#[derive(Debug, Deserialize)]
struct Templating {
    list: Vec<Variable>,
}

#[derive(Debug, Deserialize)]
struct Variable {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    query: serde_json::Value,
    #[serde(default)]
    datasource: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
struct DataSource {
    #[serde(rename = "type")]
    kind: String,
    uid: String,
}

#[derive(Debug, Deserialize)]
struct Panel {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    #[serde(rename = "gridPos")]
    grid_pos: GridPos,
    #[serde(default)]
    datasource: Option<DataSource>,
    #[serde(default)]
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct GridPos {
    h: u32,
    w: u32,
    x: u32,
    #[allow(dead_code)]
    y: u32,
}

#[derive(Debug, Deserialize)]
struct Target {
    expr: String,
    #[serde(rename = "refId")]
    ref_id: String,
    #[serde(default, rename = "legendFormat")]
    legend: String,
    datasource: DataSource,
}

const DASHBOARD_VARIABLES: [&str; 3] = ["datasource", "node", "device_class"];

/// The dashboard, with its structure checked: the three variables, and panels that each have a
/// unique id, a place on the 24-column grid and Prometheus targets on `${datasource}`.
fn load_dashboard() -> Dashboard {
    let path = monitoring_file("topolvm-rs-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Dashboard = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not a dashboard: {e}", path.display()));
    assert_eq!(dashboard.uid, "topolvm-rs");
    assert!(!dashboard.title.is_empty());
    let vars: BTreeMap<&str, &Variable> = dashboard
        .templating
        .list
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    assert_eq!(
        vars.keys().copied().collect::<Vec<_>>(),
        {
            let mut v = DASHBOARD_VARIABLES.to_vec();
            v.sort();
            v
        },
        "the dashboard's variables"
    );
    assert_eq!(vars["datasource"].kind, "datasource");
    assert_eq!(vars["datasource"].query, json!("prometheus"));
    for name in ["node", "device_class"] {
        assert_eq!(vars[name].kind, "query", "{name}");
        let ds = vars[name].datasource.as_ref().expect("a datasource");
        assert_eq!(
            (ds.kind.as_str(), ds.uid.as_str()),
            ("prometheus", "${datasource}")
        );
    }
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in &dashboard.panels {
        assert!(ids.insert(panel.id), "panel id {} twice", panel.id);
        assert!(
            panel.grid_pos.x + panel.grid_pos.w <= 24 && panel.grid_pos.h > 0,
            "{}: off the grid",
            panel.title
        );
        if panel.kind == "row" {
            continue;
        }
        graphs += 1;
        assert!(!panel.targets.is_empty(), "{}: no target", panel.title);
        let ds = panel.datasource.as_ref().expect("a panel datasource");
        assert_eq!(ds.uid, "${datasource}", "{}", panel.title);
        let mut refs = BTreeSet::new();
        for target in &panel.targets {
            assert_eq!(
                (
                    target.datasource.kind.as_str(),
                    target.datasource.uid.as_str()
                ),
                ("prometheus", "${datasource}"),
                "{}",
                panel.title
            );
            assert!(refs.insert(&target.ref_id), "{}: refId twice", panel.title);
            assert!(
                !target.expr.trim().is_empty(),
                "{}: empty expr",
                panel.title
            );
        }
    }
    assert!(graphs >= 10, "only {graphs} panels");
    dashboard
}

// ---------------------------------------------------------------------------------------------
// What the binaries export.

/// Every series name in a scrape, with its label names and the values each took.
#[derive(Debug, Default)]
struct Exported {
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    /// Adds one `/metrics` answer (Prometheus text format 0.0.4).
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) = parse_sample(line)
                .unwrap_or_else(|| panic!("not a sample line of the text format: {line:?}"));
            let entry = self.series.entry(name).or_default();
            for (k, v) in labels {
                entry.entry(k).or_default().insert(v);
            }
        }
    }
}

/// `name{a="x",b="y"} value` → (name, labels).
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].to_owned();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        value.push(match escaped {
                            'n' => '\n',
                            other => other,
                        });
                    }
                    '"' => break i,
                    c => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.push((key, value));
        }
    }
    rest.trim().split(' ').next()?.parse::<f64>().ok()?;
    Some((name, labels))
}

// ---------------------------------------------------------------------------------------------
// Checking expressions against what is exported.

/// Grafana's variables replaced by values PromQL accepts; any other `$` is an error.
fn substitute_grafana_variables(expr: &str) -> Result<String, String> {
    let mut out = expr.to_owned();
    for interval in ["$__rate_interval", "$__interval", "$__range"] {
        out = out.replace(interval, "5m");
    }
    for var in DASHBOARD_VARIABLES {
        out = out.replace(&format!("${{{var}}}"), ".*");
        out = out.replace(&format!("${var}"), ".*");
    }
    match out.find('$') {
        Some(i) => Err(format!("unknown Grafana variable at {:?}", &out[i..])),
        None => Ok(out),
    }
}

/// Checks one PromQL expression; returns the label names its result carries.
fn check_expr(
    what: &str,
    expr: &str,
    exported: &Exported,
    errors: &mut Vec<String>,
) -> BTreeSet<String> {
    match promql::parse(expr) {
        Ok(ast) => output_labels(what, &ast, exported, errors),
        Err(e) => {
            errors.push(format!("{what}: not PromQL ({e}): {expr}"));
            BTreeSet::new()
        }
    }
}

fn label_list(labels: &promql_parser::label::Labels) -> Vec<String> {
    labels.labels.clone()
}

/// Walks the expression: checks every selector against `exported` and every grouping label
/// against its operand, and returns the labels of the result (as Prometheus computes them).
fn output_labels(
    what: &str,
    expr: &Expr,
    exported: &Exported,
    errors: &mut Vec<String>,
) -> BTreeSet<String> {
    match expr {
        Expr::VectorSelector(vs) => check_selector(what, vs, exported, errors),
        Expr::MatrixSelector(ms) => check_selector(what, &ms.vs, exported, errors),
        Expr::Paren(p) => output_labels(what, &p.expr, exported, errors),
        Expr::Unary(u) => output_labels(what, &u.expr, exported, errors),
        Expr::Subquery(s) => output_labels(what, &s.expr, exported, errors),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => BTreeSet::new(),
        Expr::Aggregate(agg) => {
            let inner = output_labels(what, &agg.expr, exported, errors);
            if let Some(param) = &agg.param {
                output_labels(what, param, exported, errors);
            }
            match &agg.modifier {
                Some(LabelModifier::Include(labels)) => {
                    for label in label_list(labels) {
                        if !inner.contains(&label) {
                            errors.push(format!(
                                "{what}: {} by ({label}): its operand has no label {label} (has {inner:?})",
                                agg.op
                            ));
                        }
                    }
                    label_list(labels).into_iter().collect()
                }
                Some(LabelModifier::Exclude(labels)) => {
                    let drop: BTreeSet<String> = label_list(labels).into_iter().collect();
                    inner.difference(&drop).cloned().collect()
                }
                None => BTreeSet::new(),
            }
        }
        Expr::Call(call) => {
            let args: Vec<BTreeSet<String>> = call
                .args
                .args
                .iter()
                .map(|a| output_labels(what, a, exported, errors))
                .collect();
            match call.func.name {
                "histogram_quantile" => {
                    let buckets = args.get(1).cloned().unwrap_or_default();
                    if !buckets.contains("le") {
                        errors.push(format!(
                            "{what}: histogram_quantile over series without le ({buckets:?})"
                        ));
                    }
                    buckets.into_iter().filter(|l| l != "le").collect()
                }
                "time" | "vector" | "scalar" => BTreeSet::new(),
                _ => args.into_iter().flatten().collect(),
            }
        }
        Expr::Binary(bin) => {
            let lhs = output_labels(what, &bin.lhs, exported, errors);
            let rhs = output_labels(what, &bin.rhs, exported, errors);
            let lhs_vector = !is_scalar(&bin.lhs);
            let rhs_vector = !is_scalar(&bin.rhs);
            if let Some(modifier) = &bin.modifier {
                if let Some(LabelModifier::Include(labels)) = &modifier.matching {
                    for label in label_list(labels) {
                        if !lhs.contains(&label) || !rhs.contains(&label) {
                            errors.push(format!(
                                "{what}: on({label}): not on both sides ({lhs:?} {} {rhs:?})",
                                bin.op
                            ));
                        }
                    }
                }
                if let VectorMatchCardinality::ManyToOne(extra)
                | VectorMatchCardinality::OneToMany(extra) = &modifier.card
                {
                    let one = if matches!(modifier.card, VectorMatchCardinality::ManyToOne(_)) {
                        &rhs
                    } else {
                        &lhs
                    };
                    for label in label_list(extra) {
                        if !one.contains(&label) {
                            errors.push(format!("{what}: group_x({label}): no such label"));
                        }
                    }
                }
            }
            match bin.op.to_string().as_str() {
                "or" => lhs.union(&rhs).cloned().collect(),
                "and" | "unless" => lhs,
                _ if lhs_vector => lhs,
                _ if rhs_vector => rhs,
                _ => BTreeSet::new(),
            }
        }
        Expr::Extension(_) => {
            errors.push(format!("{what}: an extension expression"));
            BTreeSet::new()
        }
    }
}

fn is_scalar(expr: &Expr) -> bool {
    match expr {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => is_scalar(&p.expr),
        Expr::Unary(u) => is_scalar(&u.expr),
        Expr::Call(c) => matches!(c.func.name, "time" | "scalar"),
        Expr::Binary(b) => is_scalar(&b.lhs) && is_scalar(&b.rhs),
        _ => false,
    }
}

/// One selector: its name is an exported series; every matcher names a label of it, and an
/// exact (`=`, `!=`) matcher a value that series was seen with.
fn check_selector(
    what: &str,
    vs: &promql_parser::parser::VectorSelector,
    exported: &Exported,
    errors: &mut Vec<String>,
) -> BTreeSet<String> {
    let Some(name) = &vs.name else {
        errors.push(format!("{what}: a selector without a metric name"));
        return BTreeSet::new();
    };
    let Some(labels) = exported.series.get(name) else {
        errors.push(format!("{what}: no metric {name} is exported"));
        return BTreeSet::new();
    };
    let all = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for matcher in all {
        if matcher.name == "__name__" {
            continue;
        }
        let Some(values) = labels.get(&matcher.name) else {
            errors.push(format!(
                "{what}: {name} has no label {} (has {:?})",
                matcher.name,
                labels.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        if matches!(matcher.op, MatchOp::Equal | MatchOp::NotEqual)
            && !values.contains(&matcher.value)
        {
            errors.push(format!(
                "{what}: {name}{{{}{}{:?}}}: the value was never exported (seen {values:?})",
                matcher.name, matcher.op, matcher.value
            ));
        }
    }
    labels.keys().cloned().collect()
}

/// `{{label}}` in a legend, `{{ $labels.label }}` in an annotation.
fn template_labels(text: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + end].trim();
        if let Some(label) = inner.strip_prefix(prefix) {
            let label: String = label
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !label.is_empty() {
                found.push(label);
            }
        }
        rest = &rest[start + end + 2..];
    }
    found
}

/// Every expression of the rule file and the dashboard checked against `exported`; the list
/// of what is wrong.
fn check_all(rules: &PrometheusRule, dashboard: &Dashboard, exported: &Exported) -> Vec<String> {
    let mut errors = Vec::new();
    for rule in rules.spec.groups.iter().flat_map(|g| &g.rules) {
        let what = format!("alert {}", rule.alert.as_deref().unwrap_or("?"));
        let labels = check_expr(&what, &rule.expr, exported, &mut errors);
        for text in rule.annotations.values() {
            for label in template_labels(text, "$labels.") {
                if !labels.contains(&label) {
                    errors.push(format!(
                        "{what}: annotation uses $labels.{label}, the result has {labels:?}"
                    ));
                }
            }
        }
    }
    for var in &dashboard.templating.list {
        let Some(query) = var.query.get("query").and_then(|q| q.as_str()) else {
            continue;
        };
        let what = format!("variable {}", var.name);
        let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        else {
            errors.push(format!(
                "{what}: not label_values(selector, label): {query}"
            ));
            continue;
        };
        let Some((selector, label)) = args.rsplit_once(',') else {
            errors.push(format!("{what}: label_values needs a selector and a label"));
            continue;
        };
        match substitute_grafana_variables(selector) {
            Ok(selector) => {
                let labels = check_expr(&what, &selector, exported, &mut errors);
                if !labels.contains(label.trim()) {
                    errors.push(format!("{what}: {selector} has no label {}", label.trim()));
                }
            }
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    for panel in &dashboard.panels {
        for target in &panel.targets {
            let what = format!("panel {:?} target {}", panel.title, target.ref_id);
            match substitute_grafana_variables(&target.expr) {
                Ok(expr) => {
                    let labels = check_expr(&what, &expr, exported, &mut errors);
                    for label in template_labels(&target.legend, "") {
                        if !labels.contains(&label) {
                            errors.push(format!(
                                "{what}: legend uses {{{{{label}}}}}, the result has {labels:?}"
                            ));
                        }
                    }
                }
                Err(e) => errors.push(format!("{what}: {e}")),
            }
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// The stand-in lvmd of the thin node.

/// Reports one thin class whose pool is 96.5% (data) and 81.25% (metadata) used, and no LVs:
/// above the data alerts' thresholds and the metadata warning's, below its critical one.
#[derive(Debug, Clone)]
struct ThinPoolLvmd;

type WatchStream = Pin<
    Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::vg_service_server::VgService for ThinPoolLvmd {
    async fn get_lv_list(
        &self,
        _request: Request<pb::GetLvListRequest>,
    ) -> Result<Response<pb::GetLvListResponse>, Status> {
        Ok(Response::new(pb::GetLvListResponse { volumes: vec![] }))
    }

    async fn get_free_bytes(
        &self,
        _request: Request<pb::GetFreeBytesRequest>,
    ) -> Result<Response<pb::GetFreeBytesResponse>, Status> {
        Ok(Response::new(pb::GetFreeBytesResponse {
            free_bytes: 30 << 30,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _request: Request<pb::Empty>) -> Result<Response<WatchStream>, Status> {
        let report = pb::WatchResponse {
            free_bytes: 30 << 30,
            items: vec![pb::WatchItem {
                device_class: THIN_CLASS.to_owned(),
                free_bytes: 2 << 30,
                size_bytes: 20 << 30,
                thin_pool: Some(pb::ThinPoolItem {
                    data_percent: 96.5,
                    metadata_percent: 81.25,
                    overprovision_bytes: 30 << 30,
                    size_bytes: 10 << 30,
                }),
            }],
        };
        // One message, then the stream stays open as lvmd's does while nothing changes.
        let stream =
            futures::stream::once(async move { Ok(report) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

// ---------------------------------------------------------------------------------------------
// The stack.

fn topolvm_node(
    cluster: &Cluster,
    dir: &Path,
    node: &str,
    lvmd_socket: &Path,
) -> (ManagedProcess, SocketAddr, PathBuf) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let csi_socket = dir.join(format!("{node}.sock"));
    let mut cmd = Command::new(workspace_binary("topolvm-node", "topolvm-node"));
    cmd.arg("--nodename")
        .arg(node)
        .arg("--lvmd-socket")
        .arg(lvmd_socket)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-node"))
        .arg("--metrics-bind-address")
        .arg(metrics.to_string())
        .arg("--health-probe-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--csi-socket")
        .arg(&csi_socket)
        .arg("--kubelet-dir")
        .arg(dir.join(format!("{node}-kubelet")))
        .arg("--orphan-scan-interval")
        .arg("1s")
        .env("RUST_LOG", "topolvm_node=debug,info");
    let process = ManagedProcess::spawn(
        &format!("topolvm-node {node}"),
        cmd,
        &dir.join(format!("{node}.log")),
    );
    (process, metrics, csi_socket)
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    common::http_get(addr, "/metrics").await.ok()
}

/// The value of the one series of `name` with exactly `labels` in a scrape.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (n, l) = parse_sample(line)?;
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut got = l;
        want.sort();
        got.sort();
        (n == name && got == want).then(|| line.rsplit(' ').next()?.parse().ok())?
    })
}

fn storage_class(name: &str, class: &str) -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": names::PLUGIN_NAME,
        "volumeBindingMode": "WaitForFirstConsumer",
        "parameters": {names::DEVICE_CLASS_PARAMETER: class},
    }))
    .expect("a StorageClass")
}

async fn make_pvc(client: &kube::Client, name: &str, bytes: u64) -> PersistentVolumeClaim {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &stack::claim(name, "topolvm-ssd", bytes),
        )
        .await
        .expect("creating a PVC")
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus (Debian's, cached by e2e/scripts/fetch-prometheus.sh) scraping the stack.

fn prometheus_bin() -> PathBuf {
    let dir = std::env::var_os("TOPOLVM_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/topolvm-rs/prometheus/bin"));
    let bin = dir.join("prometheus");
    assert!(
        bin.exists(),
        "{} missing: run e2e/scripts/fetch-prometheus.sh",
        bin.display()
    );
    bin
}

#[derive(Debug, Serialize)]
struct RuleFile<'a> {
    groups: &'a [RuleGroup],
}

/// Prometheus scraping `targets` every second and evaluating `rules` every second.
fn start_prometheus(
    dir: &Path,
    rules: &PrometheusRule,
    targets: &[(&str, SocketAddr)],
) -> (ManagedProcess, SocketAddr) {
    let rule_file = dir.join("rules.yaml");
    std::fs::write(
        &rule_file,
        serde_yaml::to_string(&RuleFile {
            groups: &rules.spec.groups,
        })
        .expect("rules"),
    )
    .expect("rule file");
    let scrape_configs: Vec<serde_json::Value> = targets
        .iter()
        .map(|(job, addr)| json!({"job_name": job, "static_configs": [{"targets": [addr.to_string()]}]}))
        .collect();
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rule_file],
        "scrape_configs": scrape_configs,
    });
    let promtool = prometheus_bin().with_file_name("promtool");
    let checked = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rule_file)
        .output()
        .expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, serde_yaml::to_string(&config).expect("yaml")).expect("config");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let process = ManagedProcess::spawn("prometheus", cmd, &dir.join("prometheus.log"));
    (process, addr)
}

/// `text` for a URL query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data` of a Prometheus API answer, or its error.
async fn prometheus_api(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let body = common::http_get(addr, path)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
    if answer["status"] == "success" {
        Ok(answer["data"].clone())
    } else {
        Err(format!("GET {path}: {answer}"))
    }
}

/// The alerts Prometheus has pending or firing, as (alert name, value of the label `key`).
async fn active_alerts(addr: SocketAddr, key: &str) -> Option<BTreeSet<(String, String)>> {
    let data = prometheus_api(addr, "/api/v1/alerts").await.ok()?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_owned();
                (label("alertname"), label(key))
            })
            .collect(),
    )
}

/// Both files' structure (no stack needed).
#[test]
fn the_rule_file_and_the_dashboard_are_well_formed() {
    load_rules();
    load_dashboard();
}

#[test]
fn prometheus_durations() {
    assert_eq!(prometheus_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(
        prometheus_duration("1h30m"),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(prometheus_duration("10"), None);
    assert_eq!(prometheus_duration("10 m"), None);
    assert_eq!(prometheus_duration(""), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let rules = load_rules();
    let dashboard = load_dashboard();

    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    cluster.install_crds().await;
    cluster.make_node(NODE, &[], &[]).await;
    cluster.make_node(THIN_NODE, &[], &[]).await;
    let admin = cluster.client();
    let dir = tempfile::tempdir().expect("tmp");

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(128 * MIB)]);
    let mut lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(
            workspace_binary("lvmd", "lvmd"),
            common::thick_default_class(CLASS, vg.name()),
        ),
    );
    let (_node_agent, node_metrics, node_csi) =
        topolvm_node(&cluster, dir.path(), NODE, lvmd.socket_path());

    let thin_socket = dir.path().join("thin-lvmd.sock");
    let stop_thin = CancellationToken::new();
    let _stop_thin_on_drop = stop_thin.clone().drop_guard();
    {
        let listener = topolvm_runtime::unix::bind(&thin_socket)
            .await
            .expect("bind");
        let routes =
            tonic::service::Routes::new(pb::vg_service_server::VgServiceServer::new(ThinPoolLvmd));
        let socket = thin_socket.clone();
        let stop = stop_thin.clone();
        tokio::spawn(async move {
            let _ = topolvm_runtime::unix::serve(listener, &socket, routes, stop).await;
        });
    }
    let (_thin_agent, thin_metrics, _) =
        topolvm_node(&cluster, dir.path(), THIN_NODE, &thin_socket);

    let controller_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let controller_socket = dir.path().join("controller.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topolvm-controller"));
    cmd.arg("--csi-socket")
        .arg(&controller_socket)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig("topolvm-controller"))
        .arg("--leader-election=false")
        .arg("--enable-webhooks=false")
        .arg("--metrics-bind-address")
        .arg(controller_metrics.to_string())
        .arg("--health-probe-bind-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "topolvm_controller=debug,info");
    let _controller = ManagedProcess::spawn(
        "topolvm-controller",
        cmd,
        &dir.path().join("controller.log"),
    );

    let scheduler_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let scheduler_config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &scheduler_config,
        format!("listen: \"{scheduler_addr}\"\ndefault-divisor: 1\n"),
    )
    .expect("scheduler config");
    let mut cmd = Command::new(workspace_binary("topolvm-scheduler", "topolvm-scheduler"));
    cmd.arg("--config").arg(&scheduler_config);
    let _scheduler =
        ManagedProcess::spawn("topolvm-scheduler", cmd, &dir.path().join("scheduler.log"));

    // Drive the labelled series: a CSI volume created through the node (and one refused for
    // lack of space), kubelet's NodeGetInfo on the node, a scrape of the extender.
    eventually("the controller's socket", WAIT, || async {
        controller_socket.exists().then_some(())
    })
    .await;
    let mut sidecars = Sidecars::connect(&controller_socket)
        .await
        .expect("connect");
    let nodes: Api<Node> = Api::all(admin.clone());
    eventually("node-a's capacity annotation", WAIT, || async {
        let node = nodes.get(NODE).await.ok()?;
        node.metadata
            .annotations?
            .contains_key(&names::capacity_annotation_key(CLASS))
            .then_some(())
    })
    .await;
    let ssd = Api::<StorageClass>::all(admin.clone())
        .create(&PostParams::default(), &storage_class("topolvm-ssd", CLASS))
        .await
        .expect("StorageClass");
    let all_nodes = nodes.list(&Default::default()).await.expect("nodes").items;
    let pvc = make_pvc(&admin, "data", 16 * MIB).await;
    let request = Sidecars::create_volume_request(&pvc, &ssd, NODE, &all_nodes).expect("request");
    // The controller's cache may not hold the annotation yet: retried as the provisioner does.
    eventually("CreateVolume", WAIT, || {
        let mut sidecars = sidecars.clone();
        let request = request.clone();
        async move { sidecars.create_volume(request).await.ok() }
    })
    .await;
    let huge = make_pvc(&admin, "huge", 1024 * MIB).await;
    let huge_request =
        Sidecars::create_volume_request(&huge, &ssd, NODE, &all_nodes).expect("request");
    let refused = sidecars.create_volume(huge_request).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::ResourceExhausted)
    );
    let mut kubelet = Kubelet::connect(&node_csi, &dir.path().join(format!("{NODE}-kubelet")))
        .await
        .expect("the node's CSI socket");
    kubelet
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo");

    let endpoints = [
        ("lvmd", lvmd.metrics_addr()),
        ("topolvm-node", node_metrics),
        ("topolvm-node-thin", thin_metrics),
        ("topolvm-controller", controller_metrics),
        ("topolvm-scheduler", scheduler_addr),
    ];
    // Series appear as their first event happens (the orphan scan, a reconcile, the extender's
    // own /metrics request): scrape until nothing is missing, or report what still is.
    let mut last_errors = Vec::new();
    let mut exported = Exported::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        exported = Exported::default();
        for (name, addr) in endpoints {
            match scrape(addr).await {
                Some(text) => exported.add(&text),
                None => println!("{name}: no /metrics answer yet"),
            }
        }
        last_errors = check_all(&rules, &dashboard, &exported);
        if last_errors.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last_errors.is_empty(),
        "the dashboard and alerts use what the binaries do not export:\n{}\nexported: {:#?}",
        last_errors.join("\n"),
        exported.series.keys().collect::<Vec<_>>()
    );
    println!(
        "{} series names scraped from {} endpoints; every expression checked",
        exported.series.len(),
        endpoints.len()
    );

    // The checker catches a misspelt name, a misspelt label, a value the binaries never use
    // (tonic's `Ok` for gRPC-Go's `OK`), a legend label the result lacks and a syntax error.
    for (expr, wanted) in [
        (
            "topolvm_node_lvmd_reachble == 0",
            "no metric topolvm_node_lvmd_reachble",
        ),
        (
            r#"topolvm_thinpool_data_percent{deviceclass="thin"}"#,
            "has no label deviceclass",
        ),
        (
            r#"rate(topolvm_controller_csi_requests_total{code!="Ok"}[5m])"#,
            "the value was never exported",
        ),
        (
            "sum by (nodename) (topolvm_volumegroup_size_bytes)",
            "has no label nodename",
        ),
        (
            "histogram_quantile(0.9, rate(topolvm_node_csi_request_duration_seconds_sum[5m]))",
            "without le",
        ),
        (
            "sum(rate(topolvm_node_csi_requests_total[5m])",
            "not PromQL",
        ),
    ] {
        let mut errors = Vec::new();
        check_expr("probe", expr, &exported, &mut errors);
        assert!(
            errors.iter().any(|e| e.contains(wanted)),
            "{expr}: expected an error containing {wanted:?}, got {errors:?}"
        );
    }
    let mut errors = Vec::new();
    let labels = check_expr(
        "probe",
        "sum by (method) (rate(topolvm_node_csi_requests_total[5m]))",
        &exported,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(labels, BTreeSet::from(["method".to_owned()]));

    // A real Prometheus scrapes the same endpoints and loads the rules: every rule evaluates
    // without error, every dashboard query is accepted, the variables' label values are the
    // cluster's nodes and classes, and the thin pool alerts are active for the thin node only.
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).expect("prometheus dir");
    let (_prometheus, prometheus) = start_prometheus(&prometheus_dir, &rules, &endpoints);
    eventually("Prometheus to scrape every target", WAIT, || async {
        let data = prometheus_api(prometheus, "/api/v1/targets").await.ok()?;
        let targets = data["activeTargets"].as_array()?;
        (targets.len() == endpoints.len() && targets.iter().all(|t| t["health"] == "up"))
            .then_some(())
    })
    .await;
    let rule_health = eventually("every rule evaluated", WAIT, || async {
        let data = prometheus_api(prometheus, "/api/v1/rules").await.ok()?;
        let rules: Vec<(String, String, String)> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (field("name"), field("health"), field("lastError"))
            })
            .collect();
        rules
            .iter()
            .all(|(_, health, _)| health != "unknown")
            .then_some(rules)
    })
    .await;
    assert_eq!(
        rule_health.len(),
        rules
            .spec
            .groups
            .iter()
            .map(|g| g.rules.len())
            .sum::<usize>()
    );
    for (name, health, error) in &rule_health {
        assert_eq!(health, "ok", "rule {name}: {error}");
    }
    for panel in &dashboard.panels {
        for target in &panel.targets {
            let expr = substitute_grafana_variables(&target.expr).expect("checked above");
            let path = format!("/api/v1/query?query={}", url_encode(&expr));
            if let Err(e) = prometheus_api(prometheus, &path).await {
                panic!("panel {:?}: Prometheus refuses {expr}: {e}", panel.title);
            }
        }
    }
    for (label, want) in [
        ("node", [NODE, THIN_NODE]),
        ("device_class", [CLASS, THIN_CLASS]),
    ] {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode("topolvm_volumegroup_size_bytes")
        );
        let values = prometheus_api(prometheus, &path)
            .await
            .expect("label values");
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(values, json!(want), "the {label} variable's values");
    }
    let watched = [
        "TopoLVMThinPoolDataUsageHigh",
        "TopoLVMThinPoolDataUsageCritical",
        "TopoLVMThinPoolMetadataUsageHigh",
        "TopoLVMThinPoolMetadataUsageCritical",
        "TopoLVMLvmdUnreachable",
        "TopoLVMOrphanVolumes",
        "TopoLVMControllerNoLeader",
    ];
    let active = |extra: Option<(&str, &str)>| {
        let mut want: BTreeSet<(String, String)> = [
            "TopoLVMThinPoolDataUsageHigh",
            "TopoLVMThinPoolDataUsageCritical",
            "TopoLVMThinPoolMetadataUsageHigh",
        ]
        .into_iter()
        .map(|a| (a.to_owned(), THIN_NODE.to_owned()))
        .collect();
        want.extend(extra.map(|(a, n)| (a.to_owned(), n.to_owned())));
        async move {
            let mut last = BTreeSet::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while tokio::time::Instant::now() < deadline {
                last = active_alerts(prometheus, "node")
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(a, _)| watched.contains(&a.as_str()))
                    .collect();
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!("active alerts {last:?}, expected {want:?}");
        }
    };
    active(None).await;

    // Failing CSI calls (an empty volume ID is INVALID_ARGUMENT to both services) make the
    // error-rate alerts active for exactly those methods. A counter's first sample is no
    // increase to rate(), so one failure is scraped before the ones that count.
    let fail_both = |times: usize| {
        let mut sidecars = sidecars.clone();
        let socket = node_csi.clone();
        let kubelet_dir = dir.path().join(format!("{NODE}-kubelet"));
        async move {
            let mut kubelet = Kubelet::connect(&socket, &kubelet_dir)
                .await
                .expect("the node's CSI socket");
            for _ in 0..times {
                let deleted = sidecars.delete_volume("").await;
                assert_eq!(
                    deleted.map_err(|s| s.code()),
                    Err(tonic::Code::InvalidArgument)
                );
                let published = kubelet
                    .node()
                    .node_publish_volume(csi::NodePublishVolumeRequest::default())
                    .await;
                assert_eq!(
                    published.map(|_| ()).map_err(|s| s.code()),
                    Err(tonic::Code::InvalidArgument)
                );
            }
        }
    };
    fail_both(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fail_both(5).await;
    let want_csi: BTreeSet<(String, String)> = [
        ("TopoLVMControllerCSIErrors", "DeleteVolume"),
        ("TopoLVMNodeCSIErrors", "NodePublishVolume"),
    ]
    .into_iter()
    .map(|(a, m)| (a.to_owned(), m.to_owned()))
    .collect();
    let mut seen_csi = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && seen_csi != want_csi {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen_csi = active_alerts(prometheus, "method")
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(a, _)| a.ends_with("CSIErrors"))
            .collect();
    }
    assert_eq!(seen_csi, want_csi, "the CSI error alerts");

    // The values the alerts read: the thin pool's percentages as lvmd (here its stand-in)
    // reported them; lvmd reachable and the annotations synced now on both nodes.
    let thin_text = scrape(thin_metrics).await.expect("scrape");
    let thin_labels = [("node", THIN_NODE), ("device_class", THIN_CLASS)];
    assert_eq!(
        value(&thin_text, "topolvm_thinpool_data_percent", &thin_labels),
        Some(96.5)
    );
    assert_eq!(
        value(
            &thin_text,
            "topolvm_thinpool_metadata_percent",
            &thin_labels
        ),
        Some(81.25)
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let synced = "topolvm_node_capacity_synced_timestamp_seconds";
    let reachable = "topolvm_node_lvmd_reachable";
    let text = scrape(node_metrics).await.expect("scrape");
    assert_eq!(value(&text, reachable, &[("node", NODE)]), Some(1.0));
    let before = now();
    let at = value(
        &scrape(node_metrics).await.expect("scrape"),
        synced,
        &[("node", NODE)],
    )
    .expect("the synced timestamp");
    assert!(at >= before - 1.0 && at <= now() + 1.0, "{at} vs {before}");

    // lvmd stops: topolvm-node says so, and the synced timestamp stops at that moment, so
    // `time() - it` grows as TopoLVMNodeCapacityStale expects.
    let stopped_at = now();
    lvmd.sigterm_and_wait(Duration::from_secs(20));
    let frozen = eventually("lvmd unreachable on node-a", WAIT, || async {
        let text = scrape(node_metrics).await?;
        (value(&text, reachable, &[("node", NODE)]) == Some(0.0))
            .then(|| value(&text, synced, &[("node", NODE)]))?
    })
    .await;
    assert!(
        frozen >= stopped_at - 1.0 && frozen <= now(),
        "frozen at {frozen}, lvmd stopped at {stopped_at}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = value(
        &scrape(node_metrics).await.expect("scrape"),
        synced,
        &[("node", NODE)],
    );
    assert_eq!(
        later,
        Some(frozen),
        "the timestamp stays while lvmd is away"
    );
    // Prometheus sees it too: TopoLVMLvmdUnreachable becomes active for node-a.
    active(Some(("TopoLVMLvmdUnreachable", NODE))).await;
    // The thin node, whose lvmd stays, is untouched.
    let thin_text = scrape(thin_metrics).await.expect("scrape");
    assert_eq!(
        value(&thin_text, reachable, &[("node", THIN_NODE)]),
        Some(1.0)
    );
    assert!(value(&thin_text, synced, &[("node", THIN_NODE)]).is_some_and(|t| t > frozen));
}
