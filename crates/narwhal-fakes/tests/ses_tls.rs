//! The SES client over HTTPS: the fake SES served with a certificate from a throwaway
//! CA, trusted through `ca_file`; the same server is refused without it, and a plain
//! `http` endpoint that is not loopback is refused at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::Email;
use narwhal_fakes::{FakeAccount, FakeSes, TestCa};
use narwhal_mail::provider::{Content, MessageKey, RejectScope};
use narwhal_mail::ses::{SesClient, SesConfig, SesConfigError};
use narwhal_mail::{OutgoingMessage, Provider, SendOutcome};
use std::time::Duration;

const REGION: &str = "us-east-1";

fn msg(i: u64) -> OutgoingMessage {
    OutgoingMessage {
        key: MessageKey(i),
        from: Email::parse("campaign@example.org").unwrap(),
        to: Email::parse(&format!("voter{i}@example.com")).unwrap(),
        content: Content::Simple {
            subject: format!("Hello {i}"),
            text: Some("Please vote.".into()),
            html: None,
            headers: vec![],
        },
    }
}

fn config(fake: &FakeSes, account: &FakeAccount) -> SesConfig {
    let mut c = SesConfig::new("tls", REGION, account.credentials());
    c.endpoint = Some(fake.endpoint());
    c.request_timeout = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn sends_and_reads_the_quota_over_https_with_an_extra_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_ca(dir.path(), "ca.pem").unwrap();
    let account = FakeAccount::new("AKIDTLS", "secret-tls");
    let fake = FakeSes::start_tls(REGION, vec![account.clone()], ca.server_config().unwrap())
        .await
        .unwrap();
    assert!(fake.endpoint().starts_with("https://127.0.0.1:"));
    let mut c = config(&fake, &account);
    c.ca_file = Some(ca_file);
    let ses = SesClient::new(c).unwrap();
    assert!(ses.endpoint().starts_with("https://"));
    let batch: Vec<_> = (0..3).map(msg).collect();
    let out = ses.send_batch(&batch).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, SendOutcome::Accepted { .. })),
        "{out:?}"
    );
    assert_eq!(fake.ledger().len(), 3);
    let quota = ses.quota().await.unwrap();
    assert!(quota.is_some(), "GetAccount over https");
}

#[tokio::test]
async fn an_untrusted_certificate_sends_nothing() {
    let trusted = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = trusted.write_ca(dir.path(), "ca.pem").unwrap();
    let account = FakeAccount::new("AKIDTLS", "secret-tls");
    let fake = FakeSes::start_tls(
        REGION,
        vec![account.clone()],
        other.server_config().unwrap(),
    )
    .await
    .unwrap();
    for ca in [None, Some(ca_file)] {
        let mut c = config(&fake, &account);
        c.ca_file = ca;
        let out = SesClient::new(c).unwrap().send_batch(&[msg(1)]).await;
        match &out[0] {
            SendOutcome::Rejected {
                scope: RejectScope::Account,
                reason,
            } => assert!(reason.contains("certificate"), "{reason}"),
            other => panic!("the account is refused before anything is sent: {other:?}"),
        }
    }
    assert!(fake.ledger().is_empty());
}

#[tokio::test]
async fn plain_http_is_only_for_loopback() {
    let account = FakeAccount::new("AKIDTLS", "secret-tls");
    let mut c = SesConfig::new("tls", REGION, account.credentials());
    c.endpoint = Some("http://email.us-east-1.amazonaws.com".into());
    assert!(matches!(
        SesClient::new(c.clone()),
        Err(SesConfigError::HttpNotLocal(_))
    ));
    c.endpoint = None;
    let real = SesClient::new(c).unwrap();
    assert_eq!(real.endpoint(), "https://email.us-east-1.amazonaws.com");
}
