//! Unsubscribe tokens and the RFC 8058 one-click headers.
//!
//! A token names a blast and a person and carries an HMAC-SHA256 tag (the first 16
//! bytes), so a link cannot be forged or pointed at someone else. It is URL-safe
//! base64 of `blast (8 bytes) || person (8 bytes) || tag (16 bytes)`: 43 characters.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Signs and checks tokens with the campaign's secret.
#[derive(Clone)]
pub struct UnsubscribeSigner {
    /// The HMAC state keyed with the secret; cloned for every token.
    keyed: HmacSha256,
}

impl std::fmt::Debug for UnsubscribeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsubscribeSigner([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the unsubscribe link is malformed")]
    Malformed,
    #[error("the unsubscribe link is not one we issued")]
    BadSignature,
    #[error("the unsubscribe secret is not usable as a key")]
    BadKey,
}

impl UnsubscribeSigner {
    /// `secret` should be at least 32 random bytes, kept in configuration.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        let keyed = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::BadKey)?;
        Ok(Self { keyed })
    }

    fn mac(&self, blast: i64, person: i64) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(b"narwhal-unsubscribe-v1");
        m.update(&blast.to_be_bytes());
        m.update(&person.to_be_bytes());
        m
    }

    pub fn token(&self, blast: i64, person: i64) -> String {
        let tag = self.mac(blast, person).finalize().into_bytes();
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(&blast.to_be_bytes());
        raw.extend_from_slice(&person.to_be_bytes());
        raw.extend_from_slice(&tag[..16]);
        B64.encode(raw)
    }

    /// The (blast, person) a token names, if we issued it. The tag is compared in
    /// constant time.
    pub fn verify(&self, token: &str) -> Result<(i64, i64), TokenError> {
        let raw = B64
            .decode(token.trim())
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != 32 {
            return Err(TokenError::Malformed);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[..8]);
        let blast = i64::from_be_bytes(b);
        b.copy_from_slice(&raw[8..16]);
        let person = i64::from_be_bytes(b);
        self.mac(blast, person)
            .verify_truncated_left(&raw[16..])
            .map_err(|_| TokenError::BadSignature)?;
        Ok((blast, person))
    }
}

/// `List-Unsubscribe` (an https URL, and a mailto when given) and
/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058). Sign them with DKIM.
pub fn list_unsubscribe_headers(
    one_click_url: &str,
    mailto: Option<&str>,
) -> Vec<(String, String)> {
    let mut value = format!("<{one_click_url}>");
    if let Some(m) = mailto {
        value.push_str(&format!(", <mailto:{m}>"));
    }
    vec![
        ("List-Unsubscribe".to_string(), value),
        (
            "List-Unsubscribe-Post".to_string(),
            "List-Unsubscribe=One-Click".to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let s = UnsubscribeSigner::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = s.token(42, 1_000_001);
        assert_eq!(t.len(), 43);
        assert_eq!(s.verify(&t), Ok((42, 1_000_001)));
        // Another person's id with our tag.
        let mut raw = B64.decode(&t).unwrap();
        raw[15] ^= 1;
        assert_eq!(s.verify(&B64.encode(&raw)), Err(TokenError::BadSignature));
        // Another campaign's key.
        assert_eq!(
            UnsubscribeSigner::new(b"other").unwrap().verify(&t),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("not a token"), Err(TokenError::Malformed));
        assert_eq!(s.verify(&t[..40]), Err(TokenError::Malformed));
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn one_click_headers() {
        let h =
            list_unsubscribe_headers("https://act.example.org/u/T", Some("u+T@act.example.org"));
        assert_eq!(
            h[0].1,
            "<https://act.example.org/u/T>, <mailto:u+T@act.example.org>"
        );
        assert_eq!(
            h[1],
            (
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into()
            )
        );
    }
}
