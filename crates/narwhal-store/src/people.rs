//! People rows, their keys (emails, phones, voter id) and tags.
//!
//! The services in `narwhal-people` decide *what* a person should look like; this
//! module only reads and writes rows, always a whole batch in one transaction.

use crate::audit::AuditEntry;
use crate::db::placeholders;
use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::PersonId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashMap;

/// One person's columns, as stored. The people service builds these from drafts.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersonRow {
    pub voter_id: Option<String>,
    pub first_name: Option<String>,
    pub middle_name: Option<String>,
    pub last_name: Option<String>,
    pub suffix: Option<String>,
    pub search_name: String,
    /// The primary email (also present in `emails`).
    pub email: Option<String>,
    /// The primary phone (also present in `phones`).
    pub phone: Option<String>,
    pub addr_line1: Option<String>,
    pub addr_line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub county: Option<String>,
    pub precinct: Option<String>,
    pub addr_key: Option<String>,
    pub email_consent: String,
    pub sms_consent: String,
    /// JSON object of custom fields.
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// JSON object: field name -> {"source": name, "at": ms}.
    pub provenance: serde_json::Map<String, serde_json::Value>,
    /// Fingerprint of the last source record folded in (see `PersonDraft::fingerprint`).
    pub row_hash: i64,
}

impl std::fmt::Debug for PersonRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonRow")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A stored person with everything attached to them.
#[derive(Clone, Serialize, Deserialize)]
pub struct PersonRecord {
    pub id: PersonId,
    #[serde(flatten)]
    pub row: PersonRow,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub tags: Vec<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for PersonRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonRecord")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A new person and the keys and tags to attach.
#[derive(Clone, Debug)]
pub struct NewPerson {
    pub row: PersonRow,
    /// The custom fields as stored JSON text, when whoever built the person rendered
    /// them already; then `row.custom` is left empty and not read. An import renders
    /// a draft's fields straight to text: building the map first (dozens of keys and
    /// values copied into it, then freed) was a tenth of the CPU a voter-file row took.
    pub custom_json: Option<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub tags: Vec<String>,
}

impl NewPerson {
    /// The custom fields as they are stored.
    pub fn custom_text(&self) -> std::borrow::Cow<'_, str> {
        match &self.custom_json {
            Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
            None => std::borrow::Cow::Owned(json_text(&self.row.custom)),
        }
    }

    /// Refuses a person whose custom fields are given both ways (which would store
    /// one and silently drop the other).
    fn check_custom(&self) -> Result<()> {
        if self.custom_json.is_some() && !self.row.custom.is_empty() {
            return Err(StoreError::Invalid(
                "a new person's custom fields came both as a map and as text".into(),
            ));
        }
        Ok(())
    }

    /// The custom fields as a map, wherever they are held.
    pub fn custom_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match &self.custom_json {
            Some(t) => serde_json::from_str(t).unwrap_or_default(),
            None => self.row.custom.clone(),
        }
    }
}

/// An existing person's new state; `expected_version` guards against lost updates.
#[derive(Clone, Debug)]
pub struct PersonUpdate {
    pub id: PersonId,
    pub expected_version: i64,
    pub row: PersonRow,
    /// Keys and tags to add (existing ones are kept).
    pub add_emails: Vec<String>,
    pub add_phones: Vec<String>,
    pub add_tags: Vec<String>,
    /// Tags to take away (API edits only; imports never remove).
    pub remove_tags: Vec<String>,
    /// Names of the fields that changed, for the audit log.
    pub changed: Vec<String>,
}

/// One batch of writes, committed atomically with its audit entries.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub source: Option<String>,
    pub inserts: Vec<NewPerson>,
    pub updates: Vec<PersonUpdate>,
    /// Audit entries to write in the same transaction. Entries whose `entity_id` is
    /// `"#N"` refer to the N-th insert and get its id filled in.
    pub audit: Vec<AuditEntry>,
}

/// Who already owns the strong keys of a batch.
#[derive(Debug, Default)]
pub struct KeyMatches {
    /// voter id -> (person, row_hash)
    pub voter: HashMap<String, (PersonId, i64)>,
    pub email: HashMap<String, (PersonId, i64)>,
    pub phone: HashMap<String, (PersonId, i64)>,
}

impl KeyMatches {
    /// Records that `person` (row hash `row_hash`) holds `key` of kind `kind` (0 a
    /// voter id, 1 an email, 2 a phone: as PostgreSQL's lookups number them).
    pub(crate) fn holds(&mut self, kind: i32, key: String, person: PersonId, row_hash: i64) {
        let dst = match kind {
            0 => &mut self.voter,
            1 => &mut self.email,
            _ => &mut self.phone,
        };
        dst.insert(key, (person, row_hash));
    }
}

/// Which strong key a [`Store::scan_keys`] entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Voter,
    Email,
    Phone,
}

/// A short row for search results and exports.
#[derive(Clone, Serialize, Deserialize)]
pub struct PersonSummary {
    pub id: PersonId,
    pub voter_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub county: Option<String>,
    pub precinct: Option<String>,
    pub email_consent: String,
    pub sms_consent: String,
}

impl std::fmt::Debug for PersonSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonSummary")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub(crate) const ROW_COLS: &str = "voter_id, first_name, middle_name, last_name, suffix, search_name, email, phone, \
    addr_line1, addr_line2, city, state, zip, county, precinct, addr_key, email_consent, sms_consent, \
    custom, provenance, row_hash";
const N_ROW_COLS: usize = 21;
pub(crate) const SUMMARY_COLS: &str = "id, voter_id, first_name, last_name, email, phone, city, state, zip, county, precinct, email_consent, sms_consent";

/// Rows per multi-row statement: SQLite allows 32766 bound values.
const INSERT_CHUNK: usize = 400;
const KEY_CHUNK: usize = 900;

macro_rules! bind_row {
    ($q:expr, $r:expr, $custom:expr, $prov:expr) => {
        $q.bind($r.voter_id.clone())
            .bind($r.first_name.clone())
            .bind($r.middle_name.clone())
            .bind($r.last_name.clone())
            .bind($r.suffix.clone())
            .bind($r.search_name.clone())
            .bind($r.email.clone())
            .bind($r.phone.clone())
            .bind($r.addr_line1.clone())
            .bind($r.addr_line2.clone())
            .bind($r.city.clone())
            .bind($r.state.clone())
            .bind($r.zip.clone())
            .bind($r.county.clone())
            .bind($r.precinct.clone())
            .bind($r.addr_key.clone())
            .bind($r.email_consent.clone())
            .bind($r.sms_consent.clone())
            .bind($custom)
            .bind($prov)
            .bind($r.row_hash)
    };
}

