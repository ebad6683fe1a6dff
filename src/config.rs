//! Settings: every knob is an environment variable (the seed's names) and a
//! command-line flag, validated once at start. They are grouped by concern
//! (Redis, PostgreSQL, pipeline, claiming, limits, HTTP), each group a struct
//! with its own `--help` heading; durations are read through accessors.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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
        write!(f, "SecretUrl({self})")
    }
}

/// The URL with its password (and any `password=` query parameter) replaced
/// by `***`: safe for logs and `check`.
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// Replaces the password of `scheme://user:password@host...` and the value of
/// a `password=` query parameter with `***`. Text that is not a URL is
/// redacted whole, since it might be a password in the wrong variable.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; the password is between
    // the first ':' and the last '@' inside it.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A password: it never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The environment variable of the Redis password: no flag, as a command
/// line is visible to every user of the machine.
pub const REDIS_PASSWORD: &str = "OBSERVABILITY_REDIS_PASSWORD";

/// A secret from the environment; unset and empty are the same.
fn secret_from_env(name: &str) -> Option<Secret> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret)
}

/// Refuses a URL with a password that came from the command line (the flag
/// won over the environment variable, or there was none): `ps` shows it.
fn refuse_password_on_command_line(
    setting: &'static str,
    url: &SecretUrl,
) -> Result<(), ConfigError> {
    let shown = redact_url(url.expose());
    let has_password = shown.contains(":***@") || shown.contains("password=***");
    let from_env = std::env::var(setting).ok().as_deref() == Some(url.expose());
    if has_password && !from_env {
        return Err(invalid(
            setting,
            "carries a password on the command line, where every user of the machine can \
             read it; set the environment variable instead, or use a password file",
        ));
    }
    Ok(())
}

/// A setting that failed validation, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

pub(crate) fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// Where Redis is.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis connection URL of the stream: `redis://` or `rediss://` (TLS),
    /// optionally with `user:password@` or `:password@`.
    #[arg(
        long = "redis-url",
        env = "OBSERVABILITY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub url: SecretUrl,

    /// ACL user; replaces the user of the URL.
    #[arg(long = "redis-username", env = "OBSERVABILITY_REDIS_USERNAME")]
    pub username: Option<String>,

    /// File holding the ACL user (trailing newline ignored), read again at
    /// every new connection; replaces the user of the URL.
    #[arg(
        long = "redis-username-file",
        env = "OBSERVABILITY_REDIS_USERNAME_FILE"
    )]
    pub username_file: Option<PathBuf>,

    /// Password, from the environment only (OBSERVABILITY_REDIS_PASSWORD: a
    /// command line is visible to every user of the machine); replaces the
    /// password of the URL, so that it can come from a Secret without
    /// URL-encoding.
    #[arg(skip = secret_from_env(REDIS_PASSWORD))]
    pub password: Option<Secret>,

    /// File holding the password or token (trailing newline ignored), read
    /// again at every new connection, so that a rotated password or a fresh
    /// token needs no restart; replaces the password of the URL.
    #[arg(
        id = "redis_password_file",
        long = "redis-password-file",
        env = "OBSERVABILITY_REDIS_PASSWORD_FILE"
    )]
    pub password_file: Option<PathBuf>,

    /// PEM bundle of the CA that signed the server's certificate (a private
    /// CA); without it `rediss://` verifies against the system's roots.
    #[arg(long = "redis-ca-file", env = "OBSERVABILITY_REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate (PEM, with any intermediates) for mutual TLS;
    /// needs OBSERVABILITY_REDIS_CLIENT_KEY_FILE.
    #[arg(
        long = "redis-client-cert-file",
        env = "OBSERVABILITY_REDIS_CLIENT_CERT_FILE"
    )]
    pub client_cert_file: Option<PathBuf>,

    /// Private key (PEM) of the client certificate.
    #[arg(
        long = "redis-client-key-file",
        env = "OBSERVABILITY_REDIS_CLIENT_KEY_FILE"
    )]
    pub client_key_file: Option<PathBuf>,

    /// DANGEROUS: accept any server certificate (no CA or host name check).
    /// Encrypts but does not authenticate the server; logged loudly at start.
    #[arg(long = "redis-tls-insecure", env = "OBSERVABILITY_REDIS_TLS_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_insecure: bool,
}

