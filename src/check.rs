//! `swisper-ingest check`: connects to Redis and PostgreSQL with the settings
//! and code paths of `serve` and reports what an operator needs to know:
//! server versions, TLS in use and verified, the stream and the group, the
//! schema against this binary's migrations. Passwords never appear.

use std::io::Write;

use serde::Serialize;

use redis::aio::MultiplexedConnection;

use crate::config::{PipelineSettings, ServeSettings};
use crate::connect::postgres::{PgTarget, SslMode};
use crate::connect::{problem, Verification, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::redis_stream;
use crate::store::migrate;

/// The whole report; `ok` decides the exit code.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    /// This binary: crate version and the commit it was built from.
    pub binary: BinaryReport,
    pub redis: RedisReport,
    pub postgres: PostgresReport,
    /// Why `ok` is false, one line each.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BinaryReport {
    pub version: &'static str,
    pub commit: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct RedisReport {
    /// OBSERVABILITY_REDIS_URL, password redacted.
    pub url: String,
    pub connected: bool,
    pub version: Option<String>,
    /// The connection is encrypted (false until connected).
    pub tls: bool,
    /// The server's certificate was checked, chain and host name (false
    /// until connected).
    pub verified: bool,
    /// A client certificate is configured (mutual TLS).
    pub client_certificate: bool,
    pub stream: String,
    pub stream_exists: bool,
    pub stream_length: Option<u64>,
    pub group: String,
    pub group_exists: bool,
    pub consumers: Option<u64>,
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct PostgresReport {
    /// DATABASE_URL, password redacted.
    pub url: String,
    pub sslmode: String,
    pub connected: bool,
    pub version: Option<String>,
    pub tls: bool,
    /// The TLS protocol version the server reports for this session.
    pub tls_version: Option<String>,
    /// The server's certificate was checked.
    pub verified: bool,
    /// "full" (chain and host name), "chain" (verify-ca), "none" or "plaintext".
    pub verification: Option<Verification>,
    /// Newest migration applied to the database.
    pub schema_version: Option<i32>,
    /// Newest migration this binary carries.
    pub binary_schema_version: i32,
    /// Whose the studio's tables are, and whether every column the service
    /// uses is there.
    pub studio: Option<crate::store::studio_schema::StudioSchema>,
    pub error: Option<String>,
}

/// Runs every check; an error here means the settings themselves are invalid.
pub async fn run(settings: &ServeSettings) -> anyhow::Result<Report> {
    settings.validate()?;
    settings.redis.warn_if_insecure();
    let mut problems = Vec::new();
    let redis = check_redis(settings, &mut problems).await?;
    let postgres = check_postgres(settings, &mut problems).await?;
    Ok(Report {
        ok: problems.is_empty(),
        binary: BinaryReport {
            version: crate::build_info::VERSION,
            commit: crate::build_info::COMMIT,
        },
        redis,
        postgres,
        problems,
    })
}

/// A failure that ends a part of the check: the section's error and one
/// of the problems.
fn failed(error: &mut Option<String>, problems: &mut Vec<String>, message: String) {
    *error = Some(message.clone());
    problems.push(message);
}

async fn check_redis(
    settings: &ServeSettings,
    problems: &mut Vec<String>,
) -> anyhow::Result<RedisReport> {
    let target = settings.redis.target()?;
    let pipeline = &settings.pipeline;
    let mut report = RedisReport {
        url: settings.redis.url.to_string(),
        client_certificate: settings.redis.client_cert_file.is_some(),
        stream: pipeline.stream.clone(),
        group: pipeline.group.clone(),
        ..RedisReport::default()
    };
    let mut conn = match target.open(RESPONSE_TIMEOUT).await {
        Ok(conn) => conn,
        Err(error) => {
            let problem = problem::redis(&error, target.verification);
            failed(&mut report.error, problems, problem.message);
            return Ok(report);
        }
    };
    report.connected = true;
    report.tls = target.verification != Verification::Plaintext;
    report.verified = target.verification.verified();
    match redis_version(&mut conn).await {
        Ok(version) => report.version = version,
        Err(error) => {
            let problem = problem::redis(&error, target.verification);
            failed(&mut report.error, problems, problem.message);
            return Ok(report);
        }
    }
    report.stream_exists = stream_exists(&mut conn, &pipeline.stream, problems).await;
    if report.stream_exists {
        check_group(&mut conn, pipeline, &mut report, problems).await;
    }
    Ok(report)
}

/// The server's version, from INFO (None when INFO does not say).
async fn redis_version(conn: &mut MultiplexedConnection) -> redis::RedisResult<Option<String>> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned()))
}

