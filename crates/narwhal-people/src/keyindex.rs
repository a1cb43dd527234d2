//! An in-memory index of the hub's strong keys, which a large import reads instead of
//! asking the database about every row.
//!
//! Resolving a row means finding who holds its voter id, emails and phones. For a
//! voter file that is millions of key lookups, nearly all of which answer either
//! "no one" (a first load) or "the same person, who already says exactly this" (a
//! re-import). The index answers those two cases from memory; every other row (a
//! partial match, a changed record, a key two people hold) is resolved against the
//! database as before.
//!
//! The index is a hint, never the authority:
//! - a row it calls new is inserted under the database's unique keys, so if someone
//!   else created that person meanwhile, the batch fails with a conflict and is
//!   resolved again without the index;
//! - a row it calls unchanged has a fingerprint equal to the stored row hash of the
//!   one person holding all its keys, which is what the database path checks too.
//!
//! Keys are kept as 64-bit hashes (24 bytes an entry, so a hub of a million people
//! costs about 45 MB). A hash can only make the index see a key that is not there,
//! never miss one that is: such a row is not called new, and to be called unchanged
//! its fingerprint (which covers the keys themselves) would have to collide as well.

use narwhal_domain::{PersonDraft, PersonId};
use narwhal_store::people::KeyKind;
use narwhal_store::Store;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// What the index says about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// No one holds any of its keys.
    New,
    /// One person holds all its keys, and their row hash is the record's fingerprint.
    Unchanged(PersonId, i64),
    /// Anything else: resolve it against the database.
    Ask,
}

/// A person id no real person has: several keys in the index share one hash.
const AMBIGUOUS: i64 = i64::MIN;

#[derive(Debug, Default)]
pub struct KeyIndex {
    /// (key hash, person, row hash), sorted by key hash.
    base: Vec<(u64, i64, i64)>,
    /// Keys written since the index was loaded.
    added: HashMap<u64, (i64, i64)>,
}

