//! Bulk loads: the indexes of `people` that only serve queries (name search,
//! geography with consent, state) are built once at the end of a large first import
//! instead of row by row during it.
//!
//! A row inserted into such an index lands at a random place in it, so on SQLite
//! each one costs a B-tree descent and, at the batch's commit, another dirty page to
//! write: the four of them doubled the cost of importing a voter file into an empty
//! hub. `CREATE INDEX` over the loaded table sorts once instead. The indexes that
//! resolution itself reads (the voter id, email and phone keys, and each key table's
//! person index) are never deferred, so the import matches records exactly as it
//! always does.
//!
//! Invariant: an index missing because a load was cut short (a crash, a kill) comes
//! back at the next start, since [`Store::migrate`] restores every one of them; the
//! load itself restores them whether it succeeded or failed.

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

impl Store {
    /// Drops the query-only indexes of `people` for a bulk load, on backends where
    /// that pays (SQLite). Returns whether it did; when it did, the caller must call
    /// [`Store::restore_people_indexes`] when the load ends, however it ends.
    pub async fn defer_people_indexes(&self) -> Result<bool> {
        let Pools::Sqlite { write, .. } = &self.pools else {
            return Ok(false);
        };
        let mut tx = write.begin().await?;
        for (name, _) in SQLITE_QUERY_INDEXES {
            sqlx::query(&format!("DROP INDEX IF EXISTS {name}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        tracing::info!("query indexes of people deferred for a bulk load");
        Ok(true)
    }

    /// Builds whichever of the query-only indexes of `people` is missing. Cheap when
    /// none is.
    pub async fn restore_people_indexes(&self) -> Result<()> {
        let Pools::Sqlite { write, .. } = &self.pools else {
            return Ok(());
        };
        let missing = self.missing_people_indexes().await?;
        if missing.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut tx = write.begin().await?;
        for (name, on) in SQLITE_QUERY_INDEXES {
            if missing.contains(name) {
                sqlx::query(&format!("CREATE INDEX IF NOT EXISTS {name} ON {on}"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        tracing::info!(
            indexes = ?missing,
            ms = started.elapsed().as_millis() as u64,
            "query indexes of people built"
        );
        Ok(())
    }

    /// The query-only indexes of `people` that do not exist now (a bulk load is
    /// running, or one was cut short and the next start has not restored them yet).
    pub async fn missing_people_indexes(&self) -> Result<Vec<&'static str>> {
        let Pools::Sqlite { write, .. } = &self.pools else {
            return Ok(vec![]);
        };
        let have: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people'",
        )
        .fetch_all(write)
        .await?;
        Ok(SQLITE_QUERY_INDEXES
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
    use crate::Backend;

    async fn definitions(store: &Store) -> Vec<(String, String)> {
        let Pools::Sqlite { write, .. } = &store.pools else {
            panic!("a SQLite store");
        };
        sqlx::query_as(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people' AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(write)
        .await
        .unwrap()
    }

    /// Dropped and restored, the indexes are exactly those the migrations made, so
    /// the list here cannot drift from the schema unnoticed.
    #[tokio::test]
    async fn deferred_indexes_come_back_as_the_migrations_made_them() {
        let db = TestDb::new(Backend::Sqlite).await.unwrap();
        let migrated = definitions(&db.store).await;
        for (name, on) in SQLITE_QUERY_INDEXES {
            let want = format!("CREATE INDEX {name} ON {on}");
            assert!(
                migrated.iter().any(|(n, sql)| n == name && *sql == want),
                "{want} is not in the migrated schema: {migrated:?}"
            );
        }
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());

        assert!(db.store.defer_people_indexes().await.unwrap());
        let mut missing = db.store.missing_people_indexes().await.unwrap();
        missing.sort_unstable();
        assert_eq!(
            missing,
            vec![
                "people_geo_consent",
                "people_last_lower",
                "people_search",
                "people_state"
            ]
        );
        // The key indexes that resolution reads stay.
        let left = definitions(&db.store).await;
        assert!(left.iter().all(|(n, _)| !missing.contains(&n.as_str())));

        db.store.restore_people_indexes().await.unwrap();
        assert_eq!(definitions(&db.store).await, migrated);
    }

    /// A load cut short leaves its indexes missing; the next start's migrate builds
    /// them again.
    #[tokio::test]
    async fn migrate_restores_indexes_a_cut_short_load_left_missing() {
        let db = TestDb::new(Backend::Sqlite).await.unwrap();
        let migrated = definitions(&db.store).await;
        db.store.defer_people_indexes().await.unwrap();
        assert_eq!(db.store.migrate().await.unwrap(), 0, "no migration was due");
        assert!(db.store.missing_people_indexes().await.unwrap().is_empty());
        assert_eq!(definitions(&db.store).await, migrated);
    }
}
