//! `narwhal serve` with TLS: the real binary with an rcgen certificate serves the app
//! over HTTPS, and its plain-HTTP listener answers every request with a 308 to the
//! same host, the HTTPS port, path and query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `narwhal serve` with TLS on loopback, ports picked by the system.
fn serve(dir: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_narwhal"));
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
    ])
    .arg("--tls-cert")
    .arg(cert)
    .arg("--tls-key")
    .arg(key)
    .current_dir(dir)
    .env_remove("NARWHAL_DATABASE_URL")
    .env("NARWHAL_DATA_DIR", dir.join("data"));
    c
}

/// A raw HTTP/1.1 exchange; returns the status line and headers, and the body.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> (String, String) {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_and_http_redirects_with_308() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("fullchain.pem");
    let key_path = dir.path().join("privkey.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut child = serve(dir.path(), &cert_path, &key_path)
        .env("NARWHAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let https = line
        .split("https://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no https address in {line:?}"))
        .to_string();
    let http = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no http address in {line:?}"))
        .to_string();
    let https_port = https.rsplit(':').next().unwrap().to_string();

    // Plain HTTP: a permanent redirect that keeps the method, path and query.
    for (method, target) in [
        ("GET", "/watch/?pin=1&x=2"),
        ("POST", "/api/v1/turnout/reports"),
    ] {
        let tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
        let (head, _) = exchange(
            tcp,
            &format!("{method} {target} HTTP/1.1\r\nHost: vote.example.org:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 308"), "{head}");
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_else(|| panic!("no location in {head}"));
        assert_eq!(
            location,
            format!("https://vote.example.org:{https_port}{target}")
        );
    }

    // HTTPS: the real app, trusting only the test certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&https).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (head, body) = exchange(
        tls,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!body.is_empty());
    // The watcher app is served over HTTPS too, and a session cookie would be Secure.
    let tcp = tokio::net::TcpStream::connect(&https).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (head, body) = exchange(
        tls,
        "GET /watch/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("manifest.webmanifest"));
    // A plain-HTTP client talking to the HTTPS port gets nowhere (no cleartext there).
    let tcp = tokio::net::TcpStream::connect(&https).await.unwrap();
    let (head, _) = exchange(
        tcp,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn a_wrong_key_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("fullchain.pem");
    let key_path = dir.path().join("privkey.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, "not a key").unwrap();
    let out = serve(dir.path(), &cert_path, &key_path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("privkey.pem"), "{err}");
}
