use std::time::{Duration, Instant};

use super::*;
use crate::event::{
    EventBody, Heartbeat, Parsed, Reason, Rejection, StreamEntry, StreamId, TraceEvent,
};

fn entry(seq: u64) -> StreamEntry {
    StreamEntry {
        id: StreamId { ms: 1, seq },
        fields: Vec::new(),
        deliveries: 1,
    }
}

/// A good (heartbeat) or rejected entry.
fn item(ok: bool) -> BatchItem {
    item_at(0, ok)
}

fn item_at(seq: u64, ok: bool) -> BatchItem {
    let entry = entry(seq);
    let parsed = if ok {
        Ok(Parsed::Heartbeat(Heartbeat {
            entry_id: entry.id,
            project_id: "p".into(),
            sdk_version: None,
            published_at: chrono::Utc::now(),
            metadata: Default::default(),
        }))
    } else {
        Err(Rejection::new(Reason::InvalidData, "bad"))
    };
    BatchItem { entry, parsed }
}

fn event(seq: u64, project: &str, body: EventBody) -> BatchItem {
    let entry = entry(seq);
    let parsed = Ok(Parsed::Trace(TraceEvent {
        entry_id: entry.id,
        trace_id: "t".into(),
        project_id: project.into(),
        published_at: chrono::Utc::now(),
        body,
    }));
    BatchItem { entry, parsed }
}

fn start(observation: &str) -> EventBody {
    EventBody::ObservationStart {
        observation_id: observation.into(),
        fields: Default::default(),
    }
}

fn end(observation: &str) -> EventBody {
    EventBody::ObservationEnd {
        observation_id: observation.into(),
        fields: Default::default(),
    }
}

fn seqs(items: &[BatchItem]) -> Vec<u64> {
    items.iter().map(|i| i.entry.id.seq).collect()
}

fn settings() -> BatcherSettings {
    BatcherSettings {
        read_batch_size: 4,
        write_batch_size: 100,
        poison_run: 3,
        lingers: false,
        hold_starts: Duration::ZERO,
        backlog_wait: Duration::from_millis(250),
    }
}

/// A fixed clock: the batcher is handed the time.
fn at(ms: u64) -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now) + Duration::from_millis(ms)
}

/// Waiters and reservations are plain labels here.
type TestBatcher = Batcher<&'static str, &'static str>;

#[test]
fn only_starts_without_their_end_are_deferred() {
    let batch = vec![
        event(0, "p", EventBody::TraceStart(Default::default())),
        event(1, "p", start("closed")),
        event(2, "p", start("open")),
        event(3, "p", end("closed")),
        event(4, "p", start("open-elsewhere")),
        // Ids are the studio's keys: an end under another project still
        // closes the start (the write path then refuses one of them).
        event(5, "q", end("open-elsewhere")),
        // An end whose start came earlier, and a rejected entry.
        event(6, "p", end("earlier")),
        item(false),
    ];
    let (written, deferred) = split_open_starts(batch);
    assert_eq!(seqs(&deferred), [2]);
    assert_eq!(seqs(&written), [0, 1, 3, 4, 5, 6, 0]);
    assert!(written[6].parsed.is_err());
}

#[test]
fn rejection_runs_carry_across_batches_and_reset_on_success() {
    let batch = [item(false), item(false), item(true), item(false)];
    let run = |longest, trailing| RejectionRun { longest, trailing };
    assert_eq!(rejection_run(&batch, 5), run(7, 1));
    assert_eq!(rejection_run(&batch, 0), run(2, 1));
    assert_eq!(rejection_run(&[], 3), run(3, 3));
}

