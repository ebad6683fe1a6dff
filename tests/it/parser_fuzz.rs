//! The wire parser never panics, whatever bytes arrive: a bounded fuzz run
//! (proptest) over arbitrary fields, over mutations of valid entries, and
//! over arbitrary LLM outputs (the studio's token estimate reads any JSON).

use proptest::prelude::*;
use serde_json::{json, Value};
use swisper_ingest::event::{parse_entry, EventBody, Limits, Parsed, StreamEntry, StreamId};

fn entry(fields: Vec<(Vec<u8>, Vec<u8>)>) -> StreamEntry {
    StreamEntry {
        id: StreamId { ms: 1, seq: 0 },
        fields: fields
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect(),
        deliveries: 1,
    }
}

const NAMES: [&str; 7] = [
    "event_type",
    "trace_id",
    "project_id",
    "timestamp",
    "observation_id",
    "data",
    "other",
];

fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(NAMES.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "trace_start", "observation_start", "observation_end", "observation_error", "heartbeat",
            "1762336800.5", "NaN", "-1", "1e309", "",
            r#"{"_compressed":true,"_data":"H4sIAAAAAAAA/6tWyk5NzStRslIqS8wpTVWqBQBXp0ZiEQAAAA=="}"#,
            r#"{"name":"n","input":{"a":[1,2,{"b":null}]},"start_time":"2025-11-05T10:00:00"}"#,
            r#"{"level":"ERROR","end_time":"2025-11-05 10:00:00.123+02:00","output":NaN}"#,
            r#"{"type":"RETRIEVER","meta":[1,{"a":null}],"tags":"x","run_id":7}"#,
            r#"{"output":{"_llm_model":["m"],"_llm_tokens":{"prompt":1e400,"completion":-0.0,"total":0},"_llm_messages":[{"content":{"a":[" x y",null,true]}},"s"],"_llm_result":"a bc"}}"#,
            r#"{"output":{"_llm_tokens":[1,2],"_llm_result":0.0}}"#,
        ])
        .prop_map(|v| v.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        "\\PC{0,64}".prop_map(|s| s.into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_fields_never_panic(fields in prop::collection::vec((field_name(), field_value()), 0..8)) {
        let _ = parse_entry(&entry(fields), &Limits::default());
    }

    #[test]
    fn mutated_valid_data_never_panics(cut in 0usize..200, byte in any::<u8>()) {
        let data = br#"{"name":"n","type":"SPAN","parent_observation_id":"p","input":{"x":"\ud83d\ude00 \u00e9"},"start_time":"2025-11-05T10:00:00.5"}"#;
        let mut data = data.to_vec();
        let at = cut % data.len();
        data[at] = byte;
        let fields = vec![
            (b"event_type".to_vec(), b"observation_start".to_vec()),
            (b"trace_id".to_vec(), b"t".to_vec()),
            (b"project_id".to_vec(), b"p".to_vec()),
            (b"timestamp".to_vec(), b"1762336800.5".to_vec()),
            (b"observation_id".to_vec(), b"o".to_vec()),
            (b"data".to_vec(), data),
        ];
        let _ = parse_entry(&entry(fields), &Limits::default());
    }
}

/// Any JSON value, a few levels deep, with strings of any characters
/// (Unicode whitespace and separators included).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ \\t\\n\\u{1c}-\\u{1f}\\u{85}\\u{a0}\\u{2028}\\u{3000}a-c'\"\\\\]{0,12}"
            .prop_map(Value::String),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_ ]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// An observation_end whose output has any `_llm_*` values parses
    /// without a panic, and what it reports fits the studio's int4 columns
    /// with estimates never negative.
    #[test]
    fn any_llm_output_never_panics(
        tokens in json_value(),
        messages in json_value(),
        result in json_value(),
        model in json_value(),
    ) {
        let output = json!({
            "_llm_model": model,
            "_llm_tokens": tokens,
            "_llm_messages": messages,
            "_llm_result": result,
        });
        let data = json!({ "output": output }).to_string();
        let fields = vec![
            (b"event_type".to_vec(), b"observation_end".to_vec()),
            (b"trace_id".to_vec(), b"t".to_vec()),
            (b"project_id".to_vec(), b"p".to_vec()),
            (b"timestamp".to_vec(), b"1762336800.5".to_vec()),
            (b"observation_id".to_vec(), b"o".to_vec()),
            (b"data".to_vec(), data.into_bytes()),
        ];
        if let Ok(Parsed::Trace(event)) = parse_entry(&entry(fields), &Limits::default()) {
            let EventBody::ObservationEnd { fields, .. } = event.body else {
                panic!("an observation_end parsed as something else");
            };
            let usage = fields.llm.expect("an output with _llm_ keys has usage");
            if usage.estimated {
                for count in [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens] {
                    prop_assert!(count.is_none_or(|n| n >= 0), "{usage:?}");
                }
            }
        }
    }
}

#[test]
fn a_valid_entry_still_parses() {
    let fields = vec![
        (b"event_type".to_vec(), b"trace_start".to_vec()),
        (b"trace_id".to_vec(), b"t".to_vec()),
        (b"project_id".to_vec(), b"p".to_vec()),
        (b"timestamp".to_vec(), b"1762336800.5".to_vec()),
    ];
    assert!(matches!(
        parse_entry(&entry(fields), &Limits::default()),
        Ok(Parsed::Trace(_))
    ));
}
