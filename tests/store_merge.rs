//! The merge through PostgreSQL: batches of a trace's events, in random order
//! with duplicates, written by two concurrent writers (two replicas), give
//! exactly the rows of the pure merge of all events.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use swisper_ingest::config::DatabaseSettings;
use swisper_ingest::event::{
    EventBody, Json, LlmUsage, ObservationEnd, ObservationStart, Parsed, StreamEntry, StreamId,
    TraceEvent, TraceStart,
};
use swisper_ingest::merge::merge;
use swisper_ingest::retention::Horizons;
use swisper_ingest::store::{connect_pool, migrate, Pool};
use swisper_ingest::write_path::{commit, BatchItem};

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_762_336_800 + second, 0).unwrap()
}

/// A trace's events with conflicts: repeated starts and ends of the same
/// observations with different content and times.
fn random_events(rng: &mut StdRng, case: usize) -> Vec<TraceEvent> {
    let trace_id = format!("case-{case}");
    (0..rng.gen_range(3..20))
        .map(|seq| {
            let second = rng.gen_range(0..4);
            let variant: u8 = rng.gen_range(0..3);
            let observation_id = format!("{trace_id}-obs-{}", rng.gen_range(0..3));
            let body = match rng.gen_range(0..4) {
                0 => EventBody::TraceStart(TraceStart {
                    name: Some(format!("trace-{variant}")),
                    user_id: Some("u".into()),
                    meta: Some(Json::from_value(&json!({"v": variant}))),
                    timestamp: at(second),
                    metadata: Json::from_value(&json!({"extra": variant})),
                    ..TraceStart::default()
                }),
                1 => EventBody::ObservationStart {
                    observation_id,
                    fields: ObservationStart {
                        name: Some(format!("node-{variant}")),
                        observation_type: Some("SPAN".into()),
                        parent_observation_id: (variant > 0).then(|| format!("{trace_id}-obs-0")),
                        input: Some(Json::from_value(&json!({"in": variant}))),
                        start_time: at(second),
                        metadata: Json::from_value(
                            &json!({"meta": {"run_id": variant}, "same": "start"}),
                        ),
                    },
                },
                kind => EventBody::ObservationEnd {
                    observation_id,
                    fields: ObservationEnd {
                        is_error: kind == 3,
                        observation_type: (variant == 2).then(|| "AGENT".to_owned()),
                        level: if kind == 3 {
                            "ERROR".into()
                        } else {
                            "DEFAULT".into()
                        },
                        output: Some(Json::from_value(&json!({"out": variant}))),
                        status_message: (kind == 3).then(|| "boom".to_owned()),
                        end_time: at(second + 1),
                        metadata: Json::from_value(&json!({"same": "end"})),
                        llm: (variant == 1).then(|| LlmUsage {
                            model: Some("m".into()),
                            total_tokens: Some(7),
                            duration_ms: Some(1.5),
                            ..LlmUsage::default()
                        }),
                    },
                },
            };
            TraceEvent {
                entry_id: StreamId {
                    ms: 1_000 + case as u64 * 100 + seq,
                    seq: 0,
                },
                trace_id: trace_id.clone(),
                project_id: format!("p-{variant}"),
                published_at: at(second),
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

/// The rows the pure merge says the database must hold, as the SQL query
/// below renders them (generated columns included).
fn expected(events: &[TraceEvent]) -> (Vec<Value>, Vec<Value>) {
    let rows = merge(events.iter());
    let traces = rows
        .traces
        .iter()
        .map(|t| {
            let start = t.start.map(|s| s.value);
            json!({
                "id": t.id, "project_id": t.seen.value, "name": start.and_then(|s| s.name.clone()),
                "user_id": start.and_then(|s| s.user_id.clone()), "meta": json_of(start.and_then(|s| s.meta.as_ref())),
                "metadata": json_of(start.map(|s| &s.metadata)),
                "timestamp": start.map(|s| s.timestamp).unwrap_or(t.first_seen_at).timestamp(),
            })
        })
        .collect();
    let observations = rows
        .observations
        .iter()
        .map(|o| {
            let start = o.start.map(|s| s.value);
            let end = o.end.map(|e| e.value);
            let mut metadata = json_of(start.map(|s| &s.metadata)).as_object().cloned().unwrap_or_default();
            metadata.extend(json_of(end.map(|e| &e.metadata)).as_object().cloned().unwrap_or_default());
            let llm = end.and_then(|e| e.llm.as_ref());
            json!({
                "id": o.id, "trace_id": o.seen.value.trace_id, "project_id": o.seen.value.project_id,
                "name": start.and_then(|s| s.name.clone()),
                "type": end.and_then(|e| e.observation_type.clone()).or_else(|| start.and_then(|s| s.observation_type.clone())).unwrap_or_else(|| "SPAN".into()),
                "parent": start.and_then(|s| s.parent_observation_id.clone()),
                "input": json_of(start.and_then(|s| s.input.as_ref())),
                "output": json_of(end.and_then(|e| e.output.as_ref())),
                "start_time": start.map(|s| s.start_time.timestamp()),
                "end_time": end.map(|e| e.end_time.timestamp()),
                "level": end.map(|e| e.level.clone()).unwrap_or_else(|| "DEFAULT".into()),
                "status_message": end.and_then(|e| e.status_message.clone()),
                "metadata": metadata,
                "llm_model": llm.and_then(|l| l.model.clone()),
                "llm_total_tokens": llm.and_then(|l| l.total_tokens),
                "llm_duration_ms": llm.and_then(|l| l.duration_ms),
            })
        })
        .collect();
    (traces, observations)
}

async fn stored(pool: &Pool, trace_id: &str) -> (Vec<Value>, Vec<Value>) {
    let client = pool.get().await.unwrap();
    let traces = client
        .query(
            "SELECT json_build_object('id', id, 'project_id', project_id, 'name', name, 'user_id', user_id,
                    'meta', meta, 'metadata', metadata, 'timestamp', extract(epoch from \"timestamp\")::bigint)
             FROM traces WHERE id = $1 ORDER BY project_id COLLATE \"C\"",
            &[&trace_id],
        )
        .await
        .unwrap();
    let observations = client
        .query(
            "SELECT json_build_object('id', id, 'trace_id', trace_id, 'project_id', project_id, 'name', name,
                    'type', type, 'parent', parent_observation_id, 'input', input, 'output', output,
                    'start_time', extract(epoch from start_time)::bigint, 'end_time', extract(epoch from end_time)::bigint,
                    'level', level, 'status_message', status_message, 'metadata', metadata,
                    'llm_model', llm_model, 'llm_total_tokens', llm_total_tokens, 'llm_duration_ms', llm_duration_ms)
             FROM observations WHERE id LIKE $1 || '-%' ORDER BY project_id COLLATE \"C\", id COLLATE \"C\"",
            &[&trace_id],
        )
        .await
        .unwrap();
    (
        traces.iter().map(|r| r.get(0)).collect(),
        observations.iter().map(|r| r.get(0)).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_any_order_on_two_writers_give_the_pure_merge() {
    let env = common::TestEnv::new("store_merge").await;
    let settings = DatabaseSettings {
        database_url: env.database_url.parse().unwrap(),
        db_pool_size: 4,
    };
    let target = settings.target().unwrap();
    migrate::run(&target).await.unwrap();
    let pool = connect_pool(&target, settings.db_pool_size).unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);

    for case in 0..40 {
        let events = random_events(&mut rng, case);
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
        let write = |batches: Vec<(usize, Vec<BatchItem>)>| {
            let pool = pool.clone();
            async move {
                // Retention on with a horizon that keeps every event: the
                // late-event checks run and must not change any row.
                let horizons =
                    Horizons::fixed(Some(std::time::Duration::from_secs(100 * 365 * 86_400)));
                for (_, mut batch) in batches {
                    commit(&pool, "stream", &horizons, &mut batch)
                        .await
                        .expect("commit");
                }
            }
        };
        tokio::join!(write(left), write(right));

        let trace_id = format!("case-{case}");
        assert_eq!(
            stored(&pool, &trace_id).await,
            expected(&events),
            "case {case}"
        );
    }
}
