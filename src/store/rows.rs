//! Writing merged rows into the studio's own `traces` and `observations`.
//!
//! The studio's rows have no room for versions, so each row's merge state
//! (the version of each column group, see [`crate::merge`]) lives beside it
//! in `swisper_ingest.trace_state` / `observation_state`. One transaction:
//! 1. [`lock`], then [`read`]: the studio rows the batch touches are locked
//!    in id order (`FOR NO KEY UPDATE`, which leaves foreign-key checks
//!    free) and read with their state;
//! 2. [`plan`] (pure): which groups of which rows the batch's events win,
//!    and the columns the studio combines from several groups (type, meta,
//!    start_time before the start arrives);
//! 3. [`write`]: rows new to the database go in whole by binary COPY
//!    ([`super::copy`]), existing rows get only the groups they lost, and
//!    the state follows.
//!
//! A new row that another writer inserted meanwhile makes the COPY fail
//! with a unique violation: [`StoreError::Conflict`], and the caller runs the
//! transaction again, when the row is found and merged instead.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::arrays::column;
use super::row_writes::{ObservationWrite, TraceWrite};
use super::{JsonbText, StoreError};
use crate::cost::{decimal_text, Costs, PriceBook};
use crate::event::{ObservationEnd, ObservationStart, StudioUsage, TraceStart};
use crate::merge::{ObservationRow, Rows, TraceRow, Version};

/// The studio's defaults (its consumer's `data.get("name", ...)`).
const UNNAMED_TRACE: &str = "unnamed_trace";
const DEFAULT_TYPE: &str = "SPAN";

/// A studio row the batch touches, as locked.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrace {
    pub project_id: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    /// None before a trace_start; a row written by someone else (the studio's
    /// own consumer) counts as started by the oldest possible version.
    pub start_version: Option<Version>,
    /// False for a row with no state of ours: its state is written now.
    pub has_state: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredObservation {
    /// The project of its trace (or of its state).
    pub project_id: Option<String>,
    pub trace_id: Option<String>,
    pub seen_version: Version,
    pub start_version: Option<Version>,
    pub end_version: Option<Version>,
    pub start_type: Option<String>,
    pub end_type: Option<String>,
    pub start_meta: Option<String>,
    pub end_meta: Option<String>,
}

/// What the database holds of the batch's rows, keyed by id.
#[derive(Debug, Default, Clone)]
pub struct Stored {
    pub traces: BTreeMap<String, StoredTrace>,
    pub observations: BTreeMap<String, StoredObservation>,
}

fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

fn version_of(bytes: Option<&[u8]>) -> Option<Version> {
    bytes.and_then(Version::from_bytes)
}

/// Locks the rows of these ids and returns those that exist. A statement of
/// its own: a lock that had to wait returns the row as committed meanwhile,
/// but a table joined in the same statement would still be read as it was
/// before the wait (PostgreSQL re-checks only the locked row), so the state
/// is read by the next statement, which sees every commit before the lock.
async fn lock_ids(tx: &Client, sql: &str, ids: &[&str]) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tx
        .query_typed(sql, &[(&ids, Type::TEXT_ARRAY)])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The ids of the batch's studio rows that exist, locked.
#[derive(Debug, Default)]
pub struct Locked {
    traces: Vec<String>,
    observations: Vec<String>,
}

/// Locks the studio rows of these ids, in id order, traces before
/// observations: two writers never deadlock. Ids must be sorted. Both lock
/// statements are sent at once: PostgreSQL runs pipelined statements in
/// the order sent, so the locks are taken in the same order as one
/// statement at a time would take them.
///
/// Pipelined statements share one round trip; a failed one fails those
/// after it ("transaction aborted"), so callers look at the answers in the
/// order sent and return the first failure.
pub async fn lock(
    tx: &Client,
    trace_ids: &[&str],
    observation_ids: &[&str],
) -> Result<Locked, StoreError> {
    let (traces, observations) = futures_util::join!(
        lock_ids(tx, LOCK_TRACES, trace_ids),
        lock_ids(tx, LOCK_OBSERVATIONS, observation_ids),
    );
    Ok(Locked {
        traces: traces?,
        observations: observations?,
    })
}

/// Reads the locked rows with their merge state, both tables in one round
/// trip (see [`lock_ids`] for why after the locks, not with them).
pub async fn read(tx: &Client, locked: &Locked) -> Result<Stored, StoreError> {
    let (traces, observations) = futures_util::join!(
        read_traces(tx, &locked.traces),
        read_observations(tx, &locked.observations),
    );
    Ok(Stored {
        traces: traces?,
        observations: observations?,
    })
}

