//! The crash storm (`topolvm_e2e::storm`) on real device-mapper with a real kubelet: the whole
//! local stack inside the VM, one node (two kubelets in one guest would collide) whose volume
//! group is on a scratch disk, where lvmd makes the thick snapshots the host tier can only refuse
//! and kubelet runs every claim's pod. Creates, expansions, snapshots (made, and deleted a few
//! operations later as external-snapshotter does) and deletions while lvmd, topolvm-node and
//! topolvm-controller are SIGKILLed and restarted; an origin cannot be removed while a thick
//! snapshot of it exists, so deletions of snapshotted claims wait for their snapshots. Then,
//! besides the API objects and `lvs`, kubelet's view: every live claim's pod running, its
//! capacity and kubelet's volume stats at the asked size, no mount left for a pod that is gone.
//! Sized for the emulated VM (`TOPOLVM_STORM_OPS`, default 30; `TOPOLVM_STORM_SEED`).

use topolvm_e2e::storm::{self, Mix, StormOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_with_real_snapshots_and_pods_loses_nothing() {
    let mut options = StormOptions::from_env(30);
    options.real_activation = true;
    options.kubelet = true;
    // The emulated VM binds a claim in seconds, not milliseconds: slower operations, so that
    // claims are Bound when they are grown and snapshotted, and more crashes among fewer of them.
    options.pause = std::time::Duration::from_millis(2000);
    options.kill_one_in = 4;
    // Fewer operations than on the host: more of them snapshots, the part only this tier has.
    options.mix = Mix {
        create: 3,
        expand: 2,
        snapshot: 3,
        delete: 2,
    };
    let report = storm::run(options).await;
    println!("{report}");
    assert!(
        report.snapshots_made > 0,
        "no snapshot was made on real device-mapper: {report}"
    );
    report.assert_nothing_lost();
}
