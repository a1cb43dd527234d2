//! Money as integer cents, parsed from what a donor types.

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A positive amount of US dollars, in cents. Never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(i64);

/// The largest single amount we accept ($1,000,000): far above any legal gift, small
/// enough that sums of many never overflow.
pub const MAX_CENTS: i64 = 100_000_000;

impl Cents {
    /// An amount from a whole number of cents: must be 1..=[`MAX_CENTS`].
    pub fn new(cents: i64) -> Result<Self, ParseError> {
        if cents <= 0 {
            return Err(ParseError::new("amount", "it must be more than zero"));
        }
        if cents > MAX_CENTS {
            return Err(ParseError::new("amount", "it is larger than $1,000,000"));
        }
        Ok(Self(cents))
    }

    /// Parses `"25"`, `"25.5"`, `"25.50"`, `"$1,000.00"`; refuses negative, zero,
    /// non-numeric and more than two decimals.
    pub fn parse_dollars(raw: &str) -> Result<Self, ParseError> {
        let err = |r: &str| Err(ParseError::new("amount", r));
        let s = raw.trim();
        let s = s.strip_prefix('$').unwrap_or(s).trim();
        if s.is_empty() {
            return err("it is empty");
        }
        if s.starts_with('-') {
            return err("it must be more than zero");
        }
        let s: String = s.chars().filter(|c| *c != ',').collect();
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s.as_str(), ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return err("it is not a number");
        }
        if !whole.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            return err("it is not a number");
        }
        if frac.len() > 2 {
            return err("it has more than two decimals");
        }
        if whole.len() > 9 {
            return err("it is larger than $1,000,000");
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| ParseError::new("amount", "it is not a number"))?
        };
        let frac_cents: i64 = match frac.len() {
            0 => 0,
            1 => i64::from(frac.as_bytes()[0] - b'0') * 10,
            _ => i64::from(frac.as_bytes()[0] - b'0') * 10 + i64::from(frac.as_bytes()[1] - b'0'),
        };
        Self::new(whole * 100 + frac_cents)
    }

    /// The amount in cents.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Cents {
    /// `$1,234.50`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", format_dollars(self.0))
    }
}

/// Formats any (possibly negative or zero) number of cents as `$1,234.50`.
pub fn format_dollars(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let whole = (abs / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{sign}${grouped}.{:02}", abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_donors_type() {
        for (raw, cents) in [
            ("25", 2500),
            ("25.5", 2550),
            ("25.50", 2550),
            ("$1,000.00", 100_000),
            (" 3500 ", 350_000),
            (".99", 99),
            ("0.01", 1),
        ] {
            assert_eq!(
                Cents::parse_dollars(raw).map(Cents::get),
                Ok(cents),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_bad_amounts_with_a_reason() {
        for (raw, reason) in [
            ("-5", "more than zero"),
            ("0", "more than zero"),
            ("0.00", "more than zero"),
            ("abc", "not a number"),
            ("12.345", "more than two decimals"),
            ("1e3", "not a number"),
            ("", "empty"),
            ("10000000", "larger"),
            ("1.2.3", "not a number"),
            (".", "not a number"),
        ] {
            let e = Cents::parse_dollars(raw).unwrap_err();
            assert!(e.reason.contains(reason), "{raw}: {e}");
        }
    }

    #[test]
    fn formats_with_grouping() {
        assert_eq!(format_dollars(12_345_678), "$123,456.78");
        assert_eq!(format_dollars(5), "$0.05");
        assert_eq!(format_dollars(-350_000), "-$3,500.00");
    }
}