const LOCK_TRACES: &str =
    "SELECT id FROM public.traces WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";
const LOCK_OBSERVATIONS: &str =
    "SELECT id FROM public.observations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// The locked traces with their merge state.
async fn read_traces(
    tx: &Client,
    locked: &[String],
) -> Result<BTreeMap<String, StoredTrace>, StoreError> {
    if locked.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = tx
        .query_typed(
            "SELECT t.id, t.project_id, t.\"timestamp\", s.id IS NOT NULL,
                    s.first_seen_at, s.start_version
             FROM public.traces t
             LEFT JOIN swisper_ingest.trace_state s ON s.id = t.id
             WHERE t.id = ANY($1)",
            &[(&locked, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), StoredTrace::from_row(row)))
        .collect())
}

impl StoredTrace {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        let has_state: bool = row.get(3);
        if has_state {
            return StoredTrace {
                project_id: row.get(1),
                first_seen_at: row.get(4),
                start_version: version_of(row.get(5)),
                has_state,
            };
        }
        // Written by someone else (the studio's own consumer writes traces
        // from trace_start): started by the oldest possible version.
        let timestamp: NaiveDateTime = row.get(2);
        StoredTrace {
            project_id: row.get(1),
            first_seen_at: timestamp.and_utc(),
            start_version: Some(Version::OLDEST),
            has_state,
        }
    }
}

/// The locked observations with their merge state.
async fn read_observations(
    tx: &Client,
    locked: &[String],
) -> Result<BTreeMap<String, StoredObservation>, StoreError> {
    if locked.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = tx
        .query_typed(
            // The trace's project only for rows without state (written by
            // someone else): COALESCE runs the subquery for those alone, where
            // a join probed the traces for every row.
            "SELECT o.id, s.id IS NOT NULL, o.trace_id,
                    COALESCE(s.project_id,
                             (SELECT tr.project_id FROM public.traces tr WHERE tr.id = o.trace_id)),
                    s.seen_version, s.start_version, s.end_version,
                    CASE WHEN s.id IS NULL THEN o.type::text ELSE s.start_type END,
                    s.end_type,
                    CASE WHEN s.id IS NULL THEN o.meta::text ELSE s.start_meta::text END,
                    s.end_meta::text, o.end_time IS NOT NULL
             FROM public.observations o
             LEFT JOIN swisper_ingest.observation_state s ON s.id = o.id
             WHERE o.id = ANY($1)",
            &[(&locked, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), StoredObservation::from_row(row)))
        .collect())
}

impl StoredObservation {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        let has_state: bool = row.get(1);
        if has_state {
            return StoredObservation {
                project_id: row.get(3),
                trace_id: row.get(2),
                seen_version: version_of(row.get(4)).unwrap_or(Version::OLDEST),
                start_version: version_of(row.get(5)),
                end_version: version_of(row.get(6)),
                start_type: row.get(7),
                end_type: row.get(8),
                start_meta: row.get(9),
                end_meta: row.get(10),
            };
        }
        // Written by someone else: its start (and end, when it has an end
        // time) count as the oldest possible versions.
        let ended: bool = row.get(11);
        StoredObservation {
            project_id: row.get(3),
            trace_id: row.get(2),
            seen_version: Version::OLDEST,
            start_version: Some(Version::OLDEST),
            end_version: ended.then_some(Version::OLDEST),
            start_type: row.get(7),
            end_type: None,
            start_meta: row.get(9),
            end_meta: None,
        }
    }
}

/// What one transaction writes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan<'a> {
    pub new_traces: Vec<TraceWrite<'a>>,
    pub changed_traces: Vec<TraceWrite<'a>>,
    pub new_observations: Vec<ObservationWrite<'a>>,
    pub changed_observations: Vec<ObservationWrite<'a>>,
}

fn newer(incoming: Option<Version>, stored: Option<Version>) -> bool {
    match (incoming, stored) {
        (Some(incoming), Some(stored)) => incoming > stored,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn max_version(a: Option<Version>, b: Option<Version>) -> Option<Version> {
    a.max(b)
}

/// Decides what the batch's merged rows change, given what is stored. Pure.
pub fn plan<'a>(rows: &'a Rows<'a>, stored: &'a Stored, prices: &PriceBook) -> Plan<'a> {
    let mut plan = Plan::default();
    for row in &rows.traces {
        match stored.traces.get(row.id) {
            None => plan.new_traces.push(trace_write(row, None)),
            Some(existing) => {
                if let Some(write) = trace_change(row, existing) {
                    plan.changed_traces.push(write);
                }
            }
        }
    }
    for row in &rows.observations {
        let existing = stored.observations.get(row.id);
        if let Some(write) = observation_write(row, existing, prices) {
            if existing.is_some() {
                plan.changed_observations.push(write);
            } else {
                plan.new_observations.push(write);
            }
        }
    }
    plan
}

