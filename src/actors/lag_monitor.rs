//! The lag monitor: reads the group's lag and pending entries into gauges,
//! probes Postgres for readiness, keeps the SDK's consumer heartbeat fresh,
//! exports the age of each project's newest SDK heartbeat, and runs the Prometheus recorder's upkeep.

use std::sync::Arc;

use crate::connect::redis::ConnectionManager;
use actix::prelude::*;
use metrics_exporter_prometheus::PrometheusHandle;

use super::MonitorSettings;
use crate::connect::problem::Problem;
use crate::event::StreamId;
use crate::health::unix_ms;
use crate::metrics as m;
use crate::once_log::OnceLog;
use crate::redis_stream::{self, GroupInfo, GroupState, StreamError, StreamInfo};
use crate::store::{heartbeats, Pool};

/// The replica's shared state with this actor's settings groups.
type Shared = super::Shared<MonitorSettings>;

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

/// The key the SDK's `verify_consumer` reads: fresh means a consumer runs.
pub const CONSUMER_HEARTBEAT_KEY: &str = "swisper_studio:consumer:heartbeat";

pub struct LagMonitor {
    shared: Shared,
    conn: ConnectionManager,
    pool: Pool,
    prometheus: PrometheusHandle,
    /// A tick is in flight: skip interval ticks instead of queueing them.
    busy: bool,
    /// An outage fails every tick: each problem logged once, then at debug.
    problems: Arc<Problems>,
}

impl LagMonitor {
    pub fn new(
        shared: Shared,
        conn: ConnectionManager,
        pool: Pool,
        prometheus: PrometheusHandle,
    ) -> Self {
        Self {
            shared,
            conn,
            pool,
            prometheus,
            busy: false,
            problems: Arc::default(),
        }
    }
}

impl Actor for LagMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = self.shared.settings.pipeline.monitor_interval();
        self.busy = true;
        ctx.notify(Tick);
        ctx.run_interval(interval, |monitor, ctx| {
            if !monitor.busy {
                monitor.busy = true;
                ctx.notify(Tick);
            }
        });
    }
}

impl Handler<Tick> for LagMonitor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Tick, _: &mut Context<Self>) -> Self::Result {
        self.prometheus.run_upkeep();
        let tick = observe(
            self.shared.clone(),
            self.conn.clone(),
            self.pool.clone(),
            self.problems.clone(),
        );
        AtomicResponse::new(Box::pin(
            tick.into_actor(self)
                .map(|(), monitor, _| monitor.busy = false),
        ))
    }
}

/// What a tick can fail at, each logged once until it succeeds again.
#[derive(Default)]
struct Problems {
    group: OnceLog,
    trimming: OnceLog,
    heartbeat_key: OnceLog,
}

fn report(log: &OnceLog, what: &str, error: &dyn std::fmt::Display) {
    log.report(what, &Problem::transient(format!("lag monitor: {error}")));
}

async fn observe(shared: Shared, mut conn: ConnectionManager, pool: Pool, problems: Arc<Problems>) {
    let postgres_ok = probe_postgres(&pool).await;
    shared.health.set_postgres(postgres_ok);
    if postgres_ok {
        publish_sdk_heartbeat_ages(&shared, &pool).await;
    }
    match read_group_state(&shared, &mut conn).await {
        Ok(state) => {
            problems.group.clear();
            let ours = state.group(&shared.settings.pipeline.group).cloned();
            publish(&shared, state);
            match watch_trimming(&shared, &mut conn, ours.as_ref()).await {
                Ok(()) => problems.trimming.clear(),
                Err(error) => {
                    metrics::counter!(m::REDIS_ERRORS, "operation" => "trim").increment(1);
                    report(&problems.trimming, "check or trim the stream", &error);
                }
            }
        }
        Err(error) => {
            shared.health.set_redis(false);
            metrics::counter!(m::REDIS_ERRORS, "operation" => "monitor").increment(1);
            report(&problems.group, "read the group's state", &error);
            return;
        }
    }
    if shared.health.readiness().ready {
        match refresh_consumer_heartbeat(&mut conn).await {
            Ok(()) => problems.heartbeat_key.clear(),
            Err(error) => report(
                &problems.heartbeat_key,
                "refresh the consumer heartbeat key",
                &error,
            ),
        }
    }
}

/// Reports entries trimmed before delivery and, when enabled, trims what
/// every group has acknowledged.
async fn watch_trimming(
    shared: &Shared,
    conn: &mut ConnectionManager,
    ours: Option<&GroupInfo>,
) -> Result<(), StreamError> {
    let stream = &shared.settings.pipeline.stream;
    let info = redis_stream::stream_info(conn, stream).await?;
    if let Some(group) = ours {
        metrics::gauge!(m::TRIMMED_BEFORE_DELIVERY).set(lost_before_delivery(&info, group) as f64);
    }
    if shared.settings.pipeline.trim_acked && shared.health.readiness().ready {
        if let Some(below) = redis_stream::safe_trim_id(conn, stream).await? {
            let trimmed = redis_stream::trim_below(conn, stream, below).await?;
            metrics::counter!(m::TRIMMED).increment(trimmed);
        }
    }
    Ok(())
}