#[test]
fn an_idle_writer_starts_at_once_and_a_busy_one_gathers() {
    let mut batcher = TestBatcher::new(settings());
    assert_eq!(
        batcher.arrive(vec![item_at(1, true)], Some("r1"), "w1"),
        Arrival::StartNow
    );
    let first = batcher.decide(at(0)).transaction.expect("a transaction");
    assert_eq!(
        (seqs(&first.items), first.waiters, first.release),
        (vec![1], vec!["w1"], vec!["r1"])
    );
    // In flight: the next two wait, and nothing starts until it finishes.
    assert_eq!(
        batcher.arrive(vec![item_at(2, true)], Some("r2"), "w2"),
        Arrival::Wait
    );
    assert_eq!(
        batcher.arrive(vec![item_at(3, true)], None, "w3"),
        Arrival::Wait
    );
    assert!(batcher.decide(at(0)).transaction.is_none());
    batcher.finished();
    let second = batcher
        .decide(at(0))
        .transaction
        .expect("the gathered batches");
    assert_eq!(seqs(&second.items), [2, 3]);
    assert_eq!(second.waiters, ["w2", "w3"]);
    assert_eq!(second.release, ["r2"]);
    batcher.finished();
    assert!(batcher.decide(at(0)).transaction.is_none(), "nothing left");
}

#[test]
fn a_linger_is_started_once_and_cut_short_by_a_full_batch() {
    let mut batcher = TestBatcher::new(BatcherSettings {
        lingers: true,
        write_batch_size: 3,
        ..settings()
    });
    assert_eq!(
        batcher.arrive(vec![item_at(1, true)], None, "a"),
        Arrival::Linger
    );
    assert_eq!(
        batcher.arrive(vec![item_at(2, true)], None, "b"),
        Arrival::Wait
    );
    assert_eq!(
        batcher.arrive(vec![item_at(3, true)], None, "c"),
        Arrival::StartNow
    );
    let transaction = batcher.decide(at(0)).transaction.expect("a transaction");
    assert_eq!(seqs(&transaction.items), [1, 2, 3]);
}

#[test]
fn an_empty_arrival_is_a_flush_answered_by_the_next_transaction() {
    let mut batcher = TestBatcher::new(settings());
    batcher.arrive(vec![item_at(1, true)], None, "w1");
    let _in_flight = batcher.decide(at(0));
    assert_eq!(batcher.arrive(Vec::new(), None, "flush"), Arrival::Wait);
    batcher.finished();
    let transaction = batcher
        .decide(at(0))
        .transaction
        .expect("the flush's transaction");
    assert!(transaction.items.is_empty());
    assert_eq!(transaction.waiters, ["flush"]);
}

