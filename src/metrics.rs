//! Metric names in one place (`swisper_ingest_<name>_<unit>`, counters end in
//! `_total`, labels from bounded sets) and the Prometheus recorder.

use std::sync::OnceLock;

use metrics::{KeyName, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS: &str = "swisper_ingest_events_total";
pub const DEAD_LETTERS: &str = "swisper_ingest_dead_letters_total";
pub const BATCH_SIZE: &str = "swisper_ingest_batch_size_entries";
pub const WRITE_DURATION: &str = "swisper_ingest_write_duration_seconds";
pub const END_TO_END_LATENCY: &str = "swisper_ingest_end_to_end_latency_seconds";
pub const STREAM_LENGTH: &str = "swisper_ingest_stream_length";
pub const GROUP_LAG: &str = "swisper_ingest_group_lag";
pub const PENDING_ENTRIES: &str = "swisper_ingest_pending_entries";
pub const OLDEST_PENDING_AGE: &str = "swisper_ingest_oldest_pending_age_seconds";
pub const CLAIMED: &str = "swisper_ingest_claimed_total";
pub const ACKED: &str = "swisper_ingest_acked_total";
pub const TRIMMED_BEFORE_ACK: &str = "swisper_ingest_trimmed_before_ack_total";
pub const REDIS_ERRORS: &str = "swisper_ingest_redis_errors_total";
pub const POSTGRES_ERRORS: &str = "swisper_ingest_postgres_errors_total";
pub const AUTH_FAILURES: &str = "swisper_ingest_auth_failures_total";
pub const ACTOR_RESTARTS: &str = "swisper_ingest_actor_restarts_total";
pub const CONSUMERS_REMOVED: &str = "swisper_ingest_consumers_removed_total";
pub const READY: &str = "swisper_ingest_ready";
pub const POISONED: &str = "swisper_ingest_poisoned";
pub const TRIMMED: &str = "swisper_ingest_trimmed_total";
pub const TRIMMED_BEFORE_DELIVERY: &str = "swisper_ingest_trimmed_before_delivery";
pub const LAST_COMMIT: &str = "swisper_ingest_last_commit_timestamp_seconds";
pub const BUILD_INFO: &str = "swisper_ingest_build_info";
/// Rendered by hand (`bounds::render_heartbeat_ages`): a capped set of
/// series, and projects gone quiet drop out.
pub const SDK_HEARTBEAT_AGE: &str = "swisper_ingest_sdk_heartbeat_age_seconds";
// Prometheus' standard process metrics (`process_metrics`).
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const MEMORY_BUDGET: &str = "swisper_ingest_memory_budget_bytes";
pub const MEMORY_IN_HAND: &str = "swisper_ingest_memory_in_hand_bytes";
pub const OVERSIZED_FOR_BUDGET: &str = "swisper_ingest_oversized_for_budget_total";
pub const POISON_HELD: &str = "swisper_ingest_poison_held_entries";
pub const STARTS_HELD: &str = "swisper_ingest_starts_held_total";
pub const HELD_STARTS_ALONE: &str = "swisper_ingest_held_starts_alone_total";
pub const DELIVERED_UNLOADED: &str = "swisper_ingest_delivered_unloaded_total";
pub const RETENTION_FORGOTTEN: &str = "swisper_ingest_retention_forgotten_rows_total";
pub const RETENTION_BEHIND: &str = "swisper_ingest_retention_behind_seconds";
pub const RETENTION_LAST_RUN: &str = "swisper_ingest_retention_last_run_timestamp_seconds";
pub const RETENTION_HOLDER: &str = "swisper_ingest_retention_holder";
pub const RETENTION_BATCH_DURATION: &str = "swisper_ingest_retention_batch_duration_seconds";
pub const RETENTION_ERRORS: &str = "swisper_ingest_retention_errors_total";
pub const UNKNOWN_TYPES: &str = "swisper_ingest_unknown_observation_types_total";
pub const PROJECTS_CREATED: &str = "swisper_ingest_projects_created_total";
pub const WRITE_CONFLICTS: &str = "swisper_ingest_write_conflicts_total";
pub const COSTS: &str = "swisper_ingest_costs_total";
pub const PRICES: &str = "swisper_ingest_model_prices";

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Installs the process-wide recorder once; later calls (tests) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.to_owned()), SIZE_BUCKETS)
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => crate::build_info::VERSION,
                "commit" => crate::build_info::COMMIT
            )
            .set(1.0);
            metrics::gauge!(POISONED).set(0.0);
            handle
        })
        .clone()
}

