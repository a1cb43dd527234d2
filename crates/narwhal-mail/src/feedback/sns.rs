//! Amazon SNS HTTP(S) deliveries: the envelope, its signature, and the certificate.
//!
//! SNS posts a JSON envelope (`Type`, `MessageId`, `TopicArn`, `Message`, `Timestamp`,
//! `SignatureVersion`, `Signature`, `SigningCertURL`, and for confirmations
//! `SubscribeURL` and `Token`). The signature is RSA PKCS#1 v1.5 over a canonical
//! string: for a `Notification`, the lines `Message`, `MessageId`, `Subject` (only when
//! present), `Timestamp`, `TopicArn`, `Type`, each name then value, each followed by a
//! newline; for `SubscriptionConfirmation` and `UnsubscribeConfirmation`, `Message`,
//! `MessageId`, `SubscribeURL`, `Timestamp`, `Token`, `TopicArn`, `Type`.
//! `SignatureVersion` 1 hashes it with SHA-1, 2 with SHA-256.
//!
//! The certificate comes from `SigningCertURL`, fetched only when the URL passes the
//! [`CertHosts`] policy (in production `https://sns.<region>.amazonaws.com/...pem`,
//! whose TLS connection vouches for the certificate) and cached by URL. A message with
//! no signature, an unknown version, a URL outside the policy, a topic not configured
//! or a signature that does not verify is refused with an [`SnsError`] whose
//! [`SnsError::code`] is stable.

use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The three kinds of SNS delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A published message.
    Notification,
    /// Sent once when a subscription is made: confirm by fetching `SubscribeURL`.
    SubscriptionConfirmation,
    /// Sent when the subscription is removed.
    UnsubscribeConfirmation,
}

impl MessageType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "Notification",
            Self::SubscriptionConfirmation => "SubscriptionConfirmation",
            Self::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }
}

/// A parsed SNS envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `Type`.
    pub kind: MessageType,
    /// `MessageId`: the same for SNS's retries of one message.
    pub message_id: String,
    /// `TopicArn`.
    pub topic_arn: String,
    /// `Message`: for SES notifications, a JSON document as text.
    pub message: String,
    /// `Subject`, when the publisher gave one.
    pub subject: Option<String>,
    /// `Timestamp` (ISO 8601, UTC).
    pub timestamp: String,
    /// `SignatureVersion`: 1 (SHA-1) or 2 (SHA-256).
    pub signature_version: u8,
    /// `Signature`, decoded from base64.
    pub signature: Vec<u8>,
    /// `SigningCertURL`.
    pub signing_cert_url: String,
    /// `SubscribeURL` (confirmations).
    pub subscribe_url: Option<String>,
    /// `Token` (confirmations).
    pub token: Option<String>,
}

/// Why an SNS delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    /// Not an SNS envelope.
    #[error("not an SNS message: {0}")]
    Malformed(String),
    /// No signature, or a signature version we do not know.
    #[error("the message is not signed with SignatureVersion 1 or 2")]
    Unsigned,
    /// The certificate or subscribe URL is not one SNS uses.
    #[error("the URL {0:?} is not an SNS address this server trusts")]
    UntrustedUrl(String),
    /// The topic is not one this server subscribed to.
    #[error("the topic is not one this server accepts")]
    UnknownTopic,
    /// The signature does not verify against the certificate.
    #[error("the message signature does not verify")]
    BadSignature,
    /// The certificate could not be read.
    #[error("the signing certificate is not usable: {0}")]
    BadCertificate(String),
    /// The certificate (or the subscribe URL) could not be fetched: try again later.
    #[error("could not reach SNS: {0}")]
    Unreachable(String),
}

impl SnsError {
    /// A stable machine code for the API error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_notification",
            Self::Unsigned => "unsigned_notification",
            Self::UntrustedUrl(_) => "untrusted_certificate_url",
            Self::UnknownTopic => "unknown_topic",
            Self::BadSignature => "bad_signature",
            Self::BadCertificate(_) => "bad_certificate",
            Self::Unreachable(_) => "sns_unreachable",
        }
    }

    /// True when the sender should retry (our side or the network failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Wire {
    #[serde(rename = "Type")]
    kind: String,
    message_id: String,
    topic_arn: String,
    message: String,
    subject: Option<String>,
    timestamp: String,
    signature_version: Option<String>,
    signature: Option<String>,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: Option<String>,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    token: Option<String>,
}

