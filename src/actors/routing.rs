//! Which of a replica's writers stores each entry of a page. A full page
//! (a backlog) is spread over the writers by trace, a short one (steady
//! state) goes to the first: one transaction of a whole short page costs
//! Postgres less than two of its halves (docs/benchmarks.md). Either way,
//! a trace that a writer has in hand (sent, not yet answered) goes to that
//! writer again: two writers inserting the same trace's rows at once made
//! one transaction fail on the unique key and run again (1–24 times per
//! 20 s at 13,000–15,000 events/s, where full and short pages mix).
//!
//! Traces are known by a hash of their id: a collision only sends a trace
//! to a writer it did not need, never two writers at once. Not counted as
//! in hand: observation starts a writer holds for their end after it has
//! answered their page (a backlog's, for its next batch); a trace of those
//! can still meet itself in two writers, and the merge's retry settles it
//! ([`crate::store::StoreError::Conflict`]).

use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::HashMap;

use crate::event::{BatchItem, Parsed};

/// Shared by a replica's consumers and claimer, which hand pages to the
/// same writers.
#[derive(Clone, Default)]
pub struct Routing(Arc<Mutex<InHand>>);

/// The traces in the writers' hands, by hash.
#[derive(Default)]
struct InHand {
    traces: HashMap<u64, Held>,
    /// Numbers the pages routed, to count each trace once per page.
    pages_routed: u64,
}

struct Held {
    writer: usize,
    /// Pages with its entries that the writer has not answered yet.
    pages: u32,
    /// The last page that counted it.
    last_page: u64,
}

/// The writers chosen for a page's items, kept until the page is answered:
/// dropping it lets its traces go to any writer again.
pub struct Routed {
    /// The writer of each item, in the page's order.
    pub writers: Vec<usize>,
    traces: Vec<u64>,
    routing: Routing,
}

impl Routing {
    /// Chooses a writer for each item: the one that has its trace in hand,
    /// else by trace over all `writers` for a full page, else the first.
    /// Entries with no trace (heartbeats, refusals) go to the first, where
    /// poison protection counts runs of bad entries.
    pub fn route(&self, items: &[BatchItem], full_page: bool, writers: usize) -> Routed {
        if writers <= 1 {
            return Routed {
                writers: vec![0; items.len()],
                traces: Vec::new(),
                routing: self.clone(),
            };
        }
        let mut in_hand = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        in_hand.pages_routed += 1;
        let page = in_hand.pages_routed;
        let mut traces = Vec::new();
        let chosen = items
            .iter()
            .map(|item| {
                let Some(trace) = trace_hash(item) else {
                    return 0;
                };
                let spread = if full_page {
                    (trace % writers as u64) as usize
                } else {
                    0
                };
                let held = in_hand.traces.entry(trace).or_insert(Held {
                    writer: spread,
                    pages: 0,
                    last_page: 0,
                });
                if held.last_page != page {
                    held.last_page = page;
                    held.pages += 1;
                    traces.push(trace);
                }
                held.writer
            })
            .collect();
        Routed {
            writers: chosen,
            traces,
            routing: self.clone(),
        }
    }

    #[cfg(test)]
    fn traces_in_hand(&self) -> usize {
        self.0.lock().unwrap().traces.len()
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        if self.traces.is_empty() {
            return;
        }
        let mut in_hand = self
            .routing
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for trace in &self.traces {
            if let Entry::Occupied(mut held) = in_hand.traces.entry(*trace) {
                held.get_mut().pages -= 1;
                if held.get().pages == 0 {
                    held.remove();
                }
            }
        }
    }
}

/// The trace's id hashed with a fixed seed: the same writer for a trace on
/// every page, whichever reader routes it.
fn trace_hash(item: &BatchItem) -> Option<u64> {
    match &item.parsed {
        Ok(Parsed::Trace(event)) => {
            Some(foldhash::fast::FixedState::with_seed(0).hash_one(&event.trace_id))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, Reason, Rejection, StreamEntry, StreamId, TraceEvent};
    use chrono::Utc;

    fn item(trace: Option<&str>) -> BatchItem {
        BatchItem {
            entry: StreamEntry {
                id: StreamId { ms: 1, seq: 0 },
                fields: Vec::new(),
                deliveries: 1,
            },
            parsed: match trace {
                Some(trace) => Ok(Parsed::Trace(TraceEvent {
                    entry_id: StreamId { ms: 1, seq: 0 },
                    trace_id: trace.into(),
                    project_id: "p".into(),
                    published_at: Utc::now(),
                    body: EventBody::TraceStart(Default::default()),
                })),
                None => Err(Rejection::new(Reason::InvalidData, "bad")),
            },
        }
    }

    fn page(traces: &[&str]) -> Vec<BatchItem> {
        traces.iter().map(|trace| item(Some(trace))).collect()
    }

    /// Trace names that a full page spreads to writer 1 of 2.
    fn spread_to_second(count: usize) -> Vec<String> {
        let routing = Routing::default();
        (0..)
            .map(|i| format!("t{i}"))
            .filter(|trace| routing.route(&page(&[trace]), true, 2).writers == [1])
            .take(count)
            .collect()
    }

    #[test]
    fn a_short_page_goes_to_the_first_writer_and_a_full_one_by_trace() {
        let routing = Routing::default();
        let traces: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let names: Vec<&str> = traces.iter().map(String::as_str).collect();

        let short = routing.route(&page(&names), false, 2);
        assert!(short.writers.iter().all(|&w| w == 0));
        drop(short);

        let full = routing.route(&page(&names), true, 2);
        assert!(full.writers.contains(&0) && full.writers.contains(&1));
        let again = Routing::default().route(&page(&names), true, 2);
        assert_eq!(
            full.writers, again.writers,
            "the same writer for a trace every time"
        );
    }

    #[test]
    fn a_trace_in_a_writers_hand_goes_to_it_until_its_pages_are_answered() {
        let routing = Routing::default();
        let second = spread_to_second(2);
        let (held, other) = (second[0].as_str(), second[1].as_str());

        // A backlog page puts `held` in writer 1's hand.
        let backlog = routing.route(&page(&[held]), true, 2);
        assert_eq!(backlog.writers, [1]);

        // A short page meanwhile: `held` follows it to writer 1, the rest
        // goes to the first as usual; entries with no trace too.
        let mut items = page(&[other, held, held]);
        items.push(item(None));
        let short = routing.route(&items, false, 2);
        assert_eq!(short.writers, [0, 1, 1, 0]);

        // Answered pages free the trace (counted per page, not per entry).
        drop(backlog);
        let still = routing.route(&page(&[held]), false, 2);
        assert_eq!(still.writers, [1], "the short page still has it in hand");
        drop(still);
        drop(short);
        assert_eq!(routing.traces_in_hand(), 0);
        let free = routing.route(&page(&[held]), false, 2);
        assert_eq!(free.writers, [0]);
    }

    #[test]
    fn a_trace_the_first_writer_has_stays_there_on_a_full_page() {
        let routing = Routing::default();
        let second = spread_to_second(1);
        let short = routing.route(&page(&[&second[0]]), false, 2);
        assert_eq!(short.writers, [0]);
        let full = routing.route(&page(&[&second[0]]), true, 2);
        assert_eq!(full.writers, [0], "not to writer 1 while writer 0 has it");
    }

    #[test]
    fn one_writer_needs_no_bookkeeping() {
        let routing = Routing::default();
        let routed = routing.route(&page(&["a", "b"]), true, 1);
        assert_eq!(routed.writers, [0, 0]);
        assert_eq!(routing.traces_in_hand(), 0);
    }
}
