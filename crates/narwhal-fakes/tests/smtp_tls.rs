//! The SMTP provider over TLS against the sink with a throwaway CA: STARTTLS (with
//! AUTH, pipelining and the per-connection limit) and implicit TLS deliver over TLS;
//! a server without STARTTLS, a certificate from another CA and a certificate for
//! another name are refused without sending anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::Email;
use narwhal_fakes::smtp::{SinkTls, SmtpSink};
use narwhal_fakes::TestCa;
use narwhal_mail::provider::{Content, MessageKey, RejectScope};
use narwhal_mail::smtp::{SmtpConfig, SmtpConfigError, SmtpProvider, TlsMode};
use narwhal_mail::{OutgoingMessage, Provider, Secret, SendOutcome};
use std::path::PathBuf;

fn msg(i: u64) -> OutgoingMessage {
    OutgoingMessage {
        key: MessageKey(i),
        from: Email::parse("news@act.example.org").unwrap(),
        to: Email::parse(&format!("r{i}@example.org")).unwrap(),
        content: Content::Simple {
            subject: format!("Hello {i}"),
            text: Some("over TLS\n.and a dot".into()),
            html: None,
            headers: vec![],
        },
    }
}

/// A throwaway CA whose PEM file the client trusts (`ca_file`); the directory lives as
/// long as this does.
struct Trusted {
    ca: TestCa,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Trusted {
    fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::for_names(names).unwrap();
        let file = ca.write_ca(dir.path(), "ca.pem").unwrap();
        Self {
            ca,
            file,
            _dir: dir,
        }
    }

    /// A sink presenting `ca`'s certificate in `mode` (none: no STARTTLS offered).
    async fn sink(ca: &TestCa, mode: TlsMode) -> SmtpSink {
        let tls = match mode {
            TlsMode::None => SinkTls::None,
            TlsMode::StartTls => SinkTls::StartTls(ca.server_config().unwrap()),
            TlsMode::Implicit => SinkTls::Implicit(ca.server_config().unwrap()),
        };
        SmtpSink::start_with(tls).await.unwrap()
    }

    /// A client for `sink` in `mode`, trusting this CA.
    fn config(&self, sink: &SmtpSink, mode: TlsMode) -> SmtpConfig {
        let mut cfg = config(sink, mode);
        cfg.ca_file = Some(self.file.clone());
        cfg
    }
}

/// A client for `sink` in `mode`, trusting only the public roots.
fn config(sink: &SmtpSink, mode: TlsMode) -> SmtpConfig {
    let mut cfg = SmtpConfig::new("smtp:tls", "127.0.0.1", sink.addr().port());
    cfg.tls = mode;
    cfg.timeout = std::time::Duration::from_secs(5);
    cfg
}

const LOCAL: &[&str] = &["127.0.0.1", "localhost"];

fn all_accepted(out: &[SendOutcome]) -> bool {
    out.iter()
        .all(|o| matches!(o, SendOutcome::Accepted { .. }))
}

