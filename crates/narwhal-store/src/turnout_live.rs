//! Live turnout and flushing lists: the change clock every node polls, election-day
//! settings shared by the nodes, the turnout figures per precinct and hour, canvass
//! turfs and call lists, and the voter-id lookup of early-vote files.
//!
//! Invariants:
//! - Nothing here lives in one process: a node learns of another node's reports by
//!   reading [`Store::turnout_clock`], which every ingest that changed something moves
//!   (inside the transaction on SQLite, right after the commit on PostgreSQL).
//! - What remains of a list is always a query: the universe without the voters in
//!   `turnout_voted`, which the ingest keeps in the transaction that stores the
//!   reports, so a voter reported as voted is off every list as soon as the batch is
//!   acknowledged.

use crate::error::{Result, StoreError};
use crate::segments::compile;
use crate::turnout::REMAINING;
use crate::{now_ms, Store};
use narwhal_domain::{PersonId, SegmentFilter};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;

/// An hour in ms: the tallies count voters per UTC hour.
const HOUR_MS: i64 = 3_600_000;

/// Turnout of one precinct now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub county: String,
    pub precinct: String,
    pub polling_place: String,
    pub universe: i64,
    pub voted: i64,
}

/// How many of a precinct's supporters count as voted from hour `hour` after the
/// polls opened (hour 0 holds everyone who voted before, early votes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourCell {
    pub county: String,
    pub precinct: String,
    pub polling_place: String,
    pub hour: i64,
    pub voted: i64,
}

/// Who a new turf or call list takes from the GOTV universe.
#[derive(Debug, Clone)]
pub enum ListSource {
    /// The supporters a segment matches.
    Segment(SegmentFilter),
    /// Every supporter voting at this polling place.
    PollingPlace(String),
    /// Every supporter of this precinct (county, precinct).
    Precinct(String, String),
    /// Nobody yet: people are assigned afterwards.
    Empty,
}

/// A turf or call list with its counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GotvList {
    pub id: i64,
    /// `turf` (canvassers, by address) or `calls` (phone banks).
    pub kind: String,
    pub name: String,
    /// How it was made, e.g. `polling_place:P1`.
    pub source: String,
    pub created_at: i64,
    pub members: i64,
    /// Members not yet reported as voted.
    pub remaining: i64,
}

/// A supporter on a list, as canvassers and callers need them.
#[derive(Debug, Clone, Serialize)]
pub struct ListVoter {
    pub person_id: PersonId,
    /// The 7-digit code without its check digit.
    #[serde(skip)]
    pub code: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub addr_line1: Option<String>,
    pub addr_line2: Option<String>,
    pub city: Option<String>,
    pub zip: Option<String>,
    pub phone: Option<String>,
    pub precinct: String,
    pub polling_place: String,
}

/// A person an early-vote file names, by voter id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterMatch {
    pub person: PersonId,
    /// Whether they are in the GOTV universe (only they have lists to leave).
    pub in_universe: bool,
}

impl Store {
    /// A handle on the same database with a pool of its own of at most `max`
    /// connections (PostgreSQL), so that election-day ingest keeps connections while a
    /// blast or an import holds the shared pool; callers wait for a connection as long
    /// as on this handle's pool. On SQLite the same handle: it has one
    /// writer by design, and a writer waits for at most one transaction of another's.
    pub fn dedicated(&self, max: u32) -> Store {
        match &self.pools {
            crate::db::Pools::Sqlite { .. } => self.clone(),
            crate::db::Pools::Postgres(p) => Store {
                pools: crate::db::Pools::Postgres(crate::db::pool_beside(
                    p,
                    max,
                    (*p.connect_options()).clone(),
                )),
            },
        }
    }

