//! Microbenchmarks of the service's pure hot path, on realistic entries (the
//! shape `loadgen` publishes: LangGraph states of 1.1-2.2 KB, data of 1 KB or
//! more gzip+base64 compressed as the SDK does):
//!
//! - `parse_entry`: one entry to a typed event, by event type, plain and
//!   compressed;
//! - `prepare`: a writer batch of 1,000 mixed entries parsed (what the writer
//!   does before each transaction), the studio's token reading included;
//! - `merge`: the same 1,000 events folded into rows;
//! - `plan`: those rows turned into the studio's columns (type, meta, start
//!   time, costs from a price book), as for rows new to the database;
//! - `inflate`: the gzip step alone, as the service does it (a fresh decoder
//!   per entry) and with one reused decoder state, to size that lever.
//!
//! Short on purpose: `cargo bench --bench hot_path` finishes in about a
//! minute. Numbers are per entry unless the name says otherwise.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::str::FromStr;

use rust_decimal::Decimal;
use swisper_ingest::cost::{provider_of, Price, PriceBook};
use swisper_ingest::event::{gzip, parse_entry, Limits, Parsed, StreamEntry, StreamId};
use swisper_ingest::merge;
use swisper_ingest::store::rows;

const WORDS: &[&str] = &[
    "meeting",
    "calendar",
    "tomorrow",
    "email",
    "project",
    "report",
    "summary",
    "client",
    "team",
    "schedule",
    "update",
    "review",
    "draft",
    "send",
    "budget",
    "quarter",
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "for",
    "with",
    "please",
    "Zürich",
    "Besprechung",
    "réunion",
    "status",
    "plan",
];

fn sentence(rng: &mut StdRng) -> String {
    let n = rng.gen_range(6..40);
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn state(rng: &mut StdRng, target: usize) -> Value {
    let mut messages = Vec::new();
    let mut size = 300;
    while size < target {
        let content = sentence(rng);
        size += content.len() + 36;
        messages.push(json!({"role": if messages.len() % 2 == 0 { "user" } else { "assistant" }, "content": content}));
    }
    json!({"messages": messages, "user_id": "user-42", "intent": "productivity",
           "memory": {"facts": [sentence(rng)]}, "plan": {"steps": [sentence(rng)], "step": 1}})
}

fn gzip_b64(text: &str) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// The `data` field as the SDK sends it: compressed from 1 KB on, unless `plain`.
fn wire(data: &Value, plain: bool) -> String {
    let text = data.to_string();
    if plain || text.len() < 1024 {
        text
    } else {
        json!({"_compressed": true, "_data": gzip_b64(&text)}).to_string()
    }
}

fn entry(
    seq: u64,
    event_type: &str,
    trace: &str,
    observation: Option<&str>,
    data: String,
) -> StreamEntry {
    let mut fields = vec![
        (b"event_type".to_vec(), event_type.as_bytes().to_vec()),
        (
            b"project_id".to_vec(),
            b"5b1f6f3e-8f0c-4e43-9d43-6a4f2f7e9d10".to_vec(),
        ),
        (
            b"timestamp".to_vec(),
            format!("{:.6}", 1_764_000_000.0 + seq as f64 / 1000.0).into_bytes(),
        ),
        (b"trace_id".to_vec(), trace.as_bytes().to_vec()),
    ];
    if let Some(id) = observation {
        fields.push((b"observation_id".to_vec(), id.as_bytes().to_vec()));
    }
    fields.push((b"data".to_vec(), data.into_bytes()));
    StreamEntry {
        id: StreamId {
            ms: 1_764_000_000_000 + seq,
            seq: 0,
        },
        fields: fields
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect(),
        deliveries: 1,
    }
}

/// One trace: trace_start, then five observations each started and ended
/// (one in ten with an error), in execution order.
fn trace(rng: &mut StdRng, index: u64, plain: bool, seq: &mut u64) -> Vec<StreamEntry> {
    let trace_id = format!("trace-{index:08}");
    let mut out = Vec::new();
    let mut next = |t: &str, o: Option<&str>, d: String, out: &mut Vec<StreamEntry>| {
        *seq += 1;
        out.push(entry(*seq, t, &trace_id, o, d));
    };
    let start = json!({"name": "swisper_chat", "user_id": "user-42", "session_id": "s-1",
                       "timestamp": "2026-11-28T10:00:00.000001", "run_id": "r-1",
                       "meta": {"environment": "bench"}});
    next("trace_start", None, wire(&start, plain), &mut out);
    let kinds = ["AGENT", "GENERATION", "SPAN", "TOOL", "GENERATION"];
    for (k, kind) in kinds.into_iter().enumerate() {
        let id = format!("{trace_id}-obs-{k}");
        let size = rng.gen_range(1100..2200);
        let input = state(rng, size);
        let data = json!({"name": format!("node_{k}"), "type": kind,
                          "parent_observation_id": if k == 0 { Value::Null } else { json!(format!("{trace_id}-obs-0")) },
                          "input": input, "start_time": "2026-11-28T10:00:01.000001"});
        next("observation_start", Some(&id), wire(&data, plain), &mut out);
        if rng.gen_bool(0.1) {
            let data = json!({"level": "ERROR", "error": "TimeoutError", "status_message": "TimeoutError",
                              "end_time": "2026-11-28T10:00:02.000001"});
            next("observation_error", Some(&id), wire(&data, plain), &mut out);
        } else {
            let size = rng.gen_range(1100..2200);
            let mut output = state(rng, size);
            if kind == "GENERATION" {
                output["_llm_model"] = json!("gpt-4o");
                output["_llm_tokens"] = json!({"total": 1200, "prompt": 1000, "completion": 200});
                output["_llm_latency"] = json!(1.7);
            }
            let data = json!({"output": output, "level": "DEFAULT", "type": kind,
                              "end_time": "2026-11-28T10:00:02.000001"});
            next("observation_end", Some(&id), wire(&data, plain), &mut out);
        }
    }
    out
}

/// `traces` traces, 20 in flight: their events interleave as on the stream.
fn batch(traces: u64, plain: bool) -> Vec<StreamEntry> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut seq = 0;
    let mut pending: Vec<std::vec::IntoIter<StreamEntry>> = (0..traces)
        .map(|i| trace(&mut rng, i, plain, &mut seq).into_iter())
        .collect();
    let mut out = Vec::new();
    let mut active: Vec<usize> = (0..pending.len().min(20)).collect();
    let mut next_trace = active.len();
    while !active.is_empty() {
        let slot = rng.gen_range(0..active.len());
        match pending[active[slot]].next() {
            Some(e) => out.push(e),
            None if next_trace < pending.len() => {
                active[slot] = next_trace;
                next_trace += 1;
            }
            None => {
                active.swap_remove(slot);
            }
        }
    }
    out
}

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let compressed = batch(10, false);
    let plain = batch(10, true);
    let mut group = c.benchmark_group("parse_entry");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(1));
    for (label, entries) in [("compressed", &compressed), ("plain", &plain)] {
        for event_type in ["trace_start", "observation_start", "observation_end"] {
            let entry = entries
                .iter()
                .find(|e| e.field("event_type") == Some(event_type.as_bytes()))
                .expect("the batch has every type");
            group.bench_function(
                format!("{event_type}/{label}/{}B", entry.byte_size()),
                |b| b.iter(|| parse_entry(black_box(entry), &limits).expect("valid entry")),
            );
        }
    }
    group.finish();
}

