//! Donations: the donation row, attempts at processors, the double-entry ledger and
//! per-donor contribution totals.
//!
//! Invariants:
//! - A donation is committed (state `processing`, with its first attempt row and its
//!   reservation against the donor's limits) **before** any processor is called, and a
//!   donor is thanked only after the final state is committed.
//! - One donation per client idempotency key, ever (`UNIQUE`, `ON CONFLICT DO
//!   NOTHING`); the key's first request parameters are kept as a hash, so the same key
//!   with other parameters is refused.
//! - The donor's totals are read, checked by [`narwhal_domain::limits::allocate`] and
//!   bumped inside one transaction that holds the donor's lock (PostgreSQL: an
//!   advisory transaction lock per person; SQLite: the single writer), so two
//!   simultaneous gifts from one donor see each other. Gifts in flight and pledges
//!   count; a gift that ends declined or failed gives its room back.
//! - States only move forward, by the table in [`allowed_from`]: every UPDATE names
//!   the states it may leave in its WHERE clause.
//! - Ledger postings are idempotent by `(donation_id, txn, account)`, and each `txn` sums to zero.
//!   A `txn` names the processor or our donation id with the processor's id, since two
//!   processors may hand out the same ids (`charge:stripe-a:pi_1`, `refund:42:re_1`).

use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::limits::{
    allocate, cycle_period, election_period, year_period, Allocation, LimitRefusal, LimitTable,
};
use narwhal_domain::PersonId;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;

