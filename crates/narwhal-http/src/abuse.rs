//! Card-testing defence for the donation intake.
//!
//! Fraudsters test stolen cards with bursts of small gifts. Every intake attempt (the
//! public page, the API, a pledge completion) passes [`Guard::admit`] with the keys it
//! can name: the client IP, the donor's email, and the card (the processor's card
//! fingerprint once a charge has reported one, the payment method token before that).
//! - Each key may make at most N attempts per window (per-key limits).
//! - A key with `declines_before_block` declines inside the window is blocked for
//!   `block_for`: its attempts are refused (429 with `Retry-After`) before any
//!   processor is called, so a blocked source costs us nothing and learns nothing.
//! - A key with a decline or two is *suspicious*: when a [`Challenge`] (a CAPTCHA) is
//!   configured, the page shows it and the gift needs its answer.
//!
//! The counters live in this node's memory: a campaign behind several nodes gets
//! per-node limits (a burst spread evenly over `n` nodes gets `n` times the budget).
//! That is deliberate: the limiter sits on the hot path and must not cost a database
//! write per attempt. Declines are also in the database (`donations.state =
//! 'declined'`, with `client_ip`), for staff pages and a stricter shared policy later.

use narwhal_mail::provider::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits, all configurable (`[donations.abuse]`).
#[derive(Clone, Debug)]
pub struct AbuseConfig {
    /// The window the counts below are over.
    pub window: Duration,
    /// Attempts per client IP per window.
    pub per_ip: u32,
    /// Attempts per donor email per window.
    pub per_email: u32,
    /// Attempts per card (fingerprint or token) per window.
    pub per_card: u32,
    /// Declines inside the window after which a key is blocked.
    pub declines_before_block: u32,
    /// How long a block lasts.
    pub block_for: Duration,
    /// Declines inside the window after which a key is suspicious (challenge shown).
    pub suspicious_after: u32,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            per_ip: 30,
            per_email: 10,
            per_card: 5,
            declines_before_block: 5,
            block_for: Duration::from_secs(3600),
            suspicious_after: 2,
        }
    }
}

/// What an attempt is known by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// The client's IP address.
    Ip(String),
    /// The donor's email, lower-cased.
    Email(String),
    /// The processor's card fingerprint, or the payment method token before one.
    Card(String),
}

impl Key {
    fn limit(&self, c: &AbuseConfig) -> u32 {
        match self {
            Self::Ip(_) => c.per_ip,
            Self::Email(_) => c.per_email,
            Self::Card(_) => c.per_card,
        }
    }
    fn what(&self) -> &'static str {
        match self {
            Self::Ip(_) => "address",
            Self::Email(_) => "email",
            Self::Card(_) => "card",
        }
    }
}

/// Why an attempt was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `too_many_attempts` (a rate limit) or `blocked_after_declines`.
    pub code: &'static str,
    /// Safe to show: names the kind of key, never its value.
    pub message: String,
    /// When to come back.
    pub retry_after: Duration,
}

#[derive(Default)]
struct Track {
    attempts: VecDeque<Instant>,
    declines: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Track {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .attempts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.attempts.pop_front();
        }
        while self
            .declines
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.declines.pop_front();
        }
        if self.blocked_until.is_some_and(|t| now >= t) {
            self.blocked_until = None;
        }
    }
    fn idle(&self) -> bool {
        self.attempts.is_empty() && self.declines.is_empty() && self.blocked_until.is_none()
    }
}

/// A challenge (CAPTCHA) the page shows to a suspicious source. Implementations call
/// their vendor's verification endpoint.
pub trait Challenge: Send + Sync {
    /// The HTML put in the donation form (the vendor's widget and script tag).
    fn widget(&self) -> String;
    /// Checks the answer the form carried (`challenge_response`).
    fn verify<'a>(&'a self, response: &'a str, client_ip: &'a str) -> BoxFuture<'a, bool>;
}

/// Entries kept before idle ones are swept for the first time.
const SWEEP_AT: usize = 50_000;

/// The keys' tracks, and when to sweep idle ones next.
#[derive(Default)]
struct Tracks {
    map: HashMap<Key, Track>,
    /// Sweep when the map grows past this: twice what the last sweep left (at least
    /// `SWEEP_AT`), so a sweep's cost is spread over as many new keys as it read.
    /// Sweeping at a fixed size instead meant that, once more keys than that were
    /// active in one window (at 1,000 donors a second, after 50 s), every attempt
    /// read every key under the lock, and the node stalled.
    sweep_at: usize,
    sweeps: u64,
}

/// The per-node limiter.
pub struct Guard {
    config: AbuseConfig,
    tracks: Mutex<Tracks>,
    /// The challenge shown to suspicious sources, if one is configured.
    pub challenge: Option<Arc<dyn Challenge>>,
}

impl Guard {
    /// A guard with these limits and no challenge.
    pub fn new(config: AbuseConfig) -> Self {
        Self {
            config,
            tracks: Mutex::new(Tracks {
                sweep_at: SWEEP_AT,
                ..Tracks::default()
            }),
            challenge: None,
        }
    }

