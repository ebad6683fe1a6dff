//! The writer: one transaction at a time, batches gathered from every
//! consumer and the claimer, acked only after COMMIT. It runs on a thread of
//! its own, so that building a transaction overlaps the consumers' reads.
//!
//! An idle writer starts a transaction as soon as a batch arrives; batches
//! that arrive meanwhile go into the next one together. Under backlog (a
//! full batch), the starts of observations whose end has not arrived yet are
//! held for the next transaction, which begins at once: the row is then
//! written once, not inserted and then updated. A held start is never held
//! twice, and is acked only with the transaction that stores it.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::WriteSettings;
use crate::backoff::Backoff;
use crate::batch_span::{BatchSpan, Pages, Transaction};
use crate::connect::problem::{OnceLog, Problem};
use crate::event::{Parsed, StreamId};
use crate::memory_budget::Reservation;
use crate::metrics as m;
use crate::redis_stream;
use crate::store::Pool;
use crate::write_path::{self, BatchItem};

/// The replica's shared state with this actor's settings groups.
type Shared = super::Shared<WriteSettings>;

/// Store these entries, already parsed by the sender; the reply comes once
/// they are committed and acked (starts held for the next transaction
/// excepted: the writer answers for those). The reservation of their bytes
/// in the memory budget is given back once none of them is in hand.
#[derive(Message)]
#[rtype(result = "Result<(), WriteError>")]
pub struct WriteEntries {
    pub items: Vec<BatchItem>,
    pub reservation: Option<Reservation>,
    /// The page's span, ended by the writer at its last XACK.
    pub span: BatchSpan,
}

/// Write whatever is buffered or held now; replies when it is committed.
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

/// Mailbox slots: with consumers awaiting each send, this bounds memory to
/// (consumers + claimer) batches whatever the backlog.
const MAILBOX_CAPACITY: usize = 64;

type Waiter = oneshot::Sender<Result<(), WriteError>>;

pub struct Writer {
    shared: Shared,
    pool: Pool,
    /// Connection for XACK; reconnects by itself.
    acker: ConnectionManager,
    /// Batches that arrived while a transaction was in flight (or lingering):
    /// they go into the next one together.
    buffer: Vec<BatchItem>,
    waiters: Vec<Waiter>,
    reservations: Vec<Reservation>,
    /// Observation starts held for the next transaction, and the budget
    /// reservations of the batches they came from.
    held: Vec<BatchItem>,
    held_reservations: Vec<Reservation>,
    /// One transaction at a time: a second would only queue behind the first
    /// in Postgres and lock the same rows.
    in_flight: bool,
    linger: Option<SpawnHandle>,
    /// Entries rejected in a row, across batches: a broken producer shows as
    /// a long run, and past the limit nothing more is dead-lettered.
    rejection_run: u64,
    /// Spans of the pages with entries in hand (crate::batch_span).
    pages: Pages,
}

