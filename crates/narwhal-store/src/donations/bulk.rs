//! The batch paths of [`Store::begin_donations`] and [`Store::finish_donations`]: a
//! handful of set-based statements per batch instead of several statements per gift.
//!
//! Group commit already shares one durable flush among many donations; what was left
//! was the number of round trips inside that transaction (about eight per gift to
//! begin and five to finish), each a trip to the SQLite worker thread or to the
//! PostgreSQL server while the donor's lock is held. Here a batch reads every donor's
//! totals at once, decides in memory (in order, so gifts from one donor
//! in one batch see each other), and writes with multi-row statements.
//!
//! Even a batch of one takes fewer round trips this way, which is what a donor waits
//! for when the database is slow. To begin on PostgreSQL: BEGIN, the donors' locks,
//! their totals, one statement for every insert (donations, totals and first attempts
//! through a data-modifying WITH), COMMIT: 5 (about 12 item by item). The set-based
//! path assumes every key is new and every gift fits: a repeated key (a replay, or
//! another node's gift) or a refusal sends the whole batch, rolled back, down the
//! careful path, which reads the keys first. When every donor of the batch is a new
//! person, PostgreSQL takes one statement that checks so and writes the donors and
//! their gifts together (`begin_donations_for_new_people`): no locks (no one else sees
//! those people before the commit), one round trip and one commit where the donors'
//! lookup, their own statement and this transaction took seven and two. To finish
//! charges on PostgreSQL: one
//! statement, its own transaction, that closes the attempts, moves the donations,
//! posts the ledger and returns the rows the donors are answered from: 1 (about 9,
//! and a read after). The item-by-item versions stay for what is rare and
//! order-sensitive: a key repeated within a batch, a donation finished twice in one
//! batch, declines and pledges (which give room back), replays and refusals.

use super::{
    allowed_from, attempt, periods_of, Begun, Completion, DonationRow, DonationState, Finish,
    NewDonation, DONATION_COLUMNS,
};
use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::limits::{allocate, cycle_period, election_period, LimitTable};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};

/// `rows` groups of `cols` placeholders, numbered from `first` on PostgreSQL (`$n`)
/// and positional on SQLite (`?`: sqlx looks `$n` up by name there, which grows with
/// the square of the number of parameters).
fn placeholders(backend: Backend, rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * (cols * 5 + 3));
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                Backend::Sqlite => out.push('?'),
            }
            n += 1;
        }
        out.push(')');
    }
    out
}

/// The marker of the `n`th parameter, after a `placeholders` list (SQLite's are
/// positional). Times are bound, not spliced: a text that changes at every call is
/// parsed again each time and pushes prepared statements out of the cache.
fn param(backend: Backend, n: usize) -> String {
    crate::db::placeholders(backend, n, 1)
}

/// `IN (...)` over `n` values: one group of `n` placeholders.
fn in_list(backend: Backend, n: usize, first: usize) -> String {
    let mut g = placeholders(backend, n, 1, first);
    g.retain(|ch| ch != '(' && ch != ')');
    format!("({g})")
}

/// One new donation decided in memory, waiting for its multi-row insert.
struct Planned<'a> {
    index: usize,
    d: &'a NewDonation,
    state: &'static str,
    allocations: String,
    itemized: bool,
    needs_followup: bool,
    allocation: narwhal_domain::limits::Allocation,
}

/// A new donation as a record of `BEGIN_DONATIONS_PG`'s first record set.
#[derive(serde::Serialize)]
struct GiftRecord<'a> {
    public_id: &'a str,
    idempotency_key: &'a str,
    request_hash: &'a str,
    person_id: i64,
    amount_cents: i64,
    currency: &'a str,
    state: &'a str,
    channel: &'a str,
    refcode: Option<&'a str>,
    source: Option<&'a str>,
    donor: &'a str,
    employer: Option<&'a str>,
    occupation: Option<&'a str>,
    allocations: &'a str,
    itemized: bool,
    needs_followup: bool,
    payment_method: Option<&'a str>,
    save_method: bool,
    plan_id: Option<i64>,
    pledge_token_hash: Option<&'a str>,
    client_ip: Option<&'a str>,
}

/// A donor's total's increment, for the second record set.
#[derive(serde::Serialize)]
struct TotalRecord<'a> {
    person_id: i64,
    period: &'a str,
    total_cents: i64,
}

/// A first attempt, for the third record set.
#[derive(serde::Serialize)]
struct AttemptRecord<'a> {
    idempotency_key: &'a str,
    processor: &'a str,
    attempt_key: &'a str,
}

/// The increments of a batch's totals as records of the second record set.
fn total_records(deltas: &Deltas) -> Vec<TotalRecord<'_>> {
    deltas
        .iter()
        .map(|((person, period), cents)| TotalRecord {
            person_id: *person,
            period: period.as_str(),
            total_cents: *cents,
        })
        .collect()
}

/// Records as the JSON array `json_to_recordset` reads.
fn record_set<T: serde::Serialize>(records: &[T]) -> Result<String> {
    serde_json::to_string(records).map_err(|e| StoreError::Invalid(format!("batch as JSON: {e}")))
}

