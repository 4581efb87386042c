//! Notices LVM changes made outside lvmd without running `lvm`.
//!
//! Every poll reads the metadata-area headers of the configured volume groups' physical volumes
//! (see [`crate::lvm::metadata`]) and compares them with the headers the cache read just before
//! its current report. Any difference means the metadata changed after that report, whoever
//! took it, and one `lvm fullreport` refreshes the cache so Watch subscribers hear about it.
//!
//! A slow periodic refresh backs this up: it covers devices lvmd cannot open, volume groups that
//! appear after start-up, and thin pools' data usage, which changes with writes but not metadata.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::state::{RefreshReason, StateCache};

/// Runs until `shutdown`: every `poll`, refreshes the cache when the headers changed since its
/// report, or when `full_refresh` has passed since the last report.
pub async fn run(
    cache: Arc<StateCache>,
    poll: Duration,
    full_refresh: Duration,
    shutdown: CancellationToken,
) {
    // A failed periodic refresh is not retried before the next period either.
    let mut last_attempt = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        if cache.refresh_if_changed_outside().await {
            continue;
        }
        let last = cache
            .last_refresh()
            .map_or(last_attempt, |r| r.max(last_attempt));
        if last.elapsed() >= full_refresh {
            last_attempt = Instant::now();
            cache.refresh_or_warn(RefreshReason::Periodic).await;
        }
    }
}
