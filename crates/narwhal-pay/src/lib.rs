//! Donations that survive the payment vendor.
//!
//! - [`processor`]: the [`processor::Processor`] trait every payment vendor adapter
//!   implements, and what a charge attempt can come to, as data.
//! - [`stripe`]: the Stripe adapter (form-encoded requests, `Idempotency-Key`,
//!   PaymentIntents, refunds) and webhook signatures (`Stripe-Signature`).
//!
//! Card data never enters this crate: a charge names a processor token
//! (`pm_...`), and what comes back is a brand, the last 4 digits and an expiry.

pub mod batch;
pub mod compat;
pub mod events;
pub mod giving;
pub mod notices;
pub mod pledge;
pub mod processor;
pub mod reconcile;
pub mod router;
pub mod service;
pub mod stripe;

pub use processor::{ChargeOutcome, ChargeRequest, LookupOutcome, Processor};
