//! The dead-letter table: entries that can never be stored, kept exactly as
//! they came with the reason, so that nothing is lost silently.

use base64::Engine;
use serde_json::{json, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::{JsonbText, StoreError};
use crate::event::{Rejection, StreamEntry};

/// A value above this is replaced by its size in the fields of an entry that
/// was refused for its size: keeping 20 MB of it helps nobody.
const KEPT_VALUE_BYTES: usize = 64 * 1024;

/// One entry and why it is dead.
pub struct DeadLetter<'a> {
    pub entry: &'a StreamEntry,
    pub rejection: &'a Rejection,
}

const INSERT: &str = "
INSERT INTO swisper_ingest.dead_letters
    (stream, stream_entry_id, fields, reason_code, reason, delivery_count, event_type, trace_id)
SELECT $1, * FROM UNNEST($2::text[], $3::jsonb[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::text[])
ON CONFLICT (stream, stream_entry_id) DO NOTHING";

/// Inserts dead letters; a redelivered entry that is already dead changes nothing.
pub async fn insert(
    tx: &Client,
    stream: &str,
    letters: &[DeadLetter<'_>],
) -> Result<(), StoreError> {
    if letters.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = letters.iter().map(|l| l.entry.id.to_string()).collect();
    let fields: Vec<String> = letters
        .iter()
        .map(|l| {
            let oversized = l.rejection.reason == crate::event::Reason::TooLarge;
            fields_json(l.entry, oversized.then_some(KEPT_VALUE_BYTES)).to_string()
        })
        .collect();
    let fields: Vec<JsonbText> = fields.iter().map(|f| JsonbText(f)).collect();
    let codes: Vec<&str> = letters
        .iter()
        .map(|l| l.rejection.reason.as_str())
        .collect();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.rejection.detail.as_str())
        .collect();
    let deliveries: Vec<i32> = letters
        .iter()
        .map(|l| i32::try_from(l.entry.deliveries).unwrap_or(i32::MAX))
        .collect();
    let event_types: Vec<Option<&str>> = letters
        .iter()
        .map(|l| readable(l.entry, "event_type"))
        .collect();
    let trace_ids: Vec<Option<&str>> = letters
        .iter()
        .map(|l| readable(l.entry, "trace_id"))
        .collect();
    let params: [(&(dyn ToSql + Sync), Type); 8] = [
        (&stream, Type::TEXT),
        (&ids, Type::TEXT_ARRAY),
        (&fields, Type::JSONB_ARRAY),
        (&codes, Type::TEXT_ARRAY),
        (&reasons, Type::TEXT_ARRAY),
        (&deliveries, Type::INT4_ARRAY),
        (&event_types, Type::TEXT_ARRAY),
        (&trace_ids, Type::TEXT_ARRAY),
    ];
    // Typed, so that it goes out on the first poll, in the round trip of the
    // transaction's last statements (no prepare round trip of its own).
    tx.query_typed(INSERT, &params).await?;
    Ok(())
}

/// A field's value when it is short text that Postgres can hold.
fn readable<'a>(entry: &'a StreamEntry, name: &str) -> Option<&'a str> {
    entry
        .field(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| v.len() <= 1024 && !v.contains('\0'))
}

/// The entry's fields as `[[name, value], ...]`, in order and with duplicates,
/// each name or value a JSON string when it is UTF-8 without NUL, else
/// `{"base64": ...}`; values over `omit_over` bytes become `{"omitted_bytes": n}`.
pub fn fields_json(entry: &StreamEntry, omit_over: Option<usize>) -> Value {
    let encode = |bytes: &[u8]| -> Value {
        if omit_over.is_some_and(|limit| bytes.len() > limit) {
            return json!({ "omitted_bytes": bytes.len() });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => Value::String(text.to_owned()),
            _ => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
        }
    };
    Value::Array(
        entry
            .fields
            .iter()
            .map(|(name, value)| Value::Array(vec![encode(name), encode(value)]))
            .collect(),
    )
}

/// The inverse of [`fields_json`], for replay: `None` when a value was omitted.
pub fn fields_from_json(fields: &Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let decode = |value: &Value| -> Option<Vec<u8>> {
        match value {
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Object(o) => o
                .get("base64")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()),
            _ => None,
        }
    };
    fields
        .as_array()?
        .iter()
        .map(|pair| match pair.as_array()?.as_slice() {
            [name, value] => Some((decode(name)?, decode(value)?)),
            _ => None,
        })
        .collect()
}

