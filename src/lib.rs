//! swisper-ingest: the ingestion service of SwisperStudio observability.
//!
//! Applications publish trace events with `XADD observability:events`; this
//! service reads them in a Redis consumer group and stores them in PostgreSQL.
//!
//! ```text
//! Redis stream ──▶ Consumer × N ─┐            (XREADGROUP, own connection each)
//!                  Claimer ──────┼─▶ Writer ──▶ PostgreSQL   (COPY → merge → COMMIT)
//!                                │      └────▶ XACK          (only after COMMIT)
//!                  LagMonitor    └ Supervisor restarts any of them with backoff
//! ```
//!
//! - [`event`] turns one stream entry into a typed event or a rejection.
//! - [`merge`] folds events into rows; the result is independent of order and
//!   duplicates, which makes at-least-once delivery store exactly-once rows.
//! - [`write_path`] commits a batch: rows and dead letters in one transaction,
//!   isolating any entry that Postgres rejects.
//! - [`store`] and [`redis_stream`] are the plain async I/O; [`actors`] are
//!   thin glue that schedules it, and [`app`] wires everything with HTTP.

pub mod actors;
pub mod admin;
pub mod app;
pub mod backoff;
pub mod config;
pub mod event;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod health;
pub mod http;
pub mod merge;
pub mod metrics;
pub mod redis_stream;
pub mod retention;
pub mod store;
pub mod write_path;
