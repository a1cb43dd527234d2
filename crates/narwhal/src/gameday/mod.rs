//! `narwhal gameday run SCENARIO.toml`: rehearse a spike and failures against a
//! multi-node Narwhal, then prove from the data that nothing acknowledged was lost,
//! nothing charged twice, no report counted twice and no blast recipient mailed twice
//! beyond the in-flight bound. See docs/GAMEDAY.md.

pub mod deploy;
pub mod front;
pub mod load;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod timeline;
pub mod verify;

use anyhow::{bail, Context};
use narwhal_domain::{Email, SegmentFilter};
use narwhal_store::blasts::{BlastContent, BlastId, BlastTarget, NewBlast};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(clap::Subcommand, Debug)]
pub enum GamedayCommand {
    /// Run a scenario and write its report; exits non-zero when an invariant fails.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The scenario file (gameday/scenarios/*.toml).
    pub scenario: PathBuf,
    /// Where the report (report.md, report.html, report.json) and node logs go.
    #[arg(long, default_value = "gameday-report")]
    pub out: PathBuf,
    /// A host outside loopback that may be targeted (repeat for several).
    #[arg(long = "allow-non-loopback", value_name = "HOST")]
    pub allow_non_loopback: Vec<String>,
    /// Shorten (or stretch) the scenario: faults and stages keep their times.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

pub async fn run(settings: &crate::config::Settings, cmd: GamedayCommand) -> anyhow::Result<()> {
    match cmd {
        GamedayCommand::Run(a) => run_scenario(settings, a).await,
    }
}

async fn run_scenario(settings: &crate::config::Settings, args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("{}: cannot read", args.scenario.display()))?;
    let stem = args
        .scenario
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut s = scenario::parse(&args.scenario.display().to_string(), &stem, &text)?;
    if let Some(d) = &args.duration {
        s.duration = scenario::Span(
            scenario::parse_span(d).map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        );
        let before = s.faults.len();
        s.faults.retain(|f| f.at < s.duration);
        if s.faults.len() < before {
            eprintln!(
                "gameday: --duration {d} leaves out {} fault(s) scheduled after it",
                before - s.faults.len()
            );
        }
    }
    let pg_base = match &settings.database {
        narwhal_store::DatabaseTarget::Postgres(u) => u.clone(),
        _ => DEFAULT_PG.to_string(),
    };
    // Safe by default: every address this run will touch must be loopback unless named.
    let mut touched = vec![];
    match &s.target {
        Some(t) => {
            touched.extend(t.urls.iter().cloned());
            touched.push(t.database.clone());
        }
        None => touched.push(pg_base.clone()),
    }
    scenario::check_targets(&touched, &args.allow_non_loopback).map_err(|e| anyhow::anyhow!(e))?;
    if s.target.as_ref().is_some_and(|t| t.urls.is_empty()) {
        bail!("target.urls: name at least one node");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    eprintln!(
        "gameday {}: starting {}...",
        s.name,
        if s.target.is_some() {
            "against the target".to_string()
        } else {
            format!("a local deployment of {} nodes", s.nodes)
        }
    );
    let d = Arc::new(deploy::Deployment::start(&s, &pg_base, &args.out).await?);
    let result = drive(&s, d.clone(), &args).await;
    match Arc::try_unwrap(d) {
        Ok(d) => d.stop().await,
        Err(_) => {
            eprintln!("gameday: the deployment is still referenced; its processes stop on exit")
        }
    }
    let failed = result?;
    if failed > 0 {
        bail!(
            "{failed} invariant(s) FAILED; see {}",
            args.out.join("report.md").display()
        );
    }
    Ok(())
}

/// The 1-minute load average, where the system reports one.
fn machine_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Seeds, offers the load with its faults, verifies and reports; returns the number
/// of failed invariants.
async fn drive(
    s: &scenario::Scenario,
    d: Arc<deploy::Deployment>,
    args: &RunArgs,
) -> anyhow::Result<usize> {
    let tag = format!("gd{}", narwhal_store::now_ms() % 100_000_000);
    eprintln!(
        "gameday {}: seeding {} voters over {} places...",
        s.name, s.load.voters, s.load.places
    );
    let target = Arc::new(setup(s, &d, &tag).await?);
    let blast = match &s.blast {
        Some(b) => Some(create_blast(&d.store, b).await?),
        None => None,
    };

    eprintln!(
        "gameday {}: load for {:.0} s with {} fault(s)...",
        s.name,
        s.duration.secs(),
        s.faults.len()
    );
    let rec = Arc::new(load::Recorded::default());
    let obs = Arc::new(timeline::Observed::default());
    let machine_before = machine_load();
    let start = Instant::now();
    let faults = tokio::spawn(timeline::run(
        d.clone(),
        s.clone(),
        blast,
        start,
        obs.clone(),
    ));
    load::run(target, &s.load, s.duration.0, start, rec.clone()).await?;
    let _ = faults.await;
    obs.notes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!(
            "machine: {} cores; load average (1 min) {machine_before} at the start, {} at the end of load (everything shares these cores: nodes, PostgreSQL, fakes, the generator, and anything else running)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            machine_load()
        ));

