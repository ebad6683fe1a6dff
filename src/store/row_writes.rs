//! The studio rows one transaction writes, with their final columns: what
//! the plan decides and both write paths (COPY for new rows, UPDATE for
//! stored ones) take.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::cost::Costs;
use crate::event::{ObservationEnd, ObservationStart};
use crate::merge::Version;

/// The studio's defaults (its consumer's `data.get("name", ...)`).
const UNNAMED_OBSERVATION: &str = "unnamed_observation";
const DEFAULT_LEVEL: &str = "DEFAULT";

/// What a row's short values take encoded, about: its ids, name, times and
/// numbers with their lengths.
const SHORT_VALUES_BYTES: usize = 256;

/// A trace row to insert or update: its final studio columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceWrite<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    /// True when a trace_start is (now) known: name, user, session, meta and
    /// tags are written; otherwise only the timestamp moves.
    pub started: bool,
    pub name: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub meta: Option<&'a str>,
    pub tags: &'a str,
    /// None keeps the stored one (a started trace's time is its start's).
    pub timestamp: Option<NaiveDateTime>,
    /// The state that goes with it.
    pub first_seen_at: DateTime<Utc>,
    pub start_version: Option<Version>,
}

/// An observation row to insert or update.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationWrite<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    /// Which groups this batch wins (all that it has, for a new row).
    pub seen_wins: bool,
    pub start_wins: bool,
    pub end_wins: bool,
    pub trace_id: &'a str,
    pub start: Option<&'a ObservationStart>,
    pub end: Option<&'a ObservationEnd>,
    /// Combined from both groups, always written.
    pub observation_type: String,
    pub meta: Option<String>,
    /// The start's time, or the end's while no start is known; None keeps
    /// the stored one.
    pub start_time: Option<NaiveDateTime>,
    pub costs: Option<Costs>,
    /// The state that goes with it.
    pub seen_version: Version,
    pub start_version: Option<Version>,
    pub end_version: Option<Version>,
    pub start_type: Option<&'a str>,
    pub end_type: Option<&'a str>,
    pub start_meta: Option<&'a str>,
    pub end_meta: Option<&'a str>,
}

impl TraceWrite<'_> {
    /// About what the row takes encoded (a COPY's or a statement's bytes).
    pub fn encoded_bytes(&self) -> usize {
        SHORT_VALUES_BYTES + self.meta.map_or(0, str::len) + self.tags.len()
    }
}

impl ObservationWrite<'_> {
    /// About what the row takes encoded: its JSON values and the rest.
    pub fn encoded_bytes(&self) -> usize {
        let json_len = |json: Option<&crate::event::Json>| json.map_or(0, |j| j.as_str().len());
        SHORT_VALUES_BYTES
            + self.id.len()
            + json_len(self.start.and_then(|s| s.input.as_ref()))
            + json_len(self.end.and_then(|e| e.output.as_ref()))
            + self.meta.as_deref().map_or(0, str::len)
    }

    /// The start's name, the studio's default when it has none; NULL before
    /// the start arrives.
    pub fn name(&self) -> Option<&str> {
        self.start
            .map(|s| s.name.as_deref().unwrap_or(UNNAMED_OBSERVATION))
    }

    /// The end's level; DEFAULT until an end is stored.
    pub fn level(&self) -> &str {
        self.end.map_or(DEFAULT_LEVEL, |e| e.level.as_str())
    }
}