macro_rules! row_from {
    ($r:expr) => {{
        let r = &$r;
        let custom: String = r.try_get("custom")?;
        let prov: String = r.try_get("provenance")?;
        PersonRow {
            voter_id: r.try_get("voter_id")?,
            first_name: r.try_get("first_name")?,
            middle_name: r.try_get("middle_name")?,
            last_name: r.try_get("last_name")?,
            suffix: r.try_get("suffix")?,
            search_name: r.try_get("search_name")?,
            email: r.try_get("email")?,
            phone: r.try_get("phone")?,
            addr_line1: r.try_get("addr_line1")?,
            addr_line2: r.try_get("addr_line2")?,
            city: r.try_get("city")?,
            state: r.try_get("state")?,
            zip: r.try_get("zip")?,
            county: r.try_get("county")?,
            precinct: r.try_get("precinct")?,
            addr_key: r.try_get("addr_key")?,
            email_consent: r.try_get("email_consent")?,
            sms_consent: r.try_get("sms_consent")?,
            custom: serde_json::from_str(&custom)?,
            provenance: serde_json::from_str(&prov)?,
            row_hash: r.try_get("row_hash")?,
        }
    }};
}

macro_rules! summary_from {
    ($r:expr) => {{
        let r = &$r;
        PersonSummary {
            id: PersonId(r.try_get("id")?),
            voter_id: r.try_get("voter_id")?,
            first_name: r.try_get("first_name")?,
            last_name: r.try_get("last_name")?,
            email: r.try_get("email")?,
            phone: r.try_get("phone")?,
            city: r.try_get("city")?,
            state: r.try_get("state")?,
            zip: r.try_get("zip")?,
            county: r.try_get("county")?,
            precinct: r.try_get("precinct")?,
            email_consent: r.try_get("email_consent")?,
            sms_consent: r.try_get("sms_consent")?,
        }
    }};
}

/// Escapes one value for PostgreSQL's COPY text format.
pub(crate) fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        // Nearly every value has nothing to escape: copied whole, not char by char.
        Some(s)
            if !s
                .bytes()
                .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) =>
        {
            out.push_str(s)
        }
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    _ => out.push(c),
                }
            }
        }
    }
}

impl Store {
    /// Which people already hold any of these keys.
    pub async fn find_by_keys(
        &self,
        voter_ids: &[String],
        emails: &[String],
        phones: &[String],
    ) -> Result<KeyMatches> {
        let mut m = KeyMatches::default();
        if let crate::db::Pools::Postgres(p) = &self.pools {
            // One statement for the three key kinds, each an array parameter (planning
            // a 900-marker IN list costs more than the lookups themselves): one round
            // trip per lookup, whatever keys a record has.
            if voter_ids.is_empty() && emails.is_empty() && phones.is_empty() {
                return Ok(m);
            }
            let rows = sqlx::query(
                "SELECT 0::int4 AS kind, voter_id AS k, id, row_hash FROM people WHERE voter_id = ANY($1) \
                 UNION ALL SELECT 1, e.email, p.id, p.row_hash FROM person_emails e JOIN people p ON p.id = e.person_id WHERE e.email = ANY($2) \
                 UNION ALL SELECT 2, e.phone, p.id, p.row_hash FROM person_phones e JOIN people p ON p.id = e.person_id WHERE e.phone = ANY($3)",
            )
            .bind(voter_ids)
            .bind(emails)
            .bind(phones)
            .fetch_all(p)
            .await?;
            for r in rows {
                m.holds(
                    r.try_get("kind")?,
                    r.try_get("k")?,
                    PersonId(r.try_get("id")?),
                    r.try_get("row_hash")?,
                );
            }
            return Ok(m);
        }
        // SQLite: each kind's keys as one JSON array, walked by json_each against the
        // key's index (one bound value per kind instead of one per key).
        if let crate::db::Pools::Sqlite { read, .. } = &self.pools {
            for (sql, keys, dst) in [
                ("SELECT j.value AS k, p.id, p.row_hash FROM json_each($1) j CROSS JOIN people p ON p.voter_id = j.value", voter_ids, &mut m.voter),
                ("SELECT j.value AS k, p.id, p.row_hash FROM json_each($1) j CROSS JOIN person_emails e ON e.email = j.value CROSS JOIN people p ON p.id = e.person_id", emails, &mut m.email),
                ("SELECT j.value AS k, p.id, p.row_hash FROM json_each($1) j CROSS JOIN person_phones e ON e.phone = j.value CROSS JOIN people p ON p.id = e.person_id", phones, &mut m.phone),
            ] {
                if keys.is_empty() {
                    continue;
                }
                for r in sqlx::query(sql).bind(serde_json::to_string(keys)?).fetch_all(read).await? {
                    dst.insert(r.try_get("k")?, (PersonId(r.try_get("id")?), r.try_get("row_hash")?));
                }
            }
        }
        Ok(m)
    }

    /// Visits every strong key in the hub with the person who holds it and that
    /// person's row hash, a page at a time in key order (memory stays bounded
    /// whatever the hub's size). Returns how many keys it visited. A large import
    /// loads its in-memory key index from this (see `narwhal_people::keyindex`).
    pub async fn scan_keys(
        &self,
        visit: &mut (dyn FnMut(KeyKind, &str, PersonId, i64) + Send),
    ) -> Result<u64> {
        self.scan_keys_by(50_000, visit).await
    }

    /// [`Store::scan_keys`], `span` ids at a time.
    async fn scan_keys_by(
        &self,
        span: i64,
        visit: &mut (dyn FnMut(KeyKind, &str, PersonId, i64) + Send),
    ) -> Result<u64> {
        // People are read by ranges of ids, each range's emails and phones by the
        // same range of person ids, so that the row hashes of the range are at hand.
        // A range comes back as one text value per table, a line per key: decoding
        // tens of thousands of rows cost more than the database's reads. Keys never
        // hold spaces or line breaks (they are normalized on parse); a line that does
        // not parse is skipped, which only makes the import ask the database about it.
        const PEOPLE: &str = "SELECT string_agg(CAST(id AS TEXT) || ' ' || CAST(row_hash AS TEXT) || ' ' || COALESCE(voter_id, ''), '
') \
             FROM people WHERE id > $1 AND id <= $2";
        let mut seen = 0u64;
        let mut lo = 0i64;
        let mut hashes: Vec<(i64, i64)> = Vec::new();
        loop {
            let hi = lo.saturating_add(span);
            let text: Option<String> = on_read!(self, p => sqlx::query_scalar(PEOPLE).bind(lo).bind(hi).fetch_one(p).await)?;
            let Some(text) = text else {
                // No one in this range: skip to the next id there is, if any.
                let next: Option<i64> = on_read!(self, p => sqlx::query_scalar("SELECT MIN(id) FROM people WHERE id > $1").bind(hi).fetch_one(p).await)?;
                match next {
                    Some(n) => {
                        lo = n - 1;
                        continue;
                    }
                    None => break,
                }
            };
            hashes.clear();
            for line in text.split('\n') {
                let mut f = line.splitn(3, ' ');
                let (Some(Ok(id)), Some(Ok(h)), Some(voter)) = (
                    f.next().map(str::parse::<i64>),
                    f.next().map(str::parse::<i64>),
                    f.next(),
                ) else {
                    continue;
                };
                hashes.push((id, h));
                if !voter.is_empty() {
                    visit(KeyKind::Voter, voter, PersonId(id), h);
                    seen += 1;
                }
            }
            hashes.sort_unstable();
            for (kind, sql) in [
                (
                    KeyKind::Email,
                    "SELECT string_agg(email || ' ' || CAST(person_id AS TEXT), '
') FROM person_emails WHERE person_id > $1 AND person_id <= $2",
                ),
                (
                    KeyKind::Phone,
                    "SELECT string_agg(phone || ' ' || CAST(person_id AS TEXT), '
') FROM person_phones WHERE person_id > $1 AND person_id <= $2",
                ),
            ] {
                let text: Option<String> = on_read!(self, p => sqlx::query_scalar(sql).bind(lo).bind(hi).fetch_one(p).await)?;
                for line in text.as_deref().unwrap_or_default().split('\n') {
                    let Some((key, Ok(id))) =
                        line.rsplit_once(' ').map(|(k, id)| (k, id.parse::<i64>()))
                    else {
                        continue;
                    };
                    if let Ok(at) = hashes.binary_search_by_key(&id, |e| e.0) {
                        visit(kind, key, PersonId(id), hashes[at].1);
                        seen += 1;
                    }
                }
            }
            lo = hi;
        }
        Ok(seen)
    }

