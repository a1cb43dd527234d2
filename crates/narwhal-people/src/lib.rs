//! The people hub's services: identity resolution ([`hub`]), streaming imports
//! ([`import`]), the background worker that runs imports and inbound payloads
//! ([`worker`]), and the deterministic synthetic campaign used by the demo, tests and
//! benchmarks ([`synth`]).

pub mod error;
pub mod hub;
pub mod import;
pub mod keyindex;
pub mod mapping;
pub mod resolve;
pub mod synth;
pub mod worker;

pub use error::PeopleError;
pub use hub::{Hub, Outcome, PersonPatch, Upserted};
