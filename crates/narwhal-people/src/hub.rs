//! The hub: one way into people data for every application.
//!
//! [`Hub::upsert_batch`] is the single path by which records from any source (an
//! import, the API, the inbound endpoint) become people. It resolves each record to an
//! existing person by strong keys (voter id, then normalized email, then E.164 phone),
//! merges people that a record proves to be one (unless their voter ids disagree),
//! and commits the whole batch in one transaction.

use crate::error::PeopleError;
use crate::keyindex::{Hint, KeyIndex};
use crate::resolve::{apply, new_person, new_person_with, stamp};
use narwhal_domain::{
    ConsentState, CustomFieldKey, Email, MergeId, PersonDraft, PersonId, PhoneE164, PostalAddress,
    Tag,
};
use narwhal_store::audit::AuditEntry;
use narwhal_store::people::{ChangeSet, KeyKind, KeyMatches, PersonRecord, PersonUpdate};
use narwhal_store::{now_ms, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug)]
pub struct Hub {
    pub store: Store,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upserted {
    pub id: PersonId,
    pub outcome: Outcome,
    /// People merged into `id` because this record proved them the same.
    pub merged: Vec<PersonId>,
}

/// Totals of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchTotals {
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub merged: i64,
}

/// A staff edit of one person. Absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonPatch {
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub add_emails: Vec<Email>,
    #[serde(default)]
    pub add_phones: Vec<PhoneE164>,
    #[serde(default)]
    pub address: Option<PostalAddress>,
    /// `null` removes a custom field.
    #[serde(default)]
    pub custom: BTreeMap<CustomFieldKey, Option<String>>,
    #[serde(default)]
    pub add_tags: Vec<Tag>,
    #[serde(default)]
    pub remove_tags: Vec<Tag>,
    #[serde(default)]
    pub email_consent: Option<ConsentState>,
    #[serde(default)]
    pub sms_consent: Option<ConsentState>,
}

/// A draft's strong keys, borrowed: (kind, value).
pub(crate) fn keys_of(d: &PersonDraft) -> impl Iterator<Item = (KeyKind, &str)> {
    d.voter_id
        .iter()
        .map(|v| (KeyKind::Voter, v.as_str()))
        .chain(d.emails.iter().map(|e| (KeyKind::Email, e.as_str())))
        .chain(d.phones.iter().map(|p| (KeyKind::Phone, p.as_str())))
}

/// The audit entry of the `n`th new person of a change set (its id filled in when
/// written).
fn created(actor: &str, source: &str, n: usize) -> AuditEntry {
    AuditEntry::new(
        actor,
        "person.create",
        "person",
        format!("#{n}"),
        serde_json::json!({"source": source}),
    )
}

/// Folds records of the same person within a batch: the folded records, in order of
/// first appearance, and for each input the index of the record it joined. First
/// which group each record joins (keys borrowed, nothing copied), then the records.
fn fold(drafts: Vec<PersonDraft>) -> (Vec<PersonDraft>, Vec<usize>) {
    let mut owner_of_input: Vec<usize> = Vec::with_capacity(drafts.len());
    let mut groups = 0usize;
    {
        let mut by_key: HashMap<(KeyKind, &str), usize> = HashMap::new();
        for d in &drafts {
            let i = match keys_of(d).find_map(|k| by_key.get(&k).copied()) {
                Some(i) => i,
                None => {
                    groups += 1;
                    groups - 1
                }
            };
            for k in keys_of(d) {
                by_key.entry(k).or_insert(i);
            }
            owner_of_input.push(i);
        }
    }
    let mut folded: Vec<PersonDraft> = Vec::with_capacity(groups);
    for (d, &i) in drafts.into_iter().zip(&owner_of_input) {
        if i == folded.len() {
            folded.push(d);
        } else {
            folded[i].absorb(d);
        }
    }
    (folded, owner_of_input)
}

