//! Settings: every knob is an environment variable (the seed's names) and a
//! command-line flag, validated once at start.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

/// A connection URL that may carry a password: it never prints.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A setting that failed validation, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// Where PostgreSQL is.
#[derive(Args, Debug, Clone)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/swisper_ingest",
        hide_default_value = false
    )]
    pub database_url: SecretUrl,

    /// Connections in the writer's pool.
    #[arg(long, env = "OBSERVABILITY_DB_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_pool_size: u32,
}

impl DatabaseSettings {
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        tokio_postgres::Config::from_str(self.database_url.expose())
            .map_err(|e| invalid("DATABASE_URL", e.to_string()))
    }
}

/// Everything `serve` needs.
#[derive(Args, Debug, Clone)]
pub struct ServeSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,

    /// Redis connection URL of the stream.
    #[arg(
        long = "redis-url",
        env = "OBSERVABILITY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: SecretUrl,

    /// Stream the applications publish to.
    #[arg(
        long = "stream",
        env = "OBSERVABILITY_STREAM_NAME",
        default_value = "observability:events"
    )]
    pub stream: String,

    /// Consumer group shared by every replica.
    #[arg(
        long = "group",
        env = "OBSERVABILITY_GROUP_NAME",
        default_value = "swisper_studio_consumers"
    )]
    pub group: String,

    /// This replica's name (the pod name on Kubernetes); consumers are named
    /// `<name>-<n>`. Defaults to the host name.
    #[arg(long = "consumer-name", env = "OBSERVABILITY_CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// Consumer actors in this replica, each with its own Redis connection.
    #[arg(long, env = "OBSERVABILITY_CONSUMERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub consumers: u32,

    /// Writers in this replica: each commits one transaction at a time, so
    /// this is how many batches Postgres works on at once (consumer `i`
    /// feeds writer `i % writers`). More than 1 did not help on 2 cores.
    #[arg(long, env = "OBSERVABILITY_WRITERS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub writers: u32,

    /// Entries asked for by one XREADGROUP.
    #[arg(long, env = "OBSERVABILITY_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Most entries written in one Postgres transaction.
    #[arg(long, env = "OBSERVABILITY_WRITE_BATCH_SIZE", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub write_batch_size: u32,

    /// How long the writer waits for more entries before writing a small batch.
    #[arg(long, env = "OBSERVABILITY_WRITE_LINGER_MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub write_linger_ms: u64,

    /// How long one XREADGROUP waits for new entries.
    #[arg(long, env = "OBSERVABILITY_BLOCK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub block_ms: u64,

    /// Entries pending longer than this (their consumer died or stalled) are
    /// claimed by this replica's claimer.
    #[arg(long, env = "OBSERVABILITY_CLAIM_IDLE_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub claim_idle_ms: u64,

    /// How often the claimer looks for idle pending entries.
    #[arg(long, env = "OBSERVABILITY_CLAIM_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub claim_interval_ms: u64,

    /// Consumers idle this long with nothing pending are removed from the
    /// group: replicas that Kubernetes replaced under new names.
    #[arg(long, env = "OBSERVABILITY_CONSUMER_GONE_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub consumer_gone_secs: u64,

    /// An entry delivered more often than this is dead-lettered.
    #[arg(long, env = "OBSERVABILITY_MAX_DELIVERIES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// Entries larger than this (all field names and values) are dead-lettered.
    #[arg(long, env = "OBSERVABILITY_MAX_ENTRY_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=512 * 1024 * 1024))]
    pub max_entry_bytes: u64,

    /// Compressed `data` that expands beyond this is dead-lettered.
    #[arg(long, env = "OBSERVABILITY_MAX_EXPANDED_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_expanded_bytes: u64,

    /// Poison protection: after this many bad entries in a row, stop
    /// dead-lettering, turn unready and hold consumption (0 disables).
    #[arg(long, env = "OBSERVABILITY_POISON_RUN", default_value_t = 1000)]
    pub poison_run: u64,

    /// Trim the stream below the oldest entry that every group still needs
    /// (acknowledged by all), so that producers can drop their MAXLEN, which
    /// deletes entries no consumer has read.
    #[arg(long = "trim-acked", env = "OBSERVABILITY_TRIM_ACKED")]
    pub trim_acked: bool,

    /// How often the lag monitor reads the group's lag and pending entries.
    #[arg(long, env = "OBSERVABILITY_MONITOR_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub monitor_interval_ms: u64,

    /// Not live when entries wait but nothing was committed for this long
    /// while Redis and Postgres are reachable.
    #[arg(long, env = "OBSERVABILITY_STALL_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stall_timeout_secs: u64,

    /// Entries waiting for the group (lag plus pending) from which the status
    /// endpoint says "lagging".
    #[arg(
        long,
        env = "OBSERVABILITY_LAGGING_THRESHOLD",
        default_value_t = 10_000
    )]
    pub lagging_threshold: u64,

    /// Address of the HTTP server (health, readiness, metrics).
    #[arg(
        long,
        env = "OBSERVABILITY_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,

    /// Budget for draining on SIGTERM: stop reading, write and ack, exit.
    #[arg(long, env = "OBSERVABILITY_SHUTDOWN_TIMEOUT_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub retention: crate::retention::RetentionSettings,

    /// Do not apply pending migrations at start (a migration job does it).
    #[arg(long = "no-migrate", env = "OBSERVABILITY_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
}

impl ServeSettings {
    /// Checks what clap cannot check value by value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.pg_config()?;
        redis::Client::open(self.redis_url.expose())
            .map_err(|e| invalid("OBSERVABILITY_REDIS_URL", e.to_string()))?;
        if self.stream.is_empty() {
            return Err(invalid("OBSERVABILITY_STREAM_NAME", "must not be empty"));
        }
        if self.group.is_empty() {
            return Err(invalid("OBSERVABILITY_GROUP_NAME", "must not be empty"));
        }
        if self.replica_name().is_empty() {
            return Err(invalid("OBSERVABILITY_CONSUMER_NAME", "must not be empty"));
        }
        if self.claim_idle_ms <= self.block_ms {
            return Err(invalid(
                "OBSERVABILITY_CLAIM_IDLE_MS",
                format!(
                    "must exceed OBSERVABILITY_BLOCK_MS ({} ms), or live consumers' entries are claimed",
                    self.block_ms
                ),
            ));
        }
        Ok(())
    }

    /// The replica's name: the configured one, else the host name.
    pub fn replica_name(&self) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }

    pub fn consumer_gone_after(&self) -> Duration {
        Duration::from_secs(self.consumer_gone_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn limits(&self) -> crate::event::Limits {
        crate::event::Limits {
            max_entry_bytes: self.max_entry_bytes as usize,
            max_expanded_bytes: self.max_expanded_bytes as usize,
        }
    }
}
