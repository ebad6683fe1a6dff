//! A consumer: XREADGROUP on a connection of its own (BLOCK holds it), each
//! batch handed to the writer and awaited before the next read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::writer::WriteEntries;
use super::Shared;
use crate::backoff::Backoff;
use crate::event::{StreamEntry, StreamId};
use crate::metrics as m;
use crate::redis_stream::{self, Cursor, StreamError};
use crate::write_path;

/// Read the next batch (sent to itself after each step).
#[derive(Message)]
#[rtype(result = "()")]
struct ReadNext;

/// Finish the current step and stop; replies once nothing is in flight.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopReading;

pub struct Consumer {
    shared: Shared,
    name: String,
    writer: Recipient<WriteEntries>,
    /// Set by the supervisor on shutdown; checked before every read.
    stopping: Arc<AtomicBool>,
    conn: Option<MultiplexedConnection>,
    /// Starts on this consumer's own pending entries: after a restart under
    /// the same name they are invisible to `>` until claimed.
    cursor: Cursor,
    backoff: Backoff,
}

impl Consumer {
    pub fn new(
        shared: Shared,
        name: String,
        writer: Recipient<WriteEntries>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            shared,
            name,
            writer,
            stopping,
            conn: None,
            cursor: Cursor::Pending(StreamId { ms: 0, seq: 0 }),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(consumer = %self.name, "consumer started");
        ctx.notify(ReadNext);
    }
}

/// What one step ended with.
enum Step {
    /// Read (and stored) something, or moved on: read again at once.
    Progress,
    /// Nothing new within BLOCK: read again at once.
    Idle,
    /// Something failed: wait before the next step.
    Failed,
    /// The writer is gone: stop, the supervisor restarts us with the new one.
    WriterGone,
}

impl Handler<ReadNext> for Consumer {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ReadNext, _: &mut Context<Self>) -> Self::Result {
        #[cfg(feature = "fault-injection")]
        crate::fault::panic_once_at("consumer");
        if self.stopping.load(Ordering::Relaxed) {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let step = read_step(
            self.shared.clone(),
            self.name.clone(),
            self.writer.clone(),
            self.conn.take(),
            self.cursor,
        );
        AtomicResponse::new(Box::pin(step.into_actor(self).map(
            |(step, conn, cursor), consumer, ctx| {
                consumer.conn = conn;
                consumer.cursor = cursor;
                match step {
                    Step::Progress | Step::Idle => {
                        consumer.backoff.reset();
                        ctx.notify(ReadNext);
                    }
                    Step::Failed => {
                        ctx.notify_later(ReadNext, consumer.backoff.next_delay());
                    }
                    Step::WriterGone => ctx.stop(),
                }
            },
        )))
    }
}

impl Handler<StopReading> for Consumer {
    type Result = ();

    fn handle(&mut self, _: StopReading, ctx: &mut Context<Self>) {
        // AtomicResponse above means no step is in flight here.
        self.stopping.store(true, Ordering::Relaxed);
        ctx.stop();
    }
}

