//! Real LVM and a real lvmd for tests: the harness of lvmd's host tier, VM tier and benchmark,
//! and of the end-to-end tests that need a node's storage.
//!
//! - [`LvmEnv`]: a private `LVM_SYSTEM_DIR` whose `lvm.conf` lets LVM see only the devices this
//!   harness was given, with its own locking directory, so tests never touch the machine's LVM,
//!   never see each other's volume groups and never wait on each other's locks.
//! - [`Disk`], [`LoopDevice`]: the block devices a volume group is made of: a loop device over a
//!   sparse file, or an existing device (a VM's `/dev/vdb`).
//! - [`VolumeGroup`]: a uniquely named volume group that removes itself, its physical volumes and
//!   then its disks when dropped, also when the test panics.
//! - [`Lvmd`]: the real `lvmd` binary on its own config, socket and metrics port, with gRPC
//!   clients over the Unix socket and process control (SIGKILL of lvmd alone or, as a container
//!   runtime does, together with the `lvm` it runs; SIGTERM; restart).
//! - [`LvmWrapper`]: an `lvm-command-prefix` that shows a test when an `lvm` subcommand starts and
//!   ends and can hold it back, to crash lvmd at a chosen point of a command.
//!
//! Failures panic with a message that says what was being done; these are test helpers.
//!
//! The metrics and process-group helpers the lvmd tests use with these are re-exported from
//! [`crate::metrics`] and [`crate::process`].

mod disk;
mod env;
mod lvmd;
mod volume_group;
mod wrapper;

pub use disk::{DEFAULT_LOOP_SIZE, Disk, LoopDevice};
pub use env::{
    Activation, LvmEnv, ReportRow, find_program, lvm_binary, require_loop_devices, require_lvm,
};
pub use lvmd::{Lvmd, LvmdOptions, thick_default_class};
pub use volume_group::{VolumeGroup, vm_disks};
pub use wrapper::LvmWrapper;

pub use crate::metrics::{counter_by_label, http_get, sum_counter};
pub use crate::process::{process_group_alive, wait_process_group_gone};
