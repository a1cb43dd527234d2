//! Stripe's JSON objects, as far as Narwhal reads or serves them.
//!
//! Every type both serializes and deserializes, so the adapter reads them, and the
//! fake server and Narwhal's own Stripe-compatible API write them. Fields Stripe may
//! leave out default to empty; fields we do not model are ignored on input. Amounts
//! are integer minor units (cents); times are Unix seconds.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A field that holds either an id or, when requested with `expand[]`, the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    /// Just the id (`ch_...`).
    Id(String),
    /// The expanded object.
    Object(Box<T>),
}

impl<T: HasId> Expandable<T> {
    /// The id, expanded or not.
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) => id,
            Self::Object(o) => o.id(),
        }
    }

    /// The object, if expanded.
    pub fn object(&self) -> Option<&T> {
        match self {
            Self::Id(_) => None,
            Self::Object(o) => Some(o),
        }
    }
}

/// An object with an `id`.
pub trait HasId {
    /// Its id.
    fn id(&self) -> &str;
}

/// A PaymentIntent (`pi_...`): one attempt to collect an amount, through its
/// lifecycle `requires_payment_method` -> `requires_confirmation` -> `requires_action`
/// -> `processing` -> `requires_capture` -> `succeeded` | `canceled`.
/// `Debug` leaves out the client secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PaymentIntent {
    /// `pi_...`.
    pub id: String,
    /// Always `payment_intent`.
    pub object: String,
    /// The amount to collect, in cents.
    pub amount: i64,
    /// The amount collected so far, in cents.
    #[serde(default)]
    pub amount_received: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// Where the intent is in its lifecycle.
    pub status: String,
    /// The secret a browser uses to confirm this intent (never logged).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The payment method (`pm_...`).
    #[serde(default)]
    pub payment_method: Option<String>,
    /// The customer (`cus_...`).
    #[serde(default)]
    pub customer: Option<String>,
    /// Free string metadata (Narwhal puts `narwhal_attempt` here).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The latest charge, an id unless expanded.
    #[serde(default)]
    pub latest_charge: Option<Expandable<Charge>>,
    /// The error of the last failed attempt (a decline), if any.
    #[serde(default)]
    pub last_payment_error: Option<ApiError>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: i64,
    /// `off_session` or `on_session` when the method is saved for later.
    #[serde(default)]
    pub setup_future_usage: Option<String>,
    /// The statement description.
    #[serde(default)]
    pub description: Option<String>,
    /// `automatic` (the only one modeled).
    #[serde(default)]
    pub capture_method: Option<String>,
    /// Set when `status` is `canceled`.
    #[serde(default)]
    pub canceled_at: Option<i64>,
    /// What the customer must do next (`requires_action`).
    #[serde(default)]
    pub next_action: Option<serde_json::Value>,
    /// Always false in tests.
    #[serde(default)]
    pub livemode: bool,
}