fn key_hash(kind: KeyKind, key: &str) -> u64 {
    // SipHash with fixed keys: the same key hashes the same in every process.
    let mut h = std::hash::DefaultHasher::new();
    kind.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl KeyIndex {
    /// Reads every key the hub holds.
    pub async fn load(store: &Store) -> Result<Self, narwhal_store::StoreError> {
        let mut base = Vec::new();
        store
            .scan_keys(&mut |kind, key, id, row_hash| {
                base.push((key_hash(kind, key), id.0, row_hash));
            })
            .await?;
        Ok(Self::from_entries(base))
    }

    fn from_entries(mut base: Vec<(u64, i64, i64)>) -> Self {
        base.sort_unstable_by_key(|e| e.0);
        // Two keys with one hash: neither can be trusted to name anyone. The entry
        // that stays of a run is marked.
        for i in 1..base.len() {
            if base[i].0 == base[i - 1].0 {
                base[i - 1].1 = AMBIGUOUS;
            }
        }
        base.dedup_by_key(|e| e.0);
        base.shrink_to_fit();
        Self {
            base,
            added: HashMap::new(),
        }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.base.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, kind: KeyKind, key: &str) -> Option<(i64, i64)> {
        let h = key_hash(kind, key);
        if let Some(&e) = self.added.get(&h) {
            return Some(e);
        }
        self.base
            .binary_search_by_key(&h, |e| e.0)
            .ok()
            .map(|i| (self.base[i].1, self.base[i].2))
    }

    /// Classifies a record whose fingerprint is `fp`.
    pub fn classify(&self, d: &PersonDraft, fp: i64) -> Hint {
        let keys = crate::hub::keys_of(d);
        let mut holder: Option<(i64, i64)> = None;
        let mut absent = 0usize;
        let mut total = 0usize;
        for (kind, key) in keys {
            total += 1;
            match self.get(kind, key) {
                None => absent += 1,
                Some((id, _)) if id == AMBIGUOUS => return Hint::Ask,
                Some(h) => match holder {
                    None => holder = Some(h),
                    Some(o) if o.0 == h.0 => {}
                    Some(_) => return Hint::Ask,
                },
            }
        }
        match holder {
            None if total > 0 => Hint::New,
            Some((id, row_hash)) if absent == 0 && row_hash == fp => {
                Hint::Unchanged(PersonId(id), row_hash)
            }
            _ => Hint::Ask,
        }
    }

    /// Records that `id` now holds these keys with this row hash (a person the
    /// import just created).
    pub fn add<'a>(
        &mut self,
        keys: impl Iterator<Item = (KeyKind, &'a str)>,
        id: PersonId,
        row_hash: i64,
    ) {
        for (kind, key) in keys {
            self.added.insert(key_hash(kind, key), (id.0, row_hash));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use narwhal_domain::{Email, PhoneE164, VoterId};

    fn draft(voter: Option<&str>, email: Option<&str>, phone: Option<&str>) -> PersonDraft {
        PersonDraft {
            voter_id: voter.map(|v| VoterId::parse(v).unwrap()),
            emails: email
                .map(|e| Email::parse(e).unwrap())
                .into_iter()
                .collect(),
            phones: phone
                .map(|p| PhoneE164::parse(p).unwrap())
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn index(entries: &[(KeyKind, &str, i64, i64)]) -> KeyIndex {
        KeyIndex::from_entries(
            entries
                .iter()
                .map(|&(k, key, id, h)| (key_hash(k, key), id, h))
                .collect(),
        )
    }

    #[test]
    fn a_record_no_one_holds_is_new() {
        let ix = index(&[(KeyKind::Voter, "OH1", 1, 10)]);
        let d = draft(Some("OH2"), Some("a@example.org"), None);
        assert_eq!(ix.classify(&d, 99), Hint::New);
        // The same text as another kind of key is a different key.
        let ix = index(&[(KeyKind::Email, "OH2", 1, 10)]);
        assert_eq!(ix.classify(&draft(Some("OH2"), None, None), 5), Hint::New);
    }

    #[test]
    fn unchanged_only_when_one_person_holds_every_key_with_the_same_hash() {
        let ix = index(&[
            (KeyKind::Voter, "OH1", 1, 10),
            (KeyKind::Email, "a@example.org", 1, 10),
            (KeyKind::Email, "b@example.org", 2, 20),
        ]);
        let d = draft(Some("OH1"), Some("a@example.org"), None);
        assert_eq!(ix.classify(&d, 10), Hint::Unchanged(PersonId(1), 10));
        // A changed record, a key no one holds yet, or a key someone else holds.
        assert_eq!(ix.classify(&d, 11), Hint::Ask);
        let d = draft(Some("OH1"), Some("new@example.org"), None);
        assert_eq!(ix.classify(&d, 10), Hint::Ask);
        let d = draft(Some("OH1"), Some("b@example.org"), None);
        assert_eq!(ix.classify(&d, 10), Hint::Ask);
    }

    #[test]
    fn keys_added_later_are_seen() {
        let mut ix = KeyIndex::default();
        let d = draft(None, None, Some("+16145550100"));
        assert_eq!(ix.classify(&d, 7), Hint::New);
        ix.add(
            [(KeyKind::Phone, "+16145550100")].into_iter(),
            PersonId(3),
            7,
        );
        assert_eq!(ix.classify(&d, 7), Hint::Unchanged(PersonId(3), 7));
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn keys_sharing_a_hash_are_never_trusted() {
        let mut ix = KeyIndex::from_entries(vec![(5, 1, 10), (5, 2, 20), (6, 3, 30)]);
        assert_eq!(ix.base.len(), 2);
        // Put a real key on the shared hash to see that it is asked about.
        ix.base[0].0 = key_hash(KeyKind::Voter, "OH1");
        ix.base.sort_unstable_by_key(|e| e.0);
        assert_eq!(ix.classify(&draft(Some("OH1"), None, None), 10), Hint::Ask);
    }
}
