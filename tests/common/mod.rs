//! Test harness: real Redis and PostgreSQL (started by `scripts/test.sh`,
//! which exports their URLs), a fresh database and stream per test, and the
//! real `swisper-ingest` binary as a child process.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::{Client, NoTls};

/// Where a test runs: its own database and stream on the shared servers.
pub struct TestEnv {
    pub name: String,
    pub redis_url: String,
    pub database_url: String,
    pub stream: String,
    pub group: String,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts Redis and Postgres")
    })
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        let redis_url = required_env("OBSERVABILITY_REDIS_URL");
        let admin_url = required_env("DATABASE_URL");
        let suffix: u32 = rand::thread_rng().gen();
        let database = format!("test_{name}_{suffix:08x}");
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create the test database");
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("DATABASE_URL has a database name");
        Self {
            name: name.to_owned(),
            redis_url,
            database_url: format!("{base}/{database}"),
            stream: format!("test:{name}:{suffix:08x}"),
            group: format!("group-{suffix:08x}"),
        }
    }

    pub async fn db(&self) -> Client {
        connect(&self.database_url).await
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to redis")
    }

    /// XADD one entry with fields in the given order.
    pub fn publish(&self, conn: &mut redis::Connection, fields: &[(&str, &str)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(conn).expect("xadd")
    }

    /// XADD raw bytes (invalid UTF-8, duplicated names...).
    pub fn publish_raw(&self, conn: &mut redis::Connection, fields: &[(&[u8], &[u8])]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(conn).expect("xadd")
    }

    /// Creates the test's group at id 0, as the service would.
    pub fn create_group(&self, conn: &mut redis::Connection) {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query(conn)
            .expect("create the group");
    }

    pub fn migrate(&self) {
        let status = Command::new(env!("CARGO_BIN_EXE_swisper-ingest"))
            .arg("migrate")
            .env("DATABASE_URL", &self.database_url)
            .status()
            .expect("run migrate");
        assert!(status.success(), "migrate failed");
    }

    /// Starts the service with test-friendly timings; `extra` overrides.
    pub fn spawn(&self, replica: &str, extra: &[(&str, &str)]) -> Service {
        let _ = std::fs::remove_file(log_dir().join(format!("{}-{replica}.log", self.name)));
        self.spawn_wrapped(replica, extra, &[])
    }

    /// Like [`TestEnv::spawn`], run through `wrapper` (such as `prlimit
    /// --as=BYTES --`); the log is appended to, so restarts keep it whole.
    pub fn spawn_wrapped(
        &self,
        replica: &str,
        extra: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Service {
        let port = free_port();
        let log_path = log_dir().join(format!("{}-{replica}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create log file");
        let binary = env!("CARGO_BIN_EXE_swisper-ingest");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("serve")
            .env("OBSERVABILITY_REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url)
            .env("OBSERVABILITY_STREAM_NAME", &self.stream)
            .env("OBSERVABILITY_GROUP_NAME", &self.group)
            .env("OBSERVABILITY_CONSUMER_NAME", replica)
            .env("OBSERVABILITY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("OBSERVABILITY_BLOCK_MS", "200")
            .env("OBSERVABILITY_CLAIM_IDLE_MS", "2000")
            .env("OBSERVABILITY_CLAIM_INTERVAL_MS", "200")
            .env("OBSERVABILITY_MONITOR_INTERVAL_MS", "200")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn swisper-ingest");
        Service {
            child,
            port,
            log_path,
        }
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    client
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running service process; killed when dropped.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Service {
    /// GET a path; None while the server does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    pub fn json(&self, path: &str) -> Option<serde_json::Value> {
        self.get(path)
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
    }

    /// The value of a metric line such as `name{labels}` (exact text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let ok = wait_for(timeout, || matches!(self.get("/readyz"), Some((200, _))));
        assert!(ok, "service not ready in {timeout:?}; log: {}", self.log());
    }

    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("send SIGTERM");
        self.child.wait().expect("wait for exit")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Async version for database conditions.
pub async fn wait_for_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    condition().await
}

/// Waits until `expected` observations have their end stored.
pub async fn wait_for_ended_observations(db: &Client, expected: usize, timeout: Duration) -> bool {
    wait_for_async(timeout, || async {
        count(
            db,
            "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
        )
        .await
            == expected as i64
    })
    .await
}

pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or(-1)
}

/// Epoch seconds as the SDK writes them.
pub fn now_ts() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:.6}", now.as_secs_f64())
}

/// A trace in the seed's exact wire format: trace_start, then a root, a child
/// and a grandchild observation (start and end), the grandchild failing.
pub fn seed_trace(trace_id: &str, project_id: &str) -> Vec<Vec<(String, String)>> {
    let ts = now_ts();
    let mut events = vec![vec![
        ("event_type".to_owned(), "trace_start".to_owned()),
        ("trace_id".to_owned(), trace_id.to_owned()),
        ("project_id".to_owned(), project_id.to_owned()),
        ("timestamp".to_owned(), ts.clone()),
        (
            "data".to_owned(),
            serde_json::json!({"name": "chat", "user_id": "user-1", "session_id": "session-1",
                               "timestamp": "2025-11-05T10:00:00.000001"})
            .to_string(),
        ),
    ]];
    let observations = [
        (format!("{trace_id}-root"), None, "agent", "AGENT"),
        (
            format!("{trace_id}-child"),
            Some(format!("{trace_id}-root")),
            "planner",
            "SPAN",
        ),
        (
            format!("{trace_id}-grandchild"),
            Some(format!("{trace_id}-child")),
            "llm",
            "GENERATION",
        ),
    ];
    for (i, (id, parent, name, kind)) in observations.iter().enumerate() {
        let header = |event_type: &str| {
            vec![
                ("event_type".to_owned(), event_type.to_owned()),
                ("trace_id".to_owned(), trace_id.to_owned()),
                ("project_id".to_owned(), project_id.to_owned()),
                ("timestamp".to_owned(), ts.clone()),
                ("observation_id".to_owned(), id.clone()),
            ]
        };
        let mut start = header("observation_start");
        start.push((
            "data".to_owned(),
            serde_json::json!({"name": name, "type": kind, "parent_observation_id": parent,
                               "input": {"messages": [format!("in-{i}")]},
                               "start_time": format!("2025-11-05T10:00:0{i}.000000")})
            .to_string(),
        ));
        events.push(start);
        let failing = i == 2;
        let mut end = header(if failing {
            "observation_error"
        } else {
            "observation_end"
        });
        let data = if failing {
            serde_json::json!({"level": "ERROR", "error": "model timeout", "status_message": "model timeout",
                               "end_time": "2025-11-05T10:00:09.500000"})
        } else {
            serde_json::json!({"output": {"answer": format!("out-{i}")}, "level": "DEFAULT",
                               "end_time": format!("2025-11-05T10:00:1{i}.250000")})
        };
        end.push(("data".to_owned(), data.to_string()));
        events.push(end);
    }
    events
}

pub fn as_fields(event: &[(String, String)]) -> Vec<(&str, &str)> {
    event
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Ids pending in the group, under one consumer or all of them.
pub fn pending_ids(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: Option<&str>,
) -> Vec<String> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group).arg("-").arg("+").arg(1_000_000);
    if let Some(consumer) = consumer {
        cmd.arg(consumer);
    }
    let reply: redis::Value = cmd.query(conn).expect("xpending");
    let redis::Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| match row {
            redis::Value::Array(mut fields) if !fields.is_empty() => match fields.swap_remove(0) {
                redis::Value::BulkString(id) => Some(String::from_utf8_lossy(&id).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

pub fn pending_of(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Vec<String> {
    pending_ids(conn, stream, group, Some(consumer))
}

pub fn pending_all(conn: &mut redis::Connection, stream: &str, group: &str) -> Vec<String> {
    pending_ids(conn, stream, group, None)
}

/// Stops or starts the shared servers (`scripts/services.sh ACTION $SERVICES_DIR`).
pub fn services(action: &str) {
    let dir = std::env::var("SERVICES_DIR").expect("SERVICES_DIR is set by scripts/test.sh");
    let status = Command::new("scripts/services.sh")
        .arg(action)
        .arg(dir)
        .status()
        .expect("run services.sh");
    assert!(status.success(), "services.sh {action} failed");
}

/// Consumer names of the group.
pub fn consumer_names(conn: &mut redis::Connection, stream: &str, group: &str) -> Vec<String> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query(conn)
        .expect("xinfo");
    let redis::Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| match row {
            redis::Value::Array(fields) => fields.chunks(2).find_map(|pair| match pair {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

/// Peak and current resident memory of a process, in KiB (VmHWM, VmRSS).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Appends a measured figure to target/fault-figures.txt (the fault runner prints it).
pub fn report_figure(line: &str) {
    use std::io::Write as _;
    eprintln!("FIGURE {line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-figures.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

// ---------------------------------------------------------------------------
// SwisperStudio's schema (issue 16): the studio's Alembic head as a fixture, and a
// catalog of schema public to compare databases by.

/// SwisperStudio's schema as its `alembic upgrade head` (revision f68a1806c21d)
/// leaves a fresh database: tables, enum type, indexes, constraints, the admin
/// user and alembic_version. Replays each published revision in order.
pub const STUDIO_ALEMBIC_HEAD_SQL: &str = include_str!("../fixtures/studio_alembic_head.sql");

/// Makes `client`'s (fresh) database one the studio created: runs
/// tests/fixtures/studio_alembic_head.sql, in one transaction as Alembic does.
pub async fn apply_studio_fixture(client: &tokio_postgres::Client) {
    client
        .batch_execute(STUDIO_ALEMBIC_HEAD_SQL)
        .await
        .expect("apply tests/fixtures/studio_alembic_head.sql");
}

/// One line of text per object in schema public (see `public_schema_catalog`).
const PUBLIC_SCHEMA_CATALOG_SQL: &str = r#"
SELECT format('relation %s kind=%s persistence=%s', c.relname, c.relkind, c.relpersistence)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind NOT IN ('i', 'I')
UNION ALL
SELECT format('column %s.%s position=%s type=%s not_null=%s default=%s identity=%s generated=%s',
              c.relname, a.attname,
              row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
              format_type(a.atttypid, a.atttypmod), a.attnotnull,
              coalesce(pg_get_expr(d.adbin, d.adrelid), '(none)'),
              nullif(a.attidentity, ''), nullif(a.attgenerated, ''))
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('constraint %s.%s type=%s %s', c.relname, con.conname, con.contype,
              pg_get_constraintdef(con.oid))
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('index %s.%s %s', t.relname, i.relname, pg_get_indexdef(i.oid))
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('enum %s labels=%s', t.typname,
              (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)::text
               FROM pg_enum e WHERE e.enumtypid = t.oid))
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype = 'e'
UNION ALL
SELECT format('type %s kind=%s base=%s not_null=%s default=%s', t.typname, t.typtype,
              format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype IN ('b', 'd', 'r', 'm', 'p')
  AND t.typcategory <> 'A'
UNION ALL
SELECT format('domain-constraint %s.%s %s', t.typname, con.conname, pg_get_constraintdef(con.oid))
FROM pg_constraint con
JOIN pg_type t ON t.oid = con.contypid
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('trigger %s.%s %s', c.relname, tg.tgname, pg_get_triggerdef(tg.oid))
FROM pg_trigger tg
JOIN pg_class c ON c.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT tg.tgisinternal
UNION ALL
SELECT format('function %s(%s) kind=%s returns=%s', p.proname,
              pg_get_function_identity_arguments(p.oid), p.prokind,
              coalesce(pg_get_function_result(p.oid), '(none)'))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"#;

/// A normalized description of schema public, sorted: every relation (kind and
/// persistence), every column (position among live columns, `format_type` type,
/// nullability, default expression, identity/generated), every constraint
/// (`pg_get_constraintdef`), every index (`pg_get_indexdef`), enum types with their
/// labels in order, other types and domain constraints, user triggers, functions,
/// and the rows of alembic_version. Only names, no OIDs or attnums, so two databases
/// with the same schema give equal vectors. Constraint texts name referenced tables
/// as the session's search_path shows them, so compare sessions with the same
/// search_path (the default one in these tests).
pub async fn public_schema_catalog(client: &tokio_postgres::Client) -> Vec<String> {
    let mut lines: Vec<String> = client
        .query(PUBLIC_SCHEMA_CATALOG_SQL, &[])
        .await
        .expect("query the catalog of schema public")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let has_alembic_version: bool = client
        .query_one(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL",
            &[],
        )
        .await
        .expect("look for public.alembic_version")
        .get(0);
    if has_alembic_version {
        let rows = client
            .query("SELECT version_num::text FROM public.alembic_version", &[])
            .await
            .expect("read public.alembic_version");
        for row in rows {
            lines.push(format!("alembic_version {}", row.get::<_, String>(0)));
        }
    } else {
        lines.push("alembic_version (no table)".to_string());
    }
    lines.sort();
    lines
}

// ---------------------------------------------------------------------------
// Helpers of tests/studio.rs and tests/studio_schema.rs.

/// A connection target for the library's own functions (`store::migrate::run`).
pub fn pg_target(database_url: &str) -> swisper_ingest::connect::postgres::PgTarget {
    swisper_ingest::config::DatabaseSettings {
        database_url: database_url.parse().expect("a database url"),
        password_file: None,
        db_pool_size: 2,
        create_projects: swisper_ingest::config::CreateProjects::Auto,
        price_refresh_secs: 30,
    }
    .target()
    .expect("a postgres target")
}

/// A pool of 4 connections on a migrated database, and the studio settings
/// `serve` would use there: for tests that drive the write path directly.
pub async fn migrated_pool(
    database_url: &str,
) -> (
    swisper_ingest::store::Pool,
    swisper_ingest::write_path::Studio,
) {
    let target = pg_target(database_url);
    swisper_ingest::store::migrate::run(&target)
        .await
        .expect("migrate");
    let pool = swisper_ingest::store::connect_pool(&target, 4).expect("a pool");
    let studio = swisper_ingest::write_path::Studio::new(
        swisper_ingest::config::CreateProjects::Auto,
        std::time::Duration::from_secs(30),
    );
    (pool, studio)
}

/// The group's `lag` and `pending` as XINFO GROUPS reports them (lag None
/// when Redis cannot tell).
pub fn group_lag_pending(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
) -> Option<(Option<i64>, i64)> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .ok()?;
    let redis::Value::Array(groups) = reply else {
        return None;
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    groups.iter().find_map(|g| {
        let redis::Value::Array(fields) = g else {
            return None;
        };
        let mut name = None;
        let mut lag = None;
        let mut pending = None;
        for pair in fields.chunks(2) {
            let [k, v] = pair else { continue };
            match text(k).as_deref() {
                Some("name") => name = text(v),
                Some("lag") => {
                    lag = match v {
                        redis::Value::Int(n) => Some(*n),
                        _ => None,
                    }
                }
                Some("pending") => {
                    if let redis::Value::Int(n) = v {
                        pending = Some(*n)
                    }
                }
                _ => {}
            }
        }
        (name.as_deref() == Some(group)).then_some((lag, pending?))
    })
}

/// Every entry of the stream delivered to the group and acknowledged: lag 0
/// (or, where Redis cannot tell the lag, the group's last delivered id is
/// the stream's last id) and nothing pending.
pub fn group_drained(conn: &mut redis::Connection, stream: &str, group: &str) -> bool {
    match group_lag_pending(conn, stream, group) {
        Some((Some(lag), pending)) => lag == 0 && pending == 0,
        Some((None, 0)) => {
            let last = |reply: redis::Value, key: &str| -> Option<String> {
                let redis::Value::Array(fields) = reply else {
                    return None;
                };
                fields.chunks(2).find_map(|pair| match pair {
                    [redis::Value::BulkString(k), redis::Value::BulkString(v)]
                        if k == key.as_bytes() =>
                    {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    _ => None,
                })
            };
            let stream_info: Option<redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(stream)
                .query(conn)
                .ok();
            let groups: Option<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query(conn)
                .ok();
            let generated = stream_info.and_then(|r| last(r, "last-generated-id"));
            let delivered = match groups {
                Some(redis::Value::Array(groups)) => groups.into_iter().find_map(|g| {
                    let name = last(g.clone(), "name")?;
                    (name == group)
                        .then(|| last(g, "last-delivered-id"))
                        .flatten()
                }),
                _ => None,
            };
            generated.is_some() && generated == delivered
        }
        _ => false,
    }
}

/// `data` as the SDK sends it over 1 KB: `{"_compressed": true, "_data":
/// base64(gzip(json))}`.
pub fn compressed_data(json_text: &str) -> String {
    use base64::Engine as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json_text.as_bytes()).expect("gzip");
    let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    serde_json::json!({"_compressed": true, "_data": encoded}).to_string()
}
