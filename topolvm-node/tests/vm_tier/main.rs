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

mod controller;
mod csi;
mod reconciler;
