//! A page of the stream followed from its read to its XACK.
//!
//! Each page that a consumer reads or the claimer claims gets a `batch` span
//! (stream, consumer, first and last entry id, entries, bytes), the root of
//! its own trace. It travels with the entries to the writer, whose
//! transactions may hold several pages, and a page's entries may be split
//! over two transactions (starts held for the next one). So the writer keeps
//! the open pages ([`Pages`]) and gives each transaction a `write` span, a
//! child of its first page's span and linked (follows-from) to the others;
//! when the last entry of a page is acked, the page's span records its
//! outcome (stored, expired, dead-lettered and acked counts, `ok`) and ends.
//! A page that the writer refuses or never answers for ends with `error`.
//!
//! Spans go wherever `tracing` sends them: into every log line written
//! inside them, and over OTLP when [`crate::telemetry`] exports them.

use foldhash::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::Empty;
use tracing::span::EnteredSpan;
use tracing::Span;

use crate::event::{BatchItem, Parsed, StreamEntry, StreamId};

/// How the entries of a page or a transaction ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Written: trace events into the studio's rows, heartbeats into theirs.
    pub stored: u64,
    /// Events of a trace past its retention horizon: acked, no row.
    pub expired: u64,
    pub dead_lettered: u64,
    /// Acked once their transaction committed (all of the above, unless
    /// the XACK failed: then they stay pending and are claimed again).
    pub acked: u64,
}

impl Tally {
    fn count(&mut self, item: &BatchItem, acked: bool) {
        match &item.parsed {
            Ok(Parsed::Trace(_) | Parsed::Heartbeat(_)) => self.stored += 1,
            Ok(Parsed::Expired(_)) => self.expired += 1,
            Err(_) => self.dead_lettered += 1,
        }
        self.acked += u64::from(acked);
    }

    /// As signed integers: OTLP has no unsigned ones, and `tracing` would
    /// send a `u64` as text.
    fn record(&self, span: &Span) {
        span.record("stored", self.stored as i64);
        span.record("expired", self.expired as i64);
        span.record("dead_lettered", self.dead_lettered as i64);
        span.record("acked", self.acked as i64);
    }
}

/// One page's span, shared by its reader and the writer; empty for a
/// message that carries no page (the writer's own flush).
#[derive(Clone, Default)]
pub struct BatchSpan(Option<Arc<Page>>);

struct Page {
    /// The page's first entry id: how a transaction names its pages.
    first: StreamId,
    state: Mutex<PageState>,
}

struct PageState {
    /// Taken when the page ends, so that the span closes then and not when
    /// the last handle happens to go.
    span: Option<Span>,
    /// Ids of the page not yet in a transaction.
    waiting: HashSet<StreamId>,
    /// Ids in a transaction not yet settled.
    writing: usize,
    tally: Tally,
    /// Why an XACK failed for some of its entries.
    ack_failed: bool,
}

impl BatchSpan {
    /// The span of a page just read (`claimed`: by the claimer), before its
    /// entries are parsed; empty for an empty page.
    pub fn read(
        stream: &str,
        consumer: &str,
        claimed: bool,
        entries: &[StreamEntry],
        bytes: u64,
    ) -> Self {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Self(None);
        };
        let span = tracing::info_span!(
            parent: None,
            "batch",
            stream,
            consumer,
            claimed,
            first_id = %first.id,
            last_id = %last.id,
            entries = entries.len() as i64,
            bytes = bytes as i64,
            stored = Empty,
            expired = Empty,
            dead_lettered = Empty,
            acked = Empty,
            outcome = Empty,
            error = Empty,
            otel.status_code = Empty,
        );
        let state = PageState {
            span: Some(span),
            waiting: entries.iter().map(|entry| entry.id).collect(),
            writing: 0,
            tally: Tally::default(),
            ack_failed: false,
        };
        Self(Some(Arc::new(Page {
            first: first.id,
            state: Mutex::new(state),
        })))
    }

    /// The page's span, entered (none once the page has ended): log lines
    /// written while the guard lives carry it.
    pub fn entered(&self) -> EnteredSpan {
        self.0
            .as_ref()
            .and_then(|page| page.lock().span.clone())
            .unwrap_or_else(Span::none)
            .entered()
    }

    /// The writer's answer has come: a refusal or a lost writer ends the
    /// page with `error` (what was acked of it so far stays counted). An
    /// `Ok` answer leaves the page to the writer, which ends it at its last
    /// XACK. Returns the page's span entered, for the reader's log lines.
    pub fn answered<E: Display, F: Display>(
        &self,
        reply: &Result<Result<(), E>, F>,
    ) -> EnteredSpan {
        let entered = self.entered();
        let error = match reply {
            Ok(Ok(())) => return entered,
            Ok(Err(error)) => error.to_string(),
            Err(error) => format!("writer unavailable: {error}"),
        };
        if let Some(page) = &self.0 {
            page.lock().end(Some(&error));
        }
        entered
    }
}

