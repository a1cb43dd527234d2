//! Election day storage: polling places and their precincts, the GOTV universe with
//! voter codes, poll watchers, and turnout reports.
//!
//! Invariants:
//! - A report is stored once per `report_id`, ever (`UNIQUE` + `ON CONFLICT DO
//!   NOTHING`): a retried batch, a report sent on two channels under one id, or two
//!   nodes receiving the same batch at once all leave one row.
//! - A batch of reports is committed in one transaction before any outcome is
//!   returned; an item that is rejected takes nothing else in the batch with it.
//! - A voter has voted when at least one of their reports is not undone, so a voter
//!   reported by two channels counts once, and undoing one of two reports keeps them
//!   voted. An undo that arrives before its report leaves a tombstone (a row already
//!   undone), so the late report is a duplicate and the result does not depend on
//!   arrival order.

use crate::error::{Result, StoreError};
use crate::segments::compile;
use crate::turnout_memo::{CellKey, IngestMemo};
use crate::{now_ms, Backend, Store};
use narwhal_domain::{PersonId, SegmentFilter, UserId};
use serde::Serialize;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Voter codes are `seq` scrambled by this bijection of `0..CODE_SPACE`: the
/// multiplier is coprime with 10^7, so distinct seqs get distinct codes.
pub const CODE_SPACE: i64 = 10_000_000;
const CODE_MUL: i64 = 3_712_019;
const CODE_ADD: i64 = 1_234_567;
/// Rows per multi-row statement (7 values each, well under both backends' limits).
const CHUNK: usize = 500;

/// A polling place as imported, with the precincts that vote there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPollingPlace {
    /// Short stable code, e.g. `FRA-12`.
    pub code: String,
    pub name: String,
    pub address: String,
    /// `(county, precinct)`, upper-cased as people's addresses store them.
    pub precincts: Vec<(String, String)>,
}

/// A stored polling place with its counts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PollingPlace {
    pub code: String,
    pub name: String,
    pub address: String,
    /// Precincts assigned to it.
    pub precincts: i64,
    /// People of the GOTV universe who vote here.
    pub universe: i64,
    /// Of those, how many have not been reported as voted.
    pub remaining: i64,
}

/// What building the universe did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UniverseBuilt {
    /// People added now (people already in it are kept with their codes).
    pub added: u64,
    /// People of the segment whose precinct has no polling place: not added.
    pub unassigned: i64,
}

/// A poll watcher's stored row. `secret_hash` is never shown.
#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    pub user_id: UserId,
    pub polling_place: String,
    /// `pin` or `link`.
    pub kind: String,
    pub secret_hash: String,
    pub issued_at: i64,
    pub expires_at: Option<i64>,
}

/// Who a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The 7-digit voter code (without its check digit).
    Code(i64),
    Person(PersonId),
}

/// One report as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportIn {
    pub report_id: String,
    pub target: Target,
    pub voted_at: i64,
    /// Undo the report with this `report_id` instead of making it.
    pub undo: bool,
}

/// Why one item of a batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// No one in the GOTV universe has this code or id.
    UnknownVoter,
    /// The voter votes at another polling place than the reporter's.
    OtherPollingPlace,
    /// This report id was already used for another voter.
    ReportIdReused,
}

/// What happened to one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now (a report, or an undo that took effect).
    Accepted(PersonId),
    /// Already stored before (a retry): nothing changed.
    Duplicate(PersonId),
    Rejected(Rejection),
}

/// Turnout of one precinct.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrecinctTurnout {
    pub county: String,
    pub precinct: String,
    pub polling_place: String,
    pub universe: i64,
    pub voted: i64,
}

/// A supporter still to turn out, as a watcher's or canvasser's list shows them.
#[derive(Debug, Clone, Serialize)]
pub struct RemainingVoter {
    pub person_id: PersonId,
    /// The 7-digit code without its check digit.
    pub code: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub addr_line1: Option<String>,
    pub precinct: String,
}

/// One batch of a group commit: who reports (the polling place a watcher is limited
/// to, their watcher row), on which channel, and the items.
#[derive(Debug, Clone, Copy)]
pub struct ReportGroup<'a> {
    pub place: Option<&'a str>,
    pub watcher_id: Option<i64>,
    pub channel: &'a str,
    pub items: &'a [ReportIn],
}

/// Repeats within a batch are duplicates of their first (or share its rejection).
pub(crate) fn resolve_repeats(
    items: &[ReportIn],
    out: Vec<Option<Outcome>>,
) -> Result<Vec<Outcome>> {
    let mut first: HashMap<(&str, bool), Outcome> = HashMap::new();
    let mut result = Vec::with_capacity(items.len());
    for (item, o) in items.iter().zip(out) {
        let key = (item.report_id.as_str(), item.undo);
        let o = match o {
            Some(o) => {
                first.entry(key).or_insert(o);
                o
            }
            None => match first.get(&key) {
                Some(Outcome::Accepted(p)) | Some(Outcome::Duplicate(p)) => Outcome::Duplicate(*p),
                Some(r) => *r,
                None => {
                    return Err(StoreError::Corrupt(
                        "a batch item was left unresolved".into(),
                    ))
                }
            },
        };
        result.push(o);
    }
    Ok(result)
}

/// An hour in ms: the tallies count voters per UTC hour (`voted_at / HOUR_MS`).
const HOUR_MS: i64 = 3_600_000;

/// The tally cells (county, precinct, polling place) of the voters a transaction
/// touches, each stored once; voters refer to theirs by index.
#[derive(Default)]
struct Cells {
    keys: Vec<(String, String, String)>,
    index: HashMap<(String, String, String), usize>,
}

impl Cells {
    fn intern(&mut self, county: String, precinct: String, place: String) -> usize {
        let next = self.keys.len();
        let key = (county, precinct, place);
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        self.keys.push(key.clone());
        self.index.insert(key, next);
        next
    }

    fn place(&self, cell: usize) -> &str {
        &self.keys[cell].2
    }
}

/// What a transaction did to one voter: the earliest voted time of the reports it
/// added (if any), whether it undid one, and the voter's tally cell.
#[derive(Clone, Copy)]
struct Change {
    added: Option<i64>,
    undone: bool,
    cell: usize,
}

/// Every voter whose live reports a transaction changed.
#[derive(Default)]
struct Changes(HashMap<i64, Change>);

impl Changes {
    fn add(&mut self, p: PersonId, cell: usize, t: i64) {
        let e = self.0.entry(p.0).or_insert(Change {
            added: None,
            undone: false,
            cell,
        });
        e.added = Some(e.added.map_or(t, |a| a.min(t)));
    }

    fn undo(&mut self, p: PersonId, cell: usize) {
        self.0
            .entry(p.0)
            .or_insert(Change {
                added: None,
                undone: false,
                cell,
            })
            .undone = true;
    }
}

