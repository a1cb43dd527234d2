//! Saved segments, and the compiler from [`SegmentFilter`] to a SQL condition.

use crate::error::{Result, StoreError};
use crate::people::{PersonSummary, SUMMARY_COLS};
use crate::{now_ms, Backend, Store};
use narwhal_domain::segment::FieldOp;
use narwhal_domain::{PersonId, SegmentFilter, SegmentId};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub id: SegmentId,
    pub name: String,
    pub filter: SegmentFilter,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A WHERE condition over `people` with its bound text values (`$1`, `$2`, ... in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub sql: String,
    pub args: Vec<String>,
}

/// Compiles a filter for one backend. Values are always bound, never spliced.
pub fn compile(filter: &SegmentFilter, backend: Backend) -> Condition {
    let mut args = Vec::new();
    let sql = node(filter, backend, &mut args);
    Condition { sql, args }
}

fn arg(args: &mut Vec<String>, v: impl Into<String>) -> String {
    args.push(v.into());
    format!("${}", args.len())
}

fn node(f: &SegmentFilter, b: Backend, args: &mut Vec<String>) -> String {
    use SegmentFilter as F;
    match f {
        F::All(v) => format!(
            "({})",
            v.iter()
                .map(|x| node(x, b, args))
                .collect::<Vec<_>>()
                .join(" AND ")
        ),
        F::Any(v) => format!(
            "({})",
            v.iter()
                .map(|x| node(x, b, args))
                .collect::<Vec<_>>()
                .join(" OR ")
        ),
        F::Not(x) => format!("(NOT {})", node(x, b, args)),
        F::Tag(t) => {
            let a = arg(args, t.as_str());
            // The tag's id is looked up once, not joined for every person probed.
            format!("EXISTS (SELECT 1 FROM person_tags pt WHERE pt.person_id = people.id AND pt.tag_id = (SELECT id FROM tags WHERE name = {a}))")
        }
        F::State(s) => format!("(state = {})", arg(args, s.as_str())),
        F::County(c) => format!("(county = {})", arg(args, c.trim().to_ascii_uppercase())),
        F::Precinct(c) => format!("(precinct = {})", arg(args, c.trim().to_ascii_uppercase())),
        F::Zip(z) => {
            let a = arg(args, z.trim());
            format!("(zip = {a} OR zip LIKE {a} || '-%')")
        }
        F::InList(l) => {
            let a = arg(args, l.0.to_string());
            format!("EXISTS (SELECT 1 FROM list_members lm WHERE lm.person_id = people.id AND CAST(lm.list_id AS TEXT) = {a})")
        }
        F::Consent { channel, state } => {
            let col = match channel {
                narwhal_domain::Channel::Email => "email_consent",
                narwhal_domain::Channel::Sms => "sms_consent",
            };
            format!("({col} = {})", arg(args, state.as_str()))
        }
        F::Field { key, op, value } => {
            let k = arg(args, key.as_str());
            let expr = match b {
                Backend::Sqlite => format!("json_extract(custom, '$.' || {k})"),
                Backend::Postgres => format!("(custom::jsonb ->> {k})"),
            };
            match op {
                FieldOp::Exists => format!("({expr} IS NOT NULL)"),
                FieldOp::Eq => format!(
                    "({expr} = {})",
                    arg(args, value.clone().unwrap_or_default())
                ),
                FieldOp::Ne => format!(
                    "({expr} IS NULL OR {expr} <> {})",
                    arg(args, value.clone().unwrap_or_default())
                ),
            }
        }
        F::HasEmail => "(email IS NOT NULL)".into(),
        F::HasPhone => "(phone IS NOT NULL)".into(),
        F::HasVoterId => "(voter_id IS NOT NULL)".into(),
    }
}

impl Store {
    /// How many people match.
    pub async fn count_matching(&self, filter: &SegmentFilter) -> Result<i64> {
        let c = compile(filter, self.backend());
        let sql = format!("SELECT COUNT(*) FROM people WHERE {}", c.sql);
        on_read!(self, p => {
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            for a in &c.args { q = q.bind(a); }
            Ok(q.fetch_one(p).await?)
        })
    }

