//! `narwhal bench NAME`: measured, not timed in tests. One JSON line per run on
//! stdout, with a baseline measured in the same run.

use anyhow::Context;
use narwhal_domain::SegmentFilter;
use narwhal_people::import::{self, ImportOptions};
use narwhal_people::mapping::Mapping;
use narwhal_people::{synth, Hub};
use narwhal_store::bench::FloorSource;
use narwhal_store::{Backend, DatabaseTarget, Store};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// sqlite, postgres or both.
    #[arg(long, default_value = "both")]
    pub backend: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Import a generated 70-column voter file; compare with a raw bulk insert of the same rows.
    ///
    /// Also prints the engine floor: the imported rows copied again inside the
    /// database into an empty hub (`INSERT ... SELECT`, unique keys in place, the other
    /// indexes of people built afterwards), the database's own work with none of
    /// Narwhal's, which no import can beat on the same machine.
    ///
    /// The PostgreSQL run uses --database when it is a postgres:// URL, else
    /// postgres://postgres@127.0.0.1:5432/test, inside a schema of its own that is
    /// dropped afterwards. Progress goes to stderr; stdout has one JSON line per backend.
    Import {
        #[command(flatten)]
        common: BenchArgs,
        /// Rows in the generated file.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// The generator's seed (the same seed gives the same file).
        #[arg(long, default_value_t = 2012)]
        seed: u64,
    },
    /// A personalized blast into the fake SES (mode email), and a run at a quota over
    /// two accounts with one taken down halfway (mode email-quota).
    ///
    /// The PostgreSQL runs use --database when it is a postgres:// URL, else
    /// postgres://postgres@127.0.0.1:5432/test, each inside a schema of its own that is
    /// dropped afterwards. Progress goes to stderr; stdout has one JSON line per mode
    /// and backend.
    Email(crate::bench_email::EmailBenchArgs),
    /// Donations end to end over HTTP (request, durable commit, processor call, final
    /// state) against two fake Stripe accounts answering in 100 ms, with the primary
    /// down for the middle third of the run. Lost donations and double charges are
    /// checked against the fakes' own ledgers. One JSON line per backend.
    Donations(crate::bench_donations::DonationsBenchArgs),
    /// Election day: watcher clients posting batches of 100 over HTTP, each retried
    /// once, against a real server on loopback (mode turnout: reports/s, p99 from
    /// accepted to visible, lost and duplicates from the database), and 10,000 watcher
    /// clients holding a keep-alive connection and a live stream (mode
    /// turnout-connections: peak RSS, errors). One JSON line per mode and backend.
    Turnout(crate::bench_turnout::TurnoutBenchArgs),
    /// The watcher clients of `bench turnout --mode turnout-connections`, started by
    /// that bench in a process of their own (not for direct use).
    #[command(hide = true)]
    TurnoutWatchers(crate::bench_turnout_conns::WatchersArgs),
}

/// The PostgreSQL server benches use unless the global `--database` names one.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The backends `--backend` names.
pub(crate) fn backends(arg: &str) -> anyhow::Result<Vec<Backend>> {
    Ok(match arg {
        "sqlite" => vec![Backend::Sqlite],
        "postgres" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        other => anyhow::bail!("--backend: expected sqlite, postgres or both, got {other:?}"),
    })
}

pub async fn run(settings: &crate::config::Settings, cmd: BenchCommand) -> anyhow::Result<()> {
    // `--database URL` (global) picks the PostgreSQL server; a schema of its own is created and dropped.
    let pg_url = match &settings.database {
        DatabaseTarget::Postgres(u) => u.clone(),
        DatabaseTarget::SqliteDir(_) => DEFAULT_PG_URL.to_string(),
    };
    let (common, rows, seed) = match cmd {
        BenchCommand::Import { common, rows, seed } => (common, rows, seed),
        BenchCommand::Turnout(args) => return crate::bench_turnout::run(&pg_url, args).await,
        BenchCommand::TurnoutWatchers(args) => {
            return crate::bench_turnout_conns::run_watchers(args).await
        }
        BenchCommand::Email(args) => return crate::bench_email::run(&pg_url, args).await,
        BenchCommand::Donations(args) => return crate::bench_donations::run(&pg_url, args).await,
    };
    let backends = backends(&common.backend)?;
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("voter-file.csv");
    eprintln!("generating {rows} rows x 70 columns...");
    synth::write_csv(&file, seed, rows, &|_| {})?;
    let mapping = Mapping::parse(synth::MAPPING).map_err(|e| anyhow::anyhow!("{e}"))?;
    for b in backends {
        let schema = format!("bench_{}", std::process::id());
        let dir = tmp.path().join(format!("db-{}", b.as_str()));
        let store = match b {
            Backend::Sqlite => Store::open(&DatabaseTarget::SqliteDir(dir.clone())).await?,
            Backend::Postgres => Store::open_postgres_schema(&pg_url, &schema)
                .await
                .context("opening PostgreSQL for the bench")?,
        };
        store.migrate().await?;
        // As `narwhal import` and a node's import worker do (see `Store::for_bulk`).
        let out = run_import(&store.for_bulk(4), b, &file, &mapping, rows, seed).await;
        store.close().await;
        let out = match out {
            Ok(mut v) => {
                let floor = engine_floor(b, &dir, &pg_url, &schema).await;
                floor.map(|secs| {
                    let done = v["rows"].as_f64().unwrap_or(0.0);
                    let floor = done / secs;
                    let rate = v["rows_per_s"].as_f64().unwrap_or(0.0);
                    v["engine_floor_rows_per_s"] = serde_json::json!(floor.round());
                    v["ratio_to_floor"] = serde_json::json!((rate / floor * 100.0).round() / 100.0);
                    v
                })
            }
            Err(e) => Err(e),
        };
        if b == Backend::Postgres {
            let _ = Store::drop_postgres_schema(&pg_url, &schema).await;
        }
        println!("{}", out?);
    }
    Ok(())
}

