//! A fake Stripe server (axum on `127.0.0.1:0`, or any address), faithful to what a
//! donation system depends on: PaymentIntents, refunds, idempotency, rate limits,
//! declines, signed webhooks, and the failures that cause double charges.
//!
//! What it models:
//! - Keys: requests authenticate with a configured secret key, as `Bearer KEY` (the
//!   official libraries) or HTTP Basic with the key as user name (`curl -u KEY:`);
//!   anything else is 401 `invalid_request_error`.
//! - PaymentIntents: create (with or without `confirm=true`), confirm, cancel,
//!   retrieve, list (`created[gte|gt|lte|lt]`, `limit`, `starting_after`,
//!   `ending_before`, newest first), and search (`metadata['k']:'v'`, `status:'..'`,
//!   `customer:'..'`, clauses joined by `AND`). `expand[]` of `latest_charge` and
//!   `latest_charge.balance_transaction` (prefixed `data.` on lists).
//!   Unknown parameters are refused like Stripe does (400 `parameter_unknown`).
//! - Test payment methods by token: `pm_card_visa`, `pm_card_mastercard`,
//!   `pm_card_amex`, `pm_card_chargeDeclined` (`generic_decline`),
//!   `pm_card_chargeDeclinedInsufficientFunds`, `pm_card_authenticationRequired`
//!   (the intent stops at `requires_action`), and any token minted with
//!   [`FakeStripe::mint_card`] (a chosen fingerprint, brand, last 4, behaviour), for
//!   card-testing tests.
//! - A decline answers 402 `card_error` with `decline_code`, the failed charge and
//!   the intent (back at `requires_payment_method`, with `last_payment_error`).
//! - Refunds: full or partial, by `payment_intent` or `charge`; refunding more than
//!   is left is refused (`amount_too_large`, `charge_already_refunded`).
//! - `GET /v1/balance`, `GET /v1/charges/{id}`, `GET /v1/refunds/{id}`,
//!   `GET /v1/events/{id}`, and `GET /v1/events` (newest first, `type`, `limit`,
//!   `starting_after`), to catch up on missed webhooks.
//! - Idempotency (POST only), per API key: the first answer to a key, errors
//!   included, is saved and replayed (`Idempotent-Replayed: true`); the same key with
//!   other parameters or on another endpoint is 400 `idempotency_error`; a request
//!   with a key whose first request is still running is 409 `idempotency_error`.
//!   Answers are not saved when the request failed validation or never began
//!   (authentication, rate limit, `down`), as Stripe documents.
//! - A rate limit per key (requests per second, a token bucket holding one second's
//!   worth): over it, 429 `rate_limit`.
//! - Latency added to every API request, inside the request's "in flight" window.
//! - Its own ledger of every succeeded charge ([`LedgerCharge`]: amount, attempt key,
//!   metadata, idempotency key, card fingerprint, refunds), so a test can count double
//!   charges against what the "processor" really did.
//! - Webhooks: with an endpoint set, events (`payment_intent.succeeded`,
//!   `payment_intent.payment_failed`, `charge.refunded`) are posted asynchronously,
//!   signed (`Stripe-Signature`), retried until a 2xx (at least once), optionally
//!   twice each and in shuffled order.
//! - Faults on command ([`Fault`]), from Rust or over HTTP (`POST /_fake/faults`).
//!
//! Control endpoints (no key, not subject to faults; bind only to loopback):
//! - `POST /_fake/faults` with `{"fault": "none" | "down" | "error_500" |
//!   "rate_limited" | "decline_all" | "ambiguous" | "slow", "ms": 500}`;
//! - `POST /_fake/settings` with `{"latency_ms": 100, "rate_limit": 200}` (either
//!   may be left out; a rate limit of 0 is none);
//! - `GET /_fake/ledger` (the ledger as JSON), `GET /_fake/stats` (the counters);
//! - `POST /_fake/cards` with `{"fingerprint": "..", "brand": "visa", "last4": "4242",
//!   "decline_code": null}` answering `{"id": "pm_..."}`.
//!
//! Deviations from Stripe: amounts in any three-letter currency are taken as given
//! (no zero-decimal currencies); only automatic capture; no customers, payment
//! method objects or setup intents (a `cus_...` id is accepted as existing); search
//! is immediate (Stripe's lags up to a minute); webhooks retry within seconds, not
//! days; ids are a random tag per fake (so two fakes, like two accounts, never
//! share an id) followed by a sequence number, not wholly random.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use narwhal_pay::stripe::form::Fields;
use narwhal_pay::stripe::wire::{self, error_type, ApiError, Expandable};
use narwhal_pay::stripe::{webhook, ATTEMPT_METADATA_KEY};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The key a default config accepts.
pub const DEFAULT_KEY: &str = "sk_test_narwhal";

/// The API version the fake reports in events.
const API_VERSION: &str = "2024-06-20";

/// Where and how to post webhook events.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    /// The endpoint URL (`http://127.0.0.1:PORT/webhooks/stripe`).
    pub url: String,
    /// The signing secret (`whsec_...`).
    pub secret: String,
    /// Post every event twice (at-least-once delivery made visible).
    pub duplicates: bool,
    /// Post each event after a random delay of up to this long, so they arrive out
    /// of order; zero keeps the order.
    pub shuffle_within: Duration,
    /// Tries per delivery before giving up.
    pub max_attempts: u32,
    /// The wait before the first retry; doubled each time.
    pub retry_after: Duration,
}

impl WebhookTarget {
    /// Posts to `url`, signed with `secret`, once each, in order, with 8 tries.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            duplicates: false,
            shuffle_within: Duration::ZERO,
            max_attempts: 8,
            retry_after: Duration::from_millis(50),
        }
    }
}

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeStripeConfig {
    /// Secret keys it accepts.
    pub keys: Vec<String>,
    /// Added to every API request (the donations bench sets 100 ms).
    pub latency: Duration,
    /// Requests per second per key before 429; `None` is unlimited.
    pub rate_limit: Option<u32>,
    /// Where to post events, if anywhere.
    pub webhook: Option<WebhookTarget>,
    /// How long the `ambiguous` fault holds an answer (longer than the client's
    /// timeout).
    pub ambiguous_hold: Duration,
}

impl Default for FakeStripeConfig {
    fn default() -> Self {
        Self {
            keys: vec![DEFAULT_KEY.to_string()],
            latency: Duration::ZERO,
            rate_limit: None,
            webhook: None,
            ambiguous_hold: Duration::from_secs(30),
        }
    }
}

/// A fault to inject, for every key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Answer every API request 503 at once, before doing anything.
    Down,
    /// Add this much latency to every API request.
    Slow {
        /// Milliseconds.
        ms: u64,
    },
    /// Answer every API request 500 `api_error` without doing anything (the answer
    /// is saved under its idempotency key, as Stripe saves 500s).
    #[serde(rename = "error_500")]
    Error500,
    /// Answer every API request 429 `rate_limit`.
    RateLimited,
    /// Decline every confirmation, whatever the card.
    DeclineAll,
    /// Do POST requests (charges are recorded in the ledger), then hold the answer
    /// for `ambiguous_hold`: a client with a shorter timeout cannot know what
    /// happened. Reads (GET) answer normally, so a status query can settle it.
    Ambiguous,
}

/// What a test card does when confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CardBehavior {
    /// The charge succeeds.
    #[default]
    Succeed,
    /// The charge is declined with this decline code (`generic_decline`,
    /// `insufficient_funds`, ...).
    Decline(String),
    /// The issuer wants 3-D Secure: the intent stops at `requires_action`.
    RequireAction,
}

/// A test card, referred to by its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCard {
    /// `visa`, `mastercard`, ...
    #[serde(default = "default_brand")]
    pub brand: String,
    /// Last four digits.
    #[serde(default = "default_last4")]
    pub last4: String,
    /// 1-12.
    #[serde(default = "default_exp_month")]
    pub exp_month: u8,
    /// Four digits.
    #[serde(default = "default_exp_year")]
    pub exp_year: u16,
    /// Stripe's fingerprint of the number: tokens of one card share it.
    pub fingerprint: String,
    /// What confirming with it does.
    #[serde(default)]
    pub behavior: CardBehavior,
}

