//! DKIM signatures (RFC 6376) with `rsa-sha256` and `ed25519-sha256` (RFC 8463),
//! relaxed/relaxed canonicalization.
//!
//! [`DkimSigner::sign`] puts a `DKIM-Signature` header in front of a complete
//! message. The tags are `v`, `a`, `c=relaxed/relaxed`, `d` (the configured domain, or
//! the domain of the message's `From`), `s`, `t` (signing time), `h`, `bh` and `b`;
//! there is no `l=` (the whole body is covered) and no `x=`.
//!
//! Signed headers: [`DEFAULT_SIGNED_HEADERS`] that the message has, each instance of
//! them; the ones a message must have only once (From, To, Subject, Date, Message-ID,
//! List-Unsubscribe, List-Unsubscribe-Post) are listed once more than they occur
//! ("oversigning"), so a header of that name added later breaks the signature. The
//! RFC 8058 one-click headers are therefore always covered.
//!
//! Keys come from PEM files: PKCS#8 (`BEGIN PRIVATE KEY`) for RSA or Ed25519, PKCS#1
//! (`BEGIN RSA PRIVATE KEY`) for RSA. RSA keys must have 2048 to 8192 bits (RFC 8301
//! deprecates smaller ones). The primitives are ring's, the same crate rustls uses:
//! constant-time RSA PKCS#1 v1.5 signing and Ed25519; canonicalization and header
//! assembly are written here. [`DkimKey::dns_record`] gives the TXT record to publish
//! at `SELECTOR._domainkey.DOMAIN`.

