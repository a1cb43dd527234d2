//! Streaming CSV/TSV imports of any size.
//!
//! A parser thread reads the file record by record (bytes, so that bad UTF-8 is a
//! rejected row and not a crash), turns each row into a [`PersonDraft`] through the
//! [`Mapping`], and hands batches to the writer, which resolves and commits each batch
//! in one transaction through [`Hub::upsert_batch`]. A row is therefore either fully
//! stored or not at all. Every rejected row goes to the rejects file with its line
//! number and reason. Because resolution is by strong keys and unchanged rows are
//! recognized by fingerprint, running the same file again changes nothing.

use crate::hub::Hub;
use crate::keyindex::KeyIndex;
use crate::mapping::{Encoding, Mapping, MappingError};
use crate::PeopleError;
use narwhal_domain::ImportId;
use narwhal_domain::{
    ConsentState, CustomFieldKey, Email, PersonDraft, PhoneE164, PostalAddress, VoterId,
};
use narwhal_store::imports::ImportCounts;
use narwhal_store::Store;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows longer than this are rejected rather than parsed.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub batch_rows: usize,
    pub rejects_path: PathBuf,
    /// A file estimated to hold at least this many rows, and at least twice as many
    /// as the hub has people, is a bulk load: the query-only indexes of people are
    /// built once at its end instead of row by row (see `narwhal_store::bulk_load`).
    pub bulk_from_rows: u64,
}