impl Writer {
    /// Starts the writer on `arbiter`'s thread, or on the caller's.
    pub fn start(
        shared: Shared,
        pool: Pool,
        acker: ConnectionManager,
        arbiter: Option<&ArbiterHandle>,
    ) -> Addr<Self> {
        let create = move |ctx: &mut Context<Self>| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            Self {
                shared,
                pool,
                acker,
                buffer: Vec::new(),
                waiters: Vec::new(),
                reservations: Vec::new(),
                held: Vec::new(),
                held_reservations: Vec::new(),
                in_flight: false,
                linger: None,
                rejection_run: 0,
                pages: Pages::default(),
            }
        };
        match arbiter {
            Some(arbiter) => Self::start_in_arbiter(arbiter, create),
            None => Self::create(create),
        }
    }

    /// Takes a batch: an idle writer starts a transaction at once (or after
    /// the linger); a busy one keeps it for the next transaction.
    fn enqueue(
        &mut self,
        batch: WriteEntries,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, receiver) = oneshot::channel();
        self.buffer.extend(batch.items);
        self.reservations.extend(batch.reservation);
        self.pages.add(batch.span);
        self.waiters.push(done);
        let pipeline = &self.shared.settings.pipeline;
        let linger = pipeline.write_linger();
        let full = self.buffer.len() >= pipeline.write_batch_size as usize;
        if self.in_flight || self.linger.is_some() && !full {
            return receiver;
        }
        if linger.is_zero() || full {
            self.flush(ctx);
        } else {
            self.linger = Some(ctx.run_later(linger, |writer, ctx| {
                writer.linger = None;
                writer.flush(ctx);
            }));
        }
        receiver
    }

    /// Starts a transaction with what is held and buffered, unless one is in
    /// flight: its completion starts the next.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(linger) = self.linger.take() {
            ctx.cancel_future(linger);
        }
        if self.in_flight || self.waiters.is_empty() && self.held.is_empty() {
            return;
        }
        let fresh = std::mem::take(&mut self.buffer);
        let waiters = std::mem::take(&mut self.waiters);
        let mut reservations = std::mem::take(&mut self.reservations);
        if let Err(refused) = self.check_poison(&fresh) {
            // Refused: the senders keep the entries (pending) and retry.
            for waiter in waiters {
                let _ = waiter.send(Err(refused.clone()));
            }
            if !self.held.is_empty() {
                let held = std::mem::take(&mut self.held);
                let done_with = std::mem::take(&mut self.held_reservations);
                self.start_transaction(held, Vec::new(), Vec::new(), done_with, ctx);
            }
            return;
        }
        // A full batch means a backlog: the next transaction follows at once.
        let backlog = fresh.len() >= self.shared.settings.pipeline.batch_size as usize;
        let (fresh, held) = if backlog {
            write_path::split_open_starts(fresh)
        } else {
            (fresh, Vec::new())
        };
        // Reservations go when the last entry of their batches is stored.
        let mut done_with = std::mem::take(&mut self.held_reservations);
        if held.is_empty() {
            done_with.append(&mut reservations);
        } else {
            metrics::counter!(m::STARTS_HELD).increment(held.len() as u64);
            self.held_reservations = reservations;
        }
        let previous = std::mem::replace(&mut self.held, held);
        self.start_transaction(previous, fresh, waiters, done_with, ctx);
    }

    /// Poison protection: a long run of rejected entries is refused whole.
    fn check_poison(&mut self, fresh: &[BatchItem]) -> Result<(), WriteError> {
        let limit = self.shared.settings.limits.poison_run;
        let run = write_path::rejection_run(fresh, self.rejection_run);
        if limit > 0 && run.longest >= limit {
            self.shared.health.set_poisoned(true);
            tracing::error!(
                run = run.longest,
                limit,
                "poison protection: most of the stream is bad; not dead-lettering, consumption paused"
            );
            return Err(WriteError::Poisoned(run.longest));
        }
        if !fresh.is_empty() {
            self.shared.health.set_poisoned(false);
        }
        self.rejection_run = run.trailing;
        Ok(())
    }

    fn start_transaction(
        &mut self,
        mut items: Vec<BatchItem>,
        fresh: Vec<BatchItem>,
        waiters: Vec<Waiter>,
        reservations: Vec<Reservation>,
        ctx: &mut Context<Self>,
    ) {
        items.extend(fresh);
        self.in_flight = true;
        let transaction = self.pages.transaction(&items);
        let span = transaction.span();
        let batch = commit_and_ack(
            self.shared.clone(),
            self.pool.clone(),
            self.acker.clone(),
            items,
            transaction,
        )
        .instrument(span);
        ctx.spawn(batch.into_actor(self).map(move |(), writer, ctx| {
            writer.in_flight = false;
            drop(reservations);
            for waiter in waiters {
                let _ = waiter.send(Ok(()));
            }
            // What arrived meanwhile, or was held, goes at once.
            writer.flush(ctx);
        }));
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<WriteEntries> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    fn handle(&mut self, batch: WriteEntries, ctx: &mut Context<Self>) -> Self::Result {
        let done = self.enqueue(batch, ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}

impl Handler<Flush> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    /// Replies once everything buffered or held before it is committed
    /// (after the transaction in flight, if any).
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let empty = WriteEntries {
            items: Vec::new(),
            reservation: None,
            span: BatchSpan::default(),
        };
        let done = self.enqueue(empty, ctx);
        self.flush(ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}

/// Commits the batch, retrying for as long as Postgres is unavailable
/// (nothing is acked meanwhile), then acks every entry of it.
async fn commit_and_ack(
    shared: Shared,
    pool: Pool,
    mut acker: ConnectionManager,
    mut items: Vec<BatchItem>,
    transaction: Transaction,
) {
    if items.is_empty() {
        return;
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::hang_at("writer").await;
    let settings = &shared.settings;
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Logged once (and again when the error changes), each retry at debug.
    let problems = OnceLog::default();
    loop {
        let destination = write_path::Destination {
            pool: &pool,
            stream: &settings.pipeline.stream,
            horizons: &shared.horizons,
            studio: &shared.studio,
        };
        match write_path::commit_isolating(destination, &mut items).await {
            Ok(isolated) => {
                if isolated > 0 {
                    metrics::counter!(m::POSTGRES_ERRORS, "kind" => "data")
                        .increment(isolated as u64);
                }
                break;
            }
            Err(error) => {
                // Retried whatever the kind (read-only, disk full, too many
                // connections, a single entry timing out): nothing acked.
                shared.health.set_last_write(false);
                metrics::counter!(m::POSTGRES_ERRORS, "kind" => error.label()).increment(1);
                let problem = Problem::transient(format!(
                    "{error} ({} entries, retried with backoff, kind {})",
                    items.len(),
                    error.label()
                ));
                problems.report("commit a batch", &problem);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::abort_at("after-commit");
    shared.health.set_postgres(true);
    shared.health.committed();
    record_outcomes(&items, started);
    let ids: Vec<StreamId> = items.iter().map(|item| item.entry.id).collect();
    let acked = ack_with_retries(&mut acker, &shared, &ids).await;
    transaction.settle(&items, acked);
}

/// A failed XACK loses nothing: the entries stay pending, are claimed again
/// and rewritten (idempotently), then acked. Returns whether it succeeded.
async fn ack_with_retries(
    acker: &mut ConnectionManager,
    shared: &Shared,
    ids: &[StreamId],
) -> bool {
    let settings = &shared.settings;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    for attempt in 1..=5 {
        match redis_stream::ack(
            acker,
            &settings.pipeline.stream,
            &settings.pipeline.group,
            ids,
        )
        .await
        {
            Ok(_) => {
                metrics::counter!(m::ACKED).increment(ids.len() as u64);
                return true;
            }
            Err(error) => {
                metrics::counter!(m::REDIS_ERRORS, "operation" => "xack").increment(1);
                tracing::warn!(%error, attempt, entries = ids.len(), "xack failed; entries stay pending");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    false
}

fn record_outcomes(items: &[BatchItem], started: Instant) {
    let now = Utc::now();
    metrics::histogram!(m::BATCH_SIZE).record(items.len() as f64);
    metrics::histogram!(m::WRITE_DURATION).record(started.elapsed().as_secs_f64());
    for item in items {
        let event_type = item.event_type();
        let outcome = match &item.parsed {
            Ok(Parsed::Trace(event)) => {
                let latency = (now - event.published_at).num_microseconds().unwrap_or(0);
                metrics::histogram!(m::END_TO_END_LATENCY).record(latency.max(0) as f64 / 1e6);
                "stored"
            }
            Ok(Parsed::Heartbeat(_)) => "heartbeat",
            // Late: its trace is past the retention horizon (docs/event-format.md).
            Ok(Parsed::Expired(_)) => "expired",
            Err(rejection) => {
                metrics::counter!(m::DEAD_LETTERS, "reason" => rejection.reason.as_str())
                    .increment(1);
                tracing::info!(entry = %item.entry.id, reason = %rejection, "dead letter");
                "dead_lettered"
            }
        };
        metrics::counter!(m::EVENTS, "event_type" => event_type, "outcome" => outcome).increment(1);
    }
}
