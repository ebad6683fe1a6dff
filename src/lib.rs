//! swisper-ingest: the ingestion service of SwisperStudio observability.
//!
//! Applications publish trace events with `XADD observability:events`; this
//! service reads them in a Redis consumer group and stores them in
//! SwisperStudio's own PostgreSQL tables (`traces`, `observations`), with its
//! own state (merge versions, dead letters, heartbeats, retention) in the
//! schema `swisper_ingest`.
//!
//! ```text
//! Redis stream ──▶ Consumer × N ─┐            (weighed XREADGROUP, own connection each)
//!                  Claimer ──────┼─▶ Writer ──▶ PostgreSQL   (lock rows → merge → COPY/update → COMMIT)
//!                                │      └────▶ XACK          (only after COMMIT)
//!                  LagMonitor    └ Supervisor restarts any of them with backoff
//! ```
//!
//! - [`event`] turns one stream entry into a typed event or a rejection.
//! - [`merge`] folds events into rows; the result is independent of order and
//!   duplicates, which makes at-least-once delivery store exactly-once rows.
//! - [`write_path`] commits a batch: rows and dead letters in one transaction,
//!   isolating any entry that Postgres rejects; [`store::rows`] decides what
//!   the batch changes in the studio's rows, [`cost`] prices LLM calls as the
//!   studio does.
//! - [`memory_budget`] bounds what a replica holds in bytes; [`weighed_read`]
//!   reads only what fits it, with Redis's delivery count on every path.
//! - [`store`] and [`redis_stream`] are the plain async I/O; [`actors`] are
//!   thin glue that schedules it, and [`app`] wires everything with HTTP.
//! - [`connect`] makes every Redis and PostgreSQL connection (TLS,
//!   credentials, errors explained); [`check`] reports on them for operators.

pub mod actors;
pub mod admin;
pub mod app;
pub mod backoff;
pub mod batch_span;
pub mod batcher;
pub mod bounds;
pub mod build_info;
pub mod check;
pub mod config;
pub mod connect;
pub mod cost;
pub mod event;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod health;
pub mod http;
pub mod memory_budget;
pub mod merge;
pub mod metrics;
pub mod once_log;
pub mod parse_pool;
pub mod process_metrics;
pub mod read_state;
pub mod redis_stream;
pub mod retention;
pub mod store;
pub mod telemetry;
pub mod weighed_read;
pub mod write_path;
