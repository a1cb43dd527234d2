//! Sending limits: a [`ThrottleSpec`] parsed from a short string, and a [`Throttle`]
//! that enforces it.
//!
//! A provider account has a maximum send rate (messages per second, counted per
//! recipient) and a rolling 24-hour quota; a message over either is rejected, not
//! queued. So we must never ask for more than the account allows. The spec language
//! follows KumoMTA's: `"14/s"`, `"500/s,daily=50000"`, `"100/s,max_burst=50"`. The rate
//! may also be given per minute (`/m`) or per hour (`/h`).
//!
//! [`Throttle`] is a pure struct: a token bucket (capacity `max_burst`, defaulting to one
//! period's worth) plus a rolling 24-hour window. It holds no clock; every call takes
//! `now` explicitly, so tests are exact and several nodes can replay the same state.
//! All arithmetic is in integers: the bucket counts tokens in units of 1/`period_ms`.
//!
//! The 24-hour window keeps one counter per minute. A send is forgotten only when the
//! *end* of its minute is 24 hours old, so the window is conservative: it may make us
//! wait up to a minute longer than the provider would, never send over its quota.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// A point in time: milliseconds since the Unix epoch. The throttle's only notion of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(u64);

impl UnixMillis {
    /// A time given in milliseconds since the epoch.
    pub const fn new(ms: u64) -> Self {
        Self(ms)
    }

    /// The wall clock now (0 if the clock is before 1970).
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// The period a rate is counted over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// `/s`
    Second,
    /// `/m`
    Minute,
    /// `/h`
    Hour,
}

impl Period {
    /// The period's length in milliseconds.
    pub const fn millis(self) -> u64 {
        match self {
            Period::Second => 1_000,
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "m",
            Period::Hour => "h",
        }
    }
}

/// Why a throttle spec string was refused. Each message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleSpecError {
    /// The string was empty.
    #[error("throttle spec is empty (expected something like \"14/s\" or \"500/s,daily=50000\")")]
    Empty,
    /// The leading rate part is malformed.
    #[error("throttle rate {part:?}: {reason}")]
    BadRate {
        /// The rate part as written.
        part: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An option has a bad value.
    #[error("throttle option {part:?}: {reason}")]
    BadOption {
        /// The option as written.
        part: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An option name is not one we know.
    #[error("throttle option {0:?} is unknown (known: max_burst, daily)")]
    UnknownOption(String),
    /// The same option was given twice.
    #[error("throttle option {0:?} is given twice")]
    Duplicate(String),
}

/// An account's sending limits: a rate, an optional burst size and an optional
/// rolling 24-hour quota. Built only by [`ThrottleSpec::parse`] (or [`ThrottleSpec::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ThrottleSpec {
    limit: u32,
    period: Period,
    max_burst: Option<u32>,
    daily: Option<u64>,
}

impl ThrottleSpec {
    /// Builds a spec from parts; zero limits are refused.
    pub fn new(
        limit: u32,
        period: Period,
        max_burst: Option<u32>,
        daily: Option<u64>,
    ) -> Result<Self, ThrottleSpecError> {
        if limit == 0 {
            return Err(ThrottleSpecError::BadRate {
                part: format!("0/{}", period.suffix()),
                reason: "the rate must be at least 1",
            });
        }
        if max_burst == Some(0) {
            return Err(ThrottleSpecError::BadOption {
                part: "max_burst=0".into(),
                reason: "must be at least 1",
            });
        }
        if daily == Some(0) {
            return Err(ThrottleSpecError::BadOption {
                part: "daily=0".into(),
                reason: "must be at least 1",
            });
        }
        Ok(Self {
            limit,
            period,
            max_burst,
            daily,
        })
    }

