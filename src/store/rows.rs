//! Writing merged rows: one `INSERT ... SELECT * FROM unnest(<one array per
//! column>) ON CONFLICT` per table, which applies the same newest-version-wins
//! rule as [`crate::merge`], so batches on any replica combine correctly.
//! Each row crosses the wire and is written by Postgres once: no staging
//! table, nothing to sort (rows come in key order from the merge), and no
//! session state, so it works behind a transaction pooler.

use std::sync::LazyLock;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::arrays::column;
use super::{JsonbText, StoreError};
use crate::event::{LlmUsage, ObservationEnd, ObservationStart, TraceStart};
use crate::merge::{ObservationRow, Rows, TraceRow};

/// A column and its Postgres type: binary COPY does no casts, so the type
/// sent must be the column's.
type Column = (&'static str, Type);

/// Column groups of a table: the version column that decides the group and
/// the columns it carries.
struct Group {
    version: &'static str,
    columns: &'static [Column],
    /// Whether a newer version alone rewrites the row. Not for a trace's
    /// `seen` group: its only column is part of the key, so a newer event
    /// changes nothing, and each batch with events of a trace would rewrite
    /// its row (4 times per trace under backlog, docs/benchmarks.md).
    rewrites: bool,
}

/// One target table: the single source of its column list, types and merge
/// statement.
struct Table {
    name: &'static str,
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
    id: "id",
    key: &["id", "project_id"],
    extremes: &[(("first_seen_at", Type::TIMESTAMPTZ), "LEAST")],
    groups: &[
        Group {
            version: "seen_version",
            rewrites: false,
            columns: &[("project_id", Type::TEXT)],
        },
        Group {
            version: "start_version",
            rewrites: true,
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
    id: "id",
    key: &["id", "project_id"],
    extremes: &[],
    groups: &[
        Group {
            version: "seen_version",
            rewrites: true,
            columns: &[("trace_id", Type::TEXT), ("project_id", Type::TEXT)],
        },
        Group {
            version: "start_version",
            rewrites: true,
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
            rewrites: true,
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
    /// Columns in parameter order: id, extremes, then each group's version
    /// and columns.
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
            if group.rewrites {
                changes.push(wins);
            }
        }
        sets.push("updated_at = now()".to_owned());
        // One array parameter per column, cast to the column's type. Rows
        // arrive in key order (the merge's BTreeMap), so two replicas lock
        // them in the same order.
        let arrays: Vec<String> = self
            .columns()
            .iter()
            .enumerate()
            .map(|(index, (_, ty))| format!("${}::{}[]", index + 1, ty.name()))
            .collect();
        format!(
            "INSERT INTO {table} AS t ({columns}) \
             SELECT * FROM unnest({arrays}) \
             ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {changes}",
            table = self.name,
            arrays = arrays.join(", "),
            key = self.key.join(", "),
            sets = sets.join(", "),
            changes = changes.join(" OR "),
        )
    }
}

/// Built once from the table specs.
static MERGE_TRACES: LazyLock<String> = LazyLock::new(|| TRACES.merge_statement());
static MERGE_OBSERVATIONS: LazyLock<String> = LazyLock::new(|| OBSERVATIONS.merge_statement());

/// Merges both tables inside the caller's transaction.
pub async fn write_rows(tx: &Transaction<'_>, rows: &Rows<'_>) -> Result<(), StoreError> {
    for chunk in chunks(&rows.traces, trace_bytes) {
        write_traces(tx, chunk).await?;
    }
    for chunk in chunks(&rows.observations, observation_bytes) {
        write_observations(tx, chunk).await?;
    }
    Ok(())
}

/// Most bytes of row data in one statement. A statement's parameters are
/// built in memory whole (COPY streamed them), so a transaction of big rows
/// goes in several statements and what the writer holds stays near the
/// memory budget; a batch of ordinary rows (~3 KB each) is one statement.
const STATEMENT_BYTES: usize = 8 << 20;

/// Consecutive runs of `rows` of at most [`STATEMENT_BYTES`] each (at least
/// one row), in order: the key order that every replica locks rows in.
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

fn json_len(json: Option<&crate::event::Json>) -> usize {
    json.map_or(0, |j| j.as_str().len())
}

/// About what a trace row weighs in a statement's parameters.
fn trace_bytes(row: &TraceRow<'_>) -> usize {
    let start = row.start.map(|s| s.value);
    256 + row.id.len()
        + json_len(start.and_then(|s| s.meta.as_ref()))
        + json_len(start.map(|s| &s.metadata))
}

/// About what an observation row weighs in a statement's parameters.
fn observation_bytes(row: &ObservationRow<'_>) -> usize {
    let start = row.start.map(|s| s.value);
    let end = row.end.map(|e| e.value);
    256 + row.id.len()
        + json_len(start.and_then(|s| s.input.as_ref()))
        + json_len(start.map(|s| &s.metadata))
        + json_len(end.and_then(|e| e.output.as_ref()))
        + json_len(end.map(|e| &e.metadata))
}

fn jsonb(json: Option<&crate::event::Json>) -> Option<JsonbText<'_>> {
    json.map(|j| JsonbText(j.as_str()))
}

async fn write_traces(tx: &Transaction<'_>, rows: &[TraceRow<'_>]) -> Result<(), StoreError> {
    fn start<'a>(row: &TraceRow<'a>) -> Option<&'a TraceStart> {
        row.start.map(|s| s.value)
    }
    let columns: [&(dyn ToSql + Sync); 12] = [
        &column(rows, |r| r.id),
        &column(rows, |r| r.first_seen_at),
        &column(rows, |r| r.seen.version.as_bytes()),
        &column(rows, |r| r.seen.value),
        &column(rows, |r| r.start.as_ref().map(|s| s.version.as_bytes())),
        &column(rows, |r| start(r).and_then(|s| s.name.as_deref())),
        &column(rows, |r| start(r).and_then(|s| s.user_id.as_deref())),
        &column(rows, |r| start(r).and_then(|s| s.session_id.as_deref())),
        &column(rows, |r| start(r).and_then(|s| s.run_id.as_deref())),
        &column(rows, |r| jsonb(start(r).and_then(|s| s.meta.as_ref()))),
        &column(rows, |r| jsonb(start(r).map(|s| &s.metadata))),
        &column(rows, |r| start(r).map(|s| s.timestamp)),
    ];
    tx.execute(MERGE_TRACES.as_str(), &columns).await?;
    Ok(())
}