fn default_brand() -> String {
    "visa".to_string()
}
fn default_last4() -> String {
    "4242".to_string()
}
fn default_exp_month() -> u8 {
    12
}
fn default_exp_year() -> u16 {
    2034
}

impl TestCard {
    /// A Visa card with this fingerprint that succeeds.
    pub fn visa(fingerprint: &str) -> Self {
        Self {
            brand: default_brand(),
            last4: default_last4(),
            exp_month: default_exp_month(),
            exp_year: default_exp_year(),
            fingerprint: fingerprint.to_string(),
            behavior: CardBehavior::Succeed,
        }
    }

    /// Sets what confirming with it does.
    pub fn behaves(mut self, behavior: CardBehavior) -> Self {
        self.behavior = behavior;
        self
    }
}

/// One succeeded charge, as the fake's own books record it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCharge {
    /// `ch_...`.
    pub charge: String,
    /// `pi_...`.
    pub payment_intent: String,
    /// Cents.
    pub amount: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// `metadata[narwhal_attempt]`, if sent.
    pub attempt_key: Option<String>,
    /// All metadata of the intent.
    pub metadata: BTreeMap<String, String>,
    /// The `Idempotency-Key` of the request that charged, if any.
    pub idempotency_key: Option<String>,
    /// The card's fingerprint.
    pub fingerprint: String,
    /// Cents refunded so far.
    pub refunded: i64,
    /// Unix seconds.
    pub created: i64,
}

/// One webhook delivery try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `evt_...`.
    pub event_id: String,
    /// The event type.
    pub kind: String,
    /// 1 for the first try of this copy.
    pub attempt: u32,
    /// The endpoint's status, or `None` when it could not be reached.
    pub status: Option<u16>,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FakeStripeStats {
    /// API requests received (control endpoints excluded).
    pub requests: u64,
    /// Refused for the key.
    pub unauthorized: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Answered from the idempotency store.
    pub replayed: u64,
    /// Answered 409 for a key in flight.
    pub conflicts: u64,
    /// Declined confirmations.
    pub declines: u64,
}

/// An idempotency entry.
#[derive(Debug)]
enum Idem {
    /// The first request is running.
    InFlight,
    /// Its answer.
    Done {
        fingerprint: String,
        status: u16,
        body: Bytes,
    },
}

#[derive(Debug)]
struct Bucket {
    milli_tokens: u64,
    refilled: Instant,
}

#[derive(Debug)]
struct IntentRow {
    pi: wire::PaymentIntent,
}

#[derive(Debug)]
struct ChargeRow {
    charge: wire::Charge,
    txn: Option<wire::BalanceTransaction>,
}

#[derive(Debug)]
struct Inner {
    config: FakeStripeConfig,
    fault: Fault,
    cards: HashMap<String, TestCard>,
    intents: HashMap<String, IntentRow>,
    /// Intent ids in creation order.
    order: Vec<String>,
    charges: HashMap<String, ChargeRow>,
    refunds: HashMap<String, wire::Refund>,
    events: HashMap<String, wire::Event>,
    idempotency: HashMap<(String, String), Idem>,
    buckets: HashMap<String, Bucket>,
    ledger: Vec<LedgerCharge>,
    deliveries: Vec<Delivery>,
    stats: FakeStripeStats,
    next_id: u64,
    /// Random per fake, in every id it hands out.
    id_tag: String,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    events: mpsc::UnboundedSender<wire::Event>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn builtin_cards() -> HashMap<String, TestCard> {
    let card = |brand: &str, last4: &str, fp: &str, behavior: CardBehavior| TestCard {
        brand: brand.to_string(),
        last4: last4.to_string(),
        exp_month: 12,
        exp_year: 2034,
        fingerprint: fp.to_string(),
        behavior,
    };
    let decline = |code: &str| CardBehavior::Decline(code.to_string());
    [
        (
            "pm_card_visa",
            card("visa", "4242", "fpVisa4242", CardBehavior::Succeed),
        ),
        (
            "pm_card_mastercard",
            card("mastercard", "4444", "fpMc4444", CardBehavior::Succeed),
        ),
        (
            "pm_card_amex",
            card("amex", "8431", "fpAmex8431", CardBehavior::Succeed),
        ),
        (
            "pm_card_chargeDeclined",
            card("visa", "0002", "fpVisa0002", decline("generic_decline")),
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            card("visa", "9995", "fpVisa9995", decline("insufficient_funds")),
        ),
        (
            "pm_card_authenticationRequired",
            card("visa", "3184", "fpVisa3184", CardBehavior::RequireAction),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A running fake Stripe. Dropping it stops the server and the webhook sender.
#[derive(Debug)]
pub struct FakeStripe {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn new_shared(config: FakeStripeConfig) -> (Arc<Shared>, mpsc::UnboundedReceiver<wire::Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            config,
            fault: Fault::None,
            cards: builtin_cards(),
            intents: HashMap::new(),
            order: Vec::new(),
            charges: HashMap::new(),
            refunds: HashMap::new(),
            events: HashMap::new(),
            idempotency: HashMap::new(),
            buckets: HashMap::new(),
            ledger: Vec::new(),
            deliveries: Vec::new(),
            stats: FakeStripeStats::default(),
            next_id: 0,
            id_tag: (0..8)
                .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
                .collect(),
        }),
        events: tx,
    });
    (shared, rx)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/faults", post(set_fault_http))
        .route("/_fake/settings", post(settings_http))
        .route("/_fake/ledger", get(ledger_http))
        .route("/_fake/stats", get(stats_http))
        .route("/_fake/cards", post(mint_card_http))
        .route(
            "/v1/payment_methods",
            post(tokenize_http).options(tokenize_preflight),
        )
        .fallback(api)
        .with_state(shared)
}

impl FakeStripe {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: FakeStripeConfig) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on a given address (a standalone fake for game days).
    pub async fn start_on(config: FakeStripeConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shared, rx) = new_shared(config);
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            // Runs until the FakeStripe is dropped (the task is aborted).
            let _ = axum::serve(listener, app).await;
        });
        let sender = tokio::spawn(deliver_events(shared.clone(), rx));
        Ok(Self {
            addr,
            shared,
            tasks: vec![server, sender],
        })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the fault (`Fault::None` clears it).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.lock().fault = fault;
    }

    /// Sets the latency added to every API request.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().config.latency = latency;
    }

    /// Sets the rate limit per key (`None`: unlimited).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        let mut inner = self.shared.lock();
        inner.config.rate_limit = per_second;
        inner.buckets.clear();
    }

    /// Sets (or clears) the webhook endpoint.
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        self.shared.lock().config.webhook = target;
    }

    /// Registers a test card and returns its token (`pm_...`).
    pub fn mint_card(&self, card: TestCard) -> String {
        mint(&mut self.shared.lock(), card)
    }

    /// Every succeeded charge, in order.
    pub fn ledger(&self) -> Vec<LedgerCharge> {
        self.shared.lock().ledger.clone()
    }

    /// Values of `metadata[key]` that more than one succeeded charge carries, with
    /// their counts: with `narwhal_attempt` (or a donation id), the double charges.
    pub fn double_charges(&self, metadata_key: &str) -> Vec<(String, usize)> {
        let inner = self.shared.lock();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &inner.ledger {
            if let Some(v) = c.metadata.get(metadata_key) {
                *counts.entry(v.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(v, n)| (v.to_string(), n))
            .collect()
    }

    /// Every event created, oldest first.
    pub fn events(&self) -> Vec<wire::Event> {
        let inner = self.shared.lock();
        let mut events: Vec<wire::Event> = inner.events.values().cloned().collect();
        events.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        events
    }

    /// Every webhook delivery try so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// The counters.
    pub fn stats(&self) -> FakeStripeStats {
        self.shared.lock().stats
    }
}

/// Runs a fake on `listener` until `shutdown` completes: for a standalone process
/// (`narwhal fake-stripe --port N`, a game day's processor).
pub async fn run(
    config: FakeStripeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (shared, rx) = new_shared(config);
    let sender = tokio::spawn(deliver_events(shared.clone(), rx));
    let result = axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await;
    sender.abort();
    result
}

fn next_id(inner: &mut Inner, prefix: &str) -> String {
    inner.next_id += 1;
    format!("{prefix}_{}{:016}", inner.id_tag, inner.next_id)
}

fn mint(inner: &mut Inner, card: TestCard) -> String {
    let id = next_id(inner, "pm");
    inner.cards.insert(id.clone(), card);
    id
}

// ---------------------------------------------------------------------------
// Answers

/// An answer before it is sent: status, JSON body, and whether the idempotency
/// layer keeps it (not for requests that failed validation).
struct Answer {
    status: u16,
    body: Bytes,
    save: bool,
}

impl Answer {
    fn ok<T: Serialize>(value: &T) -> Self {
        Self {
            status: 200,
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            save: true,
        }
    }

    fn error(status: u16, error: ApiError) -> Self {
        Self {
            status,
            body: Bytes::from(serde_json::to_vec(&error.envelope()).unwrap_or_default()),
            save: true,
        }
    }

    /// A validation failure: 400, not saved.
    fn invalid(error: ApiError) -> Self {
        Self {
            save: false,
            ..Self::error(400, error)
        }
    }

    fn missing(kind: &str, id: &str, param: &str) -> Self {
        Self {
            save: false,
            ..Self::error(
                404,
                ApiError::new(
                    error_type::INVALID_REQUEST_ERROR,
                    format!("No such {kind}: '{id}'"),
                )
                .code("resource_missing")
                .param(param),
            )
        }
    }

    fn into_response(self, extra: &[(&'static str, String)]) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.body).into_response();
        let headers = resp.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in extra {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.insert(*k, v);
            }
        }
        resp
    }
}

fn invalid_request(message: impl Into<String>) -> ApiError {
    ApiError::new(error_type::INVALID_REQUEST_ERROR, message)
}

// ---------------------------------------------------------------------------
// The API handler: faults, key, rate limit, idempotency, then the operation.

fn api_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_string())
}

