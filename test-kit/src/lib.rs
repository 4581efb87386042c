//! Test helpers of topolvm-rs that depend on none of its product crates, so that every crate can
//! dev-depend on them without a loop (the e2e test bed, `topolvm-e2e`, builds on them and
//! re-exports them).
//!
//! - [`lvm`]: real LVM (an isolated `LVM_SYSTEM_DIR`, loop devices or a VM's disks, volume
//!   groups that remove themselves) and a real lvmd process with gRPC channels: the harness of
//!   lvmd's host tier, VM tier and benchmark, and of the e2e tests that need a node's storage.
//! - [`metrics`]: a binary's `/metrics` read over plain HTTP and summed.
//! - [`mounts`]: what is mounted under a directory, and unmounting it all on the way out.
//! - [`pki`]: the test bed's CA, certificates and kubeconfigs.
//! - [`process`]: child processes that never outlive the test, free ports, process groups.
//! - [`raw_grpc`]: a frame-by-frame gRPC client that sends any `:authority`, as other gRPC
//!   implementations do over Unix sockets.

pub mod lvm;
pub mod metrics;
pub mod mounts;
pub mod pki;
pub mod process;
pub mod raw_grpc;
