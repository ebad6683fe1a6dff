//! Property: any permutation of a trace's events, with any duplicates, split
//! over any batches, gives the same rows (the merge as a pure function).

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use swisper_ingest::event::{
    EventBody, Json, ObservationEnd, ObservationStart, StreamId, TraceEvent, TraceStart,
};
use swisper_ingest::merge::{join_rows, merge, Rows};

/// A trace's events, some of which disagree with each other (two starts of
/// the same observation with different names, an end and an error, ...).
fn events_strategy() -> impl Strategy<Value = Vec<TraceEvent>> {
    let event = (0u8..4, 0u8..3, 0i64..5, 0u8..3);
    prop::collection::vec(event, 1..24).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(seq, (kind, obs, second, variant))| {
                let published_at = Utc.timestamp_opt(1_762_336_800 + second, 0).unwrap();
                let observation_id = format!("obs-{obs}");
                let body = match kind {
                    0 => EventBody::TraceStart(TraceStart {
                        name: Some(format!("trace-{variant}")),
                        timestamp: published_at,
                        ..TraceStart::default()
                    }),
                    1 => EventBody::ObservationStart {
                        observation_id,
                        fields: ObservationStart {
                            name: Some(format!("node-{variant}")),
                            observation_type: Some("SPAN".into()),
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
                            ..ObservationEnd::default()
                        },
                    },
                };
                TraceEvent {
                    entry_id: StreamId {
                        ms: 1_762_336_800_000 + seq as u64,
                        seq: 0,
                    },
                    trace_id: "trace-1".into(),
                    project_id: format!("project-{}", variant % 2),
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
    let start = |seq, name: &str, s| TraceEvent {
        entry_id: StreamId { ms: seq, seq: 0 },
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
    assert_eq!(rows.traces[0].first_seen_at, at(1));
}