/// PostgreSQL: a batch's new donations, its totals' increments and its first attempts,
/// in one statement of fixed text (see `begin_donations_bulk`).
const BEGIN_DONATIONS_PG: &str = "WITH v AS (SELECT * FROM json_to_recordset($1::json) AS v (public_id text, idempotency_key text, \
       request_hash text, person_id bigint, amount_cents bigint, currency text, state text, channel text, refcode text, \
       source text, donor text, employer text, occupation text, allocations text, itemized boolean, needs_followup boolean, \
       payment_method text, save_method boolean, plan_id bigint, pledge_token_hash text, client_ip text)), \
     d AS (INSERT INTO donations (public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, \
       refcode, source, donor, employer, occupation, allocations, itemized, needs_followup, payment_method, save_method, plan_id, \
       pledge_token_hash, client_ip, created_at, updated_at) \
       SELECT public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, \
       refcode, source, donor, employer, occupation, allocations, itemized, needs_followup, payment_method, save_method, plan_id, \
       pledge_token_hash, client_ip, $4, $4 FROM v \
       ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key), \
     t AS (INSERT INTO contribution_totals (person_id, period, total_cents) \
       SELECT * FROM json_to_recordset($2::json) AS x (person_id bigint, period text, total_cents bigint) \
       ON CONFLICT (person_id, period) DO UPDATE SET total_cents = contribution_totals.total_cents + excluded.total_cents), \
     a AS (INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) \
       SELECT d.id, 1, x.processor, x.attempt_key, $5, $4 \
       FROM d JOIN json_to_recordset($3::json) AS x (idempotency_key text, processor text, attempt_key text) USING (idempotency_key)) \
     SELECT id, idempotency_key FROM d";

/// What [`Store::begin_donations_for_new_people`] did.
#[derive(Debug)]
pub enum NewDonors {
    /// Stored: the new people's ids (in the change set's order) and one result per
    /// gift.
    Begun(Vec<narwhal_domain::PersonId>, Vec<Begun>),
    /// Some of the donors' keys are held (by these people): nothing was written.
    Held(crate::people::KeyMatches),
    /// This path does not fit (SQLite, a gift over a limit, a key repeated in the
    /// batch, a key someone took meanwhile): nothing was written, and nothing was
    /// looked up.
    NotFit,
}

/// Increments of donors' totals: (person, period) to cents.
type Deltas = BTreeMap<(i64, String), i64>;

/// Decides each gift of `batch` in order, as the item-by-item path would, from the
/// donors' `totals` (person `persons[i]` gives gift `i`; periods missing are zero):
/// the gifts with their designations, and the increments of the totals. `None` when a
/// gift is over its donor's limit (the careful path answers it).
fn plan_gifts<'a>(
    batch: &'a [NewDonation],
    persons: &[i64],
    mut totals: HashMap<(i64, String), i64>,
    table: &LimitTable,
) -> Result<Option<(Vec<Planned<'a>>, Deltas)>> {
    let wanted: Vec<String> = {
        let mut w: Vec<String> = table.elections.iter().map(|e| election_period(e)).collect();
        w.push(cycle_period(table.cycle));
        w
    };
    let mut planned: Vec<Planned<'a>> = Vec::with_capacity(batch.len());
    let mut deltas: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for (index, (d, &person)) in batch.iter().zip(persons).enumerate() {
        let mine: BTreeMap<String, i64> = wanted
            .iter()
            .map(|w| {
                (
                    w.clone(),
                    totals.get(&(person, w.clone())).copied().unwrap_or(0),
                )
            })
            .collect();
        let Ok(allocation) = allocate(table, &mine, d.amount_cents) else {
            return Ok(None);
        };
        for (period, cents) in periods_of(&allocation.parts, table, d.year) {
            *totals.entry((person, period.clone())).or_insert(0) += cents;
            *deltas.entry((person, period)).or_insert(0) += cents;
        }
        let missing = |s: &Option<String>| s.as_deref().is_none_or(|v| v.trim().is_empty());
        let needs_followup =
            allocation.itemized && (missing(&d.employer) || missing(&d.occupation));
        planned.push(Planned {
            index,
            d,
            state: if d.first_attempt.is_some() {
                "processing"
            } else {
                "pledged"
            },
            allocations: serde_json::to_string(&allocation.parts)?,
            itemized: allocation.itemized,
            needs_followup,
            allocation,
        });
    }
    Ok(Some((planned, deltas)))
}

/// A planned gift as a record of the intake's JSON record set, its donor given as
/// `person_id` (a person's id, or in [`BEGIN_WITH_NEW_PEOPLE_PG`] the new person's `ord`).
fn gift_record<'a>(g: &'a Planned<'_>, person_id: i64) -> GiftRecord<'a> {
    let d = g.d;
    GiftRecord {
        public_id: &d.public_id,
        idempotency_key: d.idempotency_key.trim(),
        request_hash: &d.request_hash,
        person_id,
        amount_cents: d.amount_cents,
        currency: &d.currency,
        state: g.state,
        channel: &d.channel,
        refcode: d.refcode.as_deref(),
        source: d.source.as_deref(),
        donor: &d.donor_json,
        employer: d.employer.as_deref(),
        occupation: d.occupation.as_deref(),
        allocations: &g.allocations,
        itemized: g.itemized,
        needs_followup: g.needs_followup,
        payment_method: d.payment_method.as_deref(),
        save_method: d.save_method,
        plan_id: d.plan_id,
        pledge_token_hash: d.pledge_token_hash.as_deref(),
        client_ip: d.client_ip.as_deref(),
    }
}