    /// Loads full records for these ids (missing ids are skipped).
    pub async fn load_people(&self, ids: &[PersonId]) -> Result<Vec<PersonRecord>> {
        // Most batches of new people need no one loaded: no round trip for nothing.
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(ids.len());
        let backend = self.backend();
        if let crate::db::Pools::Postgres(p) = &self.pools {
            // One statement (rows with their keys and tags as arrays) instead of four:
            // a person read is one round trip, which is what it costs when the
            // database is far away. Fixed text: the ids come as one array.
            static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                format!(
                    "SELECT p.id, {cols}, p.version, p.created_at, p.updated_at, \
                       ARRAY(SELECT e.email FROM person_emails e WHERE e.person_id = p.id ORDER BY e.created_at, e.email) AS emails, \
                       ARRAY(SELECT e.phone FROM person_phones e WHERE e.person_id = p.id ORDER BY e.created_at, e.phone) AS phones, \
                       ARRAY(SELECT t.name FROM person_tags pt JOIN tags t ON t.id = pt.tag_id WHERE pt.person_id = p.id ORDER BY t.name) AS tags \
                     FROM people p WHERE p.id = ANY($1) ORDER BY p.id",
                    cols = ROW_COLS.split(", ").map(|c| format!("p.{c}")).collect::<Vec<_>>().join(", ")
                )
            });
            let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
            for r in sqlx::query(SQL.as_str()).bind(ids).fetch_all(p).await? {
                out.push(PersonRecord {
                    id: PersonId(r.try_get("id")?),
                    row: row_from!(r),
                    emails: r.try_get("emails")?,
                    phones: r.try_get("phones")?,
                    tags: r.try_get("tags")?,
                    version: r.try_get("version")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                });
            }
            return Ok(out);
        }
        on_read!(self, p => {
            for chunk in ids.chunks(KEY_CHUNK) {
                let ph = placeholders(backend, 1, chunk.len());
                let sql = format!("SELECT id, {ROW_COLS}, version, created_at, updated_at FROM people WHERE id IN ({ph}) ORDER BY id");
                let mut q = sqlx::query(&sql);
                for id in chunk { q = q.bind(id.0); }
                let rows = q.fetch_all(p).await?;
                let mut idx: HashMap<i64, usize> = HashMap::new();
                for r in rows {
                    let id: i64 = r.try_get("id")?;
                    idx.insert(id, out.len());
                    out.push(PersonRecord {
                        id: PersonId(id),
                        row: row_from!(r),
                        emails: vec![],
                        phones: vec![],
                        tags: vec![],
                        version: r.try_get("version")?,
                        created_at: r.try_get("created_at")?,
                        updated_at: r.try_get("updated_at")?,
                    });
                }
                for (table, col) in [("person_emails", "email"), ("person_phones", "phone")] {
                    let sql = format!("SELECT person_id, {col} AS v FROM {table} WHERE person_id IN ({ph}) ORDER BY created_at, {col}");
                    let mut q = sqlx::query(&sql);
                    for id in chunk { q = q.bind(id.0); }
                    for r in q.fetch_all(p).await? {
                        let pid: i64 = r.try_get("person_id")?;
                        if let Some(&i) = idx.get(&pid) {
                            let v: String = r.try_get("v")?;
                            if col == "email" { out[i].emails.push(v) } else { out[i].phones.push(v) }
                        }
                    }
                }
                let sql = format!("SELECT pt.person_id, t.name FROM person_tags pt JOIN tags t ON t.id = pt.tag_id WHERE pt.person_id IN ({ph}) ORDER BY t.name");
                let mut q = sqlx::query(&sql);
                for id in chunk { q = q.bind(id.0); }
                for r in q.fetch_all(p).await? {
                    let pid: i64 = r.try_get("person_id")?;
                    if let Some(&i) = idx.get(&pid) {
                        out[i].tags.push(r.try_get("name")?);
                    }
                }
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(out)
    }

    pub async fn get_person(&self, id: PersonId) -> Result<PersonRecord> {
        self.load_people(&[id])
            .await?
            .pop()
            .ok_or(StoreError::NotFound("person"))
    }

    pub async fn count_people(&self) -> Result<i64> {
        Ok(
            on_read!(self, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM people").fetch_one(p).await)?,
        )
    }

    /// Search by email, phone, voter id or name prefix. `after` pages by id.
    pub async fn search_people(
        &self,
        q: &str,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<PersonSummary>> {
        let q = q.trim();
        let after = after.map(|a| a.0).unwrap_or(0);
        let limit = limit.clamp(1, 500);
        // Name prefixes are index ranges [key, key + U+10FFFF): LIKE cannot use a
        // binary index on SQLite, nor a plain one under a non-C collation on PostgreSQL.
        let (sn, ln) = match self.backend() {
            Backend::Sqlite => ("search_name", "lower(last_name)"),
            Backend::Postgres => (
                "(search_name COLLATE \"C\")",
                "(lower(last_name) COLLATE \"C\")",
            ),
        };
        let name_cond = format!(
            "id IN (SELECT id FROM people WHERE {sn} >= $1 AND {sn} < $4 UNION SELECT id FROM people WHERE {ln} >= $1 AND {ln} < $4)"
        );
        let (cond, arg): (&str, String) = if q.is_empty() {
            ("1 = 1 AND $1 = $1 AND $4 = $4", String::new())
        } else if let Ok(e) = narwhal_domain::Email::parse(q) {
            (
                "id IN (SELECT person_id FROM person_emails WHERE email = $1) AND $4 = $4",
                e.as_str().to_string(),
            )
        } else if let Ok(ph) = narwhal_domain::PhoneE164::parse(q) {
            (
                "id IN (SELECT person_id FROM person_phones WHERE phone = $1) AND $4 = $4",
                ph.as_str().to_string(),
            )
        } else if q.chars().any(|c| c.is_ascii_digit()) {
            ("voter_id = $1 AND $4 = $4", q.to_ascii_uppercase())
        } else {
            (
                name_cond.as_str(),
                narwhal_domain::text::collapse_whitespace(q).to_lowercase(),
            )
        };
        let upper = format!("{arg}\u{10FFFF}");
        let sql = format!(
            "SELECT {SUMMARY_COLS} FROM people WHERE {cond} AND id > $2 ORDER BY id LIMIT $3"
        );
        on_read!(self, p => {
            let rows = sqlx::query(&sql).bind(arg).bind(after).bind(limit).bind(upper).fetch_all(p).await?;
            rows.iter().map(|r| Ok(summary_from!(r))).collect()
        })
    }

    /// Commits a batch of inserts and updates with their keys, tags and audit entries
    /// in one transaction. Returns the ids given to the inserts, in order.
    pub async fn apply_changes(&self, cs: &ChangeSet) -> Result<Vec<PersonId>> {
        let now = now_ms();
        let encoded = self.check_and_encode(cs, now)?;
        self.write_changes(cs, encoded, now).await
    }

    /// Checks the new people's custom fields and, on SQLite, encodes their rows as
    /// the transaction binds them.
    fn check_and_encode(&self, cs: &ChangeSet, now: i64) -> Result<Option<EncodedPeople>> {
        for np in &cs.inserts {
            np.check_custom()?;
        }
        Ok(match self.backend() {
            Backend::Sqlite if !cs.inserts.is_empty() => {
                Some(EncodedPeople::sqlite(&cs.inserts, now)?)
            }
            _ => None,
        })
    }

    /// [`Store::apply_changes`], with SQLite's transaction on the commit thread
    /// ([`crate::commit_thread`]); the new rows are encoded here first, while the
    /// writer may still be busy with the batch before. A large import resolves its
    /// next batch on the runtime meanwhile, tens of milliseconds of CPU at a time:
    /// with the transaction on the same runtime, each of its statements, and the
    /// write connection's return to the pool at its end, waited for a worker to come
    /// free, and the writer stood idle about a third of the time.
    pub async fn apply_changes_on_writer(
        &self,
        cs: std::sync::Arc<ChangeSet>,
    ) -> Result<Vec<PersonId>> {
        if self.backend() != Backend::Sqlite {
            return self.apply_changes(&cs).await;
        }
        let now = now_ms();
        let encoded = self.check_and_encode(&cs, now)?;
        let store = self.clone();
        crate::commit_thread::on_commit_thread(async move {
            store.write_changes(&cs, encoded, now).await
        })
        .await
    }

    /// The transaction of [`Store::apply_changes`], with the new rows already encoded
    /// on SQLite.
    async fn write_changes(
        &self,
        cs: &ChangeSet,
        encoded: Option<EncodedPeople>,
        now: i64,
    ) -> Result<Vec<PersonId>> {
        let backend = self.backend();
        let n = cs.inserts.len() as i64;
        // Tags used by the batch, created on demand.
        let mut tag_names: Vec<&str> = cs
            .inserts
            .iter()
            .flat_map(|i| i.tags.iter().map(String::as_str))
            .collect();
        tag_names.extend(cs.updates.iter().flat_map(|u| {
            u.add_tags
                .iter()
                .chain(u.remove_tags.iter())
                .map(String::as_str)
        }));
        tag_names.sort_unstable();
        tag_names.dedup();

        if let crate::db::Pools::Postgres(p) = &self.pools {
            if one_statement_fits(cs) {
                return insert_new_people_one_statement(p, cs, now).await;
            }
        }
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            // Reserve ids so that keys and tags can be written without relying on RETURNING order.
            let ids: Vec<i64> = if n == 0 {
                vec![]
            } else if backend == Backend::Sqlite {
                // AUTOINCREMENT's counter: never reuses an id, even one a merge removed.
                let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'people'").fetch_optional(&mut *tx).await?;
                let first = seq.unwrap_or(0) + 1;
                (first..first + n).collect()
            } else {
                sqlx::query_scalar("SELECT nextval('people_id_seq') FROM generate_series(1, $1)").bind(n).fetch_all(&mut *tx).await?
            };

            let tag_ids: HashMap<String, i64> = if tag_names.is_empty() {
                HashMap::new()
            } else {
                tx.ensure_tags(&tag_names).await?
            };
            if tag_ids.len() != tag_names.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} of {} tags found after creating them",
                    tag_ids.len(),
                    tag_names.len()
                )));
            }

            // People rows.
            BulkInsert::insert_people(&mut tx, &cs.inserts, &ids, now, encoded).await?;

            // Updates, each guarded by its version.
            for u in &cs.updates {
                let sets: Vec<String> = ROW_COLS.split(", ").enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
                let sql = format!(
                    "UPDATE people SET {}, version = version + 1, updated_at = ${} WHERE id = ${} AND version = ${}",
                    sets.join(", "), N_ROW_COLS + 1, N_ROW_COLS + 2, N_ROW_COLS + 3
                );
                let r = &u.row;
                let q = bind_row!(sqlx::query(&sql), r, json_text(&r.custom), json_text(&r.provenance));
                let res = q.bind(now).bind(u.id.0).bind(u.expected_version).execute(&mut *tx).await
                    .map_err(|e| StoreError::from_unique(e, "a person with that voter id"))?;
                if res.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!("person {} was changed concurrently; retry", u.id)));
                }
            }

            // Keys and tags: (person id, value) pairs for every table.
            // New people's keys must all land: if one is taken, another writer created
            // that person first, and the batch is retried so that it resolves to them.
            let mut new_emails: Vec<(i64, &str)> = Vec::new();
            let mut new_phones: Vec<(i64, &str)> = Vec::new();
            let mut emails: Vec<(i64, &str)> = Vec::new();
            let mut phones: Vec<(i64, &str)> = Vec::new();
            let mut ptags: Vec<(i64, i64)> = Vec::new();
            let mut new_ptags: Vec<(i64, i64)> = Vec::new();
            for (i, np) in cs.inserts.iter().enumerate() {
                new_emails.extend(np.emails.iter().map(|e| (ids[i], e.as_str())));
                new_phones.extend(np.phones.iter().map(|e| (ids[i], e.as_str())));
                new_ptags.extend(np.tags.iter().filter_map(|t| tag_ids.get(t).map(|&tid| (ids[i], tid))));
            }
            for u in &cs.updates {
                emails.extend(u.add_emails.iter().map(|e| (u.id.0, e.as_str())));
                phones.extend(u.add_phones.iter().map(|e| (u.id.0, e.as_str())));
                ptags.extend(u.add_tags.iter().filter_map(|t| tag_ids.get(t).map(|&tid| (u.id.0, tid))));
                for t in &u.remove_tags {
                    if let Some(tid) = tag_ids.get(t) {
                        sqlx::query("DELETE FROM person_tags WHERE person_id = $1 AND tag_id = $2").bind(u.id.0).bind(tid).execute(&mut *tx).await?;
                    }
                }
            }
            for (table, col, pairs, strict) in [
                ("person_emails", "email", &new_emails, true),
                ("person_phones", "phone", &new_phones, true),
                ("person_emails", "email", &emails, false),
                ("person_phones", "phone", &phones, false),
            ] {
                if pairs.is_empty() {
                    continue;
                }
                if strict {
                    tx.insert_new_keys(table, col, pairs, now).await?;
                } else {
                    tx.insert_keys(table, col, pairs, now).await?;
                }
            }
            if !new_ptags.is_empty() {
                // A person's tags are unique: a tag listed twice would fail COPY.
                new_ptags.sort_unstable();
                new_ptags.dedup();
                tx.insert_new_tags(&new_ptags).await?;
            }
            if !ptags.is_empty() {
                tx.insert_tags(&ptags).await?;
            }

            // Audit entries naming "#N" get the N-th new person's id; others keep theirs.
            let audit: Vec<(&AuditEntry, String)> = cs
                .audit
                .iter()
                .map(|a| {
                    let entity_id = match names_new_person(&a.entity_id, ids.len()) {
                        Some(i) => ids[i].to_string(),
                        None => a.entity_id.clone(),
                    };
                    (a, entity_id)
                })
                .collect();
            if !audit.is_empty() {
                tx.insert_audit(&audit, now).await?;
            }
            tx.commit().await?;
            Ok(ids.into_iter().map(PersonId).collect())
        })
    }
}

