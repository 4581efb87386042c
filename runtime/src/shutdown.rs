//! Signals: the first SIGTERM or SIGINT starts a graceful shutdown, a second one exits at once.
//!
//! This is how TopoLVM's binaries behave (controller-runtime's `SetupSignalHandler`): a process
//! stuck while draining can still be stopped with a second Ctrl-C or `kill`.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status after a second signal (controller-runtime's `os.Exit(1)`).
pub const FORCED_EXIT_STATUS: i32 = 1;

/// Installs the SIGTERM and SIGINT handlers and returns the token the first signal cancels.
/// A second signal ends the process with [`FORCED_EXIT_STATUS`]. Call once, from `main`,
/// inside the Tokio runtime.
pub fn cancel_on_signals() -> io::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        let first = next_signal(&mut term, &mut int).await;
        info!(
            signal = first,
            "shutting down: finishing work in flight (a second signal stops at once)"
        );
        on_signal.cancel();
        let second = next_signal(&mut term, &mut int).await;
        warn!(signal = second, "second signal: exiting without finishing");
        std::process::exit(FORCED_EXIT_STATUS);
    });
    Ok(token)
}

async fn next_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
