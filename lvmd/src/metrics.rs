//! Prometheus metrics: the volume group and thin pool gauges (TopoLVM's values under lvmd's own
//! `lvmd_*` names; topolvm-node exports TopoLVM's `topolvm_*` names), plus request and `lvm`
//! command counters and latencies. Served at `/metrics` by [`topolvm_runtime::endpoints`].

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use topolvm_proto::lvmd as pb;

use crate::lvm::CommandObserver;
use crate::service::CapacityReport;

/// All lvmd metrics, in their own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    capacity: CapacityGauges,
    /// The device classes the capacity gauges have series of.
    classes: Mutex<BTreeSet<String>>,
    class_available: IntGaugeVec,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    lvm_commands: IntCounterVec,
    lvm_duration: HistogramVec,
}

/// Buckets for operations that take milliseconds to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    /// Registers lvmd's metrics in `registry` (a new one for the daemon, the host's when lvmd
    /// is embedded). `node` labels the capacity gauges, as topolvm-node's do.
    pub fn new(node: &str, registry: Registry) -> Result<Self, prometheus::Error> {
        let capacity = CapacityGauges::register(&registry, "lvmd", node)?;
        let class_available = IntGaugeVec::new(
            Opts::new(
                "lvmd_device_class_available",
                "1 when the device class's volume group (and thin pool) exist, 0 when it cannot be used.",
            ),
            &["device_class"],
        )?;
        registry.register(Box::new(class_available.clone()))?;
        let rpc_requests = IntCounterVec::new(
            Opts::new(
                "lvmd_grpc_requests_total",
                "gRPC requests by method and status code.",
            ),
            &["method", "code"],
        )?;
        registry.register(Box::new(rpc_requests.clone()))?;
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "lvmd_grpc_request_duration_seconds",
                "gRPC request latency by method and status code.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "code"],
        )?;
        registry.register(Box::new(rpc_duration.clone()))?;
        let lvm_commands = IntCounterVec::new(
            Opts::new(
                "lvmd_lvm_commands_total",
                "lvm invocations by subcommand and outcome.",
            ),
            &["subcommand", "outcome"],
        )?;
        registry.register(Box::new(lvm_commands.clone()))?;
        let lvm_duration = HistogramVec::new(
            HistogramOpts::new(
                "lvmd_lvm_command_duration_seconds",
                "lvm command latency by subcommand.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["subcommand"],
        )?;
        registry.register(Box::new(lvm_duration.clone()))?;
        Ok(Self {
            registry,
            capacity,
            classes: Mutex::default(),
            class_available,
            rpc_requests,
            rpc_duration,
            lvm_commands,
            lvm_duration,
        })
    }

    /// Records one finished gRPC request.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = topolvm_runtime::grpc_code::label(code);
        self.rpc_requests.with_label_values(&[method, code]).inc();
        self.rpc_duration
            .with_label_values(&[method, code])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the capacity gauges from a report: TopoLVM's six from its Watch message, and whether
    /// each class can be used.
    pub fn set_capacity(&self, report: &CapacityReport) {
        for class in &report.classes {
            self.class_available
                .with_label_values(&[class.device_class.as_str()])
                .set(i64::from(class.usable));
        }
        let mut classes = self
            .classes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.capacity.set(&report.watch_message(), &mut classes);
    }

    /// The registry every lvmd metric is in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        topolvm_runtime::endpoints::render(&self.registry)
    }
}

/// TopoLVM's six capacity gauges (`internal/runners/metrics_exporter.go` @ 4284fc956e96), with
/// the constant label `node` and the label `device_class`, set from a Watch message. lvmd
/// registers them under `lvmd_*` (from its own report's message), topolvm-node under TopoLVM's
/// `topolvm_*` (from every message of lvmd's Watch stream), so an lvmd embedded in topolvm-node
/// exports no series twice.
#[derive(Debug, Clone)]
pub struct CapacityGauges {
    vg_available: GaugeVec,
    vg_size: GaugeVec,
    thin_size: GaugeVec,
    thin_data_percent: GaugeVec,
    thin_metadata_percent: GaugeVec,
    thin_overprovisioned_available: GaugeVec,
}

