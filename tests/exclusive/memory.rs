//! Exclusive because: it measures the peak RSS of the release binary and
//! runs it under `prlimit`; other tests' load would distort both.
//!
//! Memory under big entries, with the real release binary against real Redis
//! and PostgreSQL: a backlog of entries near the size limits drains within
//! the byte budget (peak RSS measured from /proc), and under a hard memory
//! limit the service neither crash-loops nor loses anything. Part of the
//! fault suite (`tests/faults/run.sh`), which builds in release.

#![cfg(feature = "fault-injection")]

use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(600);
/// The bound the issue asks for, whatever the backlog.
const RSS_BOUND_MIB: u64 = 256;
/// About 3 MB: a LangGraph state holding a long document, under the 4 MiB
/// default entry limit.
const BIG_DOCUMENT: usize = 3_000_000;
const BIG_ENTRIES: usize = 150;
/// Compressed `data` expanding close to OBSERVABILITY_MAX_EXPANDED_BYTES
/// (16 MiB by default).
const EXPANDING_DOCUMENT: usize = 15 * 1024 * 1024;
const EXPANDING_ENTRIES: usize = 12;

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Publishes the big-entry backlog with small neighbours; returns how many
/// seed traces (7 events each) went out between the big entries.
fn publish_backlog(env: &TestEnv, big: usize, expanding: usize) -> usize {
    let mut redis = env.redis();
    let document = random_text(BIG_DOCUMENT);
    let bigs = (0..big).flat_map(|i| {
        // Each entry differs so that nothing is shared between them.
        let data = format!(
            r#"{{"name":"big-{i}","type":"AGENT","input":{{"document":"{i:06}{}"}}}}"#,
            &document[6..]
        );
        let small = (i % 5 == 0).then(|| seed_trace(&format!("small-{}", i / 5), "p"));
        std::iter::once(observation_start(
            "big",
            &format!("big-{i}"),
            &now_ts(),
            &data,
        ))
        .chain(small.into_iter().flatten())
    });
    let filler = "lorem ipsum dolor sit amet ".repeat(EXPANDING_DOCUMENT / 27);
    let expandings = (0..expanding).map(|i| {
        let json = format!(
            r#"{{"name":"expanding-{i}","type":"SPAN","input":{{"document":"{i:06}{filler}"}}}}"#
        );
        let id = format!("expanding-{i}");
        observation_start("expanding", &id, &now_ts(), &compressed_data(&json))
    });
    env.publish_each(&mut redis, bigs.chain(expandings));
    big.div_ceil(5)
}

