//! An SMTP provider: ESMTP with PIPELINING when the server offers it, AUTH PLAIN, a
//! pool of connections and a messages-per-connection limit.
//!
//! Replies are classified into [`SendOutcome`]s by their codes and enhanced status
//! codes (RFC 3463): `454` and `4.7.x` throttling replies are `Throttled` (SES's SMTP
//! interface answers `454 Throttling failure`), other `4xx` are transient, `5xx` after
//! `RCPT` or `DATA` reject the message, and `5xx` to `AUTH` or `MAIL` reject the
//! account. A connection lost after the final `.` was sent is `Ambiguous`: the server
//! may have taken the message.
//!
//! TLS (STARTTLS and implicit) is not built into this version: configuring it is
//! refused with a clear error rather than sending in the clear.

use crate::provider::{
    BoxFuture, Content, Health, HealthTracker, OutgoingMessage, Provider, ProviderError,
    RejectScope, ReportedQuota, SendOutcome, ThrottleReason,
};
use crate::template::Rendered;
use crate::Secret;
use base64::Engine;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How to secure the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (only for a relay on the same host or a test sink).
    None,
    /// `STARTTLS` after `EHLO`.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// One SMTP account.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// A stable name for logs and ledger rows (`smtp:relay1`).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// User name and password for AUTH PLAIN.
    pub credentials: Option<(String, Secret<String>)>,
    /// Our name in `EHLO`.
    pub helo_name: String,
    /// Connections kept open for reuse.
    pub pool_size: usize,
    /// Messages sent on one connection before it is closed and a new one opened.
    pub max_per_connection: u32,
    /// How long to wait for any reply.
    pub timeout: Duration,
}

