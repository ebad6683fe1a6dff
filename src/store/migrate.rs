//! Schema migrations: the SQL files in `migrations/`, embedded at build time
//! and applied by refinery under an advisory lock, so that replicas started
//! together never race.

use crate::connect::postgres::PgTarget;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Any number that no other tool uses as an advisory lock on this database.
const MIGRATION_LOCK: i64 = 0x5357_4953_5045_5201; // "SWISPER" + 1

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// The newest migration version embedded in this binary.
pub fn latest_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

/// The newest version applied to the database, None before the first.
pub async fn applied_version(
    client: &tokio_postgres::Client,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM refinery_schema_history", &[])
        .await
        .map(|row| row.get(0))
}

/// Applies pending migrations; returns the names of those applied.
pub async fn run(target: &PgTarget) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrateError::Lock)?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    // The lock is released with the session anyway; unlock to be explicit.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
