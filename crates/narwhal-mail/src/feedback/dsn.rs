//! SMTP-side failures: enhanced status codes (RFC 3463), SMTP replies, and delivery
//! status notifications (RFC 3464, `multipart/report; report-type=delivery-status`).
//!
//! Classification, by the enhanced code first (DOMAIN.md, section 4):
//!
//! | code | kind |
//! | --- | --- |
//! | `2.x.x` | delivery |
//! | `4.x.x` | transient bounce |
//! | `5.1.x` (not 5.1.7/5.1.8, the sender's address), `5.2.1` mailbox disabled, `5.4.4` no route | permanent bounce |
//! | other `5.x.x` (policy, content, mailbox full, system) | transient bounce: not proof the address is dead, but counted |
//!
//! Without an enhanced code the basic reply code decides: 550, 551 and 553 are permanent
//! (mailbox unavailable, not local, name not allowed), other 5xx and all 4xx transient.

use super::FeedbackKind;

/// An enhanced mail system status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    /// 0-7: other, addressing, mailbox, mail system, network, protocol, content, policy.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// Parses `5.1.1` (trailing text after a space is ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let code = s.split_whitespace().next()?;
        let mut it = code.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject: u16 = it.next()?.parse().ok()?;
        let detail: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Self {
            class,
            subject,
            detail,
        })
    }

    /// What this code means for the recipient.
    pub fn kind(&self) -> FeedbackKind {
        match (self.class, self.subject, self.detail) {
            (2, _, _) => FeedbackKind::Delivery,
            (4, _, _) => FeedbackKind::TransientBounce,
            (5, 1, d) if d != 7 && d != 8 => FeedbackKind::Bounce,
            (5, 2, 1) | (5, 4, 4) => FeedbackKind::Bounce,
            _ => FeedbackKind::TransientBounce,
        }
    }
}

impl std::fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// What an SMTP reply says about the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpVerdict {
    /// The basic reply code (`550`).
    pub code: u16,
    /// The enhanced code, when the reply has one.
    pub status: Option<EnhancedStatus>,
    /// The classification.
    pub kind: FeedbackKind,
}

/// Classifies an SMTP reply such as `550 5.1.1 <a@b>: Recipient address rejected` (the
/// first line of a multi-line reply decides). `None` when it is not a reply.
pub fn classify_smtp_reply(reply: &str) -> Option<SmtpVerdict> {
    let line = reply.lines().next()?.trim_start();
    let code: u16 = line.get(..3)?.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    let rest = line.get(3..).unwrap_or("");
    let rest = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('-'))
        .unwrap_or(rest);
    // The enhanced code's class must agree with the reply's (RFC 3463, section 1).
    let status = EnhancedStatus::parse(rest).filter(|s| u16::from(s.class) == code / 100);
    let kind = match (status, code / 100) {
        (Some(s), _) => s.kind(),
        (None, 2 | 3) => FeedbackKind::Delivery,
        (None, 5) if matches!(code, 550 | 551 | 553) => FeedbackKind::Bounce,
        (None, _) => FeedbackKind::TransientBounce,
    };
    Some(SmtpVerdict { code, status, kind })
}

/// One recipient's block of a delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient` (else `Original-Recipient`), without its address type.
    pub address: String,
    /// `Action`: failed, delayed, delivered, relayed or expanded (lower case).
    pub action: String,
    /// `Status`.
    pub status: Option<EnhancedStatus>,
    /// `Diagnostic-Code`, without its type (`550 5.1.1 ...`).
    pub diagnostic: Option<String>,
    /// `Last-Attempt-Date`, when given.
    pub last_attempt: Option<String>,
}

impl DsnRecipient {
    /// What this block means: `None` for `delayed` (still being tried).
    pub fn kind(&self) -> Option<FeedbackKind> {
        match self.action.as_str() {
            "failed" => Some(
                self.status
                    .map(|s| s.kind())
                    .or_else(|| {
                        self.diagnostic
                            .as_deref()
                            .and_then(classify_smtp_reply)
                            .map(|v| v.kind)
                    })
                    .filter(|k| *k != FeedbackKind::Delivery)
                    .unwrap_or(FeedbackKind::TransientBounce),
            ),
            "delivered" | "relayed" | "expanded" => Some(FeedbackKind::Delivery),
            _ => None,
        }
    }
}

/// A parsed delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dsn {
    /// The report's own `Message-ID`.
    pub message_id: Option<String>,
    /// The report's `Date`.
    pub date: Option<String>,
    /// `Reporting-MTA`.
    pub reporting_mta: Option<String>,
    /// `Arrival-Date`.
    pub arrival_date: Option<String>,
    /// The per-recipient blocks.
    pub recipients: Vec<DsnRecipient>,
    /// The returned message's `Message-ID`, when its headers came back.
    pub original_message_id: Option<String>,
    /// The returned message's `List-Unsubscribe`, when its headers came back.
    pub original_list_unsubscribe: Option<String>,
}