impl SmtpConfig {
    pub fn new(name: &str, host: &str, port: u16) -> Self {
        Self {
            name: name.to_string(),
            host: host.to_string(),
            port,
            tls: TlsMode::None,
            credentials: None,
            helo_name: "narwhal.localhost".to_string(),
            pool_size: 4,
            max_per_connection: 100,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A reply: code, enhanced status (if any) and text (lines joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    /// Parses the lines of one (possibly multi-line) reply.
    pub fn parse(lines: &[String]) -> Option<Self> {
        let last = lines.last()?;
        let code: u16 = last.get(..3)?.parse().ok()?;
        let text: Vec<&str> = lines
            .iter()
            .map(|l| l.get(4..).unwrap_or("").trim())
            .collect();
        let first = text.first().copied().unwrap_or("");
        let enhanced = first
            .split_whitespace()
            .next()
            .filter(|w| {
                let parts: Vec<&str> = w.split('.').collect();
                parts.len() == 3
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            })
            .map(str::to_string);
        Some(Self {
            code,
            enhanced,
            text: text.join(" "),
        })
    }

    fn is_throttle(&self) -> bool {
        self.code == 454
            || self.code == 421 && self.text.to_ascii_lowercase().contains("rate")
            || self
                .enhanced
                .as_deref()
                .is_some_and(|e| e.starts_with("4.7."))
            || self.text.to_ascii_lowercase().contains("throttling")
    }

    /// What a failing reply to `RCPT`/`DATA` means for the message.
    fn message_outcome(&self) -> SendOutcome {
        if self.is_throttle() {
            let t = self.text.to_ascii_lowercase();
            let reason = if t.contains("daily") {
                ThrottleReason::DailyQuota
            } else if t.contains("rate") {
                ThrottleReason::Rate
            } else {
                ThrottleReason::Other(self.text.clone())
            };
            SendOutcome::Throttled { reason }
        } else if self.code >= 500 {
            SendOutcome::Rejected {
                scope: RejectScope::Message,
                reason: format!("{} {}", self.code, self.text),
            }
        } else {
            SendOutcome::TransientError {
                reason: format!("{} {}", self.code, self.text),
            }
        }
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    pipelining: bool,
    sent: u32,
}

/// Why a session step failed.
enum Fail {
    /// The server answered; the outcome says what it means.
    Outcome(SendOutcome),
    /// The connection broke; `after_data` tells whether the message may have gone.
    Io { after_data: bool, reason: String },
}

pub struct SmtpProvider {
    cfg: SmtpConfig,
    pool: Mutex<Vec<Conn>>,
    health: Mutex<HealthTracker>,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// `.` at the start of a line is doubled; line ends become CRLF; ends with CRLF.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in data {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl SmtpProvider {
    pub fn new(cfg: SmtpConfig) -> Result<Self, ProviderError> {
        if cfg.tls != TlsMode::None {
            return Err(ProviderError::Api {
                code: "TlsUnavailable".into(),
                message: format!(
                    "{}: TLS is not built into this version of Narwhal; use a local relay",
                    cfg.name
                ),
            });
        }
        Ok(Self {
            cfg,
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(HealthTracker::default()),
        })
    }

    async fn read_reply(&self, r: &mut BufReader<TcpStream>) -> Result<Reply, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.cfg.timeout, r.read_line(&mut line))
                .await
                .map_err(|_| "timed out waiting for the server".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let line = line.trim_end().to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                break;
            }
            if lines.len() > 100 {
                return Err("reply too long".into());
            }
        }
        Reply::parse(&lines).ok_or_else(|| "malformed reply".to_string())
    }

    async fn write(&self, r: &mut BufReader<TcpStream>, bytes: &[u8]) -> Result<(), String> {
        tokio::time::timeout(self.cfg.timeout, r.get_mut().write_all(bytes))
            .await
            .map_err(|_| "timed out writing".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<Conn, Fail> {
        let io = |reason: String| Fail::Io {
            after_data: false,
            reason,
        };
        let stream = tokio::time::timeout(
            self.cfg.timeout,
            TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        )
        .await
        .map_err(|_| io("connect timed out".into()))?
        .map_err(|e| io(format!("connect: {e}")))?;
        let mut r = BufReader::new(stream);
        let greet = self.read_reply(&mut r).await.map_err(io)?;
        if greet.code != 220 {
            return Err(Fail::Outcome(greet.message_outcome()));
        }
        self.write(
            &mut r,
            format!("EHLO {}\r\n", self.cfg.helo_name).as_bytes(),
        )
        .await
        .map_err(io)?;
        let mut lines = Vec::new();
        // EHLO's reply lists capabilities, one per line.
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.cfg.timeout, r.read_line(&mut line))
                .await
                .map_err(|_| io("EHLO timed out".into()))?
                .map_err(|e| io(e.to_string()))?;
            if n == 0 {
                return Err(io("closed during EHLO".into()));
            }
            let line = line.trim_end().to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                break;
            }
        }
        let ehlo = Reply::parse(&lines).ok_or_else(|| io("malformed EHLO reply".into()))?;
        if ehlo.code != 250 {
            return Err(Fail::Outcome(ehlo.message_outcome()));
        }
        let pipelining = lines.iter().any(|l| {
            l.get(4..)
                .is_some_and(|c| c.eq_ignore_ascii_case("PIPELINING"))
        });
        if let Some((user, pass)) = &self.cfg.credentials {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("\0{user}\0{}", pass.expose()));
            self.write(&mut r, format!("AUTH PLAIN {token}\r\n").as_bytes())
                .await
                .map_err(io)?;
            let auth = self.read_reply(&mut r).await.map_err(io)?;
            if auth.code != 235 {
                return Err(Fail::Outcome(SendOutcome::Rejected {
                    scope: RejectScope::Account,
                    reason: format!("authentication failed: {} {}", auth.code, auth.text),
                }));
            }
        }
        Ok(Conn {
            reader: r,
            pipelining,
            sent: 0,
        })
    }

    pub(crate) fn raw(msg: &OutgoingMessage) -> Vec<u8> {
        match &msg.content {
            Content::Raw(bytes) => bytes.clone(),
            Content::Simple {
                subject,
                text,
                html,
                headers,
            } => {
                let env = crate::mime::Envelope {
                    from_name: String::new(),
                    from_address: msg.from.as_str().to_string(),
                    to_address: msg.to.as_str().to_string(),
                    message_id: format!(
                        "{}.{}@{}",
                        msg.key.0,
                        std::process::id(),
                        msg.from.domain()
                    ),
                    date: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                    headers: headers
                        .iter()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                };
                let body = Rendered {
                    subject: subject.clone(),
                    text: text.clone().unwrap_or_default(),
                    html: html.clone(),
                };
                crate::mime::build(&env, &body)
            }
        }
    }

    /// One message on an open connection.
    async fn send_one(&self, c: &mut Conn, msg: &OutgoingMessage) -> Result<String, Fail> {
        let io = |reason: String| Fail::Io {
            after_data: false,
            reason,
        };
        let from = format!("MAIL FROM:<{}>\r\n", msg.from.as_str());
        let rcpt = format!("RCPT TO:<{}>\r\n", msg.to.as_str());
        let replies: Vec<Reply> = if c.pipelining {
            self.write(&mut c.reader, format!("{from}{rcpt}DATA\r\n").as_bytes())
                .await
                .map_err(io)?;
            let mut v = Vec::with_capacity(3);
            for _ in 0..3 {
                v.push(self.read_reply(&mut c.reader).await.map_err(io)?);
            }
            v
        } else {
            let mut v = Vec::with_capacity(3);
            for cmd in [from, rcpt, "DATA\r\n".to_string()] {
                self.write(&mut c.reader, cmd.as_bytes())
                    .await
                    .map_err(io)?;
                let reply = self.read_reply(&mut c.reader).await.map_err(io)?;
                let ok = reply.code < 400;
                v.push(reply);
                if !ok {
                    break;
                }
            }
            v
        };
        let failed = replies.iter().position(|r| r.code >= 400);
        if let Some(i) = failed {
            // Reset the transaction; if DATA was accepted anyway (it should not be), end it empty.
            if replies.get(2).is_some_and(|r| r.code == 354) {
                self.write(&mut c.reader, b".\r\n").await.map_err(io)?;
                let _ = self.read_reply(&mut c.reader).await;
            }
            self.write(&mut c.reader, b"RSET\r\n").await.map_err(io)?;
            let _ = self.read_reply(&mut c.reader).await.map_err(io)?;
            let r = &replies[i];
            let outcome = if i == 0 && r.code >= 500 && !r.is_throttle() {
                SendOutcome::Rejected {
                    scope: RejectScope::Account,
                    reason: format!("MAIL FROM refused: {} {}", r.code, r.text),
                }
            } else {
                r.message_outcome()
            };
            return Err(Fail::Outcome(outcome));
        }
        let mut data = dot_stuff(&Self::raw(msg));
        data.extend_from_slice(b".\r\n");
        self.write(&mut c.reader, &data)
            .await
            .map_err(|reason| Fail::Io {
                after_data: true,
                reason,
            })?;
        let done = self
            .read_reply(&mut c.reader)
            .await
            .map_err(|reason| Fail::Io {
                after_data: true,
                reason,
            })?;
        c.sent += 1;
        if done.code == 250 {
            let id = done
                .text
                .split("queued as ")
                .nth(1)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| format!("{}:{}", self.cfg.name, msg.key.0));
            Ok(id)
        } else {
            Err(Fail::Outcome(done.message_outcome()))
        }
    }

    async fn send_all(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
        let mut out = Vec::with_capacity(messages.len());
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut conn = pooled;
        for msg in messages {
            if conn
                .as_ref()
                .is_some_and(|c| c.sent >= self.cfg.max_per_connection)
            {
                if let Some(mut c) = conn.take() {
                    let _ = self.write(&mut c.reader, b"QUIT\r\n").await;
                }
            }
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => conn = Some(c),
                    Err(Fail::Outcome(o)) => {
                        out.push(o);
                        continue;
                    }
                    Err(Fail::Io { reason, .. }) => {
                        out.push(SendOutcome::TransientError { reason });
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match self.send_one(c, msg).await {
                Ok(id) => out.push(SendOutcome::Accepted {
                    provider_message_id: id,
                }),
                Err(Fail::Outcome(o)) => out.push(o),
                Err(Fail::Io { after_data, reason }) => {
                    conn = None;
                    out.push(if after_data {
                        SendOutcome::Ambiguous { reason }
                    } else {
                        SendOutcome::TransientError { reason }
                    });
                }
            }
        }
        if let Some(c) = conn {
            if let Ok(mut p) = self.pool.lock() {
                if p.len() < self.cfg.pool_size {
                    p.push(c);
                }
            }
        }
        if let Ok(mut h) = self.health.lock() {
            for o in &out {
                h.observe(o);
            }
        }
        out
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn max_batch(&self) -> usize {
        50
    }

    fn send_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<SendOutcome>> {
        Box::pin(self.send_all(messages))
    }

    fn quota(&self) -> BoxFuture<'_, Result<Option<ReportedQuota>, ProviderError>> {
        // SMTP reports no quota: the configured ThrottleSpec applies.
        Box::pin(async { Ok(None) })
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .map(|h| h.health())
            .unwrap_or(Health::Healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_classify() {
        let r =
            Reply::parse(&["454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into()])
                .unwrap();
        assert_eq!(r.enhanced.as_deref(), Some("4.7.0"));
        assert_eq!(
            r.message_outcome(),
            SendOutcome::Throttled {
                reason: ThrottleReason::Rate
            }
        );
        let r = Reply::parse(&["454 Throttling failure: Daily message quota exceeded.".into()])
            .unwrap();
        assert_eq!(
            r.message_outcome(),
            SendOutcome::Throttled {
                reason: ThrottleReason::DailyQuota
            }
        );
        let r = Reply::parse(&["550 5.1.1 Mailbox does not exist".into()]).unwrap();
        assert!(matches!(
            r.message_outcome(),
            SendOutcome::Rejected {
                scope: RejectScope::Message,
                ..
            }
        ));
        let r = Reply::parse(&["451 4.3.0 Try again later".into()]).unwrap();
        assert!(matches!(
            r.message_outcome(),
            SendOutcome::TransientError { .. }
        ));
        let r = Reply::parse(&[
            "250-mx.example.org".into(),
            "250-PIPELINING".into(),
            "250 SIZE 1000".into(),
        ])
        .unwrap();
        assert_eq!(r.code, 250);
        assert!(Reply::parse(&["hello".into()]).is_none());
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\n.b\n..c"), b"a\r\n..b\r\n...c\r\n".to_vec());
        assert_eq!(dot_stuff(b".\r\nx\r\n"), b"..\r\nx\r\n".to_vec());
    }

    #[test]
    fn tls_is_refused_not_downgraded() {
        let mut cfg = SmtpConfig::new("smtp:x", "127.0.0.1", 25);
        cfg.tls = TlsMode::StartTls;
        assert!(SmtpProvider::new(cfg).is_err());
    }
}
