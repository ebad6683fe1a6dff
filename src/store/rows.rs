//! Writing merged rows: binary COPY into per-session staging tables, then one
//! INSERT ... ON CONFLICT per table that applies the same newest-version-wins
//! rule as [`crate::merge`], so batches on any replica combine correctly.

use std::sync::LazyLock;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::{JsonbText, StoreError};
use crate::merge::{ObservationRow, Rows, TraceRow};

/// Created once per connection (see `pool`); emptied by every commit.
pub const STAGING_TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS ingest_stage_traces (
    id text, project_id text, seen_version bytea, first_seen_at timestamptz,
    start_version bytea, name text, user_id text, session_id text, run_id text,
    meta jsonb, metadata jsonb, start_timestamp timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS ingest_stage_observations (
    id text, trace_id text, project_id text, seen_version bytea,
    start_version bytea, name text, start_type text, parent_observation_id text,
    input jsonb, start_time timestamptz, start_metadata jsonb,
    end_version bytea, end_type text, end_level text, output jsonb,
    status_message text, end_time timestamptz, end_metadata jsonb,
    llm_model text, llm_prompt_tokens bigint, llm_completion_tokens bigint,
    llm_total_tokens bigint, llm_cached_tokens bigint, llm_thoughts_tokens bigint,
    llm_duration_ms double precision
) ON COMMIT DELETE ROWS;
";

/// Column groups of a table: the version column that decides the group and
/// the columns it carries.
struct Group {
    version: &'static str,
    columns: &'static [&'static str],
}

struct Table {
    name: &'static str,
    stage: &'static str,
    id: &'static str,
    /// Merged by GREATEST/LEAST rather than by a version.
    extremes: &'static [(&'static str, &'static str)],
    groups: &'static [Group],
}

const TRACES: Table = Table {
    name: "traces",
    stage: "ingest_stage_traces",
    id: "id",
    extremes: &[("first_seen_at", "LEAST")],
    groups: &[
        Group {
            version: "seen_version",
            columns: &["project_id"],
        },
        Group {
            version: "start_version",
            columns: &[
                "name",
                "user_id",
                "session_id",
                "run_id",
                "meta",
                "metadata",
                "start_timestamp",
            ],
        },
    ],
};

const OBSERVATIONS: Table = Table {
    name: "observations",
    stage: "ingest_stage_observations",
    id: "id",
    extremes: &[],
    groups: &[
        Group {
            version: "seen_version",
            columns: &["trace_id", "project_id"],
        },
        Group {
            version: "start_version",
            columns: &[
                "name",
                "start_type",
                "parent_observation_id",
                "input",
                "start_time",
                "start_metadata",
            ],
        },
        Group {
            version: "end_version",
            columns: &[
                "end_type",
                "end_level",
                "output",
                "status_message",
                "end_time",
                "end_metadata",
                "llm_model",
                "llm_prompt_tokens",
                "llm_completion_tokens",
                "llm_total_tokens",
                "llm_cached_tokens",
                "llm_thoughts_tokens",
                "llm_duration_ms",
            ],
        },
    ],
};

impl Table {
    /// Columns in COPY order: id, extremes, then each group's version and columns.
    fn columns(&self) -> Vec<&'static str> {
        let mut columns = vec![self.id];
        columns.extend(self.extremes.iter().map(|(c, _)| *c));
        for group in self.groups {
            columns.push(group.version);
            columns.extend(group.columns);
        }
        columns
    }

    fn copy_statement(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN BINARY",
            self.stage,
            self.columns().join(", ")
        )
    }

    /// Each group's columns move only when the staged version is newer; the
    /// WHERE clause skips rows that would not change (pure duplicates).
    fn merge_statement(&self) -> String {
        let columns = self.columns().join(", ");
        let newer = |version: &str| format!("ingest_newer(EXCLUDED.{version}, t.{version})");
        let mut sets = Vec::new();
        let mut changes = Vec::new();
        for (column, function) in self.extremes {
            sets.push(format!(
                "{column} = {function}(t.{column}, EXCLUDED.{column})"
            ));
            changes.push(format!(
                "{function}(t.{column}, EXCLUDED.{column}) IS DISTINCT FROM t.{column}"
            ));
        }
        for group in self.groups {
            let wins = newer(group.version);
            for column in group.columns.iter().chain([&group.version]) {
                sets.push(format!(
                    "{column} = CASE WHEN {wins} THEN EXCLUDED.{column} ELSE t.{column} END"
                ));
            }
            changes.push(wins);
        }
        sets.push("updated_at = now()".to_owned());
        format!(
            "INSERT INTO {table} AS t ({columns}) \
             SELECT {columns} FROM {stage} ORDER BY {id} COLLATE \"C\" \
             ON CONFLICT ({id}) DO UPDATE SET {sets} WHERE {changes}",
            table = self.name,
            stage = self.stage,
            id = self.id,
            sets = sets.join(", "),
            changes = changes.join(" OR "),
        )
    }
}

struct Statements {
    copy_traces: String,
    merge_traces: String,
    copy_observations: String,
    merge_observations: String,
}

static STATEMENTS: LazyLock<Statements> = LazyLock::new(|| Statements {
    copy_traces: TRACES.copy_statement(),
    merge_traces: TRACES.merge_statement(),
    copy_observations: OBSERVATIONS.copy_statement(),
    merge_observations: OBSERVATIONS.merge_statement(),
});

