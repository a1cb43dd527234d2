//! A wrapper for personal data whose `Debug` output is redacted.

use serde::{Deserialize, Serialize};

/// Personal data (a name, an address line, a birth date) that must not appear in logs.
///
/// `Debug` prints `[redacted]`; reading the value is the explicit call [`Pii::expose`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pii<T>(T);

impl<T> Pii<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Pii::new("Jane Q. Voter".to_string());
        assert_eq!(format!("{p:?}"), "[redacted]");
        assert_eq!(p.expose(), "Jane Q. Voter");
    }
}
