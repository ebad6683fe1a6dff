//! The supervisor: starts the pipeline's actors, restarts any that died (a
//! panic or a stop) with backoff and a count, and drains them in order.
//!
//! actix's own `Supervisor` restarts only after `ctx.stop()`, never after a
//! panic, and without backoff, so this one watches `Addr::connected()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::redis::ConnectionManager;
use actix::prelude::*;
use futures_util::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;

use super::backlog::Backlog;
use super::claimer::{Claimer, StopClaiming};
use super::commit::PostgresStore;
use super::consumer::{Consumer, Pacing, StopReading};
use super::handover::Handover;
use super::lag_monitor::LagMonitor;
use super::read_pace::ReadPace;
use super::retention::RetentionWorker;
use super::routing::Routing;
use super::stream_source::RedisSource;
use super::writer::{Flush, Writer};
use super::{MonitorSettings, ReadSettings, RetentionWorkerSettings, WriteSettings};
use crate::batcher::BatcherSettings;
use crate::config::ServeSettings;
use crate::memory_budget::MemoryBudget;
use crate::metrics as m;
use crate::parse_pool::ParsePool;
use crate::store::Pools;

/// The replica's shared state with every setting: the supervisor hands each
/// child only its own groups.
type Shared = super::Shared<Arc<ServeSettings>>;

/// Stop reading, store and ack what is in hand; replies when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

const CHECK_EVERY: Duration = Duration::from_millis(250);
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A child that lived this long starts again from the shortest delay.
const HEALTHY_LIFETIME: Duration = Duration::from_secs(30);
/// How long starts held under backlog wait for the next batch (their ends
/// are in it) before they are written alone: a consumer's next page is a
/// parse away; at the backlog's end this is the added delay.
const BACKLOG_WAIT: Duration = Duration::from_millis(250);

/// A supervised actor and its restart history.
struct Child<A: Actor> {
    addr: Addr<A>,
    label: &'static str,
    started_at: Instant,
    /// Restarts in a row without a healthy lifetime between them.
    consecutive: u32,
    restart_at: Option<Instant>,
}

impl<A: Actor<Context = Context<A>>> Child<A> {
    fn new(label: &'static str, addr: Addr<A>) -> Self {
        Self {
            addr,
            label,
            started_at: Instant::now(),
            consecutive: 0,
            restart_at: None,
        }
    }

    /// Restarts the child once its backoff has passed; true if it did.
    fn revive(&mut self, now: Instant, start: impl FnOnce() -> Addr<A>) -> bool {
        if self.addr.connected() {
            return false;
        }
        let Some(restart_at) = self.restart_at else {
            if now.duration_since(self.started_at) > HEALTHY_LIFETIME {
                self.consecutive = 0;
            }
            let delay = (FIRST_RESTART_DELAY * 2u32.saturating_pow(self.consecutive))
                .min(MAX_RESTART_DELAY);
            tracing::error!(
                actor = self.label,
                restart_in_ms = delay.as_millis() as u64,
                "actor died"
            );
            self.restart_at = Some(now + delay);
            return false;
        };
        if now < restart_at {
            return false;
        }
        self.addr = start();
        self.started_at = now;
        self.consecutive += 1;
        self.restart_at = None;
        metrics::counter!(m::ACTOR_RESTARTS, "actor" => self.label).increment(1);
        tracing::warn!(actor = self.label, "actor restarted");
        true
    }
}

pub struct Supervisor {
    shared: Shared,
    /// Each child's own settings groups.
    read: ReadSettings,
    write: WriteSettings,
    monitoring: MonitorSettings,
    forgetting: RetentionWorkerSettings,
    pools: Pools,
    /// Redis connection for commands that never block (acks, claims, info).
    control: ConnectionManager,
    prometheus: PrometheusHandle,
    /// What the consumers and the claimer may hold at once, in bytes.
    budget: MemoryBudget,
    /// Where consumers and the claimer parse what they read.
    parse_pool: ParsePool,
    /// Whether one reader falls behind, from the pages the consumers read;
    /// consumers read at will only then.
    backlog: Backlog,
    /// Otherwise they take turns, timed by the first writer's commits.
    pace: ReadPace,
    /// Which writer has which trace in hand, for every reader's pages.
    routing: Routing,
    /// Writer `i` runs on arbiter `i` (a thread each), restarts included.
    writer_arbiters: Vec<Arbiter>,
    /// Each commits one transaction at a time. Readers split a full page
    /// among them by trace, so that Postgres works on several batches of a
    /// backlog at once without two locking the same rows; a short page goes
    /// whole to the first, but for the traces another writer has in hand.
    writers: Vec<Child<Writer>>,
    consumers: Vec<Child<Consumer>>,
    claimer: Option<Child<Claimer>>,
    monitor: Option<Child<LagMonitor>>,
    retention: Option<Child<RetentionWorker>>,
}

