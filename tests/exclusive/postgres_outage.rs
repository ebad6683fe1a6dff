//! Exclusive because: it stops the shared Postgres.
//!
//! Postgres stopped and restarted under load: nothing is acked or
//! dead-lettered while it is down, readiness says so, and everything is
//! stored afterwards.

use std::time::Duration;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let _alone = crate::alone().await;
    let outage = Duration::from_secs(
        std::env::var("SWISPER_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let env = TestEnv::new("pg_outage").await;
    let service = env.spawn("outage", &[]);
    service.wait_ready(Duration::from_secs(30));
    let mut redis = env.redis();
    let traces = 60;
    env.publish_traces(&mut redis, 0..traces / 3);
    let acked = |service: &Service| service.metric("swisper_ingest_acked_total").unwrap_or(0.0);
    assert!(wait_for(Duration::from_secs(30), || acked(&service)
        >= (traces / 3 * 7) as f64));

    services("stop-postgres");
    env.publish_traces(&mut redis, traces / 3..traces);
    let unready = wait_for(
        Duration::from_secs(30),
        || matches!(service.get("/readyz"), Some((503, body)) if body.contains("\"postgres\":false")),
    );
    assert!(
        unready,
        "readiness did not turn false; log: {}",
        service.log()
    );
    let acked_when_down = acked(&service);
    std::thread::sleep(outage);
    assert_eq!(
        acked(&service),
        acked_when_down,
        "entries were acked while postgres was down"
    );
    let pending: u64 = service
        .json("/api/v1/observability/metrics")
        .and_then(|j| j["pending"].as_u64())
        .unwrap_or(0);
    assert!(
        pending > 0,
        "the batch in hand should stay pending while postgres is down"
    );
    services("start-postgres");
    let restarted = std::time::Instant::now();

    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, traces * 3, Duration::from_secs(60)).await;
    assert!(
        stored,
        "not everything stored after the outage; log: {}",
        service.log()
    );
    let caught_up = restarted.elapsed();
    assert_eq!(
        count(&db, "SELECT count(*) FROM traces WHERE name = 'chat'").await,
        traces as i64
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0,
        "the outage caused dead letters"
    );
    assert!(wait_for(Duration::from_secs(30), || matches!(
        service.get("/readyz"),
        Some((200, _))
    )));
    assert!(wait_for(Duration::from_secs(30), || {
        service
            .json("/api/v1/observability/metrics")
            .and_then(|j| j["pending"].as_u64())
            == Some(0)
    }));
    report_figure(&format!(
        "postgres down {} s under load: 0 acked while down, 0 dead letters, all {traces} traces stored {:.1} s after restart",
        outage.as_secs(),
        caught_up.as_secs_f64()
    ));
}
