use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// topolvm-node: publishes lvmd's free capacity on this node's Node object, as TopoLVM's
/// topolvm-node does (the CSI node service and volume reconciler are not built yet).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Name of this node (the Node object).
    #[arg(long, env = "NODE_NAME")]
    nodename: String,
    /// lvmd's Unix socket.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LVMD_SOCKET)]
    lvmd_socket: PathBuf,
    /// Listen address of the /metrics endpoint.
    #[arg(long, default_value = ":8080")]
    metrics_bind_address: String,
    /// Listen address of the /healthz and /readyz endpoints.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// The CSI socket kubelet and the node-driver-registrar connect to.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_CSI_SOCKET)]
    csi_socket: PathBuf,
    /// kubelet's root directory; the node publishes volumes only below it.
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// Kubeconfig (default: $KUBECONFIG, then the in-cluster service account, then
    /// ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    topolvm_runtime::logging::init(args.log_json);
    let client = topolvm_runtime::kubernetes::client(args.kubeconfig.as_deref())
        .await
        .context("building the Kubernetes client")?;
    let shutdown = topolvm_runtime::shutdown::cancel_on_signals()
        .context("installing the SIGTERM and SIGINT handlers")?;
    let options = topolvm_node::Options {
        node_name: args.nodename,
        lvmd_socket: args.lvmd_socket,
        metrics_bind_address: args.metrics_bind_address,
        health_probe_bind_address: args.health_probe_bind_address,
        csi_socket: args.csi_socket,
        kubelet_dir: args.kubelet_dir,
    };
    topolvm_node::run(options, client, shutdown).await?;
    Ok(())
}