/// The trace's final columns when its start (if any) is this row's.
fn trace_write<'a>(
    row: &'a TraceRow<'a>,
    stored_first_seen: Option<DateTime<Utc>>,
) -> TraceWrite<'a> {
    let first_seen_at = stored_first_seen.map_or(row.first_seen_at, |s| s.min(row.first_seen_at));
    let start: Option<&TraceStart> = row.start.map(|s| s.value);
    TraceWrite {
        id: row.id,
        project_id: row.project_id,
        started: start.is_some(),
        name: start.map(|s| s.name.as_deref().unwrap_or(UNNAMED_TRACE)),
        user_id: start.and_then(|s| s.user_id.as_deref()),
        session_id: start.and_then(|s| s.session_id.as_deref()),
        meta: start.map(|s| s.metadata.as_str()),
        tags: start
            .and_then(|s| s.tags.as_ref())
            .map_or("[]", |t| t.as_str()),
        timestamp: Some(naive(start.map_or(first_seen_at, |s| s.timestamp))),
        first_seen_at,
        start_version: row.start.map(|s| s.version),
    }
}

fn trace_change<'a>(row: &'a TraceRow<'a>, stored: &StoredTrace) -> Option<TraceWrite<'a>> {
    let incoming = row.start.map(|s| s.version);
    let first_seen_at = stored.first_seen_at.min(row.first_seen_at);
    if newer(incoming, stored.start_version) {
        let mut write = trace_write(row, Some(stored.first_seen_at));
        write.first_seen_at = first_seen_at;
        return Some(write);
    }
    let earlier = first_seen_at < stored.first_seen_at;
    if !earlier && stored.has_state {
        return None;
    }
    // Only the time moves, and only while no trace_start is known; a row of
    // someone else's gets its state.
    let moves = earlier && stored.start_version.is_none();
    Some(TraceWrite {
        id: row.id,
        project_id: row.project_id,
        started: false,
        name: None,
        user_id: None,
        session_id: None,
        meta: None,
        tags: "[]",
        timestamp: moves.then(|| naive(first_seen_at)),
        first_seen_at,
        start_version: stored.start_version,
    })
}

/// Keys of the start's meta, then the end's (which win a clash); None when
/// both are empty, as the studio leaves meta NULL.
fn combined_meta(start: Option<&str>, end: Option<&str>) -> Option<String> {
    let object = |text: Option<&str>| -> Map<String, Value> {
        match text.map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(map))) => map,
            Some(Ok(Value::Null)) | None => Map::new(),
            Some(Ok(other)) => Map::from_iter([("_meta".to_owned(), other)]),
            Some(Err(_)) => Map::new(),
        }
    };
    let mut meta = object(start);
    meta.extend(object(end));
    (!meta.is_empty()).then(|| Value::Object(meta).to_string())
}

fn non_empty(json: &str) -> Option<&str> {
    (json != "{}").then_some(json)
}

fn observation_write<'a>(
    row: &'a ObservationRow<'a>,
    stored: Option<&'a StoredObservation>,
    prices: &PriceBook,
) -> Option<ObservationWrite<'a>> {
    let incoming_start = row.start.map(|s| s.version);
    let incoming_end = row.end.map(|e| e.version);
    let (seen_wins, start_wins, end_wins) = observation_wins(row, stored);
    if !(seen_wins || start_wins || end_wins) {
        return None;
    }
    let start = start_wins.then(|| row.start.map(|s| s.value)).flatten();
    let end = end_wins.then(|| row.end.map(|e| e.value)).flatten();
    let groups = GroupColumns::of(start, end, stored);
    let start_version = max_version(incoming_start, stored.and_then(|s| s.start_version));
    let end_version = max_version(incoming_end, stored.and_then(|s| s.end_version));
    Some(ObservationWrite {
        id: row.id,
        project_id: row.project_id,
        seen_wins,
        start_wins,
        end_wins,
        trace_id: if seen_wins {
            row.seen.value
        } else {
            stored
                .and_then(|s| s.trace_id.as_deref())
                .unwrap_or(row.seen.value)
        },
        start,
        end,
        observation_type: (groups.end_type.or(groups.start_type))
            .unwrap_or(DEFAULT_TYPE)
            .to_owned(),
        meta: combined_meta(groups.start_meta, groups.end_meta),
        start_time: observation_start_time(start, end, start_version),
        costs: observation_costs(end, row.project_id, prices),
        seen_version: match stored {
            Some(s) => s.seen_version.max(row.seen.version),
            None => row.seen.version,
        },
        start_version,
        end_version,
        start_type: groups.start_type,
        end_type: groups.end_type,
        start_meta: groups.start_meta,
        end_meta: groups.end_meta,
    })
}

