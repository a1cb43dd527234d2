//! Faithful fakes of the outside services Narwhal talks to, for tests and benchmarks.
//!
//! - [`ses`]: a fake Amazon SES v2 server with the real limits, errors and partial
//!   bulk results, a ledger of what it accepted, and faults on command.
//! - [`smtp`]: an SMTP sink that accepts and counts messages and can throttle (454) or
//!   reject recipients on command.
//!
//! Both bind `127.0.0.1:0`, run on the caller's tokio runtime and stop when dropped.

pub mod ses;
pub mod smtp;

pub use ses::{Accepted, FakeAccount, FakeSes, FakeSesStats, Fault};
pub use smtp::{RecipientRule, SinkMessage, SmtpSink};
