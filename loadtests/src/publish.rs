//! Publishing: generate the traces up front (so that publishing costs only
//! the XADDs), then send them at a fixed rate or as fast as possible.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::stats::Distribution;
use crate::traces::{self, Event, Profile};

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[arg(
        long,
        env = "OBSERVABILITY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    #[arg(
        long,
        env = "OBSERVABILITY_STREAM_NAME",
        default_value = "observability:events"
    )]
    pub stream: String,
    /// Events to publish (rounded up to whole traces). With --rate and
    /// --duration, defaults to rate × duration.
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per second; 0 publishes everything as fast as possible (a backlog).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to publish for at --rate.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Observations per trace; each has a start and an end or error.
    #[arg(long, default_value_t = 5)]
    pub observations: usize,
    /// Smallest input/output state, bytes of JSON.
    #[arg(long, default_value_t = 1100)]
    pub payload_min: usize,
    /// Largest input/output state, bytes of JSON.
    #[arg(long, default_value_t = 2200)]
    pub payload_max: usize,
    /// Fraction of observations that end in observation_error.
    #[arg(long, default_value_t = 0.1)]
    pub error_ratio: f64,
    /// Traces in flight at once: their events interleave on the stream.
    #[arg(long, default_value_t = 200)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Project id of every event (default: derived from the seed).
    #[arg(long)]
    pub project_id: Option<String>,
    #[arg(long, value_enum, default_value = "sdk")]
    pub compression: crate::pyjson::Compression,
    /// XADDs per pipeline: 1 sends each event on its own, like the SDK.
    /// Backlog mode defaults to 200.
    #[arg(long)]
    pub pipeline: Option<usize>,
    /// Redis connections to publish on.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// XADD MAXLEN ~ N, as the SDK does (default: no trimming).
    #[arg(long)]
    pub maxlen: Option<u64>,
    /// Threads generating traces before publishing.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep generated events in this folder and reuse them when a run asks
    /// for the same traces again (same seed, counts and profile).
    #[arg(long, env = "LOADGEN_CACHE_DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Write the summary (JSON) here too.
    #[arg(long)]
    pub summary: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct Summary {
    pub stream: String,
    pub seed: u64,
    pub project_id: String,
    pub observations_per_trace: usize,
    pub compression: String,
    pub traces: u64,
    pub observations: u64,
    pub observation_errors: u64,
    pub events: u64,
    /// Target rate (0: as fast as possible).
    pub target_rate: f64,
    pub in_flight: usize,
    pub pipeline: usize,
    pub generate_seconds: f64,
    /// Epoch seconds of the first and last XADD sent.
    pub started_at: f64,
    pub finished_at: f64,
    pub publish_seconds: f64,
    pub publish_rate: f64,
    /// Most the sender fell behind its schedule, in ms (rate mode).
    pub max_behind_ms: f64,
    pub wire_bytes_total: u64,
    pub avg_entry_bytes: f64,
    pub avg_json_bytes: f64,
    pub compressed_fraction: f64,
    /// CPU seconds loadgen itself used while publishing (not generating).
    #[serde(default)]
    pub publish_cpu_seconds: f64,
    /// Round trip of one XADD pipeline (one XADD when --pipeline 1), ms.
    pub xadd_ms: Distribution,
}

