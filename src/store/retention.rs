//! Retention statements: forgetting due traces with their observations in
//! small transactions, the tombstones of forgotten traces, the per-project
//! horizons, and the lock that lets one replica at a time do the work.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use super::StoreError;
use crate::config::DatabaseSettings;

/// Held for as long as the retention worker's own session lives: one replica
/// works at a time; the others find it taken and skip.
const RETENTION_LOCK: i64 = 0x5357_4953_5045_5202; // "SWISPER" + 2

/// A dedicated session (not from the pool: the advisory lock belongs to the
/// session, and a pooled connection would carry it to other users).
pub async fn connect(database: &DatabaseSettings) -> Result<Client, StoreError> {
    let target = database
        .target()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(target.session("swisper-ingest-retention").await?)
}

/// True when this session holds (or just took) the retention lock.
pub async fn try_lock(client: &Client) -> Result<bool, StoreError> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
        .await?;
    Ok(row.get(0))
}

/// Per-project horizons in days.
pub async fn overrides(client: &impl GenericClient) -> Result<Vec<(String, i32)>, StoreError> {
    let rows = client
        .query(
            "SELECT project_id, days FROM swisper_ingest.retention_projects ORDER BY project_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn set_override(client: &Client, project: &str, days: i32) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO swisper_ingest.retention_projects (project_id, days) VALUES ($1, $2)
             ON CONFLICT (project_id) DO UPDATE SET days = EXCLUDED.days, updated_at = now()",
            &[&project, &days],
        )
        .await?;
    Ok(())
}

/// True when there was an override to remove.
pub async fn unset_override(client: &Client, project: &str) -> Result<bool, StoreError> {
    let removed = client
        .execute(
            "DELETE FROM swisper_ingest.retention_projects WHERE project_id = $1",
            &[&project],
        )
        .await?;
    Ok(removed > 0)
}

/// Every project that has traces: a loose index scan (one probe of the
/// state's (project_id, first_seen_at) index per project), cheap with
/// millions of rows.
pub async fn projects(client: &Client) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "WITH RECURSIVE p AS (
                 (SELECT project_id FROM swisper_ingest.trace_state ORDER BY project_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT t.project_id FROM swisper_ingest.trace_state t WHERE t.project_id > p.project_id
                         ORDER BY t.project_id LIMIT 1)
                 FROM p WHERE p.project_id IS NOT NULL)
             SELECT project_id FROM p WHERE project_id IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The oldest trace time of a project, if it has traces.
pub async fn oldest_trace(
    client: &Client,
    project: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row = client
        .query_one(
            "SELECT min(first_seen_at) FROM swisper_ingest.trace_state WHERE project_id = $1",
            &[&project],
        )
        .await?;
    Ok(row.get(0))
}

/// What one batch removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub traces: u64,
    pub observations: u64,
}

/// Forgets up to `limit` of the oldest traces of `project` older than `cut`,
/// with all their observations, in one transaction, and leaves a tombstone
/// for each.
///
/// Why it never leaves a half trace while writers run: every write batch
/// locks the studio row of each trace it writes (`FOR NO KEY UPDATE`, or the
/// INSERT of a new one) before it writes the trace's observations, and holds
/// that lock until it commits. Here the studio rows are locked first
/// (`FOR UPDATE SKIP LOCKED`: a trace being written now waits for the next
/// batch, and no lock order can deadlock with the writers; `FOR UPDATE` also
/// excludes the foreign-key checks of new observations), and the rows are
/// deleted by later statements. A writer that comes after finds the trace
/// locked, waits for this commit, and then sees the tombstone
/// (`forgotten_among`).
pub async fn forget_traces(
    client: &mut Client,
    project: &str,
    cut: DateTime<Utc>,
    limit: i64,
) -> Result<Forgotten, StoreError> {
    let tx = client.transaction().await?;
    let ids: Vec<String> = tx
        .query(
            "SELECT s.id FROM swisper_ingest.trace_state s
             JOIN public.traces t ON t.id = s.id
             WHERE s.project_id = $1 AND s.first_seen_at < $2
             ORDER BY s.first_seen_at LIMIT $3 FOR UPDATE OF t SKIP LOCKED",
            &[&project, &cut, &limit],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // State whose studio row is gone (the studio deleted the trace or its
    // project), with its observations' state.
    tx.execute(
        "WITH gone AS (
             DELETE FROM swisper_ingest.trace_state s
             WHERE s.id IN (SELECT id FROM swisper_ingest.trace_state
                            WHERE project_id = $1 AND first_seen_at < $2
                            ORDER BY first_seen_at LIMIT $3)
               AND NOT EXISTS (SELECT 1 FROM public.traces t WHERE t.id = s.id)
             RETURNING s.id)
         DELETE FROM swisper_ingest.observation_state o USING gone WHERE o.trace_id = gone.id",
        &[&project, &cut, &limit],
    )
    .await?;
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(Forgotten::default());
    }
    let observations = delete_traces(tx.client(), &ids).await?;
    let traces = ids.len() as u64;
    tx.execute(
        "INSERT INTO swisper_ingest.retention_tombstones (trace_id, project_id)
         SELECT unnest($1::text[]), $2
         ON CONFLICT (trace_id, project_id) DO UPDATE SET forgotten_at = now()",
        &[&ids, &project],
    )
    .await?;
    tx.commit().await?;
    Ok(Forgotten {
        traces,
        observations,
    })
}

