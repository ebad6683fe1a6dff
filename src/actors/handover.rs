//! Handing a page to the writers, the same way for consumers and the
//! claimer: parse it on the parse pool, send each writer the entries of its
//! traces, await their commits.

use actix::{MailboxError, Recipient};
use futures_util::future::join_all;

use super::backlog::Backlog;
use super::read_pace::{ReadPace, ReadTurn};
use super::routing::Routing;
use super::writer::{WriteEntries, WriteError};
use crate::batch_span::BatchSpan;
use crate::config::LimitSettings;
use crate::event::{BatchItem, StreamId};
use crate::memory_budget::Reservation;
use crate::metrics as m;
use crate::parse_pool::ParsePool;
use crate::weighed_read::Page;

/// What became of a page handed to the writer.
#[derive(Debug)]
pub enum Handed {
    /// Committed and acked.
    Stored,
    /// Poison protection refused it (the run of bad entries): still pending.
    Refused(u64),
    /// Not stored (parsing panicked, or the writer stopped): still pending.
    NotStored,
    /// The writer is gone: still pending, and this reader must stop.
    WriterGone,
}

/// Everything a reader needs to hand pages over.
#[derive(Clone)]
pub struct Handover {
    /// The reader's name in the group, for the logs and spans.
    pub reader: String,
    /// The stream read, for the batch spans.
    pub stream: String,
    /// Whether the reader is the claimer (its pages are claimed ones).
    pub claims: bool,
    pub parse_pool: ParsePool,
    pub limits: LimitSettings,
    /// How many entries a read asks for: a page this long is a backlog,
    /// split over the writers.
    pub batch_size: usize,
    /// The replica's writers: a full page is split over them by trace, a
    /// short one goes to the first ([`Routing`]).
    pub writers: Vec<Recipient<WriteEntries>>,
    /// Which writer has which trace in hand, shared by the replica's readers.
    pub routing: Routing,
    /// Set by each page a consumer reads (full or not): during a backlog
    /// the consumers read at will.
    pub backlog: Backlog,
    /// When consumers read new entries outside a backlog.
    pub pace: ReadPace,
}

impl Handover {
    /// Parses the page's entries and has the writer store them; the writer
    /// gives the reservation back once no entry of it is in hand. `None`
    /// when the page has no entries (only trimmed ids, or nothing). The
    /// turn the page was read with, if any, goes with it to the first
    /// writer, which gives it back once it has the page (dropped with the
    /// page if it never gets there).
    pub async fn hand(
        &self,
        page: Page,
        reservation: Reservation,
        turn: Option<ReadTurn>,
    ) -> Option<Handed> {
        report_trimmed(&page.deleted);
        let entries = page.entries.len();
        if entries == 0 {
            return None;
        }
        if !self.claims {
            // Before parsing and storing it: during a backlog the next
            // consumer reads at once.
            self.backlog.saw_page(entries, self.batch_size);
        }
        Some(self.store(page, reservation, turn).await)
    }

