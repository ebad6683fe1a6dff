//! Helpers only the tests of this binary use: stopping the shared servers,
//! a producer that keeps publishing through a fault, a group's consumers.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::{seed_trace, xadd, TestEnv};

/// Stops or starts the shared servers (`scripts/services.sh ACTION $SERVICES_DIR`).
pub fn services(action: &str) {
    let dir = std::env::var("SERVICES_DIR").expect("SERVICES_DIR is set by scripts/test.sh");
    let status = Command::new("scripts/services.sh")
        .arg(action)
        .arg(dir)
        .status()
        .expect("run services.sh");
    assert!(status.success(), "services.sh {action} failed");
}

impl TestEnv {
    /// A producer thread publishing the seed traces `trace-0`, `trace-1`...
    /// at about `traces_per_sec`, each in one MULTI (whole or not at all),
    /// until `stop` or `max_traces`. While Redis is down it reconnects and
    /// retries (the SDK would drop them; here each must be counted). Returns
    /// how many traces went out.
    pub fn steady_publisher(
        &self,
        traces_per_sec: u64,
        max_traces: usize,
        stop: Arc<AtomicBool>,
    ) -> thread::JoinHandle<usize> {
        let (url, stream) = (self.redis_url.clone(), self.stream.clone());
        thread::spawn(move || {
            let client = redis::Client::open(url.as_str()).expect("a redis url");
            let pause = Duration::from_micros(1_000_000 / traces_per_sec);
            let mut conn = None;
            let mut published = 0;
            while published < max_traces && !stop.load(Ordering::Relaxed) {
                let Some(open) = conn.as_mut() else {
                    conn = client.get_connection().ok();
                    if conn.is_none() {
                        thread::sleep(Duration::from_millis(100));
                    }
                    continue;
                };
                let mut pipe = redis::pipe();
                pipe.atomic();
                for event in seed_trace(&format!("trace-{published}"), "p") {
                    pipe.add_command(xadd(&stream, event)).ignore();
                }
                match pipe.query::<()>(open) {
                    Ok(()) => published += 1,
                    Err(_) => conn = None,
                }
                thread::sleep(pause);
            }
            published
        })
    }
}

#[cfg(feature = "fault-injection")]
pub fn pending_of(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Vec<String> {
    crate::harness::pending_ids(conn, stream, group, Some(consumer))
}

#[cfg(feature = "fault-injection")]
/// Consumer names of the group.
pub fn consumer_names(conn: &mut redis::Connection, stream: &str, group: &str) -> Vec<String> {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query(conn)
        .expect("xinfo");
    let redis::Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| match row {
            redis::Value::Array(fields) => fields.chunks(2).find_map(|pair| match pair {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            }),
            _ => None,
        })
        .collect()
}