fn batches(c: &mut Criterion) {
    let limits = Limits::default();
    // 91 traces ≈ 1,000 entries: one writer transaction at the default settings.
    for (label, entries) in [("compressed", batch(91, false)), ("plain", batch(91, true))] {
        let n = entries.len() as u64;
        let mut group = c.benchmark_group(format!("batch_{n}_{label}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(500));
        group.throughput(Throughput::Elements(n));
        group.bench_function("prepare (parse all)", |b| {
            b.iter_batched(
                || entries.clone(),
                |entries| swisper_ingest::event::prepare(entries, &limits, 10),
                BatchSize::LargeInput,
            )
        });
        let items = swisper_ingest::event::prepare(entries.clone(), &limits, 10);
        let events: Vec<_> = items
            .iter()
            .filter_map(|item| match &item.parsed {
                Ok(Parsed::Trace(event)) => Some(event),
                _ => None,
            })
            .collect();
        assert_eq!(events.len() as u64, n, "every entry parses");
        group.bench_function("merge", |b| {
            b.iter(|| merge::merge(black_box(events.iter().copied())))
        });
        // The model the GENERATIONs report, priced by default.
        let mut prices = PriceBook::default();
        prices.insert(
            None,
            provider_of("gpt-4o"),
            "gpt-4o",
            Price {
                input_per_million: Decimal::from_str("2.5").unwrap(),
                output_per_million: Decimal::from_str("10").unwrap(),
            },
        );
        let merged = merge::merge(events.iter().copied());
        let stored = rows::Stored::default();
        let plan = rows::plan(&merged, &stored, &prices);
        assert_eq!(
            plan.new_observations.len(),
            merged.observations.len(),
            "every row is new"
        );
        assert!(
            plan.new_observations.iter().any(|o| o.costs.is_some()),
            "the GENERATIONs are priced"
        );
        group.bench_function("plan (studio columns, costs)", |b| {
            b.iter(|| rows::plan(black_box(&merged), &stored, &prices))
        });
        group.finish();
    }
}

fn inflate(c: &mut Criterion) {
    let entries = batch(10, false);
    let encoded: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|e| {
            let data: Value = serde_json::from_slice(e.field("data")?).ok()?;
            let text = data.get("_data")?.as_str()?;
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        })
        .take(50)
        .collect();
    let mut group = c.benchmark_group("inflate");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(encoded.len() as u64));
    group.bench_function(
        "fresh GzDecoder per entry (the service before issue 19)",
        |b| {
            b.iter(|| {
                for gz in &encoded {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(gz.as_slice())
                        .read_to_end(&mut out)
                        .unwrap();
                    black_box(out);
                }
            })
        },
    );
    group.bench_function(
        "each thread's reused state (event::gzip, the service)",
        |b| {
            b.iter(|| {
                for gz in &encoded {
                    // The service's limit: the size the trailer declares.
                    let declared = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
                    black_box(gzip::inflate_member(gz, u64::from(declared)).unwrap());
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, parse, batches, inflate);
criterion_main!(benches);