/// Which of a batch's `n` new people an audit entry names, when its entity id is
/// `#N` (the N-th insert, whose id is only known once it is written).
fn names_new_person(entity_id: &str, n: usize) -> Option<usize> {
    entity_id
        .strip_prefix('#')
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&i| i < n)
}

/// The most new people (with no updates and no tags beside them) that PostgreSQL writes
/// in one statement; larger batches (imports) take COPY.
const ONE_STATEMENT_MAX: i64 = 256;

/// The one statement that writes a small batch of new people on PostgreSQL: ids from
/// the sequence, the rows, their emails and phones and the batch's audit entries. Its
/// text is fixed (arrays, not a VALUES list per batch size), so every connection
/// prepares it once. It is one round trip where the general path takes seven or more
/// (BEGIN, ids, COPY, keys, one per audit entry, COMMIT), which is what a donor's
/// resolution costs when the database is far away. A key or voter id another writer
/// took meanwhile fails the whole statement (unique violation), so nothing is written
/// and the caller resolves again, as with the general path's strict key check.
/// The common table expressions of [`INSERT_NEW_PEOPLE`], ending with the audit
/// entries' `a`; `v` holds each new person's `ord` (1-based) and `id`. `$pre` is
/// common table expressions put first (each ending with a comma), and nothing is
/// written unless `$guard` holds (a condition on them). The donation service's
/// intake adds its own (see `Store::begin_donations_for_new_people`).
macro_rules! new_people_ctes {
    ($pre:literal, $guard:literal) => {
        concat!("WITH ", $pre, "v AS MATERIALIZED ( \
       SELECT nextval('people_id_seq') AS id, u.* FROM unnest( \
         $1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], \
         $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::bigint[]) \
       AS u (ord, voter_id, first_name, middle_name, last_name, suffix, search_name, email, phone, \
         addr_line1, addr_line2, city, state, zip, county, precinct, addr_key, email_consent, sms_consent, \
         custom, provenance, row_hash) WHERE ", $guard, "), \
     p AS (INSERT INTO people (id, voter_id, first_name, middle_name, last_name, suffix, search_name, email, phone, \
         addr_line1, addr_line2, city, state, zip, county, precinct, addr_key, email_consent, sms_consent, \
         custom, provenance, row_hash, version, created_at, updated_at) \
       SELECT id, voter_id, first_name, middle_name, last_name, suffix, search_name, email, phone, \
         addr_line1, addr_line2, city, state, zip, county, precinct, addr_key, email_consent, sms_consent, \
         custom, provenance, row_hash, 1, $23, $23 FROM v), \
     e AS (INSERT INTO person_emails (person_id, email, source_id, created_at) \
       SELECT v.id, k.val, NULL, $23 FROM unnest($24::int[], $25::text[]) AS k (ord, val) JOIN v USING (ord)), \
     ph AS (INSERT INTO person_phones (person_id, phone, source_id, created_at) \
       SELECT v.id, k.val, NULL, $23 FROM unnest($26::int[], $27::text[]) AS k (ord, val) JOIN v USING (ord)), \
     a AS (INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) \
       SELECT $23, x.actor, x.action, x.entity, COALESCE(v.id::text, x.entity_id), x.detail \
       FROM unnest($28::int[], $29::text[], $30::text[], $31::text[], $32::text[], $33::text[]) \
         AS x (ord, actor, action, entity, entity_id, detail) LEFT JOIN v USING (ord) WHERE ", $guard, ") ")
    };
}
pub(crate) use new_people_ctes;

