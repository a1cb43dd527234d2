//! The verdict, from the data: the client's own record of what was acknowledged, the
//! rows in the database, and the fakes' ledgers. Never from the counters the system
//! under test keeps about itself.

use super::deploy::Deployment;
use super::load::{Outcome, Recorded, Workload};
use super::scenario::{BlastPlan, VerifyLimits};
use super::timeline::Window;
use narwhal_store::blasts::{synthetic_address, BlastId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The domain of the game day's donors' addresses: their receipts share the blast's
/// mail account, and are told apart by it.
pub const DONOR_DOMAIN: &str = "@donors.example";

/// One invariant's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Invariant {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// A fault's recovery: seconds from its end to the first clean second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovery {
    pub fault: String,
    pub start_s: f64,
    pub end_s: f64,
    /// To the first whole second of successes without errors (donations, reports).
    pub recovered_after_s: Option<f64>,
    /// To the first successful donation or report answered after the end.
    pub first_success_s: Option<f64>,
    pub p99_in_window_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    pub invariants: Vec<Invariant>,
    pub recoveries: Vec<Recovery>,
    pub lost: u64,
    pub double_charges: u64,
    pub duplicate_reports: u64,
    pub blast_duplicates: u64,
    pub blast_in_flight_bound: i64,
    pub acked_donations: usize,
    pub acked_reports: usize,
    /// Live-stream events received by all dashboards, and their reconnects.
    pub dashboard_events: usize,
    pub dashboard_reconnects: u64,
    /// The longest time any dashboard went without an event, in seconds.
    pub dashboard_longest_gap_s: f64,
}

impl Verdict {
    pub fn failed(&self) -> usize {
        self.invariants.iter().filter(|i| !i.pass).count()
    }

    fn check(&mut self, name: &'static str, pass: bool, detail: String) {
        self.invariants.push(Invariant { name, pass, detail });
    }
}

/// The `q` quantile (0..1) of `v` (sorted in place); 0 when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Writes that must not be slow: donations and report batches.
fn critical(w: Workload) -> bool {
    matches!(w, Workload::Donation | Workload::ReportBatch)
}

