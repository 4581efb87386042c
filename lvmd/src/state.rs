//! The state cache: the last `lvm fullreport`, plus what lvmd's own commands changed since.
//!
//! Reads (GetLVList, GetFreeBytes, Watch) are answered from the cache and never run `lvm` or
//! wait for a mutation. A mutation that succeeds records its [`Change`] at once, so the caller
//! gets its answer and every later read sees the result without waiting for a report; a refresh
//! then runs off the request path and replaces the prediction with what LVM reports (when the two
//! disagree, the report wins and the disagreement is logged). Predictions are only made where
//! lvmd knows the outcome exactly; free space is never shown larger than LVM's.
//!
//! Each report is stored with the metadata-area headers of the watched volume groups' physical
//! volumes as they were read just before it ran, so the change monitor compares what it reads
//! against the state the cache actually holds, whoever refreshed it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};

use crate::lvm::metadata::{self, Headers};
use crate::lvm::report::{self, LogicalVolume, VolumeGroup};
use crate::lvm::{LvmError, LvmRunner};

/// One consistent view of LVM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub vgs: BTreeMap<String, VolumeGroup>,
}

impl Snapshot {
    /// The physical volumes of the given volume groups.
    pub fn devices_of<'a>(&'a self, vgs: &'a BTreeSet<String>) -> impl Iterator<Item = &'a str> {
        self.vgs
            .values()
            .filter(|vg| vgs.contains(&vg.name))
            .flat_map(|vg| vg.pvs.iter().map(|pv| pv.name.as_str()))
    }

    fn lv(&self, vg: &str, name: &str) -> Option<&LogicalVolume> {
        self.vgs.get(vg).and_then(|vg| vg.lvs.get(name))
    }
}

/// What one successful `lvm` command of lvmd's changed, as far as lvmd knows it exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `lv` now exists and took `allocated` bytes of its volume group.
    Created {
        lv: Box<LogicalVolume>,
        allocated: u64,
    },
    /// `vg/name` is now `size` bytes and took `allocated` more bytes of the volume group.
    Resized {
        vg: String,
        name: String,
        size: u64,
        allocated: u64,
    },
    /// `vg/name` is gone and gave back `freed` bytes (0 where that is not exactly known).
    Removed {
        vg: String,
        name: String,
        freed: u64,
    },
}

impl Change {
    /// Applies the change to `snap` unless `snap` already shows it, so applying it to a report
    /// taken after the command is harmless.
    fn apply(&self, snap: &mut Snapshot) {
        match self {
            Self::Created { lv, allocated } => {
                if let Some(vg) = snap.vgs.get_mut(&lv.vg_name)
                    && !vg.lvs.contains_key(&lv.name)
                {
                    vg.lvs.insert(lv.name.clone(), (**lv).clone());
                    vg.free = vg.free.saturating_sub(*allocated);
                }
            }
            Self::Resized {
                vg,
                name,
                size,
                allocated,
            } => {
                if let Some(vg) = snap.vgs.get_mut(vg)
                    && let Some(lv) = vg.lvs.get_mut(name)
                    && lv.size < *size
                {
                    lv.size = *size;
                    vg.free = vg.free.saturating_sub(*allocated);
                }
            }
            Self::Removed { vg, name, freed } => {
                if let Some(vg) = snap.vgs.get_mut(vg)
                    && vg.lvs.remove(name).is_some()
                {
                    vg.free = vg.free.saturating_add(*freed).min(vg.size);
                }
            }
        }
    }

    /// The volume group and name of the volume changed.
    fn volume(&self) -> (&str, &str) {
        match self {
            Self::Created { lv, .. } => (&lv.vg_name, &lv.name),
            Self::Resized { vg, name, .. } | Self::Removed { vg, name, .. } => (vg, name),
        }
    }

    /// Whether `report` shows this change.
    fn shown_in(&self, report: &Snapshot) -> bool {
        match self {
            Self::Created { lv, .. } => report
                .lv(&lv.vg_name, &lv.name)
                .is_some_and(|r| r.size == lv.size),
            Self::Resized { vg, name, size, .. } => {
                report.lv(vg, name).is_some_and(|r| r.size >= *size)
            }
            Self::Removed { vg, name, .. } => report.lv(vg, name).is_none(),
        }
    }
}

