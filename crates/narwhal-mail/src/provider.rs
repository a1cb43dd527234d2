//! The provider trait, what a send can come to, and what to do about it.
//!
//! Failover is data: an adapter (SES, SMTP, file) classifies every message's fate as a
//! [`SendOutcome`], and [`decide`] maps an outcome plus a little context to a
//! [`Decision`] by a fixed table. The scheduler acts on decisions; it never matches on
//! provider-specific errors.
//!
//! The table, in words:
//!
//! | outcome | decision |
//! | --- | --- |
//! | `Accepted` | `Done` |
//! | `Throttled` (rate) | `WaitAndRetry` on the same account after about a second; not an attempt |
//! | `Throttled` (daily quota) | `FailOver` if another account can take it, else `WaitAndRetry` later |
//! | `Rejected` (this message) | `GiveUp`, with the reason recorded |
//! | `Rejected` (the account: bad credentials, suspended, paused) | `FailOver`, else `Park` |
//! | `TransientError` | `RetrySame` with backoff while attempts remain, then `FailOver`, else `Park` |
//! | `Ambiguous` | `Park`: the provider may have sent it; never resend blindly |
//!
//! A throttled message is never dropped and never counted as failed; an ambiguous one
//! is never sent again through another provider without a decision by a person or a
//! reconciliation, because no provider offers an idempotency key.

use narwhal_domain::Email;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that `dyn Provider` works (several accounts at once).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Our own key for a message, echoed in outcomes (the ledger's row id, for example).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(pub u64);

/// A header added to a message (`List-Unsubscribe`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header name.
    pub name: String,
    /// The header value.
    pub value: String,
}

/// A rendered message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Subject and text/HTML parts; the provider assembles the MIME message.
    Simple {
        /// The subject line.
        subject: String,
        /// The plain-text part.
        text: Option<String>,
        /// The HTML part.
        html: Option<String>,
        /// Extra headers.
        headers: Vec<Header>,
    },
    /// A complete MIME message (headers and body), for example already DKIM-signed.
    Raw(Vec<u8>),
}

impl Content {
    /// The number of bytes of content (an estimate of the message size before encoding).
    pub fn len(&self) -> usize {
        match self {
            Content::Simple {
                subject,
                text,
                html,
                headers,
            } => {
                subject.len()
                    + text.as_ref().map_or(0, String::len)
                    + html.as_ref().map_or(0, String::len)
                    + headers
                        .iter()
                        .map(|h| h.name.len() + h.value.len() + 4)
                        .sum::<usize>()
            }
            Content::Raw(bytes) => bytes.len(),
        }
    }

    /// True when there is no content at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One rendered message to one recipient.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    /// Our key, echoed back with the outcome.
    pub key: MessageKey,
    /// The sender (a verified identity at the provider).
    pub from: Email,
    /// The recipient.
    pub to: Email,
    /// The body.
    pub content: Content,
}

/// Which limit a provider said we hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThrottleReason {
    /// "Maximum sending rate exceeded."
    Rate,
    /// "Daily message quota exceeded."
    DailyQuota,
    /// Throttled for a reason the provider did not make clear (API request throttling).
    Other(String),
}

/// Who a permanent rejection is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectScope {
    /// This message (bad recipient, content refused): another provider would refuse it too.
    Message,
    /// The account (wrong credentials, suspended, sending paused, sender not verified):
    /// no message can go through this account until a person fixes it.
    Account,
}

/// What happened to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider took the message and will try to deliver it.
    Accepted {
        /// The provider's id for it (SES `MessageId`).
        provider_message_id: String,
    },
    /// Refused because of a sending limit; not sent, safe to send again later.
    Throttled {
        /// Which limit.
        reason: ThrottleReason,
    },
    /// Refused for good (for this message or for this account).
    Rejected {
        /// Message or account.
        scope: RejectScope,
        /// The provider's words.
        reason: String,
    },
    /// Not sent because of a failure that may pass (outage, 5xx, connection refused).
    TransientError {
        /// What failed.
        reason: String,
    },
    /// The request left us but no answer came back: the provider may have sent it.
    Ambiguous {
        /// What happened.
        reason: String,
    },
}

impl SendOutcome {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SendOutcome::Accepted { .. } => "accepted",
            SendOutcome::Throttled { .. } => "throttled",
            SendOutcome::Rejected {
                scope: RejectScope::Message,
                ..
            } => "rejected",
            SendOutcome::Rejected {
                scope: RejectScope::Account,
                ..
            } => "account_rejected",
            SendOutcome::TransientError { .. } => "transient_error",
            SendOutcome::Ambiguous { .. } => "ambiguous",
        }
    }
}

/// What the scheduler should do with a message after an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: it was accepted.
    Done,
    /// Try the same account again after the pause (counts as an attempt).
    RetrySame {
        /// Backoff before the next attempt.
        after: Duration,
    },
    /// Requeue and wait for the limit to clear (does not count as an attempt).
    WaitAndRetry {
        /// How long to wait at least.
        after: Duration,
    },
    /// Send it through another account.
    FailOver,
    /// Record the failure and stop trying.
    GiveUp,
    /// Set it aside for a person or a reconciliation; do not send it again on our own.
    Park,
}

