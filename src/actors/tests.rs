//! The consumer and the writer in actix's own test system, with a fake
//! source, a fake writer and a fake store: no Redis, no Postgres.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use clap::Parser;
use futures_util::future::{FutureExt, LocalBoxFuture};
use tokio::sync::Semaphore;

use super::backlog::Backlog;
use super::consumer::{Consumer, Pacing, StopReading};
use super::handover::Handover;
use super::read_pace::ReadPace;
use super::routing::Routing;
use super::stream_source::{SourceError, StreamSource};
use super::writer::{BatchStore, WriteEntries, WriteError, Writer};
use crate::batcher::BatcherSettings;
use crate::config::LimitSettings;
use crate::event::{BatchItem, StreamEntry, StreamId};
use crate::health::Health;
use crate::memory_budget::MemoryBudget;
use crate::parse_pool::ParsePool;
use crate::weighed_read::{Mode, Page, Read};

fn id(seq: u64) -> StreamId {
    StreamId { ms: 1, seq }
}

fn limits() -> LimitSettings {
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        limits: LimitSettings,
    }
    Args::parse_from(["test"]).limits
}

/// What a fake source answers, in order; then, after a millisecond, that
/// nothing is there (as a blocking read that timed out would).
enum Scripted {
    Page(Vec<u64>, &'static str),
    Empty(&'static str),
    Fail,
}

/// Records every mode it is asked to read.
#[derive(Clone)]
struct FakeSource {
    script: Rc<RefCell<VecDeque<Scripted>>>,
    modes: Rc<RefCell<Vec<Mode>>>,
    budget: MemoryBudget,
}

impl FakeSource {
    fn new(script: Vec<Scripted>) -> Self {
        Self {
            script: Rc::new(RefCell::new(script.into())),
            modes: Rc::default(),
            budget: MemoryBudget::new(1 << 20),
        }
    }

    /// The first `reads` modes asked for, in a form easy to compare.
    fn modes(&self, reads: usize) -> Vec<String> {
        self.modes
            .borrow()
            .iter()
            .take(reads)
            .map(|mode| match mode {
                Mode::New => "new".to_owned(),
                Mode::Pending(after) => format!("pending after {after}"),
                Mode::Held(ids) => format!("kept {}", ids.len()),
                Mode::Claim { .. } => "claim".to_owned(),
            })
            .collect()
    }
}

impl StreamSource for FakeSource {
    fn read(&self, mode: Mode, _: usize) -> LocalBoxFuture<'static, Result<Read, SourceError>> {
        self.modes.borrow_mut().push(mode);
        let answer = self.script.borrow_mut().pop_front();
        let budget = self.budget.clone();
        async move {
            let Some(answer) = answer else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Ok(Read::Empty {
                    next: "0-0".to_owned(),
                });
            };
            match answer {
                Scripted::Page(seqs, next) => {
                    let entries = seqs
                        .into_iter()
                        .map(|seq| StreamEntry {
                            id: id(seq),
                            fields: Vec::new(),
                            deliveries: 1,
                        })
                        .collect();
                    let page = Page {
                        entries,
                        next: next.to_owned(),
                        ..Page::default()
                    };
                    Ok(Read::Page(page, budget.acquire(1024).await))
                }
                Scripted::Empty(next) => Ok(Read::Empty {
                    next: next.to_owned(),
                }),
                Scripted::Fail => Err(SourceError::Connect(
                    crate::redis_stream::StreamError::from(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "connection refused",
                    ))),
                )),
            }
        }
        .boxed_local()
    }

    fn wait_for_new(&self, _: String) -> LocalBoxFuture<'static, Result<(), SourceError>> {
        tokio::time::sleep(Duration::from_millis(1))
            .map(Ok)
            .boxed_local()
    }
}

/// A writer that records what it is sent and answers from a script
/// (stored, once the script is exhausted).
struct FakeWriter {
    replies: VecDeque<Result<(), WriteError>>,
    received: Rc<RefCell<Vec<Vec<u64>>>>,
}

