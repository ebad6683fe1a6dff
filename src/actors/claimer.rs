//! The claimer: entries pending longer than the idle threshold belong to a
//! consumer that died or stalled; the claimer takes them over (within the memory budget, with their delivery counts) and sends them
//! through the writer like any batch. It also removes consumers that are
//! long gone and have nothing pending, as replicas come and go with new names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use redis::aio::ConnectionManager;

use super::writer::WriteEntries;
use super::ReadSettings;
use crate::batch_span::BatchSpan;
use crate::connect::problem::{OnceLog, Problem};
use crate::memory_budget::{MemoryBudget, Weights};
use crate::metrics as m;
use crate::parse_pool::{ParsePanicked, ParsePool};
use crate::redis_stream::{self, StreamError};
use crate::weighed_read::{self, Mode, Read, Request};

/// The replica's shared state with this actor's settings groups.
type Shared = super::Shared<ReadSettings>;

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

/// Finish the current pass and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopClaiming;

/// How many claim passes between two sweeps of gone consumers.
const SWEEP_EVERY: u64 = 10;

pub struct Claimer {
    shared: Shared,
    name: String,
    conn: ConnectionManager,
    writer: Recipient<WriteEntries>,
    stopping: Arc<AtomicBool>,
    passes: u64,
    /// The replica's memory budget: a claimed page is held like a read one.
    budget: MemoryBudget,
    parse_pool: ParsePool,
    /// A tick is in flight: skip interval ticks instead of queueing them.
    busy: bool,
    /// A failing pass repeats every interval: logged once, then at debug.
    problems: OnceLog,
}

impl Claimer {
    pub fn new(
        shared: Shared,
        name: String,
        conn: ConnectionManager,
        writer: Recipient<WriteEntries>,
        stopping: Arc<AtomicBool>,
        budget: MemoryBudget,
        parse_pool: ParsePool,
    ) -> Self {
        Self {
            shared,
            name,
            conn,
            writer,
            stopping,
            passes: 0,
            budget,
            parse_pool,
            busy: false,
            problems: OnceLog::default(),
        }
    }
}

impl Actor for Claimer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = self.shared.settings.claim.interval();
        ctx.run_interval(interval, |claimer, ctx| {
            if !claimer.busy {
                claimer.busy = true;
                ctx.notify(Tick);
            }
        });
    }
}

impl Handler<Tick> for Claimer {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Tick, _: &mut Context<Self>) -> Self::Result {
        // A replica that cannot write would only take entries away from one
        // that can, and count deliveries up towards the dead-letter limit.
        let readiness = self.shared.health.readiness();
        if self.stopping.load(Ordering::Relaxed) || !readiness.ready {
            self.busy = false;
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        self.passes += 1;
        let sweep = self.passes % SWEEP_EVERY == 0;
        let pass = claim_pass(
            self.shared.clone(),
            self.budget.clone(),
            self.parse_pool.clone(),
            self.name.clone(),
            self.conn.clone(),
            self.writer.clone(),
            sweep,
        );
        AtomicResponse::new(Box::pin(pass.into_actor(self).map(
            |result, claimer, ctx| {
                claimer.busy = false;
                match result {
                    Ok(()) => claimer.problems.clear(),
                    Err(PassError::WriterGone) => ctx.stop(),
                    Err(PassError::Redis(error)) => {
                        metrics::counter!(m::REDIS_ERRORS, "operation" => "xautoclaim")
                            .increment(1);
                        let problem =
                            Problem::transient(format!("claimer {}: {error}", claimer.name));
                        claimer.problems.report("claim idle entries", &problem);
                    }
                    Err(PassError::Parse(error)) => {
                        tracing::error!(claimer = %claimer.name, %error, "claim pass failed");
                    }
                }
            },
        )))
    }
}

impl Handler<StopClaiming> for Claimer {
    type Result = ();