/// Parses an SNS POST body.
pub fn parse(body: &[u8]) -> Result<Envelope, SnsError> {
    let w: Wire = serde_json::from_slice(body).map_err(|e| SnsError::Malformed(e.to_string()))?;
    let kind = match w.kind.as_str() {
        "Notification" => MessageType::Notification,
        "SubscriptionConfirmation" => MessageType::SubscriptionConfirmation,
        "UnsubscribeConfirmation" => MessageType::UnsubscribeConfirmation,
        other => return Err(SnsError::Malformed(format!("unknown Type {other:?}"))),
    };
    if w.message_id.is_empty() || w.message_id.len() > 200 {
        return Err(SnsError::Malformed("MessageId".into()));
    }
    let signature_version = match w.signature_version.as_deref() {
        Some("1") => 1,
        Some("2") => 2,
        _ => return Err(SnsError::Unsigned),
    };
    let signature = w
        .signature
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or(SnsError::Unsigned)?;
    let signing_cert_url = w.signing_cert_url.ok_or(SnsError::Unsigned)?;
    if kind != MessageType::Notification && (w.subscribe_url.is_none() || w.token.is_none()) {
        return Err(SnsError::Malformed("SubscribeURL and Token".into()));
    }
    Ok(Envelope {
        kind,
        message_id: w.message_id,
        topic_arn: w.topic_arn,
        message: w.message,
        subject: w.subject,
        timestamp: w.timestamp,
        signature_version,
        signature,
        signing_cert_url,
        subscribe_url: w.subscribe_url,
        token: w.token,
    })
}

/// The canonical string SNS signs for this envelope.
pub fn string_to_sign(e: &Envelope) -> String {
    let mut s = String::with_capacity(e.message.len() + 256);
    let mut field = |name: &str, value: &str| {
        s.push_str(name);
        s.push('\n');
        s.push_str(value);
        s.push('\n');
    };
    field("Message", &e.message);
    field("MessageId", &e.message_id);
    match e.kind {
        MessageType::Notification => {
            if let Some(subject) = &e.subject {
                field("Subject", subject);
            }
            field("Timestamp", &e.timestamp);
        }
        _ => {
            field("SubscribeURL", e.subscribe_url.as_deref().unwrap_or(""));
            field("Timestamp", &e.timestamp);
            field("Token", e.token.as_deref().unwrap_or(""));
        }
    }
    field("TopicArn", &e.topic_arn);
    field("Type", e.kind.as_str());
    s
}

/// Which URLs the certificate and subscription confirmations may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertHosts {
    /// `https://sns.<region>.amazonaws.com/` (and `.amazonaws.com.cn`), default port.
    Aws,
    /// URLs starting with one of these prefixes, each ending in `/` (tests use
    /// `http://127.0.0.1:PORT/`).
    Prefixes(Vec<String>),
}

impl CertHosts {
    /// Whether `url` may be fetched.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        if !u.username().is_empty() || u.password().is_some() {
            return false;
        }
        match self {
            Self::Aws => {
                let host = u.host_str().unwrap_or("");
                u.scheme() == "https" && u.port().is_none() && aws_sns_host(host)
            }
            Self::Prefixes(prefixes) => prefixes
                .iter()
                .any(|p| p.ends_with('/') && u.as_str().starts_with(p.as_str())),
        }
    }
}