impl Actor for FakeWriter {
    type Context = Context<Self>;
}

impl Handler<WriteEntries> for FakeWriter {
    type Result = Result<(), WriteError>;

    fn handle(&mut self, batch: WriteEntries, _: &mut Context<Self>) -> Self::Result {
        let seqs = batch.items.iter().map(|item| item.entry.id.seq).collect();
        self.received.borrow_mut().push(seqs);
        self.replies.pop_front().unwrap_or(Ok(()))
    }
}

struct ConsumerUnderTest {
    consumer: Addr<Consumer>,
    writer: Addr<FakeWriter>,
    source: FakeSource,
    received: Rc<RefCell<Vec<Vec<u64>>>>,
    health: Arc<Health>,
}

/// A consumer's handover (parsing on its own thread) to these writers.
fn consumer_handover(batch_size: usize, writers: Vec<Recipient<WriteEntries>>) -> Handover {
    Handover {
        reader: "c-0".into(),
        stream: "s".into(),
        claims: false,
        parse_pool: ParsePool::new(0),
        limits: limits(),
        batch_size,
        writers,
        backlog: Backlog::default(),
        pace: ReadPace::default(),
        routing: Routing::default(),
    }
}

fn start_consumer(
    script: Vec<Scripted>,
    replies: Vec<Result<(), WriteError>>,
) -> ConsumerUnderTest {
    let received = Rc::<RefCell<Vec<Vec<u64>>>>::default();
    let writer = FakeWriter {
        replies: replies.into(),
        received: received.clone(),
    }
    .start();
    let source = FakeSource::new(script);
    let health = Health::new();
    let handover = consumer_handover(100, vec![writer.clone().recipient()]);
    let consumer = start_reading("c-0", &source, handover, &health);
    ConsumerUnderTest {
        consumer,
        writer,
        source,
        received,
        health,
    }
}

fn start_reading(
    name: &str,
    source: &FakeSource,
    handover: Handover,
    health: &Arc<Health>,
) -> Addr<Consumer> {
    let pacing = Pacing {
        batch_size: 10,
        kept_retry: Duration::from_millis(1),
    };
    Consumer::new(
        name.into(),
        Box::new(source.clone()),
        handover,
        health.clone(),
        pacing,
    )
    .start()
}

