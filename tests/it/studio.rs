//! The pipeline in front of a SwisperStudio database (issue 16): a fresh
//! database loaded with the studio's Alembic head, the real service spawned
//! against it (it migrates on start), events published as the SDK sends them.
//!
//! The first test compares every studio column with a model of the studio's
//! own consumer (`backend/app/services/observability_consumer.py` and
//! `backend/app/api/services/cost_calculation_service.py`) run on the same
//! events, each once, in the order the SDK made them: what the studio stores
//! when nothing goes wrong. (Fed the shuffled stream with duplicates that
//! ours gets, the studio's consumer would drop an end that comes before its
//! start and retry a duplicated start's INSERT forever.) Compressed `data`
//! is given to the model expanded: the studio's consumer at master does not
//! expand `{"_compressed": true, ...}` at all.
//!
//! Columns are compared as the studio's API reads them: SQL NULL and JSON
//! `null` are both None (the studio's ORM writes JSON `null` where ours
//! writes NULL).

use std::collections::BTreeMap;
use std::error::Error;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDateTime, SubsecRound, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Map, Value};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;

use crate::harness::{
    apply_studio_fixture, as_fields, compressed_data, count, group_drained, wait_for,
    wait_for_count, Service, TestEnv,
};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Events as the SDK makes them.

/// One event: its wire fields are made from these.
#[derive(Debug, Clone)]
struct Event {
    event_type: &'static str,
    trace_id: String,
    project_id: String,
    observation_id: Option<String>,
    /// The `timestamp` field (publish time), and the time the data carries.
    at: DateTime<Utc>,
    data: Value,
}

/// The SDK compresses `data` over 1 KB.
const COMPRESS_OVER: usize = 1024;

impl Event {
    fn fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![
            ("event_type".to_owned(), self.event_type.to_owned()),
            ("trace_id".to_owned(), self.trace_id.clone()),
            ("project_id".to_owned(), self.project_id.clone()),
            (
                "timestamp".to_owned(),
                format!(
                    "{}.{:06}",
                    self.at.timestamp(),
                    self.at.timestamp_subsec_micros()
                ),
            ),
        ];
        if let Some(id) = &self.observation_id {
            fields.push(("observation_id".to_owned(), id.clone()));
        }
        fields.push(("data".to_owned(), self.wire_data()));
        fields
    }

    fn wire_data(&self) -> String {
        let text = self.data.to_string();
        if text.len() > COMPRESS_OVER {
            compressed_data(&text)
        } else {
            text
        }
    }

    fn compressed(&self) -> bool {
        self.data.to_string().len() > COMPRESS_OVER
    }
}