/// The people a batch of records would create if none of its keys were held by
/// anyone: see [`Hub::plan_new_people`].
#[derive(Debug)]
pub struct NewPeoplePlan {
    /// The new people (and their audit entries), as [`Hub::upsert_batch`] would write
    /// them.
    pub changes: ChangeSet,
    /// For each input record, the index in `changes.inserts` of its person.
    pub person_of_input: Vec<usize>,
    /// The records' voter ids, emails and phones, to check that no one holds them.
    pub keys: [Vec<String>; 3],
    /// The records folded (one per new person), for [`Hub::upsert_plan`].
    folded: Vec<PersonDraft>,
}

impl Hub {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The people [`Hub::upsert_batch`] would create for `drafts` if none of them is in
    /// the hub yet, without asking the database: for a caller that checks the keys
    /// and writes them with its own rows in one statement (the donation intake), and
    /// otherwise finishes with [`Hub::upsert_plan`]. The records come back when one
    /// has no strong key (then the caller takes `upsert_batch`).
    pub fn plan_new_people(
        &self,
        drafts: Vec<PersonDraft>,
        source: &str,
        actor: &str,
        audit_inserts: bool,
    ) -> Result<NewPeoplePlan, Vec<PersonDraft>> {
        if drafts.is_empty() || !drafts.iter().all(PersonDraft::has_strong_key) {
            return Err(drafts);
        }
        let (folded, person_of_input) = fold(drafts);
        let now = now_ms();
        let mut changes = ChangeSet {
            source: Some(source.to_string()),
            ..Default::default()
        };
        let (mut voter_ids, mut emails, mut phones) = (Vec::new(), Vec::new(), Vec::new());
        for d in &folded {
            voter_ids.extend(d.voter_id.iter().map(|v| v.as_str().to_string()));
            emails.extend(d.emails.iter().map(|e| e.as_str().to_string()));
            phones.extend(d.phones.iter().map(|p| p.as_str().to_string()));
            if audit_inserts {
                changes
                    .audit
                    .push(created(actor, source, changes.inserts.len()));
            }
            changes
                .inserts
                .push(new_person_with(d, source, now, d.fingerprint()));
        }
        Ok(NewPeoplePlan {
            changes,
            person_of_input,
            keys: [voter_ids, emails, phones],
            folded,
        })
    }

    /// Writes a plan's records as [`Hub::upsert_batch`] would, when they were not all
    /// new: `held` is who holds their keys, as just read (it saves that read); `None`
    /// reads them. One result per input record of the plan.
    pub async fn upsert_plan(
        &self,
        plan: NewPeoplePlan,
        source: &str,
        actor: &str,
        audit_inserts: bool,
        held: Option<KeyMatches>,
    ) -> Result<(Vec<Upserted>, BatchTotals), PeopleError> {
        self.upsert_folded(
            &plan.folded,
            &plan.person_of_input,
            source,
            actor,
            audit_inserts,
            None,
            held,
        )
        .await
    }

    /// Creates or updates one person from a record. `direct` is true when the person
    /// themself submitted it (a signup form): only then can it lift an unsubscribe.
    pub async fn upsert(
        &self,
        draft: PersonDraft,
        source: &str,
        actor: &str,
    ) -> Result<Upserted, PeopleError> {
        let draft = draft.normalize();
        if !draft.has_strong_key() {
            return Err(PeopleError::Invalid(
                "a person needs a voter id, an email or a phone to be matched on".into(),
            ));
        }
        let (mut res, _) = self.upsert_batch(vec![draft], source, actor, true).await?;
        res.pop().ok_or(PeopleError::Invalid("empty batch".into()))
    }

    /// Resolves and writes a batch. Returns one result per input draft (drafts that
    /// share a key are folded together and get the same person), and the totals.
    pub async fn upsert_batch(
        &self,
        drafts: Vec<PersonDraft>,
        source: &str,
        actor: &str,
        audit_inserts: bool,
    ) -> Result<(Vec<Upserted>, BatchTotals), PeopleError> {
        self.upsert_batch_indexed(drafts, source, actor, audit_inserts, None)
            .await
    }

