//! Webhook signatures in Stripe's scheme, for events we receive and events we send.
//!
//! The `Stripe-Signature` header is `t=TIMESTAMP,v1=SIGNATURE[,v1=...]` where each
//! signature is the hex HMAC-SHA256, keyed by the endpoint's signing secret, of
//! `"TIMESTAMP.RAW_BODY"`. Several `v1` entries appear while a secret is being rolled;
//! any one matching is enough. Other schemes (`v0`, test-mode extras) are ignored.
//! A timestamp outside the tolerance (300 s by default, in either direction) is
//! refused, which bounds how long a captured delivery can be replayed; deduplicating
//! by event id is the receiver's other half of the job.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header name.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Stripe's default tolerance, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No `Stripe-Signature` header (or an empty one).
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header has no `t=` or no `v1=`, or the timestamp is not a number.
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` signature matches the body under this secret.
    #[error("no signature matches the payload")]
    NoMatch,
    /// The timestamp is outside the tolerance: stale, replayed or from a skewed clock.
    #[error("signature timestamp {timestamp} is more than {tolerance} s from now ({now})")]
    Stale {
        /// The header's timestamp.
        timestamp: i64,
        /// Our clock.
        now: i64,
        /// The tolerance in seconds.
        tolerance: i64,
    },
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` never fails for it, and the
    // fallback is unreachable.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// The hex `v1` signature of `payload` at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    to_hex(&mac(secret, timestamp, payload).finalize().into_bytes())
}

/// The `Stripe-Signature` header value for `payload` sent at `timestamp`:
/// `t=TIMESTAMP,v1=HEX`.
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, payload))
}

/// Checks a delivery: the header's timestamp within `tolerance_secs` of `now`, and a
/// `v1` signature of `"t.payload"` under `secret`, compared in constant time.
/// The signature is checked first, so a forged header is `NoMatch` whatever its age.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty());
    let header = header.ok_or(WebhookError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut candidates: Vec<&str> = Vec::new();
    for item in header.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else {
            return Err(WebhookError::Malformed("an entry without '='"));
        };
        match k {
            "t" => {
                let t = v
                    .parse::<i64>()
                    .map_err(|_| WebhookError::Malformed("t is not a number"))?;
                timestamp = Some(t);
            }
            "v1" => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::Malformed("no t="))?;
    if candidates.is_empty() {
        return Err(WebhookError::Malformed("no v1="));
    }
    let expected = mac(secret, timestamp, payload);
    let matched = candidates
        .iter()
        .any(|c| from_hex(c).is_some_and(|bytes| expected.clone().verify_slice(&bytes).is_ok()));
    if !matched {
        return Err(WebhookError::NoMatch);
    }
    if (now - timestamp).abs() > tolerance_secs {
        return Err(WebhookError::Stale {
            timestamp,
            now,
            tolerance: tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}"#;
    const T: i64 = 1_700_000_000;

    #[test]
    fn a_signed_payload_verifies() {
        let header = sign(SECRET, T, BODY);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(verify(Some(&header), BODY, SECRET, T + 10, 300), Ok(()));
    }

    #[test]
    fn matches_an_independent_hmac() {
        // HMAC-SHA256(key, "1700000000.{}"), computed with Python's hmac module.
        assert_eq!(
            signature("whsec_abc", T, b"{}"),
            "bad9ac117e973d721c232d46744158d75e3f1b44e36771e13d01b9e6a580bc72"
        );
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let header = sign(SECRET, T, BODY);
        let tampered = br#"{"id":"evt_1","object":"event","type":"charge.refunded"}"#;
        assert_eq!(
            verify(Some(&header), tampered, SECRET, T, 300),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn the_wrong_secret_is_refused() {
        let header = sign("whsec_other", T, BODY);
        assert_eq!(
            verify(Some(&header), BODY, SECRET, T, 300),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            verify(Some(&header), BODY, SECRET, T + 301, 300),
            Err(WebhookError::Stale {
                timestamp: T,
                now: T + 301,
                tolerance: 300
            })
        );
        assert!(matches!(
            verify(Some(&header), BODY, SECRET, T - 301, 300),
            Err(WebhookError::Stale { .. })
        ));
        assert_eq!(verify(Some(&header), BODY, SECRET, T + 300, 300), Ok(()));
    }

    #[test]
    fn a_replayed_signature_with_a_new_timestamp_is_refused() {
        // An attacker who captured a delivery cannot refresh its timestamp.
        let old = sign(SECRET, T, BODY);
        let sig = old
            .split_once(",v1=")
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        let forged = format!("t={},v1={sig}", T + 1000);
        assert_eq!(
            verify(Some(&forged), BODY, SECRET, T + 1000, 300),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn any_of_several_v1_entries_may_match() {
        let good = signature(SECRET, T, BODY);
        let header = format!("t={T},v1={},v0=zzz,v1={good}", "0".repeat(64));
        assert_eq!(verify(Some(&header), BODY, SECRET, T, 300), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn what_is_signed_verifies_and_any_changed_byte_does_not(
            secret in "[a-zA-Z0-9_]{1,40}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            t in 0i64..4_000_000_000,
            flip in proptest::num::usize::ANY,
        ) {
            let header = sign(&secret, t, &payload);
            proptest::prop_assert_eq!(verify(Some(&header), &payload, &secret, t, 300), Ok(()));
            if !payload.is_empty() {
                let mut changed = payload.clone();
                changed[flip % payload.len()] ^= 1;
                proptest::prop_assert_eq!(
                    verify(Some(&header), &changed, &secret, t, 300),
                    Err(WebhookError::NoMatch)
                );
            }
        }

        #[test]
        fn any_header_is_answered_without_panicking(header in "\\PC{0,80}") {
            let _ = verify(Some(&header), b"{}", "whsec", 0, 300);
        }
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        assert_eq!(
            verify(None, BODY, SECRET, T, 300),
            Err(WebhookError::Missing)
        );
        assert_eq!(
            verify(Some("  "), BODY, SECRET, T, 300),
            Err(WebhookError::Missing)
        );
        assert!(matches!(
            verify(Some("v1=abc"), BODY, SECRET, T, 300),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            verify(Some("t=1700000000"), BODY, SECRET, T, 300),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            verify(Some("t=soon,v1=ab"), BODY, SECRET, T, 300),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            verify(Some("garbage"), BODY, SECRET, T, 300),
            Err(WebhookError::Malformed(_))
        ));
        // Not hex, or the wrong length: simply no match.
        assert_eq!(
            verify(Some(&format!("t={T},v1=xyz")), BODY, SECRET, T, 300),
            Err(WebhookError::NoMatch)
        );
    }
}