/// Which of the row's groups (seen, start, end) the batch's events win over
/// the stored row; a new row takes every group it has an event for.
fn observation_wins(
    row: &ObservationRow<'_>,
    stored: Option<&StoredObservation>,
) -> (bool, bool, bool) {
    let incoming_start = row.start.map(|s| s.version);
    let incoming_end = row.end.map(|e| e.version);
    match stored {
        None => (true, incoming_start.is_some(), incoming_end.is_some()),
        Some(s) => (
            row.seen.version > s.seen_version,
            newer(incoming_start, s.start_version),
            newer(incoming_end, s.end_version),
        ),
    }
}

/// The type and meta of the start and of the end: the winning event's, else
/// the stored ones. Kept apart in the state because the studio's single
/// type and meta columns combine both.
struct GroupColumns<'a> {
    start_type: Option<&'a str>,
    end_type: Option<&'a str>,
    start_meta: Option<&'a str>,
    end_meta: Option<&'a str>,
}

impl<'a> GroupColumns<'a> {
    fn of(
        start: Option<&'a ObservationStart>,
        end: Option<&'a ObservationEnd>,
        stored: Option<&'a StoredObservation>,
    ) -> Self {
        let stored_field = |f: fn(&'a StoredObservation) -> Option<&'a str>| stored.and_then(f);
        Self {
            start_type: match start {
                Some(s) => s.observation_type.as_deref(),
                None => stored_field(|s| s.start_type.as_deref()),
            },
            end_type: match end {
                Some(e) => e.observation_type.as_deref(),
                None => stored_field(|s| s.end_type.as_deref()),
            },
            start_meta: match start {
                Some(s) => non_empty(s.metadata.as_str()),
                None => stored_field(|s| s.start_meta.as_deref()),
            },
            end_meta: match end {
                Some(e) => non_empty(e.metadata.as_str()),
                None => stored_field(|s| s.end_meta.as_deref()),
            },
        }
    }
}

/// The start's time; before any start is known the end's time stands in
/// (NOT NULL column). None leaves the column as it is.
fn observation_start_time(
    start: Option<&ObservationStart>,
    end: Option<&ObservationEnd>,
    start_version: Option<Version>,
) -> Option<NaiveDateTime> {
    match (start, end) {
        (Some(s), _) => Some(naive(s.start_time)),
        (None, Some(e)) if start_version.is_none() => Some(naive(e.end_time)),
        _ => None,
    }
}

/// The costs of the end's LLM call, when its model has a price.
fn observation_costs(
    end: Option<&ObservationEnd>,
    project_id: &str,
    prices: &PriceBook,
) -> Option<Costs> {
    end.and_then(|e| e.llm.as_ref())
        .and_then(|usage| usage.billable())
        .and_then(|(model, prompt, completion)| prices.cost(project_id, model, prompt, completion))
}

/// Executes the plan: inserts first (traces before the observations that
/// refer to them, by COPY), then updates, then the merge state. The updates
/// before the last, when a batch holds more than a statement's worth, go one
/// statement at a time. The last statements (the last updates and both
/// state upserts) are returned unsent: the future sends them all when first
/// polled (pipelined: run in the order sent) and ends at the first failure,
/// which is the first in that order, so that the caller can send COMMIT in
/// the same round trip.
pub async fn write<'p>(
    tx: &'p Client,
    copies: super::copy::Statements,
    plan: &'p Plan<'p>,
) -> Result<impl Future<Output = Result<(), StoreError>> + 'p, StoreError> {
    super::copy::traces(tx, &copies.traces, &plan.new_traces).await?;
    update_traces(tx, &plan.changed_traces).await?;
    super::copy::observations(tx, &copies.observations, &plan.new_observations).await?;
    // Closed inside the transaction (see copy::Statements).
    drop(copies);
    let mut updates: Vec<&[ObservationWrite]> =
        chunks(&plan.changed_observations, ObservationWrite::encoded_bytes).collect();
    let last_updates = updates.pop().unwrap_or_default();
    for chunk in updates {
        update_observations(tx, chunk).await?;
    }
    Ok(async move {
        let traces: Vec<&TraceWrite> = plan.new_traces.iter().chain(&plan.changed_traces).collect();
        let observations: Vec<&ObservationWrite> = plan
            .new_observations
            .iter()
            .chain(&plan.changed_observations)
            .collect();
        futures_util::try_join!(
            update_observations(tx, last_updates),
            upsert_trace_state(tx, &traces),
            upsert_observation_state(tx, &observations),
        )?;
        Ok(())
    })
}

