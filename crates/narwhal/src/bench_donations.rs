//! `narwhal bench donations`: donations end to end over HTTP for a fixed time, with the
//! primary processor down for the middle third, on SQLite and PostgreSQL.
//!
//! Each run starts two fake Stripe accounts (primary and backup, each a `narwhal fake
//! stripe` process answering in 100 ms with no rate limit), a real Narwhal HTTP server
//! on loopback with the donation service routed over both, and donors posting
//! `POST /api/v1/donations` with fresh idempotency keys. Every donation takes the full
//! path: HTTP request, durable commit, processor call, durable final state, answer.
//!
//! Load is offered on the clock (`--rate`, by default the issue's targets: 1,000/s on
//! SQLite, 2,000/s on PostgreSQL), so the figures say whether the system keeps up at
//! that rate and at what latency; `--rate 0 --clients N` runs N closed-loop donors
//! instead, which finds the most it takes (and then latency is mostly queueing).
//!
//! Figures, one JSON line per backend:
//! - `donations_per_s`: acknowledged donations (succeeded or pledged) per second;
//! - `p99_ms_by_phase`: the same p99 for requests that arrived before, during and
//!   after the primary's outage;
//! - `p99_ms_excl_processor`: the 99th percentile of server-side time per request, minus
//!   the time spent waiting for processors (measured around each processor call in the
//!   request's own task);
//! - `baseline_commits_per_s`: durable single-row commits per second on the same
//!   database in the same run;
//! - `lost`: acknowledged donations not durably in the state we answered, plus charges
//!   in a fake's ledger that no succeeded donation records;
//! - `double_charges`: extra charges for one donation across both fakes' own ledgers;
//! - `via_backup` and `pledges`: donations that took the backup processor or became
//!   pledges (from the database).

use crate::bench::{backends, peak_rss_mb};
use anyhow::Context;
use narwhal_fakes::stripe::{Fault, LedgerCharge, DEFAULT_KEY};
use narwhal_http::abuse::{AbuseConfig, Guard};
use narwhal_http::donations::DonationsEdge;
use narwhal_http::{AppState, HttpConfig};
use narwhal_mail::provider::BoxFuture;
use narwhal_mail::Secret;
use narwhal_pay::processor::{
    Cents, ChargeOutcome, ChargeRequest, LookupOutcome, ProcessorPayment, RefundOutcome,
};
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{Donations, PayConfig};
use narwhal_pay::stripe::{StripeConfig, StripeProcessor};
use narwhal_pay::Processor;
use narwhal_store::{Backend, DatabaseTarget, Store};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `narwhal bench donations` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DonationsBenchArgs {
    #[command(flatten)]
    pub common: crate::bench::BenchArgs,
    /// How long donations run, in seconds (the primary is down for the middle third).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Donations offered per second (an open model: arrivals on the clock whatever
    /// the answers do). Default: the issue's targets, 1,000/s on SQLite and 2,000/s on
    /// PostgreSQL. 0 switches to `--clients` closed-loop donors.
    #[arg(long)]
    pub rate: Option<f64>,
    /// With `--rate 0`: concurrent donors, each sending its next gift when the last
    /// was answered (the most the system takes, at whatever latency).
    #[arg(long, default_value_t = 400)]
    pub clients: usize,
    /// The fake processors' answer time, in ms.
    #[arg(long, default_value_t = 100)]
    pub processor_ms: u64,
    /// Also print, to stderr, the requests, p50, p99 and maximum of each half second
    /// (by arrival), to tell a steady tail from a few stalls.
    #[arg(long)]
    pub timeline: bool,
}

/// Requests the open model keeps outstanding at most; arrivals beyond are counted as
/// not sent (the generator's limit shows instead of hiding).
const MAX_IN_FLIGHT: usize = 20_000;

