//! The inbound SMS webhook, in the form-post format of the common SMS providers
//! (Twilio's: `From`, `Body`, `MessageSid`), feeding the same idempotent ingest as the
//! app (channel `sms`).
//!
//! `POST /webhooks/sms/twilio`. It is not in the API table: its shape is the
//! provider's, not ours. The request must carry `X-Twilio-Signature`, the base64
//! HMAC-SHA1, keyed by the account's auth token, of the full URL the provider called
//! followed by every POST parameter's name and value sorted by name. Without a
//! configured token, or with a wrong signature, the answer is 403 and nothing
//! changes. The URL is rebuilt from `X-Forwarded-Proto` (else `https` when cookies
//! are `Secure`, else `http`), the `Host` header and the request target, so a proxy
//! in front must pass `Host` through unchanged.
//!
//! The sender's phone must be a watcher's (see `Turnout::set_watcher_phone`); the
//! message's codes are reported for that watcher's polling place only. Each code's
//! report id is `sms-<MessageSid>-<n>`, so a provider retrying a message never counts
//! twice. The reply is TwiML naming accepted and refused codes. Phones, codes and
//! message bodies are never logged.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use narwhal_domain::PhoneE164;
use narwhal_turnout::fallback::{sms_codes, sms_item};
use narwhal_turnout::{Channel, Reporter, Turnout};

/// The SMS provider account's auth token. `Debug` is redacted.
#[derive(Clone)]
pub struct SmsAuthToken(String);

impl SmsAuthToken {
    /// Wraps a token; `None` when it is empty.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let t = token.into();
        (!t.trim().is_empty()).then(|| Self(t.trim().to_string()))
    }

    /// From `NARWHAL_TWILIO_AUTH_TOKEN`, when set.
    pub fn from_env() -> Option<Self> {
        std::env::var("NARWHAL_TWILIO_AUTH_TOKEN")
            .ok()
            .and_then(Self::new)
    }
}

impl std::fmt::Debug for SmsAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmsAuthToken(***)")
    }
}

/// The webhook's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/sms/twilio", post(twilio))
}

/// Twilio's request signature: base64(HMAC-SHA1(token, url + sorted name+value)).
pub fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    mac(token, url, params)
        .map(|m| base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// The HMAC over the URL and the sorted parameters (`None` only for a key HMAC
/// refuses, which HMAC-SHA1 never does).
fn mac(token: &str, url: &str, params: &[(String, String)]) -> Option<Hmac<sha1::Sha1>> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).ok()?;
    m.update(url.as_bytes());
    for (k, v) in sorted {
        m.update(k.as_bytes());
        m.update(v.as_bytes());
    }
    Some(m)
}

/// Whether `signature` is right, compared in constant time.
fn verify(token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    mac(token, url, params).is_some_and(|m| m.verify_slice(&sig).is_ok())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A TwiML answer that texts `msg` back.
fn twiml(msg: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
        xml_escape(msg)
    );
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn forbidden(why: &'static str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "bad_signature", why).into_response()
}

async fn twilio(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Form(params): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let Some(token) = s.config.sms_auth_token.as_ref() else {
        return Ok(forbidden("SMS reports are not configured on this server"));
    };
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if s.config.cookie_secure {
            "https"
        } else {
            "http"
        });
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{scheme}://{host}{target}");
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify(&token.0, &url, &params, sig) {
        tracing::warn!("SMS webhook refused: bad signature");
        return Ok(forbidden("the request signature is not valid"));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(from), Some(body), Some(sid)) = (get("From"), get("Body"), get("MessageSid")) else {
        return Err(ApiError::invalid("From, Body and MessageSid are required"));
    };
    let t = Turnout::new(s.store.clone());
    let watcher = match PhoneE164::parse(from) {
        Ok(p) => t.watcher_by_phone(&p).await?,
        Err(_) => None,
    };
    let Some(w) = watcher else {
        tracing::info!("SMS report refused: the phone is not a watcher's");
        return Ok(twiml(
            "This phone is not registered to a poll watcher. Use your watcher link, or ask your coordinator to add this number.",
        ));
    };
    let Some(codes) = sms_codes(body).filter(|c| !c.is_empty()) else {
        return Ok(twiml(
            "Send VOTED and the voter codes, for example: VOTED 1234 5678",
        ));
    };
    if codes.len() > narwhal_turnout::MAX_BATCH {
        return Ok(twiml("Too many codes in one message: send fewer."));
    }
    let items: Vec<_> = codes
        .iter()
        .enumerate()
        .map(|(n, c)| sms_item(sid, n, c))
        .collect();
    let res = s
        .turnout
        .report(&Reporter::Watcher(w), Channel::Sms, &items)
        .await?;
    let mut msg = format!(
        "Recorded {} of {}.",
        res.accepted + res.duplicates,
        codes.len()
    );
    for (code, r) in codes.iter().zip(&res.results) {
        if r.outcome == "rejected" {
            let why = match r.reason {
                Some("unknown_voter") => "unknown code",
                Some("invalid_voter_code") => "not a valid code",
                Some("other_polling_place") => "votes at another polling place",
                _ => "refused",
            };
            msg.push_str(&format!(" Not recorded: {code} ({why})."));
        }
    }
    Ok(twiml(&msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_twilios_documented_example() {
        // From Twilio's "Webhooks security" documentation.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = twilio_signature("12345", url, &params);
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", url, &params, &sig));
        assert!(!verify("12346", url, &params, &sig));
        assert!(!verify("12345", url, &params[1..], &sig));
        assert!(!verify("12345", url, &params, "not base64!"));
        assert_eq!(
            format!("{:?}", SmsAuthToken::new("x")),
            "Some(SmsAuthToken(***))"
        );
    }
}
