//! Folding events into rows so that the result does not depend on the order
//! of arrival nor on duplicates.
//!
//! A row is split into groups of columns, each filled by one kind of event:
//! - `seen`: the observation's trace id, from the newest event of the row;
//! - `start`: from trace_start / observation_start;
//! - `end`: from observation_end / observation_error.
//!
//! Each group holds the event with the greatest [`Version`] (publish time,
//! then stream id) among those that fill it: a last-writer-wins register.
//! Taking a maximum is commutative, associative and idempotent, so any
//! permutation, duplication or batching of the same events gives the same
//! rows. The SQL merge in `store::rows` applies the very same rule across
//! batches and replicas.
//!
//! Rows are keyed by id, as the studio's tables are. The write path sends
//! here only events whose project agrees with their trace's
//! ([`crate::write_path`] dead-letters the others as `project_mismatch`), so
//! every event of a row has the same project.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::event::{EventBody, ObservationEnd, ObservationStart, StreamId, TraceEvent, TraceStart};

/// Sorts as (publish time in µs, stream entry id); 24 big-endian bytes so that
/// Postgres compares `bytea` versions exactly as Rust compares these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version([u8; 24]);

impl Version {
    pub fn of(published_at: DateTime<Utc>, entry_id: StreamId) -> Self {
        // Flipping the sign bit makes two's complement sort as unsigned bytes.
        let micros = (published_at.timestamp_micros() as u64) ^ (1 << 63);
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&micros.to_be_bytes());
        bytes[8..16].copy_from_slice(&entry_id.ms.to_be_bytes());
        bytes[16..].copy_from_slice(&entry_id.seq.to_be_bytes());
        Self(bytes)
    }

    /// Older than any event's version: what a row written by someone else
    /// (the studio's own consumer) counts as.
    pub const OLDEST: Version = Version([0; 24]);

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A version as stored (24 bytes); None for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// A value and the version of the event that set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Versioned<T> {
    pub version: Version,
    pub value: T,
}

impl<T> Versioned<T> {
    fn newest(self, other: Self) -> Self {
        if other.version > self.version {
            other
        } else {
            self
        }
    }
}

fn newest<T>(a: Option<Versioned<T>>, b: Option<Versioned<T>>) -> Option<Versioned<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.newest(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow<'a> {
    pub id: &'a str,
    /// The same for every event of the row (the smallest, should two differ).
    pub project_id: &'a str,
    /// When Redis received the trace's oldest entry (its stream id, the
    /// server's clock): the trace's time until its trace_start, and always
    /// its time for retention, which no producer's clock can move.
    pub first_seen_at: DateTime<Utc>,
    pub start: Option<Versioned<&'a TraceStart>>,
}

impl<'a> TraceRow<'a> {
    pub fn join(&mut self, other: Self) {
        self.project_id = self.project_id.min(other.project_id);
        self.first_seen_at = self.first_seen_at.min(other.first_seen_at);
        self.start = newest(self.start.take(), other.start);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservationRow<'a> {
    pub id: &'a str,
    /// The same for every event of the row (the smallest, should two differ).
    pub project_id: &'a str,
    /// The trace id of the newest event of the observation.
    pub seen: Versioned<&'a str>,
    pub start: Option<Versioned<&'a ObservationStart>>,
    pub end: Option<Versioned<&'a ObservationEnd>>,
}

impl<'a> ObservationRow<'a> {
    pub fn join(&mut self, other: Self) {
        self.project_id = self.project_id.min(other.project_id);
        self.seen = self.seen.newest(other.seen);
        self.start = newest(self.start.take(), other.start);
        self.end = newest(self.end.take(), other.end);
    }
}

/// A row's key: its id, as in the studio's tables.
type Key<'a> = &'a str;

impl<'a> TraceRow<'a> {
    fn key(&self) -> Key<'a> {
        self.id
    }
}

impl<'a> ObservationRow<'a> {
    fn key(&self) -> Key<'a> {
        self.id
    }
}

/// The rows a set of events produces, each table sorted by id: the order in
/// which every writer locks them, so two replicas never deadlock.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows<'a> {
    pub traces: Vec<TraceRow<'a>>,
    pub observations: Vec<ObservationRow<'a>>,
}

/// Every event makes (or touches) its trace's row, so a trace exists as soon
/// as any of its events is stored; observation events also make their row.
pub fn merge<'a>(events: impl IntoIterator<Item = &'a TraceEvent>) -> Rows<'a> {
    let mut traces: BTreeMap<Key, TraceRow> = BTreeMap::new();
    let mut observations: BTreeMap<Key, ObservationRow> = BTreeMap::new();
    for event in events {
        let version = Version::of(event.published_at, event.entry_id);
        let (trace, observation) = rows_of(event, version);
        upsert(&mut traces, trace.key(), trace, TraceRow::join);
        if let Some(observation) = observation {
            upsert(
                &mut observations,
                observation.key(),
                observation,
                ObservationRow::join,
            );
        }
    }
    Rows {
        traces: traces.into_values().collect(),
        observations: observations.into_values().collect(),
    }
}

fn upsert<'a, R>(rows: &mut BTreeMap<Key<'a>, R>, key: Key<'a>, row: R, join: fn(&mut R, R)) {
    match rows.get_mut(&key) {
        Some(existing) => join(existing, row),
        None => {
            rows.insert(key, row);
        }
    }
}

/// The one-event rows: what this event alone says about its trace and
/// observation.
fn rows_of<'a>(
    event: &'a TraceEvent,
    version: Version,
) -> (TraceRow<'a>, Option<ObservationRow<'a>>) {
    let at = |value| Versioned { version, value };
    let mut trace = TraceRow {
        id: &event.trace_id,
        project_id: &event.project_id,
        first_seen_at: event.entry_id.time(),
        start: None,
    };
    let observation = |id: &'a str| ObservationRow {
        id,
        project_id: &event.project_id,
        seen: at(event.trace_id.as_str()),
        start: None,
        end: None,
    };
    let observation = match &event.body {
        EventBody::TraceStart(start) => {
            trace.start = Some(Versioned {
                version,
                value: start,
            });
            None
        }
        EventBody::ObservationStart {
            observation_id,
            fields,
        } => Some(ObservationRow {
            start: Some(Versioned {
                version,
                value: fields,
            }),
            ..observation(observation_id)
        }),
        EventBody::ObservationEnd {
            observation_id,
            fields,
        } => Some(ObservationRow {
            end: Some(Versioned {
                version,
                value: fields,
            }),
            ..observation(observation_id)
        }),
    };
    (trace, observation)
}

/// Joins rows of the same tables, as the database does across batches.
pub fn join_rows<'a>(mut acc: Rows<'a>, more: Rows<'a>) -> Rows<'a> {
    let mut traces: BTreeMap<Key, TraceRow> = acc.traces.drain(..).map(|r| (r.key(), r)).collect();
    for row in more.traces {
        upsert(&mut traces, row.key(), row, TraceRow::join);
    }
    let mut observations: BTreeMap<Key, ObservationRow> =
        acc.observations.drain(..).map(|r| (r.key(), r)).collect();
    for row in more.observations {
        upsert(&mut observations, row.key(), row, ObservationRow::join);
    }
    Rows {
        traces: traces.into_values().collect(),
        observations: observations.into_values().collect(),
    }
}
