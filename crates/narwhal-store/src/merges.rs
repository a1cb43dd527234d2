//! Merging two people into one, recorded so that it can be undone.
//!
//! A merge keeps the survivor's values where it has them and takes the other
//! person's where it does not; keys, tags and list memberships move over; the merged
//! person's row is removed. The merge row keeps full snapshots of both people, so
//! undo restores them exactly, provided the survivor has not been edited since.

use crate::audit::AuditEntry;
use crate::error::{Result, StoreError};
use crate::people::{PersonRecord, PersonRow};
use crate::{now_ms, Store};
use narwhal_domain::{ConsentState, MergeId, PersonId};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    person: PersonRecord,
    lists: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Merge {
    pub id: MergeId,
    pub survivor_id: PersonId,
    pub merged_id: PersonId,
    pub reason: String,
    pub actor: String,
    pub created_at: i64,
    pub undone_at: Option<i64>,
}

/// The survivor's row after absorbing `other`.
pub fn merged_row(survivor: &PersonRow, other: &PersonRow) -> PersonRow {
    fn pick(a: &Option<String>, b: &Option<String>) -> Option<String> {
        a.clone().or_else(|| b.clone())
    }
    fn consent(a: &str, b: &str) -> String {
        let a = ConsentState::parse(a).unwrap_or_default();
        let b = ConsentState::parse(b).unwrap_or_default();
        a.merge(b, false).as_str().to_string()
    }
    let mut custom = other.custom.clone();
    custom.extend(survivor.custom.clone());
    let mut provenance = other.provenance.clone();
    provenance.extend(survivor.provenance.clone());
    let has_addr = survivor.addr_line1.is_some() || survivor.zip.is_some();
    let a = if has_addr { survivor } else { other };
    PersonRow {
        voter_id: pick(&survivor.voter_id, &other.voter_id),
        first_name: pick(&survivor.first_name, &other.first_name),
        middle_name: pick(&survivor.middle_name, &other.middle_name),
        last_name: pick(&survivor.last_name, &other.last_name),
        suffix: pick(&survivor.suffix, &other.suffix),
        search_name: if survivor.search_name.is_empty() {
            other.search_name.clone()
        } else {
            survivor.search_name.clone()
        },
        email: pick(&survivor.email, &other.email),
        phone: pick(&survivor.phone, &other.phone),
        addr_line1: a.addr_line1.clone(),
        addr_line2: a.addr_line2.clone(),
        city: a.city.clone(),
        state: a.state.clone(),
        zip: a.zip.clone(),
        county: a.county.clone(),
        precinct: a.precinct.clone(),
        addr_key: a.addr_key.clone(),
        email_consent: consent(&survivor.email_consent, &other.email_consent),
        sms_consent: consent(&survivor.sms_consent, &other.sms_consent),
        custom,
        provenance,
        row_hash: survivor.row_hash,
    }
}

macro_rules! write_row {
    ($conn:expr, $id:expr, $r:expr, $now:expr, $insert:expr, $version:expr, $created:expr) => {{
        let custom = crate::people::json_text(&$r.custom);
        let prov = crate::people::json_text(&$r.provenance);
        let sql = if $insert {
            format!("INSERT INTO people (id, {}, version, created_at, updated_at) VALUES ($1, {}, $23, $24, $25)", crate::people::ROW_COLS,
                (2..=22).map(|i| format!("${i}")).collect::<Vec<_>>().join(", "))
        } else {
            let sets: Vec<String> = crate::people::ROW_COLS.split(", ").enumerate().map(|(i, c)| format!("{c} = ${}", i + 2)).collect();
            format!("UPDATE people SET {}, version = $23, updated_at = $25 WHERE id = $1 AND $24 = $24", sets.join(", "))
        };
        let q = sqlx::query(&sql).bind($id);
        let q = bind_row!(q, $r, custom, prov);
        q.bind($version).bind($created).bind($now).execute($conn).await?;
    }};
}