impl CapacityGauges {
    /// Registers the gauges as `<namespace>_volumegroup_available_bytes` and so on in
    /// `registry`, labelled with `node`.
    pub fn register(
        registry: &Registry,
        namespace: &str,
        node: &str,
    ) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let opts = Opts::new(name, help)
                .namespace(namespace)
                .const_label("node", node);
            let g = GaugeVec::new(opts, &["device_class"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            vg_available: gauge(
                "volumegroup_available_bytes",
                "Free bytes of the device class's volume group as lvmd reports them: less spare-gb for a thick class, raw for a thin one.",
            )?,
            vg_size: gauge(
                "volumegroup_size_bytes",
                "Size in bytes of the device class's volume group.",
            )?,
            thin_size: gauge(
                "thinpool_size_bytes",
                "Data size in bytes of the device class's thin pool.",
            )?,
            thin_data_percent: gauge(
                "thinpool_data_percent",
                "Percentage of the thin pool's data space in use.",
            )?,
            thin_metadata_percent: gauge(
                "thinpool_metadata_percent",
                "Percentage of the thin pool's metadata space in use.",
            )?,
            thin_overprovisioned_available: gauge(
                "thinpool_overprovisioned_available",
                "Bytes that may still be promised to thin volumes under the overprovision ratio.",
            )?,
        })
    }

    /// Sets the gauges from one Watch message, as TopoLVM's exporter reads it (a class's
    /// available bytes are its item's `free_bytes`; a thin class's overprovision headroom has
    /// its own gauge), and drops the series of classes, or thin pools, it no longer has (TopoLVM
    /// keeps them, issue 293). `previous` holds the classes of the message before.
    pub fn set(&self, message: &pb::WatchResponse, previous: &mut BTreeSet<String>) {
        let mut now = BTreeSet::new();
        for item in &message.items {
            let class = [item.device_class.as_str()];
            self.vg_available
                .with_label_values(&class)
                .set(item.free_bytes as f64);
            self.vg_size
                .with_label_values(&class)
                .set(item.size_bytes as f64);
            match &item.thin_pool {
                Some(thin) => {
                    self.thin_size
                        .with_label_values(&class)
                        .set(thin.size_bytes as f64);
                    self.thin_data_percent
                        .with_label_values(&class)
                        .set(thin.data_percent);
                    self.thin_metadata_percent
                        .with_label_values(&class)
                        .set(thin.metadata_percent);
                    self.thin_overprovisioned_available
                        .with_label_values(&class)
                        .set(thin.overprovision_bytes as f64);
                }
                None => self.remove_thin(&item.device_class),
            }
            now.insert(item.device_class.clone());
        }
        for gone in previous.difference(&now) {
            let _ = self.vg_available.remove_label_values(&[gone]);
            let _ = self.vg_size.remove_label_values(&[gone]);
            self.remove_thin(gone);
        }
        *previous = now;
    }

    fn remove_thin(&self, class: &str) {
        for g in [
            &self.thin_size,
            &self.thin_data_percent,
            &self.thin_metadata_percent,
            &self.thin_overprovisioned_available,
        ] {
            // Absent series are fine: the class may never have had a thin pool.
            let _ = g.remove_label_values(&[class]);
        }
    }
}

impl CommandObserver for Metrics {
    fn observe(&self, subcommand: &str, outcome: &'static str, elapsed: Duration) {
        self.lvm_commands
            .with_label_values(&[subcommand, outcome])
            .inc();
        self.lvm_duration
            .with_label_values(&[subcommand])
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::pool::{PoolFree, ThinPoolUsage};
    use crate::service::ClassCapacity;

    /// lvmd's capacity gauges hold the values TopoLVM's metrics exporter puts in its `topolvm_*`
    /// gauges from a Watch message (`internal/runners/metrics_exporter.go`), under lvmd's own
    /// names (topolvm-node exports the `topolvm_*` ones, so an embedded lvmd exports nothing
    /// twice): the available bytes are the WatchItem's free bytes, i.e. VG free less spare for a
    /// thick class and the RAW VG free for a thin class, never the thin pool's overprovision
    /// headroom, which has its own gauge.
    #[test]
    fn renders_capacity_gauges_and_counters() {
        let m = Metrics::new("node1", Registry::new()).expect("metrics");
        m.set_capacity(&CapacityReport {
            default_free: 5,
            classes: vec![
                ClassCapacity {
                    device_class: "ssd".into(),
                    usable: true,
                    vg_size: 10,
                    free: PoolFree {
                        vg_available_bytes: 5,
                        thin: None,
                    },
                },
                ClassCapacity {
                    device_class: "thin".into(),
                    usable: true,
                    vg_size: 20,
                    free: PoolFree {
                        vg_available_bytes: 7,
                        thin: Some(ThinPoolUsage {
                            pool_size: 8,
                            data_percent: 12.5,
                            metadata_percent: 1.5,
                            overprovision_free: 30,
                        }),
                    },
                },
                ClassCapacity {
                    device_class: "gone".into(),
                    usable: false,
                    vg_size: 0,
                    free: PoolFree {
                        vg_available_bytes: 0,
                        thin: None,
                    },
                },
            ],
        });
        m.observe_rpc(
            "CreateLV",
            tonic::Code::ResourceExhausted,
            Duration::from_millis(3),
        );
        m.observe("lvcreate", "ok", Duration::from_millis(50));
        let text = m.render().expect("render");

        let capacity: BTreeSet<&str> = text
            .lines()
            .filter(|l| {
                [
                    "lvmd_volumegroup_",
                    "lvmd_thinpool_",
                    "lvmd_device_class_available",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .collect();
        let want: BTreeSet<&str> = [
            r#"lvmd_device_class_available{device_class="gone"} 0"#,
            r#"lvmd_device_class_available{device_class="ssd"} 1"#,
            r#"lvmd_device_class_available{device_class="thin"} 1"#,
            r#"lvmd_thinpool_data_percent{device_class="thin",node="node1"} 12.5"#,
            r#"lvmd_thinpool_metadata_percent{device_class="thin",node="node1"} 1.5"#,
            r#"lvmd_thinpool_overprovisioned_available{device_class="thin",node="node1"} 30"#,
            r#"lvmd_thinpool_size_bytes{device_class="thin",node="node1"} 8"#,
            r#"lvmd_volumegroup_available_bytes{device_class="gone",node="node1"} 0"#,
            r#"lvmd_volumegroup_available_bytes{device_class="ssd",node="node1"} 5"#,
            r#"lvmd_volumegroup_available_bytes{device_class="thin",node="node1"} 7"#,
            r#"lvmd_volumegroup_size_bytes{device_class="gone",node="node1"} 0"#,
            r#"lvmd_volumegroup_size_bytes{device_class="ssd",node="node1"} 10"#,
            r#"lvmd_volumegroup_size_bytes{device_class="thin",node="node1"} 20"#,
        ]
        .into_iter()
        .collect();
        assert_eq!(capacity, want, "capacity gauges\n{text}");

        for want in [
            r#"lvmd_grpc_requests_total{code="ResourceExhausted",method="CreateLV"} 1"#,
            r#"lvmd_lvm_commands_total{outcome="ok",subcommand="lvcreate"} 1"#,
            "lvmd_lvm_command_duration_seconds_bucket",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }
}