impl ImportOptions {
    /// Rejects go next to the input: `FILE.rejects.csv`.
    pub fn beside(path: &Path) -> Self {
        let mut r = path.as_os_str().to_owned();
        r.push(".rejects.csv");
        Self {
            batch_rows: 5000,
            rejects_path: PathBuf::from(r),
            bulk_from_rows: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file as a whole cannot be imported (nothing was written).
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("mapping: {0}")]
    Mapping(#[from] MappingError),
    #[error("{path}: line {line}: {reason}")]
    Read {
        path: String,
        line: u64,
        reason: String,
    },
    #[error(transparent)]
    People(#[from] PeopleError),
}

/// One rejected row.
#[derive(Debug, Clone)]
pub struct Reject {
    pub line: u64,
    pub reason: String,
    pub raw: String,
}

struct Chunk {
    drafts: Vec<PersonDraft>,
    rejects: Vec<Reject>,
    rows: i64,
    bytes: i64,
}

/// Records as read, before conversion: (line, record), and what ended the read.
struct RawChunk {
    records: Vec<(u64, csv::ByteRecord)>,
    bytes: i64,
    /// A malformed file stops the import after the records before it.
    error: Option<ImportError>,
}

impl RawChunk {
    fn new(batch: usize) -> Self {
        Self {
            records: Vec::with_capacity(batch),
            bytes: 0,
            error: None,
        }
    }
}

/// Turns records into drafts and rejects.
fn convert(
    raw: RawChunk,
    header: &[String],
    plan: &Plan,
    m: &Mapping,
    delim: u8,
) -> Result<Chunk, ImportError> {
    let mut chunk = Chunk {
        drafts: Vec::with_capacity(raw.records.len()),
        rejects: Vec::new(),
        rows: 0,
        bytes: raw.bytes,
    };
    for (line, rec) in &raw.records {
        let len = rec.as_slice().len();
        if len > MAX_LINE_BYTES {
            chunk.rejects.push(Reject {
                line: *line,
                reason: format!("the row is {len} bytes, over the {MAX_LINE_BYTES}-byte limit"),
                raw: String::new(),
            });
        } else if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
            continue; // a blank line
        } else {
            match row_to_draft(rec, header, plan, m) {
                Ok(d) => chunk.drafts.push(d),
                Err(reason) => chunk.rejects.push(Reject {
                    line: *line,
                    reason,
                    raw: raw_line(rec, delim),
                }),
            }
        }
        chunk.rows += 1;
    }
    // As before the converters existed: a malformed record fails the import, and the
    // rows of its unfinished batch are not written.
    match raw.error {
        Some(e) => Err(e),
        None => Ok(chunk),
    }
}

/// Positions in [`crate::mapping::FIELDS`], so that a row reads its fields by index
/// instead of looking each name up (a voter file has millions of rows).
mod f {
    pub const VOTER_ID: usize = 0;
    pub const FIRST_NAME: usize = 1;
    pub const MIDDLE_NAME: usize = 2;
    pub const LAST_NAME: usize = 3;
    pub const SUFFIX: usize = 4;
    pub const EMAIL: usize = 5;
    pub const EMAIL2: usize = 6;
    pub const PHONE: usize = 7;
    pub const PHONE2: usize = 8;
    pub const ADDRESS_LINE1: usize = 9;
    pub const ADDRESS_LINE2: usize = 10;
    pub const CITY: usize = 11;
    pub const STATE: usize = 12;
    pub const ZIP: usize = 13;
    pub const COUNTY: usize = 14;
    pub const PRECINCT: usize = 15;
    pub const EMAIL_CONSENT: usize = 16;
    pub const SMS_CONSENT: usize = 17;
}

/// Column positions the mapping needs, found in the header.
#[derive(Clone)]
struct Plan {
    /// Per field of `FIELDS`: its column, if mapped.
    cols: Vec<Option<usize>>,
    /// Per field of `FIELDS`: the value an empty cell takes (`[defaults]`, or empty).
    defaults: Vec<String>,
    custom: Vec<(CustomFieldKey, usize)>,
    tag_cols: Vec<(usize, crate::mapping::TagColumn)>,
    width: usize,
}

fn plan(header: &[String], m: &Mapping, path: &str) -> Result<Plan, ImportError> {
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        pos.entry(h.trim()).or_insert(i);
    }
    let missing: Vec<&str> = m
        .columns()
        .into_iter()
        .filter(|c| !pos.contains_key(c.trim()))
        .collect();
    if !missing.is_empty() {
        return Err(ImportError::File {
            path: path.into(),
            reason: format!(
                "line 1: the header lacks column(s) the mapping needs: {}",
                missing.join(", ")
            ),
        });
    }
    Ok(Plan {
        cols: crate::mapping::FIELDS
            .iter()
            .map(|f| m.fields.get(*f).map(|c| pos[c.trim()]))
            .collect(),
        defaults: crate::mapping::FIELDS
            .iter()
            .map(|f| m.defaults.get(*f).cloned().unwrap_or_default())
            .collect(),
        custom: m
            .custom
            .iter()
            .map(|(k, c)| (k.clone(), pos[c.trim()]))
            .collect(),
        tag_cols: m
            .tags
            .from_column
            .iter()
            .map(|t| (pos[t.column.trim()], t.clone()))
            .collect(),
        width: header.len(),
    })
}

fn decode(bytes: &[u8], enc: Encoding) -> Option<String> {
    match enc {
        Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_string),
        Encoding::Latin1 => Some(bytes.iter().map(|&b| b as char).collect()),
    }
}