impl std::fmt::Debug for PaymentIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentIntent")
            .field("id", &self.id)
            .field("amount", &self.amount)
            .field("amount_received", &self.amount_received)
            .field("currency", &self.currency)
            .field("status", &self.status)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("payment_method", &self.payment_method)
            .field("customer", &self.customer)
            .field("metadata", &self.metadata)
            .field("latest_charge", &self.latest_charge)
            .field("last_payment_error", &self.last_payment_error)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl HasId for PaymentIntent {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A Charge (`ch_...`): one try to move money for an intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Charge {
    /// `ch_...`.
    pub id: String,
    /// Always `charge`.
    pub object: String,
    /// In cents.
    pub amount: i64,
    /// In cents.
    #[serde(default)]
    pub amount_captured: i64,
    /// In cents.
    #[serde(default)]
    pub amount_refunded: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// `succeeded`, `pending` or `failed`.
    pub status: String,
    /// Whether money moved.
    #[serde(default)]
    pub paid: bool,
    /// Whether it is fully refunded.
    #[serde(default)]
    pub refunded: bool,
    /// Its intent.
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// The payment method used.
    #[serde(default)]
    pub payment_method: Option<String>,
    /// What the card was.
    #[serde(default)]
    pub payment_method_details: Option<PaymentMethodDetails>,
    /// The money movement (with the fee), an id unless expanded.
    #[serde(default)]
    pub balance_transaction: Option<Expandable<BalanceTransaction>>,
    /// The customer.
    #[serde(default)]
    pub customer: Option<String>,
    /// A decline code when failed.
    #[serde(default)]
    pub failure_code: Option<String>,
    /// A decline message when failed.
    #[serde(default)]
    pub failure_message: Option<String>,
    /// Metadata copied from the intent.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: i64,
    /// Always false in tests.
    #[serde(default)]
    pub livemode: bool,
}

impl HasId for Charge {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `payment_method_details` of a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PaymentMethodDetails {
    /// `card`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The card, for card payments.
    #[serde(default)]
    pub card: Option<CardDetails>,
}

/// A card as Stripe describes it: never the number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CardDetails {
    /// `visa`, `mastercard`, `amex`, ...
    pub brand: String,
    /// The last four digits.
    pub last4: String,
    /// 1-12.
    pub exp_month: u8,
    /// Four digits.
    pub exp_year: u16,
    /// Stripe's fingerprint of the number: the same card gives the same fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `credit`, `debit`, `prepaid` or `unknown`.
    #[serde(default)]
    pub funding: Option<String>,
    /// Two-letter issuing country.
    #[serde(default)]
    pub country: Option<String>,
}

/// A balance transaction (`txn_...`): the money movement of a charge, with the fee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BalanceTransaction {
    /// `txn_...`.
    pub id: String,
    /// Always `balance_transaction`.
    pub object: String,
    /// Gross, in cents.
    pub amount: i64,
    /// Stripe's fee, in cents.
    pub fee: i64,
    /// Amount less fee, in cents.
    pub net: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// `charge`, `refund`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl HasId for BalanceTransaction {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A Refund (`re_...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Refund {
    /// `re_...`.
    pub id: String,
    /// Always `refund`.
    pub object: String,
    /// In cents.
    pub amount: i64,
    /// The refunded charge.
    #[serde(default)]
    pub charge: Option<String>,
    /// Its intent.
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// Lower-case ISO code.
    pub currency: String,
    /// `succeeded`, `pending`, `failed`, `canceled`.
    pub status: String,
    /// `duplicate`, `fraudulent`, `requested_by_customer`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Free metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: i64,
}

/// A list page (`GET /v1/payment_intents`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    /// Always `list`.
    pub object: String,
    /// The items, newest first.
    pub data: Vec<T>,
    /// Whether more items follow (ask again with `starting_after` = the last id).
    pub has_more: bool,
    /// The list's path.
    pub url: String,
}

/// A search page (`GET /v1/payment_intents/search`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult<T> {
    /// Always `search_result`.
    pub object: String,
    /// The matches.
    pub data: Vec<T>,
    /// Whether more follow (ask again with `page` = `next_page`).
    pub has_more: bool,
    /// The cursor for the next page.
    #[serde(default)]
    pub next_page: Option<String>,
    /// The search's path.
    pub url: String,
}

/// An Event (`evt_...`), as listed and as posted to webhook endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Event {
    /// `evt_...`: deduplicate deliveries by it.
    pub id: String,
    /// Always `event`.
    pub object: String,
    /// `payment_intent.succeeded`, `payment_intent.payment_failed`, `charge.refunded`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The object the event is about, as it was then.
    pub data: EventData,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The API version the object is rendered in.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Always false in tests.
    #[serde(default)]
    pub livemode: bool,
    /// Endpoints still to receive it.
    #[serde(default)]
    pub pending_webhooks: i64,
    /// The API request that caused it.
    #[serde(default)]
    pub request: Option<EventRequest>,
}

/// `data` of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventData {
    /// The object (a PaymentIntent, a Charge, ...), kept as JSON: its type follows
    /// from the event's type.
    pub object: serde_json::Value,
}

/// `request` of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventRequest {
    /// `req_...`.
    #[serde(default)]
    pub id: Option<String>,
    /// The `Idempotency-Key` of that request.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `GET /v1/balance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Balance {
    /// Always `balance`.
    pub object: String,
    /// Funds available, per currency.
    pub available: Vec<BalanceAmount>,
    /// Funds not yet available, per currency.
    pub pending: Vec<BalanceAmount>,
    /// Always false in tests.
    #[serde(default)]
    pub livemode: bool,
}

/// One currency's amount in a [`Balance`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BalanceAmount {
    /// In cents.
    pub amount: i64,
    /// Lower-case ISO code.
    pub currency: String,
}

