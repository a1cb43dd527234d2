//! Tags: short labels such as `volunteer` or `donor:2024`.

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A tag, lower-cased, 1 to 64 characters of letters, digits, space and `_-:.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = crate::text::collapse_whitespace(raw).to_lowercase();
        if s.is_empty() || s.chars().count() > 64 {
            return Err(ParseError::new("tag", "a tag has 1 to 64 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_alphanumeric() || " _-:.".contains(c))
        {
            return Err(ParseError::new(
                "tag",
                "a tag has only letters, digits, spaces and _-:.",
            ));
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tag {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> Self {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_normalize() {
        assert_eq!(
            Tag::parse("  Volunteer   Lead ").unwrap().as_str(),
            "volunteer lead"
        );
        assert!(Tag::parse("").is_err());
        assert!(Tag::parse("drop;table").is_err());
        assert!(Tag::parse(&"x".repeat(65)).is_err());
    }
}