    /// One page of matching people, by ascending id after `after`: stream a segment of
    /// any size by feeding the last id back in.
    pub async fn page_matching(
        &self,
        filter: &SegmentFilter,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<PersonSummary>> {
        let c = compile(filter, self.backend());
        let n = c.args.len();
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM people WHERE {} AND id > ${} ORDER BY id LIMIT ${}",
            c.sql,
            n + 1,
            n + 2
        );
        on_read!(self, p => {
            let mut q = sqlx::query(&sql);
            for a in &c.args { q = q.bind(a); }
            let rows = q.bind(after.map(|a| a.0).unwrap_or(0)).bind(limit.clamp(1, 10_000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(summary_from!(r))).collect()
        })
    }

    pub async fn create_segment(&self, name: &str, filter: &SegmentFilter) -> Result<SegmentId> {
        let f = serde_json::to_string(filter)?;
        let now = now_ms();
        on_write!(self, p => {
            let id: i64 = sqlx::query_scalar("INSERT INTO segments (name, filter, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING id")
                .bind(name).bind(f).bind(now).fetch_one(p).await
                .map_err(|e| StoreError::from_unique(e, &format!("segment {name:?}")))?;
            Ok(SegmentId(id))
        })
    }

    pub async fn update_segment(&self, id: SegmentId, filter: &SegmentFilter) -> Result<()> {
        let f = serde_json::to_string(filter)?;
        let r = on_write!(self, p => sqlx::query("UPDATE segments SET filter = $1, updated_at = $2 WHERE id = $3").bind(f).bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        if r == 0 {
            return Err(StoreError::NotFound("segment"));
        }
        Ok(())
    }

    pub async fn delete_segment(&self, id: SegmentId) -> Result<()> {
        let r = on_write!(self, p => sqlx::query("DELETE FROM segments WHERE id = $1").bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        if r == 0 {
            return Err(StoreError::NotFound("segment"));
        }
        Ok(())
    }

    pub async fn segments(&self) -> Result<Vec<Segment>> {
        self.segments_where("1 = 1 AND $1 = $1", 0).await
    }

    pub async fn segment(&self, id: SegmentId) -> Result<Segment> {
        self.segments_where("id = $1", id.0)
            .await?
            .pop()
            .ok_or(StoreError::NotFound("segment"))
    }

    async fn segments_where(&self, cond: &str, a: i64) -> Result<Vec<Segment>> {
        let sql = format!("SELECT id, name, filter, created_at, updated_at FROM segments WHERE {cond} ORDER BY name");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(a).fetch_all(p).await?;
            rows.iter().map(|r| {
                let f: String = r.try_get("filter")?;
                Ok(Segment {
                    id: SegmentId(r.try_get("id")?),
                    name: r.try_get("name")?,
                    filter: serde_json::from_str(&f)?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            }).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::people::{ChangeSet, NewPerson, PersonRow};
    use crate::test_support::TestDb;
    use serde_json::json;

    /// The plan PostgreSQL picks for a count, with its arguments written in as
    /// literals (EXPLAIN takes no parameters) and scans of the table itself priced out,
    /// so that only what the indexes can do decides.
    async fn count_plan(p: &sqlx::PgPool, filter: serde_json::Value) -> String {
        let c = compile(&SegmentFilter::parse(&filter).unwrap(), Backend::Postgres);
        let mut sql = format!("SELECT COUNT(*) FROM people WHERE {}", c.sql);
        // Highest first, so that $1 does not eat the start of $10.
        for (i, a) in c.args.iter().enumerate().rev() {
            sql = sql.replace(
                &format!("${}", i + 1),
                &format!("'{}'", a.replace('\'', "''")),
            );
        }
        let mut conn = p.acquire().await.unwrap();
        for set in ["SET enable_seqscan = off", "SET enable_bitmapscan = off"] {
            sqlx::query(set).execute(&mut *conn).await.unwrap();
        }
        let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        lines.join("\n")
    }

    /// On PostgreSQL a county audience without a tag, and a whole state, are counted
    /// from indexes without reading people's rows (migration 0029): the id the tag
    /// probe needs is carried in the county index. Without it the count reads every
    /// match from the table (an `Index Scan`, not an `Index Only Scan`).
    #[tokio::test]
    async fn postgres_counts_segments_from_indexes_alone() {
        let Some(db) = TestDb::new(Backend::Postgres).await else {
            return;
        };
        let people: Vec<NewPerson> = (0..50)
            .map(|i| NewPerson {
                row: PersonRow {
                    voter_id: Some(format!("V{i}")),
                    state: Some("OH".into()),
                    county: Some(if i % 2 == 0 { "FRANKLIN" } else { "LUCAS" }.into()),
                    email_consent: "subscribed".into(),
                    sms_consent: "unknown".into(),
                    ..Default::default()
                },
                custom_json: None,
                emails: vec![],
                phones: vec![],
                tags: if i % 5 == 0 {
                    vec!["donor".into()]
                } else {
                    vec![]
                },
            })
            .collect();
        db.store
            .apply_changes(&ChangeSet {
                inserts: people,
                ..Default::default()
            })
            .await
            .unwrap();
        let crate::db::Pools::Postgres(p) = &db.store.pools else {
            panic!("a PostgreSQL store");
        };
        // After an import, as `after_bulk_load` does: the pages are all visible.
        sqlx::raw_sql("VACUUM (ANALYZE) people, person_tags, tags")
            .execute(p)
            .await
            .unwrap();

        let audience = json!({"all":[{"county":"FRANKLIN"},
            {"consent":{"channel":"email","state":"subscribed"}},{"not":{"tag":"donor"}}]});
        let plan = count_plan(p, audience.clone()).await;
        assert!(
            plan.contains("Index Only Scan using people_geo_consent on people"),
            "{plan}"
        );
        assert!(
            plan.contains("Index Only Scan using person_tags_pkey"),
            "{plan}"
        );
        let plan = count_plan(p, json!({"state":"OH"})).await;
        assert!(
            plan.contains("Index Only Scan using people_state"),
            "{plan}"
        );

        // And the counts are right: 25 in FRANKLIN, 5 of them donors (0, 10, ... 40).
        let f = SegmentFilter::parse(&audience).unwrap();
        assert_eq!(db.store.count_matching(&f).await.unwrap(), 20);
        let f = SegmentFilter::parse(&json!({"state":"OH"})).unwrap();
        assert_eq!(db.store.count_matching(&f).await.unwrap(), 50);
    }

    #[test]
    fn compiles_with_bound_values_only() {
        let f = SegmentFilter::parse(
            &json!({"all":[{"state":"OH"},{"tag":"x'; DROP TABLE people;--"},
            {"field":{"key":"party","op":"eq","value":"D"}}]}),
        );
        // The tag is rejected by the domain type before it gets here.
        assert!(f.is_err());
        let f = SegmentFilter::parse(&json!({"all":[{"state":"OH"},{"not":{"tag":"donor"}},
            {"field":{"key":"party","op":"eq","value":"D"}}]}))
        .unwrap();
        let c = compile(&f, Backend::Postgres);
        assert_eq!(c.args, vec!["OH", "donor", "party", "D"]);
        assert!(c.sql.contains("custom::jsonb ->> $3"));
        let c = compile(&f, Backend::Sqlite);
        assert!(c.sql.contains("json_extract(custom, '$.' || $3)"));
    }
}
