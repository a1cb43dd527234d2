//! Bulk loads: the indexes of `people` that only serve queries (name search,
//! geography with consent, state) are built once at the end of a large first import
//! instead of row by row during it.
//!
//! A row inserted into such an index lands at a random place in it, so each one costs
//! a B-tree descent and, at the batch's commit, another dirty page to write: on
//! SQLite the four of them doubled the cost of importing a voter file into an empty
//! hub, and on PostgreSQL 1M rows took 18.9 and 19.4 s with them against 12.0 and
//! 12.6 s without. Building an index over the loaded table sorts once instead (about
//! 3.6 s for the four over 1M people on PostgreSQL). The indexes that resolution itself
//! reads (the voter id, email and phone keys, and each key table's person index) are
//! never deferred, so the import matches records exactly as it always does.
//!
//! On PostgreSQL other nodes keep working meanwhile: the indexes are dropped only if
//! that takes their lock within [`DROP_LOCK_TIMEOUT`] (else the load keeps them), and
//! are built `CONCURRENTLY`, which blocks no one's writes to people (a plain build
//! would hold them all for its length). Their queries scan until the builds end.
//!
//! Invariant: an index missing because a load was cut short (a crash, a kill) comes
//! back at the next start, since [`Store::migrate`] restores every one of them; the
//! load itself restores them whether it succeeded or failed. On PostgreSQL an index a
//! concurrent build left invalid counts as missing: it is dropped and built again.

use crate::db::Pools;
use crate::error::Result;
use crate::Store;

/// The deferrable indexes on SQLite, with their definitions exactly as the
/// migrations leave them (a test compares the two).
const SQLITE_QUERY_INDEXES: &[(&str, &str)] = &[
    ("people_search", "people (search_name)"),
    ("people_last_lower", "people (lower(last_name))"),
    (
        "people_geo_consent",
        "people (county, precinct, email_consent, sms_consent)",
    ),
    ("people_state", "people (state)"),
];

/// The deferrable indexes on PostgreSQL, as migrations 0018 and 0029 leave them (a
/// test compares the server's own definitions before and after).
const POSTGRES_QUERY_INDEXES: &[(&str, &str)] = &[
    (
        "people_search_c",
        "people ((search_name COLLATE \"C\")) INCLUDE (id)",
    ),
    (
        "people_last_c",
        "people ((lower(last_name) COLLATE \"C\")) INCLUDE (id, last_name)",
    ),
    (
        "people_geo_consent",
        "people (county, precinct, email_consent, sms_consent) INCLUDE (id)",
    ),
    ("people_state", "people (state)"),
];

/// How long a bulk load waits on PostgreSQL for the lock that dropping people's
/// query indexes takes. A long query on people (an export) holds it off; waiting
/// longer would queue every other node's statements on people behind the drop.
pub const DROP_LOCK_TIMEOUT: &str = "2s";

