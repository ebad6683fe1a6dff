//! Why an entry cannot be stored.

use std::fmt;

/// A bounded set of reasons: each is a metric label and `reason_code` of the
/// dead letter; the prose detail says exactly what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TooLarge,
    InvalidUtf8,
    NulCharacter,
    DuplicateField,
    MissingField,
    EmptyField,
    IdTooLong,
    UnknownEventType,
    InvalidTimestamp,
    InvalidData,
    DataNotObject,
    InvalidField,
    Decompression,
    RejectedByPostgres,
    TooManyDeliveries,
    /// The project is not in the studio's `projects` table (replayable once
    /// it is created).
    UnknownProject,
    /// The trace or observation id is already stored under another project.
    ProjectMismatch,
    /// Its write alone kept running past `statement_timeout` while entries
    /// of the same kind were stored (the entry's fault, not the database's).
    StatementTimeout,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::NulCharacter,
        Reason::DuplicateField,
        Reason::MissingField,
        Reason::EmptyField,
        Reason::IdTooLong,
        Reason::UnknownEventType,
        Reason::InvalidTimestamp,
        Reason::InvalidData,
        Reason::DataNotObject,
        Reason::InvalidField,
        Reason::Decompression,
        Reason::RejectedByPostgres,
        Reason::TooManyDeliveries,
        Reason::UnknownProject,
        Reason::ProjectMismatch,
        Reason::StatementTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::NulCharacter => "nul_character",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingField => "missing_field",
            Reason::EmptyField => "empty_field",
            Reason::IdTooLong => "id_too_long",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidData => "invalid_data",
            Reason::DataNotObject => "data_not_object",
            Reason::InvalidField => "invalid_field",
            Reason::Decompression => "decompression_failed",
            Reason::RejectedByPostgres => "rejected_by_postgres",
            Reason::TooManyDeliveries => "too_many_deliveries",
            Reason::UnknownProject => "unknown_project",
            Reason::ProjectMismatch => "project_mismatch",
            Reason::StatementTimeout => "statement_timeout",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry that will never be stored as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}
