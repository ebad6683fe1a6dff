//! The weighed read keeps the consumer group's books exactly as Redis's own
//! commands would (issue 17, defect 1): a differential property test on a
//! real redis-server. Each case applies one random sequence of stream and
//! group operations (XADD with and without MAXLEN, XDEL, XTRIM MAXLEN and
//! MINID, group creation at `0`, `$` or an id, SETID, consumer deletion,
//! XACK) to two identical streams, and reads both: stream A through the
//! weighed read (`read_within_budget` on the consumers' own connection, in
//! every mode: new, by the script or, once the reader expects an entry's
//! weight, by a plain XREADGROUP weighed as it arrives; own pending, claim,
//! held), stream B through the plain commands a consumer would use
//! (XREADGROUP `>`, XREADGROUP with an id, XAUTOCLAIM, XCLAIM JUSTID). After
//! every step both must show the same ids delivered, the same pending entries
//! (owner and delivery count), the same last-delivered id, entries-read and
//! lag.
//!
//! The weighed read decides how many entries fit its budget; the plain read
//! on B then takes that many, counting those a plain read on A delivered
//! without loading them (the books, not the sizing, are compared).
//!
//! Cases: GROUP_BOOKS_CASES (default 1,000). A failure prints the shrunk
//! sequence and the seed: `PROPTEST_RNG_SEED=<seed> cargo test --test
//! group_books` replays the same cases.

use std::cell::Cell;
use std::fmt::Write as _;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use redis::Value;
use swisper_ingest::connect::resp::Connection;
use swisper_ingest::event::StreamId;
use swisper_ingest::memory_budget::{MemoryBudget, Weights};
use swisper_ingest::weighed_read::{read_within_budget, Mode, Read, Request};

const GROUP: &str = "g";
const CONSUMERS: [&str; 3] = ["c1", "c2", "c3"];
/// Sizes of the `data` field: with the budgets below, reads stop after
/// several entries, after one, or need the whole budget for one.
const SIZES: [usize; 4] = [16, 600, 2_500, 7_000];
const BUDGETS: [u64; 3] = [4 * 1024, 16 * 1024, 64 * 1024];

/// Where a group is created or set.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Zero,
    Dollar,
    /// The id of an entry (index modulo the entries; `0` when none).
    Entry(usize),
    /// An id between an entry and the next (`<ms>-1`).
    After(usize),
    /// An id past the end of the stream.
    Future,
}

#[derive(Debug, Clone)]
enum Op {
    /// XADD of entries of these size classes, each with an optional MAXLEN
    /// (approximate or exact), as the SDK trims.
    Add {
        sizes: Vec<u8>,
        maxlen: Option<(bool, u8)>,
    },
    Del {
        pick: usize,
        n: u8,
    },
    TrimMaxlen {
        approx: bool,
        n: u8,
    },
    TrimMinid {
        pick: usize,
    },
    /// XGROUP DESTROY then CREATE.
    CreateGroup(Pos),
    SetId(Pos, Option<u8>),
    DelConsumer(u8),
    Ack {
        pick: usize,
        n: u8,
    },
    /// `hint`: what the reader expects an entry to weigh (the weight of a
    /// size class; none: unknown, and the script weighs the entries).
    ReadNew {
        consumer: u8,
        count: u8,
        budget: u8,
        hint: Option<u8>,
    },
    ReadPending {
        consumer: u8,
        after: Option<usize>,
        count: u8,
        budget: u8,
    },
    Claim {
        consumer: u8,
        start: Option<usize>,
        count: u8,
        budget: u8,
    },
    Held {
        consumer: u8,
        picks: Vec<usize>,
    },
}