const INSERT_NEW_PEOPLE: &str = concat!(
    new_people_ctes!("", "TRUE"),
    " SELECT ord, id FROM v ORDER BY ord"
);

async fn insert_new_people_one_statement(
    p: &sqlx::PgPool,
    cs: &ChangeSet,
    now: i64,
) -> Result<Vec<PersonId>> {
    let n = cs.inserts.len();
    let rows = new_people_statement(p, cs, now, INSERT_NEW_PEOPLE, Vec::new()).await?;
    if rows.len() != n {
        return Err(StoreError::Corrupt(format!(
            "{} of {n} new people were written",
            rows.len()
        )));
    }
    rows.iter()
        .map(|r| Ok(PersonId(r.try_get("id")?)))
        .collect()
}

/// Whether PostgreSQL writes these changes as [`INSERT_NEW_PEOPLE`]: new people only,
/// at most [`ONE_STATEMENT_MAX`] of them, without tags.
pub(crate) fn one_statement_fits(cs: &ChangeSet) -> bool {
    let n = cs.inserts.len() as i64;
    n > 0
        && n <= ONE_STATEMENT_MAX
        && cs.updates.is_empty()
        && cs.inserts.iter().all(|i| i.tags.is_empty())
}

/// A parameter of a statement built on [`new_people_ctes`], after the people's own.
pub(crate) enum Extra {
    Text(String),
    Texts(Vec<String>),
}