/// Which dead letters an operator command acts on. Every criterion given
/// must match; [`Selection::is_empty`] guards against acting on everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    pub reason_code: Option<String>,
    pub stream: Option<String>,
    pub older_than: Option<chrono::DateTime<chrono::Utc>>,
    /// Also rows that were replayed already.
    pub include_replayed: bool,
}

impl Selection {
    /// The parameters $1..$5 of `SELECT_WHERE`.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.ids,
            &self.reason_code,
            &self.stream,
            &self.older_than,
            &self.include_replayed,
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.reason_code.is_none()
            && self.stream.is_none()
            && self.older_than.is_none()
    }
}

const SELECT_WHERE: &str = "
    (cardinality($1::bigint[]) = 0 OR id = ANY($1))
    AND ($2::text IS NULL OR reason_code = $2)
    AND ($3::text IS NULL OR stream = $3)
    AND ($4::timestamptz IS NULL OR created_at < $4)
    AND ($5 OR replayed_at IS NULL)";

/// A stored dead letter, as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub stream: String,
    pub stream_entry_id: String,
    pub reason_code: String,
    pub reason: String,
    pub delivery_count: i32,
    pub event_type: Option<String>,
    pub trace_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub replayed_entry_id: Option<String>,
    pub fields: Value,
}

pub async fn list(
    client: &tokio_postgres::Client,
    selection: &Selection,
    limit: i64,
) -> Result<Vec<StoredDeadLetter>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT id, stream, stream_entry_id, reason_code, reason, delivery_count, event_type, trace_id,
                created_at, replayed_at, replayed_entry_id, fields
         FROM swisper_ingest.dead_letters WHERE {SELECT_WHERE} ORDER BY id LIMIT $6"
    );
    let mut params = selection.params().to_vec();
    params.push(&limit);
    let rows = client.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| StoredDeadLetter {
            id: r.get(0),
            stream: r.get(1),
            stream_entry_id: r.get(2),
            reason_code: r.get(3),
            reason: r.get(4),
            delivery_count: r.get(5),
            event_type: r.get(6),
            trace_id: r.get(7),
            created_at: r.get(8),
            replayed_at: r.get(9),
            replayed_entry_id: r.get(10),
            fields: r.get(11),
        })
        .collect())
}

pub async fn mark_replayed(
    client: &tokio_postgres::Client,
    id: i64,
    new_entry_id: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE swisper_ingest.dead_letters SET replayed_at = now(), replayed_entry_id = $2 WHERE id = $1",
            &[&id, &new_entry_id],
        )
        .await?;
    Ok(())
}

pub async fn purge(
    client: &tokio_postgres::Client,
    selection: &Selection,
) -> Result<u64, tokio_postgres::Error> {
    let sql = format!("DELETE FROM swisper_ingest.dead_letters WHERE {SELECT_WHERE}");
    client.execute(&sql, &selection.params()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamId;

    #[test]
    fn fields_round_trip_including_binary_and_duplicates() {
        let entry = StreamEntry {
            id: StreamId { ms: 1, seq: 0 },
            fields: vec![
                (
                    b"event_type".to_vec().into(),
                    b"trace_start".to_vec().into(),
                ),
                (b"data".to_vec().into(), vec![0xff, 0x00, 0x41].into()),
                (
                    b"data".to_vec().into(),
                    b"{\"a\":\"nul\0\"}".to_vec().into(),
                ),
            ],
            deliveries: 1,
        };
        let json = fields_json(&entry, None);
        assert_eq!(json[0], json!(["event_type", "trace_start"]));
        assert!(json[1][1].get("base64").is_some());
        let sent: Vec<(Vec<u8>, Vec<u8>)> = entry
            .fields
            .iter()
            .map(|(name, value)| (name.to_vec(), value.to_vec()))
            .collect();
        assert_eq!(fields_from_json(&json).unwrap(), sent);
    }

    #[test]
    fn oversized_values_are_omitted_with_their_size() {
        let entry = StreamEntry {
            id: StreamId { ms: 1, seq: 0 },
            fields: vec![(b"data".to_vec().into(), vec![b'a'; 100].into())],
            deliveries: 1,
        };
        let json = fields_json(&entry, Some(10));
        assert_eq!(json[0][1], json!({ "omitted_bytes": 100 }));
        assert!(fields_from_json(&json).is_none());
    }
}
