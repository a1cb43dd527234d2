//! Fresh databases for tests: an SQLite file in a temporary directory, or a
//! PostgreSQL schema of its own on the server named by `NARWHAL_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! When PostgreSQL cannot be reached, PostgreSQL tests are skipped with a loud line
//! on stderr, except under `CI=true`, where that is a failure: CI must run both halves.

use crate::{Backend, Store};
use rand::Rng;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use std::str::FromStr;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("NARWHAL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

/// A migrated store that cleans itself up when dropped.
pub struct TestDb {
    pub store: Store,
    /// Keeps the SQLite directory alive; `None` for PostgreSQL.
    pub dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    /// `None` only when PostgreSQL is unreachable outside CI (the test should return).
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store =
                    Store::open(&crate::DatabaseTarget::SqliteDir(dir.path().to_path_buf()))
                        .await
                        .expect("open sqlite");
                store.migrate().await.expect("migrate sqlite");
                Some(Self {
                    store,
                    dir: Some(dir),
                    schema: None,
                })
            }
            Backend::Postgres => {
                let url = pg_url();
                let schema = format!("t_{:016x}", rand::thread_rng().gen::<u64>());
                let base = PgConnectOptions::from_str(&url).expect("NARWHAL_TEST_DATABASE_URL");
                let mut admin = match base.clone().connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                            panic!("CI requires PostgreSQL at {url}: {e}");
                        }
                        eprintln!("\n!!! PostgreSQL unreachable at {url} ({e}): the PostgreSQL half of this test was SKIPPED !!!\n");
                        return None;
                    }
                };
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut admin)
                    .await
                    .expect("create schema");
                let opts = base.options([("search_path", schema.as_str())]);
                let store = Store::open_postgres(opts, 5).await.expect("open postgres");
                store.migrate().await.expect("migrate postgres");
                Some(Self {
                    store,
                    dir: None,
                    schema: Some(schema),
                })
            }
        }
    }
}

impl TestDb {
    /// The PostgreSQL schema this test's tables live in (`None` on SQLite), for a
    /// test that looks at the server's own catalogs.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Drop the schema from a thread of its own: Drop cannot await.
        let url = pg_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(opts) = PgConnectOptions::from_str(&url) {
                    if let Ok(mut c) = opts.connect().await {
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut c)
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

/// Generates `mod sqlite { #[tokio::test] fn NAME }` and `mod postgres { ... }` for
/// each `async fn NAME(db: TestDb)`, so every storage test runs on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::test_support::TestDb::new($crate::Backend::Sqlite).await.expect("sqlite");
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::test_support::TestDb::new($crate::Backend::Postgres).await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}