/// Seconds of [`Store::bench_engine_floor`]: the imported rows copied inside the
/// database into an empty hub of its own (a data directory beside the import's, or a
/// schema beside it, dropped afterwards).
async fn engine_floor(
    b: Backend,
    dir: &std::path::Path,
    pg_url: &str,
    schema: &str,
) -> anyhow::Result<f64> {
    eprintln!(
        "[{}] engine floor: the same rows copied inside the database...",
        b.as_str()
    );
    match b {
        Backend::Sqlite => {
            let floor =
                Store::open(&DatabaseTarget::SqliteDir(dir.with_extension("floor"))).await?;
            floor.migrate().await?;
            let secs = floor
                .bench_engine_floor(FloorSource::SqliteFile(&dir.join("narwhal.db")))
                .await;
            floor.close().await;
            Ok(secs?)
        }
        Backend::Postgres => {
            let own = format!("{schema}_floor");
            let floor = Store::open_postgres_schema(pg_url, &own).await?;
            let secs = match floor.migrate().await {
                Ok(_) => {
                    floor
                        .bench_engine_floor(FloorSource::PostgresSchema(schema))
                        .await
                }
                Err(e) => Err(e),
            };
            floor.close().await;
            let _ = Store::drop_postgres_schema(pg_url, &own).await;
            Ok(secs?)
        }
    }
}

async fn run_import(
    store: &Store,
    b: Backend,
    file: &std::path::Path,
    mapping: &Mapping,
    rows: u64,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    eprintln!("[{}] baseline: raw bulk insert...", b.as_str());
    // Seconds spent writing only: the rows are generated outside the timed part.
    let write_secs = store
        .bench_baseline_insert(rows, &|i| synth::baseline_row(seed, i))
        .await?;
    let baseline = rows as f64 / write_secs;

    eprintln!("[{}] import...", b.as_str());
    let hub = Hub::new(store.clone());
    let opts = ImportOptions::beside(file);
    let t = Instant::now();
    let c = import::run(&hub, file, mapping, &opts, "bench", &|_| {}).await?;
    let secs = t.elapsed().as_secs_f64();

    eprintln!("[{}] re-import of the same file...", b.as_str());
    let t = Instant::now();
    let c2 = import::run(&hub, file, mapping, &opts, "bench", &|_| {}).await?;
    let resecs = t.elapsed().as_secs_f64();

    let filter = SegmentFilter::parse(&serde_json::json!({"all":[{"county":"FRANKLIN"},{"consent":{"channel":"email","state":"subscribed"}},{"not":{"tag":"donor"}}]}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..3 {
        let t = Instant::now();
        count = store.count_matching(&filter).await?;
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    let everyone = SegmentFilter::parse(&serde_json::json!({"state":"OH"}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    let all = store.count_matching(&everyone).await?;
    let all_ms = t.elapsed().as_secs_f64() * 1000.0;
    // Name search: a common prefix (first page of many) and a rare one (few matches).
    let t = Instant::now();
    let common = store.search_people("smi", None, 50).await?.len();
    let search_common_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    store.search_people("zzq", None, 50).await?;
    let search_rare_ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok(serde_json::json!({
        "bench": "import",
        "backend": b.as_str(),
        "rows": c.rows_read,
        "rows_per_s": (c.rows_read as f64 / secs).round(),
        "baseline_rows_per_s": baseline.round(),
        "ratio_to_baseline": ((c.rows_read as f64 / secs) / baseline * 100.0).round() / 100.0,
        "reimport_rows_per_s": (c2.rows_read as f64 / resecs).round(),
        "reimport_changes": c2.inserted + c2.updated + c2.merged,
        "peak_rss_mb": peak_rss_mb(),
        "rejects": c.rejected,
        "inserted": c.inserted,
        "segment_count_ms": (best * 10.0).round() / 10.0,
        "segment_count": count,
        "count_all_ms": (all_ms * 10.0).round() / 10.0,
        "count_all": all,
        "search_ms": (search_common_ms * 10.0).round() / 10.0,
        "search_results": common,
        "search_rare_ms": (search_rare_ms * 10.0).round() / 10.0,
    }))
}

/// The process's peak resident memory (VmHWM), in MB.
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0).round())
        .unwrap_or(0.0)
}
