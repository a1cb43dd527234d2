//! Import runs: their settings, progress and outcome.

use crate::audit::AuditEntry;
use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use narwhal_domain::{ImportId, JobId};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ImportCounts {
    pub bytes_total: i64,
    pub bytes_read: i64,
    pub rows_read: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub merged: i64,
    pub rejected: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportRun {
    pub id: ImportId,
    pub job_id: Option<JobId>,
    pub source_name: String,
    pub path: String,
    pub mapping: String,
    pub state: String,
    #[serde(flatten)]
    pub counts: ImportCounts,
    pub rejects_path: Option<String>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

const COLS: &str = "id, job_id, source_name, path, mapping, state, bytes_total, bytes_read, rows_read, inserted, updated, unchanged, merged, rejected, rejects_path, error, created_by, created_at, finished_at";

impl Store {
    /// Records an import; with `queue`, also enqueues the job that runs it (same transaction).
    pub async fn create_import(
        &self,
        source_name: &str,
        path: &str,
        mapping: &str,
        created_by: &str,
        queue: bool,
    ) -> Result<ImportId> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO imports (source_name, path, mapping, state, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
                .bind(source_name).bind(path).bind(mapping).bind(if queue { "queued" } else { "running" }).bind(created_by).bind(now)
                .fetch_one(&mut *tx).await?;
            if queue {
                let job = job_insert!(&mut *tx, "import.people", serde_json::json!({"import_id": id}), now);
                sqlx::query("UPDATE imports SET job_id = $1 WHERE id = $2").bind(job).bind(id).execute(&mut *tx).await?;
            }
            let e = AuditEntry::new(created_by, "import.create", "import", id, serde_json::json!({"source": source_name}));
            audit_insert!(&mut *tx, e, id.to_string(), now);
            tx.commit().await?;
            Ok(ImportId(id))
        })
    }

    pub async fn update_import(
        &self,
        id: ImportId,
        state: &str,
        c: &ImportCounts,
        rejects_path: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let finished = matches!(state, "done" | "failed").then(now_ms);
        on_write!(self, p => sqlx::query(
            "UPDATE imports SET state = $1, bytes_total = $2, bytes_read = $3, rows_read = $4, inserted = $5, updated = $6, unchanged = $7, merged = $8, rejected = $9, rejects_path = $10, error = $11, finished_at = $12 WHERE id = $13")
            .bind(state).bind(c.bytes_total).bind(c.bytes_read).bind(c.rows_read).bind(c.inserted).bind(c.updated).bind(c.unchanged).bind(c.merged).bind(c.rejected)
            .bind(rejects_path).bind(error).bind(finished).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn import_run(&self, id: ImportId) -> Result<ImportRun> {
        self.imports_where("id = $1", id.0, 1)
            .await?
            .pop()
            .ok_or(StoreError::NotFound("import"))
    }

    pub async fn import_runs(&self, limit: i64) -> Result<Vec<ImportRun>> {
        self.imports_where("$1 = $1", 0, limit).await
    }

    async fn imports_where(&self, cond: &str, a: i64, limit: i64) -> Result<Vec<ImportRun>> {
        let sql = format!("SELECT {COLS} FROM imports WHERE {cond} ORDER BY id DESC LIMIT $2");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(a).bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(|r| {
                let job: Option<i64> = r.try_get("job_id")?;
                Ok(ImportRun {
                    id: ImportId(r.try_get("id")?),
                    job_id: job.map(JobId),
                    source_name: r.try_get("source_name")?,
                    path: r.try_get("path")?,
                    mapping: r.try_get("mapping")?,
                    state: r.try_get("state")?,
                    counts: ImportCounts {
                        bytes_total: r.try_get("bytes_total")?,
                        bytes_read: r.try_get("bytes_read")?,
                        rows_read: r.try_get("rows_read")?,
                        inserted: r.try_get("inserted")?,
                        updated: r.try_get("updated")?,
                        unchanged: r.try_get("unchanged")?,
                        merged: r.try_get("merged")?,
                        rejected: r.try_get("rejected")?,
                    },
                    rejects_path: r.try_get("rejects_path")?,
                    error: r.try_get("error")?,
                    created_by: r.try_get("created_by")?,
                    created_at: r.try_get("created_at")?,
                    finished_at: r.try_get("finished_at")?,
                })
            }).collect()
        })
    }
}
