//! What happens to mail after the provider took it: bounces, complaints, deliveries.
//!
//! Feedback arrives at least once and in any order (SES notifications through SNS,
//! delivery status notifications). Each payload is stored first, keyed by its source's
//! own id ([`Store::receive_feedback`]); a payload already processed is a no-op. Its
//! parsed events are then applied in one transaction ([`Store::apply_feedback`]), which
//! also marks the payload processed, so a crash between the two leaves it `received`
//! and the next delivery of the same payload (or [`Store::unprocessed_feedback`])
//! applies it.
//!
//! # Effects, and why any order gives the same state
//!
//! Each event is a row in `mail_feedback_events`, unique per (address, kind, event key):
//! an event seen twice (a replay, or the same bounce through two topics) is applied
//! once. What an event does:
//!
//! - a **complaint** suppresses the address and sets the owner's email consent to
//!   `complained` (from anything else);
//! - a **permanent bounce** suppresses the address and sets the consent of the person
//!   whose primary address it is to `bounced` (unless `bounced` or `complained`);
//! - a **transient bounce** is counted; when some window of [`TransientPolicy::window_ms`]
//!   holds [`TransientPolicy::threshold`] of them for one address, the address is
//!   suppressed;
//! - deliveries and rejects are recorded only (the blast page counts them).
//!
//! Consent and suppression reasons move only up a fixed rank (complaint > permanent
//! bounce > transient bounces > anything else), and among equal ranks the earliest
//! event's time wins, so the final state does not depend on arrival order. Blast claims
//! read consent and suppressions, so a running blast skips such a person from its next
//! slice on.
//!
//! # Finding the blast
//!
//! An event names the provider's message id; when the blast kept message ids the
//! ledger's `blast_message_ids` says which blast and person it was (indexed by
//! migration 10). The caller may also pass the (blast, person) named by the message's
//! signed unsubscribe token, when the notification carried the original headers.

use crate::blasts::{compact_message_id, BlastId};
use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use narwhal_domain::{Email, PersonId};
use serde::Serialize;
use sqlx::Row;

/// A stored feedback payload's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct FeedbackId(pub i64);

/// What an event says happened to one message for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    /// A permanent bounce: the address does not take mail.
    Bounce,
    /// A transient (or undetermined) bounce: counted, suppresses past a threshold.
    TransientBounce,
    /// The recipient marked it as spam.
    Complaint,
    /// Delivered to the recipient's server.
    Delivery,
    /// The provider refused to send it (SES `Reject`: a virus, for example).
    Reject,
}

impl FeedbackKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bounce => "bounce",
            Self::TransientBounce => "transient_bounce",
            Self::Complaint => "complaint",
            Self::Delivery => "delivery",
            Self::Reject => "reject",
        }
    }
}

/// One parsed event, ready to apply.
#[derive(Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    pub kind: FeedbackKind,
    /// The recipient it is about.
    pub email: Email,
    /// The provider's message id (SES `mail.messageId`), when known.
    pub message_id: Option<String>,
    /// Makes the event unique for its address and kind (the message id, else the
    /// provider's feedback id, else the payload's key).
    pub event_key: String,
    /// When it happened, by the provider's clock (ms).
    pub at: i64,
    /// The (blast, person) the message's signed unsubscribe token names, if seen.
    pub token: Option<(BlastId, PersonId)>,
    /// A short reason safe to show staff (bounce type, status code, diagnostic).
    pub detail: String,
}

impl std::fmt::Debug for FeedbackEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackEvent")
            .field("kind", &self.kind)
            .field("email", &self.email)
            .field("message_id", &self.message_id)
            .field("at", &self.at)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// When transient bounces suppress an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransientPolicy {
    /// How many transient bounces ...
    pub threshold: u32,
    /// ... within this many ms.
    pub window_ms: i64,
}