/// Whether the stream's key holds a stream; a missing key or another type is
/// a problem.
async fn stream_exists(
    conn: &mut MultiplexedConnection,
    stream: &str,
    problems: &mut Vec<String>,
) -> bool {
    let kind: String = redis::cmd("TYPE")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap_or_default();
    if kind == "stream" {
        return true;
    }
    problems.push(if kind == "none" || kind.is_empty() {
        format!("stream {stream} does not exist (serve creates it with the group at start)")
    } else {
        format!("key {stream} is a {kind}, not a stream")
    });
    false
}

/// The stream's length and the group's consumers, lag and pending entries.
async fn check_group(
    conn: &mut MultiplexedConnection,
    pipeline: &PipelineSettings,
    report: &mut RedisReport,
    problems: &mut Vec<String>,
) {
    match redis_stream::group_state(conn, &pipeline.stream, &pipeline.group).await {
        Ok(state) => {
            report.stream_length = Some(state.stream_length);
            if let Some(group) = state.group(&pipeline.group) {
                report.group_exists = true;
                report.consumers = Some(group.consumers);
                report.lag = group.lag;
                report.pending = Some(group.pending);
            } else {
                problems.push(format!(
                    "group {} does not exist on stream {} (serve creates it at start)",
                    pipeline.group, pipeline.stream
                ));
            }
        }
        Err(error) => {
            let message = format!("cannot read the group's state: {error}");
            failed(&mut report.error, problems, message);
        }
    }
}

async fn check_postgres(
    settings: &ServeSettings,
    problems: &mut Vec<String>,
) -> anyhow::Result<PostgresReport> {
    let target = settings.database.target()?;
    let mut report = PostgresReport {
        url: target.shown.clone(),
        sslmode: target.mode.to_string(),
        binary_schema_version: migrate::latest_version(),
        ..PostgresReport::default()
    };
    let client = match connect_postgres(&target).await {
        Ok(client) => client,
        Err(message) => {
            failed(&mut report.error, problems, message);
            return Ok(report);
        }
    };
    report.connected = true;
    if let Err(error) = read_session(&client, &mut report).await {
        let message = format!("postgres: {}", problem::chain(&error));
        failed(&mut report.error, problems, message);
        return Ok(report);
    }
    check_encryption(&target, &mut report, problems);
    check_schema_version(&client, &mut report, problems).await;
    match crate::store::studio_schema::inspect(&client).await {
        Ok(studio) => {
            problems.extend(studio.problems.iter().cloned());
            report.studio = Some(studio);
        }
        Err(error) => problems.push(format!("studio schema: cannot read the catalog: {error}")),
    }
    Ok(report)
}