impl Store {
    fn query_indexes(&self) -> &'static [(&'static str, &'static str)] {
        match self.pools {
            Pools::Sqlite { .. } => SQLITE_QUERY_INDEXES,
            Pools::Postgres(_) => POSTGRES_QUERY_INDEXES,
        }
    }

    /// Drops the query-only indexes of `people` for a bulk load. Returns whether it
    /// did (not when PostgreSQL could not take the lock in time); when it did, the
    /// caller must call [`Store::restore_people_indexes`] when the load ends, however
    /// it ends.
    pub async fn defer_people_indexes(&self) -> Result<bool> {
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                let mut tx = write.begin().await?;
                for (name, _) in SQLITE_QUERY_INDEXES {
                    sqlx::query(&format!("DROP INDEX IF EXISTS {name}"))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Pools::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(&format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
                    .execute(&mut *tx)
                    .await?;
                for (name, _) in POSTGRES_QUERY_INDEXES {
                    let dropped = sqlx::query(&format!("DROP INDEX IF EXISTS {name}"))
                        .execute(&mut *tx)
                        .await;
                    match dropped {
                        Ok(_) => {}
                        // lock_not_available: the transaction rolls back, nothing is dropped.
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                            tracing::info!("people is busy: this load keeps its query indexes");
                            return Ok(false);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                tx.commit().await?;
            }
        }
        tracing::info!("query indexes of people deferred for a bulk load");
        Ok(true)
    }

    /// Builds whichever of the query-only indexes of `people` is missing. Cheap when
    /// none is.
    pub async fn restore_people_indexes(&self) -> Result<()> {
        let missing = self.missing_people_indexes().await?;
        if missing.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                let mut tx = write.begin().await?;
                for (name, on) in SQLITE_QUERY_INDEXES {
                    if missing.contains(name) {
                        sqlx::query(&format!("CREATE INDEX IF NOT EXISTS {name} ON {on}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
            }
            Pools::Postgres(p) => {
                // Each statement on its own (CONCURRENTLY cannot run in a transaction).
                for (name, on) in POSTGRES_QUERY_INDEXES {
                    if !missing.contains(name) {
                        continue;
                    }
                    // An invalid one (a concurrent build that failed) would satisfy
                    // IF NOT EXISTS for ever while serving nothing.
                    sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                        .execute(p)
                        .await?;
                    let built = sqlx::query(&format!(
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {on}"
                    ))
                    .execute(p)
                    .await;
                    if let Err(e) = built {
                        // Another node may have built it meanwhile.
                        if self.missing_people_indexes().await?.contains(name) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        tracing::info!(
            indexes = ?missing,
            ms = started.elapsed().as_millis() as u64,
            "query indexes of people built"
        );
        Ok(())
    }

    /// The query-only indexes of `people` that do not exist now, or on PostgreSQL are
    /// not valid (a bulk load is running, or one was cut short and the next start has
    /// not restored them yet).
    pub async fn missing_people_indexes(&self) -> Result<Vec<&'static str>> {
        let have: Vec<String> = match &self.pools {
            Pools::Sqlite { write, .. } => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people'",
                )
                .fetch_all(write)
                .await?
            }
            Pools::Postgres(p) => sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                     WHERE i.indrelid = 'people'::regclass AND i.indisvalid",
            )
            .fetch_all(p)
            .await?,
        };
        Ok(self
            .query_indexes()
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !have.iter().any(|h| h == name))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::test_support::TestDb;

    /// Every index of people that CREATE INDEX made, with its definition as the
    /// database reports it.
    async fn definitions(store: &Store) -> Vec<(String, String)> {
        match &store.pools {
            Pools::Sqlite { write, .. } => sqlx::query_as(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people' AND sql IS NOT NULL ORDER BY name",
            )
            .fetch_all(write)
            .await
            .unwrap(),
            Pools::Postgres(p) => sqlx::query_as(
                "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'people' ORDER BY 1",
            )
            .fetch_all(p)
            .await
            .unwrap(),
        }
    }

    /// Dropped and restored, the indexes are exactly those the migrations made, so
    /// the lists here cannot drift from the schema unnoticed.
    async fn deferred_indexes_come_back_as_the_migrations_made_them(db: TestDb) {
        let migrated = definitions(&db.store).await;
        if db.store.backend() == crate::Backend::Sqlite {
            for (name, on) in SQLITE_QUERY_INDEXES {
                let want = format!("CREATE INDEX {name} ON {on}");
                assert!(
                    migrated.iter().any(|(n, sql)| n == name && *sql == want),
                    "{want} is not in the migrated schema: {migrated:?}"
                );
            }
        }
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());

        assert!(db.store.defer_people_indexes().await.unwrap());
        let mut missing = db.store.missing_people_indexes().await.unwrap();
        missing.sort_unstable();
        let mut all: Vec<&str> = db.store.query_indexes().iter().map(|(n, _)| *n).collect();
        all.sort_unstable();
        assert_eq!(missing, all);
        // The key indexes that resolution reads stay.
        let left = definitions(&db.store).await;
        assert_eq!(left.len(), migrated.len() - 4, "{left:?}");
        assert!(left.iter().all(|(n, _)| !missing.contains(&n.as_str())));

        db.store.restore_people_indexes().await.unwrap();
        assert_eq!(definitions(&db.store).await, migrated);
    }

    /// A load cut short leaves its indexes missing; the next start's migrate builds
    /// them again.
    async fn migrate_restores_indexes_a_cut_short_load_left_missing(db: TestDb) {
        let migrated = definitions(&db.store).await;
        db.store.defer_people_indexes().await.unwrap();
        assert_eq!(db.store.migrate().await.unwrap(), 0, "no migration was due");
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());
        assert_eq!(definitions(&db.store).await, migrated);
    }

    /// On PostgreSQL an index that a failed concurrent build left invalid is missing,
    /// and restoring replaces it with a valid one.
    async fn an_invalid_index_is_built_again(db: TestDb) {
        let Pools::Postgres(p) = &db.store.pools else {
            return;
        };
        let migrated = definitions(&db.store).await;
        // What a cancelled CREATE INDEX CONCURRENTLY leaves behind.
        sqlx::query(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'people_state'::regclass",
        )
        .execute(p)
        .await
        .unwrap();
        assert_eq!(
            db.store.missing_people_indexes().await.unwrap(),
            vec!["people_state"]
        );
        db.store.restore_people_indexes().await.unwrap();
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());
        assert_eq!(definitions(&db.store).await, migrated);
    }

    /// A long query holding people keeps a bulk load from dropping its indexes: the
    /// load keeps them rather than queue every statement on people behind the drop.
    async fn a_busy_table_keeps_its_indexes(db: TestDb) {
        let Pools::Postgres(p) = &db.store.pools else {
            return;
        };
        let mut reader = p.begin().await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM people")
            .execute(&mut *reader)
            .await
            .unwrap();
        assert!(!db.store.defer_people_indexes().await.unwrap());
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());
        reader.rollback().await.unwrap();
        assert!(db.store.defer_people_indexes().await.unwrap());
        db.store.restore_people_indexes().await.unwrap();
    }

    crate::both_backends!(
        deferred_indexes_come_back_as_the_migrations_made_them,
        migrate_restores_indexes_a_cut_short_load_left_missing,
        an_invalid_index_is_built_again,
        a_busy_table_keeps_its_indexes,
    );
}