/// `(?, ?, ...), (...)`: `rows` tuples of `width` markers.
fn tuples(backend: Backend, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            format!(
                "({})",
                crate::db::placeholders(backend, r * width + 1, width)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition that a universe row `g` is still to turn out: no row in
/// `turnout_voted`, which [`Store::ingest_reports`] keeps (a primary-key lookup).
pub(crate) const REMAINING: &str =
    "NOT EXISTS (SELECT 1 FROM turnout_voted v WHERE v.person_id = g.person_id)";

/// One report row to insert.
struct NewReport<'a> {
    report_id: &'a str,
    person_id: i64,
    polling_place: &'a str,
    watcher_id: Option<i64>,
    channel: &'a str,
    voted_at: i64,
    /// The voter's tally cell (an index into the transaction's [`Cells`]).
    cell: usize,
}

/// What [`IngestSql::insert_reports`] did: the report ids it stored, the owners of
/// ids found already stored when the backend learned them on the way, and, when it
/// was asked to and could, the voters whose `turnout_voted` row it inserted (their
/// tallies added too).
struct Inserted {
    ids: HashSet<String>,
    owners: HashMap<String, i64>,
    claimed: Option<HashSet<i64>>,
}

/// A universe row found by code or person id: (person, code, polling place, county,
/// precinct).
type UniverseRow = (i64, i64, String, String, String);

/// One tally change: (county, precinct, polling place, hour, people added).
type TallyDelta<'a> = (&'a str, &'a str, &'a str, i64, i64);

/// The bulk statements of the ingest, which differ by backend. PostgreSQL binds whole
/// arrays (`= ANY`, `unnest`): one statement and one plan whatever the number of
/// items. SQLite runs multi-row statements of anonymous markers, [`CHUNK`] rows each,
/// and reads results back as one JSON array per statement. Each method runs inside
/// the caller's transaction.
trait IngestSql {
    /// The universe rows whose `code` (or, with `by_person`, `person_id`) is in `keys`.
    fn universe_rows(
        &mut self,
        by_person: bool,
        keys: &[i64],
    ) -> impl std::future::Future<Output = Result<Vec<UniverseRow>>> + Send;

