//! The filter and score decisions for one node, as TopoLVM's extender makes them.
//!
//! Pure functions over the capacity annotations of the pod and the node, plus what the
//! [`Promised`] view says is already promised on the node (nothing, without a cluster watch).

use std::collections::BTreeMap;
use std::fmt;

use topolvm_core::capacity::score_for_capacity;
use topolvm_core::capacity_annotation::{go_uint_or_fallback, parse_go_int, parse_go_uint};

use crate::config::Scoring;
use crate::wire::CapacityAnnotations;

/// Bytes per device class.
pub type ClassBytes = BTreeMap<String, u64>;

/// What a pod asks of the extender, from its capacity annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests<'a> {
    /// Bytes requested per device class, sorted by class. Values that ParseInt refuses are
    /// left out, as TopoLVM does; zero and negative values stay (and behave as in TopoLVM).
    pub requested: Vec<(&'a str, i64)>,
    /// Classes that take part in scoring: every capacity annotation, parseable or not, as in
    /// TopoLVM.
    pub scored_classes: Vec<&'a str>,
}

impl<'a> PodRequests<'a> {
    pub fn from_annotations(capacity: &'a CapacityAnnotations<'a>) -> Self {
        let mut requested: Vec<(&str, i64)> = capacity
            .iter()
            .filter_map(|(class, value)| parse_go_int(value).ok().map(|bytes| (class, bytes)))
            .collect();
        requested.sort_unstable();
        let mut scored_classes: Vec<&str> = capacity.iter().map(|(class, _)| class).collect();
        scored_classes.sort_unstable();
        Self {
            requested,
            scored_classes,
        }
    }

    /// A pod without requests passes every node (TopoLVM answers with the input unchanged).
    pub fn is_empty(&self) -> bool {
        self.requested.is_empty()
    }

    /// The requests that take space: positive ones only.
    pub fn positive_bytes(&self) -> ClassBytes {
        self.requested
            .iter()
            .filter_map(|&(class, bytes)| {
                u64::try_from(bytes)
                    .ok()
                    .filter(|&b| b > 0)
                    .map(|b| (class.to_owned(), b))
            })
            .collect()
    }
}

/// Why a node was filtered out. The texts are TopoLVM's, because they end up in pod events
/// (`0/3 nodes are available: 3 out of VG free space.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterReason {
    NoCapacityAnnotation,
    BadCapacityAnnotation(String),
    OutOfVgFreeSpace,
    /// Only with `NodeNames` (`nodeCacheCapable: true`): the extender's own node cache does not
    /// know the node. TopoLVM cannot run in that mode at all.
    UnknownNode,
}

impl FilterReason {
    /// Label value for the filtered-nodes metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoCapacityAnnotation => "no_capacity_annotation",
            Self::BadCapacityAnnotation(_) => "bad_capacity_annotation",
            Self::OutOfVgFreeSpace => "out_of_vg_free_space",
            Self::UnknownNode => "unknown_node",
        }
    }
}

impl fmt::Display for FilterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCapacityAnnotation => f.write_str("no capacity annotation"),
            Self::BadCapacityAnnotation(value) => write!(f, "bad capacity annotation: {value}"),
            Self::OutOfVgFreeSpace => f.write_str("out of VG free space"),
            Self::UnknownNode => f.write_str(
                "node is not in topolvm-scheduler's node cache (nodeCacheCapable: true needs --watch-cluster)",
            ),
        }
    }
}

/// Capacity already promised on a node but not yet reflected in its annotation.
pub trait Promised {
    fn promised(&self, node: &str, device_class: &str) -> u64;
}

/// TopoLVM's view: nothing is promised beyond what the annotations say.
#[derive(Debug, Clone, Copy, Default)]
pub struct NothingPromised;

impl Promised for NothingPromised {
    fn promised(&self, _node: &str, _device_class: &str) -> u64 {
        0
    }
}

/// Decides whether `node` can take the pod.
///
/// Classes are checked in name order (TopoLVM iterates a Go map, so with several failing
/// classes its reason is random; ours is stable). For each class the node's annotation must
/// exist and be a ParseUint number, and that number less what is promised on the node must be
/// at least the request. Like TopoLVM, the request is compared as `uint64(request)`, so a
/// negative request can never be met.
pub fn filter_node(
    node: &str,
    capacity: &CapacityAnnotations<'_>,
    requests: &PodRequests<'_>,
    promised: &dyn Promised,
) -> Result<(), FilterReason> {
    for &(class, requested) in &requests.requested {
        let value = capacity
            .get(class)
            .ok_or(FilterReason::NoCapacityAnnotation)?;
        let free = parse_go_uint(value)
            .map_err(|_| FilterReason::BadCapacityAnnotation(value.to_owned()))?;
        let available = free.saturating_sub(promised.promised(node, class));
        if available < requested as u64 {
            return Err(FilterReason::OutOfVgFreeSpace);
        }
    }
    Ok(())
}