    /// Parses `"N/s"`, `"N/m"` or `"N/h"`, optionally followed by `,max_burst=B` and
    /// `,daily=D` in any order. Spaces around parts are allowed.
    pub fn parse(raw: &str) -> Result<Self, ThrottleSpecError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ThrottleSpecError::Empty);
        }
        let mut parts = raw.split(',').map(str::trim);
        let rate = parts.next().unwrap_or_default();
        let bad_rate = |reason| ThrottleSpecError::BadRate {
            part: rate.to_string(),
            reason,
        };
        let (count, unit) = rate
            .split_once('/')
            .ok_or_else(|| bad_rate("expected COUNT/UNIT, for example 14/s"))?;
        let limit: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad_rate("the count must be a whole number"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Period::Second,
            "m" | "min" | "minute" => Period::Minute,
            "h" | "hr" | "hour" => Period::Hour,
            _ => return Err(bad_rate("the unit must be s, m or h")),
        };
        if limit == 0 {
            return Err(bad_rate("the rate must be at least 1"));
        }
        let mut max_burst = None;
        let mut daily = None;
        for part in parts {
            let (key, value) =
                part.split_once('=')
                    .ok_or_else(|| ThrottleSpecError::BadOption {
                        part: part.to_string(),
                        reason: "expected NAME=VALUE",
                    })?;
            let bad = |reason| ThrottleSpecError::BadOption {
                part: part.to_string(),
                reason,
            };
            match key.trim() {
                "max_burst" => {
                    if max_burst.is_some() {
                        return Err(ThrottleSpecError::Duplicate("max_burst".into()));
                    }
                    let v: u32 = value
                        .trim()
                        .parse()
                        .map_err(|_| bad("must be a whole number"))?;
                    if v == 0 {
                        return Err(bad("must be at least 1"));
                    }
                    max_burst = Some(v);
                }
                "daily" => {
                    if daily.is_some() {
                        return Err(ThrottleSpecError::Duplicate("daily".into()));
                    }
                    let v: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| bad("must be a whole number"))?;
                    if v == 0 {
                        return Err(bad("must be at least 1"));
                    }
                    daily = Some(v);
                }
                other => return Err(ThrottleSpecError::UnknownOption(other.to_string())),
            }
        }
        Ok(Self {
            limit,
            period,
            max_burst,
            daily,
        })
    }

    /// The limits an SES account reports (`MaxSendRate`, `Max24HourSend`; -1 means
    /// unlimited). A fractional rate below 1/s is expressed per minute, rounded down.
    /// Returns `None` when the numbers cannot describe any sending (rate below 1/min).
    pub fn from_reported(max_send_rate: f64, max_24_hour_send: f64) -> Option<Self> {
        let daily = if max_24_hour_send < 0.0 {
            None
        } else if max_24_hour_send >= 1.0 {
            Some(max_24_hour_send.floor().min(u64::MAX as f64) as u64)
        } else {
            return None;
        };
        let (limit, period) = if max_send_rate < 0.0 {
            (u32::MAX, Period::Second)
        } else if max_send_rate >= 1.0 {
            (
                max_send_rate.floor().min(u32::MAX as f64) as u32,
                Period::Second,
            )
        } else {
            let per_minute = (max_send_rate * 60.0).floor();
            if per_minute < 1.0 {
                return None;
            }
            (per_minute as u32, Period::Minute)
        };
        Self::new(limit, period, None, daily).ok()
    }

    /// Messages allowed per period.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The rate's period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The bucket's capacity: `max_burst`, or one period's worth.
    pub fn burst(&self) -> u32 {
        self.max_burst.unwrap_or(self.limit)
    }

    /// The rolling 24-hour quota, if any.
    pub fn daily(&self) -> Option<u64> {
        self.daily
    }

    /// This spec with its bucket kept `headroom` worth of sending below the provider's
    /// (one period's worth): at most `limit - limit * headroom / period`, never above the
    /// configured burst, at least 1. Tokens are taken before the messages reach the
    /// provider; while they travel, a provider bucket that is still full loses the
    /// refill ours counts, so ours must start that much lower or the provider throttles
    /// the first seconds of a run. The sustained rate is unchanged.
    pub fn with_headroom(&self, headroom: std::time::Duration) -> Self {
        if self.is_unlimited() {
            return *self;
        }
        let ms = u64::try_from(headroom.as_millis()).unwrap_or(u64::MAX);
        let margin = u64::from(self.limit).saturating_mul(ms) / self.period.millis();
        let room = u64::from(self.limit).saturating_sub(margin).max(1);
        let burst = u32::try_from(room).unwrap_or(u32::MAX).min(self.burst());
        Self {
            max_burst: Some(burst),
            ..*self
        }
    }

    /// No limit worth counting: the largest rate and no daily quota (what
    /// [`ThrottleSpec::from_reported`] makes of SES's -1s).
    pub fn is_unlimited(&self) -> bool {
        self.limit == u32::MAX && self.daily.is_none()
    }

    /// The sustained rate in messages per second (for estimates; not used for limiting).
    pub fn per_second(&self) -> f64 {
        f64::from(self.limit) * 1000.0 / self.period.millis() as f64
    }
}

