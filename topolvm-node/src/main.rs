use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use topolvm_core::config::GoDuration;
use topolvm_node::logical_volume::orphans::OrphanOptions;

/// topolvm-node: the node agent of topolvm-rs, compatible with TopoLVM's. Serves the CSI node
/// service, makes the LVs of this node's LogicalVolumes through lvmd, publishes lvmd's free
/// capacity on this node's Node object and TopoLVM's gauges, and reports orphan LVs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Name of this node (the Node object).
    #[arg(long, env = "NODE_NAME")]
    nodename: String,
    /// lvmd's Unix socket (not used with --embed-lvmd).
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LVMD_SOCKET)]
    lvmd_socket: PathBuf,
    /// Run lvmd inside topolvm-node, configured by --config, instead of reaching an lvmd daemon.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    embed_lvmd: bool,
    /// lvmd's configuration file, read with --embed-lvmd.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LVMD_CONFIG_PATH)]
    config: PathBuf,
    /// Listen address of the /metrics endpoint.
    #[arg(long, default_value = ":8080")]
    metrics_bind_address: String,
    /// Listen address of the /healthz and /readyz endpoints.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Serve /metrics over HTTPS (self-signed) to callers whose bearer token may `get /metrics`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    secure_metrics_server: bool,
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
    /// Remove an LV carrying topolvm-rs's ownership tag once it has been seen orphaned (its
    /// LogicalVolume or pod gone) for this long, e.g. `30m`, `1h`. Without it orphans are only
    /// reported (metric, Node Event, log).
    #[arg(long)]
    orphan_gc_after: Option<GoDuration>,
    /// How often to look for orphan LVs (and soon after start).
    #[arg(long, default_value_t = GoDuration(OrphanOptions::default().interval))]
    orphan_scan_interval: GoDuration,
    /// Register the CSI socket with kubelet through its plugin registration directory, instead
    /// of the node-driver-registrar sidecar.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    register_with_kubelet: bool,
    /// The CSI socket's path as kubelet sees it on the host, told to kubelet at registration
    /// (with --register-with-kubelet).
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins/topolvm.io/node/csi-topolvm.sock"
    )]
    kubelet_registration_path: PathBuf,
    /// kubelet's plugin registration directory, where the registration socket goes (with
    /// --register-with-kubelet; default: plugins_registry under --kubelet-dir).
    #[arg(long)]
    plugin_registration_dir: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    topolvm_runtime::logging::init(args.log_json);
    let lvmd = if args.embed_lvmd {
        let config = lvmd::config::Config::load(&args.config)
            .with_context(|| format!("invalid lvmd configuration {}", args.config.display()))?;
        topolvm_node::LvmdMode::Embedded(Box::new(config))
    } else {
        topolvm_node::LvmdMode::Socket(args.lvmd_socket)
    };
    let client = topolvm_runtime::kubernetes::client(args.kubeconfig.as_deref())
        .await
        .context("building the Kubernetes client")?;
    let shutdown = topolvm_runtime::shutdown::cancel_on_signals()
        .context("installing the SIGTERM and SIGINT handlers")?;
    let registrar = args
        .register_with_kubelet
        .then(|| topolvm_node::registrar::RegistrarOptions {
            registration_dir: args
                .plugin_registration_dir
                .unwrap_or_else(|| topolvm_node::registrar::registration_dir(&args.kubelet_dir)),
            endpoint: args.kubelet_registration_path,
            retry: topolvm_node::registrar::Retry::default(),
        });
    let options = topolvm_node::Options {
        node_name: args.nodename,
        lvmd,
        metrics_bind_address: args.metrics_bind_address,
        health_probe_bind_address: args.health_probe_bind_address,
        secure_metrics_server: args.secure_metrics_server,
        csi_socket: args.csi_socket,
        kubelet_dir: args.kubelet_dir,
        orphan_gc_after: args.orphan_gc_after.map(|d| d.0),
        orphan_scan_interval: args.orphan_scan_interval.0,
        registrar,
    };
    topolvm_node::run(options, client, shutdown).await?;
    Ok(())
}
