//! The audit log: who changed what, when. Written in the same transaction as the change.

use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One audit entry before it is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `user:NAME`, `token:NAME`, `import:ID`, `inbound:SOURCE`, `system`.
    pub actor: String,
    /// `person.create`, `person.update`, `person.merge`, `list.add`, ...
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    /// Field names and counts; never field values, which may be PII.
    pub detail: serde_json::Value,
}

impl AuditEntry {
    pub fn new(
        actor: &str,
        action: &str,
        entity: &str,
        entity_id: impl ToString,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            actor: actor.to_string(),
            action: action.to_string(),
            entity: entity.to_string(),
            entity_id: entity_id.to_string(),
            detail,
        }
    }
}

/// A stored audit entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Inserts an audit entry on an open transaction: `audit_insert!(&mut *tx, entry, entity_id, now)`.
macro_rules! audit_insert {
    ($conn:expr, $e:expr, $entity_id:expr, $now:expr) => {
        sqlx::query("INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind($now)
            .bind(&$e.actor)
            .bind(&$e.action)
            .bind(&$e.entity)
            .bind($entity_id)
            .bind($e.detail.to_string())
            .execute($conn)
            .await?
    };
}

impl Store {
    /// Records an entry on its own (for changes that are not people rows).
    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        on_write!(self, p => {
            audit_insert!(p, e, &e.entity_id, now_ms());
            Ok(())
        })
    }

    /// Newest first; optionally only one entity (`person`, `42`). `before` pages by id.
    pub async fn audit_log(
        &self,
        entity: Option<(&str, &str)>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        let before = before.unwrap_or(i64::MAX);
        let (cond, a, b) = match entity {
            Some((e, id)) => (
                "entity = $1 AND entity_id = $2",
                e.to_string(),
                id.to_string(),
            ),
            None => ("$1 = $1 AND $2 = $2", String::new(), String::new()),
        };
        let sql = format!("SELECT id, at, actor, action, entity, entity_id, detail FROM audit_log WHERE {cond} AND id < $3 ORDER BY id DESC LIMIT $4");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(a).bind(b).bind(before).bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    entry: AuditEntry {
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        entity: r.try_get("entity")?,
                        entity_id: r.try_get("entity_id")?,
                        detail: serde_json::from_str(&detail).map_err(StoreError::from)?,
                    },
                })
            }).collect()
        })
    }
}
