//! Faults (and the blast) at their scheduled times, and the record of when each
//! really began and ended.

use super::deploy::Deployment;
use super::proxy::Mode;
use super::scenario::{FaultKind, FaultPlan, Scenario};
use narwhal_fakes::stripe::Fault as StripeFault;
use narwhal_fakes::Fault as SesFault;
use narwhal_store::blasts::{BlastId, RecipientState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fault as it happened, in seconds from the start of load.
#[derive(Debug, Clone)]
pub struct Window {
    pub label: String,
    pub start: f64,
    pub end: f64,
}

/// What the timeline observed.
#[derive(Debug, Default)]
pub struct Observed {
    pub windows: Mutex<Vec<Window>>,
    /// Blast recipients leased (in flight) when a node was killed: the most a kill
    /// may duplicate.
    pub in_flight_at_faults: Mutex<i64>,
    pub notes: Mutex<Vec<String>>,
}

fn note(o: &Observed, s: String) {
    eprintln!("  gameday: {s}");
    o.notes.lock().unwrap_or_else(|e| e.into_inner()).push(s);
}

/// Runs every fault and the blast's start at their times; returns when the last
/// fault has ended.
pub async fn run(
    d: Arc<Deployment>,
    s: Scenario,
    blast: Option<BlastId>,
    start: Instant,
    obs: Arc<Observed>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(id), Some(plan)) = (blast, &s.blast) {
        let (d, at, jobs, obs) = (d.clone(), plan.at.0, plan.jobs, obs.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until((start + at).into()).await;
            match d
                .store
                .schedule_blast(id, narwhal_store::now_ms(), jobs)
                .await
            {
                Ok(()) => note(
                    &obs,
                    format!("{:.1}s: blast scheduled", start.elapsed().as_secs_f64()),
                ),
                Err(e) => note(&obs, format!("the blast could not be scheduled: {e}")),
            }
        });
    }
    for f in s.faults.clone() {
        let (d, obs) = (d.clone(), obs.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until((start + f.at.0).into()).await;
            let began = start.elapsed().as_secs_f64();
            let label = label(&f);
            note(&obs, format!("{began:.1}s: {label} begins"));
            apply(&d, &f, true, blast, &obs).await;
            if !f.lasts.0.is_zero() {
                tokio::time::sleep(f.lasts.0).await;
            }
            apply(&d, &f, false, blast, &obs).await;
            let end = start.elapsed().as_secs_f64();
            note(&obs, format!("{end:.1}s: {label} ends"));
            obs.windows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Window {
                    label,
                    start: began,
                    end,
                });
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn label(f: &FaultPlan) -> String {
    let mut l = f.kind.as_str().to_string();
    if let Some(p) = &f.processor {
        l.push_str(&format!(" ({p})"));
    }
    if f.kind == FaultKind::NodeKill {
        l.push_str(&format!(" (node {})", f.node.unwrap_or(0)));
    }
    if let Some(ms) = f.ms {
        l.push_str(&format!(" {ms} ms"));
    }
    l
}

/// Begins (`on`) or ends a fault.
async fn apply(d: &Deployment, f: &FaultPlan, on: bool, blast: Option<BlastId>, obs: &Observed) {
    if f.kind == FaultKind::VerifierSelftestAckWithoutCommit {
        if let Some(front) = &d.front {
            front.arm(if on { f.fraction.unwrap_or(0.1) } else { 0.0 });
        }
        return;
    }
    let Some(local) = &d.local else {
        return;
    };
    if on && f.kind.cuts_in_flight_work() {
        if let Some(id) = blast {
            count_in_flight(d, id, &label(f), obs).await;
        }
    }
    let stripe = |fault: StripeFault| {
        let which = f.processor.as_deref().unwrap_or("primary");
        let fault = if on { fault } else { StripeFault::None };
        if which != "backup" {
            local.primary.set_fault(fault.clone());
        }
        if which != "primary" {
            local.backup.set_fault(fault);
        }
    };
    let ses = |fault: SesFault| local.ses.set_fault(if on { fault } else { SesFault::None });
    let proxy = |mode: Mode| local.proxy.set(if on { mode } else { Mode::Pass });
    match f.kind {
        FaultKind::ProcessorDown => stripe(StripeFault::Down),
        FaultKind::ProcessorSlow => stripe(StripeFault::Slow {
            ms: f.ms.unwrap_or(1000),
        }),
        FaultKind::ProcessorRateLimited => stripe(StripeFault::RateLimited),
        FaultKind::ProcessorAmbiguous => stripe(StripeFault::Ambiguous),
        FaultKind::EmailProviderDown => ses(SesFault::Down),
        FaultKind::EmailProviderThrottled => ses(SesFault::ThrottleRate),
        FaultKind::DbLatency => proxy(Mode::Latency(Duration::from_millis(f.ms.unwrap_or(200)))),
        FaultKind::DbBandwidth => proxy(Mode::Bandwidth(f.bytes_per_sec.unwrap_or(100_000))),
        FaultKind::DbRefuse => proxy(Mode::Refuse),
        FaultKind::DbReset => {
            if on {
                local.proxy.reset_all();
            }
        }
        FaultKind::PostgresRestart => {
            // What a restart looks like from the nodes: every connection cut, new
            // ones refused until the database is back.
            if on {
                local.proxy.set(Mode::Refuse);
                local.proxy.reset_all();
            } else {
                local.proxy.set(Mode::Pass);
            }
        }
        FaultKind::NodeKill => {
            let i = f.node.unwrap_or(0);
            if on {
                local.kill_9(i);
            } else {
                match local.spawn(i) {
                    Ok(_) => {
                        if let Err(e) = d.wait_node(i).await {
                            note(obs, format!("node {i} did not come back: {e:#}"));
                        }
                    }
                    Err(e) => note(obs, format!("node {i} could not be restarted: {e:#}")),
                }
            }
        }
        FaultKind::VerifierSelftestAckWithoutCommit => {}
    }
}

/// Adds the blast recipients leased right now (sent or being sent, outcome not yet
/// committed) to the bound: a fault that cuts a node from the database or kills it
/// may make exactly these go out twice once their lease lapses.
async fn count_in_flight(d: &Deployment, id: BlastId, what: &str, obs: &Observed) {
    let leased = d
        .store
        .recipient_state_counts(id)
        .await
        .map(|c| {
            c.into_iter()
                .filter(|(s, _)| *s == RecipientState::Sending)
                .map(|(_, n)| n)
                .sum::<i64>()
        })
        .unwrap_or(0);
    *obs.in_flight_at_faults
        .lock()
        .unwrap_or_else(|e| e.into_inner()) += leased;
    note(obs, format!("{what}: {leased} blast recipients in flight"));
}