/// Scores `node` for the pod: the lowest score over the pod's classes that the node has an
/// annotation for, 0 when it has none of them.
pub fn score_node(
    node: &str,
    capacity: &CapacityAnnotations<'_>,
    requests: &PodRequests<'_>,
    scoring: &Scoring,
    promised: &dyn Promised,
) -> i64 {
    requests
        .scored_classes
        .iter()
        .filter_map(|&class| {
            let value = capacity.get(class)?;
            let free = go_uint_or_fallback(value).saturating_sub(promised.promised(node, class));
            Some(score_for_capacity(free, scoring.divisor(class)))
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn annotations<'a>(pairs: &[(&'a str, &'a str)]) -> CapacityAnnotations<'a> {
        let mut out = CapacityAnnotations::default();
        for &(class, value) in pairs {
            out.insert(Cow::Borrowed(class), Cow::Borrowed(value));
        }
        out
    }

    /// Name, pod annotations, node annotations, bytes promised on the node, expected verdict.
    type FilterCase<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        u64,
        Result<(), FilterReason>,
    );

    /// Name, pod annotations, node annotations, bytes promised on the node, expected score.
    type ScoreCase<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, String)>,
        u64,
        i64,
    );

    /// A promise of `bytes` on every node and class.
    struct Flat(u64);
    impl Promised for Flat {
        fn promised(&self, _: &str, _: &str) -> u64 {
            self.0
        }
    }

    #[test]
    fn pod_requests_keep_what_topolvm_keeps() {
        let pod = annotations(&[
            ("ssd", "5"),
            ("bad", "x"),
            ("00default", "0"),
            ("neg", "-3"),
        ]);
        let requests = PodRequests::from_annotations(&pod);
        assert_eq!(
            requests.requested,
            [("00default", 0), ("neg", -3), ("ssd", 5)]
        );
        assert_eq!(requests.scored_classes, ["00default", "bad", "neg", "ssd"]);
        assert_eq!(
            requests.positive_bytes(),
            ClassBytes::from([("ssd".to_owned(), 5)])
        );
        let unparseable_only = annotations(&[("ssd", "lots")]);
        assert!(PodRequests::from_annotations(&unparseable_only).is_empty());
    }

    #[test]
    fn reasons_are_topolvms_strings() {
        assert_eq!(
            FilterReason::NoCapacityAnnotation.to_string(),
            "no capacity annotation"
        );
        assert_eq!(
            FilterReason::BadCapacityAnnotation("12x".into()).to_string(),
            "bad capacity annotation: 12x"
        );
        assert_eq!(
            FilterReason::OutOfVgFreeSpace.to_string(),
            "out of VG free space"
        );
    }

    #[test]
    fn filter_table() {
        use FilterReason::*;
        let ten_gib = (10 * GIB).to_string();
        let cases: Vec<FilterCase<'_>> = vec![
            ("no requests pass", vec![], vec![], 0, Ok(())),
            (
                "unparseable request is ignored",
                vec![("ssd", "x")],
                vec![],
                0,
                Ok(()),
            ),
            (
                "missing annotation",
                vec![("ssd", "1")],
                vec![("hdd", "9")],
                0,
                Err(NoCapacityAnnotation),
            ),
            (
                "missing even for a zero request",
                vec![("ssd", "0")],
                vec![],
                0,
                Err(NoCapacityAnnotation),
            ),
            (
                "bad annotation",
                vec![("ssd", "1")],
                vec![("ssd", "12x")],
                0,
                Err(BadCapacityAnnotation("12x".into())),
            ),
            (
                "signed annotation is bad",
                vec![("ssd", "1")],
                vec![("ssd", "+5")],
                0,
                Err(BadCapacityAnnotation("+5".into())),
            ),
            (
                "overflowing annotation is bad",
                vec![("ssd", "1")],
                vec![("ssd", "18446744073709551616")],
                0,
                Err(BadCapacityAnnotation("18446744073709551616".into())),
            ),
            (
                "empty annotation is bad",
                vec![("ssd", "1")],
                vec![("ssd", "")],
                0,
                Err(BadCapacityAnnotation(String::new())),
            ),
            (
                "exactly enough",
                vec![("ssd", "1073741824")],
                vec![("ssd", "1073741824")],
                0,
                Ok(()),
            ),
            (
                "one byte short",
                vec![("ssd", "1073741825")],
                vec![("ssd", "1073741824")],
                0,
                Err(OutOfVgFreeSpace),
            ),
            (
                "zero request on empty node",
                vec![("ssd", "0")],
                vec![("ssd", "0")],
                0,
                Ok(()),
            ),
            (
                "negative request never fits",
                vec![("ssd", "-1")],
                vec![("ssd", &ten_gib)],
                0,
                Err(OutOfVgFreeSpace),
            ),
            (
                "negative request fits only u64::MAX",
                vec![("ssd", "-1")],
                vec![("ssd", "18446744073709551615")],
                0,
                Ok(()),
            ),
            (
                "default class",
                vec![("00default", "5")],
                vec![("00default", "5")],
                0,
                Ok(()),
            ),
            (
                "every class must fit",
                vec![("a", "1"), ("b", "1")],
                vec![("a", "1"), ("b", "0")],
                0,
                Err(OutOfVgFreeSpace),
            ),
            (
                "first failing class in name order decides",
                vec![("a", "1"), ("b", "1")],
                vec![("b", "bad")],
                0,
                Err(NoCapacityAnnotation),
            ),
            (
                "promised space counts",
                vec![("ssd", "6")],
                vec![("ssd", "10")],
                5,
                Err(OutOfVgFreeSpace),
            ),
            (
                "promised space leaves enough",
                vec![("ssd", "5")],
                vec![("ssd", "10")],
                5,
                Ok(()),
            ),
            (
                "promise beyond the annotation saturates",
                vec![("ssd", "0")],
                vec![("ssd", "10")],
                50,
                Ok(()),
            ),
        ];
        for (name, pod, node, promised, expected) in cases {
            let pod = annotations(&pod);
            let node = annotations(&node);
            let requests = PodRequests::from_annotations(&pod);
            assert_eq!(
                filter_node("n", &node, &requests, &Flat(promised)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn score_table() {
        let scoring = Scoring {
            default_divisor: 1.0,
            divisors: [("slow".to_owned(), 2.0), ("big".to_owned(), 10.0)].into(),
        };
        let gib = |n: u64| (n * GIB).to_string();
        let cases: Vec<ScoreCase<'_>> = vec![
            ("pod without classes", vec![], vec![("ssd", gib(100))], 0, 0),
            (
                "node without the annotation",
                vec![("ssd", "1")],
                vec![],
                0,
                0,
            ),
            (
                "zero bytes",
                vec![("ssd", "1")],
                vec![("ssd", "0".into())],
                0,
                0,
            ),
            (
                "one byte",
                vec![("ssd", "1")],
                vec![("ssd", "1".into())],
                0,
                1,
            ),
            (
                "just below 1 GiB",
                vec![("ssd", "1")],
                vec![("ssd", (GIB - 1).to_string())],
                0,
                1,
            ),
            ("1 GiB", vec![("ssd", "1")], vec![("ssd", gib(1))], 0, 1),
            ("3 GiB", vec![("ssd", "1")], vec![("ssd", gib(3))], 0, 1),
            ("4 GiB", vec![("ssd", "1")], vec![("ssd", gib(4))], 0, 2),
            ("8 GiB", vec![("ssd", "1")], vec![("ssd", gib(8))], 0, 3),
            (
                "1023 GiB",
                vec![("ssd", "1")],
                vec![("ssd", gib(1023))],
                0,
                9,
            ),
            ("1 TiB", vec![("ssd", "1")], vec![("ssd", gib(1024))], 0, 10),
            (
                "u64::MAX",
                vec![("ssd", "1")],
                vec![("ssd", u64::MAX.to_string())],
                0,
                10,
            ),
            (
                "garbage scores as 0 bytes",
                vec![("ssd", "1")],
                vec![("ssd", "junk".into())],
                0,
                0,
            ),
            (
                "overflow scores as u64::MAX",
                vec![("ssd", "1")],
                vec![("ssd", "99999999999999999999".into())],
                0,
                10,
            ),
            (
                "unparseable request still scores",
                vec![("ssd", "x")],
                vec![("ssd", gib(8))],
                0,
                3,
            ),
            (
                "per-class divisor",
                vec![("slow", "1")],
                vec![("slow", gib(8))],
                0,
                2,
            ),
            (
                "per-class divisor 10",
                vec![("big", "1")],
                vec![("big", gib(40))],
                0,
                2,
            ),
            (
                "minimum over classes",
                vec![("a", "1"), ("b", "1")],
                vec![("a", gib(1024)), ("b", gib(8))],
                0,
                3,
            ),
            (
                "classes the node lacks are skipped",
                vec![("a", "1"), ("b", "1")],
                vec![("a", gib(8))],
                0,
                3,
            ),
            (
                "promised space lowers the score",
                vec![("ssd", "1")],
                vec![("ssd", gib(8))],
                4 * GIB,
                2,
            ),
            (
                "everything promised",
                vec![("ssd", "1")],
                vec![("ssd", gib(8))],
                8 * GIB,
                0,
            ),
        ];
        for (name, pod, node, promised, expected) in cases {
            let pod = annotations(&pod);
            let node: Vec<(&str, &str)> = node.iter().map(|(c, v)| (*c, v.as_str())).collect();
            let node = annotations(&node);
            let requests = PodRequests::from_annotations(&pod);
            assert_eq!(
                score_node("n", &node, &requests, &scoring, &Flat(promised)),
                expected,
                "{name}"
            );
        }
    }
}
