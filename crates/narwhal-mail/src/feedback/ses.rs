//! SES notifications (the `Message` of an SNS delivery) as feedback events.
//!
//! Two shapes carry the same objects: identity notifications name their type in
//! `notificationType`, configuration-set event publishing in `eventType`. Both have
//! `mail` (`messageId`, `destination`, `timestamp`, and `headers` when the topic
//! includes original headers) and one of `bounce` (`bounceType` Permanent / Transient /
//! Undetermined, `bouncedRecipients[]` with `emailAddress`, `status`,
//! `diagnosticCode`), `complaint` (`complainedRecipients[]`,
//! `complaintFeedbackType`), `delivery` (`recipients[]`) or `reject` (`reason`).
//! Other event types (Send, Open, Click, DeliveryDelay, Rendering Failure,
//! Subscription) are accepted and change nothing.

use super::{clip, parse_time, token_from_list_unsubscribe, FeedbackEvent, FeedbackKind};
use crate::unsubscribe::UnsubscribeSigner;
use narwhal_domain::Email;
use serde::Deserialize;

/// Why an SES notification could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an SES notification: {0}")]
pub struct SesParseError(pub String);

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Notification {
    notification_type: Option<String>,
    event_type: Option<String>,
    #[serde(default)]
    mail: Mail,
    bounce: Option<Bounce>,
    complaint: Option<Complaint>,
    delivery: Option<Delivery>,
    reject: Option<Reject>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Mail {
    message_id: Option<String>,
    timestamp: Option<String>,
    #[serde(default)]
    destination: Vec<String>,
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    bounce_type: String,
    bounce_sub_type: Option<String>,
    #[serde(default)]
    bounced_recipients: Vec<Recipient>,
    timestamp: Option<String>,
    feedback_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    email_address: String,
    status: Option<String>,
    diagnostic_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    #[serde(default)]
    complained_recipients: Vec<Recipient>,
    complaint_feedback_type: Option<String>,
    timestamp: Option<String>,
    feedback_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    #[serde(default)]
    recipients: Vec<String>,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct Reject {
    reason: Option<String>,
}

/// What a notification said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// `notificationType` or `eventType` as sent.
    pub kind: String,
    /// The events to apply (none for types that change nothing).
    pub events: Vec<FeedbackEvent>,
    /// Recipient addresses that did not parse (skipped, counted).
    pub bad_addresses: usize,
}

/// Parses an SES notification. `fallback_key` makes events unique when the mail has
/// no message id; `fallback_at` (ms) stands for a missing timestamp.
pub fn parse(
    message: &str,
    fallback_key: &str,
    fallback_at: i64,
    signer: Option<&UnsubscribeSigner>,
) -> Result<Parsed, SesParseError> {
    let n: Notification =
        serde_json::from_str(message).map_err(|e| SesParseError(e.to_string()))?;
    let kind = n
        .notification_type
        .or(n.event_type)
        .ok_or_else(|| SesParseError("no notificationType or eventType".into()))?;
    let message_id = n.mail.message_id.clone().filter(|m| !m.is_empty());
    let mail_at = n.mail.timestamp.as_deref().and_then(parse_time);
    let token = signer.and_then(|s| {
        n.mail
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("List-Unsubscribe"))
            .and_then(|h| token_from_list_unsubscribe(&h.value, s))
    });
    let mut out = Parsed {
        kind: kind.clone(),
        events: Vec::new(),
        bad_addresses: 0,
    };
    let push = |out: &mut Parsed,
                kind: FeedbackKind,
                address: &str,
                at: Option<i64>,
                feedback_id: Option<&str>,
                detail: String| {
        let Ok(email) = Email::parse(address) else {
            out.bad_addresses += 1;
            return;
        };
        let event_key = message_id
            .clone()
            .or_else(|| feedback_id.map(str::to_string))
            .unwrap_or_else(|| fallback_key.to_string());
        out.events.push(FeedbackEvent {
            kind,
            email,
            message_id: message_id.clone(),
            event_key,
            at: at.or(mail_at).unwrap_or(fallback_at),
            token,
            detail: clip(detail, 300),
        });
    };
    match kind.as_str() {
        "Bounce" => {
            let b = n
                .bounce
                .ok_or_else(|| SesParseError("a Bounce without bounce".into()))?;
            let k = match b.bounce_type.as_str() {
                "Permanent" => FeedbackKind::Bounce,
                // Undetermined: SES could not tell; count it like a transient one.
                "Transient" | "Undetermined" => FeedbackKind::TransientBounce,
                other => return Err(SesParseError(format!("bounceType {other:?}"))),
            };
            let at = b.timestamp.as_deref().and_then(parse_time);
            for r in &b.bounced_recipients {
                let mut detail = b.bounce_type.to_lowercase();
                if let Some(s) = &b.bounce_sub_type {
                    detail.push_str(&format!(" ({s})"));
                }
                if let Some(s) = &r.status {
                    detail.push_str(&format!(" {s}"));
                }
                if let Some(d) = &r.diagnostic_code {
                    detail.push_str(&format!(": {d}"));
                }
                push(
                    &mut out,
                    k,
                    &r.email_address,
                    at,
                    b.feedback_id.as_deref(),
                    detail,
                );
            }
        }
        "Complaint" => {
            let c = n
                .complaint
                .ok_or_else(|| SesParseError("a Complaint without complaint".into()))?;
            let at = c.timestamp.as_deref().and_then(parse_time);
            let detail = c
                .complaint_feedback_type
                .clone()
                .unwrap_or_else(|| "reported".into());
            for r in &c.complained_recipients {
                push(
                    &mut out,
                    FeedbackKind::Complaint,
                    &r.email_address,
                    at,
                    c.feedback_id.as_deref(),
                    detail.clone(),
                );
            }
        }
        "Delivery" => {
            let d = n
                .delivery
                .ok_or_else(|| SesParseError("a Delivery without delivery".into()))?;
            let at = d.timestamp.as_deref().and_then(parse_time);
            for r in &d.recipients {
                push(
                    &mut out,
                    FeedbackKind::Delivery,
                    r,
                    at,
                    None,
                    "delivered".into(),
                );
            }
        }
        "Reject" => {
            let reason = n
                .reject
                .and_then(|r| r.reason)
                .unwrap_or_else(|| "rejected".into());
            for r in &n.mail.destination {
                push(
                    &mut out,
                    FeedbackKind::Reject,
                    r,
                    None,
                    None,
                    reason.clone(),
                );
            }
        }
        _ => {}
    }
    Ok(out)
}
