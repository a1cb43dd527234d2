//! `narwhal bench turnout`: election day measured end to end, on a real server on
//! loopback, never timed inside a test.
//!
//! - `turnout`: many watcher clients (one polling place each, logged in with a login
//!   link) post their reports in batches of 100 over HTTP, every batch sent twice (the
//!   retry a phone makes when it misses the answer). A staff client follows the live
//!   stream (`/api/v1/turnout/live`). Printed per backend:
//!   `reports_per_s` (reports accepted / wall time, retries included), `p99_visible_ms`
//!   (from a batch's acceptance to the first live event whose voted count covers
//!   everything accepted by then; the lists are read in the same transaction, so a
//!   report is off them when accepted), `lost` / `duplicates` counted from the
//!   database afterwards, and `baseline_commits_per_s`: durable single-row commits per
//!   second on the same database in the same run, measured before the load, so runs on
//!   a noisy machine can be compared by their ratio.
//! - `turnout-connections`: `--clients` watcher clients (default 10,000), each on one
//!   keep-alive connection that first reads its readiness and then holds its place's
//!   live stream; then one report, which every client of that place must see. The
//!   clients run in a child process (see `bench_turnout_conns`). Printed: clients
//!   connected, the server process's peak RSS, the clients' process's, errors.

use anyhow::{bail, Context};
use narwhal_http::{AppState, HttpConfig};
use narwhal_store::{Backend, DatabaseTarget, Store};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct TurnoutBenchArgs {
    /// sqlite, postgres or both.
    #[arg(long, default_value = "both")]
    pub backend: String,
    /// turnout, turnout-connections, or both.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Concurrent watcher clients (default: 64 for turnout, 10000 for turnout-connections).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Reports in the turnout mode (each voter reported once, each batch sent twice).
    #[arg(long, default_value_t = 200_000)]
    pub reports: u64,
}

const BATCH: usize = 100;

pub(crate) struct Bench {
    pub(crate) store: Store,
    pub(crate) backend: Backend,
    _dir: tempfile::TempDir,
    schema: Option<(String, String)>,
}

impl Bench {
    async fn open(backend: Backend, pg_url: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (store, schema) = match backend {
            Backend::Sqlite => (
                Store::open(&DatabaseTarget::SqliteDir(dir.path().join("db"))).await?,
                None,
            ),
            Backend::Postgres => {
                let schema = format!("bench_turnout_{}", std::process::id());
                let s = Store::open_postgres_schema(pg_url, &schema)
                    .await
                    .context("opening PostgreSQL for the bench")?;
                (s, Some((pg_url.to_string(), schema)))
            }
        };
        store.migrate().await?;
        Ok(Self {
            store,
            backend,
            _dir: dir,
            schema,
        })
    }

    async fn close(self) {
        self.store.close().await;
        if let Some((url, schema)) = &self.schema {
            let _ = Store::drop_postgres_schema(url, schema).await;
        }
    }
}

