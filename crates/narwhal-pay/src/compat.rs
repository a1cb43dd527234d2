//! Narwhal's Stripe-compatible API, the redundant path: a front end or client library
//! written for Stripe is pointed at Narwhal and keeps taking donations while the
//! vendor is down. This module maps Stripe's PaymentIntent and Refund requests onto
//! [`Donations`]; the HTTP crate only moves bytes (`narwhal_http::compat`).
//!
//! The subset served (form-encoded requests, JSON answers in Stripe's shapes):
//!
//! | request | what Narwhal does |
//! | --- | --- |
//! | `POST /v1/payment_intents` | stores an intent (`pi_nw...`); with `confirm=true`, confirms it at once |
//! | `POST /v1/payment_intents/{id}/confirm` | takes the donation through [`Donations::take`] (channel `compat`) |
//! | `GET /v1/payment_intents/{id}` | the intent, its status read from its donation |
//! | `POST /v1/refunds` | refunds at the processor that charged, then records it |
//!
//! The donor fields the law requires travel as metadata: `metadata[first_name]`,
//! `last_name`, `email` (or `receipt_email`), `phone`, `address1`, `address2`, `city`,
//! `state`, `zip`, `employer`, `occupation`, `refcode`, `source`, and the attestations
//! `own_funds`, `citizen_or_resident`, `not_contractor` (`true`), `personal_card`
//! (default `true`). Other metadata is kept and returned. Every value is checked for
//! card numbers before anything is stored.
//!
//! Confirmation `n` of intent `pi` is the donation with idempotency key
//! `compat:{pi}:{n}`; a new confirmation begins only after the previous one was
//! declined or refused, so an intent is charged at most once, whatever is retried.
//! Statuses, from the donation's state: `processing` (an ambiguous attempt is being
//! settled), `succeeded`, `requires_payment_method` with `last_payment_error` (declined
//! or refused), and, when every processor is down, **`requires_action`** with
//! `next_action.type = "narwhal_pledge"`: the gift is recorded as a pledge (no card
//! data) and the donor will get a payment link. Never a success that did not happen.
//!
//! Idempotency is Stripe's ([`Compat::idempotent`]): `Idempotency-Key` per API key,
//! stored with a hash of the endpoint and parameters; the first answer (errors
//! included) is replayed; other parameters are 400 `idempotency_error`; a request while
//! the first is in flight is 409. One deviation: an `api_error` (5xx, our failure
//! before anything was decided) is not saved, so a retry with the key runs again.
//!
//! Events (`payment_intent.succeeded`, `payment_intent.payment_failed`,
//! `charge.refunded`) are written to a durable outbox (a `compat.webhook` job) once
//! per event id, and [`Compat::deliver_webhooks`] posts them to the configured
//! endpoint signed with `Stripe-Signature` ([`crate::stripe::webhook::sign`]), retrying
//! with backoff until a 2xx: at least once.

use crate::processor::RefundOutcome;
use crate::service::{
    hex, outcome_of, Attestations, DonationError, DonationRequest, Donations, Donor, Outcome,
};
use crate::stripe::form::Fields;
use crate::stripe::webhook;
use crate::stripe::wire::{self, error_type, ApiError, Expandable};
use narwhal_domain::card::contains_card_number;
use narwhal_mail::Secret;
use narwhal_store::api_idempotency::{CompatIntentRow, IdemBegin};
use narwhal_store::donations::DonationRow;
use narwhal_store::StoreError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// The job kind of the webhook outbox.
pub const WEBHOOK_JOB: &str = "compat.webhook";

/// The donation channel of gifts taken through this API.
pub const CHANNEL: &str = "compat";

/// Where events go.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    /// `https://...` (or `http://` to loopback in tests).
    pub url: String,
    /// The signing secret (`whsec_...`).
    pub secret: Secret<String>,
}

/// Settings of the compatible API.
#[derive(Debug, Clone)]
pub struct CompatConfig {
    /// The endpoint events are posted to; `None`: no events.
    pub webhook: Option<WebhookEndpoint>,
    /// A request left in flight this long (its node died) lets its key be used again.
    pub stale_after: Duration,
    /// The longest wait for the webhook endpoint's answer.
    pub webhook_timeout: Duration,
    /// Retries of one event before it is given up (about three days with the backoff).
    pub webhook_max_tries: u32,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            stale_after: Duration::from_secs(120),
            webhook_timeout: Duration::from_secs(10),
            webhook_max_tries: 60,
        }
    }
}

/// A Stripe-shaped answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
    /// Answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            replayed: false,
        }
    }

    fn error(status: u16, error: ApiError) -> Self {
        Self {
            status,
            body: serde_json::to_value(error.envelope()).unwrap_or(Value::Null),
            replayed: false,
        }
    }
}

fn invalid_request(message: &str, code: &str, param: Option<&str>) -> Reply {
    let mut e = ApiError::new(error_type::INVALID_REQUEST_ERROR, message).code(code);
    if let Some(p) = param {
        e = e.param(p);
    }
    Reply::error(400, e)
}

