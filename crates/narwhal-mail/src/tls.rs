//! TLS client settings shared by the SMTP provider and the SES client.
//!
//! Certificates are verified against the Mozilla roots compiled in (`webpki-roots`),
//! plus, when configured, the certificates of one extra PEM file: the CA of a private
//! relay, or a throwaway CA in tests. There is no switch to skip verification: a relay
//! with its own certificate authority is trusted by naming that CA's file
//! (`ca_file`), which keeps the check on for everything else. The crypto provider is
//! ring, passed explicitly, so nothing depends on a process-wide default.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The extra CA file could not be read or held no certificate.
    #[error("CA file {path:?}: {message}")]
    CaFile {
        /// The file named in the settings.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The root store: webpki roots plus every certificate in `extra_ca` (PEM).
pub fn root_store(extra_ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let ca_err = |message: String| TlsConfigError::CaFile {
            path: path.to_path_buf(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// A client configuration verifying servers against [`root_store`], with the ring
/// provider and TLS 1.2/1.3.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsConfigError> {
    let roots = root_store(extra_ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("127.8.0.2"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("smtp.example.org"));
        assert!(!is_loopback("localhost.example.org"));
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("narwhal-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).err().unwrap();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let missing = dir.join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsConfigError::CaFile { .. })
        ));
        assert!(client_config(None).is_ok());
    }
}
