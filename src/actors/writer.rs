//! The writer: one transaction at a time, acked only after COMMIT. It runs
//! on a thread of its own, so that building a transaction overlaps the
//! consumers' reads. What goes into each transaction is decided by
//! [`crate::batcher`]; this actor only runs the transactions it is handed,
//! answers the senders and keeps the linger timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::read_pace::{ReadPace, ReadTurn};
use crate::batch_span::{self, BatchSpan, Pages};
use crate::batcher::{Arrival, Batcher, BatcherSettings, Poison, Transaction};
use crate::event::BatchItem;
use crate::health::Health;
use crate::memory_budget::Reservation;
use crate::metrics as m;

/// Store these entries, already parsed by the sender; the reply comes once
/// they are committed and acked (held observation starts excepted: the
/// writer answers for those, see [`crate::batcher`]). The reservation of
/// their bytes in the memory budget is given back once none of them is in
/// hand.
#[derive(Message)]
#[rtype(result = "Result<(), WriteError>")]
pub struct WriteEntries {
    pub items: Vec<BatchItem>,
    pub reservation: Option<Reservation>,
    /// The page's span, ended by the writer at its last XACK.
    pub span: BatchSpan,
    /// The page read was full (a backlog), whatever share of it this is.
    pub full_page: bool,
    /// The turn the page was read with (crate::actors::read_pace): given
    /// back once the page is in this writer's hands, its transaction
    /// started or queued, so that the next read is timed by it.
    pub turn: Option<ReadTurn>,
}

/// Write whatever is gathered or held now; replies when it is committed.
#[derive(Message)]
#[rtype(result = "Result<(), WriteError>")]
pub struct Flush;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the writer stopped before the batch was committed")]
    Stopped,
    #[error(
        "poison protection: {0} bad entries in a row; nothing dead-lettered, consumption paused"
    )]
    Poisoned(u64),
}

/// Where a transaction goes: commits its entries (retrying until it can)
/// and acks them. Postgres and Redis in production
/// ([`super::commit::PostgresStore`]); a fake in the actor tests.
pub trait BatchStore: Send + 'static {
    /// `spans` ends the pages' spans once their entries are acked.
    fn store(
        &self,
        items: Vec<BatchItem>,
        spans: batch_span::Transaction,
    ) -> LocalBoxFuture<'static, ()>;
}

/// Mailbox slots: with consumers awaiting each send, this bounds memory to
/// (consumers + claimer) batches whatever the backlog.
const MAILBOX_CAPACITY: usize = 64;

type Waiter = oneshot::Sender<Result<(), WriteError>>;

pub struct Writer {
    store: Box<dyn BatchStore>,
    health: Arc<Health>,
    batcher: Batcher<Waiter, Reservation>,
    linger: Duration,
    /// The linger's timer, or the wake-up of held starts.
    linger_timer: Option<SpawnHandle>,
    /// Spans of the pages with entries in hand (crate::batch_span).
    pages: Pages,
    /// The first writer times the consumers' reads by its transactions.
    pace: Option<ReadPace>,
}

impl Writer {
    /// Starts the writer on `arbiter`'s thread, or on the caller's;
    /// `linger` is how long an idle writer waits when `settings.lingers`;
    /// `pace` is told when each transaction starts and ends.
    pub fn start(
        store: Box<dyn BatchStore>,
        health: Arc<Health>,
        settings: BatcherSettings,
        linger: Duration,
        arbiter: Option<&ArbiterHandle>,
        pace: Option<ReadPace>,
    ) -> Addr<Self> {
        let create = move |ctx: &mut Context<Self>| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            Self {
                store,
                health,
                batcher: Batcher::new(settings),
                linger,
                linger_timer: None,
                pages: Pages::default(),
                pace,
            }
        };
        match arbiter {
            Some(arbiter) => Self::start_in_arbiter(arbiter, create),
            None => Self::create(create),
        }
    }

    fn arrive(
        &mut self,
        batch: WriteEntries,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (waiter, receiver) = oneshot::channel();
        self.pages.add(batch.span);
        if batch.full_page {
            self.batcher.page_was_full();
        }
        match self.batcher.arrive(batch.items, batch.reservation, waiter) {
            Arrival::StartNow => self.start_next(ctx),
            Arrival::Linger => {
                if let Some(timer) = self.linger_timer.take() {
                    ctx.cancel_future(timer);
                }
                self.linger_timer = Some(ctx.run_later(self.linger, |writer, ctx| {
                    writer.linger_timer = None;
                    writer.start_next(ctx);
                }));
            }
            Arrival::Wait => {}
        }
        drop(batch.turn);
        receiver
    }

    /// Runs the batcher's next transaction, if it has one.
    fn start_next(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.linger_timer.take() {
            ctx.cancel_future(timer);
        }
        let next = self.batcher.decide(Instant::now());
        match next.poison {
            Poison::Tripped(run) => {
                self.health.set_poisoned(true);
                tracing::error!(run, "poison protection: most of the stream is bad; not dead-lettering, consumption paused");
                for waiter in next.refused {
                    let _ = waiter.send(Err(WriteError::Poisoned(run)));
                }
            }
            Poison::Cleared => self.health.set_poisoned(false),
            Poison::Unchanged => {}
        }
        if next.held > 0 {
            metrics::counter!(m::STARTS_HELD).increment(next.held as u64);
        }
        if next.held_went_alone > 0 {
            metrics::counter!(m::HELD_STARTS_ALONE).increment(next.held_went_alone as u64);
        }
        if let Some(transaction) = next.transaction {
            self.run(transaction, ctx);
        } else if let Some(at) = next.wake_at {
            let wait = at.saturating_duration_since(Instant::now());
            self.linger_timer = Some(ctx.run_later(wait, |writer, ctx| {
                writer.linger_timer = None;
                writer.start_next(ctx);
            }));
        }
    }

    fn run(&mut self, transaction: Transaction<Waiter, Reservation>, ctx: &mut Context<Self>) {
        let Transaction {
            items,
            waiters,
            release,
        } = transaction;
        let spans = self.pages.transaction(&items);
        let span = spans.span();
        if let Some(pace) = &self.pace {
            pace.write_started(Instant::now());
        }
        let stored = self.store.store(items, spans).instrument(span);
        ctx.spawn(stored.into_actor(self).map(move |(), writer, ctx| {
            if let Some(pace) = &writer.pace {
                pace.write_ended(Instant::now());
            }
            drop(release);
            for waiter in waiters {
                let _ = waiter.send(Ok(()));
            }
            writer.batcher.finished();
            // What arrived meanwhile, and held starts now due, go at once.
            writer.start_next(ctx);
        }));
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<WriteEntries> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    fn handle(&mut self, batch: WriteEntries, ctx: &mut Context<Self>) -> Self::Result {
        let done = self.arrive(batch, ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}

impl Handler<Flush> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    /// Replies once everything gathered or held before it is committed
    /// (after the transaction in flight, if any).
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        self.batcher.release_held();
        let empty = WriteEntries {
            items: Vec::new(),
            reservation: None,
            span: BatchSpan::default(),
            full_page: false,
            turn: None,
        };
        let done = self.arrive(empty, ctx);
        self.start_next(ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}