impl DonationsBenchArgs {
    /// Offered donations per second on `backend` (0: closed loop).
    fn rate_for(&self, backend: Backend) -> f64 {
        self.rate.unwrap_or(match backend {
            Backend::Sqlite => 1_000.0,
            Backend::Postgres => 2_000.0,
        })
    }
}

/// What one donor request needs, shared by every request.
#[derive(Clone)]
struct Shot {
    client: reqwest::Client,
    url: String,
    token: String,
    tag: &'static str,
    acked: Arc<Mutex<HashMap<String, String>>>,
    errors: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl Shot {
    /// Gift number `n` of donor `c`: posted with a fresh idempotency key; the
    /// acknowledgement (id and outcome) is recorded for the verification.
    async fn donate(&self, c: u64, n: u64) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let key = format!("bench-{}-{c}-{n}", self.tag);
        // The body is written out rather than built as a JSON tree: the load shares
        // the machine with the server it measures, so it spends as little as it can.
        let body = format!(
            concat!(
                r#"{{"amount_cents":5500,"donor":{{"first_name":"Bench","last_name":"Donor{c}","#,
                r#""email":"d{c}x{n}@bench.example.org","address1":"1 Main St","city":"Columbus","#,
                r#""state":"OH","zip":"43215","employer":"Acme","occupation":"Engineer"}},"#,
                r#""attestations":{{"own_funds":true,"citizen_or_resident":true,"not_contractor":true}},"#,
                r#""payment_method":"pm_card_visa","refcode":"bench-{r}"}}"#
            ),
            c = c,
            n = n,
            r = c % 7
        );
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("idempotency-key", &key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let ok = match resp {
            Ok(r) if !r.status().is_success() => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                if self.errors.load(Ordering::Relaxed) < 5 {
                    eprintln!(
                        "  error {status}: {}",
                        text.chars().take(300).collect::<String>()
                    );
                }
                false
            }
            Err(e) => {
                if self.errors.load(Ordering::Relaxed) < 5 {
                    eprintln!("  request failed: {e}");
                }
                false
            }
            Ok(r) => match r.bytes().await.map(|b| serde_json::from_slice::<Ack>(&b)) {
                Ok(Ok(a)) => {
                    if let Ok(mut acked) = self.acked.lock() {
                        acked.insert(a.id.unwrap_or_default(), a.outcome.unwrap_or_default());
                    }
                    true
                }
                _ => false,
            },
        };
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the bench reads of an acknowledgement (the rest of the body is skipped).
#[derive(serde::Deserialize)]
struct Ack {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
}

tokio::task_local! {
    /// Microseconds this request spent waiting for processors.
    static PROCESSOR_US: Arc<AtomicU64>;
}

/// A fake Stripe account in a process of its own (`narwhal fake stripe`), driven over
/// its HTTP control endpoints, as a vendor across the network would be.
///
/// Not in the bench's process: a fake keeps every charge, idempotent answer and event
/// it made (about 10 KB a gift), so it grows by megabytes a second. Inside the server's
/// process that growth (page faults, the allocator returning memory) takes the
/// process's memory-map lock and stalled the server's threads too, which counted as
/// server time; and the fake's memory counted in the server's peak RSS.
struct FakeVendor {
    child: std::process::Child,
    /// Kept open: the fake may still write to it.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    url: String,
    http: reqwest::Client,
}

impl FakeVendor {
    async fn spawn(latency: Duration) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the narwhal binary")?;
        let ms = latency.as_millis().to_string();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Self> {
            use std::io::BufRead;
            let mut child = std::process::Command::new(exe)
                .args([
                    "fake",
                    "stripe",
                    "--listen",
                    "127.0.0.1:0",
                    "--latency-ms",
                    &ms,
                ])
                // One worker thread, as a vendor's share of this machine.
                .env("TOKIO_WORKER_THREADS", "1")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("cannot start `narwhal fake stripe`")?;
            let mut out = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
            // "fake Stripe on http://ADDR (secret key ...)"
            let mut line = String::new();
            out.read_line(&mut line)?;
            let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("`narwhal fake stripe` did not say where it listens: {line:?}");
            };
            Ok(Self {
                url: url.to_string(),
                child,
                _stdout: out,
                http: reqwest::Client::new(),
            })
        })
        .await?
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn set_fault(&self, fault: Fault) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_fake/faults", self.url))
            .json(&fault)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The fake's own books: every charge it made.
    async fn ledger(&self) -> anyhow::Result<Vec<LedgerCharge>> {
        Ok(self
            .http
            .get(format!("{}/_fake/ledger", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A processor that adds the time of each call to the request's [`PROCESSOR_US`].
struct Timed(Arc<dyn Processor>);

impl Timed {
    async fn time<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = PROCESSOR_US.try_with(|c| c.fetch_add(us, Ordering::Relaxed));
        out
    }
}

impl Processor for Timed {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> BoxFuture<'a, ChargeOutcome> {
        Box::pin(self.time(self.0.charge(request)))
    }
    fn lookup<'a>(&'a self, key: &'a str) -> BoxFuture<'a, LookupOutcome> {
        Box::pin(self.time(self.0.lookup(key)))
    }
    fn refund<'a>(
        &'a self,
        processor_ref: &'a str,
        amount: Cents,
        key: &'a str,
    ) -> BoxFuture<'a, RefundOutcome> {
        Box::pin(self.time(self.0.refund(processor_ref, amount, key)))
    }
    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        self.0.health()
    }
    fn list_payments(&self, since: i64) -> BoxFuture<'_, Result<Vec<ProcessorPayment>, String>> {
        self.0.list_payments(since)
    }
}

