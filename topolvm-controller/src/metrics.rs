//! topolvm-controller's own Prometheus metrics (besides those of the CSI service).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The reconcilers' names, the values of the `reconciler` label.
pub const NODE: &str = "node";
pub const PVC: &str = "persistentvolumeclaim";
pub const STRAY: &str = "stray_logicalvolume";

/// Every metric of the reconcilers, the webhook and leader election.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `topolvm_controller_leader`: 1 while this replica holds the Lease (or runs without
    /// leader election), else 0.
    pub leader: IntGauge,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    admissions: IntCounterVec,
    /// `topolvm_controller_stray_logicalvolumes`: stray objects seen by the last scan.
    pub strays_found: IntGauge,
    strays_deleted: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let leader = IntGauge::new(
            "topolvm_controller_leader",
            "1 while this replica runs the reconcilers (holds the leader election Lease), else 0.",
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "topolvm_controller_reconciles_total",
                "Reconciliations by reconciler and result (ok or error).",
            ),
            &["reconciler", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "topolvm_controller_reconcile_errors_total",
                "Failed reconciliations by reconciler and kind of error.",
            ),
            &["reconciler", "error"],
        )?;
        let admissions = IntCounterVec::new(
            Opts::new(
                "topolvm_controller_webhook_admissions_total",
                "Pod admissions by result: mutated, allowed (unchanged), denied, error.",
            ),
            &["result"],
        )?;
        let strays_found = IntGauge::new(
            "topolvm_controller_stray_logicalvolumes",
            "LogicalVolumes with neither PersistentVolume nor PersistentVolumeClaim, as of the last scan.",
        )?;
        let strays_deleted = IntCounter::new(
            "topolvm_controller_stray_logicalvolumes_deleted_total",
            "Stray LogicalVolumes deleted after their grace period.",
        )?;
        for collector in [
            Box::new(leader.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(admissions.clone()),
            Box::new(strays_found.clone()),
            Box::new(strays_deleted.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            leader,
            reconciles,
            errors,
            admissions,
            strays_found,
            strays_deleted,
        })
    }

    /// Counts one reconciliation of `reconciler`, with the error's metric label when it failed.
    pub fn reconciled(&self, reconciler: &str, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .with_label_values(&[reconciler, result])
            .inc();
        if let Some(label) = error {
            self.errors.with_label_values(&[reconciler, label]).inc();
        }
    }

    /// Counts one admission review answered with `result`.
    pub fn admitted(&self, result: &str) {
        self.admissions.with_label_values(&[result]).inc();
    }

    /// Counts one stray LogicalVolume deleted.
    pub fn stray_deleted(&self) {
        self.strays_deleted.inc();
    }
}