fn api_error(message: &str) -> Reply {
    Reply::error(500, ApiError::new(error_type::API_ERROR, message))
}

fn not_found(kind: &str, id: &str, param: &str) -> Reply {
    // The id is ours (pi_.., ch_..) or the caller's typo; never card data: ids with
    // digits only are not echoed.
    let shown = if id.bytes().all(|b| b.is_ascii_digit() || b == b' ') {
        "(redacted)"
    } else {
        id
    };
    Reply::error(
        404,
        ApiError::new(
            error_type::INVALID_REQUEST_ERROR,
            format!("No such {kind}: '{shown}'"),
        )
        .code("resource_missing")
        .param(param),
    )
}

/// Parameters `POST /v1/payment_intents` accepts.
const CREATE_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "payment_method",
    "payment_method_types",
    "confirm",
    "metadata",
    "receipt_email",
    "description",
    "capture_method",
    "confirmation_method",
    "expand",
];

/// Parameters `POST /v1/payment_intents/{id}/confirm` accepts.
const CONFIRM_PARAMS: &[&str] = &["payment_method", "receipt_email", "expand"];

/// Parameters `POST /v1/refunds` accepts.
const REFUND_PARAMS: &[&str] = &[
    "payment_intent",
    "charge",
    "amount",
    "reason",
    "metadata",
    "expand",
];

/// Metadata keys that fill the donor's record (the rest is kept as given).
const DONOR_KEYS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "address1",
    "address2",
    "city",
    "state",
    "zip",
    "employer",
    "occupation",
];

fn unknown_param(fields: &Fields, allowed: &[&str]) -> Option<Reply> {
    let bad = fields
        .top_level_keys()
        .into_iter()
        .find(|k| !allowed.contains(k))?;
    Some(invalid_request(
        &format!("Received unknown parameter: {bad}"),
        "parameter_unknown",
        Some(bad),
    ))
}

/// Refuses any value that looks like a card number, naming only the parameter.
fn card_number_check(fields: &Fields) -> Option<Reply> {
    let (key, _) = fields
        .pairs()
        .iter()
        .find(|(_, v)| contains_card_number(v))?;
    Some(invalid_request(
        "This field looks like it contains a card number; card details go only to the processor's card fields.",
        "card_number_in_text",
        Some(key),
    ))
}

fn truthy(v: Option<&str>) -> Option<bool> {
    v.map(|v| matches!(v.trim(), "true" | "1" | "yes" | "on"))
}

/// A hash of everything that makes a request this request, with its endpoint.
fn request_hash(endpoint: &str, fields: &Fields) -> String {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    for (k, v) in fields.canonical() {
        h.update([0u8]);
        h.update(k.as_bytes());
        h.update([1u8]);
        h.update(v.as_bytes());
    }
    hex(&h.finalize())
}

/// `ch_...` for a donation: Narwhal's charge id names the donation.
pub fn charge_id(donation_public_id: &str) -> String {
    format!(
        "ch_{}",
        donation_public_id
            .strip_prefix("don_")
            .unwrap_or(donation_public_id)
    )
}

fn donation_of_charge(charge: &str) -> Option<String> {
    charge.strip_prefix("ch_").map(|rest| format!("don_{rest}"))
}

/// The donation key of confirmation `n` of intent `id`.
pub fn confirmation_key(intent: &str, n: i64) -> String {
    format!("compat:{intent}:{n}")
}

/// The intent of a donation taken through this API, from its idempotency key.
pub fn intent_of_donation(idempotency_key: &str) -> Option<&str> {
    let rest = idempotency_key.strip_prefix("compat:")?;
    rest.rsplit_once(':').map(|(pi, _)| pi)
}

/// The compatible API over the donation service.
#[derive(Clone)]
pub struct Compat {
    /// The donation service (its store, router and limits).
    pub donations: Donations,
    /// Settings.
    pub config: std::sync::Arc<CompatConfig>,
    http: reqwest::Client,
}

/// Why the compatible API could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// The TLS settings for webhook delivery could not be built.
    #[error(transparent)]
    Tls(#[from] narwhal_mail::tls::TlsConfigError),
    /// The HTTP client could not be built.
    #[error("building the webhook HTTP client: {0}")]
    Http(String),
}

impl Compat {
    /// Builds the API over `donations`.
    pub fn new(donations: Donations, config: CompatConfig) -> Result<Self, CompatError> {
        let tls = narwhal_mail::tls::client_config(None)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(config.webhook_timeout)
            .build()
            .map_err(|e| CompatError::Http(e.to_string()))?;
        Ok(Self {
            donations,
            config: std::sync::Arc::new(config),
            http,
        })
    }