/// `datetime.utcnow().isoformat()`.
fn iso(at: DateTime<Utc>) -> String {
    at.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A clock that ticks a few ms per event, as a traced run does.
struct Clock(DateTime<Utc>);

impl Clock {
    fn tick(&mut self, ms: i64) -> DateTime<Utc> {
        self.0 += Span::milliseconds(ms) + Span::microseconds(137);
        self.0
    }
}

fn trace_start(clock: &mut Clock, trace: &str, project: &str, data: Value) -> Event {
    let at = clock.tick(3);
    let mut data = data;
    data["timestamp"] = json!(iso(at));
    Event {
        event_type: "trace_start",
        trace_id: trace.into(),
        project_id: project.into(),
        observation_id: None,
        at,
        data,
    }
}

fn observation(
    clock: &mut Clock,
    event_type: &'static str,
    trace: &str,
    project: &str,
    id: &str,
    data: Value,
) -> Event {
    let at = clock.tick(if event_type == "observation_start" {
        2
    } else {
        41
    });
    let mut data = data;
    let key = if event_type == "observation_start" {
        "start_time"
    } else {
        "end_time"
    };
    data[key] = json!(iso(at));
    Event {
        event_type,
        trace_id: trace.into(),
        project_id: project.into(),
        observation_id: Some(id.into()),
        at,
        data,
    }
}

fn words(n: usize, seed: usize) -> String {
    const VOCABULARY: [&str; 12] = [
        "the", "answer", "is", "forty", "two", "and", "a", "swiss", "mountain", "holds", "snow",
        "today",
    ];
    (0..n)
        .map(|k| VOCABULARY[(k * 7 + seed) % VOCABULARY.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The LLM part of a generation's output, in the six shapes the SDK sends.
fn llm_output(i: usize) -> Value {
    let big = i % 4 == 2;
    let messages = json!([
        {"role": "system", "content": format!("You are a helpful assistant number {i}")},
        {"role": "user", "content": if big { words(400, i) } else { words(9 + i, i) }},
    ]);
    let result = if big {
        words(300, i + 1)
    } else {
        words(5 + 2 * i, i + 1)
    };
    let mut output = json!({
        "answer": format!("reply {i}"),
        "_llm_messages": messages,
        "_llm_result": result,
    });
    if i % 6 == 1 {
        // Python splits on U+001C..U+001F too; Rust's whitespace does not.
        output["_llm_messages"][1]["content"] = json!(format!(
            "{}\u{1c}{}\u{a0}{}",
            words(4, i),
            words(3, i + 1),
            words(2, i + 2)
        ));
    }
    if i % 6 == 3 {
        // Content parts (OpenAI's list form): the studio counts the words
        // of their Python repr.
        output["_llm_messages"][1]["content"] = json!([
            {"type": "text", "text": words(6 + i, i)},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
        ]);
    }
    let (model, tokens) = match i % 6 {
        // Reported counts, a project price.
        0 => (
            "gpt-4o",
            json!({"total": 168 + 7 * i, "prompt": 123, "completion": 45 + 7 * i}),
        ),
        // Streaming without usage: estimated, the default price.
        1 => (
            "inference-apertus-8b",
            json!({"total": null, "prompt": null, "completion": null}),
        ),
        // No price at all.
        2 => (
            "claude-3-opus",
            json!({"total": 300, "prompt": 200, "completion": 100}),
        ),
        // Streaming reporting zeros: estimated, the project price.
        3 => ("gpt-4o", json!({"total": 0, "prompt": 0, "completion": 0})),
        // A completion of 0: not priced.
        4 => (
            "inference-apertus-8b",
            json!({"total": 77, "prompt": 77, "completion": 0}),
        ),
        // Zeros and nothing to estimate from.
        _ => ("gpt-4o", json!({"total": 0, "prompt": 0, "completion": 0})),
    };
    output["_llm_model"] = json!(model);
    output["_llm_tokens"] = tokens;
    if i % 6 == 5 {
        output["_llm_messages"] = json!([{"role": "user", "content": "hi"}]);
        output["_llm_result"] = json!("ok");
    }
    if i == 13 {
        // A structured result: the studio counts the words of its repr.
        output["_llm_result"] =
            json!({"answer": words(7, i), "confidence": 0.9, "sources": ["a b", null]});
    }
    if i == 11 {
        // A model and no token report at all.
        output.as_object_mut().unwrap().remove("_llm_tokens");
    }
    output
}

/// About twenty traces as the SDK publishes them (graph wrapper, decorated
/// nodes, LLM wrapper, tool observer), in the order it makes them.
fn sdk_traces(project: &str, start: DateTime<Utc>, n: usize) -> Vec<Event> {
    let mut clock = Clock(start);
    let mut events = Vec::new();
    for i in 0..n {
        let trace = format!("eq-{i:02}");
        let run = format!("run-{i}");
        let mut data = json!({
            "name": format!("What is question {i}"),
            "user_id": format!("user-{}", i % 4),
            "session_id": format!("chat-{}", i % 3),
            "run_id": run,
        });
        if i % 7 == 3 {
            data.as_object_mut().unwrap().remove("name");
        }
        if i % 5 != 0 {
            data["meta"] = json!({"env": "test", "graph": "research_agent", "n": i});
        }
        if i % 6 != 1 {
            data["tags"] = json!(["sdk", format!("t{}", i % 2)]);
        }
        if i == 6 {
            // A big meta: the trace_start goes compressed.
            data["meta"] = json!({"env": "test", "prompt_template": words(250, 3)});
        }
        let mut start = trace_start(&mut clock, &trace, project, data);
        if i == 12 {
            // isoformat() of a time on a whole second has no fraction.
            start.data["timestamp"] =
                json!(start.at.naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string());
        }
        events.push(start);

        let root = format!("{trace}-graph");
        let big = i % 4 == 2;
        events.push(observation(
            &mut clock,
            "observation_start",
            &trace,
            project,
            &root,
            json!({
                "name": "research_agent",
                "type": "AGENT",
                "parent_observation_id": null,
                "input": {"user_message": format!("What is question {i}?"), "chat_id": format!("chat-{}", i % 3),
                          "history": if big { json!(words(300, i)) } else { json!([]) }},
                "meta": {"run_id": run},
            }),
        ));

        let llm = format!("{trace}-llm");
        events.push(observation(
            &mut clock,
            "observation_start",
            &trace,
            project,
            &llm,
            json!({
                "name": "llm_node",
                "type": "SPAN",
                "parent_observation_id": root,
                "input": {"question": format!("question {i}")},
                "meta": {"run_id": run, "node": "llm"},
            }),
        ));
        events.push(observation(
            &mut clock,
            "observation_end",
            &trace,
            project,
            &llm,
            json!({"output": llm_output(i), "level": "DEFAULT", "type": "GENERATION"}),
        ));

        if i % 3 == 0 {
            let tool = format!("{trace}-tool");
            events.push(observation(
                &mut clock,
                "observation_start",
                &trace,
                project,
                &tool,
                json!({"name": "web_search", "type": "TOOL", "parent_observation_id": llm,
                       "input": {"query": format!("q{i}")}}),
            ));
            events.push(observation(
                &mut clock,
                "observation_end",
                &trace,
                project,
                &tool,
                json!({"output": {"results": [format!("r{i}"), "r2"]}, "level": "DEFAULT", "type": "TOOL"}),
            ));
        }
        if i % 5 == 4 {
            let flaky = format!("{trace}-flaky");
            events.push(observation(
                &mut clock,
                "observation_start",
                &trace,
                project,
                &flaky,
                json!({"name": "flaky_node", "type": "SPAN", "parent_observation_id": root, "input": null}),
            ));
            events.push(observation(
                &mut clock,
                "observation_error",
                &trace,
                project,
                &flaky,
                json!({"level": "ERROR", "error": format!("ValueError: boom {i}"),
                       "status_message": format!("ValueError: boom {i}")}),
            ));
        }
        if i == 7 {
            // Never ends (the run is still waiting for a human).
            events.push(observation(
                &mut clock,
                "observation_start",
                &trace,
                project,
                &format!("{trace}-review"),
                json!({"name": "human_review", "type": "EVENT", "parent_observation_id": root,
                       "input": {"draft": "..."}}),
            ));
        }
        events.push(observation(
            &mut clock,
            "observation_end",
            &trace,
            project,
            &root,
            json!({
                "output": {"answer": format!("reply {i}"), "sources": if big { json!(words(300, i + 2)) } else { json!([]) }},
                "level": if i == 9 { "WARNING" } else { "DEFAULT" },
            }),
        ));
    }
    events
}

// ---------------------------------------------------------------------------
// A model of the studio's consumer.

/// A `model_pricing` row.
#[derive(Debug, Clone)]
struct Pricing {
    project_id: Option<String>,
    provider: String,
    model: String,
    input: Decimal,
    output: Decimal,
}

/// `cost_calculation_service.extract_provider_from_model`.
fn studio_provider(model: &str) -> &'static str {
    let m = model.to_lowercase();
    const KVANT: [&str; 9] = [
        "inference-",
        "meta-llama/",
        "deepseek-ai/",
        "qwen/",
        "baai/",
        "ibm-granite/",
        "google/",
        "swiss-ai/",
        "mistralai/",
    ];
    if KVANT.iter().any(|prefix| m.starts_with(prefix)) {
        "kvant"
    } else if m.contains("azure") {
        "azure"
    } else if m.starts_with("gpt-") || m.starts_with("text-") || m.starts_with("davinci") {
        "openai"
    } else if m.starts_with("claude-") {
        "anthropic"
    } else if m.contains("together") {
        "together"
    } else {
        "unknown"
    }
}

/// `calculate_llm_cost`: (input, output, total, which price).
fn studio_cost(
    prices: &[Pricing],
    project_id: &str,
    model: &str,
    prompt: i64,
    completion: i64,
) -> Option<(Decimal, Decimal, Decimal, Pricing)> {
    assert!(prompt >= 0 && completion >= 0);
    let provider = studio_provider(model);
    let find = |project: Option<&str>| {
        let found: Vec<&Pricing> = prices
            .iter()
            .filter(|p| {
                p.project_id.as_deref() == project && p.provider == provider && p.model == model
            })
            .collect();
        // scalar_one_or_none() raises on two rows: the consumer logs
        // "Cost calculation failed" and stores no cost.
        match found[..] {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(()),
        }
    };
    let pricing = match find(Some(project_id)).ok()? {
        Some(pricing) => pricing,
        None => find(None).ok()??,
    };
    let million = Decimal::from(1_000_000);
    let input = Decimal::from(prompt) / million * pricing.input;
    let output = Decimal::from(completion) / million * pricing.output;
    let total = input + output;
    let quantize = |d: Decimal| {
        let mut q = d.round_dp_with_strategy(6, RoundingStrategy::MidpointNearestEven);
        q.rescale(6);
        q
    };
    Some((quantize(input), quantize(output), quantize(total), pricing))
}

#[derive(Debug, Clone, PartialEq)]
struct RefTrace {
    project_id: String,
    name: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    meta: Option<Value>,
    tags: Option<Value>,
    timestamp: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq)]
struct RefObservation {
    trace_id: String,
    parent_observation_id: Option<String>,
    observation_type: String,
    name: Option<String>,
    start_time: NaiveDateTime,
    end_time: Option<NaiveDateTime>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    model: Option<String>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
    level: String,
    status_message: Option<String>,
    costs: Option<(Decimal, Decimal, Decimal)>,
}

/// Python's `data.get(key, default)`: a key present with null is None.
fn get_or(data: &Value, key: &str, default: Value) -> Option<Value> {
    match data.get(key) {
        None => Some(default).filter(|d| !d.is_null()),
        Some(Value::Null) => None,
        Some(v) => Some(v.clone()),
    }
}

fn text(v: Option<Value>) -> Option<String> {
    v.map(|v| match v {
        Value::String(s) => s,
        other => panic!("the test sends strings here, got {other}"),
    })
}

fn python_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn count_of(v: Option<&Value>) -> Option<i64> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().expect("integer counts in the test")),
    }
}

