//! Stripe's request bodies: `application/x-www-form-urlencoded` with bracket syntax
//! for nested fields (`metadata[donation]=d_1`, `expand[]=latest_charge`,
//! `created[gte]=1700000000`).
//!
//! [`Form`] builds a body in order; [`decode`] reads one back into a flat list of
//! `(key, value)` pairs, and [`Fields`] answers the questions a server asks of it (one
//! value, the sub-keys of a hash such as `metadata`, the items of an array such as
//! `expand`). Decoding accepts brackets written raw or percent-encoded (`%5B`/`%5D`,
//! as Python's `urlencode` sends them) and `+` for a space.

use std::fmt::Write as _;

/// Why a form body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape in form body at byte {0}")]
    BadEscape(usize),
    /// The decoded bytes are not UTF-8.
    #[error("form body is not UTF-8")]
    NotUtf8,
}

/// Percent-encodes one key or value. Unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// stay as they are, and so do `[` and `]` in keys, which makes bodies readable;
/// everything else is `%XX`.
fn encode_into(out: &mut String, s: &str, keep_brackets: bool) {
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_brackets && matches!(b, b'[' | b']'));
        if keep {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A form body under construction, in the order fields are added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// An empty form.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key=value`.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.pairs.push((key.into(), value.into()));
        self
    }

    /// Adds `key=value` when there is a value.
    pub fn push_opt(&mut self, key: &str, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(v) = value {
            self.push(key, v);
        }
        self
    }

    /// Adds `parent[sub]=value` (a hash entry such as `metadata[donation]`).
    pub fn push_entry(&mut self, parent: &str, sub: &str, value: impl Into<String>) -> &mut Self {
        self.push(format!("{parent}[{sub}]"), value)
    }

    /// Adds `parent[]=value` (an array item such as `expand[]`).
    pub fn push_item(&mut self, parent: &str, value: impl Into<String>) -> &mut Self {
        self.push(format!("{parent}[]"), value)
    }

    /// The pairs so far.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The encoded body (also usable as a query string).
    pub fn encode(&self) -> String {
        encode(&self.pairs)
    }
}

/// Encodes pairs as `k=v&k=v`.
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, k, true);
        out.push('=');
        encode_into(&mut out, v, false);
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one component; `offset` is its position in the body, for errors.
fn decode_component(s: &str, offset: usize) -> Result<String, FormError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h * 16 + l),
                    _ => return Err(FormError::BadEscape(offset + i)),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

/// Decodes a form body or query string into its pairs, in order. Empty segments
/// (`a=1&&b=2`) are skipped; a segment without `=` is a key with an empty value.
pub fn decode(body: &str) -> Result<Vec<(String, String)>, FormError> {
    let mut pairs = Vec::new();
    let mut offset = 0;
    for segment in body.split('&') {
        if !segment.is_empty() {
            let (k, v, v_at) = match segment.split_once('=') {
                Some((k, v)) => (k, v, offset + k.len() + 1),
                None => (segment, "", offset + segment.len()),
            };
            pairs.push((decode_component(k, offset)?, decode_component(v, v_at)?));
        }
        offset += segment.len() + 1;
    }
    Ok(pairs)
}

/// A decoded form, with the lookups a Stripe-style server needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    /// Decodes a body.
    pub fn parse(body: &str) -> Result<Self, FormError> {
        Ok(Self {
            pairs: decode(body)?,
        })
    }

    /// Wraps pairs already decoded.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The last value given for `key` (a repeated scalar: the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The entries of a hash: for `metadata[a]=1&metadata[b]=2`, `hash("metadata")` is
    /// `[("a","1"),("b","2")]`. Only one level deep (`metadata[a][b]` is skipped).
    pub fn hash(&self, parent: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.pairs {
            let Some(sub) = k
                .strip_prefix(parent)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.strip_suffix(']'))
            else {
                continue;
            };
            if sub.is_empty() || sub.contains('[') || sub.contains(']') {
                continue;
            }
            if let Some(existing) = out.iter_mut().find(|(s, _)| s == sub) {
                existing.1.clone_from(v);
            } else {
                out.push((sub.to_string(), v.clone()));
            }
        }
        out
    }

    /// The items of an array, written `expand[]=a&expand[]=b` or with indices
    /// (`expand[0]=a&expand[1]=b`, as some client libraries send), in order.
    pub fn array(&self, parent: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(parent)
                    .and_then(|rest| rest.strip_prefix('['))
                    .and_then(|rest| rest.strip_suffix(']'))
                    .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The top-level names used (`metadata[a]` counts as `metadata`), for rejecting
    /// unknown parameters.
    pub fn top_level_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            let top = k.split('[').next().unwrap_or(k);
            if !keys.contains(&top) {
                keys.push(top);
            }
        }
        keys
    }

    /// A canonical form of the parameters (sorted pairs), to compare two requests
    /// made with one idempotency key.
    pub fn canonical(&self) -> Vec<(String, String)> {
        let mut sorted = self.pairs.clone();
        sorted.sort();
        sorted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_brackets_raw_and_escapes_values() {
        let mut f = Form::new();
        f.push("amount", "5500")
            .push_entry("metadata", "note", "a b&c=d/é")
            .push_item("expand", "latest_charge");
        assert_eq!(
            f.encode(),
            "amount=5500&metadata[note]=a%20b%26c%3Dd%2F%C3%A9&expand[]=latest_charge"
        );
    }

    #[test]
    fn reads_what_python_sends() {
        // urlencode escapes brackets and writes spaces as '+'.
        let fields =
            Fields::parse("metadata%5Bdonation%5D=d_1&description=Two+words&expand%5B0%5D=x")
                .unwrap();
        assert_eq!(
            fields.hash("metadata"),
            vec![("donation".to_string(), "d_1".to_string())]
        );
        assert_eq!(fields.get("description"), Some("Two words"));
        assert_eq!(fields.array("expand"), vec!["x".to_string()]);
        assert_eq!(
            fields.top_level_keys(),
            vec!["metadata", "description", "expand"]
        );
    }

    #[test]
    fn rejects_broken_escapes() {
        assert_eq!(decode("a=%4"), Err(FormError::BadEscape(2)));
        assert_eq!(decode("a=1&b%zz=2"), Err(FormError::BadEscape(5)));
        assert_eq!(decode("a=%FF"), Err(FormError::NotUtf8));
    }

    #[test]
    fn last_scalar_wins_and_hash_entries_merge() {
        let fields = Fields::parse("a=1&a=2&m[k]=x&m[k]=y&m[j]=z&m[a][b]=no&mm[k]=no").unwrap();
        assert_eq!(fields.get("a"), Some("2"));
        assert_eq!(
            fields.hash("m"),
            vec![
                ("k".to_string(), "y".to_string()),
                ("j".to_string(), "z".to_string())
            ]
        );
    }

    proptest! {
        #[test]
        fn any_body_decodes_or_errs_without_panicking(body in "\\PC{0,60}") {
            if let Ok(f) = Fields::parse(&body) {
                let _ = (f.hash("metadata"), f.array("expand"), f.top_level_keys());
            }
        }

        #[test]
        fn round_trip(pairs in proptest::collection::vec(
            ("[a-z_]{1,8}(\\[[a-z_]{0,6}\\])?", "\\PC{0,20}"), 0..8)
        ) {
            let owned: Vec<(String, String)> = pairs;
            let body = encode(&owned);
            prop_assert_eq!(decode(&body).unwrap(), owned);
        }
    }
}
