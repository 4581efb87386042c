//! Prometheus metrics of the extender.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Latency buckets from 100 µs (a handful of nodes) to seconds (thousands of full nodes).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// All extender metrics, in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    filtered_nodes: IntCounterVec,
    reservations: IntGauge,
    pending_pods: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "topolvm_scheduler_requests_total",
                "HTTP requests by verb (predicate, prioritize, status, metrics, other) and outcome.",
            ),
            &["verb", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "topolvm_scheduler_request_duration_seconds",
                "HTTP request latency by verb and outcome, from the first byte of the body to the answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["verb", "outcome"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let filtered_nodes = IntCounterVec::new(
            Opts::new(
                "topolvm_scheduler_filtered_nodes_total",
                "Nodes the predicate verb filtered out, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(filtered_nodes.clone()))?;
        let reservations = IntGauge::new(
            "topolvm_scheduler_reservations",
            "Pods the extender approved whose placement the cluster does not show yet (only with --watch-cluster).",
        )?;
        registry.register(Box::new(reservations.clone()))?;
        let pending_pods = IntGauge::new(
            "topolvm_scheduler_pending_pods",
            "Pods placed on a node whose TopoLVM volumes are not provisioned yet (only with --watch-cluster).",
        )?;
        registry.register(Box::new(pending_pods.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            filtered_nodes,
            reservations,
            pending_pods,
        })
    }

    /// Records one finished request.
    pub fn observe_request(&self, verb: &str, outcome: &str, elapsed: Duration) {
        self.requests.with_label_values(&[verb, outcome]).inc();
        self.duration
            .with_label_values(&[verb, outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts nodes filtered out for `reason` (a [`crate::decision::FilterReason`] label).
    pub fn count_filtered(&self, reason: &str, nodes: u64) {
        if nodes > 0 {
            self.filtered_nodes
                .with_label_values(&[reason])
                .inc_by(nodes);
        }
    }

    pub fn set_reservations(&self, count: usize) {
        self.reservations
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_pending_pods(&self, count: usize) {
        self.pending_pods
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The registry every extender metric is in (served at `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        topolvm_runtime::endpoints::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new().expect("metrics");
        m.observe_request("predicate", "ok", Duration::from_millis(2));
        m.count_filtered("out_of_vg_free_space", 3);
        m.count_filtered("no_capacity_annotation", 0);
        m.set_reservations(2);
        m.set_pending_pods(1);
        let text = m.render().expect("render");
        for want in [
            r#"topolvm_scheduler_requests_total{outcome="ok",verb="predicate"} 1"#,
            r#"topolvm_scheduler_request_duration_seconds_bucket{outcome="ok",verb="predicate",le="0.0025"} 1"#,
            r#"topolvm_scheduler_filtered_nodes_total{reason="out_of_vg_free_space"} 3"#,
            "topolvm_scheduler_reservations 2",
            "topolvm_scheduler_pending_pods 1",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert!(!text.contains("no_capacity_annotation"));
    }
}
