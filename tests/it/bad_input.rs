//! The bad-input catalogue: each class published between good neighbours.
//! Every bad entry is dead-lettered with its precise reason or stored as far
//! as it can be (docs/event-format.md says which), the neighbours are all
//! stored, the service keeps running, and every outcome is counted.

use std::time::Duration;

use crate::harness::*;

/// What must become of a bad entry.
enum Expect {
    DeadLetter(&'static str),
    /// Stored; this SQL must return true.
    Stored(&'static str),
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn observation(obs: &str, event_type: &str, data: &str) -> Fields {
    fields(&[
        ("event_type", event_type),
        ("trace_id", "bad-trace"),
        ("project_id", "p"),
        ("timestamp", "1762336800.5"),
        ("observation_id", obs),
        ("data", data),
    ])
}

fn with(mut base: Fields, name: &[u8], value: &[u8]) -> Fields {
    base.retain(|(k, _)| k != name);
    base.push((name.to_vec(), value.to_vec()));
    base
}

fn without(mut base: Fields, name: &str) -> Fields {
    base.retain(|(k, _)| k != name.as_bytes());
    base
}

fn refs(f: &Fields) -> Vec<(&[u8], &[u8])> {
    f.iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

fn catalogue() -> Vec<(&'static str, Fields, Expect)> {
    use Expect::*;
    let start = |obs: &str| observation(obs, "observation_start", r#"{"name":"n"}"#);
    let deep = format!(
        r#"{{"input":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let twenty_mb = format!(r#"{{"input":"{}"}}"#, "x".repeat(20 * 1024 * 1024));
    vec![
        ("invalid UTF-8 in event_type", with(start("o1"), b"event_type", b"trace\xff"), DeadLetter("invalid_utf8")),
        ("invalid UTF-8 in data", with(start("o2"), b"data", b"{\"name\":\"\xc3\x28\"}"), DeadLetter("invalid_utf8")),
        ("invalid UTF-8 in a field name", { let mut f = start("o3"); f.push((b"\xfe\xff".to_vec(), b"v".to_vec())); f }, DeadLetter("invalid_utf8")),
        ("data not JSON", with(start("o4"), b"data", b"name=n"), DeadLetter("invalid_data")),
        ("data a JSON array", with(start("o5"), b"data", b"[1,2]"), DeadLetter("data_not_object")),
        ("data a JSON number", with(start("o6"), b"data", b"42"), DeadLetter("data_not_object")),
        ("data a JSON string", with(start("o7"), b"data", b"\"text\""), DeadLetter("data_not_object")),
        ("missing trace_id", without(start("o8"), "trace_id"), DeadLetter("missing_field")),
        ("missing observation_id", without(start("o9"), "observation_id"), DeadLetter("missing_field")),
        ("empty observation_id", with(start("o10"), b"observation_id", b""), DeadLetter("empty_field")),
        ("missing timestamp", without(start("o11"), "timestamp"), DeadLetter("missing_field")),
        ("trace id over 1 KB", with(start("o12"), b"trace_id", "t".repeat(1025).as_bytes()), DeadLetter("id_too_long")),
        ("unknown event type", with(start("o13"), b"event_type", b"span_begin"), DeadLetter("unknown_event_type")),
        ("timestamp in the wrong format", with(start("o14"), b"timestamp", b"2025-11-05T10:00:00"), DeadLetter("invalid_timestamp")),
        ("timestamp out of range", with(start("o15"), b"timestamp", b"99999999999"), DeadLetter("invalid_timestamp")),
        ("start_time out of range", observation("o16", "observation_start", r#"{"start_time":"1800-01-01T00:00:00"}"#), DeadLetter("invalid_timestamp")),
        ("\\u0000 in data", observation("o17", "observation_start", r#"{"input":{"text":"a\u0000b"}}"#), DeadLetter("nul_character")),
        ("NUL byte in an id", with(start("o18"), b"trace_id", b"bad\0trace"), DeadLetter("nul_character")),
        ("JSON nested 10,000 levels", observation("o19", "observation_start", &deep), DeadLetter("invalid_data")),
        ("a 20 MB entry", observation("o20", "observation_start", &twenty_mb), DeadLetter("too_large")),
        ("duplicated field names", { let mut f = start("o21"); f.push((b"trace_id".to_vec(), b"other".to_vec())); f }, DeadLetter("duplicate_field")),
        ("a text field holding an object", observation("o22", "observation_start", r#"{"name":{"first":"n"}}"#), DeadLetter("invalid_field")),
        ("compressed data that is not gzip", observation("o23", "observation_start", r#"{"_compressed":true,"_data":"bm90IGd6aXA="}"#), DeadLetter("decompression_failed")),
        ("SQL-looking strings", observation("o24", "observation_start", r#"{"name":"'); DROP TABLE traces; --","input":{"q":"1 OR 1=1"}}"#),
            Stored("SELECT name = '''); DROP TABLE traces; --' AND input->>'q' = '1 OR 1=1' FROM observations WHERE id = 'o24'")),
        ("huge numbers", observation("o25", "observation_start", r#"{"input":{"big":123456789012345678901234567890,"tiny":1e-400,"huge":1e400}}"#),
            Stored("SELECT (input->>'big') = '123456789012345678901234567890' AND (input::jsonb->'huge')::numeric = 1e400 FROM observations WHERE id = 'o25'")),
        ("Python NaN and Infinity", observation("o26", "observation_end", r#"{"output":{"score":NaN,"max":Infinity}}"#),
            Stored("SELECT output::jsonb = '{\"max\": null, \"score\": null}' AND meta::jsonb ? '_ingest_repairs' FROM observations WHERE id = 'o26'")),
        ("an observation whose parent is itself", observation("o27", "observation_start", r#"{"name":"loop","parent_observation_id":"o27"}"#),
            Stored("SELECT parent_observation_id IS NULL AND name = 'loop' AND meta::jsonb ? '_ingest_repairs' FROM observations WHERE id = 'o27'")),
        ("an end for an observation that never started", observation("o28", "observation_end", r#"{"output":{"a":1},"level":"WARNING"}"#),
            Stored("SELECT name IS NULL AND level = 'WARNING' AND output->>'a' = '1' AND type = 'SPAN' AND end_time IS NOT NULL FROM observations WHERE id = 'o28'")),
        ("an unknown extra field", { let mut f = start("o29"); f.push((b"sdk".to_vec(), b"x".to_vec())); f },
            Stored("SELECT meta->'_fields'->>'sdk' = 'x' FROM observations WHERE id = 'o29'")),
        ("an observation type outside the studio's enum", observation("o30", "observation_start", r#"{"name":"r","type":"RETRIEVER"}"#),
            Stored("SELECT type = 'SPAN' AND meta->>'_ingest_original_type' = 'RETRIEVER' FROM observations WHERE id = 'o30'")),
        // Ids are global in the studio's tables: bad-trace is p's (its first
        // stored event, o24, came first).
        ("an event of another project for a stored trace", with(start("o31"), b"project_id", b"q"), DeadLetter("project_mismatch")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_is_dead_lettered_or_stored_and_neighbours_survive() {
    let env = TestEnv::new("catalogue").await;
    let mut redis = env.redis();
    let catalogue = catalogue();
    assert!(catalogue.len() >= 20);
    let mut expected_dead = Vec::new();
    for (i, (class, bad, expect)) in catalogue.iter().enumerate() {
        let good = |side: &str| {
            fields(&[
                ("event_type", "observation_start"),
                ("trace_id", "good-trace"),
                ("project_id", "p"),
                ("timestamp", "1762336800.5"),
                ("observation_id", &format!("good-{side}-{i}")),
                ("data", r#"{"name":"fine"}"#),
            ])
        };
        env.publish_raw(&mut redis, &refs(&good("before")));
        let id = env.publish_raw(&mut redis, &refs(bad));
        env.publish_raw(&mut redis, &refs(&good("after")));
        if let Expect::DeadLetter(reason) = expect {
            expected_dead.push((id, *reason, *class));
        }
    }
    let service = env.spawn("catalogue", &[]);
    let db = env.db().await;
    let neighbours = 2 * catalogue.len() as i64;
    let done = wait_for_async(Duration::from_secs(60), || async {
        count(
            &db,
            "SELECT count(*) FROM observations WHERE trace_id = 'good-trace'",
        )
        .await
            == neighbours
            && count(&db, "SELECT count(*) FROM swisper_ingest.dead_letters").await
                == expected_dead.len() as i64
    })
    .await;
    assert!(done, "log: {}", service.log());

    let rows = db
        .query(
            "SELECT stream_entry_id, reason_code, reason FROM swisper_ingest.dead_letters",
            &[],
        )
        .await
        .unwrap();
    for (id, reason, class) in &expected_dead {
        let row = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == *id)
            .unwrap_or_else(|| panic!("{class}: no dead letter"));
        assert_eq!(
            row.get::<_, String>(1),
            *reason,
            "{class}: {}",
            row.get::<_, String>(2)
        );
    }
    for (class, _, expect) in &catalogue {
        if let Expect::Stored(check) = expect {
            let holds: Option<bool> = db
                .query_opt(*check, &[])
                .await
                .unwrap_or_else(|e| panic!("{class}: {e:?}"))
                .map(|r| r.get(0));
            assert_eq!(holds, Some(true), "{class}: {check}");
        }
    }
    // Still running, nothing pending, and every outcome counted.
    assert!(matches!(service.get("/healthz"), Some((200, _))));
    assert!(wait_for(Duration::from_secs(30), || service
        .json("/api/v1/observability/metrics")
        .and_then(|j| j["pending"].as_u64())
        == Some(0)));
    let dead_lettered: f64 = ["observation_start", "observation_end", "unknown"]
        .iter()
        .filter_map(|t| {
            service.metric(&format!(
                "swisper_ingest_events_total{{event_type=\"{t}\",outcome=\"dead_lettered\"}}"
            ))
        })
        .sum();
    assert_eq!(dead_lettered as usize, expected_dead.len());
}
