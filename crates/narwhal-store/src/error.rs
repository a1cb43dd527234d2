//! Storage errors, split by what the caller can do about them.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique key is already taken (a list name, a username).
    #[error("{0} already exists")]
    Conflict(String),
    /// The request makes no sense against the stored data (e.g. undoing an undone merge).
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached or failed; the caller should retry later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data could not be decoded (a bug or manual tampering).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps unique-constraint violations to `Conflict`, keeping other errors.
    pub(crate) fn from_unique(e: sqlx::Error, what: &str) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return Self::Conflict(what.to_string());
            }
        }
        Self::Database(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
