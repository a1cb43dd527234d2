//! An Amazon SES v2 HTTP client speaking the real wire format, and its error
//! classification.
//!
//! Operations (restJson1, SigV4-signed with service `ses`):
//!
//! - `POST /v2/email/outbound-emails` (SendEmail) with `Simple` or `Raw` content; the
//!   answer is `{"MessageId": ...}`.
//! - `POST /v2/email/outbound-bulk-emails` (SendBulkEmail): up to 50 `BulkEmailEntries`
//!   built from one template; the answer has one `BulkEmailEntryResults` item per entry,
//!   in order, with `Status` (`SUCCESS`, `MESSAGE_REJECTED`, `ACCOUNT_THROTTLED`,
//!   `ACCOUNT_DAILY_QUOTA_EXCEEDED`, ...), `Error` and `MessageId`. We render every
//!   message ourselves, so the bulk template is inline (`TemplateContent`) and made only
//!   of variables (`{{{subject}}}`, `{{{html}}}`, `{{{text}}}`, triple braces so that SES
//!   does not HTML-escape them) filled per entry by `ReplacementTemplateData`; each
//!   entry's own headers travel as `ReplacementHeaders`.
//! - `GET /v2/email/account` (GetAccount), whose `SendQuota` holds `Max24HourSend`
//!   (-1: unlimited), `MaxSendRate` and `SentLast24Hours`.
//!
//! Errors carry their type in the `x-amzn-ErrorType` header and/or the body's `__type`
//! (possibly prefixed `namespace#` or suffixed `:url`) and their text in `message`.
//! Classification (see [`classify_error`]): `ThrottlingException` (HTTP 400) and
//! `TooManyRequestsException` (429) are throttling, split by their message ("Maximum
//! sending rate exceeded." vs "Daily message quota exceeded."); credential and account
//! errors refuse the account; `MessageRejected` and `BadRequestException` refuse the
//! message; 5xx is transient. A request that could not connect is transient; one that
//! was sent but got no answer (timeout, reset) is ambiguous, since SES has no
//! idempotency key.
//!
//! TLS: the default endpoint is `https://email.REGION.amazonaws.com`, verified against
//! the webpki roots plus the optional [`SesConfig::ca_file`] (a fake SES behind a test
//! CA, a private gateway), through rustls with ring ([`crate::tls`]). Plain `http` is
//! accepted only for a loopback host (a local fake or LocalStack): credentials are
//! signed, not sent, but message contents would cross the network in the clear. A
//! certificate that does not verify refuses the account (`Rejected`, account scope:
//! fail over or park, never retried as if the network had blinked).
//!
//! DKIM: SES signs with Easy DKIM, configured on the SES identity; this client sends
//! `Simple` content and does not sign (the SMTP provider does, see [`crate::dkim`]).

use crate::provider::{
    BoxFuture, Content, Health, HealthTracker, OutgoingMessage, Provider, ProviderError,
    RejectScope, ReportedQuota, SendOutcome, ThrottleReason,
};
use crate::sigv4::{self, AmzDate, Credentials, Scope, SigningInput};
use base64::Engine as _;
use std::sync::Mutex;
use std::time::Duration;

/// SES's limit on recipients per message and entries per bulk request.
pub const MAX_DESTINATIONS: usize = 50;
/// SES v2's message size limit (after base64 encoding), 40 MB.
pub const MAX_MESSAGE_BYTES: usize = 40 * 1024 * 1024;

/// Path of SendEmail.
pub const SEND_EMAIL_PATH: &str = "/v2/email/outbound-emails";
/// Path of SendBulkEmail.
pub const SEND_BULK_EMAIL_PATH: &str = "/v2/email/outbound-bulk-emails";
/// Path of GetAccount.
pub const ACCOUNT_PATH: &str = "/v2/email/account";

/// The text of a rate throttle.
pub const RATE_EXCEEDED: &str = "Maximum sending rate exceeded.";
/// The text of a daily-quota throttle.
pub const DAILY_QUOTA_EXCEEDED: &str = "Daily message quota exceeded.";

/// The JSON bodies of the SES v2 API, field for field (PascalCase, absent when `None`).
/// Public so that the fake server parses exactly what the client sends.
pub mod wire {
    use serde::{Deserialize, Serialize};

