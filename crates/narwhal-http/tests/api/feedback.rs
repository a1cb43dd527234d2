//! Bounces and complaints through HTTP, and the console's blast pages, on both
//! backends: the SNS webhook refuses forged, unsigned and untrusted deliveries with
//! stable codes and applies genuine ones once; DSNs through the API; the blast list,
//! compose form (template errors with line and column), preview, test send, send now,
//! pause, resume, cancel, failures and the per-account split.

#[path = "../../../narwhal-mail/tests/support/sns.rs"]
mod sns_support;

use crate::console_forms::Console;
use crate::helpers::{assert_error, split, TestApp};
use narwhal_domain::Scope;
use narwhal_http::feedback::SesFeedbackConfig;
use narwhal_mail::accounts::MailSettings;
use narwhal_mail::feedback::sns::{CertHosts, SnsVerifier};
use narwhal_mail::feedback::TransientPolicy;
use narwhal_store::blasts::Outcome;
use narwhal_store::Backend;
use reqwest::Method;
use serde_json::{json, Value};
use sns_support::{ses_bounce, ses_complaint, FakeSns};
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-feedback";

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(narwhal_store::Backend::Sqlite).await; }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(narwhal_store::Backend::Postgres).await; }
        )* }
    };
}

on_both!(
    sns_webhook_refuses_forgeries_and_applies_genuine_feedback_once,
    dsn_ingest_and_blast_feedback_counts,
    console_blast_pages_render_and_act,
);

async fn app_trusting(backend: Backend, fake: &FakeSns) -> Option<TestApp> {
    let base = fake.base.clone();
    TestApp::spawn_with(backend, move |c| {
        c.ses_feedback = SesFeedbackConfig {
            verifier: Arc::new(SnsVerifier::new(
                CertHosts::Prefixes(vec![base]),
                vec![TOPIC.into()],
            )),
            transient: TransientPolicy::default(),
        };
    })
    .await
}

