//! Statistics upkeep: the node keeps PostgreSQL's planner statistics of Narwhal's own
//! tables fresh, instead of trusting that autovacuum will.
//!
//! Why: statements are prepared once per connection, and after a few executions
//! PostgreSQL may keep one generic plan for them. A plan made while a table was small
//! (a fresh campaign database on launch day, or a table that filled up since) scans it
//! whole, and keeps doing so as it grows, until something invalidates the plan.
//! `ANALYZE` does. Autovacuum would, but it wakes once a minute at best, and some
//! servers run without it (this project's CI machine has `autovacuum = off`): there,
//! donor lookups read every row of `people` per gift and the donation rate fell
//! as the tables grew.
//!
//! So a node checks `pg_stat_user_tables` every few seconds and analyzes the tables
//! of its schema that doubled (or changed as much) since their last analyze, and
//! vacuums those where dead rows reached half the live ones (in one process, without
//! parallel workers: upkeep runs beside requests). Tables read by key stop being
//! analyzed once their statistics are settled ([`COARSE_SETTLED_ROWS`]): every pass
//! makes every connection plan its statements on that table again. Where autovacuum keeps
//! up (its thresholds are lower), this finds nothing to do. `SKIP_LOCKED` makes
//! several nodes, or autovacuum itself, never wait on each other. SQLite's planner
//! does not cache plans across statements this way: nothing to do there.

use crate::db::Pools;
use crate::error::Result;
use crate::Store;
use std::time::Duration;

/// Rows changed since the last analyze, past which a table is analyzed again:
/// `ANALYZE_BASE + ANALYZE_SCALE * rows`, where rows are those the last analyze
/// counted (none for a table never analyzed: its statistics are a guess). What
/// matters here is a plan's shape (a scan of a small table against index probes into
/// a big one), which changes as a table grows by factors, not by autovacuum's 10%:
/// analyzing at every doubling costs a few passes per table over its life. At autovacuum's 10%, a table filling at 1,000
/// donations a second was sampled every few seconds, and `ANALYZE` took a tenth of
/// the database's CPU.
const ANALYZE_BASE: f64 = 50.0;
const ANALYZE_SCALE: f64 = 1.0;
/// Dead rows past which a table is vacuumed: `VACUUM_BASE + VACUUM_SCALE * live rows`.
const VACUUM_BASE: f64 = 50.0;
const VACUUM_SCALE: f64 = 0.5;

/// Tables analyzed from a small sample (see [`COARSE_SET`]): those that fill at the
/// rate of gifts or messages and are read by key (a unique or foreign key: no
/// statistics needed to pick the index) or in reports that scan a period anyway.
/// Their plans hang on their size, which a small sample measures as well as a large
/// one. A table with filters whose selectivity matters (people, by geography,
/// consent and tags; lists; turnout) keeps the server's default.
pub const COARSE: &[&str] = &[
    "audit_log",
    "api_idempotency",
    "compat_intents",
    "contribution_totals",
    "donation_attempts",
    "donations",
    "inbound_payloads",
    "ledger_entries",
    "mail_feedback_events",
    "payment_events",
    "person_emails",
    "person_phones",
];

/// Rows past which a coarse table's statistics are settled: once a table read by key
/// holds this many rows, its plans are index probes at any size (and the planner
/// scales its row estimates by the table's current pages anyway), so it is not
/// analyzed again as it grows, and its vacuums skip the analyze. Each pass over a
/// table changes its statistics, which throws away every plan that reads the table
/// on every connection of every node: each is made again at its next execution. In
/// `narwhal bench donations` each such pass (about 75 ms of analyze) was followed by
/// half a second to a second of slower answers while some forty connections
/// replanned the donation statements on a server with no CPU to spare.
pub const COARSE_SETTLED_ROWS: f64 = 20_000.0;

/// The statistics target of the coarse tables' passes: `ANALYZE` samples 300 rows
/// per unit of target, so 3,000 rows instead of the default 30,000. Measured in
/// `narwhal bench donations` on PostgreSQL, where `donations` (wide rows: the
/// donor's record) is analyzed every time it grows by half: about 0.5 s of the
/// server's CPU per pass at the default, while 2,000 gifts a second wait for it.
const COARSE_SET: &str = "SET default_statistics_target = 10";

/// What one pass did, by table name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upkeep {
    pub analyzed: Vec<String>,
    pub vacuumed: Vec<String>,
}

