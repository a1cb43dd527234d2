//! The scheduler: which account sends the next slice, how many messages, and when.
//!
//! Pure: it holds one [`Throttle`] per account and a small health record, and every
//! call takes `now`. It never hands out more than an account's bucket and rolling
//! 24-hour window allow, because a grant *is* the acquisition of that many tokens.
//!
//! - Routing: smooth weighted round robin (nginx's) over the accounts that are up and
//!   have room now, so traffic follows the weights while every account is used up to
//!   its own rate; an account without room is skipped, which spreads the rest over the
//!   others (remaining quota steers the split).
//! - Health: a batch with an acceptance makes an account healthy; three failed batches
//!   in a row (transient errors, ambiguous answers) or one account-level refusal take it
//!   down for a cooldown that doubles up to [`MAX_COOLDOWN`]; after the cooldown it gets
//!   a probe of one message.
//! - Throttling by the provider (someone else shares the account, or our idea of its
//!   limits is stale): a rate throttle empties the bucket, a daily-quota throttle fills
//!   the window, so the account gets nothing until it has room again. The messages are
//!   requeued by the caller, never failed.
//! - [`Scheduler::eta`]: pending messages over the sum of the usable rates, and days
//!   added when the remaining daily quotas do not cover them.

use crate::provider::ThrottleReason;
use crate::throttle::{Admission, Throttle, ThrottleSpec, UnixMillis};
use std::time::Duration;

/// The first cooldown of an account that went down.
pub const BASE_COOLDOWN: Duration = Duration::from_secs(2);
/// The longest cooldown.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(120);
/// Failed batches in a row that take an account down.
pub const DOWN_AFTER: u32 = 3;

/// One account as configured.
#[derive(Clone, Debug)]
pub struct AccountSpec {
    /// Its name (the provider's `name()`).
    pub name: String,
    /// Its share of traffic relative to the others (at least 1).
    pub weight: u32,
    /// Its limits.
    pub spec: ThrottleSpec,
}

#[derive(Clone, Debug)]
struct AccountState {
    spec: AccountSpec,
    throttle: Throttle,
    /// Smooth weighted round robin's running score.
    current: i64,
    failures: u32,
    /// Down until this time (then probing).
    down_until: Option<UnixMillis>,
    /// The cooldown to apply the next time it goes down.
    cooldown: Duration,
    /// After a cooldown: one message until it succeeds.
    probing: bool,
    /// Why it is down (for status pages).
    down_reason: Option<String>,
    /// No grant before this time: the limits shared with other nodes leave no room.
    hold_until: Option<UnixMillis>,
}

/// What [`Scheduler::grant`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Send up to `n` messages through account `account` (an index into the specs) now;
    /// the tokens are taken.
    Send {
        /// The account's index.
        account: usize,
        /// How many messages.
        n: u32,
    },
    /// No account has room before `until`.
    Wait {
        /// The earliest time one might.
        until: UnixMillis,
    },
}

/// How a batch went, summarized for the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchReport {
    /// At least one message was accepted.
    Accepted,
    /// Throttled by the provider.
    Throttled(ThrottleReason),
    /// Nothing accepted: transient errors or ambiguous answers.
    Failed(String),
    /// The account itself was refused (credentials, suspended).
    AccountRefused(String),
    /// Only message-level rejections: says nothing about the account.
    Neutral,
}

/// An account's state for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountStatus {
    /// Name.
    pub name: String,
    /// Up (possibly probing) or down.
    pub up: bool,
    /// Why it is down.
    pub reason: Option<String>,
    /// Sends counted in the rolling 24 hours.
    pub sent_last_24h: u64,
    /// Messages it could take right now.
    pub available: u64,
}

/// The scheduler for one worker's accounts.
#[derive(Clone, Debug)]
pub struct Scheduler {
    accounts: Vec<AccountState>,
}

