//! AWS Signature Version 4, our own small implementation (HMAC-SHA256 from `hmac` and
//! `sha2`), checked against vectors of AWS's published SigV4 test suite
//! (`aws-sig-v4-test-suite`, credentials `AKIDEXAMPLE`, 2015-08-30, region `us-east-1`,
//! service `service`).
//!
//! The steps are the documented ones: a canonical request (method, URI-encoded path,
//! sorted and encoded query, lower-cased sorted headers with trimmed values and
//! collapsed spaces, the list of signed headers, the hex SHA-256 of the body), a string
//! to sign (`AWS4-HMAC-SHA256`, the `x-amz-date`, the credential scope, the hex SHA-256
//! of the canonical request), a signing key derived by chained HMACs of the date,
//! region, service and `aws4_request`, and the hex HMAC of the string to sign.
//!
//! The signer signs exactly the headers it is given, so a caller passes `host` and
//! `x-amz-date` (whose value must be [`AmzDate::as_str`]). The same functions verify a
//! request on the server side (the fake SES does), given [`parse_authorization`].
//! Path normalization (`.`/`..` segments) is not done: our paths are fixed.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The only algorithm we speak.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// An access key id and its secret key. `Debug` hides the secret.
#[derive(Clone, Debug)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Secret<String>,
}

impl Credentials {
    /// Credentials from an access key id and a secret access key.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: Secret<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key,
        }
    }

    /// The (public) access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

/// A request time in the `x-amz-date` form `YYYYMMDDTHHMMSSZ` (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmzDate(String);

/// A malformed `x-amz-date` or `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The date is not `YYYYMMDDTHHMMSSZ`.
    #[error("x-amz-date {0:?} is not of the form YYYYMMDDTHHMMSSZ")]
    BadDate(String),
    /// The Authorization header does not have the SigV4 shape.
    #[error("authorization header: {0}")]
    BadAuthorization(&'static str),
}

impl AmzDate {
    /// Formats a time (converted to UTC).
    pub fn from_time(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self(format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ))
    }

    /// The time now.
    pub fn now() -> Self {
        Self::from_time(OffsetDateTime::now_utc())
    }

    /// Parses a header value.
    pub fn parse(raw: &str) -> Result<Self, SigV4Error> {
        let b = raw.as_bytes();
        let ok = b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[9..15].iter().all(u8::is_ascii_digit);
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(SigV4Error::BadDate(raw.to_string()))
        }
    }

    /// The full value, `20150830T123600Z`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The date part, `20150830`.
    pub fn date(&self) -> &str {
        &self.0[..8]
    }

    /// The time as seconds since the epoch (for a clock-skew check).
    pub fn unix_seconds(&self) -> Option<i64> {
        let n = |r: std::ops::Range<usize>| self.0.get(r).and_then(|s| s.parse::<u32>().ok());
        let month = time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?;
        let date = time::Date::from_calendar_date(
            i32::try_from(n(0..4)?).ok()?,
            month,
            u8::try_from(n(6..8)?).ok()?,
        )
        .ok()?;
        let t = time::Time::from_hms(
            u8::try_from(n(9..11)?).ok()?,
            u8::try_from(n(11..13)?).ok()?,
            u8::try_from(n(13..15)?).ok()?,
        )
        .ok()?;
        Some(
            time::PrimitiveDateTime::new(date, t)
                .assume_utc()
                .unix_timestamp(),
        )
    }
}

/// What is signed: the parts of an HTTP request.
#[derive(Clone, Debug)]
pub struct SigningInput<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, not yet percent-encoded (`/v2/email/outbound-emails`).
    pub path: &'a str,
    /// Query parameters, not yet encoded, in any order.
    pub query: &'a [(&'a str, &'a str)],
    /// The headers to sign, with `host` and `x-amz-date`, names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub payload: &'a [u8],
}

/// Where a signature is valid: a region and a service (`ses`).
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// `us-east-1`, ...
    pub region: &'a str,
    /// `ses`, ...
    pub service: &'a str,
}

/// A computed signature with its intermediate steps (useful in tests and diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The canonical request.
    pub canonical_request: String,
    /// The string to sign.
    pub string_to_sign: String,
    /// `host;x-amz-date`, ...
    pub signed_headers: String,
    /// The signature, 64 lower-case hex digits.
    pub signature: String,
    /// The whole `Authorization` header value.
    pub authorization: String,
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Percent-encodes everything but the unreserved characters `A-Z a-z 0-9 - _ . ~`.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Canonical headers block and the signed-headers list.
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), canonical_value(v)))
        .collect();
    // A stable sort keeps repeated headers in the order given, as the suite requires.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut block = String::new();
    let mut names: Vec<String> = Vec::new();
    for (name, value) in sorted {
        if names.last() == Some(&name) {
            // Same header again: append its value, comma-separated, to the previous line.
            block.pop();
            block.push(',');
            block.push_str(&value);
            block.push('\n');
        } else {
            block.push_str(&format!("{name}:{value}\n"));
            names.push(name);
        }
    }
    (block, names.join(";"))
}

