#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The SES v2 client against the fake SES server: the wire format, the limits, the
//! error classification and the faults, end to end over 127.0.0.1.

use narwhal_domain::Email;
use narwhal_fakes::{FakeAccount, FakeSes, Fault};
use narwhal_mail::provider::{
    decide, Content, Decision, Health, MessageKey, RejectScope, RetryContext, ThrottleReason,
};
use narwhal_mail::ses::{SesClient, SesConfig};
use narwhal_mail::sigv4::{self, AmzDate, Credentials, Scope, SigningInput};
use narwhal_mail::{OutgoingMessage, Provider, Secret, SendOutcome, ThrottleSpec};
use std::time::Duration;

const REGION: &str = "us-east-1";

fn client_for(fake: &FakeSes, credentials: Credentials, timeout: Duration) -> SesClient {
    let mut config = SesConfig::new("test", REGION, credentials);
    config.endpoint = Some(fake.endpoint());
    config.request_timeout = timeout;
    SesClient::new(config).unwrap()
}

fn client(fake: &FakeSes, account: &FakeAccount) -> SesClient {
    client_for(fake, account.credentials(), Duration::from_secs(5))
}

fn msg(i: u64, to: &str) -> OutgoingMessage {
    OutgoingMessage {
        key: MessageKey(i),
        from: Email::parse("campaign@example.org").unwrap(),
        to: Email::parse(to).unwrap(),
        content: Content::Simple {
            subject: format!("Hello {i}"),
            text: Some("Please vote.".into()),
            html: Some("<p>Please vote.</p>".into()),
            headers: vec![],
        },
    }
}

fn recipients(n: u64) -> Vec<OutgoingMessage> {
    (0..n)
        .map(|i| msg(i, &format!("voter{i}@example.com")))
        .collect()
}

fn ctx(other: bool) -> RetryContext {
    RetryContext {
        attempts: 1,
        max_attempts: 3,
        other_account_available: other,
    }
}

#[tokio::test]
async fn a_single_message_is_accepted_and_recorded() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client(&fake, &account);
    let out = ses.send_batch(&[msg(1, "ada@example.com")]).await;
    let [SendOutcome::Accepted {
        provider_message_id,
    }] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    let ledger = fake.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(&ledger[0].message_id, provider_message_id);
    assert_eq!(ledger[0].destination, "ada@example.com");
    assert_eq!(ledger[0].access_key_id, "AKIDMAIN");
    assert_eq!(ses.health(), Health::Healthy);
}

#[tokio::test]
async fn a_bulk_send_can_partly_succeed_and_throttled_entries_are_not_failures() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main").rate(4);
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    fake.reject_recipient("voter2@example.com");
    let ses = client(&fake, &account);
    let batch = recipients(6);
    let out = ses.send_batch(&batch).await;
    assert_eq!(out.len(), 6);
    let labels: Vec<&str> = out.iter().map(SendOutcome::label).collect();
    assert_eq!(
        labels,
        [
            "accepted",
            "accepted",
            "rejected",
            "accepted",
            "accepted",
            "throttled"
        ]
    );
    assert_eq!(
        out[5],
        SendOutcome::Throttled {
            reason: ThrottleReason::Rate
        }
    );
    assert!(matches!(
        decide(&out[5], &ctx(false)),
        Decision::WaitAndRetry { .. }
    ));
    assert_eq!(decide(&out[2], &ctx(true)), Decision::GiveUp);
    let mut delivered: Vec<String> = fake.ledger().into_iter().map(|a| a.destination).collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "voter0@example.com",
            "voter1@example.com",
            "voter3@example.com",
            "voter4@example.com"
        ]
    );
    // Every accepted outcome carries the id the fake recorded.
    for (o, m) in out.iter().zip(&batch) {
        if let SendOutcome::Accepted {
            provider_message_id,
        } = o
        {
            assert!(fake
                .ledger()
                .iter()
                .any(|a| &a.message_id == provider_message_id && a.destination == m.to.as_str()));
        }
    }
    // After a second the bucket is full again and the throttled one goes through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retry = ses.send_batch(&batch[5..]).await;
    assert_eq!(retry[0].label(), "accepted");
    assert!(fake.duplicates().is_empty());
}

#[tokio::test]
async fn single_sends_over_the_rate_or_the_daily_quota_are_throttled() {
    let fast = FakeAccount::new("AKIDRATE", "s1").rate(1);
    let small = FakeAccount::new("AKIDDAILY", "s2").daily(1);
    let fake = FakeSes::start(REGION, vec![fast.clone(), small.clone()])
        .await
        .unwrap();
    let ses = client(&fake, &fast);
    assert_eq!(
        ses.send_batch(&[msg(1, "a@example.com")]).await[0].label(),
        "accepted"
    );
    let out = ses.send_batch(&[msg(2, "b@example.com")]).await;
    assert_eq!(
        out[0],
        SendOutcome::Throttled {
            reason: ThrottleReason::Rate
        }
    );
    let ses = client(&fake, &small);
    assert_eq!(
        ses.send_batch(&[msg(3, "c@example.com")]).await[0].label(),
        "accepted"
    );
    let out = ses.send_batch(&[msg(4, "d@example.com")]).await;
    assert_eq!(
        out[0],
        SendOutcome::Throttled {
            reason: ThrottleReason::DailyQuota
        }
    );
    assert_eq!(decide(&out[0], &ctx(true)), Decision::FailOver);
    // Throttling does not make an account unhealthy.
    assert_eq!(ses.health(), Health::Healthy);
    assert_eq!(fake.ledger().len(), 2);
    assert_eq!(fake.stats().throttled, 2);
}

