//! The claimer: entries pending longer than the idle threshold belong to a
//! consumer that died or stalled; the claimer takes them over (within the memory budget, with their delivery counts) and sends them
//! through the writer like any batch. It also removes consumers that are
//! long gone and have nothing pending, as replicas come and go with new names.

use actix::prelude::*;

use super::handover::{Handed, Handover};
use super::ReadSettings;
use crate::connect::problem::Problem;
use crate::connect::redis::ConnectionManager;
use crate::memory_budget::{MemoryBudget, Weights};
use crate::metrics as m;
use crate::once_log::OnceLog;
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
    conn: ConnectionManager,
    handover: Handover,
    passes: u64,
    /// The replica's memory budget: a claimed page is held like a read one.
    budget: MemoryBudget,
    /// A tick is in flight: skip interval ticks instead of queueing them.
    busy: bool,
    /// A failing pass repeats every interval: logged once, then at debug.
    problems: OnceLog,
}

impl Claimer {
    /// `handover.reader` is the claimer's consumer name in the group.
    pub fn new(
        shared: Shared,
        conn: ConnectionManager,
        handover: Handover,
        budget: MemoryBudget,
    ) -> Self {
        Self {
            shared,
            conn,
            handover,
            passes: 0,
            budget,
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
        if self.shared.health.is_draining() || !readiness.ready {
            self.busy = false;
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        self.passes += 1;
        let sweep = self.passes % SWEEP_EVERY == 0;
        let pass = claim_pass(
            self.shared.clone(),
            self.budget.clone(),
            self.handover.clone(),
            self.conn.clone(),
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
                        let problem = Problem::transient(format!(
                            "claimer {}: {error}",
                            claimer.handover.reader
                        ));
                        claimer.problems.report("claim idle entries", &problem);
                    }
                }
            },
        )))
    }
}

impl Handler<StopClaiming> for Claimer {
    type Result = ();

    fn handle(&mut self, _: StopClaiming, ctx: &mut Context<Self>) {
        // AtomicResponse above means no pass is in flight here.
        ctx.stop();
    }
}

#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Redis(#[from] StreamError),
    #[error("writer gone")]
    WriterGone,
}

/// Claims idle entries page by page within the memory budget (one write
/// batch per page), each with Redis's delivery count, so that the writer
/// dead-letters an entry past the delivery limit whoever held it before.
async fn claim_pass(
    shared: Shared,
    budget: MemoryBudget,
    handover: Handover,
    mut conn: ConnectionManager,
    sweep: bool,
) -> Result<(), PassError> {
    let settings = &shared.settings;
    let min_idle = settings.claim.idle();
    let request = Request {
        stream: &settings.pipeline.stream,
        group: &settings.pipeline.group,
        consumer: &handover.reader,
        max_count: settings.pipeline.batch_size as usize,
        weights: Weights::new(settings.limits.max_expanded_bytes),
        max_deliveries: settings.limits.max_deliveries,
        expected_entry_weight: 0,
    };
    let mut start = "-".to_owned();
    loop {
        let mode = Mode::Claim { start, min_idle };
        let (page, reservation) =
            match weighed_read::read_within_budget(&mut conn, &budget, &request, &mode).await? {
                Read::Page(page, reservation) => (page, reservation),
                Read::Empty { .. } => break,
            };
        let next = page.next.clone();
        if let (Some(first), Some(last)) = (page.entries.first(), page.entries.last()) {
            metrics::counter!(m::CLAIMED).increment(page.entries.len() as u64);
            tracing::info!(claimer = %handover.reader, entries = page.entries.len(), first = %first.id, last = %last.id, "claimed idle entries");
        }
        // Whatever is not stored stays pending and is claimed again later.
        if let Some(Handed::WriterGone) = handover.hand(page, reservation, None).await {
            return Err(PassError::WriterGone);
        }
        if next == "0-0" || shared.health.is_draining() {
            break;
        }
        start = next;
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
