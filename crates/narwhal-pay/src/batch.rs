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

type Job<I, O> = (I, oneshot::Sender<Result<O, String>>);

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
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel::<Job<I, O>>(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let f = Arc::new(f);
        for _ in 0..workers.max(1) {
            let rx = rx.clone();
            let f = f.clone();
            tokio::spawn(async move {
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
                    let (inputs, replies): (Vec<I>, Vec<_>) = jobs.into_iter().unzip();
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
            });
        }
        Self { tx }
    }

    /// Queues one item and waits for its result.
    pub async fn submit(&self, input: I) -> Result<O, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((input, reply))
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
    async fn a_failed_batch_fails_each_of_its_items() {
        let batcher = Batcher::spawn(8, 2, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>("disk full".to_string())
        });
        assert_eq!(batcher.submit(1).await, Err("disk full".to_string()));
    }
}
