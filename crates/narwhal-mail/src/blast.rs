//! The blast worker: runs `blast.send` jobs.
//!
//! A job claims a slice of the blast's pending recipients (as many as the
//! [`Scheduler`] grants one account right now), renders each message, hands the slice to
//! that account's [`Provider::send_batch`], and records every outcome in the ledger in
//! one transaction before anything counts as sent. Between slices it renews its job
//! lease and re-reads the blast's state, so a pause or cancel stops it within one slice.
//!
//! Several nodes sending through one account share its limits on PostgreSQL: a grant of
//! the node's [`Scheduler`] is narrowed to what the account's bucket in the database
//! allows (`Store::take_send_tokens`, one round trip per slice), so together they stay
//! within its rate and 24-hour quota. SQLite serves one node, whose scheduler alone
//! limits.
//!
//! Several jobs (on one node or many) may run the same blast: claims never overlap. A
//! job whose node dies leaves its claimed slice leased; when the lease expires another
//! job claims those recipients again and the ledger counts them as `reclaimed`, the
//! bounded set that may have received a message twice.
//!
//! What happens to a message is decided by [`crate::provider::decide`]: throttled
//! messages go back to pending with a later `not_before` (never failed), transient
//! failures back off, message-level rejections fail with their reason, ambiguous answers
//! are set aside and never resent, and an account refused by its provider is taken out
//! of the rotation; when no account is left the blast pauses with the reason.
//!
//! Wiring into `narwhal serve`: build a [`BlastSender`] from the configured accounts and
//! call [`spawn`] beside the people worker with the same shutdown receiver.

use crate::provider::{decide, Content, Decision, MessageKey, RetryContext, SendOutcome};
use crate::provider::{RejectScope, ThrottleReason};
use crate::scheduler::{AccountSpec, BatchReport, Grant, Scheduler};
use crate::throttle::{ThrottleSpec, UnixMillis};
use crate::{OutgoingMessage, Provider};
use narwhal_domain::Email;
use narwhal_store::blasts::{
    BlastContent, BlastId, BlastState, Claim, ClaimedRecipient, Outcome, BLAST_JOB_KIND,
};
use narwhal_store::jobs::Job;
use narwhal_store::{now_ms, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The job kinds this worker runs.
pub const KINDS: &[&str] = &[BLAST_JOB_KIND];

/// The longest wait before retrying a transient failure while another account is up.
const OTHER_ACCOUNT_RETRY: Duration = Duration::from_millis(100);

/// How long granted messages may take to reach the provider (claim, render, request)
/// without the provider's bucket running short of ours.
pub const GRANT_HEADROOM: Duration = Duration::from_millis(250);

/// One configured sending account.
#[derive(Clone)]
pub struct Account {
    /// The client.
    pub provider: Arc<dyn Provider>,
    /// Its share of traffic.
    pub weight: u32,
    /// Its limits (from config, or from what the provider reports).
    pub spec: ThrottleSpec,
}

/// Timing knobs.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// This node's name (job lease owner).
    pub node_id: String,
    /// How long a claimed job stays ours without a heartbeat.
    pub job_lease_ms: i64,
    /// How long a claimed slice of recipients stays ours: past it, another job takes
    /// them over (and counts them as possible duplicates). Must exceed a provider
    /// request's timeout.
    pub slice_lease_ms: i64,
    /// Transient failures on one account before failing over.
    pub max_attempts: u32,
    /// The most recipients one slice claims (fewer when the account's bucket has less
    /// room). A slice is sent as concurrent requests of the provider's batch size and
    /// recorded in one transaction, so bigger slices mean fewer round trips.
    pub slice_max: u32,
    /// Slices one job keeps in flight at once (claiming, rendering, sending and
    /// recording overlap). The duplicate window after a crash is at most
    /// `lanes * slice_max` recipients per job.
    pub lanes: usize,
    /// Footer, unsubscribe links and headers for every message.
    pub compose: Compose,
    /// When immediate transient SMTP rejections suppress an address (like transient
    /// bounces reported later).
    pub transient: crate::feedback::TransientPolicy,
}