/// Everything, once load has stopped and open work has settled.
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    d: &Deployment,
    rec: &Recorded,
    tag: &str,
    windows: &[Window],
    blast: Option<(BlastId, &BlastPlan)>,
    blast_bound: i64,
    limits: &VerifyLimits,
    duration_s: f64,
    dashboards: usize,
) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();

    // Donations: every acknowledgement against the rows.
    let acks = rec
        .donations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    v.acked_donations = acks.len();
    let rows = d.store.donations_since(0, i64::MAX).await?;
    let by_id: HashMap<&str, &narwhal_store::donations::DonationRow> =
        rows.iter().map(|r| (r.public_id.as_str(), r)).collect();
    let mut lost_donations = Vec::new();
    for a in &acks {
        let stored = by_id.get(a.id.as_str()).map(|r| r.state.as_str());
        let good = match a.outcome.as_str() {
            "succeeded" => matches!(
                stored,
                Some("succeeded" | "refunded" | "partially_refunded")
            ),
            "pledged" => stored.is_some_and(|s| s != "failed" && s != "declined"),
            _ => stored.is_some(),
        };
        if !good {
            lost_donations.push(format!("{} ({} → {:?})", a.id, a.outcome, stored));
        }
    }
    v.lost += lost_donations.len() as u64;
    // Each arrival's donor has an address of its own, so two rows with one address
    // are one gift stored twice (a retry that slipped past its idempotency key).
    let mut per_arrival: HashMap<String, usize> = HashMap::new();
    let suffix = "@donors.example";
    for r in &rows {
        let email = serde_json::from_str::<serde_json::Value>(&r.donor_json)
            .ok()
            .and_then(|v| v["email"].as_str().map(str::to_ascii_lowercase));
        if let Some(e) = email.filter(|e| e.starts_with(&format!("{tag}-")) && e.ends_with(suffix))
        {
            *per_arrival.entry(e).or_default() += 1;
        }
    }
    let twice: Vec<String> = per_arrival
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(e, n)| format!("{e} ×{n}"))
        .collect();
    v.check(
        "every acknowledged donation exists exactly once, in the state the donor was told",
        lost_donations.is_empty() && twice.is_empty(),
        format!(
            "{} acknowledged, {} missing or in another state{}; {} rows from {} arrivals, {} stored more than once{}",
            acks.len(),
            lost_donations.len(),
            sample(&lost_donations),
            per_arrival.values().sum::<usize>(),
            per_arrival.len(),
            twice.len(),
            sample(&twice)
        ),
    );

    // Charges: the fakes' own ledgers.
    if let Some(local) = &d.local {
        let mut per_donation: BTreeMap<String, usize> = BTreeMap::new();
        let mut charged: HashSet<(String, String)> = HashSet::new();
        for (name, fake) in [
            ("stripe-primary", &local.primary),
            ("stripe-backup", &local.backup),
        ] {
            for c in fake.ledger() {
                let donation = c
                    .metadata
                    .get("narwhal_donation")
                    .cloned()
                    .unwrap_or_else(|| c.payment_intent.clone());
                *per_donation.entry(donation).or_default() += 1;
                charged.insert((name.to_string(), c.payment_intent.clone()));
            }
        }
        let doubles: Vec<String> = per_donation
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        v.double_charges = per_donation
            .values()
            .map(|n| n.saturating_sub(1) as u64)
            .sum();
        v.check(
            "no card charged twice for one donation",
            v.double_charges == 0,
            format!(
                "{} charges in the processors' ledgers, {} extra{}",
                charged.len(),
                v.double_charges,
                sample(&doubles)
            ),
        );
        let recorded: HashSet<(String, String)> = rows
            .iter()
            .filter(|r| {
                matches!(
                    r.state.as_str(),
                    "succeeded" | "refunded" | "partially_refunded"
                )
            })
            .filter_map(|r| Some((r.processor.clone()?, r.processor_ref.clone()?)))
            .collect();
        let unrecorded: Vec<String> = charged
            .difference(&recorded)
            .map(|(p, r)| format!("{p}:{r}"))
            .collect();
        let uncharged: Vec<String> = recorded
            .difference(&charged)
            .map(|(p, r)| format!("{p}:{r}"))
            .collect();
        v.lost += (unrecorded.len() + uncharged.len()) as u64;
        v.check(
            "every charge is a succeeded donation and every succeeded donation a charge",
            unrecorded.is_empty() && uncharged.is_empty(),
            format!(
                "{} charged but not recorded{}, {} recorded without a charge{}",
                unrecorded.len(),
                sample(&unrecorded),
                uncharged.len(),
                sample(&uncharged)
            ),
        );
    }

    // Turnout reports: every acknowledged id, once.
    let acked: Vec<String> = rec
        .reports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    v.acked_reports = acked.len();
    let counts: HashMap<String, i64> = d.store.report_id_counts(tag).await?.into_iter().collect();
    let missing: Vec<String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .cloned()
        .collect();
    v.duplicate_reports = counts.values().map(|n| (*n - 1).max(0) as u64).sum();
    v.lost += missing.len() as u64;
    v.check(
        "every acknowledged turnout report exists exactly once",
        missing.is_empty() && v.duplicate_reports == 0,
        format!(
            "{} acknowledged, {} missing{}, {} stored more than once",
            acked.len(),
            missing.len(),
            sample(&missing),
            v.duplicate_reports
        ),
    );

    // The blast: the fake SES's ledger and the SMTP sink's messages together (a
    // recipient handed to both counts twice).
    if let (Some((id, plan)), Some(local)) = (blast, &d.local) {
        let mut got: HashMap<String, i64> = HashMap::new();
        // Donors' receipts go through the same accounts: they are not the blast's.
        let blast_only = |to: &String| !to.ends_with(DONOR_DOMAIN);
        let via_ses: Vec<String> = local
            .ses
            .ledger()
            .into_iter()
            .map(|a| a.destination)
            .filter(blast_only)
            .collect();
        let via_smtp: Vec<String> = local
            .smtp
            .messages()
            .into_iter()
            .flat_map(|m| m.recipients)
            .filter(blast_only)
            .collect();
        let (n_ses, n_smtp) = (via_ses.len(), via_smtp.len());
        for to in via_ses.into_iter().chain(via_smtp) {
            *got.entry(to).or_default() += 1;
        }
        let missing: Vec<String> = (1..=plan.recipients)
            .map(synthetic_address)
            .filter(|a| !got.contains_key(a))
            .collect();
        let strangers = got
            .keys()
            .filter(|k| !k.ends_with("@bench.example"))
            .count();
        let extra: i64 = got.values().map(|n| n - 1).sum();
        v.blast_duplicates = extra.max(0) as u64;
        v.blast_in_flight_bound = blast_bound;
        v.lost += missing.len() as u64;
        let state = d
            .store
            .blast(id)
            .await
            .map(|b| b.state.as_str().to_string())?;
        v.check(
            "every blast recipient handed to the provider exactly once (within the in-flight bound)",
            missing.is_empty() && strangers == 0 && extra <= blast_bound && state == "done",
            format!(
                "{} recipients ({n_ses} via SES, {n_smtp} via SMTP), blast {state}, {} never sent{}, {extra} duplicates (bound: {blast_bound} in flight when faults began), {strangers} to strangers",
                plan.recipients,
                missing.len(),
                sample(&missing)
            ),
        );
    }

    // Latency and recovery, from the client's samples.
    let samples = rec
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let answered =
        |s: &&super::load::Sample| !matches!(s.outcome, Outcome::NotSent | Outcome::Exhausted);
    let mut all: Vec<f64> = samples
        .iter()
        .filter(answered)
        .filter(|s| critical(s.workload))
        .map(|s| s.latency_ms)
        .collect();
    let p99 = quantile(&mut all, 0.99);
    let limit = limits.p99_limit_ms as f64;
    let mut worst_window = (String::new(), 0.0f64);
    for w in windows {
        let mut lat: Vec<f64> = samples
            .iter()
            .filter(answered)
            .filter(|s| critical(s.workload))
            .filter(|s| {
                let t = s.at_ms as f64 / 1000.0;
                t >= w.start && t < w.end
            })
            .map(|s| s.latency_ms)
            .collect();
        let wp99 = quantile(&mut lat, 0.99);
        if wp99 > worst_window.1 {
            worst_window = (w.label.clone(), wp99);
        }
        v.recoveries.push(Recovery {
            fault: w.label.clone(),
            start_s: w.start,
            end_s: w.end,
            recovered_after_s: recovered_after(&samples, w.end, duration_s),
            first_success_s: first_success(&samples, w.end),
            p99_in_window_ms: wp99,
        });
    }
    v.check(
        "p99 of donations and report batches within the limit, overall and in every fault",
        p99 <= limit && worst_window.1 <= limit,
        format!(
            "overall p99 {p99:.0} ms; worst fault window {} at {:.0} ms; limit {limit:.0} ms",
            if worst_window.0.is_empty() {
                "none".to_string()
            } else {
                worst_window.0.clone()
            },
            worst_window.1
        ),
    );
    let slow: Vec<String> = v
        .recoveries
        .iter()
        .filter(|r| r.end_s < duration_s)
        .filter(|r| {
            r.recovered_after_s
                .is_none_or(|x| x > limits.recover_within.secs())
        })
        .map(|r| r.fault.clone())
        .collect();
    if !windows.is_empty() {
        v.check(
            "every fault recovered from within the limit",
            slow.is_empty(),
            format!(
                "limit {:.0} s; not recovered in time: {}",
                limits.recover_within.secs(),
                if slow.is_empty() {
                    "none".to_string()
                } else {
                    slow.join(", ")
                }
            ),
        );
    }
    if dashboards > 0 {
        let events = rec
            .dashboard_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.dashboard_events = events.len();
        v.dashboard_reconnects = rec
            .dashboard_reconnects
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut worst = (0usize, 0.0f64);
        for k in 0..dashboards {
            let mut times: Vec<f64> = events
                .iter()
                .filter(|(d, _)| *d == k)
                .map(|(_, t)| *t)
                .collect();
            times.sort_by(|a, b| a.total_cmp(b));
            // From the start, between events, and from the last event to the end.
            let mut prev = 0.0;
            let mut gap = 0.0f64;
            for t in times.iter().chain(std::iter::once(&duration_s)) {
                gap = gap.max(t - prev);
                prev = *t;
            }
            if gap > worst.1 {
                worst = (k, gap);
            }
        }
        v.dashboard_longest_gap_s = worst.1;
        v.check(
            "every dashboard stream kept delivering live turnout (reconnecting when its node died)",
            worst.1 <= limits.recover_within.secs(),
            format!(
                "{dashboards} dashboards, {} events, {} reconnects; longest gap {:.1} s (dashboard {}); limit {:.0} s",
                v.dashboard_events,
                v.dashboard_reconnects,
                worst.1,
                worst.0,
                limits.recover_within.secs()
            ),
        );
    }
    let errors = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Error)
        .count();
    let hung = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Error && s.latency_ms >= 14_000.0)
        .count();
    let bare = rec
        .shed_without_retry_after
        .load(std::sync::atomic::Ordering::Relaxed);
    let resets = rec.resets.load(std::sync::atomic::Ordering::Relaxed);
    let refused = rec.refused.load(std::sync::atomic::Ordering::Relaxed);
    v.check(
        "no request hung; shed requests got 503 with Retry-After",
        hung == 0 && bare == 0,
        format!(
            "{hung} requests waited out the client's timeout; {bare} 503s without Retry-After; {errors} failed requests in all; tries refused {refused}, reset mid-request {resets}"
        ),
    );
    Ok(v)
}