impl Supervisor {
    pub fn new(
        shared: Shared,
        pools: Pools,
        control: ConnectionManager,
        prometheus: PrometheusHandle,
    ) -> Self {
        let budget = MemoryBudget::new(shared.settings.memory.budget_bytes());
        let parse_pool = ParsePool::new(shared.settings.pipeline.parse_threads());
        let writer_arbiters = if shared.settings.pipeline.writer_thread {
            (0..shared.settings.pipeline.writers)
                .map(|_| Arbiter::new())
                .collect()
        } else {
            Vec::new()
        };
        let settings = &shared.settings;
        let pipeline = Arc::new(settings.pipeline.clone());
        let read = ReadSettings {
            pipeline: pipeline.clone(),
            limits: settings.limits.clone(),
            claim: settings.claim.clone(),
        };
        let write = WriteSettings {
            pipeline: pipeline.clone(),
            limits: settings.limits.clone(),
        };
        let monitoring = MonitorSettings {
            pipeline,
            bounds: settings.bounds.clone(),
        };
        let forgetting = RetentionWorkerSettings {
            retention: settings.retention.clone(),
            database: settings.database.clone(),
        };
        Self {
            shared,
            read,
            write,
            monitoring,
            forgetting,
            pools,
            control,
            prometheus,
            budget,
            parse_pool,
            backlog: Backlog::default(),
            pace: ReadPace::default(),
            routing: Routing::default(),
            writer_arbiters,
            writers: Vec::new(),
            consumers: Vec::new(),
            claimer: None,
            monitor: None,
            retention: None,
        }
    }

    fn consumer_name(&self, index: usize) -> String {
        format!("{}-{index}", self.shared.settings.pipeline.replica_name())
    }

    fn start_writer(&self, index: usize) -> Addr<Writer> {
        let store = PostgresStore {
            shared: self.shared.with(self.write.clone()),
            pool: self.pools.writer(index),
            acker: self.control.clone(),
        };
        let pipeline = &self.shared.settings.pipeline;
        let batching = BatcherSettings {
            read_batch_size: pipeline.batch_size as usize,
            write_batch_size: pipeline.write_batch_size as usize,
            poison_run: self.shared.settings.limits.poison_run,
            lingers: !pipeline.write_linger().is_zero(),
            hold_starts: pipeline.hold_starts(),
            backlog_wait: BACKLOG_WAIT,
        };
        Writer::start(
            Box::new(store),
            self.shared.health.clone(),
            batching,
            pipeline.write_linger(),
            self.writer_arbiters.get(index).map(|a| a.handle()).as_ref(),
            // Short pages, the steady state's, go to the first.
            (index == 0).then(|| self.pace.clone()),
        )
    }

    fn handover(&self, reader: String, claims: bool, writers: &[Addr<Writer>]) -> Handover {
        Handover {
            reader,
            stream: self.read.pipeline.stream.clone(),
            claims,
            parse_pool: self.parse_pool.clone(),
            limits: self.read.limits.clone(),
            batch_size: self.read.pipeline.batch_size as usize,
            writers: writers.iter().map(|w| w.clone().recipient()).collect(),
            backlog: self.backlog.clone(),
            pace: self.pace.clone(),
            routing: self.routing.clone(),
        }
    }

    fn start_consumer(&self, index: usize, writers: &[Addr<Writer>]) -> Addr<Consumer> {
        let name = self.consumer_name(index);
        let shared = self.shared.with(self.read.clone());
        let pacing = Pacing {
            batch_size: self.read.pipeline.batch_size as usize,
            kept_retry: (self.read.claim.idle() / 3)
                .clamp(Duration::from_millis(50), Duration::from_secs(5)),
        };
        Consumer::new(
            name.clone(),
            Box::new(RedisSource::new(shared, name.clone(), self.budget.clone())),
            self.handover(name, false, writers),
            self.shared.health.clone(),
            pacing,
        )
        .start()
    }

