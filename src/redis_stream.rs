//! The Redis Streams commands of the pipeline, as plain async functions over
//! any connection. Replies are parsed by hand from raw values so that field
//! bytes, order and duplicates reach the parser untouched.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{cmd, RedisError, Value};

use crate::event::{FieldBytes, StreamEntry, StreamId};
use crate::memory_budget::Weights;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected reply to {command}: {detail}")]
    Reply {
        command: &'static str,
        detail: String,
    },
}

pub(crate) fn bad_reply(command: &'static str, value: &Value) -> StreamError {
    let mut detail = format!("{value:?}");
    detail.truncate(200);
    StreamError::Reply { command, detail }
}

/// Where a consumer reads from: its own pending entries (after a restart
/// under the same name) or new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Entries already delivered to this consumer and not acked, after this id.
    Pending(StreamId),
    /// Entries never delivered to the group (`>`).
    New,
}

/// Creates the group at id 0 (so a backlog published before the first start
/// is read) and the stream if missing; an existing group is left as it is.
pub async fn ensure_group(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<bool, StreamError> {
    let created: Result<Value, RedisError> = cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// True when a command failed because the group (or stream) is gone, as after
/// a Redis restart without persistence.
pub fn is_missing_group(error: &StreamError) -> bool {
    matches!(error, StreamError::Redis(e) if e.code() == Some("NOGROUP"))
}

/// Waits up to `block` for an entry after `after` (the group's last
/// delivered id) without delivering it: XREAD outside the group, COUNT 1,
/// whose reply is dropped; the caller then reads within its budget.
pub async fn wait_for_entries(
    conn: &mut impl ConnectionLike,
    stream: &str,
    after: &str,
    block: Duration,
) -> Result<(), StreamError> {
    let _: Value = cmd("XREAD")
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(after)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Entries as `[id, [field, value, ...]]`; a deleted entry still pending comes
/// back with nil fields and is kept with no fields (its id must be acked).
pub(crate) fn parse_entries(
    command: &'static str,
    items: Vec<Value>,
    deliveries: u32,
) -> Result<Vec<StreamEntry>, StreamError> {
    items
        .into_iter()
        .map(|item| {
            let Value::Array(parts) = item else {
                return Err(bad_reply(command, &item));
            };
            let mut parts = parts.into_iter();
            let id = parse_id(command, parts.next())?;
            let fields = match parts.next() {
                Some(Value::Array(flat)) => pairs(command, flat)?,
                Some(Value::Nil) | None => Vec::new(),
                Some(other) => return Err(bad_reply(command, &other)),
            };
            Ok(StreamEntry {
                id,
                fields,
                deliveries,
            })
        })
        .collect()
}

pub(crate) fn bytes(command: &'static str, value: Value) -> Result<Vec<u8>, StreamError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(bad_reply(command, &other)),
    }
}

/// Field name and value bytes, as sent.
pub type EntryFields = Vec<(FieldBytes, FieldBytes)>;

/// What a plain read of new entries may keep (see
/// [`crate::connect::resp::group_read`]).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The most the kept entries may weigh together.
    pub weight: u64,
    /// Keep the first entry whatever it weighs (the whole budget is held).
    pub take_first: bool,
    pub weights: Weights,
}

/// The entries of one XREADGROUP reply.
#[derive(Debug, Default)]
pub struct GroupRead {
    /// The entries kept, each with its fields and its weight, in order.
    pub entries: Vec<(StreamId, EntryFields, u64)>,
    /// What the kept entries weigh together.
    pub weight: u64,
    /// Entries delivered (now pending to the consumer) but not loaded: they
    /// did not fit. Oldest first, all after the kept ones.
    pub unloaded: Vec<StreamId>,
    /// What the first of them weighs at least (its raw bytes, and its
    /// expansion when it was read whole): the next read expects as much.
    pub first_unloaded_weight: u64,
}

impl Limit {
    /// Whether an entry weighing `weight` joins the entries kept so far.
    pub(crate) fn admits(&self, read: &GroupRead, weight: u64) -> bool {
        (read.entries.is_empty() && self.take_first) || read.weight + weight <= self.weight
    }
}

/// Connections that read a range of entries: redis-rs' through its `Value`
/// tree, the consumers' own ([`crate::connect::resp::Connection`]) straight
/// from the reply's bytes.
#[allow(async_fn_in_trait)] // awaited in place, never spawned
pub trait RangeReads: ConnectionLike + Sized {
    /// XRANGE `stream` `first` `last`: each entry's id and fields.
    async fn xrange(
        &mut self,
        stream: &str,
        first: &str,
        last: &str,
    ) -> Result<Vec<(StreamId, EntryFields)>, StreamError> {
        let reply: Value = xrange_command(stream, first, last)
            .query_async(self)
            .await?;
        range_entries(reply)
    }

    /// One pipelined `XRANGE stream id id` per id: each entry's fields,
    /// `None` for an entry no longer there.
    async fn xrange_each(
        &mut self,
        stream: &str,
        ids: &[StreamId],
    ) -> Result<Vec<Option<EntryFields>>, StreamError> {
        let replies: Vec<Value> = xrange_each_pipeline(stream, ids).query_async(self).await?;
        replies
            .into_iter()
            .map(|reply| Ok(range_entries(reply)?.pop().map(|(_, fields)| fields)))
            .collect()
    }

    /// `command`, an XREADGROUP of new entries, its reply weighed as it
    /// arrives and kept within `limit` (see [`crate::connect::resp::group_read`]).
    /// `None` from connections that buffer whole replies (redis-rs'): the
    /// weighing script reads new entries for them.
    async fn read_new(
        &mut self,
        command: &redis::Cmd,
        limit: Limit,
        expected_bytes: usize,
    ) -> Option<Result<Option<GroupRead>, StreamError>> {
        let _ = (command, limit, expected_bytes);
        None
    }
}

/// An XRANGE reply as a `Value`: each entry's id and fields.
pub(crate) fn range_entries(reply: Value) -> Result<Vec<(StreamId, EntryFields)>, StreamError> {
    let Value::Array(items) = reply else {
        return Err(bad_reply("XRANGE", &reply));
    };
    Ok(parse_entries("XRANGE", items, 0)?
        .into_iter()
        .map(|entry| (entry.id, entry.fields))
        .collect())
}

impl RangeReads for redis::aio::MultiplexedConnection {}

/// `XRANGE stream id id` for each id.
pub(crate) fn xrange_each_pipeline(stream: &str, ids: &[StreamId]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for id in ids {
        let id = id.to_string();
        pipe.add_command(xrange_command(stream, &id, &id));
    }
    pipe
}

/// `XRANGE stream first last`.
pub(crate) fn xrange_command(stream: &str, first: &str, last: &str) -> redis::Cmd {
    let mut command = cmd("XRANGE");
    command.arg(stream).arg(first).arg(last);
    command
}

fn pairs(command: &'static str, flat: Vec<Value>) -> Result<EntryFields, StreamError> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut iter = flat.into_iter();
    while let Some(name) = iter.next() {
        let value = iter.next().ok_or_else(|| StreamError::Reply {
            command,
            detail: "odd number of field values".to_owned(),
        })?;
        out.push((bytes(command, name)?.into(), bytes(command, value)?.into()));
    }
    Ok(out)
}

pub(crate) fn parse_id(
    command: &'static str,
    value: Option<Value>,
) -> Result<StreamId, StreamError> {
    let value = value.unwrap_or(Value::Nil);
    let text = match &value {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s.as_str()),
        _ => None,
    };
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| bad_reply(command, &value))
}