impl Page {
    fn lock(&self) -> MutexGuard<'_, PageState> {
        // A panic while the lock was held leaves counts at worst incomplete.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PageState {
    /// Records the outcome and closes the span now.
    fn end(&mut self, error: Option<&str>) {
        let Some(span) = self.span.take() else {
            return;
        };
        self.tally.record(&span);
        match error {
            None => {
                span.record("outcome", "ok");
                span.record("otel.status_code", "ok");
            }
            Some(error) => {
                span.record("outcome", "error");
                span.record("error", error);
                span.record("otel.status_code", "error");
            }
        }
        // Entering sets the span's end time: now, at the XACK. The line
        // shows the outcome in the logs at debug level.
        span.in_scope(|| tracing::debug!("batch done"));
    }
}

impl Drop for Page {
    /// A page dropped before it ended (its parsing panicked, say) was not
    /// stored: its entries stay pending and are read again.
    fn drop(&mut self) {
        self.lock().end(Some(
            "dropped before its entries were acked; they stay pending",
        ));
    }
}

/// The writer's pages with entries not yet settled, in arrival order.
#[derive(Default)]
pub struct Pages(Vec<Arc<Page>>);

impl Pages {
    /// Keeps a page that has arrived; forgets those that have ended.
    pub fn add(&mut self, page: BatchSpan) {
        self.0.retain(|page| page.lock().span.is_some());
        self.0.extend(page.0);
    }

    /// Assigns each of `items` to an open page that holds its id and has
    /// not given it to a transaction yet (so that an entry read twice, by a
    /// consumer and by the claimer, counts once in each page), and opens the
    /// transaction's span over those pages. Items come grouped by page, so
    /// the page of the previous item is tried first.
    pub fn transaction(&mut self, items: &[BatchItem]) -> Transaction {
        if items.is_empty() {
            // Nothing to write (a flush with nothing in hand): no span.
            return Transaction {
                pages: Vec::new(),
                span: Span::none(),
            };
        }
        let open = self.0.len();
        // Index in `self.0` → index in `pages`.
        let mut slots: Vec<Option<usize>> = vec![None; open];
        let mut pages: Vec<(Arc<Page>, Vec<StreamId>)> = Vec::new();
        let mut last = 0;
        for item in items {
            let id = item.entry.id;
            let holder = (last..open)
                .chain(0..last)
                .find(|&at| self.0[at].lock().waiting.remove(&id));
            let Some(at) = holder else {
                continue;
            };
            last = at;
            let slot = *slots[at].get_or_insert_with(|| {
                pages.push((self.0[at].clone(), Vec::new()));
                pages.len() - 1
            });
            pages[slot].1.push(id);
        }
        for (page, ids) in &pages {
            page.lock().writing += ids.len();
        }
        let span = transaction_span(&pages, items.len());
        Transaction { pages, span }
    }
}

