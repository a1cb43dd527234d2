//! `narwhal bench email`: a personalized blast into the fake SES, measured end to end
//! (materialize, claim, render, send, record) on each backend, and a quota run with two
//! rate-limited accounts, one of which goes down halfway.
//!
//! Everything runs in this process: the store, the blast worker (the same code
//! `narwhal serve` runs) and the fake SES, whose own ledger is the judge of what was lost
//! or sent twice. Setup (inserting the people) is not timed. Progress goes to stderr;
//! stdout has one JSON line per mode and backend.

use crate::bench::{peak_rss_mb, BenchArgs};
use anyhow::Context;
use narwhal_domain::{Email, PersonId, SegmentFilter};
use narwhal_fakes::{FakeAccount, FakeSes, Fault};
use narwhal_mail::blast::{self, Account, BlastSender, Compose, SendConfig, Templates};
use narwhal_mail::ses::{SesClient, SesConfig};
use narwhal_mail::ThrottleSpec;
use narwhal_store::blasts::{
    synthetic_address, BlastContent, BlastId, BlastState, BlastTarget, NewBlast,
};
use narwhal_store::{now_ms, Backend, DatabaseTarget, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REGION: &str = "us-east-1";

#[derive(clap::Args, Debug, Clone)]
pub struct EmailBenchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Recipients of the personalized blast (mode email).
    #[arg(long, default_value_t = 1_000_000)]
    pub recipients: u64,
    /// email, email-quota or both.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Messages per second allowed on each of the two accounts (mode email-quota).
    #[arg(long, default_value_t = 500)]
    pub quota_rate: u32,
    /// About how long the quota run lasts: it sends 1.5 x quota-rate x seconds
    /// recipients (both accounts for the first half, one for the second).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

pub async fn run(pg_url: &str, args: EmailBenchArgs) -> anyhow::Result<()> {
    let backends = crate::bench::backends(&args.common.backend)?;
    let (email, quota) = match args.mode.as_str() {
        "email" => (true, false),
        "email-quota" => (false, true),
        "both" => (true, true),
        other => anyhow::bail!("--mode: expected email, email-quota or both, got {other:?}"),
    };
    let tmp = tempfile::tempdir()?;
    for b in backends {
        if email {
            let line = with_store(b, pg_url, tmp.path(), "email", |s| {
                email_mode(s, b, args.recipients)
            })
            .await?;
            println!("{line}");
        }
        if quota {
            let line = with_store(b, pg_url, tmp.path(), "quota", |s| {
                quota_mode(s, b, args.quota_rate, args.seconds)
            })
            .await?;
            println!("{line}");
        }
    }
    Ok(())
}

/// Runs `f` on a fresh database of backend `b` (an SQLite directory, or a PostgreSQL
/// schema of its own, dropped afterwards).
async fn with_store<F, Fut>(
    b: Backend,
    pg_url: &str,
    tmp: &std::path::Path,
    tag: &str,
    f: F,
) -> anyhow::Result<serde_json::Value>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let schema = format!("bench_{tag}_{}", std::process::id());
    let store = match b {
        Backend::Sqlite => {
            Store::open(&DatabaseTarget::SqliteDir(tmp.join(format!("db-{tag}")))).await?
        }
        Backend::Postgres => Store::open_postgres_schema(pg_url, &schema)
            .await
            .context("opening PostgreSQL for the bench")?,
    };
    store.migrate().await?;
    let out = f(store.clone()).await;
    store.close().await;
    if b == Backend::Postgres {
        let _ = Store::drop_postgres_schema(pg_url, &schema).await;
    }
    out
}