/// Python's `repr` of a `json.loads` value, as far as its spaces go: a
/// string's repr escapes every whitespace character but the space (Python
/// finds them unprintable).
fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let body: String = s
                .chars()
                .map(|c| {
                    if c != ' ' && python_space(c) {
                        format!("\\x{:02x}", u32::from(c))
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            format!("'{body}'")
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", python_repr(&json!(k)), python_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `str.isspace()`: Unicode White_Space and U+001C..U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `len(str(x).split())`.
fn python_words(v: &Value) -> i64 {
    let text = match v {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    };
    text.split(python_space).filter(|w| !w.is_empty()).count() as i64
}

/// `_estimate_tokens_from_output`.
fn studio_estimate(output: &Map<String, Value>) -> Option<(i64, i64)> {
    let mut prompt = 0;
    let mut completion = 0;
    if let Some(Value::Array(messages)) = output.get("_llm_messages") {
        for message in messages {
            if let Some(content) = message.as_object().and_then(|m| m.get("content")) {
                prompt += python_words(content) * 3 / 4;
            }
        }
    }
    if let Some(result) = output.get("_llm_result").filter(|r| python_truthy(r)) {
        completion = python_words(result) * 3 / 4;
    }
    (prompt > 0 || completion > 0).then_some((prompt, completion))
}

fn parse_iso(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").expect("an ISO time")
}

/// The studio's consumer, one event at a time.
#[derive(Default)]
struct StudioModel {
    traces: BTreeMap<String, RefTrace>,
    observations: BTreeMap<String, RefObservation>,
}

impl StudioModel {
    fn apply(&mut self, event: &Event, prices: &[Pricing]) {
        let data = &event.data;
        let time = |key: &str| parse_iso(data[key].as_str().expect("explicit times"));
        match event.event_type {
            "trace_start" => {
                self.traces.insert(
                    event.trace_id.clone(),
                    RefTrace {
                        project_id: event.project_id.clone(),
                        name: text(get_or(data, "name", json!("unnamed_trace"))),
                        user_id: text(get_or(data, "user_id", Value::Null)),
                        session_id: text(get_or(data, "session_id", Value::Null)),
                        meta: get_or(data, "meta", json!({})),
                        tags: get_or(data, "tags", json!([])),
                        timestamp: time("timestamp"),
                    },
                );
            }
            "observation_start" => {
                self.observations.insert(
                    event.observation_id.clone().unwrap(),
                    RefObservation {
                        trace_id: event.trace_id.clone(),
                        parent_observation_id: text(get_or(
                            data,
                            "parent_observation_id",
                            Value::Null,
                        )),
                        observation_type: text(get_or(data, "type", json!("SPAN")))
                            .expect("a type"),
                        name: text(get_or(data, "name", json!("unnamed_observation"))),
                        start_time: time("start_time"),
                        end_time: None,
                        input: get_or(data, "input", Value::Null),
                        output: None,
                        meta: None,
                        model: None,
                        prompt_tokens: None,
                        completion_tokens: None,
                        total_tokens: None,
                        level: "DEFAULT".into(),
                        status_message: None,
                        costs: None,
                    },
                );
            }
            "observation_end" => {
                let id = event.observation_id.as_deref().unwrap();
                let Some(o) = self.observations.get_mut(id) else {
                    return; // "Observation not found for update"
                };
                let output = get_or(data, "output", Value::Null);
                o.output = output.clone();
                o.end_time = Some(time("end_time"));
                o.level = text(get_or(data, "level", json!("DEFAULT"))).expect("a level");
                if data.get("type").is_some() {
                    o.observation_type = text(get_or(data, "type", Value::Null)).expect("a type");
                }
                let Some(Value::Object(output)) = output else {
                    return;
                };
                let Some(tokens) = output.get("_llm_tokens") else {
                    return;
                };
                o.prompt_tokens = count_of(tokens.get("prompt"));
                o.completion_tokens = count_of(tokens.get("completion"));
                o.total_tokens = count_of(tokens.get("total"));
                if matches!(o.total_tokens, None | Some(0)) {
                    if let Some((prompt, completion)) = studio_estimate(&output) {
                        o.prompt_tokens = Some(prompt);
                        o.completion_tokens = Some(completion);
                        o.total_tokens = Some(prompt + completion);
                    }
                }
                let model = output.get("_llm_model").cloned();
                let truthy = |n: Option<i64>| n.is_some_and(|n| n != 0);
                if model.as_ref().is_some_and(python_truthy)
                    && truthy(o.prompt_tokens)
                    && truthy(o.completion_tokens)
                {
                    let model = text(model).unwrap();
                    let project = &self.traces[&o.trace_id].project_id;
                    if let Some((input, output, total, _)) = studio_cost(
                        prices,
                        project,
                        &model,
                        o.prompt_tokens.unwrap(),
                        o.completion_tokens.unwrap(),
                    ) {
                        o.costs = Some((input, output, total));
                        o.model = Some(model);
                    }
                }
            }
            "observation_error" => {
                let id = event.observation_id.as_deref().unwrap();
                let Some(o) = self.observations.get_mut(id) else {
                    return;
                };
                o.level = "ERROR".into();
                let error = data.get("error").filter(|e| python_truthy(e)).cloned();
                o.status_message =
                    text(error.or_else(|| get_or(data, "status_message", Value::Null)));
                o.end_time = Some(time("end_time"));
            }
            other => panic!("{other}"),
        }
    }
}

// ---------------------------------------------------------------------------
// What the layout adds to meta (STUDIO_LAYOUT.md, docs/event-format.md).

const TRACE_COLUMNS: [&str; 6] = ["name", "user_id", "session_id", "meta", "tags", "timestamp"];
const START_COLUMNS: [&str; 6] = [
    "name",
    "type",
    "parent_observation_id",
    "input",
    "start_time",
    "meta",
];
const END_COLUMNS: [&str; 6] = [
    "output",
    "level",
    "type",
    "status_message",
    "end_time",
    "meta",
];

/// data.meta's keys, then every key of data without a column.
fn layout_meta(data: &Value, columns: &[&str]) -> Map<String, Value> {
    let mut meta = match data.get("meta") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => Map::from_iter([("_meta".to_owned(), other.clone())]),
    };
    for (k, v) in data.as_object().unwrap() {
        if !columns.contains(&k.as_str()) {
            meta.insert(k.clone(), v.clone());
        }
    }
    meta
}

/// A value for a message: long ones cut, with their length.
fn short(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

fn json_eq(a: &Option<Value>, b: &Option<Value>) -> bool {
    let norm = |v: &Option<Value>| v.clone().filter(|v| !v.is_null());
    norm(a) == norm(b)
}

// ---------------------------------------------------------------------------
// The studio database and the service in front of it.

async fn studio_database(name: &str) -> (TestEnv, Client) {
    let env = TestEnv::new(name).await;
    let db = env.db().await;
    apply_studio_fixture(&db).await;
    (env, db)
}

async fn create_project(db: &Client, id: &str) {
    db.execute(
        "INSERT INTO public.projects (id, name, created_at, updated_at)
         VALUES ($1, $1, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
        &[&id],
    )
    .await
    .unwrap();
}

async fn insert_price(db: &Client, id: &str, price: &Pricing) {
    db.execute(
        "INSERT INTO public.model_pricing (id, project_id, hosting_provider, model_name,
             input_price_per_million, output_price_per_million, created_at, updated_at, type)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6::text::numeric,
                 now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', 'Chat')",
        &[
            &id,
            &price.project_id,
            &price.provider,
            &price.model,
            &price.input.to_string(),
            &price.output.to_string(),
        ],
    )
    .await
    .unwrap();
}

fn spawn(env: &TestEnv, name: &str) -> Service {
    let service = env.spawn(name, &[]);
    service.wait_ready(WAIT);
    service
}

fn publish(env: &TestEnv, redis: &mut redis::Connection, events: &[&Event]) {
    for event in events {
        env.publish(redis, &as_fields(&event.fields()));
    }
}

fn wait_drained(env: &TestEnv, redis: &mut redis::Connection, service: &Service) {
    assert!(
        wait_for(WAIT, || group_drained(redis, &env.stream, &env.group)),
        "the group did not drain; log: {}",
        service.log()
    );
}

/// Unreplayed dead letters, sorted by their content: their ids follow the
/// order in which pages reach the writer, which two consumers (each page
/// parsed on the pool first) and a held observation start leave undefined.
async fn dead_letters(db: &Client) -> Vec<(String, Option<String>, Option<String>)> {
    db.query(
        "SELECT reason_code, event_type, trace_id FROM swisper_ingest.dead_letters
         WHERE replayed_at IS NULL ORDER BY reason_code, event_type, trace_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Our trace row, every column.
#[derive(Debug, Clone, PartialEq)]
struct OurTrace {
    project_id: Option<String>,
    name: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    tags: Option<Value>,
    timestamp: NaiveDateTime,
}

async fn our_traces(db: &Client) -> BTreeMap<String, OurTrace> {
    db.query(
        "SELECT id, project_id, name, user_id, session_id, input, output, meta, tags, \"timestamp\"
         FROM public.traces",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            OurTrace {
                project_id: r.get(1),
                name: r.get(2),
                user_id: r.get(3),
                session_id: r.get(4),
                input: r.get(5),
                output: r.get(6),
                meta: r.get(7),
                tags: r.get(8),
                timestamp: r.get(9),
            },
        )
    })
    .collect()
}

#[derive(Debug, Clone, PartialEq)]
struct OurObservation {
    trace_id: Option<String>,
    parent_observation_id: Option<String>,
    observation_type: String,
    name: Option<String>,
    start_time: NaiveDateTime,
    end_time: Option<NaiveDateTime>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    model: Option<String>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    total_cost: Option<String>,
    level: String,
    status_message: Option<String>,
    completion_start_time: Option<NaiveDateTime>,
    model_parameters: Option<Value>,
    total_tokens: Option<i32>,
    costs: [Option<String>; 3],
}

async fn our_observations(db: &Client) -> BTreeMap<String, OurObservation> {
    db.query(
        "SELECT id, trace_id, parent_observation_id, type::text, name, start_time, end_time, input,
                output, meta, model, prompt_tokens, completion_tokens, total_cost::text, level,
                status_message, completion_start_time, model_parameters, total_tokens,
                calculated_input_cost::text, calculated_output_cost::text,
                calculated_total_cost::text
         FROM public.observations",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            OurObservation {
                trace_id: r.get(1),
                parent_observation_id: r.get(2),
                observation_type: r.get(3),
                name: r.get(4),
                start_time: r.get(5),
                end_time: r.get(6),
                input: r.get(7),
                output: r.get(8),
                meta: r.get(9),
                model: r.get(10),
                prompt_tokens: r.get(11),
                completion_tokens: r.get(12),
                total_cost: r.get(13),
                level: r.get(14),
                status_message: r.get(15),
                completion_start_time: r.get(16),
                model_parameters: r.get(17),
                total_tokens: r.get(18),
                costs: [r.get(19), r.get(20), r.get(21)],
            },
        )
    })
    .collect()
}

