//! TopoLVM's capacity gauges, owned by topolvm-node as in TopoLVM (`internal/runners/
//! metrics_exporter.go`): namespace `topolvm`, the constant label `node` and the variable label
//! `device_class`, set from every message of lvmd's Watch stream by lvmd's own
//! [`CapacityGauges`], which lvmd registers under its `lvmd_*` names, so an embedded lvmd adds
//! no second series.
//!
//! Unlike TopoLVM, the series of a device class lvmd no longer reports are removed, as its
//! capacity annotation is (TopoLVM issue 293).
//!
//! Beyond TopoLVM, [`CapacityHealth`] tells whether lvmd answers and since when the Node's
//! capacity annotations may be stale, which TopoLVM leaves to log reading.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lvmd::metrics::CapacityGauges;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::lvmd_client::LatestReport;

/// Registers TopoLVM's six capacity gauges under its names (`topolvm_volumegroup_available_bytes`
/// and so on), labelled with `node`; lvmd's own registration of the same gauges is `lvmd_*`.
pub fn register_capacity_gauges(
    registry: &Registry,
    node: &str,
) -> Result<CapacityGauges, prometheus::Error> {
    CapacityGauges::register(registry, "topolvm", node)
}

/// `topolvm_node_lvmd_reachable` and `topolvm_node_capacity_synced_timestamp_seconds`, set by
/// [`crate::capacity::run`], both with the constant label `node`.
#[derive(Debug, Clone)]
pub struct CapacityHealth {
    lvmd_reachable: IntGauge,
    synced: Arc<SyncedAt>,
}

impl CapacityHealth {
    /// Registers the gauges in `registry`, labelled with `node`. Until lvmd's first message
    /// lvmd counts as unreachable and the annotations as never synced (timestamp 0).
    pub fn register(registry: &Registry, node: &str) -> Result<Self, prometheus::Error> {
        let lvmd_reachable = IntGauge::with_opts(
            Opts::new(
                "topolvm_node_lvmd_reachable",
                "1 while topolvm-node has lvmd's Watch stream open, 0 while it cannot reach lvmd.",
            )
            .const_label("node", node),
        )?;
        let synced = Arc::new(SyncedAt {
            gauge: Gauge::with_opts(
                Opts::new(
                    "topolvm_node_capacity_synced_timestamp_seconds",
                    "Unix time up to which the Node's capacity annotations are known to equal lvmd's report: the scrape time while they are, the moment that stopped being known otherwise, 0 if never.",
                )
                .const_label("node", node),
            )?,
            synced: AtomicBool::new(false),
        });
        registry.register(Box::new(lvmd_reachable.clone()))?;
        registry.register(Box::new(SyncedCollector(synced.clone())))?;
        Ok(Self {
            lvmd_reachable,
            synced,
        })
    }

    /// Records whether lvmd's Watch stream is open.
    pub fn set_lvmd_reachable(&self, reachable: bool) {
        self.lvmd_reachable.set(i64::from(reachable));
    }

    /// Records whether the Node's annotations equal lvmd's latest report (a stream is open and
    /// its last message was published). When they stop being known to, the timestamp stays at
    /// that moment, so `time() - topolvm_node_capacity_synced_timestamp_seconds` is how long
    /// the annotations may have been stale.
    pub fn set_capacity_synced(&self, synced: bool) {
        let was = self.synced.synced.swap(synced, Ordering::SeqCst);
        if synced || was {
            self.synced.gauge.set(unix_now());
        }
    }
}

/// The synced timestamp: read at scrape time while synced, frozen otherwise.
#[derive(Debug)]
struct SyncedAt {
    gauge: Gauge,
    synced: AtomicBool,
}

#[derive(Debug)]
struct SyncedCollector(Arc<SyncedAt>);

impl Collector for SyncedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if self.0.synced.load(Ordering::SeqCst) {
            self.0.gauge.set(unix_now());
        }
        self.0.gauge.collect()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Keeps `gauges` in step with lvmd's reports until `shutdown`.
