//! Roles and scopes. Access is denied unless a scope grants it.

use crate::ParseError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Staff,
    Volunteer,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Self::Admin),
            "staff" => Ok(Self::Staff),
            "volunteer" => Ok(Self::Volunteer),
            _ => Err(ParseError::new(
                "role",
                "expected admin, staff or volunteer",
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Staff => "staff",
            Self::Volunteer => "volunteer",
        }
    }
    /// What a login of this role may do.
    pub fn scopes(self) -> &'static [Scope] {
        use Scope::*;
        match self {
            Self::Admin => &[
                PeopleRead,
                PeopleWrite,
                ListsRead,
                ListsWrite,
                ImportsWrite,
                Export,
                AuditRead,
                MailRead,
                MailSend,
                DonationsRead,
                DonationsWrite,
                DonationsRefund,
                Admin,
            ],
            Self::Staff => &[
                PeopleRead,
                PeopleWrite,
                ListsRead,
                ListsWrite,
                ImportsWrite,
                Export,
                AuditRead,
                MailRead,
                MailSend,
                DonationsRead,
                DonationsWrite,
                DonationsRefund,
            ],
            Self::Volunteer => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "people:read")]
    PeopleRead,
    #[serde(rename = "people:write")]
    PeopleWrite,
    #[serde(rename = "lists:read")]
    ListsRead,
    #[serde(rename = "lists:write")]
    ListsWrite,
    #[serde(rename = "imports:write")]
    ImportsWrite,
    #[serde(rename = "export")]
    Export,
    #[serde(rename = "audit:read")]
    AuditRead,
    #[serde(rename = "mail:read")]
    MailRead,
    #[serde(rename = "mail:send")]
    MailSend,
    /// Read donations, donors' totals and the processors' health.
    #[serde(rename = "donations:read")]
    DonationsRead,
    /// Take donations (server-to-server callers; the public page needs no scope).
    #[serde(rename = "donations:write")]
    DonationsWrite,
    /// Refund donations (staff).
    #[serde(rename = "donations:refund")]
    DonationsRefund,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 13] = [
        Self::PeopleRead,
        Self::PeopleWrite,
        Self::ListsRead,
        Self::ListsWrite,
        Self::ImportsWrite,
        Self::Export,
        Self::AuditRead,
        Self::MailRead,
        Self::MailSend,
        Self::DonationsRead,
        Self::DonationsWrite,
        Self::DonationsRefund,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeopleRead => "people:read",
            Self::PeopleWrite => "people:write",
            Self::ListsRead => "lists:read",
            Self::ListsWrite => "lists:write",
            Self::ImportsWrite => "imports:write",
            Self::Export => "export",
            Self::AuditRead => "audit:read",
            Self::MailRead => "mail:read",
            Self::MailSend => "mail:send",
            Self::DonationsRead => "donations:read",
            Self::DonationsWrite => "donations:write",
            Self::DonationsRefund => "donations:refund",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| {
                ParseError::new("scope", format!("unknown scope; known: {}", Self::list()))
            })
    }

    /// Parses a comma-separated list such as `people:read,lists:read`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, ParseError> {
        let mut out: Vec<Self> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn list() -> String {
        Self::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volunteers_get_nothing_by_default() {
        assert!(Role::Volunteer.scopes().is_empty());
        assert!(!Role::Staff.scopes().contains(&Scope::Admin));
        assert!(Role::Admin.scopes().contains(&Scope::Admin));
    }

    #[test]
    fn scope_lists() {
        assert_eq!(
            Scope::parse_list("people:read, lists:read,people:read")
                .unwrap()
                .len(),
            2
        );
        assert!(Scope::parse_list("people:read,root").is_err());
    }
}
