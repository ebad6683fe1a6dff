//! Where a test runs: the servers `scripts/test.sh` started (their URLs in
//! `OBSERVABILITY_REDIS_URL` and `DATABASE_URL`), with a database, a stream
//! and a group of the test's own.

use std::process::Command;

use rand::Rng;
use tokio_postgres::Client;

use super::pg::connect;

/// A test's own database and stream on the shared servers.
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
    /// Creates the database `test_{name}_{random}`; the stream and group
    /// carry the same random suffix.
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

    /// Applies the schema with the real binary's `migrate`.
    pub fn migrate(&self) {
        let status = Command::new(env!("CARGO_BIN_EXE_swisper-ingest"))
            .arg("migrate")
            .env("DATABASE_URL", &self.database_url)
            .status()
            .expect("run migrate");
        assert!(status.success(), "migrate failed");
    }

    /// The real binary's `dead-letters ARGS` on this database and Redis.
    pub fn dead_letters(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_swisper-ingest"))
            .arg("dead-letters")
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("OBSERVABILITY_REDIS_URL", &self.redis_url)
            .output()
            .expect("run dead-letters")
    }
}