    /// The change clock: it moves whenever a batch of reports changed something.
    pub async fn turnout_clock(&self) -> Result<i64> {
        Ok(match &self.pools {
            crate::db::Pools::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT seq FROM turnout_clock WHERE id = 1")
                    .fetch_one(read)
                    .await?
            }
            crate::db::Pools::Postgres(p) => sqlx::query_scalar(
                "SELECT last_value + CASE WHEN is_called THEN 1 ELSE 0 END FROM turnout_change_seq",
            )
            .fetch_one(p)
            .await?,
        })
    }

    /// An election-day setting (JSON text), shared by every node.
    pub async fn turnout_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(
            on_read!(self, p => sqlx::query_scalar("SELECT value FROM turnout_settings WHERE key = $1").bind(key).fetch_optional(p).await)?,
        )
    }

    /// Sets an election-day setting.
    pub async fn set_turnout_setting(&self, key: &str, value: &str) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => sqlx::query("INSERT INTO turnout_settings (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
            .bind(key).bind(value).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Turnout now per precinct, and per precinct and hour since `opens_at`. When the
    /// polls open on the hour (UTC), from the tallies the ingest (and the triggers of
    /// `gotv_universe`) keep, a few rows per precinct; otherwise by two scans of the
    /// universe joined with who voted.
    pub async fn turnout_cells(&self, opens_at: i64) -> Result<(Vec<Cell>, Vec<HourCell>)> {
        if opens_at.rem_euclid(HOUR_MS) == 0 {
            return self.turnout_cells_from_tallies(opens_at).await;
        }
        self.turnout_cells_by_scan(opens_at).await
    }

    /// [`Store::turnout_cells`] from `turnout_tallies`, for `opens_at` on the hour: a
    /// UTC hour bucket `u` starts at `u * HOUR_MS`, wholly before the opening (hour 0)
    /// or wholly inside hour `(u * HOUR_MS - opens_at) / HOUR_MS` of the day.
    async fn turnout_cells_from_tallies(
        &self,
        opens_at: i64,
    ) -> Result<(Vec<Cell>, Vec<HourCell>)> {
        let sql = "SELECT county, precinct, polling_place, hour, people FROM turnout_tallies WHERE people <> 0";
        let rows = on_read!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(|r| Ok((
                r.try_get::<String, _>("county")?,
                r.try_get::<String, _>("precinct")?,
                r.try_get::<String, _>("polling_place")?,
                r.try_get::<i64, _>("hour")?,
                r.try_get::<i64, _>("people")?,
            ))).collect::<Result<Vec<_>>>()
        })?;
        let mut cells: HashMap<(String, String, String), Cell> = HashMap::new();
        let mut hours = Vec::new();
        for (county, precinct, polling_place, hour, people) in rows {
            let cell = cells
                .entry((county.clone(), precinct.clone(), polling_place.clone()))
                .or_insert_with(|| Cell {
                    county: county.clone(),
                    precinct: precinct.clone(),
                    polling_place: polling_place.clone(),
                    universe: 0,
                    voted: 0,
                });
            if hour < 0 {
                cell.universe += people;
                continue;
            }
            cell.voted += people;
            let start = hour.saturating_mul(HOUR_MS);
            hours.push(HourCell {
                county,
                precinct,
                polling_place,
                hour: if start < opens_at {
                    0
                } else {
                    (start - opens_at) / HOUR_MS
                },
                voted: people,
            });
        }
        let mut cells: Vec<Cell> = cells
            .into_values()
            .filter(|c| c.universe != 0 || c.voted != 0)
            .collect();
        cells.sort_by(|a, b| {
            (&a.county, &a.precinct, &a.polling_place).cmp(&(
                &b.county,
                &b.precinct,
                &b.polling_place,
            ))
        });
        Ok((cells, hours))
    }

    /// [`Store::turnout_cells`] by scanning the universe joined with who voted, for
    /// any `opens_at`: also what the tallies are checked against.
    pub async fn turnout_cells_by_scan(&self, opens_at: i64) -> Result<(Vec<Cell>, Vec<HourCell>)> {
        let now_sql =
            "SELECT g.county, g.precinct, g.polling_place, COUNT(*) AS universe, COUNT(v.voted_at) AS voted
             FROM gotv_universe g LEFT JOIN turnout_voted v ON v.person_id = g.person_id
             GROUP BY g.county, g.precinct, g.polling_place";
        let hours_sql = "SELECT g.county, g.precinct, g.polling_place,
                CASE WHEN v.voted_at < $1 THEN 0 ELSE (v.voted_at - $1) / 3600000 END AS hour, COUNT(*) AS voted
             FROM gotv_universe g JOIN turnout_voted v ON v.person_id = g.person_id
             GROUP BY g.county, g.precinct, g.polling_place, CASE WHEN v.voted_at < $1 THEN 0 ELSE (v.voted_at - $1) / 3600000 END";
        on_read!(self, p => {
            let rows = sqlx::query(now_sql).fetch_all(p).await?;
            let cells = rows.iter().map(|r| Ok(Cell {
                county: r.try_get("county")?,
                precinct: r.try_get("precinct")?,
                polling_place: r.try_get("polling_place")?,
                universe: r.try_get("universe")?,
                voted: r.try_get("voted")?,
            })).collect::<Result<Vec<_>>>()?;
            let rows = sqlx::query(hours_sql).bind(opens_at).fetch_all(p).await?;
            let hours = rows.iter().map(|r| Ok(HourCell {
                county: r.try_get("county")?,
                precinct: r.try_get("precinct")?,
                polling_place: r.try_get("polling_place")?,
                hour: r.try_get("hour")?,
                voted: r.try_get("voted")?,
            })).collect::<Result<Vec<_>>>()?;
            Ok((cells, hours))
        })
    }

    /// Creates a turf (`turf`) or call list (`calls`) holding the GOTV supporters
    /// `source` selects, in one transaction. `Conflict` when the name is taken.
    pub async fn create_gotv_list(
        &self,
        kind: &str,
        name: &str,
        source: &ListSource,
    ) -> Result<i64> {
        let now = now_ms();
        let (label, cond, args): (String, String, Vec<String>) = match source {
            ListSource::Segment(f) => {
                let c = compile(f, self.backend());
                (
                    "segment".into(),
                    format!("g.person_id IN (SELECT id FROM people WHERE {})", c.sql),
                    c.args,
                )
            }
            ListSource::PollingPlace(code) => (
                format!("polling_place:{code}"),
                "g.polling_place = $1".into(),
                vec![code.clone()],
            ),
            ListSource::Precinct(county, precinct) => (
                format!("precinct:{county}/{precinct}"),
                "g.county = $1 AND g.precinct = $2".into(),
                vec![county.clone(), precinct.clone()],
            ),
            ListSource::Empty => ("assigned".into(), "1 = 0".into(), vec![]),
        };
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar("INSERT INTO gotv_lists (kind, name, source, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                .bind(kind).bind(name).bind(&label).bind(now)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::from_unique(e, "a turf or call list with this name"))?;
            // The condition's values are $1..$n; the list id comes after them.
            let sql = format!("INSERT INTO gotv_list_members (list_id, person_id) SELECT ${}, g.person_id FROM gotv_universe g WHERE {cond}", args.len() + 1);
            let mut q = sqlx::query(&sql);
            for a in &args { q = q.bind(a); }
            q.bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Assigns people to a list; only supporters in the GOTV universe are taken.
    /// Returns how many were added now.
    pub async fn add_gotv_list_members(&self, list: i64, people: &[PersonId]) -> Result<u64> {
        self.gotv_list(list).await?;
        let backend = self.backend();
        let mut added = 0;
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in people.chunks(500) {
                let sql = format!(
                    "INSERT INTO gotv_list_members (list_id, person_id) SELECT {}, g.person_id FROM gotv_universe g WHERE g.person_id IN ({}) ON CONFLICT DO NOTHING",
                    crate::db::placeholders(backend, 1, 1),
                    crate::db::placeholders(backend, 2, chunk.len())
                );
                let mut q = sqlx::query(&sql).bind(list);
                for id in chunk { q = q.bind(id.0); }
                added += q.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })?;
        Ok(added)
    }

    /// Every turf and call list with its counts, by name.
    pub async fn gotv_lists(&self) -> Result<Vec<GotvList>> {
        self.gotv_lists_where("$1 = $1", 0).await
    }

    /// One list with its counts.
    pub async fn gotv_list(&self, id: i64) -> Result<GotvList> {
        self.gotv_lists_where("l.id = $1", id)
            .await?
            .pop()
            .ok_or(StoreError::NotFound("turf or call list"))
    }

    async fn gotv_lists_where(&self, cond: &str, arg: i64) -> Result<Vec<GotvList>> {
        let sql = format!(
            "SELECT l.id, l.kind, l.name, l.source, l.created_at,
                (SELECT COUNT(*) FROM gotv_list_members m WHERE m.list_id = l.id) AS members,
                (SELECT COUNT(*) FROM gotv_list_members m JOIN gotv_universe g ON g.person_id = m.person_id
                 WHERE m.list_id = l.id AND {REMAINING}) AS remaining
             FROM gotv_lists l WHERE {cond} ORDER BY l.name"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(arg).fetch_all(p).await?;
            rows.iter().map(|r| Ok(GotvList {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                source: r.try_get("source")?,
                created_at: r.try_get("created_at")?,
                members: r.try_get("members")?,
                remaining: r.try_get("remaining")?,
            })).collect()
        })
    }

    /// A page of a list's members not yet voted, by person id after `after`.
    pub async fn gotv_list_remaining(
        &self,
        list: i64,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<ListVoter>> {
        let sql = format!("SELECT g.person_id, g.code, g.precinct, g.polling_place, p.first_name, p.last_name,
                p.addr_line1, p.addr_line2, p.city, p.zip, p.phone
             FROM gotv_list_members m JOIN gotv_universe g ON g.person_id = m.person_id JOIN people p ON p.id = m.person_id
             WHERE m.list_id = $1 AND m.person_id > $2 AND {REMAINING}
             ORDER BY m.person_id LIMIT $3");
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(list).bind(after.map(|a| a.0).unwrap_or(0)).bind(limit.clamp(1, 10_000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(ListVoter {
                person_id: PersonId(r.try_get("person_id")?),
                code: r.try_get("code")?,
                first_name: r.try_get("first_name")?,
                last_name: r.try_get("last_name")?,
                addr_line1: r.try_get("addr_line1")?,
                addr_line2: r.try_get("addr_line2")?,
                city: r.try_get("city")?,
                zip: r.try_get("zip")?,
                phone: r.try_get("phone")?,
                precinct: r.try_get("precinct")?,
                polling_place: r.try_get("polling_place")?,
            })).collect()
        })
    }

    /// The people these voter ids belong to (ids not found are left out).
    pub async fn people_by_voter_ids(&self, ids: &[String]) -> Result<HashMap<String, VoterMatch>> {
        let backend = self.backend();
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT p.voter_id, p.id, CASE WHEN g.person_id IS NULL THEN 0 ELSE 1 END AS in_universe
                 FROM people p LEFT JOIN gotv_universe g ON g.person_id = p.id WHERE p.voter_id IN ({})",
                crate::db::placeholders(backend, 1, chunk.len())
            );
            on_read!(self, p => {
                let mut q = sqlx::query(&sql);
                for id in chunk { q = q.bind(id); }
                for r in q.fetch_all(p).await? {
                    let in_universe: i32 = r.try_get("in_universe")?;
                    out.insert(
                        r.try_get("voter_id")?,
                        VoterMatch { person: PersonId(r.try_get("id")?), in_universe: in_universe == 1 },
                    );
                }
                Ok::<_, StoreError>(())
            })?;
        }
        Ok(out)
    }
}