/// A server on loopback over `store`; stops when the sender is dropped or sent.
pub(crate) async fn server(
    store: &Store,
    upload: &std::path::Path,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let state = AppState::new(
        store.clone(),
        HttpConfig {
            upload_dir: upload.to_path_buf(),
            request_timeout: Duration::from_secs(120),
            ..HttpConfig::default()
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // As a node does (`narwhal serve`): the tables fill from empty during the run.
    let (upkeep_tx, upkeep_rx) = tokio::sync::watch::channel(false);
    let _upkeep = store.spawn_statistics_keeper(narwhal_store::upkeep::EVERY, upkeep_rx);
    tokio::spawn(narwhal_http::serve(listener, state, async move {
        let _ = rx.await;
        let _ = upkeep_tx.send(true);
    }));
    Ok((addr, tx))
}

/// One watcher per place: login-link tokens.
pub(crate) async fn watchers(store: &Store, places: &[String]) -> anyhow::Result<Vec<String>> {
    let t = narwhal_turnout::Turnout::new(store.clone());
    let mut tokens = Vec::new();
    for p in places {
        let w = t
            .issue_watcher(
                &format!("bench-{p}"),
                p,
                narwhal_turnout::LoginKind::Link,
                None,
            )
            .await?;
        tokens.push(w.secret.expose().to_string());
    }
    Ok(tokens)
}

pub(crate) async fn login(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let r = client
        .post(format!("{base}/api/v1/turnout/sessions"))
        .json(&json!({ "token": token }))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("watcher login: {}", r.status());
    }
    let c = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?;
    Ok(c.to_string())
}

/// The printable codes of a place's voters.
pub(crate) async fn codes(store: &Store, place: &str) -> anyhow::Result<Vec<String>> {
    let t = narwhal_turnout::Turnout::new(store.clone());
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = t.remaining(place, after, 10_000).await?;
        let full = page.len() == 10_000;
        after = page.last().map(|v| v.person_id);
        out.extend(page.into_iter().map(|v| v.voter_code));
        if !full {
            return Ok(out);
        }
    }
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64) * 0.99).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

pub async fn run(pg_url: &str, args: TurnoutBenchArgs) -> anyhow::Result<()> {
    let backends: Vec<Backend> = match args.backend.as_str() {
        "sqlite" => vec![Backend::Sqlite],
        "postgres" => vec![Backend::Postgres],
        "both" => vec![Backend::Sqlite, Backend::Postgres],
        other => bail!("--backend: expected sqlite, postgres or both, got {other:?}"),
    };
    let (flow, conns) = match args.mode.as_str() {
        "turnout" => (true, false),
        "turnout-connections" => (false, true),
        "both" => (true, true),
        other => bail!("--mode: expected turnout, turnout-connections or both, got {other:?}"),
    };
    if flow {
        for b in &backends {
            let bench = Bench::open(*b, pg_url).await?;
            let out = run_flow(&bench, args.clients.unwrap_or(64), args.reports).await;
            bench.close().await;
            println!("{}", out?);
        }
    }
    if conns {
        for b in &backends {
            let bench = Bench::open(*b, pg_url).await?;
            let out =
                crate::bench_turnout_conns::run_connections(&bench, args.clients.unwrap_or(10_000))
                    .await;
            bench.close().await;
            println!("{}", out?);
        }
    }
    Ok(())
}