fn raw_line(rec: &csv::ByteRecord, delim: u8) -> String {
    let mut v = Vec::new();
    for (i, f) in rec.iter().enumerate() {
        if i > 0 {
            v.push(delim);
        }
        v.extend_from_slice(f);
        if v.len() > 10_000 {
            v.truncate(10_000);
            break;
        }
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// One row to a draft, or the reason it is rejected.
fn row_to_draft<'r>(
    rec: &'r csv::ByteRecord,
    header: &[String],
    p: &'r Plan,
    m: &'r Mapping,
) -> Result<PersonDraft, String> {
    if rec.len() != p.width {
        return Err(format!("expected {} fields, found {}", p.width, rec.len()));
    }
    // Cells are borrowed from the record where they can be (UTF-8): a row has dozens,
    // and copying each one twice was a good part of the cost of converting a row.
    let cell = |i: usize| -> Result<Cow<'r, str>, String> {
        let b = rec.get(i).unwrap_or_default();
        let bad = || {
            format!("invalid UTF-8 in column {} (set encoding = \"latin1\" under [source] if the file is Latin-1)", header[i])
        };
        match m.source.encoding {
            Encoding::Utf8 => std::str::from_utf8(b)
                .map(|s| Cow::Borrowed(s.trim()))
                .map_err(|_| bad()),
            Encoding::Latin1 => decode(b, Encoding::Latin1)
                .map(|s| Cow::Owned(s.trim().to_string()))
                .ok_or_else(bad),
        }
    };
    let field = |k: usize| -> Result<Cow<'r, str>, String> {
        let v = match p.cols[k] {
            Some(i) => cell(i)?,
            None => Cow::Borrowed(""),
        };
        if v.is_empty() {
            Ok(Cow::Borrowed(p.defaults[k].as_str()))
        } else {
            Ok(v)
        }
    };
    // The header of a field's column, for a reject's reason.
    let col = |k: usize| -> String {
        p.cols[k]
            .map(|i| header[i].clone())
            .unwrap_or_else(|| crate::mapping::FIELDS[k].to_string())
    };
    let mut d = PersonDraft::default();
    let v = field(f::VOTER_ID)?;
    if !v.is_empty() {
        d.voter_id =
            Some(VoterId::parse(&v).map_err(|e| format!("column {}: {e}", col(f::VOTER_ID)))?);
    }
    d.name.first_name = Some(field(f::FIRST_NAME)?.into_owned());
    d.name.middle_name = Some(field(f::MIDDLE_NAME)?.into_owned());
    d.name.last_name = Some(field(f::LAST_NAME)?.into_owned());
    d.name.suffix = Some(field(f::SUFFIX)?.into_owned());
    for k in [f::EMAIL, f::EMAIL2] {
        let v = field(k)?;
        if !v.is_empty() {
            d.emails
                .push(Email::parse(&v).map_err(|e| format!("column {}: {e}", col(k)))?);
        }
    }
    for k in [f::PHONE, f::PHONE2] {
        let v = field(k)?;
        if !v.is_empty() {
            d.phones
                .push(PhoneE164::parse(&v).map_err(|e| format!("column {}: {e}", col(k)))?);
        }
    }
    let addr = PostalAddress::parse(
        &field(f::ADDRESS_LINE1)?,
        &field(f::ADDRESS_LINE2)?,
        &field(f::CITY)?,
        &field(f::STATE)?,
        &field(f::ZIP)?,
        &field(f::COUNTY)?,
        &field(f::PRECINCT)?,
    )
    .map_err(|e| format!("address: {e}"))?;
    if !addr.is_empty() {
        d.address = Some(addr);
    }
    d.email_consent = ConsentState::parse(&field(f::EMAIL_CONSENT)?)
        .map_err(|e| format!("column {}: {e}", col(f::EMAIL_CONSENT)))?;
    d.sms_consent = ConsentState::parse(&field(f::SMS_CONSENT)?)
        .map_err(|e| format!("column {}: {e}", col(f::SMS_CONSENT)))?;
    for (k, i) in &p.custom {
        let v = cell(*i)?;
        if !v.is_empty() {
            d.custom.insert(k.clone(), v.into_owned());
        }
    }
    d.tags.extend(m.tags.always.iter().cloned());
    for (i, tc) in &p.tag_cols {
        if let Some(t) = tc
            .tag_for(&cell(*i)?)
            .map_err(|e| format!("column {}: {e}", header[*i]))?
        {
            d.tags.push(t);
        }
    }
    if !d.has_strong_key() {
        return Err("the row has no voter id, email or phone to match on".into());
    }
    Ok(d.normalize())
}

