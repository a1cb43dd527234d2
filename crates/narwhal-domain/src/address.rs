//! US postal addresses and their normalized matching key.

use crate::text::{collapse_whitespace, non_empty};
use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A two-letter USPS state or territory code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UsState([u8; 2]);

const STATES: &[(&str, &str)] = &[
    ("AL", "ALABAMA"),
    ("AK", "ALASKA"),
    ("AZ", "ARIZONA"),
    ("AR", "ARKANSAS"),
    ("CA", "CALIFORNIA"),
    ("CO", "COLORADO"),
    ("CT", "CONNECTICUT"),
    ("DE", "DELAWARE"),
    ("DC", "DISTRICT OF COLUMBIA"),
    ("FL", "FLORIDA"),
    ("GA", "GEORGIA"),
    ("HI", "HAWAII"),
    ("ID", "IDAHO"),
    ("IL", "ILLINOIS"),
    ("IN", "INDIANA"),
    ("IA", "IOWA"),
    ("KS", "KANSAS"),
    ("KY", "KENTUCKY"),
    ("LA", "LOUISIANA"),
    ("ME", "MAINE"),
    ("MD", "MARYLAND"),
    ("MA", "MASSACHUSETTS"),
    ("MI", "MICHIGAN"),
    ("MN", "MINNESOTA"),
    ("MS", "MISSISSIPPI"),
    ("MO", "MISSOURI"),
    ("MT", "MONTANA"),
    ("NE", "NEBRASKA"),
    ("NV", "NEVADA"),
    ("NH", "NEW HAMPSHIRE"),
    ("NJ", "NEW JERSEY"),
    ("NM", "NEW MEXICO"),
    ("NY", "NEW YORK"),
    ("NC", "NORTH CAROLINA"),
    ("ND", "NORTH DAKOTA"),
    ("OH", "OHIO"),
    ("OK", "OKLAHOMA"),
    ("OR", "OREGON"),
    ("PA", "PENNSYLVANIA"),
    ("RI", "RHODE ISLAND"),
    ("SC", "SOUTH CAROLINA"),
    ("SD", "SOUTH DAKOTA"),
    ("TN", "TENNESSEE"),
    ("TX", "TEXAS"),
    ("UT", "UTAH"),
    ("VT", "VERMONT"),
    ("VA", "VIRGINIA"),
    ("WA", "WASHINGTON"),
    ("WV", "WEST VIRGINIA"),
    ("WI", "WISCONSIN"),
    ("WY", "WYOMING"),
    ("PR", "PUERTO RICO"),
    ("GU", "GUAM"),
    ("VI", "VIRGIN ISLANDS"),
    ("AS", "AMERICAN SAMOA"),
    ("MP", "NORTHERN MARIANA ISLANDS"),
];

impl UsState {
    /// Accepts a code (`oh`, `OH`) or a full name (`Ohio`).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let up = collapse_whitespace(raw).to_ascii_uppercase();
        let up = up.trim_end_matches('.');
        for (code, name) in STATES {
            if up == *code || up == *name {
                let b = code.as_bytes();
                return Ok(Self([b[0], b[1]]));
            }
        }
        Err(ParseError::new(
            "state",
            "not a US state or territory code or name",
        ))
    }

    pub fn as_str(&self) -> &str {
        // Built only from the ASCII table above.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl TryFrom<String> for UsState {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UsState> for String {
    fn from(s: UsState) -> Self {
        s.as_str().to_string()
    }
}

/// A postal address with its electoral geography. Every part is optional because
/// sources are partial; `Debug` is redacted except for state, county and precinct,
/// which are not personal.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PostalAddress {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<UsState>,
    pub zip: Option<String>,
    pub county: Option<String>,
    pub precinct: Option<String>,
}

impl std::fmt::Debug for PostalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostalAddress")
            .field("state", &self.state)
            .field("county", &self.county)
            .field("precinct", &self.precinct)
            .finish_non_exhaustive()
    }
}

/// Word replacements for the matching key: USPS standard suffixes and directionals.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("STREET", "ST"),
    ("AVENUE", "AVE"),
    ("ROAD", "RD"),
    ("DRIVE", "DR"),
    ("BOULEVARD", "BLVD"),
    ("LANE", "LN"),
    ("COURT", "CT"),
    ("PLACE", "PL"),
    ("TERRACE", "TER"),
    ("CIRCLE", "CIR"),
    ("PARKWAY", "PKWY"),
    ("HIGHWAY", "HWY"),
    ("SQUARE", "SQ"),
    ("TRAIL", "TRL"),
    ("WAY", "WAY"),
    ("NORTH", "N"),
    ("SOUTH", "S"),
    ("EAST", "E"),
    ("WEST", "W"),
    ("NORTHEAST", "NE"),
    ("NORTHWEST", "NW"),
    ("SOUTHEAST", "SE"),
    ("SOUTHWEST", "SW"),
    ("APARTMENT", "APT"),
    ("SUITE", "STE"),
    ("#", "APT"),
];