const TRACE_TYPES: [Type; 12] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::BYTEA,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::JSONB,
    Type::TIMESTAMPTZ,
];

const OBSERVATION_TYPES: [Type; 25] = [
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
];

/// Stages and merges both tables inside the caller's transaction.
pub async fn write_rows(tx: &Transaction<'_>, rows: &Rows<'_>) -> Result<(), StoreError> {
    if !rows.traces.is_empty() {
        copy_traces(tx, &rows.traces).await?;
        tx.execute(STATEMENTS.merge_traces.as_str(), &[]).await?;
    }
    if !rows.observations.is_empty() {
        copy_observations(tx, &rows.observations).await?;
        tx.execute(STATEMENTS.merge_observations.as_str(), &[])
            .await?;
    }
    Ok(())
}

async fn copy_traces(tx: &Transaction<'_>, rows: &[TraceRow<'_>]) -> Result<(), StoreError> {
    let sink = tx.copy_in(STATEMENTS.copy_traces.as_str()).await?;
    let writer = BinaryCopyInWriter::new(sink, &TRACE_TYPES);
    pin_mut!(writer);
    for row in rows {
        let start = row.start.map(|s| s.value);
        let start_version = row.start.map(|s| s.version);
        let meta = start
            .and_then(|s| s.meta.as_ref())
            .map(|j| JsonbText(j.as_str()));
        let metadata = start.map(|s| JsonbText(s.metadata.as_str()));
        let values: [&(dyn ToSql + Sync); 12] = [
            &row.id,
            &row.first_seen_at,
            &row.seen.version.as_bytes(),
            &row.seen.value,
            &start_version.as_ref().map(|v| v.as_bytes()),
            &start.and_then(|s| s.name.as_deref()),
            &start.and_then(|s| s.user_id.as_deref()),
            &start.and_then(|s| s.session_id.as_deref()),
            &start.and_then(|s| s.run_id.as_deref()),
            &meta,
            &metadata,
            &start.map(|s| s.timestamp),
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn copy_observations(
    tx: &Transaction<'_>,
    rows: &[ObservationRow<'_>],
) -> Result<(), StoreError> {
    let sink = tx.copy_in(STATEMENTS.copy_observations.as_str()).await?;
    let writer = BinaryCopyInWriter::new(sink, &OBSERVATION_TYPES);
    pin_mut!(writer);
    for row in rows {
        let start = row.start.map(|s| s.value);
        let start_version = row.start.map(|s| s.version);
        let end = row.end.map(|e| e.value);
        let end_version = row.end.map(|e| e.version);
        fn json(j: Option<&crate::event::Json>) -> Option<JsonbText<'_>> {
            j.map(|j| JsonbText(j.as_str()))
        }
        let input = json(start.and_then(|s| s.input.as_ref()));
        let start_metadata = json(start.map(|s| &s.metadata));
        let output = json(end.and_then(|e| e.output.as_ref()));
        let end_metadata = json(end.map(|e| &e.metadata));
        let llm = end.and_then(|e| e.llm.as_ref());
        let values: [&(dyn ToSql + Sync); 25] = [
            &row.id,
            &row.seen.version.as_bytes(),
            &row.seen.value.trace_id,
            &row.seen.value.project_id,
            &start_version.as_ref().map(|v| v.as_bytes()),
            &start.and_then(|s| s.name.as_deref()),
            &start.and_then(|s| s.observation_type.as_deref()),
            &start.and_then(|s| s.parent_observation_id.as_deref()),
            &input,
            &start.map(|s| s.start_time),
            &start_metadata,
            &end_version.as_ref().map(|v| v.as_bytes()),
            &end.and_then(|e| e.observation_type.as_deref()),
            &end.map(|e| e.level.as_str()),
            &output,
            &end.and_then(|e| e.status_message.as_deref()),
            &end.map(|e| e.end_time),
            &end_metadata,
            &llm.and_then(|l| l.model.as_deref()),
            &llm.and_then(|l| l.prompt_tokens),
            &llm.and_then(|l| l.completion_tokens),
            &llm.and_then(|l| l.total_tokens),
            &llm.and_then(|l| l.cached_tokens),
            &llm.and_then(|l| l.thoughts_tokens),
            &llm.and_then(|l| l.duration_ms),
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_types_match_columns() {
        assert_eq!(TRACES.columns().len(), TRACE_TYPES.len());
        assert_eq!(OBSERVATIONS.columns().len(), OBSERVATION_TYPES.len());
        assert_eq!(
            TRACES.columns(),
            [
                "id",
                "first_seen_at",
                "seen_version",
                "project_id",
                "start_version",
                "name",
                "user_id",
                "session_id",
                "run_id",
                "meta",
                "metadata",
                "start_timestamp"
            ]
        );
    }

    #[test]
    fn merge_statement_moves_each_group_by_its_version() {
        let sql = OBSERVATIONS.merge_statement();
        assert!(sql.contains(
            "output = CASE WHEN ingest_newer(EXCLUDED.end_version, t.end_version) THEN EXCLUDED.output ELSE t.output END"
        ));
        assert!(sql.contains("ON CONFLICT (id) DO UPDATE"));
    }
}