/// What every message carries besides its content: the sender's name and postal
/// address in the footer, and a signed unsubscribe link (in the footer and in the
/// RFC 8058 `List-Unsubscribe` headers).
#[derive(Clone, Debug)]
pub struct Compose {
    pub sender: crate::template::Sender,
    /// The one-click unsubscribe URL prefix; the recipient's token is appended
    /// (`https://act.example.org/u/`).
    pub unsubscribe_url: String,
    /// An address for mailto unsubscribes, if the campaign has one.
    pub unsubscribe_mailto: Option<String>,
    pub signer: crate::unsubscribe::UnsubscribeSigner,
}

impl SendConfig {
    /// Defaults: 60 s job lease, 30 s slice lease (twice SES's request timeout), 3
    /// attempts, slices of up to 1,000 recipients, 4 in flight.
    pub fn new(node_id: impl Into<String>, compose: Compose) -> Self {
        Self {
            node_id: node_id.into(),
            job_lease_ms: 60_000,
            slice_lease_ms: 30_000,
            max_attempts: 3,
            slice_max: 1_000,
            lanes: 4,
            compose,
            transient: crate::feedback::TransientPolicy::default(),
        }
    }
}

/// Everything a blast job needs: the store, the accounts and their shared scheduler.
/// Cheap to clone; one per process, so that all jobs share the accounts' throttles.
#[derive(Clone)]
pub struct BlastSender {
    store: Store,
    accounts: Arc<Vec<Account>>,
    scheduler: Arc<Mutex<Scheduler>>,
    /// Ledger ids of the accounts, by index (filled on first use).
    account_ids: Arc<tokio::sync::OnceCell<Vec<i32>>>,
    config: SendConfig,
    /// Applies immediate SMTP rejections as bounces (consent and suppressions).
    rejections: crate::feedback::Feedback,
}

/// Why a job stopped with an error: (message, permanent).
pub type JobError = (String, bool);

