//! Which processor a charge goes to: an ordered list of accounts, each behind a circuit
//! breaker fed by call outcomes and health checks.
//!
//! Failover is data here too: the router learns `Unavailable` (known not to have
//! charged), a lost answer (ambiguous: a timeout, a 5xx) or success from a call, and
//! `health()` results from its checker. A lost answer counts against the breaker, so
//! a processor that stops answering in time is skipped by *new* donations, but it is
//! never a reason to move the ambiguous donation itself on: the service settles that
//! one first, where it was sent (see [`crate::service`]).
//!
//! A breaker opens after `open_after` consecutive unavailable answers (or one failed
//! health check) and stays open for a cooldown that doubles up to `max_cooldown`; after
//! the cooldown one call is let through as a probe, and a success closes it.

use crate::processor::Processor;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive unavailable answers that open the breaker.
    pub open_after: u32,
    /// The first cooldown.
    pub cooldown: Duration,
    /// The longest cooldown.
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            open_after: 3,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(30),
        }
    }
}

/// A circuit breaker, pure: every method takes the time.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
}

/// What a breaker says of its processor now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Taking traffic.
    Closed,
    /// Not taking traffic until the cooldown ends.
    Open,
    /// Cooldown over: the next call is a probe.
    HalfOpen,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            failures: 0,
            open_until: None,
            cooldown: config.cooldown,
            probing: false,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go through now. In half-open state only one probe at a time.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.probing {
                    false
                } else {
                    self.probing = true;
                    true
                }
            }
        }
    }

    /// The processor answered (success, decline or refusal: it is up).
    pub fn record_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.cooldown = self.config.cooldown;
        self.probing = false;
    }

    /// The processor was unavailable (or a health check failed, with `force`).
    pub fn record_failure(&mut self, now: Instant, force: bool) {
        self.failures += 1;
        let was_probe = self.probing;
        self.probing = false;
        if force || was_probe || self.failures >= self.config.open_after {
            if was_probe {
                self.cooldown = (self.cooldown * 2).min(self.config.max_cooldown);
            }
            self.open_until = Some(now + self.cooldown);
        }
    }
}

/// One processor account in the route.
pub struct Route {
    /// The processor.
    pub processor: Arc<dyn Processor>,
    breaker: Mutex<Breaker>,
}

/// The ordered processors.
pub struct Router {
    routes: Vec<Route>,
}

/// A processor's health as staff see it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteHealth {
    /// The processor's configured name.
    pub name: String,
    /// Its breaker.
    pub state: BreakerState,
    /// Its place in the route (0 = primary).
    pub priority: usize,
}

impl Router {
    /// Processors in order of preference.
    pub fn new(processors: Vec<Arc<dyn Processor>>, config: BreakerConfig) -> Self {
        Self {
            routes: processors
                .into_iter()
                .map(|processor| Route {
                    processor,
                    breaker: Mutex::new(Breaker::new(config)),
                })
                .collect(),
        }
    }

    fn breaker(&self, i: usize) -> std::sync::MutexGuard<'_, Breaker> {
        match self.routes[i].breaker.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Indexes of the processors that may take a call now, in order.
    pub fn candidates(&self) -> Vec<usize> {
        let now = Instant::now();
        (0..self.routes.len())
            .filter(|&i| self.breaker(i).allow(now))
            .collect()
    }

    /// Whether any processor is up (closed or due for a probe).
    pub fn any_up(&self) -> bool {
        let now = Instant::now();
        (0..self.routes.len()).any(|i| self.breaker(i).state(now) != BreakerState::Open)
    }

    /// The processor at `i`.
    pub fn processor(&self, i: usize) -> &Arc<dyn Processor> {
        &self.routes[i].processor
    }

    /// The processor named `name`.
    pub fn by_name(&self, name: &str) -> Option<(usize, &Arc<dyn Processor>)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.processor.name() == name)
            .map(|(i, r)| (i, &r.processor))
    }

    /// Records that processor `i` answered.
    pub fn up(&self, i: usize) {
        self.breaker(i).record_success();
    }

    /// Records that processor `i` was unavailable.
    pub fn down(&self, i: usize) {
        self.breaker(i).record_failure(Instant::now(), false);
    }

    /// The processors' states, for staff pages and metrics.
    pub fn health(&self) -> Vec<RouteHealth> {
        let now = Instant::now();
        (0..self.routes.len())
            .map(|i| RouteHealth {
                name: self.routes[i].processor.name().to_string(),
                state: self.breaker(i).state(now),
                priority: i,
            })
            .collect()
    }

    /// Asks every processor whose breaker is not closed (and the primary) whether it
    /// is up, and updates the breakers. Run every few seconds by the service.
    pub async fn check_health(&self) {
        for i in 0..self.routes.len() {
            let now = Instant::now();
            let state = self.breaker(i).state(now);
            if state == BreakerState::Closed && i > 0 {
                continue;
            }
            match self.routes[i].processor.health().await {
                Ok(()) => self.up(i),
                Err(_) => self.breaker(i).record_failure(Instant::now(), true),
            }
        }
    }

    /// How many processors are configured.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let cfg = BreakerConfig {
            open_after: 3,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(8),
        };
        let mut b = Breaker::new(cfg);
        let t0 = Instant::now();
        b.record_failure(t0, false);
        b.record_failure(t0, false);
        assert!(b.allow(t0));
        b.record_failure(t0, false);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        // After the cooldown: one probe at a time.
        let t1 = t0 + Duration::from_secs(2);
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        // A failed probe reopens for twice as long.
        b.record_failure(t1, false);
        assert!(!b.allow(t1 + Duration::from_secs(3)));
        assert!(b.allow(t1 + Duration::from_secs(4)));
        b.record_success();
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(b.allow(t1));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new(BreakerConfig::default());
        let t = Instant::now();
        b.record_failure(t, false);
        b.record_failure(t, false);
        b.record_success();
        b.record_failure(t, false);
        assert_eq!(b.state(t), BreakerState::Closed);
        b.record_failure(t, true);
        assert_eq!(b.state(t), BreakerState::Open);
    }
}
