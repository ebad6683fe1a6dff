//! The actor system: each actor asks its state machine ([`crate::read_state`],
//! [`crate::batcher`]) what to do, does the I/O (`redis_stream`,
//! `write_path`, `store`) and reports what happened. One actor a file, each
//! message beside its actor; the shutdown signal is [`Health`]'s draining
//! state, checked by every actor before its next step.
//!
//! - [`supervisor::Supervisor`] starts the others, restarts any that dies
//!   (with backoff, counted), and drains them in order on shutdown.
//! - [`consumer::Consumer`] × N: reads within the memory budget on its own connection, hands each
//!   batch to the writer and waits for it to be committed before reading more
//!   (backpressure; what is in hand is bounded by [`crate::memory_budget`]).
//!   Outside a backlog ([`backlog`]) they take turns to read new entries,
//!   the next page read while the last one commits ([`read_pace`]).
//! - [`claimer::Claimer`]: claims entries idle too long (their consumer
//!   died) and sends them through the same writer.
//! - [`writer::Writer`] × W: gathers the batches of the consumers it serves
//!   (and the claimer's), commits one
//!   transaction at a time, then XACKs every entry of it.
//! - [`lag_monitor::LagMonitor`]: lag, pending and readiness probes.
//! - [`retention::RetentionWorker`]: forgets data past its horizon (one
//!   replica at a time) and refreshes every replica's horizons.

pub mod backlog;
pub mod claimer;
pub mod commit;
pub mod consumer;
pub mod handover;
pub mod lag_monitor;
pub mod read_pace;
pub mod retention;
pub mod routing;
pub mod stream_source;
pub mod supervisor;
pub mod writer;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::bounds::BoundsSettings;
use crate::config::RetentionSettings;
use crate::config::{ClaimSettings, DatabaseSettings, LimitSettings, PipelineSettings};
use crate::health::Health;
use crate::retention::Horizons;
use crate::write_path::Studio;

/// What every actor of a replica shares, with the settings groups that one
/// actor needs (`S`): the supervisor holds them all and hands each actor
/// only its own, so an actor's type says what configures it.
#[derive(Clone)]
pub struct Shared<S> {
    pub settings: S,
    pub health: Arc<Health>,
    pub redis: crate::connect::redis::RedisTarget,
    /// Retention horizons: refreshed by the retention worker, read by writers.
    pub horizons: Arc<Horizons>,
    /// The price cache and project rule of the studio's tables, for writers.
    pub studio: Arc<Studio>,
}

impl<S> Shared<S> {
    /// The same replica state with other settings.
    pub fn with<T>(&self, settings: T) -> Shared<T> {
        Shared {
            settings,
            health: self.health.clone(),
            redis: self.redis.clone(),
            horizons: self.horizons.clone(),
            studio: self.studio.clone(),
        }
    }
}

/// Consumers and the claimer: where and how much to read, what to refuse,
/// when an entry counts as idle.
#[derive(Clone)]
pub struct ReadSettings {
    pub pipeline: Arc<PipelineSettings>,
    pub limits: LimitSettings,
    pub claim: ClaimSettings,
}

/// Writers: transactions, acks, poison protection.
#[derive(Clone)]
pub struct WriteSettings {
    pub pipeline: Arc<PipelineSettings>,
    pub limits: LimitSettings,
}

/// The lag monitor: the stream and group it watches, trimming, SDK
/// heartbeat series.
#[derive(Clone)]
pub struct MonitorSettings {
    pub pipeline: Arc<PipelineSettings>,
    pub bounds: BoundsSettings,
}

/// The retention worker: horizons, pace, and its own database session.
#[derive(Clone)]
pub struct RetentionWorkerSettings {
    pub retention: RetentionSettings,
    pub database: DatabaseSettings,
}
