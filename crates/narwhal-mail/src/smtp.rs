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
//! TLS: [`TlsMode::StartTls`] upgrades after `EHLO` and says `EHLO` again over TLS; a
//! server that does not offer `STARTTLS` (or refuses it) is never used in the clear:
//! the account is refused (`Rejected` with the account scope, so the scheduler fails
//! over or parks). [`TlsMode::Implicit`] speaks TLS from the first byte (port 465).
//! Certificates are verified against the webpki roots plus the optional
//! [`SmtpConfig::ca_file`] ([`crate::tls`]); a failed verification refuses the account
//! too. Bytes the server sends after its `220` to `STARTTLS` and before the handshake
//! are refused rather than read (they would be injected into the TLS session's
//! replies). AUTH goes only over TLS, or to a relay on this machine (loopback):
//! [`SmtpProvider::new`] refuses credentials with `TlsMode::None` for any other host.
//!
//! DKIM: with [`SmtpConfig::dkim`] set, every message is built (`crate::mime`), signed
//! ([`crate::dkim`]) and sent as it was signed.

use crate::dkim::DkimSigner;
use crate::provider::{
    BoxFuture, Content, Health, HealthTracker, OutgoingMessage, Provider, ProviderError,
    RejectScope, ReportedQuota, SendOutcome, ThrottleReason,
};
use crate::template::Rendered;
use crate::Secret;
use base64::Engine;
use rustls_pki_types::ServerName;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

/// How to secure the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (a relay on the same host or a test sink; AUTH only to loopback).
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
    /// Extra trusted CA certificates (PEM), besides the webpki roots: for a private
    /// relay with its own CA, or a test.
    pub ca_file: Option<PathBuf>,
    /// Signs every message when set.
    pub dkim: Option<Arc<DkimSigner>>,
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
            ca_file: None,
            dkim: None,
        }
    }
}

/// Why an [`SmtpProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    /// The TLS settings (the CA file) are wrong.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// The host is not a name or address TLS can verify.
    #[error("{0:?} is not a valid host name for TLS")]
    ServerName(String),
    /// Credentials would cross the network in the clear.
    #[error("AUTH to {host} without TLS would send the password in the clear; use tls = \"starttls\" or \"implicit\" (only a relay on loopback may go without)")]
    AuthInClear {
        /// The relay.
        host: String,
    },
}

/// A plain or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    reader: BufReader<Stream>,
    pipelining: bool,
    sent: u32,
}

