//! Serving certificates read from PEM files and re-read when the files change.
//!
//! Certificates rotate while the server runs: cert-manager rewrites the Secret, and kubelet
//! swaps the mounted files. Before each handshake the resolver reads both files (a few
//! kilobytes; far cheaper than the handshake itself) and compares them with what it saw last;
//! on a change it loads the new pair. Comparing contents rather than modification times cannot
//! miss a rewrite within one timestamp tick. If the new files are unreadable, not PEM, or the
//! key does not match the certificate (a half-done rotation), it logs that once and keeps
//! serving the certificate it has, trying again when the files change once more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// PEM files of the serving certificate (with its chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot load TLS {what} from {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("bad TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
}

/// A TLS acceptor offering HTTP/2 and HTTP/1.1 with the certificate in `files`, following the
/// files as they change. Fails when the files cannot be loaded now.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ReloadingCert::new(files.clone(), provider.clone())?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS acceptor with a certificate made now and signed by itself, for `names` (DNS names or IP
/// addresses), as controller-runtime's secure metrics server makes one when it is given no
/// certificate: the connection is encrypted, and the caller is authenticated by its token, not
/// by the server's certificate.
pub fn self_signed_acceptor(names: &[String]) -> Result<TlsAcceptor, TlsError> {
    let generation = |e: rcgen::Error| TlsError::File {
        what: "self-signed certificate",
        path: "(generated in memory)".to_owned(),
        message: e.to_string(),
    };
    let certified = rcgen::generate_simple_self_signed(names.to_vec()).map_err(generation)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| {
        TlsError::File {
            what: "self-signed key",
            path: "(generated in memory)".to_owned(),
            message: e.to_string(),
        }
    })?;
    let key = CertifiedKey::from_der(vec![certified.cert.der().clone()], key, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The bytes of both files, or why a file could not be read.
type Contents = [Result<Vec<u8>, String>; 2];

fn read(files: &TlsFiles) -> Contents {
    // Follows symlinks: a Secret volume's files are symlinks into the current `..data`.
    [&files.cert_file, &files.key_file].map(|path| std::fs::read(path).map_err(|e| e.to_string()))
}

/// A certificate resolver that reloads its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// The contents last looked at, loaded or not, so a bad pair is reported once.
    seen: Contents,
}

impl ReloadingCert {
    /// Loads `files` now; fails if they are not a valid certificate and matching key.
    pub fn new(files: TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let seen = read(&files);
        let key = Arc::new(load(&files, &seen, &provider)?);
        Ok(Self {
            files,
            provider,
            current: Mutex::new(Current { key, seen }),
        })
    }

    /// The certificate to present now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let now = read(&self.files);
        if now != current.seen {
            let loaded = load(&self.files, &now, &self.provider);
            current.seen = now;
            match loaded {
                Ok(key) => {
                    info!(cert = %self.files.cert_file.display(), "serving certificate reloaded");
                    current.key = Arc::new(key);
                }
                Err(e) => warn!(
                    error = %e,
                    "the certificate files changed but cannot be used; still serving the previous certificate"
                ),
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Parses the chain and key read from `files` and checks that the key belongs to the first
/// certificate.
fn load(
    files: &TlsFiles,
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file_err = |what: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let [cert_pem, key_pem] = contents;
    let cert_pem = cert_pem
        .as_ref()
        .map_err(|e| file_err("certificate", &files.cert_file, e))?;
    let key_pem = key_pem
        .as_ref()
        .map_err(|e| file_err("private key", &files.key_file, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("certificate", &files.cert_file, &e))?;
    if certs.is_empty() {
        return Err(file_err(
            "certificate",
            &files.cert_file,
            &"no PEM certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| file_err("private key", &files.key_file, &e))?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}
