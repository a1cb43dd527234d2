#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! API tests: each runs the real server on 127.0.0.1:0 with a fresh database, on
//! SQLite and on PostgreSQL.

mod helpers;

mod auth;
mod blasts;
mod browser;
mod compat;
mod console;
mod console_forms;
mod donations;
mod errors;
mod feedback;
mod imports;
mod inbound;
mod lists;
mod openapi;
mod ops;
mod people;
mod segments;
mod turnout;
mod turnout_capacity;
mod turnout_fallback;
mod turnout_live;
mod uploads;
mod watch_browser;
