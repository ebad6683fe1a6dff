//! Credentials rotated under load (issue 20): the service reads its Redis
//! ACL password and its Postgres password from files at every new
//! connection. While events are published, each password is changed on the
//! server and the live connections are killed, twice: once before the file
//! is rewritten (the service is refused, counts it, and gets in as soon as
//! the file holds the new password) and once after.
//! Nothing is lost or stored twice, the group ends drained, the service is
//! connected with the last secret, and the servers refuse the old ones.
//!
//! Redis: the shared server of scripts/services.sh with an ACL user of this
//! test. Postgres: one of this test's own (tests/credentials/postgres.sh),
//! since the shared one trusts every connection.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{as_fields, count, free_port, group_drained, seed_trace, wait_for, TestEnv};
use tokio_postgres::NoTls;

const TRACES: usize = 600;
/// Each trace is 7 events: trace_start and 3 observations' start and end.
const EVENTS_PER_TRACE: usize = 7;

struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("swisper-creds-pg-{}", std::process::id()));
        let port = free_port();
        let status = Command::new("tests/credentials/postgres.sh")
            .arg("up")
            .arg(&dir)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .expect("run tests/credentials/postgres.sh");
        assert!(status.success(), "tests/credentials/postgres.sh up failed");
        Self { dir, port }
    }

    /// The postgres superuser over the Unix socket (trusted).
    async fn admin(&self, db: &str) -> tokio_postgres::Client {
        let dsn = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.join("sock").display(),
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// Logs in as `ingest` over TCP with a password; the SQLSTATE if refused.
    async fn login(&self, password: &str) -> Result<(), String> {
        let url = format!(
            "postgres://ingest:{password}@127.0.0.1:{}/rotation?sslmode=disable",
            self.port
        );
        match tokio_postgres::connect(&url, NoTls).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.code().code().to_owned())),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("tests/credentials/postgres.sh")
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

fn write_secret(path: &Path, secret: &str) {
    // As a Secret volume does: a new file put in place at once.
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, format!("{secret}\n")).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

fn set_redis_password(conn: &mut redis::Connection, user: &str, password: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("resetpass")
        .arg(format!(">{password}"))
        .query(conn)
        .unwrap();
}

fn kill_redis_clients(conn: &mut redis::Connection, user: &str) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(user)
        .query(conn)
        .unwrap()
}

/// Whether Redis lets `user` in with `password`.
fn redis_auth(env: &TestEnv, user: &str, password: &str) -> Result<(), String> {
    let mut conn = env.redis();
    redis::cmd("AUTH")
        .arg(user)
        .arg(password)
        .query::<()>(&mut conn)
        .map_err(|e| e.code().unwrap_or("?").to_owned())
}