impl RedisSettings {
    /// No password on the command line, for every command that connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        refuse_password_on_command_line("OBSERVABILITY_REDIS_URL", &self.url)
    }
}

/// Where PostgreSQL is.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL, libpq style: `sslmode` (disable, prefer,
    /// require, verify-ca, verify-full), `sslrootcert`, `sslcert`, `sslkey`;
    /// PGPASSWORD when it has no password.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/swisper_ingest",
        hide_default_value = false,
        hide_env_values = true
    )]
    pub database_url: SecretUrl,

    /// File holding the password or token (trailing newline ignored), read
    /// again at every new connection, so that a rotated password or a fresh
    /// IAM token needs no restart. Not with a password in DATABASE_URL or
    /// PGPASSWORD.
    #[arg(
        id = "database_password_file",
        long = "database-password-file",
        env = "OBSERVABILITY_DATABASE_PASSWORD_FILE"
    )]
    pub password_file: Option<PathBuf>,

    /// Connections in the writer's pool.
    #[arg(long, env = "OBSERVABILITY_DB_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_pool_size: u32,

    /// Unknown projects: `auto` creates them when this service created the
    /// studio's tables itself (a standalone database) and dead-letters their
    /// events (`unknown_project`, replayable) in front of a studio.
    #[arg(
        long,
        env = "OBSERVABILITY_CREATE_PROJECTS",
        value_enum,
        default_value = "auto"
    )]
    pub create_projects: CreateProjects,

    /// How the JSON values this service writes are compressed when Postgres
    /// TOASTs them: `lz4` (set per write transaction, when the server has
    /// it; about half the Postgres CPU of pglz on LangGraph states) or
    /// `server` (the server's `default_toast_compression`). The studio's
    /// schema is not changed either way; readers see the same values.
    #[arg(
        long,
        env = "OBSERVABILITY_TOAST_COMPRESSION",
        value_enum,
        default_value = "lz4"
    )]
    pub toast_compression: ToastCompression,

    /// How often each replica re-reads the studio's model_pricing (seconds).
    #[arg(long, env = "OBSERVABILITY_PRICE_REFRESH_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub price_refresh_secs: u64,
}

impl DatabaseSettings {
    /// No password on the command line, for every command that connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        refuse_password_on_command_line("DATABASE_URL", &self.database_url)
    }

    pub fn price_refresh(&self) -> Duration {
        Duration::from_secs(self.price_refresh_secs)
    }
}

/// The stream, the group and how this replica reads and writes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Pipeline")]
pub struct PipelineSettings {
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
    /// this is how many batches Postgres works on at once while a backlog
    /// drains. A full page (a backlog) is split over them by trace, so they
    /// never lock the same rows; a short page (steady state) goes whole to
    /// the first, as one transaction costs Postgres less than two halves
    /// (docs/benchmarks.md). 1: one transaction at a time, always.
    #[arg(long, env = "OBSERVABILITY_WRITERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub writers: u32,

    /// Threads that parse entries (base64, inflate, JSON) off the actors'
    /// threads. Default: the CPUs this process may use (a container's CPU
    /// limit included). 0 parses on the consumer's own thread.
    #[arg(long = "parse-threads", env = "OBSERVABILITY_PARSE_THREADS",
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub parse_threads: Option<u32>,

    /// Run each writer on a thread of its own (an actix Arbiter), so that
    /// building and sending COPY data runs beside the consumers' I/O.
    #[arg(long = "writer-thread", env = "OBSERVABILITY_WRITER_THREAD",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub writer_thread: bool,

    /// Entries asked for by one XREADGROUP.
    #[arg(long, env = "OBSERVABILITY_BATCH_SIZE", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Most entries written in one Postgres transaction.
    #[arg(long, env = "OBSERVABILITY_WRITE_BATCH_SIZE", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub write_batch_size: u32,