/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`.
fn aws_sns_host(host: &str) -> bool {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let Some(region) = rest.and_then(|r| r.strip_prefix("sns.")) else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Verifies envelopes: URL policy, topics, certificate fetch and cache, signature.
pub struct SnsVerifier {
    hosts: CertHosts,
    /// Accepted `TopicArn`s; empty accepts any (then the log says so once per topic).
    topics: Vec<String>,
    /// Fetches certificates and confirms subscriptions; `None` when no HTTP client
    /// could be built (then every fetch fails as unreachable).
    client: Option<reqwest::Client>,
    /// RSA public keys by certificate URL. SNS uses a handful of certificates.
    cache: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl std::fmt::Debug for SnsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsVerifier")
            .field("hosts", &self.hosts)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// At most this many certificates are cached; past it the cache starts over.
const CACHE_MAX: usize = 64;

impl SnsVerifier {
    /// A verifier trusting `hosts` and accepting `topics` (empty: any). Fetches go over
    /// HTTPS verified against the webpki roots ([`crate::tls::client_config`]), never
    /// following redirects (the URL policy is checked on the first URL only).
    pub fn new(hosts: CertHosts, topics: Vec<String>) -> Self {
        let client = crate::tls::client_config(None).ok().and_then(|tls| {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()
        });
        Self {
            hosts,
            topics,
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Uses this client for fetches instead. It should not follow redirects.
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The URL policy.
    pub fn hosts(&self) -> &CertHosts {
        &self.hosts
    }

    /// Checks topic, certificate URL and signature.
    pub async fn verify(&self, e: &Envelope) -> Result<(), SnsError> {
        if !self.topics.is_empty() && !self.topics.iter().any(|t| t == &e.topic_arn) {
            return Err(SnsError::UnknownTopic);
        }
        if !self.hosts.allows(&e.signing_cert_url) {
            return Err(SnsError::UntrustedUrl(e.signing_cert_url.clone()));
        }
        let key = self.public_key(&e.signing_cert_url).await?;
        let alg: &dyn signature::VerificationAlgorithm = match e.signature_version {
            1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            2 => &signature::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(SnsError::Unsigned),
        };
        UnparsedPublicKey::new(alg, key.as_slice())
            .verify(string_to_sign(e).as_bytes(), &e.signature)
            .map_err(|_| SnsError::BadSignature)
    }

    /// Confirms a (verified) subscription by fetching its `SubscribeURL`, when the
    /// policy allows that URL.
    pub async fn confirm(&self, e: &Envelope) -> Result<(), SnsError> {
        let url = e.subscribe_url.as_deref().unwrap_or("");
        if !self.hosts.allows(url) {
            return Err(SnsError::UntrustedUrl(url.to_string()));
        }
        self.fetch(url, "subscription confirmation").await?;
        Ok(())
    }

    /// GETs `url` (already checked against the policy); any failure is `Unreachable`.
    async fn fetch(&self, url: &str, what: &str) -> Result<Vec<u8>, SnsError> {
        let unreachable = |e: reqwest::Error| SnsError::Unreachable(e.without_url().to_string());
        let r = self.client()?.get(url).send().await.map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(SnsError::Unreachable(format!(
                "{what} answered {}",
                r.status()
            )));
        }
        Ok(r.bytes().await.map_err(unreachable)?.to_vec())
    }

    fn client(&self) -> Result<&reqwest::Client, SnsError> {
        self.client
            .as_ref()
            .ok_or_else(|| SnsError::Unreachable("no HTTP client".into()))
    }

    async fn public_key(&self, url: &str) -> Result<Arc<Vec<u8>>, SnsError> {
        if let Some(k) = self.cache.lock().ok().and_then(|c| c.get(url).cloned()) {
            return Ok(k);
        }
        let pem = self.fetch(url, "certificate fetch").await?;
        let key = Arc::new(rsa_key_from_pem(&pem, now_unix())?);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(url.to_string(), key.clone());
        }
        Ok(key)
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The RSA public key (PKCS#1 `RSAPublicKey` DER, what ring verifies with) of the first
/// certificate in a PEM file, if the certificate is valid at `now` (Unix seconds).
pub fn rsa_key_from_pem(pem: &[u8], now: i64) -> Result<Vec<u8>, SnsError> {
    let bad = |m: &str| SnsError::BadCertificate(m.to_string());
    let text = std::str::from_utf8(pem).map_err(|_| bad("not PEM text"))?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text.find(begin).ok_or_else(|| bad("no certificate"))? + begin.len();
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or_else(|| bad("unterminated certificate"))?;
    let b64: String = text[start..start + end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("not base64"))?;
    rsa_key_from_der(&der, now)
}

/// The same, from a DER certificate.
pub fn rsa_key_from_der(der: &[u8], now: i64) -> Result<Vec<u8>, SnsError> {
    let bad = |m: &str| SnsError::BadCertificate(m.to_string());
    let mut cert = Der(der).expect(0x30).ok_or_else(|| bad("certificate"))?;
    let mut tbs = cert.expect(0x30).ok_or_else(|| bad("tbsCertificate"))?;
    if tbs.peek() == Some(0xa0) {
        tbs.any().ok_or_else(|| bad("version"))?;
    }
    tbs.expect(0x02).ok_or_else(|| bad("serial"))?;
    tbs.expect(0x30).ok_or_else(|| bad("signature algorithm"))?;
    tbs.expect(0x30).ok_or_else(|| bad("issuer"))?;
    let mut validity = tbs.expect(0x30).ok_or_else(|| bad("validity"))?;
    let not_before = validity.time().ok_or_else(|| bad("notBefore"))?;
    let not_after = validity.time().ok_or_else(|| bad("notAfter"))?;
    if now < not_before || now > not_after {
        return Err(bad("expired or not yet valid"));
    }
    tbs.expect(0x30).ok_or_else(|| bad("subject"))?;
    let mut spki = tbs
        .expect(0x30)
        .ok_or_else(|| bad("subjectPublicKeyInfo"))?;
    let mut alg = spki.expect(0x30).ok_or_else(|| bad("key algorithm"))?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    if alg.expect(0x06).map(|o| o.0) != Some(RSA) {
        return Err(bad("not an RSA key"));
    }
    let bits = spki.expect(0x03).ok_or_else(|| bad("public key"))?;
    match bits.0.split_first() {
        Some((0, key)) => Ok(key.to_vec()),
        _ => Err(bad("public key bits")),
    }
}

/// A minimal DER reader: just enough of X.509 to reach the public key and validity.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element's (tag, contents), advancing past it.
    fn next(&mut self) -> Option<(u8, Der<'a>)> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        self.0 = &rest[len..];
        Some((tag, Der(&rest[..len])))
    }

    fn any(&mut self) -> Option<Der<'a>> {
        self.next().map(|(_, d)| d)
    }

    fn expect(&mut self, tag: u8) -> Option<Der<'a>> {
        match self.next()? {
            (t, d) if t == tag => Some(d),
            _ => None,
        }
    }

    /// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as Unix seconds.
    fn time(&mut self) -> Option<i64> {
        let (tag, d) = self.next()?;
        let s = std::str::from_utf8(d.0).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 if s.len() == 12 => {
                let y: i32 = s[..2].parse().ok()?;
                (if y >= 50 { 1900 + y } else { 2000 + y }, &s[2..])
            }
            0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
            _ => return None,
        };
        let n = |i: usize| rest.get(i..i + 2).and_then(|v| v.parse::<u8>().ok());
        let date =
            time::Date::from_calendar_date(year, time::Month::try_from(n(0)?).ok()?, n(2)?).ok()?;
        let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
        Some(
            time::PrimitiveDateTime::new(date, t)
                .assume_utc()
                .unix_timestamp(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings() {
        let mut e = Envelope {
            kind: MessageType::Notification,
            message_id: "m".into(),
            topic_arn: "arn:t".into(),
            message: "{\"a\":1}\nx".into(),
            subject: None,
            timestamp: "2024-01-01T00:00:00.000Z".into(),
            signature_version: 2,
            signature: vec![],
            signing_cert_url: String::new(),
            subscribe_url: Some(
                "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription".into(),
            ),
            token: Some("tok".into()),
        };
        assert_eq!(
            string_to_sign(&e),
            "Message\n{\"a\":1}\nx\nMessageId\nm\nTimestamp\n2024-01-01T00:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
        );
        e.subject = Some("S".into());
        assert!(string_to_sign(&e).contains("MessageId\nm\nSubject\nS\nTimestamp\n"));
        e.kind = MessageType::SubscriptionConfirmation;
        assert_eq!(
            string_to_sign(&e),
            "Message\n{\"a\":1}\nx\nMessageId\nm\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription\nTimestamp\n2024-01-01T00:00:00.000Z\nToken\ntok\nTopicArn\narn:t\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn only_sns_hosts_are_trusted() {
        let aws = CertHosts::Aws;
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=x",
        ] {
            assert!(aws.allows(ok), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://s3.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.US_EAST.amazonaws.com/x.pem",
            "not a url",
        ] {
            assert!(!aws.allows(bad), "{bad}");
        }
        let local =
            CertHosts::Prefixes(vec!["http://127.0.0.1:4000/".into(), "http://nope".into()]);
        assert!(local.allows("http://127.0.0.1:4000/cert.pem"));
        assert!(!local.allows("http://127.0.0.1:40001/cert.pem"));
        assert!(
            !local.allows("http://nope.evil/cert.pem"),
            "a prefix must end with /"
        );
    }

    #[test]
    fn envelopes_without_signature_are_unsigned() {
        let body = br#"{"Type":"Notification","MessageId":"1","TopicArn":"t","Message":"m","Timestamp":"x","SignatureVersion":"1","SigningCertURL":"https://sns.us-east-1.amazonaws.com/a.pem"}"#;
        assert_eq!(parse(body), Err(SnsError::Unsigned));
        let body = br#"{"Type":"Notification","MessageId":"1","TopicArn":"t","Message":"m","Timestamp":"x","SignatureVersion":"3","Signature":"AAAA","SigningCertURL":"u"}"#;
        assert_eq!(parse(body), Err(SnsError::Unsigned));
        assert!(matches!(parse(b"{}"), Err(SnsError::Malformed(_))));
        assert!(matches!(parse(b"nope"), Err(SnsError::Malformed(_))));
        assert_eq!(SnsError::BadSignature.code(), "bad_signature");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400), text in ".{0,200}") {
            let _ = parse(&bytes);
            let _ = parse(text.as_bytes());
            let _ = rsa_key_from_der(&bytes, 0);
            let _ = rsa_key_from_pem(format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----").as_bytes(), 0);
            let _ = CertHosts::Aws.allows(&text);
            let _ = super::super::ses::parse(&text, "k", 0, None);
        }
    }

    #[test]
    fn der_reader_refuses_junk() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x85\0\0\0\0\0",
            b"\x30\x03\x02\x01",
        ] {
            assert!(rsa_key_from_der(junk, 0).is_err());
        }
        assert!(rsa_key_from_pem(b"no pem here", 0).is_err());
    }
}
