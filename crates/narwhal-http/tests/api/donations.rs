//! Donations over HTTP against fake Stripe servers on loopback, on both backends: the
//! API's outcomes and errors, idempotency (replay, other parameters, concurrent
//! duplicates: never two charges by the fake's own ledger), failover to the backup and
//! pledges, signed webhooks (forged, stale, repeated, out of order), the card-testing
//! limits, the public page (no card field can be posted) and the staff pages. No card
//! number from these tests may reach a database column or a log line.

use crate::helpers::{password_hash, split, ADMIN_PASSWORD};
use narwhal_domain::{Role, Scope};
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, Fault, WebhookTarget, DEFAULT_KEY};
use narwhal_http::abuse::{AbuseConfig, Guard};
use narwhal_http::donations::{DonationsEdge, PageConfig};
use narwhal_http::{AppState, HttpConfig};
use narwhal_mail::Secret;
use narwhal_pay::processor::Processor;
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{Donations, PayConfig};
use narwhal_pay::stripe::{webhook, StripeConfig, StripeProcessor};
use narwhal_store::test_support::TestDb;
use narwhal_store::{Backend, Store};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A test card number that must never be stored or logged.
const CARD: &str = "4242424242424242";
const WHSEC: &str = "whsec_test_donations";

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Log lines of the whole test binary, captured from the first donation test on.
fn logs() -> &'static Mutex<Vec<u8>> {
    static INIT: OnceLock<()> = OnceLock::new();
    let logs = log_buffer();
    INIT.get_or_init(|| {
        struct W;
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                log_buffer().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| W)
            .with_ansi(false)
            .try_init();
    });
    logs
}

struct DonApp {
    base: String,
    client: reqwest::Client,
    token: String,
    store: Store,
    primary: FakeStripe,
    backup: FakeStripe,
    router: Arc<Router>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TestDb,
}

