//! Reads of the consumer group within the memory budget. XREADGROUP's COUNT
//! bounds entries, not bytes, and a reply's size is known only once it has
//! arrived; so a script (`weighed_read.lua`) weighs the next entries inside
//! Redis and delivers only as many as the reservation covers; their fields
//! are then fetched with XRANGE (bulk data through Lua is slow). The same
//! script serves every path that re-reads an entry (own pending entries after
//! a restart, claims of idle ones, reloads of a held batch) and reports
//! Redis's own delivery count for each, so the delivery limit holds whichever
//! path reads an entry.
//!
//! New entries are delivered by XREADGROUP run inside the script, so that
//! Redis keeps the group's books (entries-read, hence lag) after trims and
//! deletions as it does for any consumer.
//!
//! What compressed `data` expands to is weighed by the script's
//! `expanded_size`; [`find_weighed_data`] is its mirror in Rust, byte for
//! byte, and the parser never inflates more than it (src/event/payload.rs).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

pub use crate::event::weight::{expanded_size, find_weighed_data, WeighedData};
use crate::event::{StreamEntry, StreamId};
use crate::memory_budget::{MemoryBudget, Reservation, Weights};
use crate::redis_stream::{
    bad_reply, bytes, parse_id, EntryFields, Limit, RangeReads, StreamError,
};

const SCRIPT: &str = include_str!("weighed_read.lua");
const COMMAND: &str = "weighed read";

/// The least a read waits for before asking Redis: enough for a batch of
/// small entries; a heavier first entry asks for its own weight.
const MIN_RESERVATION: u64 = 64 * 1024;

/// The most a plain read reserves up front for its reply.
const MAX_PRESIZED: u64 = 4 * 1024 * 1024;

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
    /// What one new entry is expected to weigh (0: unknown), from the
    /// previous page ([`Page::heaviest`]): a plain read asks for as many as
    /// the reservation covers at that weight.
    pub expected_entry_weight: u64,
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
    /// New mode: entries delivered after `entries` that did not fit the
    /// reservation and were not loaded. Pending to this consumer: reload
    /// them with [`Mode::Held`] (their delivery is counted already).
    pub unloaded: Vec<StreamId>,
    /// The heaviest entry's weight (for pages the script read, the mean; for
    /// a plain read, the first entry not loaded counts too).
    pub heaviest: u64,
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
    conn: &mut impl RangeReads,
    budget: &MemoryBudget,
    request: &Request<'_>,
    mode: &Mode,
) -> Result<Read, StreamError> {
    if let Mode::New = mode {
        if let Some(read) = read_new_plain(conn, budget, request).await {
            return read;
        }
    }
    let mut wanted: Option<u64> = None;
    // Pending ids found deleted (and acked) by a try that then needed more
    // budget: reported with the page finally read.
    let mut deleted_before: Vec<StreamId> = Vec::new();
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
            Reply::Page(mut chosen) => {
                reservation.shrink_to(chosen.weight);
                let contiguous = matches!(mode, Mode::New);
                if !deleted_before.is_empty() {
                    deleted_before.append(&mut chosen.deleted);
                    chosen.deleted = deleted_before;
                }
                let page = fetch(conn, request, chosen, contiguous).await?;
                return Ok(Read::Page(page, reservation));
            }
            Reply::Empty { next } if deleted_before.is_empty() => return Ok(Read::Empty { next }),
            Reply::Empty { next } => {
                reservation.shrink_to(0);
                let page = Page {
                    deleted: deleted_before,
                    next,
                    ..Page::default()
                };
                return Ok(Read::Page(page, reservation));
            }
            Reply::Need { weight, deleted } => {
                wanted = Some(weight);
                deleted_before.extend(deleted);
            }
        }
    }
}

