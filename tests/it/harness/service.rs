//! The service as a child process: the real `swisper-ingest` binary with
//! test-friendly timings, its HTTP endpoints, and what the process uses.
//!
//! Spawned rather than run in-process: the Prometheus recorder and the log
//! subscriber are process-wide, and tests read one replica's `/metrics` and
//! log; signals, kill -9 and memory limits need a process anyway.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::env::TestEnv;
use super::wait::wait_for;

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestEnv {
    /// Starts the service with test-friendly timings; `extra` overrides.
    pub fn spawn(&self, replica: &str, extra: &[(&str, &str)]) -> Service {
        let _ = std::fs::remove_file(log_dir().join(format!("{}-{replica}.log", self.name)));
        self.spawn_wrapped(replica, extra, &[])
    }

    /// Like [`TestEnv::spawn`], run through `wrapper` (such as `prlimit
    /// --as=BYTES --`); the log is appended to, so restarts keep it whole.
    pub fn spawn_wrapped(
        &self,
        replica: &str,
        extra: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Service {
        let port = free_port();
        let log_path = log_dir().join(format!("{}-{replica}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create log file");
        let binary = env!("CARGO_BIN_EXE_swisper-ingest");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("serve")
            .env("OBSERVABILITY_REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url)
            .env("OBSERVABILITY_STREAM_NAME", &self.stream)
            .env("OBSERVABILITY_GROUP_NAME", &self.group)
            .env("OBSERVABILITY_CONSUMER_NAME", replica)
            .env("OBSERVABILITY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("OBSERVABILITY_BLOCK_MS", "200")
            .env("OBSERVABILITY_CLAIM_IDLE_MS", "2000")
            .env("OBSERVABILITY_CLAIM_INTERVAL_MS", "200")
            .env("OBSERVABILITY_MONITOR_INTERVAL_MS", "200")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn swisper-ingest");
        Service {
            child,
            port,
            log_path,
        }
    }
}

/// A running service process; killed when dropped.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Service {
    /// GET a path; None while the server does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    pub fn json(&self, path: &str) -> Option<serde_json::Value> {
        self.get(path)
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
    }

    /// The value of a metric line such as `name{labels}` (exact text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let ok = wait_for(timeout, || matches!(self.get("/readyz"), Some((200, _))));
        assert!(ok, "service not ready in {timeout:?}; log: {}", self.log());
    }

    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("send SIGTERM");
        self.child.wait().expect("wait for exit")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Peak and current resident memory of a process, in KiB (VmHWM, VmRSS).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Appends a measured figure to target/tmp/fault-figures.txt (the fault
/// runner prints it).
pub fn report_figure(line: &str) {
    eprintln!("FIGURE {line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-figures.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}