/// Boxed column arrays with their types, for `query_typed` (one round trip,
/// no statement prepared).
type TypedParams<'r> = Vec<(Box<dyn ToSql + Sync + Send + 'r>, Type)>;

fn typed_refs<'p>(params: &'p TypedParams<'_>) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|(value, ty)| (value.as_ref() as &(dyn ToSql + Sync), ty.clone()))
        .collect()
}

/// The trace columns in parameter order, typed as [`TRACE_UNNEST`] casts them.
fn trace_params<'r>(rows: &'r [TraceWrite<'r>]) -> TypedParams<'r> {
    vec![
        (Box::new(column(rows, |r| r.id)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.project_id)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.started)), Type::BOOL_ARRAY),
        (Box::new(column(rows, |r| r.name)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.user_id)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.session_id)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.meta)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.tags)), Type::TEXT_ARRAY),
        (
            Box::new(column(rows, |r| r.timestamp)),
            Type::TIMESTAMP_ARRAY,
        ),
    ]
}

const TRACE_UNNEST: &str = "unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::timestamp[]) \
     AS u(id, project_id, started, name, user_id, session_id, meta, tags, ts)";

async fn update_traces(tx: &Client, rows: &[TraceWrite<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let params = trace_params(rows);
    let sql = format!(
        "UPDATE public.traces t SET
             name = CASE WHEN u.started THEN u.name ELSE t.name END,
             user_id = CASE WHEN u.started THEN u.user_id ELSE t.user_id END,
             session_id = CASE WHEN u.started THEN u.session_id ELSE t.session_id END,
             meta = CASE WHEN u.started THEN u.meta::json ELSE t.meta END,
             tags = CASE WHEN u.started THEN u.tags::json ELSE t.tags END,
             \"timestamp\" = COALESCE(u.ts, t.\"timestamp\")
         FROM {TRACE_UNNEST}
         WHERE t.id = u.id"
    );
    tx.query_typed(&sql, &typed_refs(&params)).await?;
    Ok(())
}

async fn upsert_trace_state(tx: &Client, rows: &[&TraceWrite<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&column(rows, |r| r.id), Type::TEXT_ARRAY),
        (&column(rows, |r| r.project_id), Type::TEXT_ARRAY),
        (&column(rows, |r| r.first_seen_at), Type::TIMESTAMPTZ_ARRAY),
        (
            &column(rows, |r| r.start_version.as_ref().map(Version::as_bytes)),
            Type::BYTEA_ARRAY,
        ),
    ];
    tx.query_typed(
        "INSERT INTO swisper_ingest.trace_state AS s (id, project_id, first_seen_at, start_version)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[])
         ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id,
             first_seen_at = EXCLUDED.first_seen_at, start_version = EXCLUDED.start_version",
        &params,
    )
    .await?;
    Ok(())
}

fn start<'a>(row: &ObservationWrite<'a>) -> Option<&'a ObservationStart> {
    row.start
}

fn end<'a>(row: &ObservationWrite<'a>) -> Option<&'a ObservationEnd> {
    row.end
}

fn llm<'a>(row: &ObservationWrite<'a>) -> Option<&'a StudioUsage> {
    row.end.and_then(|e| e.llm.as_ref())
}

fn cost_text(
    row: &ObservationWrite<'_>,
    pick: fn(&Costs) -> &rust_decimal::Decimal,
) -> Option<String> {
    row.costs.as_ref().map(|c| decimal_text(pick(c)))
}

