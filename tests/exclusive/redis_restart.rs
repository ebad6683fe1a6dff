//! Exclusive because: it restarts the shared Redis.
//!
//! Redis restarted under load (appendonly on, as production runs it): the
//! service reconnects by itself and goes on, nothing lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_persistence_loses_nothing() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("redis_restart").await;
    let service = env.spawn("restarted", &[]);
    service.wait_ready(Duration::from_secs(30));
    let aof: String = {
        let mut redis = env.redis();
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query(&mut redis)
            .unwrap();
        reply.get(1).cloned().unwrap_or_default()
    };
    assert_eq!(aof, "yes", "scripts/test.sh starts Redis with REDIS_AOF=1");

    // A producer that keeps publishing, retrying while Redis is down (the SDK
    // drops events then; here every trace must get through to be counted).
    let stop = Arc::new(AtomicBool::new(false));
    let producer = env.steady_publisher(100, usize::MAX, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    services("stop-redis");
    let unready = wait_for(Duration::from_secs(20), || {
        matches!(service.get("/readyz"), Some((503, _)))
    });
    std::thread::sleep(Duration::from_secs(3));
    services("start-redis");
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(service.get("/readyz"), Some((200, _)))
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let traces = producer.join().unwrap();
    assert!(unready, "readiness stayed true while redis was down");
    assert!(ready, "the service did not recover; log: {}", service.log());

    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, traces * 3, Duration::from_secs(60)).await;
    assert!(
        stored,
        "{traces} traces published, not all stored; log: {}",
        service.log()
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    let mut redis = env.redis();
    assert!(wait_for(Duration::from_secs(30), || pending_all(
        &mut redis,
        &env.stream,
        &env.group
    )
    .is_empty()));
    assert!(
        service
            .metric("swisper_ingest_redis_errors_total{operation=\"xreadgroup\"}")
            .is_some_and(|v| v > 0.0)
            || service
                .metric("swisper_ingest_redis_errors_total{operation=\"connect\"}")
                .is_some_and(|v| v > 0.0)
    );
    // Each consumer retries every backoff step while Redis is down; the log
    // says so once per consumer and distinct error, not once per attempt.
    let log = service.log();
    let warned = log
        .lines()
        .filter(|line| {
            line.contains("consumer ")
                && [
                    "cannot connect to redis yet",
                    "cannot read the group yet",
                    "cannot wait for new entries yet",
                ]
                .iter()
                .any(|what| line.contains(what))
        })
        .count();
    let attempts: f64 = ["connect", "xreadgroup", "xread"]
        .iter()
        .filter_map(|op| {
            service.metric(&format!(
                "swisper_ingest_redis_errors_total{{operation=\"{op}\"}}"
            ))
        })
        .sum();
    assert!(
        warned <= 8,
        "{warned} consumer warnings for one outage ({attempts} failed attempts): not deduplicated; log: {log}"
    );
    report_figure(&format!(
        "redis restart (AOF everysec, 3 s down): {traces} traces published, all stored, 0 pending; {attempts} failed consumer attempts logged as {warned} warnings"
    ));
}
