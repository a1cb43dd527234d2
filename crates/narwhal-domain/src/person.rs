//! What a source says about a person, before it is resolved against the hub.

use crate::{ConsentState, Email, ParseError, PhoneE164, PostalAddress, Tag, VoterId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A person's name parts, whitespace-normalized. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PersonName {
    pub first: Option<String>,
    pub middle: Option<String>,
    pub last: Option<String>,
    pub suffix: Option<String>,
}

impl PersonName {
    pub fn parse(first: &str, middle: &str, last: &str, suffix: &str) -> Self {
        use crate::text::non_empty;
        Self {
            first: non_empty(first),
            middle: non_empty(middle),
            last: non_empty(last),
            suffix: non_empty(suffix),
        }
    }

    /// "First Last", or whatever parts exist.
    pub fn display(&self) -> String {
        [&self.first, &self.middle, &self.last, &self.suffix]
            .iter()
            .filter_map(|p| p.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Lower-case "first last" used for prefix search.
    pub fn search_key(&self) -> String {
        let mut s = String::new();
        for p in [&self.first, &self.last].into_iter().flatten() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&p.to_lowercase());
        }
        s
    }
}

impl std::fmt::Debug for PersonName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonName([redacted])")
    }
}

/// The key of a custom field: lower-case ASCII letters, digits and `_`, 1 to 64 long,
/// starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct CustomFieldKey(String);

/// Written as the plain string it is, without the copy that `#[serde(into)]` makes of
/// every key (a voter-file row has dozens, written for its stored text and again for
/// its fingerprint).
impl Serialize for CustomFieldKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl CustomFieldKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(ParseError::new(
                "custom field",
                "a field key is 1 to 64 of a-z, 0-9 and _, starting with a letter",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomFieldKey {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomFieldKey> for String {
    fn from(k: CustomFieldKey) -> Self {
        k.0
    }
}

/// Everything one source asserts about one person. Fields a source does not know stay
/// empty and never erase what the hub already has.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonDraft {
    #[serde(default)]
    pub voter_id: Option<VoterId>,
    #[serde(default, flatten)]
    pub name: PersonNameFields,
    #[serde(default)]
    pub emails: Vec<Email>,
    #[serde(default)]
    pub phones: Vec<PhoneE164>,
    #[serde(default)]
    pub address: Option<PostalAddress>,
    #[serde(default)]
    pub custom: BTreeMap<CustomFieldKey, String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub email_consent: ConsentState,
    #[serde(default)]
    pub sms_consent: ConsentState,
}

/// The name as it appears flattened in JSON (`first_name`, `last_name`, ...).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PersonNameFields {
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
}

impl std::fmt::Debug for PersonNameFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonNameFields([redacted])")
    }
}

impl PersonNameFields {
    pub fn to_name(&self) -> PersonName {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        PersonName::parse(
            &s(&self.first_name),
            &s(&self.middle_name),
            &s(&self.last_name),
            &s(&self.suffix),
        )
    }
    pub fn from_name(n: &PersonName) -> Self {
        Self {
            first_name: n.first.clone(),
            middle_name: n.middle.clone(),
            last_name: n.last.clone(),
            suffix: n.suffix.clone(),
        }
    }
}

impl PersonDraft {
    /// Normalizes the free-text parts (name whitespace) and deduplicates emails, phones
    /// and tags, keeping first-seen order. Call after building a draft from raw input.
    pub fn normalize(mut self) -> Self {
        self.name = PersonNameFields::from_name(&self.name.to_name());
        dedup_keep_order(&mut self.emails);
        dedup_keep_order(&mut self.phones);
        dedup_keep_order(&mut self.tags);
        if self.address.as_ref().is_some_and(|a| a.is_empty()) {
            self.address = None;
        }
        self
    }

    /// True when the draft carries a strong key identity resolution can match on.
    pub fn has_strong_key(&self) -> bool {
        self.voter_id.is_some() || !self.emails.is_empty() || !self.phones.is_empty()
    }

