//! The end-to-end test bed of topolvm-rs.
//!
//! - [`cluster`]: a Kubernetes 1.20 control plane on loopback (etcd, kube-apiserver, and on
//!   request kube-scheduler with our extender and kube-controller-manager) with RBAC on, an admin
//!   kubeconfig and one per component we ship; or an existing cluster from
//!   `TOPOLVM_E2E_KUBECONFIG`.
//! - [`csi`]: kubelet's side of the CSI socket: the Node requests kubelet sends for a pod's
//!   volumes (targets, capability, volume context), for tests of the node service; and the
//!   controller sidecars' side (`Sidecars`: provisioner, resizer, snapshotter), for tests of
//!   topolvm-controller.
//! - [`lvm`]: real LVM (an isolated `LVM_SYSTEM_DIR`, loop devices or a VM's disks, volume
//!   groups that remove themselves) and a real lvmd process with gRPC clients: the harness of
//!   lvmd's host tier, VM tier (inside `scripts/vm/run.sh`) and benchmark.
//! - [`pki`]: the test bed's CA and certificates.
//! - [`process`]: child processes that never outlive the test.
//! - [`stack`]: the whole local stack (control plane with our extender, lvmd, topolvm-node per
//!   node, topolvm-scheduler, topolvm-controller with its webhook registered, and
//!   [`sidecar_loop`], the CSI sidecars' part played against the API server): what
//!   `scripts/demo.sh` runs and the whole-stack tests use.
//! - [`storm`]: the crash storm through the whole stack (on loop devices here, on real
//!   device-mapper in topolvm-node's VM tier).
//! - [`raw_grpc`]: a frame-by-frame gRPC client that sends any `:authority`, as other gRPC
//!   implementations do over Unix sockets.
//!
//! The tests in `tests/` need the `e2e` feature (see README.md); this library itself is plain
//! code that builds everywhere.

pub mod cluster;
pub mod csi;
pub mod lvm;
pub mod pki;
pub mod process;
pub mod raw_grpc;
pub mod sidecar_loop;
pub mod stack;
pub mod storm;

pub use cluster::{Cluster, ClusterOptions};
