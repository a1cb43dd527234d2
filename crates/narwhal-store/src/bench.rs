//! The benchmark baseline: the cheapest way each backend takes rows, with no parsing
//! or resolution (prepared inserts in one transaction on SQLite, COPY on PostgreSQL).

use crate::error::Result;
use crate::Store;

const COLS: usize = 24;

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
}
