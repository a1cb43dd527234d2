//! A fake Amazon SES v2 server (axum on `127.0.0.1:0`), faithful to the limits and
//! errors that matter to a bulk sender.
//!
//! What it models:
//! - SigV4: the `Authorization` header must have the SigV4 shape, name a known access
//!   key (else 403 `UnrecognizedClientException`), be scoped to the fake's region and
//!   service `ses`, carry an `x-amz-date` within 15 minutes, and its signature is
//!   recomputed over the headers it lists (else 403 `SignatureDoesNotMatch`).
//! - SendEmail (`POST /v2/email/outbound-emails`): at most 50 recipients
//!   (`BadRequestException`), at most 40 MB of content (`MessageRejected`).
//! - SendBulkEmail (`POST /v2/email/outbound-bulk-emails`): 1 to 50 entries, an inline or
//!   named template required; one result per entry, so a request can partly succeed.
//! - Per account: a maximum send rate (a token bucket holding one second's worth,
//!   counted per recipient) and a rolling 24-hour quota. Over either, a message is
//!   rejected, not queued: SendEmail answers 400 `ThrottlingException` with "Maximum
//!   sending rate exceeded." or "Daily message quota exceeded."; a bulk entry gets
//!   `ACCOUNT_THROTTLED` or `ACCOUNT_DAILY_QUOTA_EXCEEDED`.
//! - GetAccount (`GET /v2/email/account`): `SendQuota` with the configured limits
//!   (-1 for an unlimited 24-hour quota) and the count in the last 24 hours.
//! - A ledger of every accepted message (message id, account, recipient, time), to
//!   check afterwards that nothing was lost or sent twice.
//! - Faults on command, for all accounts or one: down (503 `ServiceUnavailable`),
//!   added latency, a timeout after accepting (the message is in the ledger but the
//!   answer comes too late: the client's view is ambiguous), forced throttling, and
//!   recipients whose messages are rejected.
//!
//! Deviations: a Raw message must carry `Destination` (SES would read the headers);
//! stored templates are not kept (a `TemplateName` is accepted as existing).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use narwhal_mail::ses::{
    wire, DAILY_QUOTA_EXCEEDED, MAX_DESTINATIONS, MAX_MESSAGE_BYTES, RATE_EXCEEDED,
};
use narwhal_mail::sigv4::{self, AmzDate, Credentials, Scope, SigningInput};
use narwhal_mail::{Secret, UnixMillis};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const DAY: Duration = Duration::from_secs(86_400);

/// One fake SES account.
#[derive(Clone, Debug)]
pub struct FakeAccount {
    /// The access key id clients sign with.
    pub access_key_id: String,
    /// Its secret key.
    pub secret_access_key: String,
    /// Messages (recipients) per second; `None` is unlimited.
    pub max_send_rate: Option<u32>,
    /// Messages per rolling 24 hours; `None` is unlimited.
    pub max_24_hour_send: Option<u64>,
}

impl FakeAccount {
    /// An account without limits.
    pub fn new(access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            max_send_rate: None,
            max_24_hour_send: None,
        }
    }

    /// Sets the maximum send rate (per second).
    pub fn rate(mut self, per_second: u32) -> Self {
        self.max_send_rate = Some(per_second);
        self
    }

    /// Sets the rolling 24-hour quota.
    pub fn daily(mut self, quota: u64) -> Self {
        self.max_24_hour_send = Some(quota);
        self
    }

    /// Client credentials for this account.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            self.access_key_id.clone(),
            Secret::new(self.secret_access_key.clone()),
        )
    }
}

/// A fault to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Answer every request with 503 `ServiceUnavailable`.
    Down,
    /// Wait this long before handling each request.
    Latency(Duration),
    /// Handle the request (accepting messages into the ledger), then hold the answer
    /// this long: a client with a shorter timeout cannot know what happened.
    TimeoutAfterAccept(Duration),
    /// Answer sends with 400 `ThrottlingException` "Maximum sending rate exceeded."
    ThrottleRate,
    /// Answer sends with 400 `ThrottlingException` "Daily message quota exceeded."
    ThrottleDaily,
}

