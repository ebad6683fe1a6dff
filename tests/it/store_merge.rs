//! The merge through PostgreSQL: batches of traces' events, in random order
//! with duplicates, written by two concurrent writers (two replicas), give
//! exactly the studio rows of the pure merge of all events, every column of
//! `public.traces` and `public.observations`, and the merge state beside them
//! (`swisper_ingest.trace_state`, `observation_state`) holds the versions of
//! the events that won.
//!
//! Ids are global in the studio's tables, so each trace's events carry one
//! project here (a project mismatch is a dead letter, tested elsewhere).

use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use swisper_ingest::config::CreateProjects;
use swisper_ingest::cost::{costs, decimal_text, Price};
use swisper_ingest::event::{
    EventBody, Json, ObservationEnd, ObservationStart, Parsed, StreamEntry, StreamId, StudioUsage,
    TraceEvent, TraceStart,
};
use swisper_ingest::merge::{merge, Version};
use swisper_ingest::retention::Horizons;
use swisper_ingest::store::Pool;
use swisper_ingest::write_path::{commit, BatchItem, Destination, Studio};

use crate::harness;

/// A known model: priced by default, and differently for one project.
const PRICED_MODEL: &str = "gpt-4o";
/// The project with a price of its own (created before the run; the others
/// are created on first sight).
const PRICED_PROJECT: &str = "p-1";

fn default_price() -> Price {
    Price {
        input_per_million: Decimal::from_str("2.5").unwrap(),
        output_per_million: Decimal::from_str("10").unwrap(),
    }
}

fn project_price() -> Price {
    Price {
        input_per_million: Decimal::from_str("0.333333").unwrap(),
        output_per_million: Decimal::from_str("1.25").unwrap(),
    }
}

/// What the test's model_pricing holds, as the studio looks prices up.
fn price_of(project_id: &str, model: &str) -> Option<Price> {
    match (project_id, model) {
        (PRICED_PROJECT, PRICED_MODEL) => Some(project_price()),
        (_, PRICED_MODEL) => Some(default_price()),
        _ => None,
    }
}

fn at(second: i64, micros: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_762_336_800 + second, 0).unwrap() + Duration::microseconds(micros)
}

fn maybe<T>(rng: &mut StdRng, value: T) -> Option<T> {
    rng.gen_bool(0.7).then_some(value)
}

/// Usage as the parser reports it: priced, unpriced model, unbillable
/// (a zero count), or none.
fn usage(rng: &mut StdRng, variant: u8) -> Option<StudioUsage> {
    let prompt = rng.gen_range(0..5_000);
    let completion = rng.gen_range(1..5_000);
    let model = match rng.gen_range(0..4) {
        0 => return None,
        1 => "claude-unpriced",
        _ => PRICED_MODEL,
    };
    Some(StudioUsage {
        model: Some(model.to_owned()),
        prompt_tokens: Some(prompt),
        completion_tokens: (variant != 0).then_some(completion),
        total_tokens: Some(prompt + completion),
        estimated: false,
    })
}