/// Reads server-sent events' `data:` lines, calling `on` with each event's JSON.
async fn follow(
    mut r: reqwest::Response,
    mut on: impl FnMut(serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let mut buf = String::new();
    while let Some(chunk) = r.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str(d.trim_start()) {
                        if !on(v) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The body of one batch: `{"reports":[{"report_id":"b{c}-{k}-{i}","voter_code":...}, ...]}`.
fn report_batch(c: usize, k: usize, codes: &[String]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| json!({"report_id": format!("b{c}-{k}-{i}"), "voter_code": code}))
        .collect();
    serde_json::to_vec(&json!({ "reports": items })).unwrap_or_default()
}

/// What the load generator reads of an answer to a batch (the per-item results are
/// skipped unparsed).
#[derive(serde::Deserialize)]
struct Answer {
    accepted: u64,
}

async fn run_flow(b: &Bench, clients: usize, reports: u64) -> anyhow::Result<serde_json::Value> {
    let clients = clients.max(1);
    let name = b.backend.as_str();
    eprintln!("[{name}] baseline: durable single-row commits for 3 s...");
    let baseline = b.store.bench_durable_commits(3.0).await?;
    eprintln!("[{name}] turnout: seeding {reports} supporters over {clients} polling places...");
    let places = b
        .store
        .bench_seed_universe(reports as i64, clients as i64)
        .await?;
    let tokens = watchers(&b.store, &places).await?;
    let upload = tempfile::tempdir()?;
    let (addr, stop) = server(&b.store, upload.path()).await?;
    let base = format!("http://{addr}");
    let (staff, hash) = narwhal_http::new_token();
    b.store
        .create_token("bench", &hash, &narwhal_domain::Scope::ALL, "bench")
        .await?;
    // Every place's codes, read before the clock starts.
    let mut work = Vec::new();
    for (p, t) in places.iter().zip(&tokens) {
        work.push((codes(&b.store, p).await?, t.clone()));
    }
    // The live stream, as a dashboard sees it: (arrival, voted).
    let seen: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let live = reqwest::Client::new()
        .get(format!("{base}/api/v1/turnout/live"))
        .bearer_auth(&staff)
        .send()
        .await?;
    let total = reports as i64;
    let seen_w = seen.clone();
    let follower = tokio::spawn(follow(live, move |v| {
        let voted = v["state"]["voted"].as_i64().unwrap_or(0);
        seen_w
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), voted));
        voted < total
    }));
    eprintln!("[{name}] turnout: {clients} clients posting batches of {BATCH}, each sent twice...");
    let accepted_total = Arc::new(AtomicU64::new(0));
    let retry_accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let accepts: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (codes, token)) in work.into_iter().enumerate() {
        let base = base.clone();
        let (accepted_total, retry_accepted, errors, accepts) = (
            accepted_total.clone(),
            retry_accepted.clone(),
            errors.clone(),
            accepts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let cookie = login(&client, &base, &token).await?;
            let url = format!("{base}/api/v1/turnout/reports");
            for (k, chunk) in codes.chunks(BATCH).enumerate() {
                // The body is made once and sent as bytes by both attempts, and only the
                // count is read from the answer: the load generator shares the cores
                // with the server, so it does no work the measurement does not need.
                let body = report_batch(c, k, chunk);
                for attempt in 0..2 {
                    // A failed request is retried, as the app does: nothing is lost.
                    let res = loop {
                        let r = client
                            .post(&url)
                            .header("cookie", &cookie)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => {
                                break serde_json::from_slice::<Answer>(&r.bytes().await?)?;
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    };
                    let n = res.accepted;
                    if attempt == 0 {
                        let a = accepted_total.fetch_add(n, Ordering::SeqCst) + n;
                        accepts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((Instant::now(), a));
                    } else {
                        retry_accepted.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the stream catch up with the last batch (or give up after 10 s).
    let _ = tokio::time::timeout(Duration::from_secs(10), follower).await;
    let _ = stop.send(());
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let accepts = accepts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lat = Vec::with_capacity(accepts.len());
    let mut never = 0u64;
    for (t, a) in &accepts {
        match seen
            .iter()
            .find(|(at, voted)| at >= t && *voted >= *a as i64)
        {
            Some((at, _)) => lat.push(at.duration_since(*t).as_secs_f64() * 1000.0),
            None => never += 1,
        }
    }
    let accepted = accepted_total.load(Ordering::SeqCst);
    let voted = b.store.voted_count().await?;
    let rows = b.store.report_rows().await?;
    let remaining: i64 = narwhal_turnout::Turnout::new(b.store.clone())
        .places()
        .await?
        .iter()
        .map(|p| p.remaining)
        .sum();
    let lost = (total - voted).max(0);
    let duplicates = (rows - voted).max(0) as u64
        + accepted.saturating_sub(reports)
        + retry_accepted.load(Ordering::Relaxed);
    Ok(json!({
        "bench": "turnout",
        "backend": name,
        "reports_per_s": (accepted as f64 / secs).round(),
        "p99_visible_ms": (p99(lat) * 10.0).round() / 10.0,
        "lost": lost,
        "duplicates": duplicates,
        "clients": clients,
        "baseline_commits_per_s": baseline.round(),
        "reports": reports,
        "batches": accepts.len(),
        "never_visible": never,
        "remaining_on_lists": remaining,
        "http_errors_retried": errors.load(Ordering::Relaxed),
        "seconds": (secs * 100.0).round() / 100.0,
        "peak_rss_mb": crate::bench::peak_rss_mb(),
    }))
}