/// PostgreSQL: new donors and their first gifts in one statement, its own durable
/// transaction. The people's common table expressions come first (`v` holds each new
/// person's `ord` and id), then the donations, their totals and first attempts, with
/// each gift's donor given by `ord`. Parameters after the people's 33: the gifts, the
/// totals' increments, the attempts' state and the attempts as JSON record sets, then
/// the donors' voter ids, emails and phones. The statement first reads who holds
/// those keys (`held`): if anyone does, it writes nothing and returns them instead
/// (it is then the intake's key lookup). No `ON CONFLICT` here: a key stored before
/// fails the statement whole, and the intake takes the careful path.
const BEGIN_WITH_NEW_PEOPLE_PG: &str = concat!(
    crate::people::new_people_ctes!(
        "held AS MATERIALIZED ( \
           SELECT 0::int4 AS hk, voter_id AS k, id AS hid, row_hash AS hh FROM people WHERE voter_id = ANY($38) \
           UNION ALL SELECT 1, e.email, pp.id, pp.row_hash FROM person_emails e JOIN people pp ON pp.id = e.person_id \
             WHERE e.email = ANY($39) \
           UNION ALL SELECT 2, e.phone, pp.id, pp.row_hash FROM person_phones e JOIN people pp ON pp.id = e.person_id \
             WHERE e.phone = ANY($40)), ",
        "NOT EXISTS (SELECT 1 FROM held)"
    ),
    ", g AS (INSERT INTO donations (public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, \
       refcode, source, donor, employer, occupation, allocations, itemized, needs_followup, payment_method, save_method, plan_id, \
       pledge_token_hash, client_ip, created_at, updated_at) \
       SELECT x.public_id, x.idempotency_key, x.request_hash, v.id, x.amount_cents, x.currency, x.state, x.channel, \
       x.refcode, x.source, x.donor, x.employer, x.occupation, x.allocations, x.itemized, x.needs_followup, x.payment_method, \
       x.save_method, x.plan_id, x.pledge_token_hash, x.client_ip, $23, $23 \
       FROM json_to_recordset($34::json) AS x (public_id text, idempotency_key text, \
       request_hash text, person_id int, amount_cents bigint, currency text, state text, channel text, refcode text, \
       source text, donor text, employer text, occupation text, allocations text, itemized boolean, needs_followup boolean, \
       payment_method text, save_method boolean, plan_id bigint, pledge_token_hash text, client_ip text) \
       JOIN v ON v.ord = x.person_id \
       RETURNING id, idempotency_key), \
     gt AS (INSERT INTO contribution_totals (person_id, period, total_cents) \
       SELECT v.id, x.period, x.total_cents FROM json_to_recordset($35::json) AS x (person_id int, period text, total_cents bigint) \
       JOIN v ON v.ord = x.person_id), \
     ga AS (INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) \
       SELECT g.id, 1, x.processor, x.attempt_key, $36, $23 \
       FROM g JOIN json_to_recordset($37::json) AS x (idempotency_key text, processor text, attempt_key text) USING (idempotency_key)) \
     SELECT 'p' AS kind, v.ord, v.id, NULL::text AS k, NULL::int8 AS hh FROM v \
     UNION ALL SELECT 'd', NULL::int4, g.id, g.idempotency_key, NULL::int8 FROM g \
     UNION ALL SELECT 'h', held.hk, held.hid, held.k, held.hh FROM held"
);