use crate::Secret;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The headers signed when present (RFC 6376 5.4.1's advice, plus the RFC 8058 pair).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Headers a message has at most once: signed one extra time so none can be added.
const OVERSIGNED: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// The base64 of `b=` is folded into lines of this many characters.
const B_LINE: usize = 72;

/// A signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256`.
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` value.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// Why a key could not be loaded or a message signed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("DKIM key {path:?}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The PEM did not hold a usable private key.
    #[error("DKIM key: {0}")]
    Key(String),
    /// A bad `d=` or `s=`.
    #[error("DKIM {tag}= {value:?}: {message}")]
    Tag {
        /// `d` or `s`.
        tag: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        message: &'static str,
    },
    /// The message cannot be signed (no From, no header/body separation...).
    #[error("DKIM: {0}")]
    Message(String),
}

enum KeyPair {
    Rsa(ring::rsa::KeyPair),
    Ed25519(ring::signature::Ed25519KeyPair),
}

/// A DKIM private key. `Debug` shows the algorithm only.
pub struct DkimKey {
    pair: Secret<KeyPair>,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("algorithm", &self.algorithm())
            .field("key", &self.pair)
            .finish()
    }
}

impl DkimKey {
    /// Reads a PEM private key (PKCS#8 RSA or Ed25519, PKCS#1 RSA).
    pub fn from_pem(pem: &[u8]) -> Result<Self, DkimError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| DkimError::Key(format!("no PEM private key found ({e})")))?;
        let pair = match &der {
            PrivateKeyDer::Pkcs1(k) => ring::rsa::KeyPair::from_der(k.secret_pkcs1_der())
                .map(KeyPair::Rsa)
                .map_err(|e| DkimError::Key(format!("RSA (PKCS#1) key refused: {e}")))?,
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                    Ok(p) => KeyPair::Ed25519(p),
                    Err(_) => ring::rsa::KeyPair::from_pkcs8(bytes)
                        .map(KeyPair::Rsa)
                        .map_err(|e| {
                            DkimError::Key(format!(
                                "PKCS#8 key is neither Ed25519 nor a usable RSA key \
                                 (2048 to 8192 bits): {e}"
                            ))
                        })?,
                }
            }
            _ => {
                return Err(DkimError::Key(
                    "only RSA and Ed25519 keys can sign DKIM (this looks like an EC key)".into(),
                ))
            }
        };
        Ok(Self {
            pair: Secret::new(pair),
        })
    }

    /// Reads a PEM key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, DkimError> {
        let bytes = std::fs::read(path).map_err(|e| DkimError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_pem(&bytes).map_err(|e| DkimError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// An Ed25519 key from its raw 32-byte seed (the form RFC 8463 prints).
    pub fn from_ed25519_seed(seed: &[u8]) -> Result<Self, DkimError> {
        let p = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| DkimError::Key(format!("Ed25519 seed refused: {e}")))?;
        Ok(Self {
            pair: Secret::new(KeyPair::Ed25519(p)),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.pair.expose() {
            KeyPair::Rsa(_) => Algorithm::RsaSha256,
            KeyPair::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The `p=` value: base64 of the SubjectPublicKeyInfo for RSA, of the raw 32-byte
    /// key for Ed25519 (RFC 8463 4).
    pub fn public_key_base64(&self) -> String {
        use ring::signature::KeyPair as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        match self.pair.expose() {
            KeyPair::Rsa(k) => b64.encode(rsa_spki(k.public().as_ref())),
            KeyPair::Ed25519(k) => b64.encode(k.public_key().as_ref()),
        }
    }

    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_record(&self) -> String {
        let k = match self.algorithm() {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key_base64())
    }

    fn sign_data(&self, data: &[u8]) -> Result<Vec<u8>, DkimError> {
        match self.pair.expose() {
            KeyPair::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|_| DkimError::Message("RSA signing failed".into()))?;
                Ok(sig)
            }
            // RFC 8463 3: Ed25519 (PureEdDSA) over the SHA-256 hash of the data.
            KeyPair::Ed25519(k) => Ok(k.sign(&Sha256::digest(data)).as_ref().to_vec()),
        }
    }
}

/// DER length octets.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

/// Wraps a PKCS#1 `RSAPublicKey` in a SubjectPublicKeyInfo (rsaEncryption, NULL).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    der_len(rsa_public_key.len() + 1, &mut bit_string);
    bit_string.push(0);
    bit_string.extend_from_slice(rsa_public_key);
    let mut out = vec![0x30];
    der_len(ALG.len() + bit_string.len(), &mut out);
    out.extend_from_slice(ALG);
    out.extend_from_slice(&bit_string);
    out
}

/// Checks a `d=` or `s=` value: dot-separated labels of ASCII letters, digits and
/// hyphens (an internationalized domain must be given in its `xn--` form).
fn check_name(tag: &'static str, value: &str) -> Result<(), DkimError> {
    let bad = |message| DkimError::Tag {
        tag,
        value: value.to_string(),
        message,
    };
    if value.is_empty() || value.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    for label in value.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("every dot-separated label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "only ASCII letters, digits, '-' and '.' (use the xn-- form)",
            ));
        }
    }
    Ok(())
}

/// One header field as it appears: the name and the raw bytes of the whole field
/// (name, colon, value and folds, without the final line end).
struct Field<'a> {
    name: &'a [u8],
    raw: &'a [u8],
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits a message into its header fields and its body. Lines may end in CRLF or LF.
fn split_message(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    fn push<'m>(message: &'m [u8], fields: &mut Vec<Field<'m>>, (s, e): (usize, usize)) {
        let raw = &message[s..e];
        if let Some(colon) = raw.iter().position(|b| *b == b':') {
            fields.push(Field {
                name: trim_wsp(&raw[..colon]),
                raw,
            });
        }
    }
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    let mut current: Option<(usize, usize)> = None; // start, end of the field so far
    while pos < message.len() {
        let nl = message[pos..].iter().position(|b| *b == b'\n');
        let (line_end, next) = match nl {
            Some(i) => (pos + i, pos + i + 1),
            None => (message.len(), message.len()),
        };
        let content_end = if line_end > pos && message[line_end - 1] == b'\r' {
            line_end - 1
        } else {
            line_end
        };
        if content_end == pos {
            // The empty line: the body follows.
            if let Some(f) = current.take() {
                push(message, &mut fields, f);
            }
            return (fields, &message[next..]);
        }
        if is_wsp(message[pos]) {
            if let Some((_, e)) = current.as_mut() {
                *e = content_end;
            }
        } else {
            if let Some(f) = current.take() {
                push(message, &mut fields, f);
            }
            current = Some((pos, content_end));
        }
        pos = next;
    }
    if let Some(f) = current.take() {
        push(message, &mut fields, f);
    }
    (fields, &[])
}

fn trim_wsp(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_wsp(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_wsp(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Relaxed header canonicalization (RFC 6376 3.4.2) of one whole field
/// (`Name : value` with its folds), without a line end: the name lowercased, the
/// value unfolded, runs of whitespace made one space, whitespace around the colon and
/// at the end removed.
pub fn relaxed_header(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
    let mut out: Vec<u8> = trim_wsp(&field[..colon]).to_ascii_lowercase();
    out.push(b':');
    let value = field.get(colon + 1..).unwrap_or(&[]);
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = true,
            _ => {
                if pending_space && started {
                    out.push(b' ');
                }
                pending_space = false;
                started = true;
                out.push(b);
            }
        }
    }
    out
}

/// Relaxed body canonicalization (RFC 6376 3.4.4): whitespace at line ends removed,
/// runs of whitespace made one space, empty lines at the end removed, CRLF line ends;
/// an empty body stays empty.
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut empty_lines = 0usize;
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canon = Vec::with_capacity(line.len());
        let mut pending_space = false;
        for &b in line {
            if is_wsp(b) {
                pending_space = true;
            } else {
                if pending_space {
                    canon.push(b' ');
                }
                pending_space = false;
                canon.push(b);
            }
        }
        if canon.is_empty() {
            empty_lines += 1;
        } else {
            for _ in 0..empty_lines {
                out.extend_from_slice(b"\r\n");
            }
            empty_lines = 0;
            out.extend_from_slice(&canon);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The headers named by `h=` in order (RFC 6376 5.4.2): a name used several times
/// takes its instances from the bottom up; past the last instance it takes none.
fn select<'a, 'm>(fields: &'a [Field<'m>], names: &[String]) -> Vec<&'a Field<'m>> {
    let mut used: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let key = name.to_ascii_lowercase();
        let skip = used.entry(key.clone()).or_insert(0);
        if let Some(f) = fields
            .iter()
            .rev()
            .filter(|f| f.name.eq_ignore_ascii_case(key.as_bytes()))
            .nth(*skip)
        {
            out.push(f);
        }
        *skip += 1;
    }
    out
}

/// The data the signature covers: each selected header canonicalized with CRLF, then
/// the `DKIM-Signature` field with an empty `b=`, canonicalized, without CRLF.
fn signing_input(fields: &[Field<'_>], names: &[String], unsigned_dkim_field: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(1024);
    for f in select(fields, names) {
        data.extend_from_slice(&relaxed_header(f.raw));
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(&relaxed_header(unsigned_dkim_field));
    data
}

/// The address domain in a `From` value (`Name <a@b>` or `a@b`), lowercased.
fn from_domain(from_field: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(from_field);
    let value = text.split_once(':')?.1;
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(l), Some(r)) if l < r => &value[l + 1..r],
        _ => value,
    };
    let domain = addr.rsplit_once('@')?.1.trim();
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// Signs messages for one selector.
pub struct DkimSigner {
    key: DkimKey,
    selector: String,
    domain: Option<String>,
    headers: Vec<String>,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("algorithm", &self.key.algorithm())
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// A signer for `selector`; `domain` is `d=` (`None`: the domain of each
    /// message's From, which is what DMARC alignment wants).
    pub fn new(key: DkimKey, selector: &str, domain: Option<&str>) -> Result<Self, DkimError> {
        check_name("s", selector)?;
        if let Some(d) = domain {
            check_name("d", d)?;
        }
        Ok(Self {
            key,
            selector: selector.to_ascii_lowercase(),
            domain: domain.map(str::to_ascii_lowercase),
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The `DKIM-Signature` field for `message` (ending in CRLF), signed at
    /// `unix_time`.
    pub fn signature_header(&self, message: &[u8], unix_time: i64) -> Result<String, DkimError> {
        let (fields, body) = split_message(message);
        let from = fields
            .iter()
            .rev()
            .find(|f| f.name.eq_ignore_ascii_case(b"from"))
            .ok_or_else(|| DkimError::Message("the message has no From header".into()))?;
        let domain = match &self.domain {
            Some(d) => d.clone(),
            None => {
                let d = from_domain(from.raw)
                    .ok_or_else(|| DkimError::Message("no domain in the From header".into()))?;
                check_name("d", &d)?;
                d
            }
        };
        let mut names: Vec<String> = Vec::new();
        for h in &self.headers {
            let lower = h.to_ascii_lowercase();
            let count = fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(lower.as_bytes()))
                .count();
            let times = count + usize::from(OVERSIGNED.contains(&lower.as_str()));
            names.extend(std::iter::repeat_n(lower, times));
        }
        let b64 = &base64::engine::general_purpose::STANDARD;
        let bh = b64.encode(Sha256::digest(relaxed_body(body)));
        let mut h_tag = String::new();
        let mut line = 0;
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                h_tag.push(':');
                if line + n.len() > 60 {
                    h_tag.push_str("\r\n\t");
                    line = 0;
                }
            }
            h_tag.push_str(n);
            line += n.len() + 1;
        }
        let unsigned = format!(
            "DKIM-Signature: v=1; a={}; c=relaxed/relaxed;\r\n\td={domain}; s={}; t={unix_time};\r\n\th={h_tag};\r\n\tbh={bh};\r\n\tb=",
            self.key.algorithm().tag(),
            self.selector,
        );
        let data = signing_input(&fields, &names, unsigned.as_bytes());
        let sig = b64.encode(self.key.sign_data(&data)?);
        let mut out = unsigned;
        for (i, chunk) in sig.as_bytes().chunks(B_LINE).enumerate() {
            if i > 0 {
                out.push_str("\r\n\t");
            }
            out.push_str(&String::from_utf8_lossy(chunk));
        }
        out.push_str("\r\n");
        Ok(out)
    }

    /// `message` with its `DKIM-Signature` in front.
    pub fn sign(&self, message: &[u8], unix_time: i64) -> Result<Vec<u8>, DkimError> {
        let header = self.signature_header(message, unix_time)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> String {
        String::from_utf8(v.to_vec()).unwrap()
    }

    /// RFC 6376 3.4.5, relaxed: the header and body examples.
    #[test]
    fn rfc6376_relaxed_examples() {
        let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let (fields, body) = split_message(message);
        assert_eq!(fields.len(), 2);
        assert_eq!(s(&relaxed_header(fields[0].raw)), "a:X");
        assert_eq!(s(&relaxed_header(fields[1].raw)), "b:Y Z");
        assert_eq!(s(&relaxed_body(body)), " C\r\nD E\r\n");
    }

    #[test]
    fn body_edges() {
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"no break"), b"no break\r\n");
        assert_eq!(relaxed_body(b"a\n\nb  \n"), b"a\r\n\r\nb\r\n");
        // The empty-body hash is SHA-256 of nothing (RFC 6376 3.4.4 with its erratum).
        let b64 = &base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.encode(Sha256::digest(relaxed_body(b"\r\n"))),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn selection_goes_bottom_up_and_past_the_last_takes_none() {
        let (fields, body) = split_message(b"A: 1\nB: 2\n  more\nA: 3\n\nbody");
        assert_eq!(body, b"body");
        let names: Vec<String> = ["a", "a", "a", "b"].iter().map(|n| n.to_string()).collect();
        let got: Vec<String> = select(&fields, &names).iter().map(|f| s(f.raw)).collect();
        assert_eq!(got, vec!["A: 3", "A: 1", "B: 2\n  more"]);
    }

    // RFC 8463 Appendix A: its message, keys and signatures.
    const RFC8463_MESSAGE: &str = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n d=football.example.com; i=@football.example.com;\r\n q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n subject : date : message-id : from : subject : date;\r\n bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n d=football.example.com; i=@football.example.com;\r\n q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n date : message-id : from : subject : date;\r\n bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\nFrom: Joe SixPack <joe@football.example.com>\r\nTo: Suzie Q <suzie@shopping.example.net>\r\nSubject: Is dinner ready?\r\nDate: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\nMessage-ID: <20030712040037.46341.5F8J@football.example.com>\r\n\r\nHi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";
    const RFC8463_RSA_SPKI: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB";
    const RFC8463_ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    const RFC8463_ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    /// The signing input of the RFC's `index`-th signature, and its published `b=`.
    fn rfc8463_input(index: usize) -> (Vec<u8>, Vec<u8>) {
        let (fields, body) = split_message(RFC8463_MESSAGE.as_bytes());
        let b64 = &base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.encode(Sha256::digest(relaxed_body(body))),
            "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=",
            "RFC 8463's body hash"
        );
        let sig_field = fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(b"dkim-signature"))
            .nth(index)
            .unwrap();
        let raw = s(sig_field.raw);
        let b_at = raw.find(" b=").unwrap() + 3;
        let published: String = raw[b_at..].chars().filter(|c| !c.is_whitespace()).collect();
        let unsigned = raw[..b_at].to_string();
        let names: Vec<String> = "from:to:subject:date:message-id:from:subject:date"
            .split(':')
            .map(str::to_string)
            .collect();
        (
            signing_input(&fields, &names, unsigned.as_bytes()),
            b64.decode(published).unwrap(),
        )
    }

    /// The RSA signature printed in RFC 8463 verifies over our signing input: our
    /// header selection and relaxed canonicalization produce the RFC's bytes.
    #[test]
    fn rfc8463_rsa_signature_verifies_over_our_canonical_form() {
        let (data, sig) = rfc8463_input(1);
        let spki = base64::engine::general_purpose::STANDARD
            .decode(RFC8463_RSA_SPKI)
            .unwrap();
        // SubjectPublicKeyInfo of a 1024-bit key: 22 bytes of header, then RSAPublicKey.
        let rsa_public_key = &spki[22..];
        assert_eq!(
            rsa_spki(rsa_public_key),
            spki,
            "our SPKI wrapping is DER-exact"
        );
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            rsa_public_key,
        );
        key.verify(&data, &sig).unwrap();
        let mut tampered = data.clone();
        tampered[5] ^= 1;
        assert!(key.verify(&tampered, &sig).is_err());
    }

    /// Ed25519 with the RFC's key: our signature over our canonical form of the RFC's
    /// message is the RFC's `b=`, byte for byte, and `p=` is the RFC's public key.
    #[test]
    fn rfc8463_ed25519_key_signs_and_verifies() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let key = DkimKey::from_ed25519_seed(&b64.decode(RFC8463_ED25519_SEED).unwrap()).unwrap();
        assert_eq!(key.public_key_base64(), RFC8463_ED25519_PUBLIC);
        assert_eq!(
            key.dns_record(),
            format!("v=DKIM1; k=ed25519; p={RFC8463_ED25519_PUBLIC}")
        );
        let (data, published) = rfc8463_input(0);
        let sig = key.sign_data(&data).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            b64.decode(RFC8463_ED25519_PUBLIC).unwrap(),
        );
        // RFC 8463: the Ed25519 input is the SHA-256 of the data, not the data.
        public.verify(&Sha256::digest(&data), &sig).unwrap();
        assert!(public.verify(&data, &sig).is_err());
        // Ed25519 is deterministic: the RFC's own signature, byte for byte.
        assert_eq!(sig, published);
    }

    #[test]
    fn signs_with_oversigning_and_folding() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let key = DkimKey::from_ed25519_seed(&b64.decode(RFC8463_ED25519_SEED).unwrap()).unwrap();
        assert!(!format!("{key:?}").contains(RFC8463_ED25519_SEED));
        assert!(format!("{key:?}").contains("redacted"));
        let signer = DkimSigner::new(key, "brisbane", None).unwrap();
        let msg = b"From: Joe <joe@Football.Example.com>\r\nTo: <s@example.net>\r\nSubject: hi\r\nX-Other: 1\r\n\r\nHi.\r\n";
        let header = signer.signature_header(msg, 1_528_637_909).unwrap();
        assert!(header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n\td=football.example.com; s=brisbane; t=1528637909;\r\n"), "{header}");
        assert!(
            header.contains("h=from:from:to:to:subject:subject:date:message-id:"),
            "{header}"
        );
        assert!(!header.contains("x-other"));
        assert!(!header.contains("mime-version"), "absent, not oversigned");
        assert!(header.ends_with("\r\n") && header.split("\r\n").all(|l| l.len() <= 78));
        // Deterministic for Ed25519: the same input gives the same signature.
        assert_eq!(header, signer.signature_header(msg, 1_528_637_909).unwrap());
        let signed = signer.sign(msg, 1).unwrap();
        assert!(signed.ends_with(msg));
    }

    #[test]
    fn refusals() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let seed = b64.decode(RFC8463_ED25519_SEED).unwrap();
        let key = || DkimKey::from_ed25519_seed(&seed).unwrap();
        assert!(DkimSigner::new(key(), "s;x=1", None).is_err());
        assert!(DkimSigner::new(key(), "sel", Some("exa mple.com")).is_err());
        assert!(DkimSigner::new(key(), "sel", Some("bücher.example")).is_err());
        let signer = DkimSigner::new(key(), "sel", None).unwrap();
        assert!(matches!(
            signer.sign(b"Subject: x\r\n\r\nbody", 0),
            Err(DkimError::Message(_))
        ));
        assert!(DkimKey::from_pem(b"not a key").is_err());
        let ec = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(DkimKey::from_pem(ec).is_err());
    }
}