    /// `Destination`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct Destination {
        /// `ToAddresses`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub to_addresses: Vec<String>,
        /// `CcAddresses`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub cc_addresses: Vec<String>,
        /// `BccAddresses`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub bcc_addresses: Vec<String>,
    }

    impl Destination {
        /// All recipients (To, Cc, Bcc).
        pub fn count(&self) -> usize {
            self.to_addresses.len() + self.cc_addresses.len() + self.bcc_addresses.len()
        }
    }

    /// `Content` (a text with its charset).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct TextContent {
        /// `Data`.
        pub data: String,
        /// `Charset`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub charset: Option<String>,
    }

    /// `Body`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct Body {
        /// `Text`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub text: Option<TextContent>,
        /// `Html`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub html: Option<TextContent>,
    }

    /// `MessageHeader`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct MessageHeader {
        /// `Name`.
        pub name: String,
        /// `Value`.
        pub value: String,
    }

    /// `Message` (the Simple content).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SimpleMessage {
        /// `Subject`.
        pub subject: TextContent,
        /// `Body`.
        pub body: Body,
        /// `Headers`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub headers: Vec<MessageHeader>,
    }

    /// `RawMessage`: `Data` is the MIME message, base64-encoded as every JSON blob is.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct RawMessage {
        /// `Data`, base64.
        pub data: String,
    }

    /// `EmailContent`: exactly one of the members is set.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct EmailContent {
        /// `Simple`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub simple: Option<SimpleMessage>,
        /// `Raw`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub raw: Option<RawMessage>,
        /// `Template` (we send none; kept so the fake can refuse or count it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template: Option<serde_json::Value>,
    }

    /// SendEmail's request body.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SendEmailRequest {
        /// `FromEmailAddress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_email_address: Option<String>,
        /// `Destination`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub destination: Option<Destination>,
        /// `Content`.
        pub content: EmailContent,
        /// `ConfigurationSetName`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub configuration_set_name: Option<String>,
    }

    /// SendEmail's answer.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SendEmailResponse {
        /// `MessageId`.
        pub message_id: String,
    }

    /// `TemplateContent` (an inline template).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct TemplateContent {
        /// `Subject`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub subject: Option<String>,
        /// `Text`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub text: Option<String>,
        /// `Html`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub html: Option<String>,
    }

    /// `Template`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct Template {
        /// `TemplateName` (a stored template).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template_name: Option<String>,
        /// `TemplateContent` (an inline template).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template_content: Option<TemplateContent>,
        /// `TemplateData`, a JSON object as a string.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template_data: Option<String>,
    }

    /// `BulkEmailContent`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct BulkEmailContent {
        /// `Template`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template: Option<Template>,
    }

    /// `ReplacementTemplate`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct ReplacementTemplate {
        /// `ReplacementTemplateData`, a JSON object as a string.
        pub replacement_template_data: String,
    }

    /// `ReplacementEmailContent`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct ReplacementEmailContent {
        /// `ReplacementTemplate`.
        pub replacement_template: ReplacementTemplate,
    }

    /// `BulkEmailEntry`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct BulkEmailEntry {
        /// `Destination`.
        pub destination: Destination,
        /// `ReplacementEmailContent`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub replacement_email_content: Option<ReplacementEmailContent>,
        /// `ReplacementHeaders`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub replacement_headers: Vec<MessageHeader>,
    }

    /// SendBulkEmail's request body.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SendBulkEmailRequest {
        /// `FromEmailAddress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_email_address: Option<String>,
        /// `DefaultContent`.
        pub default_content: BulkEmailContent,
        /// `BulkEmailEntries`.
        pub bulk_email_entries: Vec<BulkEmailEntry>,
        /// `ConfigurationSetName`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub configuration_set_name: Option<String>,
    }

    /// `BulkEmailEntryResult`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct BulkEmailEntryResult {
        /// `Status`: `SUCCESS`, `MESSAGE_REJECTED`, `ACCOUNT_THROTTLED`, ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<String>,
        /// `Error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
        /// `MessageId`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message_id: Option<String>,
    }

    /// SendBulkEmail's answer.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SendBulkEmailResponse {
        /// `BulkEmailEntryResults`, one per entry, in order.
        pub bulk_email_entry_results: Vec<BulkEmailEntryResult>,
    }

    /// `SendQuota`.
    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct SendQuota {
        /// `Max24HourSend` (-1: unlimited).
        pub max24_hour_send: f64,
        /// `MaxSendRate`.
        pub max_send_rate: f64,
        /// `SentLast24Hours`.
        pub sent_last24_hours: f64,
    }

    /// GetAccount's answer (only the members we read, plus two flags for diagnostics).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct GetAccountResponse {
        /// `SendQuota`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub send_quota: Option<SendQuota>,
        /// `SendingEnabled`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sending_enabled: Option<bool>,
        /// `ProductionAccessEnabled`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub production_access_enabled: Option<bool>,
    }

    /// An error body: `{"__type": ..., "message": ...}` (some services say `Message`).
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ErrorBody {
        /// `__type`.
        #[serde(rename = "__type", default, skip_serializing_if = "Option::is_none")]
        pub error_type: Option<String>,
        /// `code` (seen from some services).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code: Option<String>,
        /// `message`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message: Option<String>,
        /// `Message`.
        #[serde(rename = "Message", default, skip_serializing_if = "Option::is_none")]
        pub message_upper: Option<String>,
    }
}

