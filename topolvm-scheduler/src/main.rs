use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

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
    /// Kubeconfig for --watch-cluster (default: in-cluster configuration, then $KUBECONFIG).
    #[arg(long, requires = "watch_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    topolvm_core::logging::init(args.log_json);

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
        let kube_config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("using kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .context("no in-cluster configuration or kubeconfig for --watch-cluster")?,
        };
        Some(kube::Client::try_from(kube_config).context("building the Kubernetes client")?)
    } else {
        None
    };

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: finishing requests in flight, then stopping"),
        }
        on_signal.cancel();
    });

    topolvm_scheduler::run(config, client, shutdown).await?;
    Ok(())
}
