//! Election day ("Gordon"): polling places and the precincts they serve, the GOTV
//! universe built from a segment, poll-watcher logins issued ahead, the idempotent
//! ingest of turnout reports, and the flushing lists (supporters not yet voted).
//!
//! - [`code`]: pure values: voter codes with a check digit, report ids, channels.
//! - [`places`]: the polling-place CSV, with errors naming file, line and reason.
//! - [`service`]: [`Turnout`], the one service every channel (watcher app, staff bulk
//!   entry, SMS, early-vote files) reports through.
//! - [`live`]: the expected curve, the dashboard figures, and [`live::LiveTurnout`],
//!   one node's copy of them kept current from the store's change clock.
//! - [`lists`]: canvass turfs and call lists, what remains of them, their exports.
//! - [`early`]: early-vote and absentee files, which pre-flush the lists.
//! - [`group`]: the group commit that stores concurrent batches in one transaction.
//!
//! Invariants: a report is counted once per report id whatever the channel or the
//! number of retries (the store's `UNIQUE` constraint decides, not memory); a batch is
//! committed before its outcomes are returned; a watcher reports only for the voters
//! of their own polling place, and an item for another place is rejected alone. PINs
//! and login tokens are stored only as hashes and shown once; names, codes and PINs
//! are never logged.

pub mod code;
pub mod early;
pub mod fallback;
pub mod group;
pub mod lists;
pub mod live;
pub mod places;
pub mod service;

pub use code::{Channel, ReportId, Secret, VoterCode};
pub use fallback::{BulkLine, LineResult};
pub use service::{
    BatchResult, IssuedLogin, ItemResult, ListedVoter, LoginFailure, LoginKind, Readiness,
    ReportItem, Reporter, Turnout, TurnoutError, MAX_BATCH,
};
