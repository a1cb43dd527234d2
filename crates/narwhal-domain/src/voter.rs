//! Voter-file identifiers.

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A state voter-file ID: trimmed, upper-cased, 1 to 32 letters, digits or hyphens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VoterId(String);

impl VoterId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim().to_ascii_uppercase();
        if s.is_empty() || s.len() > 32 {
            return Err(ParseError::new(
                "voter id",
                "a voter id has 1 to 32 characters",
            ));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ParseError::new(
                "voter id",
                "a voter id has only letters, digits and hyphens",
            ));
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VoterId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<VoterId> for String {
    fn from(v: VoterId) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voter_ids() {
        assert_eq!(VoterId::parse(" oh-000123 ").unwrap().as_str(), "OH-000123");
        assert!(VoterId::parse("").is_err());
        assert!(VoterId::parse("12 34").is_err());
    }
}
