//! Bounces, complaints and deliveries: what providers and receiving servers report
//! after a send, turned into the same [`FeedbackEvent`]s and applied by the store.
//!
//! - [`sns`]: Amazon SNS envelopes, their signatures (v1 SHA-1, v2 SHA-256) and the
//!   signing certificate, fetched only from trusted URLs and cached.
//! - [`ses`]: the SES notifications inside (Bounce, Complaint, Delivery, Reject).
//! - [`dsn`]: SMTP replies with enhanced status codes (RFC 3463) and delivery status
//!   notifications (RFC 3464).
//!
//! [`Feedback`] ties them to the store: every payload is recorded durably first
//! ([`Store::receive_feedback`], deduplicated by the SNS `MessageId` or the DSN's
//! `Message-ID`), then its events are applied in one transaction
//! ([`Store::apply_feedback`]: consent, suppressions, the transient-bounce threshold,
//! the blast's ledger). The effects and why replays and reordering change nothing are
//! described in `narwhal_store::feedback`.
//!
//! Events find their blast by the provider message id in the ledger (blasts that keep
//! message ids) or by the signed unsubscribe token in the original message's
//! `List-Unsubscribe` header, when the notification or the DSN carries the headers.

pub mod dsn;
pub mod ses;
pub mod sns;

use crate::unsubscribe::UnsubscribeSigner;
use narwhal_domain::{Email, PersonId};
use narwhal_store::blasts::BlastId;
pub use narwhal_store::feedback::{
    Applied, FeedbackEvent, FeedbackId, FeedbackKind, FeedbackState, StoredFeedback,
    TransientPolicy,
};
use narwhal_store::{now_ms, Store, StoreError};
use serde::Serialize;
use std::sync::Arc;

/// The `source` of SES notifications that came through SNS.
pub const SOURCE_SNS: &str = "ses-sns";
/// The `source` of delivery status notifications.
pub const SOURCE_DSN: &str = "dsn";
/// The `source` of immediate SMTP rejections.
pub const SOURCE_SMTP: &str = "smtp";

/// Why feedback was refused or could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// The SNS envelope is not acceptable (see [`sns::SnsError::code`]).
    #[error(transparent)]
    Sns(#[from] sns::SnsError),
    /// The message is not a delivery status notification.
    #[error(transparent)]
    Dsn(#[from] dsn::DsnError),
    /// The SMTP reply could not be read.
    #[error("not an SMTP reply")]
    NotAReply,
    /// A stored payload from a source this version does not know.
    #[error("unknown feedback source {0:?}")]
    UnknownSource(String),
    /// Storage failed: nothing was acknowledged; the sender should retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FeedbackError {
    /// A stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Sns(e) => e.code(),
            Self::Dsn(dsn::DsnError::NotAReport) => "not_a_dsn",
            Self::Dsn(dsn::DsnError::NoRecipients) => "dsn_without_recipients",
            Self::NotAReply => "not_an_smtp_reply",
            Self::UnknownSource(_) => "unknown_source",
            Self::Store(_) => "unavailable",
        }
    }
}

/// What ingesting one payload did.
#[derive(Debug, Clone, Serialize)]
pub struct Ingested {
    /// The stored payload.
    pub id: FeedbackId,
    /// The SNS `Type` and SES type (`Notification/Bounce`), or `dsn`, or `smtp`.
    pub kind: String,
    /// True when this payload was already processed: nothing changed.
    pub duplicate: bool,
    /// The state the payload is left in.
    pub state: FeedbackState,
    /// The events' effects (absent for duplicates and confirmations).
    pub applied: Option<Applied>,
    /// Why a payload was set aside, when it was.
    pub note: Option<String>,
}

impl Ingested {
    /// A payload just stored (or found already stored: then a duplicate).
    fn received(rec: narwhal_store::feedback::Received, kind: String) -> Self {
        Self {
            id: rec.id,
            kind,
            duplicate: rec.state != FeedbackState::Received,
            state: rec.state,
            applied: None,
            note: None,
        }
    }
}

/// Ingests feedback into the store.
#[derive(Clone)]
pub struct Feedback {
    store: Store,
    /// Reads the unsubscribe tokens of returned headers (the campaign's signer).
    signer: Option<UnsubscribeSigner>,
    verifier: Arc<sns::SnsVerifier>,
    policy: TransientPolicy,
}

