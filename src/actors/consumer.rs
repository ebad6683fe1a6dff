//! A consumer: asks its [`ReadState`] what to read, reads it through its
//! [`StreamSource`] within the replica's memory budget, hands the page to the
//! writer and awaits its commit before the next read (backpressure), then
//! reports the outcome to the state, which says what to do next. Outside a
//! backlog, consumers take turns to read new entries ([`ReadPace`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::handover::{Handed, Handover};
use super::read_pace::{ReadPace, Turn};
use super::stream_source::{SourceError, StreamSource};
use crate::backoff::Backoff;
use crate::connect::problem::Problem;
use crate::event::StreamId;
use crate::health::Health;
use crate::metrics as m;
use crate::once_log::OnceLog;
use crate::read_state::{Next, ReadState};
use crate::weighed_read::{Mode, Read};

/// Read the next batch (sent to itself after each step).
#[derive(Message)]
#[rtype(result = "()")]
struct ReadNext;

/// Wait for an entry after this id, then read.
#[derive(Message)]
#[rtype(result = "()")]
struct WaitForNew(String);

/// Finish the current step and stop; replies once nothing is in flight.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopReading;

/// How a consumer paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub batch_size: usize,
    /// How soon a batch kept by poison protection is retried: well within
    /// the claim idle time, as each retry also resets its idle time.
    pub kept_retry: Duration,
}

pub struct Consumer {
    name: String,
    source: Box<dyn StreamSource>,
    handover: Handover,
    /// Its draining state is the shutdown signal, checked before every read.
    health: Arc<Health>,
    pacing: Pacing,
    state: ReadState,
    /// Kept entries last reported to the gauge shared by all consumers.
    reported_kept: usize,
    /// Redis failures repeat every backoff step: logged once each (and
    /// again after a success), the rest at debug; counted in metrics always.
    problems: OnceLog,
    backoff: Backoff,
}

impl Consumer {
    pub fn new(
        name: String,
        source: Box<dyn StreamSource>,
        handover: Handover,
        health: Arc<Health>,
        pacing: Pacing,
    ) -> Self {
        Self {
            name,
            source,
            handover,
            health,
            pacing,
            state: ReadState::default(),
            reported_kept: 0,
            problems: OnceLog::default(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Acts on what the state said.
    fn follow(&mut self, next: Next, ctx: &mut Context<Self>) {
        self.report_kept(self.state.kept());
        match next {
            Next::ReadAgain => {
                self.backoff.reset();
                ctx.notify(ReadNext);
            }
            Next::WaitForNew(after) => ctx.notify(WaitForNew(after)),
            Next::RetryKept => {
                ctx.notify_later(ReadNext, self.pacing.kept_retry);
            }
            Next::Backoff => {
                ctx.notify_later(ReadNext, self.backoff.next_delay());
            }
            Next::Stop => ctx.stop(),
        }
    }

    /// The gauge of entries kept by poison protection, across consumers.
    fn report_kept(&mut self, kept: usize) {
        let change = kept as f64 - self.reported_kept as f64;
        if change != 0.0 {
            metrics::gauge!(m::POISON_HELD).increment(change);
            self.reported_kept = kept;
        }
    }

    fn failed(&mut self, error: &SourceError) -> Next {
        if let SourceError::GroupMissing { recreated: true } = error {
            return self.state.on_group_recreated();
        }
        let problem = Problem::transient(format!("consumer {}: {error}", self.name));
        self.problems.report("read the stream", &problem);
        self.state.on_read_failed()
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(consumer = %self.name, "consumer started");
        ctx.notify(ReadNext);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Kept entries stay pending: a restarted consumer re-reads them.
        self.report_kept(0);
    }
}

/// What one read and its hand-over came to.
enum Outcome {
    Empty {
        next: String,
    },
    Page {
        next: String,
        ids: Vec<StreamId>,
        unloaded: Vec<StreamId>,
        handed: Option<Handed>,
    },
    Failed(SourceError),
}

impl Handler<ReadNext> for Consumer {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ReadNext, _: &mut Context<Self>) -> Self::Result {
        #[cfg(feature = "fault-injection")]
        crate::fault::panic_once_at("consumer");
        if self.health.is_draining() {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let mode = self.state.mode();
        // Its own pending and kept entries a consumer reads whenever.
        let mut turn = None;
        if matches!(mode, Mode::New) && !self.handover.backlog.is_on() {
            match self.handover.pace.turn(Instant::now()) {
                Turn::Read(mine) => turn = Some(mine),
                Turn::Wait(wait) => return wait_then_read(self.handover.pace.clone(), wait),
            }
        }
        let read = self
            .source
            .read(mode, self.state.max_count(self.pacing.batch_size));
        let handover = self.handover.clone();
        let step = async move {
            match read.await {
                Ok(Read::Empty { next }) => Outcome::Empty { next },
                Ok(Read::Page(mut page, reservation)) => {
                    let ids: Vec<StreamId> = page.entries.iter().map(|e| e.id).collect();
                    let next = page.next.clone();
                    let unloaded = std::mem::take(&mut page.unloaded);
                    let handed = handover.hand(page, reservation, turn).await;
                    Outcome::Page {
                        next,
                        ids,
                        unloaded,
                        handed,
                    }
                }
                Err(error) => Outcome::Failed(error),
            }
        };
        AtomicResponse::new(Box::pin(step.into_actor(self).map(
            |outcome, consumer, ctx| {
                let next = match outcome {
                    Outcome::Failed(error) => consumer.failed(&error),
                    Outcome::Empty { next } => {
                        consumer.problems.clear();
                        consumer.state.on_empty(next)
                    }
                    Outcome::Page {
                        next,
                        ids,
                        unloaded,
                        handed,
                    } => {
                        consumer.problems.clear();
                        consumer.state.on_page(&next, &ids, &unloaded);
                        apply(&mut consumer.state, &ids, handed)
                    }
                };
                consumer.follow(next, ctx);
            },
        )))
    }
}

/// Looks again after `wait`, or sooner once the first writer's commit ends.
fn wait_then_read(pace: ReadPace, wait: Duration) -> AtomicResponse<Consumer, ()> {
    let waited = fut::wrap_future::<_, Consumer>(async move { pace.wait(wait).await });
    AtomicResponse::new(Box::pin(waited.map(|(), _, ctx| ctx.notify(ReadNext))))
}

/// The state's answer to what became of a page.
fn apply(state: &mut ReadState, ids: &[StreamId], handed: Option<Handed>) -> Next {
    match handed {
        None | Some(Handed::Stored) => state.on_stored(),
        Some(Handed::Refused(_)) => state.on_refused(ids),
        Some(Handed::NotStored) => state.on_not_stored(),
        Some(Handed::WriterGone) => state.on_writer_gone(),
    }
}

impl Handler<WaitForNew> for Consumer {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, WaitForNew(after): WaitForNew, _: &mut Context<Self>) -> Self::Result {
        let wait = self.source.wait_for_new(after);
        AtomicResponse::new(Box::pin(wait.into_actor(self).map(
            |waited, consumer, ctx| {
                let next = match waited {
                    Ok(()) => Next::ReadAgain,
                    Err(error) => consumer.failed(&error),
                };
                consumer.follow(next, ctx);
            },
        )))
    }
}

impl Handler<StopReading> for Consumer {
    type Result = ();

    fn handle(&mut self, _: StopReading, ctx: &mut Context<Self>) {
        // AtomicResponse above means no step is in flight here.
        ctx.stop();
    }
}