impl Default for TransientPolicy {
    /// 3 in 7 days.
    fn default() -> Self {
        Self {
            threshold: 3,
            window_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// Whether a received payload still needs processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackState {
    /// Stored, not yet (fully) processed.
    Received,
    /// Its events were applied.
    Processed,
    /// It could not be used (the note says why).
    Rejected,
}

impl FeedbackState {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "received" => Self::Received,
            "processed" => Self::Processed,
            "rejected" => Self::Rejected,
            other => return Err(StoreError::Corrupt(format!("feedback state {other:?}"))),
        })
    }
}

/// What [`Store::receive_feedback`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub id: FeedbackId,
    /// The payload's state now (`Received` for a new one).
    pub state: FeedbackState,
    /// False when the same (source, key) was stored before.
    pub new: bool,
}

/// A stored payload.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFeedback {
    pub id: FeedbackId,
    pub source: String,
    pub dedup_key: String,
    pub payload: String,
    pub state: FeedbackState,
    pub note: Option<String>,
    pub received_at: i64,
}

/// What [`Store::apply_feedback`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Events recorded now (not seen before).
    pub recorded: u32,
    /// Events already recorded: ignored.
    pub duplicates: u32,
    /// People whose email consent changed.
    pub consent_changed: u32,
    /// Addresses newly suppressed (or whose reason went up a rank).
    pub suppressed: u32,
    /// Events matched to a blast's ledger.
    pub matched_blast: u32,
}

/// Feedback counts of one blast (distinct people per kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlastFeedback {
    pub bounced: i64,
    pub transient_bounced: i64,
    pub complained: i64,
    pub delivered: i64,
    pub rejected: i64,
}

/// One account's share of a blast's ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountShare {
    /// The account's configured name (`None`: not routed to any account yet).
    pub account: Option<String>,
    pub sent: i64,
    pub failed: i64,
    pub ambiguous: i64,
    /// Pending or in flight with this account's last attempt.
    pub unfinished: i64,
}

/// The rank of a suppression reason: a reason is only replaced by a higher one.
const RANK_SQL: &str = "CASE WHEN {r} LIKE 'complaint%' THEN 3 WHEN {r} LIKE 'bounce%' THEN 2 WHEN {r} LIKE 'transient%' THEN 1 ELSE 0 END";

fn rank(col: &str) -> String {
    RANK_SQL.replace("{r}", col)
}

