//! Pure values of election day: voter codes, report ids, channels, secrets.

use serde::{Deserialize, Serialize};

/// The Damm quasigroup: a check digit that catches every single-digit error and
/// every swap of adjacent digits, the two mistakes of a code read over the phone.
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

fn damm(digits: impl Iterator<Item = u8>) -> u8 {
    digits.fold(0, |acc, d| DAMM[acc as usize][d as usize])
}

/// A supporter's voter code for phone and SMS entry: 7 digits unique in the election
/// (stored) plus a Damm check digit (computed), shown as 8 digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoterCode(i64);

impl VoterCode {
    /// From the stored 7-digit number.
    pub fn from_stored(n: i64) -> Option<Self> {
        (0..narwhal_store::turnout::CODE_SPACE)
            .contains(&n)
            .then_some(Self(n))
    }

    /// The stored 7-digit number.
    pub fn stored(self) -> i64 {
        self.0
    }

    /// Parses 8 digits; spaces and dashes are ignored. A wrong check digit is an
    /// error that tells the reporter to read the code again.
    pub fn parse(s: &str) -> Result<Self, narwhal_domain::ParseError> {
        let digits: Vec<u8> = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_digit(10).map(|d| d as u8))
            .collect::<Option<_>>()
            .ok_or_else(|| narwhal_domain::ParseError::new("voter code", "only digits"))?;
        if digits.len() != 8 {
            return Err(narwhal_domain::ParseError::new(
                "voter code",
                "a voter code has 8 digits",
            ));
        }
        if damm(digits.iter().copied()) != 0 {
            return Err(narwhal_domain::ParseError::new(
                "voter code",
                "the check digit does not match; read the code again",
            ));
        }
        let n = digits[..7].iter().fold(0i64, |n, d| n * 10 + i64::from(*d));
        Ok(Self(n))
    }
}

impl std::fmt::Display for VoterCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base = format!("{:07}", self.0);
        let check = damm(base.bytes().map(|b| b - b'0'));
        write!(f, "{base}{check}")
    }
}

/// Codes identify voters: debug output does not show them.
impl std::fmt::Debug for VoterCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VoterCode([redacted])")
    }
}

/// A client-generated report id (a UUID or ULID): 1 to 64 letters, digits, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ReportId(String);

impl ReportId {
    pub fn parse(s: &str) -> Result<Self, narwhal_domain::ParseError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 {
            return Err(narwhal_domain::ParseError::new(
                "report id",
                "a report id has 1 to 64 characters",
            ));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(narwhal_domain::ParseError::new(
                "report id",
                "letters, digits, - and _ only (a UUID or ULID)",
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a report reached us. Every channel feeds the same ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The poll-watcher app.
    App,
    /// Staff bulk entry (pasted codes, a CSV of voted ids).
    Bulk,
    /// An inbound SMS.
    Sms,
    /// A state's early-vote or absentee file, imported by staff.
    #[serde(rename = "early_vote")]
    EarlyVote,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Bulk => "bulk",
            Self::Sms => "sms",
            Self::EarlyVote => "early_vote",
        }
    }
}

/// A secret shown once (a PIN, a login-link token). `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }
    /// The plaintext, to hand to the watcher once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damm_matches_the_published_example() {
        // 572 has check digit 4.
        assert_eq!(damm([5, 7, 2].into_iter()), 4);
        assert_eq!(damm([5, 7, 2, 4].into_iter()), 0);
    }

    #[test]
    fn codes_round_trip_and_catch_typos() {
        for n in [0, 1, 42, 1_234_567, 9_999_999] {
            let c = VoterCode::from_stored(n).unwrap();
            let s = c.to_string();
            assert_eq!(s.len(), 8);
            assert_eq!(VoterCode::parse(&s).unwrap(), c);
            assert_eq!(
                VoterCode::parse(&format!("{} {}", &s[..4], &s[4..])).unwrap(),
                c
            );
            // Every single-digit change and every adjacent swap is caught.
            let b: Vec<u8> = s.bytes().collect();
            for i in 0..8 {
                for d in b'0'..=b'9' {
                    if d == b[i] {
                        continue;
                    }
                    let mut t = b.clone();
                    t[i] = d;
                    assert!(VoterCode::parse(std::str::from_utf8(&t).unwrap()).is_err());
                }
                if i < 7 && b[i] != b[i + 1] {
                    let mut t = b.clone();
                    t.swap(i, i + 1);
                    assert!(VoterCode::parse(std::str::from_utf8(&t).unwrap()).is_err());
                }
            }
        }
        assert!(VoterCode::from_stored(10_000_000).is_none());
        assert!(VoterCode::parse("1234567").is_err());
        assert!(VoterCode::parse("1234567x").is_err());
        assert_eq!(
            format!("{:?}", VoterCode::from_stored(5).unwrap()),
            "VoterCode([redacted])"
        );
    }

    #[test]
    fn report_ids() {
        assert!(ReportId::parse("01HZX3Q9J7K2M4N6P8R0S2T4V6").is_ok());
        assert!(ReportId::parse("6f1c1e9e-2b7a-4f57-9a53-0d0f7e7c0b1a").is_ok());
        assert!(ReportId::parse("").is_err());
        assert!(ReportId::parse("a b").is_err());
        assert!(ReportId::parse(&"x".repeat(65)).is_err());
    }
}