    /// [`Hub::upsert_batch`] with an in-memory key index (see [`crate::keyindex`]):
    /// records the index calls new or unchanged are not looked up in the database,
    /// and the people the batch creates are added to it. A batch that conflicts with
    /// another writer is resolved again without the index.
    pub async fn upsert_batch_indexed(
        &self,
        drafts: Vec<PersonDraft>,
        source: &str,
        actor: &str,
        audit_inserts: bool,
        index: Option<&std::sync::RwLock<KeyIndex>>,
    ) -> Result<(Vec<Upserted>, BatchTotals), PeopleError> {
        let (folded, owner_of_input) = fold(drafts);
        self.upsert_folded(
            &folded,
            &owner_of_input,
            source,
            actor,
            audit_inserts,
            index,
            None,
        )
        .await
    }

    /// Writes folded records (see [`fold`]), resolving again after a conflict.
    /// `prefetched` is who holds the records' keys, read just before, for the first
    /// try (it saves that read).
    #[allow(clippy::too_many_arguments)]
    async fn upsert_folded(
        &self,
        folded: &[PersonDraft],
        owner_of_input: &[usize],
        source: &str,
        actor: &str,
        audit_inserts: bool,
        index: Option<&std::sync::RwLock<KeyIndex>>,
        mut prefetched: Option<KeyMatches>,
    ) -> Result<(Vec<Upserted>, BatchTotals), PeopleError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let index = index.filter(|_| attempt == 1);
            match self
                .write_folded(
                    folded,
                    source,
                    actor,
                    audit_inserts,
                    index,
                    prefetched.take(),
                )
                .await
            {
                Ok((per_folded, totals)) => {
                    let out = owner_of_input
                        .iter()
                        .map(|&i| per_folded[i].clone())
                        .collect();
                    return Ok((out, totals));
                }
                // Another writer got between our read and our write: read again
                // (after a short, growing pause so that racing writers spread out).
                Err(PeopleError::Conflict(_)) if attempt < 10 => {
                    let jitter =
                        (std::process::id() as u64 + attempt * 7919 + now_ms() as u64) % 20;
                    tokio::time::sleep(std::time::Duration::from_millis(attempt * 5 + jitter))
                        .await;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_folded(
        &self,
        folded: &[PersonDraft],
        source: &str,
        actor: &str,
        audit_inserts: bool,
        index: Option<&std::sync::RwLock<KeyIndex>>,
        prefetched: Option<KeyMatches>,
    ) -> Result<(Vec<Upserted>, BatchTotals), PeopleError> {
        let now = now_ms();
        // Every record's fingerprint, once: it tells an unchanged record apart, and
        // it is a new person's row hash.
        let fps: Vec<i64> = folded.iter().map(PersonDraft::fingerprint).collect();
        // What the key index can answer is not asked of the database.
        let hints: Vec<Hint> = match index {
            Some(ix) => {
                let ix = ix.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                folded
                    .iter()
                    .zip(&fps)
                    .map(|(d, &fp)| ix.classify(d, fp))
                    .collect()
            }
            None => vec![Hint::Ask; folded.len()],
        };
        let mut voter_ids = Vec::new();
        let mut emails = Vec::new();
        let mut phones = Vec::new();
        for (d, _) in folded.iter().zip(&hints).filter(|(_, h)| **h == Hint::Ask) {
            voter_ids.extend(d.voter_id.iter().map(|v| v.as_str().to_string()));
            emails.extend(d.emails.iter().map(|e| e.as_str().to_string()));
            phones.extend(d.phones.iter().map(|p| p.as_str().to_string()));
        }
        let mut km = match prefetched.filter(|_| index.is_none()) {
            Some(km) => km,
            None => {
                self.store
                    .find_by_keys(&voter_ids, &emails, &phones)
                    .await?
            }
        };
        for (d, h) in folded.iter().zip(&hints) {
            if let Hint::Unchanged(id, row_hash) = *h {
                let held = (id, row_hash);
                if let Some(v) = &d.voter_id {
                    km.voter.insert(v.as_str().to_string(), held);
                }
                for e in &d.emails {
                    km.email.insert(e.as_str().to_string(), held);
                }
                for p in &d.phones {
                    km.phone.insert(p.as_str().to_string(), held);
                }
            }
        }
        let mut totals = BatchTotals::default();

        // Which existing people each record names, strongest key first.
        let mut matches: Vec<Vec<(PersonId, i64)>> = Vec::with_capacity(folded.len());
        for d in folded {
            let mut m: Vec<(PersonId, i64)> = Vec::new();
            let mut push = |x: Option<&(PersonId, i64)>| {
                if let Some(&(id, h)) = x {
                    if !m.iter().any(|(i, _)| *i == id) {
                        m.push((id, h));
                    }
                }
            };
            if let Some(v) = &d.voter_id {
                push(km.voter.get(v.as_str()));
            }
            for e in &d.emails {
                push(km.email.get(e.as_str()));
            }
            for p in &d.phones {
                push(km.phone.get(p.as_str()));
            }
            matches.push(m);
        }

        // A record with a voter id that no one holds yet may still share an email or
        // phone with someone else: that someone is a different person if they hold
        // another voter id (families share phones).
        let check: Vec<PersonId> = (0..folded.len())
            .filter(|&i| {
                folded[i]
                    .voter_id
                    .as_ref()
                    .is_some_and(|v| !km.voter.contains_key(v.as_str()))
            })
            .flat_map(|i| matches[i].iter().map(|(id, _)| *id))
            .collect();
        if !check.is_empty() {
            let other_voter: HashMap<PersonId, Option<String>> = self
                .store
                .load_people(&check)
                .await?
                .into_iter()
                .map(|r| (r.id, r.row.voter_id))
                .collect();
            for (i, d) in folded.iter().enumerate() {
                if let Some(v) = d
                    .voter_id
                    .as_ref()
                    .filter(|v| !km.voter.contains_key(v.as_str()))
                {
                    matches[i].retain(
                        |(id, _)| !matches!(other_voter.get(id), Some(Some(o)) if o != v.as_str()),
                    );
                }
            }
        }

        // Records that name several people: merge those that can be one person.
        let mut merged_into: Vec<Vec<PersonId>> = vec![Vec::new(); folded.len()];
        let multi: Vec<usize> = (0..folded.len())
            .filter(|&i| matches[i].len() > 1)
            .collect();
        for i in multi {
            let ids: Vec<PersonId> = matches[i].iter().map(|(id, _)| *id).collect();
            let recs = self.store.load_people(&ids).await?;
            let Some(survivor) = recs.iter().find(|r| r.id == ids[0]) else {
                continue;
            };
            for other in recs.iter().filter(|r| r.id != survivor.id) {
                let conflict = matches!((&survivor.row.voter_id, &other.row.voter_id), (Some(a), Some(b)) if a != b);
                if conflict {
                    continue;
                }
                self.store
                    .merge_people(survivor.id, other.id, "a record shared their keys", actor)
                    .await?;
                merged_into[i].push(other.id);
                totals.merged += 1;
            }
            matches[i].truncate(1);
        }

        // Load the people whose stored fingerprint differs from the record's.
        // Fingerprints only for records that matched someone (new people get theirs in `new_person`).
        let need: Vec<PersonId> = (0..folded.len())
            .filter_map(|i| {
                matches[i]
                    .first()
                    .filter(|(_, h)| *h != fps[i] || !merged_into[i].is_empty())
                    .map(|(id, _)| *id)
            })
            .collect();
        let loaded: HashMap<PersonId, PersonRecord> = self
            .store
            .load_people(&need)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();

        let mut cs = ChangeSet {
            source: Some(source.to_string()),
            ..Default::default()
        };
        let mut results: Vec<Option<Upserted>> = vec![None; folded.len()];
        let mut insert_of: Vec<usize> = Vec::new();
        for (i, d) in folded.iter().enumerate() {
            match matches[i].first() {
                None => {
                    if audit_inserts {
                        cs.audit.push(created(actor, source, cs.inserts.len()));
                    }
                    insert_of.push(i);
                    // Keys that another person holds (one with a different voter id) stay theirs.
                    if d.emails.iter().any(|e| km.email.contains_key(e.as_str()))
                        || d.phones.iter().any(|p| km.phone.contains_key(p.as_str()))
                    {
                        let mut d = d.clone();
                        d.emails.retain(|e| !km.email.contains_key(e.as_str()));
                        d.phones.retain(|p| !km.phone.contains_key(p.as_str()));
                        cs.inserts.push(new_person(&d, source, now));
                    } else {
                        cs.inserts.push(new_person_with(d, source, now, fps[i]));
                    }
                }
                Some((id, _)) => match loaded.get(id) {
                    None => {
                        totals.unchanged += 1;
                        results[i] = Some(Upserted {
                            id: *id,
                            outcome: Outcome::Unchanged,
                            merged: merged_into[i].clone(),
                        });
                    }
                    Some(cur) => {
                        // Keys held by other people stay with them.
                        let mut d = d.clone();
                        d.emails.retain(|e| {
                            km.email
                                .get(e.as_str())
                                .is_none_or(|(o, _)| o == id || merged_into[i].contains(o))
                        });
                        d.phones.retain(|p| {
                            km.phone
                                .get(p.as_str())
                                .is_none_or(|(o, _)| o == id || merged_into[i].contains(o))
                        });
                        let a = apply(cur, &d, source, now, false);
                        if a.is_noop() && a.row.row_hash == cur.row.row_hash {
                            totals.unchanged += 1;
                            results[i] = Some(Upserted {
                                id: *id,
                                outcome: Outcome::Unchanged,
                                merged: merged_into[i].clone(),
                            });
                            continue;
                        }
                        let outcome = if a.is_noop() {
                            Outcome::Unchanged
                        } else {
                            Outcome::Updated
                        };
                        if a.is_noop() {
                            totals.unchanged += 1;
                        } else {
                            totals.updated += 1;
                            cs.audit.push(AuditEntry::new(
                                actor,
                                "person.update",
                                "person",
                                id,
                                serde_json::json!({"source": source, "fields": a.changed}),
                            ));
                        }
                        cs.updates.push(PersonUpdate {
                            id: *id,
                            expected_version: cur.version,
                            row: a.row,
                            add_emails: a.add_emails,
                            add_phones: a.add_phones,
                            add_tags: a.add_tags,
                            remove_tags: vec![],
                            changed: a.changed,
                        });
                        results[i] = Some(Upserted {
                            id: *id,
                            outcome,
                            merged: merged_into[i].clone(),
                        });
                    }
                },
            }
        }
        if cs.inserts.is_empty() && cs.updates.is_empty() {
            return Ok((results.into_iter().flatten().collect(), totals));
        }
        let cs = std::sync::Arc::new(cs);
        let new_ids = self.store.apply_changes_on_writer(cs.clone()).await?;
        if let Some(ix) = index {
            let mut ix = ix
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (np, id) in cs.inserts.iter().zip(&new_ids) {
                let keys = np
                    .row
                    .voter_id
                    .iter()
                    .map(|v| (KeyKind::Voter, v.as_str()))
                    .chain(np.emails.iter().map(|e| (KeyKind::Email, e.as_str())))
                    .chain(np.phones.iter().map(|p| (KeyKind::Phone, p.as_str())));
                ix.add(keys, *id, np.row.row_hash);
            }
        }
        totals.inserted += new_ids.len() as i64;
        for (k, &i) in insert_of.iter().enumerate() {
            results[i] = Some(Upserted {
                id: new_ids[k],
                outcome: Outcome::Created,
                merged: merged_into[i].clone(),
            });
        }
        Ok((results.into_iter().flatten().collect(), totals))
    }

    /// Applies a staff edit. Staff may set any consent state (they act on the person's word).
    pub async fn edit(
        &self,
        id: PersonId,
        patch: PersonPatch,
        actor: &str,
    ) -> Result<PersonRecord, PeopleError> {
        for _ in 0..3 {
            let cur = self.store.get_person(id).await?;
            let now = now_ms();
            let source = actor;
            let mut row = cur.row.clone();
            let mut changed = Vec::new();
            let s = stamp(source, now);
            let mut setf = |name: &str, dst: &mut Option<String>, v: &Option<String>| {
                if let Some(v) = v {
                    let v = narwhal_domain::text::non_empty(v);
                    if *dst != v {
                        *dst = v;
                        changed.push(name.to_string());
                    }
                }
            };
            setf("first_name", &mut row.first_name, &patch.first_name);
            setf("middle_name", &mut row.middle_name, &patch.middle_name);
            setf("last_name", &mut row.last_name, &patch.last_name);
            setf("suffix", &mut row.suffix, &patch.suffix);
            if let Some(a) = &patch.address {
                row.addr_line1 = a.line1.clone();
                row.addr_line2 = a.line2.clone();
                row.city = a.city.clone();
                row.state = a.state.map(|s| s.as_str().to_string());
                row.zip = a.zip.clone();
                row.county = a.county.clone();
                row.precinct = a.precinct.clone();
                row.addr_key = a.match_key();
                changed.push("address".into());
            }
            for (k, v) in &patch.custom {
                let key = k.as_str().to_string();
                match v {
                    Some(v) => {
                        row.custom
                            .insert(key.clone(), serde_json::Value::String(v.clone()));
                    }
                    None => {
                        row.custom.remove(&key);
                    }
                }
                changed.push(format!("custom.{key}"));
            }
            if let Some(c) = patch.email_consent {
                row.email_consent = c.as_str().to_string();
                changed.push("email_consent".into());
            }
            if let Some(c) = patch.sms_consent {
                row.sms_consent = c.as_str().to_string();
                changed.push("sms_consent".into());
            }
            let add_emails =
                crate::resolve::not_yet(patch.add_emails.iter().map(|e| e.as_str()), &cur.emails);
            let add_phones =
                crate::resolve::not_yet(patch.add_phones.iter().map(|p| p.as_str()), &cur.phones);
            // A new email or phone must not belong to someone else.
            let km = self
                .store
                .find_by_keys(&[], &add_emails, &add_phones)
                .await?;
            if km
                .email
                .values()
                .chain(km.phone.values())
                .any(|(o, _)| *o != id)
            {
                return Err(PeopleError::Conflict(
                    "that email or phone belongs to another person; merge them instead".into(),
                ));
            }
            if row.email.is_none() {
                row.email = add_emails.first().cloned();
            }
            if row.phone.is_none() {
                row.phone = add_phones.first().cloned();
            }
            if !add_emails.is_empty() {
                changed.push("emails".into());
            }
            if !add_phones.is_empty() {
                changed.push("phones".into());
            }
            let add_tags: Vec<String> = patch
                .add_tags
                .iter()
                .map(|t| t.as_str().to_string())
                .collect();
            let remove_tags: Vec<String> = patch
                .remove_tags
                .iter()
                .map(|t| t.as_str().to_string())
                .collect();
            if !add_tags.is_empty() || !remove_tags.is_empty() {
                changed.push("tags".into());
            }
            for c in &changed {
                row.provenance.insert(c.clone(), s.clone());
            }
            row.search_name = narwhal_domain::PersonName {
                first: row.first_name.clone(),
                middle: None,
                last: row.last_name.clone(),
                suffix: None,
            }
            .search_key();
            let cs = ChangeSet {
                source: Some(source.to_string()),
                updates: vec![PersonUpdate {
                    id,
                    expected_version: cur.version,
                    row,
                    add_emails,
                    add_phones,
                    add_tags,
                    remove_tags,
                    changed: changed.clone(),
                }],
                audit: vec![AuditEntry::new(
                    actor,
                    "person.update",
                    "person",
                    id,
                    serde_json::json!({"fields": changed}),
                )],
                ..Default::default()
            };
            match self.store.apply_changes(&cs).await {
                Ok(_) => return Ok(self.store.get_person(id).await?),
                Err(narwhal_store::StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PeopleError::Conflict(
            "the person kept changing; try again".into(),
        ))
    }

    pub async fn merge(
        &self,
        survivor: PersonId,
        merged: PersonId,
        reason: &str,
        actor: &str,
    ) -> Result<MergeId, PeopleError> {
        let recs = self.store.load_people(&[survivor, merged]).await?;
        if let [a, b] = recs.as_slice() {
            if matches!((&a.row.voter_id, &b.row.voter_id), (Some(x), Some(y)) if x != y) {
                return Err(PeopleError::Invalid(
                    "these people have different voter ids and cannot be one person".into(),
                ));
            }
        }
        Ok(self
            .store
            .merge_people(survivor, merged, reason, actor)
            .await?)
    }
}