impl Store {
    /// A blast-like write load (for the capacity test and benches): one transaction
    /// rewriting every person whose id is `k` modulo `m`. Returns the rows touched.
    pub async fn bench_touch_people(&self, k: i64, m: i64) -> Result<u64> {
        Ok(
            on_write!(self, p => sqlx::query("UPDATE people SET updated_at = updated_at + 1 WHERE id % $1 = $2")
            .bind(m.max(1)).bind(k).execute(p).await.map(|r| r.rows_affected()))?,
        )
    }

    /// For `narwhal bench turnout`: `people` synthetic supporters spread over
    /// `places` polling places (one precinct each, county `BENCH`), all in the GOTV
    /// universe. Returns the polling-place codes.
    pub async fn bench_seed_universe(&self, people: i64, places: i64) -> Result<Vec<String>> {
        let now = now_ms();
        let places = places.max(1);
        let codes: Vec<String> = (1..=places).map(|i| format!("B{i:05}")).collect();
        let new: Vec<crate::turnout::NewPollingPlace> = codes
            .iter()
            .map(|c| crate::turnout::NewPollingPlace {
                code: c.clone(),
                name: format!("Bench place {c}"),
                address: String::new(),
                precincts: vec![("BENCH".into(), c.clone())],
            })
            .collect();
        self.upsert_polling_places(&new).await?;
        let insert = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $1)
            INSERT INTO people (first_name, last_name, addr_line1, city, state, county, precinct, created_at, updated_at)
            SELECT 'Voter', 'N' || CAST(i AS TEXT), CAST(i AS TEXT) || ' Main St', 'Columbus', 'OH', 'BENCH',
                   'B' || SUBSTR('00000' || CAST((i % $2) + 1 AS TEXT), LENGTH(CAST((i % $2) + 1 AS TEXT)) + 1, 5), $3, $3
            FROM s";
        on_write!(self, p => sqlx::query(insert).bind(people).bind(places).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        let f = SegmentFilter::parse(&serde_json::json!({"county": "BENCH"}))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.build_universe(&f).await?;
        Ok(codes)
    }
}
