//! `swisper-ingest check`: connects to Redis and PostgreSQL with the settings
//! and code paths of `serve` and reports what an operator needs to know:
//! server versions, TLS in use and verified, the stream and the group, the
//! schema against this binary's migrations. Passwords never appear.

use std::io::Write;

use serde::Serialize;

use crate::config::ServeSettings;
use crate::connect::postgres::SslMode;
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
            report.error = Some(problem.message.clone());
            problems.push(problem.message);
            return Ok(report);
        }
    };
    report.connected = true;
    report.tls = target.verification != Verification::Plaintext;
    report.verified = target.verification.verified();
    match redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut conn)
        .await
    {
        Ok(info) => {
            report.version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(|v| v.trim().to_owned());
        }
        Err(error) => {
            let problem = problem::redis(&error, target.verification);
            report.error = Some(problem.message.clone());
            problems.push(problem.message);
            return Ok(report);
        }
    }
    let kind: String = redis::cmd("TYPE")
        .arg(&pipeline.stream)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    report.stream_exists = kind == "stream";
    if !report.stream_exists {
        problems.push(if kind == "none" || kind.is_empty() {
            format!(
                "stream {} does not exist (serve creates it with the group at start)",
                pipeline.stream
            )
        } else {
            format!("key {} is a {kind}, not a stream", pipeline.stream)
        });
        return Ok(report);
    }
    match redis_stream::group_state(&mut conn, &pipeline.stream, &pipeline.group).await {
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
            report.error = Some(message.clone());
            problems.push(message);
        }
    }
    Ok(report)
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
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => {
            let problem = target.explain(&error);
            report.error = Some(problem.message.clone());
            problems.push(problem.message);
            return Ok(report);
        }
        Err(_) => {
            let message = format!("postgres: no answer within {}s", CONNECT_TIMEOUT.as_secs());
            report.error = Some(message.clone());
            problems.push(message);
            return Ok(report);
        }
    };
    report.connected = true;
    let session = client
        .query_one(
            "SELECT current_setting('server_version'),
                    coalesce(s.ssl, false), s.version
               FROM (SELECT 1) AS one
               LEFT JOIN pg_stat_ssl AS s ON s.pid = pg_backend_pid()",
            &[],
        )
        .await;
    match session {
        Ok(row) => {
            report.version = Some(row.get(0));
            report.tls = row.get(1);
            report.tls_version = row.get(2);
        }
        Err(error) => {
            let message = format!("postgres: {}", problem::chain(&error));
            report.error = Some(message.clone());
            problems.push(message);
            return Ok(report);
        }
    }
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
    match migrate::applied_version(&client).await {
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
            report.error = Some(message.clone());
            problems.push(message);
        }
    }
    match crate::store::studio_schema::inspect(&client).await {
        Ok(studio) => {
            problems.extend(studio.problems.iter().cloned());
            report.studio = Some(studio);
        }
        Err(error) => problems.push(format!("studio schema: cannot read the catalog: {error}")),
    }
    Ok(report)
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
        let r = &self.redis;
        writeln!(f, "redis     {}", r.url)?;
        if r.connected {
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
            )?;
        }
        let p = &self.postgres;
        writeln!(f, "postgres  {}", p.url)?;
        if p.connected {
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
        }
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