/// The account refuses: nothing was sent, and retrying here will not help.
fn account_refused(reason: String) -> Fail {
    Fail::Outcome(SendOutcome::Rejected {
        scope: RejectScope::Account,
        reason,
    })
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
    /// Set unless `TlsMode::None`.
    tls: Option<tokio_rustls::TlsConnector>,
    server_name: ServerName<'static>,
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
    /// Checks the settings and loads the TLS roots; connects to nothing yet.
    pub fn new(cfg: SmtpConfig) -> Result<Self, SmtpConfigError> {
        if cfg.credentials.is_some()
            && cfg.tls == TlsMode::None
            && !crate::tls::is_loopback(&cfg.host)
        {
            return Err(SmtpConfigError::AuthInClear {
                host: cfg.host.clone(),
            });
        }
        let tls = match cfg.tls {
            TlsMode::None => None,
            TlsMode::StartTls | TlsMode::Implicit => {
                let config = crate::tls::client_config(cfg.ca_file.as_deref())?;
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
        };
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| SmtpConfigError::ServerName(cfg.host.clone()))?;
        Ok(Self {
            cfg,
            tls,
            server_name,
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(HealthTracker::default()),
        })
    }

    async fn read_reply(&self, r: &mut BufReader<Stream>) -> Result<Reply, String> {
        self.read_reply_lines(r).await.map(|(reply, _)| reply)
    }

    /// One reply and its raw lines (EHLO's list capabilities, one per line).
    async fn read_reply_lines(
        &self,
        r: &mut BufReader<Stream>,
    ) -> Result<(Reply, Vec<String>), String> {
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
        let reply = Reply::parse(&lines).ok_or_else(|| "malformed reply".to_string())?;
        Ok((reply, lines))
    }

    async fn write(&self, r: &mut BufReader<Stream>, bytes: &[u8]) -> Result<(), String> {
        let w = r.get_mut();
        tokio::time::timeout(self.cfg.timeout, async {
            w.write_all(bytes).await?;
            // TLS buffers records: nothing may stay behind before we wait for a reply.
            w.flush().await
        })
        .await
        .map_err(|_| "timed out writing".to_string())?
        .map_err(|e| e.to_string())
    }

    /// The TLS handshake; a certificate or protocol failure refuses the account.
    async fn handshake(&self, tcp: TcpStream) -> Result<Stream, Fail> {
        let Some(connector) = &self.tls else {
            return Err(account_refused("TLS is not configured".into()));
        };
        match tokio::time::timeout(
            self.cfg.timeout,
            connector.connect(self.server_name.clone(), tcp),
        )
        .await
        {
            Err(_) => Err(Fail::Io {
                after_data: false,
                reason: "TLS handshake timed out".into(),
            }),
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            // rustls reports protocol and certificate errors as InvalidData.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(account_refused(
                format!("TLS with {} failed: {e}", self.cfg.host),
            )),
            Ok(Err(e)) => Err(Fail::Io {
                after_data: false,
                reason: format!("TLS handshake: {e}"),
            }),
        }
    }

    /// `EHLO`; answers the capability keywords (upper case).
    async fn ehlo(&self, r: &mut BufReader<Stream>) -> Result<Vec<String>, Fail> {
        let io = |reason: String| Fail::Io {
            after_data: false,
            reason,
        };
        self.write(r, format!("EHLO {}\r\n", self.cfg.helo_name).as_bytes())
            .await
            .map_err(io)?;
        let (reply, lines) = self.read_reply_lines(r).await.map_err(io)?;
        if reply.code != 250 {
            return Err(Fail::Outcome(reply.message_outcome()));
        }
        Ok(lines
            .iter()
            .skip(1)
            .filter_map(|l| l.get(4..))
            .filter_map(|c| c.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .collect())
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
        let mut r = match self.cfg.tls {
            TlsMode::Implicit => BufReader::new(self.handshake(stream).await?),
            TlsMode::None | TlsMode::StartTls => BufReader::new(Stream::Plain(stream)),
        };
        let greet = self.read_reply(&mut r).await.map_err(io)?;
        if greet.code != 220 {
            return Err(Fail::Outcome(greet.message_outcome()));
        }
        let mut caps = self.ehlo(&mut r).await?;
        if self.cfg.tls == TlsMode::StartTls {
            if !caps.iter().any(|c| c == "STARTTLS") {
                return Err(account_refused(format!(
                    "{} does not offer STARTTLS; refusing to send in the clear",
                    self.cfg.host
                )));
            }
            self.write(&mut r, b"STARTTLS\r\n").await.map_err(io)?;
            let reply = self.read_reply(&mut r).await.map_err(io)?;
            if reply.code != 220 {
                return Err(account_refused(format!(
                    "STARTTLS refused: {} {}; refusing to send in the clear",
                    reply.code, reply.text
                )));
            }
            if !r.buffer().is_empty() {
                return Err(account_refused(
                    "the server sent data before the TLS handshake (possible injection)".into(),
                ));
            }
            let Stream::Plain(tcp) = r.into_inner() else {
                return Err(account_refused("STARTTLS on a TLS connection".into()));
            };
            r = BufReader::new(self.handshake(tcp).await?);
            // RFC 3207: forget what was learned in the clear and ask again.
            caps = self.ehlo(&mut r).await?;
        }
        let pipelining = caps.iter().any(|c| c == "PIPELINING");
        let secure = matches!(r.get_ref(), Stream::Tls(_));
        if self.cfg.credentials.is_some() && !secure && !crate::tls::is_loopback(&self.cfg.host) {
            return Err(account_refused(
                "refusing AUTH without TLS to a host that is not loopback".into(),
            ));
        }
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

    /// The bytes of `msg` as they go after `DATA` (before dot-stuffing): built, and
    /// signed when the account has a DKIM key.
    fn message_bytes(&self, msg: &OutgoingMessage) -> Result<Vec<u8>, Fail> {
        let raw = Self::raw(msg);
        let Some(signer) = &self.cfg.dkim else {
            return Ok(raw);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        signer.sign(&raw, now).map_err(|e| {
            Fail::Outcome(SendOutcome::Rejected {
                scope: RejectScope::Message,
                reason: e.to_string(),
            })
        })
    }

    /// One message on an open connection.
    async fn send_one(&self, c: &mut Conn, msg: &OutgoingMessage) -> Result<String, Fail> {
        let io = |reason: String| Fail::Io {
            after_data: false,
            reason,
        };
        let message = self.message_bytes(msg)?;
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
        let mut data = dot_stuff(&message);
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
                    Err(Fail::Outcome(
                        o @ SendOutcome::Rejected {
                            scope: RejectScope::Account,
                            ..
                        },
                    )) => {
                        // No TLS, a bad certificate, refused credentials: the same for
                        // every message left, so do not connect again for each.
                        out.resize(messages.len(), o);
                        break;
                    }
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
    fn auth_in_the_clear_only_to_loopback() {
        let creds = Some(("u".to_string(), Secret::from("pw")));
        let mut cfg = SmtpConfig::new("smtp:x", "smtp.example.org", 25);
        cfg.credentials = creds.clone();
        assert!(matches!(
            SmtpProvider::new(cfg.clone()),
            Err(SmtpConfigError::AuthInClear { .. })
        ));
        cfg.tls = TlsMode::StartTls;
        assert!(SmtpProvider::new(cfg).is_ok());
        let mut local = SmtpConfig::new("smtp:x", "127.0.0.1", 25);
        local.credentials = creds;
        assert!(SmtpProvider::new(local).is_ok());
    }
}
