//! After a run: wait until the consumer group has acknowledged everything,
//! check that every published event is stored (nothing missing, nothing
//! dead-lettered), and measure end-to-end latency and drain time from the
//! database itself.
//!
//! The rows are SwisperStudio's own (`public.traces`, `public.observations`);
//! the service keeps each row's merge state beside it, in
//! `swisper_ingest.trace_state` and `observation_state` (the versions of the
//! events that filled it), and its dead letters in `swisper_ingest.dead_letters`.
//!
//! Latency is exact when the server runs with `track_commit_timestamp = on`:
//! `pg_xact_commit_timestamp(xmin)` of a studio row is when the transaction
//! that last wrote it committed, and the first 8 bytes of a version are the
//! publish time of the event it stands for, in µs. An observation row was
//! last written by the transaction that stored its newest event
//! (`observation_state.seen_version`: its end, as a rule); a trace row by the
//! one that stored its trace_start (`trace_state.start_version`; the trace's
//! first event while none is stored), since later events of the trace leave
//! the trace row alone. So every row gives one sample, commit minus publish:
//! about half of all events. The service's own histogram (every event, coarse
//! buckets) is read from /metrics as a cross-check.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio_postgres::{IsolationLevel, NoTls};

use crate::publish::Summary;
use crate::stats::Distribution;
use crate::traces;

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[arg(
        long,
        env = "OBSERVABILITY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(
        long,
        env = "OBSERVABILITY_GROUP_NAME",
        default_value = "swisper_studio_consumers"
    )]
    pub group: String,
    /// The summary `publish` wrote (stream, seed, expected counts). Several
    /// may be given when runs published to the same stream and database.
    #[arg(long, required = true)]
    pub summary: Vec<std::path::PathBuf>,
    /// Seconds to wait for the group to acknowledge every entry.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Epoch seconds the drain started (service start): drain time is the
    /// last commit minus this.
    #[arg(long)]
    pub since: Option<f64>,
    /// Base URL of the service (http://127.0.0.1:PORT) to read /metrics.
    #[arg(long)]
    pub metrics_url: Vec<String>,
    /// Exit 0 even when a check fails (the JSON says which).
    #[arg(long)]
    pub no_fail: bool,
    /// Also write each row's latency sample here, as CSV lines of its
    /// commit (epoch µs) and its latency (ms), for a timeline
    /// (loadtests/tail.sh).
    #[arg(long)]
    pub latencies: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub problems: Vec<String>,
    pub drained: bool,
    /// Epoch seconds when Redis first showed nothing left for the group.
    pub drained_at: Option<f64>,
    pub expected_traces: u64,
    pub expected_observations: u64,
    pub expected_errors: u64,
    pub traces: i64,
    pub traces_started: i64,
    pub observations: i64,
    pub observations_started: i64,
    pub observations_ended: i64,
    pub observations_error: i64,
    pub dead_letters: i64,
    /// Studio rows without their merge state in swisper_ingest (should be 0).
    pub rows_without_state: i64,
    /// Project ids of the run without a row in public.projects (should be 0:
    /// a standalone database creates them on first sight).
    pub missing_projects: i64,
    pub missing_traces: u64,
    pub missing_observations: u64,
    /// swisper_ingest_retention_forgotten_rows_total of the services
    /// (--metrics-url, summed) just before and just after the rows were
    /// counted: with retention running, the missing rows must lie between.
    pub forgotten_before: Option<ForgottenRows>,
    pub forgotten_after: Option<ForgottenRows>,
    pub unexpected_rows: u64,
    /// "commit_timestamp" (exact, per row) or "none".
    pub latency_source: String,
    pub latency_ms: Distribution,
    pub first_commit: Option<f64>,
    pub last_commit: Option<f64>,
    pub drain_seconds: Option<f64>,
    pub drain_events_per_second: Option<f64>,
    pub service: Vec<ServiceMetrics>,
    /// Row writes as Postgres counted them: an observation whose start and
    /// end land in different transactions is inserted, then updated. The
    /// studio's tables ("traces", "observations"), then the merge state
    /// ("trace_state", "observation_state").
    pub table_writes: Vec<TableWrites>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ForgottenRows {
    pub traces: f64,
    pub observations: f64,
}