fn redact_key(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let head: String = key.chars().take(8).collect();
    format!(
        "{head}{}{tail}",
        "*".repeat(key.len().saturating_sub(12).max(4))
    )
}

/// Takes one request from `key`'s bucket; false when over the limit.
fn take_token(inner: &mut Inner, key: &str) -> bool {
    let Some(rate) = inner.config.rate_limit else {
        return true;
    };
    let now = Instant::now();
    let capacity = u64::from(rate) * 1000;
    let bucket = inner.buckets.entry(key.to_string()).or_insert(Bucket {
        milli_tokens: capacity,
        refilled: now,
    });
    let elapsed_ms =
        u64::try_from(now.duration_since(bucket.refilled).as_millis()).unwrap_or(u64::MAX);
    bucket.milli_tokens = bucket
        .milli_tokens
        .saturating_add(elapsed_ms.saturating_mul(u64::from(rate)))
        .min(capacity);
    bucket.refilled = now;
    if bucket.milli_tokens < 1000 {
        return false;
    }
    bucket.milli_tokens -= 1000;
    true
}

/// A parsed API request.
struct Request {
    method: Method,
    path: String,
    fields: Fields,
    key: String,
    idempotency_key: Option<String>,
}

async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = {
        let mut inner = shared.lock();
        inner.stats.requests += 1;
        next_id(&mut inner, "req")
    };
    let ids = [("request-id", request_id.clone())];
    let (fault, latency) = {
        let inner = shared.lock();
        (inner.fault.clone(), inner.config.latency)
    };
    if fault == Fault::Down {
        return Answer::error(
            503,
            ApiError::new(
                error_type::API_ERROR,
                "The fake Stripe is down (fault injected). Nothing was done.",
            ),
        )
        .into_response(&ids);
    }
    let key = match api_key(&headers) {
        Some(k) if shared.lock().config.keys.contains(&k) => k,
        other => {
            shared.lock().stats.unauthorized += 1;
            let message = match other {
                None => "You did not provide an API key. You need to provide your API key in \
                         the Authorization header, using Bearer auth (e.g. 'Authorization: \
                         Bearer YOUR_SECRET_KEY')."
                    .to_string(),
                Some(k) => format!("Invalid API Key provided: {}", redact_key(&k)),
            };
            return Answer::error(401, invalid_request(message)).into_response(&ids);
        }
    };
    let limited = {
        let mut inner = shared.lock();
        let limited = fault == Fault::RateLimited || !take_token(&mut inner, &key);
        if limited {
            inner.stats.rate_limited += 1;
        }
        limited
    };
    if limited {
        return Answer::error(
            429,
            invalid_request(
                "Too many requests hit the API too quickly. We recommend an exponential \
                 backoff of your requests.",
            )
            .code("rate_limit"),
        )
        .into_response(&ids);
    }
    let raw = if method == Method::POST {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        uri.query().unwrap_or_default().to_string()
    };
    let fields = match Fields::parse(&raw) {
        Ok(f) => f,
        Err(e) => {
            return Answer::invalid(invalid_request(format!("Invalid request body: {e}")))
                .into_response(&ids)
        }
    };
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|_| method == Method::POST);
    if idempotency_key.as_ref().is_some_and(|k| k.len() > 255) {
        return Answer::invalid(
            invalid_request("Idempotency keys may be at most 255 characters long.")
                .code("idempotency_key_too_long"),
        )
        .into_response(&ids);
    }
    let request = Request {
        method: method.clone(),
        path: uri.path().to_string(),
        fields,
        key,
        idempotency_key,
    };
    let hold = method == Method::POST && fault == Fault::Ambiguous;
    let slow = match fault {
        Fault::Slow { ms } => Duration::from_millis(ms),
        _ => Duration::ZERO,
    };
    // The request is carried out in its own task: a client that gives up does not
    // stop it (Stripe does not notice a dropped connection either).
    let task = tokio::spawn(process(shared.clone(), request, fault, latency + slow));
    let (answer, replayed) = match task.await {
        Ok(r) => r,
        Err(_) => (
            Answer::error(500, ApiError::new(error_type::API_ERROR, "internal error")),
            false,
        ),
    };
    if hold {
        let hold_for = shared.lock().config.ambiguous_hold;
        tokio::time::sleep(hold_for).await;
    }
    let mut extra = ids.to_vec();
    if replayed {
        extra.push(("idempotent-replayed", "true".to_string()));
    }
    answer.into_response(&extra)
}