impl DonApp {
    async fn spawn(backend: Backend, abuse: AbuseConfig) -> Option<Self> {
        logs();
        let db = TestDb::new(backend).await?;
        let store = db.store.clone();
        let primary = FakeStripe::start(FakeStripeConfig::default())
            .await
            .unwrap();
        let backup = FakeStripe::start(FakeStripeConfig::default())
            .await
            .unwrap();
        let account = |name: &str, fake: &FakeStripe| -> Arc<dyn Processor> {
            let mut c =
                StripeConfig::new(name, Secret::new(DEFAULT_KEY.to_string())).base_url(fake.url());
            c.max_requests_per_second = 1_000;
            c.burst = 100;
            c.request_timeout = Duration::from_secs(5);
            Arc::new(StripeProcessor::new(c).unwrap())
        };
        let router = Arc::new(Router::new(
            vec![account("primary", &primary), account("backup", &backup)],
            BreakerConfig {
                open_after: 1_000,
                ..BreakerConfig::default()
            },
        ));
        let service = Donations::new(store.clone(), router.clone(), PayConfig::default());
        let mut edge = DonationsEdge::new(service);
        edge.guard = Arc::new(Guard::new(abuse));
        edge.webhook_secrets = Arc::new(HashMap::from([
            ("primary".to_string(), Secret::new(WHSEC.to_string())),
            ("backup".to_string(), Secret::new(WHSEC.to_string())),
        ]));
        edge.page = Arc::new(PageConfig {
            committee: "Friends of Ada".into(),
            tokenize_url: primary.url(),
            publishable_key: "pk_test_narwhal".into(),
            ..PageConfig::default()
        });
        let upload = tempfile::tempdir().unwrap();
        let config = HttpConfig {
            upload_dir: upload.path().to_path_buf(),
            ..HttpConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(store.clone(), config).with_donations(edge);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(narwhal_http::serve(listener, state, async move {
            let _ = rx.await;
        }));
        store
            .create_user("admin", password_hash(), Role::Admin)
            .await
            .unwrap();
        let (token, hash) = narwhal_http::new_token();
        store
            .create_token("admin-token", &hash, &Scope::ALL, "test")
            .await
            .unwrap();
        Some(Self {
            base,
            client: client_from("127.0.0.1"),
            token,
            store,
            primary,
            backup,
            router,
            shutdown: Some(tx),
            _db: db,
        })
    }

    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    async fn donate_from(
        &self,
        client: &reqwest::Client,
        key: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = client
            .post(self.url("/api/v1/donations"))
            .bearer_auth(&self.token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        let (s, v) = split(r).await;
        (s, v, headers)
    }

    async fn donate(&self, key: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.donate_from(&self.client, key, body).await;
        (s, v)
    }

    /// A good gift of `dollars` from `email`: its id.
    async fn given(&self, key: &str, dollars: &str, email: &str) -> String {
        let (s, v) = self
            .donate(key, &gift(dollars, email, "pm_card_visa"))
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// A donation's state and refunded cents, through the API.
    async fn state_of(&self, id: &str) -> (String, i64) {
        let (s, v) = self.get(&format!("/api/v1/donations/{id}")).await;
        assert_eq!(s, 200, "{v}");
        (
            v["state"].as_str().unwrap().to_string(),
            v["refunded_cents"].as_i64().unwrap(),
        )
    }

    /// The body of a page fetched without credentials.
    async fn text(&self, p: &str) -> String {
        let r = self.client.get(self.url(p)).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// A form posted without credentials, as a browser posts it.
    async fn post_form<T: serde::Serialize + ?Sized>(
        &self,
        p: &str,
        form: &T,
    ) -> reqwest::Response {
        self.client
            .post(self.url(p))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, p: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(p))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        split(r).await
    }

    async fn webhook(
        &self,
        processor: &str,
        payload: &str,
        signature: Option<String>,
    ) -> (u16, Value) {
        let mut r = self
            .client
            .post(self.url(&format!("/webhooks/stripe/{processor}")))
            .header("content-type", "application/json")
            .body(payload.to_string());
        if let Some(sig) = signature {
            r = r.header("Stripe-Signature", sig);
        }
        split(r.send().await.unwrap()).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A client whose connections come from `ip` (any 127.x address is loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn gift(amount: &str, email: &str, pm: &str) -> Value {
    json!({
        "amount": amount,
        "donor": {"first_name": "Ada", "last_name": "Lovelace", "email": email,
                  "address1": "12 Main St", "city": "Columbus", "state": "OH", "zip": "43215",
                  "employer": "Acme", "occupation": "Engineer"},
        "attestations": {"own_funds": true, "citizen_or_resident": true, "not_contractor": true},
        "payment_method": pm,
        "refcode": "email-0412"
    })
}

/// Limits that the ordinary tests never reach (they reuse the fake's test tokens).
fn lenient() -> AbuseConfig {
    AbuseConfig {
        per_ip: 10_000,
        per_email: 10_000,
        per_card: 10_000,
        declines_before_block: 10_000,
        suspicious_after: 10_000,
        ..AbuseConfig::default()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The fake's charge of a donation.
fn charge_of(fake: &FakeStripe, donation: &str) -> narwhal_fakes::stripe::LedgerCharge {
    fake.ledger()
        .into_iter()
        .find(|c| c.metadata.get("narwhal_donation").map(String::as_str) == Some(donation))
        .unwrap()
}

fn charges_for(fake: &FakeStripe, donation: &str) -> usize {
    fake.ledger()
        .iter()
        .filter(|c| c.metadata.get("narwhal_donation").map(String::as_str) == Some(donation))
        .count()
}

macro_rules! donation_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(narwhal_store::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(narwhal_store::Backend::Postgres).await;
                }
            )*
        }
    };
}

donation_tests!(
    a_gift_is_charged_once_whatever_is_retried,
    bad_input_is_refused_and_no_card_number_is_kept_or_logged,
    the_backup_takes_over_and_a_total_outage_is_a_pledge,
    webhooks_are_verified_deduplicated_and_order_free,
    card_testing_is_stopped_while_donors_keep_going,
    the_page_never_posts_a_card_and_staff_see_the_donations,
    recurring_gifts_and_giving_links_work_from_the_donors_side,
    a_device_that_saved_a_card_gives_in_one_tap,
);

async fn a_gift_is_charged_once_whatever_is_retried(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    let body = gift("25.00", "ada@example.org", "pm_card_visa");
    let (s, v) = app.donate("key-1", &body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["outcome"], "succeeded");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["amount_cents"], 2500);
    assert_eq!(v["card_last4"], "4242");
    assert_eq!(v["processor"], "primary");
    assert_eq!(v["replayed"], false);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(charges_for(&app.primary, &id), 1);
    assert_eq!(app.primary.ledger()[0].amount, 2500);

    // The same key again: the same donation, nothing charged.
    let (s, again) = app.donate("key-1", &body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["replayed"], true);
    // The key in the body works the same way.
    let mut with_body_key = body.clone();
    with_body_key["idempotency_key"] = json!("key-1");
    let r = app
        .client
        .post(app.url("/api/v1/donations"))
        .bearer_auth(&app.token)
        .json(&with_body_key)
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(id.as_str())), "{v}");
    // The same key with another amount is refused.
    let (s, v) = app
        .donate("key-1", &gift("26.00", "ada@example.org", "pm_card_visa"))
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.primary.ledger().len(), 1);

