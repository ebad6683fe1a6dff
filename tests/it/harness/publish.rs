//! Publishing as the SDK does (`XADD` of one entry, a backlog, seed traces)
//! and waiting until what was published is stored: the one way every test
//! feeds the stream and waits for the result.

use std::io::Write as _;
use std::ops::Range;
use std::time::Duration;

use redis::ToRedisArgs;
use tokio_postgres::Client;

use super::env::TestEnv;
use super::pg::count;
use super::wait::wait_for_async;

/// One stream entry: its fields in order, as [`seed_trace`] makes them.
pub type Entry = Vec<(String, String)>;

/// Entries per pipeline of [`TestEnv::publish_backlog`]: a million-entry
/// backlog goes out in seconds, a pipeline stays a few MiB.
const PIPELINE_ENTRIES: usize = 10_000;
const PIPELINE_BYTES: usize = 8 << 20;

/// `XADD stream * k v ...`, fields in the given order.
pub fn xadd<K: ToRedisArgs, V: ToRedisArgs>(
    stream: &str,
    fields: impl IntoIterator<Item = (K, V)>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd
}

impl TestEnv {
    /// XADD one entry with fields in the given order; returns its id.
    pub fn publish(&self, conn: &mut redis::Connection, fields: &[(&str, &str)]) -> String {
        xadd(&self.stream, fields.iter().copied())
            .query(conn)
            .expect("xadd")
    }

    /// XADD raw bytes (invalid UTF-8, duplicated names...).
    pub fn publish_raw(&self, conn: &mut redis::Connection, fields: &[(&[u8], &[u8])]) -> String {
        xadd(&self.stream, fields.iter().copied())
            .query(conn)
            .expect("xadd")
    }

    /// Publishes `entries` in order, one XADD each, as the SDK does: for
    /// publishing while the service reads (its batches then form as they
    /// would in production).
    pub fn publish_each(
        &self,
        conn: &mut redis::Connection,
        entries: impl IntoIterator<Item = Entry>,
    ) {
        for entry in entries {
            let _: String = xadd(&self.stream, entry).query(conn).expect("xadd");
        }
    }

    /// Publishes a backlog in order, pipelined (a million entries in
    /// seconds); returns how many. Pipelines arrive as one burst: for
    /// backlogs the service finds waiting, not for traffic under test.
    pub fn publish_backlog(
        &self,
        conn: &mut redis::Connection,
        entries: impl IntoIterator<Item = Entry>,
    ) -> usize {
        let mut published = 0;
        let mut pipe = redis::pipe();
        let (mut queued, mut bytes) = (0, 0);
        for entry in entries {
            bytes += entry.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            pipe.add_command(xadd(&self.stream, entry)).ignore();
            queued += 1;
            if queued == PIPELINE_ENTRIES || bytes >= PIPELINE_BYTES {
                let _: () = pipe.query(conn).expect("xadd a backlog");
                published += queued;
                pipe = redis::pipe();
                (queued, bytes) = (0, 0);
            }
        }
        if queued > 0 {
            let _: () = pipe.query(conn).expect("xadd a backlog");
            published += queued;
        }
        published
    }

    /// Publishes the seed traces `trace-{t}` of project `p` for each `t`
    /// (7 entries each: 3 observations end, one of them failing).
    pub fn publish_traces(&self, conn: &mut redis::Connection, traces: Range<usize>) {
        self.publish_each(
            conn,
            traces.flat_map(|t| seed_trace(&format!("trace-{t}"), "p")),
        );
    }
}

/// An `observation_start` of project `p` with the given `data`.
pub fn observation_start(trace: &str, id: &str, ts: &str, data: &str) -> Entry {
    [
        ("event_type", "observation_start"),
        ("trace_id", trace),
        ("project_id", "p"),
        ("timestamp", ts),
        ("observation_id", id),
        ("data", data),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// Waits until `sql` (a `SELECT count(*)`) counts `expected`.
pub async fn wait_for_count(db: &Client, sql: &str, expected: i64, timeout: Duration) -> bool {
    wait_for_async(timeout, || async { count(db, sql).await == expected }).await
}

/// Waits until `expected` observations have their end stored.
pub async fn wait_for_ended_observations(db: &Client, expected: usize, timeout: Duration) -> bool {
    wait_for_count(
        db,
        "SELECT count(*) FROM observations WHERE end_time IS NOT NULL",
        expected as i64,
        timeout,
    )
    .await
}

/// Epoch seconds as the SDK writes them.
pub fn now_ts() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:.6}", now.as_secs_f64())
}

/// A trace in the seed's exact wire format: trace_start, then a root, a child
/// and a grandchild observation (start and end), the grandchild failing.
pub fn seed_trace(trace_id: &str, project_id: &str) -> Vec<Vec<(String, String)>> {
    let ts = now_ts();
    let mut events = vec![vec![
        ("event_type".to_owned(), "trace_start".to_owned()),
        ("trace_id".to_owned(), trace_id.to_owned()),
        ("project_id".to_owned(), project_id.to_owned()),
        ("timestamp".to_owned(), ts.clone()),
        (
            "data".to_owned(),
            serde_json::json!({"name": "chat", "user_id": "user-1", "session_id": "session-1",
                               "timestamp": "2025-11-05T10:00:00.000001"})
            .to_string(),
        ),
    ]];
    let observations = [
        (format!("{trace_id}-root"), None, "agent", "AGENT"),
        (
            format!("{trace_id}-child"),
            Some(format!("{trace_id}-root")),
            "planner",
            "SPAN",
        ),
        (
            format!("{trace_id}-grandchild"),
            Some(format!("{trace_id}-child")),
            "llm",
            "GENERATION",
        ),
    ];
    for (i, (id, parent, name, kind)) in observations.iter().enumerate() {
        let header = |event_type: &str| {
            vec![
                ("event_type".to_owned(), event_type.to_owned()),
                ("trace_id".to_owned(), trace_id.to_owned()),
                ("project_id".to_owned(), project_id.to_owned()),
                ("timestamp".to_owned(), ts.clone()),
                ("observation_id".to_owned(), id.clone()),
            ]
        };
        let mut start = header("observation_start");
        start.push((
            "data".to_owned(),
            serde_json::json!({"name": name, "type": kind, "parent_observation_id": parent,
                               "input": {"messages": [format!("in-{i}")]},
                               "start_time": format!("2025-11-05T10:00:0{i}.000000")})
            .to_string(),
        ));
        events.push(start);
        let failing = i == 2;
        let mut end = header(if failing {
            "observation_error"
        } else {
            "observation_end"
        });
        let data = if failing {
            serde_json::json!({"level": "ERROR", "error": "model timeout", "status_message": "model timeout",
                               "end_time": "2025-11-05T10:00:09.500000"})
        } else {
            serde_json::json!({"output": {"answer": format!("out-{i}")}, "level": "DEFAULT",
                               "end_time": format!("2025-11-05T10:00:1{i}.250000")})
        };
        end.push(("data".to_owned(), data.to_string()));
        events.push(end);
    }
    events
}

pub fn as_fields(event: &[(String, String)]) -> Vec<(&str, &str)> {
    event
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// `data` as the SDK sends it over 1 KB: `{"_compressed": true, "_data":
/// base64(gzip(json))}`.
pub fn compressed_data(json_text: &str) -> String {
    use base64::Engine as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json_text.as_bytes()).expect("gzip");
    let encoded = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    serde_json::json!({"_compressed": true, "_data": encoded}).to_string()
}
