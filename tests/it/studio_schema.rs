//! The schema side of issue 16: `migrate` gives the studio's Alembic head
//! standalone, leaves a studio's database untouched (ours all in
//! `swisper_ingest`), and upgrades a populated database of the previous
//! layout (tests/fixtures/legacy_main_layout.sql) into the studio's tables.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use swisper_ingest::event::StreamId;
use swisper_ingest::merge::Version;
use swisper_ingest::store::migrate;

use crate::harness::{
    apply_studio_fixture, as_fields, count, group_drained, now_ts, pg_target,
    public_schema_catalog, wait_for, wait_for_count, TestEnv,
};

const WAIT: Duration = Duration::from_secs(30);

const STUDIO_TYPES: [&str; 5] = ["SPAN", "GENERATION", "EVENT", "TOOL", "AGENT"];

/// Our objects: every table of schema swisper_ingest.
async fn our_tables(db: &Client) -> Vec<String> {
    db.query(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'swisper_ingest' AND c.relkind IN ('r', 'p') ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Schemas other than the system's.
async fn schemas(db: &Client) -> Vec<String> {
    db.query(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn installation(db: &Client) -> (bool, bool) {
    let row = db
        .query_one(
            "SELECT created_studio_schema, upgraded_from_legacy FROM swisper_ingest.installation",
            &[],
        )
        .await
        .expect("one installation row");
    (row.get(0), row.get(1))
}

/// The rows of the studio's data tables that a fresh head holds (the admin
/// user), without their times.
async fn studio_seed_rows(db: &Client) -> Vec<String> {
    let mut rows: Vec<String> = db
        .query(
            "SELECT format('user %s %s %s %s %s %s last_login=%s', id, email, password_hash, name,
                           role, is_active, last_login) FROM public.users",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in [
        "projects",
        "traces",
        "observations",
        "model_pricing",
        "config_version",
        "project_environment",
        "config_deployment",
    ] {
        rows.push(format!(
            "{table} rows={}",
            count(db, &format!("SELECT count(*) FROM public.{table}")).await
        ));
    }
    rows
}

/// The difference of two catalogs, for a readable failure.
fn catalog_diff(expected: &[String], got: &[String]) -> String {
    let missing: Vec<&String> = expected.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<&String> = got.iter().filter(|l| !expected.contains(l)).collect();
    format!("missing: {missing:#?}\nextra: {extra:#?}")
}

async fn studio_head_catalog() -> (Vec<String>, Vec<String>) {
    let reference = TestEnv::new("schema_ref").await;
    let db = reference.db().await;
    apply_studio_fixture(&db).await;
    (
        public_schema_catalog(&db).await,
        studio_seed_rows(&db).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_migrate_creates_the_studios_alembic_head() {
    let (head, head_rows) = studio_head_catalog().await;

    let env = TestEnv::new("schema_standalone").await;
    let applied = migrate::run(&pg_target(&env.database_url))
        .await
        .expect("migrate a fresh database");
    eprintln!("standalone: applied {applied:?}");
    assert_eq!(applied.len(), 2, "{applied:?}");
    let db = env.db().await;
    let ours = public_schema_catalog(&db).await;
    assert!(
        ours == head,
        "public after a standalone migrate is not the studio's head:\n{}",
        catalog_diff(&head, &ours)
    );
    assert_eq!(studio_seed_rows(&db).await, head_rows);
    assert_eq!(installation(&db).await, (true, false));
    assert_eq!(schemas(&db).await, ["public", "swisper_ingest"]);
    assert_eq!(
        our_tables(&db).await,
        [
            "dead_letters",
            "installation",
            "observation_state",
            "refinery_schema_history",
            "retention_projects",
            "retention_tombstones",
            "sdk_heartbeats",
            "trace_state"
        ]
    );

    // Again: nothing to apply, nothing changed.
    let again = migrate::run(&pg_target(&env.database_url)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(public_schema_catalog(&db).await, head);
    assert_eq!(installation(&db).await, (true, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_in_front_of_a_studio_touches_nothing_of_public() {
    let env = TestEnv::new("schema_studio").await;
    let db = env.db().await;
    apply_studio_fixture(&db).await;
    let before = public_schema_catalog(&db).await;
    let rows_before = studio_seed_rows(&db).await;

    let applied = migrate::run(&pg_target(&env.database_url))
        .await
        .expect("migrate a studio's database (used to fail: relation \"traces\" already exists)");
    eprintln!("studio database: applied {applied:?}");
    assert_eq!(applied.len(), 2, "{applied:?}");
    let after = public_schema_catalog(&db).await;
    assert!(
        after == before,
        "public changed:\n{}",
        catalog_diff(&before, &after)
    );
    assert_eq!(studio_seed_rows(&db).await, rows_before);
    assert_eq!(installation(&db).await, (false, false));
    assert_eq!(schemas(&db).await, ["public", "swisper_ingest"]);
    assert!(our_tables(&db).await.contains(&"trace_state".to_owned()));

    let again = migrate::run(&pg_target(&env.database_url)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    // The binary's subcommand agrees.
    env.migrate();
    assert_eq!(public_schema_catalog(&db).await, before);
    assert_eq!(installation(&db).await, (false, false));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.refinery_schema_history"
        )
        .await,
        2
    );
}

// ---------------------------------------------------------------------------
// The upgrade of a populated database of the previous layout.

#[derive(Debug, Clone)]
struct LegacyTrace {
    id: String,
    project_id: String,
    seen_version: Vec<u8>,
    first_seen_at: DateTime<Utc>,
    start_version: Option<Vec<u8>>,
    name: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    run_id: Option<String>,
    meta: Option<Value>,
    metadata: Option<Value>,
    start_timestamp: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
struct LegacyObservation {
    id: String,
    trace_id: String,
    project_id: String,
    seen_version: Vec<u8>,
    start_version: Option<Vec<u8>>,
    name: Option<String>,
    start_type: Option<String>,
    parent_observation_id: Option<String>,
    input: Option<Value>,
    start_time: Option<DateTime<Utc>>,
    start_metadata: Option<Value>,
    end_version: Option<Vec<u8>>,
    end_type: Option<String>,
    end_level: Option<String>,
    output: Option<Value>,
    status_message: Option<String>,
    end_time: Option<DateTime<Utc>>,
    end_metadata: Option<Value>,
    llm_model: Option<String>,
    llm_prompt_tokens: Option<i64>,
    llm_completion_tokens: Option<i64>,
    llm_total_tokens: Option<i64>,
    llm_cached_tokens: Option<i64>,
    llm_thoughts_tokens: Option<i64>,
    llm_duration_ms: Option<f64>,
}

fn version(at: DateTime<Utc>, seq: u64) -> Vec<u8> {
    let entry = StreamId {
        ms: at.timestamp_millis() as u64,
        seq,
    };
    Version::of(at, entry).as_bytes().to_vec()
}

const PROJECTS: [&str; 3] = ["p-alpha", "p-beta", "p-gamma"];

/// A few hundred traces and observations over three projects, of every
/// shape the old layout held.
fn legacy_population() -> (Vec<LegacyTrace>, Vec<LegacyObservation>) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
    let mut traces = Vec::new();
    let mut observations = Vec::new();
    for i in 0..240usize {
        let project = PROJECTS[i % 3].to_owned();
        let first_seen = t0 + Span::seconds(60 * i as i64) + Span::microseconds(123_457);
        let started = i % 6 != 5;
        let id = format!("lt-{i:04}");
        let meta = match i % 5 {
            0 => None,
            1 => Some(json!({"env": "prod", "n": i})),
            2 => Some(json!([1, "two"])),
            3 => Some(Value::Null),
            _ => Some(json!({"env": "dev", "shared": "from-meta"})),
        };
        let metadata = match i % 3 {
            0 => None,
            1 => Some(json!({"tags": ["a", format!("t{i}")], "extra": i})),
            _ => Some(json!({"_fields": {"x": "y"}, "shared": "from-metadata"})),
        };
        traces.push(LegacyTrace {
            id: id.clone(),
            project_id: project.clone(),
            seen_version: version(first_seen + Span::seconds(5), 3),
            first_seen_at: first_seen,
            start_version: started.then(|| version(first_seen, 1)),
            name: (started && i % 10 != 3).then(|| format!("trace {i}")),
            user_id: started.then(|| format!("user-{}", i % 7)),
            session_id: started.then(|| format!("session-{}", i % 11)),
            run_id: (started && i % 4 == 0).then(|| format!("run-{i}")),
            meta: if started { meta } else { None },
            metadata: if started { metadata } else { None },
            start_timestamp: started.then(|| first_seen - Span::milliseconds(250)),
        });
        let at = |ms: i64| first_seen + Span::milliseconds(ms);
        // The root: started and ended.
        observations.push(LegacyObservation {
            id: format!("lo-{i}-0"),
            trace_id: id.clone(),
            project_id: project.clone(),
            seen_version: version(at(900), 9),
            start_version: Some(version(at(10), 2)),
            name: Some("graph".into()),
            start_type: Some("AGENT".into()),
            input: Some(json!({"user_message": format!("question {i}")})),
            start_time: Some(at(10)),
            start_metadata: (i % 2 == 0)
                .then(|| json!({"meta": {"run_id": format!("run-{i}")}, "custom": i})),
            end_version: Some(version(at(900), 9)),
            end_level: Some("DEFAULT".into()),
            output: Some(json!({"answer": i})),
            end_time: Some(at(900)),
            ..LegacyObservation::default()
        });
        // An LLM call with the SDK's telemetry.
        let huge = i % 9 == 0;
        observations.push(LegacyObservation {
            id: format!("lo-{i}-1"),
            trace_id: id.clone(),
            project_id: project.clone(),
            seen_version: version(at(500), 5),
            start_version: Some(version(at(20), 3)),
            name: Some("llm_node".into()),
            start_type: Some("SPAN".into()),
            parent_observation_id: Some(format!("lo-{i}-0")),
            input: Some(json!({"messages": ["hello"]})),
            start_time: Some(at(20)),
            start_metadata: (i % 3 == 0).then(|| json!({"meta": "not an object"})),
            end_version: Some(version(at(500), 5)),
            end_type: Some("GENERATION".into()),
            end_level: Some("DEFAULT".into()),
            output: Some(json!({"_llm_model": "gpt-4o",
                                "_llm_tokens": {"prompt": 100 + i, "completion": 50, "total": 150 + i}})),
            end_time: Some(at(500)),
            end_metadata: (i % 4 == 1).then(|| json!({"errors": ["retry"], "custom": "end"})),
            llm_model: Some("gpt-4o".into()),
            llm_prompt_tokens: Some(100 + i as i64),
            llm_completion_tokens: Some(50),
            llm_total_tokens: Some(if huge {
                5_000_000_000
            } else {
                150 + i as i64
            }),
            llm_cached_tokens: Some(20),
            llm_thoughts_tokens: Some(0),
            llm_duration_ms: Some(812.5),
            ..LegacyObservation::default()
        });
        // A third of every kind: open, unknown type, failed, end before start.
        let third = match i % 4 {
            0 => LegacyObservation {
                start_version: Some(version(at(30), 4)),
                seen_version: version(at(30), 4),
                name: Some("waiting".into()),
                start_type: Some("SPAN".into()),
                start_time: Some(at(30)),
                ..LegacyObservation::default()
            },
            1 => LegacyObservation {
                start_version: Some(version(at(30), 4)),
                seen_version: version(at(600), 6),
                name: None,
                start_type: Some("CHAIN".into()),
                start_time: Some(at(30)),
                start_metadata: Some(json!({"meta": {"k": 1}})),
                end_version: Some(version(at(600), 6)),
                end_level: Some("WARNING".into()),
                end_time: Some(at(600)),
                output: Some(json!("plain text")),
                ..LegacyObservation::default()
            },
            2 => LegacyObservation {
                start_version: Some(version(at(30), 4)),
                seen_version: version(at(700), 7),
                name: Some("flaky".into()),
                start_type: Some("TOOL".into()),
                start_time: Some(at(30)),
                end_version: Some(version(at(700), 7)),
                end_level: Some("ERROR".into()),
                status_message: Some(format!("boom {i}")),
                end_time: Some(at(700)),
                end_metadata: Some(json!({"error": format!("boom {i}")})),
                ..LegacyObservation::default()
            },
            _ => LegacyObservation {
                seen_version: version(at(800), 8),
                end_version: Some(version(at(800), 8)),
                end_type: Some("EVENT".into()),
                end_level: Some("DEFAULT".into()),
                end_time: Some(at(800)),
                output: Some(json!({"late": true})),
                ..LegacyObservation::default()
            },
        };
        observations.push(LegacyObservation {
            id: format!("lo-{i}-2"),
            trace_id: id.clone(),
            project_id: project.clone(),
            parent_observation_id: Some(format!("lo-{i}-0")),
            ..third
        });
    }
    // One trace id under two projects (p-alpha first), each with an
    // observation of its own and one observation id reused too.
    let shared_at = t0 - Span::hours(1);
    for (n, project) in ["p-alpha", "p-beta"].iter().enumerate() {
        let first_seen = shared_at + Span::minutes(10 * n as i64);
        traces.push(LegacyTrace {
            id: "shared-trace".into(),
            project_id: (*project).into(),
            seen_version: version(first_seen, 1),
            first_seen_at: first_seen,
            start_version: Some(version(first_seen, 1)),
            name: Some(format!("shared of {project}")),
            user_id: None,
            session_id: None,
            run_id: None,
            meta: None,
            metadata: None,
            start_timestamp: Some(first_seen),
        });
        for id in [format!("shared-obs-{project}"), "shared-obs".to_owned()] {
            observations.push(LegacyObservation {
                id,
                trace_id: "shared-trace".into(),
                project_id: (*project).into(),
                seen_version: version(first_seen, 2),
                start_version: Some(version(first_seen, 2)),
                name: Some(format!("node of {project}")),
                start_type: Some("SPAN".into()),
                start_time: Some(first_seen),
                ..LegacyObservation::default()
            });
        }
    }
    (traces, observations)
}

async fn insert_legacy(
    db: &mut Client,
    traces: &[LegacyTrace],
    observations: &[LegacyObservation],
) {
    let tx = db.transaction().await.unwrap();
    let insert_trace = tx
        .prepare(
            "INSERT INTO traces (id, project_id, seen_version, first_seen_at, start_version, name,
                 user_id, session_id, run_id, meta, metadata, start_timestamp)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await
        .unwrap();
    for t in traces {
        tx.execute(
            &insert_trace,
            &[
                &t.id,
                &t.project_id,
                &t.seen_version,
                &t.first_seen_at,
                &t.start_version,
                &t.name,
                &t.user_id,
                &t.session_id,
                &t.run_id,
                &t.meta,
                &t.metadata,
                &t.start_timestamp,
            ],
        )
        .await
        .unwrap();
    }
    let insert_observation = tx
        .prepare(
            "INSERT INTO observations (id, trace_id, project_id, seen_version, start_version, name,
                 start_type, parent_observation_id, input, start_time, start_metadata, end_version,
                 end_type, end_level, output, status_message, end_time, end_metadata, llm_model,
                 llm_prompt_tokens, llm_completion_tokens, llm_total_tokens, llm_cached_tokens,
                 llm_thoughts_tokens, llm_duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, $20, $21, $22, $23, $24, $25)",
        )
        .await
        .unwrap();
    for o in observations {
        tx.execute(
            &insert_observation,
            &[
                &o.id,
                &o.trace_id,
                &o.project_id,
                &o.seen_version,
                &o.start_version,
                &o.name,
                &o.start_type,
                &o.parent_observation_id,
                &o.input,
                &o.start_time,
                &o.start_metadata,
                &o.end_version,
                &o.end_type,
                &o.end_level,
                &o.output,
                &o.status_message,
                &o.end_time,
                &o.end_metadata,
                &o.llm_model,
                &o.llm_prompt_tokens,
                &o.llm_completion_tokens,
                &o.llm_total_tokens,
                &o.llm_cached_tokens,
                &o.llm_thoughts_tokens,
                &o.llm_duration_ms,
            ],
        )
        .await
        .unwrap();
    }
    // Our other tables of the old layout.
    tx.batch_execute(
        r#"
        INSERT INTO ingest_dead_letters (stream, stream_entry_id, fields, reason_code, reason,
            delivery_count, event_type, trace_id, created_at, replayed_at, replayed_entry_id)
        SELECT 'observability:events', format('1763625600000-%s', n),
               jsonb_build_array(jsonb_build_array('event_type', 'observation_end'),
                                 jsonb_build_array('trace_id', 't-' || n),
                                 jsonb_build_array('data', '{"level": 7')),
               (ARRAY['invalid_data', 'invalid_timestamp', 'too_many_deliveries', 'rejected_by_postgres'])[1 + n % 4],
               'reason ' || n, 1 + n % 3, 'observation_end', 't-' || n,
               '2026-11-20 07:00:00+00'::timestamptz + n * interval '1 minute',
               CASE WHEN n % 5 = 0 THEN '2026-11-21 07:00:00+00'::timestamptz END,
               CASE WHEN n % 5 = 0 THEN format('1763712000000-%s', n) END
        FROM generate_series(1, 25) AS n;
        DELETE FROM ingest_dead_letters WHERE id IN (3, 4);
        INSERT INTO sdk_heartbeats (project_id, sdk_version, first_seen_at, last_seen_at, metadata) VALUES
            ('p-alpha', '0.14.3', '2026-11-01 00:00:00+00', '2026-11-20 09:00:00+00', '{"host": "a"}'),
            ('p-alpha', '0.14.2', '2026-10-01 00:00:00+00', '2026-11-01 00:00:00+00', '{}'),
            ('p-beta', '0.14.3', '2026-11-02 00:00:00+00', '2026-11-20 09:00:00+00', '{"pid": 7}'),
            ('p-gamma', '0.13.0', '2026-09-01 00:00:00+00', '2026-09-02 00:00:00+00', '{}');
        INSERT INTO retention_projects (project_id, days, updated_at) VALUES
            ('p-alpha', 3650, '2026-11-01 00:00:00+00'),
            ('p-gamma', 1000, '2026-11-02 00:00:00+00');
        INSERT INTO retention_tombstones (trace_id, project_id, forgotten_at)
        SELECT 'gone-' || n, (ARRAY['p-alpha', 'p-beta', 'p-gamma'])[1 + n % 3],
               '2026-12-01 00:00:00+00'::timestamptz + n * interval '1 hour'
        FROM generate_series(1, 10) AS n;
        "#,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every row of a table as JSON, in a stable order.
async fn rows_as_json(db: &Client, table: &str, order: &str) -> Vec<Value> {
    db.query(
        &format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {order}"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn counts(db: &Client, tables: &[&str]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for table in tables {
        counts.insert(
            (*table).to_owned(),
            count(db, &format!("SELECT count(*) FROM {table}")).await,
        );
    }
    counts
}

/// A meta value as the studio's `meta` takes its keys.
fn keys_of(meta: Option<&Value>) -> Map<String, Value> {
    match meta {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => Map::from_iter([("_meta".to_owned(), other.clone())]),
    }
}

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// A studio trace row, as V2's comments and STUDIO_LAYOUT.md map a legacy one.
#[derive(Debug, PartialEq)]
struct StudioTrace {
    project_id: Option<String>,
    name: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    tags: Option<Value>,
    timestamp: NaiveDateTime,
}

fn expected_trace(t: &LegacyTrace) -> StudioTrace {
    let started = t.start_version.is_some();
    let meta = started.then(|| {
        let mut meta = keys_of(t.meta.as_ref());
        let mut rest = keys_of(t.metadata.as_ref());
        rest.remove("tags");
        meta.extend(rest);
        if let Some(run_id) = &t.run_id {
            meta.insert("run_id".into(), json!(run_id));
        }
        Value::Object(meta)
    });
    StudioTrace {
        project_id: Some(t.project_id.clone()),
        name: started.then(|| t.name.clone().unwrap_or_else(|| "unnamed_trace".into())),
        user_id: t.user_id.clone(),
        session_id: t.session_id.clone(),
        input: None,
        output: None,
        meta,
        tags: Some(
            t.metadata
                .as_ref()
                .and_then(|m| m.get("tags"))
                .cloned()
                .unwrap_or(json!([])),
        ),
        timestamp: naive(t.start_timestamp.unwrap_or(t.first_seen_at)),
    }
}

async fn studio_trace(db: &Client, id: &str) -> StudioTrace {
    let row = db
        .query_one(
            "SELECT project_id, name, user_id, session_id, input, output, meta, tags, \"timestamp\"
             FROM public.traces WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("trace {id}: {e}"));
    StudioTrace {
        project_id: row.get(0),
        name: row.get(1),
        user_id: row.get(2),
        session_id: row.get(3),
        input: row.get(4),
        output: row.get(5),
        meta: row.get(6),
        tags: row.get(7),
        timestamp: row.get(8),
    }
}

#[derive(Debug, PartialEq)]
struct StudioObservation {
    trace_id: Option<String>,
    parent_observation_id: Option<String>,
    observation_type: String,
    name: Option<String>,
    start_time: NaiveDateTime,
    end_time: Option<NaiveDateTime>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    model: Option<String>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    total_cost: Option<String>,
    level: String,
    status_message: Option<String>,
    completion_start_time: Option<NaiveDateTime>,
    model_parameters: Option<Value>,
    total_tokens: Option<i32>,
    calculated_input_cost: Option<String>,
    calculated_output_cost: Option<String>,
    calculated_total_cost: Option<String>,
}

fn studio_type(t: &Option<String>) -> Option<String> {
    t.clone().filter(|t| STUDIO_TYPES.contains(&t.as_str()))
}

/// One group's meta: data.meta's keys, the rest, and the original of a type
/// outside the studio's enum.
fn group_meta(metadata: Option<&Value>, raw_type: &Option<String>) -> Map<String, Value> {
    let mut meta = keys_of(metadata.and_then(|m| m.get("meta")));
    if let Some(Value::Object(rest)) = metadata {
        for (k, v) in rest {
            if k != "meta" {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(t) = raw_type {
        if !STUDIO_TYPES.contains(&t.as_str()) {
            meta.insert("_ingest_original_type".into(), json!(t));
        }
    }
    meta
}

fn int4(n: Option<i64>) -> Option<i32> {
    n.and_then(|n| i32::try_from(n).ok())
}

fn expected_observation(o: &LegacyObservation) -> StudioObservation {
    let mut meta = group_meta(o.start_metadata.as_ref(), &o.start_type);
    meta.extend(group_meta(o.end_metadata.as_ref(), &o.end_type));
    StudioObservation {
        trace_id: Some(o.trace_id.clone()),
        parent_observation_id: o.parent_observation_id.clone(),
        observation_type: studio_type(&o.end_type)
            .or_else(|| studio_type(&o.start_type))
            .unwrap_or_else(|| "SPAN".into()),
        name: o.start_version.as_ref().map(|_| {
            o.name
                .clone()
                .unwrap_or_else(|| "unnamed_observation".into())
        }),
        start_time: naive(o.start_time.or(o.end_time).unwrap()),
        end_time: o.end_time.map(naive),
        input: o.input.clone(),
        output: o.output.clone(),
        meta: (!meta.is_empty()).then_some(Value::Object(meta)),
        model: o.llm_model.clone(),
        prompt_tokens: int4(o.llm_prompt_tokens),
        completion_tokens: int4(o.llm_completion_tokens),
        total_cost: None,
        level: o.end_level.clone().unwrap_or_else(|| "DEFAULT".into()),
        status_message: o.status_message.clone(),
        completion_start_time: None,
        model_parameters: None,
        total_tokens: int4(o.llm_total_tokens),
        calculated_input_cost: None,
        calculated_output_cost: None,
        calculated_total_cost: None,
    }
}

const OBSERVATION_COLUMNS: &str = "trace_id, parent_observation_id, type::text, name, start_time,
    end_time, input, output, meta, model, prompt_tokens, completion_tokens, total_cost::text, level,
    status_message, completion_start_time, model_parameters, total_tokens,
    calculated_input_cost::text, calculated_output_cost::text, calculated_total_cost::text";

async fn studio_observation(db: &Client, id: &str) -> StudioObservation {
    let row = db
        .query_one(
            &format!("SELECT {OBSERVATION_COLUMNS} FROM public.observations WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap_or_else(|e| panic!("observation {id}: {e}"));
    StudioObservation {
        trace_id: row.get(0),
        parent_observation_id: row.get(1),
        observation_type: row.get(2),
        name: row.get(3),
        start_time: row.get(4),
        end_time: row.get(5),
        input: row.get(6),
        output: row.get(7),
        meta: row.get(8),
        model: row.get(9),
        prompt_tokens: row.get(10),
        completion_tokens: row.get(11),
        total_cost: row.get(12),
        level: row.get(13),
        status_message: row.get(14),
        completion_start_time: row.get(15),
        model_parameters: row.get(16),
        total_tokens: row.get(17),
        calculated_input_cost: row.get(18),
        calculated_output_cost: row.get(19),
        calculated_total_cost: row.get(20),
    }
}

const LEGACY_TABLES: [&str; 7] = [
    "public.traces",
    "public.observations",
    "public.ingest_dead_letters",
    "public.sdk_heartbeats",
    "public.retention_projects",
    "public.retention_tombstones",
    "public.refinery_schema_history",
];

const UPGRADED_TABLES: [&str; 14] = [
    "public.traces",
    "public.observations",
    "public.projects",
    "public.users",
    "swisper_ingest.trace_state",
    "swisper_ingest.observation_state",
    "swisper_ingest.legacy_traces",
    "swisper_ingest.legacy_observations",
    "swisper_ingest.dead_letters",
    "swisper_ingest.sdk_heartbeats",
    "swisper_ingest.retention_projects",
    "swisper_ingest.retention_tombstones",
    "swisper_ingest.refinery_schema_history",
    "swisper_ingest.installation",
];

fn event(
    event_type: &str,
    trace: &str,
    project: &str,
    observation: Option<&str>,
    data: Value,
) -> Vec<(String, String)> {
    let mut fields = vec![
        ("event_type".to_owned(), event_type.to_owned()),
        ("trace_id".to_owned(), trace.to_owned()),
        ("project_id".to_owned(), project.to_owned()),
        ("timestamp".to_owned(), now_ts()),
    ];
    if let Some(id) = observation {
        fields.push(("observation_id".to_owned(), id.to_owned()));
    }
    fields.push(("data".to_owned(), data.to_string()));
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populated_database_of_the_old_layout_is_upgraded() {
    let (head, _) = studio_head_catalog().await;
    let env = TestEnv::new("schema_upgrade").await;
    let mut db = env.db().await;
    db.batch_execute(include_str!("../fixtures/legacy_main_layout.sql"))
        .await
        .expect("load the old layout");
    let (traces, observations) = legacy_population();
    insert_legacy(&mut db, &traces, &observations).await;

    let before = counts(&db, &LEGACY_TABLES).await;
    eprintln!("before the upgrade (old layout):");
    for (table, n) in &before {
        eprintln!("  {table:<40} {n:>6}");
    }
    assert_eq!(before["public.traces"], traces.len() as i64);
    assert_eq!(before["public.observations"], observations.len() as i64);
    let dead_letters = rows_as_json(&db, "public.ingest_dead_letters", "id").await;
    let heartbeats = rows_as_json(&db, "public.sdk_heartbeats", "project_id, sdk_version").await;
    let horizons = rows_as_json(&db, "public.retention_projects", "project_id").await;
    let tombstones = rows_as_json(&db, "public.retention_tombstones", "trace_id, project_id").await;

    let applied = migrate::run(&pg_target(&env.database_url))
        .await
        .expect("upgrade the old layout");
    assert_eq!(applied.len(), 2, "{applied:?}");

    let after = counts(&db, &UPGRADED_TABLES).await;
    eprintln!("after the upgrade:");
    for (table, n) in &after {
        eprintln!("  {table:<40} {n:>6}");
    }

    // public is the studio's head, and only that.
    let catalog = public_schema_catalog(&db).await;
    assert!(
        catalog == head,
        "public after the upgrade is not the studio's head:\n{}",
        catalog_diff(&head, &catalog)
    );
    assert_eq!(schemas(&db).await, ["public", "swisper_ingest"]);
    assert_eq!(installation(&db).await, (true, true));
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'").await,
        0,
        "ingest_newer() is gone"
    );

    // The id under two projects: the oldest (p-alpha) came over, p-beta's
    // rows stay behind.
    let migrated_traces: Vec<&LegacyTrace> = traces
        .iter()
        .filter(|t| !(t.id == "shared-trace" && t.project_id == "p-beta"))
        .collect();
    let migrated_observations: Vec<&LegacyObservation> = observations
        .iter()
        .filter(|o| !(o.trace_id == "shared-trace" && o.project_id == "p-beta"))
        .collect();
    assert_eq!(after["public.traces"], migrated_traces.len() as i64);
    assert_eq!(
        after["public.observations"],
        migrated_observations.len() as i64
    );
    assert_eq!(
        after["swisper_ingest.trace_state"],
        migrated_traces.len() as i64
    );
    assert_eq!(
        after["swisper_ingest.observation_state"],
        migrated_observations.len() as i64
    );
    assert_eq!(
        after["public.traces"] + after["swisper_ingest.legacy_traces"],
        before["public.traces"]
    );
    assert_eq!(
        after["public.observations"] + after["swisper_ingest.legacy_observations"],
        before["public.observations"]
    );
    let kept: Vec<(String, String)> = db
        .query(
            "SELECT id, project_id FROM swisper_ingest.legacy_traces
             UNION ALL SELECT id, project_id FROM swisper_ingest.legacy_observations ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kept,
        [
            ("shared-obs".to_owned(), "p-beta".to_owned()),
            ("shared-obs-p-beta".to_owned(), "p-beta".to_owned()),
            ("shared-trace".to_owned(), "p-beta".to_owned()),
        ]
    );
    assert_eq!(
        studio_trace(&db, "shared-trace").await.name.as_deref(),
        Some("shared of p-alpha")
    );
    assert_eq!(
        studio_observation(&db, "shared-obs").await.name.as_deref(),
        Some("node of p-alpha")
    );

    // A project row for each project id, named by it.
    let projects: Vec<(String, String, bool)> = db
        .query(
            "SELECT id, name, tracing_enabled FROM public.projects ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        projects,
        PROJECTS
            .iter()
            .map(|p| ((*p).to_owned(), (*p).to_owned(), true))
            .collect::<Vec<_>>()
    );

    // Every migrated row, column by column, and its merge state.
    for t in &migrated_traces {
        let got = studio_trace(&db, &t.id).await;
        let expected = expected_trace(t);
        assert_eq!(got, expected, "trace {} ({})", t.id, t.project_id);
        let state = db
            .query_one(
                "SELECT project_id, first_seen_at, start_version FROM swisper_ingest.trace_state WHERE id = $1",
                &[&t.id],
            )
            .await
            .unwrap();
        let state: (String, DateTime<Utc>, Option<Vec<u8>>) =
            (state.get(0), state.get(1), state.get(2));
        assert_eq!(
            state,
            (
                t.project_id.clone(),
                t.first_seen_at,
                t.start_version.clone()
            ),
            "trace_state of {}",
            t.id
        );
    }
    for o in &migrated_observations {
        let got = studio_observation(&db, &o.id).await;
        let expected = expected_observation(o);
        assert_eq!(got, expected, "observation {} ({})", o.id, o.project_id);
        let row = db
            .query_one(
                "SELECT trace_id, project_id, seen_version, start_version, end_version, start_type,
                        end_type, start_meta, end_meta
                 FROM swisper_ingest.observation_state WHERE id = $1",
                &[&o.id],
            )
            .await
            .unwrap();
        let non_empty = |m: Map<String, Value>| (!m.is_empty()).then_some(Value::Object(m));
        assert_eq!(row.get::<_, String>(0), o.trace_id, "{}", o.id);
        assert_eq!(row.get::<_, String>(1), o.project_id, "{}", o.id);
        assert_eq!(row.get::<_, Vec<u8>>(2), o.seen_version, "{}", o.id);
        assert_eq!(
            row.get::<_, Option<Vec<u8>>>(3),
            o.start_version,
            "{}",
            o.id
        );
        assert_eq!(row.get::<_, Option<Vec<u8>>>(4), o.end_version, "{}", o.id);
        assert_eq!(
            row.get::<_, Option<String>>(5),
            studio_type(&o.start_type),
            "{}",
            o.id
        );
        assert_eq!(
            row.get::<_, Option<String>>(6),
            studio_type(&o.end_type),
            "{}",
            o.id
        );
        assert_eq!(
            row.get::<_, Option<Value>>(7),
            non_empty(group_meta(o.start_metadata.as_ref(), &o.start_type)),
            "start_meta of {}",
            o.id
        );
        assert_eq!(
            row.get::<_, Option<Value>>(8),
            non_empty(group_meta(o.end_metadata.as_ref(), &o.end_type)),
            "end_meta of {}",
            o.id
        );
    }
    // A handful, for the record.
    for id in ["lt-0000", "lt-0005", "lt-0013"] {
        eprintln!("trace {id}: {:?}", studio_trace(&db, id).await);
    }
    for id in ["lo-0-1", "lo-9-1", "lo-18-1", "lo-1-2", "lo-2-2", "lo-3-2"] {
        eprintln!("observation {id}: {:?}", studio_observation(&db, id).await);
    }
    // Spot checks written out, independent of the expectation code above.
    let chain = studio_observation(&db, "lo-1-2").await;
    assert_eq!(chain.observation_type, "SPAN");
    assert_eq!(chain.name.as_deref(), Some("unnamed_observation"));
    assert_eq!(chain.level, "WARNING");
    assert_eq!(
        chain.meta,
        Some(json!({"k": 1, "_ingest_original_type": "CHAIN"}))
    );
    let huge = studio_observation(&db, "lo-18-1").await;
    assert_eq!(
        (
            huge.prompt_tokens,
            huge.completion_tokens,
            huge.total_tokens
        ),
        (Some(118), Some(50), None),
        "a count beyond int4 is left out"
    );
    assert_eq!(huge.meta, Some(json!({"_meta": "not an object"})));
    let late = studio_observation(&db, "lo-3-2").await;
    assert_eq!((late.name, late.observation_type.as_str()), (None, "EVENT"));
    assert_eq!(late.start_time, late.end_time.unwrap());
    let unstarted = studio_trace(&db, "lt-0005").await;
    assert_eq!((unstarted.name, unstarted.meta), (None, None));
    assert_eq!(unstarted.tags, Some(json!([])));
    let t13 = studio_trace(&db, "lt-0013").await;
    assert_eq!(t13.name.as_deref(), Some("unnamed_trace"));
    assert_eq!(
        t13.meta,
        Some(json!({"extra": 13})),
        "meta null + metadata minus tags"
    );
    assert_eq!(t13.tags, Some(json!(["a", "t13"])));

    // Our other tables moved whole.
    assert_eq!(
        rows_as_json(&db, "swisper_ingest.dead_letters", "id").await,
        dead_letters
    );
    assert_eq!(
        rows_as_json(
            &db,
            "swisper_ingest.sdk_heartbeats",
            "project_id, sdk_version"
        )
        .await,
        heartbeats
    );
    assert_eq!(
        rows_as_json(&db, "swisper_ingest.retention_projects", "project_id").await,
        horizons
    );
    assert_eq!(
        rows_as_json(
            &db,
            "swisper_ingest.retention_tombstones",
            "trace_id, project_id"
        )
        .await,
        tombstones
    );
    assert_eq!(after["swisper_ingest.refinery_schema_history"], 2);
    let max_dead_letter: i64 = db
        .query_one("SELECT max(id) FROM swisper_ingest.dead_letters", &[])
        .await
        .unwrap()
        .get(0);

    // Migrating again changes nothing.
    assert!(migrate::run(&pg_target(&env.database_url))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(counts(&db, &UPGRADED_TABLES).await, after);

    // The upgraded database takes new events.
    let service = env.spawn("upgraded", &[]);
    service.wait_ready(WAIT);
    let mut redis = env.redis();
    let new_events = [
        // A new trace of an upgraded project, and one of a new project
        // (standalone: created on first sight).
        event(
            "trace_start",
            "new-1",
            "p-alpha",
            None,
            json!({"name": "after upgrade", "run_id": "r1"}),
        ),
        event(
            "observation_start",
            "new-1",
            "p-alpha",
            Some("new-1-a"),
            json!({"name": "step", "type": "TOOL"}),
        ),
        event(
            "observation_end",
            "new-1",
            "p-alpha",
            Some("new-1-a"),
            json!({"output": {"ok": true}}),
        ),
        event(
            "trace_start",
            "new-2",
            "p-new",
            None,
            json!({"name": "new project"}),
        ),
        // The end of an open upgraded observation, the start of one that
        // had only its end, the trace_start of a trace that had none.
        event(
            "observation_end",
            "lt-0000",
            "p-alpha",
            Some("lo-0-2"),
            json!({"output": {"done": 1}, "level": "WARNING"}),
        ),
        event(
            "observation_start",
            "lt-0003",
            "p-alpha",
            Some("lo-3-2"),
            json!({"name": "late start", "type": "TOOL", "start_time": "2026-11-20T08:03:00.000000"}),
        ),
        event(
            "trace_start",
            "lt-0005",
            "p-gamma",
            None,
            json!({"name": "finally", "tags": ["x"]}),
        ),
        // p-beta's events of the id p-alpha holds: refused.
        event(
            "observation_start",
            "shared-trace",
            "p-beta",
            Some("shared-obs-new"),
            json!({"name": "intruder"}),
        ),
    ];
    for e in &new_events {
        env.publish(&mut redis, &as_fields(e));
    }
    assert!(
        wait_for(WAIT, || group_drained(&mut redis, &env.stream, &env.group)),
        "not drained; log: {}",
        service.log()
    );
    assert!(
        wait_for_count(&db, "SELECT count(*) FROM public.observations WHERE id = 'new-1-a' AND end_time IS NOT NULL", 1, WAIT).await,
        "log: {}",
        service.log()
    );
    let new1 = studio_trace(&db, "new-1").await;
    assert_eq!(new1.name.as_deref(), Some("after upgrade"));
    assert_eq!(new1.meta, Some(json!({"run_id": "r1"})));
    assert_eq!(
        studio_trace(&db, "new-2").await.project_id.as_deref(),
        Some("p-new")
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.projects WHERE id = 'p-new' AND name = 'p-new'"
        )
        .await,
        1
    );
    let closed = studio_observation(&db, "lo-0-2").await;
    assert_eq!(
        closed.name.as_deref(),
        Some("waiting"),
        "the upgraded start stays"
    );
    assert_eq!(closed.level, "WARNING");
    assert_eq!(closed.output, Some(json!({"done": 1})));
    assert!(closed.end_time.is_some());
    let started = studio_observation(&db, "lo-3-2").await;
    assert_eq!(started.name.as_deref(), Some("late start"));
    assert_eq!(
        started.observation_type, "EVENT",
        "the upgraded end's type still wins"
    );
    assert_eq!(
        started.start_time,
        NaiveDateTime::parse_from_str("2026-11-20T08:03:00", "%Y-%m-%dT%H:%M:%S").unwrap()
    );
    assert_eq!(started.output, Some(json!({"late": true})));
    let finally = studio_trace(&db, "lt-0005").await;
    assert_eq!(finally.name.as_deref(), Some("finally"));
    assert_eq!(finally.tags, Some(json!(["x"])));
    assert_eq!(finally.meta, Some(json!({})));
    let refused: Vec<(i64, String)> = db
        .query(
            "SELECT id, reason_code FROM swisper_ingest.dead_letters WHERE id > $1 ORDER BY id",
            &[&max_dead_letter],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        refused.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        ["project_mismatch"],
        "new dead letters after the upgrade: {refused:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.observations WHERE id = 'shared-obs-new'"
        )
        .await,
        0
    );
    let final_counts = counts(&db, &UPGRADED_TABLES).await;
    eprintln!("after new events on the upgraded database:");
    for (table, n) in &final_counts {
        eprintln!("  {table:<40} {n:>6}");
    }
}
