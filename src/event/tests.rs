//! Parsing the wire contract: the seed's exact format, the SDK's variants,
//! and every class of bad input with its reason.

use serde_json::{json, Value};

use super::*;

fn entry(fields: &[(&str, &str)]) -> StreamEntry {
    StreamEntry {
        id: StreamId {
            ms: 1_762_336_800_000,
            seq: 0,
        },
        fields: fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec().into(), v.as_bytes().to_vec().into()))
            .collect(),
        deliveries: 1,
    }
}

fn parse(fields: &[(&str, &str)]) -> Result<Parsed, Rejection> {
    parse_entry(&entry(fields), &Limits::default())
}

fn trace_event(fields: &[(&str, &str)]) -> TraceEvent {
    match parse(fields).expect("parses") {
        Parsed::Trace(event) => event,
        other => panic!("not a trace event: {other:?}"),
    }
}

fn metadata(json: &Json) -> Value {
    serde_json::from_str(json.as_str()).unwrap()
}

const TS: &str = "1762336800.25";

#[test]
fn seed_trace_start_fills_every_field() {
    let data = json!({"name": "chat", "user_id": "u1", "session_id": "s1",
                      "timestamp": "2025-11-05T10:00:00.5", "meta": {"k": "v", "extra": 1},
                      "extra": 7, "run_id": "r1", "tags": ["a", "b"]});
    let event = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("data", &data.to_string()),
    ]);
    assert_eq!(event.trace_id, "t1");
    assert_eq!(event.project_id, "p1");
    assert_eq!(event.published_at.timestamp_micros(), 1_762_336_800_250_000);
    let EventBody::TraceStart(start) = event.body else {
        panic!()
    };
    assert_eq!(start.name.as_deref(), Some("chat"));
    assert_eq!(start.user_id.as_deref(), Some("u1"));
    assert_eq!(start.session_id.as_deref(), Some("s1"));
    assert_eq!(start.timestamp.timestamp_micros(), 1_762_336_800_500_000);
    assert_eq!(metadata(start.tags.as_ref().unwrap()), json!(["a", "b"]));
    // The studio's meta: data.meta's keys, then every key without a column
    // (run_id included), which win a clash.
    assert_eq!(
        metadata(&start.metadata),
        json!({"k": "v", "extra": 7, "run_id": "r1"})
    );
}

#[test]
fn a_bare_trace_start_has_no_tags_and_empty_meta_and_a_non_object_meta_is_kept() {
    let event = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
    ]);
    let EventBody::TraceStart(start) = event.body else {
        panic!()
    };
    assert_eq!(start.name, None);
    assert_eq!(start.tags, None);
    assert_eq!(start.timestamp, event.published_at);
    assert_eq!(metadata(&start.metadata), json!({}));

    let event = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("data", r#"{"meta":[1,2],"tags":null}"#),
    ]);
    let EventBody::TraceStart(start) = event.body else {
        panic!()
    };
    assert_eq!(start.tags, None);
    assert_eq!(metadata(&start.metadata), json!({"_meta": [1, 2]}));
}

