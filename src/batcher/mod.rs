//! Which entries go into a writer's next transaction: a pure state machine,
//! no I/O, no actor, no clock (the writer passes the time in). The writer
//! actor feeds it what arrives, asks it for the next transaction, runs that,
//! and tells it when it finished.
//!
//! - Batches that arrive while a transaction is in flight go into the next
//!   one together, with their senders' waiters and memory reservations.
//! - Starts of observations whose end has not arrived are *held*, so that
//!   such a row is written once instead of inserted and then updated (an
//!   update costs Postgres as much as the insert: a new row version and an
//!   entry in each of the studio's eight indexes):
//!   - under backlog (a read batch arrived full) for one transaction: the
//!     next page holds most of their ends; with no next batch they go alone
//!     after [`BatcherSettings::backlog_wait`];
//!   - otherwise for at most [`BatcherSettings::hold_starts`]: each
//!     transaction takes the held starts whose end arrived, and those held
//!     that long.
//!
//!   A held batch's reservation is released with the transaction that
//!   stores its last held start; its sender is answered at once (it reads
//!   on), and its entries are acked only once stored.
//! - Poison protection: a long run of rejected entries (across batches) is
//!   refused whole; its senders keep the entries pending.
//!
//! Generic over the waiter `W` and the reservation `R`, so that tests can
//! watch which transaction answers whom and releases what.

mod held;
mod rules;

pub use rules::{rejection_run, split_open_starts, RejectionRun};

use std::time::{Duration, Instant};

use crate::event::BatchItem;
use held::Held;

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
    /// Outside a backlog, how long an observation start waits for its end;
    /// zero: starts are written as they come.
    pub hold_starts: Duration,
    /// Under backlog, how long starts held for the next batch wait for it
    /// before they are written alone.
    pub backlog_wait: Duration,
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
    /// Starts held by this decision (for the metric).
    pub held: usize,
    /// Held starts this transaction writes without their end (for the metric).
    pub held_went_alone: usize,
    /// Starts are held and nothing else is to be done: ask again at this
    /// time if no batch arrives first.
    pub wake_at: Option<Instant>,
}

pub struct Batcher<W, R> {
    settings: BatcherSettings,
    gathered: Gathered<W, R>,
    held: Held<R>,
    /// One transaction at a time: a second would only queue behind the first
    /// in Postgres and lock the same rows.
    in_flight: bool,
    lingering: bool,
    /// Rejected entries in a row at the end of what was last accepted.
    rejection_run: u64,
}

impl<W, R> Batcher<W, R> {
    pub fn new(settings: BatcherSettings) -> Self {
        Self {
            settings,
            gathered: Gathered::default(),
            held: Held::default(),
            in_flight: false,
            lingering: false,
            rejection_run: 0,
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

    /// Every start held so far goes with the next batch: the writer is
    /// flushing (shutdown), and a flush arrives as an empty batch.
    pub fn release_held(&mut self) {
        self.held.release_with_next_batch();
    }

    /// The next transaction, unless one is in flight or nothing is to be
    /// written by `now`; ends any linger.
    pub fn decide(&mut self, now: Instant) -> Next<W, R> {
        self.lingering = false;
        let mut next = Next {
            refused: Vec::new(),
            poison: Poison::Unchanged,
            transaction: None,
            held: 0,
            held_went_alone: 0,
            wake_at: None,
        };
        if self.in_flight {
            return next;
        }
        let gathered = std::mem::take(&mut self.gathered);
        next.poison = self.check_poison(&gathered.items);
        let mut transaction = Transaction {
            items: Vec::new(),
            waiters: Vec::new(),
            release: Vec::new(),
        };
        let refused = matches!(next.poison, Poison::Tripped(_));
        // Held starts whose end arrived, or whose time is up, go first; a
        // refused batch's ends are not stored, so they release none.
        let arrived: &[BatchItem] = if refused { &[] } else { &gathered.items };
        let a_batch_arrived = !gathered.waiters.is_empty();
        next.held_went_alone =
            self.held
                .take_released(arrived, a_batch_arrived, now, &mut transaction);
        if refused {
            // The senders keep the entries (pending) and retry.
            next.refused = gathered.waiters;
        } else {
            let backlog = gathered.backlog || gathered.items.len() >= self.settings.read_batch_size;
            // How long this batch's open starts are held, and whether only
            // until the next batch.
            let hold = if backlog {
                Some((self.settings.backlog_wait, true))
            } else if self.settings.hold_starts.is_zero() {
                None
            } else {
                Some((self.settings.hold_starts, false))
            };
            let (fresh, newly_held) = match hold {
                Some(_) => split_open_starts(gathered.items),
                None => (gathered.items, Vec::new()),
            };
            next.held = newly_held.len();
            transaction.items.extend(fresh);
            transaction.waiters = gathered.waiters;
            match hold {
                Some((wait, next_batch_only)) if !newly_held.is_empty() => self.held.hold(
                    newly_held,
                    gathered.reservations,
                    now + wait,
                    next_batch_only,
                ),
                _ => transaction.release.extend(gathered.reservations),
            }
        }
        if transaction.items.is_empty() && transaction.waiters.is_empty() {
            next.wake_at = self.held.earliest_due();
            return next;
        }
        self.in_flight = true;
        next.transaction = Some(transaction);
        next
    }

    /// The transaction in flight is committed (and acked).
    pub fn finished(&mut self) {
        self.in_flight = false;
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