/// XACK of many ids in one command; returns how many were pending.
pub async fn ack(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    ids: &[StreamId],
) -> Result<u64, StreamError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut command = cmd("XACK");
    command.arg(stream).arg(group);
    for id in ids {
        command.arg(id.to_string());
    }
    Ok(command.query_async(conn).await?)
}

/// The group's view of the stream, from XINFO GROUPS, XLEN and XPENDING.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupState {
    pub stream_length: u64,
    pub groups: Vec<GroupInfo>,
    /// This group's pending count and oldest pending id.
    pub pending: u64,
    pub oldest_pending: Option<StreamIdText>,
}

/// A stream id as text in JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamIdText(pub String);

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered_id: String,
    /// Entries the group has read (None before Redis 7 or when unknown).
    pub entries_read: Option<u64>,
    /// Entries not yet delivered to the group; None when Redis cannot tell
    /// (after deletions or trimming past the group's position).
    pub lag: Option<u64>,
}

impl GroupState {
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn oldest_pending_id(&self) -> Option<StreamId> {
        self.oldest_pending.as_ref().and_then(|t| t.0.parse().ok())
    }
}

pub async fn group_state(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<GroupState, StreamError> {
    let mut pipe = redis::pipe();
    pipe.cmd("XLEN").arg(stream);
    pipe.cmd("XINFO").arg("GROUPS").arg(stream);
    pipe.cmd("XPENDING").arg(stream).arg(group);
    let (stream_length, groups, pending): (u64, Value, Value) = pipe.query_async(conn).await?;
    let groups = group_infos(groups)?;
    let (pending, oldest_pending) = match pending {
        Value::Array(summary) if !summary.is_empty() => {
            let mut summary = summary.into_iter();
            let count = match summary.next() {
                Some(Value::Int(n)) => n.max(0) as u64,
                other => return Err(bad_reply("XPENDING", &other.unwrap_or(Value::Nil))),
            };
            let oldest = match summary.next() {
                Some(Value::BulkString(b)) => {
                    Some(StreamIdText(String::from_utf8_lossy(&b).into_owned()))
                }
                _ => None,
            };
            (count, oldest)
        }
        other => return Err(bad_reply("XPENDING", &other)),
    };
    Ok(GroupState {
        stream_length,
        groups,
        pending,
        oldest_pending,
    })
}

/// An XINFO GROUPS reply.
pub(crate) fn group_infos(groups: Value) -> Result<Vec<GroupInfo>, StreamError> {
    match groups {
        Value::Array(groups) => groups.into_iter().map(parse_group).collect(),
        other => Err(bad_reply("XINFO GROUPS", &other)),
    }
}

fn parse_group(value: Value) -> Result<GroupInfo, StreamError> {
    let fields = match value {
        Value::Array(flat) => flat,
        Value::Map(map) => map.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => return Err(bad_reply("XINFO GROUPS", &other)),
    };
    let mut info = GroupInfo::default();
    let mut iter = fields.into_iter();
    while let (Some(key), Some(value)) = (iter.next(), iter.next()) {
        let key = match key {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::SimpleString(s) => s,
            _ => continue,
        };
        let number = |v: &Value| match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        let text = |v: Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::SimpleString(s) => s,
            _ => String::new(),
        };
        match key.as_str() {
            "name" => info.name = text(value),
            "consumers" => info.consumers = number(&value).unwrap_or(0),
            "pending" => info.pending = number(&value).unwrap_or(0),
            "last-delivered-id" => info.last_delivered_id = text(value),
            "entries-read" => info.entries_read = number(&value),
            "lag" => info.lag = number(&value),
            _ => {}
        }
    }
    Ok(info)
}