impl std::fmt::Debug for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feedback")
            .field("verifier", &self.verifier)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Feedback {
    /// Over `store`, verifying SNS deliveries with `verifier`.
    pub fn new(
        store: Store,
        verifier: Arc<sns::SnsVerifier>,
        signer: Option<UnsubscribeSigner>,
        policy: TransientPolicy,
    ) -> Self {
        Self {
            store,
            signer,
            verifier,
            policy,
        }
    }

    /// An SNS POST body: verified, recorded, then (for notifications) applied. A
    /// subscription confirmation is confirmed when its URL is trusted.
    pub async fn ingest_sns(&self, body: &[u8]) -> Result<Ingested, FeedbackError> {
        let env = sns::parse(body)?;
        self.verifier.verify(&env).await?;
        let text = String::from_utf8_lossy(body);
        let rec = self
            .store
            .receive_feedback(SOURCE_SNS, &env.message_id, &text)
            .await?;
        let out = Ingested::received(rec, env.kind.as_str().to_string());
        if out.duplicate {
            return Ok(out);
        }
        self.process_sns(out, &env).await
    }

    /// Acts on a stored, verified SNS envelope: confirms a subscription or applies a
    /// notification's events.
    async fn process_sns(
        &self,
        mut out: Ingested,
        env: &sns::Envelope,
    ) -> Result<Ingested, FeedbackError> {
        let id = out.id;
        let finish = |state: FeedbackState, note: String| async move {
            self.store.finish_feedback(id, state, &note).await?;
            Ok::<_, FeedbackError>((state, note))
        };
        let (state, note) = match env.kind {
            sns::MessageType::SubscriptionConfirmation => match self.verifier.confirm(env).await {
                Ok(()) => {
                    tracing::info!(topic = %env.topic_arn, "SNS subscription confirmed");
                    finish(FeedbackState::Processed, "subscription confirmed".into()).await?
                }
                Err(e @ sns::SnsError::UntrustedUrl(_)) => {
                    finish(FeedbackState::Rejected, e.to_string()).await?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            },
            sns::MessageType::UnsubscribeConfirmation => {
                tracing::warn!(topic = %env.topic_arn, "SNS says this endpoint was unsubscribed");
                finish(
                    FeedbackState::Processed,
                    "unsubscribed from the topic".into(),
                )
                .await?
            }
            sns::MessageType::Notification => {
                let fallback_at = parse_time(&env.timestamp).unwrap_or_else(now_ms);
                match ses::parse(
                    &env.message,
                    &env.message_id,
                    fallback_at,
                    self.signer.as_ref(),
                ) {
                    Ok(parsed) => {
                        out.kind = format!("Notification/{}", parsed.kind);
                        let applied = self
                            .store
                            .apply_feedback(id, &parsed.events, self.policy)
                            .await?;
                        out.applied = Some(applied);
                        tracing::info!(kind = %parsed.kind, recorded = applied.recorded, duplicates = applied.duplicates,
                            consent_changed = applied.consent_changed, suppressed = applied.suppressed, "SES feedback");
                        (
                            FeedbackState::Processed,
                            format!("{} events", applied.recorded),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SNS notification is not an SES notification");
                        finish(FeedbackState::Rejected, e.to_string()).await?
                    }
                }
            }
        };
        out.state = state;
        out.note = Some(note);
        Ok(out)
    }

    /// A delivery status notification (the whole message): parsed, recorded, applied.
    pub async fn ingest_dsn(&self, raw: &[u8]) -> Result<Ingested, FeedbackError> {
        let d = dsn::parse_dsn(raw)?;
        let key = d
            .message_id
            .clone()
            .filter(|m| !m.is_empty() && m.len() <= 500)
            .unwrap_or_else(|| sha256_hex(raw));
        let payload = match std::str::from_utf8(raw) {
            Ok(s) => s.to_string(),
            Err(_) => {
                use base64::Engine;
                format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
        };
        let rec = self
            .store
            .receive_feedback(SOURCE_DSN, &key, &payload)
            .await?;
        let out = Ingested::received(rec, "dsn".into());
        if out.duplicate {
            return Ok(out);
        }
        self.process_dsn(out, &d, &key).await
    }

    /// Applies a stored delivery status notification (`key`: its dedup key).
    async fn process_dsn(
        &self,
        mut out: Ingested,
        d: &dsn::Dsn,
        key: &str,
    ) -> Result<Ingested, FeedbackError> {
        let token = match (&d.original_list_unsubscribe, &self.signer) {
            (Some(v), Some(s)) => token_from_list_unsubscribe(v, s),
            _ => None,
        };
        let original = d
            .original_message_id
            .as_deref()
            .map(|m| m.trim().trim_matches(['<', '>']).to_string());
        let report_at = d
            .arrival_date
            .as_deref()
            .or(d.date.as_deref())
            .and_then(parse_time)
            .unwrap_or_else(now_ms);
        let mut events = Vec::new();
        let mut skipped = 0;
        for r in &d.recipients {
            let (Some(kind), Ok(email)) = (r.kind(), Email::parse(&r.address)) else {
                skipped += 1;
                continue;
            };
            let mut detail = r.action.clone();
            if let Some(s) = r.status {
                detail.push_str(&format!(" {s}"));
            }
            if let Some(dc) = &r.diagnostic {
                detail.push_str(&format!(": {dc}"));
            }
            let detail = clip(detail, 300);
            events.push(FeedbackEvent {
                kind,
                email,
                message_id: original.clone(),
                event_key: original.clone().unwrap_or_else(|| key.to_string()),
                at: r
                    .last_attempt
                    .as_deref()
                    .and_then(parse_time)
                    .unwrap_or(report_at),
                token,
                detail,
            });
        }
        let applied = self
            .store
            .apply_feedback(out.id, &events, self.policy)
            .await?;
        out.applied = Some(applied);
        out.state = FeedbackState::Processed;
        out.note = Some(format!(
            "{} events, {skipped} recipient blocks without effect",
            applied.recorded
        ));
        Ok(out)
    }

    /// An immediate SMTP rejection of `email` in `blast` (for the blast worker): the
    /// reply is classified by its enhanced status code and applied like any bounce (a
    /// permanent one suppresses the address and sets the person's consent at once).
    /// One per (blast, person, reply code): the worker may report it again after a
    /// crash, and nothing changes.
    pub async fn ingest_smtp_reply(
        &self,
        email: &Email,
        reply: &str,
        blast: BlastId,
        person: PersonId,
    ) -> Result<Ingested, FeedbackError> {
        let v = dsn::classify_smtp_reply(reply).ok_or(FeedbackError::NotAReply)?;
        let key = format!("{}:{}:{}", blast.0, person.0, v.code);
        let payload = SmtpRejection {
            blast: blast.0,
            person: person.0,
            email: email.as_str().to_string(),
            reply: reply.to_string(),
        };
        let payload = serde_json::to_string(&payload).map_err(|_| FeedbackError::NotAReply)?;
        let rec = self
            .store
            .receive_feedback(SOURCE_SMTP, &key, &payload)
            .await?;
        let out = Ingested::received(rec, "smtp".into());
        if out.duplicate {
            return Ok(out);
        }
        self.process_smtp(out, email, reply, blast, person, &key)
            .await
    }

    async fn process_smtp(
        &self,
        mut out: Ingested,
        email: &Email,
        reply: &str,
        blast: BlastId,
        person: PersonId,
        key: &str,
    ) -> Result<Ingested, FeedbackError> {
        let v = dsn::classify_smtp_reply(reply).ok_or(FeedbackError::NotAReply)?;
        let detail = clip(reply.lines().next().unwrap_or("").to_string(), 300);
        let event = FeedbackEvent {
            kind: v.kind,
            email: email.clone(),
            message_id: None,
            event_key: key.to_string(),
            at: now_ms(),
            token: Some((blast, person)),
            detail,
        };
        let applied = self
            .store
            .apply_feedback(out.id, &[event], self.policy)
            .await?;
        out.state = FeedbackState::Processed;
        out.applied = Some(applied);
        Ok(out)
    }

    /// Finishes payloads that were stored but never processed, received at least
    /// `older_than_ms` ago: their node died between storing and applying them, and
    /// the sender gave up redelivering (or, for SMTP rejections, never redelivers).
    /// SNS envelopes were verified before they were stored, so they are not fetched
    /// and verified again. A payload that cannot be processed any more is marked
    /// rejected with the reason; a storage failure stops the sweep (the rest wait for
    /// the next one).
    pub async fn sweep(&self, older_than_ms: i64, limit: i64) -> Result<Swept, StoreError> {
        let cutoff = now_ms().saturating_sub(older_than_ms);
        let mut swept = Swept::default();
        for p in self.store.unprocessed_feedback(limit).await? {
            if p.received_at > cutoff {
                break;
            }
            match self.reprocess(&p).await {
                Ok(_) => swept.processed += 1,
                Err(FeedbackError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(feedback.id = p.id.0, source = %p.source, error = %e, "stored feedback cannot be processed");
                    self.store
                        .finish_feedback(p.id, FeedbackState::Rejected, &e.to_string())
                        .await?;
                    swept.rejected += 1;
                }
            }
        }
        if swept.processed + swept.rejected > 0 {
            tracing::info!(
                processed = swept.processed,
                rejected = swept.rejected,
                "swept stored feedback"
            );
        }
        Ok(swept)
    }

    async fn reprocess(&self, p: &StoredFeedback) -> Result<Ingested, FeedbackError> {
        let out = Ingested {
            id: p.id,
            kind: p.source.clone(),
            duplicate: false,
            state: FeedbackState::Received,
            applied: None,
            note: None,
        };
        match p.source.as_str() {
            SOURCE_SNS => {
                let env = sns::parse(p.payload.as_bytes())?;
                self.process_sns(out, &env).await
            }
            SOURCE_DSN => {
                let raw = match p.payload.strip_prefix("base64:") {
                    Some(b) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|_| dsn::DsnError::NotAReport)?
                    }
                    None => p.payload.as_bytes().to_vec(),
                };
                let d = dsn::parse_dsn(&raw)?;
                self.process_dsn(out, &d, &p.dedup_key).await
            }
            SOURCE_SMTP => {
                let r: SmtpRejection =
                    serde_json::from_str(&p.payload).map_err(|_| FeedbackError::NotAReply)?;
                let email = Email::parse(&r.email).map_err(|_| FeedbackError::NotAReply)?;
                self.process_smtp(
                    out,
                    &email,
                    &r.reply,
                    BlastId(r.blast),
                    PersonId(r.person),
                    &p.dedup_key,
                )
                .await
            }
            other => Err(FeedbackError::UnknownSource(other.to_string())),
        }
    }
}

/// What [`Feedback::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Payloads applied now.
    pub processed: u32,
    /// Payloads that could not be processed, marked rejected with the reason.
    pub rejected: u32,
}