    /// How long an idle writer waits for more entries before it starts a
    /// transaction. 0: at once; while one transaction is in flight, the next
    /// gathers whatever arrives meanwhile anyway.
    #[arg(long = "write-linger-ms", env = "OBSERVABILITY_WRITE_LINGER_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    write_linger_ms: u64,

    /// How long an observation start waits in the writer for its end, so
    /// that the row is written once instead of inserted and then updated
    /// (about half the database's work for that row). The studio shows a
    /// running observation this much later. 0: written as they come. Under
    /// backlog starts wait for the next batch whatever this is.
    #[arg(long = "hold-starts-ms", env = "OBSERVABILITY_HOLD_STARTS_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    hold_starts_ms: u64,

    /// How long one XREADGROUP waits for new entries.
    #[arg(long = "block-ms", env = "OBSERVABILITY_BLOCK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    block_ms: u64,

    /// Trim the stream below the oldest entry that every group still needs
    /// (acknowledged by all), so that producers can drop their MAXLEN, which
    /// deletes entries no consumer has read.
    #[arg(long = "trim-acked", env = "OBSERVABILITY_TRIM_ACKED")]
    pub trim_acked: bool,

    /// How often the lag monitor reads the group's lag and pending entries.
    #[arg(long = "monitor-interval-ms", env = "OBSERVABILITY_MONITOR_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    monitor_interval_ms: u64,

    /// Budget for draining on SIGTERM: stop reading, write and ack, exit.
    #[arg(long = "shutdown-timeout-secs", env = "OBSERVABILITY_SHUTDOWN_TIMEOUT_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    shutdown_timeout_secs: u64,
}

impl PipelineSettings {
    /// The replica's name: the configured one, else the host name.
    pub fn replica_name(&self) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// How long an observation start waits for its end.
    pub fn hold_starts(&self) -> Duration {
        Duration::from_millis(self.hold_starts_ms)
    }

    /// How long one XREADGROUP blocks.
    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }

    /// How long an idle writer waits for more entries.
    pub fn write_linger(&self) -> Duration {
        Duration::from_millis(self.write_linger_ms)
    }

    /// Parse threads to start; 0 parses inline.
    pub fn parse_threads(&self) -> usize {
        match self.parse_threads {
            Some(threads) => threads as usize,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }

    /// Period of the lag monitor.
    pub fn monitor_interval(&self) -> Duration {
        Duration::from_millis(self.monitor_interval_ms)
    }

    /// Budget for the drain on SIGTERM.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// Taking over entries of consumers that died, and forgetting consumers.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Claiming")]
pub struct ClaimSettings {
    /// Entries pending longer than this (their consumer died or stalled) are
    /// claimed by this replica's claimer.
    #[arg(long = "claim-idle-ms", env = "OBSERVABILITY_CLAIM_IDLE_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    claim_idle_ms: u64,

    /// How often the claimer looks for idle pending entries.
    #[arg(long = "claim-interval-ms", env = "OBSERVABILITY_CLAIM_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    claim_interval_ms: u64,

    /// Consumers idle this long with nothing pending are removed from the
    /// group: replicas that Kubernetes replaced under new names.
    #[arg(long = "consumer-gone-secs", env = "OBSERVABILITY_CONSUMER_GONE_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    consumer_gone_secs: u64,
}

impl ClaimSettings {
    /// Pending entries idle this long are claimed.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// Period of the claimer.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.claim_interval_ms)
    }

    /// Consumers idle this long with nothing pending are removed.
    pub fn consumer_gone_after(&self) -> Duration {
        Duration::from_secs(self.consumer_gone_secs)
    }
}

/// What an entry may be, and when bad entries stop the pipeline.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Limits")]
pub struct LimitSettings {
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
}

impl LimitSettings {
    /// The entry limits of the parser.
    pub fn entry(&self) -> crate::event::Limits {
        crate::event::Limits {
            max_entry_bytes: self.max_entry_bytes as usize,
            max_expanded_bytes: self.max_expanded_bytes as usize,
        }
    }
}