impl Store {
    /// PostgreSQL: a batch of gifts whose donors would all be new people (`people`,
    /// made by the hub as it would write them, without asking anyone), stored with
    /// those people in one statement and one durable commit, which first checks that
    /// none of the donors' keys (`keys`: voter ids, emails, phones) is held. One round
    /// trip where looking the donors up, writing them and beginning their gifts took
    /// seven (the lookup, the people's statement and its commit, then BEGIN, the
    /// donors' locks, the inserts, COMMIT). No lock is needed: until the commit no one
    /// else can see these people, so their totals start at zero. `donor_of[i]` is the
    /// index in `people.inserts` of gift `i`'s donor.
    pub async fn begin_donations_for_new_people(
        &self,
        people: &crate::people::ChangeSet,
        keys: &[Vec<String>; 3],
        donor_of: &[usize],
        batch: &[NewDonation],
        table: &LimitTable,
    ) -> Result<NewDonors> {
        let crate::db::Pools::Postgres(p) = &self.pools else {
            return Ok(NewDonors::NotFit);
        };
        let mut seen = HashSet::with_capacity(batch.len());
        if batch.is_empty()
            || donor_of.len() != batch.len()
            || donor_of.iter().any(|&i| i >= people.inserts.len())
            || !crate::people::one_statement_fits(people)
            || !batch.iter().all(|d| seen.insert(d.idempotency_key.trim()))
        {
            return Ok(NewDonors::NotFit);
        }
        // Each donor by its `ord` in the people's statement (1-based).
        let persons: Vec<i64> = donor_of.iter().map(|&i| i as i64 + 1).collect();
        let Some((planned, deltas)) = plan_gifts(batch, &persons, HashMap::new(), table)? else {
            return Ok(NewDonors::NotFit);
        };
        let gifts: Vec<GiftRecord<'_>> = planned
            .iter()
            .map(|g| gift_record(g, persons[g.index]))
            .collect();
        let total_records = total_records(&deltas);
        let attempt_records: Vec<AttemptRecord<'_>> = planned
            .iter()
            .filter_map(|g| {
                let (processor, key) = g.d.first_attempt.as_ref()?;
                Some(AttemptRecord {
                    idempotency_key: g.d.idempotency_key.trim(),
                    processor,
                    attempt_key: key,
                })
            })
            .collect();
        use crate::people::Extra;
        let extra = vec![
            Extra::Text(record_set(&gifts)?),
            Extra::Text(record_set(&total_records)?),
            Extra::Text(attempt::STARTED.to_string()),
            Extra::Text(record_set(&attempt_records)?),
            Extra::Texts(keys[0].to_vec()),
            Extra::Texts(keys[1].to_vec()),
            Extra::Texts(keys[2].to_vec()),
        ];
        let rows = match crate::people::new_people_statement(
            p,
            people,
            now_ms(),
            BEGIN_WITH_NEW_PEOPLE_PG,
            extra,
        )
        .await
        {
            Ok(rows) => rows,
            // A new person's key or a gift's key someone took since: nothing written.
            Err(StoreError::Conflict(_)) => return Ok(NewDonors::NotFit),
            Err(e) => return Err(e),
        };
        let mut held = crate::people::KeyMatches::default();
        let mut person_ids = vec![None; people.inserts.len()];
        let mut ids: HashMap<String, i64> = HashMap::with_capacity(planned.len());
        for r in rows {
            let kind: String = r.try_get("kind")?;
            let id: i64 = r.try_get("id")?;
            match kind.as_str() {
                "p" => {
                    let ord: i32 = r.try_get("ord")?;
                    if let Some(slot) = usize::try_from(ord - 1)
                        .ok()
                        .and_then(|i| person_ids.get_mut(i))
                    {
                        *slot = Some(narwhal_domain::PersonId(id));
                    }
                }
                "d" => {
                    ids.insert(r.try_get("k")?, id);
                }
                _ => held.holds(
                    r.try_get("ord")?,
                    r.try_get("k")?,
                    narwhal_domain::PersonId(id),
                    r.try_get("hh")?,
                ),
            }
        }
        if !(held.voter.is_empty() && held.email.is_empty() && held.phone.is_empty()) {
            return Ok(NewDonors::Held(held));
        }
        let person_ids = person_ids
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Corrupt("a new donor of the batch has no id".into()))?;
        let mut out: Vec<Option<Begun>> = vec![None; batch.len()];
        for g in planned {
            let id = *ids.get(g.d.idempotency_key.trim()).ok_or_else(|| {
                StoreError::Corrupt("a donation of the batch was not stored".into())
            })?;
            out[g.index] = Some(Begun::Created {
                id,
                allocation: g.allocation,
                needs_followup: g.needs_followup,
            });
        }
        let begun = out
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| StoreError::Corrupt("a donation of the batch has no result".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(NewDonors::Begun(person_ids, begun))
    }

    /// Stores a batch of new donations in one durable commit: for each, checks its
    /// idempotency key, reads the donor's totals under the donor's lock, designates it
    /// by `table`, reserves its room and writes its first attempt row. One result per
    /// input, in order; gifts from one donor in one batch count against each other in
    /// that order.
    pub async fn begin_donations(
        &self,
        batch: &[NewDonation],
        table: &LimitTable,
    ) -> Result<Vec<Begun>> {
        let mut keys = HashSet::with_capacity(batch.len());
        if batch.is_empty() || !batch.iter().all(|d| keys.insert(d.idempotency_key.trim())) {
            return self.begin_donations_each(batch, table).await;
        }
        match self.begin_donations_bulk(batch, table).await? {
            Some(out) => Ok(out),
            // Another node stored one of these keys between our read and our insert:
            // nothing was written; the careful path sorts it out.
            None => self.begin_donations_each(batch, table).await,
        }
    }