    async fn store(&self, page: Page, reservation: Reservation, turn: Option<ReadTurn>) -> Handed {
        let entries = page.entries.len();
        let batch = BatchSpan::read(
            &self.stream,
            &self.reader,
            self.claims,
            &page.entries,
            reservation.bytes(),
        );
        let items = self
            .parse_pool
            .prepare(
                page.entries,
                reservation.bytes(),
                self.limits.entry(),
                self.limits.max_deliveries,
            )
            .await;
        let mut turn = turn.map(|turn| turn.parsed(std::time::Instant::now()));
        let Ok(items) = items else {
            let _in_batch = batch.entered();
            // A bug in parsing: the entries stay pending and are read again,
            // each time a delivery, until the delivery limit dead-letters them.
            tracing::error!(reader = %self.reader, entries, "parsing a batch panicked; its entries stay pending");
            return Handed::NotStored;
        };
        let full_page = entries >= self.batch_size;
        // Held until every part is answered: the page's traces stay with
        // their writers meanwhile.
        let routed = self.routing.route(&items, full_page, self.writers.len());
        let parts = split_by_writer(items, reservation, &routed.writers);
        let sends: Vec<_> = parts
            .into_iter()
            .map(|(writer, items, reservation)| {
                self.writers[writer].send(WriteEntries {
                    items,
                    reservation: Some(reservation),
                    span: batch.clone(),
                    full_page,
                    // The first writer's transactions time the reads.
                    turn: if writer == 0 { turn.take() } else { None },
                })
            })
            .collect();
        let sent = worst(join_all(sends).await);
        drop(routed);
        // Log lines below carry the batch; a refusal or a lost writer ends it.
        let _in_batch = batch.answered(&sent);
        match sent {
            Ok(Ok(())) => Handed::Stored,
            Ok(Err(WriteError::Poisoned(run))) => {
                tracing::warn!(reader = %self.reader, run, entries, "batch refused by poison protection; kept pending");
                Handed::Refused(run)
            }
            Ok(Err(error)) => {
                tracing::warn!(reader = %self.reader, %error, entries, "batch not stored; it stays pending");
                Handed::NotStored
            }
            Err(_) => Handed::WriterGone,
        }
    }
}

/// The page's items per writer (in their order; `writers[i]` is item i's),
/// each part with its share of the reservation by entry bytes. One part:
/// the page whole.
fn split_by_writer(
    items: Vec<BatchItem>,
    mut reservation: Reservation,
    writers: &[usize],
) -> Vec<(usize, Vec<BatchItem>, Reservation)> {
    let count = writers.iter().max().map_or(1, |&w| w + 1);
    if writers.iter().all(|&w| w == 0) {
        return vec![(0, items, reservation)];
    }
    let mut parts: Vec<Vec<BatchItem>> = (0..count).map(|_| Vec::new()).collect();
    for (item, &writer) in items.into_iter().zip(writers) {
        parts[writer].push(item);
    }
    let bytes =
        |items: &[BatchItem]| -> u64 { items.iter().map(|i| i.entry.byte_size() as u64).sum() };
    let total = parts.iter().map(|p| bytes(p)).sum::<u64>().max(1);
    let reserved = reservation.bytes();
    let mut nonempty: Vec<(usize, Vec<BatchItem>)> = parts
        .into_iter()
        .enumerate()
        .filter(|(_, items)| !items.is_empty())
        .collect();
    // The last part keeps what is left of the reservation.
    let last = nonempty.pop();
    let mut split: Vec<(usize, Vec<BatchItem>, Reservation)> = nonempty
        .into_iter()
        .map(|(writer, items)| {
            let share = reserved * bytes(&items) / total;
            let part = reservation.split_off(share);
            (writer, items, part)
        })
        .collect();
    if let Some((writer, items)) = last {
        split.push((writer, items, reservation));
    }
    split
}

/// The answer that decides what became of the page: the worst of its
/// parts' (a lost writer, then a refusal, then any other failure), or
/// success when every part was stored.
fn worst(
    answers: Vec<Result<Result<(), WriteError>, MailboxError>>,
) -> Result<Result<(), WriteError>, MailboxError> {
    let rank = |answer: &Result<Result<(), WriteError>, MailboxError>| match answer {
        Err(_) => 3,
        Ok(Err(WriteError::Poisoned(_))) => 2,
        Ok(Err(_)) => 1,
        Ok(Ok(())) => 0,
    };
    answers.into_iter().max_by_key(rank).unwrap_or(Ok(Ok(())))
}