/// What retention has forgotten so far, summed over the services; None
/// without --metrics-url or when one cannot be read.
fn forgotten_rows(urls: &[String]) -> Option<ForgottenRows> {
    if urls.is_empty() {
        return None;
    }
    let mut total = ForgottenRows::default();
    for url in urls {
        let text = http_get(url, "/metrics").ok()?;
        total.traces += counter(
            &text,
            "swisper_ingest_retention_forgotten_rows_total",
            "table=\"traces\"",
        );
        total.observations += counter(
            &text,
            "swisper_ingest_retention_forgotten_rows_total",
            "table=\"observations\"",
        );
    }
    Some(total)
}

/// Sum of a counter's series whose labels include `label` (`name="value"`).
pub fn counter(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.split(',').any(|l| l.trim_end_matches('}') == label))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[derive(Debug, Default, Serialize)]
pub struct TableWrites {
    pub table: String,
    pub inserted: i64,
    pub updated: i64,
    pub hot_updated: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct ServiceMetrics {
    pub url: String,
    /// Quantiles of swisper_ingest_end_to_end_latency_seconds, interpolated
    /// within buckets as Prometheus' histogram_quantile does, in ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_events: f64,
    pub latency_mean_ms: Option<f64>,
    pub transactions: f64,
    pub entries_per_transaction: Option<f64>,
    pub write_seconds_total: f64,
    pub write_ms_mean: Option<f64>,
    /// Transactions run again because another writer stored one of their
    /// new rows first (swisper_ingest_write_conflicts_total).
    pub write_conflicts: f64,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<(Verification, bool)> {
    let summaries: Vec<Summary> = args
        .summary
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut v = Verification {
        expected_traces: summaries.iter().map(|s| s.traces).sum(),
        expected_observations: summaries.iter().map(|s| s.observations).sum(),
        expected_errors: summaries.iter().map(|s| s.observation_errors).sum(),
        ..Default::default()
    };

    let mut streams: Vec<&str> = summaries.iter().map(|s| s.stream.as_str()).collect();
    streams.dedup();
    v.drained = true;
    for stream in streams {
        match wait_drained(&args.redis_url, stream, &args.group, args.timeout).await? {
            Some(at) => v.drained_at = Some(v.drained_at.map_or(at, |d: f64| d.max(at))),
            None => {
                v.drained = false;
                v.problems.push(format!(
                    "stream {stream}: group {} not drained within {} s",
                    args.group, args.timeout
                ));
            }
        }
    }

    let (mut db, connection) = tokio_postgres::connect(&args.database_url, NoTls)
        .await
        .context("connect to postgres")?;
    tokio::spawn(connection);
    // Every row is counted in one snapshot, and what retention had forgotten
    // is read from the service just before and just after it: the rows
    // forgotten as of the snapshot lie between the two.
    v.forgotten_before = forgotten_rows(&args.metrics_url);
    let tx = db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // A trace's name and an observation's name are NULL until its start is
    // stored (then the start's name, or the studio's default name).
    let row = tx
        .query_one(
            "SELECT count(*), count(t.name), count(*) FILTER (WHERE s.id IS NULL) \
             FROM public.traces t LEFT JOIN swisper_ingest.trace_state s ON s.id = t.id",
            &[],
        )
        .await?;
    (v.traces, v.traces_started) = (row.get(0), row.get(1));
    let traces_without_state: i64 = row.get(2);
    let row = tx
        .query_one(
            "SELECT count(*), count(o.name), count(o.end_time), \
                    count(*) FILTER (WHERE o.level = 'ERROR'), count(*) FILTER (WHERE s.id IS NULL) \
             FROM public.observations o LEFT JOIN swisper_ingest.observation_state s ON s.id = o.id",
            &[],
        )
        .await?;
    (
        v.observations,
        v.observations_started,
        v.observations_ended,
        v.observations_error,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    v.rows_without_state = traces_without_state + row.get::<_, i64>(4);
    v.dead_letters = tx
        .query_one("SELECT count(*) FROM swisper_ingest.dead_letters", &[])
        .await?
        .get(0);
    let mut projects: Vec<&str> = summaries.iter().map(|s| s.project_id.as_str()).collect();
    projects.sort_unstable();
    projects.dedup();
    let found: i64 = tx
        .query_one(
            "SELECT count(*) FROM public.projects WHERE id = ANY($1)",
            &[&projects],
        )
        .await?
        .get(0);
    v.missing_projects = projects.len() as i64 - found;

    let track: String = tx
        .query_one("SHOW track_commit_timestamp", &[])
        .await?
        .get(0);
    let with_commit = track == "on";
    let commit_of = |alias: &str| {
        if with_commit {
            format!("(extract(epoch FROM pg_xact_commit_timestamp({alias}.xmin)) * 1000000)::int8")
        } else {
            "NULL::int8".to_owned()
        }
    };
    // id, the version of the event the row's last write stored (None: no
    // version), the µs of the trace's first event, the commit.
    let trace_sql = format!(
        "SELECT t.id, s.start_version, (extract(epoch FROM s.first_seen_at) * 1000000)::int8, {} \
         FROM public.traces t LEFT JOIN swisper_ingest.trace_state s ON s.id = t.id",
        commit_of("t")
    );
    let observation_sql = format!(
        "SELECT o.id, s.seen_version, NULL::int8, {} \
         FROM public.observations o LEFT JOIN swisper_ingest.observation_state s ON s.id = o.id",
        commit_of("o")
    );
    let mut expected_traces = HashSet::new();
    let mut expected_observations = HashSet::new();
    for s in &summaries {
        for t in 0..s.traces {
            expected_traces.insert(traces::trace_id(s.seed, t));
            for k in 0..s.observations_per_trace {
                expected_observations.insert(traces::observation_id(s.seed, t, k));
            }
        }
    }
    let mut latencies = Vec::new();
    let mut timeline = Vec::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for (sql, expected, missing) in [
        (&trace_sql, &mut expected_traces, &mut v.missing_traces),
        (
            &observation_sql,
            &mut expected_observations,
            &mut v.missing_observations,
        ),
    ] {
        let rows = tx.query(sql.as_str(), &[]).await?;
        for row in rows {
            let id: &str = row.get(0);
            if !expected.remove(id) {
                // Not this run's row (e.g. left by an earlier phase): no
                // latency sample either.
                v.unexpected_rows += 1;
                continue;
            }
            let version: Option<&[u8]> = row.get(1);
            let first_seen: Option<i64> = row.get(2);
            let commit: Option<i64> = row.get(3);
            let published = version.and_then(published_micros).or(first_seen);
            if let (Some(commit), Some(published)) = (commit, published) {
                latencies.push((commit - published) as f64 / 1e3);
                timeline.push((commit, commit - published));
                first = first.min(commit);
                last = last.max(commit);
            }
        }
        *missing = expected.len() as u64;
    }
    if let Some(path) = &args.latencies {
        write_timeline(path, &mut timeline)?;
    }
    if with_commit && !latencies.is_empty() {
        v.latency_source = "commit_timestamp".into();
        v.latency_ms = Distribution::of(&mut latencies);
        v.first_commit = Some(first as f64 / 1e6);
        v.last_commit = Some(last as f64 / 1e6);
        if let Some(since) = args.since {
            let seconds = last as f64 / 1e6 - since;
            v.drain_seconds = Some(seconds);
            let events: u64 = summaries.iter().map(|s| s.events).sum();
            v.drain_events_per_second = Some(events as f64 / seconds);
        }
    } else {
        v.latency_source = "none".into();
        if let (Some(since), Some(at)) = (args.since, v.drained_at) {
            v.drain_seconds = Some(at - since);
        }
    }
    tx.commit().await?;
    v.forgotten_after = forgotten_rows(&args.metrics_url);
    // Statistics reach the view with a delay of up to a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for row in db
        .query(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
             WHERE (schemaname = 'public' AND relname IN ('traces', 'observations')) \
                OR (schemaname = 'swisper_ingest' AND relname IN ('trace_state', 'observation_state')) \
             ORDER BY schemaname = 'swisper_ingest', relname DESC",
            &[],
        )
        .await?
    {
        v.table_writes.push(TableWrites {
            table: row.get(0),
            inserted: row.get(1),
            updated: row.get(2),
            hot_updated: row.get(3),
        });
    }
    for url in &args.metrics_url {
        match service_metrics(url) {
            Ok(m) => v.service.push(m),
            Err(e) => v
                .problems
                .push(format!("cannot read metrics from {url}: {e:#}")),
        }
    }

    let checks = [
        (v.traces as u64 == v.expected_traces, "traces"),
        (
            v.traces_started as u64 == v.expected_traces,
            "traces with trace_start stored",
        ),
        (
            v.observations as u64 == v.expected_observations,
            "observations",
        ),
        (
            v.observations_started as u64 == v.expected_observations,
            "observations with start stored",
        ),
        (
            v.observations_ended as u64 == v.expected_observations,
            "observations with end_time",
        ),
        (
            v.observations_error as u64 == v.expected_errors,
            "observations with level ERROR",
        ),
    ];
    for (ok, what) in checks {
        if !ok {
            v.problems
                .push(format!("count of {what} differs from what was published"));
        }
    }
    if v.missing_traces + v.missing_observations > 0 {
        v.problems.push(format!(
            "{} traces and {} observations missing",
            v.missing_traces, v.missing_observations
        ));
    }
    if v.unexpected_rows > 0 {
        v.problems.push(format!(
            "{} rows that this run did not publish",
            v.unexpected_rows
        ));
    }
    if v.dead_letters > 0 {
        v.problems.push(format!("{} dead letters", v.dead_letters));
    }
    if v.rows_without_state > 0 {
        v.problems.push(format!(
            "{} studio rows without their merge state in swisper_ingest",
            v.rows_without_state
        ));
    }
    if v.missing_projects > 0 {
        v.problems.push(format!(
            "{} project ids without a row in public.projects",
            v.missing_projects
        ));
    }
    v.ok = v.problems.is_empty();
    let exit_ok = v.ok || args.no_fail;
    Ok((v, exit_ok))
}

/// The publish time inside a version: 8 big-endian bytes of µs with the sign
/// bit flipped (see swisper_ingest::merge::Version).
/// The latency samples in commit order, one `commit_us,latency_ms` line each.
fn write_timeline(path: &std::path::Path, samples: &mut [(i64, i64)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    samples.sort_unstable();
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for (commit, latency) in samples.iter() {
        writeln!(out, "{commit},{:.3}", *latency as f64 / 1e3)?;
    }
    out.flush()?;
    Ok(())
}

fn published_micros(version: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = version.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// Polls XINFO GROUPS until the group has read the whole stream and has
/// nothing pending; returns when that was first seen (epoch seconds).
pub async fn wait_drained(
    url: &str,
    stream: &str,
    group: &str,
    timeout: f64,
) -> anyhow::Result<Option<f64>> {
    let mut conn = crate::publish::connect(url, 1).await?.remove(0);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let length: u64 = redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut conn)
            .await?;
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let Some(info) = find_group(&groups, group) {
            let pending = info.int("pending").unwrap_or(i64::MAX);
            let read = info.int("entries-read");
            let lag = info.int("lag");
            let all_read = match (lag, read) {
                (Some(0), _) => true,
                (_, Some(read)) => read as u64 >= length,
                _ => false,
            };
            if pending == 0 && all_read {
                return Ok(Some(chrono::Utc::now().timestamp_micros() as f64 / 1e6));
            }
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct GroupInfo(Vec<(String, redis::Value)>);

impl GroupInfo {
    fn int(&self, key: &str) -> Option<i64> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| match v {
                redis::Value::Int(i) => Some(*i),
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                _ => None,
            })
    }
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn find_group(groups: &redis::Value, name: &str) -> Option<GroupInfo> {
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|group| {
        let pairs: Vec<(String, redis::Value)> = match group {
            redis::Value::Array(items) => items
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?.clone())))
                .collect(),
            redis::Value::Map(items) => items
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v.clone())))
                .collect(),
            _ => return None,
        };
        let info = GroupInfo(pairs);
        let is_it = info
            .0
            .iter()
            .any(|(k, v)| k == "name" && text(v).as_deref() == Some(name));
        is_it.then_some(info)
    })
}

