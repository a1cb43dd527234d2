//! The polling-place file: one row per polling place with the precincts that vote
//! there.
//!
//! ```text
//! code,name,address,county,precincts
//! FRA-1,Lincoln Elementary,12 Main St Columbus OH,FRANKLIN,FRA-001;FRA-002
//! ```
//!
//! `precincts` is a `;`-separated list of precinct codes of that county. Every
//! problem found is reported as `file:line: reason`, all of them at once, and nothing
//! is imported unless the whole file is good.

use narwhal_store::turnout::NewPollingPlace;
use std::collections::HashMap;

/// The columns, in any order; others are ignored.
pub const COLUMNS: [&str; 5] = ["code", "name", "address", "county", "precincts"];
/// At most this many problems are listed.
const MAX_PROBLEMS: usize = 100;

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; the header is line 1.
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Every problem found in a file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct CsvErrors(pub Vec<Problem>);

fn code_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses a polling-place file. `file` names it in the errors.
pub fn parse(file: &str, input: impl std::io::Read) -> Result<Vec<NewPollingPlace>, CsvErrors> {
    let mut problems = Vec::new();
    let problem = |problems: &mut Vec<Problem>, line: u64, reason: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(Problem {
                file: file.to_string(),
                line,
                reason,
            });
        }
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            problem(
                &mut problems,
                1,
                format!("cannot read the header: {}", csv_reason(&e)),
            );
            return Err(CsvErrors(problems));
        }
    };
    let mut col = HashMap::new();
    for name in COLUMNS {
        match headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
        {
            Some(i) => {
                col.insert(name, i);
            }
            None => problem(
                &mut problems,
                1,
                format!("the header has no column {name:?}"),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(CsvErrors(problems));
    }
    let get = |r: &csv::StringRecord, name: &str| -> String {
        col.get(name)
            .and_then(|i| r.get(*i))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut places: Vec<NewPollingPlace> = Vec::new();
    let mut place_line: HashMap<String, u64> = HashMap::new();
    let mut precinct_line: HashMap<(String, String), u64> = HashMap::new();
    for rec in rdr.records() {
        let r = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                problem(&mut problems, line, csv_reason(&e));
                continue;
            }
        };
        let line = r.position().map(|p| p.line()).unwrap_or(0);
        let code = get(&r, "code").to_ascii_uppercase();
        let name = get(&r, "name");
        let address = get(&r, "address");
        let county = get(&r, "county").to_ascii_uppercase();
        let mut ok = true;
        if !code_ok(&code) {
            problem(
                &mut problems,
                line,
                "code must be 1 to 32 letters, digits, - or _".into(),
            );
            ok = false;
        } else if let Some(first) = place_line.insert(code.clone(), line) {
            problem(
                &mut problems,
                line,
                format!("polling place {code} is already defined on line {first}"),
            );
            ok = false;
        }
        if name.is_empty() {
            problem(&mut problems, line, "name is empty".into());
            ok = false;
        }
        let list: Vec<String> = get(&r, "precincts")
            .split(';')
            .map(|p| p.trim().to_ascii_uppercase())
            .filter(|p| !p.is_empty())
            .collect();
        if list.is_empty() {
            problem(
                &mut problems,
                line,
                "precincts is empty: list the precincts that vote here, separated by ;".into(),
            );
            ok = false;
        }
        if county.is_empty() {
            problem(&mut problems, line, "county is empty".into());
            ok = false;
        }
        let mut precincts = Vec::new();
        for p in list {
            if p.len() > 32 {
                problem(
                    &mut problems,
                    line,
                    "a precinct code is over 32 characters".into(),
                );
                ok = false;
                continue;
            }
            let key = (county.clone(), p.clone());
            if let Some(first) = precinct_line.insert(key.clone(), line) {
                problem(
                    &mut problems,
                    line,
                    format!("precinct {p} of {county} is already assigned on line {first}"),
                );
                ok = false;
                continue;
            }
            precincts.push(key);
        }
        if ok {
            places.push(NewPollingPlace {
                code,
                name,
                address,
                precincts,
            });
        }
    }
    if !problems.is_empty() {
        return Err(CsvErrors(problems));
    }
    if places.is_empty() {
        problem(&mut problems, 1, "the file has no polling places".into());
        return Err(CsvErrors(problems));
    }
    Ok(places)
}

/// The csv crate's error without its position (we print our own).
pub(crate) fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        csv::ErrorKind::Io(_) => "the file could not be read".into(),
        _ => "not valid CSV".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_good_file() {
        let f = "code,name,address,county,precincts\nfra-1, Lincoln ,12 Main St,franklin,FRA-001; fra-002\nFRA-2,Oak,,FRANKLIN,FRA-003\n";
        let p = parse("places.csv", f.as_bytes()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].code, "FRA-1");
        assert_eq!(p[0].name, "Lincoln");
        assert_eq!(
            p[0].precincts,
            vec![
                ("FRANKLIN".to_string(), "FRA-001".to_string()),
                ("FRANKLIN".to_string(), "FRA-002".to_string())
            ]
        );
    }

    #[test]
    fn names_file_line_and_reason() {
        let f =
            "code,name,address,county,precincts\nA,One,,X,P1\nA,Two,,X,P2\nB,,,X,P1\nC,Three,,X\n";
        let e = parse("places.csv", f.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("places.csv:3: polling place A is already defined on line 2"),
            "{text}"
        );
        assert!(text.contains("places.csv:4: name is empty"), "{text}");
        assert!(
            text.contains("places.csv:4: precinct P1 of X is already assigned on line 2"),
            "{text}"
        );
        assert!(
            text.contains("places.csv:5: expected 5 fields, found 4"),
            "{text}"
        );
        assert_eq!(e.0.len(), 4);
        let e = parse("p.csv", "code,name\nA,B\n".as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("p.csv:1: the header has no column \"county\""),
            "{e}"
        );
        let e = parse("p.csv", "code,name,address,county,precincts\n".as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no polling places"));
    }
}