fn epoch(t: chrono::DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// CPU seconds this process has used (user + system), from /proc (Linux);
/// clock ticks are 100 a second on every Linux this runs on.
fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

fn now_epoch() -> f64 {
    epoch(Utc::now())
}

/// Generates traces 0..traces on several threads, then interleaves them.
/// Generated events on disk: a run repeated with the same seed skips the
/// generation (mostly gzip) and publishes the very same bytes.
mod cache {
    use std::io::{BufReader, BufWriter, Read, Write};
    use std::path::Path;

    use crate::traces::Event;

    const TYPES: [&str; 4] = [
        "trace_start",
        "observation_start",
        "observation_end",
        "observation_error",
    ];

    fn put(out: &mut impl Write, text: &str) -> std::io::Result<()> {
        out.write_all(&(text.len() as u32).to_le_bytes())?;
        out.write_all(text.as_bytes())
    }

    fn get(input: &mut impl Read) -> anyhow::Result<String> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut bytes)?;
        Ok(String::from_utf8(bytes)?)
    }

    pub fn save(path: &Path, events: &[Event]) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("partial");
        let mut out = BufWriter::new(std::fs::File::create(&partial)?);
        out.write_all(&(events.len() as u64).to_le_bytes())?;
        for e in events {
            let kind = TYPES.iter().position(|t| *t == e.event_type).unwrap_or(0) as u8;
            out.write_all(&[kind, e.compressed as u8, e.observation_id.is_some() as u8])?;
            out.write_all(&(e.json_bytes as u32).to_le_bytes())?;
            put(&mut out, &e.trace_id)?;
            put(&mut out, e.observation_id.as_deref().unwrap_or(""))?;
            put(&mut out, &e.data)?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(partial, path)?;
        Ok(())
    }

    pub fn load(path: &Path) -> anyhow::Result<Vec<Event>> {
        let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut count = [0u8; 8];
        input.read_exact(&mut count)?;
        let count = u64::from_le_bytes(count) as usize;
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            let mut head = [0u8; 7];
            input.read_exact(&mut head)?;
            let trace_id = get(&mut input)?;
            let observation_id = get(&mut input)?;
            events.push(Event {
                event_type: TYPES[head[0] as usize % TYPES.len()],
                compressed: head[1] == 1,
                json_bytes: u32::from_le_bytes(head[3..7].try_into()?) as usize,
                trace_id,
                observation_id: (head[2] == 1).then_some(observation_id),
                data: get(&mut input)?,
            });
        }
        eprintln!(
            "loadgen: reusing {count} generated events from {}",
            path.display()
        );
        Ok(events)
    }
}

pub fn generate_all(
    profile: &Profile,
    traces: u64,
    in_flight: usize,
    nominal_rate: f64,
    threads: usize,
) -> Vec<Event> {
    let per_trace = 1 + 2 * profile.observations;
    let start = Utc::now();
    let spacing_us = (per_trace as f64 / nominal_rate * 1e6) as i64;
    let threads = threads.max(1).min(traces.max(1) as usize);
    let chunk = traces.div_ceil(threads as u64);
    let mut generated: Vec<Vec<Event>> = Vec::with_capacity(traces as usize);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let range = (t * chunk)..((t + 1) * chunk).min(traces);
                scope.spawn(move || {
                    range
                        .map(|i| {
                            let at = start + chrono::Duration::microseconds(spacing_us * i as i64);
                            traces::generate(profile, i, at)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            generated.extend(handle.join().expect("generator thread"));
        }
    });
    let order = traces::schedule(profile.seed, traces, per_trace, in_flight);
    let mut iters: Vec<std::vec::IntoIter<Event>> =
        generated.into_iter().map(Vec::into_iter).collect();
    order
        .into_iter()
        .map(|t| {
            iters[t as usize]
                .next()
                .expect("schedule matches the traces")
        })
        .collect()
}

pub async fn connect(url: &str, connections: usize) -> anyhow::Result<Vec<MultiplexedConnection>> {
    let client = redis::Client::open(url).context("redis url")?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    let mut conns = Vec::new();
    for _ in 0..connections.max(1) {
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .context("connect to redis")?,
        );
    }
    Ok(conns)
}

fn pipeline_of(
    stream: &str,
    maxlen: Option<u64>,
    project_id: &str,
    events: &[Event],
) -> redis::Pipeline {
    let timestamp = format!("{:.6}", now_epoch());
    let mut pipe = redis::pipe();
    for event in events {
        let cmd = pipe.cmd("XADD").arg(stream);
        if let Some(n) = maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg("event_type")
            .arg(event.event_type)
            .arg("project_id")
            .arg(project_id)
            .arg("timestamp")
            .arg(&timestamp)
            .arg("trace_id")
            .arg(&event.trace_id);
        if let Some(id) = &event.observation_id {
            cmd.arg("observation_id").arg(id);
        }
        cmd.arg("data").arg(&event.data).ignore();
    }
    pipe
}