impl Store {
    /// Merges `merged` into `survivor`. Fails if either is missing or they are the same.
    pub async fn merge_people(
        &self,
        survivor: PersonId,
        merged: PersonId,
        reason: &str,
        actor: &str,
    ) -> Result<MergeId> {
        if survivor == merged {
            return Err(StoreError::Invalid(
                "cannot merge a person into themselves".into(),
            ));
        }
        let now = now_ms();
        let people = self.load_people(&[survivor, merged]).await?;
        let s = people
            .iter()
            .find(|p| p.id == survivor)
            .ok_or(StoreError::NotFound("survivor"))?
            .clone();
        let m = people
            .iter()
            .find(|p| p.id == merged)
            .ok_or(StoreError::NotFound("person to merge"))?
            .clone();
        let new_row = merged_row(&s.row, &m.row);
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let lists: Vec<i64> = sqlx::query_scalar("SELECT list_id FROM list_members WHERE person_id = $1").bind(merged.0).fetch_all(&mut *tx).await?;
            let s_lists: Vec<i64> = sqlx::query_scalar("SELECT list_id FROM list_members WHERE person_id = $1").bind(survivor.0).fetch_all(&mut *tx).await?;
            let before = serde_json::to_string(&Snapshot { person: s.clone(), lists: s_lists })?;
            let snap = serde_json::to_string(&Snapshot { person: m.clone(), lists })?;
            // Guard: nobody changed either person since we loaded them.
            let v: Option<i64> = sqlx::query_scalar("SELECT version FROM people WHERE id = $1").bind(survivor.0).fetch_optional(&mut *tx).await?;
            let mv: Option<i64> = sqlx::query_scalar("SELECT version FROM people WHERE id = $1").bind(merged.0).fetch_optional(&mut *tx).await?;
            if v != Some(s.version) || mv != Some(m.version) {
                return Err(StoreError::Conflict("a person changed during the merge; retry".into()));
            }
            // The merged row goes first so that its unique voter id is free for the survivor.
            sqlx::query("DELETE FROM people WHERE id = $1").bind(merged.0).execute(&mut *tx).await?;
            write_row!(&mut *tx, survivor.0, new_row, now, false, s.version + 1, s.created_at);
            sqlx::query("UPDATE person_emails SET person_id = $1 WHERE person_id = $2").bind(survivor.0).bind(merged.0).execute(&mut *tx).await?;
            sqlx::query("UPDATE person_phones SET person_id = $1 WHERE person_id = $2").bind(survivor.0).bind(merged.0).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO person_tags (person_id, tag_id) SELECT $1, tag_id FROM person_tags WHERE person_id = $2 ON CONFLICT DO NOTHING").bind(survivor.0).bind(merged.0).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM person_tags WHERE person_id = $1").bind(merged.0).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO list_members (list_id, person_id, added_at) SELECT list_id, $1, added_at FROM list_members WHERE person_id = $2 ON CONFLICT DO NOTHING").bind(survivor.0).bind(merged.0).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM list_members WHERE person_id = $1").bind(merged.0).execute(&mut *tx).await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO merges (survivor_id, merged_id, survivor_before, merged_snapshot, reason, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
                .bind(survivor.0).bind(merged.0).bind(before).bind(snap).bind(reason).bind(actor).bind(now).fetch_one(&mut *tx).await?;
            let e = AuditEntry::new(actor, "person.merge", "person", survivor, serde_json::json!({"merged": merged.0, "merge": id, "reason": reason}));
            audit_insert!(&mut *tx, e, survivor.to_string(), now);
            tx.commit().await?;
            Ok(MergeId(id))
        })
    }

    /// Undoes a merge: both people return exactly as they were before it. Refused when
    /// the survivor was edited after the merge (its version moved on).
    pub async fn undo_merge(&self, id: MergeId, actor: &str) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query("SELECT survivor_id, merged_id, survivor_before, merged_snapshot, undone_at FROM merges WHERE id = $1")
                .bind(id.0).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound("merge"))?;
            let undone: Option<i64> = r.try_get("undone_at")?;
            if undone.is_some() {
                return Err(StoreError::Invalid("this merge was already undone".into()));
            }
            let before: String = r.try_get("survivor_before")?;
            let snap: String = r.try_get("merged_snapshot")?;
            let before: Snapshot = serde_json::from_str(&before)?;
            let snap: Snapshot = serde_json::from_str(&snap)?;
            let s = &before.person;
            let m = &snap.person;
            let v: Option<i64> = sqlx::query_scalar("SELECT version FROM people WHERE id = $1").bind(s.id.0).fetch_optional(&mut *tx).await?;
            if v != Some(s.version + 1) {
                return Err(StoreError::Conflict("the surviving person was changed after the merge; undo the later changes first".into()));
            }
            write_row!(&mut *tx, s.id.0, s.row, now, false, s.version + 2, s.created_at);
            write_row!(&mut *tx, m.id.0, m.row, now, true, m.version + 1, m.created_at);
            for e in &m.emails {
                sqlx::query("UPDATE person_emails SET person_id = $1 WHERE email = $2").bind(m.id.0).bind(e).execute(&mut *tx).await?;
            }
            for ph in &m.phones {
                sqlx::query("UPDATE person_phones SET person_id = $1 WHERE phone = $2").bind(m.id.0).bind(ph).execute(&mut *tx).await?;
            }
            // Tags: the survivor keeps only what it had; the merged person gets its own back.
            sqlx::query("DELETE FROM person_tags WHERE person_id = $1").bind(s.id.0).execute(&mut *tx).await?;
            for (pid, tags) in [(s.id.0, &s.tags), (m.id.0, &m.tags)] {
                for t in tags.iter() {
                    sqlx::query("INSERT INTO person_tags (person_id, tag_id) SELECT $1, id FROM tags WHERE name = $2 ON CONFLICT DO NOTHING").bind(pid).bind(t).execute(&mut *tx).await?;
                }
            }
            for l in &snap.lists {
                sqlx::query("INSERT INTO list_members (list_id, person_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING").bind(l).bind(m.id.0).bind(now).execute(&mut *tx).await?;
                if !before.lists.contains(l) {
                    sqlx::query("DELETE FROM list_members WHERE list_id = $1 AND person_id = $2").bind(l).bind(s.id.0).execute(&mut *tx).await?;
                }
            }
            sqlx::query("UPDATE merges SET undone_at = $1, undone_by = $2 WHERE id = $3").bind(now).bind(actor).bind(id.0).execute(&mut *tx).await?;
            let e = AuditEntry::new(actor, "person.unmerge", "person", s.id, serde_json::json!({"restored": m.id.0, "merge": id.0}));
            audit_insert!(&mut *tx, e, s.id.to_string(), now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Merges that involve this person, newest first.
    pub async fn merges_of(&self, person: PersonId) -> Result<Vec<Merge>> {
        on_read!(self, p => {
            let rows = sqlx::query("SELECT id, survivor_id, merged_id, reason, actor, created_at, undone_at FROM merges WHERE survivor_id = $1 OR merged_id = $1 ORDER BY id DESC")
                .bind(person.0).fetch_all(p).await?;
            rows.iter().map(|r| Ok(Merge {
                id: MergeId(r.try_get("id")?),
                survivor_id: PersonId(r.try_get("survivor_id")?),
                merged_id: PersonId(r.try_get("merged_id")?),
                reason: r.try_get("reason")?,
                actor: r.try_get("actor")?,
                created_at: r.try_get("created_at")?,
                undone_at: r.try_get("undone_at")?,
            })).collect()
        })
    }
}
