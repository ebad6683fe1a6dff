//! SDK heartbeats: per project and SDK version, when it was first and last
//! heard. Never traces.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::{JsonbText, Pool, StoreError};
use crate::event::Heartbeat;

const UPSERT: &str = "
INSERT INTO swisper_ingest.sdk_heartbeats AS h (project_id, sdk_version, first_seen_at, last_seen_at, metadata)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::jsonb[])
ON CONFLICT (project_id, sdk_version) DO UPDATE SET
    first_seen_at = LEAST(h.first_seen_at, EXCLUDED.first_seen_at),
    last_seen_at = GREATEST(h.last_seen_at, EXCLUDED.last_seen_at),
    metadata = CASE WHEN EXCLUDED.last_seen_at > h.last_seen_at THEN EXCLUDED.metadata ELSE h.metadata END";

/// One row per key: first and last time heard, metadata of the newest.
struct Seen<'a> {
    first: DateTime<Utc>,
    last: &'a Heartbeat,
}

pub async fn upsert(tx: &Client, heartbeats: &[&Heartbeat]) -> Result<(), StoreError> {
    if heartbeats.is_empty() {
        return Ok(());
    }
    // ON CONFLICT cannot touch a row twice in one statement: merge first.
    let mut seen: BTreeMap<(&str, &str), Seen> = BTreeMap::new();
    for beat in heartbeats {
        let key = (
            beat.project_id.as_str(),
            beat.sdk_version.as_deref().unwrap_or(""),
        );
        let entry = seen.entry(key).or_insert(Seen {
            first: beat.published_at,
            last: beat,
        });
        entry.first = entry.first.min(beat.published_at);
        if (beat.published_at, beat.entry_id) > (entry.last.published_at, entry.last.entry_id) {
            entry.last = beat;
        }
    }
    let projects: Vec<&str> = seen.keys().map(|k| k.0).collect();
    let versions: Vec<&str> = seen.keys().map(|k| k.1).collect();
    let firsts: Vec<DateTime<Utc>> = seen.values().map(|s| s.first).collect();
    let lasts: Vec<DateTime<Utc>> = seen.values().map(|s| s.last.published_at).collect();
    let metadata: Vec<JsonbText> = seen
        .values()
        .map(|s| JsonbText(s.last.metadata.as_str()))
        .collect();
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&projects, Type::TEXT_ARRAY),
        (&versions, Type::TEXT_ARRAY),
        (&firsts, Type::TIMESTAMPTZ_ARRAY),
        (&lasts, Type::TIMESTAMPTZ_ARRAY),
        (&metadata, Type::JSONB_ARRAY),
    ];
    // Typed, so that it goes out on the first poll, in the round trip of the
    // transaction's last statements (no prepare round trip of its own).
    tx.query_typed(UPSERT, &params).await?;
    Ok(())
}

/// The newest heartbeat per project heard within `window_days`, for the
/// "Swisper stopped publishing" gauge: the `limit` most recently heard. In a
/// transaction, so that a pooler in transaction mode keeps the prepared
/// statement and its execution on one server connection.
pub async fn newest_per_project(
    pool: &Pool,
    window_days: i32,
    limit: u32,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT project_id, max(last_seen_at) AS newest FROM swisper_ingest.sdk_heartbeats \
             WHERE last_seen_at > now() - make_interval(days => $1) GROUP BY project_id \
             ORDER BY newest DESC, project_id LIMIT $2",
            &[&window_days, &i64::from(limit)],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
