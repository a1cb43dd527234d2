//! Opening a backend, and the macros that run one piece of SQL code on either.

use crate::error::Result;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Where the data lives: an SQLite data directory or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// `narwhal.db` inside this directory (created if missing).
    SqliteDir(PathBuf),
    /// A `postgres://` URL. Not printed by `Debug` elsewhere: it may hold a password.
    Postgres(String),
}

impl DatabaseTarget {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; `sqlite://DIR` or a bare
    /// path is an SQLite data directory.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::Postgres(s.to_string())
        } else {
            Self::SqliteDir(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
        }
    }

    /// A description safe to log: the password of a URL is replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Self::SqliteDir(p) => format!("sqlite:{}", p.join("narwhal.db").display()),
            Self::Postgres(url) => redact_url(url),
        }
    }
}

/// Hides the password in `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

/// `n` bind markers for statements made only of positional values. SQLite gets
/// anonymous `?` markers: sqlx binds by asking SQLite each marker's name, which walks
/// a list of the named ones, so thousands of `$N` markers cost quadratic time.
pub(crate) fn placeholders(backend: Backend, start: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => (start..start + n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[derive(Clone)]
pub(crate) enum Pools {
    Sqlite { read: SqlitePool, write: SqlitePool },
    Postgres(PgPool),
}

/// The handle every service uses to reach storage. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pools: Pools,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend().as_str())
    }
}

