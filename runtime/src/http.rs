//! Serving an axum router over plain HTTP or HTTPS (HTTP/1.1 and HTTP/2) on a TCP listener
//! given in Go's `host:port` form, with graceful shutdown: metrics, health, the scheduler
//! extender and admission webhooks all run on this.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a listen address could not be bound.
#[derive(Debug, Error)]
pub enum BindError {
    #[error("cannot listen on {listen}: {source}")]
    Bind { listen: String, source: io::Error },
    #[error("bad listen address {listen:?}: {message}")]
    Listen { listen: String, message: String },
}

/// Splits a Go-style listen address into host (empty for "every interface") and port:
/// `:8000`, `127.0.0.1:8000`, `[::1]:8000`, `localhost:8000`.
pub fn split_listen(listen: &str) -> Result<(&str, u16), String> {
    let (host, port) = listen.rsplit_once(':').ok_or_else(|| {
        format!("{listen:?} is not an address like :8000, 127.0.0.1:8000 or [::1]:8000")
    })?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{listen:?} has no valid port number"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host, port))
}

/// Binds a Go-style listen address (`:8000` listens on every interface, IPv6 and IPv4).
pub async fn bind(listen: &str) -> Result<TcpListener, BindError> {
    let (host, port) = split_listen(listen).map_err(|message| BindError::Listen {
        listen: listen.to_owned(),
        message,
    })?;
    let bind_err = |source| BindError::Bind {
        listen: listen.to_owned(),
        source,
    };
    if host.is_empty() {
        // A dual-stack IPv6 socket takes IPv4 too; hosts without IPv6 fall back to IPv4.
        return match TcpListener::bind(("::", port)).await {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind(("0.0.0.0", port)).await.map_err(bind_err),
        };
    }
    // Like Go, a host name listens on its first IPv4 address when it has one (so `localhost`
    // means 127.0.0.1, where kube-scheduler's `urlPrefix` usually points).
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(bind_err)?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last_err = e,
        }
    }
    Err(bind_err(last_err))
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish (up to a
/// grace period). With `tls`, every connection is HTTPS (see [`crate::tls`] for certificates
/// that follow their files).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(address = %local, tls = tls.is_some(), "serving HTTP");
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, peer, tls, app, watcher).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => info!(address = %local, "all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            warn!(address = %local, grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
        }
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    watcher: Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = TowerToHyperService::new(app);
    let builder = Builder::new(TokioExecutor::new());
    match tls {
        None => {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            watcher.watch(conn.into_owned()).await
        }
        Some(acceptor) => {
            let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| format!("TLS handshake with {peer} timed out"))??;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            watcher.watch(conn.into_owned()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(split_listen(":8000"), Ok(("", 8000)));
        assert_eq!(split_listen("127.0.0.1:9251"), Ok(("127.0.0.1", 9251)));
        assert_eq!(split_listen("[::1]:9251"), Ok(("::1", 9251)));
        assert_eq!(split_listen("localhost:1"), Ok(("localhost", 1)));
        assert!(split_listen("localhost").is_err());
        assert!(split_listen("localhost:99999").is_err());
    }

    #[tokio::test]
    async fn listen_addresses_in_gos_forms() {
        let localhost = bind("localhost:0").await.expect("localhost");
        assert!(localhost.local_addr().expect("addr").ip().is_loopback());
        assert!(
            localhost.local_addr().expect("addr").is_ipv4(),
            "IPv4 first, as Go"
        );
        let any = bind(":0").await.expect("every interface");
        assert!(any.local_addr().expect("addr").ip().is_unspecified());
    }

    #[tokio::test]
    async fn bad_listen_addresses_are_refused() {
        assert!(bind("nonsense").await.is_err());
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(&addr.to_string()).await.expect_err("in use");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