#[tokio::test]
async fn a_wrong_access_key_or_secret_is_refused_for_the_account() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account]).await.unwrap();

    let unknown = client_for(
        &fake,
        Credentials::new("AKIDWRONG", Secret::from("secret-main")),
        Duration::from_secs(5),
    );
    let out = unknown.send_batch(&recipients(3)).await;
    for o in &out {
        let SendOutcome::Rejected { scope, reason } = o else {
            panic!("{o:?}");
        };
        assert_eq!(*scope, RejectScope::Account);
        assert!(
            reason.starts_with("UnrecognizedClientException"),
            "{reason}"
        );
    }
    assert_eq!(decide(&out[0], &ctx(false)), Decision::Park);
    assert!(matches!(unknown.health(), Health::Down { .. }));
    let err = unknown.quota().await.unwrap_err();
    assert!(
        err.to_string().contains("UnrecognizedClientException"),
        "{err}"
    );

    let bad_secret = client_for(
        &fake,
        Credentials::new("AKIDMAIN", Secret::from("not-the-secret")),
        Duration::from_secs(5),
    );
    let out = bad_secret.send_batch(&[msg(1, "a@example.com")]).await;
    let SendOutcome::Rejected { scope, reason } = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(*scope, RejectScope::Account);
    assert!(reason.starts_with("SignatureDoesNotMatch"), "{reason}");
    assert!(fake.ledger().is_empty());
    assert_eq!(fake.stats().auth_failures, 3);
}

#[tokio::test]
async fn an_outage_is_a_transient_error() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client(&fake, &account);
    fake.set_fault(Fault::Down);
    let out = ses.send_batch(&recipients(2)).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, SendOutcome::TransientError { .. })),
        "{out:?}"
    );
    assert!(matches!(
        decide(&out[0], &ctx(false)),
        Decision::RetrySame { .. }
    ));
    fake.set_fault(Fault::None);
    assert_eq!(ses.send_batch(&recipients(1)).await[0].label(), "accepted");

    // Nobody listening at all: nothing was sent, so it is transient too.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = SesConfig::new("gone", REGION, account.credentials());
    config.endpoint = Some(format!("http://{closed}"));
    let gone = SesClient::new(config).unwrap();
    let out = gone.send_batch(&recipients(1)).await;
    assert!(
        matches!(out[0], SendOutcome::TransientError { .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_timeout_after_the_provider_accepted_is_ambiguous() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client_for(&fake, account.credentials(), Duration::from_millis(300));
    fake.set_account_fault(
        "AKIDMAIN",
        Fault::TimeoutAfterAccept(Duration::from_secs(2)),
    );
    let out = ses.send_batch(&recipients(3)).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, SendOutcome::Ambiguous { .. })),
        "{out:?}"
    );
    assert_eq!(decide(&out[0], &ctx(true)), Decision::Park);
    // The fake did accept them: resending blindly would duplicate.
    assert_eq!(fake.ledger().len(), 3);
}

#[tokio::test]
async fn latency_and_forced_throttling_on_command() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client(&fake, &account);
    fake.set_fault(Fault::Latency(Duration::from_millis(200)));
    let started = std::time::Instant::now();
    assert_eq!(ses.send_batch(&recipients(1)).await[0].label(), "accepted");
    assert!(started.elapsed() >= Duration::from_millis(200));
    fake.set_fault(Fault::ThrottleDaily);
    let out = ses.send_batch(&recipients(2)).await;
    assert!(out.iter().all(|o| *o
        == SendOutcome::Throttled {
            reason: ThrottleReason::DailyQuota
        }));
    fake.set_fault(Fault::ThrottleRate);
    let out = ses.send_batch(&recipients(1)).await;
    assert_eq!(
        out[0],
        SendOutcome::Throttled {
            reason: ThrottleReason::Rate
        }
    );
}

#[tokio::test]
async fn the_quota_is_read_from_get_account() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main")
        .rate(14)
        .daily(200);
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client(&fake, &account);
    assert_eq!(ses.send_batch(&recipients(2)).await.len(), 2);
    let q = ses.quota().await.unwrap().unwrap();
    assert_eq!(q.max_send_rate, 14.0);
    assert_eq!(q.max_24_hour_send, 200.0);
    assert_eq!(q.sent_last_24_hours, 2.0);
    let spec = ThrottleSpec::from_reported(q.max_send_rate, q.max_24_hour_send).unwrap();
    assert_eq!(spec.to_string(), "14/s,daily=200");
}

