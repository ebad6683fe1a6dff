//! TLS end to end against a TLS-only Redis (one more requiring client
//! certificates) and a TLS-only PostgreSQL (`hostssl` + scram, plaintext
//! rejected), started on loopback by tests/tls/servers.sh with a CA and
//! certificates made for the run. The real binary: `serve` stores events over
//! TLS, `check` reports; wrong CA, plaintext, missing client certificate and a
//! name mismatch each fail with a clear error naming the setting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rand::Rng;
use swisper_ingest::config::{DatabaseSettings, RedisSettings};

use crate::harness::{free_port, seed_trace, wait_for, wait_for_ended_observations, xadd, Service};

const BIN: &str = env!("CARGO_BIN_EXE_swisper-ingest");

/// The servers of this test binary, started once, stopped by the script's
/// watchdog when this process exits.
struct Servers {
    dir: PathBuf,
    redis_port: u16,
    mtls_port: u16,
    expired_port: u16,
    pg_port: u16,
    secrets: HashMap<String, String>,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        // Under the system temp folder, not target/: the postgres user must
        // enter every parent folder, and a checkout may sit in one that only
        // root can enter (a mktemp folder, mode 700).
        let dir = std::env::temp_dir().join(format!("swisper-tls-servers-{}", std::process::id()));
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let [redis_port, mtls_port, expired_port, pg_port] = ports;
        let status = Command::new("tests/tls/servers.sh")
            .arg("up")
            .arg(&dir)
            .args(ports.map(|p| p.to_string()))
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .expect("run tests/tls/servers.sh");
        assert!(status.success(), "tests/tls/servers.sh up failed");
        let secrets = std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Servers {
            dir,
            redis_port,
            mtls_port,
            expired_port,
            pg_port,
            secrets,
        }
    })
}

impl Servers {
    fn cert(&self, name: &str) -> String {
        self.dir.join("certs").join(name).display().to_string()
    }

    fn secret(&self, name: &str) -> &str {
        &self.secrets[name]
    }

    /// DATABASE_URL for `db` with the given query (no password: PGPASSWORD).
    fn database_url(&self, host: &str, db: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{query}", self.pg_port)
    }

    fn verify_full(&self, db: &str) -> String {
        self.database_url(
            "localhost",
            db,
            &format!("sslmode=verify-full&sslrootcert={}", self.cert("ca.crt")),
        )
    }

    /// The test's own sessions: verified TLS, the password in the URL (not
    /// PGPASSWORD: this process's environment is shared by parallel tests).
    fn own_session(&self, db: &str) -> String {
        self.verify_full(db).replacen(
            "postgres@",
            &format!("postgres:{}@", self.secret("PG_PASSWORD")),
            1,
        )
    }