    // Concurrent duplicates of a new key (the processor answers slowly): one charge.
    app.primary.set_latency(Duration::from_millis(300));
    let body2 = gift("40.00", "ada@example.org", "pm_card_visa");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = app.client.clone();
        let url = app.url("/api/v1/donations");
        let token = app.token.clone();
        let body = body2.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "key-2")
                .json(&body)
                .send()
                .await
                .unwrap();
            split(r).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 | 201 => {
                ids.insert(v["id"].as_str().unwrap().to_string());
            }
            409 => assert_eq!(v["error"]["code"], "idempotency_in_flight", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ids.len() <= 1, "{ids:?}");
    app.primary.set_latency(Duration::ZERO);
    let (s, v) = app.donate("key-2", &body2).await;
    assert_eq!(s, 200, "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    assert!(ids.is_empty() || ids.contains(&id2));
    assert_eq!(charges_for(&app.primary, &id2), 1);
    assert!(app.primary.double_charges("narwhal_donation").is_empty());

    // Reading and searching.
    let (s, v) = app.get(&format!("/api/v1/donations/{id}")).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("succeeded")));
    let (_, v) = app
        .get("/api/v1/donations?state=succeeded&email=ADA@example.org&refcode=email-0412")
        .await;
    assert_eq!(v["donations"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = app.get("/api/v1/donations?state=declined").await;
    assert!(v["donations"].as_array().unwrap().is_empty());
    let (s, _) = app.get("/api/v1/donations/don_nope").await;
    assert_eq!(s, 404);

    // Staff refund part of it: the processor refunds, the donation follows.
    let r = app
        .client
        .post(app.url(&format!("/api/v1/donations/{id}/refund")))
        .bearer_auth(&app.token)
        .json(&json!({"amount_cents": 500}))
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "partially_refunded");
    assert_eq!(v["refunded_cents"], 500);
    let charge = charge_of(&app.primary, &id);
    assert_eq!(charge.refunded, 500);
    // Without the refund scope: 403.
    let limited = {
        let (t, h) = narwhal_http::new_token();
        app.store
            .create_token("writer", &h, &[Scope::DonationsWrite], "test")
            .await
            .unwrap();
        t
    };
    let r = app
        .client
        .post(app.url(&format!("/api/v1/donations/{id}/refund")))
        .bearer_auth(&limited)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    app.stop().await;
}

async fn bad_input_is_refused_and_no_card_number_is_kept_or_logged(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    let ok = gift("10", "grace@example.org", "pm_card_visa");
    let with = |path: &[&str], v: Value| {
        let mut b = ok.clone();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        b
    };
    let without = |obj: &str, field: &str| {
        let mut b = ok.clone();
        b[obj].as_object_mut().unwrap().remove(field);
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with(&["amount"], json!("-5")), 422, "invalid_amount"),
        (with(&["amount"], json!("0")), 422, "invalid_amount"),
        (with(&["amount"], json!("0.00")), 422, "invalid_amount"),
        (
            with(&["amount"], json!("ten dollars")),
            422,
            "invalid_amount",
        ),
        (with(&["amount"], json!("1.234")), 422, "invalid_amount"),
        (with(&["amount"], json!(true)), 422, "invalid_amount"),
        (with(&["amount"], json!("3600.00")), 422, "over_limit"),
        (without("donor", "last_name"), 422, "required"),
        (without("donor", "address1"), 422, "required"),
        (with(&["donor", "email"], json!("")), 422, "required"),
        (
            without("attestations", "not_contractor"),
            422,
            "attestation_required",
        ),
        (
            with(&["donor", "occupation"], json!(format!("card {CARD}"))),
            422,
            "card_number_in_text",
        ),
        (
            with(&["donor", "employer"], json!("4242 4242 4242 4242")),
            422,
            "card_number_in_text",
        ),
        (with(&["refcode"], json!(CARD)), 422, "card_number_in_text"),
        (
            with(&["payment_method"], json!(CARD)),
            422,
            "card_number_in_text",
        ),
        (
            with(&["donor", "address2"], json!(format!("Apt {CARD}"))),
            422,
            "card_number_in_text",
        ),
        (with(&["payment_method"], json!(null)), 422, "required"),
    ];
    for (i, (body, status, code)) in cases.into_iter().enumerate() {
        let (s, v, headers) = app
            .donate_from(&app.client, &format!("bad-{i}"), &body)
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "case {i}: {v}"
        );
        assert!(
            !v.to_string().contains(CARD),
            "case {i} echoes the number: {v}"
        );
        if code == "over_limit" {
            assert_eq!(headers["narwhal-room-cents"], "350000");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("$3,500"),
                "{v}"
            );
        }
    }
    // Nothing was charged, and no donation row holds any of it.
    assert!(app.primary.ledger().is_empty());
    // A good gift still goes through, and then nothing anywhere holds the number.
    let (s, v) = app.donate("good", &ok).await;
    assert_eq!(s, 201, "{v}");
    let values = app.store.donation_text_values().await.unwrap();
    assert!(
        values.iter().any(|v| v.contains("grace@example.org")),
        "the dump reads the tables"
    );
    for v in &values {
        let digits: String = v.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !digits.contains(CARD),
            "a stored value holds the card number: {v}"
        );
    }
    let logged = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(logged.contains("request"), "the log capture works");
    assert!(
        !logged.contains(CARD) && !logged.contains("4242 4242"),
        "a log line holds the card number"
    );
    app.stop().await;
}

