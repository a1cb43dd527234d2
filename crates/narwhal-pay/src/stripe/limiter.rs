//! Outbound pacing: keep one processor account within its requests per second by
//! making callers wait their turn, never by failing them.
//!
//! A [`Pacer`] is a token bucket in its "virtual scheduling" form (GCRA): it keeps
//! the time at which the next request would be due if requests were evenly spaced,
//! lets up to `burst` requests run ahead of that schedule, and hands every other
//! caller the instant it may go, which it then sleeps until. Turns are handed out in
//! the order callers ask, under a short lock that is never held across the sleep.
//! A caller that gives up while waiting leaves its slot unused, which only errs on
//! the slow side.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Paces requests to at most `rate` per second, with bursts of up to `burst`.
#[derive(Debug)]
pub struct Pacer {
    /// The spacing between requests at the steady rate.
    interval: Duration,
    /// How far ahead of the steady schedule a caller may go: `(burst - 1) * interval`.
    slack: Duration,
    /// When the next request is due on the steady schedule; `None` before the first.
    due: Mutex<Option<Instant>>,
}

impl Pacer {
    /// At most `per_second` requests a second (at least 1), bursts of up to `burst`
    /// (at least 1: strictly even spacing).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            slack: interval * (burst.max(1) - 1),
            due: Mutex::new(None),
        }
    }

    /// The spacing at the steady rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reserves the next turn and returns when it may start (now or later).
    fn reserve(&self, now: Instant) -> Instant {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let tat = due.map_or(now, |d| d.max(now));
        let start = tat.checked_sub(self.slack).map_or(now, |s| s.max(now));
        *due = Some(tat + self.interval);
        start
    }

    /// Waits for this caller's turn.
    pub async fn wait(&self) {
        let start = self.reserve(Instant::now());
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_callers_at_the_rate_after_the_burst() {
        let pacer = std::sync::Arc::new(Pacer::new(10, 3));
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..13 {
            let p = pacer.clone();
            handles.push(tokio::spawn(async move {
                p.wait().await;
                Instant::now()
            }));
        }
        let mut starts = Vec::new();
        for h in handles {
            if let Ok(t) = h.await {
                starts.push(t.duration_since(t0));
            }
        }
        starts.sort();
        assert_eq!(starts.len(), 13);
        // Three at once, then one every 100 ms: the 13th at 1 s.
        assert_eq!(&starts[..3], &[Duration::ZERO; 3]);
        assert_eq!(starts[3], Duration::from_millis(100));
        assert_eq!(starts[12], Duration::from_millis(1000));
        // Never more than 10 within any 1 s window beyond the burst of 3.
        for w in starts.windows(4) {
            assert!(w[3] - w[0] >= Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_refills_its_burst_but_no_more() {
        let pacer = Pacer::new(100, 2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t0 = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(Instant::now(), t0);
        pacer.wait().await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(10));
    }
}
