//! Turning drafts into rows: what a new person looks like, and how a draft changes an
//! existing one. Pure functions, no I/O.

use narwhal_domain::{ConsentState, PersonDraft};
use narwhal_store::people::{NewPerson, PersonRecord, PersonRow};
use serde_json::{json, Map, Value};

/// The provenance stamp recorded for every field a source sets.
pub fn stamp(source: &str, at: i64) -> Value {
    json!({ "source": source, "at": at })
}

/// A brand-new person from a draft.
pub fn new_person(d: &PersonDraft, source: &str, at: i64) -> NewPerson {
    new_person_with(d, source, at, d.fingerprint())
}

/// [`new_person`] for a draft whose fingerprint is known already.
pub fn new_person_with(d: &PersonDraft, source: &str, at: i64, fingerprint: i64) -> NewPerson {
    let name = d.name.to_name();
    let mut row = PersonRow {
        voter_id: d.voter_id.as_ref().map(|v| v.as_str().to_string()),
        first_name: name.first.clone(),
        middle_name: name.middle.clone(),
        last_name: name.last.clone(),
        suffix: name.suffix.clone(),
        search_name: name.search_key(),
        email: d.emails.first().map(|e| e.as_str().to_string()),
        phone: d.phones.first().map(|p| p.as_str().to_string()),
        email_consent: d.email_consent.as_str().to_string(),
        sms_consent: d.sms_consent.as_str().to_string(),
        row_hash: fingerprint,
        ..Default::default()
    };
    if let Some(a) = &d.address {
        set_address(&mut row, a);
    }
    // The fields go straight to their stored text (`row.custom` stays empty): the
    // draft's map is ordered by key as the stored object is, so the text is the same
    // as the map's would be.
    let custom_json = serde_json::to_string(&d.custom).unwrap_or_else(|_| "{}".to_string());
    // One stamp for everything this source said at creation; fields changed later
    // get stamps of their own (see `apply`). `provenance_of` reads either.
    let mut prov = Map::new();
    prov.insert(ALL_FIELDS.to_string(), stamp(source, at));
    row.provenance = prov;
    NewPerson {
        row,
        custom_json: Some(custom_json),
        emails: d.emails.iter().map(|e| e.as_str().to_string()).collect(),
        phones: d.phones.iter().map(|p| p.as_str().to_string()).collect(),
        tags: d.tags.iter().map(|t| t.as_str().to_string()).collect(),
    }
}

fn set_address(row: &mut PersonRow, a: &narwhal_domain::PostalAddress) {
    row.addr_line1 = a.line1.clone();
    row.addr_line2 = a.line2.clone();
    row.city = a.city.clone();
    row.state = a.state.map(|s| s.as_str().to_string());
    row.zip = a.zip.clone();
    row.county = a.county.clone();
    row.precinct = a.precinct.clone();
    row.addr_key = a.match_key();
}

/// The provenance key that stands for every field a person was created with.
pub const ALL_FIELDS: &str = "*";

/// Which source last set `field` (`"first_name"`, `"custom.party"`, ...) and when.
pub fn provenance_of<'a>(row: &'a PersonRow, field: &str) -> Option<&'a Value> {
    row.provenance
        .get(field)
        .or_else(|| row.provenance.get(ALL_FIELDS))
}

/// The values of `new` that `have` lacks, in order.
pub fn not_yet<'a>(new: impl Iterator<Item = &'a str>, have: &[String]) -> Vec<String> {
    new.filter(|v| !have.iter().any(|h| h == v))
        .map(str::to_string)
        .collect()
}

/// What a draft changes on an existing person.
#[derive(Debug, Default)]
pub struct Applied {
    pub row: PersonRow,
    pub changed: Vec<String>,
    pub add_emails: Vec<String>,
    pub add_phones: Vec<String>,
    pub add_tags: Vec<String>,
}

impl Applied {
    pub fn is_noop(&self) -> bool {
        self.changed.is_empty()
            && self.add_emails.is_empty()
            && self.add_phones.is_empty()
            && self.add_tags.is_empty()
    }
}

