//! End to end through the real binary, real Redis and real PostgreSQL.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_trace_is_stored_with_every_field() {
    let env = TestEnv::new("seed_trace").await;
    let mut redis = env.redis();
    // Published before the service ever ran: the group starts at id 0.
    env.publish_each(&mut redis, seed_trace("trace-a", "project-1"));
    let service = env.spawn("replica-a", &[]);
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, 3, WAIT).await;
    assert!(stored, "observations not stored; log: {}", service.log());

    let trace = db
        .query_one(
            "SELECT project_id, name, user_id, session_id, meta, tags, \"timestamp\", input, output
             FROM public.traces WHERE id = 'trace-a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        trace.get::<_, Option<String>>(0).as_deref(),
        Some("project-1")
    );
    assert_eq!(trace.get::<_, Option<String>>(1).as_deref(), Some("chat"));
    assert_eq!(trace.get::<_, Option<String>>(2).as_deref(), Some("user-1"));
    assert_eq!(
        trace.get::<_, Option<String>>(3).as_deref(),
        Some("session-1")
    );
    // A trace_start with nothing beyond its columns: meta {}, tags [].
    assert_eq!(
        trace.get::<_, Option<serde_json::Value>>(4),
        Some(json!({}))
    );
    assert_eq!(
        trace.get::<_, Option<serde_json::Value>>(5),
        Some(json!([]))
    );
    // The studio's timestamps are UTC without a zone.
    let timestamp: chrono::NaiveDateTime = trace.get(6);
    assert_eq!(
        timestamp.and_utc().to_rfc3339(),
        "2025-11-05T10:00:00.000001+00:00"
    );
    assert_eq!(trace.get::<_, Option<serde_json::Value>>(7), None);
    assert_eq!(trace.get::<_, Option<serde_json::Value>>(8), None);
    // The project was created on first sight (this database stands alone).
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.projects WHERE id = 'project-1' AND name = 'project-1'"
        )
        .await,
        1
    );

    let rows = db
        .query(
            "SELECT o.id, o.trace_id, t.project_id, o.parent_observation_id, o.type::text, o.name,
                    o.input, o.output, o.start_time, o.end_time, o.level, o.status_message, o.meta,
                    o.model, o.prompt_tokens::text, o.completion_tokens::text, o.total_tokens::text,
                    o.calculated_total_cost::text
             FROM public.observations o JOIN public.traces t ON t.id = o.trace_id
             ORDER BY o.start_time",
            &[],
        )
        .await
        .unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            let start: chrono::NaiveDateTime = r.get(8);
            let end: chrono::NaiveDateTime = r.get(9);
            json!({
                "id": r.get::<_, String>(0), "trace": r.get::<_, String>(1), "project": r.get::<_, String>(2),
                "parent": r.get::<_, Option<String>>(3), "type": r.get::<_, String>(4), "name": r.get::<_, Option<String>>(5),
                "input": r.get::<_, Option<serde_json::Value>>(6), "output": r.get::<_, Option<serde_json::Value>>(7),
                "start": start.and_utc().to_rfc3339(), "end": end.and_utc().to_rfc3339(), "level": r.get::<_, String>(10),
                "status": r.get::<_, Option<String>>(11), "meta": r.get::<_, Option<serde_json::Value>>(12),
                "llm": [r.get::<_, Option<String>>(13), r.get::<_, Option<String>>(14),
                        r.get::<_, Option<String>>(15), r.get::<_, Option<String>>(16),
                        r.get::<_, Option<String>>(17)],
            })
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            json!({"id": "trace-a-root", "trace": "trace-a", "project": "project-1", "parent": null, "type": "AGENT",
                   "name": "agent", "input": {"messages": ["in-0"]}, "output": {"answer": "out-0"},
                   "start": "2025-11-05T10:00:00+00:00", "end": "2025-11-05T10:00:10.250+00:00",
                   "level": "DEFAULT", "status": null, "meta": null, "llm": [null, null, null, null, null]}),
            json!({"id": "trace-a-child", "trace": "trace-a", "project": "project-1", "parent": "trace-a-root",
                   "type": "SPAN", "name": "planner", "input": {"messages": ["in-1"]}, "output": {"answer": "out-1"},
                   "start": "2025-11-05T10:00:01+00:00", "end": "2025-11-05T10:00:11.250+00:00",
                   "level": "DEFAULT", "status": null, "meta": null, "llm": [null, null, null, null, null]}),
            json!({"id": "trace-a-grandchild", "trace": "trace-a", "project": "project-1", "parent": "trace-a-child",
                   "type": "GENERATION", "name": "llm", "input": {"messages": ["in-2"]}, "output": null,
                   "start": "2025-11-05T10:00:02+00:00", "end": "2025-11-05T10:00:09.500+00:00",
                   "level": "ERROR", "status": "model timeout", "meta": {"error": "model timeout"},
                   "llm": [null, null, null, null, null]}),
        ]
    );
    // Our merge state beside each row: every group's version is known.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.observation_state
             WHERE trace_id = 'trace-a' AND project_id = 'project-1'
               AND start_version IS NOT NULL AND end_version IS NOT NULL"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.trace_state
             WHERE id = 'trace-a' AND project_id = 'project-1' AND start_version IS NOT NULL"
        )
        .await,
        1
    );
    // Everything stored was acked: nothing pending for the group.
    let acked = wait_for(WAIT, || {
        service
            .json("/api/v1/observability/metrics")
            .and_then(|j| j["pending"].as_u64())
            == Some(0)
    });
    assert!(acked, "entries still pending");
}