/// Idempotency around the operation. Returns the answer and whether it was replayed.
async fn process(
    shared: Arc<Shared>,
    request: Request,
    fault: Fault,
    latency: Duration,
) -> (Answer, bool) {
    let fingerprint = format!(
        "{} {} {:?}",
        request.method,
        request.path,
        request.fields.canonical()
    );
    let slot = request
        .idempotency_key
        .as_ref()
        .map(|k| (request.key.clone(), k.clone()));
    if let Some(slot) = &slot {
        let mut inner = shared.lock();
        match inner.idempotency.get(slot) {
            Some(Idem::InFlight) => {
                inner.stats.conflicts += 1;
                return (
                    Answer {
                        save: false,
                        ..Answer::error(
                            409,
                            ApiError::new(
                                error_type::IDEMPOTENCY_ERROR,
                                "There is currently another in-progress request using this \
                                 Idempotent Key (that probably means you submitted twice, and \
                                 the other request is still going through): "
                                    .to_string()
                                    + &slot.1
                                    + ". Please try again later.",
                            ),
                        )
                    },
                    false,
                );
            }
            Some(Idem::Done {
                fingerprint: first,
                status,
                body,
            }) => {
                if *first != fingerprint {
                    return (
                        Answer::invalid(ApiError::new(
                            error_type::IDEMPOTENCY_ERROR,
                            format!(
                                "Keys for idempotent requests can only be used with the same \
                                 parameters they were first used with. Try using a key other \
                                 than '{}' if you meant to execute a different request.",
                                slot.1
                            ),
                        )),
                        false,
                    );
                }
                let answer = Answer {
                    status: *status,
                    body: body.clone(),
                    save: true,
                };
                inner.stats.replayed += 1;
                return (answer, true);
            }
            None => {
                inner.idempotency.insert(slot.clone(), Idem::InFlight);
            }
        }
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = if fault == Fault::Error500 {
        Answer::error(
            500,
            ApiError::new(
                error_type::API_ERROR,
                "An unknown error occurred (fault injected). Nothing was done.",
            ),
        )
    } else {
        let mut inner = shared.lock();
        let (answer, events) = route(&mut inner, &request, &fault);
        for e in events {
            inner.events.insert(e.id.clone(), e.clone());
            let _ = shared.events.send(e);
        }
        answer
    };
    if let Some(slot) = slot {
        let mut inner = shared.lock();
        if answer.save {
            inner.idempotency.insert(
                slot,
                Idem::Done {
                    fingerprint,
                    status: answer.status,
                    body: answer.body.clone(),
                },
            );
        } else {
            inner.idempotency.remove(&slot);
        }
    }
    (answer, false)
}

/// Events an operation caused, to store and post.
type Events = Vec<wire::Event>;

fn route(inner: &mut Inner, req: &Request, fault: &Fault) -> (Answer, Events) {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let none = Vec::new;
    match (&req.method, segments.as_slice()) {
        (&Method::POST, ["v1", "payment_intents"]) => create_intent(inner, req, fault),
        (&Method::GET, ["v1", "payment_intents"]) => (list_intents(inner, req), none()),
        (&Method::GET, ["v1", "payment_intents", "search"]) => (search_intents(inner, req), none()),
        (&Method::GET, ["v1", "payment_intents", id]) => (retrieve_intent(inner, req, id), none()),
        (&Method::POST, ["v1", "payment_intents", id, "confirm"]) => {
            confirm_intent(inner, req, id, fault)
        }
        (&Method::POST, ["v1", "payment_intents", id, "cancel"]) => {
            (cancel_intent(inner, req, id), none())
        }
        (&Method::POST, ["v1", "refunds"]) => create_refund(inner, req),
        (&Method::GET, ["v1", "refunds", id]) => match inner.refunds.get(*id) {
            Some(r) => (Answer::ok(r), none()),
            None => (Answer::missing("refund", id, "id"), none()),
        },
        (&Method::GET, ["v1", "charges", id]) => match render_charge(inner, id, &[]) {
            Some(c) => (Answer::ok(&c), none()),
            None => (Answer::missing("charge", id, "id"), none()),
        },
        (&Method::GET, ["v1", "events"]) => (list_events(inner, req), none()),
        (&Method::GET, ["v1", "events", id]) => match inner.events.get(*id) {
            Some(e) => (Answer::ok(e), none()),
            None => (Answer::missing("event", id, "id"), none()),
        },
        (&Method::GET, ["v1", "balance"]) => (Answer::ok(&balance(inner)), none()),
        _ => (
            Answer {
                status: 404,
                ..Answer::invalid(invalid_request(format!(
                    "Unrecognized request URL ({}: {}).",
                    req.method, req.path
                )))
            },
            none(),
        ),
    }
}

// ---------------------------------------------------------------------------
// Parameters

/// Refuses parameters outside `allowed`.
fn check_known(fields: &Fields, allowed: &[&str]) -> Result<(), Answer> {
    for key in fields.top_level_keys() {
        if !allowed.contains(&key) {
            return Err(Answer::invalid(
                invalid_request(format!("Received unknown parameter: {key}"))
                    .code("parameter_unknown")
                    .param(key),
            ));
        }
    }
    Ok(())
}

fn int_param(fields: &Fields, name: &str) -> Result<Option<i64>, Answer> {
    match fields.get(name) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            Answer::invalid(
                invalid_request(format!("Invalid integer: {v}"))
                    .code("parameter_invalid_integer")
                    .param(name),
            )
        }),
    }
}

fn bool_param(fields: &Fields, name: &str) -> Result<bool, Answer> {
    match fields.get(name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(Answer::invalid(
            invalid_request(format!("Invalid boolean: {v}"))
                .code("parameter_invalid_boolean")
                .param(name),
        )),
    }
}

