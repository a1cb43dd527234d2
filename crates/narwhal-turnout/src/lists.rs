//! Canvass turfs and call lists built from the GOTV universe, what remains of them
//! (members not yet reported as voted), and their exports: canvassers get a walk
//! sheet in address order, phone banks a call sheet with phones.
//!
//! Remaining is a query over the universe's voted mark, which the ingest sets in the
//! transaction that stores a report: a voter reported as voted is off every list as
//! soon as the report is acknowledged, on every node.

use crate::code::VoterCode;
use crate::service::{Turnout, TurnoutError};
use narwhal_domain::{PersonId, SegmentId};
use narwhal_store::turnout_live::{GotvList, ListSource, ListVoter};
use narwhal_store::StoreError;
use serde::{Deserialize, Serialize};

/// Rows read per page when a whole list is exported.
const PAGE: i64 = 10_000;

/// A turf for canvassers or a call list for phone banks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Turf,
    Calls,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Turf => "turf",
            Self::Calls => "calls",
        }
    }
}

/// A precinct, named within its county.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecinctRef {
    pub county: String,
    pub precinct: String,
}

/// What a new list takes: at most one of a saved segment, a polling place or a
/// precinct (none: an empty list to assign people to).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGotvList {
    pub name: String,
    pub kind: ListKind,
    #[serde(default)]
    pub segment: Option<i64>,
    #[serde(default)]
    pub polling_place: Option<String>,
    #[serde(default)]
    pub precinct: Option<PrecinctRef>,
}

/// A supporter still to contact, as the list pages and exports show them.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub person_id: PersonId,
    pub voter_code: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address: Option<String>,
    pub address2: Option<String>,
    pub city: Option<String>,
    pub zip: Option<String>,
    pub phone: Option<String>,
    pub precinct: String,
    pub polling_place: String,
}

fn row(v: ListVoter) -> Result<ListRow, TurnoutError> {
    let code = VoterCode::from_stored(v.code)
        .ok_or_else(|| StoreError::Corrupt("a voter code out of range".into()))?;
    Ok(ListRow {
        person_id: v.person_id,
        voter_code: code.to_string(),
        first_name: v.first_name,
        last_name: v.last_name,
        address: v.addr_line1,
        address2: v.addr_line2,
        city: v.city,
        zip: v.zip,
        phone: v.phone,
        precinct: v.precinct,
        polling_place: v.polling_place,
    })
}

/// The walking order of an address: city, zip, street, then house number as a
/// number (so 9 comes before 10), then the rest.
fn walk_key(r: &ListRow) -> (String, String, String, u64, String) {
    let line = r.address.clone().unwrap_or_default();
    let digits: String = line.chars().take_while(|c| c.is_ascii_digit()).collect();
    let number = digits.parse::<u64>().unwrap_or(u64::MAX);
    let street = line[digits.len()..].trim().to_ascii_uppercase();
    (
        r.city.clone().unwrap_or_default().to_ascii_uppercase(),
        r.zip.clone().unwrap_or_default(),
        street,
        number,
        r.address2.clone().unwrap_or_default(),
    )
}

/// Orders a turf's rows for walking.
pub fn walk_order(rows: &mut [ListRow]) {
    rows.sort_by_cached_key(walk_key);
}

/// The CSV a list exports: for a turf, every remaining member in address order; for a
/// call list, the remaining members who have a phone, by last name.
pub fn export_csv(kind: ListKind, mut rows: Vec<ListRow>) -> Result<Vec<u8>, TurnoutError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| TurnoutError::Invalid(format!("writing the CSV: {e}"));
    match kind {
        ListKind::Turf => {
            walk_order(&mut rows);
            w.write_record([
                "voter_code",
                "first_name",
                "last_name",
                "address",
                "address2",
                "city",
                "zip",
                "precinct",
            ])
            .map_err(bad)?;
            for r in &rows {
                w.write_record([
                    r.voter_code.as_str(),
                    r.first_name.as_deref().unwrap_or(""),
                    r.last_name.as_deref().unwrap_or(""),
                    r.address.as_deref().unwrap_or(""),
                    r.address2.as_deref().unwrap_or(""),
                    r.city.as_deref().unwrap_or(""),
                    r.zip.as_deref().unwrap_or(""),
                    r.precinct.as_str(),
                ])
                .map_err(bad)?;
            }
        }
        ListKind::Calls => {
            rows.retain(|r| r.phone.as_deref().is_some_and(|p| !p.is_empty()));
            rows.sort_by_cached_key(|r| {
                (
                    r.last_name.clone().unwrap_or_default().to_ascii_uppercase(),
                    r.first_name
                        .clone()
                        .unwrap_or_default()
                        .to_ascii_uppercase(),
                    r.person_id,
                )
            });
            w.write_record([
                "voter_code",
                "first_name",
                "last_name",
                "phone",
                "precinct",
                "polling_place",
            ])
            .map_err(bad)?;
            for r in &rows {
                w.write_record([
                    r.voter_code.as_str(),
                    r.first_name.as_deref().unwrap_or(""),
                    r.last_name.as_deref().unwrap_or(""),
                    r.phone.as_deref().unwrap_or(""),
                    r.precinct.as_str(),
                    r.polling_place.as_str(),
                ])
                .map_err(bad)?;
            }
        }
    }
    w.into_inner()
        .map_err(|e| TurnoutError::Invalid(format!("writing the CSV: {e}")))
}