pub async fn run(args: PublishArgs) -> anyhow::Result<Summary> {
    anyhow::ensure!(args.observations >= 1, "--observations must be at least 1");
    anyhow::ensure!(
        args.payload_max >= args.payload_min,
        "--payload-max below --payload-min"
    );
    let per_trace = (1 + 2 * args.observations) as u64;
    let events = match (args.events, args.duration) {
        (Some(n), _) => n,
        (None, Some(d)) if args.rate > 0.0 => (args.rate * d).round() as u64,
        _ => anyhow::bail!("say how much to publish: --events N, or --rate R --duration S"),
    };
    let traces = events.div_ceil(per_trace).max(1);
    let project_id = args
        .project_id
        .clone()
        .unwrap_or_else(|| traces::project_id(args.seed));
    let profile = Profile {
        seed: args.seed,
        project_id: project_id.clone(),
        observations: args.observations,
        payload_min: args.payload_min,
        payload_max: args.payload_max,
        error_ratio: args.error_ratio,
        compression: args.compression,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let generating = Instant::now();
    let nominal_rate = if args.rate > 0.0 { args.rate } else { 5000.0 };
    let cache = args.cache_dir.as_ref().map(|dir| {
        dir.join(format!(
            "events-v1-{}-{traces}-{}-{}-{}-{}-{:?}-{}.bin",
            profile.seed,
            profile.observations,
            profile.payload_min,
            profile.payload_max,
            profile.error_ratio,
            profile.compression,
            args.in_flight
        ))
    });
    let entries = match cache.as_deref().map(cache::load) {
        Some(Ok(entries)) => entries,
        _ => {
            let entries = generate_all(&profile, traces, args.in_flight, nominal_rate, threads);
            if let Some(path) = &cache {
                if let Err(e) = cache::save(path, &entries) {
                    eprintln!("loadgen: cannot cache events in {}: {e:#}", path.display());
                }
            }
            entries
        }
    };
    let generate_seconds = generating.elapsed().as_secs_f64();

    let observation_errors = entries
        .iter()
        .filter(|e| e.event_type == "observation_error")
        .count() as u64;
    let wire_bytes_total: u64 = entries
        .iter()
        .map(|e| e.wire_bytes(&project_id) as u64)
        .sum();
    let json_total: u64 = entries.iter().map(|e| e.json_bytes as u64).sum();
    let compressed = entries.iter().filter(|e| e.compressed).count();
    let total = entries.len();
    eprintln!(
        "loadgen: generated {total} events ({traces} traces) in {generate_seconds:.1} s; avg entry {:.0} B on the wire, data {:.0} B before compression, {:.0}% compressed",
        wire_bytes_total as f64 / total as f64,
        json_total as f64 / total as f64,
        100.0 * compressed as f64 / total as f64
    );

    let conns = connect(&args.redis_url, args.connections).await?;
    let entries = Arc::new(entries);
    let pipeline = args
        .pipeline
        .unwrap_or(if args.rate > 0.0 { 1 } else { 200 })
        .max(1);
    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel::<f64>();
    let started_at = now_epoch();
    let cpu_before = own_cpu_seconds();
    let clock = Instant::now();
    let mut max_behind = 0.0f64;

    if args.rate <= 0.0 {
        // Backlog: every connection keeps one pipeline in flight.
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for conn in &conns {
            for _ in 0..2 {
                let (mut conn, next, entries, tx) = (
                    conn.clone(),
                    next.clone(),
                    entries.clone(),
                    latency_tx.clone(),
                );
                let (stream, maxlen, project) =
                    (args.stream.clone(), args.maxlen, project_id.clone());
                workers.push(tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(pipeline, Ordering::Relaxed);
                        if from >= entries.len() {
                            return Ok::<(), redis::RedisError>(());
                        }
                        let to = (from + pipeline).min(entries.len());
                        let pipe = pipeline_of(&stream, maxlen, &project, &entries[from..to]);
                        let sent = Instant::now();
                        pipe.query_async::<()>(&mut conn).await?;
                        let _ = tx.send(sent.elapsed().as_secs_f64() * 1e3);
                    }
                }));
            }
        }
        for worker in workers {
            worker.await.context("publisher task")?.context("xadd")?;
        }
    } else {
        // Fixed rate: at each tick, send what is due; sends run concurrently
        // (bounded) so that a slow reply never delays the schedule.
        let in_flight = Arc::new(Semaphore::new(4096));
        let mut sent = 0usize;
        let mut turn = 0usize;
        let mut tasks = Vec::new();
        while sent < total {
            let elapsed = clock.elapsed().as_secs_f64();
            let due = ((elapsed * args.rate).floor() as usize + 1).min(total);
            if due > sent {
                max_behind = max_behind.max((elapsed - sent as f64 / args.rate) * 1e3);
            }
            while sent < due {
                let to = (sent + pipeline).min(due);
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore open");
                let mut conn = conns[turn % conns.len()].clone();
                turn += 1;
                let pipe = pipeline_of(&args.stream, args.maxlen, &project_id, &entries[sent..to]);
                let tx = latency_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let result = pipe.query_async::<()>(&mut conn).await;
                    let _ = tx.send(start.elapsed().as_secs_f64() * 1e3);
                    drop(permit);
                    result
                }));
                sent = to;
            }
            if sent < total {
                let next_due = sent as f64 / args.rate;
                let wait = (next_due - clock.elapsed().as_secs_f64()).clamp(0.0, 0.002);
                tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0002))).await;
            }
        }
        let mut failures = 0;
        for task in tasks {
            if task.await.context("publisher task")?.is_err() {
                failures += 1;
            }
        }
        anyhow::ensure!(failures == 0, "{failures} XADD pipelines failed");
    }
    let publish_seconds = clock.elapsed().as_secs_f64();
    let publish_cpu_seconds = own_cpu_seconds() - cpu_before;
    let finished_at = now_epoch();
    drop(latency_tx);
    let mut latencies = Vec::new();
    while let Some(l) = latency_rx.recv().await {
        latencies.push(l);
    }
    let summary = Summary {
        stream: args.stream.clone(),
        seed: args.seed,
        project_id,
        observations_per_trace: args.observations,
        compression: format!("{:?}", args.compression).to_lowercase(),
        traces,
        observations: traces * args.observations as u64,
        observation_errors,
        events: total as u64,
        target_rate: args.rate.max(0.0),
        in_flight: args.in_flight,
        pipeline,
        generate_seconds,
        started_at,
        finished_at,
        publish_seconds,
        publish_rate: total as f64 / publish_seconds,
        max_behind_ms: max_behind,
        publish_cpu_seconds,
        wire_bytes_total,
        avg_entry_bytes: wire_bytes_total as f64 / total as f64,
        avg_json_bytes: json_total as f64 / total as f64,
        compressed_fraction: compressed as f64 / total as f64,
        xadd_ms: Distribution::of(&mut latencies),
    };
    eprintln!(
        "loadgen: published {} events in {:.2} s ({:.0}/s, target {}), XADD round trip p50 {:.2} ms p99 {:.2} ms, fell behind at most {:.1} ms",
        summary.events,
        summary.publish_seconds,
        summary.publish_rate,
        if args.rate > 0.0 { format!("{:.0}/s", args.rate) } else { "max".into() },
        summary.xadd_ms.p50,
        summary.xadd_ms.p99,
        summary.max_behind_ms
    );
    Ok(summary)
}
