//! The actor system: thin glue that schedules the I/O of `redis_stream`,
//! `write_path` and `store`. One actor a file, each message beside its actor.
//!
//! - [`supervisor::Supervisor`] starts the others, restarts any that dies
//!   (with backoff, counted), and drains them in order on shutdown.
//! - [`consumer::Consumer`] × N: reads within the memory budget on its own connection, hands each
//!   batch to the writer and waits for it to be committed before reading more
//!   (backpressure; what is in hand is bounded by [`crate::memory_budget`]).
//! - [`claimer::Claimer`]: claims entries idle too long (their consumer
//!   died) and sends them through the same writer.
//! - [`writer::Writer`]: gathers batches from all of them, commits one
//!   transaction at a time, then XACKs every entry of it.
//! - [`lag_monitor::LagMonitor`]: lag, pending and readiness probes.
//! - [`retention::RetentionWorker`]: forgets data past its horizon (one
//!   replica at a time) and refreshes every replica's horizons.

pub mod claimer;
pub mod consumer;
pub mod lag_monitor;
pub mod retention;
pub mod supervisor;
pub mod writer;

use std::sync::Arc;

use crate::config::ServeSettings;
use crate::health::Health;
use crate::retention::Horizons;

/// What every actor of a replica shares.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<ServeSettings>,
    pub health: Arc<Health>,
    pub redis: redis::Client,
    /// Retention horizons: refreshed by the retention worker, read by writers.
    pub horizons: Arc<Horizons>,
}