/// What a metric counts, for its `# HELP` and `# TYPE`.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the recorder renders, with its kind, unit and help text.
const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = {
    use Kind::*;
    &[
        (Counter, EVENTS, None, "Stream entries handled, by event_type and outcome (stored, dead_lettered, heartbeat, expired: a late event of a trace past its retention horizon)."),
        (Counter, DEAD_LETTERS, None, "Entries written to swisper_ingest.dead_letters, by reason."),
        (Counter, UNKNOWN_TYPES, None, "Observation types outside the studio's enum, stored as SPAN with the original in meta._ingest_original_type."),
        (Counter, PROJECTS_CREATED, None, "Projects created on first sight (standalone databases, OBSERVABILITY_CREATE_PROJECTS)."),
        (Counter, WRITE_CONFLICTS, None, "Transactions retried because another writer inserted one of their new rows first."),
        (Counter, COSTS, None, "Observation ends with LLM usage, by outcome (priced, no_price: the model has no row in model_pricing, not_billable: no model or zero counts)."),
        (Gauge, PRICES, None, "Rows of model_pricing in this replica's price cache."),
        (Histogram, BATCH_SIZE, None, "Entries per committed write batch."),
        (Histogram, WRITE_DURATION, Some(Unit::Seconds), "Time to commit one batch, retries and isolation included."),
        (Histogram, END_TO_END_LATENCY, Some(Unit::Seconds), "Commit time minus the event's publish timestamp."),
        (Gauge, STREAM_LENGTH, None, "XLEN of the stream."),
        (Gauge, GROUP_LAG, None, "Entries not yet delivered to the consumer group."),
        (Gauge, PENDING_ENTRIES, None, "Entries delivered to the group and not yet acknowledged."),
        (Gauge, OLDEST_PENDING_AGE, Some(Unit::Seconds), "Age of the oldest unacknowledged entry."),
        (Counter, CLAIMED, None, "Idle pending entries claimed from other consumers."),
        (Counter, ACKED, None, "Entries acknowledged after their batch committed."),
        (Counter, TRIMMED_BEFORE_ACK, None, "Pending entries deleted from the stream (trimmed) before they were stored."),
        (Counter, REDIS_ERRORS, None, "Failed Redis commands, by operation."),
        (Counter, POSTGRES_ERRORS, None, "Failed Postgres writes, by kind: data, unavailable, read_only, disk_full, too_many_connections, statement_timeout."),
        (Counter, AUTH_FAILURES, None, "New connections refused for their credentials, by target (redis, postgres); the next one reads the credentials files again."),
        (Counter, ACTOR_RESTARTS, None, "Actors restarted by the supervisor, by actor."),
        (Counter, CONSUMERS_REMOVED, None, "Idle consumers with nothing pending removed from the group."),
        (Gauge, READY, None, "1 when Redis and Postgres are reachable and the group exists."),
        (Counter, TRIMMED, None, "Entries this service trimmed from the stream after every group acknowledged them."),
        (Gauge, TRIMMED_BEFORE_DELIVERY, None, "Entries deleted from the stream (producer MAXLEN) before this group read them, when Redis can tell."),
        (Gauge, POISONED, None, "1 while poison protection holds consumption: a run of bad entries past OBSERVABILITY_POISON_RUN."),
        (Gauge, LAST_COMMIT, Some(Unit::Seconds), "Unix time of the last committed batch."),
        (Counter, RETENTION_FORGOTTEN, None, "Rows forgotten by retention, by table (traces, observations, dead_letters, sdk_heartbeats, retention_tombstones)."),
        (Gauge, RETENTION_BEHIND, Some(Unit::Seconds), "How far retention is behind: age past its horizon of the oldest trace still stored (0 when on time); set by the replica holding the retention lock."),
        (Gauge, RETENTION_LAST_RUN, Some(Unit::Seconds), "Unix time of the last complete retention run of this replica."),
        (Gauge, RETENTION_HOLDER, None, "1 while this replica holds the retention lock (does the forgetting)."),
        (Histogram, RETENTION_BATCH_DURATION, Some(Unit::Seconds), "Time of one retention transaction (a batch of traces with their observations)."),
        (Counter, RETENTION_ERRORS, None, "Retention runs or horizon refreshes that failed (Postgres unavailable); retried next interval."),
        (Gauge, BUILD_INFO, None, "Always 1; the version and commit labels tell the build."),
        (Gauge, MEMORY_BUDGET, Some(Unit::Bytes), "OBSERVABILITY_MEMORY_BUDGET_BYTES: the weight of entries a replica may hold at once."),
        (Gauge, MEMORY_IN_HAND, Some(Unit::Bytes), "Weight of the entries in hand: read and not yet committed and acked."),
        (Counter, OVERSIZED_FOR_BUDGET, None, "Entries heavier than the whole memory budget, each processed alone."),
        (Gauge, POISON_HELD, None, "Entries a replica holds (pending, unacked) while poison protection pauses it."),
        (Counter, STARTS_HELD, None, "Observation starts held for their end (for the next batch under backlog, else up to OBSERVABILITY_HOLD_STARTS_MS), so that start and end are written together."),
        (Counter, HELD_STARTS_ALONE, None, "Held observation starts written without their end: it did not arrive in time (or the writer flushed)."),
        (Counter, DELIVERED_UNLOADED, None, "New entries a plain read delivered past its memory reservation without loading them, then reloaded by the weighing script."),
    ]
};

fn describe() {
    metrics::with_recorder(|recorder| {
        for &(kind, name, unit, help) in DESCRIPTIONS {
            let (key, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(key, unit, help),
                Kind::Gauge => recorder.describe_gauge(key, unit, help),
                Kind::Histogram => recorder.describe_histogram(key, unit, help),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_metric_is_rendered_with_its_help_text() {
        let handle = install();
        metrics::counter!(DEAD_LETTERS, "reason" => "test").increment(1);
        metrics::gauge!(STREAM_LENGTH).set(1.0);
        metrics::histogram!(WRITE_DURATION).record(0.01);
        let text = handle.render();
        for (name, help) in [
            (
                DEAD_LETTERS,
                "Entries written to swisper_ingest.dead_letters, by reason.",
            ),
            (STREAM_LENGTH, "XLEN of the stream."),
            (
                WRITE_DURATION,
                "Time to commit one batch, retries and isolation included.",
            ),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}\n")),
                "no help for {name} in:\n{text}"
            );
        }
        assert!(
            text.contains(&format!("# TYPE {WRITE_DURATION} histogram\n")),
            "{text}"
        );
    }
}
