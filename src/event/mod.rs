//! The wire contract: one stream entry, parsed into a typed event or rejected
//! with a precise reason. Pure code, no I/O.

mod batch;
pub mod gzip;
mod lenient;
mod llm;
pub mod parse;
mod payload;
mod raw_object;
mod reject;
mod time;
pub mod weight;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

pub use batch::{prepare, BatchItem, UNLOADED_FIELD};
pub use llm::StudioUsage;
pub use parse::parse_entry;
pub use payload::{expand_data, Json};
pub use reject::{Reason, Rejection};
pub use time::{parse_epoch_seconds, parse_iso_time};

/// A stream entry id, `<milliseconds>-<sequence>`; orders entries of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// When Redis added the entry, by the Redis server's clock (the id's
    /// milliseconds): a time no producer can claim.
    pub fn time(&self) -> DateTime<Utc> {
        i64::try_from(self.ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s
            .split_once('-')
            .ok_or_else(|| format!("stream id {s:?} has no '-'"))?;
        let number = |part: &str| {
            part.parse::<u64>()
                .map_err(|_| format!("stream id {s:?} is not <ms>-<seq>"))
        };
        Ok(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

/// A field name or value: a slice of the reply it came in (see
/// [`crate::connect::resp::reply::range`]), so reading an entry allocates
/// nothing per field and dropping it frees nothing per field.
pub type FieldBytes = bytes::Bytes;

/// One entry as Redis delivered it: fields in order, bytes untouched, so that
/// a dead letter can keep exactly what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub fields: Vec<(FieldBytes, FieldBytes)>,
    /// How often Redis has delivered it (known exactly for claimed entries).
    pub deliveries: u32,
}

impl StreamEntry {
    /// Size of all field names and values, the measure of the size limit.
    pub fn byte_size(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The first value of a field, if present.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }
}

/// Bounds an entry must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entry_bytes: usize,
    pub max_expanded_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entry_bytes: 4 * 1024 * 1024,
            max_expanded_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What an entry turned out to be.
// Nearly every entry is a trace event: boxing it would add an allocation per
// event to save space on the rare heartbeat.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Trace(TraceEvent),
    Heartbeat(Heartbeat),
    /// Set by the write path, never by the parser: an event of a trace past
    /// its retention horizon, acked without being stored.
    Expired(TraceEvent),
}

/// An event of one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceEvent {
    pub entry_id: StreamId,
    pub trace_id: String,
    pub project_id: String,
    /// The producer's `timestamp` field: when the event was published.
    pub published_at: DateTime<Utc>,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    TraceStart(TraceStart),
    ObservationStart {
        observation_id: String,
        fields: ObservationStart,
    },
    /// observation_end and observation_error: both close an observation.
    ObservationEnd {
        observation_id: String,
        fields: ObservationEnd,
    },
}

impl TraceEvent {
    /// The observation an observation event is about.
    pub fn observation_id(&self) -> Option<&str> {
        match &self.body {
            EventBody::TraceStart(_) => None,
            EventBody::ObservationStart { observation_id, .. }
            | EventBody::ObservationEnd { observation_id, .. } => Some(observation_id),
        }
    }

    /// The wire event type, as a bounded metric label.
    pub fn event_type(&self) -> &'static str {
        match &self.body {
            EventBody::TraceStart(_) => "trace_start",
            EventBody::ObservationStart { .. } => "observation_start",
            EventBody::ObservationEnd { fields, .. } if fields.is_error => "observation_error",
            EventBody::ObservationEnd { .. } => "observation_end",
        }
    }
}

/// The studio's `observationtype` enum: a type outside it is stored as SPAN,
/// with the original kept in the row's meta.
pub const OBSERVATION_TYPES: [&str; 5] = ["SPAN", "GENERATION", "EVENT", "TOOL", "AGENT"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceStart {
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// data.tags (the studio's default: an empty list).
    pub tags: Option<Json>,
    /// data.timestamp, else the publish time.
    pub timestamp: DateTime<Utc>,
    /// The studio's `meta`: data.meta's keys plus every key of data without
    /// a column of its own (run_id, unknown keys, `_fields`, repairs).
    pub metadata: Json,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservationStart {
    pub name: Option<String>,
    /// One of [`OBSERVATION_TYPES`] (anything else was moved to metadata).
    pub observation_type: Option<String>,
    pub parent_observation_id: Option<String>,
    pub input: Option<Json>,
    /// data.start_time, else the publish time.
    pub start_time: DateTime<Utc>,
    /// data.meta's keys plus every key of data without a column.
    pub metadata: Json,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservationEnd {
    /// True for observation_error.
    pub is_error: bool,
    /// One of [`OBSERVATION_TYPES`]; replaces the start's.
    pub observation_type: Option<String>,
    /// data.level, else DEFAULT (end) or ERROR (error).
    pub level: String,
    pub output: Option<Json>,
    /// observation_error: data.error, else data.status_message (the studio's
    /// order); observation_end: data.status_message.
    pub status_message: Option<String>,
    /// data.end_time, else the publish time.
    pub end_time: DateTime<Utc>,
    /// data.meta's keys plus every key of data without a column.
    pub metadata: Json,
    /// Model and tokens as the studio reads them from the output.
    pub llm: Option<StudioUsage>,
}

/// An SDK liveness event: no trace, just "this application is running".
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub entry_id: StreamId,
    pub project_id: String,
    pub sdk_version: Option<String>,
    pub published_at: DateTime<Utc>,
    /// Keys of data without a column of their own (host, instance...).
    pub metadata: Json,
}

#[cfg(test)]
mod tests;