/// Inserts ledger postings `(txn, kind, account, cents)` in a transaction `$tx`,
/// idempotently by `(donation_id, txn, account)`. A macro, so one body serves both backends.
macro_rules! post_ledger {
    ($tx:expr, $donation_id:expr, $postings:expr, $now:expr) => {{
        for (txn, kind, account, cents) in $postings.iter() {
            sqlx::query(
                "INSERT INTO ledger_entries (txn, donation_id, kind, account, amount_cents, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (donation_id, txn, account) DO NOTHING",
            )
            .bind(txn.as_str())
            .bind($donation_id)
            .bind(*kind)
            .bind(account.as_str())
            .bind(*cents)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// Gives a donor's room back: `$parts` are `(election, cents)`, `$amount` the total.
macro_rules! release_room {
    ($tx:expr, $person_id:expr, $parts:expr, $table:expr, $year:expr, $amount:expr) => {{
        let mut periods: Vec<(String, i64)> = $parts
            .iter()
            .map(|(e, c)| (election_period(e), *c))
            .collect();
        periods.push((cycle_period($table.cycle), $amount));
        periods.push((year_period($year), $amount));
        for (period, cents) in periods {
            sqlx::query(
                "UPDATE contribution_totals SET total_cents = total_cents - $1 WHERE person_id = $2 AND period = $3",
            )
            .bind(cents)
            .bind($person_id)
            .bind(period)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// A donation's state. Forward only: see [`allowed_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DonationState {
    /// Committed; a processor is being (or about to be) called, or an ambiguous attempt
    /// is being settled.
    Processing,
    /// Charged.
    Succeeded,
    /// The card was declined.
    Declined,
    /// Refused by the processor for another reason, or given up.
    Failed,
    /// Every processor was down: recorded without card data, to be completed later
    /// through a payment link.
    Pledged,
    /// A pledge the donor will not complete (expired or withdrawn).
    Canceled,
    /// Part of the amount was refunded.
    PartiallyRefunded,
    /// All of it was refunded.
    Refunded,
    /// The donor's bank disputed the charge.
    Disputed,
}

impl DonationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Pledged => "pledged",
            Self::Canceled => "canceled",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "declined" => Self::Declined,
            "failed" => Self::Failed,
            "pledged" => Self::Pledged,
            "canceled" => Self::Canceled,
            "partially_refunded" => Self::PartiallyRefunded,
            "refunded" => Self::Refunded,
            "disputed" => Self::Disputed,
            _ => return None,
        })
    }

    /// Whether the donation holds room against the donor's limits in this state.
    pub fn counts_toward_limits(self) -> bool {
        matches!(
            self,
            Self::Processing
                | Self::Succeeded
                | Self::Pledged
                | Self::PartiallyRefunded
                | Self::Disputed
        )
    }
}

/// The states a donation may move to `to` from. The graph has no cycle.
pub fn allowed_from(to: DonationState) -> &'static [DonationState] {
    use DonationState::*;
    match to {
        Processing => &[],
        // A pledge is completed by a charge.
        Succeeded => &[Processing, Pledged],
        Pledged => &[Processing],
        Declined | Failed => &[Processing],
        Canceled => &[Pledged],
        PartiallyRefunded => &[Succeeded],
        Refunded => &[Succeeded, PartiallyRefunded],
        Disputed => &[Succeeded, PartiallyRefunded],
    }
}

/// A new donation, validated and resolved to a person by the caller.
#[derive(Debug, Clone)]
pub struct NewDonation {
    /// Our public id (`don_...`).
    pub public_id: String,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// A hash of the request's parameters, to refuse a reused key.
    pub request_hash: String,
    pub person_id: PersonId,
    pub amount_cents: i64,
    pub currency: String,
    /// `page`, `api`, `compat`, `one_click`, `recurring`.
    pub channel: String,
    pub refcode: Option<String>,
    pub source: Option<String>,
    /// The donor's fields as given (JSON), kept as the legal record of the gift.
    pub donor_json: String,
    pub employer: Option<String>,
    pub occupation: Option<String>,
    /// The processor's token for the card (never card data).
    pub payment_method: Option<String>,
    pub save_method: bool,
    pub client_ip: Option<String>,
    pub plan_id: Option<i64>,
    /// The first attempt: `(processor, attempt key)`. `None` when no processor is up:
    /// the donation is stored straight as a pledge.
    pub first_attempt: Option<(String, String)>,
    /// The hash of the pledge completion token, when stored as a pledge.
    pub pledge_token_hash: Option<String>,
    /// The calendar year the gift counts in.
    pub year: i32,
}

/// What [`Store::begin_donations`] did with one new donation.
#[derive(Debug, Clone)]
pub enum Begun {
    /// Stored, with its designation.
    Created {
        id: i64,
        allocation: Allocation,
        needs_followup: bool,
    },
    /// The key was used before with the same parameters: this is that donation.
    Existing(Box<DonationRow>),
    /// The key was used before with other parameters.
    KeyReused,
    /// Over the donor's limit: nothing stored.
    OverLimit(LimitRefusal),
}

/// A stored donation.
#[derive(Debug, Clone, Serialize)]
pub struct DonationRow {
    pub id: i64,
    pub public_id: String,
    #[serde(skip)]
    pub idempotency_key: String,
    #[serde(skip)]
    pub request_hash: String,
    pub person_id: i64,
    pub amount_cents: i64,
    pub currency: String,
    pub state: String,
    pub channel: String,
    pub refcode: Option<String>,
    pub source: Option<String>,
    #[serde(skip)]
    pub donor_json: String,
    pub allocations: serde_json::Value,
    pub itemized: bool,
    pub needs_followup: bool,
    #[serde(skip)]
    pub payment_method: Option<String>,
    pub save_method: bool,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub card_exp: Option<String>,
    #[serde(skip)]
    pub card_fingerprint: Option<String>,
    pub processor: Option<String>,
    pub processor_ref: Option<String>,
    pub fee_cents: Option<i64>,
    pub refunded_cents: i64,
    pub plan_id: Option<i64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const DONATION_COLUMNS: &str = "id, public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, refcode, source, donor, allocations, itemized, needs_followup, payment_method, save_method, card_brand, card_last4, card_exp, card_fingerprint, processor, processor_ref, fee_cents, refunded_cents, plan_id, error_code, error_message, created_at, updated_at";

macro_rules! donation_from_row {
    ($r:expr) => {{
        let r = $r;
        let allocations: String = r.try_get("allocations")?;
        DonationRow {
            id: r.try_get("id")?,
            public_id: r.try_get("public_id")?,
            idempotency_key: r.try_get("idempotency_key")?,
            request_hash: r.try_get("request_hash")?,
            person_id: r.try_get("person_id")?,
            amount_cents: r.try_get("amount_cents")?,
            currency: r.try_get("currency")?,
            state: r.try_get("state")?,
            channel: r.try_get("channel")?,
            refcode: r.try_get("refcode")?,
            source: r.try_get("source")?,
            donor_json: r.try_get("donor")?,
            allocations: serde_json::from_str(&allocations)?,
            itemized: r.try_get("itemized")?,
            needs_followup: r.try_get("needs_followup")?,
            payment_method: r.try_get("payment_method")?,
            save_method: r.try_get("save_method")?,
            card_brand: r.try_get("card_brand")?,
            card_last4: r.try_get("card_last4")?,
            card_exp: r.try_get("card_exp")?,
            card_fingerprint: r.try_get("card_fingerprint")?,
            processor: r.try_get("processor")?,
            processor_ref: r.try_get("processor_ref")?,
            fee_cents: r.try_get("fee_cents")?,
            refunded_cents: r.try_get("refunded_cents")?,
            plan_id: r.try_get("plan_id")?,
            error_code: r.try_get("error_code")?,
            error_message: r.try_get("error_message")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }
    }};
}

macro_rules! attempt_from_row {
    ($r:expr) => {{
        let r = $r;
        AttemptRow {
            donation_id: r.try_get("donation_id")?,
            seq: r.try_get("seq")?,
            processor: r.try_get("processor")?,
            attempt_key: r.try_get("attempt_key")?,
            state: r.try_get("state")?,
            processor_ref: r.try_get("processor_ref")?,
            detail: r.try_get("detail")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
        }
    }};
}

/// The card as the processor described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardOnFile {
    pub brand: String,
    pub last4: String,
    /// `MM/YYYY`.
    pub exp: String,
    pub fingerprint: Option<String>,
}

/// How a donation ends (or becomes a pledge), recorded by [`Store::finish_donations`].
#[derive(Debug, Clone)]
pub enum Finish {
    /// Charged.
    Succeeded {
        processor: String,
        processor_ref: String,
        amount_cents: i64,
        fee_cents: Option<i64>,
        card: CardOnFile,
    },
    /// Declined by the card: room given back.
    Declined { code: String, message: String },
    /// Failed for another reason: room given back.
    Failed { code: String, message: String },
    /// Every processor down: a pledge, completed later by a payment link.
    Pledged { token_hash: String },
}

/// One completion.
#[derive(Debug, Clone)]
pub struct Completion {
    pub donation_id: i64,
    /// The attempt this result came from, if any: its row is closed in the same commit.
    pub attempt_key: Option<String>,
    pub finish: Finish,
}

/// Closes an attempt that did not end its donation: state, detail, time, key.
/// Attempts in a final state stay as they are.
const CLOSE_ATTEMPT: &str =
    "UPDATE donation_attempts SET state = $1, detail = $2, finished_at = $3 \
     WHERE attempt_key = $4 AND state IN ('started', 'ambiguous')";

/// One failover: the attempt that did not charge, and the next one to open.
#[derive(Debug, Clone)]
pub struct FailOver {
    pub donation_id: i64,
    pub closing_key: String,
    /// `unavailable` or `not_charged` (see [`attempt`]).
    pub closing_state: String,
    pub detail: String,
    pub processor: String,
    pub attempt_key: String,
}

/// An attempt row's state.
pub mod attempt {
    /// Sent, no answer yet (a crash here leaves it for the settler).
    pub const STARTED: &str = "started";
    pub const SUCCEEDED: &str = "succeeded";
    pub const DECLINED: &str = "declined";
    pub const INVALID: &str = "invalid";
    /// Known not to have charged; the router failed over.
    pub const UNAVAILABLE: &str = "unavailable";
    /// May have charged; waiting for a status query.
    pub const AMBIGUOUS: &str = "ambiguous";
    /// A status query showed it did not charge.
    pub const NOT_CHARGED: &str = "not_charged";
}

/// A stored attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub donation_id: i64,
    pub seq: i32,
    pub processor: String,
    pub attempt_key: String,
    pub state: String,
    pub processor_ref: Option<String>,
    pub detail: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// One ledger posting.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub txn: String,
    pub donation_id: Option<i64>,
    pub kind: String,
    pub account: String,
    pub amount_cents: i64,
}

/// The periods a gift counts in, with the cents for each.
fn periods_of(allocation: &[(String, i64)], table: &LimitTable, year: i32) -> Vec<(String, i64)> {
    let total: i64 = allocation.iter().map(|(_, c)| c).sum();
    let mut v: Vec<(String, i64)> = allocation
        .iter()
        .map(|(e, c)| (election_period(e), *c))
        .collect();
    v.push((cycle_period(table.cycle), total));
    v.push((year_period(year), total));
    v
}

fn allocation_parts(v: &serde_json::Value) -> Vec<(String, i64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    /// [`Store::begin_donations`] one gift at a time (several statements each), in one
    /// durable commit: for keys repeated within a batch, single gifts, and the rare
    /// race the set-based path hands back.
    #[doc(hidden)]
    pub async fn begin_donations_each(
        &self,
        batch: &[NewDonation],
        table: &LimitTable,
    ) -> Result<Vec<Begun>> {
        let backend = self.backend();
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            if backend == Backend::Postgres {
                let mut people: Vec<i64> = batch.iter().map(|d| d.person_id.0).collect();
                people.sort_unstable();
                people.dedup();
                // In a fixed order, so two batches never wait on each other in a cycle.
                for person in people {
                    sqlx::query("SELECT pg_advisory_xact_lock(8, hashtext($1::text))")
                        .bind(person.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let mut out = Vec::with_capacity(batch.len());
            for d in batch {
                let existing = sqlx::query(&format!(
                    "SELECT {DONATION_COLUMNS} FROM donations WHERE idempotency_key = $1"
                ))
                .bind(&d.idempotency_key)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = existing {
                    let row = donation_from_row!(r);
                    out.push(if row.request_hash == d.request_hash {
                        Begun::Existing(Box::new(row))
                    } else {
                        Begun::KeyReused
                    });
                    continue;
                }
                let wanted: Vec<String> = {
                    let mut w: Vec<String> = table.elections.iter().map(|e| election_period(e)).collect();
                    w.push(cycle_period(table.cycle));
                    w
                };
                let mut totals = BTreeMap::new();
                for period in &wanted {
                    let t: Option<i64> = sqlx::query_scalar(
                        "SELECT total_cents FROM contribution_totals WHERE person_id = $1 AND period = $2",
                    )
                    .bind(d.person_id.0)
                    .bind(period)
                    .fetch_optional(&mut *tx)
                    .await?;
                    totals.insert(period.clone(), t.unwrap_or(0));
                }
                let allocation = match allocate(table, &totals, d.amount_cents) {
                    Ok(a) => a,
                    Err(refusal) => {
                        out.push(Begun::OverLimit(refusal));
                        continue;
                    }
                };
                let missing = |s: &Option<String>| s.as_deref().is_none_or(|v| v.trim().is_empty());
                let needs_followup = allocation.itemized && (missing(&d.employer) || missing(&d.occupation));
                let state = if d.first_attempt.is_some() { "processing" } else { "pledged" };
                let allocations = serde_json::to_string(&allocation.parts)?;
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO donations (public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, refcode, source, donor, employer, occupation, allocations, itemized, needs_followup, payment_method, save_method, plan_id, pledge_token_hash, client_ip, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $22) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                )
                .bind(&d.public_id)
                .bind(&d.idempotency_key)
                .bind(&d.request_hash)
                .bind(d.person_id.0)
                .bind(d.amount_cents)
                .bind(&d.currency)
                .bind(state)
                .bind(&d.channel)
                .bind(&d.refcode)
                .bind(&d.source)
                .bind(&d.donor_json)
                .bind(&d.employer)
                .bind(&d.occupation)
                .bind(&allocations)
                .bind(allocation.itemized)
                .bind(needs_followup)
                .bind(&d.payment_method)
                .bind(d.save_method)
                .bind(d.plan_id)
                .bind(&d.pledge_token_hash)
                .bind(&d.client_ip)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else {
                    // Another node committed this key between our read and insert.
                    out.push(Begun::KeyReused);
                    continue;
                };
                for (period, cents) in periods_of(&allocation.parts, table, d.year) {
                    sqlx::query(
                        "INSERT INTO contribution_totals (person_id, period, total_cents) VALUES ($1, $2, $3) \
                         ON CONFLICT (person_id, period) DO UPDATE SET total_cents = contribution_totals.total_cents + excluded.total_cents",
                    )
                    .bind(d.person_id.0)
                    .bind(period)
                    .bind(cents)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some((processor, key)) = &d.first_attempt {
                    sqlx::query(
                        "INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) VALUES ($1, 1, $2, $3, 'started', $4)",
                    )
                    .bind(id)
                    .bind(processor)
                    .bind(key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                out.push(Begun::Created { id, allocation, needs_followup });
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Opens attempt number `seq` of a donation at `processor` (a failover or a pledge
    /// completion), durably, before the processor is called.
    pub async fn start_attempt(
        &self,
        donation_id: i64,
        processor: &str,
        attempt_key: &str,
    ) -> Result<i32> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let seq: i32 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS INTEGER) FROM donation_attempts WHERE donation_id = $1",
            )
            .bind(donation_id)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) VALUES ($1, $2, $3, $4, 'started', $5)",
            )
            .bind(donation_id)
            .bind(seq)
            .bind(processor)
            .bind(attempt_key)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_unique(e, "attempt key"))?;
            tx.commit().await?;
            Ok(seq)
        })
    }

    /// Fails over a batch of donations in one durable commit: for each, closes the
    /// attempt that did not charge (`closing`: `unavailable` or `not_charged`) and
    /// opens the next, at another processor. One commit instead of two per donation,
    /// and one for the whole batch: when a processor goes down, every gift in flight
    /// fails over at once, and each used to cost the single SQLite writer two commits
    /// of its own just then. One result per input: the new attempt's number, or the
    /// reason it could not be opened (its key taken) while the rest still commit.
    pub async fn fail_over_attempts(
        &self,
        batch: &[FailOver],
    ) -> Result<Vec<std::result::Result<i32, String>>> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut out = Vec::with_capacity(batch.len());
            for f in batch {
                sqlx::query(CLOSE_ATTEMPT)
                .bind(&f.closing_state)
                .bind(&f.detail)
                .bind(now)
                .bind(&f.closing_key)
                .execute(&mut *tx)
                .await?;
                // The key is checked first: a failed INSERT would end PostgreSQL's
                // transaction for the whole batch.
                let taken: Option<i64> = sqlx::query_scalar(
                    "SELECT donation_id FROM donation_attempts WHERE attempt_key = $1",
                )
                .bind(&f.attempt_key)
                .fetch_optional(&mut *tx)
                .await?;
                if taken.is_some() {
                    out.push(Err(format!("attempt key {} is taken", f.attempt_key)));
                    continue;
                }
                let seq: i32 = sqlx::query_scalar(
                    "INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) \
                     SELECT $1, CAST(COALESCE(MAX(seq), 0) + 1 AS INTEGER), $2, $3, 'started', $4 \
                     FROM donation_attempts WHERE donation_id = $1 RETURNING seq",
                )
                .bind(f.donation_id)
                .bind(&f.processor)
                .bind(&f.attempt_key)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                out.push(Ok(seq));
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Records what an attempt came to, when that does not end the donation
    /// (`unavailable`, `ambiguous`, `not_charged`). Attempts in a final state stay.
    pub async fn mark_attempt(&self, attempt_key: &str, state: &str, detail: &str) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let done = sqlx::query(CLOSE_ATTEMPT)
            .bind(state)
            .bind(detail)
            .bind(now)
            .bind(attempt_key)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// [`Store::finish_donations`] one completion at a time, in one durable commit:
    /// closes the attempt, moves the donation forward (or leaves it if it already
    /// moved: the result says which), posts the ledger for a charge, and gives back the
    /// room of a declined or failed gift.
    #[doc(hidden)]
    pub async fn finish_donations_each(
        &self,
        batch: &[Completion],
        table: &LimitTable,
    ) -> Result<Vec<bool>> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut out = Vec::with_capacity(batch.len());
            for c in batch {
                let (to, attempt_state) = match &c.finish {
                    Finish::Succeeded { .. } => (DonationState::Succeeded, attempt::SUCCEEDED),
                    Finish::Declined { .. } => (DonationState::Declined, attempt::DECLINED),
                    Finish::Failed { .. } => (DonationState::Failed, attempt::INVALID),
                    Finish::Pledged { .. } => (DonationState::Pledged, attempt::UNAVAILABLE),
                };
                let row = sqlx::query("SELECT state, person_id, amount_cents, allocations, created_at FROM donations WHERE id = $1")
                    .bind(c.donation_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound("donation"))?;
                let from: String = row.try_get("state")?;
                let person_id: i64 = row.try_get("person_id")?;
                let amount: i64 = row.try_get("amount_cents")?;
                let allocations: String = row.try_get("allocations")?;
                let created_at: i64 = row.try_get("created_at")?;
                let from_state = DonationState::parse(&from)
                    .ok_or_else(|| StoreError::Corrupt(format!("donation state {from}")))?;
                // A pledge is completed by a charge; a declined card keeps it a pledge.
                let (to, keep_pledge) = match (from_state, to) {
                    (DonationState::Pledged, DonationState::Succeeded) => (to, false),
                    (DonationState::Pledged, DonationState::Declined | DonationState::Failed) => (DonationState::Pledged, true),
                    _ => (to, false),
                };
                if let Some(key) = &c.attempt_key {
                    let detail = match &c.finish {
                        Finish::Succeeded { .. } => None,
                        Finish::Declined { code, .. } | Finish::Failed { code, .. } => Some(code.clone()),
                        Finish::Pledged { .. } => Some("every processor unavailable".to_string()),
                    };
                    let processor_ref = match &c.finish {
                        Finish::Succeeded { processor_ref, .. } => Some(processor_ref.clone()),
                        _ => None,
                    };
                    sqlx::query(
                        "UPDATE donation_attempts SET state = $1, processor_ref = COALESCE($2, processor_ref), detail = COALESCE($3, detail), finished_at = $4 \
                         WHERE attempt_key = $5 AND state IN ('started', 'ambiguous', 'unavailable')",
                    )
                    .bind(attempt_state)
                    .bind(processor_ref)
                    .bind(detail)
                    .bind(now)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                }
                if keep_pledge {
                    out.push(false);
                    continue;
                }
                let legal = allowed_from(to).contains(&from_state);
                if !legal {
                    out.push(false);
                    continue;
                }
                let changed = match &c.finish {
                    Finish::Succeeded { processor, processor_ref, amount_cents, fee_cents, card } => {
                        let res = sqlx::query(
                            "UPDATE donations SET state = 'succeeded', processor = $1, processor_ref = $2, fee_cents = $3, card_brand = $4, card_last4 = $5, card_exp = $6, card_fingerprint = $7, pledge_token_hash = NULL, error_code = NULL, error_message = NULL, updated_at = $8 \
                             WHERE id = $9 AND state = $10",
                        )
                        .bind(processor)
                        .bind(processor_ref)
                        .bind(fee_cents)
                        .bind(&card.brand)
                        .bind(&card.last4)
                        .bind(&card.exp)
                        .bind(&card.fingerprint)
                        .bind(now)
                        .bind(c.donation_id)
                        .bind(from_state.as_str())
                        .execute(&mut *tx)
                        .await?;
                        if res.rows_affected() == 1 {
                            let acct = format!("processor:{processor}");
                            let mut postings = vec![
                                (format!("charge:{processor}:{processor_ref}"), "charge", acct.clone(), *amount_cents),
                                (format!("charge:{processor}:{processor_ref}"), "charge", "contributions".to_string(), -*amount_cents),
                            ];
                            if let Some(fee) = fee_cents.filter(|f| *f > 0) {
                                postings.push((format!("fee:{processor}:{processor_ref}"), "fee", "fees".to_string(), fee));
                                postings.push((format!("fee:{processor}:{processor_ref}"), "fee", acct, -fee));
                            }
                            post_ledger!(tx, c.donation_id, postings, now);
                        }
                        res.rows_affected() == 1
                    }
                    Finish::Declined { code, message } | Finish::Failed { code, message } => {
                        let res = sqlx::query(
                            "UPDATE donations SET state = $1, error_code = $2, error_message = $3, updated_at = $4 WHERE id = $5 AND state = 'processing'",
                        )
                        .bind(to.as_str())
                        .bind(code)
                        .bind(message)
                        .bind(now)
                        .bind(c.donation_id)
                        .execute(&mut *tx)
                        .await?;
                        if res.rows_affected() == 1 {
                            let parts = allocation_parts(&serde_json::from_str(&allocations)?);
                            release_room!(tx, person_id, parts, table, year_of_ms(created_at), amount);
                        }
                        res.rows_affected() == 1
                    }
                    Finish::Pledged { token_hash } => {
                        let res = sqlx::query(
                            "UPDATE donations SET state = 'pledged', pledge_token_hash = $1, updated_at = $2 WHERE id = $3 AND state = 'processing'",
                        )
                        .bind(token_hash)
                        .bind(now)
                        .bind(c.donation_id)
                        .execute(&mut *tx)
                        .await?;
                        res.rows_affected() == 1
                    }
                };
                out.push(changed);
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Records a refund (from our API or a processor webhook), idempotently by the
    /// refund's id: moves the donation to refunded or partially refunded, posts the
    /// ledger and gives back the donor's room. Returns the new state, or `None` if this
    /// refund was already recorded.
    pub async fn record_refund(
        &self,
        donation_id: i64,
        refund_ref: &str,
        amount_cents: i64,
        table: &LimitTable,
    ) -> Result<Option<DonationState>> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query("SELECT state, person_id, amount_cents, refunded_cents, allocations, processor, created_at FROM donations WHERE id = $1")
                .bind(donation_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("donation"))?;
            let state: String = row.try_get("state")?;
            let amount: i64 = row.try_get("amount_cents")?;
            let refunded: i64 = row.try_get("refunded_cents")?;
            let processor: Option<String> = row.try_get("processor")?;
            let person_id: i64 = row.try_get("person_id")?;
            let allocations: String = row.try_get("allocations")?;
            let created_at: i64 = row.try_get("created_at")?;
            // Refund and dispute ids are the processor's: keyed with our donation id, two
            // processors' ids can never collide.
            let txn = format!("refund:{donation_id}:{refund_ref}");
            let seen: Option<i64> = sqlx::query_scalar("SELECT donation_id FROM ledger_entries WHERE donation_id = $1 AND txn = $2 LIMIT 1")
                .bind(donation_id)
                .bind(&txn)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
            let from = DonationState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("donation state {state}")))?;
            if seen.is_some() {
                return Ok(None);
            }
            if !matches!(from, DonationState::Succeeded | DonationState::PartiallyRefunded) {
                return Err(StoreError::Invalid(format!("a {state} donation cannot be refunded")));
            }
            if amount_cents <= 0 || refunded + amount_cents > amount {
                return Err(StoreError::Invalid("the refund is more than what is left of the donation".into()));
            }
            let to = if refunded + amount_cents == amount { DonationState::Refunded } else { DonationState::PartiallyRefunded };
            sqlx::query("UPDATE donations SET state = $1, refunded_cents = refunded_cents + $2, updated_at = $3 WHERE id = $4 AND state = $5")
                .bind(to.as_str())
                .bind(amount_cents)
                .bind(now)
                .bind(donation_id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            let acct = format!("processor:{}", processor.unwrap_or_default());
            let postings = [
                (txn.clone(), "refund", "contributions".to_string(), amount_cents),
                (txn, "refund", acct, -amount_cents),
            ];
            post_ledger!(tx, donation_id, postings, now);
            // Give back the room, latest election first.
            let mut parts = allocation_parts(&serde_json::from_str(&allocations)?);
            parts.reverse();
            let mut left = amount_cents;
            let mut back = Vec::new();
            for (e, c) in parts {
                let take = left.min(c);
                if take > 0 {
                    back.push((e, take));
                    left -= take;
                }
            }
            release_room!(tx, person_id, back, table, year_of_ms(created_at), amount_cents);
            tx.commit().await?;
            Ok(Some(to))
        })
    }

    /// Records a processor event by its id; `false` if it was seen before (webhooks are
    /// delivered at least once).
    pub async fn record_payment_event(
        &self,
        event_id: &str,
        processor: &str,
        kind: &str,
        object_ref: Option<&str>,
        payload: &str,
    ) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let res = sqlx::query(
                "INSERT INTO payment_events (event_id, processor, type, object_ref, received_at, payload) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event_id)
            .bind(processor)
            .bind(kind)
            .bind(object_ref)
            .bind(now)
            .bind(payload)
            .execute(p)
            .await?;
            Ok(res.rows_affected() == 1)
        })
    }

    /// A donation by our public id.
    pub async fn donation_by_public_id(&self, public_id: &str) -> Result<Option<DonationRow>> {
        self.donation_where("public_id", public_id).await
    }

    /// A donation by the processor's payment id.
    pub async fn donation_by_processor_ref(
        &self,
        processor_ref: &str,
    ) -> Result<Option<DonationRow>> {
        self.donation_where("processor_ref", processor_ref).await
    }

    /// A donation by an attempt key (`don_..-N`): how a webhook that names our
    /// metadata finds its donation.
    pub async fn donation_by_attempt_key(&self, attempt_key: &str) -> Result<Option<DonationRow>> {
        let id: Option<i64> = on_read!(self, p => {
            sqlx::query_scalar("SELECT donation_id FROM donation_attempts WHERE attempt_key = $1")
                .bind(attempt_key)
                .fetch_optional(p)
                .await?
        });
        match id {
            Some(id) => self.donation_where("id", &id.to_string()).await,
            None => Ok(None),
        }
    }

    /// A donation by the client's idempotency key.
    pub async fn donation_by_idempotency_key(&self, key: &str) -> Result<Option<DonationRow>> {
        self.donation_where("idempotency_key", key).await
    }

    /// The donor details of a person's latest donation (for one-click gifts).
    pub async fn last_donor_json(&self, person_id: i64) -> Result<Option<String>> {
        on_read!(self, p => {
            Ok(sqlx::query_scalar("SELECT donor FROM donations WHERE person_id = $1 ORDER BY id DESC LIMIT 1")
                .bind(person_id)
                .fetch_optional(p)
                .await?)
        })
    }

    /// A donation by our row id.
    pub async fn donation_by_id(&self, id: i64) -> Result<Option<DonationRow>> {
        self.donation_where("id", &id.to_string()).await
    }

    async fn donation_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<DonationRow>> {
        let sql = if column == "id" {
            format!("SELECT {DONATION_COLUMNS} FROM donations WHERE id = $1")
        } else {
            format!("SELECT {DONATION_COLUMNS} FROM donations WHERE {column} = $1")
        };
        // A read after a commit returned sees it (WAL readers take a fresh snapshot).
        on_read!(self, p => {
            let row = if column == "id" {
                let id: i64 = value.parse().map_err(|_| StoreError::NotFound("donation"))?;
                sqlx::query(&sql).bind(id).fetch_optional(p).await?
            } else {
                sqlx::query(&sql).bind(value).fetch_optional(p).await?
            };
            match row {
                Some(r) => Ok(Some(donation_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// The attempts of a donation, in order.
    pub async fn donation_attempts(&self, donation_id: i64) -> Result<Vec<AttemptRow>> {
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT donation_id, seq, processor, attempt_key, state, processor_ref, detail, started_at, finished_at FROM donation_attempts WHERE donation_id = $1 ORDER BY seq",
            )
            .bind(donation_id)
            .fetch_all(p)
            .await?;
            rows.into_iter()
                .map(|r| Ok(attempt_from_row!(r)))
                .collect()
        })
    }

    /// Attempts left `started` or `ambiguous` since before `older_than_ms`: their node
    /// died or their processor never answered. The settler asks the processor.
    pub async fn unsettled_attempts(
        &self,
        older_than_ms: i64,
        limit: i64,
    ) -> Result<Vec<AttemptRow>> {
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT a.donation_id, a.seq, a.processor, a.attempt_key, a.state, a.processor_ref, a.detail, a.started_at, a.finished_at \
                 FROM donation_attempts a JOIN donations d ON d.id = a.donation_id \
                 WHERE a.state IN ('started', 'ambiguous') AND a.started_at < $1 AND d.state IN ('processing', 'pledged') \
                 ORDER BY a.started_at LIMIT $2",
            )
            .bind(older_than_ms)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.into_iter()
                .map(|r| Ok(attempt_from_row!(r)))
                .collect()
        })
    }

    /// A donor's totals by period key.
    pub async fn contribution_totals(&self, person_id: PersonId) -> Result<BTreeMap<String, i64>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT period, total_cents FROM contribution_totals WHERE person_id = $1")
                .bind(person_id.0)
                .fetch_all(p)
                .await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get::<String, _>("period")?, r.try_get::<i64, _>("total_cents")?)))
                .collect()
        })
    }

    /// Every ledger posting of a donation.
    pub async fn ledger_of(&self, donation_id: i64) -> Result<Vec<LedgerEntry>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT txn, donation_id, kind, account, amount_cents FROM ledger_entries WHERE donation_id = $1 ORDER BY id")
                .bind(donation_id)
                .fetch_all(p)
                .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(LedgerEntry {
                        txn: r.try_get("txn")?,
                        donation_id: r.try_get("donation_id")?,
                        kind: r.try_get("kind")?,
                        account: r.try_get("account")?,
                        amount_cents: r.try_get("amount_cents")?,
                    })
                })
                .collect()
        })
    }

    /// Ledger transactions whose postings do not sum to zero (always empty unless a bug
    /// or a hand edit broke double entry).
    pub async fn unbalanced_ledger_txns(&self) -> Result<Vec<String>> {
        on_read!(self, p => {
            Ok(sqlx::query_scalar("SELECT txn FROM ledger_entries GROUP BY txn HAVING SUM(amount_cents) <> 0")
                .fetch_all(p)
                .await?)
        })
    }

    /// Records a dispute (a processor webhook), idempotently by the dispute's id: moves
    /// a charged donation to `disputed` and posts the disputed amount out of the
    /// processor's account. Returns `false` if the dispute was already recorded or the
    /// donation is not in a state a dispute can reach.
    pub async fn record_dispute(
        &self,
        donation_id: i64,
        dispute_ref: &str,
        amount_cents: i64,
    ) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let txn = format!("dispute:{donation_id}:{dispute_ref}");
            let seen: Option<i64> = sqlx::query_scalar("SELECT donation_id FROM ledger_entries WHERE donation_id = $1 AND txn = $2 LIMIT 1")
                .bind(donation_id)
                .bind(&txn)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
            if seen.is_some() {
                return Ok(false);
            }
            let row = sqlx::query("SELECT state, processor FROM donations WHERE id = $1")
                .bind(donation_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound("donation"))?;
            let state: String = row.try_get("state")?;
            let processor: Option<String> = row.try_get("processor")?;
            let from = DonationState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("donation state {state}")))?;
            if !allowed_from(DonationState::Disputed).contains(&from) {
                return Ok(false);
            }
            sqlx::query("UPDATE donations SET state = 'disputed', updated_at = $1 WHERE id = $2 AND state = $3")
                .bind(now)
                .bind(donation_id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            let acct = format!("processor:{}", processor.unwrap_or_default());
            let postings = [
                (txn.clone(), "dispute", "disputes".to_string(), amount_cents),
                (txn, "dispute", acct, -amount_cents),
            ];
            post_ledger!(tx, donation_id, postings, now);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// A pledge by the hash of its completion token.
    pub async fn donation_by_pledge_token_hash(&self, hash: &str) -> Result<Option<DonationRow>> {
        self.donation_where("pledge_token_hash", hash).await
    }

    /// Donations matching `q`, newest first (keyset by id: `before_id`), for the API
    /// and the staff console. Every value is bound.
    pub async fn search_donations(&self, q: &DonationSearch) -> Result<Vec<DonationRow>> {
        let email_expr = match self.backend() {
            Backend::Sqlite => "lower(json_extract(donor, '$.email'))",
            Backend::Postgres => "lower(CAST(donor AS json)->>'email')",
        };
        let sql = format!(
            "SELECT {DONATION_COLUMNS} FROM donations WHERE \
             (CAST($1 AS TEXT) IS NULL OR state = $1) AND (CAST($2 AS TEXT) IS NULL OR refcode = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR {email_expr} = lower($3)) \
             AND (CAST($4 AS BIGINT) IS NULL OR created_at >= $4) AND (CAST($5 AS BIGINT) IS NULL OR created_at < $5) \
             AND (CAST($6 AS BIGINT) IS NULL OR id < $6) ORDER BY id DESC LIMIT $7"
        );
        on_write!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(q.state.as_deref())
                .bind(q.refcode.as_deref())
                .bind(q.email.as_deref())
                .bind(q.since_ms)
                .bind(q.until_ms)
                .bind(q.before_id)
                .bind(q.limit.clamp(1, 500))
                .fetch_all(p)
                .await?;
            rows.into_iter().map(|r| Ok(donation_from_row!(r))).collect()
        })
    }

    /// Donations created at or after `since_ms`, newest first, for staff pages and
    /// reconciliation.
    pub async fn donations_since(&self, since_ms: i64, limit: i64) -> Result<Vec<DonationRow>> {
        on_read!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {DONATION_COLUMNS} FROM donations WHERE created_at >= $1 ORDER BY id DESC LIMIT $2"
            ))
            .bind(since_ms)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.into_iter().map(|r| Ok(donation_from_row!(r))).collect()
        })
    }
}