/// What [`decide`] needs to know besides the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryContext {
    /// Attempts already made for this message on this account (1 after the first try).
    pub attempts: u32,
    /// The most attempts on one account before failing over.
    pub max_attempts: u32,
    /// Whether another healthy account with room could take the message.
    pub other_account_available: bool,
}

/// The pause after a rate throttle: the bucket refills within a second.
pub const RATE_THROTTLE_WAIT: Duration = Duration::from_secs(1);
/// The pause after a daily-quota throttle with nowhere else to go (SES advises waiting
/// up to 10 minutes and retrying).
pub const QUOTA_THROTTLE_WAIT: Duration = Duration::from_secs(600);
/// The first transient-error backoff; it doubles per attempt up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// The longest transient-error backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Exponential backoff for the `attempts`-th retry: 0.5 s, 1 s, 2 s, ... capped at 60 s.
/// Callers add jitter.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The decision table (see the module documentation).
pub fn decide(outcome: &SendOutcome, ctx: &RetryContext) -> Decision {
    match outcome {
        SendOutcome::Accepted { .. } => Decision::Done,
        SendOutcome::Throttled {
            reason: ThrottleReason::DailyQuota,
        } => {
            if ctx.other_account_available {
                Decision::FailOver
            } else {
                Decision::WaitAndRetry {
                    after: QUOTA_THROTTLE_WAIT,
                }
            }
        }
        SendOutcome::Throttled { .. } => Decision::WaitAndRetry {
            after: RATE_THROTTLE_WAIT,
        },
        SendOutcome::Rejected {
            scope: RejectScope::Message,
            ..
        } => Decision::GiveUp,
        SendOutcome::Rejected {
            scope: RejectScope::Account,
            ..
        } => {
            if ctx.other_account_available {
                Decision::FailOver
            } else {
                Decision::Park
            }
        }
        SendOutcome::TransientError { .. } => {
            if ctx.attempts < ctx.max_attempts {
                Decision::RetrySame {
                    after: backoff(ctx.attempts),
                }
            } else if ctx.other_account_available {
                Decision::FailOver
            } else {
                Decision::Park
            }
        }
        SendOutcome::Ambiguous { .. } => Decision::Park,
    }
}

/// Limits an account reports about itself (SES `GetAccount`'s `SendQuota`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportedQuota {
    /// Messages per second.
    pub max_send_rate: f64,
    /// Messages per rolling 24 hours; -1 means unlimited.
    pub max_24_hour_send: f64,
    /// Messages sent in the last 24 hours.
    pub sent_last_24_hours: f64,
}

/// Why asking a provider about itself failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error.
    #[error("{code}: {message}")]
    Api {
        /// The error type (`UnrecognizedClientException`, ...).
        code: String,
        /// The provider's message.
        message: String,
    },
    /// The provider could not be reached or did not answer in time.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer could not be understood.
    #[error("unexpected response: {0}")]
    Decode(String),
}

/// An account's health, as seen from its recent outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Sending normally.
    Healthy,
    /// Recent transient failures; still worth trying.
    Degraded {
        /// The last failure.
        reason: String,
    },
    /// Do not route to it (outage, or the account itself was refused).
    Down {
        /// Why.
        reason: String,
    },
}

/// Passive health from a stream of outcomes: three transient failures or ambiguous
/// answers in a row make an account `Down`, one makes it `Degraded`; an account-level
/// rejection makes it `Down` until a success; any acceptance makes it `Healthy`.
#[derive(Clone, Debug, Default)]
pub struct HealthTracker {
    consecutive_failures: u32,
    account_rejected: Option<String>,
    last_failure: Option<String>,
}

/// Failures in a row that take an account down.
pub const DOWN_AFTER: u32 = 3;

impl HealthTracker {
    /// Folds one outcome in.
    pub fn observe(&mut self, outcome: &SendOutcome) {
        match outcome {
            SendOutcome::Accepted { .. } => {
                self.consecutive_failures = 0;
                self.account_rejected = None;
                self.last_failure = None;
            }
            SendOutcome::TransientError { reason } | SendOutcome::Ambiguous { reason } => {
                self.consecutive_failures += 1;
                self.last_failure = Some(reason.clone());
            }
            SendOutcome::Rejected {
                scope: RejectScope::Account,
                reason,
            } => self.account_rejected = Some(reason.clone()),
            SendOutcome::Throttled { .. }
            | SendOutcome::Rejected {
                scope: RejectScope::Message,
                ..
            } => {}
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        if let Some(reason) = &self.account_rejected {
            return Health::Down {
                reason: reason.clone(),
            };
        }
        let reason = self.last_failure.clone().unwrap_or_default();
        match self.consecutive_failures {
            0 => Health::Healthy,
            n if n < DOWN_AFTER => Health::Degraded { reason },
            _ => Health::Down { reason },
        }
    }
}

/// A sending account at one provider.
///
/// `send_batch` answers exactly one outcome per message, in the same order; it never
/// fails as a whole (a failed request becomes the same outcome for every message in it).
pub trait Provider: Send + Sync {
    /// A stable name for logs, metrics and ledger rows (`ses:us-east-1:main`).
    fn name(&self) -> &str;

