//! Benchmark (not a test): a claim created → Bound on the whole local stack
//! ([`topolvm_e2e::stack`], metadata-only LVM on a loop device; root), next to a bare `lvcreate`
//! of the same size on the same machine:
//!
//!     cargo build --release -p lvmd -p topolvm-node -p topolvm-controller -p topolvm-scheduler --bins
//!     cargo bench -p topolvm-e2e --features e2e --bench claim_to_bound [-- SAMPLES]
//!
//! Each sample creates a 1 GiB claim of a WaitForFirstConsumer class and a pod using it, and
//! times from the claim's creation to a watch seeing it Bound: the webhook, kube-scheduler with
//! topolvm-scheduler, kube-controller-manager, the sidecars' stand-in, topolvm-controller,
//! topolvm-node and lvmd all on the path. Samples run one after the other (default 50). The
//! target (issue 10) is the bare `lvcreate` plus 300 ms. Results are in e2e/README.md.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use topolvm_core::names;
use topolvm_e2e::lvm::{Disk, VolumeGroup};
use topolvm_e2e::stack::{self, Stack, StackOptions};

const GIB: u64 = 1 << 30;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(what: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = percentile(&samples, 50.0);
    println!(
        "{what:<32} n={:<3} p50={:>8.1} ms  p90={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
        samples.len(),
        ms(p50),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[samples.len() - 1]),
    );
    p50
}

async fn create(client: &Client, i: usize) {
    let name = format!("bench-{i}");
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::claim(&name, "bench", GIB))
        .await
        .expect("creating the claim");
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stack::pod(&name, &name))
        .await
        .expect("creating the pod");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("SAMPLES is a number"))
        .unwrap_or(50);
    let stack = Stack::start(StackOptions::nodes(1, (samples as u64 + 8) * GIB)).await;
    let client = stack.cluster.client();

    // The bare command, as lvmd runs it, on a volume group of its own.
    let bare_vg = VolumeGroup::create(&stack.env, vec![Disk::loop_device(4 * GIB)]);
    let mut bare = Vec::new();
    for i in 0..samples {
        let name = format!("bare{i}");
        let started = Instant::now();
        stack.env.lvm(&[
            "lvcreate",
            "-n",
            &name,
            "-L",
            &format!("{GIB}b"),
            "-W",
            "y",
            "-y",
            "--addtag",
            names::LV_TAG_MANAGED,
            bare_vg.name(),
        ]);
        bare.push(started.elapsed());
        stack
            .env
            .lvm(&["lvremove", "-y", &format!("{}/{name}", bare_vg.name())]);
    }

    Api::<StorageClass>::all(client.clone())
        .create(
            &PostParams::default(),
            &stack::storage_class("bench", "ext4"),
        )
        .await
        .expect("creating the StorageClass");

    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    let mut bound = Vec::new();
    for i in 0..samples {
        let config = watcher::Config::default().fields(&format!("metadata.name=bench-{i}"));
        let mut events = watcher(claims.clone(), config).boxed();
        // The watch is open (its initial list done) before the claim exists.
        while let Some(event) = events.next().await {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                break;
            }
        }
        let started = Instant::now();
        create(&client, i).await;
        let deadline = tokio::time::sleep(Duration::from_secs(120));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => panic!("claim bench-{i} not Bound within 120 s"),
                event = events.next() => {
                    let Some(Ok(watcher::Event::Apply(claim))) = event else { continue };
                    if claim.status.and_then(|s| s.phase).as_deref() == Some("Bound") {
                        break;
                    }
                }
            }
        }
        bound.push(started.elapsed());
    }

    println!();
    let bare_p50 = summary("bare lvcreate (1 GiB)", bare);
    let bound_p50 = summary("claim created -> Bound", bound);
    let target = bare_p50 + Duration::from_millis(300);
    println!(
        "target: bare lvcreate p50 + 300 ms = {:.1} ms; claim -> Bound p50 is {:.1} ms ({})",
        target.as_secs_f64() * 1000.0,
        bound_p50.as_secs_f64() * 1000.0,
        if bound_p50 <= target { "met" } else { "missed" },
    );
    drop(bare_vg);
    drop(stack);
}