/// A sequence: entries before the group, where the group starts, then ops.
#[derive(Debug, Clone)]
struct Case {
    initial: Vec<u8>,
    at: Pos,
    ops: Vec<Op>,
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        3 => Just(Pos::Zero),
        1 => Just(Pos::Dollar),
        2 => any::<usize>().prop_map(Pos::Entry),
        1 => any::<usize>().prop_map(Pos::After),
        1 => Just(Pos::Future),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let consumer = 0u8..3;
    let count = 1u8..7;
    let budget = 0u8..3;
    prop_oneof![
        5 => (vec(0u8..4, 1..5), option::weighted(0.3, (any::<bool>(), 0u8..8)))
            .prop_map(|(sizes, maxlen)| Op::Add { sizes, maxlen }),
        1 => (any::<usize>(), 1u8..3).prop_map(|(pick, n)| Op::Del { pick, n }),
        1 => (any::<bool>(), 0u8..10).prop_map(|(approx, n)| Op::TrimMaxlen { approx, n }),
        1 => any::<usize>().prop_map(|pick| Op::TrimMinid { pick }),
        1 => pos().prop_map(Op::CreateGroup),
        1 => (pos(), option::weighted(0.3, 0u8..16)).prop_map(|(p, n)| Op::SetId(p, n)),
        1 => consumer.clone().prop_map(Op::DelConsumer),
        2 => (any::<usize>(), 1u8..4).prop_map(|(pick, n)| Op::Ack { pick, n }),
        5 => (consumer.clone(), count.clone(), budget.clone(), option::weighted(0.7, 0u8..4))
            .prop_map(|(consumer, count, budget, hint)| Op::ReadNew { consumer, count, budget, hint }),
        2 => (consumer.clone(), option::of(any::<usize>()), count.clone(), budget.clone())
            .prop_map(|(consumer, after, count, budget)| Op::ReadPending { consumer, after, count, budget }),
        2 => (consumer.clone(), option::of(any::<usize>()), count, budget)
            .prop_map(|(consumer, start, count, budget)| Op::Claim { consumer, start, count, budget }),
        1 => (consumer, vec(any::<usize>(), 0..4))
            .prop_map(|(consumer, picks)| Op::Held { consumer, picks }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (vec(0u8..4, 0..8), pos(), vec(op(), 4..28)).prop_map(|(initial, at, ops)| Case {
        initial,
        at,
        ops,
    })
}

/// The group's books as XINFO GROUPS and XPENDING show them.
#[derive(Debug, PartialEq)]
struct Books {
    /// last-delivered-id, entries-read, lag, pending
    group: Option<(String, Option<i64>, Option<i64>, i64)>,
    /// Every pending entry: id, owner, delivery count.
    pel: Vec<(String, String, i64)>,
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::Nil => None,
        other => text(other).parse().ok(),
    }
}

fn books(conn: &mut redis::Connection, stream: &str) -> Books {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .unwrap_or(Value::Nil);
    let mut group = None;
    if let Value::Array(groups) = groups {
        for g in groups {
            let Value::Array(kv) = g else { continue };
            let field = |name: &str| {
                kv.chunks(2)
                    .find(|pair| text(&pair[0]) == name)
                    .map(|pair| pair[1].clone())
                    .unwrap_or(Value::Nil)
            };
            if text(&field("name")) == GROUP {
                group = Some((
                    text(&field("last-delivered-id")),
                    int(&field("entries-read")),
                    int(&field("lag")),
                    int(&field("pending")).unwrap_or(-1),
                ));
            }
        }
    }
    Books {
        group,
        pel: pel(conn, stream, None),
    }
}

fn pel(
    conn: &mut redis::Connection,
    stream: &str,
    consumer: Option<&str>,
) -> Vec<(String, String, i64)> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(GROUP).arg("-").arg("+").arg(10_000);
    if let Some(consumer) = consumer {
        cmd.arg(consumer);
    }
    let rows: Value = cmd.query(conn).unwrap_or(Value::Nil);
    let Value::Array(rows) = rows else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| match row {
            Value::Array(r) if r.len() == 4 => {
                Some((text(&r[0]), text(&r[1]), int(&r[3]).unwrap_or(-1)))
            }
            _ => None,
        })
        .collect()
}

