//! The Stripe adapter: one [`StripeProcessor`] per Stripe account, speaking the real
//! wire format, and the pieces other code reuses (the [`wire`] objects, [`form`]
//! bodies, [`webhook`] signatures, the outbound [`limiter`]).
//!
//! Calls (all with `Authorization: Bearer KEY`, form-encoded bodies, JSON answers):
//!
//! | trait method | request |
//! | --- | --- |
//! | `charge` | `POST /v1/payment_intents` with `confirm=true`, `payment_method`, `amount`, `currency`, `payment_method_types[]=card`, optional `customer` and `setup_future_usage=off_session`, `metadata[narwhal_attempt]=KEY` and the request's metadata; header `Idempotency-Key: KEY`; `expand[]=latest_charge.balance_transaction` for the card and the fee |
//! | `lookup` | `GET /v1/payment_intents/search?query=metadata['narwhal_attempt']:'KEY'` |
//! | `refund` | `POST /v1/refunds` with `payment_intent`, `amount`; header `Idempotency-Key` |
//! | `health` | `GET /v1/balance` |
//! | `list_payments` | `GET /v1/payment_intents?created[gte]=..&limit=100&starting_after=..`, page by page |
//!
//! Classification of a charge (see [`crate::processor`] for what each outcome allows):
//!
//! | what happened | outcome |
//! | --- | --- |
//! | 200, `status=succeeded` | `Succeeded` |
//! | 200, `status=requires_action` (3-D Secure wanted; nobody is there to answer) | the intent is canceled, then `Declined` `authentication_required` |
//! | 200, `status=requires_payment_method` with `last_payment_error` | `Declined` |
//! | 200, `processing`/`requires_capture` | `Ambiguous` (money may still move) |
//! | 402 `card_error` | `Declined` with the `decline_code` (else `code`) |
//! | 409 (the same key is still in flight, or a lock timed out) | retried with the same key for up to one request timeout, then `Ambiguous` |
//! | 429, 503 | `Unavailable` (with `Retry-After` when given) |
//! | other 4xx | `Invalid` |
//! | could not connect | `Unavailable` |
//! | sent, then a timeout, a reset, a 500/502/504, or an answer we cannot read | `Ambiguous` |
//!
//! Deviations from the real service a caller should know:
//! - Stripe's search is not read-after-write: a just-created intent can take up to
//!   about a minute to appear. A `lookup` that finds nothing is `NotCharged` only if it
//!   is made long enough after the attempt; the router must wait that long before
//!   trusting it against the real Stripe (the fake has no such lag).
//! - After an `Ambiguous` outcome the first request may still be running at the
//!   processor (its answer was only late): a lookup made before it finishes finds
//!   nothing. Ask no sooner than one request timeout after the attempt, and treat
//!   `NotCharged` from an earlier lookup as "not yet".
//! - Every call waits its turn in the account's [`limiter::Pacer`] first; the time
//!   spent queueing does not count against the request timeout.

pub mod form;
pub mod limiter;
pub mod webhook;
pub mod wire;

use crate::processor::{
    CardSummary, Cents, ChargeOutcome, ChargeRequest, Charged, LookupOutcome, Processor,
    ProcessorPayment, RefundOutcome,
};
use form::Form;
use narwhal_mail::provider::BoxFuture;
use narwhal_mail::Secret;
use std::time::Duration;

/// The metadata key that carries our attempt key.
pub const ATTEMPT_METADATA_KEY: &str = "narwhal_attempt";

/// The API version we pin, so that answers keep the shape this adapter reads.
pub const API_VERSION: &str = "2024-06-20";

/// The real service.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";

/// One Stripe account.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// Our name for the account (`stripe-primary`), in attempt rows and logs.
    pub name: String,
    /// `https://api.stripe.com`, or a fake or Narwhal's own compatible API.
    pub base_url: String,
    /// The secret key (`sk_live_...`, `sk_test_...`).
    pub secret_key: Secret<String>,
    /// The longest wait for a connection.
    pub connect_timeout: Duration,
    /// The longest wait for a whole answer once the turn has come; past it, a sent
    /// charge is ambiguous.
    pub request_timeout: Duration,
    /// Requests per second this account may make (Stripe allows about 100; 25 per
    /// endpoint for some).
    pub max_requests_per_second: u32,
    /// How many requests may go at once after an idle spell.
    pub burst: u32,
    /// An extra CA (PEM) to trust besides the webpki roots, for a compatible API
    /// behind a private certificate authority.
    pub ca_file: Option<std::path::PathBuf>,
}

