//! The open-model load: arrivals are scheduled by the clock (a Poisson process whose
//! rate follows the scenario's stages), never by the previous answer, and each
//! request's latency is measured from its *scheduled* send time, so a stalled system
//! shows its whole queueing delay instead of hiding it (no coordinated omission).
//!
//! A small tokio scheduler with reqwest rather than Goose: Goose drives closed-model
//! users (each waits for its answer before the next request), and what a game day
//! must measure is a crowd that keeps arriving whatever the system does.

use super::scenario::{rate_at, Load};
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one arrival does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    DonatePage,
    Donation,
    ReportBatch,
    PeopleRead,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Self::DonatePage,
        Self::Donation,
        Self::ReportBatch,
        Self::PeopleRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DonatePage => "donate_page",
            Self::Donation => "donation",
            Self::ReportBatch => "report_batch",
            Self::PeopleRead => "people_read",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error answer, a reset or a timeout.
    Error,
    /// 503 (with Retry-After) on every try: shed by the system, not a hang.
    Shed,
    /// Not sent: the generator had `max_in_flight` requests outstanding.
    NotSent,
    /// Not sent: the universe has no voter left to report.
    Exhausted,
}

/// One arrival.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Scheduled send time, ms from the start of load.
    pub at_ms: u64,
    pub workload: Workload,
    /// From the scheduled time to the final answer.
    pub latency_ms: f64,
    pub outcome: Outcome,
}

/// A donation the system acknowledged: its id and the outcome it told the donor.
#[derive(Debug, Clone)]
pub struct DonationAck {
    pub id: String,
    pub outcome: String,
}

/// A watcher's session and the voters left on their list.
#[derive(Debug)]
pub struct Watcher {
    pub cookie: String,
    pub codes: Mutex<VecDeque<String>>,
}

