use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use topolvm_core::config::GoDuration;
use topolvm_core::quantity::ByteQuantity;
use topolvm_core::size::{self, MinimumAllocation};
use topolvm_runtime::leader::Timing;

/// topolvm-controller: the controller of topolvm-rs, compatible with TopoLVM's. Serves the CSI
/// controller service, cleans up after deleted nodes and runs the pod mutating webhook.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The CSI socket the provisioner, resizer and snapshotter sidecars connect to.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_CSI_SOCKET)]
    csi_socket: PathBuf,
    /// Listen address of the /metrics endpoint.
    #[arg(long, default_value = ":8080")]
    metrics_bind_address: String,
    /// Serve /metrics over HTTPS (self-signed) to callers whose bearer token may `get /metrics`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    secure_metrics_server: bool,
    /// Listen address of the /healthz and /readyz endpoints.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Listen address of the webhook server (HTTPS).
    #[arg(long, default_value = ":9443")]
    webhook_addr: String,
    /// Directory with the webhook's serving certificate `tls.crt` and key `tls.key`, re-read
    /// when they change (controller-runtime's default when empty).
    #[arg(long, default_value = "")]
    cert_dir: String,
    /// Serve the pod mutating webhook.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    enable_webhooks: bool,
    /// Run the reconcilers only on the replica holding the Lease.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LEADER_ELECTION_ID)]
    leader_election_id: String,
    /// Namespace of the Lease (default: this pod's namespace).
    #[arg(long, default_value = "")]
    leader_election_namespace: String,
    /// How long a Lease is valid without renewal.
    #[arg(long, default_value_t = GoDuration(Timing::default().lease_duration))]
    leader_election_lease_duration: GoDuration,
    /// How long the leader keeps trying to renew before it gives up.
    #[arg(long, default_value_t = GoDuration(Timing::default().renew_deadline))]
    leader_election_renew_deadline: GoDuration,
    /// How often candidates try to acquire or renew.
    #[arg(long, default_value_t = GoDuration(Timing::default().retry_period))]
    leader_election_retry_period: GoDuration,
    /// Do not clean up after deleted Nodes (their PVCs and LogicalVolumes).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    skip_node_finalize: bool,
    /// How long a LogicalVolume without PersistentVolume and claim may exist before it is
    /// deleted as stray (it is counted in topolvm_controller_stray_logicalvolumes at once);
    /// 0s: count only, never delete. Not a TopoLVM flag.
    #[arg(long, default_value = "10m")]
    stray_volume_grace_period: GoDuration,
    /// Time between two scans for stray LogicalVolumes. Not a TopoLVM flag.
    #[arg(long, default_value = "1m")]
    stray_volume_scan_interval: GoDuration,
    /// Smallest raw block volume (a Kubernetes quantity).
    #[arg(long, default_value_t = ByteQuantity(size::DEFAULT_MINIMUM_ALLOCATION_BLOCK))]
    minimum_allocation_block: ByteQuantity,
    /// Smallest ext4 volume.
    #[arg(long, default_value_t = ByteQuantity(size::DEFAULT_MINIMUM_ALLOCATION_EXT4))]
    minimum_allocation_ext4: ByteQuantity,
    /// Smallest xfs volume.
    #[arg(long, default_value_t = ByteQuantity(size::DEFAULT_MINIMUM_ALLOCATION_XFS))]
    minimum_allocation_xfs: ByteQuantity,
    /// Smallest btrfs volume.
    #[arg(long, default_value_t = ByteQuantity(size::DEFAULT_MINIMUM_ALLOCATION_BTRFS))]
    minimum_allocation_btrfs: ByteQuantity,
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
    let minimum_allocation = MinimumAllocation {
        block: args.minimum_allocation_block.0,
        filesystem: [
            ("ext4", args.minimum_allocation_ext4.0),
            ("xfs", args.minimum_allocation_xfs.0),
            ("btrfs", args.minimum_allocation_btrfs.0),
        ]
        .into_iter()
        .map(|(fs, bytes)| (fs.to_owned(), bytes))
        .collect(),
    };
    let options = topolvm_controller::Options {
        csi_socket: args.csi_socket,
        metrics_bind_address: args.metrics_bind_address,
        secure_metrics_server: args.secure_metrics_server,
        health_probe_bind_address: args.health_probe_bind_address,
        webhook_addr: args.webhook_addr,
        cert_dir: args.cert_dir,
        enable_webhooks: args.enable_webhooks,
        leader_election: args
            .leader_election
            .then_some(topolvm_controller::LeaderElection {
                id: args.leader_election_id,
                namespace: args.leader_election_namespace,
                timing: Timing {
                    lease_duration: args.leader_election_lease_duration.0,
                    renew_deadline: args.leader_election_renew_deadline.0,
                    retry_period: args.leader_election_retry_period.0,
                },
            }),
        skip_node_finalize: args.skip_node_finalize,
        minimum_allocation,
        stray: topolvm_controller::stray::StrayOptions {
            grace_period: args.stray_volume_grace_period.0,
            interval: args.stray_volume_scan_interval.0,
        },
    };
    topolvm_controller::run(options, client, shutdown).await?;
    Ok(())
}