/// Why a message is not a delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// No `multipart/report; report-type=delivery-status` inside.
    #[error(
        "not a delivery status notification (no multipart/report with report-type=delivery-status)"
    )]
    NotAReport,
    /// A report without recipient blocks.
    #[error("the delivery status notification names no recipient")]
    NoRecipients,
}

/// Parses a DSN from the raw message (headers and body, CRLF or LF).
pub fn parse_dsn(raw: &[u8]) -> Result<Dsn, DsnError> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (headers, body) = split_message(&text);
    let mut dsn = Dsn {
        message_id: header(&headers, "message-id").map(|v| v.trim().to_string()),
        date: header(&headers, "date").map(|v| v.trim().to_string()),
        ..Dsn::default()
    };
    let mut found = false;
    walk(&headers, body, 0, &mut dsn, &mut found);
    if !found {
        return Err(DsnError::NotAReport);
    }
    if dsn.recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    Ok(dsn)
}

type Headers = Vec<(String, String)>;

/// Headers (names lower-cased, folded lines joined) and the body.
fn split_message(text: &str) -> (Headers, &str) {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None if text.starts_with('\n') => ("", &text[1..]),
        None => (text, ""),
    };
    (parse_fields(head), body)
}

/// `Name: value` lines with continuation lines folded in.
fn parse_fields(head: &str) -> Headers {
    let mut out: Headers = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The media type (lower case) and parameters of a `Content-Type`.
fn content_type(h: &Headers) -> (String, Vec<(String, String)>) {
    let v = header(h, "content-type").unwrap_or("text/plain");
    let mut parts = v.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    (media, params)
}

fn decoded(h: &Headers, body: &str) -> String {
    let cte = header(h, "content-transfer-encoding")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if cte == "base64" {
        use base64::Engine;
        let clean: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(clean) {
            return String::from_utf8_lossy(&b).replace("\r\n", "\n");
        }
    }
    body.to_string()
}

fn walk(h: &Headers, body: &str, depth: usize, dsn: &mut Dsn, found: &mut bool) {
    if depth > 4 {
        return;
    }
    let (media, params) = content_type(h);
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if media.starts_with("multipart/") {
        if media == "multipart/report"
            && param("report-type").is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"))
        {
            *found = true;
        }
        let Some(boundary) = param("boundary") else {
            return;
        };
        for part in multipart(body, boundary) {
            let (ph, pb) = split_message(part);
            walk(&ph, pb, depth + 1, dsn, found);
        }
    } else if media == "message/delivery-status" || media == "message/global-delivery-status" {
        delivery_status(&decoded(h, body), dsn);
    } else if media == "message/rfc822" || media == "text/rfc822-headers" {
        let (oh, _) = split_message(body.trim_start_matches('\n'));
        if dsn.original_message_id.is_none() {
            dsn.original_message_id = header(&oh, "message-id").map(|v| v.trim().to_string());
        }
        if dsn.original_list_unsubscribe.is_none() {
            dsn.original_list_unsubscribe = header(&oh, "list-unsubscribe").map(str::to_string);
        }
    }
}

/// The parts between `--boundary` lines, up to `--boundary--`.
fn multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let open = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    for line in body.split_inclusive('\n') {
        let l = line.trim_end();
        if l == open || l == format!("{open}--") {
            if let Some(s) = start {
                // The line break before a boundary belongs to the boundary.
                let end = if pos > s && body[..pos].ends_with('\n') {
                    pos - 1
                } else {
                    pos
                };
                parts.push(&body[s..end.max(s)]);
            }
            if l != open {
                return parts;
            }
            start = Some(pos + line.len());
        }
        pos += line.len();
    }
    parts
}

