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