/// A Redis database other than 0 in the URL: the consumers' own connection
/// (src/connect/resp) sends SELECT as it connects, and reads only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_database_other_than_0_is_the_one_read() {
    let mut env = TestEnv::new("redis_db").await;
    let base = env.redis_url.trim_end_matches('/').to_owned();
    assert!(
        base.rsplit_once("//")
            .is_some_and(|(_, host)| !host.contains('/')),
        "the shared Redis URL names no database: {base}"
    );
    env.redis_url = format!("{base}/3");
    let mut redis = env.redis();
    env.publish_each(&mut redis, seed_trace("trace-db3", "project-1"));
    let service = env.spawn("replica-a", &[]);
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, 3, WAIT).await;
    assert!(stored, "observations not stored; log: {}", service.log());
    assert!(
        wait_for(WAIT, || group_drained(&mut redis, &env.stream, &env.group)),
        "group in database 3 not drained"
    );
    let mut database_0 = redis::Client::open(base.as_str())
        .and_then(|c| c.get_connection())
        .unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&env.stream)
        .query(&mut database_0)
        .unwrap();
    assert_eq!(exists, 0, "the service made the stream in database 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_dead_lettered_and_neighbours_stored() {
    let env = TestEnv::new("bad_input").await;
    env.migrate();
    // An operator's constraint makes Postgres reject one row that our parser
    // accepts: it must be isolated from its batch, not fail it.
    env.db()
        .await
        .batch_execute("ALTER TABLE public.observations ADD CONSTRAINT no_poison CHECK (name IS DISTINCT FROM 'poison')")
        .await
        .unwrap();
    let mut redis = env.redis();
    let ts = now_ts();
    let good = |id: &str| {
        vec![
            ("event_type".to_owned(), "observation_start".to_owned()),
            ("trace_id".to_owned(), "good-trace".to_owned()),
            ("project_id".to_owned(), "p".to_owned()),
            ("timestamp".to_owned(), ts.clone()),
            ("observation_id".to_owned(), id.to_owned()),
            ("data".to_owned(), json!({"name": "fine"}).to_string()),
        ]
    };
    let base = |event_type: &str, data: &str| {
        vec![
            ("event_type", event_type.to_owned()),
            ("trace_id", "bad-trace".to_owned()),
            ("project_id", "p".to_owned()),
            ("timestamp", ts.clone()),
            ("observation_id", "bad-obs".to_owned()),
            ("data", data.to_owned()),
        ]
    };
    let long_id = "x".repeat(2000);
    let bad: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "missing_field",
            vec![
                ("event_type", "trace_start".into()),
                ("project_id", "p".into()),
                ("timestamp", ts.clone()),
            ],
        ),
        ("unknown_event_type", base("span_started", "{}")),
        ("data_not_object", base("observation_start", "[1,2,3]")),
        ("invalid_data", base("observation_start", "{not json")),
        (
            "invalid_timestamp",
            base("observation_start", r#"{"start_time":"last tuesday"}"#),
        ),
        (
            "nul_character",
            base("observation_start", r#"{"input":"a\u0000b"}"#),
        ),
        (
            "id_too_long",
            vec![
                ("event_type", "trace_start".into()),
                ("trace_id", long_id),
                ("project_id", "p".into()),
                ("timestamp", ts.clone()),
            ],
        ),
        (
            "empty_field",
            vec![
                ("event_type", "trace_start".into()),
                ("trace_id", "".into()),
                ("project_id", "p".into()),
                ("timestamp", ts.clone()),
            ],
        ),
        (
            "too_large",
            base(
                "observation_start",
                &json!({"input": "y".repeat(70_000)}).to_string(),
            ),
        ),
        (
            "rejected_by_postgres",
            base("observation_start", r#"{"name":"poison"}"#),
        ),
    ];
    let mut expected = Vec::new();
    for (i, (reason, fields)) in bad.iter().enumerate() {
        let g = good(&format!("before-{i}"));
        env.publish(&mut redis, &as_fields(&g));
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let id = env.publish(&mut redis, &fields);
        expected.push((id, reason.to_string()));
        let g = good(&format!("after-{i}"));
        env.publish(&mut redis, &as_fields(&g));
    }
    let raw_invalid_utf8 = env.publish_raw(
        &mut redis,
        &[
            (b"event_type", b"trace_start"),
            (b"trace_id", &[0xff, 0xfe]),
            (b"project_id", b"p"),
            (b"timestamp", ts.as_bytes()),
        ],
    );
    expected.push((raw_invalid_utf8, "invalid_utf8".into()));
    let duplicated = env.publish_raw(
        &mut redis,
        &[
            (b"event_type", b"trace_start"),
            (b"trace_id", b"t1"),
            (b"trace_id", b"t2"),
            (b"project_id", b"p"),
            (b"timestamp", ts.as_bytes()),
        ],
    );
    expected.push((duplicated, "duplicate_field".into()));
    // SDK heartbeats are not bad input.
    env.publish(&mut redis, &[("event_type", "heartbeat"), ("project_id", "p"), ("timestamp", &ts),
        ("data", r#"{"project_id":"p","sdk_version":"0.14.3","timestamp":"2025-11-05T10:00:00+00:00"}"#)]);

    let service = env.spawn(
        "replica-bad",
        &[
            ("OBSERVABILITY_MAX_ENTRY_BYTES", "65536"),
            ("OBSERVABILITY_SKIP_MIGRATIONS", "true"),
        ],
    );
    let db = env.db().await;
    let done = wait_for_async(WAIT, || async {
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await
            == expected.len() as i64
            && count(
                &db,
                "SELECT count(*) FROM observations WHERE trace_id = 'good-trace'",
            )
            .await
                == 2 * bad.len() as i64
    })
    .await;
    assert!(
        done,
        "not all stored or dead-lettered; log: {}",
        service.log()
    );

    let rows = db
        .query(
            "SELECT stream_entry_id, reason_code, reason, stream FROM swisper_ingest.dead_letters",
            &[],
        )
        .await
        .unwrap();
    for (id, reason) in &expected {
        let row = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == *id)
            .unwrap_or_else(|| panic!("no dead letter for {reason}"));
        assert_eq!(
            row.get::<_, String>(1),
            *reason,
            "entry {id}: {}",
            row.get::<_, String>(2)
        );
        assert!(!row.get::<_, String>(2).is_empty());
        assert_eq!(row.get::<_, String>(3), env.stream);
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observations WHERE trace_id = 'bad-trace'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.sdk_heartbeats WHERE project_id = 'p' AND sdk_version = '0.14.3'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM traces WHERE id NOT IN ('good-trace')"
        )
        .await,
        0
    );

    // Each reason is counted, the heartbeat too, and nothing is left pending.
    let counted = wait_for(WAIT, || {
        expected.iter().all(|(_, reason)| {
            service
                .metric(&format!(
                    "swisper_ingest_dead_letters_total{{reason=\"{reason}\"}}"
                ))
                .is_some_and(|v| v >= 1.0)
        }) && service
            .metric("swisper_ingest_events_total{event_type=\"heartbeat\",outcome=\"heartbeat\"}")
            .is_some_and(|v| v >= 1.0)
    });
    assert!(
        counted,
        "metrics: {}",
        service.get("/metrics").map(|r| r.1).unwrap_or_default()
    );
    let drained = wait_for(WAIT, || {
        service
            .json("/api/v1/observability/metrics")
            .and_then(|j| j["pending"].as_u64())
            == Some(0)
    });
    assert!(drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_entries_of_a_dead_consumer_are_claimed() {
    let env = TestEnv::new("claim").await;
    let mut redis = env.redis();
    env.create_group(&mut redis);
    env.publish_each(&mut redis, seed_trace("trace-claimed", "p"));
    // A consumer of another replica reads everything and dies without acking.
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&env.group)
        .arg("gone-replica-0")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(&env.stream)
        .arg(">")
        .query(&mut redis)
        .unwrap();
    assert!(matches!(read, redis::Value::Array(_)));

    let service = env.spawn("survivor", &[("OBSERVABILITY_CLAIM_IDLE_MS", "1000")]);
    let db = env.db().await;
    let stored = wait_for_count(&db, "SELECT count(*) FROM observations WHERE trace_id = 'trace-claimed' AND end_time IS NOT NULL", 3, WAIT).await;
    assert!(stored, "claimed entries not stored; log: {}", service.log());
    let acked = wait_for(WAIT, || {
        service
            .json("/api/v1/observability/metrics")
            .and_then(|j| j["pending"].as_u64())
            == Some(0)
    });
    assert!(acked, "claimed entries not acked");
    assert!(service
        .metric("swisper_ingest_claimed_total")
        .is_some_and(|v| v >= 7.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_lag_while_a_backlog_drains() {
    let env = TestEnv::new("lag").await;
    let mut redis = env.redis();
    let ts = now_ts();
    let backlog = 30_000;
    env.publish_backlog(
        &mut redis,
        (0..backlog).map(|i| {
            observation_start(
                &format!("t{}", i / 10),
                &format!("o{i}"),
                &ts,
                r#"{"name":"n","input":{"k":"v"}}"#,
            )
        }),
    );

    // Small batches so the drain takes a while.
    let service = env.spawn(
        "lagging",
        &[
            ("OBSERVABILITY_BATCH_SIZE", "50"),
            ("OBSERVABILITY_WRITE_BATCH_SIZE", "100"),
            ("OBSERVABILITY_CONSUMERS", "1"),
        ],
    );
    let mut saw_lag = false;
    let mut saw_lag_metric = false;
    let drained = wait_for(Duration::from_secs(120), || {
        let Some(status) = service.json("/api/v1/observability/metrics") else {
            return false;
        };
        let lag = status["lag"].as_u64().unwrap_or(0);
        if lag > 0 {
            saw_lag = true;
            assert_eq!(status["stream_length"].as_u64(), Some(backlog));
            saw_lag_metric |= service
                .metric("swisper_ingest_group_lag")
                .is_some_and(|v| v > 0.0);
        }
        saw_lag && status["lag"].as_u64() == Some(0) && status["pending"].as_u64() == Some(0)
    });
    assert!(saw_lag, "never saw a lag; log: {}", service.log());
    assert!(saw_lag_metric, "the lag gauge never showed the backlog");
    assert!(drained, "backlog did not drain; log: {}", service.log());
    assert!(wait_for(WAIT, || service
        .metric("swisper_ingest_group_lag")
        == Some(0.0)));
    let db = env.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM observations").await,
        backlog as i64
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM traces").await,
        (backlog / 10) as i64
    );
}

/// With two writers each trace goes to one of them: traces interleaved
/// over small pages are all stored whole, with nothing left pending and
/// nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_store_interleaved_traces_whole() {
    let env = TestEnv::new("two_writers").await;
    let mut redis = env.redis();
    let traces: Vec<Vec<Entry>> = (0..300)
        .map(|t| seed_trace(&format!("trace-{t}"), "p"))
        .collect();
    let longest = traces.iter().map(Vec::len).max().unwrap();
    let interleaved =
        (0..longest).flat_map(|i| traces.iter().filter_map(move |trace| trace.get(i).cloned()));
    let published = env.publish_backlog(&mut redis, interleaved);
    assert_eq!(published, 300 * 7);

    let service = env.spawn(
        "two-writers",
        &[
            ("OBSERVABILITY_WRITERS", "2"),
            ("OBSERVABILITY_BATCH_SIZE", "100"),
        ],
    );
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, 300 * 3, WAIT).await;
    assert!(
        stored,
        "not every observation ended; log: {}",
        service.log()
    );
    let acked = wait_for(WAIT, || {
        service
            .json("/api/v1/observability/metrics")
            .and_then(|j| j["pending"].as_u64())
            == Some(0)
    });
    assert!(acked, "entries left pending; log: {}", service.log());
    assert_eq!(
        count(&db, "SELECT count(*) FROM traces WHERE name = 'chat'").await,
        300
    );
    // Every start and every end landed: inputs on all, outputs on the two
    // that end well, the error on the third.
    for (sql, expected) in [
        (
            "SELECT count(*) FROM observations WHERE input IS NOT NULL",
            900,
        ),
        (
            "SELECT count(*) FROM observations WHERE output IS NOT NULL",
            600,
        ),
        (
            "SELECT count(*) FROM observations WHERE level = 'ERROR'",
            300,
        ),
    ] {
        assert_eq!(count(&db, sql).await, expected, "{sql}");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
}

/// Entries delivered to a consumer of the test's group and not yet acked.
fn pending_count(redis: &mut redis::Connection, env: &TestEnv) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(&env.stream)
        .arg(&env.group)
        .query(redis)
        .unwrap();
    match summary {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(count)) => *count,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// While the writer commits one page, the next one is read (by a consumer
/// not waiting on a commit): a commit held up by a table lock leaves the
/// entries published meanwhile delivered and pending, not waiting in the
/// stream. A consumer awaits its own page's commit before it reads again,
/// so with the others standing by, as they did outside a backlog before
/// the read pace, they waited for the commit. Three consumers, each trace
/// published in one burst: the held trace may still come in two pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_read_while_the_last_one_commits() {
    let env = TestEnv::new("read_ahead").await;
    let mut redis = env.redis();
    let service = env.spawn("reading", &[("OBSERVABILITY_CONSUMERS", "3")]);
    service.wait_ready(WAIT);
    let db = env.db().await;
    // A first trace stored: the writer's commits have a duration on record.
    env.publish_traces(&mut redis, 0..1);
    assert!(
        wait_for_ended_observations(&db, 3, WAIT).await,
        "log: {}",
        service.log()
    );

    let locker = env.db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.traces IN EXCLUSIVE MODE")
        .await
        .unwrap();
    env.publish_backlog(&mut redis, seed_trace("trace-1", "p"));
    // The writer's row locks.
    let blocked = "SELECT count(*) FROM pg_stat_activity \
                   WHERE application_name = 'swisper-ingest' AND wait_event_type = 'Lock' \
                   AND query LIKE 'SELECT id FROM public.traces WHERE id = ANY%'";
    let mut waiting = false;
    for _ in 0..200 {
        let row = db.query_one(blocked, &[]).await.unwrap();
        if row.get::<_, i64>(0) > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        waiting,
        "the second trace's commit never waited on the lock; log: {}",
        service.log()
    );

    env.publish_backlog(&mut redis, seed_trace("trace-2", "p"));
    let mut pending = 0;
    for _ in 0..200 {
        pending = pending_count(&mut redis, &env);
        if pending == 14 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pending, 14,
        "the third trace's 7 entries were not read while the second's commit waited"
    );
    // One CI run saw two backends waiting here (not identified).
    assert!(
        db.query_one(blocked, &[]).await.unwrap().get::<_, i64>(0) >= 1,
        "the commit still waits"
    );
    let ended: i64 = db
        .query_one(
            "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ended, 3,
        "only the first trace stored while the lock is held"
    );

    locker.batch_execute("COMMIT").await.unwrap();
    assert!(
        wait_for_ended_observations(&db, 9, WAIT).await,
        "log: {}",
        service.log()
    );
}

/// With OBSERVABILITY_HOLD_STARTS_MS, an observation start waits for its
/// end in the writer, so the studio row is inserted once, never inserted and
/// then updated (a trigger counts the updates); a start whose end does not
/// come is stored alone once held that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_starts_are_written_once_with_their_ends_or_alone_when_due() {
    let env = TestEnv::new("held_starts").await;
    env.migrate();
    let db = env.db().await;
    db.batch_execute(
        "CREATE TABLE public.test_updates (id text);
         CREATE FUNCTION public.test_count_update() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.test_updates VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER test_count_update AFTER UPDATE ON public.observations
           FOR EACH ROW EXECUTE FUNCTION public.test_count_update();",
    )
    .await
    .unwrap();
    let mut redis = env.redis();
    // Long enough that the ends, published once the starts are in the
    // writer's hands, always come in time, even on a busy machine.
    let service = env.spawn(
        "holding",
        &[
            ("OBSERVABILITY_HOLD_STARTS_MS", "10000"),
            ("OBSERVABILITY_CLAIM_IDLE_MS", "30000"),
        ],
    );
    let trace = seed_trace("trace-h", "p");
    let (starts, ends): (Vec<_>, Vec<_>) = trace[1..].iter().cloned().partition(|e| {
        e.iter()
            .any(|(k, v)| k == "event_type" && v == "observation_start")
    });
    env.publish_each(&mut redis, std::iter::once(trace[0].clone()).chain(starts));
    // The starts are in hand: held (this build) or stored (one that does
    // not hold them).
    let mut in_hand = false;
    for _ in 0..300 {
        let held = service.metric("swisper_ingest_starts_held_total") == Some(3.0);
        if held || count(&db, "SELECT count(*) FROM observations").await == 3 {
            in_hand = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_hand, "starts not taken; log: {}", service.log());
    env.publish_each(&mut redis, ends);
    let stored = wait_for_ended_observations(&db, 3, WAIT).await;
    assert!(stored, "observations not ended; log: {}", service.log());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observations WHERE input IS NOT NULL"
        )
        .await,
        3,
        "every start stored"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.test_updates").await,
        0,
        "rows inserted and then updated"
    );
    assert_eq!(
        service.metric("swisper_ingest_held_starts_alone_total"),
        None
    );

    // A start whose end never comes goes alone once due.
    env.publish(
        &mut redis,
        &as_fields(&observation_start(
            "trace-h",
            "lonely",
            &now_ts(),
            r#"{"name": "lonely"}"#,
        )),
    );
    let lonely = wait_for_count(
        &db,
        "SELECT count(*) FROM observations WHERE id = 'lonely'",
        1,
        WAIT + Duration::from_secs(10),
    )
    .await;
    assert!(
        lonely,
        "the lonely start not stored; log: {}",
        service.log()
    );
    assert_eq!(
        service.metric("swisper_ingest_held_starts_alone_total"),
        Some(1.0)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_leaves_nothing_pending() {
    let env = TestEnv::new("sigterm").await;
    let mut redis = env.redis();
    let mut service = env.spawn("draining", &[]);
    service.wait_ready(WAIT);
    env.publish_traces(&mut redis, 0..200);
    let status = service.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        service.log()
    );
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&env.stream)
        .arg(&env.group)
        .query(&mut redis)
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "entries left pending after SIGTERM"
    );
    let log = service.log();
    assert!(log.contains("drained"), "{log}");
}

