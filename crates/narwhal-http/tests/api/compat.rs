//! The Stripe-compatible API (`/v1/...`), the redundant path: Stripe's official Python
//! library against Narwhal, failover to the backup processor, pledges when every
//! processor is down, Stripe's idempotency rules, signed webhook events from the
//! outbox, and keys. The processors are two fake Stripe servers with their own books.

use narwhal_domain::Scope;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, Fault, DEFAULT_KEY};
use narwhal_http::{AppState, HttpConfig};
use narwhal_mail::Secret;
use narwhal_pay::compat::{Compat, CompatConfig, WebhookEndpoint};
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{Donations, PayConfig};
use narwhal_pay::stripe::{webhook, StripeConfig, StripeProcessor};
use narwhal_pay::Processor;
use narwhal_store::test_support::TestDb;
use narwhal_store::{Backend, Store};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WHSEC: &str = "whsec_narwhal_compat_test";

/// What the webhook endpoint received: (Stripe-Signature, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

struct CompatApp {
    base: String,
    token: String,
    client: reqwest::Client,
    store: Store,
    compat: Compat,
    primary: FakeStripe,
    backup: FakeStripe,
    received: Received,
    /// The endpoint answers 500 while this is above zero (and counts down).
    fail_next: Arc<AtomicUsize>,
    _db: TestDb,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn webhook_endpoint(received: Received, fail_next: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: String| async move {
                if fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let sig = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                received.lock().unwrap().push((sig, body));
                axum::http::StatusCode::OK
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn processor(name: &str, fake: &FakeStripe) -> Arc<dyn Processor> {
    let mut config =
        StripeConfig::new(name, Secret::new(DEFAULT_KEY.to_string())).base_url(fake.url());
    config.max_requests_per_second = 1_000;
    config.burst = 100;
    config.request_timeout = Duration::from_secs(5);
    Arc::new(StripeProcessor::new(config).unwrap())
}

impl CompatApp {
    async fn spawn(backend: Backend) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let store = db.store.clone();
        let primary = FakeStripe::start(FakeStripeConfig::default())
            .await
            .unwrap();
        let backup = FakeStripe::start(FakeStripeConfig::default())
            .await
            .unwrap();
        let router = Router::new(
            vec![
                processor("stripe-primary", &primary),
                processor("stripe-backup", &backup),
            ],
            BreakerConfig::default(),
        );
        let pay = PayConfig {
            settle_timeout: Duration::from_secs(1),
            settle_interval: Duration::from_millis(50),
            ..PayConfig::default()
        };
        let donations = Donations::new(store.clone(), Arc::new(router), pay);
        let received: Received = Arc::default();
        let fail_next = Arc::new(AtomicUsize::new(0));
        let url = webhook_endpoint(received.clone(), fail_next.clone()).await;
        let compat = Compat::new(
            donations,
            CompatConfig {
                webhook: Some(WebhookEndpoint {
                    url,
                    secret: Secret::new(WHSEC.to_string()),
                }),
                ..CompatConfig::default()
            },
        )
        .unwrap();
        let state = AppState::new(store.clone(), HttpConfig::default()).with_compat(compat.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(narwhal_http::serve(listener, state, std::future::pending()));
        let (token, hash) = narwhal_http::new_token();
        store
            .create_token(
                "web-frontend",
                &hash,
                &[Scope::DonationsWrite, Scope::DonationsRefund],
                "test",
            )
            .await
            .unwrap();
        Some(Self {
            base,
            token,
            client: reqwest::Client::new(),
            store,
            compat,
            primary,
            backup,
            received,
            fail_next,
            _db: db,
            _server: server,
        })
    }

    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, Value, bool) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .form(form);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        (r.status().as_u16(), r.json().await.unwrap(), replayed)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// A complete gift's form: the donor's legal fields as metadata.
fn gift<'a>(amount: &'a str, pm: &'a str, confirm: bool) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("amount", amount),
        ("currency", "usd"),
        ("payment_method", pm),
        ("metadata[first_name]", "Ada"),
        ("metadata[last_name]", "Lovelace"),
        ("metadata[email]", "ada@example.org"),
        ("metadata[address1]", "1 Main St"),
        ("metadata[city]", "Columbus"),
        ("metadata[state]", "OH"),
        ("metadata[zip]", "43215"),
        ("metadata[employer]", "Analytical Engines"),
        ("metadata[occupation]", "Mathematician"),
        ("metadata[own_funds]", "true"),
        ("metadata[citizen_or_resident]", "true"),
        ("metadata[not_contractor]", "true"),
    ];
    if confirm {
        f.push(("confirm", "true"));
    }
    f
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python that can `import stripe` (the project's `.venv` first), or `None` with a
/// loud skip (a failure under `CI=true`).
fn python_with_stripe() -> Option<PathBuf> {
    let found = [
        repo_root().join(".venv/bin/python"),
        PathBuf::from("python3"),
    ]
    .into_iter()
    .find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import stripe"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        let msg = "Python with the `stripe` package not found (run scripts/install-deps)";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
        eprintln!("SKIPPED the official Stripe client check: {msg}");
    }
    found
}

async fn run_python(app: &CompatApp, args: &[&str]) -> Option<(bool, String)> {
    let python = python_with_stripe()?;
    let mut cmd = std::process::Command::new(python);
    cmd.arg(repo_root().join("tests/stripe-py/check_narwhal.py"))
        .arg(&app.base)
        .arg(&app.token)
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

macro_rules! compat_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = super::CompatApp::spawn(narwhal_store::Backend::Sqlite).await.expect("sqlite");
                    super::$name(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = super::CompatApp::spawn(narwhal_store::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

async fn the_official_python_library_takes_donations_through_narwhal(app: CompatApp) {
    let Some((ok, out)) = run_python(&app, &[]).await else {
        return;
    };
    assert!(ok, "check_narwhal.py failed:\n{out}");
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    // The processor's own books: one charge, fully refunded; one decline; nothing at
    // the backup.
    let ledger = app.primary.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!((ledger[0].amount, ledger[0].refunded), (5_500, 5_500));
    assert_eq!(app.primary.stats().declines, 1);
    assert!(app.backup.ledger().is_empty());
    // And ours: the gift is refunded, taken through the compat channel.
    let ours = app.store.donations_since(0, 10).await.unwrap();
    let refunded: Vec<_> = ours.iter().filter(|d| d.state == "refunded").collect();
    assert_eq!(refunded.len(), 1, "{ours:?}");
    assert_eq!(refunded[0].channel, "compat");
    assert_eq!(refunded[0].refunded_cents, 5_500);
    assert_eq!(ours.iter().filter(|d| d.state == "declined").count(), 1);
}

async fn with_the_primary_down_the_official_client_still_succeeds_via_the_backup(app: CompatApp) {
    app.primary.set_fault(Fault::Down);
    let Some((ok, out)) = run_python(&app, &["--mode", "charge"]).await else {
        return;
    };
    assert!(ok, "{out}");
    let pi: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(pi["status"], "succeeded", "{out}");
    assert_eq!(pi["amount_received"], 4_200);
    assert!(
        app.primary.ledger().is_empty(),
        "{:?}",
        app.primary.ledger()
    );
    let backup = app.backup.ledger();
    assert_eq!(backup.len(), 1, "{backup:?}");
    assert_eq!(backup[0].amount, 4_200);
    let ours = app.store.donations_since(0, 10).await.unwrap();
    assert_eq!(ours[0].processor.as_deref(), Some("stripe-backup"));
}

async fn with_every_processor_down_the_gift_is_a_pledge_never_a_success(app: CompatApp) {
    app.primary.set_fault(Fault::Down);
    app.backup.set_fault(Fault::Down);
    let (s, v, _) = app
        .post(
            "/v1/payment_intents",
            Some("pledge-1"),
            &gift("3000", "pm_card_visa", true),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "requires_action", "{v}");
    assert_eq!(v["amount_received"], 0);
    assert_eq!(v["next_action"]["type"], "narwhal_pledge");
    let donation = v["next_action"]["narwhal_pledge"]["donation"]
        .as_str()
        .unwrap();
    let d = app
        .store
        .donation_by_public_id(donation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.state, "pledged");
    assert!(app.primary.ledger().is_empty() && app.backup.ledger().is_empty());
    // A pledged intent is not confirmed again: one gift, one completion link.
    let id = v["id"].as_str().unwrap();
    let (s, v, _) = app
        .post(&format!("/v1/payment_intents/{id}/confirm"), None, &[])
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("payment_intent_unexpected_state")),
        "{v}"
    );
}

async fn idempotency_is_stripes_replay_refuse_and_409_in_flight(app: CompatApp) {
    // Slow processor: the first request is still in flight when the second arrives.
    app.primary.set_fault(Fault::Slow { ms: 1_500 });
    let form = gift("2500", "pm_card_visa", true);
    let (first, second) = tokio::join!(
        app.post("/v1/payment_intents", Some("same-key"), &form),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.post("/v1/payment_intents", Some("same-key"), &form)
                .await
        }
    );
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["status"], "succeeded");
    assert_eq!(second.0, 409, "{}", second.1);
    assert_eq!(second.1["error"]["type"], "idempotency_error");
    app.primary.set_fault(Fault::None);
    // Replayed byte for byte, marked as a replay; nothing charged again.
    let (s, v, replayed) = app
        .post("/v1/payment_intents", Some("same-key"), &form)
        .await;
    assert_eq!((s, replayed), (200, true));
    assert_eq!(v, first.1);
    // Other parameters with the key: refused, even in another order of fields.
    let mut other = gift("2501", "pm_card_visa", true);
    other.reverse();
    let (s, v, _) = app
        .post("/v1/payment_intents", Some("same-key"), &other)
        .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("idempotency_error")),
        "{v}"
    );
    assert_eq!(app.primary.ledger().len(), 1);
    // A decline is saved too: its replay does not ask the processor again.
    let declined = gift("700", "pm_card_chargeDeclined", true);
    let (s1, v1, _) = app
        .post("/v1/payment_intents", Some("dec-key"), &declined)
        .await;
    let (s2, v2, replayed) = app
        .post("/v1/payment_intents", Some("dec-key"), &declined)
        .await;
    assert_eq!((s1, s2, replayed), (402, 402, true));
    assert_eq!(v1, v2);
    assert_eq!(v1["error"]["type"], "card_error");
    assert_eq!(
        v1["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
    assert_eq!(app.primary.stats().declines, 1);
    // Retrieving reads the donation: still succeeded, one charge.
    let id = first.1["id"].as_str().unwrap();
    let (s, v) = app.get(&format!("/v1/payment_intents/{id}")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")));
    assert!(v["latest_charge"].as_str().unwrap().starts_with("ch_"));
}

async fn a_declined_intent_can_be_confirmed_again_with_another_card_and_charges_once(
    app: CompatApp,
) {
    let (s, v, _) = app
        .post(
            "/v1/payment_intents",
            None,
            &gift("1500", "pm_card_chargeDeclined", false),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (200, Some("requires_confirmation")),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let confirm = format!("/v1/payment_intents/{id}/confirm");
    let (s, v, _) = app.post(&confirm, None, &[]).await;
    assert_eq!(s, 402, "{v}");
    let (s, v, _) = app
        .post(&confirm, None, &[("payment_method", "pm_card_mastercard")])
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    // Confirming a succeeded intent again is refused: never a second charge.
    let (s, v, _) = app.post(&confirm, None, &[]).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("payment_intent_unexpected_state"))
    );
    let ledger = app.primary.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].amount, 1_500);
    // Another key, even with the same name and scopes, sees no such intent.
    let (other, hash) = narwhal_http::new_token();
    app.store
        .create_token("web-frontend", &hash, &[Scope::DonationsWrite], "test")
        .await
        .unwrap();
    let r = app
        .client
        .get(format!("{}/v1/payment_intents/{id}", app.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn bad_requests_get_stripe_errors_and_card_numbers_are_never_kept(app: CompatApp) {
    // No key, an unknown key, a key without the scope.
    let r = app
        .client
        .post(format!("{}/v1/payment_intents", app.base))
        .form(&gift("100", "pm_card_visa", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (t, hash) = narwhal_http::new_token();
    app.store
        .create_token("reader", &hash, &[Scope::DonationsRead], "test")
        .await
        .unwrap();
    let r = app
        .client
        .post(format!("{}/v1/refunds", app.base))
        .bearer_auth(&t)
        .form(&[("payment_intent", "pi_x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A card number typed into a donor field: refused, named, not echoed, not stored.
    let mut form = gift("100", "pm_card_visa", true);
    form.push(("metadata[note]", "4242 4242 4242 4242"));
    let (s, v, _) = app
        .post("/v1/payment_intents", Some("card-in-text"), &form)
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "card_number_in_text");
    assert_eq!(v["error"]["param"], "metadata[note]");
    assert!(!v.to_string().contains("4242"));
    let (s, v, _) = app
        .post("/v1/payment_intents", Some("card-in-text"), &form)
        .await;
    assert_eq!(s, 400, "{v}");
    // Missing donor fields are named by their metadata key; unknown parameters refused.
    let mut form = gift("100", "pm_card_visa", true);
    form.retain(|(k, _)| *k != "metadata[last_name]");
    let (s, v, _) = app.post("/v1/payment_intents", None, &form).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("metadata[last_name]")),
        "{v}"
    );
    let mut form = gift("100", "pm_card_visa", false);
    form.push(("shipping[name]", "x"));
    let (s, v, _) = app.post("/v1/payment_intents", None, &form).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("parameter_unknown"))
    );
    for amount in ["0", "-5", "12.50", "abc"] {
        let (s, v, _) = app
            .post(
                "/v1/payment_intents",
                None,
                &gift(amount, "pm_card_visa", false),
            )
            .await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (400, Some("amount")),
            "{amount}: {v}"
        );
    }
    let (s, _) = app.get("/v1/payment_intents/pi_nwnothing").await;
    assert_eq!(s, 404);
    // No stored row anywhere holds the number.
    let dump = app.store.donations_since(0, 100).await.unwrap();
    assert!(!format!("{dump:?}").contains("4242 4242"));
    assert!(app.primary.ledger().is_empty());
}

async fn events_are_signed_delivered_at_least_once_and_retried(app: CompatApp) {
    let (s, v, _) = app
        .post(
            "/v1/payment_intents",
            Some("evt-1"),
            &gift("6000", "pm_card_visa", true),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _, _) = app
        .post(
            "/v1/refunds",
            Some("evt-r1"),
            &[("payment_intent", id.as_str()), ("amount", "1000")],
        )
        .await;
    assert_eq!(s, 200);
    // A retrieve does not queue the succeeded event twice.
    app.get(&format!("/v1/payment_intents/{id}")).await;
    // The endpoint fails the first delivery: it is retried after a backoff.
    app.fail_next.store(1, Ordering::SeqCst);
    let first = app.compat.deliver_webhooks("test").await.unwrap();
    assert_eq!(first, 1, "one of two delivered, the other failed");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(app.compat.deliver_webhooks("test").await.unwrap(), 1);
    assert_eq!(app.compat.deliver_webhooks("test").await.unwrap(), 0);
    let received = app.received.lock().unwrap().clone();
    let mut kinds = Vec::new();
    for (sig, body) in &received {
        webhook::verify(
            Some(sig),
            body.as_bytes(),
            WHSEC,
            narwhal_store::now_ms() / 1000,
            300,
        )
        .unwrap();
        let e: Value = serde_json::from_str(body).unwrap();
        assert_eq!(e["object"], "event");
        kinds.push(e["type"].as_str().unwrap().to_string());
        if e["type"] == "payment_intent.succeeded" {
            assert_eq!(e["data"]["object"]["id"], id.as_str());
            assert_eq!(e["data"]["object"]["status"], "succeeded");
        } else {
            assert_eq!(e["data"]["object"]["amount_refunded"], 1_000);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["charge.refunded", "payment_intent.succeeded"]);
    // A refund made by another path (staff, a processor webhook) is found by the
    // sweep and sent once, however often the sweep runs.
    let d = app
        .store
        .donation_by_idempotency_key(&format!("compat:{id}:1"))
        .await
        .unwrap()
        .unwrap();
    app.store
        .record_refund(d.id, "re_by_staff", 500, &Default::default())
        .await
        .unwrap();
    assert!(app.compat.sweep_events(0).await.unwrap() >= 1);
    app.compat.sweep_events(0).await.unwrap();
    assert_eq!(app.compat.deliver_webhooks("test").await.unwrap(), 1);
    let last = app.received.lock().unwrap().last().cloned().unwrap();
    let e: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(e["type"], "charge.refunded");
    assert_eq!(e["data"]["object"]["amount_refunded"], 1_500);
}

compat_tests!(
    the_official_python_library_takes_donations_through_narwhal,
    with_the_primary_down_the_official_client_still_succeeds_via_the_backup,
    with_every_processor_down_the_gift_is_a_pledge_never_a_success,
    idempotency_is_stripes_replay_refuse_and_409_in_flight,
    a_declined_intent_can_be_confirmed_again_with_another_card_and_charges_once,
    bad_requests_get_stripe_errors_and_card_numbers_are_never_kept,
    events_are_signed_delivered_at_least_once_and_retried,
);
