//! Stored idempotent requests of the Stripe-compatible API, and its PaymentIntents.
//!
//! Idempotency as Stripe does it, per API key (`scope`): the first request with a key
//! writes an `in_flight` row with a hash of its parameters **before** it does anything;
//! its response, errors included, is then saved on the row and replayed to every
//! later request with that key and the same parameters. The same key with other
//! parameters is refused, and a request arriving while the first is still running is
//! told so (the caller answers 409). Rows are kept for the life of the donation.
//!
//! A row left `in_flight` by a node that died is taken over after `stale_after_ms`:
//! what the first request did is itself idempotent (an intent's id is derived from its
//! key, a confirmation is a donation under its own unique key), so running it again
//! replays rather than repeats it.

use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use serde::Serialize;
use sqlx::Row;

/// What [`Store::idempotency_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemBegin {
    /// The key is ours now (new, or taken over from a dead request): go ahead.
    Fresh,
    /// A request with this key is still running.
    InFlight,
    /// The key was used with other parameters.
    Mismatch,
    /// The saved first response: replay it.
    Done {
        /// Its HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// A PaymentIntent of the compatible API, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct CompatIntentRow {
    /// `pi_...`.
    pub id: String,
    /// The API key (caller) that created it; only that caller sees it.
    pub scope: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The create parameters (payment method, metadata, receipt email, description),
    /// as JSON. Checked for card numbers before they are stored.
    #[serde(skip)]
    pub params: serde_json::Value,
    /// How many confirmations have begun; confirmation `n` is the donation with the
    /// idempotency key `compat:{id}:{n}`.
    pub confirmations: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Claims `key` for a request whose parameters hash to `request_hash` (see the
    /// module documentation).
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        stale_after_ms: i64,
    ) -> Result<IdemBegin> {
        let now = now_ms();
        on_write!(self, p => {
            let inserted = sqlx::query(
                "INSERT INTO api_idempotency (scope, key, request_hash, state, created_at) VALUES ($1, $2, $3, 'in_flight', $4) ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(request_hash)
            .bind(now)
            .execute(p)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(IdemBegin::Fresh);
            }
            let row = sqlx::query("SELECT request_hash, state, status, body, created_at FROM api_idempotency WHERE scope = $1 AND key = $2")
                .bind(scope)
                .bind(key)
                .fetch_optional(p)
                .await?;
            let Some(row) = row else {
                // Released between our insert and read: the caller may simply retry.
                return Ok(IdemBegin::InFlight);
            };
            let hash: String = row.try_get("request_hash")?;
            let state: String = row.try_get("state")?;
            if hash != request_hash {
                return Ok(IdemBegin::Mismatch);
            }
            if state == "done" {
                let status: Option<i32> = row.try_get("status")?;
                let body: Option<String> = row.try_get("body")?;
                let status = status
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| StoreError::Corrupt("idempotent response without a status".into()))?;
                return Ok(IdemBegin::Done { status, body: body.unwrap_or_default() });
            }
            let created: i64 = row.try_get("created_at")?;
            if created < now - stale_after_ms {
                let taken = sqlx::query(
                    "UPDATE api_idempotency SET created_at = $1 WHERE scope = $2 AND key = $3 AND state = 'in_flight' AND created_at = $4",
                )
                .bind(now)
                .bind(scope)
                .bind(key)
                .bind(created)
                .execute(p)
                .await?;
                if taken.rows_affected() == 1 {
                    return Ok(IdemBegin::Fresh);
                }
            }
            Ok(IdemBegin::InFlight)
        })
    }

    /// Saves the first response to `key`. `false` if the row was not in flight.
    pub async fn idempotency_finish(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<bool> {
        on_write!(self, p => {
            let r = sqlx::query(
                "UPDATE api_idempotency SET state = 'done', status = $1, body = $2 WHERE scope = $3 AND key = $4 AND state = 'in_flight'",
            )
            .bind(i32::from(status))
            .bind(body)
            .bind(scope)
            .bind(key)
            .execute(p)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Forgets an in-flight key whose request failed on our side before deciding
    /// anything (the database or every processor unreachable for a refund), so that a
    /// retry with the same key runs again instead of replaying our failure.
    pub async fn idempotency_release(&self, scope: &str, key: &str) -> Result<()> {
        on_write!(self, p => {
            sqlx::query("DELETE FROM api_idempotency WHERE scope = $1 AND key = $2 AND state = 'in_flight'")
                .bind(scope)
                .bind(key)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Queues a job that no worker claims before `run_after_ms`: a webhook delivery's
    /// retry after its backoff.
    pub async fn enqueue_job_due(
        &self,
        kind: &str,
        payload: &serde_json::Value,
        run_after_ms: i64,
    ) -> Result<i64> {
        let now = now_ms();
        on_write!(self, p => {
            Ok(sqlx::query_scalar(
                "INSERT INTO jobs (kind, payload, state, run_after, created_at, updated_at) VALUES ($1, $2, 'queued', $3, $4, $4) RETURNING id",
            )
            .bind(kind)
            .bind(payload.to_string())
            .bind(run_after_ms)
            .bind(now)
            .fetch_one(p)
            .await?)
        })
    }

    /// Ids of the compatible API's donations (keys `compat:...`) updated at or after
    /// `since_ms` in a state that calls for an event, oldest first: what the webhook
    /// sweep looks at.
    pub async fn compat_donations_moved_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<i64>> {
        on_read!(self, p => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM donations WHERE channel = 'compat' AND updated_at >= $1 \
                 AND state IN ('succeeded', 'declined', 'failed', 'partially_refunded', 'refunded') \
                 ORDER BY updated_at LIMIT $2",
            )
            .bind(since_ms)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Stores a new intent. `false` if one with this id exists already (its create was
    /// retried: the caller reads and answers that one).
    pub async fn create_compat_intent(
        &self,
        id: &str,
        scope: &str,
        amount_cents: i64,
        currency: &str,
        params: &serde_json::Value,
    ) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let r = sqlx::query(
                "INSERT INTO compat_intents (id, scope, amount_cents, currency, params, confirmations, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(scope)
            .bind(amount_cents)
            .bind(currency)
            .bind(params.to_string())
            .bind(now)
            .execute(p)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// An intent by id.
    pub async fn compat_intent(&self, id: &str) -> Result<Option<CompatIntentRow>> {
        // The writer's view on SQLite: a confirm reads right after the create.
        on_write!(self, p => {
            let row = sqlx::query("SELECT id, scope, amount_cents, currency, params, confirmations, created_at, updated_at FROM compat_intents WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let params: String = r.try_get("params")?;
            Ok(Some(CompatIntentRow {
                id: r.try_get("id")?,
                scope: r.try_get("scope")?,
                amount_cents: r.try_get("amount_cents")?,
                currency: r.try_get("currency")?,
                params: serde_json::from_str(&params)?,
                confirmations: r.try_get("confirmations")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            }))
        })
    }

    /// Moves an intent from confirmation `from` to `to` with (possibly new) params,
    /// durably, before the donation of confirmation `to` is taken. `false` if another
    /// request moved it first.
    pub async fn advance_compat_intent(
        &self,
        id: &str,
        from: i64,
        to: i64,
        params: &serde_json::Value,
    ) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let r = sqlx::query(
                "UPDATE compat_intents SET confirmations = $1, params = $2, updated_at = $3 WHERE id = $4 AND confirmations = $5",
            )
            .bind(to)
            .bind(params.to_string())
            .bind(now)
            .bind(id)
            .bind(from)
            .execute(p)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }
}
