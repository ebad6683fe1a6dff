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
    }
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
    let first = batcher.decide().transaction.expect("a transaction");
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
    assert!(batcher.decide().transaction.is_none());
    batcher.finished();
    let second = batcher.decide().transaction.expect("the gathered batches");
    assert_eq!(seqs(&second.items), [2, 3]);
    assert_eq!(second.waiters, ["w2", "w3"]);
    assert_eq!(second.release, ["r2"]);
    batcher.finished();
    assert!(batcher.decide().transaction.is_none(), "nothing left");
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
    let transaction = batcher.decide().transaction.expect("a transaction");
    assert_eq!(seqs(&transaction.items), [1, 2, 3]);
}

#[test]
fn an_empty_arrival_is_a_flush_answered_by_the_next_transaction() {
    let mut batcher = TestBatcher::new(settings());
    batcher.arrive(vec![item_at(1, true)], None, "w1");
    let _in_flight = batcher.decide();
    assert_eq!(batcher.arrive(Vec::new(), None, "flush"), Arrival::Wait);
    batcher.finished();
    let transaction = batcher
        .decide()
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
    let next = batcher.decide();
    assert_eq!(next.deferred, 1);
    let first = next.transaction.expect("a transaction");
    assert_eq!(seqs(&first.items), [2, 3, 4]);
    assert_eq!(first.waiters, ["w1"]);
    assert!(
        first.release.is_empty(),
        "r1 is still in hand: its start is deferred"
    );
    batcher.finished();
    // With no arrival the deferred start waits for the next batch (its end
    // is there), until the writer says it is due: then it goes alone, and
    // releases r1 with it.
    let waiting = batcher.decide();
    assert!(waiting.transaction.is_none());
    assert!(waiting.awaiting_batch);
    batcher.deferred_due();
    let second = batcher.decide().transaction.expect("the deferred start");
    assert_eq!(seqs(&second.items), [1]);
    assert_eq!(second.release, ["r1"]);
    assert!(second.waiters.is_empty());
    batcher.finished();
    let idle = batcher.decide();
    assert!(idle.transaction.is_none());
    assert!(!idle.awaiting_batch, "nothing is deferred any more");
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
    assert_eq!(batcher.decide().deferred, 0, "a short page: no backlog");

    let mut batcher = TestBatcher::new(settings());
    batcher.page_was_full();
    batcher.arrive(part(), Some("r1"), "w1");
    let next = batcher.decide();
    assert_eq!(next.deferred, 1);
    assert_eq!(
        seqs(&next.transaction.expect("a transaction").items),
        [2, 3]
    );
    // The mark goes with the batch it came with.
    batcher.finished();
    batcher.arrive(vec![event(4, "p", start("later"))], Some("r2"), "w2");
    let after = batcher.decide();
    assert_eq!(after.deferred, 0);
    assert_eq!(
        seqs(&after.transaction.expect("a transaction").items),
        [1, 4]
    );
}

#[test]
fn deferred_starts_wait_for_the_next_batch_and_meet_their_ends_in_it() {
    let mut batcher = TestBatcher::new(settings());
    let full = vec![
        event(1, "p", start("a")),
        event(2, "p", start("b")),
        item_at(3, true),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    assert_eq!(batcher.decide().deferred, 2);
    batcher.finished();
    assert!(batcher.decide().awaiting_batch);
    // The next page, with the ends, arrives before the writer's wait ends.
    batcher.arrive(
        vec![event(5, "p", end("a")), event(6, "p", end("b"))],
        Some("r2"),
        "w2",
    );
    let next = batcher.decide();
    let transaction = next.transaction.expect("starts and ends together");
    assert_eq!(seqs(&transaction.items), [1, 2, 5, 6]);
    assert_eq!(transaction.release, ["r1", "r2"]);
    assert_eq!(transaction.waiters, ["w2"]);
    batcher.finished();
    // A later wait that ends is not left set for the next deferral.
    batcher.deferred_due();
    batcher.arrive(
        vec![
            event(7, "p", start("c")),
            item_at(8, true),
            item_at(9, true),
            item_at(10, true),
        ],
        Some("r3"),
        "w3",
    );
    assert_eq!(batcher.decide().deferred, 1);
    batcher.finished();
    assert!(
        batcher.decide().awaiting_batch,
        "the new deferral waits again"
    );
}

#[test]
fn a_deferred_start_is_never_deferred_twice() {
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
    let first = batcher.decide().transaction.expect("a transaction");
    assert!(first.items.is_empty());
    batcher.finished();
    let (items, r) = full(20, "r2");
    batcher.arrive(items, Some(r), "w2");
    let second = batcher.decide().transaction.expect("a transaction");
    assert_eq!(
        seqs(&second.items),
        [10, 11, 12, 13],
        "the first batch's starts go now"
    );
    assert_eq!(second.release, ["r1"]);
}

#[test]
fn a_long_run_of_rejections_is_refused_and_deferred_starts_still_go() {
    let mut batcher = TestBatcher::new(settings());
    // A full batch defers one start.
    let full = vec![
        event(1, "p", start("open")),
        item_at(2, true),
        item_at(3, true),
        item_at(4, true),
    ];
    batcher.arrive(full, Some("r1"), "w1");
    assert_eq!(batcher.decide().poison, Poison::Cleared);
    batcher.finished();
    // Two rejected, then two more across batches: the run reaches 3.
    batcher.arrive(vec![item_at(5, false), item_at(6, false)], Some("r2"), "w2");
    let next = batcher.decide();
    assert_eq!(next.poison, Poison::Cleared);
    assert_eq!(seqs(&next.transaction.expect("accepted").items), [1, 5, 6]);
    batcher.finished();
    batcher.arrive(vec![item_at(7, false)], Some("r3"), "w3");
    let refused = batcher.decide();
    assert_eq!(refused.poison, Poison::Tripped(3));
    assert_eq!(refused.refused, ["w3"]);
    assert!(refused.transaction.is_none(), "nothing deferred is left");
    // The refused sender retries the same entries: refused again, while a
    // good entry at the head of the retry resets the run.
    batcher.arrive(vec![item_at(7, false)], None, "w3-again");
    assert_eq!(batcher.decide().poison, Poison::Tripped(3));
    batcher.arrive(vec![item_at(8, true), item_at(7, false)], None, "w4");
    let next = batcher.decide();
    assert_eq!(next.poison, Poison::Cleared);
    assert_eq!(next.transaction.expect("accepted").waiters, ["w4"]);
}

#[test]
fn a_refusal_still_stores_what_was_deferred() {
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
    let _ = batcher.decide();
    batcher.finished();
    batcher.arrive(vec![item_at(5, false), item_at(6, false)], Some("r2"), "w2");
    let next = batcher.decide();
    assert_eq!(next.refused, ["w2"]);
    let transaction = next.transaction.expect("the deferred start");
    assert_eq!(seqs(&transaction.items), [1]);
    assert_eq!(transaction.release, ["r1"]);
}
