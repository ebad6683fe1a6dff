//! Schema migrations: the SQL files in `migrations/`, embedded at build time
//! and applied by refinery under a transaction-scoped advisory lock, so that
//! replicas started together never race, directly or through a pooler.
//!
//! Everything of ours lives in the schema `swisper_ingest`, the migration
//! history included (`swisper_ingest.refinery_schema_history`): the studio's
//! `public` holds only the studio's tables, which V2 creates when no studio
//! is there (and upgrades from this service's earlier layout, which had its
//! own tables in `public`).

use crate::connect::postgres::PgTarget;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Our schema, created before refinery runs so that its history table can
/// live there.
pub const SCHEMA: &str = "swisper_ingest";

/// refinery's history table.
const HISTORY: &str = "swisper_ingest.refinery_schema_history";

/// Any number that no other tool uses as an advisory lock on this database.
const MIGRATION_LOCK: i64 = 0x5357_4953_5045_5201; // "SWISPER" + 1

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot take the migration lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("cannot create the schema {SCHEMA}: {0}")]
    Schema(#[source] tokio_postgres::Error),
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
            "SELECT to_regclass('swisper_ingest.refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    client
        .query_one(
            "SELECT max(version) FROM swisper_ingest.refinery_schema_history",
            &[],
        )
        .await
        .map(|row| row.get(0))
}

/// Opens a transaction that holds the migration lock. Tries rather than
/// waits: a transaction waiting for the lock would pin a pooler's server
/// connection, and with a small pool the holder's migration could then wait
/// for a connection forever.
async fn lock_migrations(locker: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(1),
    );
    loop {
        locker.batch_execute("BEGIN").await?;
        let reply = locker
            .simple_query(&format!(
                "SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK})"
            ))
            .await?;
        let locked = reply.iter().any(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
            _ => false,
        });
        if locked {
            return Ok(());
        }
        locker.batch_execute("COMMIT").await?;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Applies pending migrations; returns the names of those applied.
pub async fn run(target: &PgTarget) -> Result<Vec<String>, MigrateError> {
    let (mut client, driver) = target
        .connect_driven(None)
        .await
        .map_err(MigrateError::Connect)?;
    // The lock is held by an open transaction on a second connection, not by
    // a session: a pooler in transaction mode (pgbouncer) keeps a transaction
    // on one server connection, whereas a session lock could stay behind on
    // a server connection nobody unlocks. refinery runs every statement in
    // transactions of its own, so the whole migration is pooler-safe.
    let (locker, lock_driver) = target
        .connect_driven(None)
        .await
        .map_err(MigrateError::Connect)?;
    lock_migrations(&locker).await.map_err(MigrateError::Lock)?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        .await
        .map_err(MigrateError::Schema)?;
    let mut runner = embedded::migrations::runner().set_abort_divergent(true);
    runner.set_migration_table_name(HISTORY);
    let report = runner.run_async(&mut client).await;
    // Ending the transaction releases the lock (so would the connection's end).
    let _ = locker.batch_execute("COMMIT").await;
    drop(locker);
    drop(client);
    let _ = driver.await;
    let _ = lock_driver.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