fn metadata_param(fields: &Fields) -> Result<BTreeMap<String, String>, Answer> {
    let entries = fields.hash("metadata");
    if entries.len() > 50 {
        return Err(Answer::invalid(
            invalid_request("You can have at most 50 metadata keys.")
                .code("parameter_invalid_empty")
                .param("metadata"),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        if k.chars().count() > 40 || v.chars().count() > 500 {
            return Err(Answer::invalid(
                invalid_request(
                    "Metadata keys can be at most 40 characters and values at most 500.",
                )
                .param(&format!("metadata[{k}]")),
            ));
        }
        if !v.is_empty() {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// `limit` of a list or search: 1 to 100, 10 when absent.
fn limit_param(fields: &Fields) -> Result<usize, Answer> {
    let limit = int_param(fields, "limit")?.unwrap_or(10);
    match usize::try_from(limit) {
        Ok(l) if (1..=100).contains(&l) => Ok(l),
        _ => Err(Answer::invalid(
            invalid_request("Limit must be between 1 and 100.").param("limit"),
        )),
    }
}

/// Every intent, newest first (the order of lists and searches).
fn newest_first(inner: &Inner) -> impl Iterator<Item = &wire::PaymentIntent> {
    inner
        .order
        .iter()
        .rev()
        .filter_map(|id| inner.intents.get(id).map(|r| &r.pi))
}

/// What to expand, with an optional `data.` prefix for lists.
fn expansions(fields: &Fields, prefix: &str) -> Result<Vec<String>, Answer> {
    let mut out = Vec::new();
    for e in fields.array("expand") {
        let bare = e.strip_prefix(prefix).unwrap_or("");
        if !matches!(bare, "latest_charge" | "latest_charge.balance_transaction") {
            return Err(Answer::invalid(
                invalid_request(format!("This property cannot be expanded ({e}).")).param("expand"),
            ));
        }
        out.push(bare.to_string());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Rendering

fn render_charge(inner: &Inner, id: &str, expand: &[&str]) -> Option<wire::Charge> {
    let row = inner.charges.get(id)?;
    let mut charge = row.charge.clone();
    if expand.contains(&"balance_transaction") {
        if let Some(txn) = &row.txn {
            charge.balance_transaction = Some(Expandable::Object(Box::new(txn.clone())));
        }
    }
    Some(charge)
}

fn render_intent(
    inner: &Inner,
    pi: &wire::PaymentIntent,
    expand: &[String],
) -> wire::PaymentIntent {
    let mut pi = pi.clone();
    let charge_expand: Vec<&str> = if expand
        .iter()
        .any(|e| e == "latest_charge.balance_transaction")
    {
        vec!["balance_transaction"]
    } else {
        vec![]
    };
    if expand.iter().any(|e| e.starts_with("latest_charge")) {
        if let Some(id) = pi.latest_charge.as_ref().map(|c| c.id().to_string()) {
            if let Some(c) = render_charge(inner, &id, &charge_expand) {
                pi.latest_charge = Some(Expandable::Object(Box::new(c)));
            }
        }
    }
    pi
}

fn event(inner: &mut Inner, kind: &str, object: serde_json::Value, req: &Request) -> wire::Event {
    let id = next_id(inner, "evt");
    wire::Event {
        id,
        object: "event".to_string(),
        kind: kind.to_string(),
        data: wire::EventData { object },
        created: now_secs(),
        api_version: Some(API_VERSION.to_string()),
        livemode: false,
        pending_webhooks: i64::from(inner.config.webhook.is_some()),
        request: Some(wire::EventRequest {
            id: None,
            idempotency_key: req.idempotency_key.clone(),
        }),
    }
}

// ---------------------------------------------------------------------------
// PaymentIntents

const CREATE_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "payment_method",
    "payment_method_types",
    "automatic_payment_methods",
    "confirm",
    "customer",
    "setup_future_usage",
    "metadata",
    "description",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "receipt_email",
    "capture_method",
    "confirmation_method",
    "off_session",
    "return_url",
    "error_on_requires_action",
    "use_stripe_sdk",
    "expand",
];

const CONFIRM_PARAMS: &[&str] = &[
    "payment_method",
    "return_url",
    "off_session",
    "setup_future_usage",
    "error_on_requires_action",
    "use_stripe_sdk",
    "receipt_email",
    "expand",
];

fn create_intent(inner: &mut Inner, req: &Request, fault: &Fault) -> (Answer, Events) {
    match build_intent(inner, req) {
        Ok((pi, confirm, expand)) => {
            let id = pi.id.clone();
            inner.order.push(id.clone());
            inner.intents.insert(id.clone(), IntentRow { pi });
            if confirm {
                attempt(inner, req, &id, fault, &expand)
            } else {
                let pi = &inner.intents[&id].pi;
                (Answer::ok(&render_intent(inner, pi, &expand)), Vec::new())
            }
        }
        Err(answer) => (answer, Vec::new()),
    }
}

fn build_intent(
    inner: &mut Inner,
    req: &Request,
) -> Result<(wire::PaymentIntent, bool, Vec<String>), Answer> {
    let f = &req.fields;
    check_known(f, CREATE_PARAMS)?;
    let missing = |p: &str| {
        Answer::invalid(
            invalid_request(format!("Missing required param: {p}."))
                .code("parameter_missing")
                .param(p),
        )
    };
    let amount = int_param(f, "amount")?.ok_or_else(|| missing("amount"))?;
    if amount < 50 {
        return Err(Answer::invalid(
            invalid_request("Amount must be at least $0.50 usd")
                .code("amount_too_small")
                .param("amount"),
        ));
    }
    if amount > 99_999_999 {
        return Err(Answer::invalid(
            invalid_request("Amount must be no more than $999,999.99")
                .code("amount_too_large")
                .param("amount"),
        ));
    }
    let currency = f
        .get("currency")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| missing("currency"))?
        .to_ascii_lowercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(Answer::invalid(
            invalid_request(format!("Invalid currency: {currency}."))
                .code("parameter_invalid_empty")
                .param("currency"),
        ));
    }
    let confirm = bool_param(f, "confirm")?;
    let payment_method = f.get("payment_method").filter(|s| !s.is_empty());
    if let Some(pm) = payment_method {
        if !inner.cards.contains_key(pm) {
            return Err(Answer::missing("PaymentMethod", pm, "payment_method"));
        }
    }
    if confirm && payment_method.is_none() {
        return Err(missing("payment_method"));
    }
    let customer = f.get("customer").filter(|s| !s.is_empty());
    if let Some(c) = customer {
        if !c.starts_with("cus_") {
            return Err(Answer::missing("customer", c, "customer"));
        }
    }
    let setup_future_usage = f.get("setup_future_usage").filter(|s| !s.is_empty());
    if let Some(s) = setup_future_usage {
        if !matches!(s, "off_session" | "on_session") {
            return Err(Answer::invalid(
                invalid_request(
                    "Invalid setup_future_usage: must be one of off_session or on_session",
                )
                .param("setup_future_usage"),
            ));
        }
    }
    if let Some(c) = f.get("capture_method") {
        if !matches!(c, "automatic" | "automatic_async") {
            return Err(Answer::invalid(
                invalid_request("The fake Stripe models automatic capture only.")
                    .param("capture_method"),
            ));
        }
    }
    for t in f.array("payment_method_types") {
        if t != "card" {
            return Err(Answer::invalid(
                invalid_request(format!("The payment method type provided: {t} is invalid."))
                    .param("payment_method_types"),
            ));
        }
    }
    let metadata = metadata_param(f)?;
    let expand = expansions(f, "")?;
    let id = next_id(inner, "pi");
    let client_secret = format!("{id}_secret_{:08}", inner.next_id * 7919 % 100_000_000);
    let pi = wire::PaymentIntent {
        id,
        object: "payment_intent".to_string(),
        amount,
        amount_received: 0,
        currency,
        status: if payment_method.is_some() {
            "requires_confirmation"
        } else {
            "requires_payment_method"
        }
        .to_string(),
        client_secret: Some(client_secret),
        payment_method: payment_method.map(str::to_string),
        customer: customer.map(str::to_string),
        metadata,
        latest_charge: None,
        last_payment_error: None,
        created: now_secs(),
        setup_future_usage: setup_future_usage.map(str::to_string),
        description: f.get("description").map(str::to_string),
        capture_method: Some("automatic".to_string()),
        canceled_at: None,
        next_action: None,
        livemode: false,
    };
    Ok((pi, confirm, expand))
}

fn confirm_intent(inner: &mut Inner, req: &Request, id: &str, fault: &Fault) -> (Answer, Events) {
    let f = &req.fields;
    let checked = check_known(f, CONFIRM_PARAMS).and_then(|()| expansions(f, ""));
    let expand = match checked {
        Ok(e) => e,
        Err(a) => return (a, Vec::new()),
    };
    let Some(row) = inner.intents.get(id) else {
        return (Answer::missing("payment_intent", id, "intent"), Vec::new());
    };
    let status = row.pi.status.clone();
    if !matches!(
        status.as_str(),
        "requires_payment_method" | "requires_confirmation"
    ) {
        return (unexpected_state(&row.pi, "confirm"), Vec::new());
    }
    let pm = f.get("payment_method").filter(|s| !s.is_empty());
    if let Some(pm) = pm {
        if !inner.cards.contains_key(pm) {
            return (
                Answer::missing("PaymentMethod", pm, "payment_method"),
                Vec::new(),
            );
        }
    }
    let pm = pm
        .map(str::to_string)
        .or_else(|| row.pi.payment_method.clone());
    let Some(pm) = pm else {
        return (
            Answer::invalid(
                invalid_request(
                    "You cannot confirm this PaymentIntent because it's missing a payment \
                     method. To confirm the PaymentIntent with cus_..., specify a payment \
                     method attached to this customer along with the customer ID.",
                )
                .code("payment_intent_unexpected_state"),
            ),
            Vec::new(),
        );
    };
    if let Some(row) = inner.intents.get_mut(id) {
        row.pi.payment_method = Some(pm);
        if let Some(s) = f.get("setup_future_usage").filter(|s| !s.is_empty()) {
            row.pi.setup_future_usage = Some(s.to_string());
        }
    }
    attempt(inner, req, id, fault, &expand)
}

fn unexpected_state(pi: &wire::PaymentIntent, action: &str) -> Answer {
    let mut e = invalid_request(format!(
        "You cannot {action} this PaymentIntent because it has a status of {}.",
        pi.status
    ))
    .code("payment_intent_unexpected_state");
    e.payment_intent = Some(Box::new(pi.clone()));
    Answer::error(400, e)
}

/// Confirms intent `id` with its payment method: charges, declines or asks for
/// authentication.
fn attempt(
    inner: &mut Inner,
    req: &Request,
    id: &str,
    fault: &Fault,
    expand: &[String],
) -> (Answer, Events) {
    let Some(pi) = inner.intents.get(id).map(|r| r.pi.clone()) else {
        return (Answer::missing("payment_intent", id, "intent"), Vec::new());
    };
    let pm = pi.payment_method.clone().unwrap_or_default();
    let Some(card) = inner.cards.get(&pm).cloned() else {
        return (
            Answer::missing("PaymentMethod", &pm, "payment_method"),
            Vec::new(),
        );
    };
    let behavior = if *fault == Fault::DeclineAll {
        CardBehavior::Decline("generic_decline".to_string())
    } else {
        card.behavior.clone()
    };
    let now = now_secs();
    if behavior == CardBehavior::RequireAction {
        let Some(row) = inner.intents.get_mut(id) else {
            return (Answer::missing("payment_intent", id, "intent"), Vec::new());
        };
        row.pi.status = "requires_action".to_string();
        row.pi.next_action =
            Some(serde_json::json!({"type": "use_stripe_sdk", "use_stripe_sdk": {}}));
        let pi = row.pi.clone();
        return (Answer::ok(&render_intent(inner, &pi, expand)), Vec::new());
    }
    let charge_id = next_id(inner, "ch");
    let details = wire::PaymentMethodDetails {
        kind: "card".to_string(),
        card: Some(wire::CardDetails {
            brand: card.brand.clone(),
            last4: card.last4.clone(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            fingerprint: Some(card.fingerprint.clone()),
            funding: Some("credit".to_string()),
            country: Some("US".to_string()),
        }),
    };
    let mut charge = wire::Charge {
        id: charge_id.clone(),
        object: "charge".to_string(),
        amount: pi.amount,
        amount_captured: 0,
        amount_refunded: 0,
        currency: pi.currency.clone(),
        status: "failed".to_string(),
        paid: false,
        refunded: false,
        payment_intent: Some(pi.id.clone()),
        payment_method: Some(pm.clone()),
        payment_method_details: Some(details),
        balance_transaction: None,
        customer: pi.customer.clone(),
        failure_code: None,
        failure_message: None,
        metadata: pi.metadata.clone(),
        created: now,
        livemode: false,
    };
    match behavior {
        CardBehavior::Decline(decline_code) => {
            inner.stats.declines += 1;
            let message = if decline_code == "insufficient_funds" {
                "Your card has insufficient funds."
            } else {
                "Your card was declined."
            };
            charge.failure_code = Some("card_declined".to_string());
            charge.failure_message = Some(message.to_string());
            let mut error = ApiError::new(error_type::CARD_ERROR, message).code("card_declined");
            error.decline_code = Some(decline_code);
            error.charge = Some(charge_id.clone());
            inner
                .charges
                .insert(charge_id.clone(), ChargeRow { charge, txn: None });
            let Some(row) = inner.intents.get_mut(id) else {
                return (Answer::missing("payment_intent", id, "intent"), Vec::new());
            };
            row.pi.status = "requires_payment_method".to_string();
            row.pi.last_payment_error = Some(error.clone());
            row.pi.latest_charge = Some(Expandable::Id(charge_id));
            let pi = row.pi.clone();
            let rendered = render_intent(inner, &pi, expand);
            let object = serde_json::to_value(&pi).unwrap_or_default();
            let ev = event(inner, "payment_intent.payment_failed", object, req);
            error.payment_intent = Some(Box::new(rendered));
            (Answer::error(402, error), vec![ev])
        }
        CardBehavior::Succeed | CardBehavior::RequireAction => {
            let fee = (pi.amount * 29 + 500) / 1000 + 30;
            let txn = wire::BalanceTransaction {
                id: next_id(inner, "txn"),
                object: "balance_transaction".to_string(),
                amount: pi.amount,
                fee,
                net: pi.amount - fee,
                currency: pi.currency.clone(),
                kind: "charge".to_string(),
            };
            charge.status = "succeeded".to_string();
            charge.paid = true;
            charge.amount_captured = pi.amount;
            charge.balance_transaction = Some(Expandable::Id(txn.id.clone()));
            inner.ledger.push(LedgerCharge {
                charge: charge_id.clone(),
                payment_intent: pi.id.clone(),
                amount: pi.amount,
                currency: pi.currency.clone(),
                attempt_key: pi.metadata.get(ATTEMPT_METADATA_KEY).cloned(),
                metadata: pi.metadata.clone(),
                idempotency_key: req.idempotency_key.clone(),
                fingerprint: card.fingerprint.clone(),
                refunded: 0,
                created: now,
            });
            inner.charges.insert(
                charge_id.clone(),
                ChargeRow {
                    charge,
                    txn: Some(txn),
                },
            );
            let Some(row) = inner.intents.get_mut(id) else {
                return (Answer::missing("payment_intent", id, "intent"), Vec::new());
            };
            row.pi.status = "succeeded".to_string();
            row.pi.amount_received = row.pi.amount;
            row.pi.last_payment_error = None;
            row.pi.latest_charge = Some(Expandable::Id(charge_id));
            let pi = row.pi.clone();
            let object = serde_json::to_value(&pi).unwrap_or_default();
            let ev = event(inner, "payment_intent.succeeded", object, req);
            (Answer::ok(&render_intent(inner, &pi, expand)), vec![ev])
        }
    }
}

fn cancel_intent(inner: &mut Inner, req: &Request, id: &str) -> Answer {
    if let Err(a) = check_known(&req.fields, &["cancellation_reason", "expand"]) {
        return a;
    }
    let Some(row) = inner.intents.get_mut(id) else {
        return Answer::missing("payment_intent", id, "intent");
    };
    if matches!(row.pi.status.as_str(), "succeeded" | "canceled") {
        return unexpected_state(&row.pi, "cancel");
    }
    row.pi.status = "canceled".to_string();
    row.pi.canceled_at = Some(now_secs());
    row.pi.next_action = None;
    Answer::ok(&row.pi)
}

fn retrieve_intent(inner: &Inner, req: &Request, id: &str) -> Answer {
    let expand = match check_known(&req.fields, &["expand", "client_secret"])
        .and_then(|()| expansions(&req.fields, ""))
    {
        Ok(e) => e,
        Err(a) => return a,
    };
    match inner.intents.get(id) {
        Some(row) => Answer::ok(&render_intent(inner, &row.pi, &expand)),
        None => Answer::missing("payment_intent", id, "intent"),
    }
}

fn list_intents(inner: &Inner, req: &Request) -> Answer {
    let f = &req.fields;
    let parsed = (|| {
        check_known(
            f,
            &[
                "created",
                "limit",
                "starting_after",
                "ending_before",
                "customer",
                "expand",
            ],
        )?;
        let expand = expansions(f, "data.")?;
        let limit = limit_param(f)?;
        let mut bounds: Vec<(String, i64)> = Vec::new();
        if let Some(exact) = int_param(f, "created")? {
            bounds.push(("eq".to_string(), exact));
        }
        for (op, v) in f.hash("created") {
            let v = v.parse::<i64>().map_err(|_| {
                Answer::invalid(
                    invalid_request(format!("Invalid integer: {v}"))
                        .param(&format!("created[{op}]")),
                )
            })?;
            if !matches!(op.as_str(), "gte" | "gt" | "lte" | "lt") {
                return Err(Answer::invalid(
                    invalid_request(format!("Received unknown parameter: created[{op}]"))
                        .code("parameter_unknown"),
                ));
            }
            bounds.push((op, v));
        }
        Ok((expand, limit, bounds))
    })();
    let (expand, limit, bounds) = match parsed {
        Ok(p) => p,
        Err(a) => return a,
    };
    let customer = f.get("customer");
    // Newest first.
    let all: Vec<&wire::PaymentIntent> = newest_first(inner)
        .filter(|pi| {
            bounds.iter().all(|(op, v)| match op.as_str() {
                "eq" => pi.created == *v,
                "gte" => pi.created >= *v,
                "gt" => pi.created > *v,
                "lte" => pi.created <= *v,
                _ => pi.created < *v,
            })
        })
        .filter(|pi| customer.is_none_or(|c| pi.customer.as_deref() == Some(c)))
        .collect();
    let position = |param: &str| -> Result<Option<usize>, Answer> {
        match f.get(param) {
            None => Ok(None),
            Some(id) => match all.iter().position(|pi| pi.id == id) {
                Some(p) => Ok(Some(p)),
                None if inner.intents.contains_key(id) => Ok(None),
                None => Err(Answer::missing("payment_intent", id, param)),
            },
        }
    };
    let (after, before) = match (position("starting_after"), position("ending_before")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let (page, has_more): (Vec<&wire::PaymentIntent>, bool) = if let Some(b) = before {
        let start = b.saturating_sub(limit);
        (all[start..b].to_vec(), start > 0)
    } else {
        let start = after.map_or(0, |a| a + 1);
        let rest = all.get(start..).unwrap_or_default();
        (
            rest.iter().take(limit).copied().collect(),
            rest.len() > limit,
        )
    };
    Answer::ok(&wire::List {
        object: "list".to_string(),
        data: page
            .into_iter()
            .map(|pi| render_intent(inner, pi, &expand))
            .collect(),
        has_more,
        url: "/v1/payment_intents".to_string(),
    })
}

fn list_events(inner: &Inner, req: &Request) -> Answer {
    let f = &req.fields;
    let limit =
        match check_known(f, &["limit", "starting_after", "type"]).and_then(|()| limit_param(f)) {
            Ok(l) => l,
            Err(a) => return a,
        };
    // Ids are sequential and zero-padded: by id descending is newest first.
    let mut all: Vec<&wire::Event> = inner
        .events
        .values()
        .filter(|e| f.get("type").is_none_or(|t| e.kind == t))
        .collect();
    all.sort_by(|a, b| b.id.cmp(&a.id));
    let start = match f.get("starting_after") {
        None => 0,
        Some(id) => match all.iter().position(|e| e.id == id) {
            Some(p) => p + 1,
            None => return Answer::missing("event", id, "starting_after"),
        },
    };
    let rest = all.get(start..).unwrap_or_default();
    Answer::ok(&wire::List {
        object: "list".to_string(),
        data: rest.iter().take(limit).map(|e| (*e).clone()).collect(),
        has_more: rest.len() > limit,
        url: "/v1/events".to_string(),
    })
}

/// One search clause.
#[derive(Debug, PartialEq, Eq)]
enum Clause {
    Metadata(String, String),
    Field(String, String),
}

/// Reads a quoted string at the start of `s` (single or double quotes, `\` escapes),
/// returning it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    let (_, quote) = chars.next()?;
    if quote != '\'' && quote != '"' {
        return None;
    }
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some((out, &s[i + c.len_utf8()..]));
        } else {
            out.push(c);
        }
    }
    None
}

/// Parses the subset of Stripe's search language the fake supports.
fn parse_query(query: &str) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    let mut rest = query.trim();
    loop {
        let clause;
        if let Some(after) = rest.strip_prefix("metadata[") {
            let (key, after) = quoted(after).ok_or("metadata key must be quoted")?;
            let after = after
                .strip_prefix("]:")
                .ok_or("expected ]: after the metadata key")?;
            let (value, after) = quoted(after).ok_or("metadata value must be quoted")?;
            clause = Clause::Metadata(key, value);
            rest = after;
        } else {
            let (field, after) = rest.split_once(':').ok_or("expected field:value")?;
            let field = field.trim();
            if !matches!(field, "status" | "customer" | "currency" | "amount") {
                return Err(format!("Field '{field}' is an unsupported search field."));
            }
            let (value, after) = match quoted(after) {
                Some(q) => q,
                None => {
                    let end = after.find(' ').unwrap_or(after.len());
                    (after[..end].to_string(), &after[end..])
                }
            };
            clause = Clause::Field(field.to_string(), value);
            rest = after;
        }
        clauses.push(clause);
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(clauses);
        }
        rest = rest
            .strip_prefix("AND ")
            .ok_or("only AND between clauses is supported")?
            .trim_start();
    }
}

fn search_intents(inner: &Inner, req: &Request) -> Answer {
    let f = &req.fields;
    let parsed = (|| {
        check_known(f, &["query", "limit", "page", "expand"])?;
        let expand = expansions(f, "data.")?;
        let limit = limit_param(f)?;
        let query = f.get("query").ok_or_else(|| {
            Answer::invalid(
                invalid_request("Missing required param: query.")
                    .code("parameter_missing")
                    .param("query"),
            )
        })?;
        let clauses = parse_query(query).map_err(|m| {
            Answer::invalid(
                invalid_request(m)
                    .code("parameter_invalid_string")
                    .param("query"),
            )
        })?;
        let page = match f.get("page") {
            None | Some("") => 0,
            Some(p) => p
                .strip_prefix("page_")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Answer::invalid(invalid_request("Invalid page.").param("page")))?,
        };
        Ok((expand, limit, clauses, page))
    })();
    let (expand, limit, clauses, page) = match parsed {
        Ok(p) => p,
        Err(a) => return a,
    };
    let matches: Vec<&wire::PaymentIntent> = newest_first(inner)
        .filter(|pi| {
            clauses.iter().all(|c| match c {
                Clause::Metadata(k, v) => pi.metadata.get(k) == Some(v),
                Clause::Field(field, v) => match field.as_str() {
                    "status" => &pi.status == v,
                    "customer" => pi.customer.as_ref() == Some(v),
                    "currency" => &pi.currency == v,
                    _ => pi.amount.to_string() == *v,
                },
            })
        })
        .collect();
    let rest = matches.get(page..).unwrap_or_default();
    let has_more = rest.len() > limit;
    Answer::ok(&wire::SearchResult {
        object: "search_result".to_string(),
        data: rest
            .iter()
            .take(limit)
            .map(|pi| render_intent(inner, pi, &expand))
            .collect(),
        has_more,
        next_page: has_more.then(|| format!("page_{}", page + limit)),
        url: "/v1/payment_intents/search".to_string(),
    })
}