async fn write_observations(
    tx: &Transaction<'_>,
    rows: &[ObservationRow<'_>],
) -> Result<(), StoreError> {
    fn start<'a>(row: &ObservationRow<'a>) -> Option<&'a ObservationStart> {
        row.start.map(|s| s.value)
    }
    fn end<'a>(row: &ObservationRow<'a>) -> Option<&'a ObservationEnd> {
        row.end.map(|e| e.value)
    }
    fn llm<'a>(row: &ObservationRow<'a>) -> Option<&'a LlmUsage> {
        end(row).and_then(|e| e.llm.as_ref())
    }
    let columns: [&(dyn ToSql + Sync); 25] = [
        &column(rows, |r| r.id),
        &column(rows, |r| r.seen.version.as_bytes()),
        &column(rows, |r| r.seen.value.trace_id),
        &column(rows, |r| r.seen.value.project_id),
        &column(rows, |r| r.start.as_ref().map(|s| s.version.as_bytes())),
        &column(rows, |r| start(r).and_then(|s| s.name.as_deref())),
        &column(rows, |r| {
            start(r).and_then(|s| s.observation_type.as_deref())
        }),
        &column(rows, |r| {
            start(r).and_then(|s| s.parent_observation_id.as_deref())
        }),
        &column(rows, |r| jsonb(start(r).and_then(|s| s.input.as_ref()))),
        &column(rows, |r| start(r).map(|s| s.start_time)),
        &column(rows, |r| jsonb(start(r).map(|s| &s.metadata))),
        &column(rows, |r| r.end.as_ref().map(|e| e.version.as_bytes())),
        &column(rows, |r| end(r).and_then(|e| e.observation_type.as_deref())),
        &column(rows, |r| end(r).map(|e| e.level.as_str())),
        &column(rows, |r| jsonb(end(r).and_then(|e| e.output.as_ref()))),
        &column(rows, |r| end(r).and_then(|e| e.status_message.as_deref())),
        &column(rows, |r| end(r).map(|e| e.end_time)),
        &column(rows, |r| jsonb(end(r).map(|e| &e.metadata))),
        &column(rows, |r| llm(r).and_then(|l| l.model.as_deref())),
        &column(rows, |r| llm(r).and_then(|l| l.prompt_tokens)),
        &column(rows, |r| llm(r).and_then(|l| l.completion_tokens)),
        &column(rows, |r| llm(r).and_then(|l| l.total_tokens)),
        &column(rows, |r| llm(r).and_then(|l| l.cached_tokens)),
        &column(rows, |r| llm(r).and_then(|l| l.thoughts_tokens)),
        &column(rows, |r| llm(r).and_then(|l| l.duration_ms)),
    ];
    tx.execute(MERGE_OBSERVATIONS.as_str(), &columns).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_order_is_id_extremes_then_groups() {
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
        let small = vec![10; 100];
        assert_eq!(chunks(&small, |r| *r).count(), 1);
    }

    #[test]
    fn each_column_is_an_array_of_its_type() {
        let sql = OBSERVATIONS.merge_statement();
        assert!(sql.contains("unnest($1::text[], $2::bytea[], $3::text[]"));
        assert!(sql.contains("$9::jsonb[]"));
        assert!(sql.contains("$25::float8[])"));
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