/// Seconds from `end` to the start of the first whole second after it in which
/// donations and reports had successes and no errors; `None` if never within the run.
fn recovered_after(samples: &[super::load::Sample], end: f64, duration_s: f64) -> Option<f64> {
    let mut per: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for s in samples.iter().filter(|s| critical(s.workload)) {
        let t = s.at_ms as f64 / 1000.0;
        if t < end {
            continue;
        }
        let e = per.entry(s.at_ms / 1000).or_default();
        match s.outcome {
            Outcome::Ok => e.0 += 1,
            Outcome::Error | Outcome::Shed => e.1 += 1,
            Outcome::NotSent | Outcome::Exhausted => {}
        }
    }
    let first = end.ceil() as u64;
    (first..=duration_s.ceil() as u64)
        .find(|sec| per.get(sec).is_some_and(|(ok, err)| *ok > 0 && *err == 0))
        .map(|sec| (sec as f64 - end).max(0.0))
}

/// Seconds from `end` to the first donation or report that succeeded with its answer
/// arriving after `end`.
fn first_success(samples: &[super::load::Sample], end: f64) -> Option<f64> {
    samples
        .iter()
        .filter(|s| critical(s.workload) && s.outcome == Outcome::Ok)
        .map(|s| (s.at_ms as f64 + s.latency_ms) / 1000.0)
        .filter(|done| *done >= end)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
        .map(|done| done - end)
}

fn sample(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(
            " (e.g. {})",
            v.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )
    }
}
