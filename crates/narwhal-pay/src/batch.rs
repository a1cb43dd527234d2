//! Group commit: many concurrent requests, one durable transaction.
//!
//! A durable commit costs a disk flush (SQLite `synchronous=FULL`) or a WAL flush
//! (PostgreSQL), so a donation service that commits each gift alone is bounded by the
//! disk. A [`Batcher`] queues work from every concurrent request and lets a few worker
//! tasks take whatever is waiting (up to `max_batch`) as one batch: under load batches
//! grow and commits per second stay flat; when idle a batch is one item and no one
//! waits for a timer.
//!
//! Each caller gets its own item's result, and only after the batch's commit returned.
//! A batch that fails fails every item in it (the caller answers "try again"; donation
//! writes are idempotent by key, so a retry is safe).

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// An item, where its result goes, and the time after which it is turned away
/// unprocessed (callers that may be shed).
type Job<I, O> = (
    I,
    oneshot::Sender<Result<O, String>>,
    Option<tokio::time::Instant>,
);

/// Where a batcher's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// On the caller's runtime, beside the request handlers.
    Shared,
    /// On the process's one commit thread (see [`commit_thread`]).
    CommitThread,
}

/// The process's one commit thread, where SQLite's batches run (it lives with the
/// store, whose hub writes run there too: see [`narwhal_store::commit_thread`]).
pub use narwhal_store::commit_thread::commit_thread;

/// A queue of items processed in batches by `workers` tasks.
pub struct Batcher<I, O> {
    tx: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Spawns the workers. `f` gets a batch and must return one output per input, in
    /// order, or an error for the whole batch.
    pub fn spawn<F, Fut>(max_batch: usize, workers: usize, f: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, String>> + Send + 'static,
    {
        Self::spawn_on(Workers::Shared, max_batch, workers, f)
    }

    /// As [`Batcher::spawn`], with the workers where `on` says.
    pub fn spawn_on<F, Fut>(on: Workers, max_batch: usize, workers: usize, f: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, String>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel::<Job<I, O>>(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let f = Arc::new(f);
        for _ in 0..workers.max(1) {
            let rx = rx.clone();
            let f = f.clone();
            let fut = async move {
                loop {
                    let mut jobs: Vec<Job<I, O>> = Vec::new();
                    {
                        let mut guard = rx.lock().await;
                        match guard.recv().await {
                            Some(j) => jobs.push(j),
                            None => return,
                        }
                        while jobs.len() < max_batch {
                            match guard.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    // Items that waited past their deadline are turned away unprocessed:
                    // their callers answer "busy, retry" instead of waiting on.
                    let now = tokio::time::Instant::now();
                    let mut inputs = Vec::with_capacity(jobs.len());
                    let mut replies = Vec::with_capacity(jobs.len());
                    for (input, reply, deadline) in jobs {
                        if deadline.is_some_and(|d| d < now) {
                            let _ = reply.send(Err("busy: waited too long in the queue".into()));
                        } else {
                            inputs.push(input);
                            replies.push(reply);
                        }
                    }
                    if inputs.is_empty() {
                        continue;
                    }
                    let n = inputs.len();
                    match f(inputs).await {
                        Ok(outputs) if outputs.len() == n => {
                            for (reply, out) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(out));
                            }
                        }
                        Ok(outputs) => {
                            let e = format!("a batch of {n} gave {} results", outputs.len());
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            };
            // Without a commit thread (none could start), the shared runtime serves.
            match (on, commit_thread()) {
                (Workers::CommitThread, Some(h)) => drop(h.spawn(fut)),
                _ => drop(tokio::spawn(fut)),
            }
        }
        Self { tx }
    }

    /// Queues one item and waits for its result, unless the workers are so far behind
    /// that it would wait more than `wait` before they take it: then the caller is
    /// turned away (an `Err` starting with "busy"; nothing of the item was done)
    /// instead of joining an ever longer line.
    pub async fn submit_within(&self, input: I, wait: std::time::Duration) -> Result<O, String> {
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + wait;
        // A send dropped by the timeout queued nothing (tokio's send is cancel-safe).
        match tokio::time::timeout(wait, self.tx.send((input, reply, Some(deadline)))).await {
            Err(_) => {
                return Err(format!(
                    "busy: the queue had no room within {} ms",
                    wait.as_millis()
                ))
            }
            Ok(Err(_)) => return Err("the batch workers have stopped".to_string()),
            Ok(Ok(())) => {}
        }
        rx.await
            .map_err(|_| "the batch worker stopped before answering".to_string())?
    }

    /// Queues one item and waits for its result.
    pub async fn submit(&self, input: I) -> Result<O, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((input, reply, None))
            .await
            .map_err(|_| "the batch workers have stopped".to_string())?;
        rx.await
            .map_err(|_| "the batch worker stopped before answering".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_items_share_batches_and_each_gets_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b2 = batches.clone();
        let batcher = Batcher::spawn(64, 1, move |items: Vec<u32>| {
            let b2 = b2.clone();
            async move {
                b2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let mut handles = Vec::new();
        for i in 0..500u32 {
            let b = batcher.clone();
            handles.push(tokio::spawn(async move { (i, b.submit(i).await) }));
        }
        for h in handles {
            let (i, r) = h.await.unwrap();
            assert_eq!(r, Ok(i * 2));
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 100, "500 concurrent items took {n} batches");
    }

    #[tokio::test]
    async fn callers_that_would_wait_too_long_are_turned_away() {
        // One item per batch, and a worker stuck on its first batch.
        let (release, gate) = tokio::sync::watch::channel(false);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let batcher = Batcher::spawn(1, 1, move |items: Vec<u32>| {
            let mut gate = gate.clone();
            let seen = seen2.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                seen.lock().unwrap().extend(items.iter().copied());
                Ok(items)
            }
        });
        let ms = std::time::Duration::from_millis;
        // The worker holds item 0; items 1-3 wait in the queue (4 places) without a
        // deadline, and item 50 takes the last place with one.
        let mut waiting = Vec::new();
        for i in 0..4u32 {
            let b = batcher.clone();
            waiting.push(tokio::spawn(async move { b.submit(i).await }));
        }
        tokio::time::sleep(ms(50)).await;
        let b = batcher.clone();
        let late = tokio::spawn(async move { b.submit_within(50, ms(100)).await });
        tokio::time::sleep(ms(50)).await;
        // No room at all: turned away when its wait is up, not later.
        let started = std::time::Instant::now();
        let refused = batcher.submit_within(99, ms(100)).await;
        assert!(refused.unwrap_err().starts_with("busy"));
        assert!(started.elapsed() < ms(1500));
        // The worker moves only after item 50's wait is over: it is turned away
        // unprocessed, and everyone else gets their own answer.
        tokio::time::sleep(ms(100)).await;
        let _ = release.send(true);
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(w.await.unwrap(), Ok(i as u32));
        }
        assert!(late.await.unwrap().unwrap_err().starts_with("busy"));
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3]);
        // Not behind any more: taken at once.
        assert_eq!(batcher.submit_within(7, ms(100)).await, Ok(7));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let batcher = Batcher::spawn(8, 2, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>("disk full".to_string())
        });
        assert_eq!(batcher.submit(1).await, Err("disk full".to_string()));
    }
}
