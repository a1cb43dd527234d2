//! Read-only figures about donations for the staff console: money raised per hour and
//! per refcode, donors near their limits, recurring plans. Nothing here writes.

use crate::error::Result;
use crate::Store;
use serde::Serialize;
use sqlx::Row;

/// The states in which a gift counts as money raised.
const RAISED: &str = "('succeeded', 'partially_refunded', 'refunded', 'disputed')";

/// Gifts and cents in one bucket (an hour, a refcode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Raised {
    /// The hour's start (Unix ms) or the refcode (`(none)` for gifts without one).
    pub key: String,
    pub gifts: i64,
    pub cents: i64,
}

/// A donor's total in one period, for the near-the-limit page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DonorTotal {
    pub person_id: i64,
    /// `E:P2026` (election), `C:2026` (cycle), `Y:2026` (year).
    pub period: String,
    pub total_cents: i64,
}

/// A recurring plan as staff see it (no payment data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    pub public_id: String,
    pub person_id: i64,
    pub amount_cents: i64,
    pub every: String,
    pub state: String,
    pub next_charge_at: i64,
    pub ends_at: Option<i64>,
    pub installments: i64,
    pub failures: i64,
}

impl Store {
    /// Money raised per hour since `since_ms`, oldest hour first.
    pub async fn raised_per_hour(&self, since_ms: i64) -> Result<Vec<Raised>> {
        let sql = format!(
            "SELECT (created_at / 3600000) * 3600000 AS h, COUNT(*) AS n, CAST(SUM(amount_cents - refunded_cents) AS BIGINT) AS c \
             FROM donations WHERE created_at >= $1 AND state IN {RAISED} GROUP BY h ORDER BY h"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(since_ms).fetch_all(p).await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Raised {
                        key: r.try_get::<i64, _>("h")?.to_string(),
                        gifts: r.try_get("n")?,
                        cents: r.try_get("c")?,
                    })
                })
                .collect()
        })
    }

    /// Money raised per refcode since `since_ms`, largest first.
    pub async fn raised_per_refcode(&self, since_ms: i64, limit: i64) -> Result<Vec<Raised>> {
        let sql = format!(
            "SELECT COALESCE(refcode, '(none)') AS k, COUNT(*) AS n, CAST(SUM(amount_cents - refunded_cents) AS BIGINT) AS c \
             FROM donations WHERE created_at >= $1 AND state IN {RAISED} GROUP BY k ORDER BY c DESC, k LIMIT $2"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(since_ms).bind(limit).fetch_all(p).await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Raised {
                        key: r.try_get("k")?,
                        gifts: r.try_get("n")?,
                        cents: r.try_get("c")?,
                    })
                })
                .collect()
        })
    }

    /// Donors whose total for an election (`E:` periods) is at least `at_least_cents`,
    /// highest first: over or near the limit.
    pub async fn donors_near_limit(
        &self,
        at_least_cents: i64,
        limit: i64,
    ) -> Result<Vec<DonorTotal>> {
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT person_id, period, total_cents FROM contribution_totals \
                 WHERE period LIKE 'E:%' AND total_cents >= $1 ORDER BY total_cents DESC, person_id LIMIT $2",
            )
            .bind(at_least_cents)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(DonorTotal {
                        person_id: r.try_get("person_id")?,
                        period: r.try_get("period")?,
                        total_cents: r.try_get("total_cents")?,
                    })
                })
                .collect()
        })
    }

    /// Recurring plans, newest first.
    pub async fn recurring_plan_summaries(&self, limit: i64) -> Result<Vec<PlanSummary>> {
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT public_id, person_id, amount_cents, every, state, next_charge_at, ends_at, \
                 CAST(installments AS BIGINT) AS installments, CAST(failures AS BIGINT) AS failures \
                 FROM recurring_plans ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(PlanSummary {
                        public_id: r.try_get("public_id")?,
                        person_id: r.try_get("person_id")?,
                        amount_cents: r.try_get("amount_cents")?,
                        every: r.try_get("every")?,
                        state: r.try_get("state")?,
                        next_charge_at: r.try_get("next_charge_at")?,
                        ends_at: r.try_get("ends_at")?,
                        installments: r.try_get("installments")?,
                        failures: r.try_get("failures")?,
                    })
                })
                .collect()
        })
    }
}

impl Store {
    /// Whether a processor event was recorded already (webhook deduplication).
    pub async fn payment_event_seen(&self, event_id: &str) -> Result<bool> {
        on_write!(self, p => {
            let n: Option<String> = sqlx::query_scalar("SELECT event_id FROM payment_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(p)
                .await?;
            Ok(n.is_some())
        })
    }
}

/// The tables that hold donation data, for [`Store::donation_text_values`].
pub const DONATION_TABLES: &[&str] = &[
    "donations",
    "donation_attempts",
    "ledger_entries",
    "contribution_totals",
    "payment_events",
    "saved_payment_methods",
    "recurring_plans",
    "one_click_links",
    "api_idempotency",
];

impl Store {
    /// Every text value in every donation table, for the audit that no card number is
    /// ever stored (tests and `narwhal admin` checks grep these).
    pub async fn donation_text_values(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for table in DONATION_TABLES {
            let sql = format!("SELECT * FROM {table}");
            on_write!(self, p => {
                let rows = sqlx::query(&sql).fetch_all(p).await?;
                for r in rows {
                    for i in 0..r.len() {
                        if let Ok(Some(v)) = r.try_get::<Option<String>, _>(i) {
                            out.push(v);
                        }
                    }
                }
            });
        }
        Ok(out)
    }
}