fn delivery_status(text: &str, dsn: &mut Dsn) {
    for group in text.split("\n\n").map(parse_fields) {
        if group.is_empty() {
            continue;
        }
        let strip_type = |v: &str| match v.split_once(';') {
            Some((_, rest)) => rest.trim().to_string(),
            None => v.trim().to_string(),
        };
        let recipient =
            header(&group, "final-recipient").or_else(|| header(&group, "original-recipient"));
        match recipient {
            None => {
                if let Some(v) = header(&group, "reporting-mta") {
                    dsn.reporting_mta = Some(strip_type(v));
                }
                if let Some(v) = header(&group, "arrival-date") {
                    dsn.arrival_date = Some(v.to_string());
                }
            }
            Some(r) => dsn.recipients.push(DsnRecipient {
                address: strip_type(r).trim_matches(['<', '>']).to_string(),
                action: header(&group, "action")
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase(),
                status: header(&group, "status").and_then(EnhancedStatus::parse),
                diagnostic: header(&group, "diagnostic-code").map(strip_type),
                last_attempt: header(&group, "last-attempt-date").map(str::to_string),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes() {
        let k = |s: &str| EnhancedStatus::parse(s).map(|e| e.kind());
        assert_eq!(k("5.1.1"), Some(FeedbackKind::Bounce));
        assert_eq!(k("5.1.10 (null MX)"), Some(FeedbackKind::Bounce));
        assert_eq!(k("5.2.1"), Some(FeedbackKind::Bounce));
        assert_eq!(
            k("5.1.8"),
            Some(FeedbackKind::TransientBounce),
            "the sender's address"
        );
        assert_eq!(k("5.7.1"), Some(FeedbackKind::TransientBounce), "policy");
        assert_eq!(
            k("5.2.2"),
            Some(FeedbackKind::TransientBounce),
            "mailbox full"
        );
        assert_eq!(k("4.4.7"), Some(FeedbackKind::TransientBounce));
        assert_eq!(k("2.0.0"), Some(FeedbackKind::Delivery));
        for bad in ["3.1.1", "5.1", "5.1.1.1", "x.1.1", "", "5.a.1"] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad}");
        }
        assert_eq!(EnhancedStatus::parse("5.1.1").unwrap().to_string(), "5.1.1");
    }

    #[test]
    fn smtp_replies() {
        let v = classify_smtp_reply(
            "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown",
        )
        .unwrap();
        assert_eq!((v.code, v.kind), (550, FeedbackKind::Bounce));
        assert_eq!(v.status.map(|s| s.to_string()).as_deref(), Some("5.1.1"));
        let v = classify_smtp_reply("550-5.7.1 [1.2.3.4] Our system has detected that this message is\r\n550 5.7.1 likely unsolicited mail.").unwrap();
        assert_eq!(v.kind, FeedbackKind::TransientBounce);
        let v = classify_smtp_reply(
            "452 4.2.2 The email account that you tried to reach is over quota.",
        )
        .unwrap();
        assert_eq!(v.kind, FeedbackKind::TransientBounce);
        assert_eq!(
            classify_smtp_reply("550 Requested action not taken: mailbox unavailable")
                .unwrap()
                .kind,
            FeedbackKind::Bounce
        );
        assert_eq!(
            classify_smtp_reply("554 Transaction failed").unwrap().kind,
            FeedbackKind::TransientBounce
        );
        assert_eq!(
            classify_smtp_reply("250 2.0.0 OK queued as 123")
                .unwrap()
                .kind,
            FeedbackKind::Delivery
        );
        // An enhanced code whose class disagrees with the reply is ignored.
        let v = classify_smtp_reply("450 5.1.1 odd").unwrap();
        assert_eq!((v.status, v.kind), (None, FeedbackKind::TransientBounce));
        assert_eq!(classify_smtp_reply("hello"), None);
        assert_eq!(classify_smtp_reply(""), None);
        assert_eq!(classify_smtp_reply("999 x"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(raw in ".{0,400}", ct in "[a-z/;= \"-]{0,40}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = classify_smtp_reply(&raw);
            let _ = EnhancedStatus::parse(&raw);
            let _ = parse_dsn(raw.as_bytes());
            let _ = parse_dsn(&bytes);
            let shaped = format!("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: {ct}\n\n{raw}\n--b--\n");
            let _ = parse_dsn(shaped.as_bytes());
        }

        #[test]
        fn a_reply_is_classified_by_its_class(code in 200u16..600, subject in 0u16..8, detail in 0u16..20) {
            let class = code / 100;
            let v = classify_smtp_reply(&format!("{code} {class}.{subject}.{detail} text")).unwrap();
            match class {
                2 | 3 => proptest::prop_assert_eq!(v.kind, FeedbackKind::Delivery),
                4 => proptest::prop_assert_eq!(v.kind, FeedbackKind::TransientBounce),
                _ => proptest::prop_assert!(v.kind != FeedbackKind::Delivery),
            }
        }
    }

    #[test]
    fn multipart_splitting() {
        let body = "preamble\n--b\nA: 1\n\none\n--b\n\ntwo\n--b--\nepilogue";
        assert_eq!(multipart(body, "b"), vec!["A: 1\n\none", "\ntwo"]);
        assert_eq!(
            parse_dsn(b"Subject: hi\n\nhello"),
            Err(DsnError::NotAReport)
        );
    }
}
