//! Lag after a trim, end to end (issue 17, defect 1): a stream the SDK has
//! trimmed before the group existed, the real service creating its group at
//! `0` and draining the backlog. Once drained, Redis's lag (XINFO GROUPS) and
//! the `swisper_ingest_group_lag` gauge are 0, and the replica stays live
//! past its stall timeout (a lag stuck above 0 reads as entries waiting with
//! nothing committed: /healthz 503 and a restart by Kubernetes).

use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(180);
/// The stall timeout of the service under test, and how long the test waits
/// past it once everything is drained.
const STALL_TIMEOUT_SECS: u64 = 3;
const PAST_STALL_TIMEOUT: Duration = Duration::from_secs(STALL_TIMEOUT_SECS + 3);

/// Redis's view of the group: (last-delivered-id, entries-read, lag, pending).
fn group_info(
    redis: &mut redis::Connection,
    env: &TestEnv,
) -> Option<(String, Option<i64>, Option<i64>, i64)> {
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&env.stream)
        .query(redis)
        .ok()?;
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    };
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => Some(*n),
        _ => None,
    };
    groups.iter().find_map(|g| {
        let redis::Value::Array(kv) = g else {
            return None;
        };
        let field = |name: &str| kv.chunks(2).find(|p| text(&p[0]) == name).map(|p| &p[1]);
        (text(field("name")?) == env.group).then(|| {
            (
                text(field("last-delivered-id").unwrap_or(&redis::Value::Nil)),
                field("entries-read").and_then(int),
                field("lag").and_then(int),
                field("pending").and_then(int).unwrap_or(-1),
            )
        })
    })
}

fn trace_start(trace_id: &str) -> Vec<(String, String)> {
    vec![
        ("event_type".into(), "trace_start".into()),
        ("trace_id".into(), trace_id.into()),
        ("project_id".into(), "p".into()),
        ("timestamp".into(), now_ts()),
        ("data".into(), r#"{"name":"lag"}"#.into()),
    ]
}

/// Waits until every entry up to `last` is delivered and acked and `traces`
/// traces are stored.
async fn wait_drained(
    env: &TestEnv,
    service: &Service,
    redis: &mut redis::Connection,
    last: &str,
    traces: i64,
) {
    let db = env.db().await;
    let stored = wait_for_count(&db, "SELECT count(*) FROM public.traces", traces, WAIT).await;
    assert!(
        stored,
        "{} traces stored, expected {traces}; log: {}",
        count(&db, "SELECT count(*) FROM public.traces").await,
        service.log()
    );
    let drained = wait_for(
        WAIT,
        || matches!(group_info(redis, env), Some((ref delivered, _, _, 0)) if delivered == last),
    );
    assert!(
        drained,
        "not drained: {:?}; log: {}",
        group_info(redis, env),
        service.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_returns_to_zero_after_a_trimmed_backlog_is_drained() {
    let env = TestEnv::new("lag_trim").await;
    env.migrate();
    let mut redis = env.redis();
    // 1,100 entries published, 550 trimmed away before any group exists.
    for i in 0..1_100 {
        env.publish(&mut redis, &as_fields(&trace_start(&format!("t-{i}"))));
    }
    let trimmed: i64 = redis::cmd("XTRIM")
        .arg(&env.stream)
        .arg("MAXLEN")
        .arg(550)
        .query(&mut redis)
        .unwrap();
    assert_eq!(trimmed, 550);
    let last: String = {
        let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(&env.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut redis)
            .unwrap();
        rows[0].0.clone()
    };

    // The service creates its group at 0 (redis_stream::ensure_group).
    let stall = STALL_TIMEOUT_SECS.to_string();
    let mut service = env.spawn(
        "lag",
        &[("OBSERVABILITY_STALL_TIMEOUT_SECS", stall.as_str())],
    );
    wait_drained(&env, &service, &mut redis, &last, 550).await;

    // Quiet: nothing left to read, well past the stall timeout.
    std::thread::sleep(PAST_STALL_TIMEOUT);
    let info = group_info(&mut redis, &env);
    let gauge = service.metric("swisper_ingest_group_lag");
    let health = service.get("/healthz");
    eprintln!("after the drain: XINFO GROUPS {info:?}, gauge {gauge:?}, /healthz {health:?}");
    assert_eq!(
        info.as_ref().map(|i| i.2),
        Some(Some(0)),
        "XINFO GROUPS lag after the drain: {info:?}"
    );
    assert_eq!(gauge, Some(0.0), "swisper_ingest_group_lag after the drain");
    assert_eq!(
        health.as_ref().map(|(status, _)| *status),
        Some(200),
        "/healthz {STALL_TIMEOUT_SECS} s past the stall timeout: {health:?}"
    );
    assert!(
        matches!(service.child.try_wait(), Ok(None)),
        "the service exited; log: {}",
        service.log()
    );

    // 110 more entries: drained, and lag is 0 again.
    let mut last = last;
    for i in 1_100..1_210 {
        last = env.publish(&mut redis, &as_fields(&trace_start(&format!("t-{i}"))));
    }
    wait_drained(&env, &service, &mut redis, &last, 660).await;
    let settled = wait_for(Duration::from_secs(10), || {
        service.metric("swisper_ingest_group_lag") == Some(0.0)
    });
    let info = group_info(&mut redis, &env);
    let gauge = service.metric("swisper_ingest_group_lag");
    eprintln!("after 110 more: XINFO GROUPS {info:?}, gauge {gauge:?}");
    assert_eq!(
        info.as_ref().map(|i| i.2),
        Some(Some(0)),
        "XINFO GROUPS lag after 110 more entries: {info:?}"
    );
    assert!(
        settled,
        "swisper_ingest_group_lag after 110 more: {gauge:?}"
    );
    assert_eq!(service.get("/healthz").map(|(status, _)| status), Some(200));
    assert!(matches!(service.child.try_wait(), Ok(None)));
    assert_eq!(service.terminate().code(), Some(0));
}
