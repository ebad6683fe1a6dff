//! Span export over OTLP/HTTP, end to end: the real binary sends its batch
//! spans to a small receiver in this test, which decodes them as a
//! collector would (protobuf, opentelemetry-proto).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);
/// The exporter's background thread (thread names are cut to 15 bytes).
const EXPORTER_THREAD: &str = "OpenTelemetry.T";

/// What a POST brought: its path, content type and decoded body.
struct Export {
    path: String,
    content_type: String,
    request: ExportTraceServiceRequest,
}

/// A one-route OTLP/HTTP receiver on a loopback port: every request is
/// answered 200 with an empty (valid) protobuf response, and kept.
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Export>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Export>>> = Arc::default();
        let kept = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, kept.clone()));
            }
        });
        Self { port, received }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .flat_map(|export| &export.request.resource_spans)
            .flat_map(|resource| {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| string(&r.attributes, "service.name"))
                    .unwrap_or_default();
                resource
                    .scope_spans
                    .iter()
                    .flat_map(|scope| scope.spans.clone())
                    .map(move |span| (service.clone(), span))
            })
            .collect()
    }
}

/// HTTP/1.1 with keep-alive, as the exporter's client speaks it.
async fn serve_connection(stream: TcpStream, kept: Arc<Mutex<Vec<Export>>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await.unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or_default();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        let request = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("the body is an ExportTraceServiceRequest");
        kept.lock().unwrap().push(Export {
            path,
            content_type,
            request,
        });
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// Names of the threads of a process, as the kernel shows them.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A stream id as a sortable pair.
fn id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("an entry id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Publishes `traces` seed traces (7 entries each); returns their ids.
fn publish_traces(env: &TestEnv, prefix: &str, traces: usize) -> Vec<String> {
    let mut redis = env.redis();
    (0..traces)
        .flat_map(|t| seed_trace(&format!("{prefix}-{t}"), "project-1"))
        .map(|event| env.publish(&mut redis, &as_fields(&event)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_in_an_exported_batch_span() {
    let env = TestEnv::new("otlp_spans").await;
    let receiver = Receiver::start().await;
    // Small pages: several batches, some of them full (their open starts
    // held for the next transaction, so a page spans two transactions).
    let published = publish_traces(&env, "trace", 4);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let mut service = env.spawn(
        "replica-a",
        &[
            ("OBSERVABILITY_BATCH_SIZE", "5"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "ingest-under-test"),
        ],
    );
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, 3 * 4, WAIT).await;
    assert!(stored, "events not stored; log: {}", service.log());
    assert!(
        threads(service.child.id())
            .iter()
            .any(|t| t == EXPORTER_THREAD),
        "no exporter thread: {:?}",
        threads(service.child.id())
    );
    // SIGTERM: the service drains, then flushes its spans before exiting.
    let status = service.terminate();
    assert!(status.success(), "exit {status:?}; log: {}", service.log());

    let spans = receiver.spans();
    {
        let received = receiver.received.lock().unwrap();
        assert!(
            !received.is_empty(),
            "nothing exported; log: {}",
            service.log()
        );
        for export in received.iter() {
            assert_eq!(export.path, "/v1/traces");
            assert_eq!(export.content_type, "application/x-protobuf");
        }
    }
    let batches: Vec<&Span> = spans
        .iter()
        .filter(|(service, span)| {
            assert_eq!(service, "ingest-under-test");
            span.name == "batch"
        })
        .map(|(_, span)| span)
        .collect();
    let ids: Vec<(u64, u64)> = published.iter().map(|text| id(text)).collect();
    let mut covered: BTreeSet<(u64, u64)> = BTreeSet::new();
    for span in &batches {
        let a = &span.attributes;
        let first = string(a, "first_id").expect("first_id");
        let last = string(a, "last_id").expect("last_id");
        assert!(
            published.contains(&first),
            "first_id {first} was not published"
        );
        assert!(
            published.contains(&last),
            "last_id {last} was not published"
        );
        let in_range: Vec<_> = ids
            .iter()
            .filter(|i| (id(&first)..=id(&last)).contains(i))
            .collect();
        let entries = int(a, "entries").expect("entries");
        if let Some(Value::BoolValue(false)) = attribute(a, "claimed") {
            // A read of new entries is contiguous.
            assert_eq!(entries, in_range.len() as i64, "{span:#?}");
        }
        assert_eq!(string(a, "stream").as_deref(), Some(env.stream.as_str()));
        let consumer = string(a, "consumer").unwrap_or_default();
        assert!(consumer.starts_with("replica-a"), "consumer {consumer}");
        assert_eq!(string(a, "outcome").as_deref(), Some("ok"), "{span:#?}");
        assert_eq!(int(a, "acked"), Some(entries), "{span:#?}");
        let counted = ["stored", "expired", "dead_lettered"]
            .iter()
            .map(|key| int(a, key).unwrap_or(0))
            .sum::<i64>();
        assert_eq!(counted, entries, "{span:#?}");
        assert_eq!(int(a, "stored"), Some(entries), "{span:#?}");
        assert!(int(a, "bytes").unwrap_or(0) > 0);
        let status = span.status.as_ref().map(|s| s.code);
        assert_eq!(status, Some(StatusCode::Ok as i32));
        assert!(span.parent_span_id.is_empty(), "a batch span is a root");
        covered.extend(in_range.into_iter().copied());
    }
    assert_eq!(
        covered.len(),
        published.len(),
        "published entries missing from the batch spans"
    );
    assert!(
        batches.len() >= 2,
        "expected several pages: {}",
        batches.len()
    );

    // Each transaction's span is the child of its first page's span and
    // names all of its pages.
    let writes: Vec<&Span> = spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.name == "write")
        .collect();
    assert!(!writes.is_empty(), "no write spans");
    for write in &writes {
        let parent = batches
            .iter()
            .find(|b| b.span_id == write.parent_span_id && b.trace_id == write.trace_id)
            .unwrap_or_else(|| panic!("write span without its batch parent: {write:#?}"));
        let named = string(&write.attributes, "batches").unwrap();
        let first = string(&parent.attributes, "first_id").unwrap();
        assert!(
            named.split(',').next() == Some(first.as_str()),
            "{named} / {first}"
        );
        assert_eq!(
            int(&write.attributes, "pages"),
            Some(named.split(',').count() as i64)
        );
        assert_eq!(write.links.len() + 1, named.split(',').count());
        assert_eq!(string(&write.attributes, "outcome").as_deref(), Some("ok"));
    }
    // For the record (timing decides how pages share transactions).
    let named: Vec<String> = writes
        .iter()
        .flat_map(|w| {
            string(&w.attributes, "batches")
                .unwrap()
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let split = named.len() - named.iter().collect::<BTreeSet<_>>().len();
    let linked = writes.iter().filter(|w| !w.links.is_empty()).count();
    eprintln!(
        "{} batch spans, {} write spans ({linked} with links), {split} page(s) in two transactions",
        batches.len(),
        writes.len()
    );
    let sample = batches
        .iter()
        .max_by_key(|span| int(&span.attributes, "entries"))
        .unwrap();
    eprintln!("one batch span as received:\n{}", describe(sample));
}

/// A span on a few lines: ids in hex, attributes as key=value.
fn describe(span: &Span) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let attributes: Vec<String> = span
        .attributes
        .iter()
        .map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(text)) => format!("{}={text:?}", kv.key),
                Some(Value::IntValue(n)) => format!("{}={n}", kv.key),
                Some(Value::BoolValue(b)) => format!("{}={b}", kv.key),
                other => format!("{}={other:?}", kv.key),
            },
        )
        .collect();
    let status = span.status.as_ref().map(|s| s.code).unwrap_or_default();
    format!(
        "name={} trace_id={} span_id={} parent_span_id={:?} links={}\n  duration_ns={} status_code={status}\n  {}",
        span.name,
        hex(&span.trace_id),
        hex(&span.span_id),
        hex(&span.parent_span_id),
        span.links.len(),
        span.end_time_unix_nano - span.start_time_unix_nano,
        attributes.join(" ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_nothing_is_started_or_sent() {
    let env = TestEnv::new("otlp_off").await;
    let receiver = Receiver::start().await;
    publish_traces(&env, "plain", 1);
    // No variable at all: no exporter thread.
    let mut plain = env.spawn("replica-a", &[]);
    let db = env.db().await;
    let stored = wait_for_ended_observations(&db, 3, WAIT).await;
    assert!(stored, "events not stored; log: {}", plain.log());
    let names = threads(plain.child.id());
    assert!(!names.is_empty(), "no thread list for the service");
    assert!(
        !names
            .iter()
            .any(|t| t == EXPORTER_THREAD || t.starts_with("reqwest")),
        "an exporter runs: {names:?}"
    );
    assert!(plain.terminate().success());
    assert!(!plain.log().contains("exporting spans"));

    // An endpoint, but the exporter named `none`: nothing reaches it.
    publish_traces(&env, "off", 1);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let mut off = env.spawn(
        "replica-b",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    );
    let stored = wait_for_ended_observations(&db, 6, WAIT).await;
    assert!(stored, "events not stored; log: {}", off.log());
    assert!(!threads(off.child.id()).iter().any(|t| t == EXPORTER_THREAD));
    assert!(off.terminate().success());
    assert!(receiver.received.lock().unwrap().is_empty());
}