fn account_refusal(o: &SendOutcome) -> String {
    match o {
        SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason,
        } => reason.clone(),
        other => panic!("expected the account to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn starttls_with_auth_pipelining_and_the_connection_limit() {
    let t = Trusted::new(LOCAL);
    let sink = Trusted::sink(&t.ca, TlsMode::StartTls).await;
    sink.require_auth("bulk", "s3cret");
    let mut cfg = t.config(&sink, TlsMode::StartTls);
    cfg.credentials = Some(("bulk".into(), Secret::from("s3cret")));
    cfg.max_per_connection = 2;
    let p = SmtpProvider::new(cfg).unwrap();
    let batch: Vec<_> = (0..5).map(msg).collect();
    let out = p.send_batch(&batch).await;
    assert!(all_accepted(&out), "{out:?}");
    assert_eq!(sink.message_count(), 5);
    assert_eq!(
        sink.connection_count(),
        3,
        "two messages per TLS connection"
    );
    for m in sink.messages() {
        assert!(m.tls, "every message went over TLS");
        assert_eq!(m.auth_user.as_deref(), Some("bulk"));
        let data = String::from_utf8_lossy(&m.data);
        assert!(data.contains("\r\n.and a dot"), "{data}");
    }
    // The pooled TLS connection serves the next batch.
    let out = p.send_batch(&[msg(9)]).await;
    assert!(all_accepted(&out), "{out:?}");
    assert_eq!(sink.connection_count(), 3);
}

#[tokio::test]
async fn wrong_password_over_tls_refuses_the_account() {
    let t = Trusted::new(LOCAL);
    let sink = Trusted::sink(&t.ca, TlsMode::StartTls).await;
    sink.require_auth("bulk", "s3cret");
    let mut cfg = t.config(&sink, TlsMode::StartTls);
    cfg.credentials = Some(("bulk".into(), Secret::from("wrong")));
    let out = SmtpProvider::new(cfg)
        .unwrap()
        .send_batch(&[msg(1), msg(2)])
        .await;
    assert!(account_refusal(&out[0]).contains("authentication failed"));
    assert_eq!(out[0], out[1]);
    assert_eq!(sink.message_count(), 0);
    assert_eq!(
        sink.connection_count(),
        1,
        "refused once, not once per message"
    );
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let t = Trusted::new(LOCAL);
    let sink = Trusted::sink(&t.ca, TlsMode::Implicit).await;
    let p = SmtpProvider::new(t.config(&sink, TlsMode::Implicit)).unwrap();
    let out = p.send_batch(&[msg(1), msg(2)]).await;
    assert!(all_accepted(&out), "{out:?}");
    let got = sink.messages();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.tls));
}

#[tokio::test]
async fn a_server_without_starttls_is_never_used_in_the_clear() {
    let t = Trusted::new(LOCAL);
    let sink = Trusted::sink(&t.ca, TlsMode::None).await;
    let p = SmtpProvider::new(t.config(&sink, TlsMode::StartTls)).unwrap();
    let out = p.send_batch(&[msg(1), msg(2), msg(3)]).await;
    assert_eq!(out.len(), 3);
    let reason = account_refusal(&out[0]);
    assert!(reason.contains("does not offer STARTTLS"), "{reason}");
    assert!(out.iter().all(|o| o == &out[0]));
    assert_eq!(sink.message_count(), 0, "nothing sent in the clear");
    assert_eq!(sink.connection_count(), 1);
}

/// Sends one message and answers why the account was refused; nothing was delivered.
async fn refused(sink: &SmtpSink, cfg: SmtpConfig) -> String {
    let out = SmtpProvider::new(cfg).unwrap().send_batch(&[msg(1)]).await;
    assert_eq!(sink.message_count(), 0);
    account_refusal(&out[0])
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let t = Trusted::new(LOCAL);
    let other = TestCa::new().unwrap();
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let sink = Trusted::sink(&other, mode).await;
        let reason = refused(&sink, t.config(&sink, mode)).await;
        assert!(reason.contains("TLS with 127.0.0.1 failed"), "{reason}");
    }
    // Without the extra CA, the webpki roots do not know the test CA either.
    let sink = Trusted::sink(&t.ca, TlsMode::Implicit).await;
    let reason = refused(&sink, config(&sink, TlsMode::Implicit)).await;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let t = Trusted::new(&["relay.example.org"]);
    let sink = Trusted::sink(&t.ca, TlsMode::StartTls).await;
    let reason = refused(&sink, t.config(&sink, TlsMode::StartTls)).await;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[test]
fn auth_without_tls_is_refused_unless_loopback() {
    let mut cfg = SmtpConfig::new("smtp:x", "smtp.example.org", 587);
    cfg.credentials = Some(("u".into(), Secret::from("p")));
    assert!(matches!(
        SmtpProvider::new(cfg),
        Err(SmtpConfigError::AuthInClear { .. })
    ));
    let mut cfg = SmtpConfig::new("smtp:x", "smtp.example.org", 587);
    cfg.tls = TlsMode::StartTls;
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(matches!(
        SmtpProvider::new(cfg),
        Err(SmtpConfigError::Tls(_))
    ));
}
