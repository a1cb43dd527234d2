//! Statistics upkeep: a table that filled up since it was last analyzed is analyzed
//! by the node's keeper (once, until it changes that much again), and every
//! PostgreSQL connection keeps one generic plan per prepared statement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_store::test_support::TestDb;
use narwhal_store::{both_backends, Backend};
use std::time::{Duration, Instant};

async fn a_filled_table_is_analyzed_once(db: TestDb) {
    let store = &db.store;
    // Rows into a table no one has analyzed (the commits baseline's scratch table).
    store.bench_durable_commits(0.3).await.unwrap();
    if store.backend() == Backend::Sqlite {
        // Nothing to keep on SQLite.
        assert_eq!(store.keep_statistics().await.unwrap(), Default::default());
        assert_eq!(store.server_setting("plan_cache_mode").await.unwrap(), None);
        assert_eq!(
            store
                .for_bulk(1)
                .server_setting("plan_cache_mode")
                .await
                .unwrap(),
            None
        );
        return;
    }
    assert_eq!(
        store
            .server_setting("plan_cache_mode")
            .await
            .unwrap()
            .as_deref(),
        Some("force_generic_plan")
    );
    // Bulk work lets PostgreSQL plan each batch for its own arrays.
    let bulk = store.for_bulk(1);
    assert_eq!(
        bulk.server_setting("plan_cache_mode")
            .await
            .unwrap()
            .as_deref(),
        Some("auto")
    );
    bulk.close().await;
    // The server publishes a backend's table counts within about a second.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let done = store.keep_statistics().await.unwrap();
        if done
            .analyzed
            .iter()
            .chain(&done.vacuumed)
            .any(|t| t == "bench_commits")
        {
            break;
        }
        assert!(Instant::now() < until, "bench_commits was never analyzed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Analyzed: nothing changed since, so the next pass leaves it alone.
    let again = store.keep_statistics().await.unwrap();
    assert!(
        !again
            .analyzed
            .iter()
            .chain(&again.vacuumed)
            .any(|t| t == "bench_commits"),
        "{again:?}"
    );
}

async fn the_keeper_stops_when_told(db: TestDb) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = db
        .store
        .spawn_statistics_keeper(Duration::from_millis(50), rx);
    tokio::time::sleep(Duration::from_millis(120)).await;
    // (On SQLite the keeper has already returned, dropping its receiver.)
    let _ = tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the keeper stops")
        .unwrap();
}

both_backends!(a_filled_table_is_analyzed_once, the_keeper_stops_when_told);

