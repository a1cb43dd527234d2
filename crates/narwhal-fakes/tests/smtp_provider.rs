//! The SMTP provider against the local sink: pipelining, connection reuse and its
//! limit, dot-stuffing, and throttling/rejection classified per recipient.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::Email;
use narwhal_fakes::smtp::{RecipientRule, SmtpSink};
use narwhal_mail::provider::{Content, MessageKey, RejectScope, ThrottleReason};
use narwhal_mail::smtp::{SmtpConfig, SmtpProvider};
use narwhal_mail::{OutgoingMessage, Provider, SendOutcome};

fn msg(i: u64, to: &str, text: &str) -> OutgoingMessage {
    OutgoingMessage {
        key: MessageKey(i),
        from: Email::parse("news@act.example.org").unwrap(),
        to: Email::parse(to).unwrap(),
        content: Content::Simple {
            subject: format!("Hello {i}"),
            text: Some(text.to_string()),
            html: None,
            headers: vec![],
        },
    }
}

fn provider(sink: &SmtpSink, per_conn: u32) -> SmtpProvider {
    let mut cfg = SmtpConfig::new("smtp:test", "127.0.0.1", sink.addr().port());
    cfg.max_per_connection = per_conn;
    SmtpProvider::new(cfg).unwrap()
}

#[tokio::test]
async fn sends_reuses_connections_and_keeps_dots() {
    let sink = SmtpSink::start().await.unwrap();
    let p = provider(&sink, 2);
    let batch: Vec<_> = (0..5)
        .map(|i| {
            msg(
                i,
                &format!("r{i}@example.org"),
                "line one\n.starts with a dot\nend",
            )
        })
        .collect();
    let out = p.send_batch(&batch).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, SendOutcome::Accepted { .. })),
        "{out:?}"
    );
    assert_eq!(sink.message_count(), 5);
    assert_eq!(sink.connection_count(), 3, "two messages per connection");
    let m = &sink.messages()[0];
    assert_eq!(m.recipients, vec!["r0@example.org"]);
    let data = String::from_utf8_lossy(&m.data);
    assert!(
        data.contains("\r\n.starts with a dot\r\n"),
        "dot-stuffed on the wire, unstuffed by the server: {data}"
    );
    assert!(data.contains("Subject: Hello 0"));
    // The pooled connection is reused by the next batch.
    let out = p.send_batch(&[msg(9, "r9@example.org", "x")]).await;
    assert!(matches!(out[0], SendOutcome::Accepted { .. }));
    assert_eq!(sink.connection_count(), 3);
}

#[tokio::test]
async fn throttling_and_rejections_are_per_recipient() {
    let sink = SmtpSink::start().await.unwrap();
    sink.set_rule("slow@example.org", RecipientRule::Throttle);
    sink.set_rule(
        "gone@example.org",
        RecipientRule::Reject(550, "5.1.1 Mailbox does not exist".into()),
    );
    let p = provider(&sink, 100);
    let out = p
        .send_batch(&[
            msg(1, "ok@example.org", "a"),
            msg(2, "slow@example.org", "b"),
            msg(3, "gone@example.org", "c"),
            msg(4, "ok2@example.org", "d"),
        ])
        .await;
    assert!(matches!(out[0], SendOutcome::Accepted { .. }), "{out:?}");
    assert_eq!(
        out[1],
        SendOutcome::Throttled {
            reason: ThrottleReason::Rate
        }
    );
    assert!(
        matches!(&out[2], SendOutcome::Rejected { scope: RejectScope::Message, reason } if reason.contains("550")),
        "{out:?}"
    );
    assert!(
        matches!(out[3], SendOutcome::Accepted { .. }),
        "the session recovers after a refusal: {out:?}"
    );
    let got: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m.recipients.clone())
        .collect();
    assert_eq!(got, vec!["ok@example.org", "ok2@example.org"]);
}

#[tokio::test]
async fn an_unreachable_server_is_transient_not_sent() {
    let sink = SmtpSink::start().await.unwrap();
    let port = sink.addr().port();
    drop(sink);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let p = SmtpProvider::new(SmtpConfig::new("smtp:gone", "127.0.0.1", port)).unwrap();
    let out = p.send_batch(&[msg(1, "a@example.org", "x")]).await;
    assert!(
        matches!(out[0], SendOutcome::TransientError { .. }),
        "{out:?}"
    );
}
