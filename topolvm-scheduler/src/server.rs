//! Serving the router over plain HTTP or HTTPS (HTTP/1.1 and HTTP/2), with graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{TlsFiles, split_listen};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {listen}: {source}")]
    Bind { listen: String, source: io::Error },
    #[error("bad listen address {listen:?}: {message}")]
    Listen { listen: String, message: String },
    #[error("cannot load TLS {what} from {path}: {message}")]
    TlsFile {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("bad TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
}

/// Binds a Go-style listen address (`:8000` listens on every interface, IPv6 and IPv4).
pub async fn bind(listen: &str) -> Result<TcpListener, ServeError> {
    let (host, port) = split_listen(listen).map_err(|message| ServeError::Listen {
        listen: listen.to_owned(),
        message,
    })?;
    let bind_err = |source| ServeError::Bind {
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

/// Loads the certificate chain and key into a TLS acceptor that offers HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    let file_err =
        |what: &'static str, path: &Path, e: &dyn std::fmt::Display| ServeError::TlsFile {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| file_err("certificate", &files.cert_file, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("certificate", &files.cert_file, &e))?;
    if certs.is_empty() {
        return Err(file_err(
            "certificate",
            &files.cert_file,
            &"no PEM certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| file_err("private key", &files.key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish (up to a
/// grace period).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(address = %local, tls = tls.is_some(), "serving the scheduler extender");
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
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
        }
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
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
