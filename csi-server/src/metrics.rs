//! Per-RPC metrics of a CSI server: `<prefix>_requests_total{method,code}` and
//! `<prefix>_request_duration_seconds{method}`, the code labelled by
//! [`topolvm_runtime::grpc_code::label`] (gRPC-Go's names).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::Code;
use topolvm_runtime::grpc_code;

/// What one server's metrics are called.
#[derive(Debug, Clone, Copy)]
pub struct RpcMetricNames {
    /// The counter's name (`..._requests_total`) and help.
    pub requests: (&'static str, &'static str),
    /// The histogram's name (`..._request_duration_seconds`) and help.
    pub duration: (&'static str, &'static str),
    /// The histogram's buckets, in seconds.
    pub buckets: &'static [f64],
}

/// The counter and the histogram of one server.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl RpcMetrics {
    /// Makes both metrics and registers them in `registry`.
    pub fn register(registry: &Registry, names: RpcMetricNames) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(names.requests.0, names.requests.1),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(names.duration.0, names.duration.1).buckets(names.buckets.to_vec()),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// Counts one call of `method` that ended with `code` after `took`.
    pub fn observe(&self, method: &str, code: Code, took: Duration) {
        self.requests
            .with_label_values(&[method, grpc_code::label(code)])
            .inc();
        self.duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;

    use super::*;

    #[test]
    fn a_call_is_counted_by_method_and_code_and_timed_by_method() {
        let registry = Registry::new();
        let metrics = RpcMetrics::register(
            &registry,
            RpcMetricNames {
                requests: ("x_csi_requests_total", "calls"),
                duration: ("x_csi_request_duration_seconds", "time"),
                buckets: &[0.1, 1.0],
            },
        )
        .expect("register");
        metrics.observe("Probe", Code::Ok, Duration::from_millis(5));
        metrics.observe("Probe", Code::Ok, Duration::from_millis(5));
        metrics.observe("NodeStageVolume", Code::Unimplemented, Duration::ZERO);
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains(r#"x_csi_requests_total{code="OK",method="Probe"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"x_csi_requests_total{code="Unimplemented",method="NodeStageVolume"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"x_csi_request_duration_seconds_count{method="Probe"} 2"#),
            "{text}"
        );
    }
}
