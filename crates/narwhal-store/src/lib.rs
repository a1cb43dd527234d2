//! Narwhal's storage: one interface ([`Store`]), two backends (SQLite, the embedded
//! default, and PostgreSQL for scale and several nodes).
//!
//! Only this crate knows SQL. SQL that is the same on both backends is written once
//! and run through the [`on_read!`]/[`on_write!`] macros, which expand the same code
//! once per backend; SQL that differs lives next to it behind `match self.backend()`.
//!
//! Invariants:
//! - Every acknowledged write is committed durably first (SQLite `synchronous=FULL`,
//!   PostgreSQL's default `synchronous_commit=on`).
//! - SQLite writes go through a single-connection pool, so writers never race for
//!   the lock; reads use a separate pool and see WAL snapshots.
//! - No state lives only in one process's memory: several nodes may share PostgreSQL.

#[macro_use]
mod db;
#[macro_use]
pub mod audit;
pub mod api_idempotency;
pub mod auth;
pub mod commit_thread;
pub mod error;
#[macro_use]
pub mod people;
#[macro_use]
pub mod jobs;
pub mod bench;
pub mod blasts;
mod bulk_load;
pub mod donation_reports;
pub mod donations;
pub mod feedback;
pub mod gameday;
pub mod giving;
pub mod imports;
pub mod inbound;
pub mod lists;
pub mod merges;
mod migrate;
pub mod reconciliations;
pub mod segments;
#[allow(clippy::expect_used, clippy::panic)]
pub mod test_support;
pub mod throttles;
pub mod turnout;
pub mod turnout_live;
pub mod turnout_memo;
pub mod upkeep;

pub use db::{Backend, DatabaseTarget, Store};
pub use error::StoreError;

/// Milliseconds since the Unix epoch: the one time format stored in every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