/// A table that fills at the rate of gifts is analyzed from a small sample, a table
/// whose filters need detail from the default one, and the connection that did it
/// goes back to the pool with the server's default target.
#[tokio::test]
async fn coarse_tables_are_sampled_small_and_the_connection_is_reset() {
    let Some((db, schema, mut admin)) = postgres_with_admin().await else {
        return;
    };
    // 5,000 distinct values in a coarse table (audit_log) and in one that is not (tags).
    sqlx::Executor::execute(
        &mut admin,
        "INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) \
           SELECT g, 'test', 'x', 'thing', g::text, '{}' FROM generate_series(1, 5000) g; \
         INSERT INTO tags (name) SELECT 'tag' || g FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    // One connection: the pass over tags runs on the one that analyzed audit_log.
    let one = db.store.for_bulk(1);
    assert!(narwhal_store::upkeep::COARSE.contains(&"audit_log"));
    assert!(!narwhal_store::upkeep::COARSE.contains(&"tags"));
    let until = Instant::now() + Duration::from_secs(15);
    let mut seen: Vec<String> = Vec::new();
    while !(seen.iter().any(|t| t == "audit_log") && seen.iter().any(|t| t == "tags")) {
        assert!(Instant::now() < until, "never analyzed: {seen:?}");
        let done = one.keep_statistics().await.unwrap();
        seen.extend(done.analyzed.into_iter().chain(done.vacuumed));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A target of 10 keeps at most 11 histogram bounds; the default (100) 101.
    let coarse = histogram_bounds(&mut admin, &schema, "audit_log", "entity_id").await;
    let fine = histogram_bounds(&mut admin, &schema, "tags", "name").await;
    assert!((2..=11).contains(&coarse), "audit_log kept {coarse} bounds");
    assert!(fine > 11, "tags kept {fine} bounds");
    let server_default: String =
        sqlx::query_scalar("SELECT current_setting('default_statistics_target')")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        one.server_setting("default_statistics_target")
            .await
            .unwrap(),
        Some(server_default)
    );
    one.close().await;
}

/// How many histogram bounds `ANALYZE` kept for a column (0: none).
async fn histogram_bounds(
    c: &mut sqlx::PgConnection,
    schema: &str,
    table: &str,
    column: &str,
) -> i32 {
    let n: Option<i32> = sqlx::query_scalar(
        "SELECT array_length(histogram_bounds::text::text[], 1) FROM pg_stats \
         WHERE schemaname = $1 AND tablename = $2 AND attname = $3",
    )
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_one(c)
    .await
    .unwrap();
    n.unwrap_or(0)
}

/// An operator can keep PostgreSQL's own plan cache choice by saying so in the URL.
#[tokio::test]
async fn a_url_that_sets_the_plan_cache_mode_keeps_it() {
    let Some(probe) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    drop(probe);
    let url = narwhal_store::test_support::pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let schema = format!("t_plan_{}", std::process::id());
    let store = narwhal_store::Store::open_postgres_schema(
        &format!("{url}{sep}options[plan_cache_mode]=auto"),
        &schema,
    )
    .await
    .unwrap();
    let mode = store.server_setting("plan_cache_mode").await.unwrap();
    store.close().await;
    narwhal_store::Store::drop_postgres_schema(&url, &schema)
        .await
        .unwrap();
    assert_eq!(mode.as_deref(), Some("auto"));
}

/// A coarse table whose statistics are settled (analyzed with at least
/// `COARSE_SETTLED_ROWS` rows) is not analyzed again as it grows, and its vacuums
/// leave its statistics alone, while a table whose filters need statistics still is.
#[tokio::test]
async fn settled_coarse_tables_are_not_analyzed_again_as_they_grow() {
    let Some((db, schema, mut admin)) = postgres_with_admin().await else {
        return;
    };
    let settled = narwhal_store::upkeep::COARSE_SETTLED_ROWS as i64;
    let fill = |from: i64, to: i64| {
        format!(
            "INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) \
               SELECT g, 'test', 'x', 'thing', g::text, '{{}}' FROM generate_series({from}, {to}) g; \
             INSERT INTO tags (name) SELECT 'tag' || g FROM generate_series({from}, {to}) g;"
        )
    };
    let passes_until = |want: &'static str| {
        let store = db.store.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(15);
            let mut seen: Vec<String> = Vec::new();
            while !seen.iter().any(|t| t == want) {
                assert!(Instant::now() < until, "{want} never came due: {seen:?}");
                let done = store.keep_statistics().await.unwrap();
                seen.extend(done.analyzed.into_iter().chain(done.vacuumed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            seen
        }
    };
    // Past the threshold: analyzed once, as any table is.
    sqlx::Executor::execute(&mut admin, fill(1, settled + 1_000).as_str())
        .await
        .unwrap();
    let seen = passes_until("audit_log").await;
    assert!(seen.iter().any(|t| t == "audit_log"), "{seen:?}");
    let first = last_analyze(&mut admin, &schema, "audit_log").await;
    assert!(first.is_some());
    // Both tables more than double: tags is analyzed again, audit_log is not.
    sqlx::Executor::execute(&mut admin, fill(settled + 1_001, 3 * settled).as_str())
        .await
        .unwrap();
    let seen = passes_until("tags").await;
    assert!(!seen.iter().any(|t| t == "audit_log"), "{seen:?}");
    assert_eq!(last_analyze(&mut admin, &schema, "audit_log").await, first);
    // Dead rows still call for a vacuum, which leaves the statistics alone.
    sqlx::Executor::execute(&mut admin, "DELETE FROM audit_log WHERE id % 3 <> 0")
        .await
        .unwrap();
    passes_until("audit_log").await;
    assert_eq!(last_analyze(&mut admin, &schema, "audit_log").await, first);
    let vacuumed: Option<String> = sqlx::query_scalar(
        "SELECT last_vacuum::text FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'audit_log'",
    )
    .bind(&schema)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(vacuumed.is_some());
}

/// When `table` of `schema` was last analyzed by hand or by the keeper, as text.
async fn last_analyze(c: &mut sqlx::PgConnection, schema: &str, table: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT last_analyze::text FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(c)
    .await
    .unwrap()
}

/// A PostgreSQL test database, its schema, and a connection of its own into that
/// schema (the test's hand on the tables, outside the store's pools); `None` without
/// a PostgreSQL server.
async fn postgres_with_admin() -> Option<(TestDb, String, sqlx::PgConnection)> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let db = TestDb::new(Backend::Postgres).await?;
    let schema = db.schema().unwrap().to_string();
    let admin = sqlx::postgres::PgConnectOptions::from_str(&narwhal_store::test_support::pg_url())
        .unwrap()
        .options([("search_path", schema.as_str())])
        .connect()
        .await
        .unwrap();
    Some((db, schema, admin))
}