/// Pending entries deleted from the stream (trimmed) before they were
/// stored: the read script acked them, as nothing is left to store.
fn report_trimmed(deleted: &[StreamId]) {
    if !deleted.is_empty() {
        metrics::counter!(m::TRIMMED_BEFORE_ACK).increment(deleted.len() as u64);
        tracing::warn!(
            entries = deleted.len(),
            "pending entries were trimmed from the stream before being stored"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, Parsed, Reason, Rejection, StreamEntry, TraceEvent, TraceStart};
    use crate::memory_budget::MemoryBudget;
    use chrono::Utc;

    fn item(seq: u64, trace: Option<&str>) -> BatchItem {
        BatchItem {
            entry: StreamEntry {
                id: StreamId { ms: 1, seq },
                fields: vec![("data".into(), vec![b'x'; 100].into())],
                deliveries: 1,
            },
            parsed: match trace {
                Some(trace) => Ok(Parsed::Trace(TraceEvent {
                    entry_id: StreamId { ms: 1, seq },
                    trace_id: trace.into(),
                    project_id: "p".into(),
                    published_at: Utc::now(),
                    body: EventBody::TraceStart(TraceStart::default()),
                })),
                None => Err(Rejection::new(Reason::InvalidData, "bad")),
            },
        }
    }

    fn trace_of(item: &BatchItem) -> Option<&str> {
        match &item.parsed {
            Ok(Parsed::Trace(event)) => Some(&event.trace_id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn each_trace_goes_whole_and_in_order_to_one_writer_and_the_reservation_is_shared_out() {
        let budget = MemoryBudget::new(64 << 20);
        let items: Vec<BatchItem> = (0..400)
            .map(|seq| {
                let trace = format!("t{}", seq % 37);
                item(seq, (seq % 50 != 0).then_some(trace.as_str()))
            })
            .collect();
        let reservation = budget.acquire(1 << 20).await;
        let routed = Routing::default().route(&items, true, 3);
        let parts = split_by_writer(items, reservation, &routed.writers);

        assert_eq!(parts.len(), 3, "37 traces reach every writer");
        let mut writer_of_trace = std::collections::BTreeMap::new();
        let mut seen = 0;
        for (writer, items, _) in &parts {
            assert!(
                items.windows(2).all(|w| w[0].entry.id < w[1].entry.id),
                "in order"
            );
            for item in items {
                seen += 1;
                match trace_of(item) {
                    Some(trace) => {
                        assert_eq!(*writer_of_trace.entry(trace).or_insert(*writer), *writer)
                    }
                    None => assert_eq!(*writer, 0, "entries with no trace go to the first"),
                }
            }
        }
        assert_eq!(seen, 400);
        let shared: u64 = parts.iter().map(|(_, _, r)| r.bytes()).sum();
        assert_eq!(shared, 1 << 20, "the shares add up to the reservation");
        assert!(parts.iter().all(|(_, _, r)| r.bytes() > 0));
        drop(parts);
        assert_eq!(budget.in_hand_bytes(), 0, "every share is given back");
    }

    #[tokio::test]
    async fn one_writer_gets_the_page_whole() {
        let budget = MemoryBudget::new(64 << 20);
        let items: Vec<BatchItem> = (0..10).map(|seq| item(seq, Some("t"))).collect();
        let routed = Routing::default().route(&items, true, 1);
        let parts = split_by_writer(items, budget.acquire(4096).await, &routed.writers);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1.len(), 10);
        assert_eq!(parts[0].2.bytes(), budget.in_hand_bytes());
    }

    #[test]
    fn a_lost_writer_decides_before_a_refusal_before_success() {
        let ok = || Ok(Ok(()));
        assert!(matches!(worst(vec![ok(), ok()]), Ok(Ok(()))));
        assert!(matches!(
            worst(vec![
                ok(),
                Ok(Err(WriteError::Stopped)),
                Ok(Err(WriteError::Poisoned(3)))
            ]),
            Ok(Err(WriteError::Poisoned(3)))
        ));
        assert!(matches!(
            worst(vec![
                Ok(Err(WriteError::Poisoned(3))),
                Err(MailboxError::Closed),
                ok()
            ]),
            Err(MailboxError::Closed)
        ));
    }
}