/// New entries by a plain XREADGROUP, weighed as they arrive: the entries
/// that fit the reservation, and the ids of those delivered past it (see
/// [`Page::unloaded`]). `None` when `conn` cannot (see
/// [`RangeReads::read_new`]) or when no page read before tells what an
/// entry weighs: the script reads then.
async fn read_new_plain(
    conn: &mut impl RangeReads,
    budget: &MemoryBudget,
    request: &Request<'_>,
) -> Option<Result<Read, StreamError>> {
    if request.expected_entry_weight == 0 {
        // Nothing read yet tells what entries weigh: the script weighs them.
        return None;
    }
    let mut reservation = budget
        .acquire_available(MIN_RESERVATION, budget.total_bytes())
        .await;
    let limit = Limit {
        weight: reservation.bytes(),
        take_first: reservation.is_whole_budget(),
        weights: request.weights,
    };
    let each = request.expected_entry_weight;
    let count = (limit.weight / each).clamp(1, request.max_count.max(1) as u64);
    // Room for the reply up front, so that it is not copied as it grows; at
    // most a few MiB, as a weight may be mostly expansion (compressed data),
    // and memory reserved is memory the allocator may hand out resident.
    let expected_bytes = (count * each / request.weights.raw_factor.max(1)).min(MAX_PRESIZED);
    let mut command = redis::cmd("XREADGROUP");
    command
        .arg("GROUP")
        .arg(request.group)
        .arg(request.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(request.stream)
        .arg(">");
    let read = match conn
        .read_new(&command, limit, expected_bytes as usize)
        .await?
    {
        Ok(Some(read)) if !(read.entries.is_empty() && read.unloaded.is_empty()) => read,
        Ok(_) => {
            return Some(
                last_delivered_id(conn, request)
                    .await
                    .map(|next| Read::Empty { next }),
            )
        }
        Err(error) => return Some(Err(error)),
    };
    if !read.unloaded.is_empty() {
        metrics::counter!(crate::metrics::DELIVERED_UNLOADED).increment(read.unloaded.len() as u64);
        tracing::debug!(
            count,
            limit = limit.weight,
            expected = request.expected_entry_weight,
            loaded = read.entries.len(),
            unloaded = read.unloaded.len(),
            "new entries delivered past the reservation"
        );
    }
    reservation.shrink_to(read.weight);
    let next = read
        .unloaded
        .last()
        .or(read.entries.last().map(|(id, ..)| id))
        .map(StreamId::to_string)
        .unwrap_or_default();
    let page = Page {
        heaviest: read
            .entries
            .iter()
            .map(|(.., weight)| *weight)
            .chain([read.first_unloaded_weight])
            .max()
            .unwrap_or(0),
        entries: read
            .entries
            .into_iter()
            .map(|(id, fields, _)| StreamEntry {
                id,
                fields,
                deliveries: 1,
            })
            .collect(),
        deleted: Vec::new(),
        next,
        weight: read.weight,
        unloaded: read.unloaded,
    };
    Some(Ok(Read::Page(page, reservation)))
}

/// The group's last delivered id, where a wait for new entries starts.
/// A group that is gone gives `0-0`: the wait ends at once on any entry, and
/// the next read meets the missing group (and recreates it).
async fn last_delivered_id(
    conn: &mut impl ConnectionLike,
    request: &Request<'_>,
) -> Result<String, StreamError> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(request.stream)
        .query_async(conn)
        .await?;
    Ok(crate::redis_stream::group_infos(groups)?
        .into_iter()
        .find(|group| group.name == request.group)
        .map_or_else(|| "0-0".to_owned(), |group| group.last_delivered_id))
}