/// Folds a draft into a stored person: values the draft has win, values it lacks stay;
/// keys and tags are added, never removed; consent follows [`ConsentState::merge`].
/// `direct` is true when the person themself acted (a form they submitted).
pub fn apply(cur: &PersonRecord, d: &PersonDraft, source: &str, at: i64, direct: bool) -> Applied {
    let mut row = cur.row.clone();
    let mut changed = Vec::new();
    let s = stamp(source, at);
    let set = |field: &'static str,
               dst: &mut Option<String>,
               src: Option<String>,
               changed: &mut Vec<String>,
               prov: &mut Map<String, Value>| {
        if src.is_some() && *dst != src {
            *dst = src;
            changed.push(field.to_string());
            prov.insert(field.to_string(), s.clone());
        }
    };
    let name = d.name.to_name();
    let mut prov = row.provenance.clone();
    set(
        "voter_id",
        &mut row.voter_id,
        d.voter_id.as_ref().map(|v| v.as_str().to_string()),
        &mut changed,
        &mut prov,
    );
    set(
        "first_name",
        &mut row.first_name,
        name.first.clone(),
        &mut changed,
        &mut prov,
    );
    set(
        "middle_name",
        &mut row.middle_name,
        name.middle.clone(),
        &mut changed,
        &mut prov,
    );
    set(
        "last_name",
        &mut row.last_name,
        name.last.clone(),
        &mut changed,
        &mut prov,
    );
    set(
        "suffix",
        &mut row.suffix,
        name.suffix.clone(),
        &mut changed,
        &mut prov,
    );
    if row.email.is_none() {
        set(
            "email",
            &mut row.email,
            d.emails.first().map(|e| e.as_str().to_string()),
            &mut changed,
            &mut prov,
        );
    }
    if row.phone.is_none() {
        set(
            "phone",
            &mut row.phone,
            d.phones.first().map(|p| p.as_str().to_string()),
            &mut changed,
            &mut prov,
        );
    }
    if let Some(a) = &d.address {
        let mut next = row.clone();
        set_address(&mut next, a);
        if (
            next.addr_line1.clone(),
            next.addr_line2.clone(),
            next.city.clone(),
            next.state.clone(),
            next.zip.clone(),
            next.county.clone(),
            next.precinct.clone(),
        ) != (
            row.addr_line1.clone(),
            row.addr_line2.clone(),
            row.city.clone(),
            row.state.clone(),
            row.zip.clone(),
            row.county.clone(),
            row.precinct.clone(),
        ) {
            set_address(&mut row, a);
            changed.push("address".into());
            prov.insert("address".into(), s.clone());
        }
    }
    for (field, cur_state, incoming) in [
        ("email_consent", &mut row.email_consent, d.email_consent),
        ("sms_consent", &mut row.sms_consent, d.sms_consent),
    ] {
        let old = ConsentState::parse(cur_state).unwrap_or_default();
        let new = old.merge(incoming, direct);
        if new != old {
            *cur_state = new.as_str().to_string();
            changed.push(field.to_string());
            prov.insert(field.to_string(), s.clone());
        }
    }
    for (k, v) in &d.custom {
        let val = Value::String(v.clone());
        if row.custom.get(k.as_str()) != Some(&val) {
            row.custom.insert(k.as_str().to_string(), val);
            changed.push(format!("custom.{}", k.as_str()));
            prov.insert(format!("custom.{}", k.as_str()), s.clone());
        }
    }
    row.search_name = narwhal_domain::PersonName {
        first: row.first_name.clone(),
        middle: None,
        last: row.last_name.clone(),
        suffix: None,
    }
    .search_key();
    row.provenance = prov;
    row.row_hash = d.fingerprint();
    let add_emails = not_yet(d.emails.iter().map(|e| e.as_str()), &cur.emails);
    let add_phones = not_yet(d.phones.iter().map(|p| p.as_str()), &cur.phones);
    let add_tags: Vec<String> = d
        .tags
        .iter()
        .map(|t| t.as_str().to_string())
        .filter(|t| !cur.tags.contains(t))
        .collect();
    Applied {
        row,
        changed,
        add_emails,
        add_phones,
        add_tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use narwhal_domain::{Email, PersonId, Tag, VoterId};

    fn draft() -> PersonDraft {
        PersonDraft {
            voter_id: Some(VoterId::parse("OH1").unwrap()),
            emails: vec![Email::parse("a@example.org").unwrap()],
            tags: vec![Tag::parse("voter").unwrap()],
            email_consent: ConsentState::Subscribed,
            ..Default::default()
        }
    }

    fn record(np: NewPerson) -> PersonRecord {
        let custom = np.custom_map();
        PersonRecord {
            id: PersonId(1),
            row: PersonRow { custom, ..np.row },
            emails: np.emails,
            phones: np.phones,
            tags: np.tags,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn new_person_stores_custom_fields_as_the_map_would() {
        let mut d = draft();
        for (k, v) in [("zip_plus", "1234"), ("party", "D \"x\""), ("age", "")] {
            d.custom
                .insert(narwhal_domain::CustomFieldKey::parse(k).unwrap(), v.into());
        }
        let np = new_person(&d, "file", 1);
        let as_map: Map<String, Value> = d
            .custom
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
            .collect();
        assert_eq!(np.custom_text(), serde_json::to_string(&as_map).unwrap());
        assert_eq!(np.custom_map(), as_map);
        // A record built from it has the fields, so applying the same draft changes nothing.
        let cur = record(np);
        assert_eq!(
            cur.row.custom.get("party"),
            Some(&Value::String("D \"x\"".into()))
        );
        assert!(apply(&cur, &d, "file", 2, false).is_noop());
    }

    #[test]
    fn same_draft_changes_nothing() {
        let cur = record(new_person(&draft(), "file", 1));
        let a = apply(&cur, &draft(), "file", 2, false);
        assert!(a.is_noop(), "{:?}", a.changed);
    }

    #[test]
    fn import_cannot_resubscribe_but_person_can() {
        let mut cur = record(new_person(&draft(), "file", 1));
        cur.row.email_consent = "unsubscribed".into();
        assert!(apply(&cur, &draft(), "file", 2, false).is_noop());
        let a = apply(&cur, &draft(), "form", 2, true);
        assert_eq!(a.row.email_consent, "subscribed");
        assert_eq!(a.row.provenance["email_consent"]["source"], "form");
    }

    #[test]
    fn provenance_records_source_per_field() {
        let np = new_person(&draft(), "ohio-file", 42);
        assert_eq!(
            provenance_of(&np.row, "voter_id"),
            Some(&json!({"source":"ohio-file","at":42}))
        );
        assert_eq!(
            np.row.provenance.len(),
            1,
            "one stamp for the whole record at creation"
        );
        let mut d = draft();
        d.name.first_name = Some("Ada".into());
        let a = apply(&record(np), &d, "crm", 50, false);
        assert_eq!(a.changed, vec!["first_name"]);
        assert_eq!(a.row.provenance["first_name"]["source"], "crm");
        assert_eq!(
            provenance_of(&a.row, "voter_id").unwrap()["source"],
            "ohio-file"
        );
    }
}
