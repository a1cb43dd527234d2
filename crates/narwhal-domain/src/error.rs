//! The one error every `parse` in this crate returns: which kind of value, and why.

/// A value from outside (a CSV cell, a JSON field, a CLI flag) was not acceptable.
///
/// `what` names the kind of value ("email", "phone", ...); `reason` is a short, safe
/// English sentence that never repeats the rejected value itself (it may be PII).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    pub what: &'static str,
    pub reason: String,
}

impl ParseError {
    pub fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}