/// One accepted message, as recorded by the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The `MessageId` returned.
    pub message_id: String,
    /// The account's access key id.
    pub access_key_id: String,
    /// The recipient (one row per recipient of a message).
    pub destination: String,
    /// When it was accepted.
    pub at: UnixMillis,
}

/// Counters kept by the fake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeSesStats {
    /// Requests received.
    pub requests: u64,
    /// Messages (recipients) accepted.
    pub accepted: u64,
    /// Messages refused by a rate or quota limit (requests or bulk entries).
    pub throttled: u64,
    /// Messages rejected (bad content, rejected recipient).
    pub rejected: u64,
    /// Requests refused for authentication.
    pub auth_failures: u64,
}

/// Per-account limiter state.
#[derive(Debug)]
struct Limits {
    /// Milli-tokens; one message costs 1000; capacity is one second's worth.
    milli_tokens: u64,
    refilled: Instant,
    /// (accepted at, count), oldest first, for the rolling 24 hours.
    window: VecDeque<(Instant, u64)>,
    window_total: u64,
}

enum Refusal {
    Rate,
    Daily,
}

impl Limits {
    fn new(account: &FakeAccount) -> Self {
        Self {
            milli_tokens: u64::from(account.max_send_rate.unwrap_or(0)) * 1000,
            refilled: Instant::now(),
            window: VecDeque::new(),
            window_total: 0,
        }
    }

    fn advance(&mut self, account: &FakeAccount, now: Instant) {
        if let Some(rate) = account.max_send_rate {
            let elapsed_ms =
                u64::try_from(now.duration_since(self.refilled).as_millis()).unwrap_or(u64::MAX);
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(elapsed_ms.saturating_mul(u64::from(rate)))
                .min(u64::from(rate) * 1000);
            // Only whole milliseconds are counted, so the fraction carries over to the
            // next request (SES does not lose refill between requests).
            self.refilled += Duration::from_millis(elapsed_ms);
        }
        while let Some(&(at, n)) = self.window.front() {
            if now.duration_since(at) >= DAY {
                self.window.pop_front();
                self.window_total -= n;
            } else {
                break;
            }
        }
    }