async fn the_backup_takes_over_and_a_total_outage_is_a_pledge(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    app.primary.set_fault(Fault::Down);
    let (s, v) = app
        .donate("fo-1", &gift("50", "kat@example.org", "pm_card_visa"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["processor"], "backup", "via backup");
    let id = v["id"].as_str().unwrap();
    assert_eq!(charges_for(&app.backup, id), 1);
    assert_eq!(charges_for(&app.primary, id), 0);

    // Both down: a pledge, no card data, a payment link.
    app.backup.set_fault(Fault::Down);
    let (s, v) = app
        .donate("fo-2", &gift("75", "kat@example.org", "pm_card_visa"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["outcome"], "pledged");
    assert!(
        v["message"].as_str().unwrap().contains("payment link"),
        "{v}"
    );
    let token = v["pledge_token"].as_str().unwrap().to_string();
    let pledge_id = v["id"].as_str().unwrap().to_string();
    // The replay is the same pledge, without the token.
    let (s, v) = app
        .donate("fo-2", &gift("75", "kat@example.org", "pm_card_visa"))
        .await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("pledged")), "{v}");
    assert!(v.get("pledge_token").is_none());

    // Processing recovers; the donor completes the pledge from the link.
    app.primary.set_fault(Fault::None);
    app.backup.set_fault(Fault::None);
    app.router.check_health().await;
    let page = app
        .client
        .get(app.url(&format!("/donate/pledge/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("$75.00"));
    let r = app
        .client
        .post(app.url(&format!("/donate/pledge/{token}")))
        .form(&[("payment_method", "pm_card_chargeDeclined")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402, "a declined card keeps the pledge");
    let r = app
        .client
        .post(app.url(&format!("/donate/pledge/{token}")))
        .form(&[("payment_method", "pm_card_visa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let thanks = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(thanks, format!("/donate/thanks/{pledge_id}"));
    let html = app.text(&thanks).await;
    assert!(
        html.contains("Thank you") && html.contains("$75.00"),
        "{html}"
    );
    let charged = charges_for(&app.primary, &pledge_id) + charges_for(&app.backup, &pledge_id);
    assert_eq!(charged, 1);
    // The link is single-use.
    let r = app
        .client
        .post(app.url(&format!("/donate/pledge/{token}")))
        .form(&[("payment_method", "pm_card_visa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        app.client
            .get(app.url("/donate/pledge/not-a-token"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({"id": id, "object": "event", "type": kind, "created": now(), "livemode": false,
           "pending_webhooks": 1, "api_version": "2024-06-20", "data": {"object": object}})
    .to_string()
}

async fn webhooks_are_verified_deduplicated_and_order_free(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    // The fake posts its own events to us, twice each and shuffled.
    let mut target = WebhookTarget::new(app.url("/webhooks/stripe/primary"), WHSEC);
    target.duplicates = true;
    target.shuffle_within = Duration::from_millis(200);
    app.primary.set_webhook(Some(target));
    let id = app.given("wh-1", "30", "lin@example.org").await;
    let r = app
        .client
        .post(app.url(&format!("/api/v1/donations/{id}/refund")))
        .bearer_auth(&app.token)
        .json(&json!({"amount_cents": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = app
        .donate(
            "wh-2",
            &gift("5", "lin2@example.org", "pm_card_chargeDeclined"),
        )
        .await;
    assert_eq!(s, 402);
    // Wait until every posted event was answered 200 twice (it is sent twice).
    let posted = [
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "charge.refunded",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app.primary.deliveries();
        let events: Vec<_> = app
            .primary
            .events()
            .into_iter()
            .filter(|e| posted.contains(&e.kind.as_str()))
            .collect();
        let done = events.iter().all(|e| {
            d.iter()
                .filter(|x| x.event_id == e.id && x.status == Some(200))
                .count()
                >= 2
        });
        if events.len() >= 3 && done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "deliveries: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.state_of(&id).await,
        ("partially_refunded".to_string(), 1000)
    );

    // A full refund made at the processor (not through us) arrives by webhook only.
    let id3 = app.given("wh-3", "20", "lin3@example.org").await;
    let charge = charge_of(&app.primary, &id3);
    let refunded = event(
        "evt_manual_refund",
        "charge.refunded",
        json!({"id": charge.charge, "object": "charge", "amount": 2000, "amount_refunded": 2000,
               "payment_intent": charge.payment_intent, "refunded": true}),
    );
    let partial = event(
        "evt_manual_refund_older",
        "charge.refunded",
        json!({"id": charge.charge, "object": "charge", "amount": 2000, "amount_refunded": 700,
               "payment_intent": charge.payment_intent, "refunded": false}),
    );
    let sign = |p: &str, t: i64| Some(webhook::sign(WHSEC, t, p.as_bytes()));
    // Forged, stale (a replay captured 10 minutes ago) and unsigned: refused.
    let (s, v) = app
        .webhook(
            "primary",
            &refunded,
            Some(webhook::sign("whsec_wrong", now(), refunded.as_bytes())),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_signature")),
        "{v}"
    );
    let (s, v) = app
        .webhook("primary", &refunded, sign(&refunded, now() - 600))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("stale_signature")),
        "{v}"
    );
    let (s, v) = app.webhook("primary", &refunded, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("missing_signature")),
        "{v}"
    );
    let tampered = refunded.replacen("2000", "1999", 1);
    assert_ne!(tampered, refunded);
    let (s, _) = app
        .webhook("primary", &tampered, sign(&refunded, now()))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .webhook("nobody", &refunded, sign(&refunded, now()))
        .await;
    assert_eq!(s, 404);
    let (_, v) = app.get(&format!("/api/v1/donations/{id3}")).await;
    assert_eq!(v["state"], "succeeded", "nothing refused was applied");
    // The newer event first, then the older one, then the newer again: refunded once.
    let (s, v) = app
        .webhook("primary", &refunded, sign(&refunded, now()))
        .await;
    assert_eq!((s, v["applied"].as_str()), (200, Some("changed")), "{v}");
    let (s, v) = app
        .webhook("primary", &partial, sign(&partial, now()))
        .await;
    assert_eq!((s, v["applied"].as_str()), (200, Some("unchanged")), "{v}");
    let (s, v) = app
        .webhook("primary", &refunded, sign(&refunded, now()))
        .await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(app.state_of(&id3).await, ("refunded".to_string(), 2000));

    // A dispute: disputed, with a balanced ledger entry; a repeat changes nothing.
    let id4 = app.given("wh-4", "60", "lin4@example.org").await;
    let pi = charge_of(&app.primary, &id4).payment_intent;
    let dispute = event(
        "evt_dispute",
        "charge.dispute.created",
        json!({"id": "dp_1", "object": "dispute", "amount": 6000, "charge": "ch_x", "payment_intent": pi, "status": "needs_response"}),
    );
    let (s, v) = app
        .webhook("primary", &dispute, sign(&dispute, now()))
        .await;
    assert_eq!((s, v["applied"].as_str()), (200, Some("changed")), "{v}");
    let redelivered = dispute.replace("evt_dispute", "evt_dispute_again");
    let (s, v) = app
        .webhook("primary", &redelivered, sign(&redelivered, now()))
        .await;
    assert_eq!((s, v["applied"].as_str()), (200, Some("unchanged")), "{v}");
    let (_, v) = app.get(&format!("/api/v1/donations/{id4}")).await;
    assert_eq!(v["state"], "disputed");
    assert!(app.store.unbalanced_ledger_txns().await.unwrap().is_empty());
    let row = app
        .store
        .donation_by_public_id(&id4)
        .await
        .unwrap()
        .unwrap();
    let ledger = app.store.ledger_of(row.id).await.unwrap();
    assert_eq!(
        ledger.iter().filter(|e| e.kind == "dispute").count(),
        2,
        "{ledger:?}"
    );
    app.stop().await;
}

async fn card_testing_is_stopped_while_donors_keep_going(backend: Backend) {
    let abuse = AbuseConfig {
        declines_before_block: 3,
        per_ip: 1_000,
        ..AbuseConfig::default()
    };
    let Some(app) = DonApp::spawn(backend, abuse).await else {
        return;
    };
    let tester = client_from("127.0.0.1");
    let donor = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..8 {
        let (s, v, h) = app
            .donate_from(
                &tester,
                &format!("ct-{i}"),
                &gift("1", &format!("t{i}@example.org"), "pm_card_chargeDeclined"),
            )
            .await;
        if s == 429 {
            assert_eq!(v["error"]["code"], "blocked_after_declines", "{v}");
            retry_after = h
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        } else {
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (402, Some("declined")),
                "{v}"
            );
        }
        statuses.push(s);
        // A real donor from elsewhere keeps going during the burst.
        if i % 3 == 0 {
            let (s, v, _) = app
                .donate_from(
                    &donor,
                    &format!("real-{i}"),
                    &gift("35", &format!("real{i}@example.org"), "pm_card_visa"),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
    }
    assert_eq!(statuses, vec![402, 402, 402, 429, 429, 429, 429, 429]);
    assert!(
        retry_after.is_some_and(|s| s > 0 && s <= 3600),
        "{retry_after:?}"
    );
    // Blocked attempts never reached the processor.
    let declined_at_processor = app.primary.stats().declines;
    assert_eq!(declined_at_processor, 3);
    let metrics = app.text("/metrics").await;
    assert!(metrics.contains("donation_declines_total 3"), "{metrics}");
    assert!(metrics.contains("donation_blocked_total 5"), "{metrics}");
    app.stop().await;
}

async fn the_page_never_posts_a_card_and_staff_see_the_donations(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    let r = app
        .client
        .get(app.url("/donate?refcode=sms-77&source=text"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Friends of Ada"));
    assert!(
        html.contains("name=\"refcode\" value=\"sms-77\""),
        "the refcode is carried"
    );
    for field in [
        "employer",
        "occupation",
        "first_name",
        "own_funds",
        "not_contractor",
        "citizen_or_resident",
    ] {
        assert!(html.contains(&format!("name=\"{field}\"")), "{field}");
    }
    // The card inputs exist and have no name: a form post cannot carry them.
    for id in ["cc-number", "cc-exp", "cc-cvc"] {
        let at = html.find(&format!("id=\"{id}\"")).unwrap();
        let start = html[..at].rfind('<').unwrap();
        let end = at + html[at..].find('>').unwrap();
        assert!(!html[start..end].contains("name="), "{}", &html[start..end]);
    }
    let at = html.find("data-tokenize=").unwrap();
    assert!(html[at..at + 80].contains(&app.primary.addr().port().to_string()));
    assert!(html.contains("/v1/payment_methods"));
    // The tokenization endpoint the page's script calls answers a pm token.
    let r = app
        .client
        .post(format!("{}/v1/payment_methods", app.primary.url()))
        .bearer_auth("pk_test_narwhal")
        .form(&[
            ("type", "card"),
            ("card[number]", CARD),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let pm: Value = r.json().await.unwrap();
    let token = pm["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("pm_"), "{pm}");

    let mut form: Vec<(&str, String)> = vec![
        ("amount", "25.00".into()),
        ("first_name", "Mae".into()),
        ("last_name", "Jemison".into()),
        ("email", "mae@example.org".into()),
        ("address1", "1 Space Way".into()),
        ("city", "Decatur".into()),
        ("state", "AL".into()),
        ("zip", "35601".into()),
        ("employer", "NASA".into()),
        ("occupation", "Astronaut".into()),
        ("own_funds", "yes".into()),
        ("citizen_or_resident", "yes".into()),
        ("not_contractor", "yes".into()),
        ("personal_card", "yes".into()),
        ("refcode", "sms-77".into()),
        ("idempotency_key", "page-key-1".into()),
        // What a hand-made post might add: ignored, never stored.
        ("card_number", CARD.into()),
    ];
    // Without the script: no token, refused before anything is stored.
    form.push(("payment_method", String::new()));
    let r = app.post_form("/donate", &form).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("needs JavaScript"));
    assert!(!body.contains(CARD));
    assert!(app.store.donation_text_values().await.unwrap().is_empty());
    // A card number typed into a free-text field comes back as an error, not echoed.
    let mut typo = form.clone();
    typo.retain(|(k, _)| *k != "payment_method" && *k != "occupation");
    typo.push(("payment_method", token.clone()));
    typo.push(("occupation", format!("see {CARD}")));
    let r = app.post_form("/donate", &typo).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("card number") && !body.contains(CARD),
        "{body}"
    );
    // With the token: charged, then the thank-you page from the committed row.
    form.retain(|(k, _)| *k != "payment_method");
    form.push(("payment_method", token.clone()));
    let r = app.post_form("/donate", &form).await;
    assert_eq!(r.status(), 303);
    let thanks = r.headers()["location"].to_str().unwrap().to_string();
    let html = app.text(&thanks).await;
    assert!(
        html.contains("Thank you") && html.contains("$25.00"),
        "{html}"
    );
    let id = thanks.trim_start_matches("/donate/thanks/").to_string();
    let row = app.store.donation_by_public_id(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.channel.as_str(), row.refcode.as_deref()),
        ("page", Some("sms-77"))
    );
    assert_eq!(row.card_last4.as_deref(), Some("4242"));
    // The same form posted twice (a double click) is one gift.
    let r = app.post_form("/donate", &form).await;
    assert_eq!(r.status(), 303);
    assert_eq!(charges_for(&app.primary, &id), 1);
    for v in app.store.donation_text_values().await.unwrap() {
        assert!(!v.contains(CARD), "{v}");
    }

    // Staff pages behind the login.
    let r = app.client.get(app.url("/donations")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = |p: &str| app.client.get(app.url(p)).header("cookie", &cookie).send();
    let html = page("/donations?state=succeeded&refcode=sms-77")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&id), "{html}");
    let html = page("/donations?state=declined")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains(&id));
    let r = page("/donations/overview").await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("<svg") && html.contains("sms-77") && html.contains("$25.00"),
        "{html}"
    );
    assert!(html.contains("primary (primary)"), "the current route");
    assert!(html.contains("No reconciliation has run yet"));
    app.stop().await;
}

async fn recurring_gifts_and_giving_links_work_from_the_donors_side(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    // A monthly gift through the API: charged now, a plan started, the cancel link once.
    let mut body = gift("15", "ivy@example.org", "pm_card_visa");
    body["recurring"] = json!({"every": "month"});
    let (s, v) = app.donate("rec-1", &body).await;
    assert_eq!(s, 201, "{v}");
    let cancel = v["cancel_url"].as_str().expect("a cancel link").to_string();
    assert!(cancel.starts_with("/donate/recurring/cancel/"), "{cancel}");
    let person = v["person_id"].as_i64().unwrap();
    let plans = app.store.plans(10).await.unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(
        (plans[0].every.as_str(), plans[0].state.as_str()),
        ("month", "active")
    );
    // The replay of the same key starts nothing more and shows no cancel link again.
    let (s, v) = app.donate("rec-1", &body).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("cancel_url").is_none(), "{v}");
    assert_eq!(app.store.plans(10).await.unwrap().len(), 1);
    // Bad schedules are refused with their codes, and nothing is charged for them.
    let charges = app.primary.ledger().len();
    for (i, (recurring, code)) in [
        (json!({"every": "day"}), "invalid_interval"),
        (
            json!({"every": "month", "ends_on": "2026-02-30"}),
            "invalid_date",
        ),
        (
            json!({"every": "month", "ends_on": "2001-01-01"}),
            "invalid_end",
        ),
        (json!({"every": "month", "often": true}), "invalid_field"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = gift("15", "ivy@example.org", "pm_card_visa");
        b["recurring"] = recurring;
        let (s, v) = app.donate(&format!("rec-bad-{i}"), &b).await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    assert_eq!(app.primary.ledger().len(), charges);

    // The cancel link: a page first (a link preview cancels nothing), then the button.
    let html = app.text(&cancel).await;
    assert!(
        html.contains("Cancel your recurring gift") && html.contains("every month"),
        "{html}"
    );
    assert_eq!(app.store.plans(10).await.unwrap()[0].state, "active");
    let r = app.post_form(&cancel, &[("x", "")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("is canceled"));
    assert_eq!(app.store.plans(10).await.unwrap()[0].state, "canceled");
    let r = app.post_form(&cancel, &[("x", "")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("already ended"));
    let r = app
        .client
        .get(app.url("/donate/recurring/cancel/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A giving link for the donor's saved card: staff issue it, the donor taps once.
    let issue = |b: Value| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url("/api/v1/donations/giving-links"))
                .bearer_auth(&app.token)
                .json(&b)
                .send()
                .await
                .unwrap();
            split(r).await
        }
    };
    let (s, v) = issue(json!({"person_id": person, "amount": "10"})).await;
    assert_eq!(s, 201, "{v}");
    let link = v["url"].as_str().unwrap().to_string();
    assert_eq!(v["amount_cents"], 1000);
    for (b, code) in [
        (
            json!({"person_id": person + 1000, "amount": "10"}),
            "no_saved_method",
        ),
        (
            json!({"person_id": person, "amount": "-1"}),
            "invalid_amount",
        ),
        (
            json!({"person_id": person, "amount": "10", "valid_days": 0}),
            "invalid_valid_days",
        ),
    ] {
        let (s, v) = issue(b).await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let r = app
        .client
        .post(app.url("/api/v1/donations/giving-links"))
        .json(&json!({"person_id": person, "amount": "10"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let html = app.text(&link).await;
    assert!(html.contains("$10.00") && html.contains("4242"), "{html}");
    assert!(!html.contains(CARD));
    let before = app.primary.ledger().len();
    let r = app.post_form(&link, &[("x", "")]).await;
    assert_eq!(r.status(), 303);
    let thanks = r.headers()["location"].to_str().unwrap().to_string();
    assert!(app.text(&thanks).await.contains("$10.00"));
    assert_eq!(app.primary.ledger().len(), before + 1);
    // A second tap shows the same gift and charges nothing; the page says it was used.
    let r = app.post_form(&link, &[("x", "")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"].to_str().unwrap(), thanks);
    assert_eq!(app.primary.ledger().len(), before + 1);
    let r = app.client.get(app.url(&link)).send().await.unwrap();
    assert_eq!(r.status(), 410);
    // An expired link gives nothing.
    let service = Donations::new(app.store.clone(), app.router.clone(), PayConfig::default());
    let method = app
        .store
        .saved_methods(narwhal_domain::PersonId(person))
        .await
        .unwrap()[0]
        .id;
    let stale = service
        .issue_one_click_link(narwhal_domain::PersonId(person), method, 500, -1)
        .await
        .unwrap();
    let r = app
        .post_form(&format!("/donate/give/{stale}"), &[("x", "")])
        .await;
    assert_eq!(r.status(), 410);
    assert_eq!(app.primary.ledger().len(), before + 1);

    // The page: "every week" starts a plan, and the thank-you page carries its cancel link.
    let mut form: Vec<(&str, &str)> = vec![
        ("amount", "20.00"),
        ("frequency", "week"),
        ("first_name", "Mae"),
        ("last_name", "Jemison"),
        ("email", "mae@example.org"),
        ("address1", "1 Space Way"),
        ("city", "Decatur"),
        ("state", "AL"),
        ("zip", "35601"),
        ("employer", "NASA"),
        ("occupation", "Astronaut"),
        ("own_funds", "yes"),
        ("citizen_or_resident", "yes"),
        ("not_contractor", "yes"),
        ("personal_card", "yes"),
        ("payment_method", "pm_card_visa"),
        ("idempotency_key", "page-weekly-1"),
    ];
    let r = app.post_form("/donate", &form).await;
    assert_eq!(r.status(), 303);
    let thanks = r.headers()["location"].to_str().unwrap().to_string();
    let html = app.text(&thanks).await;
    assert!(
        html.contains("every week") && html.contains("recurring&#x2f;cancel&#x2f;"),
        "{html}"
    );
    assert!(app
        .store
        .plans(10)
        .await
        .unwrap()
        .iter()
        .any(|p| p.every == "week"));
    form.retain(|(k, _)| *k != "frequency" && *k != "idempotency_key");
    form.push(("frequency", "daily"));
    form.push(("idempotency_key", "page-weekly-2"));
    let r = app.post_form("/donate", &form).await;
    assert_eq!(r.status(), 422);
    app.stop().await;
}

async fn a_device_that_saved_a_card_gives_in_one_tap(backend: Backend) {
    let Some(app) = DonApp::spawn(backend, lenient()).await else {
        return;
    };
    let form = |key: &'static str, save: bool| {
        let mut f: Vec<(&str, &str)> = vec![
            ("amount", "25.00"),
            ("first_name", "Lin"),
            ("last_name", "Ng"),
            ("email", "lin@example.org"),
            ("address1", "3 Elm St"),
            ("city", "Dayton"),
            ("state", "OH"),
            ("zip", "45402"),
            ("employer", "Self"),
            ("occupation", "Writer"),
            ("own_funds", "yes"),
            ("citizen_or_resident", "yes"),
            ("not_contractor", "yes"),
            ("personal_card", "yes"),
            ("payment_method", "pm_card_visa"),
            ("idempotency_key", key),
        ];
        if save {
            f.push(("save_method", "yes"));
        }
        f
    };
    // Without saving, no device cookie and no one-tap offer.
    let r = app.post_form("/donate", &form("tap-0", false)).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers().get("set-cookie").is_none());
    // Saving the card remembers this device (an HttpOnly cookie for /donate only).
    let r = app.post_form("/donate", &form("tap-1", true)).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("narwhal_donor=")
            && set.contains("HttpOnly")
            && set.contains("Path=/donate"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let page = |cookie: Option<String>| {
        let app = &app;
        async move {
            let mut req = app.client.get(app.url("/donate"));
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            req.send().await.unwrap().text().await.unwrap()
        }
    };
    assert!(!page(None).await.contains("one tap"));
    let html = page(Some(cookie.clone())).await;
    assert!(
        html.contains("Welcome back, Lin") && html.contains("ending in 4242"),
        "{html}"
    );
    assert!(!html.contains(CARD));
    let key_at = html.find("id=\"one-tap\"").unwrap();
    let key_html = &html[key_at..];
    let needle = "name=\"idempotency_key\" value=\"";
    let v = key_html.find(needle).unwrap() + needle.len();
    let key: String = key_html[v..].chars().take_while(|c| *c != '"').collect();
    assert!(
        key.len() > 20,
        "the page gives the one-tap form its own key: {key}"
    );
    // One tap gives; a double tap (same page, same key) is the same gift.
    let before = app.primary.ledger().len();
    let tap = |cookie: String, amount: &'static str, key: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/donate/one-tap"))
                .header("cookie", cookie)
                .form(&[("amount", amount.to_string()), ("idempotency_key", key)])
                .send()
                .await
                .unwrap()
        }
    };
    let r = tap(cookie.clone(), "10.00", key.clone()).await;
    assert_eq!(r.status(), 303);
    let thanks = r.headers()["location"].to_str().unwrap().to_string();
    assert!(app.text(&thanks).await.contains("$10.00"));
    let r = tap(cookie.clone(), "10.00", key.clone()).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"].to_str().unwrap(), thanks);
    assert_eq!(app.primary.ledger().len(), before + 1);
    // Bad amounts and a missing key are refused, charging nothing.
    assert_eq!(tap(cookie.clone(), "-5", "k-2".into()).await.status(), 422);
    assert_eq!(tap(cookie.clone(), "10", String::new()).await.status(), 422);
    // A forged cookie gives nothing.
    assert_eq!(
        tap("narwhal_donor=forged".into(), "10", "k-3".into())
            .await
            .status(),
        401
    );
    assert_eq!(app.primary.ledger().len(), before + 1);
    // Forgetting the device clears the cookie and the server's record of it.
    let r = app
        .client
        .post(app.url("/donate/one-tap/forget"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(tap(cookie.clone(), "10", "k-4".into()).await.status(), 401);
    assert!(!page(Some(cookie)).await.contains("Welcome back"));
    assert_eq!(app.primary.ledger().len(), before + 1);
    app.stop().await;
}