impl fmt::Display for ThrottleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.period.suffix())?;
        if let Some(b) = self.max_burst {
            write!(f, ",max_burst={b}")?;
        }
        if let Some(d) = self.daily {
            write!(f, ",daily={d}")?;
        }
        Ok(())
    }
}

impl FromStr for ThrottleSpec {
    type Err = ThrottleSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ThrottleSpec {
    type Error = ThrottleSpecError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ThrottleSpec> for String {
    fn from(s: ThrottleSpec) -> Self {
        s.to_string()
    }
}

/// Which limit makes a send wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The per-second rate (the token bucket is empty).
    Rate,
    /// The rolling 24-hour quota.
    DailyQuota,
}

/// The answer to "may I send `n` now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes (and, from [`Throttle::acquire`], the `n` sends are now counted).
    Now,
    /// Not before `at`; `limit` says which limit is binding then.
    Later {
        /// The earliest time `n` sends fit both limits, if nothing else is sent.
        at: UnixMillis,
        /// The limit that sets `at`.
        limit: Limit,
    },
    /// Never as one unit: `n` is larger than the burst or the daily quota. Split it.
    Never {
        /// The limit `n` exceeds.
        limit: Limit,
    },
}

/// A token bucket plus a rolling 24-hour window for one account. Pure: no clock inside.
#[derive(Clone, Debug)]
pub struct Throttle {
    spec: ThrottleSpec,
    /// Tokens in units of 1/period_ms of a message; refills `limit` units per ms.
    scaled_tokens: u128,
    /// The time the bucket was last refilled.
    last: UnixMillis,
    /// Sends per minute (minute index since the epoch, count), oldest first.
    window: VecDeque<(u64, u64)>,
    /// Sum of the counts in `window`.
    window_total: u64,
}

impl Throttle {
    /// A throttle with a full bucket and nothing sent in the last 24 hours.
    pub fn new(spec: ThrottleSpec, now: UnixMillis) -> Self {
        Self {
            spec,
            scaled_tokens: Self::capacity(&spec),
            last: now,
            window: VecDeque::new(),
            window_total: 0,
        }
    }

    /// A throttle for an account that has already sent `sent_last_24h` messages (as the
    /// provider reports). They are counted as sent now, which is conservative.
    pub fn with_sent(spec: ThrottleSpec, now: UnixMillis, sent_last_24h: u64) -> Self {
        let mut t = Self::new(spec, now);
        if sent_last_24h > 0 {
            t.push_window(now, sent_last_24h);
        }
        t
    }

    /// The limits this throttle enforces.
    pub fn spec(&self) -> &ThrottleSpec {
        &self.spec
    }

    /// Replaces the limits (the provider reported new ones), keeping the sends counted so far.
    pub fn set_spec(&mut self, spec: ThrottleSpec, now: UnixMillis) {
        self.advance(now);
        self.spec = spec;
        self.scaled_tokens = self.scaled_tokens.min(Self::capacity(&spec));
    }

    fn capacity(spec: &ThrottleSpec) -> u128 {
        u128::from(spec.burst()) * u128::from(spec.period.millis())
    }

    fn unit(&self) -> u128 {
        u128::from(self.spec.period.millis())
    }

    fn advance(&mut self, now: UnixMillis) {
        if now > self.last {
            let elapsed = u128::from(now.0 - self.last.0);
            let added = elapsed.saturating_mul(u128::from(self.spec.limit));
            self.scaled_tokens = self
                .scaled_tokens
                .saturating_add(added)
                .min(Self::capacity(&self.spec));
            self.last = now;
        }
        // A clock that went backwards refills nothing; `last` stays where it was.
        while let Some(&(minute, count)) = self.window.front() {
            if Self::expiry(minute) <= now.0 {
                self.window.pop_front();
                self.window_total -= count;
            } else {
                break;
            }
        }
    }

