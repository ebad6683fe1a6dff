//! Realistic traces, reproducible from a seed: one `trace_start` and N
//! observations of a LangGraph-like agent run (a tree of AGENT, SPAN,
//! GENERATION and TOOL nodes), each with a start carrying its input state and
//! an end (or an error) carrying its output, in the SDK's wire format.
//!
//! Everything about trace `i` (ids, tree, payloads, errors) is a function of
//! `(seed, i)` alone, so traces are generated in parallel and the ids can be
//! recomputed by `verify` without the payloads.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::pyjson::{dumps, wire_data, Compression};

/// What a generated trace looks like.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Profile {
    pub seed: u64,
    pub project_id: String,
    /// Observations per trace (each has a start and an end or error).
    pub observations: usize,
    /// Size in bytes of one input or output state, drawn uniformly.
    pub payload_min: usize,
    pub payload_max: usize,
    /// Fraction of observations that end with observation_error.
    pub error_ratio: f64,
    pub compression: Compression,
}

/// One stream entry, without its publish timestamp (set when it is sent).
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: &'static str,
    pub trace_id: String,
    pub observation_id: Option<String>,
    /// The `data` field as sent (compressed or not).
    pub data: String,
    pub compressed: bool,
    /// Length of data's JSON before compression.
    pub json_bytes: usize,
}

impl Event {
    /// Bytes of field names and values, as the service measures an entry
    /// (the timestamp field counted at its usual 17 characters).
    pub fn wire_bytes(&self, project_id: &str) -> usize {
        let mut n = "event_type".len() + self.event_type.len();
        n += "project_id".len() + project_id.len();
        n += "timestamp".len() + 17;
        n += "trace_id".len() + self.trace_id.len();
        if let Some(id) = &self.observation_id {
            n += "observation_id".len() + id.len();
        }
        n + "data".len() + self.data.len()
    }
}

/// splitmix64: decorrelates (seed, index, slot) into independent seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uuid_from(a: u64, b: u64) -> String {
    let hi = mix(a);
    let lo = mix(b ^ 0x5555_5555_5555_5555);
    // Version 4, variant 10, as uuid.uuid4() prints.
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

pub fn trace_id(seed: u64, trace: u64) -> String {
    uuid_from(mix(seed) ^ trace, mix(seed ^ 1) ^ trace.rotate_left(17))
}

pub fn observation_id(seed: u64, trace: u64, observation: usize) -> String {
    let slot = (observation as u64 + 1) << 40;
    uuid_from(
        mix(seed ^ 2) ^ trace ^ slot,
        mix(seed ^ 3) ^ trace.rotate_left(23) ^ slot,
    )
}

pub fn project_id(seed: u64) -> String {
    uuid_from(mix(seed ^ 7), mix(seed ^ 11))
}

/// Zone-less UTC, as Python's `datetime.utcnow().isoformat()`.
fn iso(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "for",
    "on",
    "with",
    "is",
    "be",
    "you",
    "your",
    "please",
    "meeting",
    "calendar",
    "tomorrow",
    "morning",
    "afternoon",
    "email",
    "project",
    "report",
    "summary",
    "invoice",
    "client",
    "team",
    "schedule",
    "update",
    "review",
    "draft",
    "send",
    "reply",
    "budget",
    "quarter",
    "sales",
    "numbers",
    "document",
    "contract",
    "deadline",
    "Friday",
    "Monday",
    "week",
    "agenda",
    "notes",
    "action",
    "items",
    "follow",
    "up",
    "call",
    "customer",
    "support",
    "ticket",
    "priority",
    "high",
    "low",
    "status",
    "done",
    "open",
    "pending",
    "assign",
    "owner",
    "weather",
    "Zurich",
    "Bern",
    "Geneva",
    "Basel",
    "train",
    "ticket",
    "hotel",
    "booking",
    "flight",
    "travel",
    "expense",
    "approve",
    "reject",
    "policy",
    "compliance",
    "legal",
    "data",
    "privacy",
    "security",
    "password",
    "reset",
    "account",
    "login",
    "access",
    "request",
    "grant",
    "search",
    "find",
    "latest",
    "news",
    "about",
    "market",
    "stock",
    "price",
    "trend",
    "analysis",
    "chart",
    "table",
    "spreadsheet",
    "presentation",
    "slides",
    "outline",
    "introduction",
    "conclusion",
    "recommendation",
    "option",
    "plan",
    "step",
    "first",
    "second",
    "then",
    "finally",
    "because",
    "however",
    "therefore",
    "also",
    "can",
    "could",
    "would",
    "should",
    "will",
    "need",
    "want",
    "check",
    "confirm",
    "cancel",
    "move",
    "reschedule",
    "available",
    "slot",
    "minutes",
    "hour",
    "today",
    "yesterday",
    "remind",
    "me",
    "them",
    "us",
    "it",
    "this",
    "that",
    "these",
    "those",
    "what",
    "when",
    "where",
    "who",
    "how",
    "why",
    "Grüezi",
    "Übersicht",
    "Besprechung",
    "morgen",
    "Rechnung",
    "Zürich",
    "merci",
    "réunion",
    "bientôt",
];