impl Turnout {
    /// Creates a turf or call list from a segment, a polling place, a precinct, or
    /// empty. Only supporters in the GOTV universe are taken.
    pub async fn create_list(&self, new: &NewGotvList) -> Result<GotvList, TurnoutError> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(TurnoutError::Invalid("name: 1 to 200 characters".into()));
        }
        let given = [
            new.segment.is_some(),
            new.polling_place.is_some(),
            new.precinct.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            return Err(TurnoutError::Invalid(
                "give at most one of segment, polling_place and precinct".into(),
            ));
        }
        let source = if let Some(seg) = new.segment {
            let s = self
                .store()
                .segment(SegmentId(seg))
                .await
                .map_err(|e| match e {
                    StoreError::NotFound(_) => TurnoutError::NotFound("segment"),
                    e => e.into(),
                })?;
            ListSource::Segment(s.filter)
        } else if let Some(code) = &new.polling_place {
            let code = code.trim().to_ascii_uppercase();
            self.store()
                .polling_place(&code)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound(_) => TurnoutError::NotFound("polling place"),
                    e => e.into(),
                })?;
            ListSource::PollingPlace(code)
        } else if let Some(p) = &new.precinct {
            ListSource::Precinct(
                p.county.trim().to_ascii_uppercase(),
                p.precinct.trim().to_ascii_uppercase(),
            )
        } else {
            ListSource::Empty
        };
        let id = self
            .store()
            .create_gotv_list(new.kind.as_str(), name, &source)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => TurnoutError::Invalid(format!("{m} already exists")),
                e => e.into(),
            })?;
        tracing::info!(list.id = id, kind = new.kind.as_str(), "GOTV list created");
        Ok(self.store().gotv_list(id).await?)
    }

    /// Assigns people to a list (people outside the universe are skipped). Returns how
    /// many were added now.
    pub async fn assign(&self, list: i64, people: &[PersonId]) -> Result<u64, TurnoutError> {
        self.store()
            .add_gotv_list_members(list, people)
            .await
            .map_err(not_found)
    }

    /// Every turf and call list with members and remaining counts.
    pub async fn lists(&self) -> Result<Vec<GotvList>, TurnoutError> {
        Ok(self.store().gotv_lists().await?)
    }

    /// One list with its counts.
    pub async fn list(&self, id: i64) -> Result<GotvList, TurnoutError> {
        self.store().gotv_list(id).await.map_err(not_found)
    }

    /// A page of a list's members not yet voted.
    pub async fn list_remaining(
        &self,
        id: i64,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<ListRow>, TurnoutError> {
        self.store()
            .gotv_list_remaining(id, after, limit)
            .await?
            .into_iter()
            .map(row)
            .collect()
    }

    /// A list's export (see [`export_csv`]), read as it is now.
    pub async fn export_list(&self, id: i64) -> Result<(GotvList, Vec<u8>), TurnoutError> {
        let list = self.list(id).await?;
        let kind = if list.kind == "calls" {
            ListKind::Calls
        } else {
            ListKind::Turf
        };
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_remaining(id, after, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            after = page.last().map(|r| r.person_id);
            rows.extend(page);
            if !full {
                break;
            }
        }
        Ok((list, export_csv(kind, rows)?))
    }
}

fn not_found(e: StoreError) -> TurnoutError {
    match e {
        StoreError::NotFound(_) => TurnoutError::NotFound("turf or call list"),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: i64, addr: &str, city: &str, phone: Option<&str>, last: &str) -> ListRow {
        ListRow {
            person_id: PersonId(id),
            voter_code: format!("{id:08}"),
            first_name: None,
            last_name: Some(last.into()),
            address: Some(addr.into()),
            address2: None,
            city: Some(city.into()),
            zip: Some("43201".into()),
            phone: phone.map(Into::into),
            precinct: "P".into(),
            polling_place: "PL".into(),
        }
    }

    #[test]
    fn turf_walks_by_street_then_house_number() {
        let rows = vec![
            r(1, "10 Oak St", "Columbus", None, "A"),
            r(2, "9 Oak St", "Columbus", None, "B"),
            r(3, "2 Elm St", "Columbus", None, "C"),
            r(4, "1 Oak St", "Akron", None, "D"),
        ];
        let csv = String::from_utf8(export_csv(ListKind::Turf, rows).unwrap()).unwrap();
        let order: Vec<&str> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(3).unwrap())
            .collect();
        assert_eq!(order, ["1 Oak St", "2 Elm St", "9 Oak St", "10 Oak St"]);
    }

    #[test]
    fn call_sheet_keeps_phones_only() {
        let rows = vec![
            r(1, "1 A", "X", Some("+16145550100"), "Zed"),
            r(2, "1 A", "X", None, "Abe"),
            r(3, "1 A", "X", Some("+16145550101"), "Bo"),
        ];
        let csv = String::from_utf8(export_csv(ListKind::Calls, rows).unwrap()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "voter_code,first_name,last_name,phone,precinct,polling_place"
        );
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("Bo") && lines[2].contains("Zed"));
    }
}