/// Lets the actors run until the source has been asked `reads` times.
async fn until_reads(source: &FakeSource, reads: usize) {
    for _ in 0..2000 {
        if source.modes.borrow().len() >= reads {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "only {} reads: {:?}",
        source.modes.borrow().len(),
        source.modes(reads)
    );
}

/// Two pending entries, the end of the pending ones, then one new entry.
fn pending_then_new() -> Vec<Scripted> {
    vec![
        Scripted::Page(vec![1, 2], "1-2"),
        Scripted::Empty("0-0"),
        Scripted::Page(vec![3], "1-3"),
    ]
}

#[actix_rt::test]
async fn a_consumer_reads_its_pending_entries_then_new_ones() {
    let test = start_consumer(pending_then_new(), vec![]);
    until_reads(&test.source, 4).await;
    assert_eq!(
        test.source.modes(4),
        ["pending after 0-0", "pending after 1-2", "new", "new"]
    );
    assert_eq!(*test.received.borrow(), [vec![1, 2], vec![3]]);
}

#[actix_rt::test]
async fn a_refused_batch_is_reloaded_as_kept_not_re_read() {
    let test = start_consumer(
        vec![
            Scripted::Empty("0-0"),
            Scripted::Page(vec![1, 2, 3], "1-3"),
            Scripted::Page(vec![1, 2, 3], "0-0"),
        ],
        vec![Err(WriteError::Poisoned(1000))],
    );
    until_reads(&test.source, 4).await;
    assert_eq!(
        test.source.modes(4),
        ["pending after 0-0", "new", "kept 3", "new"]
    );
    assert_eq!(*test.received.borrow(), [vec![1, 2, 3], vec![1, 2, 3]]);
}

#[actix_rt::test]
async fn a_batch_not_stored_is_re_read_from_own_pending_entries() {
    let test = start_consumer(
        vec![Scripted::Empty("0-0"), Scripted::Page(vec![5], "1-5")],
        vec![Err(WriteError::Stopped)],
    );
    until_reads(&test.source, 3).await;
    assert_eq!(
        test.source.modes(3),
        ["pending after 0-0", "new", "pending after 0-0"]
    );
}

#[actix_rt::test]
async fn a_failed_read_is_retried_in_the_same_mode() {
    let test = start_consumer(vec![Scripted::Fail, Scripted::Empty("0-0")], vec![]);
    until_reads(&test.source, 3).await;
    assert_eq!(
        test.source.modes(3),
        ["pending after 0-0", "pending after 0-0", "new"]
    );
    assert!(test.received.borrow().is_empty());
}

#[actix_rt::test]
async fn a_consumer_whose_writer_is_gone_stops() {
    let test = start_consumer(vec![Scripted::Page(vec![1], "1-1")], vec![]);
    test.writer
        .send(StopFake)
        .await
        .expect("the fake writer answers");
    for _ in 0..2000 {
        if !test.consumer.connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the consumer is still running");
}

#[actix_rt::test]
async fn a_draining_consumer_reads_no_more() {
    let test = start_consumer(vec![Scripted::Page(vec![1], "1-1")], vec![]);
    until_reads(&test.source, 2).await;
    test.health.start_draining();
    test.consumer.send(StopReading).await.expect("stops");
    let reads = test.source.modes.borrow().len();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(test.source.modes.borrow().len(), reads);
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopFake;

impl Handler<StopFake> for FakeWriter {
    type Result = ();

    fn handle(&mut self, _: StopFake, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// A store whose transactions finish only when the test lets them, and
/// that records each transaction's entries.
#[derive(Clone)]
struct GatedStore {
    gate: Arc<Semaphore>,
    stored: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Default for GatedStore {
    fn default() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            stored: Arc::default(),
        }
    }
}

impl BatchStore for GatedStore {
    fn store(
        &self,
        items: Vec<BatchItem>,
        _: crate::batch_span::Transaction,
    ) -> LocalBoxFuture<'static, ()> {
        let (gate, stored) = (self.gate.clone(), self.stored.clone());
        async move {
            gate.acquire().await.expect("open").forget();
            let seqs = items.iter().map(|item| item.entry.id.seq).collect();
            stored.lock().expect("not poisoned").push(seqs);
        }
        .boxed_local()
    }
}

fn batch(seqs: &[u64], budget: Option<crate::memory_budget::Reservation>) -> WriteEntries {
    let items = seqs
        .iter()
        .map(|&seq| {
            let entry = StreamEntry {
                id: id(seq),
                fields: Vec::new(),
                deliveries: 1,
            };
            // Fields missing: a rejected entry, which is all a store needs.
            let parsed = crate::event::parse_entry(&entry, &limits().entry());
            BatchItem { entry, parsed }
        })
        .collect();
    WriteEntries {
        items,
        reservation: budget,
        span: Default::default(),
        full_page: false,
        turn: None,
    }
}

fn start_writer(store: &GatedStore, poison_run: u64) -> (Addr<Writer>, Arc<Health>) {
    start_writer_paced(store, poison_run, None)
}

fn start_writer_paced(
    store: &GatedStore,
    poison_run: u64,
    pace: Option<ReadPace>,
) -> (Addr<Writer>, Arc<Health>) {
    let health = Health::new();
    let settings = BatcherSettings {
        read_batch_size: 100,
        write_batch_size: 100,
        poison_run,
        lingers: false,
        hold_starts: Duration::ZERO,
        backlog_wait: Duration::from_millis(250),
    };
    let writer = Writer::start(
        Box::new(store.clone()),
        health.clone(),
        settings,
        Duration::ZERO,
        None,
        pace,
    );
    (writer, health)
}

/// Two consumers and the first writer timed by one pace: while the writer
/// commits one consumer's page, the other reads and hands the next one,
/// which the writer starts once that commit ends.
#[actix_rt::test]
async fn the_next_page_is_read_while_the_last_one_commits() {
    let store = GatedStore::default();
    let pace = ReadPace::default();
    let (writer, health) = start_writer_paced(&store, 0, Some(pace.clone()));
    let mut handover = consumer_handover(100, vec![writer.recipient()]);
    handover.pace = pace;
    let sources: Vec<FakeSource> = [1, 2]
        .into_iter()
        .map(|seq| {
            FakeSource::new(vec![
                Scripted::Empty("0-0"),
                Scripted::Page(vec![seq], "1-9"),
            ])
        })
        .collect();
    let _consumers: Vec<Addr<Consumer>> = sources
        .iter()
        .enumerate()
        .map(|(i, source)| start_reading(&format!("c-{i}"), source, handover.clone(), &health))
        .collect();
    for source in &sources {
        until_reads(source, 2).await;
    }
    // Both pages read while the first transaction is held at the gate.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.stored.lock().unwrap().is_empty());
    for source in &sources {
        assert_eq!(source.modes(2), ["pending after 0-0", "new"]);
    }
    store.gate.add_permits(2);
    for _ in 0..2000 {
        if store.stored.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut stored = store.stored.lock().unwrap().clone();
    stored.sort();
    assert_eq!(
        stored,
        [vec![1], vec![2]],
        "two transactions, one after the other"
    );
}

#[actix_rt::test]
async fn batches_sent_during_a_transaction_go_together_and_are_answered_after_it() {
    let store = GatedStore::default();
    let (writer, _) = start_writer(&store, 0);
    let budget = MemoryBudget::new(1 << 20);
    let first = writer.send(batch(&[1], Some(budget.acquire(4096).await)));
    let second = writer.send(batch(&[2], Some(budget.acquire(4096).await)));
    let third = writer.send(batch(&[3], None));
    let (first, second, third) = (
        first.boxed_local(),
        second.boxed_local(),
        third.boxed_local(),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(store.stored.lock().unwrap().is_empty(), "held at the gate");
    assert_eq!(
        budget.in_hand_bytes(),
        8192,
        "nothing released before its commit"
    );
    store.gate.add_permits(1);
    assert!(first.await.expect("answered").is_ok());
    store.gate.add_permits(1);
    assert!(second.await.expect("answered").is_ok());
    assert!(third.await.expect("answered").is_ok());
    assert_eq!(*store.stored.lock().unwrap(), [vec![1], vec![2, 3]]);
    assert_eq!(budget.in_hand_bytes(), 0);
}

#[actix_rt::test]
async fn a_run_of_bad_entries_is_refused_and_turns_readiness_off() {
    let store = GatedStore::default();
    store.gate.add_permits(10);
    let (writer, health) = start_writer(&store, 3);
    let refused = writer
        .send(batch(&[1, 2, 3], None))
        .await
        .expect("answered");
    assert!(
        matches!(refused, Err(WriteError::Poisoned(3))),
        "{refused:?}"
    );
    assert!(health.readiness().poisoned);
    assert!(store.stored.lock().unwrap().is_empty(), "nothing stored");
}

/// Observation starts of trace `t`, which parse as events with no end.
fn open_starts(
    seqs: std::ops::RangeInclusive<u64>,
    budget: crate::memory_budget::Reservation,
) -> WriteEntries {
    let items = seqs
        .map(|seq| {
            let observation = format!("o{seq}");
            let fields = [
                ("event_type", "observation_start"),
                ("trace_id", "t"),
                ("project_id", "p"),
                ("observation_id", observation.as_str()),
                ("timestamp", "1764000000.5"),
                ("data", "{}"),
            ];
            let entry = entry_of(seq, &fields);
            let parsed = crate::event::parse_entry(&entry, &limits().entry());
            assert!(parsed.is_ok(), "{parsed:?}");
            BatchItem { entry, parsed }
        })
        .collect();
    WriteEntries {
        items,
        reservation: Some(budget),
        span: Default::default(),
        full_page: false,
        turn: None,
    }
}

#[actix_rt::test]
async fn starts_held_at_the_end_of_a_backlog_are_written_alone_after_the_wait() {
    let store = GatedStore::default();
    store.gate.add_permits(10);
    let (writer, _) = start_writer(&store, 0);
    let budget = MemoryBudget::new(1 << 20);
    // A full read (a backlog) of starts whose ends never come.
    let answered = writer
        .send(open_starts(1..=100, budget.acquire(4096).await))
        .await
        .expect("answered");
    assert!(answered.is_ok(), "the sender is answered at once");
    assert_eq!(budget.in_hand_bytes(), 4096, "held with its starts");
    // No batch follows: the held starts go alone once the wait is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.stored.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = store.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored[0].is_empty(), "every start was held");
    assert_eq!(stored[1], (1..=100).collect::<Vec<u64>>());
    assert_eq!(budget.in_hand_bytes(), 0);
}

/// A stream entry of these fields, delivered once.
fn entry_of(seq: u64, fields: &[(&str, &str)]) -> StreamEntry {
    StreamEntry {
        id: id(seq),
        fields: fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec().into(), v.as_bytes().to_vec().into()))
            .collect(),
        deliveries: 1,
    }
}

/// A trace_start of `trace`, as the seed publishes it.
fn trace_start_entry(seq: u64, trace: &str) -> StreamEntry {
    entry_of(
        seq,
        &[
            ("event_type", "trace_start"),
            ("trace_id", trace),
            ("project_id", "p"),
            ("timestamp", "1762336800.25"),
            ("data", r#"{"name":"chat"}"#),
        ],
    )
}

#[actix_rt::test]
async fn a_full_page_is_split_over_the_writers_and_a_short_one_goes_whole_to_the_first() {
    let received: Vec<Rc<RefCell<Vec<Vec<u64>>>>> = (0..2).map(|_| Rc::default()).collect();
    let writers = received
        .iter()
        .map(|received| {
            FakeWriter {
                replies: VecDeque::new(),
                received: received.clone(),
            }
            .start()
            .recipient()
        })
        .collect();
    let handover = consumer_handover(20, writers);
    let budget = MemoryBudget::new(1 << 20);
    let page = |seqs: std::ops::Range<u64>| Page {
        entries: seqs
            .map(|seq| trace_start_entry(seq, &format!("trace-{seq}")))
            .collect(),
        next: "0-0".to_owned(),
        ..Page::default()
    };
    let received_by = |writer: usize| received[writer].borrow().concat();

    let short = handover
        .hand(page(0..19), budget.acquire(1024).await, None)
        .await;
    assert!(matches!(short, Some(super::handover::Handed::Stored)));
    assert_eq!(
        received_by(0),
        (0..19).collect::<Vec<_>>(),
        "whole, in order"
    );
    assert!(received_by(1).is_empty(), "{:?}", received_by(1));

    received[0].borrow_mut().clear();
    let full = handover
        .hand(page(100..120), budget.acquire(1024).await, None)
        .await;
    assert!(matches!(full, Some(super::handover::Handed::Stored)));
    let (first, second) = (received_by(0), received_by(1));
    assert!(
        !first.is_empty() && !second.is_empty(),
        "{first:?} / {second:?}"
    );
    let mut all = [first, second].concat();
    all.sort_unstable();
    assert_eq!(all, (100..120).collect::<Vec<_>>());
    assert_eq!(budget.in_hand_bytes(), 0, "every share is given back");
}
