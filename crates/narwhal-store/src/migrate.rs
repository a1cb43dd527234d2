//! Forward-only migrations, one folder per backend, embedded in the binary.

use crate::error::Result;
use crate::{now_ms, Backend, Store};

/// (version, name, SQLite SQL, PostgreSQL SQL). Append only; never edit a shipped one.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "people",
        include_str!("../migrations/sqlite/0001_people.sql"),
        include_str!("../migrations/postgres/0001_people.sql"),
    ),
    (
        2,
        "fewer_people_indexes",
        include_str!("../migrations/sqlite/0002_fewer_people_indexes.sql"),
        include_str!("../migrations/postgres/0002_fewer_people_indexes.sql"),
    ),
    (
        3,
        "county_index",
        include_str!("../migrations/sqlite/0003_county_index.sql"),
        include_str!("../migrations/postgres/0003_county_index.sql"),
    ),
    (
        4,
        "name_search",
        include_str!("../migrations/sqlite/0004_name_search.sql"),
        include_str!("../migrations/postgres/0004_name_search.sql"),
    ),
    (
        5,
        "blasts",
        include_str!("../migrations/sqlite/0005_blasts.sql"),
        include_str!("../migrations/postgres/0005_blasts.sql"),
    ),
    (
        6,
        "turnout",
        include_str!("../migrations/sqlite/0006_turnout.sql"),
        include_str!("../migrations/postgres/0006_turnout.sql"),
    ),
    (
        7,
        "watcher_phones",
        include_str!("../migrations/sqlite/0007_watcher_phones.sql"),
        include_str!("../migrations/postgres/0007_watcher_phones.sql"),
    ),
    (
        8,
        "geo_consent_index",
        include_str!("../migrations/sqlite/0008_geo_consent_index.sql"),
        include_str!("../migrations/postgres/0008_geo_consent_index.sql"),
    ),
    (
        10,
        "mail_feedback",
        include_str!("../migrations/sqlite/0010_mail_feedback.sql"),
        include_str!("../migrations/postgres/0010_mail_feedback.sql"),
    ),
    (
        9,
        "donations",
        include_str!("../migrations/sqlite/0009_donations.sql"),
        include_str!("../migrations/postgres/0009_donations.sql"),
    ),
    (
        11,
        "live_turnout",
        include_str!("../migrations/sqlite/0011_live_turnout.sql"),
        include_str!("../migrations/postgres/0011_live_turnout.sql"),
    ),
    (
        12,
        "shared_throttles",
        include_str!("../migrations/sqlite/0012_shared_throttles.sql"),
        include_str!("../migrations/postgres/0012_shared_throttles.sql"),
    ),
    (
        13,
        "reconciliations",
        include_str!("../migrations/sqlite/0013_reconciliations.sql"),
        include_str!("../migrations/postgres/0013_reconciliations.sql"),
    ),
    (
        14,
        "processor_ref_per_processor",
        include_str!("../migrations/sqlite/0014_processor_ref_per_processor.sql"),
        include_str!("../migrations/postgres/0014_processor_ref_per_processor.sql"),
    ),
    (
        15,
        "donor_notices",
        include_str!("../migrations/sqlite/0015_donor_notices.sql"),
        include_str!("../migrations/postgres/0015_donor_notices.sql"),
    ),
    (
        17,
        "turnout_tallies",
        include_str!("../migrations/sqlite/0017_turnout_tallies.sql"),
        include_str!("../migrations/postgres/0017_turnout_tallies.sql"),
    ),
    (
        18,
        "people_state",
        include_str!("../migrations/sqlite/0018_people_state.sql"),
        include_str!("../migrations/postgres/0018_people_state.sql"),
    ),
    (
        22,
        "turnout_voted",
        include_str!("../migrations/sqlite/0022_turnout_voted.sql"),
        include_str!("../migrations/postgres/0022_turnout_voted.sql"),
    ),
    (
        23,
        "report_id_bytewise",
        include_str!("../migrations/sqlite/0023_report_id_bytewise.sql"),
        include_str!("../migrations/postgres/0023_report_id_bytewise.sql"),
    ),
    (
        24,
        "installment_notices",
        include_str!("../migrations/sqlite/0024_installment_notices.sql"),
        include_str!("../migrations/postgres/0024_installment_notices.sql"),
    ),
    (
        25,
        "donor_devices",
        include_str!("../migrations/sqlite/0025_donor_devices.sql"),
        include_str!("../migrations/postgres/0025_donor_devices.sql"),
    ),
    (
        27,
        "lock_totals",
        include_str!("../migrations/sqlite/0027_lock_totals.sql"),
        include_str!("../migrations/postgres/0027_lock_totals.sql"),
    ),
    (
        28,
        "tallies_by_place",
        include_str!("../migrations/sqlite/0028_tallies_by_place.sql"),
        include_str!("../migrations/postgres/0028_tallies_by_place.sql"),
    ),
    (
        29,
        "answers_from_indexes",
        include_str!("../migrations/sqlite/0029_answers_from_indexes.sql"),
        include_str!("../migrations/postgres/0029_answers_from_indexes.sql"),
    ),
    (
        30,
        "ledger_by_donation",
        include_str!("../migrations/sqlite/0030_ledger_by_donation.sql"),
        include_str!("../migrations/postgres/0030_ledger_by_donation.sql"),
    ),
];

pub(crate) async fn run(store: &Store) -> Result<usize> {
    let backend = store.backend();
    on_write!(store, p => {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(p)
        .await?;
        // Several nodes may start at once on PostgreSQL: serialize them.
        let mut tx = p.begin().await?;
        if backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7261001)").execute(&mut *tx).await?;
        }
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await?;
        let mut ran = 0;
        for (version, name, sqlite, pg) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let sql = if backend == Backend::Sqlite { sqlite } else { pg };
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, name, "applied migration");
            ran += 1;
        }
        tx.commit().await?;
        Ok(ran)
    })
}