/// Reduces `com.amazonaws.ses#ThrottlingException` or `ThrottlingException:http://...`
/// to `ThrottlingException`.
pub fn sanitize_error_type(raw: &str) -> &str {
    let before_colon = raw.split(':').next().unwrap_or(raw);
    before_colon
        .rsplit('#')
        .next()
        .unwrap_or(before_colon)
        .trim()
}

/// Classifies a whole-request error answer (HTTP status, error type, message).
pub fn classify_error(status: u16, error_type: &str, message: &str) -> SendOutcome {
    let reason = format!("{error_type}: {message}");
    match error_type {
        "ThrottlingException" | "TooManyRequestsException" | "Throttling" => {
            let reason = if message.contains("Daily message quota exceeded") {
                ThrottleReason::DailyQuota
            } else if message.contains("Maximum sending rate exceeded") {
                ThrottleReason::Rate
            } else {
                ThrottleReason::Other(reason)
            };
            SendOutcome::Throttled { reason }
        }
        "MessageRejected" | "BadRequestException" | "ValidationError" | "ValidationException" => {
            SendOutcome::Rejected {
                scope: RejectScope::Message,
                reason,
            }
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationTokenException"
        | "AccessDeniedException"
        | "NotAuthorized"
        | "OptInRequired"
        | "AccountSuspendedException"
        | "SendingPausedException"
        | "MailFromDomainNotVerifiedException"
        | "NotFoundException"
        | "LimitExceededException" => SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason,
        },
        _ if status == 429 => SendOutcome::Throttled {
            reason: ThrottleReason::Other(reason),
        },
        _ if status >= 500 => SendOutcome::TransientError { reason },
        // An error we do not know: keep the recipient (park via the account) rather than
        // give up on it.
        _ => SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason: format!("HTTP {status} {reason}"),
        },
    }
}

/// Classifies one `BulkEmailEntryResult`.
pub fn classify_bulk_entry(result: &wire::BulkEmailEntryResult) -> SendOutcome {
    let status = result.status.as_deref().unwrap_or("");
    let reason = match &result.error {
        Some(e) => format!("{status}: {e}"),
        None => status.to_string(),
    };
    match status {
        "SUCCESS" => SendOutcome::Accepted {
            provider_message_id: result.message_id.clone().unwrap_or_default(),
        },
        "ACCOUNT_THROTTLED" => SendOutcome::Throttled {
            reason: ThrottleReason::Rate,
        },
        "ACCOUNT_DAILY_QUOTA_EXCEEDED" => SendOutcome::Throttled {
            reason: ThrottleReason::DailyQuota,
        },
        "MESSAGE_REJECTED" | "INVALID_PARAMETER" => SendOutcome::Rejected {
            scope: RejectScope::Message,
            reason,
        },
        "TRANSIENT_FAILURE" | "FAILED" => SendOutcome::TransientError { reason },
        // MAIL_FROM_DOMAIN_NOT_VERIFIED, CONFIGURATION_SET_DOES_NOT_EXIST,
        // TEMPLATE_DOES_NOT_EXIST, ACCOUNT_SUSPENDED, INVALID_SENDING_POOL_NAME,
        // ACCOUNT_SENDING_PAUSED, CONFIGURATION_SET_SENDING_PAUSED, and anything new.
        _ => SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason,
        },
    }
}

