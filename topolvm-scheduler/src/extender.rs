//! The two verbs: parse the request, decide for every candidate node, write the answer.
//!
//! Independent of HTTP: [`Extender::predicate`] and [`Extender::prioritize`] take a request body
//! and return the response body, so tests and the benchmark can drive them directly.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use crate::accounting::PromisedCapacity;
use crate::cluster::{ClusterState, NodeMeta};
use crate::config::Scoring;
use crate::decision::{
    FilterReason, NothingPromised, PodRequests, Promised, filter_node, score_node,
};
use crate::metrics::Metrics;
use crate::wire::{
    Candidates, CapacityAnnotations, FilterResult, HostPriority, PassedNodes, PodInfo,
    RequestError, parse_extender_args,
};

/// The extender's decision logic with its configuration and (optional) cluster view.
#[derive(Debug, Clone)]
pub struct Extender {
    scoring: Scoring,
    cluster: Option<Arc<ClusterState>>,
    metrics: Arc<Metrics>,
}

/// A candidate node as the decisions see it.
struct Candidate<'a> {
    name: &'a str,
    /// `None`: `NodeNames` mode and the node cache does not know the node.
    capacity: Option<Cow<'a, CapacityAnnotations<'a>>>,
}

impl Extender {
    /// Without `cluster` the extender decides exactly like TopoLVM's.
    pub fn new(
        scoring: Scoring,
        cluster: Option<Arc<ClusterState>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            scoring,
            cluster,
            metrics,
        }
    }

    /// `POST /predicate`: answers an `ExtenderFilterResult`, in chunks that share the request
    /// body's memory for the nodes echoed back.
    pub fn predicate(&self, body: &Bytes) -> Result<Vec<Bytes>, RequestError> {
        let args = parse_extender_args(body)?;
        let requests = PodRequests::from_annotations(&args.pod.capacity);
        let cached;

        let result = if requests.is_empty() {
            // TopoLVM hands the input back unchanged, with FailedNodes null.
            FilterResult {
                passed: match &args.candidates {
                    Candidates::Nodes(items) => {
                        PassedNodes::Nodes(items.iter().map(|n| n.raw).collect())
                    }
                    Candidates::NodeNames(names) => {
                        PassedNodes::NodeNames(names.iter().map(AsRef::as_ref).collect())
                    }
                },
                failed: None,
            }
        } else {
            cached = self.cached_nodes(&args.candidates);
            let candidates = candidates(&args.candidates, &cached);
            let verdicts = self.filter(&args.pod, &requests, &candidates);
            let mut failed = Vec::new();
            let mut passing = Vec::with_capacity(candidates.len());
            for (candidate, verdict) in candidates.iter().zip(verdicts) {
                match verdict {
                    Ok(()) => passing.push(true),
                    Err(reason) => {
                        passing.push(false);
                        failed.push((candidate.name, reason.to_string()));
                    }
                }
            }
            let passed = match &args.candidates {
                Candidates::Nodes(items) => PassedNodes::Nodes(
                    items
                        .iter()
                        .zip(&passing)
                        .filter(|(_, pass)| **pass)
                        .map(|(n, _)| n.raw)
                        .collect(),
                ),
                Candidates::NodeNames(names) => PassedNodes::NodeNames(
                    names
                        .iter()
                        .zip(&passing)
                        .filter(|(_, pass)| **pass)
                        .map(|(n, _)| n.as_ref())
                        .collect(),
                ),
            };
            FilterResult {
                passed,
                failed: Some(failed),
            }
        };
        debug!(
            pod = %PodName(&args.pod),
            candidates = candidate_count(&args.candidates),
            failed = result.failed.as_ref().map_or(0, Vec::len),
            "predicate"
        );
        Ok(result.to_chunks(body))
    }

    /// `POST /prioritize`: answers a `HostPriorityList`.
    pub fn prioritize(&self, body: &Bytes) -> Result<Vec<Bytes>, RequestError> {
        let args = parse_extender_args(body)?;
        let requests = PodRequests::from_annotations(&args.pod.capacity);
        if requests.scored_classes.is_empty() {
            // TopoLVM answers `null` here; an empty list means the same to kube-scheduler.
            return Ok(vec![Bytes::from_static(b"[]")]);
        }
        let cached = self.cached_nodes(&args.candidates);
        let candidates = candidates(&args.candidates, &cached);
        let empty = CapacityAnnotations::default();
        let score_all = |promised: &dyn Promised| -> Vec<HostPriority<'_>> {
            candidates
                .iter()
                .map(|c| HostPriority {
                    host: c.name,
                    score: score_node(
                        c.name,
                        c.capacity.as_deref().unwrap_or(&empty),
                        &requests,
                        &self.scoring,
                        promised,
                    ),
                })
                .collect()
        };
        let scores = match &self.cluster {
            None => score_all(&NothingPromised),
            Some(cluster) => {
                let now = Instant::now();
                let mut promises = cluster.promises();
                let scores = score_all(&PromisedCapacity {
                    pending: &promises.pending,
                    reservations: &promises.reservations,
                    pod_uid: &args.pod.uid,
                    now,
                });
                promises.reservations.narrow(
                    &args.pod.uid,
                    &PodName(&args.pod).to_string(),
                    requests.positive_bytes(),
                    candidates.iter().map(|c| c.name),
                    now,
                );
                cluster.report_reservations(promises.reservations.len());
                scores
            }
        };
        debug!(pod = %PodName(&args.pod), candidates = scores.len(), "prioritize");
        Ok(vec![Bytes::from(HostPriority::list_to_json(&scores))])
    }

    /// Filters the candidates; with a cluster view, against promised capacity too, and the pod
    /// then holds a reservation on the nodes it passed. Both happen under the reservation lock,
    /// so two pods filtered at the same instant cannot both take the last space.
    fn filter(
        &self,
        pod: &PodInfo<'_>,
        requests: &PodRequests<'_>,
        candidates: &[Candidate<'_>],
    ) -> Vec<Result<(), FilterReason>> {
        let decide = |promised: &dyn Promised| -> Vec<Result<(), FilterReason>> {
            candidates
                .iter()
                .map(|c| match &c.capacity {
                    Some(capacity) => filter_node(c.name, capacity, requests, promised),
                    None => Err(FilterReason::UnknownNode),
                })
                .collect()
        };
        let verdicts = match &self.cluster {
            None => decide(&NothingPromised),
            Some(cluster) => {
                let now = Instant::now();
                let mut promises = cluster.promises();
                let verdicts = decide(&PromisedCapacity {
                    pending: &promises.pending,
                    reservations: &promises.reservations,
                    pod_uid: &pod.uid,
                    now,
                });
                let passed = candidates
                    .iter()
                    .zip(&verdicts)
                    .filter(|(_, verdict)| verdict.is_ok())
                    .map(|(c, _)| c.name);
                promises.reservations.reserve(
                    &pod.uid,
                    &PodName(pod).to_string(),
                    requests.positive_bytes(),
                    passed,
                    now,
                );
                cluster.report_reservations(promises.reservations.len());
                verdicts
            }
        };
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for reason in verdicts.iter().filter_map(|v| v.as_ref().err()) {
            let label = reason.metric_label();
            match counts.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => counts.push((label, 1)),
            }
        }
        for (label, n) in counts {
            self.metrics.count_filtered(label, n);
        }
        verdicts
    }

    /// In `NodeNames` mode, the named nodes from the node cache (all unknown without a cluster
    /// view); nothing in `Nodes` mode.
    fn cached_nodes(&self, candidates: &Candidates<'_>) -> Vec<Option<Arc<NodeMeta>>> {
        match candidates {
            Candidates::Nodes(_) => Vec::new(),
            Candidates::NodeNames(names) => names
                .iter()
                .map(|name| self.cluster.as_ref().and_then(|c| c.node(name)))
                .collect(),
        }
    }
}

/// The candidates with their capacity annotations: from the request's node objects, or from
/// the node cache (`cached`, in the same order as the names).
fn candidates<'a>(
    candidates: &'a Candidates<'a>,
    cached: &'a [Option<Arc<NodeMeta>>],
) -> Vec<Candidate<'a>> {
    match candidates {
        Candidates::Nodes(items) => items
            .iter()
            .map(|n| Candidate {
                name: &n.name,
                capacity: Some(Cow::Borrowed(&n.capacity)),
            })
            .collect(),
        Candidates::NodeNames(names) => names
            .iter()
            .zip(cached)
            .map(|(name, node)| Candidate {
                name,
                capacity: node.as_deref().map(|node| {
                    Cow::Owned(CapacityAnnotations::from_annotations(
                        node.metadata
                            .annotations
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    ))
                }),
            })
            .collect(),
    }
}

fn candidate_count(candidates: &Candidates<'_>) -> usize {
    match candidates {
        Candidates::Nodes(n) => n.len(),
        Candidates::NodeNames(n) => n.len(),
    }
}

/// `namespace/name` of a pod, for logs and reservations.
struct PodName<'a>(&'a PodInfo<'a>);

impl fmt::Display for PodName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.namespace, self.0.name)
    }
}
