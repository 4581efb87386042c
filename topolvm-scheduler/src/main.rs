use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Default path of the configuration file.
const DEFAULT_CONFIG: &str = "/etc/topolvm/scheduler-config.yaml";

/// topolvm-scheduler: kube-scheduler extender that filters and scores nodes by free LVM
/// capacity (`POST /predicate`, `POST /prioritize`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TopoLVM's format). When the default path does not exist, the
    /// defaults are used; a path given explicitly must exist.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Watch pods, claims and nodes, so capacity promised to pods whose volumes are not
    /// provisioned yet counts (burst safety), and `nodeCacheCapable: true` works.
    #[arg(long)]
    watch_cluster: bool,
    /// Kubeconfig for --watch-cluster (default: $KUBECONFIG, then the in-cluster configuration,
    /// then ~/.kube/config).
    #[arg(long, requires = "watch_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    topolvm_runtime::logging::init(args.log_json);

    let config = match &args.config {
        Some(path) => topolvm_scheduler::Config::load(path)
            .with_context(|| format!("invalid configuration {}", path.display()))?,
        None => {
            let path = PathBuf::from(DEFAULT_CONFIG);
            if path.exists() {
                topolvm_scheduler::Config::load(&path)
                    .with_context(|| format!("invalid configuration {}", path.display()))?
            } else {
                tracing::info!(path = %path.display(), "no configuration file; using the defaults");
                topolvm_scheduler::Config::default()
            }
        }
    };

    let client = if args.watch_cluster {
        Some(
            topolvm_runtime::kubernetes::client(args.kubeconfig.as_deref())
                .await
                .context("a Kubernetes client for --watch-cluster")?,
        )
    } else {
        None
    };

    let shutdown = topolvm_runtime::shutdown::cancel_on_signals()
        .context("installing the SIGTERM and SIGINT handlers")?;
    topolvm_scheduler::run(config, client, shutdown).await?;
    Ok(())
}
