//! Typed identifiers, so that a list id can never be passed where a person id belongs.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    /// A person in the hub.
    PersonId,
    /// A static list of people.
    ListId,
    /// A saved dynamic segment.
    SegmentId,
    /// One import of a file or a batch of records.
    ImportId,
    /// A staff or volunteer login.
    UserId,
    /// An API token.
    TokenId,
    /// A source of records (a file, a system pushing JSON, a staff member).
    SourceId,
    /// A recorded merge of two people.
    MergeId,
    /// A durable background job.
    JobId,
    /// A payload received on the inbound endpoint.
    InboundId,
);
