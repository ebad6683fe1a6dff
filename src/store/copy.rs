//! Rows new to the database go into the studio's tables by binary COPY, as
//! the design card says: no ON CONFLICT probe, no arrays to unpack. Which
//! rows are new is known from the lock (`rows::lock`); a row that another
//! writer inserted meanwhile makes the COPY fail with a unique violation,
//! and the caller runs the transaction again, when the row is found and
//! merged instead ([`super::StoreError::Conflict`]).
//!
//! A COPY is never pipelined behind a statement that may fail, another
//! COPY included. tokio-postgres sends a COPY's start with a Sync, which
//! PostgreSQL ignores once in copy mode; a COPY refused before that (as
//! every statement is once an earlier one failed) answers that Sync and
//! the one after its end, and the connection then hands each later answer
//! to the statement after its own (rust-postgres issue 789). So a COPY
//! starts once the statement before it has succeeded: a round trip for its
//! start, another for its rows.
//!
//! Binary COPY does no casts, so each value is sent as its column's type:
//! json as its text, the `observationtype` enum as its label, costs as
//! numeric.

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::binary_copy::BinaryCopy;
use super::row_writes::{ObservationWrite, TraceWrite};
use super::StoreError;
use crate::event::OBSERVATION_TYPES;

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// JSON text sent as `json` (whose binary form is the text itself).
#[derive(Debug)]
struct JsonText<'a>(&'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}

/// An enum label (binary form: the label's text).
#[derive(Debug)]
struct EnumLabel<'a>(&'a str);

impl ToSql for EnumLabel<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Enum(_))
    }

    to_sql_checked!();
}

/// The studio's `observationtype` as the encoder sees it. Binary COPY sends
/// no type oids (each field is a length and its bytes, read by the column's
/// own type), so the oid here is never used: the type only tells
/// [`EnumLabel`] what it encodes.
fn observation_type() -> Type {
    Type::new(
        "observationtype".to_owned(),
        0,
        Kind::Enum(OBSERVATION_TYPES.iter().map(|t| (*t).to_owned()).collect()),
        "public".to_owned(),
    )
}

const COPY_TRACES: &str =
    "COPY public.traces (id, project_id, name, user_id, session_id, meta, tags, \"timestamp\")
     FROM STDIN BINARY";

const COPY_OBSERVATIONS: &str =
    "COPY public.observations (id, trace_id, parent_observation_id, type, name,
         start_time, end_time, input, output, meta, model, prompt_tokens,
         completion_tokens, total_tokens, level, status_message, calculated_input_cost,
         calculated_output_cost, calculated_total_cost)
     FROM STDIN BINARY";

/// Both COPY statements, prepared in the transaction that runs them.
/// Prepared up front, they travel with the transaction's first statements
/// (one round trip) instead of one round trip each before its COPY. Drop
/// them before the transaction ends: their Close then reaches the same
/// server connection, also behind a pooler in transaction mode.
pub struct Statements {
    pub traces: Statement,
    pub observations: Statement,
}

impl Statements {
    pub async fn prepare(tx: &Client) -> Result<Self, StoreError> {
        let (traces, observations) =
            futures_util::join!(tx.prepare(COPY_TRACES), tx.prepare(COPY_OBSERVATIONS));
        Ok(Self {
            traces: traces?,
            observations: observations?,
        })
    }
}

pub async fn traces(
    tx: &Client,
    statement: &Statement,
    rows: &[TraceWrite<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(statement).await?;
    let types = [
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::JSON,
        Type::JSON,
        Type::TIMESTAMP,
    ];
    let expected = rows.iter().map(TraceWrite::encoded_bytes).sum();
    let mut copy = BinaryCopy::new(sink, &types, expected);
    for row in rows {
        copy.row(&[
            &row.id,
            &row.project_id,
            &row.name,
            &row.user_id,
            &row.session_id,
            &row.meta.map(JsonText),
            &JsonText(row.tags),
            &row.timestamp,
        ])
        .await?;
    }
    copy.finish().await?;
    Ok(())
}

pub async fn observations(
    tx: &Client,
    statement: &Statement,
    rows: &[ObservationWrite<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(statement).await?;
    let types = [
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        observation_type(),
        Type::VARCHAR,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
        Type::JSON,
        Type::JSON,
        Type::JSON,
        Type::VARCHAR,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
    ];
    let expected = rows.iter().map(ObservationWrite::encoded_bytes).sum();
    let mut copy = BinaryCopy::new(sink, &types, expected);
    for row in rows {
        let start = row.start;
        let end = row.end;
        let llm = end.and_then(|e| e.llm.as_ref());
        let costs = row.costs.as_ref();
        copy.row(&[
            &row.id,
            &row.trace_id,
            &start.and_then(|s| s.parent_observation_id.as_deref()),
            &EnumLabel(&row.observation_type),
            &row.name(),
            &row.start_time,
            &end.map(|e| e.end_time.naive_utc()),
            &start
                .and_then(|s| s.input.as_ref())
                .map(|j| JsonText(j.as_str())),
            &end.and_then(|e| e.output.as_ref())
                .map(|j| JsonText(j.as_str())),
            &row.meta.as_deref().map(JsonText),
            &llm.and_then(|l| l.model.as_deref()),
            &llm.and_then(|l| l.prompt_tokens),
            &llm.and_then(|l| l.completion_tokens),
            &llm.and_then(|l| l.total_tokens),
            &row.level(),
            &end.and_then(|e| e.status_message.as_deref()),
            &costs.map(|c| c.input),
            &costs.map(|c| c.output),
            &costs.map(|c| c.total),
        ])
        .await?;
    }
    copy.finish().await?;
    Ok(())
}