/// The stored form of an immediate SMTP rejection.
#[derive(Debug, serde::Deserialize, Serialize)]
struct SmtpRejection {
    blast: i64,
    person: i64,
    email: String,
    reply: String,
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn clip(mut s: String, max: usize) -> String {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    s.truncate(i);
    s
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The (blast, person) named by the one-click URL in a `List-Unsubscribe` value
/// (`<https://act.example.org/u/TOKEN>, <mailto:...>`), if it is a token we signed.
pub fn token_from_list_unsubscribe(
    value: &str,
    signer: &UnsubscribeSigner,
) -> Option<(BlastId, PersonId)> {
    value
        .split(',')
        .map(|v| v.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|v| v.starts_with("https://") || v.starts_with("http://"))
        .filter_map(|url| url.rsplit('/').next())
        .find_map(|t| signer.verify(t).ok())
        .map(|(b, p)| (BlastId(b), PersonId(p)))
}

/// Milliseconds since the epoch of an ISO 8601 (`2016-01-27T14:59:38.237Z`) or RFC 5322
/// (`Wed, 27 Jan 2016 14:59:38 +0000 (UTC)`) date.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::{Rfc2822, Rfc3339};
    let s = s.trim();
    let dt = time::OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let no_comment = match s.find('(') {
            Some(i) => s[..i].trim(),
            None => s,
        };
        time::OffsetDateTime::parse(no_comment, &Rfc2822).ok()
    })?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2016-01-27T14:59:38.237Z"),
            Some(1_453_906_778_237)
        );
        assert_eq!(
            parse_time("Wed, 27 Jan 2016 14:59:38 +0000 (UTC)"),
            Some(1_453_906_778_000)
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn tokens_in_list_unsubscribe() {
        let s = UnsubscribeSigner::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = s.token(4, 99);
        let v = format!("<https://act.example.org/u/{t}>, <mailto:u@act.example.org>");
        assert_eq!(
            token_from_list_unsubscribe(&v, &s),
            Some((BlastId(4), PersonId(99)))
        );
        let other = UnsubscribeSigner::new(b"another key, another campaign!!!").unwrap();
        assert_eq!(token_from_list_unsubscribe(&v, &other), None);
        assert_eq!(token_from_list_unsubscribe("<mailto:x@y>", &s), None);
    }
}