/// Connects with a response timeout above BLOCK: redis-rs' default of 500 ms
/// would fail a blocking read on the client while Redis still delivers.
async fn connect(shared: &Shared) -> Result<MultiplexedConnection, StreamError> {
    let block = shared.settings.pipeline.block();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    Ok(shared
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn read_step(
    shared: Shared,
    name: String,
    writer: Recipient<WriteEntries>,
    conn: Option<MultiplexedConnection>,
    cursor: Cursor,
) -> (Step, Option<MultiplexedConnection>, Cursor) {
    let settings = &shared.settings;
    let mut conn = match conn {
        Some(conn) => conn,
        None => match connect(&shared).await {
            Ok(conn) => conn,
            Err(error) => {
                shared.health.set_redis(false);
                metrics::counter!(m::REDIS_ERRORS, "operation" => "connect").increment(1);
                tracing::warn!(consumer = %name, %error, "cannot connect to redis");
                return (Step::Failed, None, cursor);
            }
        },
    };
    let read = redis_stream::read_group(
        &mut conn,
        &settings.pipeline.stream,
        &settings.pipeline.group,
        &name,
        cursor,
        settings.pipeline.batch_size as usize,
        settings.pipeline.block(),
    )
    .await;
    let entries = match read {
        Ok(entries) => entries,
        Err(error) => {
            // After a transport error the connection is replaced; a fresh one
            // is cheap and never reuses a socket in an unknown state.
            let keep = redis_stream::is_missing_group(&error);
            let step = read_failed(&shared, &name, &mut conn, error).await;
            return (step, keep.then_some(conn), cursor);
        }
    };
    shared.health.set_redis(true);
    if entries.is_empty() {
        // Own pending list exhausted: from now on, new entries.
        return match cursor {
            Cursor::Pending(_) => (Step::Progress, Some(conn), Cursor::New),
            Cursor::New => (Step::Idle, Some(conn), cursor),
        };
    }
    let last = entries
        .last()
        .map(|e| e.id)
        .unwrap_or(StreamId { ms: 0, seq: 0 });
    let next_cursor = match cursor {
        Cursor::Pending(_) => Cursor::Pending(last),
        Cursor::New => Cursor::New,
    };
    let entries = ack_deleted(&shared, &mut conn, entries).await;
    if entries.is_empty() {
        return (Step::Progress, Some(conn), next_cursor);
    }
    match writer
        .send(WriteEntries(write_path::prepare(
            entries,
            &settings.limits.entry(),
            settings.limits.max_deliveries,
        )))
        .await
    {
        Ok(Ok(())) => (Step::Progress, Some(conn), next_cursor),
        Ok(Err(error)) => {
            tracing::warn!(consumer = %name, %error, "batch not stored; will re-read own pending entries");
            (
                Step::Failed,
                Some(conn),
                Cursor::Pending(StreamId { ms: 0, seq: 0 }),
            )
        }
        Err(_) => (
            Step::WriterGone,
            Some(conn),
            Cursor::Pending(StreamId { ms: 0, seq: 0 }),
        ),
    }
}

async fn read_failed(
    shared: &Shared,
    name: &str,
    conn: &mut MultiplexedConnection,
    error: StreamError,
) -> Step {
    metrics::counter!(m::REDIS_ERRORS, "operation" => "xreadgroup").increment(1);
    if redis_stream::is_missing_group(&error) {
        // Redis lost the group (restart without persistence, or deleted):
        // recreate it so that the pipeline resumes by itself.
        shared.health.set_group(false);
        tracing::warn!(consumer = %name, "consumer group missing; recreating it");
        if redis_stream::ensure_group(
            conn,
            &shared.settings.pipeline.stream,
            &shared.settings.pipeline.group,
        )
        .await
        .is_ok()
        {
            shared.health.set_group(true);
            return Step::Progress;
        }
        return Step::Failed;
    }
    shared.health.set_redis(false);
    tracing::warn!(consumer = %name, %error, "xreadgroup failed");
    Step::Failed
}

/// Entries deleted from the stream while pending come back without fields:
/// there is nothing to store, so they are acked here and counted.
async fn ack_deleted(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    entries: Vec<StreamEntry>,
) -> Vec<StreamEntry> {
    let (deleted, entries): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.fields.is_empty());
    if !deleted.is_empty() {
        let ids: Vec<StreamId> = deleted.iter().map(|e| e.id).collect();
        metrics::counter!(m::TRIMMED_BEFORE_ACK).increment(ids.len() as u64);
        tracing::warn!(
            entries = ids.len(),
            "pending entries were trimmed from the stream before being stored"
        );
        let settings = &shared.settings;
        if let Err(error) = redis_stream::ack(
            conn,
            &settings.pipeline.stream,
            &settings.pipeline.group,
            &ids,
        )
        .await
        {
            tracing::warn!(%error, "cannot ack trimmed entries");
        }
    }
    entries
}
