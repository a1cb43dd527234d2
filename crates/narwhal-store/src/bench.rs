//! Yardsticks measured in the same run as a benchmark: the baseline, the cheapest way
//! each backend takes rows, with no parsing or resolution (prepared inserts in one
//! transaction on SQLite, COPY on PostgreSQL); durable single-row commits; and the
//! engine floor of an import, what the database alone spends on the rows it stored.

use crate::db::Pools;
use crate::error::Result;
use crate::{Store, StoreError};

const COLS: usize = 24;

/// Where [`Store::bench_engine_floor`] copies an imported hub's people from.
#[derive(Debug, Clone, Copy)]
pub enum FloorSource<'a> {
    /// Another SQLite database file, attached to the writer for the copy.
    SqliteFile(&'a std::path::Path),
    /// Another schema of the same PostgreSQL database.
    PostgresSchema(&'a str),
}

/// The tables a first import fills, parents first.
const FLOOR_TABLES: [&str; 4] = ["people", "person_emails", "person_phones", "person_tags"];

impl Store {
    /// Durable single-row commits, one after another, for `seconds`: the baseline of
    /// the donations bench. Returns commits per second.
    pub async fn bench_durable_commits(&self, seconds: f64) -> Result<f64> {
        on_write!(self, p => {
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_commits (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)")
                .execute(p)
                .await?;
            let start = std::time::Instant::now();
            let mut n: i64 = 0;
            while start.elapsed().as_secs_f64() < seconds {
                let mut tx = p.begin().await?;
                sqlx::query("INSERT INTO bench_commits (id, at) VALUES ($1, $2)")
                    .bind(n)
                    .bind(crate::now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n += 1;
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        })
    }

    /// Inserts `rows` rows of `COLS` text columns produced by `row` into a scratch table,
    /// in one transaction: prepared multi-row INSERTs on SQLite, COPY on PostgreSQL.
    /// Returns the seconds spent writing alone: on SQLite rows are made in chunks
    /// between timed statements, on PostgreSQL beforehand into a file that COPY reads.
    pub async fn bench_baseline_insert(
        &self,
        rows: u64,
        row: &(dyn Fn(u64) -> Vec<String> + Sync),
    ) -> Result<f64> {
        let cols: Vec<String> = (0..COLS).map(|i| format!("c{i} TEXT")).collect();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS bench_baseline (id BIGINT PRIMARY KEY, {})",
            cols.join(", ")
        );
        on_write!(self, p => sqlx::query(&create).execute(p).await.map(|_| ()))?;
        let names: Vec<String> = (0..COLS).map(|i| format!("c{i}")).collect();
        let mut spent = std::time::Duration::ZERO;
        match &self.pools {
            crate::db::Pools::Sqlite { write, .. } => {
                // One statement of PER rows, prepared once and reused (anonymous markers:
                // see `db::placeholders`); the last partial chunk gets its own.
                const PER: usize = 400;
                let stmt = |n: usize| {
                    let one = format!("({})", vec!["?"; COLS + 1].join(", "));
                    format!(
                        "INSERT INTO bench_baseline (id, {}) VALUES {}",
                        names.join(", "),
                        vec![one; n].join(", ")
                    )
                };
                let full = stmt(PER);
                let t = std::time::Instant::now();
                let mut tx = write.begin().await?;
                spent += t.elapsed();
                let mut i = 0u64;
                while i < rows {
                    let n = (rows - i).min(PER as u64) as usize;
                    let chunk: Vec<Vec<String>> = (i..i + n as u64).map(row).collect();
                    let last;
                    let sql = if n == PER {
                        &full
                    } else {
                        last = stmt(n);
                        &last
                    };
                    let t = std::time::Instant::now();
                    let mut q = sqlx::query(sql);
                    for (k, vals) in chunk.into_iter().enumerate() {
                        q = q.bind((i + k as u64) as i64);
                        for v in vals {
                            q = q.bind(v);
                        }
                    }
                    q.execute(&mut *tx).await?;
                    spent += t.elapsed();
                    i += n as u64;
                }
                let t = std::time::Instant::now();
                tx.commit().await?;
                spent += t.elapsed();
            }
            crate::db::Pools::Postgres(p) => {
                // COPY returns before the server has stored what it was sent, so the
                // whole COPY is timed, fed from a file written beforehand (reading it
                // costs next to nothing; making the rows is not the database's work).
                let mut file = tempfile::tempfile()
                    .map_err(|e| crate::StoreError::Invalid(format!("bench file: {e}")))?;
                {
                    use std::io::Write;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
                    let mut line = String::with_capacity(512);
                    for k in 0..rows {
                        line.clear();
                        line.push_str(&k.to_string());
                        for v in row(k) {
                            line.push('\t');
                            crate::people::copy_field(&mut line, Some(&v));
                        }
                        line.push('\n');
                        w.write_all(line.as_bytes())
                            .map_err(|e| crate::StoreError::Invalid(format!("bench file: {e}")))?;
                    }
                    w.flush()
                        .map_err(|e| crate::StoreError::Invalid(format!("bench file: {e}")))?;
                }
                let sql = format!("COPY bench_baseline (id, {}) FROM STDIN", names.join(", "));
                let mut conn = p.acquire().await?;
                let t = std::time::Instant::now();
                {
                    use std::io::{Read, Seek};
                    file.seek(std::io::SeekFrom::Start(0))
                        .map_err(|e| crate::StoreError::Invalid(format!("bench file: {e}")))?;
                    let mut copy = conn.copy_in_raw(&sql).await?;
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = file
                            .read(&mut buf)
                            .map_err(|e| crate::StoreError::Invalid(format!("bench file: {e}")))?;
                        if n == 0 {
                            break;
                        }
                        copy.send(&buf[..n]).await?;
                    }
                    copy.finish().await?;
                }
                spent = t.elapsed();
            }
        }
        Ok(spent.as_secs_f64())
    }

    /// The database's own share of a first import, with none of Narwhal's: into this
    /// hub (freshly migrated and empty), the rows an import left in `source` (people
    /// and their email, phone and tag rows) are copied by `INSERT ... SELECT` in one
    /// transaction, in the order they were stored, with the unique keys in place and
    /// every other index of `people` dropped first and built afterwards, the cheapest
    /// known way on either backend. Returns the seconds of the copy and the builds.
    ///
    /// No import can be faster than this on the same machine and schema, whatever it
    /// does before the database: it is the floor that `bench import` reports beside the
    /// raw baseline (which writes narrower rows with no keys or indexes at all). The
    /// copy reads the source too, a sequential scan (about half a second for 1M
    /// SQLite rows), which an import does not do.
    pub async fn bench_engine_floor(&self, source: FloorSource<'_>) -> Result<f64> {
        match (&self.pools, source) {
            (Pools::Sqlite { write, .. }, FloorSource::SqliteFile(path)) => {
                let mut conn = write.acquire().await?;
                sqlx::query("ATTACH DATABASE $1 AS floor_src")
                    .bind(path.to_string_lossy().into_owned())
                    .execute(&mut *conn)
                    .await?;
                let out = sqlite_floor(&mut conn).await;
                sqlx::query("DETACH DATABASE floor_src")
                    .execute(&mut *conn)
                    .await?;
                out
            }
            (Pools::Postgres(p), FloorSource::PostgresSchema(schema)) => {
                crate::db::check_schema_name(schema)?;
                let mut conn = p.acquire().await?;
                let indexes: Vec<(String, String)> = sqlx::query_as(
                    "SELECT indexname::text, indexdef FROM pg_indexes \
                     WHERE schemaname = current_schema() AND tablename = 'people' \
                     AND indexdef NOT LIKE 'CREATE UNIQUE INDEX%'",
                )
                .fetch_all(&mut *conn)
                .await?;
                for (name, _) in &indexes {
                    sqlx::query(&format!("DROP INDEX \"{name}\""))
                        .execute(&mut *conn)
                        .await?;
                }
                let started = std::time::Instant::now();
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for t in FLOOR_TABLES {
                    sqlx::query(&format!("INSERT INTO {t} SELECT * FROM {schema}.{t}"))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                for (_, def) in &indexes {
                    sqlx::query(def).execute(&mut *conn).await?;
                }
                Ok(started.elapsed().as_secs_f64())
            }
            _ => Err(StoreError::Invalid(
                "the floor's source is on another backend".into(),
            )),
        }
    }
}

/// [`Store::bench_engine_floor`] on SQLite, with the source attached as `floor_src`.
async fn sqlite_floor(conn: &mut sqlx::SqliteConnection) -> Result<f64> {
    // Indexes made by CREATE INDEX (a UNIQUE column's own index has no SQL).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM main.sqlite_master WHERE type = 'index' \
         AND tbl_name = 'people' AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX main.\"{name}\""))
            .execute(&mut *conn)
            .await?;
    }
    let started = std::time::Instant::now();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for t in FLOOR_TABLES {
        sqlx::query(&format!("INSERT INTO main.{t} SELECT * FROM floor_src.{t}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (_, sql) in &indexes {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::people::{ChangeSet, NewPerson, PersonRow};
    use crate::test_support::TestDb;
    use crate::Backend;

    /// Rows per table of a first import, and the names of the indexes of people.
    async fn shape(store: &Store) -> (Vec<i64>, Vec<String>) {
        let mut counts = Vec::new();
        for t in FLOOR_TABLES {
            let n: i64 = on_write!(store, p => sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}")).fetch_one(p).await.unwrap());
            counts.push(n);
        }
        let sql = match store.backend() {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'people' ORDER BY name",
            Backend::Postgres => "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'people' ORDER BY 1",
        };
        let names: Vec<String> =
            on_write!(store, p => sqlx::query_scalar(sql).fetch_all(p).await.unwrap());
        (counts, names)
    }

    /// The floor copies every row a first import stored into the empty hub and leaves
    /// it with the same indexes, the ones it dropped for the copy built again.
    async fn engine_floor_copies_every_row_and_rebuilds_the_indexes(db: TestDb) {
        let inserts: Vec<NewPerson> = (1..=30)
            .map(|i| NewPerson {
                row: PersonRow {
                    voter_id: Some(format!("V{i}")),
                    last_name: Some(format!("Name{i}")),
                    search_name: format!("name{i}"),
                    email_consent: "subscribed".into(),
                    sms_consent: "unknown".into(),
                    row_hash: i,
                    ..Default::default()
                },
                custom_json: None,
                emails: vec![format!("p{i}@example.org")],
                phones: (i % 2 == 0)
                    .then(|| format!("+1614555{i:04}"))
                    .into_iter()
                    .collect(),
                tags: vec!["donor".into(), "volunteer".into()],
            })
            .collect();
        db.store
            .apply_changes(&ChangeSet {
                inserts,
                ..Default::default()
            })
            .await
            .unwrap();
        let before = shape(&db.store).await;
        assert_eq!(before.0, vec![30, 30, 15, 60]);

        let target = TestDb::new(db.store.backend())
            .await
            .expect("a second database");
        let file = db.dir.as_ref().map(|d| d.path().join("narwhal.db"));
        let source = match (&file, db.schema()) {
            (Some(f), _) => FloorSource::SqliteFile(f),
            (None, Some(s)) => FloorSource::PostgresSchema(s),
            (None, None) => panic!("neither a file nor a schema"),
        };
        let secs = target.store.bench_engine_floor(source).await.unwrap();
        assert!(secs > 0.0);
        assert_eq!(shape(&target.store).await, before);
        // The copied keys answer as the source's do.
        let found = target
            .store
            .find_by_keys(&["V8".to_string()], &["p7@example.org".to_string()], &[])
            .await
            .unwrap();
        assert_eq!(found.voter["V8"].1, 8);
        assert_eq!(found.email["p7@example.org"].1, 7);
    }

    crate::both_backends!(engine_floor_copies_every_row_and_rebuilds_the_indexes);
}