    /// Inserts the reports whose id is new. With `claim` (the transaction undoes
    /// nothing, so every voter with a new report is a first report unless they have
    /// a row), a backend may also do step 4's claim of those voters (see
    /// [`IngestSql::claim_voters`], each at the earliest of their new reports) and
    /// add the claimed to the tallies, in the same statement.
    fn insert_reports(
        &mut self,
        rows: &[NewReport<'_>],
        now: i64,
        claim: Option<&Cells>,
    ) -> impl std::future::Future<Output = Result<Inserted>> + Send;

    /// Who each of these stored report ids is about.
    fn report_owners(
        &mut self,
        ids: &[&str],
    ) -> impl std::future::Future<Output = Result<HashMap<String, i64>>> + Send;

    /// Inserts `(person, voted_at)` into `turnout_voted` where the person has no row
    /// (input sorted by person); returns the people inserted now, whose rows this
    /// transaction then holds. On PostgreSQL an insert racing another transaction's
    /// waits for it to end, so two first reports of one voter never both insert.
    fn claim_voters(
        &mut self,
        rows: &[(i64, i64)],
    ) -> impl std::future::Future<Output = Result<HashSet<i64>>> + Send;

    /// The `turnout_voted` rows of these people (sorted), locked in that order on
    /// PostgreSQL. People without a row are left out.
    fn lock_voters(
        &mut self,
        people: &[i64],
    ) -> impl std::future::Future<Output = Result<HashMap<i64, i64>>> + Send;

    /// The earliest voted time of each person's reports that are not undone (people
    /// without one are left out), this transaction's own writes included.
    fn live_minimum(
        &mut self,
        people: &[i64],
    ) -> impl std::future::Future<Output = Result<HashMap<i64, i64>>> + Send;

    /// Sets `turnout_voted.voted_at` for `set` and deletes the rows of `delete`.
    fn write_voters(
        &mut self,
        set: &[(i64, i64)],
        delete: &[i64],
    ) -> impl std::future::Future<Output = Result<()>> + Send;

    /// Adds to `turnout_tallies` (cells distinct and in key order, so that concurrent
    /// transactions lock tally rows in one order).
    fn add_tallies(
        &mut self,
        cells: &[TallyDelta<'_>],
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// The rows of a `json_group_array(json_array(...))` result.
fn json_rows<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("an aggregated result did not read back: {e}")))
}

/// Runs a SQLite query of the form `SELECT json_group_array(...) ... IN (<markers>)`
/// over `keys` in chunks of [`CHUNK`]; `sql` holds `{}` where the markers go.
async fn sqlite_json_in<T: serde::de::DeserializeOwned>(
    c: &mut sqlx::SqliteConnection,
    sql: &str,
    keys: &[i64],
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(CHUNK) {
        let sql = sql.replacen(
            "{}",
            &crate::db::placeholders(Backend::Sqlite, 1, chunk.len()),
            1,
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for k in chunk {
            q = q.bind(k);
        }
        out.extend(json_rows::<T>(&q.fetch_one(&mut *c).await?)?);
    }
    Ok(out)
}

impl IngestSql for sqlx::SqliteConnection {
    // Results come back as one JSON array per statement: sqlx hands every row from
    // SQLite's thread to the caller's task on its own, which cost more than the
    // statements themselves at a hundred rows per batch.
    async fn universe_rows(&mut self, by_person: bool, keys: &[i64]) -> Result<Vec<UniverseRow>> {
        let sql = if by_person {
            "SELECT json_group_array(json_array(person_id, code, polling_place, county, precinct)) FROM gotv_universe WHERE person_id IN ({})"
        } else {
            "SELECT json_group_array(json_array(person_id, code, polling_place, county, precinct)) FROM gotv_universe WHERE code IN ({})"
        };
        sqlite_json_in(self, sql, keys).await
    }

    async fn insert_reports(
        &mut self,
        rows: &[NewReport<'_>],
        now: i64,
        _claim: Option<&Cells>,
    ) -> Result<Inserted> {
        // The only writer, inside its transaction: the ids not stored now are exactly
        // the ones the insert stores.
        let ids: Vec<&str> = rows.iter().map(|r| r.report_id).collect();
        let known = self.report_owners(&ids).await?;
        let new: Vec<&NewReport<'_>> = rows
            .iter()
            .filter(|r| !known.contains_key(r.report_id))
            .collect();
        let mut inserted = HashSet::with_capacity(new.len());
        for chunk in new.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO turnout_reports (report_id, person_id, polling_place, watcher_id, channel, voted_at, received_at) VALUES {} ON CONFLICT (report_id) DO NOTHING",
                tuples(Backend::Sqlite, chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.report_id)
                    .bind(r.person_id)
                    .bind(r.polling_place)
                    .bind(r.watcher_id)
                    .bind(r.channel)
                    .bind(r.voted_at)
                    .bind(now);
            }
            let n = q.execute(&mut *self).await?.rows_affected();
            if n != chunk.len() as u64 {
                return Err(StoreError::Corrupt(
                    "a report id appeared while the only writer held the database".into(),
                ));
            }
            inserted.extend(chunk.iter().map(|r| r.report_id.to_string()));
        }
        Ok(Inserted {
            ids: inserted,
            owners: known,
            claimed: None,
        })
    }

    async fn report_owners(&mut self, ids: &[&str]) -> Result<HashMap<String, i64>> {
        let mut owner = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT json_group_array(json_array(report_id, person_id)) FROM turnout_reports WHERE report_id IN ({})",
                crate::db::placeholders(Backend::Sqlite, 1, chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            let rows: Vec<(String, i64)> = json_rows(&q.fetch_one(&mut *self).await?)?;
            owner.extend(rows);
        }
        Ok(owner)
    }

    async fn claim_voters(&mut self, rows: &[(i64, i64)]) -> Result<HashSet<i64>> {
        // The only writer: the people without a row now are the ones inserted.
        let people: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let have: HashSet<i64> = self.lock_voters(&people).await?.into_keys().collect();
        let new: Vec<&(i64, i64)> = rows.iter().filter(|r| !have.contains(&r.0)).collect();
        for chunk in new.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO turnout_voted (person_id, voted_at) VALUES {}",
                tuples(Backend::Sqlite, chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (p, t) in chunk {
                q = q.bind(p).bind(t);
            }
            q.execute(&mut *self).await?;
        }
        Ok(new.into_iter().map(|r| r.0).collect())
    }

    async fn lock_voters(&mut self, people: &[i64]) -> Result<HashMap<i64, i64>> {
        // One writer: reading is locking.
        let rows: Vec<(i64, i64)> = sqlite_json_in(
            self,
            "SELECT json_group_array(json_array(person_id, voted_at)) FROM turnout_voted WHERE person_id IN ({})",
            people,
        )
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn live_minimum(&mut self, people: &[i64]) -> Result<HashMap<i64, i64>> {
        let rows: Vec<(i64, i64)> = sqlite_json_in(
            self,
            "SELECT json_group_array(json_array(person_id, t)) FROM (SELECT person_id, MIN(voted_at) AS t FROM turnout_reports WHERE person_id IN ({}) AND undone_at IS NULL GROUP BY person_id)",
            people,
        )
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn write_voters(&mut self, set: &[(i64, i64)], delete: &[i64]) -> Result<()> {
        for chunk in set.chunks(CHUNK) {
            let sql = format!(
                "WITH v (p, t) AS (VALUES {}) UPDATE turnout_voted SET voted_at = (SELECT v.t FROM v WHERE v.p = turnout_voted.person_id) WHERE person_id IN (SELECT p FROM v)",
                tuples(Backend::Sqlite, chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (p, t) in chunk {
                q = q.bind(p).bind(t);
            }
            q.execute(&mut *self).await?;
        }
        for chunk in delete.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM turnout_voted WHERE person_id IN ({})",
                crate::db::placeholders(Backend::Sqlite, 1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for p in chunk {
                q = q.bind(p);
            }
            q.execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn add_tallies(&mut self, cells: &[TallyDelta<'_>]) -> Result<()> {
        for chunk in cells.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people) VALUES {} ON CONFLICT DO UPDATE SET people = people + excluded.people",
                tuples(Backend::Sqlite, chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (county, precinct, place, hour, n) in chunk {
                q = q.bind(county).bind(precinct).bind(place).bind(hour).bind(n);
            }
            q.execute(&mut *self).await?;
        }
        Ok(())
    }
}

/// The `(person, value)` pairs a PostgreSQL query over `people` (bound as `$1`) returns.
async fn pg_pairs(
    c: &mut sqlx::PgConnection,
    sql: &str,
    people: &[i64],
) -> Result<HashMap<i64, i64>> {
    if people.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(sql).bind(people).fetch_all(c).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

impl IngestSql for sqlx::PgConnection {
    async fn universe_rows(&mut self, by_person: bool, keys: &[i64]) -> Result<Vec<UniverseRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = if by_person {
            "SELECT person_id, code, polling_place, county, precinct FROM gotv_universe WHERE person_id = ANY($1::BIGINT[])"
        } else {
            "SELECT person_id, code, polling_place, county, precinct FROM gotv_universe WHERE code = ANY($1::BIGINT[])"
        };
        let rows = sqlx::query(sql).bind(keys).fetch_all(&mut *self).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    async fn insert_reports(
        &mut self,
        rows: &[NewReport<'_>],
        now: i64,
        claim: Option<&Cells>,
    ) -> Result<Inserted> {
        if rows.is_empty() {
            return Ok(Inserted {
                ids: HashSet::new(),
                owners: HashMap::new(),
                claimed: claim.map(|_| HashSet::new()),
            });
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.report_id).collect();
        let people: Vec<i64> = rows.iter().map(|r| r.person_id).collect();
        let places: Vec<&str> = rows.iter().map(|r| r.polling_place).collect();
        let watchers: Vec<Option<i64>> = rows.iter().map(|r| r.watcher_id).collect();
        let channels: Vec<&str> = rows.iter().map(|r| r.channel).collect();
        let voted: Vec<i64> = rows.iter().map(|r| r.voted_at).collect();
        let Some(cells) = claim else {
            let inserted: Vec<String> = sqlx::query_scalar(
                "INSERT INTO turnout_reports (report_id, person_id, polling_place, watcher_id, channel, voted_at, received_at)
                 SELECT r, p, pl, w, c, v, $7 FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[]) AS t(r, p, pl, w, c, v)
                 ON CONFLICT (report_id) DO NOTHING RETURNING report_id",
            )
            .bind(&ids)
            .bind(&people)
            .bind(&places)
            .bind(&watchers)
            .bind(&channels)
            .bind(&voted)
            .bind(now)
            .fetch_all(&mut *self)
            .await?;
            return Ok(Inserted {
                ids: inserted.into_iter().collect(),
                owners: HashMap::new(),
                claimed: None,
            });
        };
        // One statement for steps 3 and 4 of a transaction without undos: the new
        // reports, the first reports' voters (in person order, as claim_voters), their
        // tallies (in the byte order of the cell keys, as add_tallies, so concurrent
        // transactions lock tally rows in one order), and who owns the ids that were
        // already stored (read from the statement's snapshot; an id stored by a
        // transaction that committed after it is looked up by the caller).
        let row_cells: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.cell).unwrap_or(i32::MAX))
            .collect();
        let counties: Vec<&str> = cells.keys.iter().map(|k| k.0.as_str()).collect();
        let precincts: Vec<&str> = cells.keys.iter().map(|k| k.1.as_str()).collect();
        let cell_places: Vec<&str> = cells.keys.iter().map(|k| k.2.as_str()).collect();
        let (inserted, claimed, owned_ids, owners): (Vec<String>, Vec<i64>, Vec<String>, Vec<i64>) =
            sqlx::query_as(
                "WITH src AS (
                    SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[], $8::INT[]) AS t(r, p, pl, w, c, v, cell)
                 ), ins AS (
                    INSERT INTO turnout_reports (report_id, person_id, polling_place, watcher_id, channel, voted_at, received_at)
                    SELECT r, p, pl, w, c, v, $7 FROM src
                    ON CONFLICT (report_id) DO NOTHING RETURNING report_id, person_id, voted_at
                 ), voted AS (
                    INSERT INTO turnout_voted (person_id, voted_at)
                    SELECT person_id, MIN(voted_at) FROM ins GROUP BY person_id ORDER BY person_id
                    ON CONFLICT (person_id) DO NOTHING RETURNING person_id, voted_at
                 ), cells AS (
                    SELECT * FROM unnest($9::TEXT[], $10::TEXT[], $11::TEXT[]) WITH ORDINALITY AS k(county, precinct, place, n)
                 ), tallied AS (
                    INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
                    SELECT k.county, k.precinct, k.place, v.voted_at / 3600000, COUNT(*)
                    FROM voted v JOIN (SELECT DISTINCT p, cell FROM src) pc ON pc.p = v.person_id
                    JOIN cells k ON k.n = pc.cell + 1
                    GROUP BY 1, 2, 3, 4
                    ORDER BY k.county COLLATE \"C\", k.precinct COLLATE \"C\", k.place COLLATE \"C\", 4
                    ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people
                 ), own AS (
                    SELECT s.r, x.person_id FROM src s JOIN turnout_reports x ON x.report_id = s.r
                    WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.report_id = s.r)
                 )
                 SELECT ARRAY(SELECT report_id FROM ins), ARRAY(SELECT person_id FROM voted),
                        ARRAY(SELECT r FROM own), ARRAY(SELECT person_id FROM own)",
            )
            .bind(&ids)
            .bind(&people)
            .bind(&places)
            .bind(&watchers)
            .bind(&channels)
            .bind(&voted)
            .bind(now)
            .bind(&row_cells)
            .bind(&counties)
            .bind(&precincts)
            .bind(&cell_places)
            .fetch_one(&mut *self)
            .await?;
        Ok(Inserted {
            ids: inserted.into_iter().collect(),
            owners: owned_ids.into_iter().zip(owners).collect(),
            claimed: Some(claimed.into_iter().collect()),
        })
    }

    async fn report_owners(&mut self, ids: &[&str]) -> Result<HashMap<String, i64>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT report_id, person_id FROM turnout_reports WHERE report_id = ANY($1::TEXT[])",
        )
        .bind(ids)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("report_id")?, r.try_get("person_id")?)))
            .collect()
    }

    async fn claim_voters(&mut self, rows: &[(i64, i64)]) -> Result<HashSet<i64>> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let people: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let times: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let inserted: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO turnout_voted (person_id, voted_at)
             SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[])
             ON CONFLICT (person_id) DO NOTHING RETURNING person_id",
        )
        .bind(&people)
        .bind(&times)
        .fetch_all(&mut *self)
        .await?;
        Ok(inserted.into_iter().collect())
    }

    async fn lock_voters(&mut self, people: &[i64]) -> Result<HashMap<i64, i64>> {
        pg_pairs(self, "SELECT person_id, voted_at FROM turnout_voted WHERE person_id = ANY($1::BIGINT[]) ORDER BY person_id FOR UPDATE", people).await
    }

    async fn live_minimum(&mut self, people: &[i64]) -> Result<HashMap<i64, i64>> {
        pg_pairs(self, "SELECT person_id, MIN(voted_at) FROM turnout_reports WHERE person_id = ANY($1::BIGINT[]) AND undone_at IS NULL GROUP BY person_id", people).await
    }

    async fn write_voters(&mut self, set: &[(i64, i64)], delete: &[i64]) -> Result<()> {
        if !set.is_empty() {
            let people: Vec<i64> = set.iter().map(|r| r.0).collect();
            let times: Vec<i64> = set.iter().map(|r| r.1).collect();
            sqlx::query(
                "UPDATE turnout_voted AS x SET voted_at = v.t
                 FROM unnest($1::BIGINT[], $2::BIGINT[]) AS v(p, t) WHERE x.person_id = v.p",
            )
            .bind(&people)
            .bind(&times)
            .execute(&mut *self)
            .await?;
        }
        if !delete.is_empty() {
            sqlx::query("DELETE FROM turnout_voted WHERE person_id = ANY($1::BIGINT[])")
                .bind(delete)
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }

    async fn add_tallies(&mut self, cells: &[TallyDelta<'_>]) -> Result<()> {
        if cells.is_empty() {
            return Ok(());
        }
        let counties: Vec<&str> = cells.iter().map(|c| c.0).collect();
        let precincts: Vec<&str> = cells.iter().map(|c| c.1).collect();
        let places: Vec<&str> = cells.iter().map(|c| c.2).collect();
        let hours: Vec<i64> = cells.iter().map(|c| c.3).collect();
        let people: Vec<i64> = cells.iter().map(|c| c.4).collect();
        sqlx::query(
            "INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[])
             ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people",
        )
        .bind(&counties)
        .bind(&precincts)
        .bind(&places)
        .bind(&hours)
        .bind(&people)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

/// Step 4 of the ingest: who counts as voted now, for every voter whose live reports
/// this transaction changed, and the tallies by as much. `claimed`: the voters whose
/// first report step 3 already claimed and tallied, if it did. A voter's first report
/// inserts their `turnout_voted` row (the common case: one bulk insert); everyone
/// else (a later report, an undo, or a first report racing another transaction's) is
/// settled under the lock of their row, from the row and, after an undo, from their
/// live reports.
async fn apply_changes<C: IngestSql + Send>(
    c: &mut C,
    changes: &Changes,
    cells: &Cells,
    claimed: Option<HashSet<i64>>,
) -> Result<()> {
    let mut tally: HashMap<(usize, i64), i64> = HashMap::new();
    let claimed = match claimed {
        // Claimed, and tallied, with the reports' insert.
        Some(claimed) => claimed,
        None => {
            // First reports: voters with reports added and none undone.
            let mut firsts: Vec<(i64, i64)> = changes
                .0
                .iter()
                .filter_map(|(p, ch)| ch.added.filter(|_| !ch.undone).map(|t| (*p, t)))
                .collect();
            firsts.sort_unstable();
            let claimed = c.claim_voters(&firsts).await?;
            for (p, t) in &firsts {
                if claimed.contains(p) {
                    *tally.entry((changes.0[p].cell, t / HOUR_MS)).or_default() += 1;
                }
            }
            claimed
        }
    };
    let mut rest: Vec<i64> = changes
        .0
        .keys()
        .filter(|p| !claimed.contains(*p))
        .copied()
        .collect();
    rest.sort_unstable();
    if !rest.is_empty() {
        // Lock the rows there are; insert (and so hold) the missing ones. A row another
        // transaction inserted meanwhile is locked on the next round.
        let mut before: HashMap<i64, Option<i64>> = HashMap::with_capacity(rest.len());
        let mut stored: HashMap<i64, i64> = HashMap::with_capacity(rest.len());
        let mut todo = rest.clone();
        for round in 0.. {
            if round == 100 {
                return Err(StoreError::Corrupt(
                    "voters' rows kept changing under the ingest".into(),
                ));
            }
            let locked = c.lock_voters(&todo).await?;
            let missing: Vec<(i64, i64)> = todo
                .iter()
                .filter(|p| !locked.contains_key(*p))
                .map(|p| (*p, changes.0[p].added.unwrap_or(0)))
                .collect();
            for (p, t) in locked {
                before.insert(p, Some(t));
                stored.insert(p, t);
            }
            let inserted = c.claim_voters(&missing).await?;
            for (p, t) in &missing {
                if inserted.contains(p) {
                    before.insert(*p, None);
                    stored.insert(*p, *t);
                }
            }
            todo = missing
                .iter()
                .filter(|(p, _)| !inserted.contains(p))
                .map(|(p, _)| *p)
                .collect();
            if todo.is_empty() {
                break;
            }
        }
        // After an undo, the earliest live report says; otherwise reports only added.
        let undone: Vec<i64> = rest
            .iter()
            .filter(|p| changes.0[*p].undone)
            .copied()
            .collect();
        let live = c.live_minimum(&undone).await?;
        let (mut set, mut delete) = (Vec::new(), Vec::new());
        for p in &rest {
            let ch = changes.0[p];
            let was = before.get(p).copied().flatten();
            let now = if ch.undone {
                live.get(p).copied()
            } else {
                match (was, ch.added) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            match (stored.get(p), now) {
                (Some(_), None) => delete.push(*p),
                (Some(s), Some(n)) if *s != n => set.push((*p, n)),
                _ => {}
            }
            if let Some(t) = was {
                *tally.entry((ch.cell, t / HOUR_MS)).or_default() -= 1;
            }
            if let Some(t) = now {
                *tally.entry((ch.cell, t / HOUR_MS)).or_default() += 1;
            }
        }
        c.write_voters(&set, &delete).await?;
    }
    let mut deltas: Vec<TallyDelta<'_>> = tally
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((cell, hour), n)| {
            let (county, precinct, place) = &cells.keys[cell];
            (county.as_str(), precinct.as_str(), place.as_str(), hour, n)
        })
        .collect();
    deltas.sort_unstable();
    c.add_tallies(&deltas).await
}

/// Steps 1 to 3 of the ingest for `groups`, in one transaction on `c`: find who each
/// item is about, reject what cannot be taken (each batch against its own polling
/// place), store the reports with one bulk insert, and tell new reports from retries
/// and reused ids. Fills `outs` (repeats within a batch are left for
/// [`resolve_repeats`]) and `changes`, and interns the voters' tally cells in
/// `cells`; returns the undos, `(batch, item, person, cell)`, for the caller to apply
/// after. With `claim` (no undo in the transaction), the backend may claim the first
/// reports' voters on the way (see [`IngestSql::insert_reports`]) and puts who it
/// claimed there.
async fn take_reports<C: IngestSql + Send>(
    c: &mut C,
    groups: &[ReportGroup<'_>],
    outs: &mut [Vec<Option<Outcome>>],
    cells: &mut Cells,
    changes: &mut Changes,
    now: i64,
    claim: Option<&mut Option<HashSet<i64>>>,
    memo: Option<&IngestMemo>,
    learned: &mut Vec<(String, i64)>,
) -> Result<Vec<(usize, usize, PersonId, usize)>> {
    // 1. Who each item is about, and where they vote (from the memo when it knows).
    let mut codes: Vec<i64> = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut found: HashMap<Target, (PersonId, usize)> = HashMap::new();
    for g in groups {
        for i in g.items {
            if found.contains_key(&i.target) {
                continue;
            }
            if let Some((pid, cell)) = memo.and_then(|m| m.voter(&i.target)) {
                let cell = cells.intern(cell.0.clone(), cell.1.clone(), cell.2.clone());
                found.insert(i.target, (pid, cell));
                continue;
            }
            match i.target {
                Target::Code(c) => codes.push(c),
                Target::Person(p) => ids.push(p.0),
            }
        }
    }
    codes.sort_unstable();
    codes.dedup();
    ids.sort_unstable();
    ids.dedup();
    for (by_person, keys) in [(false, &codes), (true, &ids)] {
        if keys.is_empty() {
            continue;
        }
        let mut voters: Vec<(i64, i64, CellKey)> = Vec::new();
        let mut keys_of: HashMap<usize, CellKey> = HashMap::new();
        for (pid, code, pl, county, precinct) in c.universe_rows(by_person, keys).await? {
            let cell = cells.intern(county, precinct, pl);
            found.insert(Target::Code(code), (PersonId(pid), cell));
            found.insert(Target::Person(PersonId(pid)), (PersonId(pid), cell));
            if memo.is_some() {
                let key = keys_of
                    .entry(cell)
                    .or_insert_with(|| Arc::new(cells.keys[cell].clone()))
                    .clone();
                voters.push((pid, code, key));
            }
        }
        if let Some(m) = memo {
            m.learn_voters(voters);
        }
    }
    let cells = &*cells;
    // 2. Reject what cannot be taken; keep the first of repeated items. A report id
    // an earlier batch of this group already stores is checked after the insert, as
    // if that batch had been committed first.
    let mut marks: Vec<(usize, usize, PersonId, usize)> = Vec::new();
    let mut undos: Vec<(usize, usize, PersonId, usize)> = Vec::new();
    let mut check: Vec<(usize, usize, PersonId)> = Vec::new();
    let mut claimed: HashSet<&str> = HashSet::new();
    for (k, (g, out)) in groups.iter().zip(outs.iter_mut()).enumerate() {
        let mut seen: HashSet<(&str, bool)> = HashSet::with_capacity(g.items.len());
        for (i, item) in g.items.iter().enumerate() {
            let Some((pid, cell)) = found.get(&item.target) else {
                out[i] = Some(Outcome::Rejected(Rejection::UnknownVoter));
                continue;
            };
            if g.place.is_some_and(|w| w != cells.place(*cell)) {
                out[i] = Some(Outcome::Rejected(Rejection::OtherPollingPlace));
                continue;
            }
            if !seen.insert((item.report_id.as_str(), item.undo)) {
                // A repeat within the batch: resolved from its first, by the caller.
                continue;
            }
            if item.undo {
                undos.push((k, i, *pid, *cell));
            } else if claimed.insert(item.report_id.as_str()) {
                marks.push((k, i, *pid, *cell));
            } else {
                check.push((k, i, *pid));
            }
        }
    }
    // 3. Reports: one bulk insert; what comes back is new.
    let rows: Vec<NewReport<'_>> = marks
        .iter()
        .map(|(k, i, pid, cell)| {
            let g = &groups[*k];
            NewReport {
                report_id: &g.items[*i].report_id,
                person_id: pid.0,
                polling_place: cells.place(*cell),
                watcher_id: g.watcher_id,
                channel: g.channel,
                voted_at: g.items[*i].voted_at,
                cell: *cell,
            }
        })
        .collect();
    let Inserted {
        ids: inserted,
        owners: mut owner,
        claimed: now_claimed,
    } = c
        .insert_reports(&rows, now, claim.is_some().then_some(cells))
        .await?;
    if let Some(slot) = claim {
        *slot = now_claimed;
    }
    for (k, i, pid, cell) in &marks {
        let item = &groups[*k].items[*i];
        if inserted.contains(&item.report_id) {
            outs[*k][*i] = Some(Outcome::Accepted(*pid));
            changes.add(*pid, *cell, item.voted_at);
            if memo.is_some() {
                learned.push((item.report_id.clone(), pid.0));
            }
        } else {
            check.push((*k, *i, *pid));
        }
    }
    // Already there: a retry, unless the id was used for someone else.
    if !check.is_empty() {
        let ids: Vec<&str> = check
            .iter()
            .map(|(k, i, _)| groups[*k].items[*i].report_id.as_str())
            .filter(|id| !owner.contains_key(*id))
            .collect();
        if !ids.is_empty() {
            owner.extend(c.report_owners(&ids).await?);
        }
        if memo.is_some() {
            learned.extend(owner.iter().map(|(id, p)| (id.clone(), *p)));
        }
        for (k, i, pid) in check {
            outs[k][i] = Some(match owner.get(&groups[k].items[i].report_id) {
                Some(o) if *o != pid.0 => Outcome::Rejected(Rejection::ReportIdReused),
                _ => Outcome::Duplicate(pid),
            });
        }
    }
    Ok(undos)
}

impl Store {
    /// Creates or updates polling places and assigns their precincts (a precinct
    /// named again moves to its new place), all in one transaction.
    pub async fn upsert_polling_places(&self, places: &[NewPollingPlace]) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            for pl in places {
                sqlx::query("INSERT INTO polling_places (code, name, address, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (code) DO UPDATE SET name = excluded.name, address = excluded.address, updated_at = excluded.updated_at")
                    .bind(&pl.code).bind(&pl.name).bind(&pl.address).bind(now)
                    .execute(&mut *tx).await?;
                for (county, precinct) in &pl.precincts {
                    sqlx::query("INSERT INTO polling_place_precincts (county, precinct, polling_place) VALUES ($1, $2, $3) ON CONFLICT (county, precinct) DO UPDATE SET polling_place = excluded.polling_place")
                        .bind(county).bind(precinct).bind(&pl.code)
                        .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every polling place with its counts, by code.
    pub async fn polling_places(&self) -> Result<Vec<PollingPlace>> {
        self.places_where("1 = 1 AND $1 = $1", "").await
    }

    /// One polling place with its counts.
    pub async fn polling_place(&self, code: &str) -> Result<PollingPlace> {
        self.places_where("pl.code = $1", code)
            .await?
            .pop()
            .ok_or(StoreError::NotFound("polling place"))
    }

    async fn places_where(&self, cond: &str, arg: &str) -> Result<Vec<PollingPlace>> {
        // From the tallies the ingest and the universe's triggers keep: hour -1 counts
        // the place's supporters, the other hours those who voted (see migration 0017).
        let sql = format!(
            "SELECT pl.code, pl.name, pl.address,
                (SELECT COUNT(*) FROM polling_place_precincts x WHERE x.polling_place = pl.code) AS precincts,
                CAST(COALESCE((SELECT SUM(t.people) FROM turnout_tallies t WHERE t.polling_place = pl.code AND t.hour < 0), 0) AS BIGINT) AS universe,
                CAST(COALESCE((SELECT SUM(CASE WHEN t.hour < 0 THEN t.people ELSE -t.people END) FROM turnout_tallies t WHERE t.polling_place = pl.code), 0) AS BIGINT) AS remaining
             FROM polling_places pl WHERE {cond} ORDER BY pl.code"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(arg).fetch_all(p).await?;
            rows.iter().map(|r| Ok(PollingPlace {
                code: r.try_get("code")?,
                name: r.try_get("name")?,
                address: r.try_get("address")?,
                precincts: r.try_get("precincts")?,
                universe: r.try_get("universe")?,
                remaining: r.try_get("remaining")?,
            })).collect()
        })
    }

    /// Adds the people matching `filter` to the GOTV universe in one `INSERT ...
    /// SELECT`, each at their precinct's polling place with a new voter code. People
    /// already in the universe keep their place and code; people whose precinct has
    /// no polling place are counted, not added. County and precinct are matched
    /// case-blind (the API stores them as sent; the importer upper-cases them).
    pub async fn build_universe(&self, filter: &SegmentFilter) -> Result<UniverseBuilt> {
        let c = compile(filter, self.backend());
        let n = c.args.len();
        let insert = format!(
            "INSERT INTO gotv_universe (person_id, seq, code, polling_place, county, precinct, added_at)
             SELECT x.id, x.seq, (x.seq * {CODE_MUL} + {CODE_ADD}) % {CODE_SPACE}, x.polling_place, x.county, x.precinct, ${now}
             FROM (
                SELECT m.id, pp.polling_place, pp.county, pp.precinct,
                       (SELECT COALESCE(MAX(seq), 0) FROM gotv_universe) + ROW_NUMBER() OVER (ORDER BY m.id) AS seq
                FROM (SELECT id, county, precinct FROM people WHERE {cond}) m
                JOIN polling_place_precincts pp ON pp.county = UPPER(TRIM(m.county)) AND pp.precinct = UPPER(TRIM(m.precinct))
                WHERE NOT EXISTS (SELECT 1 FROM gotv_universe g WHERE g.person_id = m.id)
             ) x",
            now = n + 1,
            cond = c.sql,
        );
        let unassigned = format!(
            "SELECT COUNT(*) FROM people WHERE {} AND NOT EXISTS (SELECT 1 FROM polling_place_precincts pp WHERE pp.county = UPPER(TRIM(people.county)) AND pp.precinct = UPPER(TRIM(people.precinct)))",
            c.sql
        );
        let now = now_ms();
        let added = on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut q = sqlx::query(&insert);
            for a in &c.args { q = q.bind(a); }
            let added = q.bind(now).execute(&mut *tx).await
                .map_err(|e| StoreError::from_unique(e, "a voter code (the universe is full)"))?
                .rows_affected();
            let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM gotv_universe").fetch_one(&mut *tx).await?;
            if max.unwrap_or(0) > CODE_SPACE {
                return Err(StoreError::Invalid(format!("the GOTV universe holds at most {CODE_SPACE} people")));
            }
            tx.commit().await?;
            Ok::<_, StoreError>(added)
        })?;
        let unassigned = on_read!(self, p => {
            let mut q = sqlx::query_scalar::<_, i64>(&unassigned);
            for a in &c.args { q = q.bind(a); }
            q.fetch_one(p).await
        })?;
        Ok(UniverseBuilt { added, unassigned })
    }

    /// How many people the GOTV universe holds.
    pub async fn universe_size(&self) -> Result<i64> {
        Ok(
            on_read!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM gotv_universe").fetch_one(p).await)?,
        )
    }

    /// Ties a (volunteer) user to a polling place with a PIN hash or link-token hash.
    /// A user watches one place; issuing again replaces the place and the secret.
    pub async fn upsert_watcher(
        &self,
        user: UserId,
        polling_place: &str,
        kind: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<i64> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let place: Option<String> = sqlx::query_scalar("SELECT code FROM polling_places WHERE code = $1").bind(polling_place).fetch_optional(&mut *tx).await?;
            if place.is_none() {
                return Err(StoreError::NotFound("polling place"));
            }
            let id: i64 = sqlx::query_scalar("INSERT INTO watchers (user_id, polling_place, kind, secret_hash, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (user_id) DO UPDATE SET polling_place = excluded.polling_place, kind = excluded.kind, secret_hash = excluded.secret_hash, issued_at = excluded.issued_at, expires_at = excluded.expires_at RETURNING id")
                .bind(user.0).bind(polling_place).bind(kind).bind(secret_hash).bind(now).bind(expires_at)
                .fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// The watcher row of a user, if they are a watcher.
    pub async fn watcher_by_user(&self, user: UserId) -> Result<Option<Watcher>> {
        // Bound as an integer, so that the lookup uses the unique index on user_id.
        self.watcher_where("user_id = $1", user.0).await
    }

    /// The watcher whose login-link token hashes to this.
    pub async fn watcher_by_secret(&self, secret_hash: &str) -> Result<Option<Watcher>> {
        self.watcher_where(
            "secret_hash = $1 AND kind = 'link'",
            secret_hash.to_string(),
        )
        .await
    }

    /// Sets (or, with `None`, clears) the mobile phone of a user's watcher row, the
    /// number SMS reports must come from. `NotFound` when the user is no watcher;
    /// `Conflict` when another watcher has this phone.
    pub async fn set_watcher_phone(&self, user: UserId, phone_e164: Option<&str>) -> Result<()> {
        let n = on_write!(self, p => {
            sqlx::query("UPDATE watchers SET phone = $1 WHERE user_id = $2")
                .bind(phone_e164).bind(user.0)
                .execute(p).await
                .map(|r| r.rows_affected())
                .map_err(|e| StoreError::from_unique(e, "a watcher with this phone"))
        })?;
        if n == 0 {
            return Err(StoreError::NotFound("watcher"));
        }
        Ok(())
    }

    /// The watcher whose mobile phone this is (E.164).
    pub async fn watcher_by_phone(&self, phone_e164: &str) -> Result<Option<Watcher>> {
        self.watcher_where("phone = $1", phone_e164.to_string())
            .await
    }

    async fn watcher_where<A>(&self, cond: &str, arg: A) -> Result<Option<Watcher>>
    where
        A: for<'q> sqlx::Encode<'q, sqlx::Sqlite>
            + for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Sqlite>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + 'static,
    {
        let sql = format!("SELECT id, user_id, polling_place, kind, secret_hash, issued_at, expires_at FROM watchers WHERE {cond}");
        on_read!(self, p => {
            let Some(r) = sqlx::query(&sql).bind(arg).fetch_optional(p).await? else { return Ok(None) };
            Ok(Some(Watcher {
                id: r.try_get("id")?,
                user_id: UserId(r.try_get("user_id")?),
                polling_place: r.try_get("polling_place")?,
                kind: r.try_get("kind")?,
                secret_hash: r.try_get("secret_hash")?,
                issued_at: r.try_get("issued_at")?,
                expires_at: r.try_get("expires_at")?,
            }))
        })
    }

    /// Stores a batch of reports in one transaction and says what happened to each
    /// item, in order. `place`, when given, is the only polling place whose voters
    /// may be reported (a watcher's); other items are rejected one by one.
    pub async fn ingest_reports(
        &self,
        place: Option<&str>,
        watcher_id: Option<i64>,
        channel: &str,
        items: &[ReportIn],
    ) -> Result<Vec<Outcome>> {
        let group = ReportGroup {
            place,
            watcher_id,
            channel,
            items,
        };
        let mut out = self.ingest_report_groups(&[group]).await?;
        out.pop()
            .ok_or_else(|| StoreError::Corrupt("a batch had no outcome".into()))
    }

    /// Stores several batches (from several requests) in one transaction: the group
    /// commit that lets one durable sync serve many watchers. Each batch keeps its own
    /// polling place check and gets its outcomes, in order. Batches later in the list
    /// see the earlier ones, so a report id sent twice is stored once.
    pub async fn ingest_report_groups(
        &self,
        groups: &[ReportGroup<'_>],
    ) -> Result<Vec<Vec<Outcome>>> {
        let (outs, bump) = self.ingest_report_groups_unclocked(groups, None).await?;
        if bump {
            self.bump_turnout_clock().await?;
        }
        Ok(outs)
    }

    /// Like [`Store::ingest_report_groups`], without moving the change clock on
    /// PostgreSQL: the second value says the caller must call
    /// [`Store::bump_turnout_clock`] (soon, and after this returned), so that a
    /// group commit moves it once for many transactions, off their answers' path.
    /// On SQLite the clock moves inside the transaction (false). With a `memo`,
    /// universe rows it knows are not read again, and it learns what this commit
    /// established (see [`IngestMemo`]).
    pub async fn ingest_report_groups_unclocked(
        &self,
        groups: &[ReportGroup<'_>],
        memo: Option<&IngestMemo>,
    ) -> Result<(Vec<Vec<Outcome>>, bool)> {
        // A deadlock or serialization failure rolled everything back: the batches are
        // idempotent, so running them again is safe.
        let mut tries = 0;
        loop {
            match self.ingest_groups_once(groups, memo).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if tries < 5 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
                }
                r => return r,
            }
        }
    }

    /// Moves the change clock, after a change committed: a node that reads the new
    /// value reads the change. On PostgreSQL a sequence step (no row lock, so
    /// concurrent ingests are not serialized by it).
    pub async fn bump_turnout_clock(&self) -> Result<()> {
        match &self.pools {
            crate::db::Pools::Sqlite { write, .. } => {
                sqlx::query("UPDATE turnout_clock SET seq = seq + 1 WHERE id = 1")
                    .execute(write)
                    .await?;
            }
            crate::db::Pools::Postgres(p) => {
                sqlx::query("SELECT nextval('turnout_change_seq')")
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// One try of the ingest: the outcomes, and whether the caller must move the clock.
    async fn ingest_groups_once(
        &self,
        groups: &[ReportGroup<'_>],
        memo: Option<&IngestMemo>,
    ) -> Result<(Vec<Vec<Outcome>>, bool)> {
        let mut learned: Vec<(String, i64)> = Vec::new();
        let now = now_ms();
        let mut outs: Vec<Vec<Option<Outcome>>> =
            groups.iter().map(|g| vec![None; g.items.len()]).collect();
        let mut cells = Cells::default();
        let mut changes = Changes::default();
        // Reports of all the batches go through one set of bulk statements. An undo
        // must see the batches before it and only them, so batches holding undos are
        // taken one at a time, in order.
        let undoing = groups.iter().any(|g| g.items.iter().any(|i| i.undo));
        let spans: Vec<std::ops::Range<usize>> = if undoing {
            (0..groups.len()).map(|k| k..k + 1).collect()
        } else {
            std::iter::once(0..groups.len()).collect()
        };
        // Without undos (one span), voters may be claimed with the reports' insert.
        let mut claimed: Option<HashSet<i64>> = None;
        let bump = on_write!(self, p => {
            let mut tx = p.begin().await?;
            for span in spans {
            let claim = (!undoing).then_some(&mut claimed);
            let undos_todo = take_reports(&mut *tx, &groups[span.clone()], &mut outs[span.clone()], &mut cells, &mut changes, now, claim, memo, &mut learned).await?;
            // Undos, after the reports of the same batch.
            for (k, i, pid, cell) in &undos_todo {
                let g = &groups[span.start + k];
                let out = &mut outs[span.start + k];
                let (watcher_id, channel, items) = (g.watcher_id, g.channel, g.items);
                let rid = &items[*i].report_id;
                let n = sqlx::query("UPDATE turnout_reports SET undone_at = $1 WHERE report_id = $2 AND person_id = $3 AND undone_at IS NULL")
                    .bind(now).bind(rid).bind(pid.0).execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    out[*i] = Some(Outcome::Accepted(*pid));
                    changes.undo(*pid, *cell);
                    continue;
                }
                // Not there yet: a tombstone, so the report arriving later stays undone.
                let n = sqlx::query("INSERT INTO turnout_reports (report_id, person_id, polling_place, watcher_id, channel, voted_at, received_at, undone_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (report_id) DO NOTHING")
                    .bind(rid).bind(pid.0).bind(cells.place(*cell)).bind(watcher_id).bind(channel).bind(items[*i].voted_at).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    out[*i] = Some(Outcome::Accepted(*pid));
                    continue;
                }
                let o: Option<i64> = sqlx::query_scalar("SELECT person_id FROM turnout_reports WHERE report_id = $1").bind(rid).fetch_optional(&mut *tx).await?;
                out[*i] = Some(match o {
                    Some(o) if o != pid.0 => Outcome::Rejected(Rejection::ReportIdReused),
                    _ => Outcome::Duplicate(*pid),
                });
            }
            }
            // Who counts as voted, and the tallies.
            let changed = !changes.0.is_empty();
            apply_changes(&mut *tx, &changes, &cells, claimed.take()).await?;
            if changed && self.backend() == Backend::Sqlite {
                // One writer: the clock moves inside the transaction, at no extra sync.
                sqlx::query("UPDATE turnout_clock SET seq = seq + 1 WHERE id = 1").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            if let Some(m) = memo {
                m.learn_reports(learned);
            }
            // On PostgreSQL the clock moves after the commit (the caller's), so a node
            // that sees the new value reads the reports.
            Ok::<_, StoreError>(changed && self.backend() == Backend::Postgres)
        })?;
        let outs = groups
            .iter()
            .zip(outs)
            .map(|(g, out)| resolve_repeats(g.items, out))
            .collect::<Result<_>>()?;
        Ok((outs, bump))
    }

    /// Turnout of every precinct with a GOTV universe: supporters and how many voted.
    pub async fn turnout_by_precinct(&self) -> Result<Vec<PrecinctTurnout>> {
        // From the tallies (hour -1: supporters; other hours: who voted), a few rows a
        // precinct, not a join of the universe with who voted.
        let sql = "SELECT county, precinct, polling_place,
                    CAST(SUM(CASE WHEN hour < 0 THEN people ELSE 0 END) AS BIGINT) AS universe,
                    CAST(SUM(CASE WHEN hour < 0 THEN 0 ELSE people END) AS BIGINT) AS voted
             FROM turnout_tallies
             GROUP BY county, precinct, polling_place
             HAVING SUM(CASE WHEN hour < 0 THEN people ELSE 0 END) > 0
             ORDER BY county, precinct";
        on_read!(self, p => {
            let rows = sqlx::query(sql).fetch_all(p).await?;
            rows.iter().map(|r| Ok(PrecinctTurnout {
                county: r.try_get("county")?,
                precinct: r.try_get("precinct")?,
                polling_place: r.try_get("polling_place")?,
                universe: r.try_get("universe")?,
                voted: r.try_get::<Option<i64>, _>("voted")?.unwrap_or(0),
            })).collect()
        })
    }

    /// A page of a polling place's supporters not yet reported as voted (the
    /// flushing list), by ascending person id after `after`.
    pub async fn remaining_voters(
        &self,
        polling_place: &str,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<RemainingVoter>> {
        let sql = format!(
            "SELECT g.person_id, g.code, g.precinct, p.first_name, p.last_name, p.addr_line1
             FROM gotv_universe g JOIN people p ON p.id = g.person_id
             WHERE g.polling_place = $1 AND g.person_id > $2 AND {REMAINING}
             ORDER BY g.person_id LIMIT $3"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(polling_place).bind(after.map(|a| a.0).unwrap_or(0)).bind(limit.clamp(1, 10_000)).fetch_all(p).await?;
            rows.iter().map(|r| Ok(RemainingVoter {
                person_id: PersonId(r.try_get("person_id")?),
                code: r.try_get("code")?,
                first_name: r.try_get("first_name")?,
                last_name: r.try_get("last_name")?,
                addr_line1: r.try_get("addr_line1")?,
                precinct: r.try_get("precinct")?,
            })).collect()
        })
    }

    /// The voter code of a person in the universe.
    pub async fn voter_code(&self, person: PersonId) -> Result<Option<i64>> {
        Ok(
            on_read!(self, p => sqlx::query_scalar("SELECT code FROM gotv_universe WHERE person_id = $1").bind(person.0).fetch_optional(p).await)?,
        )
    }

    /// How many distinct people have a report that is not undone.
    pub async fn voted_count(&self) -> Result<i64> {
        Ok(
            on_read!(self, p => sqlx::query_scalar("SELECT COUNT(DISTINCT person_id) FROM turnout_reports WHERE undone_at IS NULL").fetch_one(p).await)?,
        )
    }

    /// How many report rows exist (undone ones included): one per report id.
    pub async fn report_rows(&self) -> Result<i64> {
        Ok(
            on_read!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM turnout_reports").fetch_one(p).await)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_a_bijection() {
        // The multiplier is coprime with 10^7, so no two seqs share a code.
        let mut seen = std::collections::HashSet::new();
        for seq in 1..=200_000i64 {
            assert!(seen.insert((seq * CODE_MUL + CODE_ADD) % CODE_SPACE));
        }
        assert_eq!(gcd(CODE_MUL, CODE_SPACE), 1);
    }

    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }

    #[test]
    fn markers() {
        assert_eq!(tuples(Backend::Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(tuples(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
