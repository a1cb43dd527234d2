//! Phone numbers in E.164 form (`+15551234567`).

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A phone number in E.164 form. Input without a country code is read as a North
/// American number (the campaigns Narwhal is built for are US campaigns).
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneE164(String);

impl PhoneE164 {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = |r: &str| Err(ParseError::new("phone", r));
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return err("it is empty");
        }
        // Drop an extension ("x123", "ext. 4") before looking at the digits.
        let lower = trimmed.to_ascii_lowercase();
        let main = match lower.find(['x', 'e']) {
            Some(i) if lower[i..].starts_with('x') || lower[i..].starts_with("ext") => &lower[..i],
            _ => lower.as_str(),
        };
        let international =
            main.trim_start().starts_with('+') || main.trim_start().starts_with("00");
        let mut digits = String::with_capacity(16);
        for c in main.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' | '+' | '/' => {}
                _ => return err("it has a character that is not a digit or separator"),
            }
        }
        if international {
            let d = digits.strip_prefix("00").unwrap_or(&digits);
            if !(8..=15).contains(&d.len()) || d.starts_with('0') {
                return err("an international number must have 8 to 15 digits after the +");
            }
            return Self::nanp_check(d).map(|()| Self(format!("+{d}")));
        }
        let national = match digits.len() {
            10 => digits.as_str(),
            11 if digits.starts_with('1') => &digits[1..],
            _ => return err("a US number must have 10 digits, or 11 starting with 1"),
        };
        let full = format!("1{national}");
        Self::nanp_check(&full)?;
        Ok(Self(format!("+{full}")))
    }

    /// North American numbers: area code and exchange cannot start with 0 or 1.
    fn nanp_check(d: &str) -> Result<(), ParseError> {
        if let Some(n) = d.strip_prefix('1') {
            if n.len() == 10 {
                let b = n.as_bytes();
                if b[0] < b'2' || b[3] < b'2' {
                    return Err(ParseError::new(
                        "phone",
                        "a US area code and exchange cannot start with 0 or 1",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PhoneE164 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneE164([redacted])")
    }
}

impl TryFrom<String> for PhoneE164 {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneE164> for String {
    fn from(p: PhoneE164) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn us_formats_agree() {
        for raw in [
            "(614) 555-0123",
            "614-555-0123",
            "614.555.0123",
            "6145550123",
            "1 614 555 0123",
            "+1 (614) 555-0123",
            "001 614 555 0123",
            "614-555-0123 x42",
            "614 555 0123 ext. 9",
        ] {
            assert_eq!(
                PhoneE164::parse(raw).unwrap().as_str(),
                "+16145550123",
                "{raw}"
            );
        }
    }

    #[test]
    fn international_kept() {
        assert_eq!(
            PhoneE164::parse("+44 20 7946 0958").unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            "",
            "555-0123",
            "call me",
            "+12",
            "(014) 555-0123",
            "614-155-0123",
            "12345678901234567",
        ] {
            assert!(PhoneE164::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "\\PC{0,30}") {
            if let Ok(p) = PhoneE164::parse(&s) {
                prop_assert_eq!(PhoneE164::parse(p.as_str()).unwrap(), p);
            }
        }
    }
}
