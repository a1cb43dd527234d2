//! The fallback channels' input: staff bulk entry (pasted codes, a CSV of voted ids)
//! and SMS messages (`VOTED 1234 5678`). Both become ordinary [`ReportItem`]s with
//! report ids derived from their source, so that pasting the same code twice, sending
//! the same file again, or a provider retrying a message never counts twice.

use crate::code::VoterCode;
use crate::service::{ItemResult, ReportItem, TurnoutError};
use serde::Serialize;

/// One line of bulk input, numbered from 1 as the staff member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkLine {
    pub line: usize,
    /// What the line said (a voter code, or a person id from a CSV).
    pub input: String,
    pub person_id: bool,
}

/// What happened to one line.
#[derive(Debug, Clone, Serialize)]
pub struct LineResult {
    pub line: usize,
    pub input: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Pasted voter codes, one per line; blank lines are skipped.
pub fn pasted(text: &str) -> Vec<BulkLine> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| BulkLine {
            line: i + 1,
            input: l.trim().chars().take(40).collect(),
            person_id: false,
        })
        .collect()
}

/// A CSV of voted ids: a header naming a `voter_code` or a `person_id` column (the
/// first found is used). Lines are numbered as in the file, the header being line 1.
pub fn csv_file(bytes: &[u8]) -> Result<Vec<BulkLine>, TurnoutError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|_| TurnoutError::Invalid("the file is not a readable CSV".into()))?
        .clone();
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (col, person_id) = match (find("voter_code"), find("person_id")) {
        (Some(c), _) => (c, false),
        (None, Some(c)) => (c, true),
        (None, None) => {
            return Err(TurnoutError::Invalid(
                "the CSV needs a header with a voter_code or a person_id column".into(),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let input = match rec {
            Ok(r) => r.get(col).unwrap_or("").to_string(),
            Err(_) => String::from("(unreadable line)"),
        };
        if input.is_empty() {
            continue;
        }
        out.push(BulkLine {
            line,
            input: input.chars().take(40).collect(),
            person_id,
        });
    }
    Ok(out)
}

/// The report of a bulk line. The id depends only on who is reported, so the same
/// voter entered again is a duplicate, not a second report.
pub fn bulk_item(l: &BulkLine) -> ReportItem {
    let (report_id, voter_code, person_id) = if l.person_id {
        match l.input.parse::<i64>() {
            Ok(p) if p > 0 => (format!("bulk-p{p}"), None, Some(p)),
            _ => (format!("bulk-x{}", l.line), None, Some(0)),
        }
    } else {
        match VoterCode::parse(&l.input) {
            Ok(c) => (format!("bulk-c{}", c.stored()), Some(l.input.clone()), None),
            Err(_) => (format!("bulk-x{}", l.line), Some(l.input.clone()), None),
        }
    };
    ReportItem {
        report_id,
        voter_code,
        person_id,
        voted_at: None,
        undo: false,
    }
}

/// Pairs lines with the ingest's results (same order).
pub fn line_results(lines: &[BulkLine], results: Vec<ItemResult>) -> Vec<LineResult> {
    lines
        .iter()
        .zip(results)
        .map(|(l, r)| LineResult {
            line: l.line,
            input: l.input.clone(),
            outcome: r.outcome,
            message: r.message,
        })
        .collect()
}

/// The codes of an SMS report: `VOTED` (any case) and then codes separated by
/// commas, semicolons or new lines; within a code, spaces and dashes are allowed
/// (`VOTED 1234 5678`), and a run of digits that is a multiple of 8 long is several
/// codes (`VOTED 1234 5678 8765 4321`). `None` when the message is not a report.
pub fn sms_codes(body: &str) -> Option<Vec<String>> {
    let body = body.trim();
    let (word, rest) = body
        .split_once(|c: char| c.is_whitespace())
        .unwrap_or((body, ""));
    if !word.eq_ignore_ascii_case("voted") {
        return None;
    }
    let mut out = Vec::new();
    for part in rest.split([',', ';', '\n']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let compact: String = part.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if !compact.is_empty()
            && compact.len().is_multiple_of(8)
            && compact.chars().all(|c| c.is_ascii_digit())
        {
            let b = compact.as_bytes();
            out.extend(b.chunks(8).map(|c| String::from_utf8_lossy(c).into_owned()));
        } else {
            out.push(part.chars().take(40).collect());
        }
    }
    Some(out)
}

/// The report of the `n`th code of SMS message `message_sid`: a provider retrying the
/// message sends the same id, which the ingest takes as a duplicate.
pub fn sms_item(message_sid: &str, n: usize, code: &str) -> ReportItem {
    let sid: String = message_sid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(50)
        .collect();
    ReportItem {
        report_id: format!("sms-{sid}-{n}"),
        voter_code: Some(code.to_string()),
        person_id: None,
        voted_at: None,
        undo: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sms_messages() {
        assert_eq!(sms_codes("VOTED 1234 5678").unwrap(), vec!["12345678"]);
        assert_eq!(
            sms_codes("voted 12345678, 2345-6789").unwrap(),
            vec!["12345678", "23456789"]
        );
        assert_eq!(
            sms_codes("Voted 1234 5678 8765 4321").unwrap(),
            vec!["12345678", "87654321"]
        );
        assert_eq!(sms_codes("VOTED 123").unwrap(), vec!["123"]);
        assert!(sms_codes("hello").is_none());
        assert!(sms_codes("VOTED").unwrap().is_empty());
    }

    #[test]
    fn bulk_input() {
        let l = pasted("1234 5678\n\n  abc \n");
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].line, l[1].line, l[1].input.as_str()), (1, 3, "abc"));
        let c = csv_file(b"name,voter_code\nA,1234-5678\nB,\nC,9\n").unwrap();
        assert_eq!(c.iter().map(|l| l.line).collect::<Vec<_>>(), vec![2, 4]);
        assert!(csv_file(b"name\nA\n").is_err());
        let p = csv_file(b"person_id\n7\n").unwrap();
        assert_eq!(bulk_item(&p[0]).report_id, "bulk-p7");
        assert_eq!(bulk_item(&p[0]).person_id, Some(7));
        assert_eq!(bulk_item(&l[1]).report_id, "bulk-x3");
    }
}
