//! Starts the whole local stack ([`topolvm_e2e::stack`]) with its embedded default — two nodes
//! `node-a` and `node-b`, each with a 4 GiB volume group on a loop device serving the thick
//! default device class `ssd` — and keeps it running until SIGINT or SIGTERM, then removes all of
//! it (processes, volume groups, loop devices, files). What `scripts/demo.sh` runs; needs root
//! and the test bed's Kubernetes binaries (`e2e/scripts/build-control-plane.sh`).
//!
//! Once the stack is up it writes `--ready-file`: shell assignments for `KUBECONFIG` (the
//! cluster's admin), `LVM_SYSTEM_DIR` (the stack's LVM configuration, for `lvs`), `STACK_DIR`
//! (logs) and `VG_<node>` per node (dashes as underscores).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use topolvm_e2e::stack::{Stack, StackOptions};

#[derive(Parser, Debug)]
#[command(about = "Runs topolvm-rs's whole stack locally until interrupted")]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Size of each node's volume group, in GiB.
    #[arg(long, default_value_t = 4)]
    vg_gib: u64,
    /// Where to write the shell assignments once the stack is up.
    #[arg(long)]
    ready_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=8).contains(&args.nodes),
        "--nodes must be between 1 and 8"
    );
    topolvm_runtime::logging::init(false);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stack = tokio::select! {
        stack = Stack::start(StackOptions::nodes(args.nodes, args.vg_gib << 30)) => stack,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    let mut ready = format!(
        "KUBECONFIG={}\nLVM_SYSTEM_DIR={}\nSTACK_DIR={}\n",
        stack.cluster.admin_kubeconfig().display(),
        stack.env.system_dir().display(),
        stack.dir().display(),
    );
    for node in &stack.nodes {
        ready.push_str(&format!(
            "VG_{}={}\n",
            node.name.replace('-', "_"),
            node.vg.name()
        ));
    }
    std::fs::write(&args.ready_file, ready)
        .with_context(|| format!("writing {}", args.ready_file.display()))?;
    tracing::info!(ready_file = %args.ready_file.display(), "the stack is up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping the stack");
    drop(stack);
    Ok(())
}