fn entry_ids(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    let rows: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap_or(Value::Nil);
    match rows {
        Value::Array(rows) => rows
            .iter()
            .filter_map(|row| match row {
                Value::Array(r) if !r.is_empty() => Some(text(&r[0])),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn id_key(id: &str) -> (u64, u64) {
    let parsed: StreamId = id.parse().expect("a stream id");
    (parsed.ms, parsed.seq)
}

/// Runs a command on both streams (the key is its second word); both must
/// succeed or both fail.
fn both(
    conn: &mut redis::Connection,
    pair: &Pair,
    build: impl Fn(&str) -> redis::Cmd,
) -> Result<(), TestCaseError> {
    let a: redis::RedisResult<Value> = build(&pair.a).query(conn);
    let b: redis::RedisResult<Value> = build(&pair.b).query(conn);
    match (&a, &b) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => Ok(()),
        _ => Err(TestCaseError::fail(format!(
            "the same command differs on the two streams: {a:?} / {b:?}"
        ))),
    }
}

struct Pair {
    a: String,
    b: String,
    next_ms: Cell<u64>,
}

impl Pair {
    fn resolve(&self, conn: &mut redis::Connection, pos: Pos) -> String {
        let ids = entry_ids(conn, &self.a);
        match pos {
            Pos::Zero => "0".to_owned(),
            Pos::Dollar => "$".to_owned(),
            Pos::Entry(i) if !ids.is_empty() => ids[i % ids.len()].clone(),
            Pos::After(i) if !ids.is_empty() => format!("{}-1", id_key(&ids[i % ids.len()]).0),
            Pos::Entry(_) | Pos::After(_) => "0".to_owned(),
            Pos::Future => format!("{}-0", self.next_ms.get() + 3),
        }
    }
}

/// Delivered (id, deliveries) and deleted ids of one weighed read.
type Outcome = (Vec<(String, u32)>, Vec<String>);

/// A read of the service's own consumer connection; `hint` as in
/// [`Op::ReadNew`]. Entries a plain read delivered without loading them are
/// delivered all the same: they count with the page.
#[allow(clippy::too_many_arguments)]
fn weighed(
    runtime: &tokio::runtime::Runtime,
    conn: &mut Connection,
    stream: &str,
    consumer: &str,
    count: u8,
    budget: u8,
    hint: Option<u8>,
    mode: &Mode,
) -> Result<Outcome, TestCaseError> {
    let weights = Weights::new(16 * 1024 * 1024);
    let expected_entry_weight = hint.map_or(0, |size| {
        weights.weight(4 + SIZES[usize::from(size)] as u64, 0)
    });
    let request = Request {
        stream,
        group: GROUP,
        consumer,
        max_count: usize::from(count),
        weights,
        max_deliveries: 1_000,
        expected_entry_weight,
    };
    let budget = MemoryBudget::new(BUDGETS[usize::from(budget)]);
    let read = runtime
        .block_on(read_within_budget(conn, &budget, &request, mode))
        .map_err(|e| TestCaseError::fail(format!("weighed read failed: {e}")))?;
    Ok(match read {
        Read::Empty { .. } => (Vec::new(), Vec::new()),
        Read::Page(page, _reservation) => (
            page.entries
                .iter()
                .map(|e| (e.id.to_string(), e.deliveries))
                .chain(page.unloaded.iter().map(|id| (id.to_string(), 1)))
                .collect(),
            page.deleted.iter().map(|id| id.to_string()).collect(),
        ),
    })
}

/// Ids of an XREADGROUP reply for one stream, with whether the entry is
/// still there (history reads give nil fields for deleted entries).
fn read_reply(reply: Value) -> Vec<(String, bool)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            if let Value::Array(e) = entry {
                out.push((text(&e[0]), !matches!(e.get(1), Some(Value::Nil) | None)));
            }
        }
    }
    out
}

fn xreadgroup(
    conn: &mut redis::Connection,
    stream: &str,
    consumer: &str,
    count: usize,
    id: &str,
) -> Vec<(String, bool)> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(id)
        .query(conn)
        .unwrap_or(Value::Nil);
    read_reply(reply)
}

fn compare_reads(
    step: usize,
    weighed: &Outcome,
    reference_delivered: &[String],
    reference_deleted: &[String],
    conn: &mut redis::Connection,
    pair: &Pair,
) -> Result<(), TestCaseError> {
    let ids: Vec<&String> = weighed.0.iter().map(|(id, _)| id).collect();
    let reference: Vec<&String> = reference_delivered.iter().collect();
    if ids != reference {
        return Err(TestCaseError::fail(format!(
            "step {step}: delivered {ids:?} by the weighed read, {reference:?} by the plain commands"
        )));
    }
    // What the weighed read reports as deleted is what the plain read found
    // deleted (it may have acked more before its budget was enough).
    if let Some(id) = weighed.1.iter().find(|id| !reference_deleted.contains(id)) {
        return Err(TestCaseError::fail(format!(
            "step {step}: {id} reported deleted by the weighed read only (plain: {reference_deleted:?})"
        )));
    }
    // Delivery counts as reported are Redis's, on both sides.
    let pel_b = pel(conn, &pair.b, None);
    for (id, deliveries) in &weighed.0 {
        let counted = pel_b.iter().find(|(p, ..)| p == id).map(|(.., n)| *n);
        if counted != Some(i64::from(*deliveries)) {
            return Err(TestCaseError::fail(format!(
                "step {step}: {id} reported delivered {deliveries} times, the plain read counts {counted:?}"
            )));
        }
    }
    Ok(())
}

