use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// topolvm-node: publishes lvmd's free capacity on this node's Node object and makes the LVs of
/// this node's LogicalVolumes, as TopoLVM's topolvm-node does (the CSI node service is not built
/// yet); reports orphan LVs.
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
    /// Kubeconfig (default: $KUBECONFIG, then the in-cluster service account, then
    /// ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Remove an LV carrying topolvm-rs's ownership tag once it has been seen orphaned (its
    /// LogicalVolume or pod gone) for this long, e.g. `30m`, `1h`. Without it orphans are only
    /// reported (metric, Node Event, log).
    #[arg(long, value_parser = topolvm_node::logical_volume::orphans::parse_duration)]
    orphan_gc_after: Option<std::time::Duration>,
    /// How often to look for orphan LVs (and soon after start).
    #[arg(long, default_value = "1m", value_parser = topolvm_node::logical_volume::orphans::parse_duration)]
    orphan_scan_interval: std::time::Duration,
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
        orphan_gc_after: args.orphan_gc_after,
        orphan_scan_interval: args.orphan_scan_interval,
    };
    topolvm_node::run(options, client, shutdown).await?;
    Ok(())
}
