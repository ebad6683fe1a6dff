//! The wire parser never panics, whatever bytes arrive: a bounded fuzz run
//! (proptest) over arbitrary fields and over mutations of valid entries.

use proptest::prelude::*;
use swisper_ingest::event::{parse_entry, Limits, Parsed, StreamEntry, StreamId};

fn entry(fields: Vec<(Vec<u8>, Vec<u8>)>) -> StreamEntry {
    StreamEntry {
        id: StreamId { ms: 1, seq: 0 },
        fields,
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