/// How many pending entries (of `consumer`, or all) from `from` up to and
/// including the last id the weighed read went through.
fn consumed(
    pel_rows: &[(String, String, i64)],
    consumer: Option<&str>,
    from: (u64, u64),
    inclusive: bool,
    weighed: &Outcome,
) -> usize {
    let last = weighed
        .0
        .iter()
        .map(|(id, _)| id)
        .chain(weighed.1.iter())
        .map(|id| id_key(id))
        .max();
    let Some(last) = last else { return 0 };
    pel_rows
        .iter()
        .filter(|(id, owner, _)| {
            let k = id_key(id);
            consumer.is_none_or(|c| c == owner)
                && (if inclusive { k >= from } else { k > from })
                && k <= last
        })
        .count()
}

/// The steps of a case: the initial XADD (if any), the group's creation,
/// then the ops.
fn steps(case: &Case) -> Vec<Op> {
    let mut ops = Vec::with_capacity(case.ops.len() + 2);
    if !case.initial.is_empty() {
        ops.push(Op::Add {
            sizes: case.initial.clone(),
            maxlen: None,
        });
    }
    ops.push(Op::CreateGroup(case.at));
    ops.extend(case.ops.iter().cloned());
    ops
}

fn run_case(
    case: &Case,
    pair: &Pair,
    conn: &mut redis::Connection,
    runtime: &tokio::runtime::Runtime,
    aconn: &mut Connection,
) -> Result<(), TestCaseError> {
    let ops = steps(case);
    for (step, op) in ops.iter().enumerate() {
        apply(step, op, pair, conn, runtime, aconn)?;
        let a = books(conn, &pair.a);
        let b = books(conn, &pair.b);
        if a != b {
            return Err(TestCaseError::fail(format!(
                "step {step} ({op:?}): the books differ\n  weighed read: {a:?}\n  plain reads:  {b:?}"
            )));
        }
    }
    Ok(())
}

