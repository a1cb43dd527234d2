#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bounces and complaints on both backends: SNS signatures (forged, unsigned, untrusted
//! certificate URLs refused), replays, consent and suppression effects that later blasts
//! honour, the transient-bounce threshold in any order, and real-looking DSNs.

#[path = "support/sns.rs"]
mod sns_support;

use narwhal_domain::{Email, PersonDraft, PersonId, SegmentFilter};
use narwhal_mail::feedback::sns::{CertHosts, SnsError, SnsVerifier};
use narwhal_mail::feedback::{
    Feedback, FeedbackError, FeedbackKind, FeedbackState, TransientPolicy,
};
use narwhal_mail::unsubscribe::UnsubscribeSigner;
use narwhal_people::Hub;
use narwhal_store::blasts::{BlastContent, BlastId, BlastTarget, NewBlast, Outcome};
use narwhal_store::test_support::TestDb;
use narwhal_store::Store;
use serde_json::json;
use sns_support::{ses_bounce, ses_complaint, FakeSns};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-feedback";
const SIGNER_KEY: &[u8] = b"feedback-test-unsubscribe-key-0123456789";

fn signer() -> UnsubscribeSigner {
    UnsubscribeSigner::new(SIGNER_KEY).unwrap()
}

fn service(store: &Store, fake: &FakeSns, policy: TransientPolicy) -> Feedback {
    let verifier = SnsVerifier::new(
        CertHosts::Prefixes(vec![fake.base.clone()]),
        vec![TOPIC.into()],
    );
    Feedback::new(store.clone(), Arc::new(verifier), Some(signer()), policy)
}

async fn people(store: &Store, emails: &[&str]) -> Vec<PersonId> {
    let drafts: Vec<PersonDraft> = emails
        .iter()
        .map(|e| {
            serde_json::from_value(
                json!({"emails": [e], "tags": ["volunteer"], "email_consent": "subscribed"}),
            )
            .unwrap()
        })
        .collect();
    Hub::new(store.clone())
        .upsert_batch(drafts, "test", "test", false)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for e in emails {
        let hits = store.search_people(e, None, 5).await.unwrap();
        ids.push(hits[0].id);
    }
    ids
}