enum Reply {
    Page(Chosen),
    /// The first entry alone weighs `weight`; pending ids found deleted
    /// before it were acked.
    Need {
        weight: u64,
        deleted: Vec<StreamId>,
    },
    Empty {
        next: String,
    },
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

/// The script's answer: which entries, not their fields.
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
        b"need" | b"ok" => {}
        b"empty" => return Ok(Reply::Empty { next }),
        _ => return Err(bad_reply(COMMAND, &Value::BulkString(status))),
    }
    let mut array = || match parts.next() {
        Some(Value::Array(items)) => Ok(items),
        other => Err(bad_reply(COMMAND, &other.unwrap_or(Value::Nil))),
    };
    let ids = ids_of(array()?)?;
    let counts = array()?;
    let deleted = ids_of(array()?)?;
    if status == b"need" {
        return Ok(Reply::Need { weight, deleted });
    }
    let unloaded = array()?
        .into_iter()
        .map(|pair| match pair {
            Value::Array(pair) if pair.len() == 2 => {
                let mut pair = pair.into_iter();
                let id = parse_id(COMMAND, pair.next())?;
                match pair.next() {
                    Some(Value::Int(n)) => Ok((id, n)),
                    other => Err(bad_reply(COMMAND, &other.unwrap_or(Value::Nil))),
                }
            }
            other => Err(bad_reply(COMMAND, &other)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if counts.len() != ids.len() {
        return Err(bad_reply(COMMAND, &Value::Array(counts)));
    }
    let entries = ids
        .into_iter()
        .zip(counts)
        .map(|(id, count)| {
            let deliveries = match count {
                Value::Int(n) => u32::try_from(n).unwrap_or(u32::MAX),
                other => return Err(bad_reply(COMMAND, &other)),
            };
            let fields = match unloaded.iter().find(|(u, _)| *u == id) {
                Some((_, size)) => Fields::Unloaded(*size),
                None => Fields::ToFetch,
            };
            Ok((id, deliveries, fields))
        })
        .collect::<Result<_, _>>()?;
    Ok(Reply::Page(Chosen {
        entries,
        deleted,
        next,
        weight,
    }))
}

fn ids_of(values: Vec<Value>) -> Result<Vec<StreamId>, StreamError> {
    values
        .into_iter()
        .map(|id| parse_id(COMMAND, Some(id)))
        .collect()
}

/// What to do for an entry's fields.
#[derive(Debug)]
enum Fields {
    ToFetch,
    /// Not to be loaded: its raw size.
    Unloaded(i64),
}

/// The entries the script delivered, before their fields are fetched.
struct Chosen {
    entries: Vec<(StreamId, u32, Fields)>,
    deleted: Vec<StreamId>,
    next: String,
    weight: u64,
}

/// Fetches the fields of the chosen entries (now pending to this consumer, so
/// no one else takes them meanwhile) with one pipelined XRANGE each. An
/// entry deleted in between is acked and reported as deleted.
async fn fetch(
    conn: &mut impl RangeReads,
    request: &Request<'_>,
    chosen: Chosen,
    contiguous: bool,
) -> Result<Page, StreamError> {
    let fetched = if contiguous {
        if chosen.entries.is_empty() {
            return Ok(Page {
                next: chosen.next,
                deleted: chosen.deleted,
                ..Page::default()
            });
        }
        fetch_range(conn, request, &chosen.entries).await?
    } else {
        fetch_each(conn, request, &chosen.entries).await?
    };
    let (mut page, gone) = assemble(chosen, fetched);
    if !gone.is_empty() {
        crate::redis_stream::ack(conn, request.stream, request.group, &gone).await?;
        page.deleted.extend(gone);
    }
    Ok(page)
}

/// The fields of each entry to fetch, in order; `None` for one deleted
/// meanwhile.
type Fetched = Vec<Option<EntryFields>>;

/// New entries are consecutive in the stream: one XRANGE brings them all.
async fn fetch_range(
    conn: &mut impl RangeReads,
    request: &Request<'_>,
    entries: &[(StreamId, u32, Fields)],
) -> Result<Fetched, StreamError> {
    let (Some((first, ..)), Some((last, ..))) = (entries.first(), entries.last()) else {
        return Ok(Vec::new());
    };
    let found = conn
        .xrange(request.stream, &first.to_string(), &last.to_string())
        .await?;
    let mut found = found.into_iter().peekable();
    let mut fetched = Vec::with_capacity(entries.len());
    for (id, _, fields) in entries {
        // Every entry in the range comes back, an entry not to load too.
        let this = found.next_if(|(found, _)| found == id).map(|(_, f)| f);
        if let Fields::ToFetch = fields {
            fetched.push(this);
        }
    }
    Ok(fetched)
}

/// One pipelined XRANGE per entry whose fields are to be loaded.
async fn fetch_each(
    conn: &mut impl RangeReads,
    request: &Request<'_>,
    entries: &[(StreamId, u32, Fields)],
) -> Result<Fetched, StreamError> {
    let ids: Vec<StreamId> = entries
        .iter()
        .filter(|(.., fields)| matches!(fields, Fields::ToFetch))
        .map(|(id, ..)| *id)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    conn.xrange_each(request.stream, &ids).await
}

/// The page of the chosen entries with their fetched fields (one per entry
/// to fetch, in order), and the ids found deleted meanwhile.
fn assemble(chosen: Chosen, fetched: Fetched) -> (Page, Vec<StreamId>) {
    let mut fetched = fetched.into_iter();
    let mut page = Page {
        entries: Vec::with_capacity(chosen.entries.len()),
        deleted: chosen.deleted,
        next: chosen.next,
        weight: chosen.weight,
        unloaded: Vec::new(),
        heaviest: chosen.weight / chosen.entries.len().max(1) as u64,
    };
    let mut gone = Vec::new();
    for (id, deliveries, fields) in chosen.entries {
        let fields = match fields {
            Fields::Unloaded(size) => vec![(
                bytes::Bytes::from_static(crate::event::UNLOADED_FIELD.as_bytes()),
                size.to_string().into_bytes().into(),
            )],
            Fields::ToFetch => match fetched.next().flatten() {
                Some(fields) if !fields.is_empty() => fields,
                _ => {
                    gone.push(id);
                    continue;
                }
            },
        };
        page.entries.push(StreamEntry {
            id,
            fields,
            deliveries,
        });
    }
    (page, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::gzip::compress as gzip;
    use base64::Engine;
    use std::io::Write;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    const MAX: u64 = 1 << 20;

    /// The weigher's table (the same cases run through the Lua function
    /// itself in tests/it/crafted_payloads.rs): data, expected expansion.
    #[test]
    fn expanded_size_table() {
        let doc = |n: usize| format!(r#"{{"input":"{}"}}"#, "a".repeat(n));
        let sdk = |n: usize| {
            format!(
                r#"{{"_compressed": true, "_data": "{}"}}"#,
                b64(&gzip(doc(n).as_bytes()))
            )
        };
        let mut two = gzip(doc(5_000).as_bytes());
        two.extend(gzip(b""));
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(doc(5_000).as_bytes()).unwrap();
        let zlib = zlib.finish().unwrap();
        let late = format!(
            r#"{{"_compressed": true, "note": "{}", "_data": "{}"}}"#,
            "n".repeat(300),
            b64(&gzip(doc(5_000).as_bytes()))
        );
        let cases: Vec<(String, u64)> = vec![
            // As the SDK writes it; base64 ending in "", "=" and "==".
            (sdk(3_000), doc(3_000).len() as u64),
            (sdk(3_001), doc(3_001).len() as u64),
            (sdk(3_002), doc(3_002).len() as u64),
            // No spaces, or more of them, around the colon.
            (sdk(10).replace("\": \"", "\":\""), doc(10).len() as u64),
            (
                sdk(10).replace("\": \"", "\" \t:\n \""),
                doc(10).len() as u64,
            ),
            // `_data` past byte 256: found all the same.
            (late, doc(5_000).len() as u64),
            // Capped at the largest expansion allowed.
            (sdk(2 << 20), MAX),
            // Not compressed, or nothing to read: no expansion.
            (doc(100), 0),
            (r#"{"_compressed": true}"#.to_owned(), 0),
            (r#"{"_data": 5}"#.to_owned(), 0),
            (r#"{"_data": "H4sIAAAA"#.to_owned(), 0),
            // Not gzip: weighed as no expansion (the parser refuses it).
            (
                format!(r#"{{"_compressed": true, "_data": "{}"}}"#, b64(&zlib)),
                0,
            ),
            (
                r#"{"_compressed": true, "_data": "aGVsbG8gd29ybGQ="}"#.to_owned(),
                0,
            ),
            // gzip-looking but not readable base64: no expansion.
            (
                r#"{"_compressed": true, "_data": "H4sIAAAAAA"}"#.to_owned(),
                0,
            ),
            (
                r#"{"_compressed": true, "_data": "H4sIAAAA*AAA"}"#.to_owned(),
                0,
            ),
            // Two members: the last trailer, the empty member's 0.
            (
                format!(r#"{{"_compressed": true, "_data": "{}"}}"#, b64(&two)),
                0,
            ),
            // The first "_data" key followed by a string is the one weighed.
            (
                format!(
                    r#"{{"a": "_data", "_data": 1, "_compressed": true, "_data": "{}", "_data": "{}"}}"#,
                    b64(&gzip(doc(10).as_bytes())),
                    b64(&gzip(doc(5_000).as_bytes()))
                ),
                doc(10).len() as u64,
            ),
        ];
        for (data, expected) in cases {
            assert_eq!(
                expanded_size(data.as_bytes(), MAX),
                expected,
                "{}",
                &data[..data.len().min(120)]
            );
        }
    }

    #[test]
    fn the_weighed_text_is_located() {
        let data = r#"{"_compressed": true, "_data":  "H4sIabcd"}"#;
        let weighed = find_weighed_data(data.as_bytes()).unwrap();
        assert_eq!(&data[weighed.text.clone()], "H4sIabcd");
        assert_eq!(find_weighed_data(br#"{"x": "_data"}"#), None);
    }
}