/// Imports a file. `on_progress` is called after every committed batch.
pub async fn run(
    hub: &Hub,
    path: &Path,
    mapping: &Mapping,
    opts: &ImportOptions,
    actor: &str,
    on_progress: &(dyn Fn(&ImportCounts) + Sync),
) -> Result<ImportCounts, ImportError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| ImportError::File {
        path: shown.clone(),
        reason: format!("cannot open: {e}"),
    })?;
    let bytes_total = file.metadata().map(|m| m.len() as i64).unwrap_or(0);
    if bytes_total == 0 {
        return Err(ImportError::File {
            path: shown,
            reason: "the file is empty (no header line)".into(),
        });
    }
    let delim = mapping.delimiter_for(path);
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let mut header_rec = csv::ByteRecord::new();
    let got = rdr
        .read_byte_record(&mut header_rec)
        .map_err(|e| ImportError::Read {
            path: shown.clone(),
            line: 1,
            reason: e.to_string(),
        })?;
    if !got {
        return Err(ImportError::File {
            path: shown,
            reason: "the file is empty (no header line)".into(),
        });
    }
    let header: Vec<String> = header_rec
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.strip_prefix(b"\xef\xbb\xbf").unwrap_or(h)
            } else {
                h
            };
            decode(h, mapping.source.encoding).ok_or_else(|| ImportError::File {
                path: shown.clone(),
                reason: format!("line 1: header column {} is not valid UTF-8", i + 1),
            })
        })
        .collect::<Result<_, _>>()?;
    let plan = plan(&header, mapping, &shown)?;

    let mut rejects =
        csv::Writer::from_path(&opts.rejects_path).map_err(|e| ImportError::File {
            path: opts.rejects_path.display().to_string(),
            reason: format!("cannot write the rejects file: {e}"),
        })?;
    rejects
        .write_record(["line", "reason", "raw"])
        .map_err(|e| ImportError::File {
            path: opts.rejects_path.display().to_string(),
            reason: e.to_string(),
        })?;

    // Reading, parsing and writing overlap: one thread splits the file into records,
    // `converters` threads turn them into drafts (the costly part: decoding and
    // normalizing 70 columns), and this task resolves and writes. Chunks are dealt to
    // the converters in turn and taken back in the same turn, so the file's order (and
    // with it which record wins within the file) is kept. Queues hold one chunk each,
    // to keep the memory of a large import bounded.
    let batch = opts.batch_rows.max(1);
    let converters = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Chunk, ImportError>>(1);
    let mut raw_txs = Vec::with_capacity(converters);
    let mut done_rxs = Vec::with_capacity(converters);
    let mut threads = Vec::with_capacity(converters + 2);
    for _ in 0..converters {
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<RawChunk>(1);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Result<Chunk, ImportError>>(1);
        raw_txs.push(raw_tx);
        done_rxs.push(done_rx);
        let (m, header, plan) = (mapping.clone(), header.clone(), plan.clone());
        threads.push(std::thread::spawn(move || {
            for raw in raw_rx {
                let out = convert(raw, &header, &plan, &m, delim);
                if done_tx.send(out).is_err() {
                    return;
                }
            }
        }));
    }
    let parse_path = shown.clone();
    threads.push(std::thread::spawn(move || {
        let mut turn = 0usize;
        let mut raw = RawChunk::new(batch);
        loop {
            let mut rec = csv::ByteRecord::new();
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {
                    let line = rec.position().map(|p| p.line()).unwrap_or(0);
                    raw.records.push((line, rec));
                    if raw.records.len() >= batch {
                        raw.bytes = rdr.position().byte() as i64;
                        let full = std::mem::replace(&mut raw, RawChunk::new(batch));
                        if raw_txs[turn % converters].send(full).is_err() {
                            return;
                        }
                        turn += 1;
                    }
                }
                Err(e) => {
                    raw.error = Some(ImportError::Read {
                        path: parse_path.clone(),
                        line: e.position().map(|p| p.line()).unwrap_or(0),
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        raw.bytes = rdr.position().byte() as i64;
        let _ = raw_txs[turn % converters].send(raw);
    }));
    // Collect the converters' chunks in the order they were dealt.
    threads.push(std::thread::spawn(move || {
        let mut turn = 0usize;
        while let Ok(out) = done_rxs[turn % converters].recv() {
            let stop = out.is_err();
            if tx.blocking_send(out).is_err() || stop {
                return;
            }
            turn += 1;
        }
    }));

    let mut counts = ImportCounts {
        bytes_total,
        ..Default::default()
    };
    let source = mapping.source.name.clone();
    let mut result: Result<(), ImportError> = Ok(());
    // Two batches in flight: while one is being written, the next is resolved, so the
    // database and this process work at the same time. Batches that race for the same
    // key are caught by the store (a unique key or version conflict) and resolved again.
    let mut inflight: tokio::task::JoinSet<BatchDone> = tokio::task::JoinSet::new();
    let mut bulk: Option<bool> = None;
    let mut index: Option<std::sync::Arc<std::sync::RwLock<KeyIndex>>> = None;
    while let Some(msg) = rx.recv().await {
        let chunk = match msg {
            Ok(c) => c,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if bulk.is_none() && chunk.rows > 0 {
            match bulk_load(hub, &chunk, bytes_total, opts.bulk_from_rows).await {
                Ok((b, ix)) => {
                    bulk = Some(b);
                    index = ix.map(|ix| std::sync::Arc::new(std::sync::RwLock::new(ix)));
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        for r in &chunk.rejects {
            counts.rejected += 1;
            let _ = rejects.write_record([
                r.line.to_string().as_str(),
                r.reason.as_str(),
                r.raw.as_str(),
            ]);
        }
        if inflight.len() >= 2 {
            if let Some(done) = inflight.join_next().await {
                if let Err(e) = settle(&mut counts, done) {
                    result = Err(e);
                    break;
                }
                on_progress(&counts);
            }
        }
        let (hub, source, actor) = (hub.clone(), source.clone(), actor.to_string());
        let (rows, bytes, drafts) = (chunk.rows, chunk.bytes, chunk.drafts);
        let index = index.clone();
        inflight.spawn(async move {
            let totals = if drafts.is_empty() {
                Ok(Default::default())
            } else {
                hub.upsert_batch_indexed(drafts, &source, &actor, false, index.as_deref())
                    .await
                    .map(|(_, t)| t)
            };
            BatchDone {
                totals,
                rows,
                bytes,
            }
        });
    }
    while let Some(done) = inflight.join_next().await {
        let r = settle(&mut counts, done);
        if result.is_ok() {
            result = r;
        }
        on_progress(&counts);
    }
    drop(rx);
    for t in threads {
        let _ = t.join();
    }
    if bulk == Some(true) {
        // However the load ended: its rows are in, and queries need their indexes.
        if let Err(e) = hub.store.restore_people_indexes().await {
            if result.is_ok() {
                result = Err(PeopleError::from(e).into());
            }
        }
    }
    if result.is_ok() && counts.inserted + counts.updated + counts.merged >= 10_000 {
        if let Err(e) = hub.store.after_bulk_load().await {
            tracing::warn!(error = %e, "refreshing statistics after the import failed");
        }
    }
    let _ = rejects.flush();
    result.map(|()| counts)
}

/// The most people whose keys a large import holds in memory (about 45 MB a
/// million); a larger hub is asked about every row.
pub const KEY_INDEX_MAX_PEOPLE: u64 = 5_000_000;

/// Decides from the first chunk whether this import is large, and if so loads the
/// hub's keys into memory (when the hub is not much larger than the file) and, for a
/// bulk load into a hub at most half its size, defers the query-only indexes. The
/// file's size over the first chunk's bytes per row estimates its rows. Returns
/// whether the indexes were deferred, and the key index.
async fn bulk_load(
    hub: &Hub,
    first: &Chunk,
    bytes_total: i64,
    bulk_from_rows: u64,
) -> Result<(bool, Option<KeyIndex>), PeopleError> {
    if first.bytes <= 0 {
        return Ok((false, None));
    }
    let estimate = (bytes_total as f64 * first.rows as f64 / first.bytes as f64) as u64;
    if estimate < bulk_from_rows {
        return Ok((false, None));
    }
    let people = hub.store.count_people().await?.max(0) as u64;
    let index = if people <= KEY_INDEX_MAX_PEOPLE && people <= estimate.saturating_mul(4) {
        let started = std::time::Instant::now();
        let ix = KeyIndex::load(&hub.store).await?;
        tracing::info!(
            keys = ix.len(),
            ms = started.elapsed().as_millis() as u64,
            "the hub's keys are held in memory for this import"
        );
        Some(ix)
    } else {
        None
    };
    if estimate < people.saturating_mul(2) {
        return Ok((false, index));
    }
    tracing::info!(
        estimate,
        people,
        "a bulk load: the query indexes of people are built at its end"
    );
    Ok((hub.store.defer_people_indexes().await?, index))
}

/// What one batch task reports back.
struct BatchDone {
    totals: Result<crate::hub::BatchTotals, PeopleError>,
    rows: i64,
    bytes: i64,
}

/// Adds a finished batch to the counts.
fn settle(
    counts: &mut ImportCounts,
    done: Result<BatchDone, tokio::task::JoinError>,
) -> Result<(), ImportError> {
    let done = done.map_err(|e| {
        ImportError::People(PeopleError::Invalid(format!("an import batch failed: {e}")))
    })?;
    let t = done.totals?;
    counts.inserted += t.inserted;
    counts.updated += t.updated;
    counts.unchanged += t.unchanged;
    counts.merged += t.merged;
    counts.rows_read += done.rows;
    counts.bytes_read = done.bytes.max(counts.bytes_read);
    Ok(())
}

/// Validates a mapping and a file, then records the import and queues the job that
/// runs it on whichever node's worker claims it first.
/// `source_name`, when not empty, names the import in listings instead of the mapping's source.
pub async fn start_import(
    store: &Store,
    source_name: &str,
    path: &Path,
    mapping_toml: &str,
    created_by: &str,
) -> Result<ImportId, PeopleError> {
    let m =
        Mapping::parse(mapping_toml).map_err(|e| PeopleError::Invalid(format!("mapping: {e}")))?;
    let name = if source_name.trim().is_empty() {
        m.source.name.as_str()
    } else {
        source_name.trim()
    };
    if !path.is_file() {
        return Err(PeopleError::Invalid(format!(
            "{}: no such file on the server",
            path.display()
        )));
    }
    Ok(store
        .create_import(
            name,
            &path.display().to_string(),
            mapping_toml,
            created_by,
            true,
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::f;
    use crate::mapping::FIELDS;

    #[test]
    fn field_positions_name_the_mapping_fields() {
        let named = [
            (f::VOTER_ID, "voter_id"),
            (f::FIRST_NAME, "first_name"),
            (f::MIDDLE_NAME, "middle_name"),
            (f::LAST_NAME, "last_name"),
            (f::SUFFIX, "suffix"),
            (f::EMAIL, "email"),
            (f::EMAIL2, "email2"),
            (f::PHONE, "phone"),
            (f::PHONE2, "phone2"),
            (f::ADDRESS_LINE1, "address_line1"),
            (f::ADDRESS_LINE2, "address_line2"),
            (f::CITY, "city"),
            (f::STATE, "state"),
            (f::ZIP, "zip"),
            (f::COUNTY, "county"),
            (f::PRECINCT, "precinct"),
            (f::EMAIL_CONSENT, "email_consent"),
            (f::SMS_CONSENT, "sms_consent"),
        ];
        assert_eq!(named.len(), FIELDS.len(), "every field has a position");
        for (i, name) in named {
            assert_eq!(FIELDS[i], name);
        }
    }
}