async fn post_sns(app: &TestApp, body: &str) -> (u16, Value) {
    // SNS posts JSON as text/plain, with no credentials.
    let r = app
        .client
        .post(app.url("/webhooks/ses/sns"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    split(r).await
}

async fn person_consent(app: &TestApp, id: i64) -> String {
    app.get_json(&format!("/api/v1/people/{id}")).await["person"]["email_consent"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn sns_webhook_refuses_forgeries_and_applies_genuine_feedback_once(backend: Backend) {
    let fake = FakeSns::start().await;
    let Some(app) = app_trusting(backend, &fake).await else {
        return;
    };
    let ada = app
        .person(json!({"emails": ["ada@example.com"], "email_consent": "subscribed"}))
        .await;
    let bob = app
        .person(json!({"emails": ["bob@example.com"], "email_consent": "subscribed"}))
        .await;
    let bounce = fake.notification(
        "sns-1",
        TOPIC,
        &ses_bounce(
            "Permanent",
            "ses-1",
            "bob@example.com",
            "2026-11-26T11:00:00.000Z",
        ),
        2,
    );
    // Forged: the signed body names someone else now.
    let (s, v) = post_sns(&app, &bounce.replace("bob@example.com", "ada@example.com")).await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "bad_signature");
    // Unsigned.
    let mut unsigned: Value = serde_json::from_str(&bounce).unwrap();
    unsigned.as_object_mut().unwrap().remove("Signature");
    let (s, v) = post_sns(&app, &unsigned.to_string()).await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "unsigned_notification");
    // A certificate from anywhere but the trusted prefix is never fetched.
    let mut elsewhere: Value = serde_json::from_str(&bounce).unwrap();
    elsewhere["SigningCertURL"] = json!("https://sns.us-east-1.amazonaws.com.evil.example/c.pem");
    let (s, v) = post_sns(&app, &elsewhere.to_string()).await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "untrusted_certificate_url");
    let (s, v) = post_sns(&app, "{not json").await;
    assert_eq!(s, 400, "{v}");
    assert_error(&v, "malformed_notification");
    assert_eq!(person_consent(&app, ada).await, "subscribed");
    assert_eq!(person_consent(&app, bob).await, "subscribed");
    assert_eq!(
        fake.cert_fetches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // Genuine: applied.
    let (s, v) = post_sns(&app, &bounce).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["duplicate"].as_bool(), v["state"].as_str()),
        (Some(false), Some("processed"))
    );
    assert_eq!(person_consent(&app, bob).await, "bounced");
    let sup = app.get_json("/api/v1/suppressions").await;
    assert_eq!(sup["suppressions"][0]["email"], "bob@example.com", "{sup}");
    // Replayed: 200, nothing new.
    let (s, v) = post_sns(&app, &bounce).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    let history = app.get_json(&format!("/api/v1/people/{bob}")).await["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "person.bounced")
        .count();
    assert_eq!(history, 1);
    // A version 1 (SHA-1) complaint.
    let complaint = fake.notification(
        "m-3",
        TOPIC,
        &ses_complaint("x-3", "ada@example.com", "2026-11-26T11:05:00.000Z"),
        1,
    );
    let (s, v) = post_sns(&app, &complaint).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(person_consent(&app, ada).await, "complained");
    // A subscription confirmation is fetched at its (trusted) URL.
    let sub = fake.subscription("sub-1", TOPIC, &format!("{}confirm?Token=t", fake.base));
    let (s, v) = post_sns(&app, &sub).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(fake.confirmations.lock().unwrap().len(), 1);
    app.stop().await;
}

/// A list of these people (through the API), and their ids in list order.
async fn a_list_with(app: &TestApp, people: &[Value]) -> (i64, Vec<i64>) {
    let list = crate::blasts::a_list_of(app, people).await;
    let members = app.get_json(&format!("/api/v1/lists/{list}/members")).await;
    let mut ids: Vec<i64> = members["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    (list, ids)
}

fn dsn_for(to: &str, list_unsubscribe: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@campaign.example\r\nSubject: Undelivered Mail Returned to Sender\r\n\
Message-Id: <dsn-1@mx.example.net>\r\nDate: Thu, 26 Nov 2026 11:02:03 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n\r\n\
--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nTo: {to}\r\nList-Unsubscribe: {list_unsubscribe}\r\n\r\n--b1--\r\n"
    )
}

async fn dsn_ingest_and_blast_feedback_counts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (list, ids) = a_list_with(
        &app,
        &[json!({"emails": ["gone@example.org"], "email_consent": "subscribed"})],
    )
    .await;
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/blasts",
            json!({"name": "x", "target": {"list": list}, "subject": "Hi", "text": "t", "from": "team@campaign.example"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let blast = v["id"].as_i64().unwrap();
    let token = app.mail.sender.compose().signer.token(blast, ids[0]);
    let raw = dsn_for("gone@example.org", &format!("<{}u/{token}>", app.url("/")));
    let post = |token: String, body: String| {
        let c = app.client.clone();
        let url = app.url("/api/v1/mail/dsn");
        async move {
            split(
                c.post(url)
                    .bearer_auth(token)
                    .header("content-type", "message/rfc822")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let reader = app.token_with(&[Scope::MailRead]).await;
    let (s, _) = post(reader, raw.clone()).await;
    assert_eq!(s, 403, "mail:send is needed");
    let (s, v) = post(app.token.clone(), raw.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"]["matched_blast"], 1, "{v}");
    assert_eq!(person_consent(&app, ids[0]).await, "bounced");
    let f = app
        .get_json(&format!("/api/v1/blasts/{blast}/feedback"))
        .await;
    assert_eq!(
        (f["bounced"].as_i64(), f["complained"].as_i64()),
        (Some(1), Some(0)),
        "{f}"
    );
    let (s, v) = post(app.token.clone(), raw).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)));
    let (s, v) = post(app.token.clone(), "Subject: hi\r\n\r\nnot a report".into()).await;
    assert_eq!(s, 422, "{v}");
    assert_error(&v, "not_a_dsn");
    let r = app
        .req(Method::GET, "/api/v1/blasts/999/feedback")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

fn outbox_settings(dir: &std::path::Path) -> MailSettings {
    // From TOML, as `narwhal serve` reads it (and whatever fields accounts grow).
    toml::from_str(&format!(
        "from_address = \"team@campaign.example\"\nsender_name = \"Friends of Ada\"\n\
         postal_address = \"PO Box 1, Columbus OH 43215\"\n\
         [[accounts]]\nkind = \"outbox\"\nname = \"outbox-test\"\nthrottle = \"500/s\"\ndir = {:?}\n",
        dir.display().to_string()
    ))
    .unwrap()
}

async fn console_blast_pages_render_and_act(backend: Backend) {
    let outbox = tempfile::tempdir().unwrap();
    let Some(app) = TestApp::spawn_mail(backend, outbox_settings(outbox.path()), |_| None).await
    else {
        return;
    };
    let (list, ids) = a_list_with(
        &app,
        &[
            json!({"emails": ["ada@example.com"], "first_name": "Ada"}),
            json!({"emails": ["bob@example.com"], "first_name": "Bob"}),
        ],
    )
    .await;
    let c = Console::login(&app).await;
    let (s, html) = c.get("/blasts").await;
    assert_eq!(s, 200);
    assert!(
        html.contains("No blasts yet.") && html.contains("href=\"/blasts/new\""),
        "{html}"
    );
    assert!(html.contains("width=device-width"));
    let (s, html) = c.get("/blasts/new").await;
    assert_eq!(s, 200);
    let target = format!("list:{list}");
    assert!(html.contains(&format!("value=\"{target}\"")), "{html}");
    // A broken template: the form comes back with part, line and column; nothing saved.
    let form = |text: &'static str| {
        vec![
            ("name", "GOTV"),
            ("target", target.as_str()),
            ("subject", "Hi {{ first_name | default('friend') }}"),
            ("text", text),
            ("html", ""),
            ("from", ""),
            ("keep_message_ids", "1"),
        ]
    };
    let (s, _, html) = c
        .post("/blasts/new", &form("Line one\nHello {{ first_name "))
        .await;
    assert_eq!(s, 422, "{html}");
    assert!(html.contains("text: line 2, column"), "{html}");
    assert!(html.contains("Line one"), "the form keeps what was typed");
    assert_eq!(app.get_json("/api/v1/blasts").await["blasts"], json!([]));
    // A forged CSRF token changes nothing.
    let (s, _, _) = c
        .post_raw(
            "/blasts/new",
            &[
                ("csrf", "forged"),
                ("name", "x"),
                ("target", &target),
                ("subject", "s"),
                ("text", "t"),
            ],
        )
        .await;
    assert_eq!(s, 403);
    let (s, loc, _) = c
        .post(
            "/blasts/new",
            &form("Polls close at 7:30pm, {{ first_name }}."),
        )
        .await;
    assert_eq!(s, 303);
    let id: i64 = loc.strip_prefix("/blasts/").unwrap().parse().unwrap();
    let page = format!("/blasts/{id}");
    let (s, html) = c.get(&page).await;
    assert_eq!(s, 200);
    assert!(
        html.contains("Send now") && html.contains(&format!("data-status=\"/api/v1/blasts/{id}\"")),
        "{html}"
    );
    assert!(html.contains("No failures."));
    // Preview as Ada; a test send through the outbox account.
    let ada = ids[0].to_string();
    let (s, _, html) = c
        .post(&format!("{page}/preview"), &[("person_id", &ada)])
        .await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("Hi Ada") && html.contains("Polls close at 7:30pm, Ada."),
        "{html}"
    );
    let (s, _, html) = c
        .post(&format!("{page}/preview"), &[("person_id", "999999")])
        .await;
    assert_eq!(s, 422, "{html}");
    let (s, _, html) = c
        .post(
            &format!("{page}/test"),
            &[("to", "staff@campaign.example"), ("person_id", "")],
        )
        .await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("id=\"test-result\"") && html.contains("accepted"),
        "{html}"
    );
    // Send now; the worker sends both through the outbox.
    let (s, loc, _) = c.post(&format!("{page}/schedule"), &[]).await;
    assert_eq!((s, loc.as_str()), (303, page.as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = app.get_json(&format!("/api/v1/blasts/{id}")).await;
        if v["state"] == "done" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, html) = c.get(&page).await;
    assert_eq!(s, 200);
    assert!(html.contains("<dd id=\"sent\">2</dd>"), "{html}");
    assert!(
        html.contains("<td>outbox-test</td><td>2</td>"),
        "per-account split: {html}"
    );
    assert!(
        !html.contains("Send now") && !html.contains(">Pause<"),
        "{html}"
    );
    // The blast list shows it done.
    let (_, html) = c.get("/blasts").await;
    assert!(html.contains("done") && html.contains("GOTV"), "{html}");
    // A second blast: pause, resume and cancel from the page, and a failure with its reason.
    let (_, loc, _) = c.post("/blasts/new", &form("Again")).await;
    let id2: i64 = loc.strip_prefix("/blasts/").unwrap().parse().unwrap();
    let page2 = format!("/blasts/{id2}");
    app.store
        .materialize_recipients(narwhal_store::blasts::BlastId(id2))
        .await
        .unwrap();
    let claim = app
        .store
        .claim_recipients(narwhal_store::blasts::BlastId(id2), None, 1, 60_000)
        .await
        .unwrap();
    let pid = claim.recipients[0].person_id;
    app.store
        .record_outcomes(
            &claim,
            &[(
                pid,
                Outcome::Failed {
                    account: None,
                    reason: "550 5.1.1 no such user".into(),
                },
            )],
        )
        .await
        .unwrap();
    let (_, html) = c.get(&page2).await;
    assert!(html.contains("550 5.1.1 no such user"), "{html}");
    // Paused before the worker can start it: schedule far ahead first.
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id2}/schedule"),
            json!({"at": 4_102_444_800_000i64}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = c.post(&format!("{page2}/pause"), &[]).await;
    assert_eq!(s, 303);
    assert_eq!(blast_state(&app, id2).await, "paused");
    let (_, html) = c.get(&page2).await;
    assert!(html.contains(">Resume<"), "{html}");
    let (s, _, _) = c.post(&format!("{page2}/cancel"), &[]).await;
    assert_eq!(s, 303);
    assert_eq!(blast_state(&app, id2).await, "cancelled");
    // Resuming a cancelled blast is refused on the page, with the reason.
    let (s, _, html) = c.post(&format!("{page2}/resume"), &[]).await;
    assert_eq!(s, 422, "{html}");
    assert!(html.contains("cannot become"), "{html}");
    let (s, _, _) = c
        .post_raw(&format!("{page2}/pause"), &[("csrf", "forged")])
        .await;
    assert_eq!(s, 403);
    // Without a session: the login page.
    let r = app.client.get(app.url("/blasts")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    app.stop().await;
}

async fn blast_state(app: &TestApp, id: i64) -> String {
    app.get_json(&format!("/api/v1/blasts/{id}")).await["state"]
        .as_str()
        .unwrap()
        .to_string()
}