#[test]
fn seed_observation_events_parse() {
    let start = trace_event(&[
        ("event_type", "observation_start"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("observation_id", "o1"),
        (
            "data",
            r#"{"name":"node","type":"GENERATION","parent_observation_id":"o0","input":{"q":1},"start_time":"2025-11-05T10:00:00"}"#,
        ),
    ]);
    let EventBody::ObservationStart {
        observation_id,
        fields,
    } = start.body
    else {
        panic!()
    };
    assert_eq!(observation_id, "o1");
    assert_eq!(fields.observation_type.as_deref(), Some("GENERATION"));
    assert_eq!(fields.parent_observation_id.as_deref(), Some("o0"));
    assert_eq!(fields.input.unwrap().as_str(), r#"{"q":1}"#);

    let end = trace_event(&[
        ("event_type", "observation_end"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("observation_id", "o1"),
        (
            "data",
            r#"{"output":{"a":[1]},"level":"WARNING","end_time":"2025-11-05T10:00:01+00:00","type":"AGENT","errors":{"x":"y"}}"#,
        ),
    ]);
    let EventBody::ObservationEnd { fields, .. } = end.body else {
        panic!()
    };
    assert!(!fields.is_error);
    assert_eq!(fields.level, "WARNING");
    assert_eq!(fields.observation_type.as_deref(), Some("AGENT"));
    assert_eq!(metadata(&fields.metadata), json!({"errors": {"x": "y"}}));

    let error = trace_event(&[
        ("event_type", "observation_error"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("observation_id", "o1"),
        (
            "data",
            r#"{"error":"boom","end_time":"2025-11-05T10:00:01"}"#,
        ),
    ]);
    assert_eq!(error.event_type(), "observation_error");
    let EventBody::ObservationEnd { fields, .. } = error.body else {
        panic!()
    };
    assert_eq!(fields.level, "ERROR");
    assert_eq!(fields.status_message.as_deref(), Some("boom"));
}

/// The body of an observation event of `event_type` carrying `data`.
fn observation(event_type: &str, data: Value) -> EventBody {
    trace_event(&[
        ("event_type", event_type),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("observation_id", "o1"),
        ("data", &data.to_string()),
    ])
    .body
}

#[test]
fn an_error_s_status_message_is_data_error_kept_in_meta() {
    // An error's status message is data.error first; `error` has no column
    // and stays in meta.
    let EventBody::ObservationEnd { fields, .. } = observation(
        "observation_error",
        json!({"error": "boom", "status_message": "other"}),
    ) else {
        panic!()
    };
    assert_eq!(fields.status_message.as_deref(), Some("boom"));
    assert_eq!(metadata(&fields.metadata), json!({"error": "boom"}));
}

#[test]
fn an_end_s_status_message_is_its_own_and_its_level_defaults() {
    // An end's is data.status_message, and its level defaults to DEFAULT.
    let EventBody::ObservationEnd { fields, .. } = observation(
        "observation_end",
        json!({"error": "boom", "status_message": "other"}),
    ) else {
        panic!()
    };
    assert_eq!(fields.status_message.as_deref(), Some("other"));
    assert_eq!(fields.level, "DEFAULT");
    assert_eq!(fields.end_time.timestamp_micros(), 1_762_336_800_250_000);
}

#[test]
fn a_type_outside_the_studios_enum_is_kept_in_meta() {
    // The row takes the default type.
    let EventBody::ObservationStart { fields, .. } = observation(
        "observation_start",
        json!({"type": "RETRIEVER", "meta": {"k": 1}}),
    ) else {
        panic!()
    };
    assert_eq!(fields.observation_type, None);
    assert_eq!(
        metadata(&fields.metadata),
        json!({"k": 1, "_ingest_original_type": "RETRIEVER"})
    );
    assert_eq!(parse::ORIGINAL_TYPE_KEY, "_ingest_original_type");
}

#[test]
fn the_llm_call_is_read_from_the_output_kept_whole() {
    // As the studio reads it.
    let output = json!({"_llm_model": "gpt-4o",
                        "_llm_tokens": {"prompt": 10, "completion": 5, "total": 15, "cached": 2},
                        "_llm_latency": {"duration_ms": 12.5}});
    let EventBody::ObservationEnd { fields, .. } =
        observation("observation_end", json!({ "output": output }))
    else {
        panic!()
    };
    assert_eq!(
        fields.llm,
        Some(StudioUsage {
            model: Some("gpt-4o".into()),
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            total_tokens: Some(15),
            estimated: false,
        })
    );
    assert_eq!(metadata(fields.output.as_ref().unwrap()), output);
    assert_eq!(metadata(&fields.metadata), json!({}));
}

#[test]
fn llm_usage_without_a_total_is_estimated_from_the_text() {
    // 0.75 tokens a word.
    let output = json!({"_llm_tokens": {"prompt": 100},
                        "_llm_messages": [{"role": "user", "content": "one two three four"}],
                        "_llm_result": "a b c d e f g h"});
    let EventBody::ObservationEnd { fields, .. } =
        observation("observation_end", json!({ "output": output }))
    else {
        panic!()
    };
    assert_eq!(
        fields.llm,
        Some(StudioUsage {
            model: None,
            prompt_tokens: Some(3),
            completion_tokens: Some(6),
            total_tokens: Some(9),
            estimated: true,
        })
    );
}

#[test]
fn an_output_without_llm_keys_has_no_usage() {
    let EventBody::ObservationEnd { fields, .. } =
        observation("observation_end", json!({"output": {"answer": 1}}))
    else {
        panic!()
    };
    assert_eq!(fields.llm, None);
}

#[test]
fn project_id_comes_from_the_field_or_data() {
    let from_data = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("timestamp", TS),
        ("data", r#"{"project_id":"pd"}"#),
    ]);
    assert_eq!(from_data.project_id, "pd");
    let both = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("project_id", "pf"),
        ("timestamp", TS),
        ("data", r#"{"project_id":"pd"}"#),
    ]);
    assert_eq!(both.project_id, "pf");
    let empty_field = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("project_id", ""),
        ("timestamp", TS),
        ("data", r#"{"project_id":"pd"}"#),
    ]);
    assert_eq!(empty_field.project_id, "pd");
}

#[test]
fn times_default_to_the_publish_time() {
    let event = trace_event(&[
        ("event_type", "observation_start"),
        ("trace_id", "t"),
        ("project_id", "p"),
        ("timestamp", TS),
        ("observation_id", "o"),
    ]);
    let EventBody::ObservationStart { fields, .. } = event.body else {
        panic!()
    };
    assert_eq!(fields.start_time, event.published_at);
}

#[test]
fn unknown_top_level_fields_are_kept() {
    let event = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("project_id", "p"),
        ("timestamp", TS),
        ("sdk", "x"),
    ]);
    let EventBody::TraceStart(start) = event.body else {
        panic!()
    };
    assert_eq!(metadata(&start.metadata), json!({"_fields": {"sdk": "x"}}));
}