/// Runs `sql`, which starts with [`new_people_ctes`], with the new people of `cs`
/// bound as its parameters `$1` to `$33` and `extra` from `$34` on. The
/// statement is its own transaction; a unique key another writer took meanwhile fails
/// it whole, as [`StoreError::Conflict`].
pub(crate) async fn new_people_statement(
    p: &sqlx::PgPool,
    cs: &ChangeSet,
    now: i64,
    sql: &str,
    extra: Vec<Extra>,
) -> Result<Vec<sqlx::postgres::PgRow>> {
    let n = cs.inserts.len();
    let mut cols: [Vec<Option<&str>>; N_ROW_COLS - 1] =
        std::array::from_fn(|_| Vec::with_capacity(n));
    let mut ords: Vec<i32> = Vec::with_capacity(n);
    let mut hashes: Vec<i64> = Vec::with_capacity(n);
    let (mut e_ord, mut e_val, mut p_ord, mut p_val) = (vec![], vec![], vec![], vec![]);
    let customs: Vec<std::borrow::Cow<'_, str>> =
        cs.inserts.iter().map(NewPerson::custom_text).collect();
    let provs: Vec<String> = cs
        .inserts
        .iter()
        .map(|i| json_text(&i.row.provenance))
        .collect();
    for (i, np) in cs.inserts.iter().enumerate() {
        let r = &np.row;
        let ord = i as i32 + 1;
        ords.push(ord);
        hashes.push(r.row_hash);
        for (c, f) in cols.iter_mut().zip(text_fields(r, &customs[i], &provs[i])) {
            c.push(f);
        }
        for e in &np.emails {
            e_ord.push(ord);
            e_val.push(e.as_str());
        }
        for ph in &np.phones {
            p_ord.push(ord);
            p_val.push(ph.as_str());
        }
    }
    // Audit entries naming "#N" get the N-th new person's id; others keep theirs.
    let mut a_ord: Vec<Option<i32>> = Vec::with_capacity(cs.audit.len());
    let (mut a_actor, mut a_action, mut a_entity, mut a_id, mut a_detail) =
        (vec![], vec![], vec![], vec![], vec![]);
    for a in &cs.audit {
        a_ord.push(names_new_person(&a.entity_id, n).map(|i| i as i32 + 1));
        a_actor.push(a.actor.as_str());
        a_action.push(a.action.as_str());
        a_entity.push(a.entity.as_str());
        a_id.push(a.entity_id.as_str());
        a_detail.push(a.detail.to_string());
    }
    let mut q = sqlx::query(sql).bind(ords);
    for c in cols {
        q = q.bind(c);
    }
    q = q
        .bind(hashes)
        .bind(now)
        .bind(e_ord)
        .bind(e_val)
        .bind(p_ord)
        .bind(p_val)
        .bind(a_ord)
        .bind(a_actor)
        .bind(a_action)
        .bind(a_entity)
        .bind(a_id)
        .bind(a_detail);
    for x in extra {
        q = match x {
            Extra::Text(t) => q.bind(t),
            Extra::Texts(t) => q.bind(t),
        };
    }
    q.fetch_all(p).await.map_err(|e| {
        StoreError::from_unique(
            e,
            "a key of a new person was claimed by another writer; retry",
        )
    })
}

/// New people's rows bound as statement arguments before the write transaction
/// begins (SQLite, one set per multi-row INSERT of [`INSERT_CHUNK`] rows): cloning
/// and encoding 25 values a row, the provenance serialized among them, then happens
/// while the single writer still serves the batch before, instead of inside this
/// batch's transaction with the writer waiting. The ids are not among them:
/// AUTOINCREMENT gives the rows the same consecutive ids that `apply_changes`
/// reserves from the sequence, which the insert checks. Bound values, not one JSON
/// array: `json_each` renders each row's array back to text for `->>` to parse
/// again, which cost more than sqlx's binding.
pub(crate) struct EncodedPeople(Vec<sqlx::sqlite::SqliteArguments<'static>>);

impl EncodedPeople {
    pub(crate) fn sqlite(inserts: &[NewPerson], now: i64) -> Result<Self> {
        use sqlx::Arguments;
        let per = N_ROW_COLS + 3;
        let mut out = Vec::with_capacity(inserts.len().div_ceil(INSERT_CHUNK));
        for chunk in inserts.chunks(INSERT_CHUNK) {
            let mut a = sqlx::sqlite::SqliteArguments::default();
            a.reserve(chunk.len() * per, 0);
            for np in chunk {
                let r = &np.row;
                let (custom, prov) = (np.custom_text(), json_text(&r.provenance));
                for t in text_fields(r, &custom, &prov) {
                    a.add(t.map(str::to_owned)).map_err(encode_error)?;
                }
                a.add(r.row_hash).map_err(encode_error)?;
                a.add(1i64).map_err(encode_error)?;
                a.add(now).map_err(encode_error)?;
                a.add(now).map_err(encode_error)?;
            }
            out.push(a);
        }
        Ok(Self(out))
    }
}

fn encode_error(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Invalid(format!("a value could not be bound: {e}"))
}

/// The multi-row INSERT of `n` new people on SQLite, without their ids (AUTOINCREMENT).
fn sqlite_people_insert(n: usize) -> String {
    let one = format!("({})", placeholders(Backend::Sqlite, 1, N_ROW_COLS + 3));
    format!(
        "INSERT INTO people ({ROW_COLS}, version, created_at, updated_at) VALUES {}",
        vec![one; n].join(", ")
    )
}

/// [`sqlite_people_insert`] of a whole chunk, made once.
fn sqlite_people_insert_full() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| sqlite_people_insert(INSERT_CHUNK))
}

/// The fastest way each backend takes many new rows: on SQLite multi-row INSERTs for
/// people and, for keys and tags (two scalars a row), the batch as one JSON array
/// walked by `json_each` (one bound value per statement); on PostgreSQL COPY and arrays.
pub(crate) trait BulkInsert {
    /// Inserts the new people with the ids `ids` (consecutive from the table's
    /// sequence). `encoded` is their rows as [`EncodedPeople::sqlite`] made them
    /// before the transaction, where the backend takes them so.
    async fn insert_people(
        &mut self,
        inserts: &[NewPerson],
        ids: &[i64],
        now: i64,
        encoded: Option<EncodedPeople>,
    ) -> Result<()>;
    /// Inserts (person id, key) pairs, skipping keys already held; returns how many landed.
    async fn insert_keys(
        &mut self,
        table: &str,
        col: &str,
        pairs: &[(i64, &str)],
        now: i64,
    ) -> Result<u64>;
    /// Inserts the keys of people this transaction created: every one must land,
    /// and one that another writer holds fails the transaction with `Conflict`.
    async fn insert_new_keys(
        &mut self,
        table: &str,
        col: &str,
        pairs: &[(i64, &str)],
        now: i64,
    ) -> Result<()> {
        let n = self.insert_keys(table, col, pairs, now).await?;
        if n != pairs.len() as u64 {
            return Err(StoreError::Conflict(format!(
                "an {col} was claimed by another writer; retry"
            )));
        }
        Ok(())
    }
    /// Creates the tags that do not exist yet and returns every named tag's id: two
    /// statements for the batch, not two per tag.
    async fn ensure_tags(&mut self, names: &[&str]) -> Result<HashMap<String, i64>>;
    /// Inserts (person id, tag id) pairs, skipping those present.
    async fn insert_tags(&mut self, pairs: &[(i64, i64)]) -> Result<()>;
    /// Inserts the tags of people this transaction created (none can be present).
    async fn insert_new_tags(&mut self, pairs: &[(i64, i64)]) -> Result<()> {
        self.insert_tags(pairs).await
    }
    /// Inserts audit entries with their entity ids, in order, in one statement (one
    /// round trip instead of one per entry: a batch of new donors writes one each).
    async fn insert_audit(&mut self, rows: &[(&AuditEntry, String)], now: i64) -> Result<()>;
}

/// Rows as one JSON array of arrays, for `json_each` on SQLite.
fn json_rows<T: Serialize>(rows: impl Iterator<Item = T>) -> Result<String> {
    let mut buf = Vec::with_capacity(1 << 16);
    buf.push(b'[');
    for (i, r) in rows.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &r)?;
    }
    buf.push(b']');
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).map_err(|e| StoreError::Invalid(e.to_string()))
}

