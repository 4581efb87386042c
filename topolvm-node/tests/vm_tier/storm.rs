//! The crash storm (`topolvm_e2e::storm`) on real device-mapper: the whole local stack inside
//! the VM with a volume group per scratch disk, where lvmd makes the thick snapshots the host
//! tier can only refuse. Creates, expansions, snapshots (made, and deleted a few operations later
//! as external-snapshotter does) and deletions while lvmd, topolvm-node and topolvm-controller are
//! SIGKILLed and restarted; an origin cannot be removed while a thick snapshot of it exists, so
//! deletions of snapshotted claims wait for their snapshots. Sized for the emulated VM
//! (`TOPOLVM_STORM_OPS`, default 40; `TOPOLVM_STORM_SEED`).

use topolvm_e2e::storm::{self, Mix, StormOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_with_real_snapshots_loses_nothing() {
    let mut options = StormOptions::from_env(40);
    options.real_activation = true;
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
