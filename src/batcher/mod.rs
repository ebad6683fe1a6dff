//! Which entries go into a writer's next transaction: a pure state machine,
//! no I/O, no actor. The writer actor feeds it what arrives, asks it for the
//! next transaction, runs that, and tells it when it finished.
//!
//! - Batches that arrive while a transaction is in flight go into the next
//!   one together, with their senders' waiters and memory reservations.
//! - Under backlog (a read batch arrived full), the starts of observations
//!   whose end has not arrived are *deferred* one transaction, so that such
//!   a row is written once instead of inserted and then updated. A deferred
//!   start is never deferred twice; it waits for the next batch to arrive
//!   (its end is in it), or goes alone once the writer says it is due; its
//!   batch's reservation is released with the transaction that stores it.
//! - Poison protection: a long run of rejected entries (across batches) is
//!   refused whole; its senders keep the entries pending.
//!
//! Generic over the waiter `W` and the reservation `R`, so that tests can
//! watch which transaction answers whom and releases what.

mod rules;

pub use rules::{rejection_run, split_open_starts, RejectionRun};

use crate::event::BatchItem;

/// The limits the batcher decides by.
#[derive(Debug, Clone, Copy)]
pub struct BatcherSettings {
    /// A read batch this long means a backlog.
    pub read_batch_size: usize,
    /// Entries gathered that start a transaction at once, linger or not.
    pub write_batch_size: usize,
    /// Rejected entries in a row that trip poison protection; 0 disables it.
    pub poison_run: u64,
    /// Whether an idle writer waits (lingers) before starting.
    pub lingers: bool,
}

/// Arrived batches, not yet in a transaction: items in arrival order, with
/// each batch's waiter and reservation.
struct Gathered<W, R> {
    items: Vec<BatchItem>,
    /// Some of them are a full page's share (see [`Batcher::page_was_full`]).
    backlog: bool,
    waiters: Vec<W>,
    reservations: Vec<R>,
}

impl<W, R> Default for Gathered<W, R> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            backlog: false,
            waiters: Vec::new(),
            reservations: Vec::new(),
        }
    }
}

/// Observation starts deferred to the next transaction, with the
/// reservations of the batches they came from.
struct Deferred<R> {
    items: Vec<BatchItem>,
    reservations: Vec<R>,
}

/// What the writer should do after a batch arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Ask for the next transaction now.
    StartNow,
    /// Start the linger timer, then ask.
    Linger,
    /// A transaction is in flight or a linger is running: it will be asked.
    Wait,
}

/// One transaction to run: commit `items`, then answer `waiters` and drop
/// `release` (their entries are no longer in hand).
pub struct Transaction<W, R> {
    pub items: Vec<BatchItem>,
    pub waiters: Vec<W>,
    pub release: Vec<R>,
}

/// How poison protection changed with this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    Unchanged,
    /// Tripped: the run of rejected entries is this long.
    Tripped(u64),
    /// Good entries arrived: consumption may resume.
    Cleared,
}

/// The next step: senders to refuse (poison), and a transaction to run.
pub struct Next<W, R> {
    pub refused: Vec<W>,
    pub poison: Poison,
    pub transaction: Option<Transaction<W, R>>,
    /// Starts deferred by this decision (for the metric).
    pub deferred: usize,
    /// Only deferred starts wait, and no batch has arrived for them: the
    /// writer calls [`Batcher::deferred_due`] if none arrives in time.
    pub awaiting_batch: bool,
}

pub struct Batcher<W, R> {
    settings: BatcherSettings,
    gathered: Gathered<W, R>,
    deferred: Deferred<R>,
    /// One transaction at a time: a second would only queue behind the first
    /// in Postgres and lock the same rows.
    in_flight: bool,
    lingering: bool,
    /// Rejected entries in a row at the end of what was last accepted.
    rejection_run: u64,
    /// Deferred starts may go without a batch (the writer's wait ended).
    deferred_due: bool,
}

impl<W, R> Batcher<W, R> {
    pub fn new(settings: BatcherSettings) -> Self {
        Self {
            settings,
            gathered: Gathered::default(),
            deferred: Deferred {
                items: Vec::new(),
                reservations: Vec::new(),
            },
            in_flight: false,
            lingering: false,
            rejection_run: 0,
            deferred_due: false,
        }
    }