/// Everything published is stored with its whole input; nothing pending.
async fn assert_backlog_stored(env: &TestEnv, big: usize, expanding: usize, traces: usize) {
    let db = env.db().await;
    let expected = (big + expanding + traces * 3) as i64;
    let stored = wait_for_count(&db, "SELECT count(*) FROM observations", expected, WAIT).await;
    assert!(stored, "observations missing");
    let whole_big = count(
        &db,
        &format!(
            "SELECT count(*) FROM observations WHERE trace_id = 'big' AND length(input->>'document') = {BIG_DOCUMENT}"
        ),
    )
    .await;
    assert_eq!(whole_big, big as i64, "big inputs truncated or missing");
    let filler_len = 6 + "lorem ipsum dolor sit amet ".len() * (EXPANDING_DOCUMENT / 27);
    let whole_expanded = count(
        &db,
        &format!(
            "SELECT count(*) FROM observations WHERE trace_id = 'expanding' AND length(input->>'document') = {filler_len}"
        ),
    )
    .await;
    assert_eq!(whole_expanded, expanding as i64, "expanded inputs missing");
    let mut redis = env.redis();
    assert!(
        wait_for(WAIT, || pending_all(&mut redis, &env.stream, &env.group)
            .is_empty()),
        "entries left pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_big_entries_drains_within_the_memory_bound() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("big_backlog").await;
    env.migrate();
    env.create_group(&mut env.redis());
    let traces = publish_backlog(&env, BIG_ENTRIES, EXPANDING_ENTRIES);
    // The defaults, as a user runs the service.
    let service = env.spawn("big", &[]);
    let pid = service.child.id();
    let db = env.db().await;
    let expected = (BIG_ENTRIES + EXPANDING_ENTRIES + traces * 3) as i64;
    let done = wait_for_count(&db, "SELECT count(*) FROM observations", expected, WAIT).await;
    let (hwm_kib, _) = memory_kib(pid).expect("read /proc status");
    assert!(done, "backlog not stored; log: {}", service.log());
    assert_backlog_stored(&env, BIG_ENTRIES, EXPANDING_ENTRIES, traces).await;
    let dead = count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await;
    assert_eq!(dead, 0, "dead letters");
    let peak_mib = hwm_kib / 1024;
    report_figure(&format!(
        "big-entry backlog ({BIG_ENTRIES} x 3 MB observation_start, {EXPANDING_ENTRIES} compressed expanding to 15 MiB, {traces} small traces), defaults: peak RSS {peak_mib} MiB"
    ));
    assert!(
        peak_mib < RSS_BOUND_MIB,
        "peak RSS {peak_mib} MiB over {RSS_BOUND_MIB} MiB"
    );
}

/// VmSize of a process in KiB: what `prlimit --as` limits.
fn vm_size_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn dead_letters(rows: &[tokio_postgres::Row]) -> Vec<(String, String)> {
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_limit_the_backlog_drains_and_an_entry_too_big_to_hold_is_dead_lettered() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("crash_loop").await;
    env.migrate();
    // One arena per thread reserves 64 MB of address space each: cap them so
    // that the limit measures what the process uses (docs/reliability.md).
    let settings = [
        ("MALLOC_ARENA_MAX", "2"),
        ("OBSERVABILITY_MAX_DELIVERIES", "3"),
        // Let the crasher through the size check: it must be read to crash.
        ("OBSERVABILITY_MAX_ENTRY_BYTES", "536870912"),
    ];
    let baseline = {
        let service = env.spawn("limited", &settings);
        service.wait_ready(WAIT);
        vm_size_kib(service.child.id()).expect("read VmSize")
    };
    // Room for the budget (96 MiB by default) and its slack, not for a
    // 200 MB entry read, parsed and stored in one piece.
    let limit_bytes = (baseline + 320 * 1024) * 1024;
    let big = 40;
    let traces = publish_backlog(&env, big, 0);
    let mut redis = env.redis();
    let crasher_data = format!(
        r#"{{"name":"crasher","input":{{"document":"{}"}}}}"#,
        "x".repeat(200 * 1024 * 1024)
    );
    let crasher = env.publish(
        &mut redis,
        &as_fields(&observation_start(
            "crash",
            "crasher",
            &now_ts(),
            &crasher_data,
        )),
    );
    drop(crasher_data);
    env.publish_each(
        &mut redis,
        (0..5).flat_map(|t| seed_trace(&format!("after-{t}"), "p")),
    );

    let db = env.db().await;
    let expected = (big + (traces + 5) * 3) as i64;
    let limit = format!("--as={limit_bytes}");
    let wrapper = ["prlimit", limit.as_str(), "--"];
    let mut service = env.spawn_wrapped("limited", &settings, &wrapper);
    // Restarted on each exit, as Kubernetes would; bounded, as a test must be.
    let mut restarts = 0;
    let drained = wait_for_async(WAIT, || {
        if let Ok(Some(_)) = service.child.try_wait() {
            restarts += 1;
            if restarts <= 10 {
                service = env.spawn_wrapped("limited", &settings, &wrapper);
            }
        }
        let db = &db;
        async move {
            count(db, "SELECT count(*) FROM observations").await == expected
                && count(db, "SELECT count(*) FROM swisper_ingest.dead_letters").await == 1
        }
    })
    .await;
    assert!(drained, "restarts {restarts}; log: {}", service.log());
    let letters = dead_letters(
        &db.query(
            "SELECT stream_entry_id, reason_code FROM swisper_ingest.dead_letters",
            &[],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        letters,
        vec![(crasher.clone(), "too_many_deliveries".to_owned())]
    );
    assert!(
        (1..=3).contains(&restarts),
        "the crasher is dead-lettered after the delivery limit (3): {restarts} restarts"
    );
    assert!(
        wait_for(WAIT, || pending_all(&mut redis, &env.stream, &env.group)
            .is_empty()),
        "entries left pending"
    );
    let whole_big = count(
        &db,
        &format!("SELECT count(*) FROM observations WHERE trace_id = 'big' AND length(input->>'document') = {BIG_DOCUMENT}"),
    )
    .await;
    assert_eq!(whole_big, big as i64);
    report_figure(&format!(
        "crash loop under prlimit --as={} MiB (VmSize at rest {} MiB + 320): {big} x 3 MB entries drained, a 200 MB entry dead-lettered too_many_deliveries after {restarts} exits (limit 3 deliveries)",
        limit_bytes / 1024 / 1024,
        baseline / 1024
    ));
}

/// Delivers `ids` to `consumer` once more each: XREADGROUP of its own
/// pending entries, as a consumer that restarts does.
fn redeliver(env: &TestEnv, redis: &mut redis::Connection, consumer: &str, times: usize) {
    for _ in 0..times {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&env.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&env.stream)
            .arg("0")
            .query(redis)
            .unwrap();
    }
}

fn deliver_new(env: &TestEnv, redis: &mut redis::Connection, consumer: &str, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&env.group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(&env.stream)
        .arg(">")
        .query(redis)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pending_re_reads_and_claims_count_deliveries() {
    let _alone = crate::alone().await;
    let env = TestEnv::new("redeliveries").await;
    env.migrate();
    let mut redis = env.redis();
    env.create_group(&mut redis);
    let publish = |redis: &mut redis::Connection, prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                env.publish(
                    redis,
                    &as_fields(&observation_start(
                        "t",
                        &format!("{prefix}-{i}"),
                        &now_ts(),
                        r#"{"name":"x"}"#,
                    )),
                )
            })
            .collect()
    };
    // Own pending entries of consumer "own-0": delivered 10 times (the
    // default limit), then 1 time.
    let worn = publish(&mut redis, "own-worn", 3);
    deliver_new(&env, &mut redis, "own-0", 3);
    redeliver(&env, &mut redis, "own-0", 9);
    let fresh = publish(&mut redis, "own-fresh", 3);
    deliver_new(&env, &mut redis, "own-0", 3);
    // Pending to a consumer that is gone: claimed, the same way. Ids in the
    // middle of the claimed range are what XPENDING used to miss.
    let gone_worn = publish(&mut redis, "gone-worn", 3);
    deliver_new(&env, &mut redis, "gone-0", 3);
    redeliver(&env, &mut redis, "gone-0", 9);
    let gone_fresh = publish(&mut redis, "gone-fresh", 3);
    deliver_new(&env, &mut redis, "gone-0", 3);
    assert!(pending_of(&mut redis, &env.stream, &env.group, "own-0").len() == 6);

    let service = env.spawn("own", &[("OBSERVABILITY_CONSUMERS", "1")]);
    let db = env.db().await;
    let done = wait_for_async(WAIT, || async {
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await == 6
            && count(&db, "SELECT count(*) FROM observations").await == 6
    })
    .await;
    assert!(done, "log: {}", service.log());
    let mut letters: Vec<String> = db
        .query(
            "SELECT stream_entry_id FROM swisper_ingest.dead_letters WHERE reason_code = 'too_many_deliveries'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    letters.sort();
    let mut worn_all: Vec<String> = worn.iter().chain(&gone_worn).cloned().collect();
    worn_all.sort();
    assert_eq!(
        letters, worn_all,
        "the entries past the limit, and only they"
    );
    let stored = count(
        &db,
        "SELECT count(*) FROM observations WHERE id LIKE 'own-fresh-%' OR id LIKE 'gone-fresh-%'",
    )
    .await;
    assert_eq!(stored, (fresh.len() + gone_fresh.len()) as i64);
    assert!(wait_for(WAIT, || pending_all(
        &mut redis,
        &env.stream,
        &env.group
    )
    .is_empty()));
    report_figure("delivery limit on own re-reads and claims: 6 entries past 10 deliveries dead-lettered too_many_deliveries, 6 below it stored");
}

