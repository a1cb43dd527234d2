//! Segment filters: a small boolean language over tags, fields, consent and geography.
//!
//! JSON form, externally tagged:
//! `{"all":[{"state":"OH"},{"county":"FRANKLIN"},{"consent":{"channel":"email","state":"subscribed"}},{"not":{"tag":"donor"}}]}`.

use crate::{Channel, ConsentState, CustomFieldKey, ListId, ParseError, Tag, UsState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SegmentFilter {
    All(Vec<SegmentFilter>),
    Any(Vec<SegmentFilter>),
    Not(Box<SegmentFilter>),
    Tag(Tag),
    State(UsState),
    County(String),
    Precinct(String),
    Zip(String),
    InList(ListId),
    Consent {
        channel: Channel,
        state: ConsentState,
    },
    Field {
        key: CustomFieldKey,
        op: FieldOp,
        #[serde(default)]
        value: Option<String>,
    },
    HasEmail,
    HasPhone,
    HasVoterId,
}

/// How a custom field is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldOp {
    Eq,
    Ne,
    Exists,
}

/// Limits that keep a filter cheap to compile and run.
pub const MAX_DEPTH: usize = 8;
pub const MAX_NODES: usize = 200;

impl SegmentFilter {
    /// Parses and checks a filter from JSON.
    pub fn parse(value: &serde_json::Value) -> Result<Self, ParseError> {
        let f: SegmentFilter = serde_json::from_value(value.clone())
            .map_err(|e| ParseError::new("segment filter", e.to_string()))?;
        f.check()?;
        Ok(f)
    }

    /// Depth and size limits, and values that must be present.
    pub fn check(&self) -> Result<(), ParseError> {
        let mut nodes = 0;
        self.walk(1, &mut nodes)
    }

    fn walk(&self, depth: usize, nodes: &mut usize) -> Result<(), ParseError> {
        *nodes += 1;
        if depth > MAX_DEPTH {
            return Err(ParseError::new(
                "segment filter",
                format!("nested deeper than {MAX_DEPTH}"),
            ));
        }
        if *nodes > MAX_NODES {
            return Err(ParseError::new(
                "segment filter",
                format!("more than {MAX_NODES} conditions"),
            ));
        }
        match self {
            Self::All(v) | Self::Any(v) => {
                if v.is_empty() {
                    return Err(ParseError::new(
                        "segment filter",
                        "all/any needs at least one condition",
                    ));
                }
                v.iter().try_for_each(|f| f.walk(depth + 1, nodes))
            }
            Self::Not(f) => f.walk(depth + 1, nodes),
            Self::Field {
                op: FieldOp::Eq | FieldOp::Ne,
                value: None,
                ..
            } => Err(ParseError::new(
                "segment filter",
                "field eq/ne needs a value",
            )),
            Self::County(s) | Self::Precinct(s) | Self::Zip(s) if s.trim().is_empty() => Err(
                ParseError::new("segment filter", "county, precinct and zip need a value"),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_nested() {
        let f = SegmentFilter::parse(&json!({"all":[{"state":"ohio"},{"not":{"tag":"Donor"}},
            {"consent":{"channel":"email","state":"subscribed"}},"has_email",
            {"field":{"key":"party","op":"eq","value":"D"}}]}))
        .unwrap();
        let SegmentFilter::All(v) = f else {
            panic!("not all")
        };
        assert_eq!(v[0], SegmentFilter::State(UsState::parse("OH").unwrap()));
        assert_eq!(
            v[1],
            SegmentFilter::Not(Box::new(SegmentFilter::Tag(Tag::parse("donor").unwrap())))
        );
        assert_eq!(v[3], SegmentFilter::HasEmail);
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            json!({"all":[]}),
            json!({"shoe":"x"}),
            json!({"state":"XX"}),
            json!({"field":{"key":"party","op":"eq"}}),
            json!({"county":"  "}),
        ] {
            assert!(SegmentFilter::parse(&bad).is_err(), "{bad}");
        }
        let mut deep = json!("has_email");
        for _ in 0..10 {
            deep = json!({ "not": deep });
        }
        assert!(SegmentFilter::parse(&deep).is_err());
    }
}