/// A trace's events with conflicts: repeated starts and ends of the same
/// observations with different content and times, all of one project.
fn random_events(
    rng: &mut StdRng,
    trace_id: &str,
    project_id: &str,
    seq: &mut u64,
) -> Vec<TraceEvent> {
    (0..rng.gen_range(3..20))
        .map(|_| {
            let second = rng.gen_range(0..4);
            let micros = rng.gen_range(0..1_000_000);
            let variant: u8 = rng.gen_range(0..3);
            let observation_id = format!("{trace_id}-obs-{}", rng.gen_range(0..3));
            let types = ["SPAN", "GENERATION", "AGENT", "TOOL", "EVENT"];
            let observation_type = types[rng.gen_range(0..types.len())].to_owned();
            let body = match rng.gen_range(0..7) {
                0 => EventBody::TraceStart(TraceStart {
                    name: maybe(rng, format!("trace-{variant}")),
                    user_id: maybe(rng, format!("u-{variant}")),
                    session_id: maybe(rng, format!("s-{variant}")),
                    tags: maybe(rng, Json::from_value(&json!(["t", variant]))),
                    timestamp: at(second, micros + 7),
                    metadata: if rng.gen_bool(0.3) {
                        Json::from_value(&json!({}))
                    } else {
                        Json::from_value(&json!({"v": variant, "run_id": format!("run-{variant}")}))
                    },
                }),
                1 | 2 => EventBody::ObservationStart {
                    observation_id,
                    fields: ObservationStart {
                        name: maybe(rng, format!("node-{variant}")),
                        observation_type: maybe(rng, observation_type),
                        parent_observation_id: (variant > 0).then(|| format!("{trace_id}-obs-0")),
                        input: maybe(rng, Json::from_value(&json!({"in": variant}))),
                        start_time: at(second, micros + 3),
                        metadata: if rng.gen_bool(0.3) {
                            Json::from_value(&json!({}))
                        } else {
                            Json::from_value(
                                &json!({"run": variant, "same": "start", "start_only": 1}),
                            )
                        },
                    },
                },
                kind => {
                    let is_error = kind == 6;
                    EventBody::ObservationEnd {
                        observation_id,
                        fields: ObservationEnd {
                            is_error,
                            observation_type: (variant == 2).then(|| "AGENT".to_owned()),
                            level: if is_error {
                                "ERROR".into()
                            } else if variant == 1 {
                                "WARNING".into()
                            } else {
                                "DEFAULT".into()
                            },
                            output: maybe(rng, Json::from_value(&json!({"out": variant}))),
                            status_message: (is_error || variant == 1)
                                .then(|| format!("boom-{variant}")),
                            end_time: at(second + 1, micros),
                            metadata: if rng.gen_bool(0.3) {
                                Json::from_value(&json!({}))
                            } else {
                                Json::from_value(&json!({"same": "end", "errors": [variant]}))
                            },
                            llm: usage(rng, variant),
                        },
                    }
                }
            };
            *seq += 1;
            let skew = rng.gen_range(-2_000..2_000);
            TraceEvent {
                // Redis's clock, up to 2 s off the producer's either way.
                entry_id: StreamId {
                    ms: (at(second, micros).timestamp_millis() + skew) as u64,
                    seq: *seq,
                },
                trace_id: trace_id.to_owned(),
                project_id: project_id.to_owned(),
                published_at: at(second, micros),
                body,
            }
        })
        .collect()
}

fn item(event: &TraceEvent) -> BatchItem {
    BatchItem {
        entry: StreamEntry {
            id: event.entry_id,
            fields: Vec::new(),
            deliveries: 1,
        },
        parsed: Ok(Parsed::Trace(event.clone())),
    }
}

fn json_of(j: Option<&Json>) -> Value {
    j.map(|j| serde_json::from_str(j.as_str()).unwrap())
        .unwrap_or(Value::Null)
}

fn object_of(j: Option<&Json>) -> Map<String, Value> {
    match json_of(j) {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => panic!("metadata is not an object: {other}"),
    }
}