/// The HTTP server and what its health endpoints report.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "HTTP and health")]
pub struct HttpSettings {
    /// Address of the HTTP server (health, readiness, metrics).
    #[arg(
        long = "http-addr",
        env = "OBSERVABILITY_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,

    /// Not live when entries wait but nothing was committed for this long
    /// while Redis and Postgres are reachable.
    #[arg(long = "stall-timeout-secs", env = "OBSERVABILITY_STALL_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stall_timeout_secs: u64,

    /// Entries waiting for the group (lag plus pending) from which the status
    /// endpoint says "lagging".
    #[arg(
        long,
        env = "OBSERVABILITY_LAGGING_THRESHOLD",
        default_value_t = 10_000
    )]
    pub lagging_threshold: u64,
}

impl HttpSettings {
    /// Not live after this long without progress while entries wait.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }
}

/// Everything `serve` needs, by concern.
#[derive(Args, Debug, Clone)]
pub struct ServeSettings {
    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub bounds: crate::bounds::BoundsSettings,

    #[command(flatten)]
    pub memory: crate::memory_budget::MemorySettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub retention: RetentionSettings,

    /// Do not apply pending migrations at start (a migration job does it).
    #[arg(
        long = "no-migrate",
        env = "OBSERVABILITY_SKIP_MIGRATIONS",
        help_heading = "PostgreSQL"
    )]
    pub skip_migrations: bool,

    #[command(flatten)]
    pub pipeline: PipelineSettings,

    #[command(flatten)]
    pub claim: ClaimSettings,

    #[command(flatten)]
    pub limits: LimitSettings,

    #[command(flatten)]
    pub http: HttpSettings,
}

impl ServeSettings {
    /// Checks what clap cannot check value by value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.redis.validate()?;
        self.database.target()?;
        self.redis.target()?;
        if self.pipeline.stream.is_empty() {
            return Err(invalid("OBSERVABILITY_STREAM_NAME", "must not be empty"));
        }
        if self.pipeline.group.is_empty() {
            return Err(invalid("OBSERVABILITY_GROUP_NAME", "must not be empty"));
        }
        if self.pipeline.replica_name().is_empty() {
            return Err(invalid("OBSERVABILITY_CONSUMER_NAME", "must not be empty"));
        }
        if self.claim.idle() <= self.pipeline.block() {
            return Err(invalid(
                "OBSERVABILITY_CLAIM_IDLE_MS",
                format!(
                    "must exceed OBSERVABILITY_BLOCK_MS ({} ms), or live consumers' entries are claimed",
                    self.pipeline.block().as_millis()
                ),
            ));
        }
        if self.pipeline.hold_starts() * 2 > self.claim.idle() {
            return Err(invalid(
                "OBSERVABILITY_HOLD_STARTS_MS",
                format!(
                    "must be at most half of OBSERVABILITY_CLAIM_IDLE_MS ({} ms), or held starts are claimed from their own writer",
                    self.claim.idle().as_millis()
                ),
            ));
        }
        Ok(())
    }
}

/// Retention settings, flattened into `serve`'s.
#[derive(Args, Debug, Clone)]
pub struct RetentionSettings {
    /// Traces (with all their observations) older than this many days are
    /// forgotten; unset keeps everything, except projects with their own
    /// horizon (`swisper-ingest retention set`).
    #[arg(long = "retention-days", env = "OBSERVABILITY_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_days: Option<u32>,

    /// Dead letters older than this many days are forgotten; unset keeps them.
    #[arg(long = "retention-dead-letter-days", env = "OBSERVABILITY_RETENTION_DEAD_LETTER_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_dead_letter_days: Option<u32>,

    /// SDK heartbeat rows (project, SDK version) not heard for this many days
    /// are forgotten; unset keeps them.
    #[arg(long = "retention-heartbeat-days", env = "OBSERVABILITY_RETENTION_HEARTBEAT_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub retention_heartbeat_days: Option<u32>,