    /// When the sends of `minute` leave the window: 24 hours after the minute ends.
    fn expiry(minute: u64) -> u64 {
        (minute + 1) * MINUTE_MS + DAY_MS
    }

    fn push_window(&mut self, now: UnixMillis, n: u64) {
        let minute = now.0 / MINUTE_MS;
        match self.window.back_mut() {
            Some((m, c)) if *m >= minute => *c += n,
            _ => self.window.push_back((minute, n)),
        }
        self.window_total += n;
    }

    /// May `n` messages be sent at `now`, and if not, when? Counts nothing.
    pub fn check(&mut self, n: u32, now: UnixMillis) -> Admission {
        self.advance(now);
        if n == 0 {
            return Admission::Now;
        }
        if n > self.spec.burst() {
            return Admission::Never { limit: Limit::Rate };
        }
        if self.spec.daily.is_some_and(|d| u64::from(n) > d) {
            return Admission::Never {
                limit: Limit::DailyQuota,
            };
        }
        let needed = u128::from(n) * self.unit();
        let rate_at = if self.scaled_tokens >= needed {
            now
        } else {
            let deficit = needed - self.scaled_tokens;
            let per_ms = u128::from(self.spec.limit);
            let wait = deficit.div_ceil(per_ms);
            UnixMillis(
                now.0
                    .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX)),
            )
        };
        let daily_at = match self.spec.daily {
            Some(daily) if self.window_total + u64::from(n) > daily => {
                let mut must_expire = self.window_total + u64::from(n) - daily;
                let mut at = now;
                for &(minute, count) in &self.window {
                    at = UnixMillis(Self::expiry(minute));
                    if count >= must_expire {
                        break;
                    }
                    must_expire -= count;
                }
                at
            }
            _ => now,
        };
        if rate_at == now && daily_at == now {
            Admission::Now
        } else if daily_at >= rate_at {
            Admission::Later {
                at: daily_at,
                limit: Limit::DailyQuota,
            }
        } else {
            Admission::Later {
                at: rate_at,
                limit: Limit::Rate,
            }
        }
    }

    /// Like [`Throttle::check`], and when the answer is [`Admission::Now`] the `n` sends
    /// are counted against both limits.
    pub fn acquire(&mut self, n: u32, now: UnixMillis) -> Admission {
        let answer = self.check(n, now);
        if answer == Admission::Now && n > 0 {
            self.scaled_tokens -= u128::from(n) * self.unit();
            self.push_window(now, u64::from(n));
        }
        answer
    }

    /// How many messages could be sent at `now` (the smaller of both limits' room).
    pub fn available(&mut self, now: UnixMillis) -> u64 {
        self.advance(now);
        let tokens = u64::try_from(self.scaled_tokens / self.unit()).unwrap_or(u64::MAX);
        match self.spec.daily {
            Some(d) => tokens.min(d.saturating_sub(self.window_total)),
            None => tokens,
        }
    }

    /// Counts `n` sends made without asking (another node's, or ones the provider
    /// accepted after we gave up waiting). The bucket may go to zero, never below.
    pub fn record(&mut self, n: u64, now: UnixMillis) {
        self.advance(now);
        if n == 0 {
            return;
        }
        let used = u128::from(n).saturating_mul(self.unit());
        self.scaled_tokens = self.scaled_tokens.saturating_sub(used);
        self.push_window(now, n);
    }

    /// Undoes `n` sends counted by [`Throttle::acquire`] that were never made: their
    /// tokens go back to the bucket (never above its capacity) and they leave the
    /// 24-hour window (newest minutes first).
    pub fn give_back(&mut self, n: u64, now: UnixMillis) {
        self.advance(now);
        let back = u128::from(n).saturating_mul(self.unit());
        self.scaled_tokens = self
            .scaled_tokens
            .saturating_add(back)
            .min(Self::capacity(&self.spec));
        let mut left = n;
        while left > 0 {
            let Some((_, count)) = self.window.back_mut() else {
                break;
            };
            let k = (*count).min(left);
            *count -= k;
            self.window_total -= k;
            left -= k;
            if *count == 0 {
                self.window.pop_back();
            }
        }
    }

    /// Empties the bucket: the provider throttled us although we thought we had room
    /// (someone else shares the account), so back off for a refill.
    pub fn drain(&mut self, now: UnixMillis) {
        self.advance(now);
        self.scaled_tokens = 0;
    }

    /// Sends counted in the (conservative) rolling 24-hour window at `now`.
    pub fn sent_last_24h(&mut self, now: UnixMillis) -> u64 {
        self.advance(now);
        self.window_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(s: &str) -> ThrottleSpec {
        ThrottleSpec::parse(s).unwrap()
    }

    const T0: UnixMillis = UnixMillis::new(1_700_000_000_000);

    fn at(ms: u64) -> UnixMillis {
        UnixMillis::new(T0.as_millis() + ms)
    }

    #[test]
    fn parses_the_documented_forms() {
        let s = spec("14/s");
        assert_eq!(
            (s.limit(), s.period(), s.burst(), s.daily()),
            (14, Period::Second, 14, None)
        );
        let s = spec("500/s,daily=50000");
        assert_eq!((s.limit(), s.daily()), (500, Some(50_000)));
        let s = spec("100/s,max_burst=50");
        assert_eq!((s.limit(), s.burst()), (100, 50));
        let s = spec(" 30 / m , daily = 10 , max_burst = 5 ");
        assert_eq!(
            (s.limit(), s.period(), s.burst(), s.daily()),
            (30, Period::Minute, 5, Some(10))
        );
        assert_eq!(s.to_string(), "30/m,max_burst=5,daily=10");
        assert_eq!(spec("2/h").period(), Period::Hour);
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases = [
            ("", "empty"),
            ("14", "\"14\""),
            ("x/s", "\"x/s\""),
            ("14/fortnight", "\"14/fortnight\""),
            ("0/s", "at least 1"),
            ("14/s,daily", "\"daily\""),
            ("14/s,daily=lots", "\"daily=lots\""),
            ("14/s,max_burst=0", "\"max_burst=0\""),
            ("14/s,colour=blue", "\"colour\""),
            ("14/s,daily=1,daily=2", "twice"),
        ];
        for (input, needle) in cases {
            let err = ThrottleSpec::parse(input).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{input:?} gave {err:?}, wanted {needle:?}"
            );
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let s: ThrottleSpec = serde_json::from_str("\"14/s,daily=200\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"14/s,daily=200\"");
        assert!(serde_json::from_str::<ThrottleSpec>("\"fast\"").is_err());
    }

    #[test]
    fn reported_quota_becomes_a_spec() {
        let s = ThrottleSpec::from_reported(14.0, 50_000.0).unwrap();
        assert_eq!(s.to_string(), "14/s,daily=50000");
        assert_eq!(
            ThrottleSpec::from_reported(1.0, -1.0).unwrap().to_string(),
            "1/s"
        );
        assert_eq!(
            ThrottleSpec::from_reported(0.5, 200.0).unwrap().to_string(),
            "30/m,daily=200"
        );
        assert_eq!(ThrottleSpec::from_reported(0.001, 200.0), None);
        assert_eq!(ThrottleSpec::from_reported(14.0, 0.0), None);
    }

    #[test]
    fn a_fresh_bucket_allows_one_burst_then_refills_exactly() {
        let mut t = Throttle::new(spec("14/s"), T0);
        assert_eq!(t.available(T0), 14);
        assert_eq!(t.acquire(14, T0), Admission::Now);
        // One token takes 1000/14 = 71.4 ms: not at 71, yes at 72.
        assert_eq!(
            t.check(1, at(71)),
            Admission::Later {
                at: at(72),
                limit: Limit::Rate
            }
        );
        assert_eq!(t.acquire(1, at(72)), Admission::Now);
        // A full second refills all 14, and never more than the burst.
        assert_eq!(t.available(at(10_000)), 14);
    }

    #[test]
    fn max_burst_caps_the_bucket_below_the_rate() {
        let mut t = Throttle::new(spec("100/s,max_burst=50"), T0);
        assert_eq!(t.available(at(60_000)), 50);
        assert_eq!(t.check(51, T0), Admission::Never { limit: Limit::Rate });
        assert_eq!(t.acquire(50, T0), Admission::Now);
        assert_eq!(
            t.check(50, T0),
            Admission::Later {
                at: at(500),
                limit: Limit::Rate
            }
        );
    }

    #[test]
    fn daily_quota_exhaustion_waits_for_the_window_to_roll() {
        let mut t = Throttle::new(spec("10/s,max_burst=40,daily=25"), T0);
        assert_eq!(t.acquire(10, T0), Admission::Now);
        assert_eq!(t.acquire(10, at(1_000)), Admission::Now);
        assert_eq!(t.acquire(5, at(2_000)), Admission::Now);
        assert_eq!(t.sent_last_24h(at(2_000)), 25);
        assert_eq!(t.available(at(3_000)), 0);
        let minute_end = (T0.as_millis() / MINUTE_MS + 1) * MINUTE_MS;
        let free_at = UnixMillis::new(minute_end + DAY_MS);
        assert_eq!(
            t.check(1, at(3_000)),
            Admission::Later {
                at: free_at,
                limit: Limit::DailyQuota
            }
        );
        assert_eq!(
            t.check(26, at(3_000)),
            Admission::Never {
                limit: Limit::DailyQuota
            }
        );
        // One millisecond early is still too early; at the boundary everything is free.
        assert!(matches!(
            t.check(1, UnixMillis::new(free_at.as_millis() - 1)),
            Admission::Later { .. }
        ));
        assert_eq!(t.check(10, free_at), Admission::Now);
        assert_eq!(t.sent_last_24h(free_at), 0);
    }

    #[test]
    fn daily_wait_only_expires_as_many_minutes_as_needed() {
        let mut t = Throttle::new(spec("100/s,daily=30"), T0);
        assert_eq!(t.acquire(10, T0), Admission::Now);
        assert_eq!(t.acquire(10, at(MINUTE_MS)), Admission::Now);
        assert_eq!(t.acquire(10, at(2 * MINUTE_MS)), Admission::Now);
        let first_minute = T0.as_millis() / MINUTE_MS;
        // 15 more need the first two minutes to expire.
        assert_eq!(
            t.check(15, at(3 * MINUTE_MS)),
            Admission::Later {
                at: UnixMillis::new((first_minute + 2) * MINUTE_MS + DAY_MS),
                limit: Limit::DailyQuota
            }
        );
    }

    #[test]
    fn seeding_with_the_providers_count_and_draining() {
        let mut t = Throttle::with_sent(spec("5/s,daily=100"), T0, 98);
        assert_eq!(t.available(T0), 2);
        t.drain(T0);
        assert_eq!(
            t.check(1, T0),
            Admission::Later {
                at: at(200),
                limit: Limit::Rate
            }
        );
        t.record(2, at(200));
        assert_eq!(t.sent_last_24h(at(200)), 100);
        assert!(matches!(
            t.check(1, at(5_000)),
            Admission::Later {
                limit: Limit::DailyQuota,
                ..
            }
        ));
    }

    #[test]
    fn headroom_lowers_the_burst_only() {
        let h = std::time::Duration::from_millis(250);
        assert_eq!(spec("500/s").with_headroom(h).burst(), 375);
        assert_eq!(spec("500/s").with_headroom(h).limit(), 500);
        assert_eq!(
            spec("40/s,daily=9").with_headroom(h).to_string(),
            "40/s,max_burst=30,daily=9"
        );
        // A burst set lower already stays; a slow rate keeps at least one.
        assert_eq!(spec("1000/s,max_burst=10").with_headroom(h).burst(), 10);
        assert_eq!(spec("2/s").with_headroom(h).burst(), 2);
        assert_eq!(
            spec("1/s")
                .with_headroom(std::time::Duration::from_secs(5))
                .burst(),
            1
        );
        let unlimited = ThrottleSpec::from_reported(-1.0, -1.0).unwrap();
        assert_eq!(unlimited.with_headroom(h), unlimited);
    }

    #[test]
    fn unused_grants_are_given_back() {
        let mut t = Throttle::new(spec("10/s,daily=25"), T0);
        assert_eq!(t.acquire(10, T0), Admission::Now);
        t.give_back(4, T0);
        assert_eq!(t.available(T0), 4);
        assert_eq!(t.sent_last_24h(T0), 6);
        // Never above the bucket's capacity, never below zero sent.
        t.give_back(100, at(50));
        assert_eq!(t.available(at(50)), 10);
        assert_eq!(t.sent_last_24h(at(50)), 0);
        // Across minutes: the newest sends leave first.
        assert_eq!(t.acquire(10, at(60_000)), Admission::Now);
        assert_eq!(t.acquire(10, at(120_000)), Admission::Now);
        t.give_back(12, at(120_000));
        assert_eq!(t.sent_last_24h(at(120_000)), 8);
        assert_eq!(t.acquire(10, at(180_000)), Admission::Now);
        assert_eq!(t.available(at(300_000)), 7);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut t = Throttle::new(spec("10/s"), at(5_000));
        assert_eq!(t.acquire(10, at(5_000)), Admission::Now);
        assert!(matches!(t.check(1, at(1_000)), Admission::Later { .. }));
        assert_eq!(t.available(at(5_000)), 0);
        assert_eq!(t.available(at(5_100)), 1);
    }

    #[test]
    fn lowering_the_spec_clamps_the_bucket() {
        let mut t = Throttle::new(spec("100/s"), T0);
        t.set_spec(spec("10/s"), T0);
        assert_eq!(t.available(T0), 10);
        assert_eq!(t.check(0, T0), Admission::Now);
    }

    fn arb_spec() -> impl Strategy<Value = ThrottleSpec> {
        (
            1u32..5_000,
            prop_oneof![
                Just(Period::Second),
                Just(Period::Minute),
                Just(Period::Hour)
            ],
            proptest::option::of(1u32..5_000),
            proptest::option::of(1u64..1_000_000),
        )
            .prop_map(|(l, p, b, d)| ThrottleSpec::new(l, p, b, d).unwrap())
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(s in arb_spec()) {
            prop_assert_eq!(ThrottleSpec::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn parse_never_panics(raw in ".{0,40}") {
            let _ = ThrottleSpec::parse(&raw);
        }

        #[test]
        fn parse_accepts_well_formed_specs(
            n in 1u32..1_000_000, unit in "[smh]", burst in proptest::option::of(1u32..100_000),
            daily in proptest::option::of(1u64..10_000_000),
        ) {
            let mut raw = format!("{n}/{unit}");
            if let Some(b) = burst { raw.push_str(&format!(",max_burst={b}")); }
            if let Some(d) = daily { raw.push_str(&format!(",daily={d}")); }
            let s = ThrottleSpec::parse(&raw).unwrap();
            prop_assert_eq!(s.limit(), n);
            prop_assert_eq!(s.burst(), burst.unwrap_or(n));
            prop_assert_eq!(s.daily(), daily);
        }

        /// Whatever the pattern of requests, admitted sends never exceed the burst plus
        /// the refill over any interval, nor the daily quota over any 24 hours.
        #[test]
        fn admitted_sends_respect_both_limits(
            limit in 1u32..50, burst in 1u32..60, daily in 1u64..400,
            steps in proptest::collection::vec((0u64..3_000_000, 1u32..20), 1..200),
        ) {
            let spec = ThrottleSpec::new(limit, Period::Second, Some(burst), Some(daily)).unwrap();
            let mut t = Throttle::new(spec, T0);
            let mut now = T0.as_millis();
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, n) in steps {
                now += gap;
                match t.acquire(n, UnixMillis::new(now)) {
                    Admission::Now => admitted.push((now, u64::from(n))),
                    Admission::Later { at, .. } => prop_assert!(at.as_millis() > now),
                    Admission::Never { .. } => prop_assert!(n > burst || u64::from(n) > daily),
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut sum = 0u64;
                for &(t2, n) in &admitted[i..] {
                    sum += n;
                    let span = t2 - start;
                    let rate_cap = u64::from(burst) + (span * u64::from(limit)) / 1000;
                    prop_assert!(sum <= rate_cap, "{sum} sends in {span} ms > {rate_cap}");
                    if span < DAY_MS {
                        prop_assert!(sum <= daily, "{sum} sends within 24h > {daily}");
                    }
                }
            }
        }
    }
}
