//! A consumer: reads the group on a connection of its own (BLOCK holds it)
//! within the replica's memory budget, hands each batch to the writer and
//! awaits its commit before the next read. A batch that poison protection
//! refuses is held (pending, idle-fresh) and retried, not re-read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::writer::{WriteEntries, WriteError};
use super::ReadSettings;
use crate::backoff::Backoff;
use crate::batch_span::BatchSpan;
use crate::connect::problem::{OnceLog, Problem};
use crate::event::StreamId;
use crate::memory_budget::{MemoryBudget, Weights};
use crate::metrics as m;
use crate::parse_pool::ParsePool;
use crate::redis_stream::{self, Cursor, StreamError};
use crate::weighed_read::{self, Mode, Read, Request};

/// The replica's shared state with this actor's settings groups.
type Shared = super::Shared<ReadSettings>;

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
    /// Ids of the batch that poison protection refused: still pending to
    /// this consumer, retried as they are until they commit or are acked by
    /// hand.
    held: Option<Vec<StreamId>>,
    /// The replica's memory budget, shared with the other readers.
    budget: MemoryBudget,
    parse_pool: ParsePool,
    /// Redis failures repeat every backoff step: logged once each (and
    /// again after a success), the rest at debug; counted in metrics always.
    problems: Arc<OnceLog>,
    backoff: Backoff,
}

