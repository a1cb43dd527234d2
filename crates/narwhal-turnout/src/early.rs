//! Early-vote and absentee files: a state publishes who has already voted; importing
//! the file pre-flushes the lists (channel `early_vote`, through the one ingest).
//!
//! The mapping names the file's columns (TOML):
//!
//! ```toml
//! [source]
//! name = "ohio-absentee"      # the file's source; with the voter id it makes the report id
//! [columns]
//! voter_id = "SOS_VOTERID"    # required: the state voter id, matched to people's voter_id
//! voted_on = "DATE_RETURNED"  # optional: YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD
//! ```
//!
//! Each row's report id is derived from the source name and the voter id, so importing
//! the same file again (or a later file that repeats the voters) counts no one twice.
//! Rows naming nobody in the people hub, or people outside the GOTV universe, are
//! counted and skipped (most early voters are not our supporters). A row that cannot
//! be read (no voter id, a bad date, a broken line) is rejected with its line number
//! and reason, written to `FILE.rejects.csv` like the people import's, and nothing
//! valid is lost.

use crate::code::Channel;
use crate::places::csv_reason;
use crate::service::{ReportItem, Reporter, Turnout, TurnoutError, MAX_BATCH};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Rows looked up and reported together.
const CHUNK: usize = MAX_BATCH;

/// An early-vote mapping file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyVoteMapping {
    pub source: MappingSource,
    pub columns: MappingColumns,
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSource {
    pub name: String,
}

/// `[columns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingColumns {
    pub voter_id: String,
    #[serde(default)]
    pub voted_on: Option<String>,
}

impl EarlyVoteMapping {
    /// Parses and checks a mapping; the error names the key.
    pub fn parse(text: &str) -> Result<Self, TurnoutError> {
        let m: Self = toml::from_str(text)
            .map_err(|e| TurnoutError::Invalid(format!("mapping: {}", e.message())))?;
        let name = m.source.name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(TurnoutError::Invalid(
                "mapping: source.name has 1 to 100 characters".into(),
            ));
        }
        if m.columns.voter_id.trim().is_empty() {
            return Err(TurnoutError::Invalid(
                "mapping: columns.voter_id names the voter id column".into(),
            ));
        }
        Ok(m)
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EarlyVoteCounts {
    /// Data rows read.
    pub rows: u64,
    /// Supporters newly marked as voted (off every list now).
    pub reported: u64,
    /// Supporters already reported by this source before (a re-import).
    pub already: u64,
    /// People in the hub who are not in the GOTV universe.
    pub not_in_universe: u64,
    /// Voter ids nobody in the hub has.
    pub unknown_voter: u64,
    /// Rows that could not be read; each is in the rejects file.
    pub rejected: u64,
    /// Where the rejected rows are, with line and reason.
    pub rejects_path: Option<String>,
}

/// The report id of a voter in a source: stable, so a re-import is a duplicate.
pub fn report_id(source: &str, voter_id: &str) -> String {
    let h = Sha256::digest(format!("{}\u{0}{}", source.trim(), voter_id.trim()).as_bytes());
    let hex: String = h.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("ev-{hex}")
}

/// Parses a date as `YYYY-MM-DD`, `MM/DD/YYYY` or `YYYYMMDD`; midnight UTC in ms.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, m, d) = if let Some((y, rest)) = s.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        (num(y)?, num(m)?, num(d)?)
    } else if let Some((m, rest)) = s.split_once('/') {
        let (d, y) = rest.split_once('/')?;
        (num(y)?, num(m)?, num(d)?)
    } else if s.len() == 8 {
        (num(&s[..4])?, num(&s[4..6])?, num(&s[6..])?)
    } else {
        return None;
    };
    if !(1900..=2200).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

struct Pending {
    line: u64,
    voter_id: String,
    voted_at: Option<i64>,
}

/// The rejects file beside `file`.
pub fn rejects_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".rejects.csv");
    PathBuf::from(s)
}

