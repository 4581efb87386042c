//! What `deploy/monitoring/` asks of the exporters, read without running anything: the
//! PrometheusRule and the Grafana dashboard typed and checked for structure (each alert complete,
//! every panel on `${datasource}`), Prometheus text parsed into the metrics, labels and values it
//! exports, and every PromQL expression of both files checked against such an export.
//! `tests/monitoring.rs` scrapes the running binaries for that export; the structure checks
//! below run in the unit tier.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self as promql, Expr, LabelModifier, VectorMatchCardinality};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub fn monitoring_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// The PrometheusRule, typed (the fields of monitoring.coreos.com/v1 we use).

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: RuleMetadata,
    pub spec: RuleSpec,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The rule file, with its structure checked: it round-trips through [`PrometheusRule`]
/// unchanged and every alert is complete.
pub fn load_rules() -> PrometheusRule {
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
pub fn prometheus_duration(text: &str) -> Option<Duration> {
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
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub panels: Vec<Panel>,
    pub templating: Templating,
}

#[derive(Debug, Deserialize)]
pub struct Templating {
    pub list: Vec<Variable>,
}

#[derive(Debug, Deserialize)]
pub struct Variable {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub query: serde_json::Value,
    #[serde(default)]
    pub datasource: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
pub struct DataSource {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

#[derive(Debug, Deserialize)]
pub struct Panel {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[serde(rename = "gridPos")]
    pub grid_pos: GridPos,
    #[serde(default)]
    pub datasource: Option<DataSource>,
    #[serde(default)]
    pub targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
pub struct GridPos {
    pub h: u32,
    pub w: u32,
    pub x: u32,
    #[allow(dead_code)]
    pub y: u32,
}

#[derive(Debug, Deserialize)]
pub struct Target {
    pub expr: String,
    #[serde(rename = "refId")]
    pub ref_id: String,
    #[serde(default, rename = "legendFormat")]
    pub legend: String,
    pub datasource: DataSource,
}

pub const DASHBOARD_VARIABLES: [&str; 3] = ["datasource", "node", "device_class"];

/// The dashboard, with its structure checked: the three variables, and panels that each have a
/// unique id, a place on the 24-column grid and Prometheus targets on `${datasource}`.
pub fn load_dashboard() -> Dashboard {
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
pub struct Exported {
    pub series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    /// Adds one `/metrics` answer (Prometheus text format 0.0.4).
    pub fn add(&mut self, text: &str) {
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
pub fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
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
pub fn substitute_grafana_variables(expr: &str) -> Result<String, String> {
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
pub fn check_expr(
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

pub fn label_list(labels: &promql_parser::label::Labels) -> Vec<String> {
    labels.labels.clone()
}

/// Walks the expression: checks every selector against `exported` and every grouping label
/// against its operand, and returns the labels of the result (as Prometheus computes them).
pub fn output_labels(
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

pub fn is_scalar(expr: &Expr) -> bool {
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
pub fn check_selector(
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
pub fn template_labels(text: &str, prefix: &str) -> Vec<String> {
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
pub fn check_all(
    rules: &PrometheusRule,
    dashboard: &Dashboard,
    exported: &Exported,
) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
