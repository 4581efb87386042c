//! The crash storm of `topolvm_e2e::storm` on this machine (root; metadata-only LVM on loop
//! devices, so lvmd refuses its thick snapshots, and a refusal must leave nothing behind; the
//! VM tier of topolvm-node runs it with real snapshots). Seeded (`TOPOLVM_STORM_SEED`, else a
//! fixed seed) and sized (`TOPOLVM_STORM_OPS`, default 200); the summary line says what was done
//! and found.
//!
//! ```text
//! cargo build -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins
//! cargo test -p topolvm-e2e --features e2e --test crash_storm -- --nocapture
//! ```
#![cfg(feature = "e2e")]

use topolvm_e2e::storm::{self, StormOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_loses_nothing() {
    let report = storm::run(StormOptions::from_env(200)).await;
    println!("{report}");
    report.assert_nothing_lost();
}