fn cost_text(d: &Decimal) -> String {
    d.to_string()
}

/// Every studio column of every row, ours against the model of the
/// studio's consumer: (mismatches, allowed differences). `model` present in
/// ours alone (the studio sets it only with a cost) is the one allowed.
fn compare_with_studio(
    events: &[Event],
    studio: &StudioModel,
    traces: &BTreeMap<String, OurTrace>,
    observations: &BTreeMap<String, OurObservation>,
) -> (Vec<String>, Vec<String>) {
    // Every column; differences collected, then judged.
    let mut mismatches: Vec<String> = Vec::new();
    let mut allowed: Vec<String> = Vec::new();
    let data_of = |id: &str, kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| {
                e.event_type == kind
                    && (e.observation_id.as_deref() == Some(id)
                        || (e.observation_id.is_none() && e.trace_id == id))
            })
            .map(|e| &e.data)
            .collect()
    };
    for (id, expected) in &studio.traces {
        let Some(got) = traces.get(id) else {
            mismatches.push(format!("traces row {id}: studio has it, ours not"));
            continue;
        };
        let mut check = |column: &str, same: bool, expected: String, got: String| {
            if !same {
                mismatches.push(format!(
                    "traces.{column} of {id}: studio {}, ours {}",
                    short(&expected),
                    short(&got)
                ));
            }
        };
        check(
            "project_id",
            got.project_id.as_deref() == Some(expected.project_id.as_str()),
            format!("{:?}", expected.project_id),
            format!("{:?}", got.project_id),
        );
        check(
            "name",
            got.name == expected.name,
            format!("{:?}", expected.name),
            format!("{:?}", got.name),
        );
        check(
            "user_id",
            got.user_id == expected.user_id,
            format!("{:?}", expected.user_id),
            format!("{:?}", got.user_id),
        );
        check(
            "session_id",
            got.session_id == expected.session_id,
            format!("{:?}", expected.session_id),
            format!("{:?}", got.session_id),
        );
        check(
            "input",
            json_eq(&got.input, &None),
            "None".into(),
            format!("{:?}", got.input),
        );
        check(
            "output",
            json_eq(&got.output, &None),
            "None".into(),
            format!("{:?}", got.output),
        );
        check(
            "tags",
            json_eq(&got.tags, &expected.tags),
            format!("{:?}", expected.tags),
            format!("{:?}", got.tags),
        );
        check(
            "timestamp",
            got.timestamp == expected.timestamp,
            expected.timestamp.to_string(),
            got.timestamp.to_string(),
        );
        // meta: the studio's keys, plus exactly the documented extras.
        let studio_meta = match &expected.meta {
            Some(Value::Object(m)) => m.clone(),
            None => Map::new(),
            Some(other) => panic!("the test sends object metas, got {other}"),
        };
        let ours = match &got.meta {
            Some(Value::Object(m)) => m.clone(),
            other => {
                mismatches.push(format!("traces.meta of {id}: not an object: {other:?}"));
                continue;
            }
        };
        // (No trace_start among the events: a row the studio wrote.)
        let extras = data_of(id, "trace_start")
            .first()
            .map(|data| layout_meta(data, &TRACE_COLUMNS))
            .unwrap_or_default();
        let extras: Map<String, Value> = extras
            .into_iter()
            .filter(|(k, _)| !studio_meta.contains_key(k))
            .collect();
        let subset = studio_meta.iter().all(|(k, v)| ours.get(k) == Some(v));
        let added: Map<String, Value> = ours
            .iter()
            .filter(|(k, _)| !studio_meta.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check(
            "meta",
            subset && added == extras,
            format!("{studio_meta:?} + extras {extras:?}"),
            format!("{ours:?}"),
        );
    }
    for (id, expected) in &studio.observations {
        let Some(got) = observations.get(id) else {
            mismatches.push(format!("observations row {id}: studio has it, ours not"));
            continue;
        };
        let mut check = |column: &str, same: bool, expected: String, got: String| {
            if !same {
                mismatches.push(format!(
                    "observations.{column} of {id}: studio {}, ours {}",
                    short(&expected),
                    short(&got)
                ));
            }
        };
        macro_rules! same {
            ($column:literal, $ours:expr, $studio:expr) => {
                check(
                    $column,
                    $ours == $studio,
                    format!("{:?}", $studio),
                    format!("{:?}", $ours),
                )
            };
        }
        same!(
            "trace_id",
            got.trace_id.as_deref(),
            Some(expected.trace_id.as_str())
        );
        same!(
            "parent_observation_id",
            got.parent_observation_id,
            expected.parent_observation_id
        );
        same!("type", got.observation_type, expected.observation_type);
        same!("name", got.name, expected.name);
        same!("start_time", got.start_time, expected.start_time);
        same!("end_time", got.end_time, expected.end_time);
        check(
            "input",
            json_eq(&got.input, &expected.input),
            format!("{:?}", expected.input),
            format!("{:?}", got.input),
        );
        check(
            "output",
            json_eq(&got.output, &expected.output),
            format!("{:?}", expected.output),
            format!("{:?}", got.output),
        );
        same!(
            "prompt_tokens",
            got.prompt_tokens.map(i64::from),
            expected.prompt_tokens
        );
        same!(
            "completion_tokens",
            got.completion_tokens.map(i64::from),
            expected.completion_tokens
        );
        same!(
            "total_tokens",
            got.total_tokens.map(i64::from),
            expected.total_tokens
        );
        same!("total_cost", got.total_cost, None::<String>);
        same!("level", got.level, expected.level);
        same!(
            "status_message",
            got.status_message,
            expected.status_message
        );
        same!(
            "completion_start_time",
            got.completion_start_time,
            None::<NaiveDateTime>
        );
        same!("model_parameters", got.model_parameters, None::<Value>);
        let studio_costs = expected
            .costs
            .as_ref()
            .map(|(i, o, t)| [Some(cost_text(i)), Some(cost_text(o)), Some(cost_text(t))])
            .unwrap_or_default();
        same!("calculated_*_cost", got.costs, studio_costs);
        // model: ours keeps _llm_model whenever present (deliberate).
        let llm_model = expected
            .output
            .as_ref()
            .and_then(|o| o.get("_llm_model"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if got.model != expected.model {
            if expected.model.is_none() && got.model == llm_model {
                allowed.push(format!(
                    "observations.model of {id}: studio None (no cost), ours {:?}",
                    got.model
                ));
            } else {
                check(
                    "model",
                    false,
                    format!("{:?}", expected.model),
                    format!("{:?}", got.model),
                );
            }
        }
        // meta: the studio never writes an observation's meta; ours holds
        // the start's data.meta and the keys without a column.
        // (The newest start and the newest end or error: each group is
        // the newest event's.)
        let newest = |kinds: &[&str]| {
            events
                .iter()
                .filter(|e| {
                    kinds.contains(&e.event_type) && e.observation_id.as_deref() == Some(id)
                })
                .max_by_key(|e| e.at)
                .map(|e| &e.data)
        };
        let mut layout = Map::new();
        if let Some(data) = newest(&["observation_start"]) {
            layout.extend(layout_meta(data, &START_COLUMNS));
        }
        if let Some(data) = newest(&["observation_end", "observation_error"]) {
            layout.extend(layout_meta(data, &END_COLUMNS));
        }
        let layout = (!layout.is_empty()).then_some(Value::Object(layout));
        check(
            "meta",
            json_eq(&expected.meta, &None) && got.meta == layout,
            format!("{:?} + layout extras {layout:?}", expected.meta),
            format!("{:?}", got.meta),
        );
    }
    for id in traces.keys().filter(|id| !studio.traces.contains_key(*id)) {
        mismatches.push(format!("traces row {id}: ours has it, the studio's not"));
    }
    for id in observations
        .keys()
        .filter(|id| !studio.observations.contains_key(*id))
    {
        mismatches.push(format!(
            "observations row {id}: ours has it, the studio's not"
        ));
    }
    (mismatches, allowed)
}

// ---------------------------------------------------------------------------
// 1. The same rows as the studio's consumer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_equal_what_the_studios_consumer_stores() {
    let (env, db) = studio_database("studio_equal").await;
    let project = "proj-equal";
    create_project(&db, project).await;
    let prices = vec![
        Pricing {
            project_id: Some(project.into()),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            input: Decimal::from_str("2.5").unwrap(),
            output: Decimal::from_str("10").unwrap(),
        },
        Pricing {
            project_id: None,
            provider: "kvant".into(),
            model: "inference-apertus-8b".into(),
            input: Decimal::from_str("0.17").unwrap(),
            output: Decimal::from_str("0.19").unwrap(),
        },
    ];
    insert_price(&db, "price-project-gpt-4o", &prices[0]).await;
    insert_price(&db, "price-default-apertus", &prices[1]).await;

    let start = (Utc::now() - Span::minutes(20)).trunc_subsecs(3);
    let events = sdk_traces(project, start, 20);
    let compressed = events.iter().filter(|e| e.compressed()).count();
    assert!(compressed >= 8, "only {compressed} compressed events");

    // The studio's consumer, in the order the SDK made the events.
    let mut studio = StudioModel::default();
    for event in &events {
        studio.apply(event, &prices);
    }

    // Ours: every event once or twice, shuffled.
    let mut rng = StdRng::seed_from_u64(16);
    let mut arrival: Vec<&Event> = Vec::new();
    for event in &events {
        arrival.push(event);
        if rng.gen_bool(0.5) {
            arrival.push(event);
        }
    }
    arrival.shuffle(&mut rng);
    eprintln!(
        "{} events ({} compressed), published as {} entries shuffled",
        events.len(),
        compressed,
        arrival.len()
    );
    let service = spawn(&env, "equal");
    let mut redis = env.redis();
    // In five slices, each drained before the next: rows of one trace are
    // merged across transactions, in any order.
    for slice in arrival.chunks(arrival.len().div_ceil(5)) {
        publish(&env, &mut redis, slice);
        wait_drained(&env, &mut redis, &service);
    }
    assert_eq!(dead_letters(&db).await, [], "no dead letters");

    let traces = our_traces(&db).await;
    let observations = our_observations(&db).await;

    let (mismatches, allowed) = compare_with_studio(&events, &studio, &traces, &observations);
    // The only key ours adds to these traces' meta: run_id.
    for event in events.iter().filter(|e| e.event_type == "trace_start") {
        let mut extras = layout_meta(&event.data, &TRACE_COLUMNS);
        if let Some(Value::Object(meta)) = event.data.get("meta") {
            extras.retain(|k, _| !meta.contains_key(k));
        }
        assert_eq!(
            extras.keys().collect::<Vec<_>>(),
            ["run_id"],
            "{}",
            event.trace_id
        );
    }
    for line in &allowed {
        eprintln!("allowed difference: {line}");
    }
    for line in &mismatches {
        eprintln!("MISMATCH: {line}");
    }
    // One generation's cost, for the note.
    for id in ["eq-00-llm", "eq-01-llm", "eq-03-llm"] {
        let o = &studio.observations[id];
        let ours = &observations[id];
        let model = o.model.as_deref().unwrap();
        let (_, _, _, pricing) = studio_cost(
            &prices,
            project,
            model,
            o.prompt_tokens.unwrap(),
            o.completion_tokens.unwrap(),
        )
        .unwrap();
        eprintln!(
            "cost of {id}: model {model}, provider {}, price ({} per M in, {} per M out, {}), \
             tokens prompt {} completion {} total {} ({}); studio {:?}; ours {:?}",
            studio_provider(model),
            pricing.input,
            pricing.output,
            pricing
                .project_id
                .as_deref()
                .map_or("default price".to_owned(), |p| format!(
                    "price of project {p}"
                )),
            o.prompt_tokens.unwrap(),
            o.completion_tokens.unwrap(),
            o.total_tokens.unwrap(),
            if id == "eq-00-llm" {
                "reported"
            } else {
                "estimated"
            },
            o.costs
                .as_ref()
                .map(|(i, o, t)| (cost_text(i), cost_text(o), cost_text(t))),
            ours.costs
        );
    }
    let priced = studio
        .observations
        .values()
        .filter(|o| o.costs.is_some())
        .count();
    let estimated = events
        .iter()
        .filter(|e| {
            e.data
                .pointer("/output/_llm_tokens/total")
                .is_some_and(|t| t.is_null() || t.as_i64() == Some(0))
        })
        .count();
    eprintln!(
        "{} traces, {} observations compared; {priced} priced, {estimated} with tokens to estimate; {} allowed differences, {} mismatches",
        studio.traces.len(),
        studio.observations.len(),
        allowed.len(),
        mismatches.len()
    );
    assert!(priced >= 8, "{priced}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches (see above)",
        mismatches.len()
    );
}

// ---------------------------------------------------------------------------
// 1b. Events the SDK does not usually send: where the agreed layout departs
// from the studio's consumer, listed exactly.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_from_the_studios_consumer_are_exactly_the_known_ones() {
    let (env, db) = studio_database("studio_departures").await;
    let project = "proj-edge";
    create_project(&db, project).await;
    create_project(&db, "proj-other").await;
    let prices = vec![Pricing {
        project_id: Some(project.into()),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input: Decimal::from_str("2.5").unwrap(),
        output: Decimal::from_str("10").unwrap(),
    }];
    insert_price(&db, "price-edge", &prices[0]).await;
    let mut prices = prices;
    for (n, input) in ["0.15", "0.16"].iter().enumerate() {
        let twin = Pricing {
            project_id: None,
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input: Decimal::from_str(input).unwrap(),
            output: Decimal::from_str("0.6").unwrap(),
        };
        insert_price(&db, &format!("price-twin-{n}"), &twin).await;
        prices.push(twin);
    }
    let mut clock = Clock((Utc::now() - Span::minutes(10)).trunc_subsecs(3));
    let c = &mut clock;
    let (t, p) = ("edge-1", project);
    let generation = json!({"output": {"_llm_model": "gpt-4o",
                                       "_llm_tokens": {"prompt": 100, "completion": 50, "total": 150}},
                            "level": "DEFAULT", "type": "GENERATION"});
    let events = vec![
        // Nulls where the studio's `data.get(key, default)` keeps None.
        trace_start(
            c,
            t,
            p,
            json!({"name": null, "meta": null, "tags": null, "user_id": "u"}),
        ),
        observation(
            c,
            "observation_start",
            t,
            p,
            "a",
            json!({"name": null, "type": "SPAN"}),
        ),
        // An end with a status message (the studio's end never sets it).
        observation(
            c,
            "observation_end",
            t,
            p,
            "a",
            json!({"output": {"x": 1}, "level": "DEFAULT",
                                                             "status_message": "done with notes"}),
        ),
        // An end, then an error of the same observation.
        observation(
            c,
            "observation_start",
            t,
            p,
            "b",
            json!({"name": "b", "type": "SPAN"}),
        ),
        observation(c, "observation_end", t, p, "b", generation.clone()),
        observation(
            c,
            "observation_error",
            t,
            p,
            "b",
            json!({"level": "ERROR", "error": "late failure"}),
        ),
        // An error, then an end.
        observation(
            c,
            "observation_start",
            t,
            p,
            "d",
            json!({"name": "d", "type": "SPAN"}),
        ),
        observation(
            c,
            "observation_error",
            t,
            p,
            "d",
            json!({"level": "ERROR", "error": "first", "status_message": "other"}),
        ),
        observation(
            c,
            "observation_end",
            t,
            p,
            "d",
            json!({"output": {"recovered": true}, "level": "DEFAULT"}),
        ),
        // An error with a level of its own.
        observation(
            c,
            "observation_start",
            t,
            p,
            "e",
            json!({"name": "e", "type": "SPAN"}),
        ),
        observation(
            c,
            "observation_error",
            t,
            p,
            "e",
            json!({"level": "WARNING", "error": "soft"}),
        ),
        // An error with neither error nor status_message: the studio's
        // `data.get("error") or data.get("status_message")`.
        observation(
            c,
            "observation_start",
            t,
            p,
            "f",
            json!({"name": "f", "type": "SPAN"}),
        ),
        observation(c, "observation_error", t, p, "f", json!({"error": ""})),
        observation(
            c,
            "observation_start",
            t,
            p,
            "f2",
            json!({"name": "f2", "type": "SPAN"}),
        ),
        observation(
            c,
            "observation_error",
            t,
            p,
            "f2",
            json!({"error": "", "status_message": "from status"}),
        ),
        // Its own parent (a cycle).
        observation(
            c,
            "observation_start",
            t,
            p,
            "s",
            json!({"name": "s", "type": "SPAN", "parent_observation_id": "s"}),
        ),
        // Two default prices for one model: the studio's
        // scalar_one_or_none() raises, the cost is skipped.
        observation(
            c,
            "observation_start",
            t,
            p,
            "m",
            json!({"name": "m", "type": "SPAN"}),
        ),
        observation(
            c,
            "observation_end",
            t,
            p,
            "m",
            json!({"output": {"_llm_model": "gpt-4o-mini",
            "_llm_tokens": {"prompt": 10, "completion": 20, "total": 30}}, "type": "GENERATION"}),
        ),
        // Text over 1 KB in columns the studio does not index.
        trace_start(
            c,
            "edge-2",
            p,
            json!({"name": "n".repeat(1500), "session_id": "s".repeat(1500)}),
        ),
        observation(
            c,
            "observation_start",
            "edge-2",
            p,
            "long",
            json!({"name": "o".repeat(1500), "type": "SPAN"}),
        ),
        // An observation of another (existing) project under this trace:
        // the studio ignores an observation's project.
        observation(
            c,
            "observation_start",
            t,
            "proj-other",
            "g",
            json!({"name": "g", "type": "SPAN"}),
        ),
        // An SDK without a project (empty field): the studio ignores it
        // for observations.
        observation(
            c,
            "observation_start",
            t,
            "",
            "h",
            json!({"name": "h", "type": "SPAN"}),
        ),
    ];
    let mut studio = StudioModel::default();
    for event in &events {
        studio.apply(event, &prices);
    }
    let service = spawn(&env, "departures");
    let mut redis = env.redis();
    publish(&env, &mut redis, &events.iter().collect::<Vec<_>>());
    wait_drained(&env, &mut redis, &service);
    let traces = our_traces(&db).await;
    let observations = our_observations(&db).await;
    let (mismatches, allowed) = compare_with_studio(&events, &studio, &traces, &observations);
    for line in &allowed {
        eprintln!("allowed difference: {line}");
    }
    for line in &mismatches {
        eprintln!("departure: {line}");
    }
    // The agreed layout's own rules (STUDIO_LAYOUT.md, docs/event-format.md).
    let known = [
        // A null is no value: the default applies (the studio stores NULL,
        // which its API's `tags: list[str]` cannot even return).
        "traces.name of edge-1",
        "traces.tags of edge-1",
        "observations.name of a",
        // An end's data.status_message is stored (the studio's end ignores it).
        "observations.status_message of a",
        // End and error fill one group, the newest wins whole: the studio's
        // error sets only level, status_message and end_time over the end's
        // output, type, tokens, costs and model; its end keeps the error's
        // status_message.
        "observations.type of b",
        "observations.output of b",
        "observations.prompt_tokens of b",
        "observations.completion_tokens of b",
        "observations.total_tokens of b",
        "observations.calculated_*_cost of b",
        "observations.model of b",
        "observations.status_message of d",
        // An error is ERROR, as the studio writes it; another level it
        // carries is kept in meta (`level`), where the studio drops it.
        "observations.meta of e",
        // An id of another project, or no project: dead letters
        // (project_mismatch, missing_field); the studio files an
        // observation under its trace whatever its project.
        "observations row g",
        "observations row h",
        // Bounded text: name and session_id cut at 1 KB, the cut noted in
        // meta (the studio's schema indexes session_id, not name).
        "traces.name of edge-2",
        "traces.session_id of edge-2",
        "traces.meta of edge-2",
        "observations.name of long",
        "observations.meta of long",
        // A self-parent is dropped (a cycle), the repair noted in meta.
        "observations.parent_observation_id of s",
        "observations.meta of s",
    ];
    let unexpected: Vec<&String> = mismatches
        .iter()
        .filter(|m| !known.iter().any(|k| m.starts_with(&format!("{k}:"))))
        .collect();
    let missing: Vec<&&str> = known
        .iter()
        .filter(|k| !mismatches.iter().any(|m| m.starts_with(&format!("{k}:"))))
        .collect();
    assert_eq!(
        allowed,
        ["observations.model of m: studio None (no cost), ours Some(\"gpt-4o-mini\")"]
    );
    assert_eq!(
        dead_letters(&db).await,
        [
            (
                "missing_field".to_owned(),
                Some("observation_start".to_owned()),
                Some("edge-1".to_owned())
            ),
            (
                "project_mismatch".to_owned(),
                Some("observation_start".to_owned()),
                Some("edge-1".to_owned())
            ),
        ]
    );
    assert!(
        unexpected.is_empty() && missing.is_empty(),
        "departures from the studio's consumer not in the agreed layout: {unexpected:#?}\n\
         known departures that are gone: {missing:#?}"
    );
}