/// Starts held for their end are stored by the drain on SIGTERM, not left
/// pending for another replica to claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_held_starts_and_leaves_nothing_pending() {
    let env = TestEnv::new("sigterm_held").await;
    let mut redis = env.redis();
    let mut service = env.spawn(
        "draining-held",
        &[
            ("OBSERVABILITY_HOLD_STARTS_MS", "20000"),
            ("OBSERVABILITY_CLAIM_IDLE_MS", "60000"),
        ],
    );
    service.wait_ready(WAIT);
    let ts = now_ts();
    env.publish_each(
        &mut redis,
        (0..20).map(|i| observation_start("trace-s", &format!("open-{i}"), &ts, "{}")),
    );
    let held = wait_for(WAIT, || {
        service.metric("swisper_ingest_starts_held_total") == Some(20.0)
    });
    assert!(held, "starts not held; log: {}", service.log());
    let status = service.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        service.log()
    );
    assert_eq!(
        pending_all(&mut redis, &env.stream, &env.group),
        Vec::<String>::new(),
        "entries left pending after SIGTERM"
    );
    let db = env.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observations WHERE id LIKE 'open-%'"
        )
        .await,
        20
    );
}

/// The late updates of a transaction are sent together with the merge
/// state's upserts (one round trip). When Postgres refuses an update, the
/// statements behind it fail as "transaction aborted", a server error that
/// would be retried for ever; the write path must see the update's own
/// error first, isolate its entry as a dead letter and store the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_update_postgres_refuses_is_dead_lettered_and_its_neighbours_stored() {
    let env = TestEnv::new("refused_update").await;
    env.migrate();
    let db = env.db().await;
    db.batch_execute(
        "ALTER TABLE public.observations ADD CONSTRAINT no_poison_output \
         CHECK (output::text IS DISTINCT FROM '\"poison\"')",
    )
    .await
    .unwrap();
    let mut redis = env.redis();
    let ts = now_ts();
    let event = |event_type: &'static str, id: &'static str, data: String| {
        vec![
            ("event_type", event_type.to_owned()),
            ("trace_id", "t".to_owned()),
            ("project_id", "p".to_owned()),
            ("timestamp", ts.clone()),
            ("observation_id", id.to_owned()),
            ("data", data),
        ]
    };
    let ids = ["o-a", "o-poison", "o-c"];
    for id in ids {
        let fields = event("observation_start", id, json!({"name": id}).to_string());
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.publish(&mut redis, &fields);
    }
    let service = env.spawn("updater", &[("OBSERVABILITY_SKIP_MIGRATIONS", "true")]);
    assert!(
        wait_for_count(&db, "SELECT count(*) FROM public.observations", 3, WAIT).await,
        "starts not stored; log: {}",
        service.log()
    );
    // The ends update rows stored by an earlier transaction.
    for id in ids {
        let output = if id == "o-poison" { "poison" } else { "fine" };
        let fields = event("observation_end", id, json!({"output": output}).to_string());
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.publish(&mut redis, &fields);
    }
    assert!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM swisper_ingest.dead_letters",
            1,
            WAIT
        )
        .await,
        "the refused update was not dead-lettered; log: {}",
        service.log()
    );
    assert!(
        wait_for_ended_observations(&db, 2, WAIT).await,
        "the neighbours' ends were not stored; log: {}",
        service.log()
    );
    let letter = db
        .query_one(
            "SELECT reason_code, reason, fields::text FROM swisper_ingest.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(letter.get::<_, &str>(0), "rejected_by_postgres");
    let reason: &str = letter.get(1);
    assert!(reason.contains("no_poison_output"), "{reason}");
    let fields: &str = letter.get(2);
    assert!(fields.contains("o-poison"), "{fields}");
    let ended: Vec<String> = db
        .query(
            "SELECT id FROM public.observations WHERE end_time IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ended, ["o-a", "o-c"]);
}

/// The merge state of each row's groups: (id, seen, start, end) versions of
/// the trace and its observations, in id order (a trace has no seen or end).
async fn state_versions(db: &tokio_postgres::Client, trace: &str) -> Vec<StateVersions> {
    db.query(
        "SELECT id, NULL::bytea, start_version, NULL::bytea FROM swisper_ingest.trace_state
         WHERE id = $1
         UNION ALL
         SELECT id, seen_version, start_version, end_version FROM swisper_ingest.observation_state
         WHERE trace_id = $1
         ORDER BY 1",
        &[&trace],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

type StateVersions = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every entry published so far acked, and none of them dead-lettered.
async fn acked_without_dead_letters(
    env: &TestEnv,
    redis: &mut redis::Connection,
    db: &tokio_postgres::Client,
    service: &Service,
) {
    assert!(
        wait_for(WAIT, || group_drained(redis, &env.stream, &env.group)),
        "entries not acked; log: {}",
        service.log()
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0,
        "log: {}",
        service.log()
    );
}

/// Merge state can outlive its studio rows: the studio deletes a trace (its
/// observations go by cascade) and `swisper_ingest`'s state has no foreign
/// key. Events for those ids afterwards insert new studio rows, whose state
/// meets the old rows: the events are stored from their own content alone,
/// acked, and nothing is dead-lettered (a state COPY would meet the old row
/// again in every attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_left_by_deleted_studio_rows_is_written_over() {
    let env = TestEnv::new("orphan_state").await;
    let mut redis = env.redis();
    env.publish_each(&mut redis, seed_trace("trace-o", "project-1"));
    let service = env.spawn("replica-a", &[]);
    let db = env.db().await;
    assert!(
        wait_for_ended_observations(&db, 3, WAIT).await,
        "seed trace not stored; log: {}",
        service.log()
    );
    assert!(
        wait_for(WAIT, || group_drained(&mut redis, &env.stream, &env.group)),
        "seed trace not acked"
    );
    let before = state_versions(&db, "trace-o").await;
    assert_eq!(before.len(), 4, "{before:?}");
    let first_seen = "SELECT first_seen_at FROM swisper_ingest.trace_state WHERE id = 'trace-o'";
    let first_seen_before: chrono::DateTime<chrono::Utc> =
        db.query_one(first_seen, &[]).await.unwrap().get(0);

    // The studio deletes the trace; its observations go by cascade.
    db.execute("DELETE FROM public.traces WHERE id = 'trace-o'", &[])
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.observations").await,
        0
    );
    assert_eq!(state_versions(&db, "trace-o").await, before, "state left");

    // The same ids again, other content; the grandchild only ends.
    let event = |event_type: &str, observation: Option<&str>, data: serde_json::Value| {
        let mut fields = vec![
            ("event_type".to_owned(), event_type.to_owned()),
            ("trace_id".to_owned(), "trace-o".to_owned()),
            ("project_id".to_owned(), "project-1".to_owned()),
            ("timestamp".to_owned(), now_ts()),
        ];
        if let Some(id) = observation {
            fields.push(("observation_id".to_owned(), id.to_owned()));
        }
        fields.push(("data".to_owned(), data.to_string()));
        fields
    };
    let mut again = vec![event(
        "trace_start",
        None,
        json!({"name": "chat again", "user_id": "user-2",
               "timestamp": "2025-11-06T10:00:00.000000"}),
    )];
    for (i, id) in ["trace-o-root", "trace-o-child"].iter().enumerate() {
        again.push(event(
            "observation_start",
            Some(id),
            json!({"name": format!("again-{i}"), "type": "TOOL", "input": {"again": i},
                   "meta": {"round": 2}, "start_time": format!("2025-11-06T10:00:0{i}.000000")}),
        ));
        again.push(event(
            "observation_end",
            Some(id),
            json!({"output": {"again": i}, "level": "WARNING",
                   "end_time": format!("2025-11-06T10:00:1{i}.000000")}),
        ));
    }
    again.push(event(
        "observation_end",
        Some("trace-o-grandchild"),
        json!({"output": {"again": 2}, "end_time": "2025-11-06T10:00:12.000000"}),
    ));
    env.publish_each(&mut redis, again);

    assert!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM public.observations WHERE output::text LIKE '{\"again\"%'",
            3,
            WAIT
        )
        .await,
        "events for the deleted ids not stored; log: {}",
        service.log()
    );
    acked_without_dead_letters(&env, &mut redis, &db, &service).await;

    let trace = db
        .query_one(
            "SELECT name, user_id, session_id, \"timestamp\"::text FROM public.traces
             WHERE id = 'trace-o'",
            &[],
        )
        .await
        .unwrap();
    let trace: (Option<String>, Option<String>, Option<String>, String) =
        (trace.get(0), trace.get(1), trace.get(2), trace.get(3));
    assert_eq!(
        trace,
        (
            Some("chat again".into()),
            Some("user-2".into()),
            None,
            "2025-11-06 10:00:00".into()
        )
    );
    let rows: Vec<serde_json::Value> = db
        .query(
            "SELECT json_build_object('id', o.id, 'trace', o.trace_id, 'type', o.type,
                 'name', o.name, 'input', o.input, 'output', o.output, 'meta', o.meta,
                 'level', o.level, 'start', o.start_time::text, 'end', o.end_time::text,
                 'state_start_type', s.start_type, 'state_start_meta', s.start_meta,
                 'state_end_meta', s.end_meta)
             FROM public.observations o
             JOIN swisper_ingest.observation_state s ON s.id = o.id AND s.trace_id = o.trace_id
             ORDER BY o.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        [
            json!({"id": "trace-o-child", "trace": "trace-o", "type": "TOOL", "name": "again-1",
                   "input": {"again": 1}, "output": {"again": 1}, "meta": {"round": 2},
                   "level": "WARNING", "start": "2025-11-06 10:00:01", "end": "2025-11-06 10:00:11",
                   "state_start_type": "TOOL", "state_start_meta": {"round": 2},
                   "state_end_meta": null}),
            // Nothing of the old start: no name, no input, the end's time.
            json!({"id": "trace-o-grandchild", "trace": "trace-o", "type": "SPAN", "name": null,
                   "input": null, "output": {"again": 2}, "meta": null, "level": "DEFAULT",
                   "start": "2025-11-06 10:00:12", "end": "2025-11-06 10:00:12",
                   "state_start_type": null, "state_start_meta": null, "state_end_meta": null}),
            json!({"id": "trace-o-root", "trace": "trace-o", "type": "TOOL", "name": "again-0",
                   "input": {"again": 0}, "output": {"again": 0}, "meta": {"round": 2},
                   "level": "WARNING", "start": "2025-11-06 10:00:00", "end": "2025-11-06 10:00:10",
                   "state_start_type": "TOOL", "state_start_meta": {"round": 2},
                   "state_end_meta": null}),
        ]
    );
    // The state is the new events' alone: every version newer than the old
    // one, and the grandchild's start (not sent again) forgotten.
    let after = state_versions(&db, "trace-o").await;
    assert_eq!(after.len(), 4, "{after:?}");
    for ((id, seen, start, end), (old_id, old_seen, old_start, old_end)) in
        after.iter().zip(&before)
    {
        assert_eq!(id, old_id);
        assert!(seen > old_seen || seen.is_none(), "{id}: seen version");
        assert!(end > old_end || end.is_none(), "{id}: end version");
        if id == "trace-o-grandchild" {
            assert_eq!(*start, None, "{id}: the old start's version left");
        } else {
            assert!(start > old_start, "{id}: start version");
        }
    }
    let first_seen_after: chrono::DateTime<chrono::Utc> =
        db.query_one(first_seen, &[]).await.unwrap().get(0);
    assert!(
        first_seen_after > first_seen_before,
        "the trace's time for retention is the new events'"
    );

    // Someone deletes one observation by hand, its trace stays: the
    // observation's state alone is left, and its next end written over it.
    let before = state_versions(&db, "trace-o").await;
    db.execute(
        "DELETE FROM public.observations WHERE id = 'trace-o-root'",
        &[],
    )
    .await
    .unwrap();
    env.publish_each(
        &mut redis,
        [event(
            "observation_end",
            Some("trace-o-root"),
            json!({"output": {"again": 3}, "end_time": "2025-11-06T10:00:13.000000"}),
        )],
    );
    let stored = "SELECT count(*) FROM public.observations
                  WHERE id = 'trace-o-root' AND output::text = '{\"again\":3}' AND name IS NULL";
    assert!(
        wait_for_count(&db, stored, 1, WAIT).await,
        "the end of the deleted observation not stored; log: {}",
        service.log()
    );
    acked_without_dead_letters(&env, &mut redis, &db, &service).await;
    let after = state_versions(&db, "trace-o").await;
    let root = |state: &[StateVersions]| {
        state
            .iter()
            .find(|(id, ..)| id == "trace-o-root")
            .cloned()
            .unwrap()
    };
    let ((_, seen, start, end), (_, old_seen, _, old_end)) = (root(&after), root(&before));
    assert!(seen > old_seen && end > old_end, "{after:?}");
    assert_eq!(start, None, "the old start's version left");
    assert_eq!(
        after
            .iter()
            .filter(|(id, ..)| id != "trace-o-root")
            .collect::<Vec<_>>(),
        before
            .iter()
            .filter(|(id, ..)| id != "trace-o-root")
            .collect::<Vec<_>>(),
        "the others' state untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_after_a_fix_and_purged() {
    let env = TestEnv::new("replay").await;
    env.migrate();
    let db = env.db().await;
    db.batch_execute(
        "ALTER TABLE public.observations ADD CONSTRAINT no_poison CHECK (name IS DISTINCT FROM 'poison')",
    )
    .await
    .unwrap();
    let mut redis = env.redis();
    let ts = now_ts();
    env.publish(
        &mut redis,
        &[
            ("event_type", "observation_start"),
            ("trace_id", "t"),
            ("project_id", "p"),
            ("timestamp", &ts),
            ("observation_id", "o-poison"),
            ("data", r#"{"name":"poison"}"#),
        ],
    );
    let service = env.spawn("replayer", &[("OBSERVABILITY_SKIP_MIGRATIONS", "true")]);
    assert!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM swisper_ingest.dead_letters",
            1,
            WAIT
        )
        .await,
        "log: {}",
        service.log()
    );

    let listed = env.dead_letters(&["list"]);
    assert!(listed.status.success());
    let line: serde_json::Value =
        serde_json::from_slice(listed.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["reason_code"], "rejected_by_postgres");
    let id = line["id"].as_i64().unwrap().to_string();

    let refused = env.dead_letters(&["replay"]);
    assert!(
        !refused.status.success(),
        "replay without a selection must refuse"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refusing"));

    db.batch_execute("ALTER TABLE public.observations DROP CONSTRAINT no_poison")
        .await
        .unwrap();
    let replayed = env.dead_letters(&["replay", "--reason", "rejected_by_postgres"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("1 replayed"));
    assert!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM observations WHERE id = 'o-poison' AND name = 'poison'",
            1,
            WAIT
        )
        .await,
        "replayed entry not stored; log: {}",
        service.log()
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.dead_letters WHERE replayed_at IS NOT NULL"
        )
        .await,
        1
    );

    assert!(
        !env.dead_letters(&["purge"]).status.success(),
        "purge without a selection must refuse"
    );
    let purged = env.dead_letters(&["purge", "--id", &id, "--include-replayed"]);
    assert!(String::from_utf8_lossy(&purged.stdout).contains("1 purged"));
    assert_eq!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_producer_trips_poison_protection_instead_of_emptying_the_stream() {
    let env = TestEnv::new("poison").await;
    let mut redis = env.redis();
    let ts = now_ts();
    for i in 0..60 {
        env.publish(
            &mut redis,
            &[
                ("event_type", "garbage"),
                ("trace_id", &format!("t{i}")),
                ("project_id", "p"),
                ("timestamp", &ts),
            ],
        );
    }
    let mut service = env.spawn("poisoned", &[("OBSERVABILITY_POISON_RUN", "20")]);
    let tripped = wait_for(WAIT, || {
        matches!(service.get("/readyz"), Some((503, body)) if body.contains("\"poisoned\":true"))
            && service.metric("swisper_ingest_poisoned") == Some(1.0)
    });
    assert!(
        tripped,
        "poison protection did not trip; log: {}",
        service.log()
    );
    let db = env.db().await;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await < 20,
        "kept dead-lettering past the limit"
    );
    service.terminate();

    // The operator decides the entries are garbage: with protection off they
    // are dead-lettered, every one of them, and nothing else.
    let service = env.spawn("poisoned", &[("OBSERVABILITY_POISON_RUN", "0")]);
    let all = wait_for_count(
        &db,
        "SELECT count(*) FROM swisper_ingest.dead_letters",
        60,
        WAIT,
    )
    .await;
    assert!(all, "log: {}", service.log());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.dead_letters WHERE reason_code = 'unknown_event_type'"
        )
        .await,
        60
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_trimming_keeps_what_any_group_still_needs() {
    let env = TestEnv::new("trim").await;
    let mut redis = env.redis();
    env.create_group(&mut redis);
    // Another group (another tool) that has read nothing yet.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&env.stream)
        .arg("laggard")
        .arg("0")
        .query(&mut redis)
        .unwrap();
    let ts = now_ts();
    for i in 0..300 {
        env.publish(
            &mut redis,
            &[
                ("event_type", "trace_start"),
                ("trace_id", &format!("t{i}")),
                ("project_id", "p"),
                ("timestamp", &ts),
            ],
        );
    }
    let service = env.spawn("trimmer", &[("OBSERVABILITY_TRIM_ACKED", "true")]);
    let db = env.db().await;
    assert!(wait_for_count(&db, "SELECT count(*) FROM traces", 300, WAIT).await);
    assert!(wait_for(WAIT, || service
        .json("/api/v1/observability/metrics")
        .and_then(|j| j["pending"].as_u64())
        == Some(0)));
    std::thread::sleep(Duration::from_secs(1));
    let len: u64 = redis::cmd("XLEN")
        .arg(&env.stream)
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        len, 300,
        "trimmed entries that the laggard group has not read"
    );

    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&env.stream)
        .arg("laggard")
        .query(&mut redis)
        .unwrap();
    let trimmed = wait_for(WAIT, || {
        let len: u64 = redis::cmd("XLEN")
            .arg(&env.stream)
            .query(&mut redis)
            .unwrap();
        len < 300
    });
    assert!(
        trimmed,
        "acked entries were not trimmed; log: {}",
        service.log()
    );
    assert!(service
        .metric("swisper_ingest_trimmed_total")
        .is_some_and(|v| v > 0.0));
}
