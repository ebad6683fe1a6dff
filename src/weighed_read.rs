//! Reads of the consumer group within the memory budget. XREADGROUP's COUNT
//! bounds entries, not bytes, and a reply's size is known only once it has
//! arrived; so a script (`weighed_read.lua`) weighs the next entries inside
//! Redis and delivers only as many as the reservation covers. The same
//! script serves every path that re-reads an entry (own pending entries after
//! a restart, claims of idle ones, reloads of a held batch) and reports
//! Redis's own delivery count for each, so the delivery limit holds whichever
//! path reads an entry.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use crate::event::{StreamEntry, StreamId};
use crate::memory_budget::{MemoryBudget, Reservation, Weights};
use crate::redis_stream::{bad_reply, bytes, parse_entries, parse_id, StreamError};

const SCRIPT: &str = include_str!("weighed_read.lua");
const COMMAND: &str = "weighed read";

/// The least a read waits for before asking Redis: enough for a batch of
/// small entries; a heavier first entry asks for its own weight.
const MIN_RESERVATION: u64 = 64 * 1024;

/// Which entries to read.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Entries never delivered to the group (XREADGROUP `>`).
    New,
    /// This consumer's own pending entries after this id (a restart): each
    /// read counts as a delivery.
    Pending(StreamId),
    /// Any consumer's entries idle for `min_idle`, from `start` (an id, or
    /// `(id` for after it): claimed, each counting as a delivery.
    Claim { start: String, min_idle: Duration },
    /// These ids, still pending to this consumer: a batch held by poison
    /// protection, reloaded without counting a delivery and kept idle-fresh
    /// so that no other replica claims it.
    Held(Vec<StreamId>),
}

/// Everything the script needs besides the mode.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub max_count: usize,
    pub weights: Weights,
    pub max_deliveries: u32,
}

/// Entries read, with what they weigh.
#[derive(Debug, Default)]
pub struct Page {
    /// Each with Redis's delivery count, this delivery included.
    pub entries: Vec<StreamEntry>,
    /// Pending ids whose entries were deleted before being stored; the script
    /// has acked them (nothing is left to store).
    pub deleted: Vec<StreamId>,
    /// Pending and claim modes: where the next page starts (`0-0` when a
    /// claim scan is complete). New mode: the group's last delivered id.
    pub next: String,
    pub weight: u64,
}

/// The outcome of [`read_within_budget`].
#[derive(Debug)]
pub enum Read {
    /// Entries (possibly none but deleted ones), and their reservation: keep
    /// it until the batch is committed and acked.
    Page(Page, Reservation),
    /// Nothing to read; `next` as in [`Page::next`].
    Empty { next: String },
}

/// Reserves from the budget, then reads what the reservation covers; the
/// unused part is given back at once. A first entry heavier than what was
/// free is waited for with its own weight (the whole budget at most, so it
/// may end up alone).
pub async fn read_within_budget(
    conn: &mut impl ConnectionLike,
    budget: &MemoryBudget,
    request: &Request<'_>,
    mode: &Mode,
) -> Result<Read, StreamError> {
    let mut wanted: Option<u64> = None;
    loop {
        let mut reservation = match wanted {
            None => {
                budget
                    .acquire_available(MIN_RESERVATION, budget.total_bytes())
                    .await
            }
            Some(weight) => budget.acquire(weight).await,
        };
        let limit = reservation.bytes();
        let whole = reservation.is_whole_budget();
        match read_weighed(conn, request, mode, limit, whole, budget.total_bytes()).await? {
            Reply::Page(page) => {
                reservation.shrink_to(page.weight);
                return Ok(Read::Page(page, reservation));
            }
            Reply::Empty { next } => return Ok(Read::Empty { next }),
            Reply::Need(weight) => wanted = Some(weight),
        }
    }
}

enum Reply {
    Page(Page),
    Need(u64),
    Empty { next: String },
}

async fn read_weighed(
    conn: &mut impl ConnectionLike,
    request: &Request<'_>,
    mode: &Mode,
    limit: u64,
    take_first: bool,
    whole: u64,
) -> Result<Reply, StreamError> {
    let script = Script::new(SCRIPT);
    let mut invocation = script.key(request.stream);
    let (name, cursor, min_idle) = match mode {
        Mode::New => ("new", "0-0".to_owned(), 0),
        Mode::Pending(after) => ("pending", after.to_string(), 0),
        Mode::Claim { start, min_idle } => ("claim", start.clone(), min_idle.as_millis() as u64),
        Mode::Held(_) => ("held", "0-0".to_owned(), 0),
    };
    invocation
        .arg(name)
        .arg(request.group)
        .arg(request.consumer)
        .arg(request.max_count.max(1))
        .arg(limit)
        .arg(if take_first { "1" } else { "0" })
        .arg(request.weights.raw_factor)
        .arg(request.weights.expanded_factor)
        .arg(request.weights.max_expanded_bytes)
        .arg(whole)
        .arg(request.max_deliveries)
        .arg(cursor)
        .arg(min_idle);
    if let Mode::Held(ids) = mode {
        for id in ids {
            invocation.arg(id.to_string());
        }
    }
    let reply: Value = invocation.invoke_async(conn).await?;
    parse_reply(reply)
}

fn parse_reply(reply: Value) -> Result<Reply, StreamError> {
    let Value::Array(parts) = reply else {
        return Err(bad_reply(COMMAND, &reply));
    };
    let mut parts = parts.into_iter();
    let status = bytes(COMMAND, parts.next().unwrap_or(Value::Nil))?;
    let weight = match parts.next() {
        Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
        other => return Err(bad_reply(COMMAND, &other.unwrap_or(Value::Nil))),
    };
    let next =
        String::from_utf8_lossy(&bytes(COMMAND, parts.next().unwrap_or(Value::Nil))?).into_owned();
    match status.as_slice() {
        b"need" => return Ok(Reply::Need(weight)),
        b"empty" => return Ok(Reply::Empty { next }),
        b"ok" => {}
        _ => return Err(bad_reply(COMMAND, &Value::BulkString(status))),
    }
    let mut entries = match parts.next() {
        Some(Value::Array(items)) => parse_entries(COMMAND, items, 1)?,
        other => return Err(bad_reply(COMMAND, &other.unwrap_or(Value::Nil))),
    };
    let counts = match parts.next() {
        Some(Value::Array(counts)) => counts,
        other => return Err(bad_reply(COMMAND, &other.unwrap_or(Value::Nil))),
    };
    if counts.len() != entries.len() {
        return Err(bad_reply(COMMAND, &Value::Array(counts)));
    }
    for (entry, count) in entries.iter_mut().zip(counts) {
        entry.deliveries = match count {
            Value::Int(n) => u32::try_from(n).unwrap_or(u32::MAX),
            other => return Err(bad_reply(COMMAND, &other)),
        };
    }
    let deleted = match parts.next() {
        Some(Value::Array(ids)) => ids
            .into_iter()
            .map(|id| parse_id(COMMAND, Some(id)))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(Reply::Page(Page {
        entries,
        deleted,
        next,
        weight,
    }))
}
