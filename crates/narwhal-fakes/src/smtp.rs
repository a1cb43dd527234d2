//! A tiny SMTP sink: speaks enough ESMTP (EHLO advertising PIPELINING, HELO, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT) to accept messages, counts them, and answers per
//! recipient as told: accept, `454 4.7.0 Throttling failure: ...` (SES's throttling
//! reply), or any permanent `5xx`. Commands are answered strictly in order, so a
//! pipelining client may send MAIL, RCPT... and DATA in one write.
//!
//! TLS on request ([`SmtpSink::start_with`]): `STARTTLS` (advertised in the clear only,
//! and the session starts over after the handshake, as RFC 3207 says) or implicit TLS
//! from the first byte, with a certificate from [`crate::tls::TestCa`]. `AUTH PLAIN`
//! is advertised and checked when credentials are required ([`SmtpSink::require_auth`]).
//! Each accepted message records the exact bytes received after `DATA` (dot-unstuffed),
//! whether it came over TLS and who authenticated, so tests can check DKIM signatures
//! and that nothing went in the clear.

use base64::Engine as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How the sink secures its connections.
#[derive(Clone, Default)]
pub enum SinkTls {
    /// Plain TCP; `STARTTLS` is not offered.
    #[default]
    None,
    /// `STARTTLS` is offered after `EHLO`.
    StartTls(Arc<rustls::ServerConfig>),
    /// TLS from the first byte (port 465 style).
    Implicit(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for SinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SinkTls::None => "None",
            SinkTls::StartTls(_) => "StartTls",
            SinkTls::Implicit(_) => "Implicit",
        })
    }
}

/// Anything a session can run over: a TCP stream, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The largest message accepted (SES's SMTP limit, 40 MB).
pub const MAX_MESSAGE_BYTES: usize = 40 * 1024 * 1024;
/// The longest command line accepted.
const MAX_LINE: usize = 4096;

/// How the sink answers `RCPT TO` for a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientRule {
    /// `250 2.1.5 Ok`.
    Accept,
    /// `454 4.7.0 Throttling failure: Maximum sending rate exceeded.`
    Throttle,
    /// A permanent failure with this code (5xx) and text, for example
    /// `(550, "5.1.1 Mailbox does not exist")`.
    Reject(u16, String),
}

/// One message the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkMessage {
    /// The envelope sender.
    pub from: String,
    /// The accepted envelope recipients.
    pub recipients: Vec<String>,
    /// The message (headers and body), dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
    /// Whether the message came over TLS.
    pub tls: bool,
    /// The user that authenticated on the connection, if any.
    pub auth_user: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    default_rule: Option<RecipientRule>,
    rules: HashMap<String, RecipientRule>,
    messages: Vec<SinkMessage>,
    connections: u64,
    /// Required `AUTH PLAIN` user and password.
    credentials: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rule_for(&self, recipient: &str) -> RecipientRule {
        let inner = self.lock();
        inner
            .rules
            .get(&recipient.to_ascii_lowercase())
            .or(inner.default_rule.as_ref())
            .cloned()
            .unwrap_or(RecipientRule::Accept)
    }
}

/// A running SMTP sink. Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Starts a sink on `127.0.0.1:0` without TLS.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(SinkTls::None).await
    }

    /// Starts a sink on `127.0.0.1:0` with this TLS mode.
    pub async fn start_with(tls: SinkTls) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Dropping the JoinSet (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            accept_shared.lock().connections += 1;
                            let s = accept_shared.clone();
                            let tls = tls.clone();
                            connections.spawn(async move {
                                // A broken connection (or handshake) ends only itself.
                                let _ = serve(stream, s, tls).await;
                            });
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How recipients without their own rule are answered (`Accept` by default).
    pub fn set_default_rule(&self, rule: RecipientRule) {
        self.shared.lock().default_rule = Some(rule);
    }

    /// How one recipient is answered.
    pub fn set_rule(&self, recipient: &str, rule: RecipientRule) {
        self.shared
            .lock()
            .rules
            .insert(recipient.to_ascii_lowercase(), rule);
    }

    /// Messages accepted so far.
    pub fn message_count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// The accepted messages.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared.lock().messages.clone()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Requires `AUTH PLAIN` with these credentials before `MAIL`.
    pub fn require_auth(&self, user: &str, password: &str) {
        self.shared.lock().credentials = Some((user.to_string(), password.to_string()));
    }
}

/// Checks an `AUTH PLAIN` token (`\0user\0password`, base64); answers the user.
fn check_plain(token: &str, expected: &(String, String)) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let mut parts = decoded.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
    (user == expected.0 && password == expected.1).then_some(user)
}

