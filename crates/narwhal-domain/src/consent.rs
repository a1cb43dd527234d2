//! Consent per contact channel.

use crate::ParseError;
use serde::{Deserialize, Serialize};

/// A channel Narwhal contacts people on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "email" => Ok(Self::Email),
            "sms" => Ok(Self::Sms),
            _ => Err(ParseError::new("channel", "expected email or sms")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }
}

/// Where a person stands on one channel.
///
/// `Unknown` means no source has said; bulk mail goes only to `Subscribed`.
/// `Bounced` and `Complained` come from the provider and are never overridden by an
/// import that says "subscribed": only an explicit re-subscription by the person is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentState {
    #[default]
    Unknown,
    Subscribed,
    Unsubscribed,
    Bounced,
    Complained,
}

impl ConsentState {
    pub const ALL: [ConsentState; 5] = [
        Self::Unknown,
        Self::Subscribed,
        Self::Unsubscribed,
        Self::Bounced,
        Self::Complained,
    ];

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "unknown" => Ok(Self::Unknown),
            "subscribed" | "yes" | "y" | "true" | "1" | "opt-in" | "optin" => Ok(Self::Subscribed),
            "unsubscribed" | "no" | "n" | "false" | "0" | "opt-out" | "optout" => {
                Ok(Self::Unsubscribed)
            }
            "bounced" => Ok(Self::Bounced),
            "complained" => Ok(Self::Complained),
            _ => Err(ParseError::new(
                "consent",
                "expected subscribed, unsubscribed, bounced, complained or unknown",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Subscribed => "subscribed",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
        }
    }

    /// The state after a source reports `incoming`. A bulk source (an import) cannot
    /// lift an unsubscribe, bounce or complaint; a direct action by the person can.
    pub fn merge(self, incoming: ConsentState, direct_from_person: bool) -> ConsentState {
        use ConsentState::*;
        match (self, incoming) {
            (_, Unknown) => self,
            (Unsubscribed | Bounced | Complained, Subscribed) if !direct_from_person => self,
            // A complaint outranks everything a bulk source says.
            (Complained, _) if !direct_from_person => self,
            _ => incoming,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConsentState::*;

    #[test]
    fn imports_cannot_resubscribe() {
        assert_eq!(Unsubscribed.merge(Subscribed, false), Unsubscribed);
        assert_eq!(Bounced.merge(Subscribed, false), Bounced);
        assert_eq!(Complained.merge(Unsubscribed, false), Complained);
        assert_eq!(Unsubscribed.merge(Subscribed, true), Subscribed);
        assert_eq!(Unknown.merge(Subscribed, false), Subscribed);
        assert_eq!(Subscribed.merge(Unknown, false), Subscribed);
        assert_eq!(Subscribed.merge(Unsubscribed, false), Unsubscribed);
    }
}
