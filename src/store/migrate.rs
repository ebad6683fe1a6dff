//! Schema migrations: the SQL files in `migrations/`, embedded at build time
//! and applied by refinery under an advisory lock, so that replicas started
//! together never race.

use tokio_postgres::NoTls;

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

/// Applies pending migrations; returns the names of those applied.
pub async fn run(pg_config: &tokio_postgres::Config) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) = pg_config
        .connect(NoTls)
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