    /// The most messages one `send_batch` call takes.
    fn max_batch(&self) -> usize;

    /// Sends the messages and classifies each one's fate.
    fn send_batch<'a>(&'a self, messages: &'a [OutgoingMessage])
        -> BoxFuture<'a, Vec<SendOutcome>>;

    /// The limits the provider reports for the account, or `None` if it reports none
    /// (then the configured [`crate::ThrottleSpec`] alone applies).
    fn quota(&self) -> BoxFuture<'_, Result<Option<ReportedQuota>, ProviderError>>;

    /// Health from recent outcomes.
    fn health(&self) -> Health;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempts: u32, other: bool) -> RetryContext {
        RetryContext {
            attempts,
            max_attempts: 3,
            other_account_available: other,
        }
    }

    fn transient() -> SendOutcome {
        SendOutcome::TransientError {
            reason: "503".into(),
        }
    }

    #[test]
    fn the_decision_table() {
        let accepted = SendOutcome::Accepted {
            provider_message_id: "m".into(),
        };
        let rate = SendOutcome::Throttled {
            reason: ThrottleReason::Rate,
        };
        let quota = SendOutcome::Throttled {
            reason: ThrottleReason::DailyQuota,
        };
        let bad_msg = SendOutcome::Rejected {
            scope: RejectScope::Message,
            reason: "MessageRejected".into(),
        };
        let bad_account = SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason: "UnrecognizedClientException".into(),
        };
        let ambiguous = SendOutcome::Ambiguous {
            reason: "timeout".into(),
        };
        let wait_rate = Decision::WaitAndRetry {
            after: RATE_THROTTLE_WAIT,
        };
        let cases: &[(&SendOutcome, RetryContext, Decision)] = &[
            (&accepted, ctx(1, true), Decision::Done),
            (&rate, ctx(1, true), wait_rate),
            (&rate, ctx(9, false), wait_rate),
            (&quota, ctx(1, true), Decision::FailOver),
            (
                &quota,
                ctx(1, false),
                Decision::WaitAndRetry {
                    after: QUOTA_THROTTLE_WAIT,
                },
            ),
            (&bad_msg, ctx(1, true), Decision::GiveUp),
            (&bad_account, ctx(1, true), Decision::FailOver),
            (&bad_account, ctx(1, false), Decision::Park),
            (
                &transient(),
                ctx(1, true),
                Decision::RetrySame { after: backoff(1) },
            ),
            (
                &transient(),
                ctx(2, false),
                Decision::RetrySame { after: backoff(2) },
            ),
            (&transient(), ctx(3, true), Decision::FailOver),
            (&transient(), ctx(3, false), Decision::Park),
            (&ambiguous, ctx(1, true), Decision::Park),
            (&ambiguous, ctx(1, false), Decision::Park),
        ];
        for (outcome, c, want) in cases {
            assert_eq!(decide(outcome, c), *want, "{outcome:?} with {c:?}");
        }
    }

    #[test]
    fn throttling_is_never_a_failure() {
        for reason in [
            ThrottleReason::Rate,
            ThrottleReason::DailyQuota,
            ThrottleReason::Other("TooManyRequests".into()),
        ] {
            for other in [true, false] {
                let d = decide(
                    &SendOutcome::Throttled {
                        reason: reason.clone(),
                    },
                    &ctx(99, other),
                );
                assert!(
                    matches!(d, Decision::WaitAndRetry { .. } | Decision::FailOver),
                    "{reason:?} gave {d:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn health_follows_outcomes() {
        let mut h = HealthTracker::default();
        assert_eq!(h.health(), Health::Healthy);
        h.observe(&transient());
        assert!(matches!(h.health(), Health::Degraded { .. }));
        h.observe(&SendOutcome::Throttled {
            reason: ThrottleReason::Rate,
        });
        h.observe(&transient());
        h.observe(&SendOutcome::Ambiguous {
            reason: "timeout".into(),
        });
        assert_eq!(
            h.health(),
            Health::Down {
                reason: "timeout".into()
            }
        );
        h.observe(&SendOutcome::Accepted {
            provider_message_id: "x".into(),
        });
        assert_eq!(h.health(), Health::Healthy);
        h.observe(&SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason: "bad key".into(),
        });
        assert_eq!(
            h.health(),
            Health::Down {
                reason: "bad key".into()
            }
        );
    }

    #[test]
    fn content_length_counts_all_parts() {
        let c = Content::Simple {
            subject: "Hi".into(),
            text: Some("abc".into()),
            html: None,
            headers: vec![Header {
                name: "X".into(),
                value: "y".into(),
            }],
        };
        assert_eq!(c.len(), 2 + 3 + 1 + 1 + 4);
        assert!(Content::Raw(Vec::new()).is_empty());
    }
}
