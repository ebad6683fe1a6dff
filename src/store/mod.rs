//! PostgreSQL: the pool, migrations, and the statements of the write path.
//! Plain async functions over a client; no actor in sight. The studio's
//! tables are in `public`; everything of ours is in `swisper_ingest`.

mod arrays;
mod binary_copy;
pub mod compression;
pub mod copy;
pub mod dead_letters;
pub mod heartbeats;
mod jsonb;
pub mod migrate;
pub mod planner;
pub mod pool;
pub mod projects;
pub mod retention;
pub mod row_writes;
pub mod rows;
pub mod studio_schema;
pub mod transaction;

pub use crate::connect::postgres::connect_pool;
pub use jsonb::JsonbText;
pub use pool::{Pool, Pools};

/// Why a write failed, sorted by what the caller should do about it. Each
/// variant has a bounded [`StoreError::label`], the `kind` label of
/// `swisper_ingest_postgres_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres refused the data itself (a bad value, a constraint): retrying
    /// the same rows fails again, so the culprit must be isolated.
    /// Carries Postgres's message with its detail, or which column the
    /// service could not encode.
    #[error("postgres rejected the data: {0}")]
    Data(String),
    /// 57014: the statement ran past `statement_timeout` (or was cancelled).
    /// A smaller batch may pass; a single entry is retried, never
    /// dead-lettered, because a lock or a slow disk is not the entry's fault.
    #[error("postgres statement timed out: {0}")]
    StatementTimeout(String),
    /// The database answers but cannot write: read-only (25006, a replica
    /// after failover), disk full (53100), too many connections (53300).
    /// Retry with backoff; nothing acked, nothing dead-lettered.
    #[error("postgres cannot write ({}): {message}", kind.label())]
    CannotWrite { kind: CannotWrite, message: String },
    /// The database is down, restarting, overloaded or lost the connection:
    /// retry the same rows later.
    #[error("postgres is unavailable: {0}")]
    Unavailable(String),
    /// Another writer inserted a row this transaction meant to insert as new
    /// (23505 on an INSERT of rows that were absent when locked): run the
    /// transaction again at once, when the row is found and merged.
    #[error("another writer stored one of these rows first: {0}")]
    Conflict(String),
}

/// The ways a reachable Postgres refuses every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CannotWrite {
    ReadOnly,
    DiskFull,
    TooManyConnections,
}

impl CannotWrite {
    pub fn label(self) -> &'static str {
        match self {
            CannotWrite::ReadOnly => "read_only",
            CannotWrite::DiskFull => "disk_full",
            CannotWrite::TooManyConnections => "too_many_connections",
        }
    }
}

impl StoreError {
    /// The metric label: a bounded set, never text from the error.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Data(_) => "data",
            StoreError::StatementTimeout(_) => "statement_timeout",
            StoreError::CannotWrite { kind, .. } => kind.label(),
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Conflict(_) => "conflict",
        }
    }
}

/// SQLSTATEs sorted by what to do; see [`StoreError`].
fn classify(state: &str) -> Option<fn(String) -> StoreError> {
    match state {
        "25006" => Some(|m| StoreError::CannotWrite {
            kind: CannotWrite::ReadOnly,
            message: m,
        }),
        "53100" => Some(|m| StoreError::CannotWrite {
            kind: CannotWrite::DiskFull,
            message: m,
        }),
        "53300" => Some(|m| StoreError::CannotWrite {
            kind: CannotWrite::TooManyConnections,
            message: m,
        }),
        "57014" => Some(StoreError::StatementTimeout),
        // A table of the schema is missing: retried until migrations run.
        "42P01" => Some(|m| {
            StoreError::Unavailable(format!("{m}; a table is missing: run the migrations"))
        }),
        _ => None,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        let Some(state) = error.code().map(|s| s.code().to_owned()) else {
            // No SQLSTATE at all: I/O, a closed connection.
            return StoreError::Unavailable(error.to_string());
        };
        if let Some(make) = classify(&state) {
            return make(describe(&error));
        }
        // Class 22 (data exception) and 23 (integrity constraint violation)
        // are about the rows; 54 (program limit exceeded) too, e.g. a value
        // nested too deeply. Anything else is about the server.
        if matches!(&state[..2], "22" | "23" | "54") {
            StoreError::Data(describe(&error))
        } else {
            StoreError::Unavailable(describe(&error))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// The full message of a Postgres error, with its detail when there is one.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => error.to_string(),
    }
}

/// A unique violation on a COPY of rows that were not there when locked:
/// another writer inserted one meanwhile.
pub(crate) fn conflict_or(error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(describe(&error))
    } else {
        error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sqlstate_gets_its_kind() {
        let kind = |state: &str| classify(state).map(|make| make("m".into()).label());
        assert_eq!(kind("25006"), Some("read_only"));
        assert_eq!(kind("53100"), Some("disk_full"));
        assert_eq!(kind("53300"), Some("too_many_connections"));
        assert_eq!(kind("57014"), Some("statement_timeout"));
        assert_eq!(kind("42P01"), Some("unavailable"));
        // Data classes and the rest are decided by class, not here.
        assert_eq!(kind("22P02"), None);
        assert_eq!(kind("08006"), None);
    }
}