/// Server-side time minus processor time, per request, in microseconds.
/// Per request: when it arrived and its server time excluding processors, in us.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

async fn timing(
    axum::extract::State(samples): axum::extract::State<Samples>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = Instant::now();
    let proc_us = Arc::new(AtomicU64::new(0));
    let resp = PROCESSOR_US.scope(proc_us.clone(), next.run(req)).await;
    let total = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let own = total.saturating_sub(proc_us.load(Ordering::Relaxed));
    if let Ok(mut s) = samples.lock() {
        s.push((start, own));
    }
    resp
}

pub async fn run(pg_url: &str, args: DonationsBenchArgs) -> anyhow::Result<()> {
    for backend in backends(&args.common.backend)? {
        let line = run_one(backend, pg_url, &args)
            .await
            .with_context(|| format!("donations bench on {}", backend.as_str()))?;
        println!("{line}");
    }
    Ok(())
}

fn stripe(name: &str, url: String) -> anyhow::Result<Arc<dyn Processor>> {
    let mut cfg = StripeConfig::new(name, Secret::new(DEFAULT_KEY.to_string())).base_url(url);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.max_requests_per_second = 100_000;
    cfg.burst = 10_000;
    Ok(Arc::new(Timed(Arc::new(StripeProcessor::new(cfg)?))))
}

async fn run_one(
    backend: Backend,
    pg_url: &str,
    args: &DonationsBenchArgs,
) -> anyhow::Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let schema = format!("bench_don_{}", std::process::id());
    let store = match backend {
        Backend::Sqlite => Store::open(&DatabaseTarget::SqliteDir(tmp.path().join("db"))).await?,
        Backend::Postgres => Store::open_postgres_schema(pg_url, &schema).await?,
    };
    store.migrate().await?;
    let result = measure(&store, backend, args).await;
    store.close().await;
    if backend == Backend::Postgres {
        Store::drop_postgres_schema(pg_url, &schema).await?;
    }
    result
}