// ---------------------------------------------------------------------------
// Refunds and balance

fn create_refund(inner: &mut Inner, req: &Request) -> (Answer, Events) {
    let f = &req.fields;
    let fail = |a: Answer| (a, Vec::new());
    if let Err(a) = check_known(
        f,
        &[
            "payment_intent",
            "charge",
            "amount",
            "reason",
            "metadata",
            "expand",
        ],
    ) {
        return fail(a);
    }
    let amount = match int_param(f, "amount") {
        Ok(a) => a,
        Err(a) => return fail(a),
    };
    let metadata = match metadata_param(f) {
        Ok(m) => m,
        Err(a) => return fail(a),
    };
    let reason = f.get("reason").filter(|r| !r.is_empty());
    if let Some(r) = reason {
        if !matches!(r, "duplicate" | "fraudulent" | "requested_by_customer") {
            return fail(Answer::invalid(
                invalid_request(format!("Invalid reason: {r}")).param("reason"),
            ));
        }
    }
    let charge_id = match (f.get("payment_intent"), f.get("charge")) {
        (Some(pi), None) => {
            let Some(row) = inner.intents.get(pi) else {
                return fail(Answer::missing("payment_intent", pi, "payment_intent"));
            };
            if row.pi.status != "succeeded" {
                return fail(Answer::invalid(
                    invalid_request(format!(
                        "This PaymentIntent ({pi}) does not have a successful charge to refund."
                    ))
                    .code("charge_not_found")
                    .param("payment_intent"),
                ));
            }
            row.pi
                .latest_charge
                .as_ref()
                .map(|c| c.id().to_string())
                .unwrap_or_default()
        }
        (None, Some(ch)) => ch.to_string(),
        _ => {
            return fail(Answer::invalid(
                invalid_request("You must pass either payment_intent or charge (not both).")
                    .code("parameter_missing"),
            ))
        }
    };
    let Some(row) = inner.charges.get_mut(&charge_id) else {
        return fail(Answer::missing("charge", &charge_id, "charge"));
    };
    let remaining = row.charge.amount - row.charge.amount_refunded;
    if row.charge.status != "succeeded" {
        return fail(Answer::invalid(
            invalid_request(format!("Charge {charge_id} has not succeeded."))
                .code("charge_not_found"),
        ));
    }
    if remaining == 0 {
        return fail(Answer::error(
            400,
            invalid_request(format!("Charge {charge_id} has already been refunded."))
                .code("charge_already_refunded"),
        ));
    }
    let amount = amount.unwrap_or(remaining);
    if amount <= 0 {
        return fail(Answer::invalid(
            invalid_request("Refund amount must be positive.").param("amount"),
        ));
    }
    if amount > remaining {
        return fail(Answer::error(
            400,
            invalid_request(format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
            ))
            .code("amount_too_large")
            .param("amount"),
        ));
    }
    row.charge.amount_refunded += amount;
    row.charge.refunded = row.charge.amount_refunded == row.charge.amount;
    let charge = row.charge.clone();
    if let Some(l) = inner.ledger.iter_mut().find(|l| l.charge == charge_id) {
        l.refunded += amount;
    }
    let refund = wire::Refund {
        id: next_id(inner, "re"),
        object: "refund".to_string(),
        amount,
        charge: Some(charge_id),
        payment_intent: charge.payment_intent.clone(),
        currency: charge.currency.clone(),
        status: "succeeded".to_string(),
        reason: reason.map(str::to_string),
        metadata,
        created: now_secs(),
    };
    inner.refunds.insert(refund.id.clone(), refund.clone());
    let object = serde_json::to_value(&charge).unwrap_or_default();
    let ev = event(inner, "charge.refunded", object, req);
    (Answer::ok(&refund), vec![ev])
}