/// Deletes these traces (locked by the caller, or locked here by the
/// DELETE itself before anything else), their observations and the merge
/// state of both; returns how many observations went.
async fn delete_traces<S: AsRef<str> + tokio_postgres::types::ToSql + Sync>(
    tx: &Client,
    ids: &[S],
) -> Result<u64, StoreError> {
    // The trace rows first: deleting one locks it, and the studio's foreign
    // key cascades to its observations under that lock.
    let locked: Vec<String> = tx
        .query(
            "SELECT id FROM public.traces WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let observations = tx
        .execute(
            "DELETE FROM public.observations WHERE trace_id = ANY($1)",
            &[&locked],
        )
        .await?;
    tx.execute("DELETE FROM public.traces WHERE id = ANY($1)", &[&ids])
        .await?;
    tx.execute(
        "DELETE FROM swisper_ingest.observation_state WHERE trace_id = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.execute(
        "DELETE FROM swisper_ingest.trace_state WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(observations)
}

/// Deletes up to `limit` rows of a table by its time column, oldest first;
/// returns how many. The table and column come from this module's own
/// constants, never from input.
async fn forget_oldest(
    client: &Client,
    table: OldRows,
    cut: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    let sql = match table {
        OldRows::DeadLetters => {
            "DELETE FROM swisper_ingest.dead_letters WHERE id IN (
                 SELECT id FROM swisper_ingest.dead_letters WHERE created_at < $1
                 ORDER BY created_at LIMIT $2)"
        }
        OldRows::Tombstones => {
            "DELETE FROM swisper_ingest.retention_tombstones WHERE (trace_id, project_id) IN (
                 SELECT trace_id, project_id FROM swisper_ingest.retention_tombstones WHERE forgotten_at < $1
                 ORDER BY forgotten_at LIMIT $2)"
        }
        // One row per project and SDK version: a small table.
        OldRows::Heartbeats => {
            "DELETE FROM swisper_ingest.sdk_heartbeats WHERE ctid IN (
                 SELECT ctid FROM swisper_ingest.sdk_heartbeats WHERE last_seen_at < $1 LIMIT $2)"
        }
    };
    Ok(client.execute(sql, &[&cut, &limit]).await?)
}

/// Tables forgotten by their own time, without the trace rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldRows {
    DeadLetters,
    Heartbeats,
    Tombstones,
}

impl OldRows {
    pub fn table(self) -> &'static str {
        match self {
            OldRows::DeadLetters => "dead_letters",
            OldRows::Heartbeats => "sdk_heartbeats",
            OldRows::Tombstones => "retention_tombstones",
        }
    }

    /// One batch; each is its own transaction (autocommit).
    pub async fn forget(
        self,
        client: &Client,
        cut: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64, StoreError> {
        forget_oldest(client, self, cut, limit).await
    }
}

/// In the write path's transaction: of these (trace id, project) pairs,
/// those forgotten.
pub async fn forgotten_among(
    tx: &Client,
    traces: &[(&str, &str)],
) -> Result<HashSet<(String, String)>, StoreError> {
    if traces.is_empty() {
        return Ok(HashSet::new());
    }
    let (ids, projects) = unzip(traces);
    // Every write transaction asks this while retention is on: typed, so
    // one round trip instead of a prepare and an execute.
    let rows = tx
        .query_typed(
            "SELECT t.trace_id, t.project_id
             FROM swisper_ingest.retention_tombstones t
             JOIN unnest($1::text[], $2::text[]) AS w(trace_id, project_id)
               USING (trace_id, project_id)",
            &[(&ids, Type::TEXT_ARRAY), (&projects, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn unzip<'a>(traces: &[(&'a str, &'a str)]) -> (Vec<&'a str>, Vec<&'a str>) {
    traces.iter().copied().unzip()
}

/// In the write path's transaction: the trace of an event older than its
/// horizon is forgotten as a whole (tombstone, and whatever rows it has).
pub async fn forget_in_tx(tx: &Client, traces: &[(&str, &str)]) -> Result<(), StoreError> {
    if traces.is_empty() {
        return Ok(());
    }
    let (ids, projects) = unzip(traces);
    tx.execute(
        "INSERT INTO swisper_ingest.retention_tombstones (trace_id, project_id)
         SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (trace_id, project_id) DO NOTHING",
        &[&ids, &projects],
    )
    .await?;
    remove_in_tx(tx, traces).await
}

/// In the write path's transaction: removes the rows of forgotten traces
/// that this very transaction wrote (a writer racing the retention batch).
/// A trace id stored under another project is not touched.
pub async fn remove_in_tx(tx: &Client, traces: &[(&str, &str)]) -> Result<(), StoreError> {
    if traces.is_empty() {
        return Ok(());
    }
    let (ids, projects) = unzip(traces);
    let owned: Vec<String> = tx
        .query(
            "SELECT t.id FROM public.traces t
             JOIN unnest($1::text[], $2::text[]) AS g(trace_id, project_id)
               ON t.id = g.trace_id AND t.project_id = g.project_id",
            &[&ids, &projects],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    delete_traces(tx, &owned).await?;
    Ok(())
}
