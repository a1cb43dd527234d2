//! Blasts, the per-recipient ledger, failures and the suppression list.
//!
//! A blast is a row (`blasts`) with a target (a segment, a list or an inline filter), its
//! content (kept as JSON; rendering is the mail crate's business), a state and counters.
//! Its recipients are materialized once, by one `INSERT ... SELECT` from the target's
//! compiled condition, into the ledger `blast_recipients`.
//!
//! # The ledger and its byte budget
//!
//! One row per recipient, keyed by `(blast_id, person_id)`: a person is in a blast at most
//! once whatever their addresses or overlapping segments. The other columns are small
//! integers: `state` ([`RecipientState`]), `attempts`, `account` (a [`mail_accounts`] id,
//! not a name) and `not_before` (ms: a throttled or backed-off recipient's earliest next
//! try, or a claimed recipient's lease expiry; `NULL` once final). Nothing rendered is
//! stored, and reasons for failure go to the rare `blast_failures` rows.
//!
//! On SQLite the table is `WITHOUT ROWID`, so a row is one b-tree cell holding only the
//! record: a 2-byte cell pointer, a 1-byte size, a 7-byte record header, then
//! `blast_id` (1-2 bytes), `person_id` (up to 4 bytes below 2^31), `state` (0 bytes for 0
//! and 1, else 1), `attempts` (0-1), `account` (0-1) and `not_before` (0 when `NULL`):
//! about 17-20 bytes per recipient when final, plus page slack. The test
//! `ledger_bytes_per_recipient` measures it (200,000 sent rows, `dbstat` pages): 23.1
//! bytes per recipient, asserted at most 40. On PostgreSQL every heap tuple carries a 24-byte header and a 4-byte item
//! pointer, and the primary key index adds about 20 more, so the ledger costs about 90
//! bytes per recipient there (measured 89.9 after `VACUUM FULL`); the budget of 40 is met on SQLite only (measured by the
//! same test and reported, not asserted, on PostgreSQL).
//!
//! Provider message ids (SES's are about 60 characters) would on their own break the
//! budget, so they go to `blast_message_ids`, compacted by [`compact_message_id`], and
//! only for blasts with `keep_message_ids` (events are matched by message tags anyway).
//!
//! # States only move forward
//!
//! `pending (0) -> sending (1) -> sent (2) | failed (3) | ambiguous (4) | skipped (5)`.
//! A throttled or transiently failed recipient goes from sending back to pending with a
//! later `not_before`: not a failure, never dropped. Every UPDATE carries its guard in
//! the WHERE clause: a claim only takes pending rows (or sending rows whose lease
//! expired), and an outcome only lands on a row still `sending` under the same lease
//! (`not_before` = the lease expiry handed out by the claim, which strictly increases
//! across claims of one row, so it fences off a worker whose lease was taken over).
//!
//! # Claims and the duplicate window
//!
//! A worker claims a slice of pending recipients in one transaction (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL, so nodes never take the same rows). Rows whose lease expired
//! (their worker died mid-send) are claimed again and counted in `blasts.reclaimed`:
//! those are the only recipients that can receive a message twice, so the duplicate
//! window is bounded by the slices in flight at a crash, and counted.
//!
//! [`mail_accounts`]: Store::mail_account_id

use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::{ListId, PersonId, SegmentFilter, SegmentId};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A blast's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlastId(pub i64);

impl std::fmt::Display for BlastId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The job kind that sends a blast.
pub const BLAST_JOB_KIND: &str = "blast.send";

/// Who a blast goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlastTarget {
    /// A saved segment (its filter as it is when the blast starts).
    Segment(SegmentId),
    /// A static list.
    List(ListId),
    /// A filter given inline.
    Filter(SegmentFilter),
    /// The recipients another blast failed (resend-to-failed): a new blast, so the
    /// first one's ledger never moves backwards.
    FailedOf(BlastId),
}

/// What a blast says: inline parts or a reference to a stored template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlastContent {
    /// Subject, text and HTML templates given inline.
    Inline {
        subject: String,
        text: Option<String>,
        html: Option<String>,
    },
    /// A stored template, by id (resolved by the mail crate).
    Template { template_id: i64 },
}

/// A blast's lifecycle. Moves only along
/// `draft -> scheduled -> sending <-> paused`, and to `cancelled` or `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlastState {
    Draft,
    Scheduled,
    Sending,
    Paused,
    Cancelled,
    Done,
}

impl BlastState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Scheduled => "scheduled",
            Self::Sending => "sending",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "draft" => Self::Draft,
            "scheduled" => Self::Scheduled,
            "sending" => Self::Sending,
            "paused" => Self::Paused,
            "cancelled" => Self::Cancelled,
            "done" => Self::Done,
            other => return Err(StoreError::Corrupt(format!("blast state {other:?}"))),
        })
    }
}

/// A recipient's state in the ledger, stored as a small integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    /// Not yet sent (maybe waiting for `not_before`).
    Pending = 0,
    /// Claimed by a worker under a lease; a message may be in flight.
    Sending = 1,
    /// The provider accepted it.
    Sent = 2,
    /// Refused for good; the reason is in `blast_failures`.
    Failed = 3,
    /// The provider may or may not have taken it (timeout after sending); never resent
    /// on our own.
    Ambiguous = 4,
    /// Not sent: the person unsubscribed, bounced or was suppressed during the blast.
    Skipped = 5,
}

impl RecipientState {
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(c: i64) -> Result<Self> {
        Ok(match c {
            0 => Self::Pending,
            1 => Self::Sending,
            2 => Self::Sent,
            3 => Self::Failed,
            4 => Self::Ambiguous,
            5 => Self::Skipped,
            other => return Err(StoreError::Corrupt(format!("recipient state {other}"))),
        })
    }
}

/// A new blast.
#[derive(Debug, Clone)]
pub struct NewBlast {
    pub name: String,
    pub target: BlastTarget,
    pub content: BlastContent,
    /// The sender address (a verified identity at the providers).
    pub from_email: narwhal_domain::Email,
    /// Store provider message ids (costs about 30 bytes per recipient more).
    pub keep_message_ids: bool,
}

/// Counters kept on the blast row, each bumped in the same transaction as the ledger
/// rows it counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlastCounts {
    /// Recipients materialized.
    pub total: i64,
    pub sent: i64,
    pub failed: i64,
    /// Excluded during the blast (unsubscribed, bounced, suppressed since it started).
    pub skipped: i64,
    /// Timed out after sending: maybe delivered, not resent.
    pub ambiguous: i64,
    /// Claims taken over from a worker whose lease expired: the bounded duplicate window.
    pub reclaimed: i64,
    /// Throttle answers from providers (requeued, never failures).
    pub throttled: i64,
}

impl BlastCounts {
    /// Recipients not yet final (pending, waiting or in flight).
    pub fn pending(&self) -> i64 {
        (self.total - self.sent - self.failed - self.skipped - self.ambiguous).max(0)
    }
}

