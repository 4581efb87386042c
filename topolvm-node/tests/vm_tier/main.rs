//! VM tier of topolvm-node: what needs real device-mapper, mkfs and mount, which this machine's
//! kernel lacks. `scripts/test-vm-tier.sh` builds this binary (and `target/debug/lvmd`) and runs
//! it once inside a qemu VM (`scripts/vm/run.sh`) with two scratch disks, one test at a time;
//! anywhere else it fails.
//!
//! - [`csi`]: the CSI node service (publish, unpublish, stats, expand, snapshots next to their
//!   origins, read-only, stray signatures, inline ephemeral volumes);
//! - [`reconciler`]: LogicalVolumes made from `spec.source` (thin and thick snapshots, clones)
//!   through the reconciler, with the control plane started in the VM;
//! - [`controller`]: the same through topolvm-controller's CSI service, as the sidecars ask.
#![cfg(feature = "vm-tier")]

use std::path::PathBuf;

mod controller;
mod csi;
mod reconciler;

/// The scratch disks of the VM; panics outside it.
fn vm_disks() -> Vec<PathBuf> {
    assert_eq!(
        std::env::var("TOPOLVM_IN_VM").as_deref(),
        Ok("1"),
        "the VM tier runs only inside the test VM: use scripts/test-vm-tier.sh"
    );
    let disks: Vec<PathBuf> = std::env::var("TOPOLVM_VM_DISKS")
        .expect("TOPOLVM_VM_DISKS")
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    assert!(disks.len() >= 2, "two scratch disks needed, got {disks:?}");
    disks
}

/// target/debug/lvmd next to this test binary (scripts/test-vm-tier.sh builds it).
fn lvmd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let lvmd = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("lvmd");
    assert!(lvmd.exists(), "{} is missing", lvmd.display());
    lvmd
}
