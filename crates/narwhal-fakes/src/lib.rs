//! Faithful fakes of the outside services Narwhal talks to, for tests and benchmarks.
//!
//! - [`ses`]: a fake Amazon SES v2 server with the real limits, errors and partial
//!   bulk results, a ledger of what it accepted, and faults on command.
//! - [`smtp`]: an SMTP sink that accepts and counts messages and can throttle (454) or
//!   reject recipients on command, with STARTTLS or implicit TLS and AUTH on request.
//! - [`stripe`]: a fake Stripe (PaymentIntents, refunds, idempotency, rate limits,
//!   signed webhooks), with its own ledger of charges and faults on command.
//! - [`tls`]: a throwaway CA and server certificates (rcgen) for the TLS tests.
//!
//! Both bind `127.0.0.1:0`, run on the caller's tokio runtime and stop when dropped.

pub mod ses;
pub mod smtp;
pub mod stripe;
pub mod tls;

pub use ses::{Accepted, FakeAccount, FakeSes, FakeSesStats, Fault};
pub use smtp::{RecipientRule, SinkMessage, SinkTls, SmtpSink};
pub use tls::TestCa;
