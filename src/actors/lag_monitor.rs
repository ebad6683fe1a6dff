//! The lag monitor: reads the group's lag and pending entries into gauges,
//! probes Postgres for readiness, keeps the SDK's consumer heartbeat fresh,
//! exports the age of each project's newest SDK heartbeat, and runs the Prometheus recorder's upkeep.

use std::time::Duration;

use actix::prelude::*;
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::ConnectionManager;

use super::Shared;
use crate::health::unix_ms;
use crate::metrics as m;
use crate::redis_stream::{self, GroupState, StreamError};
use crate::store::{heartbeats, Pool};

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
        }
    }
}

impl Actor for LagMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = Duration::from_millis(self.shared.settings.monitor_interval_ms);
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
        let tick = observe(self.shared.clone(), self.conn.clone(), self.pool.clone());
        AtomicResponse::new(Box::pin(
            tick.into_actor(self)
                .map(|(), monitor, _| monitor.busy = false),
        ))
    }
}

async fn observe(shared: Shared, mut conn: ConnectionManager, pool: Pool) {
    let postgres_ok = probe_postgres(&pool).await;
    shared.health.set_postgres(postgres_ok);
    if postgres_ok {
        publish_sdk_heartbeat_ages(&pool).await;
    }
    match read_group_state(&shared, &mut conn).await {
        Ok(state) => publish(&shared, state),
        Err(error) => {
            shared.health.set_redis(false);
            metrics::counter!(m::REDIS_ERRORS, "operation" => "monitor").increment(1);
            tracing::warn!(%error, "cannot read the group's state");
            return;
        }
    }
    if shared.health.readiness().ready {
        if let Err(error) = refresh_consumer_heartbeat(&mut conn).await {
            tracing::warn!(%error, "cannot refresh the consumer heartbeat key");
        }
    }
}

/// Projects whose SDK was heard within this many days get an age gauge.
const HEARTBEAT_WINDOW_DAYS: i32 = 7;

async fn publish_sdk_heartbeat_ages(pool: &Pool) {
    match heartbeats::newest_per_project(pool, HEARTBEAT_WINDOW_DAYS).await {
        Ok(newest) => {
            let now = chrono::Utc::now();
            for (project_id, last_seen) in newest {
                let age = (now - last_seen).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::gauge!(m::SDK_HEARTBEAT_AGE, "project_id" => project_id).set(age);
            }
        }
        Err(error) => tracing::debug!(%error, "cannot read sdk heartbeats"),
    }
}

async fn probe_postgres(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

async fn read_group_state(
    shared: &Shared,
    conn: &mut ConnectionManager,
) -> Result<GroupState, StreamError> {
    let settings = &shared.settings;
    let state = redis_stream::group_state(conn, &settings.stream, &settings.group).await;
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
    let group = state.group(&shared.settings.group).cloned();
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
