//! Logging set-up shared by the binaries: `RUST_LOG` filtering (default `info`), text or JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