impl Scheduler {
    /// Accounts start with full buckets and nothing sent.
    pub fn new(specs: Vec<AccountSpec>, now: UnixMillis) -> Self {
        Self {
            accounts: specs
                .into_iter()
                .map(|spec| AccountState {
                    throttle: Throttle::new(spec.spec, now),
                    spec,
                    current: 0,
                    failures: 0,
                    down_until: None,
                    cooldown: BASE_COOLDOWN,
                    probing: false,
                    down_reason: None,
                    hold_until: None,
                })
                .collect(),
        }
    }

    /// Counts sends the provider says the account already made in the last 24 hours.
    pub fn record_sent(&mut self, account: usize, n: u64, now: UnixMillis) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.throttle.record(n, now);
        }
    }

    /// The number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// True when no account is configured.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    fn usable(a: &mut AccountState, now: UnixMillis) -> bool {
        match a.down_until {
            Some(t) if now < t => false,
            Some(_) => {
                a.down_until = None;
                a.probing = true;
                true
            }
            None => true,
        }
    }

    /// Picks an account for up to `want` messages and takes their tokens.
    pub fn grant(&mut self, want: u32, now: UnixMillis) -> Grant {
        let want = want.max(1);
        let mut candidates: Vec<(usize, u64)> = Vec::new();
        let mut earliest: Option<UnixMillis> = None;
        for (i, a) in self.accounts.iter_mut().enumerate() {
            if !Self::usable(a, now) {
                if let Some(t) = a.down_until {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                }
                continue;
            }
            if let Some(t) = a.hold_until {
                if now < t {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    continue;
                }
                a.hold_until = None;
            }
            let room = a.throttle.available(now);
            if room >= 1 {
                candidates.push((i, room));
            } else {
                let at = match a.throttle.check(1, now) {
                    Admission::Later { at, .. } => at,
                    Admission::Now => now,
                    Admission::Never { .. } => UnixMillis::new(now.as_millis() + 1000),
                };
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        if candidates.is_empty() {
            let until = earliest.unwrap_or(UnixMillis::new(now.as_millis() + 1000));
            return Grant::Wait {
                until: if until > now {
                    until
                } else {
                    UnixMillis::new(now.as_millis() + 1)
                },
            };
        }
        let total: i64 = candidates
            .iter()
            .map(|(i, _)| i64::from(self.accounts[*i].spec.weight.max(1)))
            .sum();
        let mut best: Option<(usize, i64)> = None;
        for (i, _) in &candidates {
            let a = &mut self.accounts[*i];
            a.current += i64::from(a.spec.weight.max(1));
            if best.is_none_or(|(_, c)| a.current > c) {
                best = Some((*i, a.current));
            }
        }
        let best = best.map(|(i, _)| i);
        let Some(chosen) = best else {
            return Grant::Wait {
                until: UnixMillis::new(now.as_millis() + 1000),
            };
        };
        let room = candidates
            .iter()
            .find(|(i, _)| *i == chosen)
            .map_or(1, |(_, r)| *r);
        let a = &mut self.accounts[chosen];
        a.current -= total;
        let cap = if a.probing { 1 } else { want };
        let n = u32::try_from(room.min(u64::from(cap)))
            .unwrap_or(cap)
            .min(a.spec.spec.burst())
            .max(1);
        match a.throttle.acquire(n, now) {
            Admission::Now => Grant::Send { account: chosen, n },
            Admission::Later { at, .. } => Grant::Wait { until: at },
            Admission::Never { .. } => Grant::Wait {
                until: UnixMillis::new(now.as_millis() + 1000),
            },
        }
    }

    /// Grants nothing on `account` before `until` (the room it shares with other nodes
    /// is used up); a time not after `now` clears the hold.
    pub fn hold(&mut self, account: usize, until: UnixMillis, now: UnixMillis) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.hold_until = (until > now).then_some(until);
        }
    }

    /// Returns `n` of the tokens a grant on `account` took but did not use (fewer
    /// recipients were left than granted).
    pub fn give_back(&mut self, account: usize, n: u32, now: UnixMillis) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.throttle.give_back(u64::from(n), now);
        }
    }

    /// Folds in how a batch on `account` went.
    pub fn report(&mut self, account: usize, report: &BatchReport, now: UnixMillis) {
        let Some(a) = self.accounts.get_mut(account) else {
            return;
        };
        match report {
            BatchReport::Accepted => {
                a.failures = 0;
                a.probing = false;
                a.cooldown = BASE_COOLDOWN;
                a.down_reason = None;
            }
            BatchReport::Neutral => {}
            BatchReport::Throttled(reason) => match reason {
                ThrottleReason::DailyQuota => {
                    let room = a.throttle.available(now);
                    let daily_room = a
                        .throttle
                        .spec()
                        .daily()
                        .map(|d| d.saturating_sub(a.throttle.sent_last_24h(now)))
                        .unwrap_or(room);
                    // Fill the window: nothing more until old sends age out. Without a
                    // configured daily quota, wait out a cooldown instead.
                    if a.throttle.spec().daily().is_some() {
                        a.throttle.record(daily_room, now);
                    } else {
                        Self::take_down(a, "daily quota exceeded", now);
                    }
                }
                _ => a.throttle.drain(now),
            },
            BatchReport::Failed(reason) => {
                a.failures += 1;
                if a.failures >= DOWN_AFTER || a.probing {
                    Self::take_down(a, reason, now);
                }
            }
            BatchReport::AccountRefused(reason) => Self::take_down(a, reason, now),
        }
    }

    fn take_down(a: &mut AccountState, reason: &str, now: UnixMillis) {
        a.down_until = Some(now.plus(a.cooldown));
        a.cooldown = (a.cooldown * 2).min(MAX_COOLDOWN);
        a.failures = 0;
        a.probing = false;
        a.down_reason = Some(reason.to_string());
    }

    /// Whether any account other than `account` is up now.
    pub fn other_up(&self, account: usize, now: UnixMillis) -> bool {
        self.accounts
            .iter()
            .enumerate()
            .any(|(i, a)| i != account && a.down_until.is_none_or(|t| now >= t))
    }

    /// Whether every account is down now.
    pub fn all_down(&self, now: UnixMillis) -> bool {
        self.accounts
            .iter()
            .all(|a| a.down_until.is_some_and(|t| now < t))
    }

    /// The accounts' state.
    pub fn status(&mut self, now: UnixMillis) -> Vec<AccountStatus> {
        self.accounts
            .iter_mut()
            .map(|a| AccountStatus {
                name: a.spec.name.clone(),
                up: a.down_until.is_none_or(|t| now >= t),
                reason: a.down_reason.clone(),
                sent_last_24h: a.throttle.sent_last_24h(now),
                available: a.throttle.available(now),
            })
            .collect()
    }

    /// Estimated time to send `pending` messages from `now`: at the sum of the up
    /// accounts' rates, plus a day for each day's worth the remaining daily quotas do
    /// not cover. `None` when no account is up.
    pub fn eta(&mut self, pending: u64, now: UnixMillis) -> Option<Duration> {
        if pending == 0 {
            return Some(Duration::ZERO);
        }
        let mut rate = 0.0f64;
        let mut daily_room: Option<u64> = Some(0);
        let mut daily_total: Option<u64> = Some(0);
        for a in &mut self.accounts {
            if a.down_until.is_some_and(|t| now < t) {
                continue;
            }
            rate += a.spec.spec.per_second();
            match a.throttle.spec().daily() {
                Some(d) => {
                    let used = a.throttle.sent_last_24h(now);
                    daily_room = daily_room.map(|r| r + d.saturating_sub(used));
                    daily_total = daily_total.map(|t| t + d);
                }
                None => {
                    daily_room = None;
                    daily_total = None;
                }
            }
        }
        if rate <= 0.0 {
            return None;
        }
        let mut secs = pending as f64 / rate;
        if let (Some(room), Some(total)) = (daily_room, daily_total) {
            if pending > room && total > 0 {
                let beyond = pending - room;
                let days = beyond.div_ceil(total);
                // Each further day's share starts when the window frees up.
                secs = secs.max(days as f64 * 86_400.0);
            }
        }
        Some(Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn at(ms: u64) -> UnixMillis {
        UnixMillis::new(T0 + ms)
    }

    fn acct(name: &str, weight: u32, spec: &str) -> AccountSpec {
        AccountSpec {
            name: name.into(),
            weight,
            spec: ThrottleSpec::parse(spec).unwrap(),
        }
    }

    /// Drives the scheduler with a fake clock, granting as fast as allowed, and
    /// returns messages sent per account.
    fn run(s: &mut Scheduler, until_ms: u64, step_ms: u64) -> Vec<u64> {
        let mut sent = vec![0u64; s.len()];
        let mut t = 0;
        while t < until_ms {
            loop {
                match s.grant(50, at(t)) {
                    Grant::Send { account, n } => sent[account] += u64::from(n),
                    Grant::Wait { until } => {
                        assert!(until > at(t));
                        break;
                    }
                }
            }
            t += step_ms;
        }
        sent
    }

    #[test]
    fn never_exceeds_any_accounts_rate() {
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s"), acct("b", 1, "30/s")], at(0));
        let sent = run(&mut s, 10_000, 7);
        // 10 s at 10/s and 30/s, plus the initial full bucket.
        assert!(sent[0] <= 10 * 10 + 10, "{sent:?}");
        assert!(sent[1] <= 30 * 10 + 30, "{sent:?}");
        // And uses nearly all of it.
        assert!(sent[0] >= 95 && sent[1] >= 290, "{sent:?}");
        // In every 1 s window after the first, no account goes over its rate.
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s")], at(0));
        let mut per_window = std::collections::BTreeMap::new();
        let mut t = 0;
        while t < 5_000 {
            while let Grant::Send { n, .. } = s.grant(50, at(t)) {
                *per_window.entry(t / 1000).or_insert(0u64) += u64::from(n);
            }
            t += 3;
        }
        for (w, n) in per_window {
            assert!(n <= if w == 0 { 20 } else { 11 }, "window {w}: {n}");
        }
    }

    #[test]
    fn never_exceeds_the_daily_quota_and_says_when_it_frees_up() {
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s,daily=250")], at(0));
        let sent = run(&mut s, 60_000, 10);
        assert_eq!(sent[0], 250);
        match s.grant(1, at(60_000)) {
            Grant::Wait { until } => assert!(until.as_millis() >= T0 + 86_400_000),
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn traffic_follows_weights_when_accounts_have_room() {
        let mut s = Scheduler::new(vec![acct("a", 3, "1000/s"), acct("b", 1, "1000/s")], at(0));
        let mut sent = [0u64; 2];
        for i in 0..400 {
            if let Grant::Send { account, n } = s.grant(10, at(i * 100)) {
                sent[account] += u64::from(n);
            }
        }
        assert_eq!(sent, [3000, 1000]);
    }

    #[test]
    fn a_full_account_sends_the_rest_to_the_other() {
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s"), acct("b", 1, "5/s")], at(0));
        let sent = run(&mut s, 4_000, 10);
        assert!(sent[0] > 10 * sent[1], "{sent:?}");
        assert!(sent[1] >= 20, "{sent:?}");
    }

    #[test]
    fn an_account_that_fails_goes_down_then_gets_a_probe() {
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s"), acct("b", 1, "100/s")], at(0));
        for _ in 0..DOWN_AFTER {
            s.report(0, &BatchReport::Failed("503".into()), at(0));
        }
        assert!(s.other_up(0, at(0)));
        assert!(!s.other_up(1, at(0)));
        for i in 0..20 {
            match s.grant(50, at(i * 10)) {
                Grant::Send { account, .. } => assert_eq!(account, 1),
                Grant::Wait { .. } => {}
            }
        }
        // After the cooldown: one probe message, then a failure takes it down longer.
        let after = BASE_COOLDOWN.as_millis() as u64 + 1;
        let mut probe = None;
        for k in 0..4 {
            if let Grant::Send { account: 0, n } = s.grant(50, at(after + k)) {
                probe = Some(n);
                break;
            }
        }
        assert_eq!(probe, Some(1));
        s.report(0, &BatchReport::Failed("503".into()), at(after + 5));
        assert!(!s.status(at(after + 5))[0].up);
        // Accepted after the next probe: healthy again, full grants.
        let later = after + 5 + 2 * BASE_COOLDOWN.as_millis() as u64 + 1;
        let mut got = None;
        for k in 0..4 {
            if let Grant::Send { account: 0, n } = s.grant(50, at(later + k)) {
                got = Some(n);
                break;
            }
        }
        assert_eq!(got, Some(1));
        s.report(0, &BatchReport::Accepted, at(later + 10));
        let mut big = false;
        for k in 0..10 {
            if let Grant::Send { account: 0, n } = s.grant(50, at(later + 1000 + k)) {
                big |= n > 1;
            }
        }
        assert!(big);
    }

    #[test]
    fn all_accounts_down_means_wait_not_send() {
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s")], at(0));
        s.report(0, &BatchReport::AccountRefused("bad key".into()), at(0));
        assert!(s.all_down(at(1)));
        assert!(matches!(s.grant(10, at(1)), Grant::Wait { .. }));
        assert_eq!(s.status(at(1))[0].reason.as_deref(), Some("bad key"));
        assert_eq!(s.eta(10, at(1)), None);
    }

    #[test]
    fn a_provider_throttle_empties_the_bucket() {
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s")], at(0));
        assert!(matches!(s.grant(2, at(0)), Grant::Send { n: 2, .. }));
        s.report(0, &BatchReport::Throttled(ThrottleReason::Rate), at(0));
        assert!(matches!(s.grant(1, at(0)), Grant::Wait { .. }));
        assert!(matches!(s.grant(1, at(150)), Grant::Send { n: 1, .. }));
        // A daily-quota throttle fills the configured window.
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s,daily=1000")], at(0));
        s.report(
            0,
            &BatchReport::Throttled(ThrottleReason::DailyQuota),
            at(0),
        );
        match s.grant(1, at(5_000)) {
            Grant::Wait { until } => assert!(until.as_millis() > T0 + 86_000_000),
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn a_held_account_is_skipped_until_the_hold_ends() {
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s"), acct("b", 1, "100/s")], at(0));
        s.hold(0, at(500), at(0));
        for i in 0..10 {
            match s.grant(10, at(i * 10)) {
                Grant::Send { account, .. } => assert_eq!(account, 1),
                g => panic!("{g:?}"),
            }
        }
        // Both held: wait for the earlier hold.
        s.hold(1, at(800), at(100));
        assert_eq!(s.grant(10, at(100)), Grant::Wait { until: at(500) });
        assert!(matches!(
            s.grant(10, at(500)),
            Grant::Send { account: 0, .. }
        ));
        // Given back tokens are granted again.
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s")], at(0));
        assert_eq!(s.grant(10, at(0)), Grant::Send { account: 0, n: 10 });
        s.give_back(0, 4, at(0));
        assert_eq!(s.grant(10, at(0)), Grant::Send { account: 0, n: 4 });
    }

    #[test]
    fn eta_from_rates_and_daily_quotas() {
        let mut s = Scheduler::new(vec![acct("a", 1, "10/s"), acct("b", 1, "40/s")], at(0));
        assert_eq!(s.eta(5_000, at(0)), Some(Duration::from_secs(100)));
        assert_eq!(s.eta(0, at(0)), Some(Duration::ZERO));
        let mut s = Scheduler::new(vec![acct("a", 1, "100/s,daily=1000")], at(0));
        // 2500 messages: 1000 today, 1000 tomorrow, 500 the day after.
        assert_eq!(s.eta(2_500, at(0)), Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(s.eta(900, at(0)), Some(Duration::from_secs(9)));
    }
}
