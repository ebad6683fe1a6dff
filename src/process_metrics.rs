//! Process metrics from /proc (Linux) under Prometheus' standard names:
//! resident memory, CPU seconds, open and maximum file descriptors, start
//! time. Read and rendered when /metrics is scraped, by hand because the
//! `metrics` crate's counters are integers and CPU seconds are not.

use std::fmt::Write as _;

use crate::metrics as m;

/// The exposition text of the process metrics; empty without /proc.
pub fn render() -> String {
    let mut text = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    if let Some(bytes) = resident_bytes() {
        put(
            m::PROCESS_RESIDENT_MEMORY,
            "gauge",
            "Resident memory size in bytes.",
            bytes as f64,
        );
    }
    if let Some(stat) = read_stat() {
        put(
            m::PROCESS_CPU_SECONDS,
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.cpu_seconds,
        );
        put(
            m::PROCESS_START_TIME,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.start_time_seconds,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        put(
            m::PROCESS_OPEN_FDS,
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        put(
            m::PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    text
}

struct Stat {
    cpu_seconds: f64,
    start_time_seconds: f64,
}

/// USER_HZ, the unit of /proc's CPU times: 100 on every Linux port that
/// runs this service.
const CLOCK_TICKS: f64 = 100.0;

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Numbered as in proc(5), where field 3 (state) is the first after ')':
    // utime 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / CLOCK_TICKS,
        start_time_seconds: boot_time()? + field(22)? as f64 / CLOCK_TICKS,
    })
}

fn resident_bytes() -> Option<u64> {
    let kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let text = render();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("rss line");
        assert!(rss > 1024.0 * 1024.0, "rss {rss}");
        assert!(text.contains("process_open_fds "));
        assert!(text.contains("process_max_fds "));
    }
}