/// How long the report confirming a mutation waits for more mutations to confirm with it.
/// `lvm fullreport` holds the volume groups' shared locks, so a report right after each
/// mutation of a burst would make the next command wait for it.
const CONFIRM_DELAY: Duration = Duration::from_millis(100);
/// The longest a recorded change waits for its confirming report during a burst.
const CONFIRM_MAX_DELAY: Duration = Duration::from_secs(1);

/// Mutations waiting for their confirming report.
#[derive(Debug, Default)]
struct Confirmations {
    /// Keep the cache busy (see [`StateCache::busy`]) until the report is in.
    waiting: Vec<BusyGuard>,
    /// Bumped by every mutation; only the task of the latest one reports, unless overdue.
    generation: u64,
    oldest: Option<Instant>,
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

/// The report, the headers read before it, and the changes made since.
#[derive(Debug, Default)]
struct Inner {
    report: Arc<Snapshot>,
    /// `None` until the first report.
    headers: Option<Headers>,
    /// Changes with their sequence numbers, oldest first, not yet covered by a report.
    pending: Vec<(u64, Change)>,
    next_seq: u64,
    last_refresh: Option<Instant>,
}

impl Inner {
    fn published(&self) -> Snapshot {
        let mut snap = (*self.report).clone();
        for (_, change) in &self.pending {
            change.apply(&mut snap);
        }
        snap
    }
}

/// Holds the current [`Snapshot`] and refreshes it.
#[derive(Debug)]
pub struct StateCache {
    runner: Arc<dyn LvmRunner>,
    /// The volume groups whose physical volumes' headers are kept with each report.
    watched: BTreeSet<String>,
    tx: watch::Sender<Arc<Snapshot>>,
    inner: SyncMutex<Inner>,
    /// Serializes refreshes so an older report is never published over a newer one.
    refresh_lock: Mutex<()>,
    refreshes: AtomicU64,
    /// Mutations and refreshes under way; see [`StateCache::busy`].
    busy: Arc<AtomicUsize>,
    /// `lvm` commands of mutations running now, and how many ever started.
    commands_running: Arc<AtomicUsize>,
    commands_started: AtomicU64,
    confirmations: SyncMutex<Confirmations>,
}

/// Marks the cache busy while it lives: a mutation or refresh is under way whose own refresh
/// will read the headers and the report after it.
#[derive(Debug)]
pub struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StateCache {
    /// An empty cache that keeps the metadata headers of `watched` volume groups; call
    /// [`StateCache::refresh`] to fill it.
    pub fn new(runner: Arc<dyn LvmRunner>, watched: BTreeSet<String>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            runner,
            watched,
            tx,
            inner: SyncMutex::new(Inner::default()),
            refresh_lock: Mutex::new(()),
            refreshes: AtomicU64::new(0),
            busy: Arc::new(AtomicUsize::new(0)),
            commands_running: Arc::new(AtomicUsize::new(0)),
            commands_started: AtomicU64::new(0),
            confirmations: SyncMutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent Inner (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// When the last report was taken.
    pub fn last_refresh(&self) -> Option<Instant> {
        self.inner().last_refresh
    }

    /// Marks a mutation (or refresh) under way until the guard is dropped.
    pub fn busy(&self) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.busy.clone())
    }

    /// Marks a mutating `lvm` command running until the guard is dropped: a report taken
    /// meanwhile may or may not show its effect.
    pub fn command_running(&self) -> BusyGuard {
        self.commands_started.fetch_add(1, Ordering::SeqCst);
        self.commands_running.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.commands_running.clone())
    }