pub async fn follow(gauges: CapacityGauges, mut latest: LatestReport, shutdown: CancellationToken) {
    let mut classes = BTreeSet::new();
    loop {
        let report = latest.borrow_and_update().clone();
        if let Some(report) = report {
            gauges.set(&report, &mut classes);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = latest.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use topolvm_proto::lvmd as pb;

    use super::*;

    fn item(class: &str, free: u64, size: u64, thin: Option<pb::ThinPoolItem>) -> pb::WatchItem {
        pb::WatchItem {
            device_class: class.to_owned(),
            free_bytes: free,
            size_bytes: size,
            thin_pool: thin,
        }
    }

    fn series(registry: &Registry) -> BTreeSet<String> {
        topolvm_runtime::endpoints::render(registry)
            .expect("render")
            .lines()
            .filter(|l| l.starts_with("topolvm_"))
            .map(str::to_owned)
            .collect()
    }

    /// The series TopoLVM's exporter writes for a thick and a thin class (names, the constant
    /// `node` label, and which WatchItem field each gauge shows, per
    /// `internal/runners/metrics_exporter.go`); a class that disappears loses its series.
    #[test]
    fn gauges_follow_topolvms_exporter_and_drop_vanished_classes() {
        let registry = Registry::new();
        let gauges = register_capacity_gauges(&registry, "worker-1").expect("register");
        let mut classes = BTreeSet::new();
        let thin = pb::ThinPoolItem {
            data_percent: 12.5,
            metadata_percent: 1.5,
            overprovision_bytes: 30,
            size_bytes: 8,
        };
        gauges.set(
            &pb::WatchResponse {
                free_bytes: 5,
                items: vec![item("ssd", 5, 10, None), item("thin", 7, 20, Some(thin))],
            },
            &mut classes,
        );
        let want: BTreeSet<String> = [
            r#"topolvm_thinpool_data_percent{device_class="thin",node="worker-1"} 12.5"#,
            r#"topolvm_thinpool_metadata_percent{device_class="thin",node="worker-1"} 1.5"#,
            r#"topolvm_thinpool_overprovisioned_available{device_class="thin",node="worker-1"} 30"#,
            r#"topolvm_thinpool_size_bytes{device_class="thin",node="worker-1"} 8"#,
            r#"topolvm_volumegroup_available_bytes{device_class="ssd",node="worker-1"} 5"#,
            r#"topolvm_volumegroup_available_bytes{device_class="thin",node="worker-1"} 7"#,
            r#"topolvm_volumegroup_size_bytes{device_class="ssd",node="worker-1"} 10"#,
            r#"topolvm_volumegroup_size_bytes{device_class="thin",node="worker-1"} 20"#,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(series(&registry), want);

        gauges.set(
            &pb::WatchResponse {
                free_bytes: 4,
                items: vec![item("ssd", 4, 10, None)],
            },
            &mut classes,
        );
        let want: BTreeSet<String> = [
            r#"topolvm_volumegroup_available_bytes{device_class="ssd",node="worker-1"} 4"#,
            r#"topolvm_volumegroup_size_bytes{device_class="ssd",node="worker-1"} 10"#,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(series(&registry), want);
    }

    fn value(registry: &Registry, name: &str) -> f64 {
        let text = topolvm_runtime::endpoints::render(registry).expect("render");
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{node=\"worker-1\"}} ")))
            .unwrap_or_else(|| panic!("no {name} for worker-1 in\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    }

    /// Never synced is 0 (stale since forever); while synced the timestamp is the scrape time
    /// (the system clock, read around the scrape); once sync is lost it stays at the moment it
    /// was lost however often it is scraped, so `time() - it` grows as the annotations age.
    #[test]
    fn the_synced_timestamp_follows_the_clock_only_while_synced() {
        let registry = Registry::new();
        let health = CapacityHealth::register(&registry, "worker-1").expect("register");
        let synced = "topolvm_node_capacity_synced_timestamp_seconds";
        let reachable = "topolvm_node_lvmd_reachable";
        assert_eq!(value(&registry, synced), 0.0);
        assert_eq!(value(&registry, reachable), 0.0);
        // Losing a sync that never was keeps "never".
        health.set_capacity_synced(false);
        assert_eq!(value(&registry, synced), 0.0);

        health.set_lvmd_reachable(true);
        health.set_capacity_synced(true);
        assert_eq!(value(&registry, reachable), 1.0);
        let clock = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64()
        };
        let before = clock();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let first = value(&registry, synced);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = value(&registry, synced);
        assert!(
            before < first && first < second && second <= clock(),
            "{before} {first} {second}"
        );

        health.set_lvmd_reachable(false);
        let lost_before = clock();
        health.set_capacity_synced(false);
        let lost_after = clock();
        let frozen = value(&registry, synced);
        assert!(lost_before <= frozen && frozen <= lost_after);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(value(&registry, synced), frozen);
        // A second report of the loss does not move it.
        health.set_capacity_synced(false);
        assert_eq!(value(&registry, synced), frozen);
        assert_eq!(value(&registry, reachable), 0.0);
    }
}