/// A blast row.
#[derive(Debug, Clone, Serialize)]
pub struct Blast {
    pub id: BlastId,
    pub name: String,
    pub target: BlastTarget,
    pub content: BlastContent,
    pub from_email: String,
    pub state: BlastState,
    pub state_reason: Option<String>,
    pub scheduled_at: Option<i64>,
    pub keep_message_ids: bool,
    pub materialized: bool,
    pub counts: BlastCounts,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A claimed recipient with what rendering needs.
#[derive(Clone)]
pub struct ClaimedRecipient {
    pub person_id: PersonId,
    /// The person's primary email now (`None` if it was removed since).
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    /// Custom fields (JSON object text).
    pub custom: String,
    /// Attempts made before this claim.
    pub attempts: i64,
    /// False when the person unsubscribed, bounced, complained or was suppressed after
    /// the blast started: mark them skipped, do not send.
    pub eligible: bool,
}

impl std::fmt::Debug for ClaimedRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedRecipient")
            .field("person_id", &self.person_id)
            .field("attempts", &self.attempts)
            .field("eligible", &self.eligible)
            .finish_non_exhaustive()
    }
}

/// A slice of claimed recipients; outcomes must be recorded under its `lease`.
#[derive(Debug, Clone)]
pub struct Claim {
    pub blast_id: BlastId,
    /// The lease expiry written into each claimed row: the fencing token.
    pub lease: i64,
    pub recipients: Vec<ClaimedRecipient>,
    /// How many of them were taken over from an expired lease.
    pub reclaimed: usize,
    /// The highest person id claimed (the caller's cursor for the next claim).
    pub last: Option<PersonId>,
}

/// The fate of one claimed recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider account `account` (a [`Store::mail_account_id`]).
    Sent {
        account: i32,
        message_id: Option<String>,
    },
    /// Refused for good.
    Failed {
        account: Option<i32>,
        reason: String,
    },
    /// Maybe sent; never resend on our own.
    Ambiguous { account: i32, reason: String },
    /// Back to pending until `not_before` (ms). `attempt` says whether it counts as an
    /// attempt (a transient failure) or not (a throttle, an account refusal).
    Retry {
        not_before: i64,
        attempt: bool,
        throttled: bool,
    },
    /// Not sent: no longer eligible.
    Skipped,
}

/// A "who failed and why" row.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub person_id: PersonId,
    pub reason: String,
    pub at: i64,
}

/// A suppressed address.
#[derive(Debug, Clone, Serialize)]
pub struct Suppression {
    pub email: String,
    pub reason: String,
    pub at: i64,
}

/// What [`Store::record_outcomes`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    pub sent: i64,
    pub failed: i64,
    pub ambiguous: i64,
    pub skipped: i64,
    pub retried: i64,
    /// Outcomes that found their row no longer under this lease (taken over): ignored.
    pub fenced: i64,
}