async fn measure(
    store: &Store,
    backend: Backend,
    args: &DonationsBenchArgs,
) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "[{}] baseline: durable single-row commits for 3 s...",
        backend.as_str()
    );
    let baseline = store.bench_durable_commits(3.0).await?;

    let latency = Duration::from_millis(args.processor_ms);
    // The fakes stand for a vendor across the network: processes of their own (see
    // `FakeVendor`), with no rate limit.
    let primary = Arc::new(FakeVendor::spawn(latency).await?);
    let backup = FakeVendor::spawn(latency).await?;
    let router = Arc::new(Router::new(
        vec![
            stripe("stripe-primary", primary.url())?,
            stripe("stripe-backup", backup.url())?,
        ],
        BreakerConfig {
            open_after: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        },
    ));
    // Requests' own reads (the token) wait at most `SHED_AFTER` for a connection, so an
    // overloaded node answers 503 promptly instead of queueing. The group-commit
    // workers keep the patient pool: their callers' waits are bounded at admission
    // (`admit_wait`), and a worker turned away by a busy pool would fail a whole batch
    // (a 60 s PostgreSQL run with the shedding pool there collapsed to 10/s).
    let serving = store.shedding(crate::serve::SHED_AFTER);
    // Connected before the load, as `narwhal serve` does: the group-commit workers'
    // pool and the requests' own.
    for s in [store, &serving] {
        s.open_connections(crate::serve::WARM_CONNECTIONS).await?;
    }
    let service = Donations::new(store.clone(), router.clone(), PayConfig::default());
    let mut edge = DonationsEdge::new(service.clone());
    // One loopback address sends everything: the card-testing limits would (rightly)
    // stop the bench, so they are set out of reach here.
    edge.guard = Arc::new(Guard::new(AbuseConfig {
        per_ip: u32::MAX,
        per_email: u32::MAX,
        per_card: u32::MAX,
        ..AbuseConfig::default()
    }));
    let state = AppState::new(serving.clone(), HttpConfig::default()).with_donations(edge);
    let (token, hash) = narwhal_http::auth::new_token();
    store
        .create_token(
            "bench",
            &hash,
            &[narwhal_domain::Scope::DonationsWrite],
            "bench",
        )
        .await?;
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let app = narwhal_http::router(state).layer(axum::middleware::from_fn_with_state(
        samples.clone(),
        timing,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.changed().await;
        })
        .await
    });
    // As a node does (`narwhal serve`): the tables fill from empty during the run.
    let upkeep = store.spawn_statistics_keeper(narwhal_store::upkeep::EVERY, stop_tx.subscribe());
    let health = {
        let router = router.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                router.check_health().await;
            }
        })
    };

    let seconds = args.seconds.max(3);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let url = format!("http://{addr}/api/v1/donations");
    // Keep every connection the load has opened, as a load balancer in front of the
    // servers would: with the pool capped below the requests in flight, each request
    // over the cap opened a connection and closed it after one answer, and that churn
    // (connect, accept, close, TIME_WAIT on both ends) took CPU from the server just
    // when it was busiest.
    let pooled = if args.rate_for(backend) > 0.0 {
        MAX_IN_FLIGHT
    } else {
        args.clients
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pooled)
        .timeout(Duration::from_secs(30))
        .build()?;
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let load = match args.rate_for(backend) {
        r if r > 0.0 => format!("{r} donations/s offered"),
        _ => format!("{} clients", args.clients),
    };
    eprintln!(
        "[{}] {load} for {seconds} s; the primary processor is down from {} s to {} s...",
        backend.as_str(),
        seconds / 3,
        2 * seconds / 3
    );
    let faults = {
        let primary_fault = primary.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
            if let Err(e) = primary_fault.set_fault(Fault::Down).await {
                eprintln!("could not take the primary processor down: {e:#}");
            }
            tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
            if let Err(e) = primary_fault.set_fault(Fault::None).await {
                eprintln!("could not bring the primary processor back: {e:#}");
            }
        })
    };
    let started = Instant::now();
    let shot = Shot {
        client,
        url,
        token,
        tag: backend.as_str(),
        acked: acked.clone(),
        errors: errors.clone(),
        sent: sent.clone(),
    };
    // Progress every 5 s while the load runs (acknowledged and refused so far).
    let progress = {
        let acked = acked.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = acked.lock().map(|a| a.len()).unwrap_or(0);
                eprintln!(
                    "  {:>4.0} s: {n} acknowledged, {} refused",
                    started.elapsed().as_secs_f64(),
                    errors.load(Ordering::Relaxed)
                );
            }
        })
    };
    // Finished donors are reaped as the run goes: a task's memory (the whole request
    // future) stays allocated until its handle is joined, so keeping every handle to
    // the end grew the process by about 15 MB a second at 1,000 gifts/s, and the
    // page faults of that growth showed up as stalls in the server's latencies.
    let mut tasks = tokio::task::JoinSet::new();
    let mut not_sent = 0u64;
    let rate = args.rate_for(backend);
    if rate > 0.0 {
        // Open model: arrivals on the clock at `rate` per second, whatever the answers
        // do, so a stall shows as latency instead of as fewer requests.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut n = 0u64;
        let mut next = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / rate);
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            next += gap;
            n += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                not_sent += 1;
                continue;
            };
            let shot = shot.clone();
            tasks.spawn(async move {
                shot.donate(n % 10_000, n).await;
                drop(permit);
            });
            while let Some(done) = tasks.try_join_next() {
                done?;
            }
        }
    } else {
        // Closed model: `--clients` donors, each sending its next gift when the last
        // was answered (the most the system can take, at whatever latency).
        for c in 0..args.clients {
            let shot = shot.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    shot.donate(c as u64, n).await;
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    faults.abort();
    primary.set_fault(Fault::None).await?;
    health.abort();
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = upkeep.await;
    // A request its client gave up on may have been cut off after the charge and before
    // the final commit: in production the settler asks the processor and records it.
    // Do the same here before verifying, as a node would.
    let settler = Donations::new(
        store.clone(),
        router.clone(),
        PayConfig {
            abandoned_after: Duration::ZERO,
            lookup_grace: Duration::ZERO,
            ..PayConfig::default()
        },
    );
    let settle_until = Instant::now() + Duration::from_secs(30);
    let mut settled = 0usize;
    while Instant::now() < settle_until {
        match settler.settle_unsettled().await {
            Ok(0) => break,
            Ok(n) => settled += n,
            Err(e) => {
                eprintln!("  settling after the run failed: {e}");
                break;
            }
        }
    }

    // Verification from the database and the fakes' own ledgers.
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let rows = store.donations_since(0, i64::MAX).await?;
    let by_id: HashMap<&str, &narwhal_store::donations::DonationRow> =
        rows.iter().map(|r| (r.public_id.as_str(), r)).collect();
    let mut lost = 0u64;
    let mut acked_ok = 0u64;
    for (id, outcome) in &acked {
        let stored = by_id.get(id.as_str()).map(|r| r.state.as_str());
        let good = match outcome.as_str() {
            "succeeded" => stored == Some("succeeded"),
            "pledged" => stored == Some("pledged"),
            _ => true,
        };
        if outcome == "succeeded" || outcome == "pledged" {
            acked_ok += 1;
        }
        if !good {
            lost += 1;
        }
    }
    let acked_mismatch = lost;
    let mut charges: HashMap<String, u64> = HashMap::new();
    let mut charged_refs: HashSet<String> = HashSet::new();
    for fake in [primary.as_ref(), &backup] {
        for c in fake.ledger().await? {
            let donation = c
                .metadata
                .get("narwhal_donation")
                .cloned()
                .unwrap_or_else(|| c.payment_intent.clone());
            *charges.entry(donation).or_default() += 1;
            charged_refs.insert(c.payment_intent.clone());
        }
    }
    let double_charges: u64 = charges.values().map(|n| n.saturating_sub(1)).sum();
    let succeeded: Vec<_> = rows.iter().filter(|r| r.state == "succeeded").collect();
    // Money taken that no succeeded donation records, or a success with no charge.
    let recorded: HashSet<&str> = succeeded
        .iter()
        .filter_map(|r| r.processor_ref.as_deref())
        .collect();
    lost += charged_refs
        .iter()
        .filter(|r| !recorded.contains(r.as_str()))
        .count() as u64;
    lost += recorded
        .iter()
        .filter(|r| !charged_refs.contains(**r))
        .count() as u64;
    if lost > 0 {
        let states: HashMap<&str, usize> = rows.iter().fold(HashMap::new(), |mut m, r| {
            *m.entry(r.state.as_str()).or_default() += 1;
            m
        });
        eprintln!(
            "  LOST: {acked_mismatch} acknowledged but not so stored, {} charged but not recorded, {} recorded without a charge; states {states:?}",
            charged_refs.iter().filter(|r| !recorded.contains(r.as_str())).count(),
            recorded.iter().filter(|r| !charged_refs.contains(**r)).count(),
        );
    }
    let via_backup = succeeded
        .iter()
        .filter(|r| r.processor.as_deref() == Some("stripe-backup"))
        .count();
    let pledges = rows.iter().filter(|r| r.state == "pledged").count();
    let taken: Vec<(Instant, u64)> = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let pct_of = |mut v: Vec<u64>, p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i] as f64 / 100.0).round() / 10.0
    };
    let own: Vec<u64> = taken.iter().map(|(_, us)| *us).collect();
    let pct = |p: f64| pct_of(own.clone(), p);
    // The same p99 for requests that arrived before, during and after the primary's
    // outage, so a tail can be told from the failover.
    let (down_from, down_to) = (
        started + Duration::from_secs(seconds / 3),
        started + Duration::from_secs(2 * seconds / 3),
    );
    // The server times of the requests that arrived when `keep` says.
    let arrived = |keep: &dyn Fn(Instant) -> bool| -> Vec<u64> {
        taken
            .iter()
            .filter(|(t, _)| keep(*t))
            .map(|(_, us)| *us)
            .collect()
    };
    let phase = |keep: &dyn Fn(Instant) -> bool| -> f64 { pct_of(arrived(keep), 0.99) };
    if args.timeline {
        let mut from = started;
        while from < started + Duration::from_secs_f64(elapsed) {
            let to = from + Duration::from_millis(500);
            let window = arrived(&|t| t >= from && t < to);
            eprintln!(
                "  {:5.1} s: {:4} requests, p50 {:6.1} ms, p99 {:6.1} ms, max {:6.1} ms",
                (from - started).as_secs_f64(),
                window.len(),
                pct_of(window.clone(), 0.5),
                pct_of(window.clone(), 0.99),
                pct_of(window, 1.0),
            );
            from = to;
        }
    }
    let by_phase = serde_json::json!({
        "before_outage": phase(&|t| t < down_from),
        "outage": phase(&|t| t >= down_from && t < down_to),
        "after_outage": phase(&|t| t >= down_to),
    });
    Ok(serde_json::json!({
        "bench": "donations",
        "backend": backend.as_str(),
        "seconds": (elapsed * 10.0).round() / 10.0,
        "clients": if rate > 0.0 { serde_json::Value::Null } else { args.clients.into() },
        "offered_per_s": if rate > 0.0 { rate.into() } else { serde_json::Value::Null },
        "not_sent": not_sent,
        "donations_per_s": (acked_ok as f64 / elapsed).round(),
        "p50_ms_excl_processor": pct(0.50),
        "p99_ms_excl_processor": pct(0.99),
        "p99_ms_by_phase": by_phase,
        "baseline_commits_per_s": baseline.round(),
        "acknowledged": acked_ok,
        "errors": errors.load(Ordering::Relaxed),
        "lost": lost,
        "double_charges": double_charges,
        "via_backup": via_backup,
        "pledges": pledges,
        "settled_after_run": settled,
        "peak_rss_mb": peak_rss_mb(),
    }))
}