/// How to reach and sign for one SES account.
#[derive(Clone, Debug)]
pub struct SesConfig {
    /// A name for logs and ledger rows.
    pub name: String,
    /// The region (`us-east-1`); part of the signature's scope.
    pub region: String,
    /// The endpoint; `None` means `https://email.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The access key id and secret.
    pub credentials: Credentials,
    /// An optional configuration set for event publishing.
    pub configuration_set: Option<String>,
    /// The longest wait for a connection.
    pub connect_timeout: Duration,
    /// The longest wait for a whole request; past it, a sent request is ambiguous.
    pub request_timeout: Duration,
    /// Extra trusted CA certificates (PEM) for an `https` endpoint.
    pub ca_file: Option<std::path::PathBuf>,
}

impl SesConfig {
    /// A config with default timeouts (3 s to connect, 15 s per request).
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            endpoint: None,
            credentials,
            configuration_set: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(15),
            ca_file: None,
        }
    }
}

/// Why an [`SesClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SesConfigError {
    /// The endpoint is not an `http(s)://host[:port]` URL.
    #[error("SES endpoint {0:?} is not an http(s)://host[:port] URL")]
    BadEndpoint(String),
    /// `http` to a host that is not loopback.
    #[error("SES endpoint {0:?}: plain http is only for a local server (127.0.0.1, localhost); use https")]
    HttpNotLocal(String),
    /// The TLS settings (the CA file) are wrong.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(String),
}

/// A client for one SES account. Implements [`Provider`].
#[derive(Debug)]
pub struct SesClient {
    config: SesConfig,
    http: reqwest::Client,
    /// `scheme://host[:port]`, without a trailing slash.
    base: String,
    /// The `host` header value that is signed and sent.
    host: String,
    health: Mutex<HealthTracker>,
}

/// The failure of one HTTP exchange, before classification.
enum Exchange {
    /// 2xx with its body.
    Ok(Vec<u8>),
    /// A non-2xx answer.
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// Could not connect: nothing was sent.
    NotSent(String),
    /// The TLS handshake failed (an untrusted or wrong certificate): nothing was sent,
    /// and retrying will not help.
    TlsRefused(String),
    /// Sent, but no complete answer.
    NoAnswer(String),
}

/// The rustls error somewhere in `e`'s chain, if the failure was TLS's.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error's source() skips the error it wraps (which may be another
        // io::Error around the rustls one), so step into it instead.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

