//! The end-to-end test bed of topolvm-rs.
//!
//! - [`cluster`]: a Kubernetes 1.20 control plane on loopback (etcd, kube-apiserver, and on
//!   request kube-scheduler with our extender and kube-controller-manager) with RBAC on, an admin
//!   kubeconfig and one per component we ship; or an existing cluster from
//!   `TOPOLVM_E2E_KUBECONFIG`.
//! - [`containerd`]: Debian's containerd and runc from the runtime cache
//!   (`e2e/scripts/build-node-runtime.sh`) with a private root and socket, and the test bed's
//!   pause and app images (built from busybox, no registry) imported for kubelet's CRI.
//! - [`csi`]: kubelet's side of the CSI socket: the Node requests kubelet sends for a pod's
//!   volumes (targets, capability, volume context), for tests of the node service; and the
//!   controller sidecars' side (`Sidecars`: provisioner, resizer, snapshotter), for tests of
//!   topolvm-controller.
//! - [`kubelet`] and [`containerd`]: a real kubelet on a container runtime of its own, for the
//!   VM tier's guest, where pods really run and mount their claims.
//! - [`monitoring`]: what `deploy/monitoring/`'s dashboard and alerts ask of the exporters,
//!   checked without running anything.
//! - [`stack`]: the whole local stack (control plane with our extender, lvmd, topolvm-node per
//!   node, topolvm-scheduler, topolvm-controller with its webhook registered, and
//!   [`sidecar_loop`], the CSI sidecars' part played against the API server): what
//!   `scripts/demo.sh` runs and the whole-stack tests use.
//! - [`storm`]: the crash storm through the whole stack (on loop devices here, on real
//!   device-mapper in topolvm-node's VM tier).
//! - [`lvm`], [`metrics`], [`mounts`], [`pki`], [`process`], [`raw_grpc`]: the helpers with no
//!   product dependency (real LVM and lvmd, `/metrics` sums, mounts left behind, the CA, child
//!   processes, a frame-by-frame gRPC client), from `topolvm-test-kit` and re-exported here under their old paths.
//!
//! The tests in `tests/` need the `e2e` feature (see README.md); this library itself is plain
//! code that builds everywhere.

pub mod cluster;
pub mod containerd;
pub mod csi;
pub mod kubelet;
pub mod monitoring;
pub mod sidecar_loop;
pub mod stack;
pub mod storm;

pub use cluster::{Cluster, ClusterOptions};
pub use topolvm_test_kit::{lvm, metrics, mounts, pki, process, raw_grpc};
