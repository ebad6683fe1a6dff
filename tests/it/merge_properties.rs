//! Property: any permutation of traces' events, with any duplicates, split
//! over any batches, gives the same rows (the merge as a pure function).
//!
//! Rows are keyed by id alone (the studio's keys); the write path hands the
//! merge only events whose project agrees with their row's, so the events
//! here are of one project. An observation id reused by two traces is one
//! row whose trace id is the newest event's.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use swisper_ingest::event::{
    EventBody, Json, ObservationEnd, ObservationStart, StreamId, TraceEvent, TraceStart,
};
use swisper_ingest::merge::{join_rows, merge, Rows};

/// Two traces' events, some of which disagree with each other (two starts
/// of the same observation with different names, an end and an error, ...).
fn events_strategy() -> impl Strategy<Value = Vec<TraceEvent>> {
    let event = (0u8..4, 0u8..3, 0i64..5, 0u8..3, 0u8..2);
    prop::collection::vec(event, 1..24).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(seq, (kind, obs, second, variant, trace))| {
                let published_at = Utc.timestamp_opt(1_762_336_800 + second, 0).unwrap();
                let observation_id = format!("obs-{obs}");
                let body = match kind {
                    0 => EventBody::TraceStart(TraceStart {
                        name: (variant > 0).then(|| format!("trace-{variant}")),
                        tags: (variant == 2).then(|| Json::from_value(&serde_json::json!(["x"]))),
                        timestamp: published_at,
                        metadata: Json::from_value(&serde_json::json!({ "run_id": variant })),
                        ..TraceStart::default()
                    }),
                    1 => EventBody::ObservationStart {
                        observation_id,
                        fields: ObservationStart {
                            name: Some(format!("node-{variant}")),
                            observation_type: Some(
                                ["SPAN", "TOOL", "AGENT"][variant as usize].into(),
                            ),
                            input: Some(Json::from_value(&serde_json::json!({ "v": variant }))),
                            start_time: published_at,
                            ..ObservationStart::default()
                        },
                    },
                    _ => EventBody::ObservationEnd {
                        observation_id,
                        fields: ObservationEnd {
                            is_error: kind == 3,
                            level: if kind == 3 {
                                "ERROR".into()
                            } else {
                                "DEFAULT".into()
                            },
                            output: Some(Json::from_value(&serde_json::json!({ "out": variant }))),
                            end_time: published_at,
                            observation_type: (variant == 1).then(|| "GENERATION".into()),
                            metadata: Json::from_value(&serde_json::json!({ "e": variant })),
                            ..ObservationEnd::default()
                        },
                    },
                };
                TraceEvent {
                    entry_id: StreamId {
                        ms: 1_762_336_800_000 + seq as u64,
                        seq: 0,
                    },
                    trace_id: format!("trace-{trace}"),
                    project_id: "project-1".into(),
                    published_at,
                    body,
                }
            })
            .collect()
    })
}

/// Arrival: a permutation of the events with duplicates, cut into batches.
fn arrival_strategy() -> impl Strategy<Value = (Vec<TraceEvent>, Vec<usize>, Vec<usize>)> {
    events_strategy().prop_flat_map(|events| {
        let n = events.len();
        let with_duplicates = prop::collection::vec(0..n, n..n * 3);
        let cuts = prop::collection::vec(0..n * 3, 0..5);
        (Just(events), with_duplicates, cuts)
    })
}

fn rows_in_batches<'a>(events: &'a [TraceEvent], order: &[usize], cuts: &[usize]) -> Rows<'a> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (order.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(order.len());
    let mut rows = Rows::default();
    let mut start = 0;
    for cut in cuts {
        let batch = order[start..cut.max(start)].iter().map(|&i| &events[i]);
        rows = join_rows(rows, merge(batch));
        start = cut.max(start);
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_order_duplicates_and_batching_give_the_same_rows((events, order, cuts) in arrival_strategy()) {
        // Every event appears at least once, in a shuffled order with repeats.
        let mut order = order;
        order.extend(0..events.len());
        let canonical = merge(events.iter());
        let arrived = rows_in_batches(&events, &order, &cuts);
        prop_assert_eq!(arrived, canonical);
    }
}

#[test]
fn the_newest_start_wins_and_the_end_type_replaces_the_start_type() {
    let at = |s: i64| Utc.timestamp_opt(1_762_336_800 + s, 0).unwrap();
    // Redis's clock (the entry ids) runs 100 s ahead of the producer's.
    let entry = |seq: u64| StreamId {
        ms: 1_762_336_900_000 + seq,
        seq: 0,
    };
    let start = |seq, name: &str, s| TraceEvent {
        entry_id: entry(seq),
        trace_id: "t".into(),
        project_id: "p".into(),
        published_at: at(s),
        body: EventBody::ObservationStart {
            observation_id: "o".into(),
            fields: ObservationStart {
                name: Some(name.into()),
                start_time: at(s),
                ..Default::default()
            },
        },
    };
    let events = [start(2, "late", 5), start(1, "early", 1)];
    let rows = merge(events.iter());
    assert_eq!(rows.observations.len(), 1);
    assert_eq!(
        rows.observations[0].start.unwrap().value.name.as_deref(),
        Some("late")
    );
    // Any event of a trace makes its trace row, even without trace_start.
    assert_eq!(rows.traces.len(), 1);
    assert!(rows.traces[0].start.is_none());
    // The trace's time before its start: when Redis received its oldest
    // entry, not a producer's publish time.
    assert_eq!(rows.traces[0].first_seen_at, entry(1).time());
    assert_eq!(rows.traces[0].project_id, "p");

    // The end keeps its own type (the store combines: the end's wins), and
    // the observation's trace id is the newest event's, whatever its kind.
    let end = TraceEvent {
        entry_id: entry(3),
        trace_id: "t2".into(),
        project_id: "p".into(),
        published_at: at(6),
        body: EventBody::ObservationEnd {
            observation_id: "o".into(),
            fields: ObservationEnd {
                observation_type: Some("GENERATION".into()),
                end_time: at(6),
                ..Default::default()
            },
        },
    };
    let events = [end, start(2, "late", 5), start(1, "early", 1)];
    let rows = merge(events.iter());
    let observation = &rows.observations[0];
    assert_eq!(observation.project_id, "p");
    assert_eq!(observation.seen.value, "t2");
    assert_eq!(
        observation.end.unwrap().value.observation_type.as_deref(),
        Some("GENERATION")
    );
    assert_eq!(observation.start.unwrap().value.observation_type, None);
    // Both traces have a row, sorted by id.
    let ids: Vec<&str> = rows.traces.iter().map(|t| t.id).collect();
    assert_eq!(ids, ["t", "t2"]);
}