impl StripeConfig {
    /// A config for the real service with defaults: 3 s to connect, 20 s per request,
    /// 25 requests per second with bursts of 5.
    pub fn new(name: impl Into<String>, secret_key: Secret<String>) -> Self {
        Self {
            name: name.into(),
            base_url: DEFAULT_BASE_URL.to_string(),
            secret_key,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(20),
            max_requests_per_second: 25,
            burst: 5,
            ca_file: None,
        }
    }

    /// Points the account at another base URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }
}

/// Why a [`StripeProcessor`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StripeConfigError {
    /// Not an `https://host[:port]` URL (or `http://` to this machine).
    #[error("Stripe base URL {0:?} is not an https://host[:port] URL (http only to loopback)")]
    BadBaseUrl(String),
    /// The TLS settings could not be built.
    #[error(transparent)]
    Tls(#[from] narwhal_mail::tls::TlsConfigError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(String),
}

/// A Stripe account behind the [`Processor`] trait.
#[derive(Debug)]
pub struct StripeProcessor {
    config: StripeConfig,
    /// Without a trailing slash.
    base: String,
    http: reqwest::Client,
    pacer: limiter::Pacer,
}

/// One exchange before classification.
#[derive(Debug)]
enum Exchange {
    /// An answer, any status, with its body and `Retry-After`.
    Answer {
        status: u16,
        body: Vec<u8>,
        retry_after: Option<Duration>,
    },
    /// Could not connect: nothing was sent.
    NotSent(String),
    /// Sent, but no complete answer (timeout, reset).
    NoAnswer(String),
}

/// An error answer, read as well as it can be.
fn api_error(status: u16, body: &[u8]) -> wire::ApiError {
    serde_json::from_slice::<wire::ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| {
            wire::ApiError::new(
                "unknown",
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            )
        })
}

fn summary(intent: &wire::PaymentIntent) -> (CardSummary, Option<Cents>) {
    let charge = intent.latest_charge.as_ref().and_then(|c| c.object());
    let card = charge
        .and_then(|c| c.payment_method_details.as_ref())
        .and_then(|d| d.card.as_ref())
        .map(|c| CardSummary {
            brand: c.brand.clone(),
            last4: c.last4.clone(),
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            fingerprint: c.fingerprint.clone(),
        })
        .unwrap_or_default();
    let fee = charge
        .and_then(|c| c.balance_transaction.as_ref())
        .and_then(|t| t.object())
        .map(|t| t.fee);
    (card, fee)
}

fn charged(intent: &wire::PaymentIntent) -> Charged {
    let (card, fee) = summary(intent);
    Charged {
        processor_ref: intent.id.clone(),
        amount: if intent.amount_received > 0 {
            intent.amount_received
        } else {
            intent.amount
        },
        card,
        fee,
        customer: intent.customer.clone(),
    }
}

/// Escapes a value for a quoted search term.
fn search_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

