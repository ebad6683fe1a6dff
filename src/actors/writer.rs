//! The writer: one transaction at a time, batches gathered from every
//! consumer and the claimer, acked only after COMMIT.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use super::Shared;
use crate::backoff::Backoff;
use crate::event::{Parsed, StreamId};
use crate::metrics as m;
use crate::redis_stream;
use crate::store::Pool;
use crate::write_path::{self, BatchItem};

/// Store these entries, already parsed by the sender (so that parsing runs
/// while the writer waits on Postgres); the reply comes once they are
/// committed and acked.
#[derive(Message)]
#[rtype(result = "Result<(), WriteError>")]
pub struct WriteEntries(pub Vec<BatchItem>);

/// Write whatever is buffered now; replies when it is committed.
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

pub struct Writer {
    shared: Shared,
    pool: Pool,
    /// Connection for XACK; reconnects by itself.
    acker: ConnectionManager,
    buffer: Vec<BatchItem>,
    waiters: Vec<oneshot::Sender<Result<(), WriteError>>>,
    linger: Option<SpawnHandle>,
    /// Entries rejected in a row, across batches: a broken producer shows as
    /// a long run, and past the limit nothing more is dead-lettered.
    rejection_run: u64,
}

impl Writer {
    pub fn start(shared: Shared, pool: Pool, acker: ConnectionManager) -> Addr<Self> {
        Self::create(|ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            Self {
                shared,
                pool,
                acker,
                buffer: Vec::new(),
                waiters: Vec::new(),
                linger: None,
                rejection_run: 0,
            }
        })
    }

    fn enqueue(
        &mut self,
        entries: Vec<BatchItem>,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (done, receiver) = oneshot::channel();
        self.buffer.extend(entries);
        self.waiters.push(done);
        if self.buffer.len() >= self.shared.settings.pipeline.write_batch_size as usize {
            self.flush(ctx);
        } else if self.linger.is_none() {
            let linger = self.shared.settings.pipeline.write_linger();
            self.linger = Some(ctx.run_later(linger, |writer, ctx| {
                writer.linger = None;
                writer.flush(ctx);
            }));
        }
        receiver
    }

    /// Commits the buffer; `ctx.wait` holds the mailbox meanwhile, so that
    /// exactly one transaction is in flight and senders feel backpressure.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(linger) = self.linger.take() {
            ctx.cancel_future(linger);
        }
        if self.waiters.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.buffer);
        let waiters = std::mem::take(&mut self.waiters);
        let batch = commit_and_ack(
            self.shared.clone(),
            self.pool.clone(),
            self.acker.clone(),
            entries,
            self.rejection_run,
        );
        ctx.wait(
            batch
                .into_actor(self)
                .map(move |(outcome, run), writer, _| {
                    writer.rejection_run = run;
                    for waiter in waiters {
                        let _ = waiter.send(outcome.clone());
                    }
                }),
        );
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<WriteEntries> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    fn handle(&mut self, msg: WriteEntries, ctx: &mut Context<Self>) -> Self::Result {
        let done = self.enqueue(msg.0, ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}

impl Handler<Flush> for Writer {
    type Result = ResponseFuture<Result<(), WriteError>>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let done = self.enqueue(Vec::new(), ctx);
        self.flush(ctx);
        Box::pin(async move { done.await.unwrap_or(Err(WriteError::Stopped)) })
    }
}

/// Commits the batch, retrying for as long as Postgres is unavailable
/// (nothing is acked meanwhile), then acks every entry of it. Takes and
/// returns the run of rejected entries for poison protection.
async fn commit_and_ack(
    shared: Shared,
    pool: Pool,
    mut acker: ConnectionManager,
    mut items: Vec<BatchItem>,
    rejection_run: u64,
) -> (Result<(), WriteError>, u64) {
    if items.is_empty() {
        return (Ok(()), rejection_run);
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::hang_at("writer").await;
    let settings = &shared.settings;
    let started = Instant::now();
    let run = write_path::rejection_run(&items, rejection_run);
    if settings.limits.poison_run > 0 && run.longest >= settings.limits.poison_run {
        shared.health.set_poisoned(true);
        tracing::error!(
            run = run.longest,
            limit = settings.limits.poison_run,
            "poison protection: most of the stream is bad; not dead-lettering, consumption paused"
        );
        return (Err(WriteError::Poisoned(run.longest)), rejection_run);
    }
    shared.health.set_poisoned(false);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match write_path::commit_isolating(
            &pool,
            &settings.pipeline.stream,
            &shared.horizons,
            &mut items,
        )
        .await
        {
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
                let delay = backoff.next_delay();
                tracing::warn!(%error, kind = error.label(), retry_in_ms = delay.as_millis() as u64, entries = items.len(), "batch not committed");
                tokio::time::sleep(delay).await;
            }
        }
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::abort_at("after-commit");
    shared.health.set_postgres(true);
    shared.health.committed();
    record_outcomes(&items, started);
    let ids: Vec<StreamId> = items.iter().map(|item| item.entry.id).collect();
    ack_with_retries(&mut acker, &shared, &ids).await;
    (Ok(()), run.trailing)
}

/// A failed XACK loses nothing: the entries stay pending, are claimed again
/// and rewritten (idempotently), then acked.
async fn ack_with_retries(acker: &mut ConnectionManager, shared: &Shared, ids: &[StreamId]) {
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
                return;
            }
            Err(error) => {
                metrics::counter!(m::REDIS_ERRORS, "operation" => "xack").increment(1);
                tracing::warn!(%error, attempt, entries = ids.len(), "xack failed; entries stay pending");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
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