/// The observation columns in parameter order, typed as [`OBSERVATION_UNNEST`]
/// casts them.
fn observation_params<'r>(rows: &'r [ObservationWrite<'r>]) -> TypedParams<'r> {
    vec![
        (Box::new(column(rows, |r| r.id)), Type::TEXT_ARRAY),
        (Box::new(column(rows, |r| r.trace_id)), Type::TEXT_ARRAY),
        (
            Box::new(column(rows, |r| {
                start(r).and_then(|s| s.parent_observation_id.as_deref())
            })),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| r.observation_type.as_str())),
            Type::TEXT_ARRAY,
        ),
        (Box::new(column(rows, |r| r.name())), Type::TEXT_ARRAY),
        (
            Box::new(column(rows, |r| r.start_time)),
            Type::TIMESTAMP_ARRAY,
        ),
        (
            Box::new(column(rows, |r| end(r).map(|e| naive(e.end_time)))),
            Type::TIMESTAMP_ARRAY,
        ),
        (
            Box::new(column(rows, |r| {
                start(r).and_then(|s| s.input.as_ref()).map(|j| j.as_str())
            })),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| {
                end(r).and_then(|e| e.output.as_ref()).map(|j| j.as_str())
            })),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| r.meta.as_deref())),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| llm(r).and_then(|l| l.model.as_deref()))),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| llm(r).and_then(|l| l.prompt_tokens))),
            Type::INT4_ARRAY,
        ),
        (
            Box::new(column(rows, |r| llm(r).and_then(|l| l.completion_tokens))),
            Type::INT4_ARRAY,
        ),
        (
            Box::new(column(rows, |r| llm(r).and_then(|l| l.total_tokens))),
            Type::INT4_ARRAY,
        ),
        (Box::new(column(rows, |r| r.level())), Type::TEXT_ARRAY),
        (
            Box::new(column(rows, |r| {
                end(r).and_then(|e| e.status_message.as_deref())
            })),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| cost_text(r, |c| &c.input))),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| cost_text(r, |c| &c.output))),
            Type::TEXT_ARRAY,
        ),
        (
            Box::new(column(rows, |r| cost_text(r, |c| &c.total))),
            Type::TEXT_ARRAY,
        ),
        (Box::new(column(rows, |r| r.seen_wins)), Type::BOOL_ARRAY),
        (Box::new(column(rows, |r| r.start_wins)), Type::BOOL_ARRAY),
        (Box::new(column(rows, |r| r.end_wins)), Type::BOOL_ARRAY),
    ]
}

const OBSERVATION_UNNEST: &str = "unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::text[], $6::timestamp[], $7::timestamp[], $8::text[], $9::text[], $10::text[], \
     $11::text[], $12::int4[], $13::int4[], $14::int4[], $15::text[], $16::text[], \
     $17::text[], $18::text[], $19::text[], $20::bool[], $21::bool[], $22::bool[]) \
     AS u(id, trace_id, parent, type, name, start_time, end_time, input, output, meta, \
     model, prompt_tokens, completion_tokens, total_tokens, level, status_message, \
     input_cost, output_cost, total_cost, seen, started, ended)";

async fn update_observations(tx: &Client, rows: &[ObservationWrite<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let params = observation_params(rows);
    let sql = format!(
        "UPDATE public.observations o SET
             trace_id = CASE WHEN u.seen THEN u.trace_id ELSE o.trace_id END,
             parent_observation_id = CASE WHEN u.started THEN u.parent ELSE o.parent_observation_id END,
             name = CASE WHEN u.started THEN u.name ELSE o.name END,
             input = CASE WHEN u.started THEN u.input::json ELSE o.input END,
             start_time = COALESCE(u.start_time, o.start_time),
             type = u.type::observationtype,
             meta = u.meta::json,
             end_time = CASE WHEN u.ended THEN u.end_time ELSE o.end_time END,
             output = CASE WHEN u.ended THEN u.output::json ELSE o.output END,
             model = CASE WHEN u.ended THEN u.model ELSE o.model END,
             prompt_tokens = CASE WHEN u.ended THEN u.prompt_tokens ELSE o.prompt_tokens END,
             completion_tokens = CASE WHEN u.ended THEN u.completion_tokens ELSE o.completion_tokens END,
             total_tokens = CASE WHEN u.ended THEN u.total_tokens ELSE o.total_tokens END,
             level = CASE WHEN u.ended THEN u.level ELSE o.level END,
             status_message = CASE WHEN u.ended THEN u.status_message ELSE o.status_message END,
             calculated_input_cost = CASE WHEN u.ended THEN u.input_cost::numeric ELSE o.calculated_input_cost END,
             calculated_output_cost = CASE WHEN u.ended THEN u.output_cost::numeric ELSE o.calculated_output_cost END,
             calculated_total_cost = CASE WHEN u.ended THEN u.total_cost::numeric ELSE o.calculated_total_cost END
         FROM {OBSERVATION_UNNEST}
         WHERE o.id = u.id"
    );
    tx.query_typed(&sql, &typed_refs(&params)).await?;
    Ok(())
}

async fn upsert_observation_state(
    tx: &Client,
    rows: &[&ObservationWrite<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&column(rows, |r| r.id), Type::TEXT_ARRAY),
        (&column(rows, |r| r.trace_id), Type::TEXT_ARRAY),
        (&column(rows, |r| r.project_id), Type::TEXT_ARRAY),
        (
            &column(rows, |r| r.seen_version.as_bytes()),
            Type::BYTEA_ARRAY,
        ),
        (
            &column(rows, |r| r.start_version.as_ref().map(Version::as_bytes)),
            Type::BYTEA_ARRAY,
        ),
        (
            &column(rows, |r| r.end_version.as_ref().map(Version::as_bytes)),
            Type::BYTEA_ARRAY,
        ),
        (&column(rows, |r| r.start_type), Type::TEXT_ARRAY),
        (&column(rows, |r| r.end_type), Type::TEXT_ARRAY),
        (
            &column(rows, |r| r.start_meta.map(JsonbText)),
            Type::JSONB_ARRAY,
        ),
        (
            &column(rows, |r| r.end_meta.map(JsonbText)),
            Type::JSONB_ARRAY,
        ),
    ];
    tx.query_typed(
        "INSERT INTO swisper_ingest.observation_state AS s (id, trace_id, project_id,
             seen_version, start_version, end_version, start_type, end_type, start_meta, end_meta)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                              $6::bytea[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[])
         ON CONFLICT (id) DO UPDATE SET trace_id = EXCLUDED.trace_id,
             project_id = EXCLUDED.project_id, seen_version = EXCLUDED.seen_version,
             start_version = EXCLUDED.start_version, end_version = EXCLUDED.end_version,
             start_type = EXCLUDED.start_type, end_type = EXCLUDED.end_type,
             start_meta = EXCLUDED.start_meta, end_meta = EXCLUDED.end_meta",
        &params,
    )
    .await?;
    Ok(())
}

