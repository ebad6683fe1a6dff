//! From raw fields to a typed event. Every way an entry can be wrong ends in
//! a [`Rejection`] that names the field and the problem.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::payload::{borrowed_object, kind, raw, tree, RawObject, REPAIRS_KEY};
use super::{
    expand_data, parse_epoch_seconds, parse_iso_time, EventBody, Heartbeat, Json, Limits,
    ObservationEnd, ObservationStart, Parsed, Reason, Rejection, StreamEntry, TraceEvent,
    TraceStart, OBSERVATION_TYPES,
};

/// Where an observation type outside the studio's enum is kept.
pub const ORIGINAL_TYPE_KEY: &str = "_ingest_original_type";

/// Recorded in metadata when a self-referencing parent is dropped.
pub const SELF_PARENT: &str = "parent_observation_id equal to the observation's own id dropped";

/// Ids longer than this are refused: they are producer bugs and would bloat
/// every index that holds them.
pub const MAX_ID_BYTES: usize = 1024;

/// Text columns that are indexed or meant for filtering (session_id, user_id,
/// names, the LLM model) are cut to this many bytes, at a character
/// boundary, with a note in `_ingest_repairs`: a btree index entry holds at
/// most about 2700 bytes, and Postgres would refuse the whole row.
pub const MAX_INDEXED_TEXT_BYTES: usize = 1024;

/// Top-level fields of the wire contract; any other is kept in metadata.
const KNOWN_FIELDS: [&str; 6] = [
    "event_type",
    "trace_id",
    "project_id",
    "timestamp",
    "observation_id",
    "data",
];

pub fn parse_entry(entry: &StreamEntry, limits: &Limits) -> Result<Parsed, Rejection> {
    let size = entry.byte_size();
    if size > limits.max_entry_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "entry has {size} bytes, over the limit of {}",
                limits.max_entry_bytes
            ),
        ));
    }
    let fields = text_fields(entry)?;
    let event_type = required(&fields, "event_type")?;
    // Declared before `data`, which may borrow it.
    let mut inflated = String::new();
    let data = match fields.get("data") {
        Some(text) => expand_data(text, limits.max_expanded_bytes, &mut inflated)?,
        None => RawObject::new(),
    };
    let mut event = EventFields { fields, data };
    match event_type {
        "heartbeat" => event.heartbeat(entry).map(Parsed::Heartbeat),
        "trace_start" | "observation_start" | "observation_end" | "observation_error" => {
            event.trace_event(entry, event_type).map(Parsed::Trace)
        }
        other => Err(Rejection::new(
            Reason::UnknownEventType,
            format!(
                "event_type {:?} is not one this service stores",
                truncate(other)
            ),
        )),
    }
}

/// An entry's fields as UTF-8 text, each name once: a handful, looked up by
/// a scan (a `BTreeMap` cost more to build than all its lookups).
struct TextFields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> TextFields<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value)
    }

    /// Those outside the wire contract, sorted by name.
    fn unknown(&self) -> impl Iterator<Item = &(&'a str, &'a str)> {
        self.0
            .iter()
            .filter(|(name, _)| !KNOWN_FIELDS.contains(name))
    }
}

/// Fields as UTF-8 text, each name once.
fn text_fields(entry: &StreamEntry) -> Result<TextFields<'_>, Rejection> {
    let mut fields = Vec::with_capacity(entry.fields.len());
    for (name, value) in &entry.fields {
        let name = utf8(name).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("a field name is not valid UTF-8: {e}"),
            )
        })?;
        let value = utf8(value).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("field {:?} is not valid UTF-8: {e}", truncate(name)),
            )
        })?;
        if name.contains('\0') || (name != "data" && value.contains('\0')) {
            return Err(Rejection::new(
                Reason::NulCharacter,
                format!("field {:?} contains a NUL byte", truncate(name)),
            ));
        }
        fields.push((name, value));
    }
    // Sorted, so that a repeated name is next to itself (and the unknown
    // fields come out in name order); n log n on any number of fields.
    fields.sort_unstable_by_key(|(name, _)| *name);
    if let Some(pair) = fields.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(Rejection::new(
            Reason::DuplicateField,
            format!("field {:?} appears more than once", truncate(pair[0].0)),
        ));
    }
    Ok(TextFields(fields))
}