impl Store {
    /// Stores a payload durably before anything is done with it. The same (source,
    /// key) again stores nothing and reports the first one's id and state.
    pub async fn receive_feedback(
        &self,
        source: &str,
        key: &str,
        payload: &str,
    ) -> Result<Received> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let inserted: Option<i64> = sqlx::query_scalar("INSERT INTO mail_feedback (source, dedup_key, payload, received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (source, dedup_key) DO NOTHING RETURNING id")
                .bind(source).bind(key).bind(payload).bind(now).fetch_optional(&mut *tx).await?;
            let out = match inserted {
                Some(id) => Received { id: FeedbackId(id), state: FeedbackState::Received, new: true },
                None => {
                    let r = sqlx::query("SELECT id, state FROM mail_feedback WHERE source = $1 AND dedup_key = $2")
                        .bind(source).bind(key).fetch_one(&mut *tx).await?;
                    let state: String = r.try_get("state")?;
                    Received { id: FeedbackId(r.try_get("id")?), state: FeedbackState::parse(&state)?, new: false }
                }
            };
            tx.commit().await?;
            Ok(out)
        })
    }

    /// A stored payload.
    pub async fn feedback(&self, id: FeedbackId) -> Result<StoredFeedback> {
        on_read!(self, p => {
            let r = sqlx::query("SELECT id, source, dedup_key, payload, state, note, received_at FROM mail_feedback WHERE id = $1")
                .bind(id.0).fetch_optional(p).await?.ok_or(StoreError::NotFound("feedback"))?;
            feedback_from(&r)
        })
    }

    /// Payloads stored but not processed (oldest first): for a sweeper after a crash.
    pub async fn unprocessed_feedback(&self, limit: i64) -> Result<Vec<StoredFeedback>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT id, source, dedup_key, payload, state, note, received_at FROM mail_feedback WHERE state = 'received' ORDER BY id LIMIT $1")
                .bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(feedback_from).collect()
        })
    }

    /// Marks a payload processed without events (a subscription confirmation, an event
    /// type that changes nothing) or rejected, with a note.
    pub async fn finish_feedback(
        &self,
        id: FeedbackId,
        state: FeedbackState,
        note: &str,
    ) -> Result<()> {
        let st = match state {
            FeedbackState::Received => {
                return Err(StoreError::Invalid(
                    "finish a payload as processed or rejected".into(),
                ))
            }
            FeedbackState::Processed => "processed",
            FeedbackState::Rejected => "rejected",
        };
        on_write!(self, p => sqlx::query("UPDATE mail_feedback SET state = $1, note = $2, processed_at = $3 WHERE id = $4")
            .bind(st).bind(note).bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Applies a payload's events and marks it processed, in one transaction. Events
    /// already recorded (by this payload or another) change nothing.
    pub async fn apply_feedback(
        &self,
        id: FeedbackId,
        events: &[FeedbackEvent],
        policy: TransientPolicy,
    ) -> Result<Applied> {
        let now = now_ms();
        let mut applied = Applied::default();
        let suppress_sql = format!(
            "INSERT INTO suppressions (email, reason, at) VALUES ($1, $2, $3) ON CONFLICT (email) DO UPDATE SET reason = excluded.reason, at = excluded.at \
             WHERE {old} < {new} OR ({old} = {new} AND suppressions.at > excluded.at)",
            old = rank("suppressions.reason"),
            new = rank("excluded.reason"),
        );
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            for e in events {
                let email = e.email.as_str();
                // Which blast and person the message was, by the ledger or the token.
                let mut ledger: Option<(i64, i64)> = None;
                if let Some(m) = &e.message_id {
                    let r = sqlx::query("SELECT CAST(blast_id AS BIGINT) AS b, person_id FROM blast_message_ids WHERE message_id = $1 LIMIT 1")
                        .bind(compact_message_id(m)).fetch_optional(&mut *tx).await?;
                    if let Some(r) = r {
                        ledger = Some((r.try_get("b")?, r.try_get("person_id")?));
                    }
                }
                if ledger.is_none() {
                    ledger = e.token.map(|(b, p)| (b.0, p.0));
                }
                let owner: Option<(i64, Option<String>)> = {
                    let r = sqlx::query("SELECT p.id, p.email FROM person_emails e JOIN people p ON p.id = e.person_id WHERE e.email = $1")
                        .bind(email).fetch_optional(&mut *tx).await?;
                    match r { Some(r) => Some((r.try_get("id")?, r.try_get("email")?)), None => None }
                };
                let person = owner.as_ref().map(|o| o.0).or(ledger.map(|l| l.1));
                let inserted = sqlx::query("INSERT INTO mail_feedback_events (feedback_id, email, kind, event_key, at, blast_id, person_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (email, kind, event_key) DO NOTHING")
                    .bind(id.0).bind(email).bind(e.kind.as_str()).bind(&e.event_key).bind(e.at)
                    .bind(ledger.map(|l| l.0)).bind(person).bind(&e.detail)
                    .execute(&mut *tx).await?.rows_affected();
                if inserted == 0 {
                    applied.duplicates += 1;
                    continue;
                }
                applied.recorded += 1;
                if ledger.is_some() {
                    applied.matched_blast += 1;
                }
                let reason = match e.kind {
                    FeedbackKind::Complaint => Some(format!("complaint: {}", e.detail)),
                    FeedbackKind::Bounce => Some(format!("bounce: {}", e.detail)),
                    FeedbackKind::TransientBounce => {
                        let lo = e.at.saturating_sub(policy.window_ms);
                        let hi = e.at.saturating_add(policy.window_ms);
                        let times: Vec<i64> = sqlx::query_scalar("SELECT at FROM mail_feedback_events WHERE email = $1 AND kind = $2 AND at >= $3 AND at <= $4 ORDER BY at")
                            .bind(email).bind(FeedbackKind::TransientBounce.as_str()).bind(lo).bind(hi).fetch_all(&mut *tx).await?;
                        window_reached(&times, policy).then(|| {
                            format!("transient bounces: {} within {} days", policy.threshold, policy.window_ms / 86_400_000)
                        })
                    }
                    FeedbackKind::Delivery | FeedbackKind::Reject => None,
                };
                if let Some(reason) = reason {
                    applied.suppressed += sqlx::query(&suppress_sql).bind(email).bind(&reason).bind(e.at).execute(&mut *tx).await?.rows_affected() as u32;
                }
                let (to, action) = match e.kind {
                    FeedbackKind::Complaint => ("complained", "person.complained"),
                    FeedbackKind::Bounce => ("bounced", "person.bounced"),
                    _ => continue,
                };
                let Some((pid, primary)) = owner else { continue };
                // A bounce is about one address: it changes consent only when that is
                // the address we send to. A complaint is about the person.
                if e.kind == FeedbackKind::Bounce && primary.as_deref() != Some(email) {
                    continue;
                }
                let guard = if e.kind == FeedbackKind::Complaint { "('complained')" } else { "('bounced', 'complained')" };
                let n = sqlx::query(&format!("UPDATE people SET email_consent = $1, version = version + 1, updated_at = $2 WHERE id = $3 AND email_consent NOT IN {guard}"))
                    .bind(to).bind(now).bind(pid).execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    applied.consent_changed += 1;
                    let entry = crate::audit::AuditEntry::new(
                        "mail-feedback",
                        action,
                        "person",
                        pid,
                        serde_json::json!({"feedback": id.0, "blast": ledger.map(|l| l.0), "kind": e.kind.as_str()}),
                    );
                    audit_insert!(&mut *tx, entry, &entry.entity_id, now);
                }
            }
            let note = format!("{} events, {} duplicates", applied.recorded, applied.duplicates);
            sqlx::query("UPDATE mail_feedback SET state = 'processed', note = $1, processed_at = $2 WHERE id = $3")
                .bind(note).bind(now).bind(id.0).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(applied)
        })
    }

    /// Distinct people per feedback kind for one blast.
    pub async fn blast_feedback(&self, blast: BlastId) -> Result<BlastFeedback> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT kind, COUNT(DISTINCT COALESCE(person_id, -id)) AS n FROM mail_feedback_events WHERE blast_id = $1 GROUP BY kind")
                .bind(blast.0).fetch_all(p).await?;
            let mut out = BlastFeedback::default();
            for r in &rows {
                let kind: String = r.try_get("kind")?;
                let n: i64 = r.try_get("n")?;
                match kind.as_str() {
                    "bounce" => out.bounced = n,
                    "transient_bounce" => out.transient_bounced = n,
                    "complaint" => out.complained = n,
                    "delivery" => out.delivered = n,
                    "reject" => out.rejected = n,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// A blast's recipients by the account of their last attempt, and state. Reads
    /// the blast's whole ledger: one range scan of its primary key.
    pub async fn blast_accounts(&self, blast: BlastId) -> Result<Vec<AccountShare>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT a.name, CAST(r.state AS BIGINT) AS s, COUNT(*) AS n FROM blast_recipients r \
                LEFT JOIN mail_accounts a ON a.id = r.account WHERE r.blast_id = $1 GROUP BY a.name, r.state ORDER BY a.name")
                .bind(blast.0).fetch_all(p).await?;
            let mut out: Vec<AccountShare> = Vec::new();
            for r in &rows {
                let name: Option<String> = r.try_get("name")?;
                let s: i64 = r.try_get("s")?;
                let n: i64 = r.try_get("n")?;
                let i = match out.iter().position(|a| a.account == name) {
                    Some(i) => i,
                    None => {
                        out.push(AccountShare { account: name, ..Default::default() });
                        out.len() - 1
                    }
                };
                let a = &mut out[i];
                match s {
                    2 => a.sent += n,
                    3 => a.failed += n,
                    4 => a.ambiguous += n,
                    0 | 1 => a.unfinished += n,
                    _ => {}
                }
            }
            Ok(out)
        })
    }

    /// The recorded events about one address, oldest first (for staff and tests).
    pub async fn feedback_events_for(
        &self,
        email: &Email,
    ) -> Result<Vec<(FeedbackKind, i64, Option<BlastId>)>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT kind, at, blast_id FROM mail_feedback_events WHERE email = $1 ORDER BY at, id")
                .bind(email.as_str()).fetch_all(p).await?;
            rows.iter().map(|r| {
                let kind: String = r.try_get("kind")?;
                let kind = match kind.as_str() {
                    "bounce" => FeedbackKind::Bounce,
                    "transient_bounce" => FeedbackKind::TransientBounce,
                    "complaint" => FeedbackKind::Complaint,
                    "delivery" => FeedbackKind::Delivery,
                    "reject" => FeedbackKind::Reject,
                    other => return Err(StoreError::Corrupt(format!("feedback kind {other:?}"))),
                };
                let b: Option<i64> = r.try_get("blast_id")?;
                Ok((kind, r.try_get("at")?, b.map(BlastId)))
            }).collect()
        })
    }

    /// The suppression reason of an address, if suppressed.
    pub async fn suppression_reason(&self, email: &Email) -> Result<Option<String>> {
        on_read!(self, p => Ok(sqlx::query_scalar("SELECT reason FROM suppressions WHERE email = $1").bind(email.as_str()).fetch_optional(p).await?))
    }
}