// ---------------------------------------------------------------------------
// 1c. Switching consumers mid-trace: rows the studio's consumer wrote are
// completed as it would have completed them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_studios_consumer_began_are_completed_as_it_would() {
    let (env, db) = studio_database("studio_handover").await;
    let project = "proj-handover";
    create_project(&db, project).await;
    let prices = vec![Pricing {
        project_id: Some(project.into()),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input: Decimal::from_str("2.5").unwrap(),
        output: Decimal::from_str("10").unwrap(),
    }];
    insert_price(&db, "price-handover", &prices[0]).await;
    let events = sdk_traces(
        project,
        (Utc::now() - Span::minutes(10)).trunc_subsecs(3),
        6,
    );
    let (begun, rest): (Vec<&Event>, Vec<&Event>) = events
        .iter()
        .partition(|e| matches!(e.event_type, "trace_start" | "observation_start"));
    // The studio's consumer stored the trace_starts and observation_starts
    // (its own INSERTs, as its ORM writes them), then stopped.
    let mut studio = StudioModel::default();
    for event in &begun {
        studio.apply(event, &prices);
    }
    for (id, t) in &studio.traces {
        db.execute(
            "INSERT INTO public.traces (id, project_id, name, user_id, session_id, meta, tags, \"timestamp\")
             VALUES ($1, $2, $3, $4, $5, $6::text::json, $7::text::json, $8)",
            &[id, &t.project_id, &t.name, &t.user_id, &t.session_id,
              &t.meta.as_ref().map(Value::to_string), &t.tags.as_ref().map(Value::to_string), &t.timestamp],
        )
        .await
        .unwrap();
    }
    for (id, o) in &studio.observations {
        db.execute(
            "INSERT INTO public.observations (id, trace_id, parent_observation_id, type, name,
                 start_time, input, level)
             VALUES ($1, $2, $3, $4::text::observationtype, $5, $6, $7::text::json, $8)",
            &[
                id,
                &o.trace_id,
                &o.parent_observation_id,
                &o.observation_type,
                &o.name,
                &o.start_time,
                &o.input.as_ref().map(Value::to_string),
                &o.level,
            ],
        )
        .await
        .unwrap();
    }
    // Ours takes over: the ends, shuffled, some twice.
    for event in &rest {
        studio.apply(event, &prices);
    }
    let mut rng = StdRng::seed_from_u64(17);
    let mut arrival: Vec<&Event> = rest.iter().flat_map(|e| [*e, *e]).collect();
    arrival.shuffle(&mut rng);
    let service = spawn(&env, "handover");
    let mut redis = env.redis();
    publish(&env, &mut redis, &arrival);
    wait_drained(&env, &mut redis, &service);
    assert_eq!(dead_letters(&db).await, []);
    let traces = our_traces(&db).await;
    let observations = our_observations(&db).await;
    let (mismatches, allowed) = compare_with_studio(
        &rest.iter().map(|e| (*e).clone()).collect::<Vec<_>>(),
        &studio,
        &traces,
        &observations,
    );
    for line in &allowed {
        eprintln!("allowed difference: {line}");
    }
    for line in &mismatches {
        eprintln!("MISMATCH: {line}");
    }
    assert!(
        studio.observations.values().any(|o| o.costs.is_some()),
        "a priced generation among them"
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches (see above)",
        mismatches.len()
    );
}

