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

/// A column and its Postgres type: binary COPY does no casts, so the type
/// sent must be the column's.
type Column = (&'static str, Type);

/// Column groups of a table: the version column that decides the group and
/// the columns it carries.
struct Group {
    version: &'static str,
    columns: &'static [Column],
}

/// One target table: the single source of its staging table, COPY column
/// list and types, and merge statement.
struct Table {
    name: &'static str,
    stage: &'static str,
    id: &'static str,
    /// The primary key: (id, project_id), so that one project's events never
    /// touch another project's row with the same id.
    key: &'static [&'static str],
    /// Merged by GREATEST/LEAST rather than by a version.
    extremes: &'static [(Column, &'static str)],
    groups: &'static [Group],
}

const TRACES: Table = Table {
    name: "traces",
    stage: "ingest_stage_traces",
    id: "id",
    key: &["id", "project_id"],
    extremes: &[(("first_seen_at", Type::TIMESTAMPTZ), "LEAST")],
    groups: &[
        Group {
            version: "seen_version",
            columns: &[("project_id", Type::TEXT)],
        },
        Group {
            version: "start_version",
            columns: &[
                ("name", Type::TEXT),
                ("user_id", Type::TEXT),
                ("session_id", Type::TEXT),
                ("run_id", Type::TEXT),
                ("meta", Type::JSONB),
                ("metadata", Type::JSONB),
                ("start_timestamp", Type::TIMESTAMPTZ),
            ],
        },
    ],
};

const OBSERVATIONS: Table = Table {
    name: "observations",
    stage: "ingest_stage_observations",
    id: "id",
    key: &["id", "project_id"],
    extremes: &[],
    groups: &[
        Group {
            version: "seen_version",
            columns: &[("trace_id", Type::TEXT), ("project_id", Type::TEXT)],
        },
        Group {
            version: "start_version",
            columns: &[
                ("name", Type::TEXT),
                ("start_type", Type::TEXT),
                ("parent_observation_id", Type::TEXT),
                ("input", Type::JSONB),
                ("start_time", Type::TIMESTAMPTZ),
                ("start_metadata", Type::JSONB),
            ],
        },
        Group {
            version: "end_version",
            columns: &[
                ("end_type", Type::TEXT),
                ("end_level", Type::TEXT),
                ("output", Type::JSONB),
                ("status_message", Type::TEXT),
                ("end_time", Type::TIMESTAMPTZ),
                ("end_metadata", Type::JSONB),
                ("llm_model", Type::TEXT),
                ("llm_prompt_tokens", Type::INT8),
                ("llm_completion_tokens", Type::INT8),
                ("llm_total_tokens", Type::INT8),
                ("llm_cached_tokens", Type::INT8),
                ("llm_thoughts_tokens", Type::INT8),
                ("llm_duration_ms", Type::FLOAT8),
            ],
        },
    ],
};

impl Table {
    /// Columns in COPY order: id, extremes, then each group's version and columns.
    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![(self.id, Type::TEXT)];
        columns.extend(self.extremes.iter().map(|(column, _)| column.clone()));
        for group in self.groups {
            columns.push((group.version, Type::BYTEA));
            columns.extend(group.columns.iter().cloned());
        }
        columns
    }

    fn names(&self) -> String {
        self.columns()
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn types(&self) -> Vec<Type> {
        self.columns().into_iter().map(|(_, ty)| ty).collect()
    }

    fn staging_table(&self) -> String {
        let columns: Vec<String> = self
            .columns()
            .iter()
            .map(|(name, ty)| format!("{name} {}", ty.name()))
            .collect();
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS;",
            self.stage,
            columns.join(", ")
        )
    }

    fn copy_statement(&self) -> String {
        format!("COPY {} ({}) FROM STDIN BINARY", self.stage, self.names())
    }

    /// Each group's columns move only when the staged version is newer; the
    /// WHERE clause skips rows that would not change (pure duplicates).
    fn merge_statement(&self) -> String {
        let columns = self.names();
        let newer = |version: &str| format!("ingest_newer(EXCLUDED.{version}, t.{version})");
        let mut sets = Vec::new();
        let mut changes = Vec::new();
        for ((column, _), function) in self.extremes {
            sets.push(format!(
                "{column} = {function}(t.{column}, EXCLUDED.{column})"
            ));
            changes.push(format!(
                "{function}(t.{column}, EXCLUDED.{column}) IS DISTINCT FROM t.{column}"
            ));
        }
        for group in self.groups {
            let wins = newer(group.version);
            let names = group.columns.iter().map(|(name, _)| *name);
            for column in names.chain([group.version]) {
                sets.push(format!(
                    "{column} = CASE WHEN {wins} THEN EXCLUDED.{column} ELSE t.{column} END"
                ));
            }
            changes.push(wins);
        }
        sets.push("updated_at = now()".to_owned());
        // Rows in key order, so that two replicas lock them in the same order.
        let order: Vec<String> = self
            .key
            .iter()
            .map(|column| format!("{column} COLLATE \"C\""))
            .collect();
        format!(
            "INSERT INTO {table} AS t ({columns}) \
             SELECT {columns} FROM {stage} ORDER BY {order} \
             ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {changes}",
            table = self.name,
            stage = self.stage,
            order = order.join(", "),
            key = self.key.join(", "),
            sets = sets.join(", "),
            changes = changes.join(" OR "),
        )
    }
}

/// Everything derived from the table specs, built once.
struct Statements {
    staging_tables: String,
    copy_traces: String,
    trace_types: Vec<Type>,
    merge_traces: String,
    copy_observations: String,
    observation_types: Vec<Type>,
    merge_observations: String,
}

static STATEMENTS: LazyLock<Statements> = LazyLock::new(|| Statements {
    staging_tables: format!(
        "{}\n{}",
        TRACES.staging_table(),
        OBSERVATIONS.staging_table()
    ),
    copy_traces: TRACES.copy_statement(),
    trace_types: TRACES.types(),
    merge_traces: TRACES.merge_statement(),
    copy_observations: OBSERVATIONS.copy_statement(),
    observation_types: OBSERVATIONS.types(),
    merge_observations: OBSERVATIONS.merge_statement(),
});

/// Creates this session's staging tables; run once per connection (see
/// `pool`); every commit empties them.
pub fn staging_tables() -> &'static str {
    &STATEMENTS.staging_tables
}

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
    let writer = BinaryCopyInWriter::new(sink, &STATEMENTS.trace_types);
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
    let writer = BinaryCopyInWriter::new(sink, &STATEMENTS.observation_types);
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
    fn copy_order_is_id_extremes_then_groups() {
        let names: Vec<&str> = TRACES.columns().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            &names[..5],
            [
                "id",
                "first_seen_at",
                "seen_version",
                "project_id",
                "start_version"
            ]
        );
        assert_eq!(OBSERVATIONS.columns().len(), 25);
    }

    #[test]
    fn staging_tables_have_the_copied_types() {
        let ddl = staging_tables();
        assert!(ddl.contains("CREATE TEMP TABLE IF NOT EXISTS ingest_stage_observations (id text, seen_version bytea"));
        assert!(ddl.contains("input jsonb"));
        assert!(ddl.contains("llm_duration_ms float8"));
    }

    #[test]
    fn merge_statement_moves_each_group_by_its_version() {
        let sql = OBSERVATIONS.merge_statement();
        assert!(sql.contains(
            "output = CASE WHEN ingest_newer(EXCLUDED.end_version, t.end_version) THEN EXCLUDED.output ELSE t.output END"
        ));
        assert!(sql.contains("ON CONFLICT (id, project_id) DO UPDATE"));
    }
}