/// Runs `$body` with `$p` bound to a pool that may read.
macro_rules! on_read {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pools {
            $crate::db::Pools::Sqlite { read: $p, .. } => $body,
            $crate::db::Pools::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` with `$p` bound to the pool that writes.
macro_rules! on_write {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pools {
            $crate::db::Pools::Sqlite { write: $p, .. } => $body,
            $crate::db::Pools::Postgres($p) => $body,
        }
    };
}

/// A connection used more recently than this is handed out without a ping first.
const ALIVE_BYPASS: Duration = Duration::from_millis(500);

/// How long a caller waits for a PostgreSQL connection by default (background work,
/// the command line); a server's request pools wait less ([`Store::shedding`]).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The plan cache mode every PostgreSQL connection sets unless its URL sets one.
const GENERIC_PLANS: &str = "force_generic_plan";

/// The settings of every PostgreSQL pool.
///
/// sqlx pings a connection before each checkout by default: one more round trip per
/// query, which doubles the time a request spends on the database exactly when the
/// database is slow and round trips are dear. Like HikariCP's `aliveBypassWindowMs`,
/// a connection used within [`ALIVE_BYPASS`] is handed out as it is; one idle for
/// longer (a restart or a firewall may have cut it meanwhile) is pinged first. A
/// connection that breaks in use fails its query (the request is answered 503 and
/// retried) and sqlx drops it when it comes back.
///
/// Waiting for a connection is bounded by `acquire_timeout`.
pub(crate) fn pg_pool_options(max: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > ALIVE_BYPASS {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A pool of its own of at most `max` connections with `opts`, as patient as `p`.
pub(crate) fn pool_beside(p: &sqlx::PgPool, max: u32, opts: PgConnectOptions) -> sqlx::PgPool {
    pg_pool_options(max, p.options().get_acquire_timeout()).connect_lazy_with(opts)
}

/// A PostgreSQL schema name is spliced into SQL, so it may hold only letters,
/// digits and `_`.
pub(crate) fn check_schema_name(schema: &str) -> Result<()> {
    if schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(crate::StoreError::Invalid(
            "a schema name has only letters, digits and _".into(),
        ))
    }
}

impl Store {
    /// Opens (and for SQLite creates) the database. Does not migrate.
    pub async fn open(target: &DatabaseTarget) -> Result<Self> {
        match target {
            DatabaseTarget::SqliteDir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::StoreError::Invalid(format!(
                        "cannot create data directory {}: {e}",
                        dir.display()
                    ))
                })?;
                Self::open_sqlite_file(&dir.join("narwhal.db")).await
            }
            DatabaseTarget::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url)?;
                Self::open_postgres(opts, 16).await
            }
        }
    }

    pub(crate) async fn open_sqlite_file(path: &std::path::Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB for the writer. Not more: SQLite's B-tree balancer renumbers pages
            // through a scratch page number past 1 GiB, and a commit after that walks
            // the writer's whole page cache (`pcache1TruncateUnsafe`). With 64 MiB,
            // that walk grew to a quarter of the writer's time in a 30 s donations
            // run; a 1M-row import was no slower with 16 MiB, and 80 MB smaller.
            .pragma("cache_size", "-16384")
            .pragma("temp_store", "memory");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(
                opts.clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string())
                    .statement_cache_capacity(WRITER_STATEMENTS),
            )
            .await?;
        spawn_checkpointer(&write, opts.clone().pragma("cache_size", "-1024")).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true).pragma("cache_size", "-8192"))
            .await?;
        Ok(Self {
            pools: Pools::Sqlite { read, write },
        })
    }

    pub(crate) async fn open_postgres(opts: PgConnectOptions, max: u32) -> Result<Self> {
        // Every statement is prepared once per connection, and most of the hot ones
        // take their rows as arrays (`unnest($1)`, `= ANY($1)`). PostgreSQL's default
        // plan cache compares a generic plan, which guesses an array's length, with
        // plans for the actual few elements, finds the latter cheaper, and so plans
        // such a statement again at every execution: a third of PostgreSQL's CPU per
        // donation went to the planner. The generic plans are the same index plans.
        // No query binds a value that a partial index or a skewed column needs to see
        // (states and channels are literals in the SQL), and the segment counts and
        // name searches measured no slower this way (see ARCHITECTURE, "Plans"). Bulk
        // work, whose arrays hold thousands of rows, plans each batch: see `for_bulk`.
        // A URL that sets its own (`?options[plan_cache_mode]=auto`) keeps it.
        let own = opts
            .get_options()
            .is_some_and(|o| o.contains("plan_cache_mode"));
        let opts = if own {
            opts
        } else {
            opts.options([("plan_cache_mode", GENERIC_PLANS)])
        };
        let pool = pg_pool_options(max, ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        Ok(Self {
            pools: Pools::Postgres(pool),
        })
    }

    /// Opens PostgreSQL with every table inside `schema` (created if missing): one
    /// server can then hold isolated databases for benchmarks and rehearsals.
    pub async fn open_postgres_schema(url: &str, schema: &str) -> Result<Self> {
        use sqlx::ConnectOptions;
        check_schema_name(schema)?;
        let base = PgConnectOptions::from_str(url)?;
        let mut admin = base.clone().connect().await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut admin)
            .await?;
        Self::open_postgres(base.options([("search_path", schema)]), 8).await
    }

    /// A handle on the same database for serving requests: on PostgreSQL a pool of
    /// its own, of the same size, where a caller waits at most `wait` for a
    /// connection. When the database is slow or away the pool's queue stays short: a
    /// request that cannot get a connection in time fails with a database error (the
    /// HTTP edge answers 503 `unavailable` with `Retry-After`) instead of queueing
    /// behind every other one until the client gives up. On SQLite a read pool of its
    /// own with the same bound, beside the same single writer (writes from requests
    /// queue in group commits, which bound their own wait): without it, a node that
    /// falls behind lines every request up for a read connection for up to 30 s, so
    /// that by the time a request is served its client has given up, and throughput
    /// collapses.
    pub fn shedding(&self, wait: Duration) -> Store {
        match &self.pools {
            Pools::Sqlite { read, write } => Store {
                pools: Pools::Sqlite {
                    read: SqlitePoolOptions::new()
                        .max_connections(read.options().get_max_connections())
                        .acquire_timeout(wait)
                        .connect_lazy_with((*read.connect_options()).clone()),
                    write: write.clone(),
                },
            },
            Pools::Postgres(p) => Store {
                pools: Pools::Postgres(
                    pg_pool_options(p.options().get_max_connections(), wait)
                        .connect_lazy_with((*p.connect_options()).clone()),
                ),
            },
        }
    }

    /// A handle for bulk work (imports, blasts): on PostgreSQL a pool of its own of at
    /// most `max` connections, patient like this one, whose connections let
    /// PostgreSQL plan each execution for its actual arrays (`plan_cache_mode = auto`).
    /// A bulk batch carries thousands of keys, where a generic plan guesses ten: with
    /// generic plans a 300,000-row import ran at 19,782 rows/s, with PostgreSQL's own
    /// choice at 31,499, and planning costs nothing next to a batch. A URL that sets
    /// a mode other than the default keeps it here too. On SQLite the same handle, as
    /// [`Store::dedicated`].
    pub fn for_bulk(&self, max: u32) -> Store {
        match &self.pools {
            Pools::Sqlite { .. } => self.clone(),
            Pools::Postgres(p) => {
                // Ours was appended last, and only where the URL set no mode.
                let opts = (*p.connect_options()).clone();
                let ours = format!("-c plan_cache_mode={GENERIC_PLANS}");
                let opts = if opts.get_options().is_some_and(|o| o.ends_with(&ours)) {
                    opts.options([("plan_cache_mode", "auto")])
                } else {
                    opts
                };
                Store {
                    pools: Pools::Postgres(pool_beside(p, max, opts)),
                }
            }
        }
    }

    /// Drops a schema made by [`Store::open_postgres_schema`].
    pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<()> {
        use sqlx::ConnectOptions;
        check_schema_name(schema)?;
        let mut admin = PgConnectOptions::from_str(url)?.connect().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// Creates or upgrades the schema, and builds any index a cut-short bulk load
    /// left missing. Returns how many migrations ran.
    pub async fn migrate(&self) -> Result<usize> {
        let ran = crate::migrate::run(self).await?;
        self.restore_people_indexes().await?;
        Ok(ran)
    }

    /// Refreshes the planner's statistics (and on PostgreSQL the visibility map, so
    /// counts can use index-only scans) after a bulk load changed many rows.
    pub async fn after_bulk_load(&self) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                sqlx::query("PRAGMA optimize").execute(write).await?;
            }
            Pools::Postgres(p) => {
                sqlx::raw_sql("VACUUM (ANALYZE) people, person_emails, person_phones, person_tags")
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// Opens up to `n` connections of this handle's pool now, instead of one by one
    /// as the first requests ask for them; returns how many the pool then holds. On
    /// PostgreSQL each new connection is a server process and a few round trips, so
    /// a node that starts (or restarts) into a burst kept its first requests waiting:
    /// in `narwhal bench donations` at 2,000 gifts/s the first half second of a run
    /// answered at a median of 110 to 220 ms, against about 40 ms with the
    /// connections opened beforehand. The pool still closes connections idle for its
    /// idle timeout (10 minutes). SQLite opens a file in microseconds: nothing to do.
    pub async fn open_connections(&self, n: u32) -> Result<u32> {
        let Pools::Postgres(p) = &self.pools else {
            return Ok(0);
        };
        let n = n.min(p.options().get_max_connections());
        // Held together, so that each acquire opens a connection of its own.
        let mut held = Vec::with_capacity(n as usize);
        while held.len() < n as usize {
            held.push(p.acquire().await?);
        }
        drop(held);
        Ok(p.size())
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        on_read!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A consistent online copy of the SQLite database (`VACUUM INTO`), safe while
    /// the server runs. PostgreSQL is backed up with its own tools (see README).
    pub async fn backup_sqlite(&self, dest: &std::path::Path) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                if dest.exists() {
                    return Err(crate::StoreError::Invalid(format!("{} already exists", dest.display())));
                }
                let d = dest.to_string_lossy().to_string();
                sqlx::query("VACUUM INTO $1").bind(d).execute(write).await?;
                Ok(())
            }
            Pools::Postgres(_) => Err(crate::StoreError::Invalid(
                "online backup here is for SQLite; back up PostgreSQL with pg_dump or pg_basebackup".into(),
            )),
        }
    }

    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Pools::Postgres(p) => p.close().await,
        }
    }
}

/// WAL pages past which the writer checkpoints on its own, at the end of a commit. A
/// fallback only: [`spawn_checkpointer`] normally keeps the WAL far below it.
const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

/// Prepared statements the writer keeps (sqlx's default is 100). Group commits write
/// multi-row statements whose text depends on the batch's size, so the writer meets
/// several hundred texts; one pushed out is parsed and planned again on the writer's
/// time.
const WRITER_STATEMENTS: usize = 1024;

/// How often the checkpointer copies committed pages from the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the WAL on a connection of its own, beside the writer. SQLite's default
/// runs a checkpoint inside whichever commit finds the WAL over 1,000 pages: that commit
/// copies every page since the last one into the database file and syncs it, while the
/// one writer is held. An import then paid about a third of its time in commits (a
/// batch dirties pages all over the random-order indexes), and a group commit of
/// donations that drew the checkpoint kept every donor in it waiting. A passive
/// checkpoint never blocks the writer or a reader (it copies what no reader still
/// needs, and returns), so here it costs the writer nothing. It stops when the
/// writer's pool is closed.
async fn spawn_checkpointer(write: &SqlitePool, opts: SqliteConnectOptions) -> Result<()> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let write = write.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if write.is_closed() {
                break;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "WAL checkpoint");
            }
        }
        pool.close().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Committed pages reach the database file from the WAL without the writer
    /// checkpointing: a commit far below the writer's own checkpoint threshold is in
    /// the main file soon after, copied there by the checkpointer beside it.
    #[tokio::test]
    async fn the_checkpointer_moves_commits_from_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseTarget::SqliteDir(dir.path().to_path_buf()))
            .await
            .unwrap();
        let Pools::Sqlite { write, .. } = &store.pools else {
            panic!("a SQLite store");
        };
        let main = dir.path().join("narwhal.db");
        let before = std::fs::metadata(&main).unwrap().len();
        // About 1,000 pages (4 MB): a tenth of WRITER_CHECKPOINT_PAGES.
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(write)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO filler SELECT randomblob(4000) FROM n",
        )
        .execute(write)
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let size = std::fs::metadata(&main).unwrap().len();
            if size >= before + 4_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {size} bytes: nothing was checkpointed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
    }

    /// A read on a serving handle whose connections are all taken fails with a pool
    /// timeout, soon (a loaded machine gets seconds of slack), instead of queueing.
    async fn turned_away_quickly(serving: &Store) {
        let started = std::time::Instant::now();
        let shed = serving.ping().await;
        assert!(
            matches!(
                shed,
                Err(crate::StoreError::Database(sqlx::Error::PoolTimedOut))
            ),
            "{shed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "turned away quickly, not queued: {:?}",
            started.elapsed()
        );
    }

    /// A serving pool whose every connection is busy (a slow or saturated database)
    /// turns the next caller away after its short wait, with a database error the HTTP
    /// edge answers 503 with `Retry-After`, instead of queueing it; once connections
    /// come back, callers are served again. Background pools keep the long wait.
    #[tokio::test]
    async fn a_saturated_serving_pool_sheds_instead_of_queueing() {
        let Some(db) = crate::test_support::TestDb::new(Backend::Postgres).await else {
            return;
        };
        let serving = db.store.shedding(Duration::from_millis(300));
        let Pools::Postgres(pool) = &serving.pools else {
            panic!("a PostgreSQL store");
        };
        assert_eq!(
            pool.options().get_acquire_timeout(),
            Duration::from_millis(300)
        );
        let Pools::Postgres(background) = &db.store.pools else {
            panic!("a PostgreSQL store");
        };
        assert_eq!(background.options().get_acquire_timeout(), ACQUIRE_TIMEOUT);
        let mut held = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            held.push(pool.acquire().await.unwrap());
        }
        turned_away_quickly(&serving).await;
        // A pool made from it for ingest waits as briefly.
        let Pools::Postgres(ingest) = &serving.dedicated(2).pools else {
            panic!("a PostgreSQL store");
        };
        assert_eq!(
            ingest.options().get_acquire_timeout(),
            Duration::from_millis(300)
        );
        drop(held);
        serving.ping().await.unwrap();
        serving.close().await;
    }

    /// A serving handle opens its connections on demand, and on start when asked:
    /// they stay in the pool, idle, for the first requests (bounded by the pool's
    /// size), and SQLite needs none.
    #[tokio::test]
    async fn connections_are_opened_ahead_of_the_first_requests() {
        let Some(db) = crate::test_support::TestDb::new(Backend::Postgres).await else {
            return;
        };
        let serving = db.store.shedding(Duration::from_secs(5));
        let Pools::Postgres(pool) = &serving.pools else {
            panic!("a PostgreSQL store");
        };
        assert_eq!(pool.size(), 0, "a serving pool connects lazily");
        assert_eq!(serving.open_connections(3).await.unwrap(), 3);
        // They go back to the pool (asynchronously) and stay there, idle.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.num_idle() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} idle",
                pool.num_idle()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.size(), 3);
        serving.ping().await.unwrap();
        assert_eq!(pool.size(), 3, "the ping used an open connection");
        // Asked for more than it may hold, it opens what it may.
        let max = pool.options().get_max_connections();
        assert_eq!(serving.open_connections(max + 5).await.unwrap(), max);
        serving.close().await;

        let lite = crate::test_support::TestDb::new(Backend::Sqlite)
            .await
            .unwrap();
        assert_eq!(lite.store.open_connections(4).await.unwrap(), 0);
    }

    /// On SQLite the serving handle's reads are bounded the same way, and it writes
    /// through the very same single writer.
    #[tokio::test]
    async fn a_saturated_sqlite_read_pool_sheds_instead_of_queueing() {
        let Some(db) = crate::test_support::TestDb::new(Backend::Sqlite).await else {
            return;
        };
        let serving = db.store.shedding(Duration::from_millis(300));
        let (Pools::Sqlite { read, write }, Pools::Sqlite { write: own, .. }) =
            (&serving.pools, &db.store.pools)
        else {
            panic!("an SQLite store");
        };
        assert_eq!(
            read.options().get_acquire_timeout(),
            Duration::from_millis(300)
        );
        assert_eq!(write.options().get_max_connections(), 1);
        let mut held = Vec::new();
        for _ in 0..read.options().get_max_connections() {
            held.push(read.acquire().await.unwrap());
        }
        // The writer is the same pool: holding its one connection blocks the other handle.
        let writer = write.acquire().await.unwrap();
        assert!(own.try_acquire().is_none(), "one writer for both handles");
        drop(writer);
        turned_away_quickly(&serving).await;
        drop(held);
        serving.ping().await.unwrap();
    }

    #[test]
    fn targets() {
        assert_eq!(
            DatabaseTarget::parse("postgres://u@h/db"),
            DatabaseTarget::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            DatabaseTarget::parse("sqlite://x"),
            DatabaseTarget::SqliteDir("x".into())
        );
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
    }
}