/// A timestamp as the SQL below renders it (UTC, µs).
fn time(at: DateTime<Utc>) -> String {
    at.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

fn hex(version: Version) -> String {
    version
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The rows the pure merge says the database must hold, as the SQL queries
/// below render them: every studio column, then the state (`state_*`).
fn expected(events: &[TraceEvent]) -> (Vec<Value>, Vec<Value>) {
    let rows = merge(events.iter());
    let traces = rows
        .traces
        .iter()
        .map(|t| {
            let start = t.start.map(|s| s.value);
            // When Redis received the trace's oldest entry (its id's time):
            // the trace's time until its trace_start.
            let first_seen = events
                .iter()
                .filter(|e| e.trace_id == t.id)
                .map(|e| e.entry_id.time())
                .min()
                .unwrap();
            json!({
                "id": t.id,
                "project_id": t.project_id,
                "name": start.map(|s| s.name.as_deref().unwrap_or("unnamed_trace")),
                "user_id": start.and_then(|s| s.user_id.as_deref()),
                "session_id": start.and_then(|s| s.session_id.as_deref()),
                "input": null,
                "output": null,
                "meta": json_of(start.map(|s| &s.metadata)),
                "tags": start.and_then(|s| s.tags.as_ref()).map_or(json!([]), |tags| json_of(Some(tags))),
                "timestamp": time(start.map_or(first_seen, |s| s.timestamp)),
                "state_project_id": t.project_id,
                "state_first_seen_at": time(first_seen),
                "state_start_version": t.start.map(|s| hex(s.version)),
            })
        })
        .collect();
    let observations = rows
        .observations
        .iter()
        .map(|o| {
            let start = o.start.map(|s| s.value);
            let end = o.end.map(|e| e.value);
            let start_meta = object_of(start.map(|s| &s.metadata));
            let end_meta = object_of(end.map(|e| &e.metadata));
            let mut meta = start_meta.clone();
            meta.extend(end_meta.clone());
            let non_empty =
                |map: Map<String, Value>| (!map.is_empty()).then_some(Value::Object(map));
            let llm = end.and_then(|e| e.llm.as_ref());
            let billable = llm.and_then(|l| {
                let model = l.model.as_deref().filter(|m| !m.is_empty())?;
                let prompt = l.prompt_tokens.filter(|&n| n != 0)?;
                let completion = l.completion_tokens.filter(|&n| n != 0)?;
                Some((model, i64::from(prompt), i64::from(completion)))
            });
            let cost = billable.and_then(|(model, prompt, completion)| {
                let price = price_of(o.project_id, model)?;
                Some(costs(&price, prompt, completion))
            });
            let start_type = start.and_then(|s| s.observation_type.as_deref());
            let end_type = end.and_then(|e| e.observation_type.as_deref());
            json!({
                "id": o.id,
                "trace_id": o.seen.value,
                "parent_observation_id": start.and_then(|s| s.parent_observation_id.as_deref()),
                "type": end_type.or(start_type).unwrap_or("SPAN"),
                "name": start.map(|s| s.name.as_deref().unwrap_or("unnamed_observation")),
                "start_time": time(match (start, end) {
                    (Some(s), _) => s.start_time,
                    (None, Some(e)) => e.end_time,
                    (None, None) => unreachable!("an observation row has an event"),
                }),
                "end_time": end.map(|e| time(e.end_time)),
                "input": json_of(start.and_then(|s| s.input.as_ref())),
                "output": json_of(end.and_then(|e| e.output.as_ref())),
                "meta": non_empty(meta),
                "model": llm.and_then(|l| l.model.as_deref()),
                "prompt_tokens": llm.and_then(|l| l.prompt_tokens),
                "completion_tokens": llm.and_then(|l| l.completion_tokens),
                "total_tokens": llm.and_then(|l| l.total_tokens),
                "level": end.map_or("DEFAULT", |e| e.level.as_str()),
                "status_message": end.and_then(|e| e.status_message.as_deref()),
                "calculated_input_cost": cost.as_ref().map(|c| decimal_text(&c.input)),
                "calculated_output_cost": cost.as_ref().map(|c| decimal_text(&c.output)),
                "calculated_total_cost": cost.as_ref().map(|c| decimal_text(&c.total)),
                "total_cost": null,
                "completion_start_time": null,
                "model_parameters": null,
                "state_trace_id": o.seen.value,
                "state_project_id": o.project_id,
                "state_seen_version": hex(o.seen.version),
                "state_start_version": o.start.map(|s| hex(s.version)),
                "state_end_version": o.end.map(|e| hex(e.version)),
                "state_start_type": start_type,
                "state_end_type": end_type,
                "state_start_meta": non_empty(start_meta),
                "state_end_meta": non_empty(end_meta),
            })
        })
        .collect();
    (traces, observations)
}

/// `timestamp` / `timestamptz` as text in UTC with µs, like [`time`].
fn sql_time(column: &str) -> String {
    format!("to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
}

/// Every column of the studio's rows of a case, and their state: a FULL JOIN,
/// so that a state without its row (or the reverse) shows up too.
async fn stored(pool: &Pool, case: &str) -> (Vec<Value>, Vec<Value>) {
    let client = pool.get().await.unwrap();
    let traces = client
        .query(
            &format!(
                "SELECT json_build_object('id', COALESCE(t.id, s.id), 'project_id', t.project_id,
                    'name', t.name, 'user_id', t.user_id, 'session_id', t.session_id,
                    'input', t.input::jsonb, 'output', t.output::jsonb, 'meta', t.meta::jsonb,
                    'tags', t.tags::jsonb, 'timestamp', {},
                    'state_project_id', s.project_id,
                    'state_first_seen_at', {},
                    'state_start_version', encode(s.start_version, 'hex'))
                 FROM public.traces t FULL JOIN swisper_ingest.trace_state s ON s.id = t.id
                 WHERE COALESCE(t.id, s.id) LIKE $1 || '-%'
                 ORDER BY COALESCE(t.id, s.id) COLLATE \"C\"",
                sql_time("t.\"timestamp\""),
                sql_time("s.first_seen_at AT TIME ZONE 'UTC'")
            ),
            &[&case],
        )
        .await
        .unwrap();
    let observations = client
        .query(
            &format!(
                "SELECT json_build_object('id', COALESCE(o.id, s.id), 'trace_id', o.trace_id,
                    'parent_observation_id', o.parent_observation_id, 'type', o.type,
                    'name', o.name, 'start_time', {}, 'end_time', {},
                    'input', o.input::jsonb, 'output', o.output::jsonb, 'meta', o.meta::jsonb,
                    'model', o.model, 'prompt_tokens', o.prompt_tokens,
                    'completion_tokens', o.completion_tokens, 'total_tokens', o.total_tokens,
                    'level', o.level, 'status_message', o.status_message,
                    'calculated_input_cost', o.calculated_input_cost::text,
                    'calculated_output_cost', o.calculated_output_cost::text,
                    'calculated_total_cost', o.calculated_total_cost::text,
                    'total_cost', o.total_cost::text,
                    'completion_start_time', o.completion_start_time,
                    'model_parameters', o.model_parameters::jsonb,
                    'state_trace_id', s.trace_id, 'state_project_id', s.project_id,
                    'state_seen_version', encode(s.seen_version, 'hex'),
                    'state_start_version', encode(s.start_version, 'hex'),
                    'state_end_version', encode(s.end_version, 'hex'),
                    'state_start_type', s.start_type, 'state_end_type', s.end_type,
                    'state_start_meta', s.start_meta, 'state_end_meta', s.end_meta)
                 FROM public.observations o
                 FULL JOIN swisper_ingest.observation_state s ON s.id = o.id
                 WHERE COALESCE(o.id, s.id) LIKE $1 || '-%'
                 ORDER BY COALESCE(o.id, s.id) COLLATE \"C\"",
                sql_time("o.start_time"),
                sql_time("o.end_time")
            ),
            &[&case],
        )
        .await
        .unwrap();
    (
        traces.iter().map(|r| r.get(0)).collect(),
        observations.iter().map(|r| r.get(0)).collect(),
    )
}

/// One replica's batches, in order.
async fn write(pool: &Pool, horizons: &Horizons, studio: &Studio, batches: Vec<Vec<BatchItem>>) {
    let to = Destination {
        pool,
        stream: "stream",
        horizons,
        studio,
    };
    for mut batch in batches {
        commit(to, &mut batch).await.expect("commit");
        // Nothing is refused: one project per trace, projects created on
        // first sight.
        for item in &batch {
            assert!(
                matches!(item.parsed, Ok(Parsed::Trace(_))),
                "{:?}",
                item.parsed
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_any_order_on_two_writers_give_the_pure_merge() {
    let env = harness::TestEnv::new("store_merge").await;
    let (pool, _) = harness::migrated_pool(&env.database_url).await;
    {
        let client = pool.get().await.unwrap();
        let price = |p: Price| {
            (
                p.input_per_million.to_string(),
                p.output_per_million.to_string(),
            )
        };
        let ((default_in, default_out), (project_in, project_out)) =
            (price(default_price()), price(project_price()));
        client
            .execute(
                "INSERT INTO public.projects (id, name, created_at, updated_at)
                 VALUES ($1, 'priced', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
                &[&PRICED_PROJECT],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO public.model_pricing (id, project_id, hosting_provider, model_name,
                     input_price_per_million, output_price_per_million, created_at, updated_at, type)
                 VALUES ('default', NULL, 'openai', $1, $2::text::numeric, $3::text::numeric,
                         now(), now(), 'llm'),
                        ('project', $4, 'openai', $1, $5::text::numeric, $6::text::numeric,
                         now(), now(), 'llm')",
                &[
                    &PRICED_MODEL,
                    &default_in,
                    &default_out,
                    &PRICED_PROJECT,
                    &project_in,
                    &project_out,
                ],
            )
            .await
            .unwrap();
    }
    // One studio (price cache, projects) per replica, as in the service.
    let studios = [
        Studio::new(CreateProjects::Auto, std::time::Duration::from_secs(30)),
        Studio::new(CreateProjects::Auto, std::time::Duration::from_secs(30)),
    ];
    // Retention on with a horizon that keeps every event: the late-event
    // checks run and must not change any row.
    let horizons = Horizons::fixed(Some(std::time::Duration::from_secs(100 * 365 * 86_400)));
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut seq = 0;

    for case in 0..40 {
        let case_id = format!("case-{case}");
        // One or two traces per case, each with a project of its own choosing.
        let mut events = Vec::new();
        for trace in 0..rng.gen_range(1..=2) {
            let project = format!("p-{}", rng.gen_range(0..3));
            events.extend(random_events(
                &mut rng,
                &format!("{case_id}-t{trace}"),
                &project,
                &mut seq,
            ));
        }
        // Every event at least once, plus duplicates, shuffled, in batches.
        let mut arrival: Vec<&TraceEvent> = events.iter().collect();
        for _ in 0..rng.gen_range(0..events.len() * 2) {
            arrival.push(&events[rng.gen_range(0..events.len())]);
        }
        arrival.shuffle(&mut rng);
        let batches: Vec<Vec<BatchItem>> = arrival
            .chunks(rng.gen_range(1..=arrival.len()))
            .map(|chunk| chunk.iter().map(|e| item(e)).collect())
            .collect();
        // Odd batches on one "replica", even on the other, concurrently.
        let (left, right): (Vec<_>, Vec<_>) = batches
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let (left, right): (Vec<_>, Vec<_>) = (
            left.into_iter().map(|(_, b)| b).collect(),
            right.into_iter().map(|(_, b)| b).collect(),
        );
        tokio::join!(
            write(&pool, &horizons, &studios[0], left),
            write(&pool, &horizons, &studios[1], right)
        );

        assert_eq!(
            stored(&pool, &case_id).await,
            expected(&events),
            "case {case}"
        );
    }
    let client = pool.get().await.unwrap();
    assert_eq!(
        harness::count(&client, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
}

/// A writer that waited for a row lock must merge against the state the
/// other writer committed meanwhile, not the one its statement started with:
/// here two writers wait on a trace row held by a third transaction; whichever
/// gets it second must still see the first one's trace_start and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_waited_for_a_row_lock_merges_with_what_was_committed_meanwhile() {
    let env = harness::TestEnv::new("store_merge_lock").await;
    let (pool, studio) = harness::migrated_pool(&env.database_url).await;
    let studio = std::sync::Arc::new(studio);
    let horizons = std::sync::Arc::new(Horizons::fixed(None));

    let event = |second: i64, redis_second: i64, body: EventBody| TraceEvent {
        entry_id: StreamId {
            ms: at(redis_second, 0).timestamp_millis() as u64,
            seq: 0,
        },
        trace_id: "locked-t".into(),
        project_id: "p".into(),
        published_at: at(second, 0),
        body,
    };
    let end = |id: &str, second| EventBody::ObservationEnd {
        observation_id: format!("locked-t-{id}"),
        fields: ObservationEnd {
            level: "DEFAULT".into(),
            end_time: at(second, 0),
            metadata: Json::from_value(&json!({})),
            ..ObservationEnd::default()
        },
    };
    let events = [
        // Stored first: the trace row, without a start, at Redis time 5.
        event(5, 5, end("a", 5)),
        // Writer A: the trace_start.
        event(
            6,
            6,
            EventBody::TraceStart(TraceStart {
                name: Some("chat".into()),
                timestamp: at(7, 0),
                metadata: Json::from_value(&json!({"k": 1})),
                ..TraceStart::default()
            }),
        ),
        // Writer B: an entry Redis received earlier than any other.
        event(1, 1, end("b", 1)),
    ];
    let run = |events: Vec<TraceEvent>| {
        let (pool, studio, horizons) = (pool.clone(), studio.clone(), horizons.clone());
        async move {
            let mut batch: Vec<BatchItem> = events.iter().map(item).collect();
            let to = Destination {
                pool: &pool,
                stream: "stream",
                horizons: &horizons,
                studio: &studio,
            };
            commit(to, &mut batch).await.expect("commit");
        }
    };
    run(vec![events[0].clone()]).await;

    // A third transaction holds the trace row while both writers start.
    let mut holder = harness::connect(&env.database_url).await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM public.traces WHERE id = 'locked-t' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let a = tokio::spawn(run(vec![events[1].clone()]));
    let b = tokio::spawn(run(vec![events[2].clone()]));
    let admin = harness::connect(&env.database_url).await;
    let both_wait = harness::wait_for_async(std::time::Duration::from_secs(10), || async {
        harness::count(
            &admin,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == 2
    })
    .await;
    assert!(both_wait, "both writers wait for the trace row");
    hold.commit().await.unwrap();
    a.await.unwrap();
    b.await.unwrap();

    assert_eq!(stored(&pool, "locked").await, expected(&events));
}

/// New rows go in by COPY; one that another writer inserted after this
/// writer looked (its transaction still open, so invisible to the lock)
/// makes the COPY meet a unique violation: the transaction runs again, finds
/// the row, and merges into it. Nothing is lost, duplicated or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_meets_a_row_stored_meanwhile_merges_instead() {
    let env = harness::TestEnv::new("store_merge_copy").await;
    let (pool, studio) = harness::migrated_pool(&env.database_url).await;
    let horizons = Horizons::fixed(None);

    // Another writer, mid-transaction: the trace and its observation's start.
    let mut other = harness::connect(&env.database_url).await;
    let other = other.transaction().await.unwrap();
    other
        .batch_execute(
            "INSERT INTO public.projects (id, name, created_at, updated_at)
                 VALUES ('p', 'p', now(), now()) ON CONFLICT DO NOTHING;
             INSERT INTO public.traces (id, project_id, name, tags, \"timestamp\")
                 VALUES ('copy-t', 'p', 'other', '[]', '2025-11-05 10:00:00');
             INSERT INTO public.observations (id, trace_id, type, name, start_time, level)
                 VALUES ('copy-o', 'copy-t', 'TOOL', 'started elsewhere', '2025-11-05 10:00:01', 'DEFAULT');",
        )
        .await
        .unwrap();

    // This writer: the observation's end, with the trace new to it.
    let end = TraceEvent {
        entry_id: StreamId {
            ms: at(9, 0).timestamp_millis() as u64,
            seq: 0,
        },
        trace_id: "copy-t".into(),
        project_id: "p".into(),
        published_at: at(9, 0),
        body: EventBody::ObservationEnd {
            observation_id: "copy-o".into(),
            fields: ObservationEnd {
                level: "WARNING".into(),
                output: Some(Json::from_value(&json!({"done": true}))),
                end_time: at(9, 0),
                metadata: Json::from_value(&json!({})),
                ..ObservationEnd::default()
            },
        },
    };
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut batch = vec![item(&end)];
            let to = Destination {
                pool: &pool,
                stream: "stream",
                horizons: &horizons,
                studio: &studio,
            };
            commit(to, &mut batch).await.map(|_| batch)
        })
    };
    // The COPY waits on the other writer's uncommitted key; let it commit.
    let admin = harness::connect(&env.database_url).await;
    assert!(
        harness::wait_for_async(std::time::Duration::from_secs(10), || async {
            harness::count(
                &admin,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            )
            .await
                >= 1
        })
        .await,
        "the COPY waits for the other writer's row"
    );
    other.commit().await.unwrap();
    let batch = writer
        .await
        .unwrap()
        .expect("the transaction ran again and merged");
    assert!(
        matches!(batch[0].parsed, Ok(Parsed::Trace(_))),
        "not a dead letter"
    );

    let row = admin
        .query_one(
            "SELECT o.name, o.type::text, o.level, o.output::text, t.name, s.end_version IS NOT NULL
             FROM public.observations o JOIN public.traces t ON t.id = o.trace_id
             JOIN swisper_ingest.observation_state s ON s.id = o.id WHERE o.id = 'copy-o'",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String, String, String, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(
        got,
        (
            "started elsewhere".into(),
            "TOOL".into(),
            "WARNING".into(),
            r#"{"done":true}"#.into(),
            "other".into(),
            true
        ),
        "the end merged into the row the other writer stored"
    );
    assert_eq!(
        harness::count(&admin, "SELECT count(*) FROM public.observations").await,
        1
    );
    assert_eq!(
        harness::count(&admin, "SELECT count(*) FROM swisper_ingest.dead_letters").await,
        0
    );
}

/// A transaction whose COPY spans many 256 KiB chunks (the encoder reuses a
/// chunk's buffer once the connection has copied it out) stores every row
/// whole: each observation's input and output exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_many_chunks_stores_every_row_as_sent() {
    let env = harness::TestEnv::new("store_merge_chunks").await;
    let (pool, studio) = harness::migrated_pool(&env.database_url).await;
    let horizons = Horizons::fixed(None);
    const OBSERVATIONS: usize = 600;
    // ~3 KB of distinct text per value: about 3.6 MB of COPY, 14 chunks.
    let text = |kind: &str, n: usize| format!("{kind}-{n}-{}", "abcdefghij".repeat(300 + n % 7));
    let mut seq = 0;
    let mut event = |body: EventBody| {
        seq += 1;
        TraceEvent {
            entry_id: StreamId {
                ms: 1_762_336_800_000,
                seq,
            },
            trace_id: "chunks-t".into(),
            project_id: "p".into(),
            published_at: at(0, seq as i64),
            body,
        }
    };
    let mut events = vec![event(EventBody::TraceStart(TraceStart {
        timestamp: at(0, 0),
        metadata: Json::from_value(&json!({})),
        ..TraceStart::default()
    }))];
    for n in 0..OBSERVATIONS {
        let observation_id = format!("chunks-o-{n:04}");
        events.push(event(EventBody::ObservationStart {
            observation_id: observation_id.clone(),
            fields: ObservationStart {
                input: Some(Json::from_value(&json!({ "in": text("in", n) }))),
                start_time: at(1, n as i64),
                metadata: Json::from_value(&json!({})),
                ..ObservationStart::default()
            },
        }));
        events.push(event(EventBody::ObservationEnd {
            observation_id,
            fields: ObservationEnd {
                level: "DEFAULT".into(),
                output: Some(Json::from_value(&json!({ "out": text("out", n) }))),
                end_time: at(2, n as i64),
                metadata: Json::from_value(&json!({})),
                ..ObservationEnd::default()
            },
        }));
    }
    write(
        &pool,
        &horizons,
        &studio,
        vec![events.iter().map(item).collect()],
    )
    .await;

    let client = pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT id, input::text, output::text FROM public.observations
             WHERE trace_id = 'chunks-t' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), OBSERVATIONS);
    for (n, row) in rows.iter().enumerate() {
        let (id, input, output): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(id, format!("chunks-o-{n:04}"));
        assert_eq!(input, json!({ "in": text("in", n) }).to_string(), "{id}");
        assert_eq!(output, json!({ "out": text("out", n) }).to_string(), "{id}");
    }
}