    async fn begin_donations_bulk(
        &self,
        batch: &[NewDonation],
        table: &LimitTable,
    ) -> Result<Option<Vec<Begun>>> {
        let backend = self.backend();
        let now = now_ms();
        let mut people: Vec<i64> = batch.iter().map(|d| d.person_id.0).collect();
        people.sort_unstable();
        people.dedup();
        // SQLite's read of the totals (PostgreSQL reads them with the locks, below).
        let totals_sql = (backend == Backend::Sqlite).then(|| {
            format!(
                "SELECT person_id, period, total_cents FROM contribution_totals WHERE person_id IN {}",
                in_list(backend, people.len(), 1)
            )
        });
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut totals: HashMap<(i64, String), i64> = HashMap::new();
            {
                let q = if backend == Backend::Postgres {
                    // The donors' locks, in a fixed order so that two batches never wait
                    // on each other in a cycle (the same keys as every other path that
                    // changes totals), then their totals as they are once the locks are
                    // held: one round trip (migration 0027's function).
                    let list = people.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                    sqlx::query("SELECT o_person AS person_id, o_period AS period, o_total AS total_cents FROM narwhal_lock_totals(string_to_array($1, ',')::bigint[])")
                        .bind(list)
                } else {
                    let mut q = sqlx::query(totals_sql.as_deref().unwrap_or_default());
                    for person in &people {
                        q = q.bind(*person);
                    }
                    q
                };
                for r in q.fetch_all(&mut *tx).await? {
                    let person: i64 = r.try_get("person_id")?;
                    let period: String = r.try_get("period")?;
                    totals.insert((person, period), r.try_get("total_cents")?);
                }
            }
            let persons: Vec<i64> = batch.iter().map(|d| d.person_id.0).collect();
            // A refusal may be a replay of a gift that filled the room (its key
            // answers, not the limit): the careful path reads keys first.
            let Some((planned, deltas)) = plan_gifts(batch, &persons, totals, table)? else {
                tx.rollback().await?;
                return Ok(None);
            };
            let mut out: Vec<Option<Begun>> = vec![None; batch.len()];
            if !planned.is_empty() {
                let attempts: Vec<(&str, &str, &str)> = planned
                    .iter()
                    .filter_map(|g| {
                        let (processor, key) = g.d.first_attempt.as_ref()?;
                        Some((g.d.idempotency_key.trim(), processor.as_str(), key.as_str()))
                    })
                    .collect();
                let mut ids: HashMap<String, i64> = HashMap::with_capacity(planned.len());
                if backend == Backend::Postgres {
                    // The three inserts as one statement (data-modifying WITH) of fixed
                    // text, the batch as JSON record sets: one round trip while the
                    // donors' locks are held, prepared once per connection.
                    // Serialized straight from borrowed fields: no JSON tree of copies.
                    let gifts: Vec<GiftRecord<'_>> = planned
                        .iter()
                        .map(|g| gift_record(g, g.d.person_id.0))
                        .collect();
                    let total_records = total_records(&deltas);
                    let attempt_records: Vec<AttemptRecord<'_>> = attempts
                        .iter()
                        .map(|&(idempotency_key, processor, attempt_key)| AttemptRecord {
                            idempotency_key,
                            processor,
                            attempt_key,
                        })
                        .collect();
                    for r in sqlx::query(BEGIN_DONATIONS_PG)
                        .bind(record_set(&gifts)?)
                        .bind(record_set(&total_records)?)
                        .bind(record_set(&attempt_records)?)
                        .bind(now)
                        .bind(attempt::STARTED)
                        .fetch_all(&mut *tx)
                        .await?
                    {
                        ids.insert(r.try_get("idempotency_key")?, r.try_get("id")?);
                    }
                } else {
                    // SQLite (no round trips to save, no INSERT in WITH): three statements.
                    const COLS: usize = 23;
                    let insert_donations = format!(
                        "INSERT INTO donations (public_id, idempotency_key, request_hash, person_id, amount_cents, currency, state, channel, refcode, source, donor, employer, occupation, allocations, itemized, needs_followup, payment_method, save_method, plan_id, pledge_token_hash, client_ip, created_at, updated_at) \
                         VALUES {} ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
                        placeholders(backend, planned.len(), COLS, 1)
                    );
                    let mut q = sqlx::query(&insert_donations);
                    for g in &planned {
                        let d = g.d;
                        q = q
                            .bind(&d.public_id)
                            .bind(d.idempotency_key.trim())
                            .bind(&d.request_hash)
                            .bind(d.person_id.0)
                            .bind(d.amount_cents)
                            .bind(&d.currency)
                            .bind(g.state)
                            .bind(&d.channel)
                            .bind(&d.refcode)
                            .bind(&d.source)
                            .bind(&d.donor_json)
                            .bind(&d.employer)
                            .bind(&d.occupation)
                            .bind(&g.allocations)
                            .bind(g.itemized)
                            .bind(g.needs_followup)
                            .bind(&d.payment_method)
                            .bind(d.save_method)
                            .bind(d.plan_id)
                            .bind(&d.pledge_token_hash)
                            .bind(&d.client_ip)
                            .bind(now)
                            .bind(now);
                    }
                    for r in q.fetch_all(&mut *tx).await? {
                        ids.insert(r.try_get("idempotency_key")?, r.try_get("id")?);
                    }
                }
                if ids.len() != planned.len() {
                    // A key stored before (a replay) or by another node meanwhile:
                    // nothing of this batch stays; the careful path answers each.
                    tx.rollback().await?;
                    return Ok(None);
                }
                if backend != Backend::Postgres {
                    if !deltas.is_empty() {
                        let insert_totals = format!(
                            "INSERT INTO contribution_totals (person_id, period, total_cents) VALUES {} \
                             ON CONFLICT (person_id, period) DO UPDATE SET total_cents = contribution_totals.total_cents + excluded.total_cents",
                            placeholders(backend, deltas.len(), 3, 1)
                        );
                        let mut q = sqlx::query(&insert_totals);
                        for ((person, period), cents) in &deltas {
                            q = q.bind(*person).bind(period).bind(*cents);
                        }
                        q.execute(&mut *tx).await?;
                    }
                    if !attempts.is_empty() {
                        let sql = format!(
                            "INSERT INTO donation_attempts (donation_id, seq, processor, attempt_key, state, started_at) VALUES {}",
                            placeholders(backend, attempts.len(), 6, 1)
                        );
                        let mut q = sqlx::query(&sql);
                        for (key, processor, attempt_key) in &attempts {
                            q = q.bind(ids[*key]).bind(1_i32).bind(*processor).bind(*attempt_key).bind(attempt::STARTED).bind(now);
                        }
                        q.execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                for g in planned {
                    out[g.index] = Some(Begun::Created {
                        id: ids[g.d.idempotency_key.trim()],
                        allocation: g.allocation,
                        needs_followup: g.needs_followup,
                    });
                }
            } else {
                tx.commit().await?;
            }
            out.into_iter()
                .map(|o| o.ok_or_else(|| StoreError::Corrupt("a donation of the batch has no result".into())))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        })
    }