async fn set_pg_password(admin: &tokio_postgres::Client, password: &str) -> u64 {
    admin
        .batch_execute(&format!("ALTER ROLE ingest PASSWORD '{password}'"))
        .await
        .unwrap();
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ingest'",
            &[],
        )
        .await
        .unwrap()
        .len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_passwords_are_used_by_the_next_connection_and_nothing_is_lost() {
    let env = TestEnv::new("rotation").await;
    let pg = Postgres::start();
    let admin = pg.admin("postgres").await;
    for sql in [
        "CREATE ROLE ingest LOGIN SUPERUSER PASSWORD 'pg-one'",
        "CREATE DATABASE rotation OWNER ingest",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let user = format!("ingest-{}", env.group);
    let mut control = env.redis();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">redis-one")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut control)
        .unwrap();
    let secrets = std::env::temp_dir().join(format!("swisper-creds-{}", std::process::id()));
    std::fs::create_dir_all(&secrets).unwrap();
    let (redis_file, pg_file) = (secrets.join("redis-password"), secrets.join("pg-password"));
    write_secret(&redis_file, "redis-one");
    write_secret(&pg_file, "pg-one");

    let database_url = format!(
        "postgres://ingest@127.0.0.1:{}/rotation?sslmode=disable",
        pg.port
    );
    let service = env.spawn(
        "rotation",
        &[
            ("DATABASE_URL", database_url.as_str()),
            (
                "OBSERVABILITY_DATABASE_PASSWORD_FILE",
                pg_file.to_str().unwrap(),
            ),
            ("OBSERVABILITY_REDIS_USERNAME", user.as_str()),
            (
                "OBSERVABILITY_REDIS_PASSWORD_FILE",
                redis_file.to_str().unwrap(),
            ),
        ],
    );
    service.wait_ready(Duration::from_secs(60));

    // Load: traces published in batches while the passwords rotate.
    let publisher = {
        let stream = env.stream.clone();
        let url = env.redis_url.clone();
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
            for batch in 0..(TRACES / 50) {
                for t in 0..50 {
                    for event in seed_trace(&format!("rot-{batch}-{t}"), "rotation-project") {
                        let mut cmd = redis::cmd("XADD");
                        cmd.arg(&stream).arg("*");
                        for (k, v) in as_fields(&event) {
                            cmd.arg(k).arg(v);
                        }
                        let _: String = cmd.query(&mut conn).unwrap();
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let refused = |target: &str| {
        service
            .metric(&format!(
                "swisper_ingest_auth_failures_total{{target=\"{target}\"}}"
            ))
            .unwrap_or(0.0)
    };

    // 1. The servers change first: the service's next connections are
    // refused until the files catch up.
    set_redis_password(&mut control, &user, "redis-two");
    let killed_redis = kill_redis_clients(&mut control, &user);
    assert!(killed_redis > 0, "the service had no redis connection");
    assert!(
        wait_for(Duration::from_secs(60), || refused("redis") >= 1.0),
        "no refused redis connection counted; log: {}",
        service.log()
    );
    write_secret(&redis_file, "redis-two");
    let killed_pg = set_pg_password(&admin, "pg-two").await;
    assert!(killed_pg > 0, "the service had no postgres connection");
    assert!(
        wait_for(Duration::from_secs(60), || refused("postgres") >= 1.0),
        "no refused postgres connection counted; log: {}",
        service.log()
    );
    write_secret(&pg_file, "pg-two");
    let (redis_refused, pg_refused) = (refused("redis"), refused("postgres"));

    // 2. The files change first. Not refusal-free either: a connection made
    // between the two steps is refused (Postgres knows one password per
    // role), and the next one gets in.
    write_secret(&redis_file, "redis-three");
    set_redis_password(&mut control, &user, "redis-three");
    kill_redis_clients(&mut control, &user);
    write_secret(&pg_file, "pg-three");
    set_pg_password(&admin, "pg-three").await;

    publisher.join().unwrap();
    let db = pg.admin("rotation").await;
    let expected_traces = TRACES as i64;
    let stored = wait_for(Duration::from_secs(120), || {
        let mut conn = env.redis();
        group_drained(&mut conn, &env.stream, &env.group)
    });
    assert!(stored, "the group did not drain; log: {}", service.log());
    let traces = count(&db, "SELECT count(*) FROM traces").await;
    let distinct = count(&db, "SELECT count(DISTINCT id) FROM traces").await;
    let observations = count(&db, "SELECT count(*) FROM observations").await;
    let ended = count(
        &db,
        "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
    )
    .await;
    let dead = count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await;
    let published: i64 = redis::cmd("XLEN")
        .arg(&env.stream)
        .query(&mut control)
        .unwrap();
    eprintln!(
        "FIGURE credentials rotation: published {published} events ({TRACES} traces); stored \
         {traces} traces ({distinct} distinct), {observations} observations ({ended} ended), \
         {dead} dead letters; connections killed: redis {killed_redis}, postgres {killed_pg}; \
         refused connections counted while the files lagged: redis {redis_refused}, postgres \
         {pg_refused}; after the orderly rotation: redis {}, postgres {}",
        refused("redis"),
        refused("postgres"),
    );
    assert_eq!(published, (TRACES * EVENTS_PER_TRACE) as i64);
    assert_eq!((traces, distinct), (expected_traces, expected_traces));
    assert_eq!(observations, 3 * expected_traces);
    assert_eq!(ended, 3 * expected_traces);
    assert_eq!(dead, 0);

    // The service is connected with the last secrets...
    let mut live_redis = 0;
    assert!(wait_for(Duration::from_secs(30), || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut control)
            .unwrap();
        live_redis = list
            .lines()
            .filter(|l| l.contains(&format!(" user={user} ")))
            .count();
        live_redis > 0
    }));
    let live_pg = count(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ingest'",
    )
    .await;
    assert!(live_pg > 0, "the service has no postgres connection");
    assert!(service
        .get("/readyz")
        .is_some_and(|(status, _)| status == 200));
    // ...and the servers refuse the old ones.
    for old in ["redis-one", "redis-two"] {
        assert_eq!(
            redis_auth(&env, &user, old),
            Err("WRONGPASS".into()),
            "{old}"
        );
    }
    assert_eq!(redis_auth(&env, &user, "redis-three"), Ok(()));
    for old in ["pg-one", "pg-two"] {
        assert_eq!(pg.login(old).await, Err("28P01".into()), "{old}");
    }
    assert_eq!(pg.login("pg-three").await, Ok(()));
    eprintln!("FIGURE credentials rotation: live connections after rotation: redis {live_redis}, postgres {live_pg}");
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut control)
        .unwrap();
    let _ = std::fs::remove_dir_all(&secrets);
}