    /// Takes room for `n` recipients, or says which limit refuses them.
    fn take(&mut self, account: &FakeAccount, n: u64) -> Result<(), Refusal> {
        let now = Instant::now();
        self.advance(account, now);
        if account
            .max_24_hour_send
            .is_some_and(|d| self.window_total + n > d)
        {
            return Err(Refusal::Daily);
        }
        if account.max_send_rate.is_some() {
            let cost = n * 1000;
            if self.milli_tokens < cost {
                return Err(Refusal::Rate);
            }
            self.milli_tokens -= cost;
        }
        self.window.push_back((now, n));
        self.window_total += n;
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    accounts: HashMap<String, (FakeAccount, Limits)>,
    global_fault: Fault,
    account_faults: HashMap<String, Fault>,
    rejected_recipients: HashSet<String>,
    ledger: Vec<Accepted>,
    stats: FakeSesStats,
    next_id: u64,
}

#[derive(Debug)]
struct Shared {
    region: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake SES server. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeSes {
    addr: SocketAddr,
    /// Served over TLS ([`FakeSes::start_tls`]).
    tls: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSes {
    /// Starts a server on `127.0.0.1:0` for `region` with these accounts.
    pub async fn start(region: &str, accounts: Vec<FakeAccount>) -> std::io::Result<Self> {
        Self::start_inner(region, accounts, None).await
    }

    /// Like [`FakeSes::start`], served over HTTPS with this certificate (see
    /// [`crate::tls::TestCa`]); [`FakeSes::endpoint`] is then `https://127.0.0.1:PORT`.
    pub async fn start_tls(
        region: &str,
        accounts: Vec<FakeAccount>,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::start_inner(region, accounts, Some(tls)).await
    }

    async fn start_inner(
        region: &str,
        accounts: Vec<FakeAccount>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            region: region.to_string(),
            inner: Mutex::new(Inner {
                accounts: accounts
                    .into_iter()
                    .map(|a| {
                        let limits = Limits::new(&a);
                        (a.access_key_id.clone(), (a, limits))
                    })
                    .collect(),
                global_fault: Fault::None,
                account_faults: HashMap::new(),
                rejected_recipients: HashSet::new(),
                ledger: Vec::new(),
                stats: FakeSesStats::default(),
                next_id: 0,
            }),
        });
        let app = Router::new()
            .route(narwhal_mail::ses::SEND_EMAIL_PATH, post(send_email))
            .route(
                narwhal_mail::ses::SEND_BULK_EMAIL_PATH,
                post(send_bulk_email),
            )
            .route(narwhal_mail::ses::ACCOUNT_PATH, get(get_account))
            // Room for a 40 MB message after base64 and JSON.
            .layer(DefaultBodyLimit::max(
                MAX_MESSAGE_BYTES / 3 * 4 + 1024 * 1024,
            ))
            .with_state(shared.clone());
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            // The server runs until the FakeSes is dropped (the task is aborted).
            match tls {
                None => {
                    let _ = axum::serve(listener, app).await;
                }
                Some(config) => {
                    let listener = TlsListener {
                        inner: listener,
                        acceptor: tokio_rustls::TlsAcceptor::from(config),
                    };
                    let _ = axum::serve(listener, app).await;
                }
            }
        });
        Ok(Self {
            addr,
            tls: is_tls,
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` when served over TLS), to use as the
    /// client's endpoint.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets a fault for every account.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.lock().global_fault = fault;
    }

    /// Sets a fault for one account (overrides the global one); `Fault::None` clears it.
    pub fn set_account_fault(&self, access_key_id: &str, fault: Fault) {
        let mut inner = self.shared.lock();
        if fault == Fault::None {
            inner.account_faults.remove(access_key_id);
        } else {
            inner
                .account_faults
                .insert(access_key_id.to_string(), fault);
        }
    }

    /// Messages to this recipient are rejected (`MessageRejected` / `MESSAGE_REJECTED`).
    pub fn reject_recipient(&self, address: &str) {
        self.shared
            .lock()
            .rejected_recipients
            .insert(address.to_ascii_lowercase());
    }

    /// Every accepted message so far, in order of acceptance.
    pub fn ledger(&self) -> Vec<Accepted> {
        self.shared.lock().ledger.clone()
    }

    /// Recipients that received more than one message, with their counts.
    pub fn duplicates(&self) -> Vec<(String, usize)> {
        let inner = self.shared.lock();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for a in &inner.ledger {
            *counts.entry(a.destination.as_str()).or_default() += 1;
        }
        let mut dups: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(d, n)| (d.to_string(), n))
            .collect();
        dups.sort();
        dups
    }

    /// The counters.
    pub fn stats(&self) -> FakeSesStats {
        self.shared.lock().stats
    }
}

fn error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = wire::ErrorBody {
        error_type: Some(error_type.to_string()),
        message: Some(message.to_string()),
        ..Default::default()
    };
    (
        status,
        [("x-amzn-errortype", error_type.to_string())],
        axum::Json(body),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "BadRequestException", message)
}

/// What the common part of every handler decided.
enum Admit {
    /// Go on, for this account, then hold the answer this long (zero: don't).
    Go(FakeAccount, Duration),
    /// Answer this right away.
    Answer(Response),
}

/// Faults, then authentication.
async fn admit(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    is_send: bool,
) -> Admit {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(sigv4::parse_authorization);
    let akid = match &auth {
        Some(Ok(a)) => Some(a.access_key_id.clone()),
        _ => None,
    };
    let fault = {
        let mut inner = shared.lock();
        inner.stats.requests += 1;
        akid.as_ref()
            .and_then(|k| inner.account_faults.get(k).cloned())
            .unwrap_or_else(|| inner.global_fault.clone())
    };
    if let Fault::Latency(d) = fault {
        tokio::time::sleep(d).await;
    }
    if fault == Fault::Down {
        return Admit::Answer(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable. Please try again later.",
        ));
    }
    let account = match check_signature(shared, method, uri, headers, body, auth) {
        Ok(a) => a,
        Err(r) => {
            shared.lock().stats.auth_failures += 1;
            return Admit::Answer(*r);
        }
    };
    if is_send {
        let text = match fault {
            Fault::ThrottleRate => Some(RATE_EXCEEDED),
            Fault::ThrottleDaily => Some(DAILY_QUOTA_EXCEEDED),
            _ => None,
        };
        if let Some(text) = text {
            shared.lock().stats.throttled += 1;
            return Admit::Answer(error(StatusCode::BAD_REQUEST, "ThrottlingException", text));
        }
    }
    let hold = match fault {
        Fault::TimeoutAfterAccept(d) => d,
        _ => Duration::ZERO,
    };
    Admit::Go(account, hold)
}

fn check_signature(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    auth: Option<Result<sigv4::ParsedAuthorization, sigv4::SigV4Error>>,
) -> Result<FakeAccount, Box<Response>> {
    let forbidden = |t: &str, m: &str| Box::new(error(StatusCode::FORBIDDEN, t, m));
    let auth = match auth {
        None => {
            return Err(forbidden(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ))
        }
        Some(Err(e)) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "IncompleteSignature",
                &e.to_string(),
            )))
        }
        Some(Ok(a)) => a,
    };
    let account = shared
        .lock()
        .accounts
        .get(&auth.access_key_id)
        .map(|(a, _)| a.clone())
        .ok_or_else(|| {
            forbidden(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        })?;
    if auth.service != "ses" || auth.region != shared.region {
        return Err(forbidden(
            "SignatureDoesNotMatch",
            "Credential should be scoped to a valid region and service.",
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "IncompleteSignature",
                &format!("Signed headers must include {required}."),
            )));
        }
    }
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| AmzDate::parse(v).ok())
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "IncompleteSignature",
                "Missing or malformed X-Amz-Date.",
            ))
        })?;
    if date.date() != auth.date {
        return Err(forbidden(
            "SignatureDoesNotMatch",
            "Credential date does not match X-Amz-Date.",
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if date
        .unix_seconds()
        .is_none_or(|t| (t - now).abs() > 15 * 60)
    {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "Signature expired: {} is not within 15 minutes of the server's time.",
                date.as_str()
            ),
        ));
    }
    let mut signed: Vec<(String, String)> = Vec::new();
    for name in &auth.signed_headers {
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(forbidden(
                "SignatureDoesNotMatch",
                &format!("Signed header {name} is missing."),
            ));
        }
        for v in values {
            signed.push((name.clone(), v.to_string()));
        }
    }
    let signed_refs: Vec<(&str, &str)> = signed
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let query: Vec<(&str, &str)> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect()
        })
        .unwrap_or_default();
    let expected = sigv4::sign(
        &SigningInput {
            method: method.as_str(),
            path: uri.path(),
            query: &query,
            headers: &signed_refs,
            payload: body,
        },
        &account.credentials(),
        Scope {
            region: &shared.region,
            service: "ses",
        },
        &date,
    );
    if !sigv4::signatures_match(&expected.signature, &auth.signature) {
        return Err(forbidden(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(account)
}

fn new_message_id(inner: &mut Inner) -> String {
    inner.next_id += 1;
    format!("0100{:016x}-fake-ses-000000", inner.next_id)
}

fn record(
    inner: &mut Inner,
    account: &FakeAccount,
    message_id: &str,
    destinations: &wire::Destination,
) {
    let at = UnixMillis::now();
    for d in destinations
        .to_addresses
        .iter()
        .chain(&destinations.cc_addresses)
        .chain(&destinations.bcc_addresses)
    {
        inner.ledger.push(Accepted {
            message_id: message_id.to_string(),
            access_key_id: account.access_key_id.clone(),
            destination: d.to_ascii_lowercase(),
            at,
        });
    }
    inner.stats.accepted += destinations.count() as u64;
}

fn rejected_in(inner: &Inner, d: &wire::Destination) -> Option<String> {
    d.to_addresses
        .iter()
        .chain(&d.cc_addresses)
        .chain(&d.bcc_addresses)
        .find(|a| inner.rejected_recipients.contains(&a.to_ascii_lowercase()))
        .cloned()
}

fn take(inner: &mut Inner, account: &FakeAccount, n: u64) -> Result<(), Refusal> {
    match inner.accounts.get_mut(&account.access_key_id) {
        Some((a, limits)) => limits.take(a, n),
        None => Ok(()),
    }
}

async fn finish(hold: Duration, response: Response) -> Response {
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    response
}

fn content_size(content: &wire::EmailContent) -> usize {
    let mut n = 0;
    if let Some(s) = &content.simple {
        n += s.subject.data.len();
        n += s.body.text.as_ref().map_or(0, |t| t.data.len());
        n += s.body.html.as_ref().map_or(0, |t| t.data.len());
        n += s
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>();
    }
    if let Some(r) = &content.raw {
        // The limit applies after base64 encoding, which is what we received.
        n += r.data.len();
    }
    n
}

async fn send_email(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (account, hold) = match admit(&shared, &method, &uri, &headers, &body, true).await {
        Admit::Go(a, h) => (a, h),
        Admit::Answer(r) => return r,
    };
    let req: wire::SendEmailRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("Invalid request body: {e}")),
    };
    let c = &req.content;
    let kinds = usize::from(c.simple.is_some())
        + usize::from(c.raw.is_some())
        + usize::from(c.template.is_some());
    if kinds != 1 {
        return bad_request("Content must contain exactly one of Simple, Raw or Template.");
    }
    if c.raw.is_none() && req.from_email_address.is_none() {
        return bad_request("FromEmailAddress is required.");
    }
    let Some(destination) = req.destination.clone() else {
        return bad_request("Destination is required.");
    };
    let recipients = destination.count();
    if recipients == 0 {
        return bad_request("Destination must contain at least one recipient.");
    }
    if recipients > MAX_DESTINATIONS {
        return bad_request(&format!("Recipient count exceeds {MAX_DESTINATIONS}."));
    }
    let size = content_size(c);
    let response = locked_send(&shared, &account, &destination, size);
    finish(hold, response).await
}

fn locked_send(
    shared: &Shared,
    account: &FakeAccount,
    destination: &wire::Destination,
    size: usize,
) -> Response {
    let recipients = destination.count();
    let mut inner = shared.lock();
    if size > MAX_MESSAGE_BYTES {
        inner.stats.rejected += recipients as u64;
        return error(
            StatusCode::BAD_REQUEST,
            "MessageRejected",
            &format!("Message length is more than {MAX_MESSAGE_BYTES} bytes long: '{size}'."),
        );
    }
    if let Some(addr) = rejected_in(&inner, destination) {
        inner.stats.rejected += recipients as u64;
        return error(
            StatusCode::BAD_REQUEST,
            "MessageRejected",
            &format!("Address blacklisted: {addr}"),
        );
    }
    match take(&mut inner, account, recipients as u64) {
        Err(refusal) => {
            inner.stats.throttled += recipients as u64;
            let text = match refusal {
                Refusal::Rate => RATE_EXCEEDED,
                Refusal::Daily => DAILY_QUOTA_EXCEEDED,
            };
            error(StatusCode::BAD_REQUEST, "ThrottlingException", text)
        }
        Ok(()) => {
            let id = new_message_id(&mut inner);
            record(&mut inner, account, &id, destination);
            axum::Json(wire::SendEmailResponse { message_id: id }).into_response()
        }
    }
}

async fn send_bulk_email(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (account, hold) = match admit(&shared, &method, &uri, &headers, &body, true).await {
        Admit::Go(a, h) => (a, h),
        Admit::Answer(r) => return r,
    };
    let req: wire::SendBulkEmailRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("Invalid request body: {e}")),
    };
    let n = req.bulk_email_entries.len();
    if n == 0 || n > MAX_DESTINATIONS {
        return bad_request(&format!(
            "BulkEmailEntries must contain 1 to {MAX_DESTINATIONS} entries, not {n}."
        ));
    }
    let template_ok = req
        .default_content
        .template
        .as_ref()
        .is_some_and(|t| t.template_name.is_some() || t.template_content.is_some());
    if !template_ok {
        return bad_request(
            "DefaultContent must contain a Template with TemplateName or TemplateContent.",
        );
    }
    if req.from_email_address.is_none() {
        return bad_request("FromEmailAddress is required.");
    }
    let template_size = req
        .default_content
        .template
        .as_ref()
        .and_then(|t| t.template_content.as_ref())
        .map_or(0, |c| {
            c.subject.as_ref().map_or(0, String::len)
                + c.text.as_ref().map_or(0, String::len)
                + c.html.as_ref().map_or(0, String::len)
        });
    let results = {
        let mut inner = shared.lock();
        let mut results = Vec::with_capacity(n);
        for entry in &req.bulk_email_entries {
            let recipients = entry.destination.count();
            let size = template_size
                + entry.replacement_email_content.as_ref().map_or(0, |c| {
                    c.replacement_template.replacement_template_data.len()
                });
            let result = |status: &str, error: Option<String>, id: Option<String>| {
                wire::BulkEmailEntryResult {
                    status: Some(status.to_string()),
                    error,
                    message_id: id,
                }
            };
            if recipients == 0 || recipients > MAX_DESTINATIONS {
                inner.stats.rejected += recipients as u64;
                results.push(result(
                    "INVALID_PARAMETER",
                    Some(format!("Recipient count must be 1 to {MAX_DESTINATIONS}.")),
                    None,
                ));
                continue;
            }
            if size > MAX_MESSAGE_BYTES {
                inner.stats.rejected += recipients as u64;
                results.push(result(
                    "MESSAGE_REJECTED",
                    Some(format!(
                        "Message length is more than {MAX_MESSAGE_BYTES} bytes long."
                    )),
                    None,
                ));
                continue;
            }
            if let Some(addr) = rejected_in(&inner, &entry.destination) {
                inner.stats.rejected += recipients as u64;
                results.push(result(
                    "MESSAGE_REJECTED",
                    Some(format!("Address blacklisted: {addr}")),
                    None,
                ));
                continue;
            }
            match take(&mut inner, &account, recipients as u64) {
                Err(Refusal::Rate) => {
                    inner.stats.throttled += recipients as u64;
                    results.push(result(
                        "ACCOUNT_THROTTLED",
                        Some(RATE_EXCEEDED.into()),
                        None,
                    ));
                }
                Err(Refusal::Daily) => {
                    inner.stats.throttled += recipients as u64;
                    results.push(result(
                        "ACCOUNT_DAILY_QUOTA_EXCEEDED",
                        Some(DAILY_QUOTA_EXCEEDED.into()),
                        None,
                    ));
                }
                Ok(()) => {
                    let id = new_message_id(&mut inner);
                    record(&mut inner, &account, &id, &entry.destination);
                    results.push(result("SUCCESS", None, Some(id)));
                }
            }
        }
        results
    };
    let answer = wire::SendBulkEmailResponse {
        bulk_email_entry_results: results,
    };
    finish(hold, axum::Json(answer).into_response()).await
}

async fn get_account(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (account, hold) = match admit(&shared, &method, &uri, &headers, &body, false).await {
        Admit::Go(a, h) => (a, h),
        Admit::Answer(r) => return r,
    };
    let sent = {
        let mut inner = shared.lock();
        match inner.accounts.get_mut(&account.access_key_id) {
            Some((a, limits)) => {
                limits.advance(a, Instant::now());
                limits.window_total
            }
            None => 0,
        }
    };
    let answer = wire::GetAccountResponse {
        send_quota: Some(wire::SendQuota {
            max24_hour_send: account.max_24_hour_send.map_or(-1.0, |d| d as f64),
            max_send_rate: account.max_send_rate.map_or(1_000_000.0, f64::from),
            sent_last24_hours: sent as f64,
        }),
        sending_enabled: Some(true),
        production_access_enabled: Some(true),
    };
    finish(hold, axum::Json(answer).into_response()).await
}

/// A TCP listener whose connections are TLS: a failed handshake drops that connection
/// and the listener waits for the next.
struct TlsListener {
    inner: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