    /// Ends donations in one durable commit: closes the attempt, moves the donation
    /// forward (or leaves it if it already moved: the result says which), posts the
    /// ledger for a charge, and gives back the room of a declined or failed gift. One
    /// result per input, in order.
    pub async fn finish_donations(
        &self,
        batch: &[Completion],
        table: &LimitTable,
    ) -> Result<Vec<bool>> {
        Ok(self.finish_donations_inner(batch, table).await?.0)
    }

    /// [`Store::finish_donations`], and each donation as it stands after the commit
    /// (what its donor is answered from). Charges bring their rows back from the
    /// commit itself; the rest are read afterwards in one statement.
    pub async fn finish_donations_read(
        &self,
        batch: &[Completion],
        table: &LimitTable,
    ) -> Result<Vec<(bool, DonationRow)>> {
        let (changed, mut rows) = self.finish_donations_inner(batch, table).await?;
        let mut missing: Vec<i64> = batch
            .iter()
            .map(|c| c.donation_id)
            .filter(|id| !rows.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            rows.extend(
                self.donations_by_ids(&missing)
                    .await?
                    .into_iter()
                    .map(|r| (r.id, r)),
            );
        }
        batch
            .iter()
            .zip(changed)
            .map(|(c, changed)| {
                rows.get(&c.donation_id)
                    .cloned()
                    .map(|r| (changed, r))
                    .ok_or(StoreError::NotFound("donation"))
            })
            .collect()
    }