impl SesClient {
    /// Builds a client; checks the endpoint.
    pub fn new(config: SesConfig) -> Result<Self, SesConfigError> {
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", config.region));
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|_| SesConfigError::BadEndpoint(endpoint.clone()))?;
        let host = url
            .host_str()
            .ok_or_else(|| SesConfigError::BadEndpoint(endpoint.clone()))?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(SesConfigError::BadEndpoint(endpoint));
        }
        match url.scheme() {
            "https" => {}
            "http" if crate::tls::is_loopback(host) => {}
            "http" => return Err(SesConfigError::HttpNotLocal(endpoint)),
            _ => return Err(SesConfigError::BadEndpoint(endpoint)),
        }
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let base = format!("{}://{host}", url.scheme());
        let tls = crate::tls::client_config(config.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(url.scheme() == "https")
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| SesConfigError::Http(e.to_string()))?;
        Ok(Self {
            config,
            http,
            base,
            host,
            health: Mutex::new(HealthTracker::default()),
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    async fn exchange(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> Exchange {
        let date = AmzDate::now();
        let is_post = method == reqwest::Method::POST;
        let mut headers: Vec<(&str, &str)> =
            vec![("host", &self.host), ("x-amz-date", date.as_str())];
        if is_post {
            headers.push(("content-type", "application/json"));
        }
        let signed = sigv4::sign(
            &SigningInput {
                method: method.as_str(),
                path,
                query: &[],
                headers: &headers,
                payload: &body,
            },
            &self.config.credentials,
            Scope {
                region: &self.config.region,
                service: "ses",
            },
            &date,
        );
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("x-amz-date", date.as_str())
            .header("authorization", signed.authorization);
        if is_post {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return match tls_failure(&e) {
                    Some(t) => Exchange::TlsRefused(format!("TLS with {}: {t}", self.host)),
                    None => Exchange::NotSent(format!("connect: {e}")),
                }
            }
            Err(e) if e.is_builder() => return Exchange::NotSent(format!("request: {e}")),
            Err(e) if e.is_timeout() => return Exchange::NoAnswer(format!("timeout: {e}")),
            Err(e) => return Exchange::NoAnswer(format!("no answer: {e}")),
        };
        let status = resp.status().as_u16();
        let header_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| sanitize_error_type(v).to_string());
        let bytes = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return Exchange::NoAnswer(format!("reading the answer: {e}")),
        };
        if (200..300).contains(&status) {
            return Exchange::Ok(bytes);
        }
        let body: wire::ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let error_type = header_type
            .or_else(|| {
                body.error_type
                    .as_deref()
                    .map(|t| sanitize_error_type(t).to_string())
            })
            .or_else(|| body.code.clone())
            .unwrap_or_else(|| format!("HTTP{status}"));
        let message = body
            .message
            .or(body.message_upper)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        Exchange::Error {
            status,
            error_type,
            message,
        }
    }

    /// SendEmail for one message.
    async fn send_one(&self, msg: &OutgoingMessage) -> SendOutcome {
        let request = wire::SendEmailRequest {
            from_email_address: Some(msg.from.as_str().to_string()),
            destination: Some(wire::Destination {
                to_addresses: vec![msg.to.as_str().to_string()],
                ..Default::default()
            }),
            content: email_content(&msg.content),
            configuration_set_name: self.config.configuration_set.clone(),
        };
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => {
                return SendOutcome::Rejected {
                    scope: RejectScope::Message,
                    reason: format!("encoding: {e}"),
                }
            }
        };
        match self
            .exchange(reqwest::Method::POST, SEND_EMAIL_PATH, body)
            .await
        {
            Exchange::Ok(bytes) => {
                match serde_json::from_slice::<wire::SendEmailResponse>(&bytes) {
                    Ok(r) => SendOutcome::Accepted {
                        provider_message_id: r.message_id,
                    },
                    Err(e) => SendOutcome::Ambiguous {
                        reason: format!("2xx with an unreadable answer: {e}"),
                    },
                }
            }
            other => whole_request_outcome(other),
        }
    }

    /// SendBulkEmail for up to 50 Simple messages from one sender.
    async fn send_bulk(&self, msgs: &[&OutgoingMessage]) -> Vec<SendOutcome> {
        let Some(first) = msgs.first() else {
            return Vec::new();
        };
        let entries = msgs
            .iter()
            .map(|m| {
                let (subject, text, html, headers) = match &m.content {
                    Content::Simple {
                        subject,
                        text,
                        html,
                        headers,
                    } => (
                        subject.as_str(),
                        text.as_deref(),
                        html.as_deref(),
                        headers.as_slice(),
                    ),
                    Content::Raw(_) => ("", None, None, &[][..]),
                };
                let data = serde_json::json!({
                    "subject": subject,
                    "text": text.unwrap_or(""),
                    "html": html.unwrap_or(""),
                });
                wire::BulkEmailEntry {
                    destination: wire::Destination {
                        to_addresses: vec![m.to.as_str().to_string()],
                        ..Default::default()
                    },
                    replacement_email_content: Some(wire::ReplacementEmailContent {
                        replacement_template: wire::ReplacementTemplate {
                            replacement_template_data: data.to_string(),
                        },
                    }),
                    replacement_headers: headers
                        .iter()
                        .map(|h| wire::MessageHeader {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        let has_text = msgs
            .iter()
            .any(|m| matches!(&m.content, Content::Simple { text: Some(_), .. }));
        let has_html = msgs
            .iter()
            .any(|m| matches!(&m.content, Content::Simple { html: Some(_), .. }));
        let request = wire::SendBulkEmailRequest {
            from_email_address: Some(first.from.as_str().to_string()),
            default_content: wire::BulkEmailContent {
                template: Some(wire::Template {
                    template_name: None,
                    template_content: Some(wire::TemplateContent {
                        subject: Some("{{{subject}}}".into()),
                        text: has_text.then(|| "{{{text}}}".into()),
                        html: has_html.then(|| "{{{html}}}".into()),
                    }),
                    template_data: Some("{}".into()),
                }),
            },
            bulk_email_entries: entries,
            configuration_set_name: self.config.configuration_set.clone(),
        };
        let n = msgs.len();
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => {
                return vec![
                    SendOutcome::Rejected {
                        scope: RejectScope::Message,
                        reason: format!("encoding: {e}"),
                    };
                    n
                ]
            }
        };
        match self
            .exchange(reqwest::Method::POST, SEND_BULK_EMAIL_PATH, body)
            .await
        {
            Exchange::Ok(bytes) => {
                match serde_json::from_slice::<wire::SendBulkEmailResponse>(&bytes) {
                    Ok(r) if r.bulk_email_entry_results.len() == n => r
                        .bulk_email_entry_results
                        .iter()
                        .map(classify_bulk_entry)
                        .collect(),
                    Ok(r) => vec![
                        SendOutcome::Ambiguous {
                            reason: format!(
                                "{} results for {n} entries",
                                r.bulk_email_entry_results.len()
                            ),
                        };
                        n
                    ],
                    Err(e) => vec![
                        SendOutcome::Ambiguous {
                            reason: format!("2xx with an unreadable answer: {e}"),
                        };
                        n
                    ],
                }
            }
            other => vec![whole_request_outcome(other); n],
        }
    }

    /// Reads the account's limits (GetAccount).
    pub async fn get_account(&self) -> Result<wire::GetAccountResponse, ProviderError> {
        match self
            .exchange(reqwest::Method::GET, ACCOUNT_PATH, Vec::new())
            .await
        {
            Exchange::Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| ProviderError::Decode(e.to_string()))
            }
            Exchange::Error {
                error_type,
                message,
                ..
            } => Err(ProviderError::Api {
                code: error_type,
                message,
            }),
            Exchange::NotSent(r) | Exchange::TlsRefused(r) | Exchange::NoAnswer(r) => {
                Err(ProviderError::Transport(r))
            }
        }
    }

    fn observe(&self, outcomes: &[SendOutcome]) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        for o in outcomes {
            h.observe(o);
        }
    }
}