#[test]
fn under_backlog_open_starts_are_deferred_once_with_their_reservation() {
    let mut batcher = TestBatcher::new(settings());
    let full = vec![
        event(1, "p", start("open")),
        event(2, "p", start("closed")),
        event(3, "p", end("closed")),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    let next = batcher.decide(at(0));
    assert_eq!(next.held, 1);
    let first = next.transaction.expect("a transaction");
    assert_eq!(seqs(&first.items), [2, 3, 4]);
    assert_eq!(first.waiters, ["w1"]);
    assert!(
        first.release.is_empty(),
        "r1 is still in hand: its start is deferred"
    );
    batcher.finished();
    // With no arrival the held start waits for the next batch (its end is
    // there) until the backlog wait is over: then it goes alone, and
    // releases r1 with it.
    let waiting = batcher.decide(at(100));
    assert!(waiting.transaction.is_none());
    assert_eq!(waiting.wake_at, Some(at(250)));
    let next = batcher.decide(at(250));
    assert_eq!(next.held_went_alone, 1);
    let second = next.transaction.expect("the held start");
    assert_eq!(seqs(&second.items), [1]);
    assert_eq!(second.release, ["r1"]);
    assert!(second.waiters.is_empty());
    batcher.finished();
    let idle = batcher.decide(at(300));
    assert!(idle.transaction.is_none());
    assert_eq!(idle.wake_at, None, "nothing is held any more");
}

/// With several writers a full page reaches each writer as a part shorter
/// than a read: still a backlog, so its open starts are deferred as well
/// (without this, 29% of a drain's observation rows were inserted and then
/// updated with two writers, against 2% with one).
#[test]
fn a_full_pages_share_is_a_backlog_however_short() {
    let part = || {
        vec![
            event(1, "p", start("open")),
            event(2, "p", start("closed")),
            event(3, "p", end("closed")),
        ]
    };
    let mut batcher = TestBatcher::new(settings());
    batcher.arrive(part(), Some("r1"), "w1");
    assert_eq!(batcher.decide(at(0)).held, 0, "a short page: no backlog");

    let mut batcher = TestBatcher::new(settings());
    batcher.page_was_full();
    batcher.arrive(part(), Some("r1"), "w1");
    let next = batcher.decide(at(0));
    assert_eq!(next.held, 1);
    assert_eq!(
        seqs(&next.transaction.expect("a transaction").items),
        [2, 3]
    );
    // The mark goes with the batch it came with.
    batcher.finished();
    batcher.arrive(vec![event(4, "p", start("later"))], Some("r2"), "w2");
    let after = batcher.decide(at(0));
    assert_eq!(after.held, 0);
    assert_eq!(
        seqs(&after.transaction.expect("a transaction").items),
        [1, 4]
    );
}

#[test]
fn held_starts_wait_for_the_next_batch_and_meet_their_ends_in_it() {
    let mut batcher = TestBatcher::new(settings());
    let full = vec![
        event(1, "p", start("a")),
        event(2, "p", start("b")),
        item_at(3, true),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    assert_eq!(batcher.decide(at(0)).held, 2);
    batcher.finished();
    assert_eq!(batcher.decide(at(10)).wake_at, Some(at(250)));
    // The next page, with the ends, arrives before the wait is over.
    batcher.arrive(
        vec![event(5, "p", end("a")), event(6, "p", end("b"))],
        Some("r2"),
        "w2",
    );
    let next = batcher.decide(at(20));
    assert_eq!(next.held_went_alone, 0);
    let transaction = next.transaction.expect("starts and ends together");
    assert_eq!(seqs(&transaction.items), [1, 2, 5, 6]);
    assert_eq!(transaction.release, ["r1", "r2"]);
    assert_eq!(transaction.waiters, ["w2"]);
    batcher.finished();
    assert_eq!(batcher.decide(at(30)).wake_at, None);
}

#[test]
fn a_start_held_under_backlog_goes_with_the_next_batch_ended_or_not() {
    let mut batcher = TestBatcher::new(settings());
    let full = |base: u64, r| {
        (
            (0..4)
                .map(|i| event(base + i, "p", start(&format!("o{}", base + i))))
                .collect::<Vec<_>>(),
            r,
        )
    };
    let (items, r) = full(10, "r1");
    batcher.arrive(items, Some(r), "w1");
    let first = batcher.decide(at(0)).transaction.expect("a transaction");
    assert!(first.items.is_empty());
    batcher.finished();
    let (items, r) = full(20, "r2");
    batcher.arrive(items, Some(r), "w2");
    let second = batcher.decide(at(0)).transaction.expect("a transaction");
    assert_eq!(
        seqs(&second.items),
        [10, 11, 12, 13],
        "the first batch's starts go now"
    );
    assert_eq!(second.release, ["r1"]);
}

#[test]
fn a_long_run_of_rejections_is_refused_and_held_starts_still_go() {
    let mut batcher = TestBatcher::new(settings());
    // A full batch holds one start.
    let full = vec![
        event(1, "p", start("open")),
        item_at(2, true),
        item_at(3, true),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    assert_eq!(batcher.decide(at(0)).poison, Poison::Cleared);
    batcher.finished();
    // Two rejected, then two more across batches: the run reaches 3.
    batcher.arrive(vec![item_at(5, false), item_at(6, false)], Some("r2"), "w2");
    let next = batcher.decide(at(0));
    assert_eq!(next.poison, Poison::Cleared);
    assert_eq!(seqs(&next.transaction.expect("accepted").items), [1, 5, 6]);
    batcher.finished();
    batcher.arrive(vec![item_at(7, false)], Some("r3"), "w3");
    let refused = batcher.decide(at(0));
    assert_eq!(refused.poison, Poison::Tripped(3));
    assert_eq!(refused.refused, ["w3"]);
    assert!(refused.transaction.is_none(), "nothing held is left");
    // The refused sender retries the same entries: refused again, while a
    // good entry at the head of the retry resets the run.
    batcher.arrive(vec![item_at(7, false)], None, "w3-again");
    assert_eq!(batcher.decide(at(0)).poison, Poison::Tripped(3));
    batcher.arrive(vec![item_at(8, true), item_at(7, false)], None, "w4");
    let next = batcher.decide(at(0));
    assert_eq!(next.poison, Poison::Cleared);
    assert_eq!(next.transaction.expect("accepted").waiters, ["w4"]);
}

#[test]
fn a_refusal_still_stores_what_was_held() {
    let mut batcher = TestBatcher::new(BatcherSettings {
        poison_run: 2,
        ..settings()
    });
    let full = vec![
        event(1, "p", start("open")),
        item_at(2, true),
        item_at(3, true),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    let _ = batcher.decide(at(0));
    batcher.finished();
    batcher.arrive(vec![item_at(5, false), item_at(6, false)], Some("r2"), "w2");
    let next = batcher.decide(at(0));
    assert_eq!(next.refused, ["w2"]);
    let transaction = next.transaction.expect("the held start");
    assert_eq!(seqs(&transaction.items), [1]);
    assert_eq!(transaction.release, ["r1"]);
}

fn steady(hold_ms: u64) -> BatcherSettings {
    BatcherSettings {
        hold_starts: Duration::from_millis(hold_ms),
        ..settings()
    }
}

#[test]
fn outside_a_backlog_starts_are_held_only_when_asked() {
    let short = || vec![event(1, "p", start("a")), item_at(2, true)];
    let mut batcher = TestBatcher::new(settings());
    batcher.arrive(short(), Some("r1"), "w1");
    let next = batcher.decide(at(0));
    assert_eq!(next.held, 0);
    let written = next.transaction.expect("a transaction");
    assert_eq!(seqs(&written.items), [1, 2]);
    assert_eq!(written.release, ["r1"]);

    let mut batcher = TestBatcher::new(steady(500));
    batcher.arrive(short(), Some("r1"), "w1");
    let next = batcher.decide(at(0));
    assert_eq!(next.held, 1);
    let written = next.transaction.expect("a transaction");
    assert_eq!(seqs(&written.items), [2]);
    assert_eq!(written.waiters, ["w1"], "the sender reads on at once");
    assert!(written.release.is_empty(), "r1 stays with the held start");
}

/// Steady state: a start waits across transactions until its end arrives,
/// and goes alone once held `hold_starts`; a batch's reservation goes with
/// the last of its held starts.
#[test]
fn a_held_start_meets_its_end_in_a_later_transaction_or_goes_alone_when_due() {
    let mut batcher = TestBatcher::new(steady(500));
    batcher.arrive(
        vec![event(1, "p", start("a")), event(2, "p", start("b"))],
        Some("r1"),
        "w1",
    );
    assert_eq!(batcher.decide(at(0)).held, 2);
    batcher.finished();
    // Two transactions later, the end of `a`: a goes with it, b stays.
    batcher.arrive(vec![item_at(3, true)], Some("r2"), "w2");
    let t = batcher.decide(at(100)).transaction.expect("a transaction");
    assert_eq!(seqs(&t.items), [3]);
    batcher.finished();
    batcher.arrive(vec![event(4, "p", end("a"))], Some("r3"), "w3");
    let next = batcher.decide(at(200));
    assert_eq!(next.held_went_alone, 0);
    let t = next.transaction.expect("a transaction");
    assert_eq!(seqs(&t.items), [1, 4]);
    assert_eq!(t.release, ["r3"], "r1 is still held by b");
    batcher.finished();
    // Nothing arrives: the writer is told when b is due.
    let idle = batcher.decide(at(300));
    assert!(idle.transaction.is_none());
    assert_eq!(idle.wake_at, Some(at(500)));
    let next = batcher.decide(at(500));
    assert_eq!(next.held_went_alone, 1);
    let t = next.transaction.expect("b alone");
    assert_eq!(seqs(&t.items), [2]);
    assert_eq!(t.release, ["r1"]);
    assert!(t.waiters.is_empty());
}

#[test]
fn a_flush_takes_every_held_start() {
    let mut batcher = TestBatcher::new(steady(500));
    batcher.arrive(vec![event(1, "p", start("a"))], Some("r1"), "w1");
    let _ = batcher.decide(at(0));
    batcher.finished();
    batcher.release_held();
    batcher.arrive(Vec::new(), None, "flush");
    let next = batcher.decide(at(1));
    assert_eq!(next.held_went_alone, 1);
    let t = next.transaction.expect("the flush");
    assert_eq!(seqs(&t.items), [1]);
    assert_eq!(t.waiters, ["flush"]);
    assert_eq!(t.release, ["r1"]);
}
