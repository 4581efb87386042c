//! The capacity annotations and their readers: the key parser
//! (`topolvm_core::names::capacity_annotation_device_class`), Go's `strconv.ParseUint` /
//! `ParseInt` as `topolvm_core::capacity_annotation` writes them, and the scheduler's filter
//! and score decisions over a pod's and a node's annotations (`topolvm_scheduler::decision`).
//!
//! The input is lines of `key=value`: those before the first empty line are the pod's
//! annotations, the rest the node's. Every line is also given whole to the value parsers.
//!
//! - The value parsers must agree with Rust's `u64` / `i64` `FromStr` (which `ParseUint` is
//!   but for the leading `+` it refuses), and fall back to what Go returns with the error.
//! - The decisions must be TopoLVM's (`internal/scheduler/predicate.go` and `prioritize.go`,
//!   transcribed below with the standard library's parsers): a node fails for the reason of
//!   one of the classes that fail (TopoLVM walks a Go map, so any of them), and scores the
//!   lowest `capacityToScore` over the pod's classes it has an annotation for.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use topolvm_core::capacity_annotation::{
    GoParseError, go_int_or_fallback, go_uint_or_fallback, parse_go_int, parse_go_uint,
};
use topolvm_core::names::{
    CAPACITY_ANNOTATION_PREFIX, capacity_annotation_device_class, capacity_annotation_key,
};
use topolvm_scheduler::config::Scoring;
use topolvm_scheduler::decision::{
    FilterReason, NothingPromised, PodRequests, filter_node, score_node,
};
use topolvm_scheduler::wire::CapacityAnnotations;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pod_lines, node_lines) = text.split_once("\n\n").unwrap_or((text, ""));
    let pod = annotations(pod_lines);
    let node = annotations(node_lines);
    for line in text.lines() {
        check_value_parsers(line);
    }
    for (key, value) in pod.iter().chain(&node) {
        check_key(key);
        check_value_parsers(value);
    }
    check_decisions(&pod, &node);
});

/// `key=value` lines as a Go map: a repeated key keeps its last value.
fn annotations(lines: &str) -> BTreeMap<&str, &str> {
    lines
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect()
}

fn check_key(key: &str) {
    // TopoLVM's rule: whatever follows the prefix, an empty rest included, is the class.
    let class = capacity_annotation_device_class(key);
    assert_eq!(
        class,
        key.strip_prefix(CAPACITY_ANNOTATION_PREFIX),
        "{key:?}"
    );
    if let Some(class) = class.filter(|c| !c.is_empty()) {
        // Written back, the key reads as the same class (only `""` is spelled `00default`).
        assert_eq!(capacity_annotation_key(class), key);
    }
}

fn check_value_parsers(value: &str) {
    let unsigned = parse_go_uint(value);
    if value.starts_with('+') {
        assert!(unsigned.is_err(), "ParseUint {value:?}");
    } else {
        assert_eq!(
            unsigned.ok(),
            value.parse::<u64>().ok(),
            "ParseUint {value:?}"
        );
    }
    assert_eq!(
        go_uint_or_fallback(value),
        go_parse_uint_value(value),
        "{value:?}"
    );
    match unsigned {
        Ok(_) => {}
        Err(GoParseError::Syntax) => assert_eq!(go_parse_uint_value(value), 0),
        Err(GoParseError::Range) => assert_eq!(go_parse_uint_value(value), u64::MAX),
    }

    let signed = parse_go_int(value);
    assert_eq!(signed.ok(), value.parse::<i64>().ok(), "ParseInt {value:?}");
    match signed {
        Ok(n) => assert_eq!(go_int_or_fallback(value), n),
        Err(GoParseError::Syntax) => assert_eq!(go_int_or_fallback(value), 0),
        Err(GoParseError::Range) => {
            let expected = if value.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            };
            assert_eq!(go_int_or_fallback(value), expected, "{value:?}");
        }
    }
}

/// The number Go's `ParseUint(s, 10, 64)` returns, error or not: it reads digits left to right
/// and stops at the first non-digit (invalid syntax: 0) or the first overflow (out of range:
/// the largest `uint64`), whichever comes first.
fn go_parse_uint_value(s: &str) -> u64 {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    match s[..digits].parse::<u64>() {
        Err(_) if digits > 0 => u64::MAX,
        Ok(n) if digits == s.len() => n,
        _ => 0,
    }
}

fn check_decisions(pod: &BTreeMap<&str, &str>, node: &BTreeMap<&str, &str>) {
    let pod_capacity = CapacityAnnotations::from_annotations(pod.iter().map(|(k, v)| (*k, *v)));
    let node_capacity = CapacityAnnotations::from_annotations(node.iter().map(|(k, v)| (*k, *v)));
    let requests = PodRequests::from_annotations(&pod_capacity);

    // TopoLVM's extractRequestedSize: every pod annotation with the prefix whose value
    // ParseInt takes, by the class after the prefix.
    let requested: BTreeMap<&str, i64> = pod
        .iter()
        .filter_map(|(key, value)| {
            let class = key.strip_prefix(CAPACITY_ANNOTATION_PREFIX)?;
            Some((class, value.parse::<i64>().ok()?))
        })
        .collect();
    // filterNode: for each class, the node's annotation, ParseUint, compared as uint64.
    let verdicts: Vec<Result<(), FilterReason>> = requested
        .iter()
        .map(|(class, &wanted)| {
            let key = format!("{CAPACITY_ANNOTATION_PREFIX}{class}");
            let value = node
                .get(key.as_str())
                .ok_or(FilterReason::NoCapacityAnnotation)?;
            let free = value
                .parse::<u64>()
                .ok()
                .filter(|_| !value.starts_with('+'))
                .ok_or_else(|| FilterReason::BadCapacityAnnotation((*value).to_owned()))?;
            if free < wanted as u64 {
                return Err(FilterReason::OutOfVgFreeSpace);
            }
            Ok(())
        })
        .collect();
    match filter_node("n", &node_capacity, &requests, &NothingPromised) {
        Ok(()) => assert!(
            verdicts.iter().all(Result::is_ok),
            "passed; TopoLVM: {verdicts:?}"
        ),
        Err(reason) => assert!(
            verdicts.contains(&Err(reason.clone())),
            "failed with {reason:?}; TopoLVM: {verdicts:?}"
        ),
    }

    // scoreNodes: the classes of every pod annotation with the prefix; the lowest score over
    // those the node has, the value read with ParseUint's error ignored; 0 when it has none.
    let classes: Vec<&str> = pod
        .keys()
        .filter_map(|key| key.strip_prefix(CAPACITY_ANNOTATION_PREFIX))
        .collect();
    if classes.is_empty() {
        return;
    }
    let expected = classes
        .iter()
        .filter_map(|class| node.get(format!("{CAPACITY_ANNOTATION_PREFIX}{class}").as_str()))
        .map(|value| capacity_to_score(go_parse_uint_value(value)))
        .min()
        .unwrap_or(0);
    let scored = score_node(
        "n",
        &node_capacity,
        &requests,
        &Scoring::default(),
        &NothingPromised,
    );
    assert_eq!(scored, expected);
}

/// TopoLVM's capacityToScore with the default divisor 1 (exact here: `gb` is below 2^34, and
/// log2 of an integer that is not a power of two is far from an integer).
fn capacity_to_score(capacity: u64) -> i64 {
    let gb = capacity >> 30;
    if gb == 0 {
        return i64::from(capacity > 0);
    }
    ((gb as f64).log2() as i64).clamp(1, 10)
}