    /// How long a forgotten trace's id is remembered, so that its late events
    /// are refused rather than stored as half a trace. Must exceed the
    /// longest trace (first to last event).
    #[arg(long = "retention-tombstone-days", env = "OBSERVABILITY_RETENTION_TOMBSTONE_DAYS",
          default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub retention_tombstone_days: u32,

    /// How often the retention worker looks for due rows (and every replica
    /// re-reads the per-project horizons).
    #[arg(long = "retention-interval-secs", env = "OBSERVABILITY_RETENTION_INTERVAL_SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,

    /// Traces forgotten per transaction (with their observations).
    #[arg(long = "retention-batch-size", env = "OBSERVABILITY_RETENTION_BATCH_SIZE",
          default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub retention_batch_size: u32,

    /// Pause between two retention transactions, so that ingestion and
    /// autovacuum keep up.
    #[arg(long = "retention-pause-ms", env = "OBSERVABILITY_RETENTION_PAUSE_MS",
          default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub retention_pause_ms: u64,

    /// TEST ONLY: the length of a retention "day" in seconds, so that tests
    /// run several horizons in minutes. Leave at 86400 in production.
    #[arg(long = "retention-unit-secs", env = "OBSERVABILITY_RETENTION_UNIT_SECS",
          default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=86_400),
          hide = true)]
    pub retention_unit_secs: u64,
}

impl RetentionSettings {
    pub fn days(&self, days: u32) -> Duration {
        Duration::from_secs(self.retention_unit_secs * u64::from(days))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_secs)
    }

    pub fn pause(&self) -> Duration {
        Duration::from_millis(self.retention_pause_ms)
    }

    /// Dead letters or heartbeat rows have a horizon of their own.
    pub fn forgets_other_tables(&self) -> bool {
        self.retention_dead_letter_days.is_some() || self.retention_heartbeat_days.is_some()
    }
}

/// Whether unknown projects are created on first sight
/// (`OBSERVABILITY_CREATE_PROJECTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CreateProjects {
    /// Create them when this service created the studio's tables itself
    /// (a standalone database), never in front of a studio.
    Auto,
    Always,
    Never,
}

/// The compression of long values this service writes
/// (`OBSERVABILITY_TOAST_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToastCompression {
    /// lz4 when the server was built with it, else the server's default.
    Lz4,
    /// The server's `default_toast_compression` (pglz unless changed).
    Server,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{redact_url, ServeSettings};

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        settings: ServeSettings,
    }

    fn serve(args: &[&str]) -> ServeSettings {
        let argv = ["serve", "--database-url", "postgres://localhost/x"];
        Serve::try_parse_from(argv.iter().chain(args))
            .expect("parses")
            .settings
    }

    /// Held starts stay pending; held longer than half the claim idle time,
    /// the claimer would hand them to a writer a second time.
    #[test]
    fn starts_are_held_for_at_most_half_the_claim_idle_time() {
        assert!(serve(&["--hold-starts-ms", "1500"]).validate().is_ok());
        let refused = serve(&["--hold-starts-ms", "1501"]).validate().unwrap_err();
        assert!(
            refused.to_string().contains("OBSERVABILITY_HOLD_STARTS_MS"),
            "{refused}"
        );
        let longer_claims = ["--hold-starts-ms", "5000", "--claim-idle-ms", "10000"];
        assert!(serve(&longer_claims).validate().is_ok());
    }

    #[test]
    fn passwords_never_print() {
        let cases = [
            (
                "rediss://user:s3cret@host:6380/0",
                "rediss://user:***@host:6380/0",
            ),
            ("rediss://:s3cret@host:6380", "rediss://:***@host:6380"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://user@host", "redis://user@host"),
            (
                "postgres://app:p%40ss@db:5432/x?sslmode=verify-full&password=zz",
                "postgres://app:***@db:5432/x?sslmode=verify-full&password=***",
            ),
            ("postgres://app:a@b@db/x", "postgres://app:***@db/x"),
            ("not a url with s3cret", "<redacted>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3cret"));
        }
    }
}