/// GET over plain HTTP/1.0 (the service listens on loopback).
pub fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        TcpStream::connect(address).with_context(|| format!("connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// One histogram from Prometheus text: cumulative buckets, sum and count,
/// summed over label sets.
#[derive(Debug, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

pub fn histogram(text: &str, name: &str) -> Histogram {
    let mut h = Histogram::default();
    let bucket = format!("{name}_bucket");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric == bucket {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(|le| {
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::NAN)
                    }
                });
            if let Some(le) = le {
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += value,
                    None => h.buckets.push((le, value)),
                }
            }
        } else if metric == format!("{name}_sum") {
            h.sum += value;
        } else if metric == format!("{name}_count") {
            h.count += value;
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

impl Histogram {
    /// histogram_quantile: linear within the bucket holding the rank.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = n - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, n);
        }
        None
    }
}

pub fn service_metrics(url: &str) -> anyhow::Result<ServiceMetrics> {
    let text = http_get(url, "/metrics")?;
    let latency = histogram(&text, "swisper_ingest_end_to_end_latency_seconds");
    let batch = histogram(&text, "swisper_ingest_batch_size_entries");
    let write = histogram(&text, "swisper_ingest_write_duration_seconds");
    let mean = |h: &Histogram| (h.count > 0.0).then(|| h.sum / h.count);
    Ok(ServiceMetrics {
        url: url.to_owned(),
        latency_p50_ms: latency.quantile(0.5).map(|s| s * 1e3),
        latency_p99_ms: latency.quantile(0.99).map(|s| s * 1e3),
        latency_events: latency.count,
        latency_mean_ms: mean(&latency).map(|s| s * 1e3),
        transactions: batch.count,
        entries_per_transaction: mean(&batch),
        write_seconds_total: write.sum,
        write_ms_mean: mean(&write).map(|s| s * 1e3),
        write_conflicts: counter(&text, "swisper_ingest_write_conflicts_total", ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 2\nx_count 100\n";
        let h = histogram(text, "x");
        assert_eq!(h.count, 100.0);
        assert!((h.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((h.quantile(0.75).unwrap() - 0.055).abs() < 1e-9);
    }

    #[test]
    fn counters_sum_the_series_with_the_label() {
        let text = "# TYPE c counter\nc{table=\"traces\"} 3\nc{table=\"observations\"} 15\nc{replica=\"a\",table=\"traces\"} 2\nd{table=\"traces\"} 9\n";
        assert_eq!(counter(text, "c", "table=\"traces\""), 5.0);
        assert_eq!(counter(text, "c", "table=\"observations\""), 15.0);
        assert_eq!(counter(text, "c", "table=\"dead_letters\""), 0.0);
    }

    #[test]
    fn versions_decode_to_publish_micros() {
        let micros: i64 = 1_700_000_000_123_456;
        let mut v = ((micros as u64) ^ (1 << 63)).to_be_bytes().to_vec();
        v.extend([0u8; 16]);
        assert_eq!(published_micros(&v), Some(micros));
    }
}
