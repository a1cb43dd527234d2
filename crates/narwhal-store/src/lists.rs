//! Static lists of people.

use crate::audit::AuditEntry;
use crate::error::{Result, StoreError};
use crate::people::{PersonSummary, SUMMARY_COLS};
use crate::{now_ms, Store};
use narwhal_domain::{ListId, PersonId};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct List {
    pub id: ListId,
    pub name: String,
    pub description: String,
    pub members: i64,
    pub created_at: i64,
}

impl Store {
    pub async fn create_list(&self, name: &str, description: &str, actor: &str) -> Result<ListId> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO lists (name, description, created_at) VALUES ($1, $2, $3) RETURNING id")
                .bind(name).bind(description).bind(now).fetch_one(&mut *tx).await
                .map_err(|e| StoreError::from_unique(e, &format!("list {name:?}")))?;
            let e = AuditEntry::new(actor, "list.create", "list", id, serde_json::json!({}));
            audit_insert!(&mut *tx, e, id.to_string(), now);
            tx.commit().await?;
            Ok(ListId(id))
        })
    }

    pub async fn lists(&self) -> Result<Vec<List>> {
        self.lists_where("1 = 1 AND $1 = $1", 0).await
    }

    pub async fn list(&self, id: ListId) -> Result<List> {
        self.lists_where("l.id = $1", id.0)
            .await?
            .pop()
            .ok_or(StoreError::NotFound("list"))
    }

    async fn lists_where(&self, cond: &str, a: i64) -> Result<Vec<List>> {
        let sql = format!("SELECT l.id, l.name, l.description, l.created_at, (SELECT COUNT(*) FROM list_members m WHERE m.list_id = l.id) AS members FROM lists l WHERE {cond} ORDER BY l.name");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(a).fetch_all(p).await?;
            rows.iter().map(|r| Ok(List {
                id: ListId(r.try_get("id")?),
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                members: r.try_get("members")?,
                created_at: r.try_get("created_at")?,
            })).collect()
        })
    }

    /// Adds people (unknown ids are an error, already-present ones are fine). Returns how many were new.
    pub async fn add_to_list(&self, list: ListId, people: &[PersonId], actor: &str) -> Result<u64> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM lists WHERE id = $1").bind(list.0).fetch_optional(&mut *tx).await?;
            if exists.is_none() { return Err(StoreError::NotFound("list")); }
            let mut added = 0;
            for pid in people {
                let found: Option<i64> = sqlx::query_scalar("SELECT id FROM people WHERE id = $1").bind(pid.0).fetch_optional(&mut *tx).await?;
                if found.is_none() {
                    return Err(StoreError::Invalid(format!("person {pid} does not exist")));
                }
                added += sqlx::query("INSERT INTO list_members (list_id, person_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(list.0).bind(pid.0).bind(now).execute(&mut *tx).await?.rows_affected();
            }
            let e = AuditEntry::new(actor, "list.add", "list", list, serde_json::json!({"added": added}));
            audit_insert!(&mut *tx, e, list.to_string(), now);
            tx.commit().await?;
            Ok(added)
        })
    }

    pub async fn remove_from_list(
        &self,
        list: ListId,
        people: &[PersonId],
        actor: &str,
    ) -> Result<u64> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut removed = 0;
            for pid in people {
                removed += sqlx::query("DELETE FROM list_members WHERE list_id = $1 AND person_id = $2")
                    .bind(list.0).bind(pid.0).execute(&mut *tx).await?.rows_affected();
            }
            let e = AuditEntry::new(actor, "list.remove", "list", list, serde_json::json!({"removed": removed}));
            audit_insert!(&mut *tx, e, list.to_string(), now);
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// One page of members by ascending person id.
    pub async fn list_members(
        &self,
        list: ListId,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<PersonSummary>> {
        let sql = format!("SELECT {SUMMARY_COLS} FROM people WHERE id IN (SELECT person_id FROM list_members WHERE list_id = $1) AND id > $2 ORDER BY id LIMIT $3");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(list.0).bind(after.map(|a| a.0).unwrap_or(0)).bind(limit.clamp(1, 10_000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(summary_from!(r))).collect()
        })
    }
}
