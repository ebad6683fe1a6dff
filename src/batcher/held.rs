//! Observation starts held for their end, grouped by the decision that held
//! them: a group keeps the reservations of the batches its starts came in,
//! released with the transaction that takes its last start.

use std::time::Instant;

use foldhash::HashSet;

use super::rules::{ended_observation, started_observation};
use super::Transaction;
use crate::event::BatchItem;

struct Group<R> {
    items: Vec<BatchItem>,
    reservations: Vec<R>,
    /// When its starts go, ended or not.
    due: Instant,
    /// Held for the next batch only (a backlog's): it goes whole with it.
    next_batch_only: bool,
}

pub(super) struct Held<R> {
    groups: Vec<Group<R>>,
}

impl<R> Default for Held<R> {
    fn default() -> Self {
        Self { groups: Vec::new() }
    }
}

impl<R> Held<R> {
    pub fn hold(
        &mut self,
        items: Vec<BatchItem>,
        reservations: Vec<R>,
        due: Instant,
        next_batch_only: bool,
    ) {
        self.groups.push(Group {
            items,
            reservations,
            due,
            next_batch_only,
        });
    }

    /// Moves into `into` the held starts whose end is among `arrived`, and
    /// every start of a group that is due by `now`, or held for the next
    /// batch when `a_batch_arrived`. Returns how many go without their end.
    pub fn take_released<W>(
        &mut self,
        arrived: &[BatchItem],
        a_batch_arrived: bool,
        now: Instant,
        into: &mut Transaction<W, R>,
    ) -> usize {
        let mut alone = 0;
        if self.groups.is_empty() {
            return alone;
        }
        let ended: HashSet<&str> = arrived.iter().filter_map(ended_observation).collect();
        let has_ended =
            |item: &BatchItem| started_observation(item).is_some_and(|id| ended.contains(id));
        for group in &mut self.groups {
            let whole = group.due <= now || group.next_batch_only && a_batch_arrived;
            if whole {
                alone += group.items.iter().filter(|item| !has_ended(item)).count();
                into.items.append(&mut group.items);
            } else if !ended.is_empty() {
                // Most held starts stay: move out only those that go (the
                // order of a transaction's items does not matter to the
                // merge).
                let mut i = 0;
                while i < group.items.len() {
                    if has_ended(&group.items[i]) {
                        into.items.push(group.items.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            if group.items.is_empty() {
                into.release.append(&mut group.reservations);
            }
        }
        self.groups.retain(|group| !group.items.is_empty());
        alone
    }

    /// Every group goes whole with the next batch (a flush is one).
    pub fn release_with_next_batch(&mut self) {
        for group in &mut self.groups {
            group.next_batch_only = true;
        }
    }

    /// When the first held start goes without its end.
    pub fn earliest_due(&self) -> Option<Instant> {
        self.groups.iter().map(|group| group.due).min()
    }
}
