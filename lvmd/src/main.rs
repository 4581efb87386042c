use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// lvmd manages LVM logical volumes for topolvm-rs over gRPC on a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Path of the lvmd configuration file.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LVMD_CONFIG_PATH)]
    config: PathBuf,
    /// Node name used as the `node` label of capacity metrics (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    topolvm_runtime::logging::init(args.log_json);

    let config = lvmd::config::Config::load(&args.config)
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };

    let shutdown = topolvm_runtime::shutdown::cancel_on_signals()
        .context("installing the SIGTERM and SIGINT handlers")?;
    lvmd::run(config, &node_name, shutdown).await?;
    Ok(())
}
