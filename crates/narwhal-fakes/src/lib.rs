//! Faithful fakes of the outside services Narwhal talks to, for tests and benchmarks.
//!
//! Coming in this crate: a fake SES v2 server and an SMTP sink, both with fault
//! injection on command.
