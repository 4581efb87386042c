//! The state cache: the last `lvm fullreport`, shared by every reader.
//!
//! Reads (GetLVList, GetFreeBytes, Watch) are answered from the cached report and never run
//! `lvm` or wait for a mutation. The cache is refreshed after each mutation, when the change
//! monitor sees the on-disk metadata of a volume group change, and on a slow timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::lvm::report::{self, VolumeGroup};
use crate::lvm::{LvmError, LvmRunner};

/// One consistent view of LVM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub vgs: BTreeMap<String, VolumeGroup>,
}

/// Why the cache was refreshed, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    Startup,
    Mutation,
    OutsideChange,
    Periodic,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Mutation => "mutation",
            Self::OutsideChange => "outside_change",
            Self::Periodic => "periodic",
        }
    }
}

/// Holds the current [`Snapshot`] and refreshes it.
#[derive(Debug)]
pub struct StateCache {
    runner: Arc<dyn LvmRunner>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serializes refreshes so an older report is never published over a newer one.
    refresh_lock: Mutex<()>,
    refreshes: AtomicU64,
}

impl StateCache {
    /// An empty cache; call [`StateCache::refresh`] to fill it.
    pub fn new(runner: Arc<dyn LvmRunner>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            runner,
            tx,
            refresh_lock: Mutex::new(()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The latest snapshot. Never blocks.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that is notified whenever the published snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// How many refreshes have completed.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Runs one `lvm fullreport` and publishes it; subscribers are woken only if it differs.
    pub async fn refresh(&self, reason: RefreshReason) -> Result<Arc<Snapshot>, LvmError> {
        let _serial = self.refresh_lock.lock().await;
        let output = self.runner.run(report::fullreport_args()).await?;
        let vgs = report::parse_fullreport(&output)?;
        let fresh = Arc::new(Snapshot { vgs });
        let changed = self.tx.send_if_modified(|current| {
            if **current == *fresh {
                false
            } else {
                *current = fresh.clone();
                true
            }
        });
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if changed && reason == RefreshReason::OutsideChange {
            info!(reason = reason.as_str(), "LVM state changed outside lvmd");
        }
        Ok(fresh)
    }

    /// Like [`StateCache::refresh`] but only logs a failure; the stale snapshot stays.
    pub async fn refresh_or_warn(&self, reason: RefreshReason) {
        if let Err(error) = self.refresh(reason).await {
            warn!(reason = reason.as_str(), %error, "refreshing LVM state failed");
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted stand-in for `lvm`, for unit tests of the logic above the command layer.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use crate::lvm::{LvmError, LvmRunner};

    /// Answers `fullreport` with the current `report` and every other command from a queue of
    /// scripted results, recording every call.
    #[derive(Debug, Default)]
    pub struct FakeLvm {
        pub report: Mutex<String>,
        pub results: Mutex<VecDeque<Result<String, (i32, String)>>>,
        pub calls: Mutex<Vec<Vec<String>>>,
    }

    impl FakeLvm {
        pub fn with_report(json: &str) -> Self {
            let fake = Self::default();
            *fake.report.lock().expect("lock") = json.to_owned();
            fake
        }

        pub fn set_report(&self, json: &str) {
            *self.report.lock().expect("lock") = json.to_owned();
        }

        pub fn push_result(&self, result: Result<String, (i32, String)>) {
            self.results.lock().expect("lock").push_back(result);
        }

        pub fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().expect("lock").clone()
        }

        /// Calls other than the state report.
        pub fn mutations(&self) -> Vec<Vec<String>> {
            self.calls()
                .into_iter()
                .filter(|c| c.first().map(String::as_str) != Some("fullreport"))
                .collect()
        }
    }

    impl LvmRunner for FakeLvm {
        fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<String, LvmError>> {
            self.calls.lock().expect("lock").push(args.clone());
            let result = if args.first().map(String::as_str) == Some("fullreport") {
                Ok(self.report.lock().expect("lock").clone())
            } else {
                self.results
                    .lock()
                    .expect("lock")
                    .pop_front()
                    .unwrap_or(Ok(String::new()))
                    .map_err(|(code, stderr)| LvmError::Failed {
                        subcommand: args[0].clone(),
                        exit_code: Some(code),
                        stderr,
                    })
            };
            Box::pin(async move { result })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeLvm;
    use super::*;

    const ONE_VG: &str = r#"{"report":[{"vg":[{"vg_name":"vg1","vg_uuid":"u","vg_size":"100","vg_free":"50","vg_extent_size":"4","vg_seqno":"1","vg_tags":""}]}]}"#;
    const ONE_VG_CHANGED: &str = r#"{"report":[{"vg":[{"vg_name":"vg1","vg_uuid":"u","vg_size":"100","vg_free":"46","vg_extent_size":"4","vg_seqno":"2","vg_tags":""}]}]}"#;

    #[tokio::test]
    async fn subscribers_are_woken_only_by_real_changes() {
        let fake = Arc::new(FakeLvm::with_report(ONE_VG));
        let cache = StateCache::new(fake.clone());
        let mut rx = cache.subscribe();
        rx.borrow_and_update();

        cache
            .refresh(RefreshReason::Startup)
            .await
            .expect("refresh");
        assert!(rx.has_changed().expect("open"));
        assert_eq!(rx.borrow_and_update().vgs["vg1"].free, 50);

        cache
            .refresh(RefreshReason::Periodic)
            .await
            .expect("refresh");
        assert!(
            !rx.has_changed().expect("open"),
            "same report must not wake watchers"
        );

        fake.set_report(ONE_VG_CHANGED);
        cache
            .refresh(RefreshReason::OutsideChange)
            .await
            .expect("refresh");
        assert!(rx.has_changed().expect("open"));
        assert_eq!(cache.current().vgs["vg1"].free, 46);
        assert_eq!(cache.refresh_count(), 3);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_snapshot() {
        let fake = Arc::new(FakeLvm::with_report(ONE_VG));
        let cache = StateCache::new(fake.clone());
        cache
            .refresh(RefreshReason::Startup)
            .await
            .expect("refresh");
        fake.set_report("garbage");
        assert!(cache.refresh(RefreshReason::Periodic).await.is_err());
        assert_eq!(cache.current().vgs["vg1"].free, 50);
    }
}