/// Most bytes of row data in one statement. A statement's parameters are
/// built in memory whole, so a transaction of big rows goes in several
/// statements and what the writer holds stays near the memory budget; a
/// batch of ordinary rows (~3 KB each) is one statement.
const STATEMENT_BYTES: usize = 8 << 20;

/// Consecutive runs of `rows` of at most [`STATEMENT_BYTES`] each (at least
/// one row), in order: the id order that every replica locks rows in.
fn chunks<R>(rows: &[R], bytes: fn(&R) -> usize) -> impl Iterator<Item = &[R]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut total = 0;
        let end = rest
            .iter()
            .position(|row| {
                total += bytes(row);
                total > STATEMENT_BYTES
            })
            .unwrap_or(rest.len())
            .max(1);
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, Json, StreamId, TraceEvent};
    use crate::merge::merge;
    use chrono::TimeZone;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_762_336_800 + second, 0).unwrap()
    }

    fn event(seq: u64, body: EventBody) -> TraceEvent {
        TraceEvent {
            // Received by Redis at second `seq`.
            entry_id: StreamId {
                ms: at(seq as i64).timestamp_millis() as u64,
                seq: 0,
            },
            trace_id: "t".into(),
            project_id: "p".into(),
            published_at: at(seq as i64),
            body,
        }
    }

    fn start(seq: u64, kind: Option<&str>) -> TraceEvent {
        event(
            seq,
            EventBody::ObservationStart {
                observation_id: "o".into(),
                fields: ObservationStart {
                    name: Some("node".into()),
                    observation_type: kind.map(str::to_owned),
                    start_time: at(seq as i64),
                    metadata: Json::from_value(&serde_json::json!({"a": 1, "b": "start"})),
                    ..ObservationStart::default()
                },
            },
        )
    }

    fn end(seq: u64, kind: Option<&str>) -> TraceEvent {
        event(
            seq,
            EventBody::ObservationEnd {
                observation_id: "o".into(),
                fields: ObservationEnd {
                    observation_type: kind.map(str::to_owned),
                    level: "WARNING".into(),
                    end_time: at(seq as i64),
                    metadata: Json::from_value(&serde_json::json!({"b": "end"})),
                    ..ObservationEnd::default()
                },
            },
        )
    }

    /// The state a plan leaves, as the next transaction would read it.
    fn stored_after(plan: &Plan<'_>) -> Stored {
        let mut stored = Stored::default();
        for t in plan.new_traces.iter().chain(&plan.changed_traces) {
            stored.traces.insert(
                t.id.to_owned(),
                StoredTrace {
                    project_id: Some(t.project_id.to_owned()),
                    first_seen_at: t.first_seen_at,
                    start_version: t.start_version,
                    has_state: true,
                },
            );
        }
        for o in plan
            .new_observations
            .iter()
            .chain(&plan.changed_observations)
        {
            stored.observations.insert(
                o.id.to_owned(),
                StoredObservation {
                    project_id: Some(o.project_id.to_owned()),
                    trace_id: Some(o.trace_id.to_owned()),
                    seen_version: o.seen_version,
                    start_version: o.start_version,
                    end_version: o.end_version,
                    start_type: o.start_type.map(str::to_owned),
                    end_type: o.end_type.map(str::to_owned),
                    start_meta: o.start_meta.map(str::to_owned),
                    end_meta: o.end_meta.map(str::to_owned),
                },
            );
        }
        stored
    }

    #[test]
    fn an_end_before_its_start_stands_in_for_the_start_until_it_arrives() {
        let prices = PriceBook::default();
        let end = [end(2, None)];
        let rows = merge(end.iter());
        let empty = Stored::default();
        let first = plan(&rows, &empty, &prices);
        let new = &first.new_observations[0];
        assert_eq!(
            new.start_time,
            Some(naive(at(2))),
            "the end's time stands in"
        );
        assert!(new.start.is_none(), "no name or input before the start");
        assert_eq!(new.observation_type, "SPAN");
        assert_eq!(new.meta.as_deref(), Some(r#"{"b":"end"}"#));

        let stored = stored_after(&first);
        let start = [start(1, Some("TOOL"))];
        let rows = merge(start.iter());
        let second = plan(&rows, &stored, &prices);
        let changed = &second.changed_observations[0];
        assert!(changed.start_wins && !changed.end_wins && !changed.seen_wins);
        assert_eq!(changed.start_time, Some(naive(at(1))));
        assert_eq!(changed.observation_type, "TOOL");
        assert_eq!(
            changed.meta.as_deref(),
            Some(r#"{"a":1,"b":"end"}"#),
            "the end's keys win"
        );
    }

    #[test]
    fn the_ends_type_replaces_the_starts_in_either_order() {
        let prices = PriceBook::default();
        let events = [start(1, Some("SPAN")), end(2, Some("GENERATION"))];
        for order in [[0, 1], [1, 0]] {
            let mut stored = Stored::default();
            let mut last = String::new();
            for index in order {
                let one = [events[index].clone()];
                let rows = merge(one.iter());
                let step = plan(&rows, &stored, &prices);
                let write = step
                    .new_observations
                    .iter()
                    .chain(&step.changed_observations)
                    .next()
                    .unwrap();
                last = write.observation_type.clone();
                stored = stored_after(&step);
            }
            assert_eq!(last, "GENERATION");
        }
    }

    #[test]
    fn a_duplicate_changes_nothing() {
        let prices = PriceBook::default();
        let events = [start(1, None), end(2, None)];
        let rows = merge(events.iter());
        let empty = Stored::default();
        let first = plan(&rows, &empty, &prices);
        let stored = stored_after(&first);
        let again = plan(&rows, &stored, &prices);
        assert_eq!(again, Plan::default());
    }

    #[test]
    fn a_trace_without_its_start_takes_its_oldest_events_time_until_the_start() {
        let prices = PriceBook::default();
        let late = [end(5, None)];
        let rows = merge(late.iter());
        let empty = Stored::default();
        let first = plan(&rows, &empty, &prices);
        assert_eq!(first.new_traces[0].timestamp, Some(naive(at(5))));
        assert_eq!(first.new_traces[0].name, None);
        let stored = stored_after(&first);
        let earlier = [end(3, None)];
        let rows = merge(earlier.iter());
        let second = plan(&rows, &stored, &prices);
        assert_eq!(second.changed_traces[0].timestamp, Some(naive(at(3))));
    }

    #[test]
    fn chunks_cut_by_bytes_keep_order_and_take_a_huge_row_alone() {
        let rows: Vec<usize> = vec![
            1,
            2,
            3,
            STATEMENT_BYTES,
            4,
            STATEMENT_BYTES / 2,
            STATEMENT_BYTES / 2,
        ];
        let cut: Vec<&[usize]> = chunks(&rows, |r| *r).collect();
        assert_eq!(
            cut,
            [
                &[1, 2, 3][..],
                &[STATEMENT_BYTES],
                &[4, STATEMENT_BYTES / 2],
                &[STATEMENT_BYTES / 2]
            ]
        );
        assert_eq!(chunks(&[] as &[usize], |r| *r).count(), 0);
    }

    #[test]
    fn meta_takes_the_ends_keys_over_the_starts_and_is_null_when_empty() {
        assert_eq!(
            combined_meta(Some(r#"{"a":1,"b":1}"#), Some(r#"{"b":2}"#)).as_deref(),
            Some(r#"{"a":1,"b":2}"#)
        );
        assert_eq!(combined_meta(None, Some("{}")), None);
        assert_eq!(combined_meta(None, None), None);
    }
}