/// UTF-8 checked with SIMD (the standard library's check was 11% of a
/// plain entry's parse); the standard one again only to describe a failure.
fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    simdutf8::basic::from_utf8(bytes).or_else(|_| std::str::from_utf8(bytes))
}

fn required<'a>(fields: &TextFields<'a>, name: &str) -> Result<&'a str, Rejection> {
    match fields.get(name) {
        None => Err(Rejection::new(
            Reason::MissingField,
            format!("field {name} is missing"),
        )),
        Some("") => Err(Rejection::new(
            Reason::EmptyField,
            format!("field {name} is empty"),
        )),
        Some(v) => Ok(v),
    }
}

fn check_id(name: &str, id: &str) -> Result<(), Rejection> {
    if id.is_empty() {
        return Err(Rejection::new(
            Reason::EmptyField,
            format!("{name} is empty"),
        ));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Rejection::new(
            Reason::IdTooLong,
            format!(
                "{name} has {} bytes, over the limit of {MAX_ID_BYTES}",
                id.len()
            ),
        ));
    }
    Ok(())
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One entry being taken apart: each `take_*` consumes a key of data, and
/// what remains is kept as metadata.
struct EventFields<'a> {
    fields: TextFields<'a>,
    data: RawObject<'a>,
}

impl<'a> EventFields<'a> {
    fn trace_event(
        &mut self,
        entry: &StreamEntry,
        event_type: &str,
    ) -> Result<TraceEvent, Rejection> {
        let trace_id = required(&self.fields, "trace_id")?.to_owned();
        check_id("trace_id", &trace_id)?;
        let project_id = self.project_id()?;
        let published_at = self.published_at()?;
        let body = match event_type {
            "trace_start" => EventBody::TraceStart(self.trace_start(published_at)?),
            "observation_start" => {
                let observation_id = self.observation_id()?;
                let fields = self.observation_start(&observation_id, published_at)?;
                EventBody::ObservationStart {
                    observation_id,
                    fields,
                }
            }
            _ => EventBody::ObservationEnd {
                observation_id: self.observation_id()?,
                fields: self.observation_end(published_at, event_type == "observation_error")?,
            },
        };
        Ok(TraceEvent {
            entry_id: entry.id,
            trace_id,
            project_id,
            published_at,
            body,
        })
    }

    fn heartbeat(&mut self, entry: &StreamEntry) -> Result<Heartbeat, Rejection> {
        let project_id = self.project_id()?;
        let published_at = match self.fields.get("timestamp") {
            Some(_) => self.published_at()?,
            None => self.take_time("timestamp")?.ok_or_else(|| {
                Rejection::new(
                    Reason::MissingField,
                    "heartbeat has neither a timestamp field nor data.timestamp",
                )
            })?,
        };
        self.data.remove("timestamp");
        Ok(Heartbeat {
            entry_id: entry.id,
            project_id,
            sdk_version: self.take_text("sdk_version")?,
            published_at,
            metadata: self.metadata(),
        })
    }

    fn trace_start(&mut self, published_at: DateTime<Utc>) -> Result<TraceStart, Rejection> {
        Ok(TraceStart {
            name: self.take_bounded_text("name")?,
            user_id: self.take_bounded_text("user_id")?,
            session_id: self.take_bounded_text("session_id")?,
            tags: self.take_json("tags"),
            timestamp: self.take_time("timestamp")?.unwrap_or(published_at),
            metadata: self.metadata(),
        })
    }

    fn observation_start(
        &mut self,
        observation_id: &str,
        published_at: DateTime<Utc>,
    ) -> Result<ObservationStart, Rejection> {
        let mut parent = self
            .take_text("parent_observation_id")?
            .filter(|id| !id.is_empty());
        if let Some(id) = &parent {
            check_id("data.parent_observation_id", id)?;
        }
        // An observation cannot be its own parent: the tree would have a
        // cycle. Store it as a root and say so.
        if parent.as_deref() == Some(observation_id) {
            parent = None;
            self.note_repair(SELF_PARENT);
        }
        Ok(ObservationStart {
            name: self.take_bounded_text("name")?,
            observation_type: self.take_type()?,
            parent_observation_id: parent,
            input: self.take_json("input"),
            start_time: self.take_time("start_time")?.unwrap_or(published_at),
            metadata: self.metadata(),
        })
    }