impl StripeProcessor {
    /// Builds the client for one account.
    pub fn new(config: StripeConfig) -> Result<Self, StripeConfigError> {
        let base = config.base_url.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| StripeConfigError::BadBaseUrl(config.base_url.clone()))?;
        let host = url.host_str().unwrap_or_default();
        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => narwhal_mail::tls::is_loopback(host),
            _ => false,
        };
        if !scheme_ok || host.is_empty() || !matches!(url.path(), "" | "/") || url.query().is_some()
        {
            return Err(StripeConfigError::BadBaseUrl(config.base_url.clone()));
        }
        let tls = narwhal_mail::tls::client_config(config.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| StripeConfigError::Http(e.to_string()))?;
        let pacer = limiter::Pacer::new(config.max_requests_per_second, config.burst);
        Ok(Self {
            config,
            base,
            http,
            pacer,
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn exchange(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Exchange {
        self.pacer.wait().await;
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.base))
            .bearer_auth(self.config.secret_key.expose())
            .header("Stripe-Version", API_VERSION);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Exchange::NotSent(format!("connect: {e}")),
            Err(e) if e.is_builder() => return Exchange::NotSent(format!("request: {e}")),
            Err(e) if e.is_timeout() => return Exchange::NoAnswer(format!("timeout: {e}")),
            Err(e) => return Exchange::NoAnswer(format!("no answer: {e}")),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match resp.bytes().await {
            Ok(b) => Exchange::Answer {
                status,
                body: b.to_vec(),
                retry_after,
            },
            Err(e) => Exchange::NoAnswer(format!("reading the answer: {e}")),
        }
    }

    fn charge_form(request: &ChargeRequest) -> Form {
        let mut f = Form::new();
        f.push("amount", request.amount.to_string())
            .push("currency", request.currency.to_ascii_lowercase())
            .push("payment_method", request.payment_method.as_str())
            .push("confirm", "true")
            .push_item("payment_method_types", "card")
            .push_opt("customer", request.customer.as_deref())
            .push_opt("description", request.description.as_deref());
        if request.save_method {
            f.push("setup_future_usage", "off_session");
        }
        f.push_entry(
            "metadata",
            ATTEMPT_METADATA_KEY,
            request.idempotency_key.as_str(),
        );
        for (k, v) in &request.metadata {
            if k != ATTEMPT_METADATA_KEY {
                f.push_entry("metadata", k, v.as_str());
            }
        }
        f.push_item("expand", "latest_charge.balance_transaction");
        f
    }

    /// Cancels an intent left waiting for the donor (best effort: an intent that is
    /// never confirmed never charges either).
    async fn cancel(&self, intent_id: &str) {
        let mut f = Form::new();
        f.push("cancellation_reason", "abandoned");
        let outcome = self
            .exchange(
                reqwest::Method::POST,
                &format!("/v1/payment_intents/{intent_id}/cancel"),
                Some(f.encode()),
                None,
            )
            .await;
        if !matches!(outcome, Exchange::Answer { status: 200, .. }) {
            tracing::warn!(processor = %self.config.name, intent = intent_id,
                "could not cancel an intent that requires action: {outcome:?}");
        }
    }

    async fn classify_intent(&self, intent: wire::PaymentIntent) -> ChargeOutcome {
        match intent.status.as_str() {
            "succeeded" => ChargeOutcome::Succeeded(charged(&intent)),
            "requires_action" => {
                self.cancel(&intent.id).await;
                ChargeOutcome::Declined {
                    code: "authentication_required".to_string(),
                    message: "Your card needs authentication that could not be completed."
                        .to_string(),
                }
            }
            "requires_payment_method" | "canceled" => match intent.last_payment_error {
                Some(e) => ChargeOutcome::Declined {
                    code: e.decline_code.or(e.code).unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                },
                None => ChargeOutcome::Invalid {
                    status: 200,
                    code: "unexpected_status".to_string(),
                    message: format!("intent {} came back {}", intent.id, intent.status),
                },
            },
            "requires_confirmation" => ChargeOutcome::Invalid {
                status: 200,
                code: "unexpected_status".to_string(),
                message: format!("intent {} was not confirmed", intent.id),
            },
            other => ChargeOutcome::Ambiguous {
                reason: format!("intent {} is {other}", intent.id),
            },
        }
    }

    /// Sends the charge; a 409 (the same key still in flight, or a lock held) is
    /// retried with the same key, which is safe, after 100 ms, 200 ms, ... for as long
    /// as one request timeout: once the first request is done, the retry gets its
    /// saved answer. Only a conflict that outlasts that is `Ambiguous`.
    async fn do_charge(&self, request: &ChargeRequest) -> ChargeOutcome {
        let body = Self::charge_form(request).encode();
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let exchange = self
                .exchange(
                    reqwest::Method::POST,
                    "/v1/payment_intents",
                    Some(body.clone()),
                    Some(&request.idempotency_key),
                )
                .await;
            if matches!(exchange, Exchange::Answer { status: 409, .. })
                && tokio::time::Instant::now() + pause < deadline
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
            return self.classify_charge(exchange).await;
        }
    }

    async fn classify_charge(&self, exchange: Exchange) -> ChargeOutcome {
        let (status, body, retry_after) = match exchange {
            Exchange::NotSent(reason) => {
                return ChargeOutcome::Unavailable {
                    reason,
                    retry_after: None,
                }
            }
            Exchange::NoAnswer(reason) => return ChargeOutcome::Ambiguous { reason },
            Exchange::Answer {
                status,
                body,
                retry_after,
            } => (status, body, retry_after),
        };
        if status == 200 {
            return match serde_json::from_slice::<wire::PaymentIntent>(&body) {
                Ok(intent) => self.classify_intent(intent).await,
                Err(e) => ChargeOutcome::Ambiguous {
                    reason: format!("unreadable answer: {e}"),
                },
            };
        }
        let error = api_error(status, &body);
        let message = error.message.clone().unwrap_or_default();
        match status {
            402 => ChargeOutcome::Declined {
                code: error
                    .decline_code
                    .or(error.code)
                    .unwrap_or_else(|| "card_declined".to_string()),
                message,
            },
            409 => ChargeOutcome::Ambiguous {
                reason: format!("409 {}: {message}", error.kind),
            },
            429 | 503 => ChargeOutcome::Unavailable {
                reason: format!("{status} {}: {message}", error.code.unwrap_or(error.kind)),
                retry_after,
            },
            400..=499 => ChargeOutcome::Invalid {
                status,
                code: error.code.unwrap_or(error.kind),
                message,
            },
            _ => ChargeOutcome::Ambiguous {
                reason: format!("{status} {}: {message}", error.kind),
            },
        }
    }

    async fn do_lookup(&self, key: &str) -> LookupOutcome {
        let mut q = Form::new();
        q.push(
            "query",
            format!("metadata['{ATTEMPT_METADATA_KEY}']:'{}'", search_quote(key)),
        )
        .push("limit", "10")
        .push_item("expand", "data.latest_charge.balance_transaction");
        let path = format!("/v1/payment_intents/search?{}", q.encode());
        let (status, body) = match self.exchange(reqwest::Method::GET, &path, None, None).await {
            Exchange::Answer { status, body, .. } => (status, body),
            Exchange::NotSent(reason) | Exchange::NoAnswer(reason) => {
                return LookupOutcome::Unknown { reason }
            }
        };
        if status != 200 {
            let e = api_error(status, &body);
            return LookupOutcome::Unknown {
                reason: format!(
                    "search answered {status} {}: {}",
                    e.kind,
                    e.message.unwrap_or_default()
                ),
            };
        }
        let page: wire::SearchResult<wire::PaymentIntent> = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return LookupOutcome::Unknown {
                    reason: format!("unreadable search answer: {e}"),
                }
            }
        };
        // Only intents that really carry this key count (a search is a query, not a
        // guarantee).
        let mine: Vec<&wire::PaymentIntent> = page
            .data
            .iter()
            .filter(|pi| pi.metadata.get(ATTEMPT_METADATA_KEY).map(String::as_str) == Some(key))
            .collect();
        let succeeded: Vec<&&wire::PaymentIntent> =
            mine.iter().filter(|pi| pi.status == "succeeded").collect();
        if succeeded.len() > 1 {
            tracing::error!(processor = %self.config.name, attempt = key,
                count = succeeded.len(), "several succeeded intents carry one attempt key");
        }
        if let Some(pi) = succeeded.first() {
            return LookupOutcome::Charged(charged(pi));
        }
        if let Some(pi) = mine
            .iter()
            .find(|pi| matches!(pi.status.as_str(), "processing" | "requires_capture"))
        {
            return LookupOutcome::Unknown {
                reason: format!("intent {} is {}", pi.id, pi.status),
            };
        }
        LookupOutcome::NotCharged
    }

    async fn do_refund(&self, processor_ref: &str, amount: Cents, key: &str) -> RefundOutcome {
        let mut f = Form::new();
        f.push("payment_intent", processor_ref)
            .push("amount", amount.to_string());
        let exchange = self
            .exchange(
                reqwest::Method::POST,
                "/v1/refunds",
                Some(f.encode()),
                Some(key),
            )
            .await;
        let (status, body) = match exchange {
            Exchange::Answer { status, body, .. } => (status, body),
            Exchange::NotSent(reason) | Exchange::NoAnswer(reason) => {
                return RefundOutcome::Failed { reason }
            }
        };
        if status == 200 {
            return match serde_json::from_slice::<wire::Refund>(&body) {
                Ok(r) if r.status == "failed" || r.status == "canceled" => RefundOutcome::Refused {
                    code: format!("refund_{}", r.status),
                    message: format!("refund {} is {}", r.id, r.status),
                },
                Ok(r) => RefundOutcome::Refunded {
                    refund_ref: r.id,
                    amount: r.amount,
                },
                Err(e) => RefundOutcome::Failed {
                    reason: format!("unreadable answer: {e}"),
                },
            };
        }
        let e = api_error(status, &body);
        match status {
            400 | 402 | 404 => RefundOutcome::Refused {
                code: e.code.unwrap_or(e.kind),
                message: e.message.unwrap_or_default(),
            },
            _ => RefundOutcome::Failed {
                reason: format!("{status} {}: {}", e.kind, e.message.unwrap_or_default()),
            },
        }
    }

    async fn do_health(&self) -> Result<(), String> {
        match self
            .exchange(reqwest::Method::GET, "/v1/balance", None, None)
            .await
        {
            Exchange::Answer { status: 200, .. } => Ok(()),
            Exchange::Answer { status, body, .. } => {
                let e = api_error(status, &body);
                Err(format!(
                    "balance answered {status} {}: {}",
                    e.kind,
                    e.message.unwrap_or_default()
                ))
            }
            Exchange::NotSent(reason) | Exchange::NoAnswer(reason) => Err(reason),
        }
    }

    async fn do_list(&self, since: i64) -> Result<Vec<ProcessorPayment>, String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = Form::new();
            q.push("created[gte]", since.to_string())
                .push("limit", "100")
                .push_opt("starting_after", after.as_deref())
                .push_item("expand", "data.latest_charge");
            let path = format!("/v1/payment_intents?{}", q.encode());
            let body = match self.exchange(reqwest::Method::GET, &path, None, None).await {
                Exchange::Answer {
                    status: 200, body, ..
                } => body,
                Exchange::Answer { status, body, .. } => {
                    let e = api_error(status, &body);
                    return Err(format!(
                        "list answered {status} {}: {}",
                        e.kind,
                        e.message.unwrap_or_default()
                    ));
                }
                Exchange::NotSent(r) | Exchange::NoAnswer(r) => return Err(r),
            };
            let page: wire::List<wire::PaymentIntent> =
                serde_json::from_slice(&body).map_err(|e| format!("unreadable list: {e}"))?;
            after = page.data.last().map(|pi| pi.id.clone());
            for pi in page.data {
                let refunded = pi
                    .latest_charge
                    .as_ref()
                    .and_then(|c| c.object())
                    .map_or(0, |c| c.amount_refunded);
                out.push(ProcessorPayment {
                    attempt_key: pi.metadata.get(ATTEMPT_METADATA_KEY).cloned(),
                    processor_ref: pi.id,
                    amount: pi.amount,
                    refunded,
                    status: pi.status,
                    created: pi.created,
                });
            }
            if !page.has_more || after.is_none() {
                return Ok(out);
            }
        }
    }
}

