//! The benchmark baseline: the cheapest way each backend takes rows, with no parsing
//! or resolution (prepared inserts in one transaction on SQLite, COPY on PostgreSQL).

use crate::error::Result;
use crate::{Backend, Store};

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

    /// Inserts `rows` rows of `COLS` text columns produced by `row` into a scratch table.
    pub async fn bench_baseline_insert(
        &self,
        rows: u64,
        row: &(dyn Fn(u64) -> Vec<String> + Sync),
    ) -> Result<()> {
        let cols: Vec<String> = (0..COLS).map(|i| format!("c{i} TEXT")).collect();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS bench_baseline (id BIGINT PRIMARY KEY, {})",
            cols.join(", ")
        );
        on_write!(self, p => sqlx::query(&create).execute(p).await.map(|_| ()))?;
        match self.backend() {
            Backend::Sqlite => {
                let ph: Vec<String> = (1..=COLS + 1).map(|i| format!("${i}")).collect();
                let names: Vec<String> = (0..COLS).map(|i| format!("c{i}")).collect();
                let sql = format!(
                    "INSERT INTO bench_baseline (id, {}) VALUES ({})",
                    names.join(", "),
                    ph.join(", ")
                );
                on_write!(self, p => {
                    let mut tx = p.begin().await?;
                    for i in 0..rows {
                        let mut q = sqlx::query(&sql).bind(i as i64);
                        for v in row(i) {
                            q = q.bind(v);
                        }
                        q.execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok::<_, crate::StoreError>(())
                })?;
            }
            Backend::Postgres => {
                let names: Vec<String> = (0..COLS).map(|i| format!("c{i}")).collect();
                let sql = format!("COPY bench_baseline (id, {}) FROM STDIN", names.join(", "));
                if let crate::db::Pools::Postgres(p) = &self.pools {
                    let mut conn = p.acquire().await?;
                    let mut copy = conn.copy_in_raw(&sql).await?;
                    let mut buf = String::with_capacity(1 << 20);
                    for i in 0..rows {
                        buf.push_str(&i.to_string());
                        for v in row(i) {
                            buf.push('\t');
                            for c in v.chars() {
                                match c {
                                    '\\' => buf.push_str("\\\\"),
                                    '\t' => buf.push_str("\\t"),
                                    '\n' => buf.push_str("\\n"),
                                    '\r' => buf.push_str("\\r"),
                                    _ => buf.push(c),
                                }
                            }
                        }
                        buf.push('\n');
                        if buf.len() > (1 << 20) {
                            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
                        }
                    }
                    copy.send(buf.into_bytes()).await?;
                    copy.finish().await?;
                }
            }
        }
        Ok(())
    }
}