fn apply(
    step: usize,
    op: &Op,
    pair: &Pair,
    conn: &mut redis::Connection,
    runtime: &tokio::runtime::Runtime,
    aconn: &mut Connection,
) -> Result<(), TestCaseError> {
    match op {
        Op::Add { sizes, maxlen } => {
            for size in sizes {
                let ms = pair.next_ms.get();
                pair.next_ms.set(ms + 1);
                let value = "x".repeat(SIZES[usize::from(*size)]);
                both(conn, pair, |key| {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(key);
                    if let Some((approx, n)) = maxlen {
                        cmd.arg("MAXLEN");
                        if *approx {
                            cmd.arg("~");
                        }
                        cmd.arg(*n);
                    }
                    cmd.arg(format!("{ms}-0")).arg("data").arg(&value);
                    cmd
                })?;
            }
        }
        Op::Del { pick, n } => {
            let ids = entry_ids(conn, &pair.a);
            if !ids.is_empty() {
                let chosen: Vec<&String> = (0..usize::from(*n))
                    .map(|k| &ids[(pick % ids.len() + k) % ids.len()])
                    .collect();
                both(conn, pair, |key| {
                    let mut cmd = redis::cmd("XDEL");
                    cmd.arg(key).arg(&chosen);
                    cmd
                })?;
            }
        }
        Op::TrimMaxlen { approx, n } => both(conn, pair, |key| {
            let mut cmd = redis::cmd("XTRIM");
            cmd.arg(key).arg("MAXLEN");
            if *approx {
                cmd.arg("~");
            }
            cmd.arg(*n);
            cmd
        })?,
        Op::TrimMinid { pick } => {
            let ids = entry_ids(conn, &pair.a);
            let minid = if ids.is_empty() || pick % (ids.len() + 1) == ids.len() {
                format!("{}-0", pair.next_ms.get())
            } else {
                ids[pick % ids.len()].clone()
            };
            both(conn, pair, |key| {
                let mut cmd = redis::cmd("XTRIM");
                cmd.arg(key).arg("MINID").arg(&minid);
                cmd
            })?;
        }
        Op::CreateGroup(at) => {
            let at = pair.resolve(conn, *at);
            both(conn, pair, |key| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("DESTROY").arg(key).arg(GROUP);
                cmd
            })?;
            both(conn, pair, |key| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("CREATE")
                    .arg(key)
                    .arg(GROUP)
                    .arg(&at)
                    .arg("MKSTREAM");
                cmd
            })?;
        }
        Op::SetId(at, entries_read) => {
            let at = pair.resolve(conn, *at);
            both(conn, pair, |key| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("SETID").arg(key).arg(GROUP).arg(&at);
                if let Some(n) = entries_read {
                    cmd.arg("ENTRIESREAD").arg(*n);
                }
                cmd
            })?;
        }
        Op::DelConsumer(c) => both(conn, pair, |key| {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DELCONSUMER")
                .arg(key)
                .arg(GROUP)
                .arg(CONSUMERS[usize::from(*c)]);
            cmd
        })?,
        Op::Ack { pick, n } => {
            let pending = pel(conn, &pair.a, None);
            if !pending.is_empty() {
                let chosen: Vec<&String> = (0..usize::from(*n))
                    .map(|k| &pending[(pick % pending.len() + k) % pending.len()].0)
                    .collect();
                both(conn, pair, |key| {
                    let mut cmd = redis::cmd("XACK");
                    cmd.arg(key).arg(GROUP).arg(&chosen);
                    cmd
                })?;
            }
        }
        Op::ReadNew {
            consumer,
            count,
            budget,
            hint,
        } => {
            let consumer = CONSUMERS[usize::from(*consumer)];
            let got = weighed(
                runtime,
                aconn,
                &pair.a,
                consumer,
                *count,
                *budget,
                *hint,
                &Mode::New,
            )?;
            // As many as the weighed read took (one when it took none: the
            // plain read must then find nothing either).
            let n = got.0.len().max(1);
            let reference = xreadgroup(conn, &pair.b, consumer, n, ">");
            let ids: Vec<String> = reference.into_iter().map(|(id, _)| id).collect();
            compare_reads(step, &got, &ids, &[], conn, pair)?;
        }
        Op::ReadPending {
            consumer,
            after,
            count,
            budget,
        } => {
            let consumer = CONSUMERS[usize::from(*consumer)];
            let own = pel(conn, &pair.a, Some(consumer));
            let after = match after {
                Some(i) if !own.is_empty() && i % 2 == 0 => own[i / 2 % own.len()].0.clone(),
                _ => "0-0".to_owned(),
            };
            let mode = Mode::Pending(after.parse().expect("an id"));
            let got = weighed(
                runtime, aconn, &pair.a, consumer, *count, *budget, None, &mode,
            )?;
            let pel_b = pel(conn, &pair.b, None);
            let n = consumed(&pel_b, Some(consumer), id_key(&after), false, &got).max(1);
            let reference = xreadgroup(conn, &pair.b, consumer, n, &after);
            let deleted: Vec<String> = reference
                .iter()
                .filter(|(_, present)| !present)
                .map(|(id, _)| id.clone())
                .collect();
            // A consumer acks what is gone (it has nothing to store).
            if !deleted.is_empty() {
                let _: Value = redis::cmd("XACK")
                    .arg(&pair.b)
                    .arg(GROUP)
                    .arg(&deleted)
                    .query(conn)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let delivered: Vec<String> = reference
                .into_iter()
                .filter(|(_, present)| *present)
                .map(|(id, _)| id)
                .collect();
            compare_reads(step, &got, &delivered, &deleted, conn, pair)?;
        }
        Op::Claim {
            consumer,
            start,
            count,
            budget,
        } => {
            let consumer = CONSUMERS[usize::from(*consumer)];
            let all = pel(conn, &pair.a, None);
            let start = match start {
                Some(i) if !all.is_empty() => all[i % all.len()].0.clone(),
                _ => "0-0".to_owned(),
            };
            let mode = Mode::Claim {
                start: start.clone(),
                min_idle: std::time::Duration::ZERO,
            };
            let got = weighed(
                runtime, aconn, &pair.a, consumer, *count, *budget, None, &mode,
            )?;
            let pel_b = pel(conn, &pair.b, None);
            let n = consumed(&pel_b, None, id_key(&start), true, &got).max(1);
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&pair.b)
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(&start)
                .arg("COUNT")
                .arg(n)
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("XAUTOCLAIM: {e}")))?;
            let (claimed, deleted) = match &reply {
                Value::Array(parts) if parts.len() >= 3 => {
                    let ids = |v: &Value| match v {
                        Value::Array(items) => items
                            .iter()
                            .map(|item| match item {
                                Value::Array(entry) if !entry.is_empty() => text(&entry[0]),
                                other => text(other),
                            })
                            .collect::<Vec<_>>(),
                        _ => Vec::new(),
                    };
                    (ids(&parts[1]), ids(&parts[2]))
                }
                other => {
                    return Err(TestCaseError::fail(format!("XAUTOCLAIM reply {other:?}")));
                }
            };
            compare_reads(step, &got, &claimed, &deleted, conn, pair)?;
        }
        Op::Held { consumer, picks } => {
            let consumer = CONSUMERS[usize::from(*consumer)];
            let all = pel(conn, &pair.a, None);
            let entries = entry_ids(conn, &pair.a);
            let ids: Vec<String> = picks
                .iter()
                .filter_map(|p| {
                    if p % 3 != 0 && !all.is_empty() {
                        Some(all[p % all.len()].0.clone())
                    } else if !entries.is_empty() {
                        Some(entries[p % entries.len()].clone())
                    } else {
                        None
                    }
                })
                .collect();
            let mut unique = ids.clone();
            unique.sort_by_key(|id| id_key(id));
            unique.dedup();
            let mode = Mode::Held(unique.iter().map(|id| id.parse().unwrap()).collect());
            let got = weighed(runtime, aconn, &pair.a, consumer, 1, 0, None, &mode)?;
            // A held batch is reloaded whole: the reference is every held
            // id still pending to the consumer, kept fresh without counting.
            let own_b = pel(conn, &pair.b, Some(consumer));
            let held: Vec<String> = unique
                .iter()
                .filter(|id| own_b.iter().any(|(p, ..)| p == *id))
                .cloned()
                .collect();
            for id in &held {
                let _: Value = redis::cmd("XCLAIM")
                    .arg(&pair.b)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(0)
                    .arg(id)
                    .arg("JUSTID")
                    .query(conn)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            // The weighed read delivers a prefix of the held ids that fits.
            let present = entry_ids(conn, &pair.b);
            let expected: Vec<String> = held
                .iter()
                .filter(|id| present.contains(id))
                .take(got.0.len())
                .cloned()
                .collect();
            let deleted: Vec<String> = unique
                .iter()
                .filter(|id| !present.contains(id))
                .cloned()
                .collect();
            compare_reads(step, &got, &expected, &deleted, conn, pair)?;
        }
    }
    Ok(())
}