/// Consumers of the group with their pending count and idle time.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle: Duration,
}

pub async fn consumers(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>, StreamError> {
    let reply: Value = cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    let Value::Array(rows) = reply else {
        return Err(bad_reply("XINFO CONSUMERS", &reply));
    };
    let mut consumers = Vec::new();
    for row in rows {
        let Value::Array(flat) = row else {
            return Err(bad_reply("XINFO CONSUMERS", &row));
        };
        let mut info = ConsumerInfo {
            name: String::new(),
            pending: 0,
            idle: Duration::ZERO,
        };
        let mut iter = flat.into_iter();
        while let (Some(key), Some(value)) = (iter.next(), iter.next()) {
            match (key, value) {
                (Value::BulkString(k), Value::BulkString(v)) if k == b"name" => {
                    info.name = String::from_utf8_lossy(&v).into_owned()
                }
                (Value::BulkString(k), Value::Int(n)) if k == b"pending" => {
                    info.pending = n.max(0) as u64
                }
                (Value::BulkString(k), Value::Int(n)) if k == b"idle" => {
                    info.idle = Duration::from_millis(n.max(0) as u64)
                }
                _ => {}
            }
        }
        consumers.push(info);
    }
    Ok(consumers)
}

/// Removes a consumer only if it has nothing pending, in one atomic script:
/// Redis drops a consumer's pending entries with it, and a consumer that
/// looked idle may have just read entries. Returns whether it was removed.
pub async fn delete_consumer_if_idle(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<bool, StreamError> {
    const SCRIPT: &str = "
        if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
        return 1";
    let removed: i64 = redis::Script::new(SCRIPT)
        .key(stream)
        .arg(group)
        .arg(consumer)
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

/// The stream's own counters, from XINFO STREAM.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    pub length: u64,
    /// Entries ever added (Redis 7).
    pub entries_added: Option<u64>,
    pub first_entry: Option<StreamId>,
}

pub async fn stream_info(
    conn: &mut impl ConnectionLike,
    stream: &str,
) -> Result<StreamInfo, StreamError> {
    let reply: Value = cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await?;
    let fields = match reply {
        Value::Array(flat) => flat,
        Value::Map(map) => map.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => return Err(bad_reply("XINFO STREAM", &other)),
    };
    let mut info = StreamInfo::default();
    let mut iter = fields.into_iter();
    while let (Some(Value::BulkString(key)), Some(value)) = (iter.next(), iter.next()) {
        match (key.as_slice(), value) {
            (b"length", Value::Int(n)) => info.length = n.max(0) as u64,
            (b"entries-added", Value::Int(n)) => info.entries_added = u64::try_from(n).ok(),
            (b"first-entry", Value::Array(entry)) => {
                info.first_entry = parse_id("XINFO STREAM", entry.into_iter().next()).ok()
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The oldest entry any group still needs: for each group, its oldest
/// pending entry or the first entry after its last delivered one. Trimming
/// below this id loses nothing; None when the stream has no group.
pub async fn safe_trim_id(
    conn: &mut impl ConnectionLike,
    stream: &str,
) -> Result<Option<StreamId>, StreamError> {
    let groups: Value = cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let Value::Array(groups) = groups else {
        return Err(bad_reply("XINFO GROUPS", &groups));
    };
    let mut needed: Option<StreamId> = None;
    for group in groups.into_iter().map(parse_group) {
        let group = group?;
        let delivered: StreamId =
            group
                .last_delivered_id
                .parse()
                .map_err(|detail| StreamError::Reply {
                    command: "XINFO GROUPS",
                    detail,
                })?;
        let mut first_needed = StreamId {
            ms: delivered.ms,
            seq: delivered.seq.saturating_add(1),
        };
        if group.pending > 0 {
            let summary: Value = cmd("XPENDING")
                .arg(stream)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            if let Value::Array(parts) = summary {
                if let Some(oldest) = parts
                    .into_iter()
                    .nth(1)
                    .and_then(|id| parse_id("XPENDING", Some(id)).ok())
                {
                    first_needed = first_needed.min(oldest);
                }
            }
        }
        needed = Some(needed.map_or(first_needed, |n| n.min(first_needed)));
    }
    Ok(needed)
}

/// XTRIM MINID ~: Redis trims whole nodes at most up to `below`, never past
/// it. Returns how many entries were removed.
pub async fn trim_below(
    conn: &mut impl ConnectionLike,
    stream: &str,
    below: StreamId,
) -> Result<u64, StreamError> {
    Ok(cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("~")
        .arg(below.to_string())
        .query_async(conn)
        .await?)
}