/// Entries the group never read that are gone from the stream. Redis can
/// tell when deletions were at the head (a producer's MAXLEN) and the group's
/// read counter is known: everything ever added, less what is still there,
/// less what the group read. 0 when the group's next entry still exists.
pub fn lost_before_delivery(info: &StreamInfo, group: &GroupInfo) -> u64 {
    let (Some(added), Some(read), Some(first)) =
        (info.entries_added, group.entries_read, info.first_entry)
    else {
        return 0;
    };
    let Ok(delivered) = group.last_delivered_id.parse::<StreamId>() else {
        return 0;
    };
    let next = StreamId {
        ms: delivered.ms,
        seq: delivered.seq.saturating_add(1),
    };
    if first <= next {
        return 0;
    }
    added.saturating_sub(info.length).saturating_sub(read)
}

/// Projects whose SDK was heard within this many days get an age gauge.
const HEARTBEAT_WINDOW_DAYS: i32 = 7;

async fn publish_sdk_heartbeat_ages(shared: &Shared, pool: &Pool) {
    let cap = shared.settings.bounds.sdk_heartbeat_series;
    match heartbeats::newest_per_project(pool, HEARTBEAT_WINDOW_DAYS, cap).await {
        Ok(newest) => {
            let now = chrono::Utc::now();
            let ages = newest
                .into_iter()
                .map(|(project_id, last_seen)| {
                    let age = (now - last_seen).num_milliseconds().max(0) as f64 / 1000.0;
                    (project_id, age)
                })
                .collect();
            shared.health.set_sdk_heartbeat_ages(ages);
        }
        Err(error) => tracing::debug!(%error, "cannot read sdk heartbeats"),
    }
}

/// Whether a write could succeed now: Postgres answers and is neither a
/// standby nor read-only (`default_transaction_read_only` after a failover
/// to a replica). The simple query protocol keeps it pooler-safe.
async fn probe_postgres(pool: &Pool) -> bool {
    const WRITABLE: &str =
        "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean)";
    let Ok(client) = pool.get().await else {
        return false;
    };
    let Ok(messages) = client.simple_query(WRITABLE).await else {
        return false;
    };
    messages.iter().any(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    })
}

async fn read_group_state(
    shared: &Shared,
    conn: &mut ConnectionManager,
) -> Result<GroupState, StreamError> {
    let settings = &shared.settings;
    let state =
        redis_stream::group_state(conn, &settings.pipeline.stream, &settings.pipeline.group).await;
    match state {
        Err(error) if redis_stream::is_missing_group(&error) => {
            // The consumers recreate a lost group on their next read.
            shared.health.set_group(false);
            Err(error)
        }
        other => other,
    }
}

fn publish(shared: &Shared, state: GroupState) {
    let group = state.group(&shared.settings.pipeline.group).cloned();
    shared.health.set_redis(true);
    shared.health.set_group(group.is_some());
    metrics::gauge!(m::STREAM_LENGTH).set(state.stream_length as f64);
    metrics::gauge!(m::PENDING_ENTRIES).set(state.pending as f64);
    let lag = group.as_ref().and_then(|g| g.lag);
    if let Some(lag) = lag {
        metrics::gauge!(m::GROUP_LAG).set(lag as f64);
    }
    let oldest_age = state
        .oldest_pending_id()
        .map(|id| unix_ms().saturating_sub(id.ms) as f64 / 1000.0)
        .unwrap_or(0.0);
    metrics::gauge!(m::OLDEST_PENDING_AGE).set(oldest_age);
    let backlog = lag.unwrap_or(0) + state.pending;
    shared.health.set_group_state(state, backlog);
}

/// JSON `{"timestamp": "<zone-less UTC ISO 8601>"}`, the SDK's format.
async fn refresh_consumer_heartbeat(conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
    let now = chrono::Utc::now()
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.6f");
    let value = serde_json::json!({ "timestamp": now.to_string() }).to_string();
    redis::cmd("SET")
        .arg(CONSUMER_HEARTBEAT_KEY)
        .arg(value)
        .arg("EX")
        .arg(15)
        .query_async::<()>(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(last_delivered: &str, read: Option<u64>) -> GroupInfo {
        GroupInfo {
            last_delivered_id: last_delivered.into(),
            entries_read: read,
            ..GroupInfo::default()
        }
    }

    #[test]
    fn entries_trimmed_past_the_group_are_counted() {
        // 100 added, 10 left (ids 91..100), the group read 50: 40 were lost.
        let info = StreamInfo {
            length: 10,
            entries_added: Some(100),
            first_entry: Some(StreamId { ms: 91, seq: 0 }),
        };
        assert_eq!(lost_before_delivery(&info, &group("50-0", Some(50))), 40);
    }

    #[test]
    fn nothing_is_lost_while_the_next_entry_exists_or_redis_cannot_tell() {
        let info = StreamInfo {
            length: 60,
            entries_added: Some(100),
            first_entry: Some(StreamId { ms: 41, seq: 0 }),
        };
        assert_eq!(lost_before_delivery(&info, &group("50-0", Some(50))), 0);
        let gap = StreamInfo {
            length: 10,
            entries_added: Some(100),
            first_entry: Some(StreamId { ms: 91, seq: 0 }),
        };
        assert_eq!(lost_before_delivery(&gap, &group("50-0", None)), 0);
    }
}