impl BlastSender {
    /// A sender over these accounts. Their buckets keep [`GRANT_HEADROOM`] below the
    /// providers' (see [`ThrottleSpec::with_headroom`]).
    pub fn new(store: Store, mut accounts: Vec<Account>, config: SendConfig) -> Self {
        for a in &mut accounts {
            a.spec = a.spec.with_headroom(GRANT_HEADROOM);
        }
        let specs = accounts
            .iter()
            .map(|a| AccountSpec {
                name: a.provider.name().to_string(),
                weight: a.weight,
                spec: a.spec,
            })
            .collect();
        // Rejections never come through SNS: the verifier is never asked.
        let rejections = crate::feedback::Feedback::new(
            store.clone(),
            Arc::new(crate::feedback::sns::SnsVerifier::new(
                crate::feedback::sns::CertHosts::Aws,
                Vec::new(),
            )),
            Some(config.compose.signer.clone()),
            config.transient,
        );
        Self {
            store,
            scheduler: Arc::new(Mutex::new(Scheduler::new(specs, UnixMillis::now()))),
            accounts: Arc::new(accounts),
            account_ids: Arc::new(tokio::sync::OnceCell::new()),
            config,
            rejections,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configured accounts, in order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Footer, unsubscribe links and signer.
    pub fn compose(&self) -> &Compose {
        &self.config.compose
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Estimated time to finish `pending` messages with the accounts' rates.
    pub fn eta(&self, pending: u64) -> Option<Duration> {
        self.sched().eta(pending, UnixMillis::now())
    }

    /// The limits of `account` to share with other nodes through the database, when
    /// the store is PostgreSQL and the account has limits at all.
    fn shared_limits(&self, account: usize) -> Option<narwhal_store::throttles::SharedLimits> {
        let spec = self.accounts.get(account)?.spec;
        (self.store.shares_send_tokens() && !spec.is_unlimited()).then(|| {
            narwhal_store::throttles::SharedLimits {
                limit: spec.limit(),
                period_ms: spec.period().millis(),
                burst: spec.burst(),
                daily: spec.daily(),
            }
        })
    }

    async fn ids(&self) -> Result<&Vec<i32>, narwhal_store::StoreError> {
        self.account_ids
            .get_or_try_init(|| async {
                let mut v = Vec::with_capacity(self.accounts.len());
                for a in self.accounts.iter() {
                    v.push(self.store.mail_account_id(a.provider.name()).await?);
                }
                Ok(v)
            })
            .await
    }
}

/// Runs `blast.send` jobs until `shutdown` turns true. A job in progress at shutdown
/// stops between slices; its lease expires and another node resumes it.
pub fn spawn(
    sender: BlastSender,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let store = sender.store.clone();
        let node = sender.config.node_id.clone();
        let lease = sender.config.job_lease_ms;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match store.claim_job(KINDS, &node, lease).await {
                Ok(Some(job)) => {
                    let id = job.id;
                    let r = match run_blast_job(&sender, &job, &shutdown).await {
                        Ok(result) => store.complete_job(id, &node, &result).await.map(|_| ()),
                        Err((msg, true)) => {
                            tracing::warn!(job.id = %id, error = %msg, "blast job failed");
                            store.fail_job(id, &node, &msg, 2_000, true).await
                        }
                        // A blast is resumable: a transient failure (the database
                        // blinked) puts it back without spending an attempt, so it
                        // cannot fail for good and leave the blast stuck in `sending`.
                        Err((msg, false)) => {
                            tracing::warn!(job.id = %id, error = %msg, "blast job interrupted; requeued");
                            store.requeue_job(id, &node, &msg, 2_000).await.map(|_| ())
                        }
                    };
                    if let Err(e) = r {
                        tracing::error!(job.id = %id, error = %e, "could not record blast job outcome");
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "blast job claim failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// What one job did, returned as its result.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct JobReport {
    /// Messages accepted by this job.
    pub sent: i64,
    /// Recipients failed by this job.
    pub failed: i64,
    /// Recipients requeued (throttled or backing off).
    pub retried: i64,
    /// Slices sent.
    pub slices: i64,
}

fn store_err(e: narwhal_store::StoreError) -> JobError {
    (e.to_string(), false)
}

/// Runs one `blast.send` job: sends until the blast is done, paused or cancelled, or
/// `shutdown` turns true (then it returns an error that is not permanent, so the job is
/// retried).
///
/// The job runs [`SendConfig::lanes`] lanes at once, each a loop of grant, claim,
/// render, send, record: while one lane waits for the provider, another renders or
/// writes the ledger. Claims never overlap, so lanes need no coordination beyond the
/// scheduler (which hands out tokens) and a shared cursor.
pub async fn run_blast_job(
    sender: &BlastSender,
    job: &Job,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<serde_json::Value, JobError> {
    let id = job.payload["blast_id"]
        .as_i64()
        .map(BlastId)
        .ok_or(("payload lacks blast_id".to_string(), true))?;
    let store = &sender.store;
    let cfg = &sender.config;
    let blast = store.blast(id).await.map_err(store_err)?;
    if blast.state == BlastState::Scheduled {
        store.start_blast(id).await.map_err(store_err)?;
    } else if blast.state != BlastState::Sending {
        return Ok(serde_json::json!({ "stopped": blast.state.as_str() }));
    }
    let templates = match Templates::compile(&blast.content, &cfg.compose.sender) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("template: {e}");
            store
                .pause_blast(id, Some(&reason))
                .await
                .map_err(store_err)?;
            return Ok(serde_json::json!({ "paused": reason }));
        }
    };
    let from =
        Email::parse(&blast.from_email).map_err(|e| (format!("sender address: {e}"), true))?;
    store.materialize_recipients(id).await.map_err(store_err)?;
    if sender.accounts.is_empty() {
        store
            .pause_blast(id, Some("no provider account is configured"))
            .await
            .map_err(store_err)?;
        return Ok(serde_json::json!({ "paused": "no account" }));
    }
    let account_ids = sender.ids().await.map_err(store_err)?.clone();
    let job_ctx = Arc::new(JobCtx {
        sender: sender.clone(),
        job: job.id,
        blast: id,
        from,
        templates: Arc::new(templates),
        account_ids,
        shutdown: shutdown.clone(),
        shared: Mutex::new(LaneShared::default()),
        last_heartbeat: std::sync::atomic::AtomicI64::new(0),
    });
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..cfg.lanes.max(1) {
        let c = job_ctx.clone();
        lanes.spawn(async move { c.lane().await });
    }
    while let Some(r) = lanes.join_next().await {
        if let Err(e) = r {
            job_ctx.stop(Stop::Error((format!("lane: {e}"), false)));
        }
    }
    let shared = job_ctx.lock();
    let report = shared.report;
    match shared.stop.clone() {
        Some(Stop::Done) => Ok(serde_json::json!({ "done": true, "report": report })),
        Some(Stop::Paused(reason)) => Ok(serde_json::json!({ "paused": reason, "report": report })),
        Some(Stop::Stopped(state)) => {
            Ok(serde_json::json!({ "stopped": state.as_str(), "report": report }))
        }
        Some(Stop::Error(e)) => Err(e),
        None => Err(("lanes ended without a reason".into(), false)),
    }
}

/// Why a job's lanes stop.
#[derive(Clone, Debug)]
enum Stop {
    Done,
    Paused(String),
    Stopped(BlastState),
    Error(JobError),
}

#[derive(Default)]
struct LaneShared {
    report: JobReport,
    /// The highest person id claimed so far (the next claim starts after it).
    cursor: Option<narwhal_domain::PersonId>,
    stop: Option<Stop>,
}

/// What a job's lanes share.
struct JobCtx {
    sender: BlastSender,
    job: narwhal_domain::JobId,
    blast: BlastId,
    from: Email,
    templates: Arc<Templates>,
    account_ids: Vec<i32>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    shared: Mutex<LaneShared>,
    /// When the job lease was last renewed (ms).
    last_heartbeat: std::sync::atomic::AtomicI64,
}

impl JobCtx {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneShared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the first reason to stop; later ones are ignored.
    fn stop(&self, why: Stop) {
        let mut s = self.lock();
        if s.stop.is_none() {
            s.stop = Some(why);
        }
    }

    fn stopping(&self) -> bool {
        self.lock().stop.is_some()
    }

    /// Renews the job lease if a third of it has passed since the last renewal (one
    /// lane does it; the others go on). `false` if the lease was lost.
    async fn heartbeat(&self) -> Result<bool, JobError> {
        use std::sync::atomic::Ordering;
        let cfg = &self.sender.config;
        let now = now_ms();
        let last = self.last_heartbeat.load(Ordering::Acquire);
        if now - last < cfg.job_lease_ms / 3
            || self
                .last_heartbeat
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(true);
        }
        let done = {
            let s = self.lock();
            s.report.sent + s.report.failed
        };
        self.sender
            .store
            .heartbeat_job(self.job, &cfg.node_id, cfg.job_lease_ms, done, 0)
            .await
            .map_err(store_err)
    }

    /// On PostgreSQL, narrows a grant of the node's scheduler to what the account's
    /// shared bucket allows (other nodes draw from it too): one round trip per slice.
    /// `None` when it allows nothing now; the account is then held until it has room.
    async fn take_shared(&self, account: usize, n: u32) -> Result<Option<u32>, JobError> {
        let sender = &self.sender;
        let Some(limits) = sender.shared_limits(account) else {
            return Ok(Some(n));
        };
        let name = sender.accounts[account].provider.name();
        let g = sender
            .store
            .take_send_tokens(name, &limits, n, now_ms())
            .await
            .map_err(store_err)?;
        if g.granted < n {
            let mut s = sender.sched();
            let now = UnixMillis::now();
            s.give_back(account, n - g.granted, now);
            if g.granted == 0 {
                s.hold(
                    account,
                    UnixMillis::new(u64::try_from(g.retry_at).unwrap_or(0)),
                    now,
                );
                return Ok(None);
            }
        }
        Ok(Some(g.granted))
    }

    async fn lane(&self) {
        if let Err(e) = self.lane_loop().await {
            self.stop(Stop::Error(e));
        }
    }

    async fn lane_loop(&self) -> Result<(), JobError> {
        let sender = &self.sender;
        let store = &sender.store;
        let cfg = &sender.config;
        let id = self.blast;
        loop {
            if self.stopping() {
                return Ok(());
            }
            if *self.shutdown.borrow() {
                return Err(("shutting down".into(), false));
            }
            if !self.heartbeat().await? {
                return Err(("lost the job lease".into(), false));
            }
            let state = store.blast(id).await.map_err(store_err)?.state;
            if state != BlastState::Sending {
                self.stop(Stop::Stopped(state));
                return Ok(());
            }
            let grant = sender
                .sched()
                .grant(cfg.slice_max.max(1), UnixMillis::now());
            let (account, n) = match grant {
                Grant::Send { account, n } => (account, n),
                Grant::Wait { until } => {
                    let wait = until.as_millis().saturating_sub(now_ms().max(0) as u64);
                    tokio::time::sleep(Duration::from_millis(wait.clamp(1, 500))).await;
                    continue;
                }
            };
            let Some(n) = self.take_shared(account, n).await? else {
                continue;
            };
            let cursor = self.lock().cursor;
            let claim = store
                .claim_recipients(id, cursor, i64::from(n), cfg.slice_lease_ms)
                .await
                .map_err(store_err)?;
            let unused = n.saturating_sub(u32::try_from(claim.recipients.len()).unwrap_or(n));
            if unused > 0 {
                sender.sched().give_back(account, unused, UnixMillis::now());
                // Best effort: failing here must not drop the slice just claimed (it
                // would stay leased, be sent again when the lease ends, and be counted
                // as a possible duplicate); tokens not returned only slow the bucket.
                if let Some(limits) = sender.shared_limits(account) {
                    let name = sender.accounts[account].provider.name();
                    if let Err(e) = store
                        .give_back_send_tokens(name, &limits, unused, now_ms())
                        .await
                    {
                        tracing::warn!(blast.id = %id, error = %e, "could not give unused send tokens back");
                    }
                }
            }
            if claim.recipients.is_empty() {
                if cursor.is_some() {
                    let mut s = self.lock();
                    if s.cursor == cursor {
                        s.cursor = None;
                    }
                    continue;
                }
                if store
                    .finish_blast_if_complete(id)
                    .await
                    .map_err(store_err)?
                {
                    tracing::info!(blast.id = %id, "blast done");
                    self.stop(Stop::Done);
                    return Ok(());
                }
                // Recipients waiting for a throttle or backoff, or in flight elsewhere.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            {
                let mut s = self.lock();
                s.cursor = s.cursor.max(claim.last);
            }
            let outcomes = send_slice(
                sender,
                &claim,
                account,
                self.account_ids[account],
                &self.from,
                &self.templates,
            )
            .await;
            // Bounces first: if this node dies before the outcomes are recorded, the
            // slice is sent again and the same rejection is recorded once.
            for (person, email, reply) in &outcomes.smtp_rejections {
                sender
                    .rejections
                    .ingest_smtp_reply(email, reply, id, *person)
                    .await
                    .map_err(|e| (format!("recording an SMTP rejection: {e}"), false))?;
            }
            let rec = store
                .record_outcomes(&claim, &outcomes.outcomes)
                .await
                .map_err(store_err)?;
            {
                let mut s = self.lock();
                s.report.sent += rec.sent;
                s.report.failed += rec.failed;
                s.report.retried += rec.retried;
                s.report.slices += 1;
            }
            if let Some(reason) = outcomes.account_refused {
                if sender.sched().all_down(UnixMillis::now()) {
                    let reason = format!("no provider account can send: {reason}");
                    tracing::warn!(blast.id = %id, reason = %reason, "pausing blast");
                    // Another lane may have paused it already.
                    if let Err(e) = store.pause_blast(id, Some(&reason)).await {
                        tracing::debug!(error = %e, "pause");
                    }
                    self.stop(Stop::Paused(reason));
                    return Ok(());
                }
            }
        }
    }
}

struct SliceResult {
    outcomes: Vec<(narwhal_domain::PersonId, Outcome)>,
    account_refused: Option<String>,
    /// Recipients a receiving server refused with an SMTP reply, and the reply: they
    /// are bounces (RFC 3463 classifies them), applied to consent and suppressions.
    smtp_rejections: Vec<(narwhal_domain::PersonId, Email, String)>,
}

/// Renders a slice and hands it to the account in requests of at most
/// [`Provider::max_batch`] messages, all at once.
async fn send_slice(
    sender: &BlastSender,
    claim: &Claim,
    account: usize,
    account_id: i32,
    from: &Email,
    templates: &Templates,
) -> SliceResult {
    let mut outcomes = Vec::with_capacity(claim.recipients.len());
    let mut messages = Vec::with_capacity(claim.recipients.len());
    let mut sent_for: Vec<&ClaimedRecipient> = Vec::with_capacity(claim.recipients.len());
    for r in &claim.recipients {
        if !r.eligible {
            outcomes.push((r.person_id, Outcome::Skipped));
            continue;
        }
        let to = match r.email.as_deref().map(Email::parse) {
            Some(Ok(e)) => e,
            _ => {
                outcomes.push((
                    r.person_id,
                    Outcome::Failed {
                        account: None,
                        reason: "invalid recipient address".into(),
                    },
                ));
                continue;
            }
        };
        match render(templates, r, claim.blast_id, &sender.config.compose) {
            Ok(content) => {
                messages.push(OutgoingMessage {
                    key: MessageKey(u64::try_from(r.person_id.0).unwrap_or(0)),
                    from: from.clone(),
                    to,
                    content,
                });
                sent_for.push(r);
            }
            Err(e) => outcomes.push((
                r.person_id,
                Outcome::Failed {
                    account: None,
                    reason: format!("template: {e}"),
                },
            )),
        }
    }
    if messages.is_empty() {
        return SliceResult {
            outcomes,
            account_refused: None,
            smtp_rejections: Vec::new(),
        };
    }
    let provider = &sender.accounts[account].provider;
    let results = send_chunks(provider, messages).await;
    let now = UnixMillis::now();
    let batch = summarize(&results);
    let other = {
        let mut s = sender.sched();
        s.report(account, &batch, now);
        s.other_up(account, now)
    };
    let now_i = now_ms();
    let mut smtp_rejections = Vec::new();
    for (r, o) in sent_for.iter().zip(results.iter()) {
        let ctx = RetryContext {
            attempts: u32::try_from(r.attempts + 1).unwrap_or(u32::MAX),
            max_attempts: sender.config.max_attempts,
            other_account_available: other,
        };
        let after = |d: Duration| now_i + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
        let ledger = match (decide(o, &ctx), o) {
            (
                Decision::Done,
                SendOutcome::Accepted {
                    provider_message_id,
                },
            ) => Outcome::Sent {
                account: account_id,
                message_id: Some(provider_message_id.clone()),
            },
            (Decision::Done, _) => Outcome::Retry {
                not_before: now_i,
                attempt: false,
                throttled: false,
            },
            // With another account up, the retry need not wait out this account's
            // backoff: the scheduler routes it wherever there is room.
            (Decision::RetrySame { after: d }, _) => Outcome::Retry {
                not_before: after(if other { d.min(OTHER_ACCOUNT_RETRY) } else { d }),
                attempt: true,
                throttled: false,
            },
            (Decision::WaitAndRetry { after: d }, _) => Outcome::Retry {
                not_before: after(d),
                attempt: false,
                throttled: true,
            },
            (Decision::FailOver, SendOutcome::Throttled { .. }) => Outcome::Retry {
                not_before: now_i,
                attempt: false,
                throttled: true,
            },
            (Decision::FailOver, SendOutcome::TransientError { .. }) => Outcome::Retry {
                not_before: now_i,
                attempt: true,
                throttled: false,
            },
            (Decision::FailOver, _) => Outcome::Retry {
                not_before: now_i,
                attempt: false,
                throttled: false,
            },
            (Decision::GiveUp, SendOutcome::Rejected { reason, scope }) => {
                if *scope == crate::provider::RejectScope::Message
                    && crate::feedback::dsn::classify_smtp_reply(reason).is_some()
                {
                    if let Some(Ok(to)) = r.email.as_deref().map(Email::parse) {
                        smtp_rejections.push((r.person_id, to, reason.clone()));
                    }
                }
                Outcome::Failed {
                    account: Some(account_id),
                    reason: reason.clone(),
                }
            }
            (Decision::GiveUp, other) => Outcome::Failed {
                account: Some(account_id),
                reason: other.label().to_string(),
            },
            (Decision::Park, SendOutcome::Ambiguous { reason }) => Outcome::Ambiguous {
                account: account_id,
                reason: reason.clone(),
            },
            // Parked for the account (refused, or transient with nowhere else to go):
            // keep the recipient pending and back off; the blast pauses if no account
            // is left.
            (Decision::Park, _) => Outcome::Retry {
                not_before: after(crate::provider::backoff(ctx.attempts)),
                attempt: false,
                throttled: false,
            },
        };
        outcomes.push((r.person_id, ledger));
    }
    let account_refused = match batch {
        BatchReport::AccountRefused(reason) => Some(reason),
        _ => None,
    };
    SliceResult {
        outcomes,
        account_refused,
        smtp_rejections,
    }
}

/// Sends `messages` through `provider` in requests of at most its batch size, all at
/// once; outcomes in the order of `messages`. A request whose task died counts as
/// ambiguous (it may have gone out).
async fn send_chunks(
    provider: &Arc<dyn Provider>,
    messages: Vec<OutgoingMessage>,
) -> Vec<SendOutcome> {
    let size = provider.max_batch().max(1);
    if messages.len() <= size {
        return provider.send_batch(&messages).await;
    }
    let mut sizes = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    let mut rest = messages;
    while !rest.is_empty() {
        let tail = rest.split_off(size.min(rest.len()));
        let chunk = std::mem::replace(&mut rest, tail);
        let p = provider.clone();
        let i = sizes.len();
        sizes.push(chunk.len());
        set.spawn(async move { (i, p.send_batch(&chunk).await) });
    }
    let mut parts: Vec<Option<Vec<SendOutcome>>> = vec![None; sizes.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, o)) = r {
            parts[i] = Some(o);
        }
    }
    let mut out = Vec::with_capacity(sizes.iter().sum());
    for (part, n) in parts.into_iter().zip(sizes) {
        let mut o = part.unwrap_or_default();
        o.resize(
            n,
            SendOutcome::Ambiguous {
                reason: "the send task ended without an answer".into(),
            },
        );
        out.extend(o);
    }
    out
}

/// One summary of a batch for the scheduler's health and throttle bookkeeping.
fn summarize(results: &[SendOutcome]) -> BatchReport {
    let mut throttle: Option<ThrottleReason> = None;
    let mut refused: Option<String> = None;
    let mut failed: Option<String> = None;
    for o in results {
        match o {
            SendOutcome::Accepted { .. } => return BatchReport::Accepted,
            SendOutcome::Throttled { reason } => {
                if throttle.is_none() || *reason == ThrottleReason::DailyQuota {
                    throttle = Some(reason.clone());
                }
            }
            SendOutcome::Rejected {
                scope: RejectScope::Account,
                reason,
            } => refused = Some(reason.clone()),
            SendOutcome::Rejected { .. } => {}
            SendOutcome::TransientError { reason } | SendOutcome::Ambiguous { reason } => {
                failed = Some(reason.clone())
            }
        }
    }
    if let Some(r) = refused {
        BatchReport::AccountRefused(r)
    } else if let Some(t) = throttle {
        BatchReport::Throttled(t)
    } else if let Some(f) = failed {
        BatchReport::Failed(f)
    } else {
        BatchReport::Neutral
    }
}

/// A blast's templates, compiled and checked once per job (see [`crate::template`]).
pub struct Templates {
    compiled: crate::template::Compiled,
}

impl Templates {
    /// Compiles subject, text and HTML; an error names the part, line and column.
    pub fn compile(
        content: &BlastContent,
        sender: &crate::template::Sender,
    ) -> Result<Self, String> {
        let BlastContent::Inline {
            subject,
            text,
            html,
        } = content
        else {
            return Err("stored templates are not supported yet".into());
        };
        let src = crate::template::TemplateSource {
            subject: subject.clone(),
            text: text.clone().unwrap_or_default(),
            html: html.clone(),
        };
        let compiled =
            crate::template::Compiled::compile(&src, sender).map_err(|e| e.to_string())?;
        Ok(Self { compiled })
    }
}

/// Renders one recipient's message with the footer, their signed unsubscribe link and
/// the one-click headers: the one place a blast turns into content.
pub fn render(
    t: &Templates,
    r: &ClaimedRecipient,
    blast: BlastId,
    compose: &Compose,
) -> Result<Content, String> {
    let custom: std::collections::BTreeMap<String, String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&r.custom)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
    let url = format!(
        "{}{}",
        compose.unsubscribe_url,
        compose.signer.token(blast.0, r.person_id.0)
    );
    let vars = crate::template::RecipientVars {
        first_name: r.first_name.clone(),
        last_name: r.last_name.clone(),
        email: r.email.clone().unwrap_or_default(),
        city: r.city.clone(),
        state: r.state.clone(),
        zip: r.zip.clone(),
        custom,
        unsubscribe_url: url.clone(),
        ..Default::default()
    };
    let out = t.compiled.render(&vars).map_err(|e| e.to_string())?;
    let headers =
        crate::unsubscribe::list_unsubscribe_headers(&url, compose.unsubscribe_mailto.as_deref())
            .into_iter()
            .map(|(name, value)| crate::provider::Header { name, value })
            .collect();
    Ok(Content::Simple {
        subject: out.subject,
        text: Some(out.text),
        html: out.html,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use narwhal_domain::PersonId;

    fn recipient() -> ClaimedRecipient {
        ClaimedRecipient {
            person_id: PersonId(7),
            email: Some("ada@example.com".into()),
            first_name: Some("Ada".into()),
            last_name: None,
            city: None,
            state: None,
            zip: None,
            custom: r#"{"ward":"3"}"#.into(),
            attempts: 0,
            eligible: true,
        }
    }

    fn compose() -> Compose {
        Compose {
            sender: crate::template::Sender {
                name: "Friends of Ada".into(),
                postal_address: "PO Box 1, Columbus OH".into(),
            },
            unsubscribe_url: "https://act.example.org/u/".into(),
            unsubscribe_mailto: Some("unsubscribe@act.example.org".into()),
            signer: crate::unsubscribe::UnsubscribeSigner::new(b"test-secret-test-secret-test-sec")
                .unwrap(),
        }
    }

    #[test]
    fn renders_person_fields_and_escapes_html() {
        let c = BlastContent::Inline {
            subject: "Hi {{ first_name }}".into(),
            text: Some(
                "Ward {{ custom.ward }}{% if last_name %} {{ last_name }}{% endif %}".into(),
            ),
            html: Some("<p>{{ first_name }}</p>".into()),
        };
        let t = Templates::compile(&c, &compose().sender).unwrap();
        let mut r = recipient();
        r.first_name = Some("<b>Ada</b>".into());
        let Content::Simple {
            subject,
            text,
            html,
            headers,
        } = render(&t, &r, BlastId(5), &compose()).unwrap()
        else {
            panic!()
        };
        assert_eq!(subject, "Hi <b>Ada</b>");
        let text = text.unwrap();
        assert!(text.starts_with("Ward 3\n\n--\nFriends of Ada\nPO Box 1, Columbus OH\nUnsubscribe: https://act.example.org/u/"), "{text}");
        let html = html.unwrap();
        assert!(
            html.starts_with("<p>&lt;b&gt;Ada&lt;&#x2f;b&gt;</p>"),
            "{html}"
        );
        // The link in the footer and in the headers names this blast and person.
        let token = text.rsplit("/u/").next().unwrap().trim();
        assert_eq!(compose().signer.verify(token), Ok((5, 7)));
        assert_eq!(headers[0].name, "List-Unsubscribe");
        assert!(
            headers[0].value.contains(token)
                && headers[0]
                    .value
                    .contains("mailto:unsubscribe@act.example.org")
        );
        assert_eq!(headers[1].value, "List-Unsubscribe=One-Click");
    }

    #[test]
    fn a_broken_template_is_refused_before_sending() {
        let c = BlastContent::Inline {
            subject: "Hi {{ first_name".into(),
            text: None,
            html: None,
        };
        let e = Templates::compile(&c, &compose().sender).err().unwrap();
        assert!(e.starts_with("subject: line 1, column"), "{e}");
    }

    #[test]
    fn batch_summaries() {
        let acc = SendOutcome::Accepted {
            provider_message_id: "m".into(),
        };
        let thr = SendOutcome::Throttled {
            reason: ThrottleReason::Rate,
        };
        let bad = SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason: "bad key".into(),
        };
        let t = SendOutcome::TransientError {
            reason: "503".into(),
        };
        assert_eq!(summarize(&[thr.clone(), acc]), BatchReport::Accepted);
        assert_eq!(
            summarize(&[thr.clone(), t.clone()]),
            BatchReport::Throttled(ThrottleReason::Rate)
        );
        assert_eq!(
            summarize(&[bad, thr]),
            BatchReport::AccountRefused("bad key".into())
        );
        assert_eq!(summarize(&[t]), BatchReport::Failed("503".into()));
        assert_eq!(summarize(&[]), BatchReport::Neutral);
    }
}