#[tokio::test]
async fn raw_messages_over_40_mb_are_rejected() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let ses = client(&fake, &account);
    let mut small = msg(1, "a@example.com");
    small.content = Content::Raw(b"Subject: hi\r\n\r\nhello\r\n".to_vec());
    let mut big = msg(2, "b@example.com");
    // 31.5 MB becomes 42 MB in base64, over the limit.
    big.content = Content::Raw(vec![b'a'; 31_500_000]);
    let out = ses.send_batch(&[small, big]).await;
    assert_eq!(out[0].label(), "accepted");
    let SendOutcome::Rejected { scope, reason } = &out[1] else {
        panic!("{:?}", out[1]);
    };
    assert_eq!(*scope, RejectScope::Message);
    assert!(reason.starts_with("MessageRejected"), "{reason}");
}

/// Requests the client would never make, signed by hand.
async fn raw_request(
    fake: &FakeSes,
    account: &FakeAccount,
    path: &str,
    body: serde_json::Value,
) -> (u16, String, String) {
    let body = serde_json::to_vec(&body).unwrap();
    let host = fake.addr().to_string();
    let date = AmzDate::now();
    let headers = [("host", host.as_str()), ("x-amz-date", date.as_str())];
    let signed = sigv4::sign(
        &SigningInput {
            method: "POST",
            path,
            query: &[],
            headers: &headers,
            payload: &body,
        },
        &account.credentials(),
        Scope {
            region: REGION,
            service: "ses",
        },
        &date,
    );
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", fake.endpoint()))
        .header("x-amz-date", date.as_str())
        .header("authorization", signed.authorization)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, resp.text().await.unwrap())
}

#[tokio::test]
async fn more_than_50_destinations_or_entries_is_a_bad_request() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let to: Vec<String> = (0..51).map(|i| format!("v{i}@example.com")).collect();
    let simple =
        serde_json::json!({"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}});
    let (status, kind, body) = raw_request(
        &fake,
        &account,
        "/v2/email/outbound-emails",
        serde_json::json!({"FromEmailAddress": "c@example.org", "Destination": {"ToAddresses": to}, "Content": simple}),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "BadRequestException"),
        "{body}"
    );
    assert!(body.contains("exceeds 50"), "{body}");
    let fifty: Vec<String> = to[..50].to_vec();
    let (status, _, body) = raw_request(
        &fake,
        &account,
        "/v2/email/outbound-emails",
        serde_json::json!({"FromEmailAddress": "c@example.org", "Destination": {"ToAddresses": fifty}, "Content": simple}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.ledger().len(), 50);

    let entries: Vec<serde_json::Value> = (0..51)
        .map(|i| serde_json::json!({"Destination": {"ToAddresses": [format!("w{i}@example.com")]}}))
        .collect();
    let (status, kind, _) = raw_request(
        &fake,
        &account,
        "/v2/email/outbound-bulk-emails",
        serde_json::json!({
            "FromEmailAddress": "c@example.org",
            "DefaultContent": {"Template": {"TemplateName": "t", "TemplateData": "{}"}},
            "BulkEmailEntries": entries,
        }),
    )
    .await;
    assert_eq!((status, kind.as_str()), (400, "BadRequestException"));
    let (status, kind, _) = raw_request(
        &fake,
        &account,
        "/v2/email/outbound-bulk-emails",
        serde_json::json!({"FromEmailAddress": "c@example.org", "DefaultContent": {}, "BulkEmailEntries": [entries[0]]}),
    )
    .await;
    assert_eq!((status, kind.as_str()), (400, "BadRequestException"));
}

#[tokio::test]
async fn unsigned_or_tampered_requests_are_refused() {
    let account = FakeAccount::new("AKIDMAIN", "secret-main");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await.unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v2/email/account", fake.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        resp.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    let resp = http
        .get(format!("{}/v2/email/account", fake.endpoint()))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.headers()["x-amzn-errortype"], "IncompleteSignature");

    // A body changed after signing no longer matches the signature.
    let date = AmzDate::now();
    let host = fake.addr().to_string();
    let headers = [("host", host.as_str()), ("x-amz-date", date.as_str())];
    let signed = sigv4::sign(
        &SigningInput {
            method: "POST",
            path: "/v2/email/outbound-emails",
            query: &[],
            headers: &headers,
            payload: b"{}",
        },
        &account.credentials(),
        Scope {
            region: REGION,
            service: "ses",
        },
        &date,
    );
    let resp = http
        .post(format!("{}/v2/email/outbound-emails", fake.endpoint()))
        .header("x-amz-date", date.as_str())
        .header("authorization", signed.authorization)
        .body("{\"tampered\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(resp.headers()["x-amzn-errortype"], "SignatureDoesNotMatch");
}