    /// Runs `op` under Stripe's idempotency rules when the caller sent a key.
    pub async fn idempotent<F, Fut>(
        &self,
        scope: &str,
        key: Option<&str>,
        endpoint: &str,
        fields: &Fields,
        op: F,
    ) -> Reply
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Reply>,
    {
        let Some(key) = key else {
            return op().await;
        };
        if key.is_empty() || key.len() > 255 {
            return invalid_request(
                "Idempotency keys are 1 to 255 characters.",
                "idempotency_key_invalid",
                None,
            );
        }
        let hash = request_hash(endpoint, fields);
        let stale = i64::try_from(self.config.stale_after.as_millis()).unwrap_or(i64::MAX);
        let store = &self.donations.store;
        match store.idempotency_begin(scope, key, &hash, stale).await {
            Err(_) => api_error("The request could not be recorded; retry it."),
            Ok(IdemBegin::Mismatch) => Reply::error(
                400,
                ApiError::new(
                    error_type::IDEMPOTENCY_ERROR,
                    format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
                ),
            ),
            Ok(IdemBegin::InFlight) => Reply::error(
                409,
                ApiError::new(
                    error_type::IDEMPOTENCY_ERROR,
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): please try again later.",
                ),
            ),
            Ok(IdemBegin::Done { status, body }) => Reply {
                status,
                body: serde_json::from_str(&body).unwrap_or(Value::Null),
                replayed: true,
            },
            Ok(IdemBegin::Fresh) => {
                let reply = op().await;
                let saved = if reply.status >= 500 {
                    store.idempotency_release(scope, key).await
                } else {
                    store
                        .idempotency_finish(scope, key, reply.status, &reply.body.to_string())
                        .await
                        .map(|_| ())
                };
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "could not save an idempotent response");
                }
                reply
            }
        }
    }

    /// `POST /v1/payment_intents`.
    pub async fn create_intent(&self, scope: &str, key: Option<&str>, fields: &Fields) -> Reply {
        self.idempotent(scope, key, "POST /v1/payment_intents", fields, || {
            self.create_intent_now(scope, key, fields)
        })
        .await
    }

    async fn create_intent_now(&self, scope: &str, key: Option<&str>, fields: &Fields) -> Reply {
        if let Some(r) = unknown_param(fields, CREATE_PARAMS).or_else(|| card_number_check(fields))
        {
            return r;
        }
        let Some(amount) = fields.get("amount") else {
            return invalid_request(
                "Missing required param: amount.",
                "parameter_missing",
                Some("amount"),
            );
        };
        let amount = match amount.trim().parse::<i64>() {
            Ok(a) if narwhal_domain::Cents::new(a).is_ok() => a,
            _ => {
                return invalid_request(
                    "Invalid amount: an integer number of cents from 1 to 100000000.",
                    "parameter_invalid_integer",
                    Some("amount"),
                )
            }
        };
        let currency = fields
            .get("currency")
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if currency.is_empty() {
            return invalid_request(
                "Missing required param: currency.",
                "parameter_missing",
                Some("currency"),
            );
        }
        if currency != self.donations.config.currency {
            return invalid_request(
                &format!("Only {} is accepted.", self.donations.config.currency),
                "parameter_invalid_string",
                Some("currency"),
            );
        }
        if let Some(t) = fields
            .array("payment_method_types")
            .iter()
            .find(|t| *t != "card")
        {
            return invalid_request(
                &format!("The payment method type '{t}' is not accepted; only card."),
                "parameter_invalid_string",
                Some("payment_method_types"),
            );
        }
        if fields
            .get("capture_method")
            .is_some_and(|c| c != "automatic")
        {
            return invalid_request(
                "Only automatic capture is supported.",
                "parameter_invalid_string",
                Some("capture_method"),
            );
        }
        let params = json!({
            "payment_method": fields.get("payment_method"),
            "receipt_email": fields.get("receipt_email"),
            "description": fields.get("description"),
            "metadata": fields.hash("metadata").into_iter().collect::<BTreeMap<_, _>>(),
        });
        // With a key, the id follows from it: a create retried after a crash finds
        // the intent it made instead of making a second.
        let id = match key {
            Some(k) => {
                let mut h = Sha256::new();
                h.update(scope.as_bytes());
                h.update([0u8]);
                h.update(k.as_bytes());
                format!("pi_nw{}", &hex(&h.finalize())[..24])
            }
            None => {
                let (token, _) = crate::service::new_token();
                format!("pi_nw{}", &token[..24])
            }
        };
        let store = &self.donations.store;
        if let Err(e) = store
            .create_compat_intent(&id, scope, amount, &currency, &params)
            .await
        {
            return store_failure(&e);
        }
        if truthy(fields.get("confirm")) == Some(true) {
            return self.confirm_now(scope, &id, &Fields::default()).await;
        }
        self.render(scope, &id).await
    }

    /// `POST /v1/payment_intents/{id}/confirm`.
    pub async fn confirm_intent(
        &self,
        scope: &str,
        key: Option<&str>,
        id: &str,
        fields: &Fields,
    ) -> Reply {
        let endpoint = format!("POST /v1/payment_intents/{id}/confirm");
        self.idempotent(scope, key, &endpoint, fields, || async {
            if let Some(r) =
                unknown_param(fields, CONFIRM_PARAMS).or_else(|| card_number_check(fields))
            {
                return r;
            }
            self.confirm_now(scope, id, fields).await
        })
        .await
    }

    /// `GET /v1/payment_intents/{id}`.
    pub async fn retrieve_intent(&self, scope: &str, id: &str) -> Reply {
        self.render(scope, id).await
    }

    async fn intent(&self, scope: &str, id: &str) -> Result<CompatIntentRow, Reply> {
        match self.donations.store.compat_intent(id).await {
            Ok(Some(i)) if i.scope == scope => Ok(i),
            Ok(_) => Err(not_found("payment_intent", id, "intent")),
            Err(e) => Err(store_failure(&e)),
        }
    }

    /// The donation of the intent's latest confirmation, if it was begun.
    async fn latest(&self, intent: &CompatIntentRow) -> Result<Option<DonationRow>, Reply> {
        if intent.confirmations == 0 {
            return Ok(None);
        }
        self.donations
            .store
            .donation_by_idempotency_key(&confirmation_key(&intent.id, intent.confirmations))
            .await
            .map_err(|e| store_failure(&e))
    }

    async fn render(&self, scope: &str, id: &str) -> Reply {
        let intent = match self.intent(scope, id).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        match self.latest(&intent).await {
            Ok(d) => {
                if let Some(d) = &d {
                    self.note_events(&intent, d).await;
                }
                Reply::ok(intent_json(&intent, d.as_ref()))
            }
            Err(r) => r,
        }
    }

    async fn confirm_now(&self, scope: &str, id: &str, fields: &Fields) -> Reply {
        let intent = match self.intent(scope, id).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        let latest = match self.latest(&intent).await {
            Ok(d) => d,
            Err(r) => return r,
        };
        let n = match latest.as_ref().map(|d| outcome_of(&d.state)) {
            None => intent.confirmations.max(1),
            Some(Outcome::Declined | Outcome::Failed) => intent.confirmations + 1,
            // Being settled: nothing else happens to it meanwhile.
            Some(Outcome::Processing) => return Reply::ok(intent_json(&intent, latest.as_ref())),
            Some(Outcome::Succeeded | Outcome::Pledged) => {
                let status = intent_status(&intent, latest.as_ref());
                return invalid_request(
                    &format!("This PaymentIntent's status is {status}, so it cannot be confirmed."),
                    "payment_intent_unexpected_state",
                    None,
                );
            }
        };
        let mut params = intent.params.clone();
        for k in ["payment_method", "receipt_email"] {
            if let Some(v) = fields.get(k) {
                params[k] = Value::String(v.to_string());
            }
        }
        if params["payment_method"].as_str().is_none_or(str::is_empty) {
            return invalid_request(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                "payment_intent_unexpected_state",
                Some("payment_method"),
            );
        }
        if n != intent.confirmations || params != intent.params {
            match self
                .donations
                .store
                .advance_compat_intent(&intent.id, intent.confirmations, n, &params)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    return Reply::error(
                        409,
                        ApiError::new(
                            error_type::INVALID_REQUEST_ERROR,
                            "This PaymentIntent is being confirmed by another request.",
                        )
                        .code("lock_timeout"),
                    )
                }
                Err(e) => return store_failure(&e),
            }
        }
        let intent = CompatIntentRow {
            confirmations: n,
            params,
            ..intent
        };
        let req = donation_request(&intent);
        match self.donations.take(req).await {
            Ok(taken) => {
                self.note_events(&intent, &taken.donation).await;
                confirmed_reply(&intent, &taken.donation)
            }
            Err(DonationError::InFlight) => {
                let d = self.latest(&intent).await.ok().flatten();
                Reply::ok(intent_json(&intent, d.as_ref()))
            }
            Err(DonationError::Invalid {
                field,
                code,
                message,
            }) => invalid_request(&message, code, Some(&param_of(field))),
            Err(DonationError::OverLimit(r)) => Reply::error(
                400,
                ApiError::new(error_type::INVALID_REQUEST_ERROR, r.message)
                    .code("contribution_limit_exceeded")
                    .param("amount"),
            ),
            Err(DonationError::KeyReused) => Reply::error(
                400,
                ApiError::new(
                    error_type::IDEMPOTENCY_ERROR,
                    "This confirmation was begun with other parameters.",
                ),
            ),
            Err(DonationError::Store(e)) => store_failure(&e),
            Err(DonationError::People(_)) => {
                api_error("The donor could not be recorded; retry the request.")
            }
            Err(DonationError::Unavailable(_)) => {
                api_error("Donations are unavailable for a moment; retry the request.")
            }
        }
    }

    /// `POST /v1/refunds`.
    pub async fn create_refund(&self, scope: &str, key: Option<&str>, fields: &Fields) -> Reply {
        self.idempotent(scope, key, "POST /v1/refunds", fields, || {
            self.refund_now(scope, fields)
        })
        .await
    }

    async fn refund_now(&self, scope: &str, fields: &Fields) -> Reply {
        if let Some(r) = unknown_param(fields, REFUND_PARAMS).or_else(|| card_number_check(fields))
        {
            return r;
        }
        let store = &self.donations.store;
        let (intent, donation) = match (fields.get("payment_intent"), fields.get("charge")) {
            (Some(pi), _) => {
                let intent = match self.intent(scope, pi).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                match self.latest(&intent).await {
                    Ok(d) => (intent, d),
                    Err(r) => return r,
                }
            }
            (None, Some(ch)) => {
                let found = match donation_of_charge(ch) {
                    Some(public) => store.donation_by_public_id(&public).await,
                    None => Ok(None),
                };
                let d = match found {
                    Ok(Some(d)) => d,
                    Ok(None) => return not_found("charge", ch, "charge"),
                    Err(e) => return store_failure(&e),
                };
                let Some(pi) = intent_of_donation(&d.idempotency_key) else {
                    return not_found("charge", ch, "charge");
                };
                match self.intent(scope, pi).await {
                    Ok(i) => (i, Some(d)),
                    Err(_) => return not_found("charge", ch, "charge"),
                }
            }
            (None, None) => {
                return invalid_request(
                    "One of payment_intent or charge is required.",
                    "parameter_missing",
                    Some("payment_intent"),
                )
            }
        };
        let Some(d) = donation.filter(|d| outcome_of(&d.state) == Outcome::Succeeded) else {
            return invalid_request(
                &format!(
                    "This PaymentIntent ({}) does not have a successful charge to refund.",
                    intent.id
                ),
                "charge_not_refundable",
                Some("payment_intent"),
            );
        };
        let left = d.amount_cents - d.refunded_cents;
        if left <= 0 || d.state == "disputed" {
            return invalid_request(
                &format!(
                    "Charge {} has already been refunded.",
                    charge_id(&d.public_id)
                ),
                "charge_already_refunded",
                None,
            );
        }
        let amount = match fields.get("amount").map(|a| a.trim().parse::<i64>()) {
            None => left,
            Some(Ok(a)) if a > 0 => a,
            Some(_) => {
                return invalid_request(
                    "Invalid amount: a positive integer number of cents.",
                    "parameter_invalid_integer",
                    Some("amount"),
                )
            }
        };
        if amount > left {
            return invalid_request(
                &format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})."),
                "amount_too_large",
                Some("amount"),
            );
        }
        let (Some(processor_name), Some(processor_ref)) = (&d.processor, &d.processor_ref) else {
            return api_error("The charge has no processor record.");
        };
        let Some((_, processor)) = self.donations.router.by_name(processor_name) else {
            return api_error("The processor that charged is not configured on this node.");
        };
        // Keyed by what is refunded so far: a retry after an unknown result reuses the
        // key, and the processor answers with the refund it made.
        let refund_key = format!("{}-refund-{}-{amount}", d.public_id, d.refunded_cents);
        let processor = processor.clone();
        match processor.refund(processor_ref, amount, &refund_key).await {
            RefundOutcome::Refunded { refund_ref, amount } => {
                match store
                    .record_refund(d.id, &refund_ref, amount, &self.donations.config.limits)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Invalid(m)) => {
                        return invalid_request(&m, "refund_invalid", None)
                    }
                    Err(e) => return store_failure(&e),
                }
                let refund = wire::Refund {
                    id: refund_ref,
                    object: "refund".into(),
                    amount,
                    charge: Some(charge_id(&d.public_id)),
                    payment_intent: Some(intent.id.clone()),
                    currency: d.currency.clone(),
                    status: "succeeded".into(),
                    reason: fields.get("reason").map(str::to_string),
                    metadata: fields.hash("metadata").into_iter().collect(),
                    created: now_secs(),
                };
                if let Ok(Some(after)) = store.donation_by_id(d.id).await {
                    self.note_events(&intent, &after).await;
                }
                Reply::ok(serde_json::to_value(refund).unwrap_or(Value::Null))
            }
            RefundOutcome::Refused { code, message } => invalid_request(&message, &code, None),
            RefundOutcome::Failed { .. } => {
                api_error("The processor could not be reached; retry the refund with the same key.")
            }
        }
    }

    /// Puts the events a donation's state calls for in the outbox, once each (event
    /// ids follow from the donation and what happened to it).
    async fn note_events(&self, intent: &CompatIntentRow, d: &DonationRow) {
        match outcome_of(&d.state) {
            Outcome::Succeeded => {
                self.enqueue_event(
                    "payment_intent.succeeded",
                    &d.public_id,
                    intent_json(intent, Some(d)),
                )
                .await;
            }
            Outcome::Declined | Outcome::Failed => {
                self.enqueue_event(
                    "payment_intent.payment_failed",
                    &d.public_id,
                    intent_json(intent, Some(d)),
                )
                .await;
            }
            _ => {}
        }
        if d.refunded_cents > 0 {
            self.enqueue_event(
                "charge.refunded",
                &format!("{}:{}", d.public_id, d.refunded_cents),
                charge_json(intent, d),
            )
            .await;
        }
    }

    /// Notes the events of compatible-API donations that moved since `since_ms` by
    /// any path (the settler settling an ambiguous charge, a refund by staff or by a
    /// processor webhook). Returns how many donations were looked at.
    pub async fn sweep_events(&self, since_ms: i64) -> Result<usize, StoreError> {
        if self.config.webhook.is_none() {
            return Ok(0);
        }
        let store = &self.donations.store;
        let ids = store.compat_donations_moved_since(since_ms, 1_000).await?;
        for id in &ids {
            let Some(d) = store.donation_by_id(*id).await? else {
                continue;
            };
            let Some(pi) = intent_of_donation(&d.idempotency_key) else {
                continue;
            };
            if let Some(intent) = store.compat_intent(pi).await? {
                self.note_events(&intent, &d).await;
            }
        }
        Ok(ids.len())
    }

    /// Writes one event to the outbox unless its id was written before.
    async fn enqueue_event(&self, kind: &str, discriminator: &str, object: Value) {
        if self.config.webhook.is_none() {
            return;
        }
        let event_id = format!(
            "evt_nw{}",
            &hex(&Sha256::digest(
                format!("{kind}\n{discriminator}").as_bytes()
            ))[..24]
        );
        let store = &self.donations.store;
        let stale = i64::try_from(self.config.stale_after.as_millis()).unwrap_or(i64::MAX);
        match store
            .idempotency_begin("webhook-events", &event_id, kind, stale)
            .await
        {
            Ok(IdemBegin::Fresh) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not record a webhook event");
                return;
            }
        }
        let event = wire::Event {
            id: event_id.clone(),
            object: "event".into(),
            kind: kind.to_string(),
            data: wire::EventData { object },
            created: now_secs(),
            api_version: Some(crate::stripe::API_VERSION.to_string()),
            livemode: false,
            pending_webhooks: 1,
            request: None,
        };
        let payload = json!({"event": event, "tries": 0});
        match store.enqueue_job(WEBHOOK_JOB, &payload).await {
            Ok(_) => {
                let _ = store
                    .idempotency_finish("webhook-events", &event_id, 200, "{}")
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not queue a webhook event");
                let _ = store.idempotency_release("webhook-events", &event_id).await;
            }
        }
    }

    /// Posts queued events to the endpoint until none is due: each signed with
    /// `Stripe-Signature` at the time it is sent; a non-2xx or no answer is retried
    /// later with backoff. Returns how many were delivered.
    pub async fn deliver_webhooks(&self, owner: &str) -> Result<usize, StoreError> {
        let Some(endpoint) = &self.config.webhook else {
            return Ok(0);
        };
        let store = &self.donations.store;
        let mut delivered = 0;
        while let Some(job) = store.claim_job(&[WEBHOOK_JOB], owner, 60_000).await? {
            let body = job.payload["event"].to_string();
            let tries = job.payload["tries"].as_u64().unwrap_or(0) + 1;
            let signature = webhook::sign(endpoint.secret.expose(), now_secs(), body.as_bytes());
            let sent = self
                .http
                .post(&endpoint.url)
                .header("content-type", "application/json; charset=utf-8")
                .header(webhook::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("endpoint answered {}", r.status().as_u16())),
                Err(e) => Some(format!("endpoint unreachable: {e}")),
            };
            match failure {
                None => {
                    store
                        .complete_job(job.id, owner, &json!({"tries": tries}))
                        .await?;
                    delivered += 1;
                }
                Some(why) if tries >= u64::from(self.config.webhook_max_tries) => {
                    tracing::warn!(event = %job.payload["event"]["id"], %why, "webhook event given up");
                    store.fail_job(job.id, owner, &why, 0, true).await?;
                }
                Some(why) => {
                    // Backoff: 1 s doubling to an hour. Each retry is a new job due
                    // later, carrying the count (a job row's own retries are few).
                    let wait_ms = 1_000i64.saturating_mul(1 << tries.min(12)).min(3_600_000);
                    let mut next = job.payload.clone();
                    next["tries"] = json!(tries);
                    store
                        .enqueue_job_due(WEBHOOK_JOB, &next, narwhal_store::now_ms() + wait_ms)
                        .await?;
                    store
                        .complete_job(job.id, owner, &json!({"retry": why}))
                        .await?;
                }
            }
        }
        Ok(delivered)
    }
}