    /// The next batch to arrive is this writer's part of a full read
    /// page: a backlog, though with several writers it holds only the
    /// page's entries of this writer's traces.
    pub fn page_was_full(&mut self) {
        self.gathered.backlog = true;
    }

    /// Takes a batch (possibly empty: a flush request) and says when to act.
    pub fn arrive(&mut self, items: Vec<BatchItem>, reservation: Option<R>, waiter: W) -> Arrival {
        self.gathered.items.extend(items);
        self.gathered.reservations.extend(reservation);
        self.gathered.waiters.push(waiter);
        let full = self.gathered.items.len() >= self.settings.write_batch_size;
        if self.in_flight || self.lingering && !full {
            Arrival::Wait
        } else if self.settings.lingers && !full {
            self.lingering = true;
            Arrival::Linger
        } else {
            Arrival::StartNow
        }
    }

    /// The next transaction, unless one is in flight or nothing waits; ends
    /// any linger.
    pub fn decide(&mut self) -> Next<W, R> {
        self.lingering = false;
        let mut next = Next {
            refused: Vec::new(),
            poison: Poison::Unchanged,
            transaction: None,
            deferred: 0,
            awaiting_batch: false,
        };
        if self.in_flight || self.gathered.waiters.is_empty() && self.deferred.items.is_empty() {
            return next;
        }
        if self.gathered.waiters.is_empty() && !self.deferred_due {
            // Written alone now, the deferred starts would meet their ends
            // in no transaction: the ends are in the batch being read.
            next.awaiting_batch = true;
            return next;
        }
        // Whatever was deferred goes in this transaction: a wait that ended
        // is spent.
        self.deferred_due = false;
        let gathered = std::mem::take(&mut self.gathered);
        next.poison = self.check_poison(&gathered.items);
        if let Poison::Tripped(_) = next.poison {
            // Refused: the senders keep the entries (pending) and retry;
            // what was deferred is stored all the same.
            next.refused = gathered.waiters;
            next.transaction = self.take_deferred();
            return next;
        }
        let backlog = gathered.backlog || gathered.items.len() >= self.settings.read_batch_size;
        let (fresh, newly_deferred) = if backlog {
            split_open_starts(gathered.items)
        } else {
            (gathered.items, Vec::new())
        };
        next.deferred = newly_deferred.len();
        let mut transaction = self.take_deferred().unwrap_or_else(|| Transaction {
            items: Vec::new(),
            waiters: Vec::new(),
            release: Vec::new(),
        });
        transaction.items.extend(fresh);
        transaction.waiters = gathered.waiters;
        if newly_deferred.is_empty() {
            transaction.release.extend(gathered.reservations);
        } else {
            self.deferred = Deferred {
                items: newly_deferred,
                reservations: gathered.reservations,
            };
        }
        self.in_flight = true;
        next.transaction = Some(transaction);
        next
    }

    /// The transaction in flight is committed (and acked).
    pub fn finished(&mut self) {
        self.in_flight = false;
    }

    /// No batch arrived in time: the deferred starts go in the next
    /// transaction, alone if need be.
    pub fn deferred_due(&mut self) {
        self.deferred_due = true;
    }

    /// Deferred starts as a transaction of their own, if any.
    fn take_deferred(&mut self) -> Option<Transaction<W, R>> {
        if self.deferred.items.is_empty() {
            return None;
        }
        self.in_flight = true;
        Some(Transaction {
            items: std::mem::take(&mut self.deferred.items),
            waiters: Vec::new(),
            release: std::mem::take(&mut self.deferred.reservations),
        })
    }

    fn check_poison(&mut self, fresh: &[BatchItem]) -> Poison {
        let limit = self.settings.poison_run;
        let run = rejection_run(fresh, self.rejection_run);
        if limit > 0 && run.longest >= limit {
            return Poison::Tripped(run.longest);
        }
        self.rejection_run = run.trailing;
        if fresh.is_empty() {
            Poison::Unchanged
        } else {
            Poison::Cleared
        }
    }
}

#[cfg(test)]
mod tests;