fn balance(inner: &Inner) -> wire::Balance {
    let mut by_currency: BTreeMap<&str, i64> = BTreeMap::new();
    for row in inner.charges.values() {
        if let Some(txn) = &row.txn {
            *by_currency.entry(txn.currency.as_str()).or_default() +=
                txn.net - row.charge.amount_refunded;
        }
    }
    if by_currency.is_empty() {
        by_currency.insert("usd", 0);
    }
    wire::Balance {
        object: "balance".to_string(),
        available: by_currency
            .into_iter()
            .map(|(c, amount)| wire::BalanceAmount {
                amount,
                currency: c.to_string(),
            })
            .collect(),
        pending: Vec::new(),
        livemode: false,
    }
}

// ---------------------------------------------------------------------------
// Webhooks

async fn deliver_events(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<wire::Event>) {
    let http = match narwhal_mail::tls::client_config(None).map(|tls| {
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(5))
            .build()
    }) {
        Ok(Ok(c)) => c,
        _ => return,
    };
    while let Some(event) = rx.recv().await {
        let Some(target) = shared.lock().config.webhook.clone() else {
            continue;
        };
        let copies = if target.duplicates { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if target.shuffle_within.is_zero() {
                Duration::ZERO
            } else {
                let ms = u64::try_from(target.shuffle_within.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rand::random::<u64>() % ms.max(1))
            };
            let job = deliver(
                shared.clone(),
                http.clone(),
                target.clone(),
                event.clone(),
                delay,
            );
            if delay.is_zero() && !target.duplicates {
                // In order: one at a time.
                job.await;
            } else {
                tokio::spawn(job);
            }
        }
    }
}

