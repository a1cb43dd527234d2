//! Errors of the people services.

use narwhal_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    /// The input cannot be used (the message says why, without repeating PII).
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A concurrent change or a taken unique key; retrying may succeed.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for PeopleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(w) => Self::NotFound(w),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Invalid(m) => Self::Invalid(m),
            other => Self::Store(other),
        }
    }
}
