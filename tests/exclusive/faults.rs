//! Exclusive because: it kills and signals replicas under a steady load and
//! measures recovery times and memory, which other tests on the two cores
//! would distort; it needs the `fault-injection` crash hooks.
//!
//! Fault injection with processes of the real binary against real Redis and
//! PostgreSQL: replicas killed mid-batch, a crash between COMMIT and XACK, a
//! million-entry backlog, SIGTERM under load, rolling replacement. Each test
//! checks the final database against what was published and reports its
//! figures (target/tmp/fault-figures.txt). Built only with the
//! `fault-injection` feature: run them with `tests/faults/run.sh`.

#![cfg(feature = "fault-injection")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(120);

/// Every published trace is stored whole, nothing dead-lettered or pending.
async fn assert_all_stored(env: &TestEnv, traces: usize, services: &[&Service]) {
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, traces * 3, WAIT).await;
    let logs: String = services.iter().map(|s| s.log()).collect();
    assert!(
        stored,
        "observations missing; logs: {}",
        &logs[logs.len().saturating_sub(4000)..]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM traces WHERE name = 'chat'").await,
        traces as i64,
        "traces missing"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM observations WHERE level = 'ERROR' AND status_message = 'model timeout'").await, traces as i64);
    assert_eq!(count(&db, "SELECT count(*) FROM observations o WHERE parent_observation_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM observations p WHERE p.id = o.parent_observation_id)").await, 0, "nesting broken");
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0,
        "dead letters"
    );
    let mut redis = env.redis();
    assert!(
        wait_for(WAIT, || pending_all(&mut redis, &env.stream, &env.group)
            .is_empty()),
        "entries left pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_pending_entries_are_claimed_by_the_other() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("kill9").await;
    let mut redis = env.redis();
    // The production defaults, so the recovery time is the one operators get.
    let default_claims = [
        ("OBSERVABILITY_CLAIM_IDLE_MS", "3000"),
        ("OBSERVABILITY_CLAIM_INTERVAL_MS", "1000"),
    ];
    let survivor = env.spawn("replica-b", &default_claims);
    survivor.wait_ready(WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = env.steady_publisher(60, 100_000, stop.clone());

    let (mut recoveries, mut kills) = (Vec::new(), 0);
    let mut victim = env.spawn("replica-a1", &default_claims);
    // Up to six kills, until three caught the victim holding entries: a
    // replica acks within milliseconds, so a kill often comes just after.
    for round in 1..=6 {
        if recoveries.len() == 3 {
            break;
        }
        victim.wait_ready(WAIT);
        thread::sleep(Duration::from_secs(2));
        // Kill while it holds entries: delivered to it, not yet acked.
        let name = format!("replica-a{round}");
        let consumers: Vec<String> = (0..2)
            .map(|i| format!("{name}-{i}"))
            .chain([format!("{name}-claimer")])
            .collect();
        let mut held = Vec::new();
        let holding = wait_for(Duration::from_secs(20), || {
            held = consumers
                .iter()
                .flat_map(|c| pending_of(&mut redis, &env.stream, &env.group, c))
                .collect();
            !held.is_empty()
        });
        assert!(holding, "replica never held pending entries");
        victim.kill();
        kills += 1;
        let killed_at = Instant::now();
        // What it held when it died: entries it acked between the look
        // above and the kill are not there to recover (a recovery of 0 s).
        held = consumers
            .iter()
            .flat_map(|c| pending_of(&mut redis, &env.stream, &env.group, c))
            .collect();
        victim = env.spawn(&format!("replica-a{}", round + 1), &default_claims);
        if held.is_empty() {
            continue;
        }
        let recovered = wait_for(WAIT, || {
            let pending = pending_all(&mut redis, &env.stream, &env.group);
            !held.iter().any(|id| pending.contains(id))
        });
        assert!(
            recovered,
            "pending entries of the killed replica were never stored"
        );
        recoveries.push(killed_at.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let traces = publisher.join().unwrap();
    assert_all_stored(&env, traces, &[&survivor, &victim]).await;
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    report_figure(&format!(
        "kill -9 recovery (kill to last pending entry stored), {} of {kills} kills while holding entries: {} ; worst {:.2} s ; {traces} traces, 0 lost",
        recoveries.len(),
        recoveries.iter().map(|d| format!("{:.2} s", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
        worst.as_secs_f64()
    ));
}

/// Every studio row and our merge state beside it, as text.
async fn snapshot(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT * FROM (
             SELECT 'observation ' || o.id AS key, row_to_json(o)::text FROM public.observations o
             UNION ALL SELECT 'observation_state ' || s.id, row_to_json(s)::text
                 FROM swisper_ingest.observation_state s
             UNION ALL SELECT 'trace ' || t.id, row_to_json(t)::text FROM public.traces t
             UNION ALL SELECT 'trace_state ' || s.id, row_to_json(s)::text
                 FROM swisper_ingest.trace_state s
         ) rows ORDER BY key COLLATE \"C\"",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(1))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_ack_changes_nothing_on_redelivery() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("crash_ack").await;
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 0..20);
    let mut crashing = env.spawn(
        "crashy",
        &[
            ("SWISPER_INGEST_CRASH_AT", "after-commit"),
            ("OBSERVABILITY_CONSUMERS", "1"),
        ],
    );
    let status = crashing.child.wait().unwrap();
    assert!(!status.success(), "the crash hook did not fire");
    let db = env.db().await;
    let before = snapshot(&db).await;
    // 20 traces and 60 observations, each with its state.
    assert_eq!(
        before.len(),
        160,
        "the batch was committed before the crash"
    );
    let pending_before = pending_all(&mut redis, &env.stream, &env.group).len();
    assert_eq!(
        pending_before, 140,
        "nothing may be acked before the crash point"
    );

    // The replica comes back under the same name: it re-reads its own
    // pending entries and writes them again.
    let service = env.spawn("crashy", &[("OBSERVABILITY_CONSUMERS", "1")]);
    assert!(
        wait_for(WAIT, || pending_all(&mut redis, &env.stream, &env.group)
            .is_empty()),
        "log: {}",
        service.log()
    );
    let after = snapshot(&db).await;
    assert_eq!(
        before, after,
        "redelivery changed stored rows or their merge state"
    );
    report_figure(&format!(
        "crash between COMMIT and XACK: {pending_before} entries redelivered, 0 rows changed"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entry_backlog_drains_in_bounded_memory() {
    let _alone = crate::alone().await;
    let entries: usize = std::env::var("SWISPER_FAULT_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let env = TestEnv::new("backlog").await;
    let mut redis = env.redis();
    let ts = now_ts();
    let started = Instant::now();
    env.publish_backlog(
        &mut redis,
        (0..entries).map(|i| {
            observation_start(
                &format!("t{}", i / 20),
                &format!("o{i}"),
                &ts,
                r#"{"name":"node","type":"SPAN","input":{"messages":["hello there"]}}"#,
            )
        }),
    );
    let published_in = started.elapsed();
    let service = env.spawn("drainer", &[]);
    let pid = service.child.id();
    let drain_started = Instant::now();
    let mut lags = Vec::new();
    let mut peak_rss = 0;
    let drained = wait_for(Duration::from_secs(900), || {
        if let Some((_, rss)) = memory_kib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        if let Some(status) = service.json("/api/v1/observability/metrics") {
            if let Some(lag) = status["lag"].as_u64() {
                if lags.last() != Some(&lag) && (lags.len() < 2 || lag == 0 || lags.len() % 50 == 0)
                {
                    lags.push(lag);
                }
                return lag == 0 && status["pending"].as_u64() == Some(0);
            }
        }
        false
    });
    let drain_time = drain_started.elapsed();
    let (hwm, _) = memory_kib(pid).unwrap_or((peak_rss, 0));
    assert!(drained, "backlog did not drain; log: {}", service.log());
    assert!(
        lags.first().is_some_and(|&l| l > 0) && lags.last() == Some(&0),
        "lag metrics never showed the backlog: {lags:?}"
    );
    let db = env.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM observations").await,
        entries as i64
    );
    let rate = entries as f64 / drain_time.as_secs_f64();
    report_figure(&format!(
        "backlog of {entries} entries: published in {:.1} s, drained in {:.1} s ({rate:.0} entries/s), peak RSS {} MiB, lag readings {:?}",
        published_in.as_secs_f64(), drain_time.as_secs_f64(), hwm / 1024, lags
    ));
    // Bounded: the backlog is 100s of MB in Redis; the service holds a few batches.
    assert!(hwm < 512 * 1024, "peak RSS {hwm} KiB is not bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_in_time_with_nothing_pending() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("sigterm_load").await;
    let mut redis = env.redis();
    let mut first = env.spawn("graceful", &[]);
    first.wait_ready(WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = env.steady_publisher(200, 100_000, stop.clone());
    thread::sleep(Duration::from_secs(3));
    let signalled = Instant::now();
    let status = first.terminate();
    let exit_time = signalled.elapsed();
    assert!(status.success(), "exit {status:?}; log: {}", first.log());
    let own = ["graceful-0", "graceful-1", "graceful-claimer"];
    let left: usize = own
        .iter()
        .map(|c| pending_of(&mut redis, &env.stream, &env.group, c).len())
        .sum();
    assert_eq!(
        left, 0,
        "entries left pending under the stopped replica's consumers"
    );
    // Another replica finishes the job; nothing was lost.
    let second = env.spawn("successor", &[]);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let traces = publisher.join().unwrap();
    assert_all_stored(&env, traces, &[&first, &second]).await;
    report_figure(&format!(
        "SIGTERM under load (1,400 events/s): exited 0 in {:.2} s (budget 25 s), 0 entries pending",
        exit_time.as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_leaves_no_orphans() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("rolling").await;
    let mut redis = env.redis();
    let settings = [
        ("OBSERVABILITY_CONSUMER_GONE_SECS", "2"),
        ("OBSERVABILITY_CLAIM_IDLE_MS", "1500"),
        ("OBSERVABILITY_CLAIM_INTERVAL_MS", "100"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = env.steady_publisher(80, 100_000, stop.clone());
    let mut replica = env.spawn("pod-0", &settings);
    for pod in 1..=4 {
        replica.wait_ready(WAIT);
        thread::sleep(Duration::from_secs(2));
        // Kubernetes replaces pods under new names; half die hard.
        if pod % 2 == 0 {
            replica.kill()
        } else {
            replica.terminate();
        }
        replica = env.spawn(&format!("pod-{pod}"), &settings);
    }
    replica.wait_ready(WAIT);
    stop.store(true, Ordering::Relaxed);
    let traces = publisher.join().unwrap();
    assert_all_stored(&env, traces, &[&replica]).await;
    // Gone pods' consumers have nothing pending and are removed.
    let only_current = wait_for(Duration::from_secs(60), || {
        consumer_names(&mut redis, &env.stream, &env.group)
            .iter()
            .all(|name| name.starts_with("pod-4-"))
    });
    let names = consumer_names(&mut redis, &env.stream, &env.group);
    assert!(
        only_current,
        "consumers of gone pods remain: {names:?}; log: {}",
        replica.log()
    );
    report_figure(&format!("rolling replacement of 5 pods: {traces} traces stored, 0 pending, consumers left {names:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_consumer_is_restarted_and_nothing_is_lost() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("panic").await;
    let mut redis = env.redis();
    env.publish_traces(&mut redis, 0..30);
    let service = env.spawn("panicky", &[("SWISPER_INGEST_CRASH_AT", "consumer")]);
    assert_all_stored(&env, 30, &[&service]).await;
    let restarted = wait_for(WAIT, || {
        service.metric("swisper_ingest_actor_restarts_total{actor=\"consumer\"}") == Some(1.0)
    });
    assert!(
        restarted,
        "the supervisor did not restart the consumer; log: {}",
        service.log()
    );
    assert!(service.log().contains("actor restarted"));
    report_figure("consumer panic: restarted by the supervisor once, 30 traces stored, 0 pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pipeline_reports_not_live() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("stall").await;
    let mut redis = env.redis();
    env.publish_each(&mut redis, seed_trace("trace-stalled", "p"));
    let service = env.spawn(
        "stalled",
        &[
            ("SWISPER_INGEST_CRASH_AT", "writer"),
            ("OBSERVABILITY_STALL_TIMEOUT_SECS", "2"),
        ],
    );
    // Redis and Postgres answer, entries wait, nothing commits: not live.
    let dead = wait_for(
        WAIT,
        || matches!(service.get("/healthz"), Some((503, body)) if body.contains("stalled_for_seconds")),
    );
    assert!(
        dead,
        "liveness did not reflect the stall; log: {}",
        service.log()
    );
    assert!(
        matches!(service.get("/readyz"), Some((200, _))),
        "dependencies are fine, readiness stays true"
    );

    // A healthy replica next to it is live, and stores what the stalled one holds.
    let healthy = env.spawn("healthy", &[("OBSERVABILITY_STALL_TIMEOUT_SECS", "2")]);
    healthy.wait_ready(WAIT);
    assert!(matches!(healthy.get("/healthz"), Some((200, _))));
    drop(service);
    assert_all_stored(&env, 1, &[&healthy]).await;
    report_figure("stalled writer with Redis and Postgres up: /healthz 503 after the 2 s stall timeout; a healthy replica took over");
}