impl Turnout {
    /// Imports an early-vote file: every supporter it names is reported as voted on
    /// the `early_vote` channel (idempotent), so they leave every list.
    pub async fn import_early_vote(
        &self,
        file: &Path,
        mapping: &EarlyVoteMapping,
    ) -> Result<EarlyVoteCounts, TurnoutError> {
        let name = file.display().to_string();
        let f = std::fs::File::open(file)
            .map_err(|e| TurnoutError::Invalid(format!("{name}: cannot open: {}", e.kind())))?;
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(std::io::BufReader::new(f));
        let headers = rdr
            .headers()
            .map_err(|e| TurnoutError::Invalid(format!("{name}:1: {}", csv_reason(&e))))?
            .clone();
        let find = |col: &str| {
            headers
                .iter()
                .position(|h| h.eq_ignore_ascii_case(col.trim()))
        };
        let vid_col = find(&mapping.columns.voter_id).ok_or_else(|| {
            TurnoutError::Invalid(format!(
                "{name}:1: the header has no column {:?} (columns.voter_id)",
                mapping.columns.voter_id
            ))
        })?;
        let date_col = match &mapping.columns.voted_on {
            Some(c) => Some(find(c).ok_or_else(|| {
                TurnoutError::Invalid(format!(
                    "{name}:1: the header has no column {c:?} (columns.voted_on)"
                ))
            })?),
            None => None,
        };
        let rejects_at = rejects_path(file);
        let mut rejects = csv::Writer::from_path(&rejects_at).map_err(|e| {
            TurnoutError::Invalid(format!("{}: cannot write: {e}", rejects_at.display()))
        })?;
        let reject_err =
            |e: csv::Error| TurnoutError::Invalid(format!("writing the rejects file: {e}"));
        rejects
            .write_record(["line", "reason", "voter_id"])
            .map_err(reject_err)?;
        let mut counts = EarlyVoteCounts::default();
        let mut pending: Vec<Pending> = Vec::with_capacity(CHUNK);
        for rec in rdr.records() {
            counts.rows += 1;
            let r = match rec {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    counts.rejected += 1;
                    rejects
                        .write_record([line.to_string(), csv_reason(&e), String::new()])
                        .map_err(reject_err)?;
                    continue;
                }
            };
            let line = r.position().map(|p| p.line()).unwrap_or(0);
            let raw = r.get(vid_col).unwrap_or("").trim();
            let mut reason = None;
            // Stored voter ids are normalized (upper case): match them the same way.
            let vid = match narwhal_domain::VoterId::parse(raw) {
                Ok(v) => v.as_str().to_string(),
                Err(_) if raw.is_empty() => {
                    reason = Some("the voter id is empty".to_string());
                    String::new()
                }
                Err(e) => {
                    reason = Some(format!("the voter id is not valid: {}", e.reason));
                    raw.to_string()
                }
            };
            let voted_at = match date_col.map(|c| r.get(c).unwrap_or("").trim()) {
                Some("") | None => None,
                Some(d) => match parse_date(d) {
                    Some(t) => Some(t),
                    None => {
                        reason.get_or_insert_with(|| {
                            "the date is not YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD".to_string()
                        });
                        None
                    }
                },
            };
            if let Some(reason) = reason {
                counts.rejected += 1;
                rejects
                    .write_record([line.to_string(), reason, vid])
                    .map_err(reject_err)?;
                continue;
            }
            pending.push(Pending {
                line,
                voter_id: vid,
                voted_at,
            });
            if pending.len() == CHUNK {
                self.early_chunk(&mapping.source.name, &mut pending, &mut counts)
                    .await?;
            }
        }
        self.early_chunk(&mapping.source.name, &mut pending, &mut counts)
            .await?;
        rejects.flush().map_err(|e| {
            TurnoutError::Invalid(format!("{}: cannot write: {e}", rejects_at.display()))
        })?;
        counts.rejects_path = Some(rejects_at.display().to_string());
        tracing::info!(
            rows = counts.rows,
            reported = counts.reported,
            already = counts.already,
            rejected = counts.rejected,
            "early-vote file imported"
        );
        Ok(counts)
    }

    async fn early_chunk(
        &self,
        source: &str,
        pending: &mut Vec<Pending>,
        counts: &mut EarlyVoteCounts,
    ) -> Result<(), TurnoutError> {
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = pending.iter().map(|p| p.voter_id.clone()).collect();
        let found = self.store().people_by_voter_ids(&ids).await?;
        let mut items = Vec::with_capacity(pending.len());
        for p in pending.iter() {
            match found.get(&p.voter_id) {
                None => counts.unknown_voter += 1,
                Some(m) if !m.in_universe => counts.not_in_universe += 1,
                Some(m) => items.push(ReportItem {
                    report_id: report_id(source, &p.voter_id),
                    voter_code: None,
                    person_id: Some(m.person.0),
                    voted_at: p.voted_at,
                    undo: false,
                }),
            }
        }
        let res = self
            .ingest(&Reporter::Staff, Channel::EarlyVote, &items)
            .await?;
        counts.reported += res.accepted as u64;
        counts.already += res.duplicates as u64;
        // Nothing else can be rejected here: ids are well formed and people known.
        if res.rejected > 0 {
            let lines: Vec<u64> = pending.iter().map(|p| p.line).take(3).collect();
            tracing::warn!(
                rejected = res.rejected,
                ?lines,
                "early-vote rows refused by the ingest"
            );
            counts.rejected += res.rejected as u64;
        }
        pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_date("2024-11-05"), parse_date("11/05/2024"));
        assert_eq!(parse_date("20241105"), parse_date("2024-11-05"));
        assert_eq!(parse_date("2024-11-05"), Some(1_730_764_800_000));
        assert!(parse_date("2024-02-29").is_some());
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(parse_date(""), None);
    }

    #[test]
    fn report_ids_are_stable_and_valid() {
        let a = report_id("oh", "OH123");
        assert_eq!(a, report_id("oh", " OH123 "));
        assert_ne!(a, report_id("oh2", "OH123"));
        assert!(crate::ReportId::parse(&a).is_ok());
    }

    #[test]
    fn mapping_names_bad_keys() {
        assert!(EarlyVoteMapping::parse("[source]\nname='x'\n[columns]\nvoter_id='V'\n").is_ok());
        let e = EarlyVoteMapping::parse("[source]\nname='x'\n[columns]\nvoterid='V'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("voterid"), "{e}");
    }
}