/// The error envelope of every failed call: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ApiError,
}

/// Error types Stripe sends.
pub mod error_type {
    /// Declines: HTTP 402.
    pub const CARD_ERROR: &str = "card_error";
    /// Bad requests, unknown keys, missing objects, rate limits: 400/401/404/429.
    pub const INVALID_REQUEST_ERROR: &str = "invalid_request_error";
    /// Stripe's own failure: 5xx.
    pub const API_ERROR: &str = "api_error";
    /// A key reused with other parameters (400) or still in flight (409).
    pub const IDEMPOTENCY_ERROR: &str = "idempotency_error";
}

/// One error: `type`, and `code`, `decline_code`, `message`, `param` when they apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApiError {
    /// See [`error_type`].
    #[serde(rename = "type")]
    pub kind: String,
    /// A machine code (`card_declined`, `parameter_missing`, `rate_limit`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For declines, the issuer's reason (`insufficient_funds`, `generic_decline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// Human text; for card errors, fit to show the payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The failed charge, for declines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<String>,
    /// The intent as it was left, for declines during a confirm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<Box<PaymentIntent>>,
}

impl ApiError {
    /// An error of `kind` with a message.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            message: Some(message.into()),
            ..Self::default()
        }
    }

    /// Sets the code.
    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    /// Sets the parameter at fault.
    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// Wraps it in the envelope.
    pub fn envelope(self) -> ErrorEnvelope {
        ErrorEnvelope { error: self }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_an_intent_with_an_expanded_charge_and_ignores_unknown_fields() {
        let json = r#"{
          "id": "pi_1", "object": "payment_intent", "amount": 5500, "amount_received": 5500,
          "currency": "usd", "status": "succeeded", "client_secret": "pi_1_secret_x",
          "payment_method": "pm_1", "customer": null, "metadata": {"narwhal_attempt": "a1"},
          "created": 1700000000, "setup_future_usage": null, "something_new": {"x": 1},
          "latest_charge": {
            "id": "ch_1", "object": "charge", "amount": 5500, "currency": "usd",
            "status": "succeeded", "paid": true,
            "payment_method_details": {"type": "card", "card": {"brand": "visa",
              "last4": "4242", "exp_month": 12, "exp_year": 2034, "fingerprint": "fp"}},
            "balance_transaction": {"id": "txn_1", "object": "balance_transaction",
              "amount": 5500, "fee": 190, "net": 5310, "currency": "usd", "type": "charge"}
          }
        }"#;
        let pi: PaymentIntent = serde_json::from_str(json).unwrap();
        let charge = pi.latest_charge.as_ref().unwrap().object().unwrap();
        assert_eq!(pi.latest_charge.as_ref().unwrap().id(), "ch_1");
        let card = charge
            .payment_method_details
            .as_ref()
            .unwrap()
            .card
            .as_ref()
            .unwrap();
        assert_eq!((card.brand.as_str(), card.last4.as_str()), ("visa", "4242"));
        let txn = charge
            .balance_transaction
            .as_ref()
            .unwrap()
            .object()
            .unwrap();
        assert_eq!(txn.fee, 190);
        assert_eq!(pi.metadata["narwhal_attempt"], "a1");
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let pi = PaymentIntent {
            id: "pi_1".into(),
            client_secret: Some("pi_1_secret_abc".into()),
            ..PaymentIntent::default()
        };
        let shown = format!("{pi:?}");
        assert!(
            shown.contains("pi_1") && !shown.contains("secret_abc"),
            "{shown}"
        );
    }

    #[test]
    fn an_unexpanded_charge_is_an_id() {
        let pi: PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_1","object":"payment_intent","amount":1,"currency":"usd",
                "status":"succeeded","latest_charge":"ch_9"}"#,
        )
        .unwrap();
        assert_eq!(pi.latest_charge.as_ref().unwrap().id(), "ch_9");
        assert!(pi.latest_charge.unwrap().object().is_none());
    }

    #[test]
    fn error_envelope_leaves_out_what_is_unset() {
        let e = ApiError::new(error_type::INVALID_REQUEST_ERROR, "Missing amount")
            .code("parameter_missing")
            .param("amount")
            .envelope();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"type": "invalid_request_error",
                "code": "parameter_missing", "message": "Missing amount", "param": "amount"}})
        );
        let back: ErrorEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