    fn start_claimer(&self, writers: &[Addr<Writer>]) -> Addr<Claimer> {
        let name = format!("{}-claimer", self.shared.settings.pipeline.replica_name());
        Claimer::new(
            self.shared.with(self.read.clone()),
            self.control.clone(),
            self.handover(name, true, writers),
            self.budget.clone(),
        )
        .start()
    }

    fn start_monitor(&self) -> Addr<LagMonitor> {
        LagMonitor::new(
            self.shared.with(self.monitoring.clone()),
            self.control.clone(),
            self.pools.monitor.clone(),
            self.prometheus.clone(),
        )
        .start()
    }

    fn start_retention(&self) -> Addr<RetentionWorker> {
        RetentionWorker::new(self.shared.with(self.forgetting.clone())).start()
    }

    /// Restarts dead children. Consumers and the claimer hold the writer's
    /// address: when the writer is replaced they find it gone, stop, and are
    /// restarted here with the new one (re-reading their own pending entries).
    fn check_children(&mut self) {
        if self.shared.health.is_draining() {
            return;
        }
        let now = Instant::now();
        let mut writers = std::mem::take(&mut self.writers);
        for (index, writer) in writers.iter_mut().enumerate() {
            writer.revive(now, || self.start_writer(index));
        }
        let writer_addrs: Vec<Addr<Writer>> = writers.iter().map(|w| w.addr.clone()).collect();
        self.writers = writers;

        let mut consumers = std::mem::take(&mut self.consumers);
        for (index, consumer) in consumers.iter_mut().enumerate() {
            consumer.revive(now, || self.start_consumer(index, &writer_addrs));
        }
        self.consumers = consumers;

        let mut claimer = self.claimer.take().expect("claimer started");
        claimer.revive(now, || self.start_claimer(&writer_addrs));
        self.claimer = Some(claimer);

        let mut monitor = self.monitor.take().expect("monitor started");
        monitor.revive(now, || self.start_monitor());
        self.monitor = Some(monitor);

        let mut retention = self.retention.take().expect("retention started");
        retention.revive(now, || self.start_retention());
        self.retention = Some(retention);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        for arbiter in &self.writer_arbiters {
            arbiter.stop();
        }
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        let writers: Vec<Addr<Writer>> = (0..self.shared.settings.pipeline.writers)
            .map(|index| self.start_writer(index as usize))
            .collect();
        self.consumers = (0..self.shared.settings.pipeline.consumers as usize)
            .map(|index| Child::new("consumer", self.start_consumer(index, &writers)))
            .collect();
        self.claimer = Some(Child::new("claimer", self.start_claimer(&writers)));
        self.monitor = Some(Child::new("lag_monitor", self.start_monitor()));
        self.retention = Some(Child::new("retention", self.start_retention()));
        self.writers = writers
            .into_iter()
            .map(|w| Child::new("writer", w))
            .collect();
        ctx.run_interval(CHECK_EVERY, |supervisor, _| supervisor.check_children());
        tracing::info!(
            replica = %self.shared.settings.pipeline.replica_name(),
            consumers = self.consumers.len(),
            stream = %self.shared.settings.pipeline.stream,
            memory_budget_bytes = self.budget.total_bytes(),
            parse_threads = self.parse_pool.threads(),
            writer_threads = self.writer_arbiters.len(),
            group = %self.shared.settings.pipeline.group,
            "pipeline started"
        );
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// Readiness off, stop reading (each consumer finishes its step, whose
    /// batch the writer commits and acks), then flush the writers.
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        // The one shutdown signal: every actor checks it before its next step.
        self.shared.health.start_draining();
        let stops: Vec<_> = self
            .consumers
            .iter()
            .map(|c| c.addr.send(StopReading))
            .collect();
        let claimer = self.claimer.as_ref().map(|c| c.addr.clone());
        let flushes: Vec<_> = self.writers.iter().map(|w| w.addr.clone()).collect();
        Box::pin(
            async move {
                join_all(stops).await;
                if let Some(claimer) = claimer {
                    let _ = claimer.send(StopClaiming).await;
                }
                join_all(flushes.iter().map(|writer| writer.send(Flush))).await;
                tracing::info!("pipeline drained");
            }
            .into_actor(self),
        )
    }
}