/// Packs a provider message id: runs of hex digits become bytes, other characters are
/// kept, so an SES id (`0100018f...-uuid-000000`, 60 characters) takes 40 bytes.
/// [`expand_message_id`] is its inverse.
pub fn compact_message_id(id: &str) -> Vec<u8> {
    // Format: a sequence of segments, each 1 tag byte then data.
    // tag 0x80|n: n (1..=127) hex digit pairs follow as bytes (lower-case hex);
    // other tag bytes: a literal byte (ASCII only; non-ASCII ids are stored verbatim
    // behind a 0x00 tag).
    if !id.is_ascii() || id.bytes().any(|b| b == 0) {
        let mut v = vec![0u8];
        v.extend_from_slice(id.as_bytes());
        return v;
    }
    let b = id.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 2 + 4);
    let mut i = 0;
    while i < b.len() {
        let mut j = i;
        while j + 1 < b.len() && (j - i) / 2 < 127 && is_lower_hex(b[j]) && is_lower_hex(b[j + 1]) {
            j += 2;
        }
        if j > i {
            let pairs = (j - i) / 2;
            out.push(0x80 | pairs as u8);
            for k in 0..pairs {
                out.push((hex_val(b[i + 2 * k]) << 4) | hex_val(b[i + 2 * k + 1]));
            }
            i = j;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

fn hex_val(c: u8) -> u8 {
    if c.is_ascii_digit() {
        c - b'0'
    } else {
        c - b'a' + 10
    }
}

/// The inverse of [`compact_message_id`].
pub fn expand_message_id(v: &[u8]) -> String {
    if v.first() == Some(&0) {
        return String::from_utf8_lossy(&v[1..]).into_owned();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(v.len() * 2);
    let mut i = 0;
    while i < v.len() {
        let t = v[i];
        i += 1;
        if t & 0x80 != 0 {
            let n = usize::from(t & 0x7f);
            for &byte in v.iter().skip(i).take(n) {
                s.push(char::from(HEX[usize::from(byte >> 4)]));
                s.push(char::from(HEX[usize::from(byte & 15)]));
            }
            i += n;
        } else {
            s.push(char::from(t));
        }
    }
    s
}

const BLAST_COLS: &str = "id, name, target, content, from_email, state, state_reason, scheduled_at, keep_message_ids, materialized_at, total, sent, failed, skipped, ambiguous, reclaimed, throttled, created_at, updated_at, finished_at";

macro_rules! blast_from {
    ($r:expr, $keep:expr) => {{
        let r = &$r;
        let target: String = r.try_get("target")?;
        let content: String = r.try_get("content")?;
        let state: String = r.try_get("state")?;
        let materialized: Option<i64> = r.try_get("materialized_at")?;
        Blast {
            id: BlastId(r.try_get("id")?),
            name: r.try_get("name")?,
            target: serde_json::from_str(&target)?,
            content: serde_json::from_str(&content)?,
            from_email: r.try_get("from_email")?,
            state: BlastState::parse(&state)?,
            state_reason: r.try_get("state_reason")?,
            scheduled_at: r.try_get("scheduled_at")?,
            keep_message_ids: $keep,
            materialized: materialized.is_some(),
            counts: BlastCounts {
                total: r.try_get("total")?,
                sent: r.try_get("sent")?,
                failed: r.try_get("failed")?,
                skipped: r.try_get("skipped")?,
                ambiguous: r.try_get("ambiguous")?,
                reclaimed: r.try_get("reclaimed")?,
                throttled: r.try_get("throttled")?,
            },
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            finished_at: r.try_get("finished_at")?,
        }
    }};
}

/// A [`ClaimedRecipient`] from a row with the person's columns, `suppressed` and
/// `attempts`.
macro_rules! claimed_from {
    ($r:expr) => {{
        let r = $r;
        let consent: String = r.try_get("email_consent")?;
        let suppressed: bool = r.try_get("suppressed")?;
        let email: Option<String> = r.try_get("email")?;
        let attempts: i64 = r
            .try_get::<i64, _>("attempts")
            .or_else(|_| r.try_get::<i16, _>("attempts").map(i64::from))?;
        ClaimedRecipient {
            person_id: PersonId(r.try_get("id")?),
            eligible: email.is_some()
                && !suppressed
                && !matches!(consent.as_str(), "unsubscribed" | "bounced" | "complained"),
            email,
            first_name: r.try_get("first_name")?,
            last_name: r.try_get("last_name")?,
            city: r.try_get("city")?,
            state: r.try_get("state")?,
            zip: r.try_get("zip")?,
            custom: r.try_get("custom")?,
            attempts,
        }
    }};
}

/// The consent states that exclude a person from every blast.
const EXCLUDED_CONSENT: &str = "('unsubscribed', 'bounced', 'complained')";

impl Store {
    /// Creates a blast in `draft`.
    pub async fn create_blast(&self, b: &NewBlast) -> Result<BlastId> {
        let target = serde_json::to_string(&b.target)?;
        let content = serde_json::to_string(&b.content)?;
        let now = now_ms();
        on_write!(self, p => {
            let id: i64 = sqlx::query_scalar("INSERT INTO blasts (name, target, content, from_email, keep_message_ids, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id")
                .bind(&b.name).bind(target).bind(content).bind(b.from_email.as_str()).bind(b.keep_message_ids).bind(now)
                .fetch_one(p).await?;
            Ok(BlastId(id))
        })
    }

    pub async fn blast(&self, id: BlastId) -> Result<Blast> {
        let sql = format!("SELECT {BLAST_COLS} FROM blasts WHERE id = $1");
        on_read!(self, p => {
            let r = sqlx::query(&sql).bind(id.0).fetch_optional(p).await?.ok_or(StoreError::NotFound("blast"))?;
            let keep: bool = r.try_get("keep_message_ids")?;
            Ok(blast_from!(r, keep))
        })
    }

    /// Schedules a draft (or a paused blast) to send at `at` (ms; now or later): sets
    /// `scheduled` and enqueues its `blast.send` job due at `at`, in one transaction.
    /// Only `draft` and `paused` blasts can be scheduled. `jobs` jobs are enqueued
    /// (at least one): each runs the whole blast, and their claims never overlap, so
    /// several nodes share the work.
    pub async fn schedule_blast(&self, id: BlastId, at: i64, jobs: u32) -> Result<()> {
        let now = now_ms();
        let payload = serde_json::json!({ "blast_id": id.0 }).to_string();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("UPDATE blasts SET state = 'scheduled', state_reason = NULL, scheduled_at = $1, updated_at = $2 WHERE id = $3 AND state IN ('draft', 'paused')")
                .bind(at).bind(now).bind(id.0).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(self.blast_transition_error(id, "scheduled").await);
            }
            for _ in 0..jobs.max(1) {
                sqlx::query("INSERT INTO jobs (kind, payload, state, run_after, created_at, updated_at) VALUES ($1, $2, 'queued', $3, $4, $4)")
                    .bind(BLAST_JOB_KIND).bind(&payload).bind(at).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Resumes a paused blast (new jobs, due now).
    pub async fn resume_blast(&self, id: BlastId, jobs: u32) -> Result<()> {
        self.schedule_blast(id, now_ms(), jobs).await
    }

    /// Pauses a scheduled or sending blast; its worker stops between slices.
    pub async fn pause_blast(&self, id: BlastId, reason: Option<&str>) -> Result<()> {
        self.move_blast(id, "paused", "('scheduled', 'sending')", reason)
            .await
    }

    /// Cancels a blast that is not finished. Pending recipients stay pending (and are
    /// reported as never sent).
    pub async fn cancel_blast(&self, id: BlastId) -> Result<()> {
        self.move_blast(
            id,
            "cancelled",
            "('draft', 'scheduled', 'sending', 'paused')",
            None,
        )
        .await
    }

    /// `scheduled -> sending`, when a worker starts it. `false` if it is not scheduled
    /// or already sending (then the worker goes on only when it is `sending`).
    pub async fn start_blast(&self, id: BlastId) -> Result<bool> {
        let n = on_write!(self, p => sqlx::query("UPDATE blasts SET state = 'sending', updated_at = $1 WHERE id = $2 AND state = 'scheduled'")
            .bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// `sending -> done` when no recipient is left unfinished. `true` if it moved.
    pub async fn finish_blast_if_complete(&self, id: BlastId) -> Result<bool> {
        let now = now_ms();
        let n = on_write!(self, p => sqlx::query(
            "UPDATE blasts SET state = 'done', finished_at = $1, updated_at = $1 WHERE id = $2 AND state = 'sending' \
             AND NOT EXISTS (SELECT 1 FROM blast_recipients WHERE blast_id = $2 AND state IN (0, 1))")
            .bind(now).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn move_blast(
        &self,
        id: BlastId,
        to: &str,
        from: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let sql = format!("UPDATE blasts SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4 AND state IN {from}");
        let n = on_write!(self, p => sqlx::query(&sql).bind(to).bind(reason).bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(self.blast_transition_error(id, to).await);
        }
        Ok(())
    }

    async fn blast_transition_error(&self, id: BlastId, to: &str) -> StoreError {
        match self.blast(id).await {
            Ok(b) => StoreError::Invalid(format!(
                "blast {id} is {} and cannot become {to}",
                b.state.as_str()
            )),
            Err(e) => e,
        }
    }

    /// The filter a target stands for.
    async fn target_filter(&self, target: &BlastTarget) -> Result<SegmentFilter> {
        Ok(match target {
            BlastTarget::Segment(s) => self.segment(*s).await?.filter,
            BlastTarget::List(l) => SegmentFilter::InList(*l),
            BlastTarget::Filter(f) => f.clone(),
            BlastTarget::FailedOf(_) => {
                return Err(StoreError::Invalid(
                    "a resend's recipients come from its blast's ledger".into(),
                ))
            }
        })
    }

    /// Writes the blast's recipients into the ledger, once: one `INSERT ... SELECT` over
    /// `people` (so each person at most once, at their primary email) that leaves out
    /// people without an email, the unsubscribed, bounced and complained, and suppressed
    /// addresses. Idempotent: a second call does nothing. Returns the total.
    pub async fn materialize_recipients(&self, id: BlastId) -> Result<i64> {
        let blast = self.blast(id).await?;
        if blast.materialized {
            return Ok(blast.counts.total);
        }
        let (c, eligible) = self.audience(&blast.target).await?;
        let n = c.args.len();
        let sql = format!(
            "INSERT INTO blast_recipients (blast_id, person_id, state, attempts) \
             SELECT ${b}, people.id, 0, 0 FROM people WHERE {eligible} \
             ORDER BY people.id ON CONFLICT DO NOTHING",
            b = n + 1,
        );
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            // Lock the blast row first: two workers starting at once materialize once.
            let done: Option<i64> = if self.backend() == Backend::Postgres {
                sqlx::query_scalar("SELECT materialized_at FROM blasts WHERE id = $1 FOR UPDATE").bind(id.0).fetch_one(&mut *tx).await?
            } else {
                sqlx::query_scalar("SELECT materialized_at FROM blasts WHERE id = $1").bind(id.0).fetch_one(&mut *tx).await?
            };
            if done.is_some() {
                tx.rollback().await?;
                return Ok(self.blast(id).await?.counts.total);
            }
            let mut q = sqlx::query(&sql);
            for a in &c.args { q = q.bind(a); }
            let inserted = q.bind(id.0).execute(&mut *tx).await?.rows_affected() as i64;
            sqlx::query("UPDATE blasts SET materialized_at = $1, total = $2, updated_at = $1 WHERE id = $3")
                .bind(now).bind(inserted).bind(id.0).execute(&mut *tx).await?;
            tx.commit().await?;
            if self.backend() == Backend::Postgres && inserted > 10_000 {
                // Fresh statistics, so that claims plan as index lookups into a big ledger.
                sqlx::query("ANALYZE blast_recipients").execute(p).await?;
            }
            Ok(inserted)
        })
    }

    /// The people a target reaches and can be emailed: the target's condition and the
    /// WHERE clause (over `people`) that adds the exclusions every blast has.
    async fn audience(&self, target: &BlastTarget) -> Result<(crate::segments::Condition, String)> {
        let c = match target {
            BlastTarget::FailedOf(of) => crate::segments::Condition {
                sql: "people.id IN (SELECT f.person_id FROM blast_recipients f WHERE f.blast_id = CAST($1 AS BIGINT) AND f.state = 3)".into(),
                args: vec![of.0.to_string()],
            },
            t => {
                let filter = self.target_filter(t).await?;
                crate::segments::compile(&filter, self.backend())
            }
        };
        let eligible = format!(
            "({cond}) AND people.email IS NOT NULL \
             AND people.email_consent NOT IN {EXCLUDED_CONSENT} \
             AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = people.email)",
            cond = c.sql
        );
        Ok((c, eligible))
    }

    /// How many recipients the blast would have if it were materialized now (its
    /// total once it is): for the estimate before a send, and to refuse a send to
    /// nobody.
    pub async fn count_audience(&self, id: BlastId) -> Result<i64> {
        let blast = self.blast(id).await?;
        if blast.materialized {
            return Ok(blast.counts.total);
        }
        let (c, eligible) = self.audience(&blast.target).await?;
        let sql = format!("SELECT COUNT(*) FROM people WHERE {eligible}");
        on_read!(self, p => {
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            for a in &c.args { q = q.bind(a); }
            Ok(q.fetch_one(p).await?)
        })
    }

    /// Claims up to `limit` recipients after `after` (by person id) that are pending and
    /// due, or sending under an expired lease, and leases them until `now + lease_ms`.
    /// Expired ones taken over are added to `blasts.reclaimed`. Nodes never claim the
    /// same row: SQLite has one writer; PostgreSQL skips rows locked by another claim.
    pub async fn claim_recipients(
        &self,
        id: BlastId,
        after: Option<PersonId>,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Claim> {
        let now = now_ms();
        let lease = now + lease_ms.max(1);
        let after = after.map(|a| a.0).unwrap_or(0);
        let limit = limit.clamp(1, 10_000);
        if let crate::db::Pools::Postgres(p) = &self.pools {
            let rows = sqlx::query(CLAIM_PG)
                .bind(id.0)
                .bind(after)
                .bind(now)
                .bind(limit)
                .bind(lease)
                .fetch_all(p)
                .await?;
            let mut recipients = Vec::with_capacity(rows.len());
            let mut reclaimed = 0usize;
            for r in &rows {
                let was: i16 = r.try_get("was")?;
                reclaimed += usize::from(was == RecipientState::Sending.code());
                recipients.push(claimed_from!(r));
            }
            let last = recipients.iter().map(|r| r.person_id).max();
            return Ok(Claim {
                blast_id: id,
                lease,
                recipients,
                reclaimed,
                last,
            });
        }
        let pick = "SELECT person_id, state FROM blast_recipients WHERE blast_id = $1 AND person_id > $2 \
             AND ((state = 0 AND (not_before IS NULL OR not_before <= $3)) OR (state = 1 AND not_before < $3)) \
             ORDER BY person_id LIMIT $4";
        let people = "SELECT p.id, p.email, p.first_name, p.last_name, p.city, p.state, p.zip, p.custom, p.email_consent, \
             EXISTS (SELECT 1 FROM suppressions s WHERE s.email = p.email) AS suppressed, r.attempts \
             FROM blast_recipients r JOIN people p ON p.id = r.person_id \
             WHERE r.blast_id = $1 AND r.state = 1 AND r.not_before = $2 AND r.person_id >= $3 AND r.person_id <= $4 ORDER BY p.id";
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query(pick).bind(id.0).bind(after).bind(now).bind(limit).fetch_all(&mut *tx).await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(Claim { blast_id: id, lease, recipients: Vec::new(), reclaimed: 0, last: None });
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut reclaimed = 0usize;
            for r in &rows {
                let pid: i64 = r.try_get("person_id")?;
                let st: i64 = r.try_get::<i64, _>("state").or_else(|_| r.try_get::<i16, _>("state").map(i64::from))?;
                if st == 1 { reclaimed += 1; }
                ids.push(pid);
            }
            let lo = ids.iter().copied().min().unwrap_or(0);
            let hi = ids.iter().copied().max().unwrap_or(0);
            // The guard repeats the pick's condition: a row moves only from pending/expired.
            let upd = format!(
                "UPDATE blast_recipients SET state = 1, not_before = $1 WHERE blast_id = $2 AND person_id IN ({}) \
                 AND ((state = 0 AND (not_before IS NULL OR not_before <= $3)) OR (state = 1 AND not_before < $3))",
                in_list(4, self.backend())
            );
            let moved = sqlx::query(&upd).bind(lease).bind(id.0).bind(now).bind(json_ids(&ids)).execute(&mut *tx).await?.rows_affected();
            if moved as usize != ids.len() {
                return Err(StoreError::Invalid(format!("claim moved {moved} of {} rows", ids.len())));
            }
            if reclaimed > 0 {
                sqlx::query("UPDATE blasts SET reclaimed = reclaimed + $1, updated_at = $2 WHERE id = $3")
                    .bind(reclaimed as i64).bind(now).bind(id.0).execute(&mut *tx).await?;
            }
            let prs = sqlx::query(people).bind(id.0).bind(lease).bind(lo).bind(hi).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let mut recipients = Vec::with_capacity(prs.len());
            for r in &prs {
                recipients.push(claimed_from!(r));
            }
            // A claimed row whose person was deleted since has no people row: skip it.
            let mut claim = Claim { blast_id: id, lease, reclaimed, last: Some(PersonId(hi)), recipients };
            if claim.recipients.len() != ids.len() {
                let found: std::collections::HashSet<i64> = claim.recipients.iter().map(|r| r.person_id.0).collect();
                for pid in ids.iter().filter(|i| !found.contains(i)) {
                    claim.recipients.push(ClaimedRecipient {
                        person_id: PersonId(*pid), email: None, first_name: None, last_name: None, city: None,
                        state: None, zip: None, custom: "{}".into(), attempts: 0, eligible: false,
                    });
                }
            }
            Ok(claim)
        })
    }

    /// People after `after` (by id) as a claim would hand them to rendering, without
    /// claiming anything: for previews and the bench's rendering baseline.
    pub async fn recipients_page(
        &self,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<ClaimedRecipient>> {
        let sql = "SELECT p.id, p.email, p.first_name, p.last_name, p.city, p.state, p.zip, p.custom, p.email_consent, \
             EXISTS (SELECT 1 FROM suppressions s WHERE s.email = p.email) AS suppressed, CAST(0 AS BIGINT) AS attempts \
             FROM people p WHERE p.id > $1 ORDER BY p.id LIMIT $2";
        on_read!(self, p => {
            let rows = sqlx::query(sql).bind(after.map_or(0, |a| a.0)).bind(limit.clamp(1, 100_000)).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(claimed_from!(r));
            }
            Ok(out)
        })
    }

    /// Records the outcomes of a claim durably, in one transaction with the blast's
    /// counters: a recipient is counted as sent only once its row says so. Each row
    /// moves only if it is still `sending` under this claim's lease (else the outcome is
    /// fenced off and counted in [`Recorded::fenced`]).
    ///
    /// The whole slice is written by one multi-row UPDATE (the outcomes travel as
    /// arrays: `unnest` on PostgreSQL, `json_each` on SQLite) whose guard is the same
    /// for every row, so a row still only moves forward. On PostgreSQL the UPDATE, the
    /// message ids, the failure reasons and the counters are one statement (one round
    /// trip, one commit); SQLite runs them as a few statements in one transaction.
    pub async fn record_outcomes(
        &self,
        claim: &Claim,
        outcomes: &[(PersonId, Outcome)],
    ) -> Result<Recorded> {
        if outcomes.is_empty() {
            return Ok(Recorded::default());
        }
        let now = now_ms();
        let id = claim.blast_id;
        let rows = LedgerWrite::new(outcomes);
        let mut rec = match &self.pools {
            crate::db::Pools::Postgres(p) => {
                let r = sqlx::query(RECORD_PG)
                    .bind(id.0)
                    .bind(claim.lease)
                    .bind(&rows.pid)
                    .bind(&rows.st)
                    .bind(&rows.inc)
                    .bind(&rows.set_acc)
                    .bind(&rows.acc)
                    .bind(&rows.not_before)
                    .bind(&rows.throttled)
                    .bind(&rows.mid_pid)
                    .bind(&rows.mid)
                    .bind(now)
                    .bind(&rows.fail_pid)
                    .bind(&rows.fail_reason)
                    .fetch_optional(p)
                    .await?
                    .ok_or(StoreError::NotFound("blast"))?;
                Recorded {
                    sent: r.try_get("sent")?,
                    failed: r.try_get("failed")?,
                    ambiguous: r.try_get("ambiguous")?,
                    skipped: r.try_get("skipped")?,
                    retried: r.try_get("retried")?,
                    fenced: 0,
                }
            }
            crate::db::Pools::Sqlite { write, .. } => {
                let mut tx = write.begin().await?;
                let mut moved = std::collections::HashSet::with_capacity(rows.pid.len());
                for (key, pids) in rows.sqlite_groups() {
                    let (st, inc, set_acc, acc, nb) = key;
                    let done: Vec<i64> = sqlx::query_scalar(RECORD_SQLITE)
                        .bind(st)
                        .bind(inc)
                        .bind(set_acc)
                        .bind(acc)
                        .bind(nb)
                        .bind(id.0)
                        .bind(json_ids(&pids))
                        .bind(claim.lease)
                        .fetch_all(&mut *tx)
                        .await?;
                    moved.extend(done);
                }
                let mut rec = Recorded::default();
                let mut throttled = 0i64;
                for (i, &pid) in rows.pid.iter().enumerate() {
                    if !moved.contains(&pid) {
                        continue;
                    }
                    match rows.st[i] {
                        2 => rec.sent += 1,
                        3 => rec.failed += 1,
                        4 => rec.ambiguous += 1,
                        5 => rec.skipped += 1,
                        _ => {
                            rec.retried += 1;
                            throttled += i64::from(rows.throttled[i]);
                        }
                    }
                }
                let mids: Vec<(i64, String)> = rows
                    .mid_pid
                    .iter()
                    .zip(&rows.mid)
                    .filter(|(p, _)| moved.contains(p))
                    .map(|(p, m)| (*p, hex(m)))
                    .collect();
                if !mids.is_empty() {
                    sqlx::query("INSERT INTO blast_message_ids (blast_id, person_id, message_id) \
                        SELECT $1, value ->> 0, unhex(value ->> 1) FROM json_each($2) \
                        WHERE EXISTS (SELECT 1 FROM blasts WHERE id = $1 AND keep_message_ids) \
                        ON CONFLICT (blast_id, person_id) DO UPDATE SET message_id = excluded.message_id")
                        .bind(id.0)
                        .bind(serde_json::to_string(&mids)?)
                        .execute(&mut *tx)
                        .await?;
                }
                let fails: Vec<(i64, &str)> = rows
                    .fail_pid
                    .iter()
                    .zip(&rows.fail_reason)
                    .filter(|(p, _)| moved.contains(p))
                    .map(|(p, r)| (*p, r.as_str()))
                    .collect();
                if !fails.is_empty() {
                    sqlx::query("INSERT INTO blast_failures (blast_id, person_id, reason, at) \
                        SELECT $1, value ->> 0, value ->> 1, $2 FROM json_each($3) WHERE true \
                        ON CONFLICT (blast_id, person_id) DO UPDATE SET reason = excluded.reason, at = excluded.at")
                        .bind(id.0)
                        .bind(now)
                        .bind(serde_json::to_string(&fails)?)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE blasts SET sent = sent + $1, failed = failed + $2, ambiguous = ambiguous + $3, skipped = skipped + $4, throttled = throttled + $5, updated_at = $6 WHERE id = $7")
                    .bind(rec.sent).bind(rec.failed).bind(rec.ambiguous).bind(rec.skipped).bind(throttled).bind(now).bind(id.0)
                    .execute(&mut *tx).await?;
                tx.commit().await?;
                rec
            }
        };
        let moved = rec.sent + rec.failed + rec.ambiguous + rec.skipped + rec.retried;
        rec.fenced = outcomes.len() as i64 - moved;
        Ok(rec)
    }

    /// Recipients not final yet: (due now or in flight, waiting for `not_before`).
    pub async fn blast_unfinished(&self, id: BlastId) -> Result<(i64, i64)> {
        let now = now_ms();
        on_read!(self, p => {
            let r = sqlx::query("SELECT COALESCE(SUM(CASE WHEN state = 0 AND not_before > $2 THEN 0 ELSE 1 END), 0) AS due, \
                COALESCE(SUM(CASE WHEN state = 0 AND not_before > $2 THEN 1 ELSE 0 END), 0) AS waiting \
                FROM blast_recipients WHERE blast_id = $1 AND state IN (0, 1)")
                .bind(id.0).bind(now).fetch_one(p).await?;
            Ok((r.try_get("due")?, r.try_get("waiting")?))
        })
    }

    /// One recipient's ledger row: (state, attempts, account).
    pub async fn recipient_state(
        &self,
        id: BlastId,
        person: PersonId,
    ) -> Result<(RecipientState, i64, Option<i64>)> {
        on_read!(self, p => {
            let r = sqlx::query("SELECT CAST(state AS BIGINT) AS s, CAST(attempts AS BIGINT) AS a, CAST(account AS BIGINT) AS acc FROM blast_recipients WHERE blast_id = $1 AND person_id = $2")
                .bind(id.0).bind(person.0).fetch_optional(p).await?.ok_or(StoreError::NotFound("blast recipient"))?;
            Ok((RecipientState::from_code(r.try_get("s")?)?, r.try_get("a")?, r.try_get("acc")?))
        })
    }

    /// Recipient counts by state, counted from the ledger itself (not the counters).
    pub async fn recipient_state_counts(&self, id: BlastId) -> Result<Vec<(RecipientState, i64)>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT CAST(state AS BIGINT) AS s, COUNT(*) AS n FROM blast_recipients WHERE blast_id = $1 GROUP BY state ORDER BY state")
                .bind(id.0).fetch_all(p).await?;
            rows.iter().map(|r| Ok((RecipientState::from_code(r.try_get("s")?)?, r.try_get("n")?))).collect()
        })
    }

    /// The stored provider message id of a sent recipient, if kept.
    pub async fn recipient_message_id(
        &self,
        id: BlastId,
        person: PersonId,
    ) -> Result<Option<String>> {
        on_read!(self, p => {
            let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT message_id FROM blast_message_ids WHERE blast_id = $1 AND person_id = $2")
                .bind(id.0).bind(person.0).fetch_optional(p).await?;
            Ok(v.map(|v| expand_message_id(&v)))
        })
    }

    /// Who failed and why (failed and ambiguous recipients), by person id.
    pub async fn blast_failures(
        &self,
        id: BlastId,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<Failure>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT person_id, reason, at FROM blast_failures WHERE blast_id = $1 AND person_id > $2 ORDER BY person_id LIMIT $3")
                .bind(id.0).bind(after.map(|a| a.0).unwrap_or(0)).bind(limit.clamp(1, 10_000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(Failure { person_id: PersonId(r.try_get("person_id")?), reason: r.try_get("reason")?, at: r.try_get("at")? })).collect()
        })
    }

    /// Blasts, newest first (`before` an id pages back).
    pub async fn blasts(&self, before: Option<BlastId>, limit: i64) -> Result<Vec<Blast>> {
        let sql =
            format!("SELECT {BLAST_COLS} FROM blasts WHERE id < $1 ORDER BY id DESC LIMIT $2");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(before.map(|b| b.0).unwrap_or(i64::MAX)).bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(|r| {
                let keep: bool = r.try_get("keep_message_ids")?;
                Ok(blast_from!(r, keep))
            }).collect()
        })
    }

    /// Creates a draft that resends `id`'s content to the recipients it failed. The
    /// original's ledger is left as it is (states only move forward); people who
    /// unsubscribed, bounced or were suppressed since are left out when it starts.
    pub async fn create_resend_to_failed(&self, id: BlastId) -> Result<BlastId> {
        let b = self.blast(id).await?;
        if !matches!(
            b.state,
            BlastState::Done | BlastState::Paused | BlastState::Cancelled
        ) {
            return Err(StoreError::Invalid(format!(
                "blast {id} is {}; resend to failed once it is done, paused or cancelled",
                b.state.as_str()
            )));
        }
        if b.counts.failed == 0 {
            return Err(StoreError::Invalid(format!(
                "blast {id} has no failed recipients"
            )));
        }
        let from = narwhal_domain::Email::parse(&b.from_email)
            .map_err(|_| StoreError::Corrupt("blast sender address".into()))?;
        self.create_blast(&NewBlast {
            name: format!("{} (resend to failed)", b.name),
            target: BlastTarget::FailedOf(id),
            content: b.content,
            from_email: from,
            keep_message_ids: b.keep_message_ids,
        })
        .await
    }

    /// Sets a person's email consent to `unsubscribed` at once, with an audit entry,
    /// unless they already are unsubscribed, bounced or complained. `true` if it
    /// changed. Claims check consent, so a running blast skips them from the next slice.
    pub async fn unsubscribe_email(
        &self,
        person: PersonId,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<bool> {
        let now = now_ms();
        let entry =
            crate::audit::AuditEntry::new(actor, "person.unsubscribe", "person", person.0, detail);
        let sql = format!("UPDATE people SET email_consent = 'unsubscribed', version = version + 1, updated_at = $1 WHERE id = $2 AND email_consent NOT IN {EXCLUDED_CONSENT}");
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(&sql).bind(now).bind(person.0).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                audit_insert!(&mut *tx, entry, &entry.entity_id, now);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// The suppression list, by address (`after` pages on).
    pub async fn suppressions(&self, after: Option<&str>, limit: i64) -> Result<Vec<Suppression>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT email, reason, at FROM suppressions WHERE email > $1 ORDER BY email LIMIT $2")
                .bind(after.unwrap_or("")).bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(Suppression { email: r.try_get("email")?, reason: r.try_get("reason")?, at: r.try_get("at")? })).collect()
        })
    }

    /// The small integer standing for a provider account name in the ledger (created on
    /// first use).
    pub async fn mail_account_id(&self, name: &str) -> Result<i32> {
        on_write!(self, p => {
            sqlx::query("INSERT INTO mail_accounts (name) VALUES ($1) ON CONFLICT (name) DO NOTHING").bind(name).execute(p).await?;
            let id: i64 = sqlx::query_scalar("SELECT CAST(id AS BIGINT) FROM mail_accounts WHERE name = $1").bind(name).fetch_one(p).await?;
            i32::try_from(id).map_err(|_| StoreError::Corrupt("mail account id out of range".into()))
        })
    }

    /// Adds (or updates the reason of) a suppressed address.
    pub async fn suppress(&self, email: &narwhal_domain::Email, reason: &str) -> Result<()> {
        on_write!(self, p => sqlx::query("INSERT INTO suppressions (email, reason, at) VALUES ($1, $2, $3) ON CONFLICT (email) DO UPDATE SET reason = excluded.reason, at = excluded.at")
            .bind(email.as_str()).bind(reason).bind(now_ms()).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn unsuppress(&self, email: &narwhal_domain::Email) -> Result<bool> {
        let n = on_write!(self, p => sqlx::query("DELETE FROM suppressions WHERE email = $1").bind(email.as_str()).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn is_suppressed(&self, email: &narwhal_domain::Email) -> Result<bool> {
        on_read!(self, p => {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM suppressions WHERE email = $1").bind(email.as_str()).fetch_one(p).await?;
            Ok(n > 0)
        })
    }

    /// Bytes on disk of the ledger table (with its primary key) per recipient row, for
    /// the budget test and the bench. SQLite: pages of the b-tree (via `dbstat` when
    /// compiled in, else the whole file's pages); PostgreSQL: `pg_total_relation_size`.
    pub async fn ledger_bytes(&self) -> Result<(i64, i64)> {
        match &self.pools {
            crate::db::Pools::Sqlite { write, .. } => {
                let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blast_recipients")
                    .fetch_one(write)
                    .await?;
                let bytes: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
                    "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = 'blast_recipients'",
                )
                .fetch_one(write)
                .await;
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(_) => {
                        return Err(StoreError::Invalid(
                            "this SQLite has no dbstat table".into(),
                        ))
                    }
                };
                Ok((bytes, rows))
            }
            crate::db::Pools::Postgres(p) => {
                sqlx::query("VACUUM blast_recipients").execute(p).await?;
                let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blast_recipients")
                    .fetch_one(p)
                    .await?;
                let bytes: i64 =
                    sqlx::query_scalar("SELECT pg_total_relation_size('blast_recipients')")
                        .fetch_one(p)
                        .await?;
                Ok((bytes, rows))
            }
        }
    }
}

/// The address [`Store::insert_synthetic_recipients`] gives its `i`-th person.
pub fn synthetic_address(i: i64) -> String {
    format!("r{i}@bench.example")
}

impl Store {
    /// Inserts `n` subscribed people straight into `people` for benchmarks and scale
    /// tests (no keys, tags, provenance or audit: this is setup, not an import): the
    /// `i`-th (from `first`) has the address [`synthetic_address`]`(i)`, a first name, a
    /// city, state `OH`, a zip and a custom field, so every message is personalized.
    /// One `INSERT ... SELECT` per 100,000 people.
    pub async fn insert_synthetic_recipients(&self, first: i64, n: i64) -> Result<()> {
        const CHUNK: i64 = 100_000;
        let sql = match self.backend() {
            Backend::Postgres => "INSERT INTO people (first_name, last_name, search_name, email, city, state, zip, email_consent, custom, created_at, updated_at) \
                SELECT (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8], 'Voter' || g, 'voter ' || g, \
                'r' || g || '@bench.example', (ARRAY['Columbus','Dayton','Akron','Toledo'])[1 + g % 4], 'OH', \
                CAST(43000 + g % 999 AS TEXT), 'subscribed', '{\"ward\":\"' || (g % 40) || '\"}', $3, $3 \
                FROM generate_series($1::BIGINT, $2::BIGINT) g",
            Backend::Sqlite => "WITH RECURSIVE c(g) AS (SELECT $1 UNION ALL SELECT g + 1 FROM c WHERE g < $2) \
                INSERT INTO people (first_name, last_name, search_name, email, city, state, zip, email_consent, custom, created_at, updated_at) \
                SELECT json_extract('[\"Ada\",\"Grace\",\"Alan\",\"Edsger\",\"Barbara\",\"Donald\",\"Frances\",\"Ken\"]', '$[' || (g % 8) || ']'), \
                'Voter' || g, 'voter ' || g, 'r' || g || '@bench.example', \
                json_extract('[\"Columbus\",\"Dayton\",\"Akron\",\"Toledo\"]', '$[' || (g % 4) || ']'), 'OH', \
                CAST(43000 + g % 999 AS TEXT), 'subscribed', '{\"ward\":\"' || (g % 40) || '\"}', $3, $3 FROM c",
        };
        let now = now_ms();
        let mut start = first;
        while start < first + n {
            let end = (start + CHUNK).min(first + n) - 1;
            on_write!(self, p => sqlx::query(sql).bind(start).bind(end).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
            start = end + 1;
        }
        Ok(())
    }
}

/// A slice's outcomes as columns, ready to bind as arrays.
struct LedgerWrite {
    pid: Vec<i64>,
    /// The new state.
    st: Vec<i16>,
    /// Added to `attempts`.
    inc: Vec<i16>,
    /// Whether `account` is set (to `acc`, maybe NULL) or left as it is.
    set_acc: Vec<bool>,
    acc: Vec<Option<i16>>,
    not_before: Vec<Option<i64>>,
    /// A retry caused by a provider throttle (counted in `blasts.throttled`).
    throttled: Vec<bool>,
    mid_pid: Vec<i64>,
    mid: Vec<Vec<u8>>,
    fail_pid: Vec<i64>,
    fail_reason: Vec<String>,
}

impl LedgerWrite {
    fn new(outcomes: &[(PersonId, Outcome)]) -> Self {
        let n = outcomes.len();
        let mut w = Self {
            pid: Vec::with_capacity(n),
            st: Vec::with_capacity(n),
            inc: Vec::with_capacity(n),
            set_acc: Vec::with_capacity(n),
            acc: Vec::with_capacity(n),
            not_before: Vec::with_capacity(n),
            throttled: Vec::with_capacity(n),
            mid_pid: Vec::new(),
            mid: Vec::new(),
            fail_pid: Vec::new(),
            fail_reason: Vec::new(),
        };
        let small = |a: i32| i16::try_from(a).ok();
        for (pid, o) in outcomes {
            // (state, attempts added, account: Some(set to) or None (keep), not_before, throttled)
            let (st, inc, acc, nb, thr) = match o {
                Outcome::Sent {
                    account,
                    message_id,
                } => {
                    if let Some(m) = message_id {
                        w.mid_pid.push(pid.0);
                        w.mid.push(compact_message_id(m));
                    }
                    (RecipientState::Sent, 1, Some(small(*account)), None, false)
                }
                Outcome::Failed { account, reason } => {
                    w.fail_pid.push(pid.0);
                    w.fail_reason.push(reason.clone());
                    (
                        RecipientState::Failed,
                        1,
                        Some(account.and_then(small)),
                        None,
                        false,
                    )
                }
                Outcome::Ambiguous { account, reason } => {
                    w.fail_pid.push(pid.0);
                    w.fail_reason.push(reason.clone());
                    (
                        RecipientState::Ambiguous,
                        1,
                        Some(small(*account)),
                        None,
                        false,
                    )
                }
                Outcome::Retry {
                    not_before,
                    attempt,
                    throttled,
                } => (
                    RecipientState::Pending,
                    i16::from(*attempt),
                    None,
                    Some(*not_before),
                    *throttled,
                ),
                Outcome::Skipped => (RecipientState::Skipped, 0, None, None, false),
            };
            w.pid.push(pid.0);
            w.st.push(st.code());
            w.inc.push(inc);
            w.set_acc.push(acc.is_some());
            w.acc.push(acc.flatten());
            w.not_before.push(nb);
            w.throttled.push(thr);
        }
        w
    }

    /// The rows grouped by what they become (state, attempts added, whether and how
    /// the account is set, not_before): one UPDATE per group on SQLite, whose
    /// `IN (json_each)` plans as primary-key lookups. A slice has few groups (its sends
    /// share the account; its retries share a time).
    #[allow(clippy::type_complexity)]
    fn sqlite_groups(&self) -> Vec<((i16, i16, bool, Option<i16>, Option<i64>), Vec<i64>)> {
        let mut groups: std::collections::BTreeMap<_, Vec<i64>> = std::collections::BTreeMap::new();
        for i in 0..self.pid.len() {
            let key = (
                self.st[i],
                self.inc[i],
                self.set_acc[i],
                self.acc[i],
                self.not_before[i],
            );
            groups.entry(key).or_default().push(self.pid[i]);
        }
        groups.into_iter().collect()
    }
}

/// A claim on PostgreSQL in one statement: pick due rows in person order, skipping
/// rows another claim holds (`SKIP LOCKED`), lease them (the guard repeated; the ids
/// bound as an array so that the plan is an index lookup whatever the statistics say),
/// count takeovers of expired leases on the blast, and return each leased row with what
/// rendering needs (`was`: the state before, 1 for a takeover). A person deleted since
/// comes back without an address, so the caller skips them.
const CLAIM_PG: &str = "WITH picked AS ( \
      SELECT person_id, state FROM blast_recipients WHERE blast_id = $1 AND person_id > $2 \
        AND ((state = 0 AND (not_before IS NULL OR not_before <= $3)) OR (state = 1 AND not_before < $3)) \
      ORDER BY person_id LIMIT $4 FOR UPDATE SKIP LOCKED \
    ), moved AS ( \
      UPDATE blast_recipients r SET state = 1, not_before = $5 \
      WHERE r.blast_id = $1 AND r.person_id = ANY(ARRAY(SELECT person_id FROM picked)) \
        AND ((r.state = 0 AND (r.not_before IS NULL OR r.not_before <= $3)) OR (r.state = 1 AND r.not_before < $3)) \
      RETURNING r.person_id, r.attempts \
    ), bump AS ( \
      UPDATE blasts SET reclaimed = reclaimed + (SELECT COUNT(*) FROM picked WHERE state = 1), updated_at = $3 \
      WHERE id = $1 AND EXISTS (SELECT 1 FROM picked WHERE state = 1) \
    ) \
    SELECT m.person_id AS id, CAST(m.attempts AS BIGINT) AS attempts, k.state AS was, \
      p.email, p.first_name, p.last_name, p.city, p.state, p.zip, COALESCE(p.custom, '{}') AS custom, \
      COALESCE(p.email_consent, 'unknown') AS email_consent, \
      EXISTS (SELECT 1 FROM suppressions s WHERE s.email = p.email) AS suppressed \
    FROM moved m JOIN picked k ON k.person_id = m.person_id LEFT JOIN people p ON p.id = m.person_id \
    ORDER BY m.person_id";

/// One statement on PostgreSQL: move the slice's rows (only those still `sending`
/// under this lease), keep message ids and failure reasons of the rows that moved, and
/// bump the blast's counters by what moved.
const RECORD_PG: &str = "WITH v AS ( \
      SELECT * FROM unnest($3::BIGINT[], $4::SMALLINT[], $5::SMALLINT[], $6::BOOLEAN[], $7::SMALLINT[], $8::BIGINT[], $9::BOOLEAN[]) \
        AS v(pid, st, inc, sa, acc, nb, thr) \
    ), moved AS ( \
      UPDATE blast_recipients r SET state = v.st, attempts = r.attempts + v.inc, \
        account = CASE WHEN v.sa THEN v.acc ELSE r.account END, not_before = v.nb \
      FROM v WHERE r.blast_id = $1 AND r.person_id = v.pid AND r.state = 1 AND r.not_before = $2 \
      RETURNING r.person_id AS pid, v.st, v.thr \
    ), mids AS ( \
      INSERT INTO blast_message_ids (blast_id, person_id, message_id) \
      SELECT $1, m.pid, m.mid FROM unnest($10::BIGINT[], $11::BYTEA[]) AS m(pid, mid) \
      WHERE m.pid IN (SELECT pid FROM moved) AND EXISTS (SELECT 1 FROM blasts WHERE id = $1 AND keep_message_ids) \
      ON CONFLICT (blast_id, person_id) DO UPDATE SET message_id = excluded.message_id \
    ), fails AS ( \
      INSERT INTO blast_failures (blast_id, person_id, reason, at) \
      SELECT $1, f.pid, f.reason, $12 FROM unnest($13::BIGINT[], $14::TEXT[]) AS f(pid, reason) \
      WHERE f.pid IN (SELECT pid FROM moved) \
      ON CONFLICT (blast_id, person_id) DO UPDATE SET reason = excluded.reason, at = excluded.at \
    ), c AS ( \
      SELECT COUNT(*) FILTER (WHERE st = 2) AS sent, COUNT(*) FILTER (WHERE st = 3) AS failed, \
        COUNT(*) FILTER (WHERE st = 4) AS ambiguous, COUNT(*) FILTER (WHERE st = 5) AS skipped, \
        COUNT(*) FILTER (WHERE st = 0) AS retried, COUNT(*) FILTER (WHERE st = 0 AND thr) AS throttled \
      FROM moved \
    ) \
    UPDATE blasts SET sent = blasts.sent + c.sent, failed = blasts.failed + c.failed, \
      ambiguous = blasts.ambiguous + c.ambiguous, skipped = blasts.skipped + c.skipped, \
      throttled = blasts.throttled + c.throttled, updated_at = $12 \
    FROM c WHERE blasts.id = $1 \
    RETURNING c.sent, c.failed, c.ambiguous, c.skipped, c.retried";

/// One group of a slice's rows on SQLite (see `LedgerWrite::sqlite_groups`), under the
/// same forward-only lease guard; returns the rows that moved.
const RECORD_SQLITE: &str = "UPDATE blast_recipients SET state = $1, attempts = attempts + $2, \
      account = CASE WHEN $3 THEN $4 ELSE account END, not_before = $5 \
    WHERE blast_id = $6 AND person_id IN (SELECT value FROM json_each($7)) AND state = 1 AND not_before = $8 \
    RETURNING person_id";

fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

/// A subquery yielding the ids in parameter `$k`, bound as one JSON array text.
fn in_list(k: usize, backend: Backend) -> String {
    match backend {
        Backend::Postgres => format!("SELECT (jsonb_array_elements_text(${k}::jsonb))::BIGINT"),
        Backend::Sqlite => format!("SELECT value FROM json_each(${k})"),
    }
}

fn json_ids(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_compact_and_expand() {
        for id in [
            "0100018f3b5c1d2e-8c3e4f5a-1b2c-4d5e-9f0a-123456789abc-000000",
            "0100000000000001-fake-ses-000000",
            "<abc@host>",
            "",
            "ABCDEF-0f",
            "odd-length-abc",
            "ünïcode",
        ] {
            let c = compact_message_id(id);
            assert_eq!(expand_message_id(&c), id, "{id}");
        }
        let ses = "0100018f3b5c1d2e-8c3e4f5a-1b2c-4d5e-9f0a-123456789abc-000000";
        assert_eq!(compact_message_id(ses).len(), 40);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            RecipientState::Pending,
            RecipientState::Sending,
            RecipientState::Sent,
            RecipientState::Failed,
            RecipientState::Ambiguous,
            RecipientState::Skipped,
        ] {
            assert_eq!(RecipientState::from_code(i64::from(s.code())).unwrap(), s);
        }
        assert!(RecipientState::from_code(9).is_err());
    }

    use crate::test_support::TestDb;

    /// Fills the ledger with `N` final rows of one blast, person ids in the range a
    /// 60M-person campaign uses, and measures the table's bytes per row.
    async fn ledger_bytes_per_recipient(db: TestDb) {
        const N: i64 = 200_000;
        let store = &db.store;
        let sql = match store.backend() {
            Backend::Sqlite => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1) \
                INSERT INTO blast_recipients (blast_id, person_id, state, attempts) SELECT 7, 30000000 + x, 0, 0 FROM c",
            // Written in their final state at once: updating them and then compacting
            // with VACUUM FULL measured the same bytes, except while any other
            // transaction of the cluster (a neighbouring test) held an older snapshot,
            // which keeps every old row version alive through the VACUUM.
            Backend::Postgres => "INSERT INTO blast_recipients (blast_id, person_id, state, attempts, account) \
                SELECT 7, 30000000 + g, 2, 1, 3 FROM generate_series(1, $1::BIGINT) g",
        };
        on_write!(store, p => sqlx::query(sql).bind(N).execute(p).await.map(|r| r.rows_affected()))
            .unwrap();
        if store.backend() == Backend::Sqlite {
            // The path every row takes: claimed under a lease, then sent.
            on_write!(store, p => sqlx::query("UPDATE blast_recipients SET state = 1, not_before = 1700000000000").execute(p).await.map(|r| r.rows_affected())).unwrap();
            on_write!(store, p => sqlx::query("UPDATE blast_recipients SET state = 2, attempts = 1, account = 3, not_before = NULL").execute(p).await.map(|r| r.rows_affected())).unwrap();
        }
        let (bytes, rows) = store.ledger_bytes().await.unwrap();
        assert_eq!(rows, N);
        let per = bytes as f64 / rows as f64;
        eprintln!(
            "ledger on {}: {bytes} bytes for {rows} recipients = {per:.1} bytes/recipient",
            store.backend().as_str()
        );
        match store.backend() {
            Backend::Sqlite => assert!(per <= 40.0, "{per}"),
            // Tuple header and item pointer (28 bytes) plus the key index: see the module doc.
            Backend::Postgres => assert!(per <= 100.0, "{per}"),
        }
    }

    crate::both_backends!(ledger_bytes_per_recipient);
}