impl Store {
    /// One pass: analyzes each table of this store's schema whose rows changed past
    /// the threshold since it was last analyzed, vacuuming (with analyze) those whose
    /// dead rows did. A table another session is vacuuming or analyzing is skipped.
    pub async fn keep_statistics(&self) -> Result<Upkeep> {
        let Pools::Postgres(p) = &self.pools else {
            return Ok(Upkeep::default());
        };
        // (table, whether dead rows call for a vacuum, whether its statistics are
        // settled) of the tables due.
        let coarse: Vec<&str> = COARSE.to_vec();
        let due: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT relname, vacuum_due, settled FROM (
                SELECT s.relname::TEXT AS relname,
                       s.n_mod_since_analyze > $1 + $2 * GREATEST(c.reltuples, 0) AS analyze_due,
                       s.n_dead_tup > $3 + $4 * s.n_live_tup AS vacuum_due,
                       s.relname = ANY ($5::text[]) AND c.reltuples >= $6 AS settled
                FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                WHERE s.schemaname = current_schema()
             ) t WHERE (analyze_due AND NOT settled) OR vacuum_due
             ORDER BY relname",
        )
        .bind(ANALYZE_BASE)
        .bind(ANALYZE_SCALE)
        .bind(VACUUM_BASE)
        .bind(VACUUM_SCALE)
        .bind(&coarse)
        .bind(COARSE_SETTLED_ROWS)
        .fetch_all(p)
        .await?;
        let mut done = Upkeep::default();
        for (table, vacuum, settled) in due {
            let name = quote_ident(&table);
            // One process: a parallel vacuum of a table with several indexes starts
            // workers that take the cores the node's requests are queued for (four
            // alternated pairs of 30 s donation runs at 2,000/s: p99 108.6, 177.5,
            // 97.4 and 103.8 ms against 168.7, 231.2, 168.5 and 96.4 ms with them).
            let sql = match (vacuum, settled) {
                (true, true) => format!("VACUUM (SKIP_LOCKED, PARALLEL 0) {name}"),
                (true, false) => format!("VACUUM (ANALYZE, SKIP_LOCKED, PARALLEL 0) {name}"),
                (false, _) => format!("ANALYZE (SKIP_LOCKED) {name}"),
            };
            let coarse = COARSE.contains(&table.as_str());
            // The session's target is set around the statement on one connection
            // (VACUUM cannot run inside a transaction, so no `SET LOCAL`).
            let mut c = p.acquire().await?;
            if coarse {
                run(&mut c, COARSE_SET).await?;
            }
            let ran = run(&mut c, &sql).await;
            if coarse
                && run(&mut c, "RESET default_statistics_target")
                    .await
                    .is_err()
            {
                // Not back in the pool with a setting other work does not expect.
                c.close_on_drop();
            }
            ran?;
            if vacuum {
                done.vacuumed.push(table);
            } else {
                done.analyzed.push(table);
            }
        }
        Ok(done)
    }

    /// A server setting as this store's connections see it (`current_setting`), on
    /// PostgreSQL; `None` on SQLite.
    pub async fn server_setting(&self, name: &str) -> Result<Option<String>> {
        let Pools::Postgres(p) = &self.pools else {
            return Ok(None);
        };
        let v: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(p)
            .await?;
        Ok(Some(v))
    }

    /// Runs [`Store::keep_statistics`] every `every` until `stop` turns true (or its
    /// sender is gone). A failed pass is logged and the next one tries again.
    pub fn spawn_statistics_keeper(
        &self,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            if store.backend() != crate::Backend::Postgres {
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                }
                match store.keep_statistics().await {
                    Ok(u) if !u.analyzed.is_empty() || !u.vacuumed.is_empty() => {
                        tracing::debug!(analyzed = ?u.analyzed, vacuumed = ?u.vacuumed, "statistics refreshed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "statistics upkeep failed; trying again later")
                    }
                }
            }
        })
    }
}

/// Runs one utility statement on `c` (no parameters: the simple query protocol,
/// which is what `VACUUM` needs).
async fn run(c: &mut sqlx::PgConnection, sql: &str) -> Result<()> {
    sqlx::Executor::execute(c, sql).await?;
    Ok(())
}

/// `name` as a PostgreSQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How often a node checks: often enough that a table filling from empty is
/// replanned within seconds; the check reads one statistics view.
pub const EVERY: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("people"), "\"people\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
