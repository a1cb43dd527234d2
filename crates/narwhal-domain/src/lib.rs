//! Pure domain types for Narwhal. Nothing in this crate does I/O.
//!
//! Every validated value is a newtype with a private field, built only by `parse`
//! (or `TryFrom`/`Deserialize`, which call `parse`). Values that are personal data
//! (emails, phones, addresses, names) print as `[redacted]` under `Debug`, so that a
//! stray `{:?}` in a log line cannot leak them.

pub mod address;
pub mod auth;
pub mod card;
pub mod civil;
pub mod consent;
pub mod email;
pub mod error;
pub mod ids;
pub mod limits;
pub mod money;
pub mod person;
pub mod phone;
pub mod pii;
pub mod segment;
pub mod tag;
pub mod text;
pub mod voter;

pub use address::{PostalAddress, UsState};
pub use auth::{Role, Scope};
pub use consent::{Channel, ConsentState};
pub use email::Email;
pub use error::ParseError;
pub use ids::*;
pub use money::Cents;
pub use person::{CustomFieldKey, PersonDraft, PersonName};
pub use phone::PhoneE164;
pub use pii::Pii;
pub use segment::SegmentFilter;
pub use tag::Tag;
pub use voter::VoterId;