fn feedback_from(r: &impl RowLike) -> Result<StoredFeedback> {
    r.stored()
}

/// Decoding a `mail_feedback` row from either backend's row type.
trait RowLike {
    fn stored(&self) -> Result<StoredFeedback>;
}

macro_rules! row_like {
    ($t:ty) => {
        impl RowLike for $t {
            fn stored(&self) -> Result<StoredFeedback> {
                let state: String = self.try_get("state")?;
                Ok(StoredFeedback {
                    id: FeedbackId(self.try_get("id")?),
                    source: self.try_get("source")?,
                    dedup_key: self.try_get("dedup_key")?,
                    payload: self.try_get("payload")?,
                    state: FeedbackState::parse(&state)?,
                    note: self.try_get("note")?,
                    received_at: self.try_get("received_at")?,
                })
            }
        }
    };
}
row_like!(sqlx::sqlite::SqliteRow);
row_like!(sqlx::postgres::PgRow);

/// Whether some window of `policy.window_ms` holds `policy.threshold` of these sorted
/// times.
pub fn window_reached(sorted: &[i64], policy: TransientPolicy) -> bool {
    let n = policy.threshold.max(1) as usize;
    sorted.len() >= n
        && sorted
            .windows(n)
            .any(|w| w[n - 1] - w[0] <= policy.window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let p = TransientPolicy {
            threshold: 3,
            window_ms: 10,
        };
        assert!(!window_reached(&[0, 5], p));
        assert!(window_reached(&[0, 5, 10], p));
        assert!(!window_reached(&[0, 6, 11, 22], p));
        assert!(window_reached(&[0, 6, 11, 12, 30], p));
        assert!(window_reached(
            &[7],
            TransientPolicy {
                threshold: 1,
                window_ms: 0
            }
        ));
    }
}