const NODES: &[(&str, &str)] = &[
    ("intent_classification", "GENERATION"),
    ("memory_node", "SPAN"),
    ("productivity_agent", "AGENT"),
    ("calendar_tool", "TOOL"),
    ("user_interface_node", "GENERATION"),
    ("research_agent", "AGENT"),
    ("web_search", "TOOL"),
    ("doc_agent", "AGENT"),
    ("summarize", "GENERATION"),
    ("email_tool", "TOOL"),
    ("planner", "SPAN"),
];

const MODELS: &[&str] = &[
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4",
    "mistral-large",
    "kvant-llama-3.3-70b",
];

const ERRORS: &[&str] = &[
    "TimeoutError: LLM call exceeded 30s",
    "RateLimitError: 429 Too Many Requests",
    "ToolError: calendar API returned 503",
    "ValidationError: 1 validation error for PlanStep",
    "KeyError: 'next_agent'",
];

fn sentence(rng: &mut StdRng, min_words: usize, max_words: usize) -> String {
    let n = rng.gen_range(min_words..=max_words);
    let mut text = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    text.push('.');
    text
}

/// A LangGraph state of about `target` bytes of JSON: conversation messages,
/// routing fields, memory and a plan.
fn state(rng: &mut StdRng, ids: &TraceIds, target: usize) -> Value {
    let mut messages = Vec::new();
    let mut size = 420;
    let mut turn = 0;
    while size < target {
        let content = sentence(rng, 6, 40);
        size += content.len() + 36;
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": content}));
        turn += 1;
    }
    json!({
        "messages": messages,
        "user_id": ids.user_id,
        "session_id": ids.session_id,
        "intent": (["productivity", "research", "chat", "documents"][rng.gen_range(0..4)]),
        "current_agent": NODES[rng.gen_range(0..NODES.len())].0,
        "memory": {"facts": [sentence(rng, 3, 8), sentence(rng, 3, 8)], "loaded": rng.gen_bool(0.7)},
        "plan": {"steps": [sentence(rng, 2, 5), sentence(rng, 2, 5)], "step": rng.gen_range(0..4)},
        "language": (["de", "en", "fr"][rng.gen_range(0..3)]),
        "requires_confirmation": rng.gen_bool(0.2),
    })
}

struct TraceIds {
    trace_id: String,
    user_id: String,
    session_id: String,
}