    /// Whether a mutation or refresh is under way.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    fn publish(&self, snap: Snapshot) -> Arc<Snapshot> {
        let fresh = Arc::new(snap);
        self.tx.send_if_modified(|current| {
            if **current == *fresh {
                false
            } else {
                *current = fresh.clone();
                true
            }
        });
        fresh
    }

    /// Records a change lvmd's own command made, and publishes the state with it.
    pub fn record(&self, change: Change) -> Arc<Snapshot> {
        let mut inner = self.inner();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.pending.push((seq, change));
        let snap = inner.published();
        // Publishing under the lock keeps the order of publications the order of changes.
        self.publish(snap)
    }

    /// The watched physical volumes of `snap`.
    fn devices(&self, snap: &Snapshot) -> BTreeSet<String> {
        snap.devices_of(&self.watched).map(str::to_owned).collect()
    }

    /// Reads the headers of `devices` now.
    async fn read_headers(devices: BTreeSet<String>) -> Headers {
        if devices.is_empty() {
            return Headers::new();
        }
        tokio::task::spawn_blocking(move || {
            metadata::read_headers(devices.iter().map(String::as_str))
        })
        .await
        .unwrap_or_default()
    }

    /// Reads the headers, runs one `lvm fullreport`, and publishes the report with the changes
    /// made after it started; subscribers are woken only if the published state differs.
    pub async fn refresh(&self, reason: RefreshReason) -> Result<Arc<Snapshot>, LvmError> {
        let _busy = self.busy();
        let _serial = self.refresh_lock.lock().await;
        // Every change recorded before this point was made before the report below starts.
        let covered_below = self.inner().next_seq;
        let started_before = self.commands_started.load(Ordering::SeqCst);
        let quiet_at_start = self.commands_running.load(Ordering::SeqCst) == 0;
        let mut headers = Self::read_headers(self.devices(&self.current())).await;
        let output = self.runner.run(report::fullreport_args()).await?;
        let report = Snapshot {
            vgs: report::parse_fullreport(&output)?,
        };
        // Devices this report shows for the first time (at start-up, after a vgextend) are read
        // now; a change on them alone between the report and this read waits for the periodic
        // refresh, but a metadata commit rewrites every PV of its volume group.
        let devices = self.devices(&report);
        headers.retain(|d, _| devices.contains(d));
        let unseen = devices
            .into_iter()
            .filter(|d| !headers.contains_key(d))
            .collect();
        headers.extend(Self::read_headers(unseen).await);
        // A command that ran while the report was taken may have changed the same volumes again:
        // then a difference is no disagreement.
        let quiet =
            quiet_at_start && self.commands_started.load(Ordering::SeqCst) == started_before;
        let (snap, outside) = {
            let mut inner = self.inner();
            let covered: Vec<&Change> = inner
                .pending
                .iter()
                .filter(|(seq, _)| quiet && *seq < covered_below)
                .map(|(_, change)| change)
                .collect();
            // Only the last change of each volume must show: a later one may have undone it.
            for (i, change) in covered.iter().enumerate() {
                let superseded = covered[i + 1..]
                    .iter()
                    .any(|later| later.volume() == change.volume());
                if !superseded && !change.shown_in(&report) {
                    warn!(
                        ?change,
                        "LVM's report disagrees with the change lvmd recorded; the report wins"
                    );
                }
            }
            inner.pending.retain(|(seq, _)| *seq >= covered_below);
            let outside = reason == RefreshReason::OutsideChange && *inner.report != report;
            inner.report = Arc::new(report);
            inner.headers = Some(headers);
            inner.last_refresh = Some(Instant::now());
            let snap = inner.published();
            (self.publish(snap), outside)
        };
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if outside {
            info!(reason = reason.as_str(), "LVM state changed outside lvmd");
        }
        Ok(snap)
    }

    /// Like [`StateCache::refresh`] but only logs a failure; the stale snapshot stays.
    pub async fn refresh_or_warn(&self, reason: RefreshReason) {
        if let Err(error) = self.refresh(reason).await {
            warn!(reason = reason.as_str(), %error, "refreshing LVM state failed");
        }
    }

    /// Confirms a recorded change with a report in the background, keeping `busy` until the
    /// report is in. Mutations in a burst share one report: it runs [`CONFIRM_DELAY`] after the
    /// last of them, and at most [`CONFIRM_MAX_DELAY`] after the first.
    pub fn confirm_in_background(self: &Arc<Self>, busy: BusyGuard) {
        let generation = {
            let mut c = self
                .confirmations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            c.waiting.push(busy);
            c.generation += 1;
            c.oldest.get_or_insert_with(Instant::now);
            c.generation
        };
        let cache = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CONFIRM_DELAY).await;
            let waiting = {
                let mut c = cache
                    .confirmations
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let overdue = c.oldest.is_some_and(|t| t.elapsed() >= CONFIRM_MAX_DELAY);
                if (c.generation != generation && !overdue) || c.waiting.is_empty() {
                    // A later mutation's task reports for this one too.
                    return;
                }
                c.oldest = None;
                std::mem::take(&mut c.waiting)
            };
            cache.refresh_or_warn(RefreshReason::Mutation).await;
            drop(waiting);
        });
    }

    /// Refreshes when the watched headers differ from those read before the cached report. Does
    /// nothing while a mutation or refresh is under way: that one's own report covers the change.
    /// Returns whether it refreshed.
    pub async fn refresh_if_changed_outside(&self) -> bool {
        if self.is_busy() {
            return false;
        }
        let now = Self::read_headers(self.devices(&self.current())).await;
        // Before the first report there is nothing to compare with; the periodic refresh retries.
        let changed = self
            .inner()
            .headers
            .as_ref()
            .is_some_and(|recorded| *recorded != now);
        if changed && !self.is_busy() {
            debug!("metadata header changed; refreshing");
            self.refresh_or_warn(RefreshReason::OutsideChange).await;
            return true;
        }
        false
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
        /// Reports that replace `report` one by one, each when a command other than the
        /// report runs: the state each command leaves behind.
        pub reports_after: Mutex<VecDeque<String>>,
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

        /// Makes `json` the report once the next not yet scripted command has run.
        pub fn then_report(&self, json: &str) {
            self.reports_after
                .lock()
                .expect("lock")
                .push_back(json.to_owned());
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
                if let Some(next) = self.reports_after.lock().expect("lock").pop_front() {
                    *self.report.lock().expect("lock") = next;
                }
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
        let cache = StateCache::new(fake.clone(), BTreeSet::new());
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
        let cache = StateCache::new(fake.clone(), BTreeSet::new());
        cache
            .refresh(RefreshReason::Startup)
            .await
            .expect("refresh");
        fake.set_report("garbage");
        assert!(cache.refresh(RefreshReason::Periodic).await.is_err());
        assert_eq!(cache.current().vgs["vg1"].free, 50);
    }

    /// A fake report whose volume group `vg1` has one physical volume at `pv`.
    fn report_with_pv(pv: &str, free: u64) -> String {
        serde_json::json!({"report": [{
            "vg": [{"vg_name": "vg1", "vg_uuid": "u", "vg_size": "1000", "vg_free": free.to_string(),
                    "vg_extent_size": "4", "vg_seqno": "1", "vg_tags": ""}],
            "pv": [{"pv_name": pv, "pv_uuid": "p"}]
        }]})
        .to_string()
    }

    /// The race of lvmd defect 2: an outside change made right after a refresh that someone else
    /// (a mutation) ran is compared with the headers that refresh read, so it is seen at the
    /// next poll instead of becoming the baseline.
    #[tokio::test]
    async fn an_outside_change_right_after_another_refresh_is_seen() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let mut pv = tempfile::NamedTempFile::new().expect("tmp");
        pv.write_all(&vec![0u8; 8192]).expect("write");
        let path = pv.path().to_string_lossy().into_owned();
        let fake = Arc::new(FakeLvm::with_report(&report_with_pv(&path, 500)));
        let cache = StateCache::new(fake.clone(), BTreeSet::from(["vg1".to_owned()]));
        cache
            .refresh(RefreshReason::Startup)
            .await
            .expect("refresh");
        assert!(
            !cache.refresh_if_changed_outside().await,
            "nothing changed since the report"
        );

        for round in 0..20u8 {
            cache
                .refresh(RefreshReason::Mutation)
                .await
                .expect("refresh");
            // Straight after it, someone commits new metadata.
            pv.as_file()
                .write_all_at(&[round + 1; 16], 4096 + 40)
                .expect("outside commit");
            let reports = cache.refresh_count();
            assert!(
                cache.refresh_if_changed_outside().await,
                "round {round}: the outside change was missed"
            );
            assert_eq!(cache.refresh_count(), reports + 1);
            assert!(
                !cache.refresh_if_changed_outside().await,
                "round {round}: seen twice"
            );
        }

        // While a mutation is under way its own report covers the change: no second report.
        pv.as_file()
            .write_all_at(&[99; 16], 4096 + 40)
            .expect("write");
        let busy = cache.busy();
        assert!(!cache.refresh_if_changed_outside().await);
        drop(busy);
        assert!(cache.refresh_if_changed_outside().await);
    }

    /// Runs `fullreport` only when the test lets it, answering with the report set then.
    #[derive(Debug)]
    struct GatedLvm {
        report: std::sync::Mutex<String>,
        gate: tokio::sync::Semaphore,
    }

    impl LvmRunner for GatedLvm {
        fn run(
            &self,
            _args: Vec<String>,
        ) -> futures::future::BoxFuture<'_, Result<String, LvmError>> {
            Box::pin(async move {
                self.gate.acquire().await.expect("open").forget();
                Ok(self.report.lock().expect("lock").clone())
            })
        }
    }

    fn new_lv(name: &str, size: u64) -> LogicalVolume {
        LogicalVolume {
            name: name.into(),
            uuid: String::new(),
            vg_name: "vg1".into(),
            size,
            attr: "-wi-a-----".into(),
            tags: vec![],
            path: format!("/dev/vg1/{name}"),
            kernel_major: None,
            kernel_minor: None,
            pool_lv: None,
            origin: None,
            data_percent: None,
            metadata_percent: None,
            stripes: 1,
            plain_allocation: true,
            cow_size: None,
        }
    }

    /// A change recorded while a report runs may or may not be in that report, so it stays on
    /// top of it until a report started after it; a report that started after it and lacks it
    /// wins.
    #[tokio::test]
    async fn changes_stay_until_a_later_report_covers_them() {
        let lvm = Arc::new(GatedLvm {
            report: std::sync::Mutex::new(ONE_VG.to_owned()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cache = Arc::new(StateCache::new(lvm.clone(), BTreeSet::new()));
        lvm.gate.add_permits(1);
        cache
            .refresh(RefreshReason::Startup)
            .await
            .expect("refresh");

        let running = tokio::spawn({
            let cache = cache.clone();
            async move { cache.refresh(RefreshReason::Periodic).await }
        });
        tokio::task::yield_now().await;
        // The volume is made while that report is under way.
        cache.record(Change::Created {
            lv: Box::new(new_lv("v1", 8)),
            allocated: 8,
        });
        assert_eq!(cache.current().vgs["vg1"].free, 42);
        lvm.gate.add_permits(1);
        running.await.expect("task").expect("refresh");
        assert!(
            cache.current().vgs["vg1"].lvs.contains_key("v1"),
            "a report that may predate the change does not erase it"
        );
        assert_eq!(cache.current().vgs["vg1"].free, 42);

        // The next report started after the change: it is the truth, and it has no v1.
        lvm.gate.add_permits(1);
        cache
            .refresh(RefreshReason::Periodic)
            .await
            .expect("refresh");
        assert!(!cache.current().vgs["vg1"].lvs.contains_key("v1"));
        assert_eq!(cache.current().vgs["vg1"].free, 50);
    }

    /// Applying a recorded change to a report that already shows it changes nothing.
    #[test]
    fn changes_apply_once() {
        let mut snap = Snapshot {
            vgs: report::parse_fullreport(ONE_VG).expect("parse"),
        };
        let created = Change::Created {
            lv: Box::new(new_lv("v1", 8)),
            allocated: 8,
        };
        created.apply(&mut snap);
        created.apply(&mut snap);
        assert_eq!(snap.vgs["vg1"].free, 42);
        let grown = Change::Resized {
            vg: "vg1".into(),
            name: "v1".into(),
            size: 12,
            allocated: 4,
        };
        grown.apply(&mut snap);
        grown.apply(&mut snap);
        assert_eq!(
            (snap.vgs["vg1"].lvs["v1"].size, snap.vgs["vg1"].free),
            (12, 38)
        );
        let removed = Change::Removed {
            vg: "vg1".into(),
            name: "v1".into(),
            freed: 12,
        };
        removed.apply(&mut snap);
        removed.apply(&mut snap);
        assert_eq!(snap.vgs["vg1"].free, 50);
        assert!(removed.shown_in(&snap) && !created.shown_in(&snap));
    }
}
