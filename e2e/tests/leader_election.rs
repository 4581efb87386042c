//! Leader election against the test bed's real kube-apiserver (`coordination.k8s.io/v1`
//! Leases):
//!
//! ```text
//! cargo test -p topolvm-e2e --features e2e --test leader_election
//! ```
//!
//! One candidate leads while it renews and a second one waits longer than the lease duration
//! without taking over; when the leader's process dies without releasing, the second takes over
//! after the lease duration (one transition recorded); when that leader stops gracefully, a
//! third takes over at once, well before the lease would have expired.
#![cfg(feature = "e2e")]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_runtime::leader::{Candidate, Timing};

const LEASE: &str = "topolvm";
const TIMING: Timing = Timing {
    lease_duration: Duration::from_secs(6),
    renew_deadline: Duration::from_secs(4),
    retry_period: Duration::from_millis(500),
};

fn candidate(client: kube::Client, identity: &str) -> Candidate {
    Candidate::new(client, "default", LEASE, identity, TIMING).expect("valid timing")
}

async fn holder(client: kube::Client) -> (Option<String>, i32) {
    let lease = Api::<Lease>::namespaced(client, "default")
        .get(LEASE)
        .await
        .expect("the Lease");
    let spec = lease.spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_takeover_after_a_crash_and_at_once_after_a_release() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    let client = cluster.client();

    // "a" leads from a runtime of its own, which the test later drops as a crash would end it:
    // its renewal task stops without releasing the Lease.
    let (a_tx, a_rx) = std::sync::mpsc::channel();
    let a_client = client.clone();
    let a_runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let leadership = rt.block_on(candidate(a_client, "a").acquire(CancellationToken::new()));
        a_tx.send(leadership.is_some()).expect("send");
        rt
    });
    assert!(
        a_rx.recv().expect("a's answer"),
        "the first candidate leads"
    );
    let a_runtime = a_runtime.join().expect("a's thread");
    assert_eq!(holder(client.clone()).await.0.as_deref(), Some("a"));

    // "b" waits while "a" renews, for longer than the lease duration.
    let b_shutdown = CancellationToken::new();
    let b = tokio::spawn(candidate(client.clone(), "b").acquire(b_shutdown.clone()));
    tokio::time::sleep(TIMING.lease_duration + Duration::from_secs(2)).await;
    assert!(!b.is_finished(), "b must not lead while a renews");
    assert_eq!(holder(client.clone()).await.0.as_deref(), Some("a"));

    // "a" crashes: b takes over once the lease has expired by b's own clock.
    let crashed = Instant::now();
    a_runtime.shutdown_background();
    let b_leadership = tokio::time::timeout(TIMING.lease_duration * 3, b)
        .await
        .expect("b takes over after a crash")
        .expect("b's task")
        .expect("b leads");
    let waited = crashed.elapsed();
    assert_eq!(holder(client.clone()).await, (Some("b".to_owned()), 1));
    assert!(!b_leadership.lost().is_cancelled());

    // "b" stops gracefully: it releases, and "c" leads long before a lease duration passes.
    let c = tokio::spawn(candidate(client.clone(), "c").acquire(CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!c.is_finished(), "c must not lead while b renews");
    let released = Instant::now();
    b_shutdown.cancel();
    b_leadership
        .finished()
        .await
        .expect("a graceful stop is not a loss");
    let c_leadership = tokio::time::timeout(TIMING.lease_duration * 3, c)
        .await
        .expect("c takes over")
        .expect("c's task")
        .expect("c leads");
    let handover = released.elapsed();
    assert!(
        handover < waited,
        "a released Lease is taken over sooner ({handover:?}) than an abandoned one ({waited:?})"
    );
    assert!(
        handover < TIMING.lease_duration,
        "a released Lease is taken over within a lease duration: {handover:?}"
    );
    assert_eq!(holder(client.clone()).await, (Some("c".to_owned()), 2));
    drop(c_leadership);
}