impl Consumer {
    pub fn new(
        shared: Shared,
        name: String,
        writer: Recipient<WriteEntries>,
        stopping: Arc<AtomicBool>,
        budget: MemoryBudget,
        parse_pool: ParsePool,
    ) -> Self {
        Self {
            shared,
            name,
            writer,
            stopping,
            conn: None,
            cursor: Cursor::Pending(StreamId { ms: 0, seq: 0 }),
            held: None,
            budget,
            parse_pool,
            problems: Arc::default(),
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
    /// Poison protection refused the batch: retry it before other replicas
    /// would see it idle and claim it.
    Held,
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
        let state = StepState {
            conn: self.conn.take(),
            cursor: self.cursor,
            held: self.held.take(),
        };
        let step = read_step(
            self.shared.clone(),
            self.budget.clone(),
            self.parse_pool.clone(),
            self.problems.clone(),
            self.name.clone(),
            self.writer.clone(),
            state,
        );
        AtomicResponse::new(Box::pin(step.into_actor(self).map(
            |(step, state), consumer, ctx| {
                consumer.conn = state.conn;
                consumer.cursor = state.cursor;
                consumer.held = state.held;
                match step {
                    Step::Progress | Step::Idle => {
                        consumer.backoff.reset();
                        ctx.notify(ReadNext);
                    }
                    Step::Failed => {
                        ctx.notify_later(ReadNext, consumer.backoff.next_delay());
                    }
                    Step::Held => {
                        ctx.notify_later(ReadNext, hold_retry(&consumer.shared));
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

/// How often a held batch is retried: well within the claim idle time, as
/// each retry also resets the entries' idle time.
fn hold_retry(shared: &Shared) -> Duration {
    (shared.settings.claim.idle() / 3).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Connects with a response timeout above BLOCK: redis-rs' default of 500 ms
/// would fail a blocking read on the client while Redis still delivers. The
/// margin is wide because a weighed read of entries near the size limits
/// copies them inside Redis first; a read that times out on the client is
/// still a delivery in Redis, counted and claimed later.
async fn connect(shared: &Shared) -> Result<MultiplexedConnection, StreamError> {
    let block = shared.settings.pipeline.block();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(block + Duration::from_secs(30)));
    Ok(shared
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// What a step hands back to the actor for the next one.
struct StepState {
    conn: Option<MultiplexedConnection>,
    cursor: Cursor,
    /// Ids of a batch held by poison protection.
    held: Option<Vec<StreamId>>,
}

async fn read_step(
    shared: Shared,
    budget: MemoryBudget,
    parse_pool: ParsePool,
    problems: Arc<OnceLog>,
    name: String,
    writer: Recipient<WriteEntries>,
    state: StepState,
) -> (Step, StepState) {
    let StepState { conn, cursor, held } = state;
    let settings = &shared.settings;
    let mut conn = match conn {
        Some(conn) => conn,
        None => match connect(&shared).await {
            Ok(conn) => conn,
            Err(error) => {
                shared.health.set_redis(false);
                metrics::counter!(m::REDIS_ERRORS, "operation" => "connect").increment(1);
                problems.report("connect to redis", &problem(&name, &error));
                return (
                    Step::Failed,
                    StepState {
                        conn: None,
                        cursor,
                        held,
                    },
                );
            }
        },
    };
    // A held batch is reloaded as it is (no delivery counted); otherwise own
    // pending entries first (each read a delivery), then new ones.
    let mode = match (&held, cursor) {
        (Some(ids), _) => Mode::Held(ids.clone()),
        (None, Cursor::Pending(after)) => Mode::Pending(after),
        (None, Cursor::New) => Mode::New,
    };
    let request = Request {
        stream: &settings.pipeline.stream,
        group: &settings.pipeline.group,
        consumer: &name,
        max_count: held
            .as_ref()
            .map_or(settings.pipeline.batch_size as usize, |ids| ids.len()),
        weights: Weights::new(settings.limits.max_expanded_bytes),
        max_deliveries: settings.limits.max_deliveries,
    };
    let read = weighed_read::read_within_budget(&mut conn, &budget, &request, &mode).await;
    let (page, reservation) = match read {
        Ok(Read::Page(page, reservation)) => (page, reservation),
        Ok(Read::Empty { next }) => {
            shared.health.set_redis(true);
            problems.clear();
            let state = |conn, cursor| StepState {
                conn: Some(conn),
                cursor,
                held: None,
            };
            return match mode {
                // Everything held was acknowledged by hand (the runbook's way
                // out): read on.
                Mode::Held(ids) => {
                    release_held(&name, ids.len());
                    (Step::Progress, state(conn, cursor))
                }
                // Own pending list exhausted: from now on, new entries.
                Mode::Pending(_) => (Step::Progress, state(conn, Cursor::New)),
                _ => {
                    let waited = wait_for_new(&shared, &problems, &name, &mut conn, &next).await;
                    (waited, state(conn, cursor))
                }
            };
        }
        Err(error) => {
            // After a transport error the connection is replaced; a fresh one
            // is cheap and never reuses a socket in an unknown state.
            let keep = redis_stream::is_missing_group(&error);
            let step = read_failed(&shared, &name, &problems, &mut conn, error).await;
            let conn = keep.then_some(conn);
            return (step, StepState { conn, cursor, held });
        }
    };
    shared.health.set_redis(true);
    problems.clear();
    if !page.deleted.is_empty() {
        metrics::counter!(m::TRIMMED_BEFORE_ACK).increment(page.deleted.len() as u64);
        tracing::warn!(
            entries = page.deleted.len(),
            "pending entries were trimmed from the stream before being stored"
        );
    }
    let next_cursor = match mode {
        Mode::Pending(after) => Cursor::Pending(page.next.parse().unwrap_or(after)),
        _ => cursor,
    };
    // Held entries after the page did not fit this time: still held. Those
    // before its end that did not come back were acknowledged by hand.
    let rest = match &held {
        Some(ids) => {
            release_held(&name, ids.len());
            let end = page.entries.last().map(|e| e.id);
            let rest: Vec<StreamId> = ids
                .iter()
                .copied()
                .filter(|id| end.is_some_and(|end| *id > end))
                .collect();
            (!rest.is_empty()).then_some(rest)
        }
        None => None,
    };
    if let Some(rest) = &rest {
        metrics::gauge!(m::POISON_HELD).increment(rest.len() as f64);
    }
    if page.entries.is_empty() {
        let state = StepState {
            conn: Some(conn),
            cursor: next_cursor,
            held: rest,
        };
        return (Step::Progress, state);
    }
    let ids: Vec<StreamId> = page.entries.iter().map(|e| e.id).collect();
    let batch = BatchSpan::read(
        &settings.pipeline.stream,
        &name,
        false,
        &page.entries,
        reservation.bytes(),
    );
    let items = parse_pool
        .prepare(
            page.entries,
            reservation.bytes(),
            settings.limits.entry(),
            settings.limits.max_deliveries,
        )
        .await;
    let Ok(items) = items else {
        let _in_batch = batch.entered();
        // A bug in parsing: the entries stay pending and are read again,
        // each time a delivery, until the delivery limit dead-letters them.
        tracing::error!(consumer = %name, entries = ids.len(), "parsing a batch panicked; re-reading own pending entries");
        if let Some(rest) = &rest {
            release_held(&name, rest.len());
        }
        let state = StepState {
            conn: Some(conn),
            cursor: Cursor::Pending(StreamId { ms: 0, seq: 0 }),
            held: None,
        };
        return (Step::Failed, state);
    };
    let sent = writer
        .send(WriteEntries {
            items,
            reservation: Some(reservation),
            span: batch.clone(),
        })
        .await;
    let _in_batch = batch.answered(&sent);
    // The writer gives the reservation back once no entry of it is in hand.
    let conn = Some(conn);
    match sent {
        Ok(Ok(())) => (
            Step::Progress,
            StepState {
                conn,
                cursor: next_cursor,
                held: rest,
            },
        ),
        Ok(Err(WriteError::Poisoned(run))) => {
            // Held, not re-read: a re-read would count deliveries towards
            // the dead-letter limit for the good entries of the batch too.
            tracing::warn!(consumer = %name, run, entries = ids.len(), "batch held by poison protection; reloading it without counting deliveries");
            metrics::gauge!(m::POISON_HELD).increment(ids.len() as f64);
            let mut held = ids;
            if let Some(rest) = rest {
                held.extend(rest);
            }
            let state = StepState {
                conn,
                cursor: next_cursor,
                held: Some(held),
            };
            (Step::Held, state)
        }
        Ok(Err(error)) => {
            if let Some(rest) = &rest {
                release_held(&name, rest.len());
            }
            tracing::warn!(consumer = %name, %error, "batch not stored; will re-read own pending entries");
            let state = StepState {
                conn,
                cursor: Cursor::Pending(StreamId { ms: 0, seq: 0 }),
                held: None,
            };
            (Step::Failed, state)
        }
        Err(_) => {
            if let Some(rest) = &rest {
                release_held(&name, rest.len());
            }
            let state = StepState {
                conn,
                cursor: Cursor::Pending(StreamId { ms: 0, seq: 0 }),
                held: None,
            };
            (Step::WriterGone, state)
        }
    }
}

/// A Redis failure of this consumer, for [`OnceLog`].
fn problem(name: &str, error: &dyn std::fmt::Display) -> Problem {
    Problem::transient(format!("consumer {name}: {error}"))
}

fn release_held(name: &str, entries: usize) {
    metrics::gauge!(m::POISON_HELD).decrement(entries as f64);
    tracing::debug!(consumer = %name, entries, "held batch released");
}

/// Nothing new: waits (up to BLOCK) for an entry after the group's last
/// delivered id without taking it, so that the next read weighs it first.
/// XREAD brings at most that one entry, and drops it at once.
async fn wait_for_new(
    shared: &Shared,
    problems: &OnceLog,
    name: &str,
    conn: &mut MultiplexedConnection,
    after: &str,
) -> Step {
    let settings = &shared.settings;
    match redis_stream::wait_for_entries(
        conn,
        &settings.pipeline.stream,
        after,
        settings.pipeline.block(),
    )
    .await
    {
        Ok(()) => Step::Idle,
        Err(error) => {
            metrics::counter!(m::REDIS_ERRORS, "operation" => "xread").increment(1);
            problems.report("wait for new entries", &problem(name, &error));
            Step::Failed
        }
    }
}

async fn read_failed(
    shared: &Shared,
    name: &str,
    problems: &OnceLog,
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
    problems.report("read the group", &problem(name, &error));
    Step::Failed
}