fn whole_request_outcome(exchange: Exchange) -> SendOutcome {
    match exchange {
        Exchange::Ok(_) => SendOutcome::Ambiguous {
            reason: "unexpected success".into(),
        },
        Exchange::Error {
            status,
            error_type,
            message,
        } => classify_error(status, &error_type, &message),
        Exchange::NotSent(reason) => SendOutcome::TransientError { reason },
        Exchange::TlsRefused(reason) => SendOutcome::Rejected {
            scope: RejectScope::Account,
            reason,
        },
        Exchange::NoAnswer(reason) => SendOutcome::Ambiguous { reason },
    }
}

/// The `Content` member for a message.
pub fn email_content(content: &Content) -> wire::EmailContent {
    let utf8 = |s: &str| wire::TextContent {
        data: s.to_string(),
        charset: Some("UTF-8".into()),
    };
    match content {
        Content::Simple {
            subject,
            text,
            html,
            headers,
        } => wire::EmailContent {
            simple: Some(wire::SimpleMessage {
                subject: utf8(subject),
                body: wire::Body {
                    text: text.as_deref().map(utf8),
                    html: html.as_deref().map(utf8),
                },
                headers: headers
                    .iter()
                    .map(|h| wire::MessageHeader {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
            }),
            ..Default::default()
        },
        Content::Raw(bytes) => wire::EmailContent {
            raw: Some(wire::RawMessage {
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
            ..Default::default()
        },
    }
}

impl Provider for SesClient {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn max_batch(&self) -> usize {
        MAX_DESTINATIONS
    }

    /// Simple messages from the same sender go out together through SendBulkEmail (50
    /// at a time); Raw messages and lone ones through SendEmail.
    fn send_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<SendOutcome>> {
        Box::pin(async move {
            let mut outcomes: Vec<Option<SendOutcome>> = vec![None; messages.len()];
            // Group Simple messages by sender, keeping their positions.
            let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                if matches!(m.content, Content::Simple { .. }) {
                    match groups.iter_mut().find(|(from, _)| *from == m.from.as_str()) {
                        Some((_, idx)) => idx.push(i),
                        None => groups.push((m.from.as_str(), vec![i])),
                    }
                }
            }
            for (_, idx) in &groups {
                for chunk in idx.chunks(MAX_DESTINATIONS) {
                    if chunk.len() == 1 {
                        continue;
                    }
                    let msgs: Vec<&OutgoingMessage> = chunk.iter().map(|&i| &messages[i]).collect();
                    for (&i, o) in chunk.iter().zip(self.send_bulk(&msgs).await) {
                        outcomes[i] = Some(o);
                    }
                }
            }
            for (i, m) in messages.iter().enumerate() {
                if outcomes[i].is_none() {
                    outcomes[i] = Some(self.send_one(m).await);
                }
            }
            let outcomes: Vec<SendOutcome> = outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or(SendOutcome::TransientError {
                        reason: "not attempted".into(),
                    })
                })
                .collect();
            self.observe(&outcomes);
            outcomes
        })
    }

    fn quota(&self) -> BoxFuture<'_, Result<Option<ReportedQuota>, ProviderError>> {
        Box::pin(async move {
            let account = self.get_account().await?;
            Ok(account.send_quota.map(|q| ReportedQuota {
                max_send_rate: q.max_send_rate,
                max_24_hour_send: q.max24_hour_send,
                sent_last_24_hours: q.sent_last24_hours,
            }))
        })
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Header;
    use crate::Secret;
    use serde_json::json;

    #[test]
    fn send_email_body_matches_the_documented_shape() {
        let req = wire::SendEmailRequest {
            from_email_address: Some("team@example.org".into()),
            destination: Some(wire::Destination {
                to_addresses: vec!["v@example.com".into()],
                ..Default::default()
            }),
            content: email_content(&Content::Simple {
                subject: "Hi".into(),
                text: Some("t".into()),
                html: None,
                headers: vec![Header {
                    name: "List-Unsubscribe".into(),
                    value: "<https://x/u>".into(),
                }],
            }),
            configuration_set_name: None,
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "FromEmailAddress": "team@example.org",
                "Destination": {"ToAddresses": ["v@example.com"]},
                "Content": {"Simple": {
                    "Subject": {"Data": "Hi", "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": "t", "Charset": "UTF-8"}},
                    "Headers": [{"Name": "List-Unsubscribe", "Value": "<https://x/u>"}]
                }}
            })
        );
        let raw = email_content(&Content::Raw(b"Subject: x\r\n\r\nbody".to_vec()));
        assert_eq!(
            serde_json::to_value(&raw).unwrap(),
            json!({"Raw": {"Data": "U3ViamVjdDogeA0KDQpib2R5"}})
        );
    }

    #[test]
    fn bulk_and_account_answers_parse_from_the_documented_shape() {
        let r: wire::SendBulkEmailResponse = serde_json::from_value(json!({
            "BulkEmailEntryResults": [
                {"Status": "SUCCESS", "MessageId": "0100-a"},
                {"Status": "ACCOUNT_DAILY_QUOTA_EXCEEDED", "Error": "Daily message quota exceeded."}
            ]
        }))
        .unwrap();
        assert_eq!(
            r.bulk_email_entry_results[0].message_id.as_deref(),
            Some("0100-a")
        );
        let a: wire::GetAccountResponse = serde_json::from_value(json!({
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 12.0},
            "SendingEnabled": true,
            "DedicatedIpAutoWarmupEnabled": false
        }))
        .unwrap();
        assert_eq!(a.send_quota.unwrap().max24_hour_send, 50_000.0);
        assert_eq!(a.send_quota.unwrap().max_send_rate, 14.0);
    }

    #[test]
    fn error_types_are_sanitized() {
        assert_eq!(
            sanitize_error_type("ThrottlingException"),
            "ThrottlingException"
        );
        assert_eq!(
            sanitize_error_type("com.amazonaws.sesv2#ThrottlingException"),
            "ThrottlingException"
        );
        assert_eq!(
            sanitize_error_type("ThrottlingException:http://internal.amazon.com/coral/"),
            "ThrottlingException"
        );
    }

    #[test]
    fn errors_are_classified() {
        use SendOutcome::*;
        assert_eq!(
            classify_error(400, "ThrottlingException", RATE_EXCEEDED),
            Throttled {
                reason: ThrottleReason::Rate
            }
        );
        assert_eq!(
            classify_error(400, "ThrottlingException", DAILY_QUOTA_EXCEEDED),
            Throttled {
                reason: ThrottleReason::DailyQuota
            }
        );
        assert!(matches!(
            classify_error(429, "TooManyRequestsException", "Too many requests"),
            Throttled {
                reason: ThrottleReason::Other(_)
            }
        ));
        assert!(matches!(
            classify_error(429, "Whatever", "slow down"),
            Throttled { .. }
        ));
        assert!(matches!(
            classify_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid."
            ),
            Rejected {
                scope: RejectScope::Account,
                ..
            }
        ));
        assert!(matches!(
            classify_error(400, "MessageRejected", "Email address is not verified."),
            Rejected {
                scope: RejectScope::Message,
                ..
            }
        ));
        assert!(matches!(
            classify_error(503, "ServiceUnavailable", ""),
            TransientError { .. }
        ));
        assert!(matches!(
            classify_error(500, "InternalFailure", ""),
            TransientError { .. }
        ));
        assert!(matches!(
            classify_error(418, "Teapot", ""),
            Rejected {
                scope: RejectScope::Account,
                ..
            }
        ));
    }

    #[test]
    fn bulk_statuses_are_classified() {
        let r = |s: &str| wire::BulkEmailEntryResult {
            status: Some(s.into()),
            error: Some("why".into()),
            message_id: (s == "SUCCESS").then(|| "id-1".into()),
        };
        assert_eq!(
            classify_bulk_entry(&r("SUCCESS")),
            SendOutcome::Accepted {
                provider_message_id: "id-1".into()
            }
        );
        assert_eq!(
            classify_bulk_entry(&r("ACCOUNT_THROTTLED")),
            SendOutcome::Throttled {
                reason: ThrottleReason::Rate
            }
        );
        assert_eq!(
            classify_bulk_entry(&r("ACCOUNT_DAILY_QUOTA_EXCEEDED")),
            SendOutcome::Throttled {
                reason: ThrottleReason::DailyQuota
            }
        );
        assert!(matches!(
            classify_bulk_entry(&r("MESSAGE_REJECTED")),
            SendOutcome::Rejected {
                scope: RejectScope::Message,
                ..
            }
        ));
        assert!(matches!(
            classify_bulk_entry(&r("TRANSIENT_FAILURE")),
            SendOutcome::TransientError { .. }
        ));
        for account in [
            "ACCOUNT_SUSPENDED",
            "MAIL_FROM_DOMAIN_NOT_VERIFIED",
            "ACCOUNT_SENDING_PAUSED",
            "NEW_STATUS",
        ] {
            assert!(matches!(
                classify_bulk_entry(&r(account)),
                SendOutcome::Rejected {
                    scope: RejectScope::Account,
                    ..
                }
            ));
        }
    }

    #[test]
    fn endpoints_are_checked() {
        let creds = Credentials::new("AKID", Secret::from("s"));
        let mut c = SesConfig::new("main", "us-east-1", creds);
        let real = SesClient::new(c.clone()).unwrap();
        assert_eq!(real.endpoint(), "https://email.us-east-1.amazonaws.com");
        assert_eq!(real.host, "email.us-east-1.amazonaws.com");
        c.endpoint = Some("http://email.us-east-1.amazonaws.com".into());
        assert!(matches!(
            SesClient::new(c.clone()),
            Err(SesConfigError::HttpNotLocal(_))
        ));
        c.endpoint = Some("https://127.0.0.1:4566".into());
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            SesClient::new(c.clone()),
            Err(SesConfigError::Tls(_))
        ));
        c.ca_file = None;
        c.endpoint = Some("http://127.0.0.1:4566".into());
        let client = SesClient::new(c.clone()).unwrap();
        assert_eq!(client.endpoint(), "http://127.0.0.1:4566");
        assert_eq!(client.host, "127.0.0.1:4566");
        c.endpoint = Some("ftp://127.0.0.1".into());
        assert!(matches!(
            SesClient::new(c.clone()),
            Err(SesConfigError::BadEndpoint(_))
        ));
        c.endpoint = Some("http://127.0.0.1:1/v2".into());
        assert!(matches!(
            SesClient::new(c),
            Err(SesConfigError::BadEndpoint(_))
        ));
    }

    #[test]
    fn the_client_debug_hides_the_secret() {
        let creds = Credentials::new("AKID", Secret::from("very-secret"));
        let mut c = SesConfig::new("main", "us-east-1", creds);
        c.endpoint = Some("http://127.0.0.1:4566".into());
        let client = SesClient::new(c).unwrap();
        assert!(!format!("{client:?}").contains("very-secret"));
    }
}