/// Delivers queued events every `every` until `stop` turns true: what `narwhal serve`
/// runs beside the API when a webhook endpoint is configured.
pub fn spawn_webhook_worker(
    compat: Compat,
    owner: String,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Donations that moved while no worker ran are found by the first sweep.
        let mut since = narwhal_store::now_ms() - 24 * 3_600_000;
        loop {
            let started = narwhal_store::now_ms();
            match compat.sweep_events(since).await {
                // A little overlap: a commit racing the sweep is seen next time.
                Ok(_) => since = started - 5_000,
                Err(e) => tracing::warn!(error = %e, "webhook outbox: sweep failed; will retry"),
            }
            if let Err(e) = compat.deliver_webhooks(&owner).await {
                tracing::warn!(error = %e, "webhook outbox: storage failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    })
}

fn now_secs() -> i64 {
    narwhal_store::now_ms() / 1000
}

fn store_failure(e: &StoreError) -> Reply {
    tracing::warn!(error = %e, "compatible API: storage failed");
    api_error("Storage is unavailable; nothing was charged. Retry the request.")
}

/// The Stripe parameter a donation field arrives in.
fn param_of(field: &str) -> String {
    match field {
        "amount" | "payment_method" => field.to_string(),
        "idempotency_key" => "idempotency_key".to_string(),
        f => format!("metadata[{}]", f.strip_prefix("attestations.").unwrap_or(f)),
    }
}

fn meta<'a>(params: &'a Value, key: &str) -> Option<&'a str> {
    params["metadata"][key].as_str()
}

fn donation_request(intent: &CompatIntentRow) -> DonationRequest {
    let p = &intent.params;
    let text = |k: &str| meta(p, k).unwrap_or("").to_string();
    let opt = |k: &str| {
        meta(p, k)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
    };
    let email = opt("email")
        .or_else(|| p["receipt_email"].as_str().map(str::to_string))
        .unwrap_or_default();
    let yes = |k: &str| truthy(meta(p, k)).unwrap_or(false);
    DonationRequest {
        idempotency_key: confirmation_key(&intent.id, intent.confirmations),
        amount_cents: intent.amount_cents,
        donor: Donor {
            first_name: text("first_name"),
            last_name: text("last_name"),
            email,
            phone: opt("phone"),
            address1: text("address1"),
            address2: opt("address2"),
            city: text("city"),
            state: text("state"),
            zip: text("zip"),
            employer: opt("employer"),
            occupation: opt("occupation"),
        },
        attestations: Attestations {
            own_funds: yes("own_funds"),
            citizen_or_resident: yes("citizen_or_resident"),
            not_contractor: yes("not_contractor"),
            personal_card: truthy(meta(p, "personal_card")).unwrap_or(true),
        },
        payment_method: p["payment_method"].as_str().map(str::to_string),
        save_method: false,
        refcode: opt("refcode"),
        source: opt("source"),
        channel: CHANNEL.to_string(),
        client_ip: None,
        plan_id: None,
        recurring: None,
        customer: None,
        processor: None,
    }
}

/// An intent's status from its latest donation.
fn intent_status(intent: &CompatIntentRow, d: Option<&DonationRow>) -> &'static str {
    match d.map(|d| (outcome_of(&d.state), d.state.as_str())) {
        None if intent.params["payment_method"]
            .as_str()
            .is_some_and(|s| !s.is_empty()) =>
        {
            "requires_confirmation"
        }
        None => "requires_payment_method",
        Some((Outcome::Processing, _)) => "processing",
        Some((Outcome::Succeeded, _)) => "succeeded",
        Some((Outcome::Declined | Outcome::Failed, _)) => "requires_payment_method",
        Some((Outcome::Pledged, "canceled")) => "canceled",
        Some((Outcome::Pledged, _)) => "requires_action",
    }
}