/// The signing key for a date, region and service.
pub fn signing_key(secret: &Secret<String>, date: &str, scope: Scope<'_>) -> Vec<u8> {
    let k_date = hmac(
        format!("AWS4{}", secret.expose()).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Signs a request made at `date` (which must equal the `x-amz-date` header given).
pub fn sign(
    input: &SigningInput<'_>,
    credentials: &Credentials,
    scope: Scope<'_>,
    date: &AmzDate,
) -> Signed {
    let (headers_block, signed_headers) = canonical_headers(input.headers);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        canonical_path(input.path),
        canonical_query(input.query),
        headers_block,
        signed_headers,
        sha256_hex(input.payload)
    );
    let credential_scope = format!(
        "{}/{}/{}/aws4_request",
        date.date(),
        scope.region,
        scope.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        date.as_str(),
        credential_scope,
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(&credentials.secret_access_key, date.date(), scope);
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    );
    Signed {
        canonical_request,
        string_to_sign,
        signed_headers,
        signature,
        authorization,
    }
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedAuthorization {
    /// The access key id from `Credential=`.
    pub access_key_id: String,
    /// The scope's date, `YYYYMMDD`.
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed header names, lower-case, in the order given.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`, checking its shape.
pub fn parse_authorization(value: &str) -> Result<ParsedAuthorization, SigV4Error> {
    let bad = SigV4Error::BadAuthorization;
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or(bad("the algorithm is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(bad("an unexpected element"));
        }
    }
    let credential = credential.ok_or(bad("no Credential"))?;
    let signed = signed.ok_or(bad("no SignedHeaders"))?;
    let signature = signature.ok_or(bad("no Signature"))?;
    let c: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = c.as_slice() else {
        return Err(bad(
            "Credential is not AKID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if *terminator != "aws4_request" || akid.is_empty() || region.is_empty() {
        return Err(bad(
            "Credential is not AKID/DATE/REGION/SERVICE/aws4_request",
        ));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the Credential date is not YYYYMMDD"));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("the Signature is not 64 lower-case hex digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(bad("SignedHeaders must be lower-case names separated by ;"));
    }
    Ok(ParsedAuthorization {
        access_key_id: (*akid).to_string(),
        date: (*date).to_string(),
        region: (*region).to_string(),
        service: (*service).to_string(),
        signed_headers,
        signature: signature.to_string(),
    })
}

/// Compares two signatures without stopping at the first difference.
pub fn signatures_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test suite's fixed inputs.
    fn suite_credentials() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            Secret::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        )
    }

    const SCOPE: Scope<'static> = Scope {
        region: "us-east-1",
        service: "service",
    };

    fn suite(
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra_headers: &[(&str, &str)],
        body: &[u8],
    ) -> Signed {
        let mut headers = vec![
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        headers.extend_from_slice(extra_headers);
        let input = SigningInput {
            method,
            path,
            query,
            headers: &headers,
            payload: body,
        };
        let date = AmzDate::parse("20150830T123600Z").unwrap();
        sign(&input, &suite_credentials(), SCOPE, &date)
    }

    #[test]
    fn get_vanilla() {
        let s = suite("GET", "/", &[], &[], b"");
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn post_vanilla_with_every_intermediate_step() {
        let s = suite("POST", "/", &[], &[], b"");
        assert_eq!(
            s.canonical_request,
            "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87"
        );
        assert_eq!(
            s.signature,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn post_vanilla_query() {
        let s = suite("POST", "/", &[("Param1", "value1")], &[], b"");
        assert_eq!(
            s.signature,
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        let s = suite(
            "GET",
            "/",
            &[("Param2", "value2"), ("Param1", "value1")],
            &[],
            b"",
        );
        assert!(s
            .canonical_request
            .starts_with("GET\n/\nParam1=value1&Param2=value2\n"));
        assert_eq!(
            s.signature,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn get_utf8_path_is_percent_encoded() {
        let s = suite("GET", "/\u{1234}", &[], &[], b"");
        assert!(s.canonical_request.starts_with("GET\n/%E1%88%B4\n"));
        assert_eq!(
            s.signature,
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
        );
    }

    #[test]
    fn post_header_key_sort() {
        let s = suite("POST", "/", &[], &[("My-Header1", "value1")], b"");
        assert_eq!(s.signed_headers, "host;my-header1;x-amz-date");
        assert_eq!(
            s.signature,
            "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"
        );
    }

    #[test]
    fn get_header_value_trim() {
        let s = suite(
            "GET",
            "/",
            &[],
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            b"",
        );
        assert!(s.canonical_request.contains("my-header2:\"a b c\"\n"));
        assert_eq!(
            s.signature,
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
        );
    }

    #[test]
    fn post_x_www_form_urlencoded_signs_the_body() {
        let s = suite(
            "POST",
            "/",
            &[],
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"Param1=value1",
        );
        assert!(s
            .canonical_request
            .ends_with("9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"));
        assert_eq!(
            s.signature,
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn authorization_round_trips_through_the_parser() {
        let s = suite("POST", "/", &[], &[], b"");
        let p = parse_authorization(&s.authorization).unwrap();
        assert_eq!(p.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            (p.date.as_str(), p.region.as_str(), p.service.as_str()),
            ("20150830", "us-east-1", "service")
        );
        assert_eq!(p.signed_headers, vec!["host", "x-amz-date"]);
        assert!(signatures_match(&p.signature, &s.signature));
        assert!(!signatures_match(&p.signature, &"0".repeat(64)));
    }

    #[test]
    fn malformed_authorization_headers_are_refused() {
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/2015/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, Signature=xyz",
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=Host, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn amz_date_formats_and_parses() {
        let t = OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap();
        assert_eq!(AmzDate::from_time(t).as_str(), "20150830T123600Z");
        let d = AmzDate::parse("20150830T123600Z").unwrap();
        assert_eq!(d.date(), "20150830");
        assert_eq!(d.unix_seconds(), Some(1_440_938_160));
        assert!(AmzDate::parse("2015-08-30T12:36:00Z").is_err());
    }
}