impl Processor for StripeProcessor {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> BoxFuture<'a, ChargeOutcome> {
        Box::pin(self.do_charge(request))
    }

    fn lookup<'a>(&'a self, idempotency_key: &'a str) -> BoxFuture<'a, LookupOutcome> {
        Box::pin(self.do_lookup(idempotency_key))
    }

    fn refund<'a>(
        &'a self,
        processor_ref: &'a str,
        amount: Cents,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, RefundOutcome> {
        Box::pin(self.do_refund(processor_ref, amount, idempotency_key))
    }

    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.do_health())
    }

    fn list_payments(&self, since: i64) -> BoxFuture<'_, Result<Vec<ProcessorPayment>, String>> {
        Box::pin(self.do_list(since))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_charge_body_carries_the_attempt_key_and_no_duplicate_of_it() {
        let request = ChargeRequest {
            idempotency_key: "att_1".to_string(),
            amount: 5500,
            currency: "USD".to_string(),
            payment_method: "pm_card_visa".to_string(),
            customer: Some("cus_1".to_string()),
            save_method: true,
            metadata: vec![
                ("donation".to_string(), "d_9".to_string()),
                (ATTEMPT_METADATA_KEY.to_string(), "forged".to_string()),
            ],
            description: None,
        };
        let fields = form::Fields::parse(&StripeProcessor::charge_form(&request).encode()).unwrap();
        assert_eq!(fields.get("amount"), Some("5500"));
        assert_eq!(fields.get("currency"), Some("usd"));
        assert_eq!(fields.get("confirm"), Some("true"));
        assert_eq!(fields.get("setup_future_usage"), Some("off_session"));
        assert_eq!(fields.get("customer"), Some("cus_1"));
        assert_eq!(
            fields.hash("metadata"),
            vec![
                (ATTEMPT_METADATA_KEY.to_string(), "att_1".to_string()),
                ("donation".to_string(), "d_9".to_string())
            ]
        );
    }

    #[test]
    fn search_values_are_quoted() {
        assert_eq!(search_quote(r"a'b\c"), r"a\'b\\c");
    }

    #[test]
    fn the_secret_key_stays_out_of_debug() {
        let p = StripeProcessor::new(
            StripeConfig::new("s", Secret::new("sk_test_hidden".to_string()))
                .base_url("http://127.0.0.1:9"),
        )
        .unwrap();
        assert!(!format!("{p:?}").contains("sk_test_hidden"));
        assert!(StripeProcessor::new(
            StripeConfig::new("s", Secret::new("k".to_string())).base_url("ftp://x")
        )
        .is_err());
        assert!(StripeProcessor::new(
            StripeConfig::new("s", Secret::new("k".to_string())).base_url("http://stripe.example")
        )
        .is_err());
        assert!(StripeProcessor::new(StripeConfig::new("s", Secret::new("k".to_string()))).is_ok());
    }
}