    fn handle(&mut self, _: StopClaiming, ctx: &mut Context<Self>) {
        self.stopping.store(true, Ordering::Relaxed);
        ctx.stop();
    }
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Redis(#[from] StreamError),
    #[error("writer gone")]
    WriterGone,
    #[error(transparent)]
    Parse(#[from] ParsePanicked),
}

/// Claims idle entries page by page within the memory budget (one write
/// batch per page), each with Redis's delivery count, so that the writer
/// dead-letters an entry past the delivery limit whoever held it before.
async fn claim_pass(
    shared: Shared,
    budget: MemoryBudget,
    parse_pool: ParsePool,
    name: String,
    mut conn: ConnectionManager,
    writer: Recipient<WriteEntries>,
    sweep: bool,
) -> Result<(), PassError> {
    let settings = &shared.settings;
    let min_idle = settings.claim.idle();
    let request = Request {
        stream: &settings.pipeline.stream,
        group: &settings.pipeline.group,
        consumer: &name,
        max_count: settings.pipeline.batch_size as usize,
        weights: Weights::new(settings.limits.max_expanded_bytes),
        max_deliveries: settings.limits.max_deliveries,
    };
    let mut start = "-".to_owned();
    loop {
        let mode = Mode::Claim { start, min_idle };
        let (page, reservation) =
            match weighed_read::read_within_budget(&mut conn, &budget, &request, &mode).await? {
                Read::Page(page, reservation) => (page, reservation),
                Read::Empty { .. } => break,
            };
        if !page.deleted.is_empty() {
            metrics::counter!(m::TRIMMED_BEFORE_ACK).increment(page.deleted.len() as u64);
            tracing::warn!(
                entries = page.deleted.len(),
                "pending entries were trimmed before being stored"
            );
        }
        if let (Some(first), Some(last)) = (page.entries.first(), page.entries.last()) {
            let (first, last) = (first.id, last.id);
            let batch = BatchSpan::read(
                &settings.pipeline.stream,
                &name,
                true,
                &page.entries,
                reservation.bytes(),
            );
            metrics::counter!(m::CLAIMED).increment(page.entries.len() as u64);
            tracing::info!(claimer = %name, entries = page.entries.len(), %first, %last, "claimed idle entries");
            let items = parse_pool
                .prepare(
                    page.entries,
                    reservation.bytes(),
                    settings.limits.entry(),
                    settings.limits.max_deliveries,
                )
                .await?;
            let sent = writer
                .send(WriteEntries {
                    items,
                    reservation: Some(reservation),
                    span: batch.clone(),
                })
                .await;
            let _in_batch = batch.answered(&sent);
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "claimed batch not stored; it stays pending")
                }
                Err(_) => return Err(PassError::WriterGone),
            }
        }
        if page.next == "0-0" || shared.health.is_draining() {
            break;
        }
        start = page.next;
    }
    if sweep {
        remove_gone_consumers(&shared, &mut conn).await?;
    }
    Ok(())
}

/// Consumers are named after replicas that Kubernetes replaces with new
/// names; those idle for long with nothing pending will never come back.
/// Entries still pending under a gone name are claimed above, never dropped.
async fn remove_gone_consumers(
    shared: &Shared,
    conn: &mut ConnectionManager,
) -> Result<(), StreamError> {
    let settings = &shared.settings;
    for consumer in
        redis_stream::consumers(conn, &settings.pipeline.stream, &settings.pipeline.group).await?
    {
        if consumer.pending == 0 && consumer.idle > settings.claim.consumer_gone_after() {
            // Redis 7.0 counts a blocked read that returned nothing as idle
            // time, so a live consumer of a quiet stream can look gone: the
            // script removes it only if it still has nothing pending, and a
            // live consumer is recreated by its next read.
            let removed = redis_stream::delete_consumer_if_idle(
                conn,
                &settings.pipeline.stream,
                &settings.pipeline.group,
                &consumer.name,
            )
            .await?;
            if removed {
                metrics::counter!(m::CONSUMERS_REMOVED).increment(1);
                tracing::info!(consumer = %consumer.name, idle_secs = consumer.idle.as_secs(), "removed gone consumer");
            }
        }
    }
    Ok(())
}
