//! The test bed's own certificate authority: serving certificates for the API server, client
//! certificates that carry each identity (user name = CN, groups = O), and the service account
//! signing key. Files are PEM, written into the cluster's directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The cluster CA, able to issue more certificates.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
}

impl Pki {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("creating the PKI directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "topolvm-rs test bed CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-signing the CA");
        let ca_file = dir.join("ca.crt");
        write(&ca_file, &ca.pem());
        Self {
            dir: dir.to_owned(),
            ca,
            ca_file,
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    fn issue(&self, name: &str, mut params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("signing a certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
        files
    }

    /// A serving certificate for `dns_names` and 127.0.0.1 (plus `extra_ips`).
    pub fn serving(&self, name: &str, dns_names: &[&str], extra_ips: &[IpAddr]) -> CertFiles {
        let mut params = CertificateParams::new(
            dns_names
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("serving certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .extend(extra_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate for user `user` in `groups` (Kubernetes reads CN and O).
    pub fn client(&self, file_name: &str, user: &str, groups: &[&str]) -> CertFiles {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_name, params)
    }

    /// A key pair for signing service account tokens: (private key, public key), both PEM.
    pub fn service_account_keys(&self) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let (private, public) = (self.dir.join("sa.key"), self.dir.join("sa.pub"));
        write(&private, &key.serialize_pem());
        write(&public, &key.public_key_pem());
        (private, public)
    }
}

/// A TLS client that trusts only the CA certificate in `ca_file` (PEM).
pub fn tls_connector(ca_file: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca_file)
        .unwrap_or_else(|e| panic!("reading the CA {ca_file:?}: {e}"));
    roots.add(ca).expect("a usable CA certificate");
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
}

/// Writes a kubeconfig for `server` that authenticates with `client`.
/// A kubeconfig that authenticates with a bearer `token` (a ServiceAccount's).
pub fn write_token_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str, user: &str) {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test-bed", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test-bed", "user": user}}],
        "current-context": user,
    });
    let yaml = serde_yaml::to_string(&config).expect("kubeconfig YAML");
    write(path, &yaml);
}

pub fn write_kubeconfig(path: &Path, server: &str, ca: &Path, client: &CertFiles, user: &str) {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test-bed", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"client-certificate": client.cert, "client-key": client.key}}],
        "contexts": [{"name": user, "context": {"cluster": "test-bed", "user": user}}],
        "current-context": user,
    });
    let yaml = serde_yaml::to_string(&config).expect("kubeconfig YAML");
    write(path, &yaml);
}