fn compose() -> anyhow::Result<Compose> {
    Ok(Compose {
        sender: narwhal_mail::template::Sender {
            name: "Friends of the Bench".into(),
            postal_address: "PO Box 1, Columbus OH 43215".into(),
        },
        unsubscribe_url: "https://act.example.org/u/".into(),
        unsubscribe_mailto: Some("unsubscribe@act.example.org".into()),
        signer: narwhal_mail::unsubscribe::UnsubscribeSigner::new(
            b"bench-unsubscribe-key-bench-unsubscribe-key",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

fn content() -> BlastContent {
    BlastContent::Inline {
        subject: "{{ first_name }}, Ward {{ custom.ward }} votes on Tuesday".into(),
        text: Some(
            "Hi {{ first_name }} {{ last_name }},\n\nPolls in {{ city }} ({{ zip }}) open at 6:30 \
             and close at 7:30. Ward {{ custom.ward }} turned out 61% last time; let's beat it.\n\n\
             Find your polling place and make a plan: https://act.example.org/plan?z={{ zip }}\n"
                .into(),
        ),
        html: Some(
            "<p>Hi {{ first_name }} {{ last_name }},</p><p>Polls in <b>{{ city }}</b> ({{ zip }}) \
             open at 6:30 and close at 7:30. Ward {{ custom.ward }} turned out 61% last time; \
             let's beat it.</p><p><a href=\"https://act.example.org/plan?z={{ zip }}\">Make a plan</a></p>"
                .into(),
        ),
    }
}

async fn new_blast(store: &Store) -> anyhow::Result<BlastId> {
    Ok(store
        .create_blast(&NewBlast {
            name: "bench".into(),
            target: BlastTarget::Filter(
                SegmentFilter::parse(&serde_json::json!({"state": "OH"}))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            content: content(),
            from_email: Email::parse("team@campaign.example")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            keep_message_ids: false,
        })
        .await?)
}

fn ses_account(
    fake: &FakeSes,
    a: &FakeAccount,
    name: &str,
    spec: ThrottleSpec,
) -> anyhow::Result<Account> {
    let mut c = SesConfig::new(name, REGION, a.credentials());
    c.endpoint = Some(fake.endpoint());
    Ok(Account {
        provider: Arc::new(SesClient::new(c)?),
        weight: 1,
        spec,
    })
}

/// Inserts `n` people (untimed) and says how long it took.
async fn setup_people(store: &Store, b: Backend, n: u64) -> anyhow::Result<()> {
    eprintln!(
        "[{}] inserting {n} people (setup, not timed)...",
        b.as_str()
    );
    let t = Instant::now();
    store
        .insert_synthetic_recipients(1, i64::try_from(n)?)
        .await?;
    store.after_bulk_load().await?;
    eprintln!(
        "[{}] setup took {:.1} s",
        b.as_str(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Renders every recipient's message with no I/O (the people are read first, untimed)
/// on all cores; messages per second.
async fn baseline_renders_per_s(store: &Store, blast: BlastId) -> anyhow::Result<f64> {
    let b = store.blast(blast).await?;
    let templates = Arc::new(
        Templates::compile(&b.content, &compose()?.sender).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let compose = Arc::new(compose()?);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut after: Option<PersonId> = None;
    let mut rendered = 0u64;
    let mut busy = Duration::ZERO;
    loop {
        let page = store.recipients_page(after, 50_000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.person_id);
        let t = Instant::now();
        let per = page.len().div_ceil(threads);
        let ok = std::thread::scope(|s| {
            let handles: Vec<_> = page
                .chunks(per.max(1))
                .map(|chunk| {
                    let (t, c) = (templates.clone(), compose.clone());
                    s.spawn(move || {
                        chunk
                            .iter()
                            .filter(|r| blast::render(&t, r, blast, &c).is_ok())
                            .count()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .sum::<usize>()
        });
        busy += t.elapsed();
        rendered += ok as u64;
    }
    Ok(rendered as f64 / busy.as_secs_f64().max(1e-9))
}

/// (lost, duplicates) among recipients `1..=n`, from the fake's own ledger.
fn lost_and_duplicates(fake: &FakeSes, n: u64) -> (u64, u64) {
    let mut seen = vec![0u32; usize::try_from(n).unwrap_or(0) + 1];
    let mut strangers = 0u64;
    for a in fake.ledger() {
        let i = a
            .destination
            .strip_prefix('r')
            .and_then(|r| r.strip_suffix("@bench.example"))
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i >= 1 && i < seen.len());
        match i {
            Some(i) => seen[i] += 1,
            None => strangers += 1,
        }
    }
    debug_assert_eq!(synthetic_address(1), "r1@bench.example");
    let lost = seen.iter().skip(1).filter(|&&c| c == 0).count() as u64;
    let dups = seen
        .iter()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum::<u64>()
        + strangers;
    (lost, dups)
}

/// Starts a node's blast worker; the returned sender stops it.
fn start_worker(
    sender: BlastSender,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = blast::spawn(sender, rx);
    (stop, task)
}

/// Waits for the blast to finish, printing progress; `on_progress` sees the sent count.
async fn wait_done(
    store: &Store,
    b: Backend,
    id: BlastId,
    t0: Instant,
    mut on_progress: impl FnMut(i64),
) -> anyhow::Result<()> {
    let mut last_print = Instant::now();
    loop {
        let blast = store.blast(id).await?;
        on_progress(blast.counts.sent);
        match blast.state {
            BlastState::Done => return Ok(()),
            BlastState::Paused | BlastState::Cancelled => {
                anyhow::bail!("the blast stopped: {:?}", blast.state_reason)
            }
            _ => {}
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "[{}] {:>5.1} s: sent {} of {} ({:.0}/s), throttled {}",
                b.as_str(),
                secs,
                blast.counts.sent,
                blast.counts.total,
                blast.counts.sent as f64 / secs,
                blast.counts.throttled
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reset_peak_rss() {
    // Linux: writing 5 resets the peak resident set size (VmHWM) of this process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn email_mode(store: Store, b: Backend, n: u64) -> anyhow::Result<serde_json::Value> {
    setup_people(&store, b, n).await?;
    let id = new_blast(&store).await?;
    eprintln!(
        "[{}] baseline: rendering {n} messages with no I/O...",
        b.as_str()
    );
    let baseline = baseline_renders_per_s(&store, id).await?;
    eprintln!("[{}] baseline {baseline:.0} renders/s", b.as_str());

    let account = FakeAccount::new("AKIDBENCH", "bench-secret");
    let fake = FakeSes::start(REGION, vec![account.clone()]).await?;
    let unlimited =
        ThrottleSpec::from_reported(-1.0, -1.0).ok_or_else(|| anyhow::anyhow!("unlimited spec"))?;
    let accounts = vec![ses_account(&fake, &account, "bench", unlimited)?];
    let sender = BlastSender::new(
        store.clone(),
        accounts,
        SendConfig::new("bench", compose()?),
    );
    reset_peak_rss();
    eprintln!("[{}] blast to {n} recipients...", b.as_str());
    let t0 = Instant::now();
    store.schedule_blast(id, now_ms(), 1).await?;
    let (stop, task) = start_worker(sender);
    let waited = wait_done(&store, b, id, t0, |_| {}).await;
    let secs = t0.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = task.await;
    waited?;
    let rss = peak_rss_mb();
    let blast = store.blast(id).await?;
    let (lost, dups) = lost_and_duplicates(&fake, n);
    let (bytes, rows) = store.ledger_bytes().await?;
    Ok(serde_json::json!({
        "bench": "email",
        "backend": b.as_str(),
        "recipients": blast.counts.total,
        "recipients_per_s": (blast.counts.total as f64 / secs).round(),
        "baseline_renders_per_s": baseline.round(),
        "peak_rss_mb": rss,
        "ledger_bytes_per_recipient": ((bytes as f64 / rows.max(1) as f64) * 10.0).round() / 10.0,
        "lost": lost,
        "duplicates": dups,
        "seconds": (secs * 10.0).round() / 10.0,
        "sent": blast.counts.sent,
        "failed": blast.counts.failed,
        "reclaimed": blast.counts.reclaimed,
    }))
}

async fn quota_mode(
    store: Store,
    b: Backend,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    let n = u64::from(rate) * seconds * 3 / 2;
    setup_people(&store, b, n).await?;
    let id = new_blast(&store).await?;
    let a = FakeAccount::new("AKIDQUOTAA", "quota-secret-a").rate(rate);
    let c = FakeAccount::new("AKIDQUOTAB", "quota-secret-b").rate(rate);
    let fake = FakeSes::start(REGION, vec![a.clone(), c.clone()]).await?;
    // What each account reports (SES's GetAccount): its rate, no daily cap here.
    let spec = ThrottleSpec::from_reported(f64::from(rate), -1.0)
        .ok_or_else(|| anyhow::anyhow!("quota spec"))?;
    let accounts = vec![
        ses_account(&fake, &a, "quota-a", spec)?,
        ses_account(&fake, &c, "quota-b", spec)?,
    ];
    let sender = BlastSender::new(
        store.clone(),
        accounts,
        SendConfig::new("bench", compose()?),
    );
    eprintln!(
        "[{}] quota run: {n} recipients over two accounts at {rate}/s; one goes down halfway",
        b.as_str()
    );
    let t0 = Instant::now();
    store.schedule_blast(id, now_ms(), 1).await?;
    let (stop, task) = start_worker(sender);
    let half = i64::try_from(n / 2)?;
    let mut down_at: Option<i64> = None;
    let waited = wait_done(&store, b, id, t0, |sent| {
        if down_at.is_none() && sent >= half {
            fake.set_account_fault("AKIDQUOTAB", Fault::Down);
            down_at = Some(now_ms());
            eprintln!("[{}] account quota-b is down", b.as_str());
        }
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = task.await;
    waited?;
    let blast = store.blast(id).await?;
    let (lost, dups) = lost_and_duplicates(&fake, n);
    // The quota the accounts offered while the blast was sending (from the fake's first
    // acceptance to its last, by its own clock): each starts with a full bucket (one
    // second's worth) and refills at its rate while it is up.
    let (first, last) = fake.ledger().iter().fold((u64::MAX, 0), |(f, l), a| {
        (f.min(a.at.as_millis()), l.max(a.at.as_millis()))
    });
    let sending = (last.saturating_sub(first) as f64 / 1000.0).max(1e-3);
    let down = down_at.map_or(sending, |ms: i64| {
        ((ms as f64 - first as f64) / 1000.0).clamp(0.0, sending)
    });
    let r = f64::from(rate);
    let available = (r + r * sending) + (r + r * down);
    let stats = fake.stats();
    Ok(serde_json::json!({
        "bench": "email-quota",
        "backend": b.as_str(),
        "recipients": blast.counts.total,
        "quota_rate": rate,
        "accounts": 2,
        "down_after_s": (down * 10.0).round() / 10.0,
        "seconds": (secs * 10.0).round() / 10.0,
        "sending_seconds": (sending * 10.0).round() / 10.0,
        "available_rate": (available / sending).round(),
        "achieved_rate": (blast.counts.sent as f64 / sending).round(),
        "ratio": ((blast.counts.sent as f64 / available) * 1000.0).round() / 1000.0,
        "throttle_errors": stats.throttled,
        "lost": lost,
        "duplicates": dups,
    }))
}
