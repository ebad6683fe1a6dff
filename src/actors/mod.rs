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

pub mod claimer;
pub mod consumer;
pub mod lag_monitor;
pub mod supervisor;
pub mod writer;

use std::sync::Arc;

use crate::config::ServeSettings;
use crate::health::Health;

/// What every actor of a replica shares.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<ServeSettings>,
    pub health: Arc<Health>,
    pub redis: redis::Client,
}