#[test]
fn heartbeats_are_not_traces() {
    let parsed = parse(&[
        ("event_type", "heartbeat"),
        ("project_id", "p"),
        ("timestamp", TS),
        (
            "data",
            r#"{"project_id":"p","sdk_version":"0.14.3","timestamp":"2025-11-05T10:00:00+00:00"}"#,
        ),
    ])
    .unwrap();
    let Parsed::Heartbeat(beat) = parsed else {
        panic!()
    };
    assert_eq!(beat.sdk_version.as_deref(), Some("0.14.3"));
    assert_eq!(metadata(&beat.metadata), json!({}));
}

/// Each bad class with the reason it must get.
#[test]
fn bad_inputs_get_precise_reasons() {
    let long_id = "x".repeat(1025);
    let ok = |extra: &[(&'static str, &'static str)]| {
        let mut fields = vec![
            ("event_type", "observation_start"),
            ("trace_id", "t"),
            ("project_id", "p"),
            ("timestamp", TS),
            ("observation_id", "o"),
        ];
        for (k, v) in extra {
            fields.retain(|(name, _)| name != k);
            fields.push((k, v));
        }
        fields
    };
    let cases: Vec<(Vec<(&str, &str)>, Reason)> = vec![
        (vec![("trace_id", "t")], Reason::MissingField),
        (
            ok(&[("event_type", "trace_end_of_world")]),
            Reason::UnknownEventType,
        ),
        (ok(&[("trace_id", "")]), Reason::EmptyField),
        (ok(&[("observation_id", "")]), Reason::EmptyField),
        (ok(&[("timestamp", "yesterday")]), Reason::InvalidTimestamp),
        (
            ok(&[("timestamp", "99999999999999")]),
            Reason::InvalidTimestamp,
        ),
        (ok(&[("data", "not json")]), Reason::InvalidData),
        (ok(&[("data", "[1,2]")]), Reason::DataNotObject),
        (ok(&[("data", "\"text\"")]), Reason::DataNotObject),
        (
            ok(&[("data", r#"{"name":{"nested":1}}"#)]),
            Reason::InvalidField,
        ),
        (
            ok(&[("data", r#"{"start_time":"not a time"}"#)]),
            Reason::InvalidTimestamp,
        ),
        (
            ok(&[("data", r#"{"input":"a\u0000b"}"#)]),
            Reason::NulCharacter,
        ),
        (ok(&[("trace_id", "a\0b")]), Reason::NulCharacter),
    ];
    for (fields, reason) in cases {
        let got = parse(&fields).unwrap_err();
        assert_eq!(got.reason, reason, "{fields:?}: {got}");
        assert!(!got.detail.is_empty());
    }
    let mut fields = ok(&[]);
    fields.retain(|(k, _)| *k != "trace_id");
    fields.push(("trace_id", long_id.as_str()));
    assert_eq!(parse(&fields).unwrap_err().reason, Reason::IdTooLong);

    let mut missing_obs = ok(&[]);
    missing_obs.retain(|(k, _)| *k != "observation_id");
    assert_eq!(
        parse(&missing_obs).unwrap_err().reason,
        Reason::MissingField
    );
}

#[test]
fn byte_level_problems_are_rejected() {
    let mut bad_utf8 = entry(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("project_id", "p"),
        ("timestamp", TS),
    ]);
    bad_utf8.fields[1].1 = vec![0xff, 0xfe].into();
    assert_eq!(
        parse_entry(&bad_utf8, &Limits::default())
            .unwrap_err()
            .reason,
        Reason::InvalidUtf8
    );

    let duplicated = entry(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("trace_id", "u"),
        ("project_id", "p"),
        ("timestamp", TS),
    ]);
    assert_eq!(
        parse_entry(&duplicated, &Limits::default())
            .unwrap_err()
            .reason,
        Reason::DuplicateField
    );

    let big = "x".repeat(5000);
    let large = entry(&[
        ("event_type", "trace_start"),
        ("trace_id", "t"),
        ("project_id", "p"),
        ("timestamp", TS),
        ("data", &big),
    ]);
    let limits = Limits {
        max_entry_bytes: 4096,
        ..Limits::default()
    };
    assert_eq!(
        parse_entry(&large, &limits).unwrap_err().reason,
        Reason::TooLarge
    );
}

#[test]
fn over_long_indexed_text_is_truncated_at_a_char_boundary_with_a_note() {
    // 'é' is two bytes: 1023 ASCII bytes then 'é' straddles the limit.
    let session = format!("{}é{}", "s".repeat(1023), "x".repeat(3000));
    let data = json!({"name": "chat", "session_id": session, "user_id": "u"});
    let event = trace_event(&[
        ("event_type", "trace_start"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("data", &data.to_string()),
    ]);
    let EventBody::TraceStart(start) = event.body else {
        panic!()
    };
    assert_eq!(start.session_id.as_deref(), Some("s".repeat(1023).as_str()));
    assert_eq!(
        metadata(&start.metadata)["_ingest_repairs"],
        json!(["data.session_id truncated from 4025 to 1023 bytes (indexed column)"])
    );

    let output = json!({"_llm_model": "m".repeat(5000), "text": "hi"});
    let event = trace_event(&[
        ("event_type", "observation_end"),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("observation_id", "o1"),
        ("timestamp", TS),
        ("data", &json!({ "output": output }).to_string()),
    ]);
    let EventBody::ObservationEnd { fields, .. } = event.body else {
        panic!()
    };
    let model = fields.llm.unwrap().model.unwrap();
    assert_eq!(model.len(), parse::MAX_INDEXED_TEXT_BYTES);
    // The output keeps the model whole.
    assert_eq!(
        metadata(fields.output.as_ref().unwrap())["_llm_model"]
            .as_str()
            .unwrap()
            .len(),
        5000
    );
    assert!(metadata(&fields.metadata)["_ingest_repairs"][0]
        .as_str()
        .unwrap()
        .starts_with("output._llm_model truncated from 5000"));
}

/// The body of an observation event whose data is this exact text.
fn observation_text(event_type: &str, data: &str) -> EventBody {
    trace_event(&[
        ("event_type", event_type),
        ("trace_id", "t1"),
        ("project_id", "p1"),
        ("timestamp", TS),
        ("observation_id", "o1"),
        ("data", data),
    ])
    .body
}

#[test]
fn input_and_output_keep_the_text_the_sdk_wrote() {
    // Python's json.dumps: spaces after separators, keys in insertion
    // order, non-ASCII as \u escapes; numbers beyond f64 stay exact.
    let input = r#"{"z": 1, "a": [1.50, 12345678901234567890123], "s": "Gr\u00fcezi \"du\""}"#;
    let data = format!(r#"{{"name": "n", "input": {input}}}"#);
    let EventBody::ObservationStart { fields, .. } = observation_text("observation_start", &data)
    else {
        panic!()
    };
    assert_eq!(fields.input.as_ref().map(Json::as_str), Some(input));

    let output = r#"{"messages": ["b", "a"], "n": 1e400}"#;
    let data = format!(r#"{{"output": {output}, "level": "DEFAULT"}}"#);
    let EventBody::ObservationEnd { fields, .. } = observation_text("observation_end", &data)
    else {
        panic!()
    };
    assert_eq!(fields.output.as_ref().map(Json::as_str), Some(output));
    assert_eq!(fields.llm, None);
}

#[test]
fn text_that_needs_the_tree_parse_gets_it() {
    // A surrogate pair (an emoji as json.dumps escapes it) is valid, and
    // goes through the tree parse: same value, its text rewritten.
    let EventBody::ObservationStart { fields, .. } = observation_text(
        "observation_start",
        r#"{"input": {"s": "\ud83d\ude00", "b": 2}}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        metadata(fields.input.as_ref().unwrap()),
        json!({"s": "\u{1F600}", "b": 2})
    );
    // An escaped backslash before "u0000" is no NUL.
    let EventBody::ObservationStart { fields, .. } =
        observation_text("observation_start", r#"{"input": {"s": "\\u0000"}}"#)
    else {
        panic!()
    };
    assert_eq!(
        metadata(fields.input.as_ref().unwrap()),
        json!({"s": "\\u0000"})
    );
    // A lone surrogate is repaired and noted, as before.
    let EventBody::ObservationStart { fields, .. } =
        observation_text("observation_start", r#"{"input": {"s": "a\ud800b"}}"#)
    else {
        panic!()
    };
    assert_eq!(
        metadata(fields.input.as_ref().unwrap()),
        json!({"s": "a\u{FFFD}b"})
    );
    assert_eq!(
        metadata(&fields.metadata)[payload::REPAIRS_KEY],
        json!([lenient::LONE_SURROGATE])
    );
}

#[test]
fn an_llm_key_spelled_with_escapes_is_still_read() {
    // "\u005f" is "_": the studio's json.loads reads this key as _llm_model.
    let EventBody::ObservationEnd { fields, .. } = observation_text(
        "observation_end",
        r#"{"output": {"\u005fllm_model": "gpt-4o", "\u005fllm_tokens": {"prompt": 3, "completion": 4, "total": 7}}}"#,
    ) else {
        panic!()
    };
    let usage = fields.llm.expect("the call is read");
    assert_eq!(usage.model.as_deref(), Some("gpt-4o"));
    assert_eq!(usage.total_tokens, Some(7));
}

#[test]
fn meta_and_the_rest_of_data_merge_whatever_their_text() {
    // data wins a clash with meta; meta's values keep their text.
    let EventBody::ObservationStart { fields, .. } = observation_text(
        "observation_start",
        r#"{"meta": {"k": {"y": 1, "x": 2}, "clash": "meta"}, "clash": "data", "extra": [3, 1]}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        fields.metadata.as_str(),
        r#"{"clash":"data","extra":[3, 1],"k":{"y": 1, "x": 2}}"#
    );
}