/// The address inside `FROM:<a@b>` / `TO:<a@b>` (parameters after it are ignored).
fn path_arg(rest: &str, keyword: &str) -> Option<String> {
    let rest = rest.trim_start();
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, tls: SinkTls) -> std::io::Result<()> {
    let mut secure = false;
    let mut conn: BufReader<Box<dyn Io>> = match &tls {
        SinkTls::Implicit(config) => {
            let s = tokio_rustls::TlsAcceptor::from(config.clone())
                .accept(stream)
                .await?;
            secure = true;
            BufReader::new(Box::new(s))
        }
        SinkTls::None | SinkTls::StartTls(_) => BufReader::new(Box::new(stream)),
    };
    reply(&mut conn, "220 fake-smtp ESMTP narwhal-fakes\r\n").await?;
    let mut greeted = false;
    let mut auth_user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut conn)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let credentials = shared.lock().credentials.clone();
        let answer: String = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                greeted = true;
                from = None;
                recipients.clear();
                let starttls = if matches!(tls, SinkTls::StartTls(_)) && !secure {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                let auth = if credentials.is_some() {
                    "250-AUTH PLAIN\r\n"
                } else {
                    ""
                };
                format!(
                    "250-fake-smtp greets {rest}\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                     {starttls}{auth}250-ENHANCEDSTATUSCODES\r\n250 SIZE {MAX_MESSAGE_BYTES}\r\n"
                )
            }
            "HELO" => {
                greeted = true;
                from = None;
                recipients.clear();
                "250 fake-smtp\r\n".into()
            }
            "STARTTLS" => match &tls {
                SinkTls::StartTls(config) if !secure => {
                    reply(&mut conn, "220 2.0.0 Ready to start TLS\r\n").await?;
                    // Anything the client pipelined after STARTTLS is discarded (RFC 3207).
                    let plain = conn.into_inner();
                    let s = tokio_rustls::TlsAcceptor::from(config.clone())
                        .accept(plain)
                        .await?;
                    conn = BufReader::new(Box::new(s));
                    secure = true;
                    // The session starts over: the client must say EHLO again.
                    greeted = false;
                    auth_user = None;
                    from = None;
                    recipients.clear();
                    continue;
                }
                SinkTls::StartTls(_) | SinkTls::Implicit(_) => {
                    "503 5.5.1 TLS already active\r\n".into()
                }
                SinkTls::None => "502 5.5.1 STARTTLS not offered\r\n".into(),
            },
            "AUTH" => match &credentials {
                None => "502 5.5.1 AUTH not offered\r\n".into(),
                Some(_) if auth_user.is_some() => "503 5.5.1 Already authenticated\r\n".into(),
                Some(expected) => {
                    let (mechanism, token) = rest.split_once(' ').unwrap_or((rest, ""));
                    if !mechanism.eq_ignore_ascii_case("PLAIN") {
                        "504 5.5.4 Unrecognized authentication type\r\n".into()
                    } else if let Some(user) = check_plain(token, expected) {
                        auth_user = Some(user);
                        "235 2.7.0 Authentication successful\r\n".into()
                    } else {
                        "535 5.7.8 Authentication credentials invalid\r\n".into()
                    }
                }
            },
            "MAIL" if !greeted => "503 5.5.1 Send EHLO first\r\n".into(),
            "MAIL" if credentials.is_some() && auth_user.is_none() => {
                "530 5.7.0 Authentication required\r\n".into()
            }
            "MAIL" if from.is_some() => "503 5.5.1 Nested MAIL command\r\n".into(),
            "MAIL" => match path_arg(rest, "FROM:") {
                Some(f) => {
                    from = Some(f);
                    "250 2.1.0 Ok\r\n".into()
                }
                None => "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into(),
            },
            "RCPT" if from.is_none() => "503 5.5.1 Need MAIL before RCPT\r\n".into(),
            "RCPT" => match path_arg(rest, "TO:") {
                None => "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into(),
                Some(to) => match shared.rule_for(&to) {
                    RecipientRule::Accept => {
                        recipients.push(to);
                        "250 2.1.5 Ok\r\n".into()
                    }
                    RecipientRule::Throttle => {
                        "454 4.7.0 Throttling failure: Maximum sending rate exceeded.\r\n".into()
                    }
                    RecipientRule::Reject(code, text) => format!("{code} {text}\r\n"),
                },
            },
            "DATA" if recipients.is_empty() => "554 5.5.1 No valid recipients\r\n".into(),
            "DATA" => {
                reply(&mut conn, "354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = Vec::new();
                let mut too_big = false;
                loop {
                    line.clear();
                    let n = conn.read_until(b'\n', &mut line).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let content = line.strip_prefix(b".").unwrap_or(&line);
                    if data.len() + content.len() > MAX_MESSAGE_BYTES {
                        too_big = true;
                    } else if !too_big {
                        data.extend_from_slice(content);
                    }
                }
                let envelope_from = from.take().unwrap_or_default();
                let rcpts = std::mem::take(&mut recipients);
                if too_big {
                    "552 5.3.4 Message too big\r\n".into()
                } else {
                    let mut inner = shared.lock();
                    inner.messages.push(SinkMessage {
                        from: envelope_from,
                        recipients: rcpts,
                        data,
                        tls: secure,
                        auth_user: auth_user.clone(),
                    });
                    format!("250 2.0.0 Ok: queued as fake-{}\r\n", inner.messages.len())
                }
            }
            "RSET" => {
                from = None;
                recipients.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                reply(&mut conn, "221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "500 5.5.2 Command not recognized\r\n".into(),
        };
        reply(&mut conn, &answer).await?;
    }
}

/// Writes a reply and flushes it (TLS holds records back until flushed).
async fn reply(conn: &mut BufReader<Box<dyn Io>>, text: &str) -> std::io::Result<()> {
    let w = conn.get_mut();
    w.write_all(text.as_bytes()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments_are_read() {
        assert_eq!(path_arg("FROM:<a@b.org>", "FROM:"), Some("a@b.org".into()));
        assert_eq!(
            path_arg("from: <a@b.org> SIZE=10", "FROM:"),
            Some("a@b.org".into())
        );
        assert_eq!(path_arg("TO:a@b.org", "TO:"), None);
        assert_eq!(path_arg("X", "FROM:"), None);
    }
}
