//! A consumer's Redis side: weighed reads and waits for new entries, on a
//! connection of its own (a blocking read holds it), made when needed and
//! replaced after a transport failure. Behind [`StreamSource`] so that the
//! consumer actor can be tested without Redis.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::future::{FutureExt, LocalBoxFuture};

use super::ReadSettings;
use crate::connect::resp::Connection;
use crate::memory_budget::{MemoryBudget, Weights};
use crate::metrics as m;
use crate::redis_stream::{self, StreamError};
use crate::weighed_read::{self, Mode, Read, Request};

/// The replica's shared state with the readers' settings groups.
type Shared = super::Shared<ReadSettings>;

/// What a read or a wait can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("connect to redis: {0}")]
    Connect(#[source] StreamError),
    #[error("read the group: {0}")]
    Read(#[source] StreamError),
    #[error("wait for new entries: {0}")]
    Wait(#[source] StreamError),
    /// Redis had lost the group (a restart without persistence, or deleted);
    /// `recreated` says whether it exists again.
    #[error("consumer group missing (recreated: {recreated})")]
    GroupMissing { recreated: bool },
}

pub trait StreamSource: 'static {
    /// Reads within the memory budget.
    fn read(
        &self,
        mode: Mode,
        max_count: usize,
    ) -> LocalBoxFuture<'static, Result<Read, SourceError>>;
    /// Waits (up to BLOCK) for an entry after `after`, without taking it.
    fn wait_for_new(&self, after: String) -> LocalBoxFuture<'static, Result<(), SourceError>>;
}

/// The production source: one consumer's connection to Redis.
pub struct RedisSource {
    shared: Shared,
    consumer: String,
    budget: MemoryBudget,
    conn: Rc<RefCell<Option<Connection>>>,
    /// The heaviest entry of the last page: what the next read expects.
    entry_weight: Rc<Cell<u64>>,
}

impl RedisSource {
    pub fn new(shared: Shared, consumer: String, budget: MemoryBudget) -> Self {
        Self {
            shared,
            consumer,
            budget,
            conn: Rc::default(),
            entry_weight: Rc::default(),
        }
    }
}

impl StreamSource for RedisSource {
    fn read(
        &self,
        mode: Mode,
        max_count: usize,
    ) -> LocalBoxFuture<'static, Result<Read, SourceError>> {
        let (shared, consumer, budget, slot, entry_weight) = (
            self.shared.clone(),
            self.consumer.clone(),
            self.budget.clone(),
            self.conn.clone(),
            self.entry_weight.clone(),
        );
        async move {
            let mut conn = connection(&shared, &slot).await?;
            let settings = &shared.settings;
            let request = Request {
                stream: &settings.pipeline.stream,
                group: &settings.pipeline.group,
                consumer: &consumer,
                max_count,
                weights: Weights::new(settings.limits.max_expanded_bytes),
                max_deliveries: settings.limits.max_deliveries,
                expected_entry_weight: entry_weight.get(),
            };
            match weighed_read::read_within_budget(&mut conn, &budget, &request, &mode).await {
                Ok(read) => {
                    if let Read::Page(page, _) = &read {
                        if page.heaviest > 0 {
                            entry_weight.set(page.heaviest);
                        }
                    }
                    shared.health.set_redis(true);
                    *slot.borrow_mut() = Some(conn);
                    Ok(read)
                }
                Err(error) => {
                    metrics::counter!(m::REDIS_ERRORS, "operation" => "xreadgroup").increment(1);
                    read_failed(&shared, &consumer, &slot, conn, error).await
                }
            }
        }
        .boxed_local()
    }

    fn wait_for_new(&self, after: String) -> LocalBoxFuture<'static, Result<(), SourceError>> {
        let (shared, slot) = (self.shared.clone(), self.conn.clone());
        async move {
            let mut conn = connection(&shared, &slot).await?;
            let pipeline = &shared.settings.pipeline;
            let waited = redis_stream::wait_for_entries(
                &mut conn,
                &pipeline.stream,
                &after,
                pipeline.block(),
            )
            .await;
            match waited {
                Ok(()) => {
                    *slot.borrow_mut() = Some(conn);
                    Ok(())
                }
                Err(error) => {
                    metrics::counter!(m::REDIS_ERRORS, "operation" => "xread").increment(1);
                    Err(SourceError::Wait(error))
                }
            }
        }
        .boxed_local()
    }
}

/// The consumer's connection: the one in `slot`, or a new one. It is put
/// back only after a success: after a transport error a fresh one is cheap
/// and never reuses a socket in an unknown state.
async fn connection(
    shared: &Shared,
    slot: &RefCell<Option<Connection>>,
) -> Result<Connection, SourceError> {
    let existing = slot.borrow_mut().take();
    if let Some(conn) = existing {
        return Ok(conn);
    }
    connect(shared).await.map_err(|error| {
        shared.health.set_redis(false);
        metrics::counter!(m::REDIS_ERRORS, "operation" => "connect").increment(1);
        SourceError::Connect(error)
    })
}

/// Connects with a response timeout above BLOCK (see `connect::redis`).
async fn connect(shared: &Shared) -> Result<Connection, StreamError> {
    let block = shared.settings.pipeline.block();
    Ok(shared.redis.open_for_reads(block).await?)
}

/// A missing group is created again on the same connection, so that the
/// pipeline resumes by itself; any other error drops the connection.
async fn read_failed(
    shared: &Shared,
    consumer: &str,
    slot: &RefCell<Option<Connection>>,
    mut conn: Connection,
    error: StreamError,
) -> Result<Read, SourceError> {
    if !redis_stream::is_missing_group(&error) {
        shared.health.set_redis(false);
        return Err(SourceError::Read(error));
    }
    shared.health.set_group(false);
    tracing::warn!(%consumer, "consumer group missing; recreating it");
    let pipeline = &shared.settings.pipeline;
    let recreated = redis_stream::ensure_group(&mut conn, &pipeline.stream, &pipeline.group)
        .await
        .is_ok();
    shared.health.set_group(recreated);
    *slot.borrow_mut() = Some(conn);
    Err(SourceError::GroupMissing { recreated })
}