async fn deliver(
    shared: Arc<Shared>,
    http: reqwest::Client,
    target: WebhookTarget,
    event: wire::Event,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let Ok(body) = serde_json::to_vec(&event) else {
        return;
    };
    let mut wait = target.retry_after;
    for attempt in 1..=target.max_attempts.max(1) {
        let header = webhook::sign(&target.secret, now_secs(), &body);
        let status = http
            .post(&target.url)
            .header("content-type", "application/json")
            .header(webhook::SIGNATURE_HEADER, header)
            .body(body.clone())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        shared.lock().deliveries.push(Delivery {
            event_id: event.id.clone(),
            kind: event.kind.clone(),
            attempt,
            status,
        });
        if status.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

// ---------------------------------------------------------------------------
// Control endpoints

async fn set_fault_http(State(shared): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Response {
    shared.lock().fault = fault.clone();
    Json(fault).into_response()
}

/// `POST /_fake/settings`.
#[derive(Debug, Deserialize)]
struct Settings {
    latency_ms: Option<u64>,
    rate_limit: Option<u32>,
}

async fn settings_http(
    State(shared): State<Arc<Shared>>,
    Json(settings): Json<Settings>,
) -> Response {
    let mut inner = shared.lock();
    if let Some(ms) = settings.latency_ms {
        inner.config.latency = Duration::from_millis(ms);
    }
    if let Some(rate) = settings.rate_limit {
        inner.config.rate_limit = (rate > 0).then_some(rate);
        inner.buckets.clear();
    }
    Json(serde_json::json!({
        "latency_ms": u64::try_from(inner.config.latency.as_millis()).unwrap_or(u64::MAX),
        "rate_limit": inner.config.rate_limit,
    }))
    .into_response()
}

async fn stats_http(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().stats).into_response()
}

async fn ledger_http(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().ledger.clone()).into_response()
}

async fn mint_card_http(State(shared): State<Arc<Shared>>, Json(card): Json<TestCard>) -> Response {
    let id = mint(&mut shared.lock(), card);
    Json(serde_json::json!({ "id": id })).into_response()
}

// ---------------------------------------------------------------------------
// Tokenization, as the browser calls it (Stripe.js's `POST /v1/payment_methods`):
// authenticated by the publishable key (`pk_...`, the configured secret key with
// `sk_` replaced by `pk_`), form-encoded `type=card&card[number]=..&card[exp_month]=..
// &card[exp_year]=..&card[cvc]=..`, answered with CORS headers so that a donation page
// on another origin can call it. The number stays here (the "processor"); the answer
// carries the token, brand, last 4, expiry and a fingerprint. Test numbers follow
// Stripe's: 4000000000000002 declines (`generic_decline`), 4000000000009995
// declines (`insufficient_funds`); other Luhn-valid numbers succeed.

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    r
}

/// The Luhn check a card network applies to a number.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, u32::from(d) * 2) {
            (1, x) if x > 9 => x - 9,
            (1, x) => x,
            _ => u32::from(d),
        })
        .sum();
    sum.is_multiple_of(10)
}

async fn tokenize_preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

fn card_brand(number: &str) -> &'static str {
    match number.as_bytes().first() {
        Some(b'4') => "visa",
        Some(b'5') | Some(b'2') => "mastercard",
        Some(b'3') => "amex",
        Some(b'6') => "discover",
        _ => "unknown",
    }
}

async fn tokenize_http(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |status: StatusCode, e: ApiError| {
        cors((status, Json(serde_json::json!({ "error": e }))).into_response())
    };
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let known = {
        let inner = shared.lock();
        inner.config.keys.iter().any(|k| {
            k.strip_prefix("sk_")
                .is_some_and(|rest| key == format!("pk_{rest}"))
        })
    };
    if !known {
        return refuse(
            StatusCode::UNAUTHORIZED,
            invalid_request("Invalid API Key provided.".to_string()),
        );
    }
    let Ok(fields) = Fields::parse(&String::from_utf8_lossy(&body)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            invalid_request("Invalid form body.".to_string()),
        );
    };
    let number: String = fields
        .get("card[number]")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let digits: Vec<u8> = number.bytes().map(|b| b - b'0').collect();
    if !(12..=19).contains(&digits.len()) || !luhn(&digits) {
        return refuse(
            StatusCode::PAYMENT_REQUIRED,
            ApiError::new(error_type::CARD_ERROR, "Your card number is incorrect.")
                .code("incorrect_number")
                .param("card[number]"),
        );
    }
    let exp_month: u8 = fields
        .get("card[exp_month]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let exp_year: u16 = fields
        .get("card[exp_year]")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !(1..=12).contains(&exp_month) || exp_year < 2000 {
        return refuse(
            StatusCode::PAYMENT_REQUIRED,
            ApiError::new(
                error_type::CARD_ERROR,
                "Your card's expiration date is incorrect.",
            )
            .code("invalid_expiry_month")
            .param("card[exp_month]"),
        );
    }
    // FNV-1a of the number: the same card always gets the same fingerprint.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in number.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let behavior = match number.as_str() {
        "4000000000000002" => CardBehavior::Decline("generic_decline".into()),
        "4000000000009995" => CardBehavior::Decline("insufficient_funds".into()),
        _ => CardBehavior::Succeed,
    };
    let card = TestCard {
        brand: card_brand(&number).to_string(),
        last4: number[number.len() - 4..].to_string(),
        exp_month,
        exp_year,
        fingerprint: format!("fp{h:016x}"),
        behavior,
    };
    let id = mint(&mut shared.lock(), card.clone());
    cors(
        Json(serde_json::json!({
            "id": id, "object": "payment_method", "type": "card",
            "card": {"brand": card.brand, "last4": card.last4, "exp_month": card.exp_month,
                     "exp_year": card.exp_year, "fingerprint": card.fingerprint},
        }))
        .into_response(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_search_subset() {
        assert_eq!(
            parse_query(r"metadata['narwhal_attempt']:'a\'1' AND status:'succeeded'").unwrap(),
            vec![
                Clause::Metadata("narwhal_attempt".into(), "a'1".into()),
                Clause::Field("status".into(), "succeeded".into())
            ]
        );
        assert_eq!(
            parse_query(r#"metadata["k"]:"v""#).unwrap(),
            vec![Clause::Metadata("k".into(), "v".into())]
        );
        assert!(parse_query("metadata['k']:'v' OR status:'x'").is_err());
        assert!(parse_query("email:'x'").is_err());
    }

    #[test]
    fn keys_are_redacted_in_messages() {
        assert_eq!(redact_key("sk_test_abcdefghijkl"), "sk_test_********ijkl");
    }
}