impl PostalAddress {
    /// Builds an address from raw parts, normalizing whitespace, the state and the ZIP.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        line1: &str,
        line2: &str,
        city: &str,
        state: &str,
        zip: &str,
        county: &str,
        precinct: &str,
    ) -> Result<Self, ParseError> {
        let state = match non_empty(state) {
            Some(s) => Some(UsState::parse(&s)?),
            None => None,
        };
        let zip = match non_empty(zip) {
            Some(z) => Some(Self::parse_zip(&z)?),
            None => None,
        };
        Ok(Self {
            line1: non_empty(line1),
            line2: non_empty(line2),
            city: non_empty(city),
            state,
            zip,
            county: non_empty(county).map(|c| c.to_ascii_uppercase()),
            precinct: non_empty(precinct).map(|p| p.to_ascii_uppercase()),
        })
    }

    /// `43215`, `43215-1234` and `432151234` are accepted; a 4-digit ZIP that lost its
    /// leading zero in a spreadsheet (`2134`) is repaired.
    pub fn parse_zip(raw: &str) -> Result<String, ParseError> {
        let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
        if raw
            .chars()
            .any(|c| !(c.is_ascii_digit() || c == '-' || c == ' '))
        {
            return Err(ParseError::new(
                "zip",
                "a ZIP code has only digits and a hyphen",
            ));
        }
        match digits.len() {
            4 => Ok(format!("0{digits}")),
            5 => Ok(digits),
            9 => Ok(format!("{}-{}", &digits[..5], &digits[5..])),
            _ => Err(ParseError::new("zip", "a ZIP code has 5 or 9 digits")),
        }
    }

    /// The matching key: upper case, punctuation dropped, standard abbreviations, ZIP5.
    /// `None` when there is no street line.
    pub fn match_key(&self) -> Option<String> {
        let line1 = self.line1.as_deref()?;
        let mut parts: Vec<String> = Vec::new();
        for raw in [Some(line1), self.line2.as_deref()].into_iter().flatten() {
            let cleaned: String = raw
                .to_ascii_uppercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '#' {
                        c
                    } else {
                        ' '
                    }
                })
                .collect();
            for word in cleaned.split_whitespace() {
                let w = ABBREVIATIONS
                    .iter()
                    .find(|(long, _)| *long == word)
                    .map(|(_, short)| *short)
                    .unwrap_or(word);
                parts.push(w.to_string());
            }
        }
        if let Some(z) = &self.zip {
            parts.push(z[..5.min(z.len())].to_string());
        } else if let Some(c) = &self.city {
            parts.push(c.to_ascii_uppercase());
        }
        Some(parts.join(" "))
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_by_code_or_name() {
        assert_eq!(UsState::parse("oh").unwrap().as_str(), "OH");
        assert_eq!(UsState::parse(" New  York ").unwrap().as_str(), "NY");
        assert!(UsState::parse("Ohioo").is_err());
    }

    #[test]
    fn zips() {
        assert_eq!(PostalAddress::parse_zip("2134").unwrap(), "02134");
        assert_eq!(PostalAddress::parse_zip("432151234").unwrap(), "43215-1234");
        assert!(PostalAddress::parse_zip("ABCDE").is_err());
        assert!(PostalAddress::parse_zip("123").is_err());
    }

    #[test]
    fn match_key_folds_forms() {
        let a = PostalAddress::parse(
            "123 North Main Street",
            "Apartment 4",
            "Columbus",
            "Ohio",
            "43215",
            "",
            "",
        )
        .unwrap();
        let b = PostalAddress::parse(
            "123 N. MAIN ST",
            "APT 4",
            "columbus",
            "OH",
            "43215-0001",
            "",
            "",
        )
        .unwrap();
        assert_eq!(a.match_key(), b.match_key());
        assert_eq!(a.match_key().unwrap(), "123 N MAIN ST APT 4 43215");
    }

    #[test]
    fn debug_redacts_street() {
        let a = PostalAddress::parse("1 Secret Ln", "", "", "OH", "", "FRANKLIN", "").unwrap();
        let d = format!("{a:?}");
        assert!(!d.contains("Secret") && d.contains("FRANKLIN"));
    }
}