async fn consent(store: &Store, p: PersonId) -> String {
    store.get_person(p).await.unwrap().row.email_consent
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

/// A draft blast to everyone tagged volunteer.
async fn volunteer_blast(store: &Store, keep_message_ids: bool) -> BlastId {
    store
        .create_blast(&NewBlast {
            name: "GOTV".into(),
            target: BlastTarget::Filter(
                SegmentFilter::parse(&json!({"tag": "volunteer"})).unwrap(),
            ),
            content: BlastContent::Inline {
                subject: "Hi".into(),
                text: Some("Vote".into()),
                html: None,
            },
            from_email: email("team@campaign.example"),
            keep_message_ids,
        })
        .await
        .unwrap()
}

/// A blast to everyone tagged volunteer, sent (in the ledger) with SES-style message
/// ids `ses-<person>`; returns the blast id.
async fn sent_blast(store: &Store) -> BlastId {
    let id = volunteer_blast(store, true).await;
    store.materialize_recipients(id).await.unwrap();
    let claim = store
        .claim_recipients(id, None, 1000, 60_000)
        .await
        .unwrap();
    let account = store.mail_account_id("ses-a").await.unwrap();
    let outcomes: Vec<_> = claim
        .recipients
        .iter()
        .map(|r| {
            (
                r.person_id,
                Outcome::Sent {
                    account,
                    message_id: Some(ses_id(r.person_id)),
                },
            )
        })
        .collect();
    store.record_outcomes(&claim, &outcomes).await.unwrap();
    id
}

fn ses_id(p: PersonId) -> String {
    format!(
        "0100018f3b5c1d2e-8c3e4f5a-1b2c-4d5e-9f0a-{:012x}-000000",
        p.0
    )
}

async fn forged_unsigned_and_untrusted_are_refused(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(store, &["ada@example.com"]).await;
    let good = fake.notification(
        "m-1",
        TOPIC,
        &ses_bounce(
            "Permanent",
            "x-1",
            "ada@example.com",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    // Tampered: the signed body, another victim.
    let forged = good.replace("ada@example.com", "bob@example.com");
    assert!(matches!(
        f.ingest_sns(forged.as_bytes()).await,
        Err(FeedbackError::Sns(SnsError::BadSignature))
    ));
    // A version 2 signature presented as version 1.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["SignatureVersion"] = json!("1");
    assert!(matches!(
        f.ingest_sns(v.to_string().as_bytes()).await,
        Err(FeedbackError::Sns(SnsError::BadSignature))
    ));
    // Unsigned.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v.as_object_mut().unwrap().remove("Signature");
    let e = f.ingest_sns(v.to_string().as_bytes()).await.unwrap_err();
    assert_eq!(e.code(), "unsigned_notification");
    // A certificate from a URL outside the policy is never fetched.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["SigningCertURL"] = json!("http://127.0.0.2:9/cert.pem");
    let e = f.ingest_sns(v.to_string().as_bytes()).await.unwrap_err();
    assert_eq!(e.code(), "untrusted_certificate_url");
    // Another topic.
    let other = fake.notification("m-2", "arn:aws:sns:us-east-1:999:other", "{}", 2);
    assert_eq!(
        f.ingest_sns(other.as_bytes()).await.unwrap_err().code(),
        "unknown_topic"
    );
    // Nothing was stored or changed by any of them.
    assert!(store.unprocessed_feedback(10).await.unwrap().is_empty());
    assert_eq!(consent(store, ids[0]).await, "subscribed");
    assert!(!store
        .is_suppressed(&email("ada@example.com"))
        .await
        .unwrap());
    // The genuine one works, and the certificate was fetched once for all of them.
    let done = f.ingest_sns(good.as_bytes()).await.unwrap();
    assert_eq!(done.state, FeedbackState::Processed);
    assert_eq!(consent(store, ids[0]).await, "bounced");
    let again = fake.notification(
        "m-3",
        TOPIC,
        &ses_complaint("x-3", "ada@example.com", "2026-11-26T11:05:00.000Z"),
        1,
    );
    // Version 1 (SHA-1) verifies too.
    f.ingest_sns(again.as_bytes()).await.unwrap();
    assert_eq!(consent(store, ids[0]).await, "complained");
    assert_eq!(
        fake.cert_fetches.load(Ordering::SeqCst),
        1,
        "the certificate is cached"
    );
}

async fn bounces_and_complaints_flip_consent_suppress_and_count_on_the_blast(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(
        store,
        &["ada@example.com", "bob@example.com", "cy@example.com"],
    )
    .await;
    let blast = sent_blast(store).await;
    let bounce = fake.notification(
        "sns-b",
        TOPIC,
        &ses_bounce(
            "Permanent",
            &ses_id(ids[0]),
            "Ada@Example.com",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    let complaint = fake.notification(
        "sns-c",
        TOPIC,
        &ses_complaint(
            &ses_id(ids[1]),
            "bob@example.com",
            "2026-11-26T11:01:00.000Z",
        ),
        2,
    );
    let done = f.ingest_sns(bounce.as_bytes()).await.unwrap();
    let applied = done.applied.unwrap();
    assert_eq!(
        (
            applied.recorded,
            applied.consent_changed,
            applied.suppressed,
            applied.matched_blast
        ),
        (1, 1, 1, 1)
    );
    f.ingest_sns(complaint.as_bytes()).await.unwrap();
    assert_eq!(consent(store, ids[0]).await, "bounced");
    assert_eq!(consent(store, ids[1]).await, "complained");
    assert_eq!(consent(store, ids[2]).await, "subscribed");
    assert!(store
        .suppression_reason(&email("ada@example.com"))
        .await
        .unwrap()
        .unwrap()
        .starts_with("bounce: permanent"));
    assert!(store
        .suppression_reason(&email("bob@example.com"))
        .await
        .unwrap()
        .unwrap()
        .starts_with("complaint: abuse"));
    let counts = store.blast_feedback(blast).await.unwrap();
    assert_eq!((counts.bounced, counts.complained), (1, 1));
    let history = |p: PersonId| async move {
        store
            .audit_log(Some(("person", &p.0.to_string())), None, 100)
            .await
            .unwrap()
            .len()
    };
    let before = (history(ids[0]).await, history(ids[1]).await);
    // Replays (SNS retries the same MessageId) change nothing.
    for body in [&bounce, &complaint] {
        let again = f.ingest_sns(body.as_bytes()).await.unwrap();
        assert!(again.duplicate);
        assert!(again.applied.is_none());
    }
    // The same bounce through another topic subscription (another MessageId): recorded once.
    let copy = fake.notification(
        "sns-b-copy",
        TOPIC,
        &ses_bounce(
            "Permanent",
            &ses_id(ids[0]),
            "ada@example.com",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    let dup = f
        .ingest_sns(copy.as_bytes())
        .await
        .unwrap()
        .applied
        .unwrap();
    assert_eq!((dup.recorded, dup.duplicates), (0, 1));
    assert_eq!((history(ids[0]).await, history(ids[1]).await), before);
    assert_eq!(store.blast_feedback(blast).await.unwrap(), counts);
    // A later blast leaves both out.
    let next = volunteer_blast(store, false).await;
    assert_eq!(store.materialize_recipients(next).await.unwrap(), 1);
    let claim = store
        .claim_recipients(next, None, 100, 60_000)
        .await
        .unwrap();
    let got: Vec<PersonId> = claim.recipients.iter().map(|r| r.person_id).collect();
    assert_eq!(got, vec![ids[2]]);
}

async fn complaint_and_bounce_in_either_order_end_the_same(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(store, &["one@example.com", "two@example.com"]).await;
    let at = "2026-11-26T11:00:00.000Z";
    let msgs = |who: &str, n: &str| {
        (
            fake.notification(
                &format!("{n}-b"),
                TOPIC,
                &ses_bounce("Permanent", &format!("{n}-m"), who, at),
                2,
            ),
            fake.notification(
                &format!("{n}-c"),
                TOPIC,
                &ses_complaint(&format!("{n}-m"), who, at),
                2,
            ),
        )
    };
    let (b1, c1) = msgs("one@example.com", "1");
    let (b2, c2) = msgs("two@example.com", "2");
    for body in [&b1, &c1, &c2, &b2] {
        f.ingest_sns(body.as_bytes()).await.unwrap();
    }
    for (p, e) in [(ids[0], "one@example.com"), (ids[1], "two@example.com")] {
        assert_eq!(consent(store, p).await, "complained", "{e}");
        assert!(
            store
                .suppression_reason(&email(e))
                .await
                .unwrap()
                .unwrap()
                .starts_with("complaint"),
            "{e}"
        );
    }
}

async fn transient_bounces_suppress_at_the_threshold_in_any_order(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let policy = TransientPolicy {
        threshold: 3,
        window_ms: 7 * 86_400_000,
    };
    let f = service(store, &fake, policy);
    let ids = people(store, &["soft@example.com", "spread@example.com"]).await;
    let send = |who: &'static str, n: u32, day: u32, kind: &'static str| {
        let body = fake.notification(
            &format!("{who}-{n}"),
            TOPIC,
            &ses_bounce(
                kind,
                &format!("{who}-msg-{n}"),
                &format!("{who}@example.com"),
                &format!("2026-11-{day:02}T10:00:00.000Z"),
            ),
            2,
        );
        let f = f.clone();
        async move { f.ingest_sns(body.as_bytes()).await.unwrap() }
    };
    // Days 10 and 16 first (two within the window): not yet.
    send("soft", 1, 16, "Transient").await;
    send("soft", 2, 10, "Undetermined").await;
    assert!(!store
        .is_suppressed(&email("soft@example.com"))
        .await
        .unwrap());
    // A third on day 12, arriving last: 10, 12, 16 fit in 7 days.
    send("soft", 3, 12, "Transient").await;
    let reason = store
        .suppression_reason(&email("soft@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert!(reason.starts_with("transient bounces: 3"), "{reason}");
    // Transient bounces never change consent.
    assert_eq!(consent(store, ids[0]).await, "subscribed");
    // Three spread over 20 days: never three within 7.
    for (n, day) in [(1, 1), (2, 9), (3, 20)] {
        send("spread", n, day, "Transient").await;
    }
    assert!(!store
        .is_suppressed(&email("spread@example.com"))
        .await
        .unwrap());
    assert_eq!(
        store
            .feedback_events_for(&email("spread@example.com"))
            .await
            .unwrap()
            .len(),
        3
    );
    // A permanent bounce then outranks the transient reason.
    send("soft", 4, 20, "Permanent").await;
    assert!(store
        .suppression_reason(&email("soft@example.com"))
        .await
        .unwrap()
        .unwrap()
        .starts_with("bounce"));
    assert_eq!(consent(store, ids[0]).await, "bounced");
}

async fn subscriptions_are_confirmed_only_at_trusted_urls(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let good = fake.subscription("sub-1", TOPIC, &format!("{}confirm?Token=abc", fake.base));
    let done = f.ingest_sns(good.as_bytes()).await.unwrap();
    assert_eq!(done.state, FeedbackState::Processed);
    assert_eq!(
        fake.confirmations.lock().unwrap().clone(),
        vec!["/confirm?Token=abc".to_string()]
    );
    // Signed, but its SubscribeURL points elsewhere: recorded, refused, not fetched.
    let bad = fake.subscription("sub-2", TOPIC, "http://127.0.0.2:9/confirm?Token=x");
    let e = f.ingest_sns(bad.as_bytes()).await.unwrap_err();
    assert_eq!(e.code(), "untrusted_certificate_url");
    assert_eq!(fake.confirmations.lock().unwrap().len(), 1);
    // A replay of the confirmed one does not confirm again.
    assert!(f.ingest_sns(good.as_bytes()).await.unwrap().duplicate);
    assert_eq!(fake.confirmations.lock().unwrap().len(), 1);
}

/// A Postfix-style bounce of one of our messages, with the original headers returned.
fn postfix_dsn(to: &str, status: &str, diagnostic: &str, list_unsubscribe: &str) -> String {
    format!(
        "Return-Path: <>\r\n\
Received: by mx.example.net (Postfix) id 3F2A81C0; Thu, 26 Nov 2026 11:02:03 +0000 (UTC)\r\n\
Date: Thu, 26 Nov 2026 11:02:03 +0000 (UTC)\r\n\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
To: bounces@campaign.example\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"3F2A81C0.1764154923/mx.example.net\"\r\n\
Message-Id: <20261126110203.3F2A81C0@mx.example.net>\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--3F2A81C0.1764154923/mx.example.net\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is the mail system at host mx.example.net.\r\n\
\r\n\
I'm sorry to have to inform you that your message could not\r\n\
be delivered to one or more recipients.\r\n\
\r\n\
<{to}>: host mail.example.org[203.0.113.5] said: {diagnostic}\r\n\
\r\n\
--3F2A81C0.1764154923/mx.example.net\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
X-Postfix-Queue-ID: 3F2A81C0\r\n\
X-Postfix-Sender: rfc822; bounces@campaign.example\r\n\
Arrival-Date: Thu, 26 Nov 2026 11:02:01 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; {to}\r\n\
Original-Recipient: rfc822;{to}\r\n\
Action: failed\r\n\
Status: {status}\r\n\
Remote-MTA: dns; mail.example.org\r\n\
Diagnostic-Code: smtp; {diagnostic}\r\n\
\r\n\
--3F2A81C0.1764154923/mx.example.net\r\n\
Content-Description: Undelivered Message Headers\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: Friends of Ada <team@campaign.example>\r\n\
To: <{to}>\r\n\
Subject: Polls close at 7:30pm\r\n\
Message-ID: <42.1234@campaign.example>\r\n\
List-Unsubscribe: {list_unsubscribe}\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
\r\n\
--3F2A81C0.1764154923/mx.example.net--\r\n"
    )
}

/// An Exchange-style report: several recipients, one delayed, base64 status part.
fn exchange_dsn(failed: &str, delayed: &str) -> String {
    use base64::Engine;
    let status = format!(
        "Reporting-MTA: dns;EX01.corp.example.com\r\nReceived-From-MTA: dns;relay.campaign.example\r\n\r\n\
Final-Recipient: rfc822;{failed}\r\nAction: failed\r\nStatus: 5.2.1\r\nDiagnostic-Code: smtp;550 5.2.1 Mailbox disabled for this recipient\r\n\r\n\
Final-Recipient: rfc822;{delayed}\r\nAction: delayed\r\nStatus: 4.4.7\r\n"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(status);
    format!(
        "From: postmaster@corp.example.com\nTo: bounces@campaign.example\nDate: Thu, 26 Nov 2026 12:00:00 +0000\n\
Subject: Undeliverable: Polls close at 7:30pm\nContent-Type: multipart/mixed; boundary=\"outer\"\nMIME-Version: 1.0\n\n\
--outer\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"inner\"\n\n\
--inner\nContent-Type: text/plain\n\nDelivery has failed to these recipients or groups.\n\
--inner\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n{b64}\n--inner--\n--outer--\n"
    )
}

async fn dsns_bounce_and_count_like_ses_feedback(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(
        store,
        &[
            "gone@example.org",
            "full@example.org",
            "later@corp.example.com",
            "off@corp.example.com",
        ],
    )
    .await;
    let blast = sent_blast(store).await;
    let token = signer().token(blast.0, ids[0].0);
    let lu =
        format!("<https://act.campaign.example/u/{token}>, <mailto:unsubscribe@campaign.example>");
    let raw = postfix_dsn("gone@example.org", "5.1.1", "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown in virtual mailbox table", &lu);
    let d = narwhal_mail::feedback::dsn::parse_dsn(raw.as_bytes()).unwrap();
    assert_eq!(d.recipients.len(), 1);
    assert_eq!(d.reporting_mta.as_deref(), Some("mx.example.net"));
    assert_eq!(
        d.original_message_id.as_deref(),
        Some("<42.1234@campaign.example>")
    );
    let done = f.ingest_dsn(raw.as_bytes()).await.unwrap();
    assert_eq!(
        done.applied.unwrap().matched_blast,
        1,
        "the returned headers' token names the blast"
    );
    assert_eq!(consent(store, ids[0]).await, "bounced");
    assert!(store
        .is_suppressed(&email("gone@example.org"))
        .await
        .unwrap());
    assert_eq!(store.blast_feedback(blast).await.unwrap().bounced, 1);
    // The same report again (same Message-Id): nothing.
    assert!(f.ingest_dsn(raw.as_bytes()).await.unwrap().duplicate);
    // A full mailbox (4.2.2) is transient: counted, not suppressed yet.
    let full = postfix_dsn(
        "full@example.org",
        "4.2.2",
        "452 4.2.2 Mailbox full",
        "<https://act.campaign.example/u/forged>",
    )
    .replace("3F2A81C0@mx", "3F2A81C1@mx");
    f.ingest_dsn(full.as_bytes()).await.unwrap();
    assert_eq!(consent(store, ids[1]).await, "subscribed");
    assert!(!store
        .is_suppressed(&email("full@example.org"))
        .await
        .unwrap());
    let ev = store
        .feedback_events_for(&email("full@example.org"))
        .await
        .unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].0, ev[0].2),
        (FeedbackKind::TransientBounce, None),
        "a forged token names no blast"
    );
    // Exchange: nested multipart, base64 status, a failed and a delayed recipient.
    let ex = f
        .ingest_dsn(exchange_dsn("off@corp.example.com", "later@corp.example.com").as_bytes())
        .await
        .unwrap();
    assert_eq!(ex.applied.unwrap().recorded, 1, "delayed is not a bounce");
    assert_eq!(consent(store, ids[3]).await, "bounced");
    assert_eq!(consent(store, ids[2]).await, "subscribed");
    // Not a DSN.
    let e = f
        .ingest_dsn(b"Subject: hello\r\n\r\nJust a reply.")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "not_a_dsn");
}

async fn immediate_smtp_rejections_apply_once(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(store, &["nouser@example.org", "policy@example.org"]).await;
    let blast = sent_blast(store).await;
    let r = f
        .ingest_smtp_reply(
            &email("nouser@example.org"),
            "550 5.1.1 The email account that you tried to reach does not exist.",
            blast,
            ids[0],
        )
        .await
        .unwrap();
    assert_eq!(r.applied.unwrap().consent_changed, 1);
    assert!(
        f.ingest_smtp_reply(
            &email("nouser@example.org"),
            "550 5.1.1 again",
            blast,
            ids[0]
        )
        .await
        .unwrap()
        .duplicate
    );
    f.ingest_smtp_reply(
        &email("policy@example.org"),
        "550 5.7.1 Message rejected as spam",
        blast,
        ids[1],
    )
    .await
    .unwrap();
    assert_eq!(consent(store, ids[0]).await, "bounced");
    assert_eq!(
        consent(store, ids[1]).await,
        "subscribed",
        "a content block is not a dead address"
    );
    assert!(matches!(
        f.ingest_smtp_reply(&email("policy@example.org"), "garbage", blast, ids[1])
            .await,
        Err(FeedbackError::NotAReply)
    ));
    let counts = store.blast_feedback(blast).await.unwrap();
    assert_eq!((counts.bounced, counts.transient_bounced), (1, 1));
}

async fn a_bounce_mid_blast_skips_the_person_in_the_running_blast(db: TestDb) {
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(store, &["early@example.com", "late@example.com"]).await;
    let blast = volunteer_blast(store, true).await;
    assert_eq!(store.materialize_recipients(blast).await.unwrap(), 2);
    // The second recipient bounces (from an earlier campaign) before its slice is claimed.
    let body = fake.notification(
        "mid-1",
        TOPIC,
        &ses_bounce(
            "Permanent",
            "older-message",
            "late@example.com",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    f.ingest_sns(body.as_bytes()).await.unwrap();
    let claim = store
        .claim_recipients(blast, None, 10, 60_000)
        .await
        .unwrap();
    let eligible: Vec<(PersonId, bool)> = claim
        .recipients
        .iter()
        .map(|r| (r.person_id, r.eligible))
        .collect();
    assert_eq!(eligible, vec![(ids[0], true), (ids[1], false)]);
}

/// A node that stored payloads and died before applying them: the sweep applies each
/// kind once, rejects what cannot be read with the reason, and leaves young payloads
/// to the node that is still working on them.
async fn a_sweep_applies_what_a_dead_node_stored(db: TestDb) {
    use narwhal_mail::feedback::{SOURCE_DSN, SOURCE_SMTP, SOURCE_SNS};
    let store = &db.store;
    let fake = FakeSns::start().await;
    let f = service(store, &fake, TransientPolicy::default());
    let ids = people(
        store,
        &["sns@example.org", "dsn@example.org", "smtp@example.org"],
    )
    .await;
    let blast = sent_blast(store).await;
    let sns = fake.notification(
        "dead-1",
        TOPIC,
        &ses_bounce(
            "Permanent",
            "x-9",
            "sns@example.org",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    store
        .receive_feedback(SOURCE_SNS, "dead-1", &sns)
        .await
        .unwrap();
    let dsn = postfix_dsn(
        "dsn@example.org",
        "5.1.1",
        "550 5.1.1 User unknown",
        "<https://act.campaign.example/u/none>",
    );
    store
        .receive_feedback(SOURCE_DSN, "dead-2", &dsn)
        .await
        .unwrap();
    let smtp = json!({"blast": blast.0, "person": ids[2].0, "email": "smtp@example.org",
        "reply": "550 5.1.1 No such user"});
    store
        .receive_feedback(SOURCE_SMTP, "dead-3", &smtp.to_string())
        .await
        .unwrap();
    let bad = store
        .receive_feedback(SOURCE_SMTP, "dead-4", "{not json")
        .await
        .unwrap()
        .id;
    // Too young for a sweep that waits a minute: the storing node may still apply it.
    let young = f.sweep(60_000, 100).await.unwrap();
    assert_eq!((young.processed, young.rejected), (0, 0));
    assert_eq!(store.unprocessed_feedback(10).await.unwrap().len(), 4);
    let swept = f.sweep(0, 100).await.unwrap();
    assert_eq!((swept.processed, swept.rejected), (3, 1));
    for p in &ids {
        assert_eq!(consent(store, *p).await, "bounced");
    }
    for e in ["sns@example.org", "dsn@example.org", "smtp@example.org"] {
        assert!(store.is_suppressed(&email(e)).await.unwrap(), "{e}");
    }
    assert!(store.unprocessed_feedback(10).await.unwrap().is_empty());
    let bad = store.feedback(bad).await.unwrap();
    assert_eq!(bad.state, FeedbackState::Rejected);
    assert!(
        bad.note.unwrap_or_default().contains("SMTP"),
        "the reason is kept"
    );
    // Nothing left: a second sweep does nothing, and the same payload delivered
    // again is a duplicate.
    let again = f.sweep(0, 100).await.unwrap();
    assert_eq!((again.processed, again.rejected), (0, 0));
    assert!(f.ingest_sns(sns.as_bytes()).await.unwrap().duplicate);
    assert_eq!(store.blast_feedback(blast).await.unwrap().bounced, 1);
}

narwhal_store::both_backends!(
    forged_unsigned_and_untrusted_are_refused,
    bounces_and_complaints_flip_consent_suppress_and_count_on_the_blast,
    complaint_and_bounce_in_either_order_end_the_same,
    transient_bounces_suppress_at_the_threshold_in_any_order,
    subscriptions_are_confirmed_only_at_trusted_urls,
    dsns_bounce_and_count_like_ses_feedback,
    immediate_smtp_rejections_apply_once,
    a_bounce_mid_blast_skips_the_person_in_the_running_blast,
    a_sweep_applies_what_a_dead_node_stored,
);
