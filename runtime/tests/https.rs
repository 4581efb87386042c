//! The HTTPS server with certificates that rotate while it serves: the test bed's CA issues
//! serving certificates, the files are replaced the way a Secret volume replaces them, and a
//! real TLS client looks at the certificate each handshake presents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use topolvm_runtime::endpoints::Health;
use topolvm_runtime::tls::{self, TlsFiles};
use topolvm_test_kit::pki::{CertFiles, Pki, tls_connector};

/// The serving files as the server sees them; each rotation renames new files over them, as
/// kubelet's atomic writer swaps a Secret volume's contents.
struct Served {
    files: TlsFiles,
}

impl Served {
    fn new(dir: &Path) -> Self {
        Self {
            files: TlsFiles {
                cert_file: dir.join("tls.crt"),
                key_file: dir.join("tls.key"),
            },
        }
    }

    fn install(&self, issued: &CertFiles) {
        replace(&issued.cert, &self.files.cert_file);
        replace(&issued.key, &self.files.key_file);
    }
}

fn replace(from: &Path, to: &Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).expect("staging");
    std::fs::rename(&staged, to).expect("renaming into place");
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("certificate")
}

/// Connects, completes a handshake, asks for `/healthz`, and returns the server's certificate.
async fn handshake(addr: std::net::SocketAddr, ca: &Path) -> (CertificateDer<'static>, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut stream = tls_connector(ca)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    (presented, String::from_utf8(response).expect("utf-8"))
}

#[tokio::test]
async fn rotated_certificates_are_served_and_bad_ones_are_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::new(&dir.path().join("pki"));
    let served = Served::new(dir.path());
    let first = pki.serving("first", &["localhost"], &[]);
    served.install(&first);

    let acceptor = tls::acceptor(&served.files).expect("acceptor");
    let listener = topolvm_runtime::http::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(topolvm_runtime::http::serve(
        listener,
        Some(acceptor),
        Health::new().routes(),
        shutdown.clone(),
    ));

    let (presented, response) = handshake(addr, pki.ca_file()).await;
    assert_eq!(presented, first_cert(&first.cert));
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");

    // cert-manager renews: the next handshake presents the new certificate.
    let second = pki.serving("second", &["localhost"], &[]);
    served.install(&second);
    assert_eq!(
        handshake(addr, pki.ca_file()).await.0,
        first_cert(&second.cert)
    );

    // A half-done rotation (the new certificate with the old key) and then garbage: the server
    // keeps presenting the last good certificate.
    let third = pki.serving("third", &["localhost"], &[]);
    replace(&third.cert, &served.files.cert_file);
    assert_eq!(
        handshake(addr, pki.ca_file()).await.0,
        first_cert(&second.cert),
        "a key that does not match is not used"
    );
    std::fs::write(&served.files.cert_file, "not a certificate").expect("write");
    assert_eq!(
        handshake(addr, pki.ca_file()).await.0,
        first_cert(&second.cert),
        "an unreadable certificate is not used"
    );

    // The rotation completes: the new pair is served.
    served.install(&third);
    let (presented, response) = handshake(addr, pki.ca_file()).await;
    assert_eq!(presented, first_cert(&third.cert));
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("served");
}

#[test]
fn files_that_cannot_be_used_at_start_are_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::new(&dir.path().join("pki"));
    let issued = pki.serving("server", &["localhost"], &[]);
    let missing: PathBuf = dir.path().join("missing.pem");
    let Err(err) = tls::acceptor(&TlsFiles {
        cert_file: missing,
        key_file: issued.key.clone(),
    }) else {
        panic!("a missing file must be refused")
    };
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let Err(err) = tls::acceptor(&TlsFiles {
        cert_file: issued.key.clone(),
        key_file: issued.key.clone(),
    }) else {
        panic!("a key is no certificate")
    };
    assert!(err.to_string().contains("certificate"), "{err}");
    let other = pki.serving("other", &["localhost"], &[]);
    let Err(err) = tls::acceptor(&TlsFiles {
        cert_file: issued.cert,
        key_file: other.key,
    }) else {
        panic!("a key of another certificate must be refused")
    };
    assert!(err.to_string().to_lowercase().contains("key"), "{err}");
}
