//! The connection pool. Connections carry no session state of ours (the
//! write path keeps nothing between transactions), so any server connection
//! a pooler hands out will do.

use std::time::Duration;

use crate::config::ConfigError;
use crate::connect::postgres::PgTarget;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};

pub type Pool = deadpool_postgres::Pool;

/// How long a caller waits for a connection, or for one to be made, before
/// the write path treats Postgres as unavailable and backs off.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

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
        .build()
        .map_err(|e| ConfigError {
            setting: "DATABASE_URL",
            problem: e.to_string(),
        })
}