/// A donation search ([`Store::search_donations`]); every part optional.
#[derive(Debug, Clone, Default)]
pub struct DonationSearch {
    pub state: Option<String>,
    pub refcode: Option<String>,
    /// The donor's email as given (compared case-insensitively).
    pub email: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Keyset: only donations with a smaller id.
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// The calendar year (UTC) of a time in ms (from the domain crate).
pub use narwhal_domain::civil::year_of_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_graph_only_moves_forward() {
        use DonationState::*;
        let all = [
            Processing,
            Succeeded,
            Declined,
            Failed,
            Pledged,
            Canceled,
            PartiallyRefunded,
            Refunded,
            Disputed,
        ];
        // No state can reach itself: depth-first from each state over `allowed_from`.
        for start in all {
            let mut stack = vec![start];
            let mut seen = std::collections::HashSet::new();
            while let Some(s) = stack.pop() {
                for to in all {
                    if allowed_from(to).contains(&s) {
                        assert_ne!(to, start, "cycle back to {start:?}");
                        if seen.insert(to) {
                            stack.push(to);
                        }
                    }
                }
            }
        }
        for s in all {
            assert_eq!(DonationState::parse(s.as_str()), Some(s));
        }
    }
}

// After the macros above, which they use.
mod bulk;
pub use bulk::NewDonors;
mod notices;
pub use notices::NoticeKind;
