//! A durable job queue with leases.
//!
//! A job is a row first. A worker claims it by taking a lease (`lease_owner`,
//! `lease_until`); on PostgreSQL the claim uses `FOR UPDATE SKIP LOCKED` so that
//! several nodes never take the same job. A worker that dies stops renewing its
//! lease, and once the lease has expired any node claims the job again. Jobs must
//! therefore be idempotent.

use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::JobId;
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: JobId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_owner: Option<String>,
    pub progress_done: i64,
    pub progress_total: i64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Inserts a job on an open transaction; evaluates to its id.
macro_rules! job_insert {
    ($conn:expr, $kind:expr, $payload:expr, $now:expr) => {{
        let id: i64 = sqlx::query_scalar("INSERT INTO jobs (kind, payload, state, run_after, created_at, updated_at) VALUES ($1, $2, 'queued', $3, $3, $3) RETURNING id")
            .bind($kind)
            .bind($payload.to_string())
            .bind($now)
            .fetch_one($conn)
            .await?;
        id
    }};
}

const JOB_COLS: &str = "id, kind, payload, state, attempts, max_attempts, lease_owner, progress_done, progress_total, result, error, created_at, updated_at";

macro_rules! job_from {
    ($r:expr) => {{
        let r = &$r;
        let payload: String = r.try_get("payload")?;
        let result: Option<String> = r.try_get("result")?;
        Job {
            id: JobId(r.try_get("id")?),
            kind: r.try_get("kind")?,
            payload: serde_json::from_str(&payload)?,
            state: r.try_get("state")?,
            attempts: r.try_get("attempts")?,
            max_attempts: r.try_get("max_attempts")?,
            lease_owner: r.try_get("lease_owner")?,
            progress_done: r.try_get("progress_done")?,
            progress_total: r.try_get("progress_total")?,
            result: result.map(|s| serde_json::from_str(&s)).transpose()?,
            error: r.try_get("error")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }
    }};
}

impl Store {
    pub async fn enqueue_job(&self, kind: &str, payload: &serde_json::Value) -> Result<JobId> {
        on_write!(self, p => Ok(JobId(job_insert!(p, kind, payload, now_ms()))))
    }

    /// Claims the oldest runnable job of these kinds: queued and due, or running with
    /// an expired lease (its worker died). Returns `None` when there is nothing to do.
    pub async fn claim_job(
        &self,
        kinds: &[&str],
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<Job>> {
        if kinds.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let kinds_ph: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 4)).collect();
        let lock = if self.backend() == Backend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2 + $3, attempts = attempts + 1, updated_at = $2 \
             WHERE id = (SELECT id FROM jobs WHERE kind IN ({}) AND ((state = 'queued' AND run_after <= $2) OR (state = 'running' AND lease_until < $2)) \
             ORDER BY id LIMIT 1 {lock}) RETURNING {JOB_COLS}",
            kinds_ph.join(", ")
        );
        on_write!(self, p => {
            let mut q = sqlx::query(&sql).bind(owner).bind(now).bind(lease_ms);
            for k in kinds { q = q.bind(*k); }
            match q.fetch_optional(p).await? {
                Some(r) => Ok(Some(job_from!(r))),
                None => Ok(None),
            }
        })
    }

    /// Renews the lease and records progress. `false` means the lease was lost (another
    /// node took the job over): the caller must stop working on it.
    pub async fn heartbeat_job(
        &self,
        id: JobId,
        owner: &str,
        lease_ms: i64,
        done: i64,
        total: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let r = on_write!(self, p => sqlx::query("UPDATE jobs SET lease_until = $1, progress_done = $2, progress_total = $3, updated_at = $4 WHERE id = $5 AND lease_owner = $6 AND state = 'running'")
            .bind(now + lease_ms).bind(done).bind(total).bind(now).bind(id.0).bind(owner).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    pub async fn complete_job(
        &self,
        id: JobId,
        owner: &str,
        result: &serde_json::Value,
    ) -> Result<bool> {
        let r = on_write!(self, p => sqlx::query("UPDATE jobs SET state = 'done', result = $1, lease_owner = NULL, lease_until = NULL, updated_at = $2 WHERE id = $3 AND lease_owner = $4")
            .bind(result.to_string()).bind(now_ms()).bind(id.0).bind(owner).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Records a failure: the job is retried after `retry_in_ms` unless it is out of
    /// attempts or `permanent`, in which case it is marked failed.
    pub async fn fail_job(
        &self,
        id: JobId,
        owner: &str,
        error: &str,
        retry_in_ms: i64,
        permanent: bool,
    ) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => sqlx::query(
            "UPDATE jobs SET state = CASE WHEN $1 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END, \
             error = $2, run_after = $3, lease_owner = NULL, lease_until = NULL, updated_at = $4 WHERE id = $5 AND lease_owner = $6")
            .bind(permanent).bind(error).bind(now + retry_in_ms).bind(now).bind(id.0).bind(owner).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Puts a claimed job back in the queue after a transient failure (the database
    /// was unreachable, a node is shutting down) without spending one of its attempts:
    /// for resumable work such as a blast, which must not fail for good because the
    /// database blinked.
    pub async fn requeue_job(
        &self,
        id: JobId,
        owner: &str,
        error: &str,
        retry_in_ms: i64,
    ) -> Result<bool> {
        let now = now_ms();
        on_write!(self, p => {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
                 error = $1, run_after = $2, lease_owner = NULL, lease_until = NULL, updated_at = $3 WHERE id = $4 AND lease_owner = $5",
            )
            .bind(error)
            .bind(now + retry_in_ms)
            .bind(now)
            .bind(id.0)
            .bind(owner)
            .execute(p)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    pub async fn job(&self, id: JobId) -> Result<Job> {
        let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1");
        on_read!(self, p => {
            let r = sqlx::query(&sql).bind(id.0).fetch_optional(p).await?.ok_or(StoreError::NotFound("job"))?;
            Ok(job_from!(r))
        })
    }

    /// Queued and running jobs by kind, for `/metrics`.
    pub async fn job_depths(&self) -> Result<Vec<(String, String, i64)>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT kind, state, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'running') GROUP BY kind, state").fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("state")?, r.try_get("n")?))).collect()
        })
    }
}
