//! HTTPS terminated by Narwhal (rustls, ring provider), and the plain-HTTP listener
//! that answers every request with a permanent redirect to HTTPS.
//!
//! - [`load`] reads a PEM certificate chain and private key (what certbot writes:
//!   `fullchain.pem`, `privkey.pem`) and names the file and the problem when they are
//!   wrong, so a node fails at start-up rather than on the first visitor.
//! - [`TlsListener`] is an `axum::serve` listener: it accepts TCP connections and runs
//!   each TLS handshake in a task of its own, so a slow or hostile client never holds
//!   up the accept loop; only finished handshakes reach the server. Handshakes in
//!   flight are bounded ([`MAX_HANDSHAKES`]).
//! - [`redirect_router`] answers any method and path on plain HTTP with `308
//!   Permanent Redirect` to `https://HOST:PORT/path?query` (the request's host
//!   without its port, the configured HTTPS port, omitted when 443). 308 keeps the
//!   method and body, so an app that posts to `http://` by mistake is not turned into
//!   a GET.
//!
//! A proxy in front (nginx, a cloud load balancer) may terminate TLS instead: then
//! run Narwhal on plain HTTP behind it, with `cookie_secure` on; the proxy passes
//! `X-Forwarded-Proto` and `Host` through.

use axum::http::header::{HOST, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes in flight at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;
/// A handshake taking longer is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the right kind.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, safe to print (never the key).
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used together: {0}")]
    Config(String),
}

/// Reads the PEM certificate chain and private key into a server configuration
/// (TLS 1.2 and 1.3, ring provider, HTTP/1.1 over ALPN).
pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_err = |p: &Path, reason: String| TlsError::File {
        path: p.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| file_err(cert_pem, format!("cannot read a PEM certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_pem, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            cert_pem,
            "no CERTIFICATE in the file (expected the PEM chain, e.g. fullchain.pem)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| {
        file_err(
            key_pem,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An `axum::serve` listener that hands out TLS streams whose handshake finished.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// The accept loop; stopped when the listener is dropped.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Accepts on `listener`, handshaking with `config`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "https: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "https: handshake failed"),
                        Err(_) => tracing::debug!("https: handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The `https://` URL for a plain-HTTP request: same host, `https_port`, same path
/// and query. `None` without a usable `Host`.
pub fn https_url(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Option<String> {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    // Strip a port: "[::1]:8080" -> "[::1]", "example.org:80" -> "example.org".
    let name = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        host.split(':').next().unwrap_or(host)
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Some(format!("https://{name}{port}{path}"))
}

/// The plain-HTTP side when TLS is on: every request is redirected to HTTPS.
pub fn redirect_router(https_port: u16) -> axum::Router {
    axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        match https_url(&headers, &uri, https_port).and_then(|u| HeaderValue::from_str(&u).ok()) {
            Some(to) => {
                let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
                r.headers_mut().insert(LOCATION, to);
                r.headers_mut().insert(
                    axum::http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                r
            }
            None => bad_host(),
        }
    })
}

fn bad_host() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "This address works over HTTPS only; open it with https://\n",
    )
        .into_response()
}

/// Serves `app` over TLS on `listener` until `shutdown`, then finishes in-flight
/// requests.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let l = TlsListener::new(listener, config)?;
    axum::serve(l, app).with_graceful_shutdown(shutdown).await
}

/// Serves the redirect to HTTPS on plain-HTTP `listener` until `shutdown`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, redirect_router(https_port))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, target: &str, port: u16) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(
            HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("")),
        );
        https_url(&h, &target.parse().unwrap_or_default(), port)
    }

    #[test]
    fn redirect_keeps_host_path_and_query() {
        assert_eq!(
            url("vote.example.org", "/watch/?a=1&b=2", 443).as_deref(),
            Some("https://vote.example.org/watch/?a=1&b=2")
        );
        assert_eq!(
            url("vote.example.org:80", "/", 8443).as_deref(),
            Some("https://vote.example.org:8443/")
        );
        assert_eq!(
            url("[::1]:8080", "/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(url("evil.org/path", "/", 443), None);
        assert_eq!(url("a b", "/", 443), None);
    }
}