/// One session, within the connect timeout; the error is the problem's
/// message.
async fn connect_postgres(target: &PgTarget) -> Result<tokio_postgres::Client, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(target.explain(&error).message),
        Err(_) => Err(format!(
            "postgres: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The server's version and the session's TLS, as the server sees them.
async fn read_session(
    client: &tokio_postgres::Client,
    report: &mut PostgresReport,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    coalesce(s.ssl, false), s.version
               FROM (SELECT 1) AS one
               LEFT JOIN pg_stat_ssl AS s ON s.pid = pg_backend_pid()",
            &[],
        )
        .await?;
    report.version = Some(row.get(0));
    report.tls = row.get(1);
    report.tls_version = row.get(2);
    Ok(())
}

/// How the session's server was verified; a plaintext session is a problem
/// when sslmode asks for TLS (prefer accepts one).
fn check_encryption(target: &PgTarget, report: &mut PostgresReport, problems: &mut Vec<String>) {
    report.verification = Some(if report.tls {
        target.verification
    } else {
        Verification::Plaintext
    });
    report.verified = report.tls && target.verification.verified();
    if target.mode != SslMode::Disable && !report.tls && target.mode != SslMode::Prefer {
        problems
            .push("postgres: the session is not encrypted although sslmode asks for TLS".into());
    }
}

/// The database's newest migration against this binary's: behind, newer or
/// none applied are problems.
async fn check_schema_version(
    client: &tokio_postgres::Client,
    report: &mut PostgresReport,
    problems: &mut Vec<String>,
) {
    match migrate::applied_version(client).await {
        Ok(version) => {
            report.schema_version = version;
            let binary = report.binary_schema_version;
            match version {
                None => problems.push(format!(
                    "schema: no migrations applied (this binary has {binary}); run `swisper-ingest migrate` or start serve"
                )),
                Some(v) if v < binary => problems.push(format!(
                    "schema: version {v} is behind this binary's {binary}; run `swisper-ingest migrate` or start serve"
                )),
                Some(v) if v > binary => problems.push(format!(
                    "schema: version {v} is newer than this binary's {binary}; this binary is older than the database"
                )),
                Some(_) => {}
            }
        }
        Err(error) => {
            let message = format!("schema: cannot read the migration history: {error}");
            failed(&mut report.error, problems, message);
        }
    }
}

impl Report {
    /// Prints the report as text for people or as one JSON document.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut out, self)?;
            writeln!(out)?;
        } else {
            write!(out, "{self}")?;
        }
        out.flush()?;
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn or_dash<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.binary;
        writeln!(f, "binary    version {}, commit {}", b.version, b.commit)?;
        write!(f, "{}", self.redis)?;
        write!(f, "{}", self.postgres)?;
        if self.ok {
            writeln!(f, "check passed")
        } else {
            for problem in &self.problems {
                writeln!(f, "FAIL      {problem}")?;
            }
            writeln!(f, "check failed: {} problem(s)", self.problems.len())
        }
    }
}

impl std::fmt::Display for RedisReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        writeln!(f, "redis     {}", r.url)?;
        if !r.connected {
            return Ok(());
        }
        writeln!(
            f,
            "          connected, version {}, tls {}, verified {}{}",
            or_dash(&r.version),
            yes_no(r.tls),
            yes_no(r.verified),
            if r.client_certificate {
                ", client certificate"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "stream    {}: {}",
            r.stream,
            if r.stream_exists {
                format!("length {}", or_dash(&r.stream_length))
            } else {
                "missing".into()
            }
        )?;
        writeln!(
            f,
            "group     {}: {}",
            r.group,
            if r.group_exists {
                format!(
                    "{} consumers, lag {}, pending {}",
                    or_dash(&r.consumers),
                    or_dash(&r.lag),
                    or_dash(&r.pending)
                )
            } else {
                "missing".into()
            }
        )
    }
}

impl std::fmt::Display for PostgresReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self;
        writeln!(f, "postgres  {}", p.url)?;
        if !p.connected {
            return Ok(());
        }
        writeln!(
            f,
            "          connected, version {}, sslmode {}, tls {}{}, verified {}",
            or_dash(&p.version),
            p.sslmode,
            yes_no(p.tls),
            p.tls_version
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            match p.verification {
                Some(Verification::Full) => "yes (chain and host name)",
                Some(Verification::Chain) => "yes (chain only, verify-ca)",
                _ => "no",
            }
        )?;
        writeln!(
            f,
            "schema    version {} of {}",
            or_dash(&p.schema_version),
            p.binary_schema_version
        )?;
        if let Some(studio) = &p.studio {
            writeln!(f, "studio    {studio}")?;
        }
        Ok(())
    }
}