    /// With a challenge for suspicious sources.
    pub fn with_challenge(mut self, challenge: Arc<dyn Challenge>) -> Self {
        self.challenge = Some(challenge);
        self
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, Tracks> {
        match self.tracks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Admits an attempt known by `keys` at `now` (and counts it), or refuses it.
    /// Nothing is counted for a refused attempt beyond the refusal itself.
    pub fn admit(&self, keys: &[Key], now: Instant) -> Result<(), Refusal> {
        let c = &self.config;
        let mut guard = self.tracks();
        if guard.map.len() > guard.sweep_at {
            guard.map.retain(|_, t| {
                t.prune(now, c.window);
                !t.idle()
            });
            guard.sweep_at = SWEEP_AT.max(2 * guard.map.len());
            guard.sweeps += 1;
        }
        let tracks = &mut guard.map;
        for k in keys {
            let t = tracks.entry(k.clone()).or_default();
            t.prune(now, c.window);
            if let Some(until) = t.blocked_until {
                return Err(Refusal {
                    code: "blocked_after_declines",
                    message: format!(
                        "too many declined cards from this {}; try again later",
                        k.what()
                    ),
                    retry_after: until.duration_since(now).max(Duration::from_secs(1)),
                });
            }
            if t.attempts.len() >= k.limit(c) as usize {
                let oldest = t.attempts.front().copied().unwrap_or(now);
                let retry = (oldest + c.window).saturating_duration_since(now);
                return Err(Refusal {
                    code: "too_many_attempts",
                    message: format!("too many attempts from this {}; try again later", k.what()),
                    retry_after: retry.max(Duration::from_secs(1)),
                });
            }
        }
        for k in keys {
            tracks.entry(k.clone()).or_default().attempts.push_back(now);
        }
        Ok(())
    }

    /// Counts a decline against `keys`; blocks those that reach the threshold.
    /// Returns whether any key became blocked now.
    pub fn record_decline(&self, keys: &[Key], now: Instant) -> bool {
        let c = &self.config;
        let mut guard = self.tracks();
        let tracks = &mut guard.map;
        let mut blocked = false;
        for k in keys {
            let t = tracks.entry(k.clone()).or_default();
            t.prune(now, c.window);
            t.declines.push_back(now);
            if t.blocked_until.is_none() && t.declines.len() >= c.declines_before_block as usize {
                t.blocked_until = Some(now + c.block_for);
                blocked = true;
            }
        }
        blocked
    }

    /// Whether any of `keys` has had enough recent declines to be shown a challenge.
    pub fn suspicious(&self, keys: &[Key], now: Instant) -> bool {
        let c = &self.config;
        let mut guard = self.tracks();
        let tracks = &mut guard.map;
        keys.iter().any(|k| {
            tracks.get_mut(k).is_some_and(|t| {
                t.prune(now, c.window);
                t.declines.len() >= c.suspicious_after.max(1) as usize || t.blocked_until.is_some()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AbuseConfig {
        AbuseConfig {
            window: Duration::from_secs(60),
            per_ip: 4,
            per_email: 3,
            per_card: 2,
            declines_before_block: 3,
            block_for: Duration::from_secs(300),
            suspicious_after: 1,
        }
    }

    #[test]
    fn rate_limits_per_key_and_the_window_slides() {
        let g = Guard::new(cfg());
        let t0 = Instant::now();
        let ip = Key::Ip("10.0.0.1".into());
        for i in 0..4 {
            g.admit(&[ip.clone(), Key::Card(format!("pm_{i}"))], t0)
                .unwrap();
        }
        let r = g.admit(std::slice::from_ref(&ip), t0).unwrap_err();
        assert_eq!(r.code, "too_many_attempts");
        assert_eq!(r.retry_after, Duration::from_secs(60));
        assert!(!r.message.contains("10.0.0.1"));
        // Another address is not affected; the first is free again after the window.
        g.admit(&[Key::Ip("10.0.0.2".into())], t0).unwrap();
        g.admit(&[ip], t0 + Duration::from_secs(60)).unwrap();
        // A card is limited on its own.
        let card = Key::Card("fp".into());
        g.admit(std::slice::from_ref(&card), t0).unwrap();
        g.admit(std::slice::from_ref(&card), t0).unwrap();
        assert!(g.admit(&[card], t0).is_err());
    }

    #[test]
    fn many_active_donors_are_swept_rarely_and_idle_ones_go() {
        let g = Guard::new(cfg());
        let t0 = Instant::now();
        // 200,000 donors inside one window: nobody is idle, so a sweep frees nothing.
        // Each sweep must be paid for by as many new keys as it read (a sweep per
        // attempt past the first threshold made this quadratic).
        let n = 4 * SWEEP_AT;
        for i in 0..n {
            g.admit(&[Key::Email(format!("d{i}@example.org"))], t0)
                .unwrap();
        }
        let (len, sweeps) = {
            let t = g.tracks();
            (t.map.len(), t.sweeps)
        };
        assert_eq!(len, n);
        assert_eq!(sweeps, 2, "swept at 50k and at 100k keys only");
        // After the window everyone is idle: the next sweep leaves only the newcomer.
        let later = t0 + Duration::from_secs(61);
        let mut i = n;
        while g.tracks().sweeps == 2 {
            g.admit(&[Key::Email(format!("d{i}@example.org"))], later)
                .unwrap();
            i += 1;
        }
        let t = g.tracks();
        assert!(t.map.len() < 10, "{} keys left", t.map.len());
        assert_eq!(t.sweep_at, SWEEP_AT);
    }

    #[test]
    fn declines_block_and_suspicion_comes_first() {
        let g = Guard::new(cfg());
        let t0 = Instant::now();
        let ip = Key::Ip("10.0.0.9".into());
        assert!(!g.suspicious(std::slice::from_ref(&ip), t0));
        assert!(!g.record_decline(std::slice::from_ref(&ip), t0));
        assert!(g.suspicious(std::slice::from_ref(&ip), t0));
        assert!(!g.record_decline(std::slice::from_ref(&ip), t0));
        assert!(g.record_decline(std::slice::from_ref(&ip), t0));
        let r = g
            .admit(std::slice::from_ref(&ip), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(r.code, "blocked_after_declines");
        assert_eq!(r.retry_after, Duration::from_secs(290));
        // The block ends.
        g.admit(&[ip], t0 + Duration::from_secs(301)).unwrap();
    }
}
