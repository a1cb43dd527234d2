//! Email addresses, normalized so that the same mailbox always compares equal.

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A syntactically valid email address, trimmed and lower-cased.
///
/// Lower-casing the local part is not strictly RFC 5321, but every large mailbox
/// provider treats it case-insensitively, and identity resolution needs one key per
/// mailbox. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim().trim_start_matches("mailto:").to_lowercase();
        let err = |r: &str| Err(ParseError::new("email", r));
        if s.is_empty() {
            return err("it is empty");
        }
        if s.len() > 254 {
            return err("it is longer than 254 characters");
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return err("it has no @");
        };
        if local.is_empty() || local.len() > 64 {
            return err("the part before @ must be 1 to 64 characters");
        }
        if local.contains('@')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return err("the part before @ is malformed");
        }
        if !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
        {
            return err("the part before @ has a character that is not allowed");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return err("the domain has no dot");
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return err("the domain has an empty or overlong label");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return err("a domain label starts or ends with a hyphen");
            }
            if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return err("the domain has a character that is not allowed");
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return err("the top-level domain is numeric");
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Email([redacted])")
    }
}

impl TryFrom<String> for Email {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> Self {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_case_and_whitespace() {
        let e = Email::parse("  Jane.Doe+news@Example.ORG \n").unwrap();
        assert_eq!(e.as_str(), "jane.doe+news@example.org");
        assert_eq!(e.domain(), "example.org");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a@b",
            "a@@b.org",
            "a b@c.org",
            "a@-x.org",
            "a@x..org",
            ".a@x.org",
            "a.@x.org",
            "a@x.123",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn debug_does_not_leak() {
        let e = Email::parse("secret@example.org").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }

    proptest! {
        #[test]
        fn parse_is_idempotent(s in "\\PC{0,40}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(e.as_str()).unwrap(), e);
            }
        }

        #[test]
        fn valid_shapes_parse(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-z0-9]{1,10}\\.[a-z]{2,6}") {
            prop_assume!(!local.starts_with('.') && !local.ends_with('.') && !local.contains(".."));
            let e = Email::parse(&format!("{local}@{domain}")).unwrap();
            prop_assert_eq!(e.as_str(), format!("{}@{}", local.to_lowercase(), domain));
        }
    }
}