    fn observation_end(
        &mut self,
        published_at: DateTime<Utc>,
        is_error: bool,
    ) -> Result<ObservationEnd, Rejection> {
        let default_level = if is_error { "ERROR" } else { "DEFAULT" };
        // `error` has no column: it stays in metadata, and is the status
        // message when none is given.
        // The studio's `data.get("error") or data.get("status_message")`:
        // an error that Python finds false ("", 0, false, [], {}) gives way.
        let error = match self.data.get("error").map(tree).as_ref() {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) if n.as_f64() != Some(0.0) => Some(n.to_string()),
            Some(Value::Bool(true)) => Some("True".to_owned()),
            Some(other @ (Value::Array(_) | Value::Object(_)))
                if other.as_array().is_some_and(|a| !a.is_empty())
                    || other.as_object().is_some_and(|o| !o.is_empty()) =>
            {
                Some(other.to_string())
            }
            _ => None,
        };
        let output = self.data.remove("output").filter(|v| v.get() != "null");
        // The model goes to an indexed column; output keeps it whole.
        let llm = output
            .as_deref()
            .filter(|output| super::llm::may_name_an_llm_call(output))
            .and_then(super::llm::studio_usage_of)
            .map(|mut usage| {
                usage.model = self.bounded("output.", "_llm_model", usage.model.take());
                usage
            });
        let status_message = self.take_text("status_message")?;
        // The studio's consumer: an error's message is data.error first.
        let status_message = if is_error {
            error.or(status_message)
        } else {
            status_message
        };
        Ok(ObservationEnd {
            is_error,
            observation_type: self.take_type()?,
            level: self.level(is_error, default_level)?,
            llm,
            output: output.as_deref().map(Json::from_raw),
            status_message,
            end_time: self.take_time("end_time")?.unwrap_or(published_at),
            metadata: self.metadata(),
        })
    }

    /// data.level, else the default; an error is always ERROR, as the studio
    /// stores it (another level it carries is kept in meta as `level`).
    fn level(&mut self, is_error: bool, default_level: &str) -> Result<String, Rejection> {
        let given = self.take_text("level")?;
        if !is_error {
            return Ok(given.unwrap_or_else(|| default_level.to_owned()));
        }
        if let Some(other) = given.filter(|level| level != "ERROR") {
            self.keep("level", raw(&Value::String(other)));
        }
        Ok("ERROR".to_owned())
    }

    /// The top-level field wins over data.project_id; both are accepted. The
    /// SDK sends an empty top-level field when unconfigured: then data's counts.
    fn project_id(&mut self) -> Result<String, Rejection> {
        let from_data = self.take_text("project_id")?;
        let id = match self.fields.get("project_id").filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => from_data.ok_or_else(|| {
                Rejection::new(
                    Reason::MissingField,
                    "project_id is missing (neither a field nor data.project_id)",
                )
            })?,
        };
        check_id("project_id", &id)?;
        Ok(id)
    }

    fn observation_id(&self) -> Result<String, Rejection> {
        let id = required(&self.fields, "observation_id")?;
        check_id("observation_id", id)?;
        Ok(id.to_owned())
    }

    fn published_at(&self) -> Result<DateTime<Utc>, Rejection> {
        let text = required(&self.fields, "timestamp")?;
        parse_epoch_seconds(text)
            .map_err(|e| Rejection::new(Reason::InvalidTimestamp, format!("field timestamp: {e}")))
    }

    /// Text columns take strings; numbers and booleans are kept as their text
    /// (an integer user id, say); null is no value.
    fn take_text(&mut self, key: &str) -> Result<Option<String>, Rejection> {
        match self.take_tree(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(Rejection::new(
                Reason::InvalidField,
                format!("data.{key} must be text, got a JSON {}", kind(&other)),
            )),
        }
    }

    /// data.type when it is one of the studio's [`OBSERVATION_TYPES`]; any
    /// other type is kept in metadata (`_ingest_original_type`) and counted,
    /// and the row takes the default.
    fn take_type(&mut self) -> Result<Option<String>, Rejection> {
        let Some(text) = self.take_text("type")? else {
            return Ok(None);
        };
        if OBSERVATION_TYPES.contains(&text.as_str()) {
            return Ok(Some(text));
        }
        metrics::counter!(crate::metrics::UNKNOWN_TYPES).increment(1);
        self.keep(ORIGINAL_TYPE_KEY, raw(&Value::String(text)));
        Ok(None)
    }

    /// [`Self::take_text`] cut to [`MAX_INDEXED_TEXT_BYTES`].
    fn take_bounded_text(&mut self, key: &str) -> Result<Option<String>, Rejection> {
        let text = self.take_text(key)?;
        Ok(self.bounded("data.", key, text))
    }

    /// `parent` and `key` name the value in the repair note (joined only
    /// when one is written).
    fn bounded(&mut self, parent: &str, key: &str, text: Option<String>) -> Option<String> {
        let mut text = text?;
        if text.len() > MAX_INDEXED_TEXT_BYTES {
            let original = text.len();
            let mut end = MAX_INDEXED_TEXT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            self.note_repair(&format!(
                "{parent}{key} truncated from {original} to {end} bytes (indexed column)"
            ));
        }
        Some(text)
    }

    fn take_json(&mut self, key: &str) -> Option<Json> {
        self.data
            .remove(key)
            .filter(|raw| raw.get() != "null")
            .map(|raw| Json::from_raw(&raw))
    }

    /// A small value (text, time, level) as a tree.
    fn take_tree(&mut self, key: &str) -> Option<Value> {
        self.data.remove(key).map(|raw| tree(&raw))
    }

    /// ISO 8601 text (zone-less is UTC) or epoch seconds as a number.
    fn take_time(&mut self, key: &str) -> Result<Option<DateTime<Utc>>, Rejection> {
        let parsed = match self.take_tree(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => parse_iso_time(&s),
            Some(Value::Number(n)) => parse_epoch_seconds(&n.to_string()),
            Some(other) => Err(format!("a JSON {} is not a time", kind(&other))),
        };
        parsed
            .map(Some)
            .map_err(|e| Rejection::new(Reason::InvalidTimestamp, format!("data.{key}: {e}")))
    }

    fn note_repair(&mut self, repair: &str) {
        let mut repairs = self
            .take_tree(REPAIRS_KEY)
            .unwrap_or_else(|| Value::Array(Vec::new()));
        if let Value::Array(list) = &mut repairs {
            list.push(Value::String(repair.to_owned()));
        }
        self.keep(REPAIRS_KEY, raw(&repairs));
    }

    /// A value of this service's own for the metadata.
    fn keep(&mut self, key: &'static str, value: Box<RawValue>) {
        self.data.insert(Cow::Borrowed(key), Cow::Owned(value));
    }

    /// The studio's `meta`: data.meta's keys (a meta that is not an object
    /// is kept under `_meta`), then what no column took: the rest of data,
    /// plus unknown top-level fields under `_fields`, so that nothing a
    /// producer sends is thrown away. The rest wins a clash.
    fn metadata(&mut self) -> Json {
        let mut rest = match self.data.remove("meta") {
            None => RawObject::new(),
            Some(meta) if meta.get() == "null" => RawObject::new(),
            Some(meta) => object_in(meta),
        };
        rest.extend(std::mem::take(&mut self.data));
        let extra: Map<String, Value> = self
            .fields
            .unknown()
            .map(|(name, value)| ((*name).to_owned(), Value::String((*value).to_owned())))
            .collect();
        if !extra.is_empty() {
            rest.insert(
                Cow::Borrowed("_fields"),
                Cow::Owned(raw(&Value::Object(extra))),
            );
        }
        Json::from_object(&rest)
    }
}

/// data.meta's keys, or data.meta under `_meta` when it is not an object.
fn object_in(meta: Cow<'_, RawValue>) -> RawObject<'_> {
    let object = match &meta {
        Cow::Borrowed(text) => borrowed_object(text.get()),
        Cow::Owned(text) => borrowed_object(text.get()).map(RawObject::into_owned),
    };
    object.unwrap_or_else(|| RawObject::from_iter([(Cow::Borrowed("_meta"), meta)]))
}