    /// A stable 64-bit fingerprint of the draft (FNV-1a over its canonical JSON), used
    /// to see that a re-imported row says nothing new.
    pub fn fingerprint(&self) -> i64 {
        // Hash the JSON as it is written, without building it in memory.
        let mut h = FnvWriter(FNV_OFFSET);
        let _ = serde_json::to_writer(&mut h, self);
        h.0 as i64
    }

    /// Folds `later` into `self`: later non-empty values win, lists are unioned.
    pub fn absorb(&mut self, later: PersonDraft) {
        fn take<T>(dst: &mut Option<T>, src: Option<T>) {
            if src.is_some() {
                *dst = src;
            }
        }
        take(&mut self.voter_id, later.voter_id);
        take(&mut self.name.first_name, later.name.first_name);
        take(&mut self.name.middle_name, later.name.middle_name);
        take(&mut self.name.last_name, later.name.last_name);
        take(&mut self.name.suffix, later.name.suffix);
        take(&mut self.address, later.address);
        self.emails.extend(later.emails);
        self.phones.extend(later.phones);
        self.tags.extend(later.tags);
        self.custom.extend(later.custom);
        self.email_consent = self.email_consent.merge(later.email_consent, false);
        self.sms_consent = self.sms_consent.merge(later.sms_consent, false);
        dedup_keep_order(&mut self.emails);
        dedup_keep_order(&mut self.phones);
        dedup_keep_order(&mut self.tags);
    }
}

fn dedup_keep_order<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    *v = out;
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a, 64-bit: stable across runs, platforms and versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// An `io::Write` that folds everything written into an FNV-1a hash.
struct FnvWriter(u64);

impl std::io::Write for FnvWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = fnv1a_from(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_from_json_rejects_unknown_fields() {
        let ok: PersonDraft =
            serde_json::from_str(r#"{"first_name":" Ada ","emails":["ADA@example.org"]}"#).unwrap();
        assert_eq!(ok.emails[0].as_str(), "ada@example.org");
        assert!(serde_json::from_str::<PersonDraft>(r#"{"shoe_size":11}"#).is_err());
        assert!(serde_json::from_str::<PersonDraft>(r#"{"emails":["nope"]}"#).is_err());
    }

    #[test]
    fn fingerprint_tracks_content() {
        let a = PersonDraft {
            voter_id: Some(VoterId::parse("A1").unwrap()),
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.fingerprint(),
            fnv1a(&serde_json::to_vec(&a).unwrap()) as i64,
            "the hash of the canonical JSON"
        );
        b.tags.push(Tag::parse("x").unwrap());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn absorb_unions_and_overrides() {
        let mut a = PersonDraft {
            emails: vec![Email::parse("a@x.org").unwrap()],
            name: PersonNameFields {
                first_name: Some("Al".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let b = PersonDraft {
            emails: vec![
                Email::parse("a@x.org").unwrap(),
                Email::parse("b@x.org").unwrap(),
            ],
            name: PersonNameFields {
                last_name: Some("Smith".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        a.absorb(b);
        assert_eq!(a.emails.len(), 2);
        assert_eq!(a.name.first_name.as_deref(), Some("Al"));
        assert_eq!(a.name.last_name.as_deref(), Some("Smith"));
    }

    #[test]
    fn custom_keys() {
        assert!(CustomFieldKey::parse("party_2024").is_ok());
        assert!(CustomFieldKey::parse("Party").is_err());
        assert!(CustomFieldKey::parse("1x").is_err());
    }

    #[test]
    fn custom_fields_serialize_as_a_plain_object_in_key_order() {
        // Stored text and fingerprints depend on this exact form.
        let mut m = BTreeMap::new();
        m.insert(CustomFieldKey::parse("zeta").unwrap(), "1".to_string());
        m.insert(
            CustomFieldKey::parse("alpha").unwrap(),
            "say \"hi\"".to_string(),
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"alpha":"say \"hi\"","zeta":"1"}"#
        );
        let back: BTreeMap<CustomFieldKey, String> =
            serde_json::from_str(r#"{"alpha":"a"}"#).unwrap();
        assert_eq!(
            back.keys().next().map(CustomFieldKey::as_str),
            Some("alpha")
        );
        assert!(
            serde_json::from_str::<BTreeMap<CustomFieldKey, String>>(r#"{"Bad":"a"}"#).is_err()
        );
    }
}
