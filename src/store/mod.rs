//! PostgreSQL: the pool, migrations, and the statements of the write path.
//! Plain async functions over a client; no actor in sight.

mod copy;
pub mod dead_letters;
pub mod heartbeats;
pub mod migrate;
pub mod pool;
pub mod retention;
pub mod rows;

pub use copy::JsonbText;
pub use pool::{connect_pool, Pool};

/// Why a write failed, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres refused the data itself (a bad value, a constraint): retrying
    /// the same rows fails again, so the culprit must be isolated.
    #[error("postgres rejected the data: {0}")]
    Data(#[source] tokio_postgres::Error),
    /// The database is down, restarting, overloaded or lost the connection:
    /// retry the same rows later.
    #[error("postgres is unavailable: {0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Class 22 (data exception) and 23 (integrity constraint violation)
        // are about the rows; 54 (program limit exceeded) too, e.g. a value
        // nested too deeply. Anything else, or no SQLSTATE at all (I/O), is
        // about the server.
        let is_data = error
            .code()
            .map(|state| matches!(&state.code()[..2], "22" | "23" | "54"))
            .unwrap_or(false);
        if is_data {
            StoreError::Data(error)
        } else {
            StoreError::Unavailable(error.to_string())
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
