//! Group commit: the batches that arrive while a transaction commits are stored
//! together in the next one, so one durable sync serves many watchers (SQLite has one
//! writer and syncs on every commit; PostgreSQL is spared a WAL flush per request).
//!
//! Nothing is acknowledged before its transaction committed: each batch's caller
//! waits for its own outcomes. A group that fails as a whole is retried batch by
//! batch, so one bad batch gets its own error and takes no other with it. The queue
//! lives in one process but holds only requests still waiting for their answer,
//! which a client retries if the node dies.
//!
//! A batch every item of which an earlier commit of this node already decided (a
//! phone's retry of a stored batch) is answered from the node's [`IngestMemo`], with
//! the outcomes the database would give, without a transaction.
//!
//! On PostgreSQL the change clock other nodes poll is moved by a task of its own after
//! the commits, at most once every [`CLOCK_GAP`] for all of them, instead of by a
//! statement of its own after each commit. A watcher's answer never waits for it; the
//! node's own live figures are woken by the caller (see `LiveTurnout::nudge`).

use narwhal_store::turnout::{Outcome, ReportGroup, ReportIn};
use narwhal_store::turnout_memo::IngestMemo;
use narwhal_store::{Backend, Store, StoreError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Batches per transaction at most.
const MAX_GROUP: usize = 64;
/// Items per transaction at most.
const MAX_ITEMS: usize = 10_000;
/// The change clock moves at most this often for this node's commits (other nodes
/// poll it every 250 ms).
pub const CLOCK_GAP: Duration = Duration::from_millis(20);

struct Job {
    place: Option<String>,
    watcher_id: Option<i64>,
    channel: &'static str,
    items: Vec<ReportIn>,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

/// The group-commit queue of one node. Cheap to clone; workers start on first use.
#[derive(Clone)]
pub struct GroupCommit {
    store: Store,
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
    /// What this node's commits learned: a retry of a stored batch is answered from
    /// it without a transaction (see [`IngestMemo`]).
    memo: IngestMemo,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl GroupCommit {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            queue: Arc::new(OnceLock::new()),
            memo: IngestMemo::default(),
        }
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>(4096);
            let rx = Arc::new(Mutex::new(rx));
            // One writer on SQLite; on PostgreSQL a few transactions in flight.
            let workers = match self.store.backend() {
                Backend::Sqlite => 1,
                Backend::Postgres => 4,
            };
            // One pending bump at most: a commit that finds one pending is covered
            // by it, since that bump starts after the commit.
            let (clock, pending) = mpsc::channel::<()>(1);
            tokio::spawn(move_clock(self.store.clone(), pending));
            for _ in 0..workers {
                tokio::spawn(work(
                    self.store.clone(),
                    self.memo.clone(),
                    rx.clone(),
                    clock.clone(),
                ));
            }
            tx
        })
    }

    /// Stores one batch, together with whatever else is waiting; returns its outcomes
    /// once they are committed.
    pub async fn ingest(
        &self,
        place: Option<&str>,
        watcher_id: Option<i64>,
        channel: &'static str,
        items: Vec<ReportIn>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let known = self.memo.outcomes(&ReportGroup {
            place,
            watcher_id,
            channel,
            items: &items,
        });
        if let Some(outcomes) = known {
            // Every item was decided by an earlier commit: nothing to store.
            return Ok(outcomes);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            place: place.map(str::to_string),
            watcher_id,
            channel,
            items,
            reply,
        };
        if let Err(e) = self.sender().send(job).await {
            // No worker (the runtime is shutting down): store it directly.
            let j = e.0;
            return self
                .store
                .ingest_reports(j.place.as_deref(), j.watcher_id, j.channel, &j.items)
                .await;
        }
        answer
            .await
            .map_err(|_| StoreError::Invalid("the ingest stopped; send the batch again".into()))?
    }
}

/// Moves the change clock once per wake-up, then rests [`CLOCK_GAP`]; ends when
/// every worker has.
async fn move_clock(store: Store, mut pending: mpsc::Receiver<()>) {
    while pending.recv().await.is_some() {
        while let Err(e) = store.bump_turnout_clock().await {
            tracing::warn!(error = %e, "moving the turnout change clock failed; trying again");
            tokio::time::sleep(CLOCK_GAP).await;
        }
        tokio::time::sleep(CLOCK_GAP).await;
    }
}

async fn work(
    store: Store,
    memo: IngestMemo,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    clock: mpsc::Sender<()>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(j) => jobs.push(j),
                None => return,
            }
            let mut items = jobs[0].items.len();
            while jobs.len() < MAX_GROUP && items < MAX_ITEMS {
                match rx.try_recv() {
                    Ok(j) => {
                        items += j.items.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        let groups: Vec<ReportGroup<'_>> = jobs
            .iter()
            .map(|j| ReportGroup {
                place: j.place.as_deref(),
                watcher_id: j.watcher_id,
                channel: j.channel,
                items: &j.items,
            })
            .collect();
        match store
            .ingest_report_groups_unclocked(&groups, Some(&memo))
            .await
        {
            Ok((outs, bump)) => {
                drop(groups);
                if bump {
                    // Full: a bump is pending and covers this commit too.
                    let _ = clock.try_send(());
                }
                for (j, o) in jobs.into_iter().zip(outs) {
                    let _ = j.reply.send(Ok(o));
                }
            }
            Err(e) if jobs.len() == 1 => {
                drop(groups);
                if let Some(j) = jobs.pop() {
                    let _ = j.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batches = jobs.len(), "group commit failed; storing batch by batch");
                drop(groups);
                for j in jobs {
                    let r = store
                        .ingest_reports(j.place.as_deref(), j.watcher_id, j.channel, &j.items)
                        .await;
                    let _ = j.reply.send(r);
                }
            }
        }
    }
}
