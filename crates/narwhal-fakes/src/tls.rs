//! A throwaway certificate authority for TLS tests: a CA made with rcgen on the spot,
//! and a server certificate it signs for `127.0.0.1` and `localhost` (or other names).
//! The client side trusts the CA through its PEM file (`ca_file` in the mail settings);
//! a second `TestCa` is "another CA" whose certificates that client must refuse.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the test CA could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    /// rcgen refused to make a key or certificate.
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Writing the CA file.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A CA and one server certificate it signed.
pub struct TestCa {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A CA and a server certificate for `127.0.0.1` and `localhost`.
    pub fn new() -> Result<Self, TestCaError> {
        Self::for_names(&["127.0.0.1", "localhost"])
    }

    /// A CA and a server certificate for these names (IP addresses become IP SANs).
    pub fn for_names(names: &[&str]) -> Result<Self, TestCaError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Narwhal test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;

        let mut server =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        server
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/name` and answers the path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> Result<PathBuf, TestCaError> {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// A rustls server configuration presenting the server certificate (ring provider,
    /// TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TestCaError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], key)?;
        Ok(Arc::new(config))
    }
}