/// Delivery counts of every pending entry, by id.
fn delivery_counts(redis: &mut redis::Connection, env: &TestEnv) -> Vec<(String, i64)> {
    let rows: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&env.stream)
        .arg(&env.group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(redis)
        .unwrap();
    rows.into_iter().map(|(id, _, _, n)| (id, n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_batch_is_held_without_inflating_deliveries_and_the_way_out_keeps_good_entries()
{
    let _alone = crate::alone().await;
    let env = TestEnv::new("poison_hold").await;
    env.migrate();
    let mut redis = env.redis();
    env.create_group(&mut redis);
    let good = |redis: &mut redis::Connection, name: &str| {
        env.publish(
            redis,
            &as_fields(&observation_start(
                "t",
                name,
                &now_ts(),
                r#"{"name":"good"}"#,
            )),
        )
    };
    let bad = |redis: &mut redis::Connection| {
        env.publish(
            redis,
            &[
                ("event_type", "bogus"),
                ("trace_id", "t"),
                ("project_id", "p"),
                ("timestamp", "1"),
            ],
        )
    };
    let mut good_ids = Vec::new();
    let mut bad_ids = Vec::new();
    for i in 0..5 {
        good_ids.push(good(&mut redis, &format!("before-{i}")));
    }
    for _ in 0..40 {
        bad_ids.push(bad(&mut redis));
    }
    for i in 0..5 {
        good_ids.push(good(&mut redis, &format!("after-{i}")));
    }
    let settings = [
        ("OBSERVABILITY_POISON_RUN", "20"),
        ("OBSERVABILITY_CONSUMERS", "1"),
        ("OBSERVABILITY_MAX_DELIVERIES", "3"),
    ];
    let a = env.spawn("replica-a", &settings);
    assert!(
        wait_for(WAIT, || a.metric("swisper_ingest_poisoned") == Some(1.0)),
        "poison protection did not trip; log: {}",
        a.log()
    );
    let b = env.spawn("replica-b", &settings);
    b.wait_ready(WAIT);
    // Several claim idle times (2 s in tests) and hold retries go by.
    assert!(!wait_for(Duration::from_secs(8), || {
        delivery_counts(&mut redis, &env)
            .iter()
            .any(|(_, n)| *n > 1)
    }));
    let counts = delivery_counts(&mut redis, &env);
    assert_eq!(counts.len(), 50, "the whole batch stays pending");
    assert!(
        counts.iter().all(|(_, n)| *n == 1),
        "deliveries inflated: {counts:?}"
    );
    assert_eq!(
        pending_of(&mut redis, &env.stream, &env.group, "replica-a-0").len(),
        50,
        "another replica took part of the held batch"
    );
    let db = env.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM observations").await, 0);
    assert_eq!(a.metric("swisper_ingest_poison_held_entries"), Some(50.0));

    // The runbook's way out: acknowledge the bad entries by hand.
    let _: i64 = redis::cmd("XACK")
        .arg(&env.stream)
        .arg(&env.group)
        .arg(&bad_ids)
        .query(&mut redis)
        .unwrap();
    let stored = wait_for_count(&db, "SELECT count(*) FROM observations", 10, WAIT).await;
    assert!(stored, "log: {}", a.log());
    assert!(wait_for(WAIT, || pending_all(
        &mut redis,
        &env.stream,
        &env.group
    )
    .is_empty()));
    assert!(wait_for(WAIT, || a.metric("swisper_ingest_poisoned") == Some(0.0)));

    // The other way out: poison protection off (pods roll): the bad entries
    // become dead letters for what they are, the good ones are stored.
    for _ in 0..40 {
        bad(&mut redis);
    }
    for i in 0..5 {
        good(&mut redis, &format!("late-{i}"));
    }
    assert!(wait_for(WAIT, || a.metric("swisper_ingest_poisoned")
        == Some(1.0)
        || b.metric("swisper_ingest_poisoned") == Some(1.0)));
    thread_sleep_claims();
    drop(a);
    drop(b);
    let off = [
        ("OBSERVABILITY_POISON_RUN", "0"),
        ("OBSERVABILITY_CONSUMERS", "1"),
        ("OBSERVABILITY_MAX_DELIVERIES", "3"),
    ];
    let a = env.spawn("replica-a", &off);
    let _b = env.spawn("replica-b", &off);
    let done = wait_for_async(WAIT, || async {
        count(&db, "SELECT count(*) FROM observations").await == 15
            && count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await == 40
    })
    .await;
    assert!(done, "log: {}", a.log());
    let reasons: Vec<(String, i64)> = db
        .query(
            "SELECT reason_code, count(*) FROM swisper_ingest.dead_letters GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(reasons, vec![("unknown_event_type".to_owned(), 40)]);
    report_figure("poison across two replicas: 50 held entries kept at 1 delivery over 8 s of claim passes; acking the 40 bad by hand stored the 10 good; with protection off the next 40 bad were dead-lettered for their own reason and the 5 good stored");
}

/// Lets a few hold retries and claim passes happen before the replicas go.
fn thread_sleep_claims() {
    std::thread::sleep(Duration::from_secs(3));
}