fn last_error(d: &DonationRow) -> ApiError {
    let declined = d.state == "declined";
    let code = d
        .error_code
        .clone()
        .unwrap_or_else(|| "card_declined".into());
    let mut e = ApiError::new(
        if declined {
            error_type::CARD_ERROR
        } else {
            error_type::INVALID_REQUEST_ERROR
        },
        d.error_message
            .clone()
            .unwrap_or_else(|| "Your card was declined.".into()),
    );
    if declined {
        e.code = Some("card_declined".into());
        e.decline_code = Some(code);
    } else {
        e.code = Some(code);
    }
    e
}

/// The intent in Stripe's shape.
pub fn intent_json(intent: &CompatIntentRow, d: Option<&DonationRow>) -> Value {
    let status = intent_status(intent, d);
    let mut metadata: BTreeMap<String, String> = intent.params["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !DONOR_KEYS.contains(&k.as_str()))
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    if let Some(d) = d {
        metadata.insert("narwhal_donation".into(), d.public_id.clone());
    }
    let succeeded = status == "succeeded";
    let pi = wire::PaymentIntent {
        id: intent.id.clone(),
        object: "payment_intent".into(),
        amount: intent.amount_cents,
        amount_received: if succeeded { intent.amount_cents } else { 0 },
        currency: intent.currency.clone(),
        status: status.into(),
        client_secret: None,
        payment_method: intent.params["payment_method"].as_str().map(str::to_string),
        customer: None,
        metadata,
        latest_charge: d
            .filter(|_| succeeded)
            .map(|d| Expandable::Id(charge_id(&d.public_id))),
        last_payment_error: d
            .filter(|d| matches!(outcome_of(&d.state), Outcome::Declined | Outcome::Failed))
            .map(last_error),
        created: intent.created_at / 1000,
        setup_future_usage: None,
        description: intent.params["description"].as_str().map(str::to_string),
        capture_method: Some("automatic".into()),
        canceled_at: None,
        next_action: d.filter(|_| status == "requires_action").map(|d| {
            json!({
                "type": "narwhal_pledge",
                "narwhal_pledge": {
                    "donation": d.public_id,
                    "message": "Every payment processor is unavailable. The gift is recorded as a pledge, without card details; the donor will receive a payment link by email to complete it.",
                },
            })
        }),
        livemode: false,
    };
    let mut v = serde_json::to_value(pi).unwrap_or(Value::Null);
    v["receipt_email"] = intent.params["receipt_email"].clone();
    v
}

/// The charge of a donation in Stripe's shape (for `charge.refunded`).
fn charge_json(intent: &CompatIntentRow, d: &DonationRow) -> Value {
    let charge = wire::Charge {
        id: charge_id(&d.public_id),
        object: "charge".into(),
        amount: d.amount_cents,
        amount_captured: d.amount_cents,
        amount_refunded: d.refunded_cents,
        currency: d.currency.clone(),
        status: "succeeded".into(),
        paid: true,
        refunded: d.refunded_cents >= d.amount_cents,
        payment_intent: Some(intent.id.clone()),
        payment_method: intent.params["payment_method"].as_str().map(str::to_string),
        payment_method_details: None,
        balance_transaction: None,
        customer: None,
        failure_code: None,
        failure_message: None,
        metadata: BTreeMap::from([("narwhal_donation".to_string(), d.public_id.clone())]),
        created: d.created_at / 1000,
        livemode: false,
    };
    serde_json::to_value(charge).unwrap_or(Value::Null)
}

/// The answer to a confirmation: the intent, or a 402 `card_error` carrying it.
fn confirmed_reply(intent: &CompatIntentRow, d: &DonationRow) -> Reply {
    let body = intent_json(intent, Some(d));
    match outcome_of(&d.state) {
        Outcome::Declined | Outcome::Failed => {
            let mut e = last_error(d);
            e.payment_intent = serde_json::from_value(body).ok().map(Box::new);
            let status = if d.state == "declined" { 402 } else { 400 };
            Reply::error(status, e)
        }
        _ => Reply::ok(body),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_map_back_and_forth() {
        assert_eq!(charge_id("don_ab12"), "ch_ab12");
        assert_eq!(donation_of_charge("ch_ab12").as_deref(), Some("don_ab12"));
        assert_eq!(
            intent_of_donation(&confirmation_key("pi_nw1", 3)),
            Some("pi_nw1")
        );
        assert_eq!(intent_of_donation("web-key-1"), None);
    }

    #[test]
    fn the_hash_sees_endpoint_and_every_parameter_but_not_their_order() {
        let a = Fields::parse("amount=100&currency=usd&metadata[a]=1").unwrap();
        let b = Fields::parse("metadata[a]=1&currency=usd&amount=100").unwrap();
        let c = Fields::parse("amount=101&currency=usd&metadata[a]=1").unwrap();
        assert_eq!(request_hash("e", &a), request_hash("e", &b));
        assert_ne!(request_hash("e", &a), request_hash("e", &c));
        assert_ne!(request_hash("e", &a), request_hash("f", &a));
    }

    #[test]
    fn a_card_number_anywhere_is_refused_without_echoing_it() {
        let f = Fields::parse("amount=100&metadata[occupation]=4242%204242%204242%204242").unwrap();
        let r = card_number_check(&f).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["param"], "metadata[occupation]");
        assert!(!r.body.to_string().contains("4242"), "{}", r.body);
    }

    #[test]
    fn donor_fields_come_from_metadata() {
        let intent = CompatIntentRow {
            id: "pi_nw1".into(),
            scope: "s".into(),
            amount_cents: 2_500,
            currency: "usd".into(),
            params: json!({"payment_method": "pm_card_visa", "receipt_email": "ada@example.org",
                "metadata": {"first_name": "Ada", "own_funds": "true", "not_contractor": "1",
                    "citizen_or_resident": "yes", "refcode": "em1", "campaign": "x"}}),
            confirmations: 2,
            created_at: 0,
            updated_at: 0,
        };
        let r = donation_request(&intent);
        assert_eq!(r.idempotency_key, "compat:pi_nw1:2");
        assert_eq!(r.donor.first_name, "Ada");
        assert_eq!(r.donor.email, "ada@example.org");
        assert!(r.attestations.own_funds && r.attestations.not_contractor);
        assert!(r.attestations.citizen_or_resident && r.attestations.personal_card);
        assert_eq!(r.refcode.as_deref(), Some("em1"));
        assert_eq!(r.channel, "compat");
        // Donor fields are not echoed back as metadata; the rest is.
        let v = intent_json(&intent, None);
        assert_eq!(v["status"], "requires_confirmation");
        assert_eq!(v["metadata"]["campaign"], "x");
        assert!(v["metadata"].get("first_name").is_none());
        assert_eq!(param_of("attestations.own_funds"), "metadata[own_funds]");
        assert_eq!(param_of("zip"), "metadata[zip]");
    }
}