/// What the load needs from the deployment.
#[derive(Debug)]
pub struct Target {
    pub urls: Vec<String>,
    pub token: String,
    pub watchers: Vec<Watcher>,
    /// People ids 1..=people for reads.
    pub people: i64,
    /// Prefix of this run's report ids and idempotency keys.
    pub tag: String,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct Recorded {
    pub samples: Mutex<Vec<Sample>>,
    /// Tries whose connection was refused (a dead node), reset mid-request, or
    /// answered 503 without `Retry-After`.
    pub refused: AtomicU64,
    pub resets: AtomicU64,
    pub shed_without_retry_after: AtomicU64,
    /// Live-stream events received: (dashboard, seconds from the start of load).
    pub dashboard_events: Mutex<Vec<(usize, f64)>>,
    /// Times a dashboard's stream ended or could not be opened.
    pub dashboard_reconnects: AtomicU64,
    pub donations: Mutex<Vec<DonationAck>>,
    pub reports: Mutex<Vec<String>>,
}

const TRIES: usize = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Offers the load for `duration` from `start`; returns when every request has ended.
pub async fn run(
    target: Arc<Target>,
    load: &Load,
    duration: Duration,
    start: Instant,
    recorded: Arc<Recorded>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()?;
    let weights: Vec<(Workload, u32)> = Workload::ALL
        .iter()
        .map(|w| {
            let x = match w {
                Workload::DonatePage => load.weights.donate_page,
                Workload::Donation => load.weights.donation,
                Workload::ReportBatch => load.weights.report_batch,
                Workload::PeopleRead => load.weights.people_read,
            };
            (*w, x)
        })
        .collect();
    let total: u32 = weights.iter().map(|(_, x)| x).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0067_616d_6564_6179);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut streams = tokio::task::JoinSet::new();
    for k in 0..load.dashboards {
        streams.spawn(dashboard(
            target.clone(),
            recorded.clone(),
            k,
            start,
            start + duration,
        ));
    }
    let mut t = 0.0f64;
    let end = duration.as_secs_f64();
    loop {
        let rate = rate_at(&load.stages, t);
        if rate <= 0.0 {
            t += 0.05;
            if t >= end {
                break;
            }
            continue;
        }
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        t += -u.ln() / rate;
        if t >= end {
            break;
        }
        let due = start + Duration::from_secs_f64(t);
        if due > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut pick = rng.gen_range(0..total);
        let workload = weights
            .iter()
            .find(|(_, x)| {
                if pick < *x {
                    true
                } else {
                    pick -= x;
                    false
                }
            })
            .map_or(Workload::DonatePage, |(w, _)| *w);
        let at_ms = (t * 1000.0) as u64;
        if in_flight.load(Ordering::Relaxed) >= load.max_in_flight {
            record(&recorded, at_ms, workload, 0.0, Outcome::NotSent);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let (http, target, recorded, in_flight) = (
            http.clone(),
            target.clone(),
            recorded.clone(),
            in_flight.clone(),
        );
        let batch = load.report_batch;
        let person = rng.gen_range(1..=target.people.max(1));
        tasks.spawn(async move {
            let outcome = one(&http, &target, &recorded, workload, n, batch, person).await;
            let latency = due.elapsed().as_secs_f64() * 1000.0;
            record(&recorded, at_ms, workload, latency, outcome);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    while streams.join_next().await.is_some() {}
    Ok(())
}

/// A staff dashboard: holds `/api/v1/turnout/live` until `end`, counting the events
/// that arrive; when the stream ends or fails it reconnects to the next node.
async fn dashboard(t: Arc<Target>, rec: Arc<Recorded>, k: usize, start: Instant, end: Instant) {
    let Ok(http) = reqwest::Client::builder().build() else {
        return;
    };
    let mut node = k;
    let held = async {
        loop {
            let base = &t.urls[node % t.urls.len()];
            node += 1;
            let resp = http
                .get(format!("{base}/api/v1/turnout/live"))
                .bearer_auth(&t.token)
                .send()
                .await;
            if let Ok(mut r) = resp.and_then(|r| r.error_for_status()) {
                while let Ok(Some(chunk)) = r.chunk().await {
                    let events = chunk.windows(6).filter(|w| w == b"event:").count();
                    if events > 0 {
                        let at = start.elapsed().as_secs_f64();
                        let mut e = rec
                            .dashboard_events
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        e.extend(std::iter::repeat_n((k, at), events));
                    }
                }
            }
            rec.dashboard_reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout_at(end.into(), held).await;
}

fn record(r: &Recorded, at_ms: u64, workload: Workload, latency_ms: f64, outcome: Outcome) {
    r.samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Sample {
            at_ms,
            workload,
            latency_ms,
            outcome,
        });
}

/// What one try got.
enum Try {
    Done(Outcome),
    /// Try again on the next node after this pause.
    Again(Duration, Outcome),
}

/// One arrival, with up to [`TRIES`] tries on successive nodes (as a load balancer
/// that skips a dead node would); retries are safe because donations carry an
/// idempotency key and reports their report ids.
async fn one(
    http: &reqwest::Client,
    t: &Target,
    rec: &Recorded,
    w: Workload,
    n: u64,
    batch: usize,
    person: i64,
) -> Outcome {
    let report = match w {
        Workload::ReportBatch => match take_reports(t, n, batch) {
            Some(r) => Some(r),
            None => return Outcome::Exhausted,
        },
        _ => None,
    };
    let mut last = Outcome::Error;
    for k in 0..TRIES {
        let base = &t.urls[(n as usize + k) % t.urls.len()];
        let tried = match w {
            Workload::DonatePage => simple(rec, http.get(format!("{base}/donate"))).await,
            Workload::PeopleRead => {
                simple(
                    rec,
                    http.get(format!("{base}/api/v1/people/{person}"))
                        .bearer_auth(&t.token),
                )
                .await
            }
            Workload::Donation => donation(http, base, t, rec, n).await,
            Workload::ReportBatch => match &report {
                Some((cookie, ids, body)) => reports(http, base, cookie, ids, body, rec).await,
                None => Try::Done(Outcome::Error),
            },
        };
        match tried {
            Try::Done(o) => return o,
            // After the last try the caller has its answer: no pause is added to it.
            Try::Again(_, o) if k + 1 == TRIES => last = o,
            Try::Again(pause, o) => {
                last = o;
                tokio::time::sleep(pause).await;
            }
        }
    }
    last
}

/// A watcher's cookie, the batch's report ids and its body.
fn take_reports(
    t: &Target,
    n: u64,
    batch: usize,
) -> Option<(String, Vec<String>, serde_json::Value)> {
    let len = t.watchers.len();
    for k in 0..len {
        let w = &t.watchers[(n as usize + k) % len];
        let mut codes = w.codes.lock().unwrap_or_else(|e| e.into_inner());
        if codes.is_empty() {
            continue;
        }
        let take = batch.min(codes.len());
        let chosen: Vec<String> = codes.drain(..take).collect();
        let ids: Vec<String> = (0..take).map(|i| format!("{}-r{n}-{i}", t.tag)).collect();
        let body = serde_json::json!({"reports": chosen.iter().zip(&ids).map(|(c, id)| serde_json::json!({
            "report_id": id, "voter_code": c})).collect::<Vec<_>>()});
        return Some((w.cookie.clone(), ids, body));
    }
    None
}

/// Classifies an answer that is not a success.
fn failed(rec: &Recorded, status: u16, retry_after: Option<&reqwest::header::HeaderValue>) -> Try {
    if status == 503 && retry_after.is_none() {
        rec.shed_without_retry_after.fetch_add(1, Ordering::Relaxed);
    }
    match status {
        502..=504 => {
            let pause = retry_after
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::from_millis(100), |s| {
                    Duration::from_secs(s).min(Duration::from_millis(500))
                });
            Try::Again(pause, Outcome::Shed)
        }
        409 => Try::Again(Duration::from_millis(200), Outcome::Error),
        _ => Try::Done(Outcome::Error),
    }
}

fn transport(rec: &Recorded, e: &reqwest::Error) -> Try {
    if e.is_connect() {
        rec.refused.fetch_add(1, Ordering::Relaxed);
        Try::Again(Duration::ZERO, Outcome::Error)
    } else if e.is_timeout() {
        Try::Done(Outcome::Error)
    } else {
        // Reset mid-request: the answer is lost; the retry is idempotent.
        rec.resets.fetch_add(1, Ordering::Relaxed);
        Try::Again(Duration::from_millis(50), Outcome::Error)
    }
}

async fn simple(rec: &Recorded, req: reqwest::RequestBuilder) -> Try {
    match req.send().await {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => Try::Done(Outcome::Ok),
            Err(e) => transport(rec, &e),
        },
        Ok(r) => failed(rec, r.status().as_u16(), r.headers().get("retry-after")),
        Err(e) => transport(rec, &e),
    }
}

async fn donation(http: &reqwest::Client, base: &str, t: &Target, rec: &Recorded, n: u64) -> Try {
    let body = serde_json::json!({
        "amount_cents": 2_500 + (n % 40) as i64 * 100,
        "donor": {
            "first_name": "Game",
            "last_name": format!("Donor{n}"),
            "email": format!("{}-d{n}{}", t.tag, crate::gameday::verify::DONOR_DOMAIN),
            "address1": "1 Market St",
            "city": "Philadelphia",
            "state": "PA",
            "zip": "19104",
            "employer": "Acme",
            "occupation": "Engineer"
        },
        "attestations": {"own_funds": true, "citizen_or_resident": true, "not_contractor": true},
        "payment_method": "pm_card_visa",
        "refcode": "gameday",
    });
    let resp = http
        .post(format!("{base}/api/v1/donations"))
        .bearer_auth(&t.token)
        .header("idempotency-key", format!("{}-k{n}", t.tag))
        .json(&body)
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(v) => {
                let id = v["id"].as_str().unwrap_or_default().to_string();
                let outcome = v["outcome"].as_str().unwrap_or_default().to_string();
                if id.is_empty() {
                    return Try::Done(Outcome::Error);
                }
                rec.donations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(DonationAck { id, outcome });
                Try::Done(Outcome::Ok)
            }
            Err(e) => transport(rec, &e),
        },
        Ok(r) => failed(rec, r.status().as_u16(), r.headers().get("retry-after")),
        Err(e) => transport(rec, &e),
    }
}

async fn reports(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    ids: &[String],
    body: &serde_json::Value,
    rec: &Recorded,
) -> Try {
    let resp = http
        .post(format!("{base}/api/v1/turnout/reports"))
        .header("cookie", cookie)
        .json(body)
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(v) => {
                // Acknowledged: every item not rejected (a duplicate is one a lost
                // answer's retry found already stored).
                let rejected: std::collections::HashSet<&str> = v["results"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|x| x["outcome"] == "rejected")
                            .filter_map(|x| x["report_id"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let mut acked = rec.reports.lock().unwrap_or_else(|e| e.into_inner());
                acked.extend(
                    ids.iter()
                        .filter(|i| !rejected.contains(i.as_str()))
                        .cloned(),
                );
                Try::Done(if rejected.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Error
                })
            }
            Err(e) => transport(rec, &e),
        },
        Ok(r) => failed(rec, r.status().as_u16(), r.headers().get("retry-after")),
        Err(e) => transport(rec, &e),
    }
}
