//! Exclusive because: it turns the whole shared Postgres server read-only.
//!
//! The whole Postgres server turns read-only under the service's open
//! sessions (`ALTER SYSTEM SET default_transaction_read_only = on` and a
//! reload, as after a failover that left us on a replica): `SELECT 1` still
//! answers, yet nothing can be written. Readiness turns false from the probe,
//! nothing is acked or dead-lettered, a SIGTERM whose drain cannot finish
//! exits non-zero, and a restarted replica stores everything once the server
//! is writable again. In the fault suite too.

use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

async fn admin() -> tokio_postgres::Client {
    connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await
}

/// ALTER SYSTEM cannot run inside a transaction block: one statement a call.
async fn set_read_only(on: bool) {
    let admin = admin().await;
    admin
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    let alter = if on {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    admin.batch_execute(alter).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // pg_reload_conf() only signals the postmaster, which re-reads the file
    // and then signals the open sessions. Once a new session sees the
    // setting, the open ones have been signalled: each applies it before
    // its next command. Publishing earlier let a transaction of the
    // service's start writable (acked 71 of 70 in one fresh-clone run).
    let wanted = if on { "on" } else { "off" };
    for _ in 0..100 {
        let fresh = self::admin().await;
        let row = fresh
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .unwrap();
        if row.get::<_, String>(0) == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("default_transaction_read_only did not turn {wanted} within 10 s");
}

/// Makes the server writable again even when the test fails half-way.
struct Writable;

impl Drop for Writable {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(set_read_only(false))
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_server_keeps_everything_pending_and_exits_non_zero_on_a_stuck_drain() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("pg_read_only_server").await;
    let settings = [("OBSERVABILITY_SHUTDOWN_TIMEOUT_SECS", "3")];
    let mut service = env.spawn("ro-server", &settings);
    service.wait_ready(LONG);
    let mut redis = env.redis();
    let acked = |service: &Service| service.metric("swisper_ingest_acked_total").unwrap_or(0.0);
    env.publish_traces(&mut redis, 0..10);
    assert!(wait_for(LONG, || acked(&service) >= 70.0));

    let _writable = Writable;
    set_read_only(true).await;
    env.publish_traces(&mut redis, 10..20);
    let read_only = |service: &Service| {
        service
            .metric("swisper_ingest_postgres_errors_total{kind=\"read_only\"}")
            .unwrap_or(0.0)
    };
    let seen = wait_for(LONG, || {
        read_only(&service) >= 2.0
            && matches!(service.get("/readyz"), Some((503, body)) if body.contains("\"postgres\":false"))
    });
    assert!(seen, "read-only not seen; log: {}", service.log());
    assert_eq!(acked(&service), 70.0, "acked while read-only");
    let errors = read_only(&service);

    // The drain cannot commit what is in hand: the budget runs out.
    let status = service.terminate();
    assert!(
        !status.success(),
        "a drain that ran out of budget must exit non-zero; log: {}",
        service.log()
    );
    assert!(service.log().contains("ran out with entries still in hand"));
    let pending = pending_all(&mut redis, &env.stream, &env.group).len();
    assert!(pending > 0, "entries in hand should stay pending");

    set_read_only(false).await;
    let service = env.spawn("ro-server", &settings);
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, 60, LONG).await,
        "not everything stored after the server turned writable; log: {}",
        service.log()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    service.wait_ready(LONG);
    report_figure(&format!(
        "server read-only under open sessions: {errors} read_only attempts, 0 acked, drain exit non-zero with {pending} entries pending, all 20 traces stored after, 0 dead letters"
    ));
}