    eprintln!("gameday {}: load done; letting open work settle...", s.name);
    settle(&d, blast, &s.verify).await;

    let windows = obs
        .windows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let bound = *obs
        .in_flight_at_faults
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let duration_s = s.duration.secs();
    let verdict = verify::verify(
        &d,
        &rec,
        &tag,
        &windows,
        blast.zip(s.blast.as_ref()),
        bound,
        &s.verify,
        duration_s,
        s.load.dashboards,
    )
    .await?;

    let samples = rec
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let notes = obs.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let series = report::series(&samples, duration_s);
    let ctx = report::Context {
        name: &s.name,
        limit_ms: s.verify.p99_limit_ms as f64,
        description: &s.description,
        nodes: d.urls.len(),
        duration_s,
        samples: &samples,
        windows: &windows,
        notes: &notes,
        verdict: &verdict,
    };
    let md = report::markdown(&ctx, &series);
    std::fs::write(args.out.join("report.md"), &md)?;
    std::fs::write(
        args.out.join("report.html"),
        report::html(&ctx, &series, &md),
    )?;
    let line = report::json_line(&s.name, &report::headline(&samples, &series), &verdict);
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&serde_json::json!({"summary": line, "verdict": verdict}))?,
    )?;
    for i in &verdict.invariants {
        eprintln!(
            "  {} {}: {}",
            if i.pass { "PASS" } else { "FAIL" },
            i.name,
            i.detail
        );
    }
    println!("{line}");
    Ok(verdict.failed())
}

/// The API token, watcher sessions with their lists, and the voters and recipients.
async fn setup(
    s: &scenario::Scenario,
    d: &deploy::Deployment,
    tag: &str,
) -> anyhow::Result<load::Target> {
    let store = &d.store;
    let places = store
        .bench_seed_universe(s.load.voters, s.load.places)
        .await
        .context("seeding the GOTV universe")?;
    if let Some(b) = &s.blast {
        store
            .insert_synthetic_recipients(1, b.recipients)
            .await
            .context("seeding the blast's recipients")?;
    }
    let (token, hash) = narwhal_http::auth::new_token();
    store
        .create_token(
            &format!("gameday-{tag}"),
            &hash,
            &narwhal_domain::Scope::ALL,
            "gameday",
        )
        .await?;
    let turnout = narwhal_turnout::Turnout::new(store.clone());
    let http = reqwest::Client::new();
    let mut watchers = Vec::new();
    for (k, p) in places.iter().enumerate() {
        let w = turnout
            .issue_watcher(
                &format!("{tag}-{p}"),
                p,
                narwhal_turnout::LoginKind::Link,
                None,
            )
            .await?;
        let base = &d.urls[k % d.urls.len()];
        let r = http
            .post(format!("{base}/api/v1/turnout/sessions"))
            .json(&serde_json::json!({ "token": w.secret.expose() }))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("watcher login at {base}: {}", r.status());
        }
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("watcher login: no session cookie")?
            .to_string();
        let mut codes = VecDeque::new();
        let mut after = None;
        loop {
            let page = turnout.remaining(p, after, 10_000).await?;
            let full = page.len() == 10_000;
            after = page.last().map(|v| v.person_id);
            codes.extend(page.into_iter().map(|v| v.voter_code));
            if !full {
                break;
            }
        }
        watchers.push(load::Watcher {
            cookie,
            codes: Mutex::new(codes),
        });
    }
    Ok(load::Target {
        urls: d.urls.clone(),
        token,
        watchers,
        people: store.count_people().await?,
        tag: tag.to_string(),
    })
}

async fn create_blast(
    store: &narwhal_store::Store,
    _b: &scenario::BlastPlan,
) -> anyhow::Result<BlastId> {
    let filter = SegmentFilter::parse(&serde_json::json!({"state": "OH"}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store
        .create_blast(&NewBlast {
            name: "game day".into(),
            target: BlastTarget::Filter(filter),
            content: BlastContent::Inline {
                subject: "Polls close at 7, {{ first_name }}".into(),
                text: Some("Ward {{ custom.ward }}: find your polling place.".into()),
                html: None,
            },
            from_email: Email::parse("team@campaign.example")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            keep_message_ids: false,
        })
        .await?)
}

/// Waits (bounded) for donations still being confirmed and for the blast to finish.
async fn settle(d: &deploy::Deployment, blast: Option<BlastId>, limits: &scenario::VerifyLimits) {
    let deadline = Instant::now() + limits.settle_timeout.0;
    loop {
        let open = d
            .store
            .donations_since(0, i64::MAX)
            .await
            .map(|r| r.iter().filter(|x| x.state == "processing").count())
            .unwrap_or(0);
        if open == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(id) = blast {
        let deadline = Instant::now() + limits.blast_timeout.0;
        while Instant::now() < deadline {
            match d.store.blast(id).await {
                Ok(b) if b.state == narwhal_store::blasts::BlastState::Done => break,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}