    /// Donations by row id (missing ids are skipped).
    pub async fn donations_by_ids(&self, ids: &[i64]) -> Result<Vec<DonationRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {DONATION_COLUMNS} FROM donations WHERE id IN {}",
            in_list(self.backend(), ids.len(), 1)
        );
        on_read!(self, p => {
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(*id);
            }
            let mut out = Vec::with_capacity(ids.len());
            for r in q.fetch_all(p).await? {
                out.push(donation_from_row!(&r));
            }
            Ok(out)
        })
    }

    /// The results of [`Store::finish_donations`] and the rows of the charges it moved.
    async fn finish_donations_inner(
        &self,
        batch: &[Completion],
        table: &LimitTable,
    ) -> Result<(Vec<bool>, HashMap<i64, DonationRow>)> {
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for c in batch {
            *seen.entry(c.donation_id).or_insert(0) += 1;
        }
        let (bulk, rest): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|&i| {
            matches!(batch[i].finish, Finish::Succeeded { .. }) && seen[&batch[i].donation_id] == 1
        });
        if bulk.is_empty() {
            return Ok((
                self.finish_donations_each(batch, table).await?,
                HashMap::new(),
            ));
        }
        let mut out = vec![false; batch.len()];
        let items: Vec<&Completion> = bulk.iter().map(|&i| &batch[i]).collect();
        let rows = match self.backend() {
            Backend::Postgres => self.finish_charged_one_statement(&items).await?,
            Backend::Sqlite => self.finish_charged_bulk(&items).await?,
        };
        for &i in &bulk {
            out[i] = rows.contains_key(&batch[i].donation_id);
        }
        if !rest.is_empty() {
            let others: Vec<Completion> = rest.iter().map(|&i| batch[i].clone()).collect();
            for (i, changed) in rest
                .iter()
                .zip(self.finish_donations_each(&others, table).await?)
            {
                out[*i] = changed;
            }
        }
        Ok((out, rows))
    }

    /// PostgreSQL: charges (each donation once in `items`) closed in one statement,
    /// which is its own durable transaction: attempts closed, donations moved to
    /// succeeded from the states that allow it, ledger posted for those that moved.
    /// One round trip where a transaction of reads and writes took six. Returns the
    /// rows of the donations it moved.
    async fn finish_charged_one_statement(
        &self,
        items: &[&Completion],
    ) -> Result<HashMap<i64, DonationRow>> {
        let now = now_ms();
        let from: Vec<String> = allowed_from(DonationState::Succeeded)
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        // The text depends on nothing but constants: the batch comes as arrays and the
        // time as a parameter, so each connection prepares it once (a text per batch
        // size, or with the time spliced in, was prepared again at every call: one
        // more round trip each, and a churned statement cache).
        let sql = format!(
            "WITH v (vid, vkey, vproc, vref, vamount, vfee, vbrand, vlast4, vexp, vfp) AS ( \
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                 $7::text[], $8::text[], $9::text[], $10::text[])), \
             a AS (UPDATE donation_attempts SET state = '{succeeded}', processor_ref = COALESCE(v.vref, donation_attempts.processor_ref), finished_at = $11 \
                   FROM v WHERE donation_attempts.attempt_key = v.vkey AND donation_attempts.state IN ('started', 'ambiguous', 'unavailable')), \
             d AS (UPDATE donations SET state = 'succeeded', processor = v.vproc, processor_ref = v.vref, fee_cents = v.vfee, \
                   card_brand = v.vbrand, card_last4 = v.vlast4, card_exp = v.vexp, card_fingerprint = v.vfp, \
                   pledge_token_hash = NULL, error_code = NULL, error_message = NULL, updated_at = $11 \
                   FROM v WHERE donations.id = v.vid AND donations.state IN ({from}) RETURNING {DONATION_COLUMNS}), \
             l AS (INSERT INTO ledger_entries (txn, donation_id, kind, account, amount_cents, created_at) \
                   SELECT x.txn, v.vid, x.kind, x.account, x.cents, $11 FROM d JOIN v ON v.vid = d.id \
                   CROSS JOIN LATERAL (VALUES \
                     ('charge:' || v.vproc || ':' || v.vref, 'charge', 'processor:' || v.vproc, v.vamount), \
                     ('charge:' || v.vproc || ':' || v.vref, 'charge', 'contributions', -v.vamount), \
                     ('fee:' || v.vproc || ':' || v.vref, 'fee', 'fees', v.vfee), \
                     ('fee:' || v.vproc || ':' || v.vref, 'fee', 'processor:' || v.vproc, -v.vfee)) AS x (txn, kind, account, cents) \
                   WHERE x.kind = 'charge' OR COALESCE(v.vfee, 0) > 0 \
                   ON CONFLICT (donation_id, txn, account) DO NOTHING) \
             SELECT {DONATION_COLUMNS} FROM d",
            succeeded = attempt::SUCCEEDED,
            from = from.join(", "),
        );
        let n = items.len();
        let mut vid = Vec::with_capacity(n);
        let mut vkey = Vec::with_capacity(n);
        let mut vproc = Vec::with_capacity(n);
        let mut vref = Vec::with_capacity(n);
        let mut vamount = Vec::with_capacity(n);
        let mut vfee = Vec::with_capacity(n);
        let mut vbrand = Vec::with_capacity(n);
        let mut vlast4 = Vec::with_capacity(n);
        let mut vexp = Vec::with_capacity(n);
        let mut vfp = Vec::with_capacity(n);
        for c in items {
            if let Finish::Succeeded {
                processor,
                processor_ref,
                amount_cents,
                fee_cents,
                card,
            } = &c.finish
            {
                vid.push(c.donation_id);
                vkey.push(c.attempt_key.as_deref());
                vproc.push(processor.as_str());
                vref.push(processor_ref.as_str());
                vamount.push(*amount_cents);
                vfee.push(*fee_cents);
                vbrand.push(card.brand.as_str());
                vlast4.push(card.last4.as_str());
                vexp.push(card.exp.as_str());
                vfp.push(card.fingerprint.as_deref());
            }
        }
        let crate::db::Pools::Postgres(p) = &self.pools else {
            return Err(StoreError::Invalid(
                "the one-statement finish is PostgreSQL's".into(),
            ));
        };
        {
            let q = sqlx::query(&sql)
                .bind(vid)
                .bind(vkey)
                .bind(vproc)
                .bind(vref)
                .bind(vamount)
                .bind(vfee)
                .bind(vbrand)
                .bind(vlast4)
                .bind(vexp)
                .bind(vfp)
                .bind(now);
            let mut moved = HashMap::with_capacity(items.len());
            for r in q.fetch_all(p).await? {
                let row = donation_from_row!(&r);
                moved.insert(row.id, row);
            }
            Ok(moved)
        }
    }

    /// SQLite: charges (each donation once in `items`): attempts closed, donations
    /// moved to succeeded from processing or pledged, ledger posted, in one commit.
    /// Returns the rows of the donations it moved.
    async fn finish_charged_bulk(
        &self,
        items: &[&Completion],
    ) -> Result<HashMap<i64, DonationRow>> {
        let backend = self.backend();
        let now = now_ms();
        let states_sql = format!(
            "SELECT id, state FROM donations WHERE id IN {}",
            in_list(backend, items.len(), 1)
        );
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let mut from: HashMap<i64, DonationState> = HashMap::with_capacity(items.len());
            {
                let mut q = sqlx::query(&states_sql);
                for c in items {
                    q = q.bind(c.donation_id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    let state: String = r.try_get("state")?;
                    let parsed = DonationState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("donation state {state}")))?;
                    from.insert(r.try_get("id")?, parsed);
                }
            }
            if from.len() != items.len() {
                return Err(StoreError::NotFound("donation"));
            }
            // Close the attempts the charges came from.
            let closing: Vec<(&str, &str)> = items
                .iter()
                .filter_map(|c| match (&c.attempt_key, &c.finish) {
                    (Some(k), Finish::Succeeded { processor_ref, .. }) => Some((k.as_str(), processor_ref.as_str())),
                    _ => None,
                })
                .collect();
            if !closing.is_empty() {
                let sql = format!(
                    "WITH v(vkey, vref) AS (VALUES {}) \
                     UPDATE donation_attempts SET state = '{}', processor_ref = COALESCE(v.vref, processor_ref), finished_at = {} \
                     FROM v WHERE attempt_key = v.vkey AND state IN ('started', 'ambiguous', 'unavailable')",
                    placeholders(backend, closing.len(), 2, 1),
                    attempt::SUCCEEDED,
                    param(backend, closing.len() * 2 + 1),
                );
                let mut q = sqlx::query(&sql);
                for (k, r) in &closing {
                    q = q.bind(*k).bind(*r);
                }
                q.bind(now).execute(&mut *tx).await?;
            }
            // Move the donations whose state allows it, guarded by the state we read.
            let legal: Vec<&Completion> = items
                .iter()
                .copied()
                .filter(|c| allowed_from(DonationState::Succeeded).contains(&from[&c.donation_id]))
                .collect();
            let mut changed: HashMap<i64, DonationRow> = HashMap::new();
            if !legal.is_empty() {
                let sql = format!(
                    "WITH v(vid, vfrom, vproc, vref, vfee, vbrand, vlast4, vexp, vfp) AS (VALUES {}) \
                     UPDATE donations SET state = 'succeeded', processor = v.vproc, processor_ref = v.vref, fee_cents = v.vfee, \
                     card_brand = v.vbrand, card_last4 = v.vlast4, card_exp = v.vexp, card_fingerprint = v.vfp, \
                     pledge_token_hash = NULL, error_code = NULL, error_message = NULL, updated_at = {} \
                     FROM v WHERE donations.id = v.vid AND donations.state = v.vfrom RETURNING {DONATION_COLUMNS}",
                    placeholders(backend, legal.len(), 9, 1),
                    param(backend, legal.len() * 9 + 1),
                );
                let mut q = sqlx::query(&sql);
                for c in &legal {
                    if let Finish::Succeeded { processor, processor_ref, fee_cents, card, .. } = &c.finish {
                        q = q
                            .bind(c.donation_id)
                            .bind(from[&c.donation_id].as_str())
                            .bind(processor)
                            .bind(processor_ref)
                            .bind(*fee_cents)
                            .bind(&card.brand)
                            .bind(&card.last4)
                            .bind(&card.exp)
                            .bind(&card.fingerprint);
                    }
                }
                for r in q.bind(now).fetch_all(&mut *tx).await? {
                    let row = donation_from_row!(&r);
                    changed.insert(row.id, row);
                }
            }
            // The ledger of each charge that moved a donation: charge (and fee) txns
            // that sum to zero, idempotent by (donation_id, txn, account).
            let mut postings: Vec<(String, &'static str, String, i64, i64)> = Vec::new();
            for c in items {
                if !changed.contains_key(&c.donation_id) {
                    continue;
                }
                if let Finish::Succeeded { processor, processor_ref, amount_cents, fee_cents, .. } = &c.finish {
                    let acct = format!("processor:{processor}");
                    let txn = format!("charge:{processor}:{processor_ref}");
                    postings.push((txn.clone(), "charge", acct.clone(), *amount_cents, c.donation_id));
                    postings.push((txn, "charge", "contributions".to_string(), -*amount_cents, c.donation_id));
                    if let Some(fee) = fee_cents.filter(|f| *f > 0) {
                        let txn = format!("fee:{processor}:{processor_ref}");
                        postings.push((txn.clone(), "fee", "fees".to_string(), fee, c.donation_id));
                        postings.push((txn, "fee", acct, -fee, c.donation_id));
                    }
                }
            }
            if !postings.is_empty() {
                let sql = format!(
                    "INSERT INTO ledger_entries (txn, donation_id, kind, account, amount_cents, created_at) VALUES {} \
                     ON CONFLICT (donation_id, txn, account) DO NOTHING",
                    placeholders(backend, postings.len(), 6, 1)
                );
                let mut q = sqlx::query(&sql);
                for (txn, kind, account, cents, id) in &postings {
                    q = q.bind(txn).bind(*id).bind(*kind).bind(account).bind(*cents).bind(now);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_on_postgres_and_positional_on_sqlite() {
        assert_eq!(
            placeholders(Backend::Postgres, 2, 2, 1),
            "($1, $2), ($3, $4)"
        );
        assert_eq!(placeholders(Backend::Sqlite, 2, 2, 1), "(?, ?), (?, ?)");
        assert_eq!(in_list(Backend::Postgres, 3, 2), "($2, $3, $4)");
        assert_eq!(in_list(Backend::Sqlite, 2, 1), "(?, ?)");
        assert_eq!(param(Backend::Postgres, 5), "$5");
        assert_eq!(param(Backend::Sqlite, 5), "?");
    }
}