/// All events of trace `index` in execution order (depth-first: a node
/// starts, its children run, it ends), with data times from `start`.
pub fn generate(profile: &Profile, index: u64, start: DateTime<Utc>) -> Vec<Event> {
    let seed = profile.seed;
    let mut rng = StdRng::seed_from_u64(mix(seed ^ mix(index)));
    let ids = TraceIds {
        trace_id: trace_id(seed, index),
        user_id: format!("user-{}", rng.gen_range(1..5000)),
        session_id: uuid_from(rng.gen(), rng.gen()),
    };
    let n = profile.observations;
    // Observation 0 is the root agent; the others hang under an earlier one,
    // most often the root or the previous node.
    let mut parents = vec![None];
    for k in 1..n {
        let parent = if rng.gen_bool(0.5) {
            0
        } else {
            rng.gen_range(0..k)
        };
        parents.push(Some(parent));
    }
    let mut children = vec![Vec::new(); n];
    for (k, parent) in parents.iter().enumerate() {
        if let Some(p) = parent {
            children[*p].push(k);
        }
    }
    let kinds: Vec<(&str, &str)> = (0..n)
        .map(|k| {
            if k == 0 {
                ("global_supervisor", "AGENT")
            } else {
                NODES[rng.gen_range(0..NODES.len())]
            }
        })
        .collect();
    let obs_ids: Vec<String> = (0..n).map(|k| observation_id(seed, index, k)).collect();

    let mut clock = start;
    let mut tick = |rng: &mut StdRng| {
        clock += Duration::microseconds(rng.gen_range(2_000..400_000));
        clock
    };
    let mut events = Vec::with_capacity(1 + 2 * n);
    let make = |event_type: &'static str, obs: Option<usize>, data: Value| {
        let json = dumps(&data);
        let json_bytes = json.len();
        let (data, compressed) = wire_data(json, profile.compression);
        Event {
            event_type,
            trace_id: ids.trace_id.clone(),
            observation_id: obs.map(|k| obs_ids[k].clone()),
            data,
            compressed,
            json_bytes,
        }
    };
    let started = tick(&mut rng);
    events.push(make(
        "trace_start",
        None,
        json!({
            "name": (["swisper_chat", "email_assistant", "meeting_prep"][rng.gen_range(0..3)]),
            "user_id": ids.user_id,
            "session_id": ids.session_id,
            "timestamp": iso(started),
            "run_id": uuid_from(rng.gen(), rng.gen()),
            "meta": {"environment": "loadtest", "sdk_version": "0.14.3", "graph": "global_supervisor"},
        }),
    ));

    // Depth-first walk without recursion: (node, entering?).
    let mut stack = vec![(0usize, true)];
    while let Some((k, entering)) = stack.pop() {
        let (name, kind) = kinds[k];
        if entering {
            stack.push((k, false));
            for &c in children[k].iter().rev() {
                stack.push((c, true));
            }
            let size =
                rng.gen_range(profile.payload_min..=profile.payload_max.max(profile.payload_min));
            let input = state(&mut rng, &ids, size);
            let at = tick(&mut rng);
            events.push(make(
                "observation_start",
                Some(k),
                json!({
                    "name": name,
                    "type": kind,
                    "parent_observation_id": parents[k].map(|p| obs_ids[p].clone()),
                    "input": input,
                    "start_time": iso(at),
                }),
            ));
        } else {
            let at = tick(&mut rng);
            if rng.gen_bool(profile.error_ratio.clamp(0.0, 1.0)) {
                let error = ERRORS[rng.gen_range(0..ERRORS.len())];
                events.push(make(
                    "observation_error",
                    Some(k),
                    json!({"level": "ERROR", "error": error, "status_message": error, "end_time": iso(at)}),
                ));
                continue;
            }
            let size =
                rng.gen_range(profile.payload_min..=profile.payload_max.max(profile.payload_min));
            let mut output = state(&mut rng, &ids, size);
            if kind == "GENERATION" {
                let prompt: i64 = rng.gen_range(200..4000);
                let completion: i64 = rng.gen_range(20..800);
                if let Value::Object(map) = &mut output {
                    map.insert(
                        "_llm_model".into(),
                        MODELS[rng.gen_range(0..MODELS.len())].into(),
                    );
                    map.insert(
                        "_llm_tokens".into(),
                        json!({"total": prompt + completion, "prompt": prompt, "completion": completion,
                               "cached": rng.gen_range(0..prompt / 2), "thoughts": 0}),
                    );
                    map.insert("_llm_latency".into(), json!(rng.gen_range(0.2..6.0)));
                }
            }
            let level = if rng.gen_bool(0.05) {
                "WARNING"
            } else {
                "DEFAULT"
            };
            let mut data = Map::new();
            data.insert("output".into(), output);
            data.insert("level".into(), level.into());
            data.insert("end_time".into(), iso(at).into());
            data.insert("type".into(), kind.into());
            events.push(make("observation_end", Some(k), Value::Object(data)));
        }
    }
    events
}

/// The interleaving of `in_flight` concurrent traces: which trace publishes
/// next, drawn from the seed; every trace's events stay in order.
pub fn schedule(seed: u64, traces: u64, events_per_trace: usize, in_flight: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(mix(seed ^ 0xD1CE));
    let mut order = Vec::with_capacity(traces as usize * events_per_trace);
    let mut active: Vec<(u64, usize)> = Vec::with_capacity(in_flight);
    let mut next = 0u64;
    while next < traces && active.len() < in_flight.max(1) {
        active.push((next, 0));
        next += 1;
    }
    while !active.is_empty() {
        let slot = rng.gen_range(0..active.len());
        let (trace, emitted) = &mut active[slot];
        order.push(*trace);
        *emitted += 1;
        if *emitted == events_per_trace {
            if next < traces {
                active[slot] = (next, 0);
                next += 1;
            } else {
                active.swap_remove(slot);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            seed: 7,
            project_id: project_id(7),
            observations: 5,
            payload_min: 1100,
            payload_max: 2200,
            error_ratio: 0.2,
            compression: Compression::Sdk,
        }
    }

    #[test]
    fn traces_are_reproducible_and_complete() {
        let t0 = Utc::now();
        let a = generate(&profile(), 3, t0);
        let b = generate(&profile(), 3, t0);
        assert_eq!(a.len(), 11);
        assert_eq!(
            a.iter().map(|e| &e.data).collect::<Vec<_>>(),
            b.iter().map(|e| &e.data).collect::<Vec<_>>()
        );
        assert_eq!(a[0].event_type, "trace_start");
        for k in 0..5 {
            let id = observation_id(7, 3, k);
            let mine: Vec<_> = a
                .iter()
                .filter(|e| e.observation_id.as_deref() == Some(id.as_str()))
                .collect();
            assert_eq!(mine.len(), 2);
            assert_eq!(mine[0].event_type, "observation_start");
        }
    }

    #[test]
    fn schedule_keeps_every_event_once() {
        let order = schedule(1, 100, 11, 7);
        assert_eq!(order.len(), 1100);
        for t in 0..100 {
            assert_eq!(order.iter().filter(|&&x| x == t).count(), 11);
        }
    }

    #[test]
    fn ids_look_like_uuid4() {
        let id = trace_id(1, 2);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(trace_id(1, 2), trace_id(1, 3));
        assert_ne!(observation_id(1, 2, 0), observation_id(1, 2, 1));
    }
}
