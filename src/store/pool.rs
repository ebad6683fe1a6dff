//! The connection pool. Every new connection gets the session's staging
//! tables, so the write path never creates them on the hot path.

use std::time::Duration;

use crate::config::ConfigError;
use crate::connect::postgres::PgTarget;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, RecyclingMethod, Runtime};

pub type Pool = deadpool_postgres::Pool;

/// How long a caller waits for a connection, or for one to be made, before
/// the write path treats Postgres as unavailable and backs off.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// lz4 for this session's TOAST (where the server has it): every batch is
/// staged in temp tables, whose large JSON values would otherwise be
/// compressed with the slower pglz before being merged (docs/benchmarks.md).
const SESSION_SETUP: &str = "SELECT set_config('default_toast_compression', 'lz4', false)
    FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)";

/// Builds the pool; connections are made lazily, so this succeeds while
/// Postgres is down and the writer's retries take over.
pub fn connect_pool(target: &PgTarget, size: u32) -> Result<Pool, ConfigError> {
    let mut pg_config = target.config.clone();
    pg_config.application_name("swisper-ingest");
    pg_config.connect_timeout(POOL_TIMEOUT);
    let manager = Manager::from_config(
        pg_config,
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size as usize)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute(SESSION_SETUP)
                    .await
                    .map_err(HookError::Backend)?;
                client
                    .batch_execute(super::rows::staging_tables())
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| ConfigError {
            setting: "DATABASE_URL",
            problem: e.to_string(),
        })
}
