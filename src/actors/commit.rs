//! The writer's store: commits a transaction's entries into Postgres,
//! retrying for as long as Postgres is unavailable (nothing is acked
//! meanwhile), then XACKs every entry of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::{FutureExt, LocalBoxFuture};

use super::writer::BatchStore;
use super::WriteSettings;
use crate::backoff::Backoff;
use crate::batch_span;
use crate::connect::problem::Problem;
use crate::connect::redis::ConnectionManager;
use crate::event::{BatchItem, Parsed, StreamId};
use crate::metrics as m;
use crate::once_log::OnceLog;
use crate::redis_stream;
use crate::store::Pool;
use crate::write_path;

/// The replica's shared state with the writer's settings groups.
type Shared = super::Shared<WriteSettings>;

/// Postgres for the rows, Redis for the acks.
pub struct PostgresStore {
    pub shared: Shared,
    pub pool: Pool,
    /// Connection for XACK; reconnects by itself.
    pub acker: ConnectionManager,
}

impl BatchStore for PostgresStore {
    fn store(
        &self,
        items: Vec<BatchItem>,
        spans: batch_span::Transaction,
    ) -> LocalBoxFuture<'static, ()> {
        commit_and_ack(
            self.shared.clone(),
            self.pool.clone(),
            self.acker.clone(),
            items,
            spans,
        )
        .boxed_local()
    }
}

/// Commits the batch, retrying for as long as Postgres is unavailable
/// (nothing is acked meanwhile), then acks every entry of it.
async fn commit_and_ack(
    shared: Shared,
    pool: Pool,
    mut acker: ConnectionManager,
    mut items: Vec<BatchItem>,
    spans: batch_span::Transaction,
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
    spans.settle(&items, acked);
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
    // Counted per (event type, outcome) once a batch: a labelled counter is
    // a registry lookup, 2,000 of them a batch otherwise.
    let mut counts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
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
        *counts.entry((event_type, outcome)).or_default() += 1;
    }
    for ((event_type, outcome), count) in counts {
        metrics::counter!(m::EVENTS, "event_type" => event_type, "outcome" => outcome)
            .increment(count);
    }
}