    /// The settings every command of a test gets: the right CA, passwords
    /// from their own variables.
    fn env(&self, db: &str) -> Vec<(String, String)> {
        [
            (
                "OBSERVABILITY_REDIS_URL",
                format!("rediss://127.0.0.1:{}", self.redis_port),
            ),
            (
                "OBSERVABILITY_REDIS_PASSWORD",
                self.secret("REDIS_PASSWORD").to_owned(),
            ),
            ("OBSERVABILITY_REDIS_CA_FILE", self.cert("ca.crt")),
            ("DATABASE_URL", self.verify_full(db)),
            ("PGPASSWORD", self.secret("PG_PASSWORD").to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A fresh database, created over verified TLS with the service's code.
    async fn create_database(&self, name: &str) -> String {
        let db = format!("tls_{name}_{:08x}", rand::thread_rng().gen::<u32>());
        let admin = postgres(&self.own_session("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        db
    }

    /// A Redis connection made by the service's own client builder.
    fn redis(&self) -> redis::Connection {
        let settings = RedisSettings {
            url: format!(
                "rediss://:{}@127.0.0.1:{}",
                self.secret("REDIS_PASSWORD"),
                self.redis_port
            )
            .parse()
            .unwrap(),
            username: None,
            username_file: None,
            password: None,
            password_file: None,
            ca_file: Some(self.cert("ca.crt").into()),
            client_cert_file: None,
            client_key_file: None,
            tls_insecure: false,
        };
        settings.target().unwrap().client.get_connection().unwrap()
    }
}

async fn postgres(url: &str) -> tokio_postgres::Client {
    let settings = DatabaseSettings {
        database_url: url.parse().unwrap(),
        password_file: None,
        db_pool_size: 1,
        create_projects: swisper_ingest::config::CreateProjects::Auto,
        toast_compression: swisper_ingest::config::ToastCompression::Lz4,
        price_refresh_secs: 30,
    };
    settings.target().unwrap().connect().await.unwrap()
}

/// A `swisper-ingest` command with only the given settings (none inherited
/// from the shared plaintext servers of scripts/test.sh).
fn swisper(args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("OBSERVABILITY_") || name.starts_with("PG") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

fn with(env: &[(String, String)], overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    env.extend(
        overrides
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env
}

fn check(env: &[(String, String)], stream: &str, group: &str) -> (Output, serde_json::Value) {
    let env = with(
        env,
        &[
            ("OBSERVABILITY_STREAM_NAME", stream),
            ("OBSERVABILITY_GROUP_NAME", group),
        ],
    );
    let text = swisper(&["check"], &env).output().expect("run check");
    let json = swisper(&["check", "--json"], &env)
        .output()
        .expect("run check --json");
    assert_eq!(text.status.code(), json.status.code());
    let report = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    (text, report)
}

/// Saves what `check` printed (target/tmp/tls-check-NAME.txt) for the docs.
fn keep(name: &str, output: &Output, report: &serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let text = String::from_utf8_lossy(&output.stdout);
    std::fs::write(
        dir.join(format!("tls-check-{name}.txt")),
        format!("{text}exit code {:?}\n", output.status.code()),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("tls-check-{name}.json")),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
}

fn spawn(name: &str, env: &[(String, String)], stream: &str, group: &str) -> Service {
    let port = free_port();
    let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = swisper(&["serve"], env);
    command
        .env("OBSERVABILITY_STREAM_NAME", stream)
        .env("OBSERVABILITY_GROUP_NAME", group)
        .env("OBSERVABILITY_CONSUMER_NAME", name)
        .env("OBSERVABILITY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OBSERVABILITY_BLOCK_MS", "200")
        .env("OBSERVABILITY_MONITOR_INTERVAL_MS", "200")
        .env("RUST_LOG", "info,swisper_ingest=debug")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    Service {
        child: command.spawn().expect("spawn swisper-ingest"),
        port,
        log_path,
    }
}

fn names(test: &str) -> (String, String) {
    let suffix: u32 = rand::thread_rng().gen();
    (
        format!("tls:{test}:{suffix:08x}"),
        format!("group-{suffix:08x}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_over_tls_are_stored_and_check_passes() {
    let servers = servers();
    let db = servers.create_database("e2e").await;
    let (stream, group) = names("e2e");
    // serve: an ACL user and its password in the URL.
    let serve_env = with(
        &servers.env(&db),
        &[
            (
                "OBSERVABILITY_REDIS_URL",
                &format!(
                    "rediss://ingest:{}@localhost:{}",
                    servers.secret("INGEST_PASSWORD"),
                    servers.redis_port
                ),
            ),
            ("OBSERVABILITY_REDIS_PASSWORD", ""),
        ],
    );
    let service = spawn("e2e", &serve_env, &stream, &group);
    service.wait_ready(Duration::from_secs(60));

    let mut redis = servers.redis();
    for event in seed_trace("tls-trace", "tls-project") {
        let _: String = xadd(&stream, event).query(&mut redis).unwrap();
    }
    let db_client = postgres(&servers.own_session(&db)).await;
    assert!(
        wait_for_ended_observations(&db_client, 3, Duration::from_secs(60)).await,
        "the trace was not stored over TLS; log: {}",
        service.log()
    );

    // check: the default user's password from its own variable.
    let (output, report) = check(&servers.env(&db), &stream, &group);
    keep("ok", &output, &report);
    assert!(
        output.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(report["ok"], true);
    assert_eq!(report["redis"]["tls"], true);
    assert_eq!(report["redis"]["verified"], true);
    assert_eq!(report["redis"]["group_exists"], true);
    assert_eq!(report["redis"]["pending"], 0);
    assert_eq!(report["postgres"]["tls"], true);
    assert_eq!(report["postgres"]["verified"], true);
    assert_eq!(report["postgres"]["verification"], "full");
    assert_eq!(
        report["postgres"]["schema_version"],
        report["postgres"]["binary_schema_version"]
    );

    let printed = format!(
        "{}{}{}",
        service.log(),
        String::from_utf8_lossy(&output.stdout),
        report
    );
    for secret in ["REDIS_PASSWORD", "INGEST_PASSWORD", "PG_PASSWORD"] {
        assert!(
            !printed.contains(servers.secret(secret)),
            "{secret} was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_keeps_the_service_unready_with_one_clear_error() {
    let servers = servers();
    let db = servers.create_database("wrong_ca").await;
    let (stream, group) = names("wrong-ca");
    let good = servers.env(&db);
    let wrong_pg_ca = servers.database_url(
        "localhost",
        &db,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            servers.cert("other-ca.crt")
        ),
    );

    // Postgres signed by a CA we do not trust.
    let service = spawn(
        "wrong-pg-ca",
        &with(&good, &[("DATABASE_URL", &wrong_pg_ca)]),
        &stream,
        &group,
    );
    let retried = wait_for(Duration::from_secs(60), || {
        service
            .log()
            .matches("still cannot connect to postgres")
            .count()
            >= 2
    });
    assert!(retried, "no retries logged; log: {}", service.log());
    assert!(matches!(service.get("/readyz"), Some((503, _))));
    let log = service.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error, then quiet retries; log: {log}");
    assert!(errors[0].contains("certificate") && errors[0].contains("sslrootcert"));
    let failures = service.metric(r#"swisper_ingest_postgres_errors_total{kind="unavailable"}"#);
    assert!(
        failures.unwrap_or(0.0) >= 2.0,
        "every failed attempt is counted"
    );
    drop(service);

    // Redis signed by a CA we do not trust.
    let wrong_redis_ca = with(
        &good,
        &[("OBSERVABILITY_REDIS_CA_FILE", &servers.cert("other-ca.crt"))],
    );
    let service = spawn("wrong-redis-ca", &wrong_redis_ca, &stream, &group);
    let logged = wait_for(Duration::from_secs(60), || {
        service.log().contains("OBSERVABILITY_REDIS_CA_FILE")
    });
    assert!(logged, "no clear error; log: {}", service.log());
    assert!(matches!(service.get("/readyz"), Some((503, _))));
    let log = service.log();
    let error = log.lines().find(|l| l.contains("ERROR")).unwrap();
    assert!(error.contains("certificate"), "{error}");
    let failures = service.metric(r#"swisper_ingest_redis_errors_total{operation="connect"}"#);
    assert!(
        failures.unwrap_or(0.0) >= 1.0,
        "failed attempts are counted"
    );
    drop(service);

    // check names both.
    let both_wrong = with(&wrong_redis_ca, &[("DATABASE_URL", &wrong_pg_ca)]);
    let (output, report) = check(&both_wrong, &stream, &group);
    keep("wrong-ca", &output, &report);
    assert!(!output.status.success());
    assert_eq!(report["ok"], false);
    let redis_error = report["redis"]["error"].as_str().unwrap();
    let pg_error = report["postgres"]["error"].as_str().unwrap();
    assert!(
        redis_error.contains("certificate") && redis_error.contains("OBSERVABILITY_REDIS_CA_FILE")
    );
    assert!(pg_error.contains("certificate") && pg_error.contains("sslrootcert"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("check failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_tls_only_servers_is_refused_clearly() {
    let servers = servers();
    let db = servers.create_database("plain").await;
    let (stream, group) = names("plain");
    let plaintext = with(
        &servers.env(&db),
        &[
            (
                "OBSERVABILITY_REDIS_URL",
                &format!("redis://127.0.0.1:{}", servers.redis_port),
            ),
            ("OBSERVABILITY_REDIS_CA_FILE", ""),
            (
                "DATABASE_URL",
                &servers.database_url("localhost", &db, "sslmode=disable"),
            ),
        ],
    );
    let (output, report) = check(&plaintext, &stream, &group);
    keep("plaintext", &output, &report);
    assert!(!output.status.success());
    let redis_error = report["redis"]["error"].as_str().unwrap();
    assert!(redis_error.contains("rediss://"), "{redis_error}");
    let pg_error = report["postgres"]["error"].as_str().unwrap();
    assert!(pg_error.contains("accepts only TLS"), "{pg_error}");

    // A TLS setting with a redis:// URL is refused before connecting.
    let mixed = with(
        &plaintext,
        &[("OBSERVABILITY_REDIS_CA_FILE", &servers.cert("ca.crt"))],
    );
    let output = swisper(&["check"], &mixed).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not rediss://"));

    // libpq's default, prefer, encrypts against this server, unverified.
    let prefer = with(
        &servers.env(&db),
        &[(
            "DATABASE_URL",
            &servers.database_url("localhost", &db, "sslmode=prefer"),
        )],
    );
    let (_, report) = check(&prefer, &stream, &group);
    assert_eq!(report["postgres"]["connected"], true);
    assert_eq!(report["postgres"]["tls"], true);
    assert_eq!(report["postgres"]["verified"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mutual_tls_needs_the_client_certificate() {
    let servers = servers();
    let db = servers.create_database("mtls").await;
    let (stream, group) = names("mtls");
    let mtls_url = format!("rediss://127.0.0.1:{}", servers.mtls_port);
    let without = with(&servers.env(&db), &[("OBSERVABILITY_REDIS_URL", &mtls_url)]);
    let (output, report) = check(&without, &stream, &group);
    keep("mtls-without-certificate", &output, &report);
    assert!(!output.status.success());
    let error = report["redis"]["error"].as_str().unwrap();
    assert!(error.contains("client certificate"), "{error}");
    assert!(
        error.contains("OBSERVABILITY_REDIS_CLIENT_CERT_FILE"),
        "{error}"
    );

    let with_cert = with(
        &without,
        &[
            (
                "OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
                &servers.cert("client.crt"),
            ),
            (
                "OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
                &servers.cert("client.key"),
            ),
        ],
    );
    let (_, report) = check(&with_cert, &stream, &group);
    assert_eq!(report["redis"]["connected"], true, "{report}");
    assert_eq!(report["redis"]["error"], serde_json::Value::Null);
    assert_eq!(report["redis"]["verified"], true);
    assert_eq!(report["redis"]["client_certificate"], true);

    // The key without its certificate is a settings error.
    let half = with(
        &without,
        &[(
            "OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
            &servers.cert("client.key"),
        )],
    );
    let output = swisper(&["check"], &half).output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("OBSERVABILITY_REDIS_CLIENT_CERT_FILE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_named() {
    let servers = servers();
    let db = servers.create_database("expired").await;
    let (stream, group) = names("expired");
    let expired = with(
        &servers.env(&db),
        &[(
            "OBSERVABILITY_REDIS_URL",
            &format!("rediss://127.0.0.1:{}", servers.expired_port),
        )],
    );
    let (output, report) = check(&expired, &stream, &group);
    keep("expired", &output, &report);
    assert!(!output.status.success());
    let error = report["redis"]["error"].as_str().unwrap();
    assert!(error.contains("certificate has expired"), "{error}");

    // The explicit opt-out connects, says it did not verify, and warns (on
    // stderr: stdout stays one JSON document).
    let insecure = with(&expired, &[("OBSERVABILITY_REDIS_TLS_INSECURE", "true")]);
    let (output, report) = check(&insecure, &stream, &group);
    assert_eq!(report["redis"]["connected"], true, "{report}");
    assert_eq!(report["redis"]["tls"], true);
    assert_eq!(report["redis"]["verified"], false);
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT verified"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_for_another_name() {
    let servers = servers();
    let db = servers.create_database("names").await;
    let (stream, group) = names("names");
    // Connect to 127.0.0.1 under a name the certificate does not carry.
    let url = |mode: &str| {
        servers.database_url(
            "db.wrong.example",
            &db,
            &format!(
                "hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
                servers.cert("ca.crt")
            ),
        )
    };
    let full = with(&servers.env(&db), &[("DATABASE_URL", &url("verify-full"))]);
    let (output, report) = check(&full, &stream, &group);
    keep("name-mismatch", &output, &report);
    let error = report["postgres"]["error"].as_str().unwrap();
    assert!(
        error.contains("certificate") && error.contains("host name"),
        "{error}"
    );

    // verify-ca checks the chain only, as libpq does.
    let chain = with(&servers.env(&db), &[("DATABASE_URL", &url("verify-ca"))]);
    let (_, report) = check(&chain, &stream, &group);
    assert_eq!(report["postgres"]["connected"], true, "{report}");
    assert_eq!(report["postgres"]["verification"], "chain");
}

#[test]
fn help_shows_no_secret_values() {
    let env = [
        (
            "OBSERVABILITY_REDIS_URL".to_owned(),
            "rediss://user:url-s3cret@host:6380".to_owned(),
        ),
        (
            "OBSERVABILITY_REDIS_PASSWORD".to_owned(),
            "env-s3cret".to_owned(),
        ),
        (
            "DATABASE_URL".to_owned(),
            "postgres://app:db-s3cret@db/x".to_owned(),
        ),
    ];
    for command in [
        &["serve", "--help"][..],
        &["check", "--help"],
        &["migrate", "--help"],
        &["dead-letters", "replay", "--help"],
    ] {
        let output = swisper(command, &env).output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("OBSERVABILITY_REDIS_URL") || help.contains("DATABASE_URL"));
        assert!(
            !help.contains("s3cret"),
            "{command:?} printed a secret: {help}"
        );
    }
}
