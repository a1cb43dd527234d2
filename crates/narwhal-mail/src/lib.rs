//! Narwhal's mail providers: the layer that hands rendered messages to an outside
//! service and says, as data, what happened to each one.
//!
//! - [`throttle`]: account limits parsed from strings like `"14/s,daily=50000"`, and a
//!   pure token bucket plus rolling 24-hour window driven by an explicit clock.
//! - [`provider`]: the [`provider::Provider`] trait, per-message [`provider::SendOutcome`]s
//!   and the decision table that turns an outcome into retry / wait / fail over / give up / park.
//! - [`ses`]: an Amazon SES v2 HTTP client speaking the real wire format.
//! - [`sigv4`]: AWS Signature Version 4, checked against the published test suite.
//! - [`secret`]: a wrapper whose `Debug` never prints the secret.
//! - [`template`]: subject/text/HTML templates checked before any send, with the footer.
//! - [`unsubscribe`]: signed per-recipient tokens and the RFC 8058 headers.
//! - [`mime`]: the RFC 5322 message with quoted-printable parts.
//! - [`scheduler`]: routes slices over accounts by weight and room, never over a limit.
//! - [`blast`]: the `blast.send` worker: claim, render, send, record in the ledger.
//! - [`feedback`]: bounces, complaints and deliveries (SES through SNS, SMTP replies, DSNs).
//! - [`smtp`]: an SMTP provider with STARTTLS or implicit TLS, pipelining, AUTH PLAIN, a
//!   connection pool, and DKIM signing when the account has a key.
//! - [`dkim`]: DKIM signatures (RFC 6376; `rsa-sha256`, `ed25519-sha256`), relaxed/relaxed.
//! - [`tls`]: the TLS client settings (webpki roots plus an optional extra CA file).
//! - [`outbox`]: a provider writing `.eml` files, for dry runs.
//! - [`accounts`]: the `[mail]` settings and building accounts from them.
//!
//! Nothing here knows about blasts, ledgers or the database: a provider is handed a batch
//! and answers one outcome per message, in order. Deciding what to do next is the
//! scheduler's job, helped by [`provider::decide`].

pub mod accounts;
pub mod blast;
pub mod dkim;
pub mod feedback;
pub mod mime;
pub mod outbox;
pub mod provider;
pub mod scheduler;
pub mod secret;
pub mod ses;
pub mod sigv4;
pub mod smtp;
pub mod template;
pub mod throttle;
pub mod tls;
pub mod unsubscribe;

pub use provider::{Decision, OutgoingMessage, Provider, SendOutcome};
pub use secret::Secret;
pub use throttle::{Throttle, ThrottleSpec, UnixMillis};