// ---------------------------------------------------------------------------
// 2. Unknown projects are dead letters, replayed once the project exists.

fn small_trace(clock: &mut Clock, trace: &str, project: &str) -> Vec<Event> {
    let o = format!("{trace}-o");
    vec![
        trace_start(
            clock,
            trace,
            project,
            json!({"name": format!("{trace} of {project}"), "user_id": "u"}),
        ),
        observation(
            clock,
            "observation_start",
            trace,
            project,
            &o,
            json!({"name": "node", "type": "SPAN", "parent_observation_id": null, "input": {"x": 1}}),
        ),
        observation(
            clock,
            "observation_end",
            trace,
            project,
            &o,
            json!({"output": {"y": 2}, "level": "DEFAULT"}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_projects_are_dead_letters_until_created_then_replayed() {
    let (env, db) = studio_database("studio_unknown").await;
    create_project(&db, "known").await;
    let service = spawn(&env, "unknown");
    let mut clock = Clock(Utc::now() - Span::minutes(5));
    let ghost = small_trace(&mut clock, "ghost-trace", "ghost");
    let known = small_trace(&mut clock, "known-trace", "known");
    // Interleaved: neighbours in the same batches.
    let mixed: Vec<&Event> = ghost.iter().zip(&known).flat_map(|(a, b)| [a, b]).collect();
    let mut redis = env.redis();
    publish(&env, &mut redis, &mixed);
    wait_drained(&env, &mut redis, &service);

    // Seen once under the full suite in the order observation_end,
    // trace_start, observation_start: `dead_letters` sorts them.
    assert_eq!(
        dead_letters(&db).await,
        ["observation_end", "observation_start", "trace_start"]
            .iter()
            .map(|t| (
                "unknown_project".to_owned(),
                Some((*t).to_owned()),
                Some("ghost-trace".to_owned())
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        service.metric("swisper_ingest_dead_letters_total{reason=\"unknown_project\"}"),
        Some(3.0)
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.traces WHERE id = 'ghost-trace'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.projects WHERE id = 'ghost'"
        )
        .await,
        0,
        "not created in front of a studio"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.observations WHERE id = 'known-trace-o' AND end_time IS NOT NULL AND name = 'node'").await,
        1,
        "the neighbours are stored"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.traces WHERE id = 'known-trace' AND name = 'known-trace of known'").await,
        1
    );

    // The studio creates the project; the operator replays.
    create_project(&db, "ghost").await;
    let replayed = env.dead_letters(&["replay", "--reason", "unknown_project"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let stdout = String::from_utf8_lossy(&replayed.stdout);
    assert!(stdout.contains("3 replayed"), "{stdout}");
    assert!(
        wait_for_count(&db, "SELECT count(*) FROM public.observations WHERE id = 'ghost-trace-o' AND end_time IS NOT NULL", 1, WAIT).await,
        "replayed entries not stored; log: {}",
        service.log()
    );
    wait_drained(&env, &mut redis, &service);
    let trace = &our_traces(&db).await["ghost-trace"];
    assert_eq!(trace.project_id.as_deref(), Some("ghost"));
    assert_eq!(trace.name.as_deref(), Some("ghost-trace of ghost"));
    assert_eq!(trace.user_id.as_deref(), Some("u"));
    assert_eq!(
        trace.timestamp,
        parse_iso(ghost[0].data["timestamp"].as_str().unwrap())
    );
    let o = &our_observations(&db).await["ghost-trace-o"];
    assert_eq!(o.name.as_deref(), Some("node"));
    assert_eq!(o.input, Some(json!({"x": 1})));
    assert_eq!(o.output, Some(json!({"y": 2})));
    assert_eq!(o.level, "DEFAULT");
    assert_eq!(
        o.start_time,
        parse_iso(ghost[1].data["start_time"].as_str().unwrap())
    );
    assert_eq!(
        o.end_time,
        Some(parse_iso(ghost[2].data["end_time"].as_str().unwrap()))
    );
    assert_eq!(dead_letters(&db).await, [], "all replayed, none new");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM swisper_ingest.dead_letters WHERE replayed_at IS NOT NULL"
        )
        .await,
        3
    );
}

// ---------------------------------------------------------------------------
// 3. A type outside the studio's enum.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_is_a_span_with_the_original_in_meta() {
    let (env, db) = studio_database("studio_type").await;
    create_project(&db, "p").await;
    let service = spawn(&env, "type");
    let mut clock = Clock(Utc::now() - Span::minutes(5));
    let events = [
        trace_start(&mut clock, "typed", "p", json!({"name": "typed"})),
        observation(
            &mut clock,
            "observation_start",
            "typed",
            "p",
            "chain",
            json!({"name": "chain", "type": "CHAIN"}),
        ),
        observation(
            &mut clock,
            "observation_end",
            "typed",
            "p",
            "chain",
            json!({"output": {"ok": 1}}),
        ),
        // An end's unknown type leaves the start's in place.
        observation(
            &mut clock,
            "observation_start",
            "typed",
            "p",
            "tool",
            json!({"name": "tool", "type": "TOOL"}),
        ),
        observation(
            &mut clock,
            "observation_end",
            "typed",
            "p",
            "tool",
            json!({"output": {"ok": 2}, "type": "RETRIEVER"}),
        ),
    ];
    let mut redis = env.redis();
    publish(&env, &mut redis, &events.iter().collect::<Vec<_>>());
    wait_drained(&env, &mut redis, &service);
    assert_eq!(dead_letters(&db).await, []);
    let observations = our_observations(&db).await;
    let chain = &observations["chain"];
    assert_eq!(chain.observation_type, "SPAN");
    assert_eq!(chain.meta, Some(json!({"_ingest_original_type": "CHAIN"})));
    assert_eq!(chain.name.as_deref(), Some("chain"));
    assert!(chain.end_time.is_some());
    let tool = &observations["tool"];
    assert_eq!(tool.observation_type, "TOOL");
    assert_eq!(
        tool.meta,
        Some(json!({"_ingest_original_type": "RETRIEVER"}))
    );
    assert_eq!(
        service.metric("swisper_ingest_unknown_observation_types_total"),
        Some(2.0)
    );
}

// ---------------------------------------------------------------------------
// 4. One id, two projects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_another_project_for_a_stored_id_are_refused() {
    let (env, db) = studio_database("studio_mismatch").await;
    create_project(&db, "pa").await;
    create_project(&db, "pb").await;
    let service = spawn(&env, "mismatch");
    let mut clock = Clock(Utc::now() - Span::minutes(5));
    let first = small_trace(&mut clock, "t-shared", "pa");
    let mut redis = env.redis();
    publish(&env, &mut redis, &first.iter().collect::<Vec<_>>());
    wait_drained(&env, &mut redis, &service);
    let traces_before = our_traces(&db).await;
    let observations_before = our_observations(&db).await;
    assert_eq!(traces_before["t-shared"].project_id.as_deref(), Some("pa"));

    let intruders = [
        trace_start(
            &mut clock,
            "t-shared",
            "pb",
            json!({"name": "intruder", "user_id": "x"}),
        ),
        observation(
            &mut clock,
            "observation_start",
            "t-shared",
            "pb",
            "pb-new",
            json!({"name": "new under pb"}),
        ),
        observation(
            &mut clock,
            "observation_end",
            "t-shared",
            "pb",
            "t-shared-o",
            json!({"output": {"stolen": true}, "level": "ERROR"}),
        ),
        // pa's observation id under a trace of pb's own.
        observation(
            &mut clock,
            "observation_end",
            "t-pb",
            "pb",
            "t-shared-o",
            json!({"output": {"moved": true}}),
        ),
    ];
    publish(&env, &mut redis, &intruders.iter().collect::<Vec<_>>());
    wait_drained(&env, &mut redis, &service);
    let letters = dead_letters(&db).await;
    assert_eq!(
        letters,
        [
            ("observation_end", "t-pb"),
            ("observation_end", "t-shared"),
            ("observation_start", "t-shared"),
            ("trace_start", "t-shared"),
        ]
        .iter()
        .map(|(e, t)| (
            "project_mismatch".to_owned(),
            Some((*e).to_owned()),
            Some((*t).to_owned())
        ))
        .collect::<Vec<_>>()
    );
    assert_eq!(
        our_traces(&db).await,
        traces_before,
        "pa's trace unchanged, no t-pb"
    );
    assert_eq!(
        our_observations(&db).await,
        observations_before,
        "pa's observation unchanged, no pb-new"
    );
    assert_eq!(
        service.metric("swisper_ingest_dead_letters_total{reason=\"project_mismatch\"}"),
        Some(4.0)
    );
}

// ---------------------------------------------------------------------------
// 5. The studio's API reads the rows: its two SELECTs, typed as its SQLModel
// models map them.

/// `ObservationType`, the studio's enum (`app/models/enums.py`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ObservationType {
    Span,
    Generation,
    Event,
    Tool,
    Agent,
}

impl<'a> FromSql<'a> for ObservationType {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(match std::str::from_utf8(raw)? {
            "SPAN" => Self::Span,
            "GENERATION" => Self::Generation,
            "EVENT" => Self::Event,
            "TOOL" => Self::Tool,
            "AGENT" => Self::Agent,
            other => return Err(format!("not an observationtype: {other}").into()),
        })
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "observationtype"
    }
}

/// A `numeric` as Python's Decimal (binary wire format, scale kept).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Numeric(Decimal);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let word = |i: usize| i16::from_be_bytes([raw[i], raw[i + 1]]);
        let ndigits = word(0) as usize;
        let weight = i32::from(word(2));
        let sign = u16::from_be_bytes([raw[4], raw[5]]);
        let scale = u32::from(u16::from_be_bytes([raw[6], raw[7]]));
        if sign == 0xC000 {
            return Err("NaN".into());
        }
        let mut value = Decimal::ZERO;
        for k in 0..ndigits {
            let digit = i64::from(word(8 + 2 * k));
            let exponent = weight - k as i32;
            value += if exponent >= 0 {
                Decimal::from(digit) * Decimal::from(10_000i64.pow(exponent as u32))
            } else {
                Decimal::new(digit, (-4 * exponent) as u32)
            };
        }
        if sign == 0x4000 {
            value.set_sign_negative(true);
        }
        value.rescale(scale);
        Ok(Numeric(value))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[derive(Debug)]
#[allow(dead_code)]
struct ApiTrace {
    id: String,
    project_id: String,
    name: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    tags: Value,
    timestamp: NaiveDateTime,
}

#[derive(Debug)]
#[allow(dead_code)]
struct ApiObservation {
    id: String,
    trace_id: String,
    parent_observation_id: Option<String>,
    observation_type: ObservationType,
    name: Option<String>,
    start_time: NaiveDateTime,
    end_time: Option<NaiveDateTime>,
    completion_start_time: Option<NaiveDateTime>,
    input: Option<Value>,
    output: Option<Value>,
    meta: Option<Value>,
    model: Option<String>,
    model_parameters: Option<Value>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    total_tokens: Option<i32>,
    calculated_input_cost: Option<Numeric>,
    calculated_output_cost: Option<Numeric>,
    calculated_total_cost: Option<Numeric>,
    total_cost: Option<Numeric>,
    level: String,
    status_message: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_studio_reads_the_rows_with_its_types() {
    let (env, db) = studio_database("studio_read").await;
    let project = "proj-read";
    create_project(&db, project).await;
    let price = Pricing {
        project_id: Some(project.into()),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        input: Decimal::from_str("2.5").unwrap(),
        output: Decimal::from_str("10").unwrap(),
    };
    insert_price(&db, "p1", &price).await;
    let service = spawn(&env, "read");
    // Three SDK traces: a generation priced, a tool, an error, an open one.
    let events = sdk_traces(project, Utc::now() - Span::minutes(5), 8);
    let mut redis = env.redis();
    publish(&env, &mut redis, &events.iter().collect::<Vec<_>>());
    wait_drained(&env, &mut redis, &service);

    for trace_id in ["eq-00", "eq-04", "eq-07"] {
        // select(Trace).where(Trace.id == trace_id)
        let row = db
            .query_one(
                "SELECT traces.id, traces.project_id, traces.name, traces.user_id, traces.session_id,
                        traces.input, traces.output, traces.meta, traces.tags, traces.timestamp
                 FROM traces WHERE traces.id = $1",
                &[&trace_id],
            )
            .await
            .unwrap();
        let trace = ApiTrace {
            id: row.try_get(0).unwrap(),
            project_id: row.try_get(1).expect("project_id set"),
            name: row.try_get(2).unwrap(),
            user_id: row.try_get(3).unwrap(),
            session_id: row.try_get(4).unwrap(),
            input: row.try_get(5).unwrap(),
            output: row.try_get(6).unwrap(),
            meta: row.try_get(7).unwrap(),
            tags: row.try_get(8).expect("tags: list[str], never NULL"),
            timestamp: row.try_get(9).expect("a naive timestamp"),
        };
        assert!(
            trace.meta.as_ref().is_some_and(Value::is_object),
            "{trace:?}"
        );
        assert!(
            trace
                .tags
                .as_array()
                .is_some_and(|t| t.iter().all(Value::is_string)),
            "{trace:?}"
        );
        assert_eq!(trace.project_id, project);
        // select(Observation).where(Observation.trace_id == trace_id)
        let rows = db
            .query(
                "SELECT observations.id, observations.trace_id, observations.parent_observation_id,
                        observations.type, observations.name, observations.start_time,
                        observations.end_time, observations.completion_start_time,
                        observations.input, observations.output, observations.meta,
                        observations.model, observations.model_parameters,
                        observations.prompt_tokens, observations.completion_tokens,
                        observations.total_tokens, observations.calculated_input_cost,
                        observations.calculated_output_cost, observations.calculated_total_cost,
                        observations.total_cost, observations.level, observations.status_message
                 FROM observations WHERE observations.trace_id = $1
                 ORDER BY observations.start_time",
                &[&trace_id],
            )
            .await
            .unwrap();
        assert!(rows.len() >= 3, "{trace_id}: {} observations", rows.len());
        for row in rows {
            let o = ApiObservation {
                id: row.try_get(0).unwrap(),
                trace_id: row.try_get(1).expect("trace_id set"),
                parent_observation_id: row.try_get(2).unwrap(),
                observation_type: row.try_get(3).expect("a valid observationtype"),
                name: row.try_get(4).unwrap(),
                start_time: row.try_get(5).expect("start_time NOT NULL, naive"),
                end_time: row.try_get(6).unwrap(),
                completion_start_time: row.try_get(7).unwrap(),
                input: row.try_get(8).unwrap(),
                output: row.try_get(9).unwrap(),
                meta: row.try_get(10).unwrap(),
                model: row.try_get(11).unwrap(),
                model_parameters: row.try_get(12).unwrap(),
                prompt_tokens: row.try_get(13).unwrap(),
                completion_tokens: row.try_get(14).unwrap(),
                total_tokens: row.try_get(15).unwrap(),
                calculated_input_cost: row.try_get(16).unwrap(),
                calculated_output_cost: row.try_get(17).unwrap(),
                calculated_total_cost: row.try_get(18).unwrap(),
                total_cost: row.try_get(19).unwrap(),
                level: row.try_get(20).expect("level NOT NULL"),
                status_message: row.try_get(21).unwrap(),
            };
            assert!(o.meta.as_ref().is_none_or(Value::is_object), "{o:?}");
            assert!(
                o.input
                    .as_ref()
                    .is_none_or(|v| v.is_object() || v.is_null()),
                "{o:?}"
            );
            assert!(
                o.output
                    .as_ref()
                    .is_none_or(|v| v.is_object() || v.is_null()),
                "{o:?}"
            );
            if let (Some(end), start) = (o.end_time, o.start_time) {
                assert!(end >= start, "{o:?}");
            }
            if let Some(Numeric(cost)) = o.calculated_total_cost {
                assert_eq!(cost.scale(), 6, "{o:?}");
                assert_eq!(
                    Some(cost),
                    o.calculated_input_cost
                        .zip(o.calculated_output_cost)
                        .map(|(i, out)| (i.0 + out.0).round_dp(6)),
                    "{o:?}"
                );
            }
            eprintln!(
                "{trace_id}: {} {:?} {:?} level {} tokens {:?}/{:?}/{:?} cost {:?}",
                o.id,
                o.observation_type,
                o.name,
                o.level,
                o.prompt_tokens,
                o.completion_tokens,
                o.total_tokens,
                o.calculated_total_cost.map(|c| c.0.to_string())
            );
        }
    }
    // The priced generation, read back as a Decimal with its scale.
    let row = db
        .query_one(
            "SELECT type, calculated_input_cost, calculated_output_cost, calculated_total_cost
             FROM observations WHERE id = 'eq-00-llm'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, ObservationType>(0),
        ObservationType::Generation
    );
    let costs: [Numeric; 3] = [row.get(1), row.get(2), row.get(3)];
    assert_eq!(
        costs.map(|c| c.0.to_string()),
        ["0.000308", "0.000450", "0.000758"].map(str::to_owned),
        "123 prompt tokens at 2.5 per M = 0.0003075 -> 0.000308 (half-even), 45 at 10 = 0.00045, \
         total 0.0007575 -> 0.000758"
    );
}
