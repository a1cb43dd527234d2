//! Reconciliation runs: what `narwhal donations reconcile` found, kept so the console
//! can show the latest run. A run and its items are written in one transaction.

use crate::error::Result;
use crate::{now_ms, Store};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One classified payment (or donation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconItem {
    /// `match`, `mismatch`, `missing` or `duplicate`.
    pub class: String,
    /// The processor's configured name.
    pub processor: String,
    /// The processor's payment id, when the processor has one.
    pub processor_ref: Option<String>,
    /// Our donation's public id, when we have one.
    pub donation: Option<String>,
    /// What we hold, net of refunds, in cents.
    pub our_cents: Option<i64>,
    /// What the processor holds, net of refunds, in cents.
    pub their_cents: Option<i64>,
    /// Our donation's state.
    pub our_state: Option<String>,
    /// The processor's status.
    pub their_status: Option<String>,
    /// Why it is in its class, for staff.
    pub detail: String,
}

/// A run's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconRun {
    /// The row id (0 before it is saved).
    pub id: i64,
    /// Payments created at or after this time were compared (ms).
    pub since_ms: i64,
    /// The processors asked.
    pub processors: Vec<String>,
    pub matched: i64,
    pub mismatched: i64,
    pub missing: i64,
    pub duplicate: i64,
    /// Processors that could not be listed, with why.
    pub errors: Vec<String>,
    pub started_at: i64,
    pub finished_at: i64,
}

impl Store {
    /// Saves a run and its items; returns the run's id.
    pub async fn save_reconciliation(&self, run: &ReconRun, items: &[ReconItem]) -> Result<i64> {
        let processors = serde_json::to_string(&run.processors)?;
        let errors = serde_json::to_string(&run.errors)?;
        let finished = if run.finished_at > 0 {
            run.finished_at
        } else {
            now_ms()
        };
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO reconciliation_runs (since_ms, processors, matched, mismatched, missing, duplicate, errors, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(run.since_ms)
            .bind(&processors)
            .bind(run.matched)
            .bind(run.mismatched)
            .bind(run.missing)
            .bind(run.duplicate)
            .bind(&errors)
            .bind(run.started_at)
            .bind(finished)
            .fetch_one(&mut *tx)
            .await?;
            for i in items {
                sqlx::query(
                    "INSERT INTO reconciliation_items (run_id, class, processor, processor_ref, donation, our_cents, their_cents, our_state, their_status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(id)
                .bind(&i.class)
                .bind(&i.processor)
                .bind(&i.processor_ref)
                .bind(&i.donation)
                .bind(i.our_cents)
                .bind(i.their_cents)
                .bind(&i.our_state)
                .bind(&i.their_status)
                .bind(&i.detail)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// The latest run with its items that are not `match` (the ones staff must look
    /// at), or `None` before the first run.
    pub async fn latest_reconciliation(&self) -> Result<Option<(ReconRun, Vec<ReconItem>)>> {
        on_read!(self, p => {
            let row = sqlx::query("SELECT id, since_ms, processors, matched, mismatched, missing, duplicate, errors, started_at, finished_at FROM reconciliation_runs ORDER BY id DESC LIMIT 1")
                .fetch_optional(p)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let processors: String = r.try_get("processors")?;
            let errors: String = r.try_get("errors")?;
            let run = ReconRun {
                id: r.try_get("id")?,
                since_ms: r.try_get("since_ms")?,
                processors: serde_json::from_str(&processors)?,
                matched: r.try_get("matched")?,
                mismatched: r.try_get("mismatched")?,
                missing: r.try_get("missing")?,
                duplicate: r.try_get("duplicate")?,
                errors: serde_json::from_str(&errors)?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
            };
            let rows = sqlx::query("SELECT class, processor, processor_ref, donation, our_cents, their_cents, our_state, their_status, detail FROM reconciliation_items WHERE run_id = $1 AND class <> 'match' ORDER BY id")
                .bind(run.id)
                .fetch_all(p)
                .await?;
            let items = rows
                .into_iter()
                .map(|r| {
                    Ok(ReconItem {
                        class: r.try_get("class")?,
                        processor: r.try_get("processor")?,
                        processor_ref: r.try_get("processor_ref")?,
                        donation: r.try_get("donation")?,
                        our_cents: r.try_get("our_cents")?,
                        their_cents: r.try_get("their_cents")?,
                        our_state: r.try_get("our_state")?,
                        their_status: r.try_get("their_status")?,
                        detail: r.try_get("detail")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some((run, items)))
        })
    }
}
