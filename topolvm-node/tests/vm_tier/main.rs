//! VM tier of topolvm-node: what needs real device-mapper, mkfs and mount, which this machine's
//! kernel lacks. `scripts/test-vm-tier.sh` builds this binary (and `target/debug/lvmd`) and runs
//! it once inside a qemu VM (`scripts/vm/run.sh`) with two scratch disks, one test at a time;
//! anywhere else it fails.
//!
//! - [`csi`]: the CSI node service (publish, unpublish, stats, expand, snapshots next to their
//!   origins, read-only, stray signatures, inline ephemeral volumes);
//! - [`reconciler`]: LogicalVolumes made from `spec.source` (thin and thick snapshots, clones)
//!   through the reconciler, with the control plane started in the VM;
//! - [`controller`]: the same through topolvm-controller's CSI service, as the sidecars ask;
//! - [`pods`]: the whole local stack in the VM with a real kubelet and containerd: pods that
//!   mount, write, grow, snapshot and restore their claims, ephemeral volumes, fsGroup and
//!   read-only mounts, topolvm-node crashing under a running pod;
//! - [`storm`]: the crash storm through the whole stack with real thick snapshots and a real
//!   kubelet, judged by what kubelet reports as well as by `lvs`.
#![cfg(feature = "vm-tier")]

mod controller;
mod csi;
mod pods;
mod reconciler;
mod storm;

use std::process::Command;

use tempfile::TempDir;
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::lvm::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup, vm_disks};
use topolvm_e2e::process::{ManagedProcess, free_port, workspace_binary};

/// What the reconciler and controller scenarios run on: the control plane started in the VM
/// with the CRD and the Node `node`, a volume group on both scratch disks with a 256 MiB thin
/// pool, lvmd with a default thin class `thin` (ratio 4) and a thick class `thick` (no spare),
/// and topolvm-node with its CSI socket and kubelet dir in `dir`. Fields drop in order: the node
/// agent first, the control plane last.
struct NodeStack {
    _node: ManagedProcess,
    dir: TempDir,
    _lvmd: Lvmd,
    vg: VolumeGroup,
    env: LvmEnv,
    cluster: Cluster,
}

impl NodeStack {
    async fn start(node: &str) -> Self {
        let disks = vm_disks();
        let cluster = Cluster::start(ClusterOptions::api_only()).await;
        cluster.install_crds().await;
        cluster.make_node(node, &[], &[]).await;
        let env = LvmEnv::real_activation();
        let vg = VolumeGroup::create(
            &env,
            disks.into_iter().take(2).map(Disk::existing).collect(),
        );
        env.lvm(&[
            "lvcreate",
            "-q",
            "-T",
            "-L",
            "256m",
            &format!("{}/pool", vg.name()),
        ]);
        let classes = format!(
            "- {{name: thin, volume-group: {vg}, default: true, type: thin, \
             thin-pool: {{name: pool, overprovision-ratio: 4.0}}}}\n\
             - {{name: thick, volume-group: {vg}, spare-gb: 0}}",
            vg = vg.name()
        );
        let lvmd = Lvmd::start(
            &env,
            LvmdOptions::new(workspace_binary("lvmd", "lvmd"), classes),
        );
        let dir = tempfile::tempdir().expect("tmp");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_topolvm-node"));
        cmd.arg("--nodename")
            .arg(node)
            .arg("--lvmd-socket")
            .arg(lvmd.socket_path())
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig("topolvm-node"))
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--health-probe-bind-address")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--csi-socket")
            .arg(dir.path().join("node.sock"))
            .arg("--kubelet-dir")
            .arg(dir.path().join("kubelet"))
            .env("RUST_LOG", "topolvm_node=debug,info");
        let node = ManagedProcess::spawn("topolvm-node", cmd, &dir.path().join("node.log"));
        Self {
            _node: node,
            dir,
            _lvmd: lvmd,
            vg,
            env,
            cluster,
        }
    }
}