impl BulkInsert for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn ensure_tags(&mut self, names: &[&str]) -> Result<HashMap<String, i64>> {
        let json = serde_json::to_string(names)?;
        sqlx::query("INSERT INTO tags (name) SELECT value FROM json_each($1) WHERE true ON CONFLICT (name) DO NOTHING")
            .bind(&json)
            .execute(&mut **self)
            .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.name, t.id FROM json_each($1) j JOIN tags t ON t.name = j.value",
        )
        .bind(&json)
        .fetch_all(&mut **self)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn insert_people(
        &mut self,
        inserts: &[NewPerson],
        ids: &[i64],
        now: i64,
        encoded: Option<EncodedPeople>,
    ) -> Result<()> {
        let EncodedPeople(chunks) = match encoded {
            Some(e) => e,
            None => EncodedPeople::sqlite(inserts, now)?,
        };
        // AUTOINCREMENT numbers the rows one after another from the sequence, as
        // `ids` does; the last one proves it.
        let mut last = None;
        for (args, rows) in chunks.into_iter().zip(inserts.chunks(INSERT_CHUNK)) {
            let partial;
            let sql = if rows.len() == INSERT_CHUNK {
                sqlite_people_insert_full()
            } else {
                partial = sqlite_people_insert(rows.len());
                &partial
            };
            let r = sqlx::query_with(sql, args)
                .execute(&mut **self)
                .await
                .map_err(|e| StoreError::from_unique(e, "a person with that voter id"))?;
            last = Some(r.last_insert_rowid());
        }
        if last != ids.last().copied() {
            return Err(StoreError::Corrupt(format!(
                "new people were numbered up to {last:?}, not {:?}",
                ids.last()
            )));
        }
        Ok(())
    }

    async fn insert_keys(
        &mut self,
        table: &str,
        col: &str,
        pairs: &[(i64, &str)],
        now: i64,
    ) -> Result<u64> {
        // `WHERE true`: an INSERT ... SELECT with an upsert clause needs a WHERE to parse.
        let sql = format!(
            "INSERT INTO {table} (person_id, {col}, source_id, created_at) SELECT value ->> 0, value ->> 1, NULL, $2 FROM json_each($1) WHERE true ON CONFLICT ({col}) DO NOTHING"
        );
        let r = sqlx::query(&sql)
            .bind(json_rows(pairs.iter())?)
            .bind(now)
            .execute(&mut **self)
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_tags(&mut self, pairs: &[(i64, i64)]) -> Result<()> {
        sqlx::query("INSERT INTO person_tags (person_id, tag_id) SELECT value ->> 0, value ->> 1 FROM json_each($1) WHERE true ON CONFLICT DO NOTHING")
            .bind(json_rows(pairs.iter())?)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn insert_audit(&mut self, rows: &[(&AuditEntry, String)], now: i64) -> Result<()> {
        // The detail goes as JSON text inside the array, so `->>` gives that text back.
        let json = json_rows(
            rows.iter()
                .map(|(a, id)| (&a.actor, &a.action, &a.entity, id, a.detail.to_string())),
        )?;
        sqlx::query("INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) SELECT $1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each($2) ORDER BY key")
            .bind(now)
            .bind(json)
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl BulkInsert for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn ensure_tags(&mut self, names: &[&str]) -> Result<HashMap<String, i64>> {
        sqlx::query(
            "INSERT INTO tags (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
        )
        .bind(names)
        .execute(&mut **self)
        .await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, id FROM tags WHERE name = ANY($1)")
                .bind(names)
                .fetch_all(&mut **self)
                .await?;
        Ok(rows.into_iter().collect())
    }

    async fn insert_people(
        &mut self,
        inserts: &[NewPerson],
        ids: &[i64],
        now: i64,
        _encoded: Option<EncodedPeople>,
    ) -> Result<()> {
        if inserts.is_empty() {
            return Ok(());
        }
        copy_people(self, inserts, ids, now).await
    }

    /// COPY: an `INSERT ... ON CONFLICT DO NOTHING` took 7 to 9 µs a key (a
    /// speculative insertion each), and for new people a key already taken fails the
    /// batch anyway. A taken key fails the COPY with a unique violation: `Conflict`.
    async fn insert_new_keys(
        &mut self,
        table: &str,
        col: &str,
        pairs: &[(i64, &str)],
        now: i64,
    ) -> Result<()> {
        let now_s = now.to_string();
        let mut buf = String::with_capacity(pairs.len() * 48);
        for (pid, key) in pairs {
            buf.push_str(&pid.to_string());
            buf.push('\t');
            copy_field(&mut buf, Some(key));
            buf.push_str("\t\\N\t");
            buf.push_str(&now_s);
            buf.push('\n');
        }
        let what = format!("an {col} was claimed by another writer; retry");
        let mut copy = self
            .copy_in_raw(&format!(
                "COPY {table} (person_id, {col}, source_id, created_at) FROM STDIN"
            ))
            .await?;
        copy.send(buf.into_bytes())
            .await
            .map_err(|e| StoreError::from_unique(e, &what))?;
        copy.finish()
            .await
            .map_err(|e| StoreError::from_unique(e, &what))?;
        Ok(())
    }

    /// COPY, as for keys: people created in this transaction have no tags yet.
    async fn insert_new_tags(&mut self, pairs: &[(i64, i64)]) -> Result<()> {
        let mut buf = String::with_capacity(pairs.len() * 16);
        for (pid, tid) in pairs {
            buf.push_str(&pid.to_string());
            buf.push('\t');
            buf.push_str(&tid.to_string());
            buf.push('\n');
        }
        let mut copy = self
            .copy_in_raw("COPY person_tags (person_id, tag_id) FROM STDIN")
            .await?;
        copy.send(buf.into_bytes()).await?;
        copy.finish().await?;
        Ok(())
    }

    async fn insert_keys(
        &mut self,
        table: &str,
        col: &str,
        pairs: &[(i64, &str)],
        now: i64,
    ) -> Result<u64> {
        let sql = format!(
            "INSERT INTO {table} (person_id, {col}, source_id, created_at) SELECT u.p, u.v, NULL, $3 FROM unnest($1::bigint[], $2::text[]) AS u(p, v) ON CONFLICT ({col}) DO NOTHING"
        );
        let (pids, vals): (Vec<i64>, Vec<&str>) = pairs.iter().copied().unzip();
        let r = sqlx::query(&sql)
            .bind(pids)
            .bind(vals)
            .bind(now)
            .execute(&mut **self)
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_tags(&mut self, pairs: &[(i64, i64)]) -> Result<()> {
        let (pids, tids): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
        sqlx::query("INSERT INTO person_tags (person_id, tag_id) SELECT * FROM unnest($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING")
            .bind(pids)
            .bind(tids)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn insert_audit(&mut self, rows: &[(&AuditEntry, String)], now: i64) -> Result<()> {
        let mut cols: [Vec<&str>; 4] = std::array::from_fn(|_| Vec::with_capacity(rows.len()));
        let mut details: Vec<String> = Vec::with_capacity(rows.len());
        for (a, id) in rows {
            for (c, v) in cols
                .iter_mut()
                .zip([a.actor.as_str(), &a.action, &a.entity, id])
            {
                c.push(v);
            }
            details.push(a.detail.to_string());
        }
        let [actors, actions, entities, ids] = cols;
        sqlx::query("INSERT INTO audit_log (at, actor, action, entity, entity_id, detail) SELECT $1, u.actor, u.action, u.entity, u.entity_id, u.detail FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u (actor, action, entity, entity_id, detail, n) ORDER BY n")
            .bind(now)
            .bind(actors)
            .bind(actions)
            .bind(entities)
            .bind(ids)
            .bind(details)
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

/// A row's columns in `ROW_COLS` order up to `provenance` (all but `row_hash`), as
/// text: what COPY and the one-statement insert both send.
fn text_fields<'a>(
    r: &'a PersonRow,
    custom: &'a str,
    prov: &'a str,
) -> [Option<&'a str>; N_ROW_COLS - 1] {
    [
        r.voter_id.as_deref(),
        r.first_name.as_deref(),
        r.middle_name.as_deref(),
        r.last_name.as_deref(),
        r.suffix.as_deref(),
        Some(&r.search_name),
        r.email.as_deref(),
        r.phone.as_deref(),
        r.addr_line1.as_deref(),
        r.addr_line2.as_deref(),
        r.city.as_deref(),
        r.state.as_deref(),
        r.zip.as_deref(),
        r.county.as_deref(),
        r.precinct.as_deref(),
        r.addr_key.as_deref(),
        Some(&r.email_consent),
        Some(&r.sms_consent),
        Some(custom),
        Some(prov),
    ]
}

async fn copy_people(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    inserts: &[NewPerson],
    ids: &[i64],
    now: i64,
) -> Result<()> {
    let mut buf = String::with_capacity(inserts.len() * 400);
    for (np, id) in inserts.iter().zip(ids) {
        let r = &np.row;
        let custom = np.custom_text();
        let prov = json_text(&r.provenance);
        let hash = r.row_hash.to_string();
        let id_s = id.to_string();
        let now_s = now.to_string();
        let fields = std::iter::once(Some(id_s.as_str()))
            .chain(text_fields(r, &custom, &prov))
            .chain([Some(hash.as_str()), Some("1"), Some(&now_s), Some(&now_s)]);
        for (i, f) in fields.enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            copy_field(&mut buf, f);
        }
        buf.push('\n');
    }
    let sql = format!("COPY people (id, {ROW_COLS}, version, created_at, updated_at) FROM STDIN");
    let mut copy = tx.copy_in_raw(&sql).await?;
    copy.send(buf.into_bytes())
        .await
        .map_err(|e| StoreError::from_unique(e, "a person with that voter id"))?;
    copy.finish()
        .await
        .map_err(|e| StoreError::from_unique(e, "a person with that voter id"))?;
    Ok(())
}

/// A JSON object as stored text (serialized in place, without cloning it into a `Value`).
pub(crate) fn json_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::test_support::TestDb;

    fn someone(i: i64) -> NewPerson {
        NewPerson {
            row: PersonRow {
                // Every third person has no voter id; every other one an email.
                voter_id: (i % 3 != 0).then(|| format!("V{i}")),
                email_consent: "unknown".into(),
                sms_consent: "unknown".into(),
                row_hash: 1000 + i,
                ..Default::default()
            },
            custom_json: None,
            emails: if i % 2 == 0 {
                vec![format!("p{i}@example.org"), format!("q{i}@example.org")]
            } else {
                vec![]
            },
            phones: vec![format!("+1614555{i:04}")],
            tags: vec![],
        }
    }

    /// Every key comes back once with its holder and the holder's row hash, across
    /// ranges of ids with no one in them.
    async fn scan_keys_visits_every_key_with_its_holder(db: TestDb) {
        let store = &db.store;
        let cs = ChangeSet {
            inserts: (1..=12).map(someone).collect(),
            ..Default::default()
        };
        let ids = store.apply_changes(&cs).await.unwrap();
        // A hole of six ids: three ranges of two with no one in them.
        let gone: Vec<i64> = ids[3..9].iter().map(|i| i.0).collect();
        on_write!(store, p => {
            for t in ["person_emails", "person_phones"] {
                sqlx::query(&format!("DELETE FROM {t} WHERE person_id >= $1 AND person_id <= $2"))
                    .bind(gone[0]).bind(gone[5]).execute(p).await.unwrap();
            }
            sqlx::query("DELETE FROM people WHERE id >= $1 AND id <= $2")
                .bind(gone[0]).bind(gone[5]).execute(p).await.unwrap();
        });
        let mut want: Vec<(KeyKind, String, i64, i64)> = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            if gone.contains(&id.0) {
                continue;
            }
            let np = &cs.inserts[k];
            let h = np.row.row_hash;
            want.extend(
                np.row
                    .voter_id
                    .iter()
                    .map(|v| (KeyKind::Voter, v.clone(), id.0, h)),
            );
            want.extend(
                np.emails
                    .iter()
                    .map(|e| (KeyKind::Email, e.clone(), id.0, h)),
            );
            want.extend(
                np.phones
                    .iter()
                    .map(|p| (KeyKind::Phone, p.clone(), id.0, h)),
            );
        }
        want.sort_by(|a, b| (a.1.as_str(), a.2).cmp(&(b.1.as_str(), b.2)));
        for span in [2, 50_000] {
            let mut got = Vec::new();
            let n = store
                .scan_keys_by(span, &mut |kind, key, id, h| {
                    got.push((kind, key.to_string(), id.0, h))
                })
                .await
                .unwrap();
            got.sort_by(|a, b| (a.1.as_str(), a.2).cmp(&(b.1.as_str(), b.2)));
            assert_eq!(n as usize, got.len());
            assert_eq!(got, want, "span {span}");
        }
    }

    #[test]
    fn copy_fields_escape_only_what_copy_reads_specially() {
        let mut out = String::new();
        copy_field(&mut out, Some("Núñez O'Brien"));
        out.push('|');
        copy_field(&mut out, None);
        out.push('|');
        copy_field(&mut out, Some("a\\b\tc\nd\re"));
        assert_eq!(out, "Núñez O'Brien|\\N|a\\\\b\\tc\\nd\\re");
    }

    /// Values with characters COPY reads specially come back as they were written.
    async fn copied_rows_keep_tabs_and_backslashes(db: TestDb) {
        let mut np = someone(2);
        np.row.first_name = Some("Tab\there".into());
        np.row.last_name = Some("Back\\slash\nand more".into());
        // More than a one-statement batch, so that PostgreSQL takes COPY.
        let mut inserts: Vec<NewPerson> = (300..600).map(someone).collect();
        inserts.push(np.clone());
        let cs = ChangeSet {
            inserts,
            ..Default::default()
        };
        let ids = db.store.apply_changes(&cs).await.unwrap();
        let got = db.store.get_person(*ids.last().unwrap()).await.unwrap();
        assert_eq!(got.row.first_name, np.row.first_name);
        assert_eq!(got.row.last_name, np.row.last_name);
        assert_eq!(got.emails, np.emails);
    }

    crate::both_backends!(
        scan_keys_visits_every_key_with_its_holder,
        copied_rows_keep_tabs_and_backslashes
    );
}