/// The `write` span: a child of the first page's span, following the others.
fn transaction_span(pages: &[(Arc<Page>, Vec<StreamId>)], entries: usize) -> Span {
    let spans: Vec<Span> = pages
        .iter()
        .filter_map(|(page, _)| page.lock().span.clone())
        .collect();
    let batches = pages
        .iter()
        .map(|(page, _)| page.first.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let parent = spans.first().and_then(Span::id);
    let span = tracing::info_span!(
        parent: parent,
        "write",
        entries = entries as i64,
        pages = pages.len() as i64,
        batches,
        stored = Empty,
        expired = Empty,
        dead_lettered = Empty,
        acked = Empty,
        outcome = Empty,
        otel.status_code = Empty,
    );
    for other in spans.iter().skip(1) {
        span.follows_from(other);
    }
    span
}

/// One writer transaction over parts of one or more pages.
pub struct Transaction {
    /// Each page with the ids of it that this transaction holds.
    pages: Vec<(Arc<Page>, Vec<StreamId>)>,
    span: Span,
}

impl Transaction {
    /// The transaction's `write` span, to run its commit and XACK in.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// After the XACK (`acked`: it succeeded): counts each entry into its
    /// page and the transaction, and ends the pages that have nothing left.
    pub fn settle(self, items: &[BatchItem], acked: bool) {
        let by_id: HashMap<StreamId, &BatchItem> =
            items.iter().map(|item| (item.entry.id, item)).collect();
        let mut total = Tally::default();
        items.iter().for_each(|item| total.count(item, acked));
        total.record(&self.span);
        let outcome = if acked { "ok" } else { "error" };
        self.span.record("outcome", outcome);
        self.span.record("otel.status_code", outcome);
        for (page, ids) in &self.pages {
            let mut state = page.lock();
            for id in ids {
                if let Some(item) = by_id.get(id) {
                    state.tally.count(item, acked);
                }
            }
            state.writing -= ids.len();
            state.ack_failed |= !acked;
            if state.waiting.is_empty() && state.writing == 0 {
                let error = state
                    .ack_failed
                    .then_some("xack failed: the entries stay pending and are claimed again");
                state.end(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Heartbeat, Json, Reason, Rejection};

    fn entry(seq: u64) -> StreamEntry {
        StreamEntry {
            id: StreamId { ms: 1, seq },
            fields: Vec::new(),
            deliveries: 1,
        }
    }

    fn rejected(seq: u64) -> BatchItem {
        BatchItem {
            entry: entry(seq),
            parsed: Err(Rejection::new(Reason::InvalidData, "bad")),
        }
    }

    fn heartbeat(seq: u64) -> BatchItem {
        BatchItem {
            entry: entry(seq),
            parsed: Ok(Parsed::Heartbeat(Heartbeat {
                entry_id: StreamId { ms: 1, seq },
                project_id: "p".to_owned(),
                sdk_version: None,
                published_at: chrono::DateTime::UNIX_EPOCH,
                metadata: Json::from_value(&serde_json::Value::Null),
            })),
        }
    }

    fn page(seqs: &[u64]) -> BatchSpan {
        let entries: Vec<StreamEntry> = seqs.iter().map(|seq| entry(*seq)).collect();
        BatchSpan::read("s", "c", false, &entries, 0)
    }

    fn open(page: &BatchSpan) -> bool {
        page.0
            .as_ref()
            .is_some_and(|page| page.lock().span.is_some())
    }

    fn tally(page: &BatchSpan) -> Tally {
        page.0.as_ref().map(|page| page.lock().tally).unwrap()
    }

    #[test]
    fn a_page_split_over_two_transactions_ends_with_the_second() {
        let (a, b) = (page(&[1, 2, 3]), page(&[4]));
        let mut pages = Pages::default();
        pages.add(a.clone());
        pages.add(b.clone());
        // Entry 3 is held for the next transaction.
        let first = vec![heartbeat(1), rejected(2), heartbeat(4)];
        let transaction = pages.transaction(&first);
        assert_eq!(transaction.pages.len(), 2);
        transaction.settle(&first, true);
        assert!(open(&a) && !open(&b));
        let second = vec![heartbeat(3)];
        pages.transaction(&second).settle(&second, true);
        assert!(!open(&a));
        let expected = Tally {
            stored: 2,
            expired: 0,
            dead_lettered: 1,
            acked: 3,
        };
        assert_eq!(tally(&a), expected);
    }

    #[test]
    fn an_entry_in_two_pages_counts_once_in_each() {
        let (read, claimed) = (page(&[1, 2]), page(&[2]));
        let mut pages = Pages::default();
        pages.add(read.clone());
        pages.add(claimed.clone());
        let items = vec![heartbeat(1), heartbeat(2), heartbeat(2)];
        pages.transaction(&items).settle(&items, false);
        assert!(!open(&read) && !open(&claimed));
        assert_eq!(tally(&read).stored, 2);
        assert_eq!(tally(&claimed).stored, 1);
        assert_eq!(tally(&claimed).acked, 0);
    }

    #[test]
    fn a_refused_page_ends_with_its_reader() {
        let refused = page(&[1]);
        let mut pages = Pages::default();
        pages.add(refused.clone());
        let reply: Result<Result<(), String>, String> = Ok(Err("poisoned".into()));
        drop(refused.answered(&reply));
        assert!(!open(&refused));
        // Ended pages are forgotten by the next arrival.
        pages.add(BatchSpan::default());
        assert!(pages.0.is_empty());
    }
}