#[test]
fn the_weighed_read_keeps_the_books_of_plain_consumer_group_commands() {
    let url = std::env::var("OBSERVABILITY_REDIS_URL").unwrap_or_else(|_| {
        panic!("OBSERVABILITY_REDIS_URL is not set: run the tests with scripts/test.sh, which starts Redis")
    });
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let conn = client.get_connection().expect("connect to redis");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let aconn = runtime.block_on(crate::harness::consumer_connection(&url));
    let aconn = std::cell::RefCell::new(aconn);
    let conn_cell = std::cell::RefCell::new(conn);

    let cases = std::env::var("GROUP_BOOKS_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let seed = match std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => seed,
        None => rand::random::<u64>(),
    };
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let run: u32 = rand::random();
    let counter = Cell::new(0u64);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        let n = counter.get();
        counter.set(n + 1);
        let pair = Pair {
            a: format!("books:{run:08x}:{n}:weighed"),
            b: format!("books:{run:08x}:{n}:plain"),
            next_ms: Cell::new(1),
        };
        let mut conn = conn_cell.borrow_mut();
        let mut aconn = aconn.borrow_mut();
        let outcome = run_case(&case, &pair, &mut conn, &runtime, &mut aconn);
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&pair.a)
            .arg(&pair.b)
            .query(&mut *conn);
        outcome
    });
    match result {
        Ok(()) => eprintln!("group books: {} sequences, seed {seed}", counter.get()),
        Err(TestError::Fail(reason, case)) => {
            let mut listing = String::new();
            for (i, op) in steps(&case).iter().enumerate() {
                let _ = writeln!(listing, "  step {i}: {op:?}");
            }
            panic!(
                "{reason}\nminimal failing sequence:\n{listing}replay: PROPTEST_RNG_SEED={seed} cargo test --test group_books"
            );
        }
        Err(error) => panic!("{error}; replay: PROPTEST_RNG_SEED={seed}"),
    }
}
