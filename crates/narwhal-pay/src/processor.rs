//! The processor trait and what a charge attempt can come to.
//!
//! Failover is data: an adapter classifies every call's fate as a [`ChargeOutcome`],
//! and the router decides from the outcome alone. The one distinction that matters is
//! whether money may have moved:
//!
//! | outcome | charged? | the router may |
//! | --- | --- | --- |
//! | `Succeeded` | yes | record the charge; never charge this donation again |
//! | `Declined` | no | tell the donor; not fail over (the card said no) |
//! | `Invalid` | no | record the error; not fail over (our request was wrong) |
//! | `Unavailable` | no, known | fail over to the next processor at once |
//! | `Ambiguous` | unknown | nothing, until [`Processor::lookup`] settles it |
//!
//! `Unavailable` is only for failures where the processor cannot have acted: the
//! connection was refused, or it answered 429 or a 503 before reading the request.
//! A timeout after the request was sent, a reset mid-answer or a 500 are `Ambiguous`.

use narwhal_mail::provider::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An amount of money in cents (US dollars). Never a float.
pub type Cents = i64;

/// What we ask a processor to charge. Holds no card data: `payment_method` is the
/// processor's token for a card collected by its own hosted fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Our key for this attempt, sent as `Idempotency-Key` and as metadata
    /// (`narwhal_attempt`), so that a lookup can find the charge later.
    pub idempotency_key: String,
    /// The amount in cents.
    pub amount: Cents,
    /// ISO currency code, lower case (`usd`).
    pub currency: String,
    /// The processor's payment method token (`pm_...`).
    pub payment_method: String,
    /// The processor's customer id, when the method is saved for one-click giving.
    pub customer: Option<String>,
    /// Save the payment method for later gifts (`setup_future_usage=off_session`).
    pub save_method: bool,
    /// Free metadata sent along (donation id, refcode); never PII beyond ids.
    pub metadata: Vec<(String, String)>,
    /// Text on the donor's statement, when set.
    pub description: Option<String>,
}

/// The card as the processor describes it: never the number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CardSummary {
    /// `visa`, `mastercard`, ...
    pub brand: String,
    /// The last four digits.
    pub last4: String,
    /// Expiry month, 1-12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
    /// The processor's fingerprint of the card number (for abuse limits), if given.
    pub fingerprint: Option<String>,
}

/// A charge that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charged {
    /// The processor's id for the payment (`pi_...`).
    pub processor_ref: String,
    /// The amount charged, in cents.
    pub amount: Cents,
    /// The card.
    pub card: CardSummary,
    /// The processor's fee in cents, when it reports one.
    pub fee: Option<Cents>,
    /// The processor's customer id, when the method was saved.
    pub customer: Option<String>,
}

/// What one charge attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Money moved.
    Succeeded(Charged),
    /// The card was declined (`card_error`): no money moved; do not fail over.
    Declined {
        /// The processor's decline code (`card_declined`, `insufficient_funds`, ...).
        code: String,
        /// A message fit to show the donor.
        message: String,
    },
    /// The processor refused the request itself (4xx other than 402/409/429): no money
    /// moved; failing over would not help.
    Invalid {
        /// The HTTP status.
        status: u16,
        /// The processor's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Known not to have charged, and the processor is not taking requests now
    /// (connection refused, 429, 503): fail over.
    Unavailable {
        /// Why, for logs and the attempt row.
        reason: String,
        /// How long the processor asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// May or may not have charged (timeout after sending, 500, reset): settle with
    /// [`Processor::lookup`] before anything else happens to this donation.
    Ambiguous {
        /// Why, for logs and the attempt row.
        reason: String,
    },
}

impl ChargeOutcome {
    /// Whether money may have moved (succeeded or ambiguous).
    pub fn may_have_charged(&self) -> bool {
        matches!(self, Self::Succeeded(_) | Self::Ambiguous { .. })
    }
}

/// What a status query found for one attempt key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    /// The attempt charged.
    Charged(Charged),
    /// The processor knows the attempt and it did not charge (failed, canceled), or it
    /// has no record of the key at all: it did not charge.
    NotCharged,
    /// The processor could not answer now (down, timeout): still unknown; ask again later.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// What a refund came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Refunded (or pending at the processor, which will not fail for cards).
    Refunded {
        /// The processor's refund id (`re_...`).
        refund_ref: String,
        /// The amount refunded.
        amount: Cents,
    },
    /// The processor refused (already refunded, amount too large, ...).
    Refused {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Could not reach the processor or the result is unknown; retry with the same key.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One payment as the processor's own records show it, for reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessorPayment {
    /// The processor's payment id (`pi_...`).
    pub processor_ref: String,
    /// Our attempt key from its metadata, if present.
    pub attempt_key: Option<String>,
    /// The amount in cents.
    pub amount: Cents,
    /// The amount refunded so far, in cents.
    pub refunded: Cents,
    /// `succeeded`, `canceled`, `requires_payment_method`, ...
    pub status: String,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// A payment vendor account. Implementations: the Stripe adapter (any number of
/// accounts), and any second vendor that can answer these five questions.
pub trait Processor: Send + Sync {
    /// The configured name of this account (`stripe-primary`), used in attempt rows.
    fn name(&self) -> &str;

    /// Creates and confirms a payment in one call, with `request.idempotency_key`.
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> BoxFuture<'a, ChargeOutcome>;

    /// Finds what became of an attempt key (by its metadata or idempotency key).
    fn lookup<'a>(&'a self, idempotency_key: &'a str) -> BoxFuture<'a, LookupOutcome>;

    /// Refunds all or part of a payment, idempotently under `idempotency_key`.
    fn refund<'a>(
        &'a self,
        processor_ref: &'a str,
        amount: Cents,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, RefundOutcome>;

    /// A cheap health probe (`GET` of a small resource): `Ok` if the processor answers.
    fn health(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Payments created at or after `since` (Unix seconds), for reconciliation.
    fn list_payments(&self, since: i64) -> BoxFuture<'_, Result<Vec<ProcessorPayment>, String>>;
}
