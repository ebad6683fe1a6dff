//! Whether one reader is falling behind the stream, as the replica's
//! consumers last saw it. Then the consumers read new entries at will: one
//! reads and parses while another's page commits. Otherwise they take
//! turns ([`super::read_pace`]): reading at will at a rate one reader keeps
//! up with, a second only grabs the first few entries that arrive into a
//! transaction of their own (docs/architecture.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A page of at least 1/`WAKE` of a full read says one reader is behind...
const WAKE: usize = 8;
/// ...and one of under 1/`SLEEP` that it keeps up again. Between the two
/// nothing changes, so that a rate near one threshold does not flip the
/// consumers between the two ways of reading with every page.
const SLEEP: usize = 32;

/// Shared by a replica's consumers (not the claimer: claimed pages are
/// entries of a dead consumer, not a backlog of the stream).
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<AtomicBool>);

impl Backlog {
    /// A consumer read a page of `entries` where it asked for `batch_size`.
    pub fn saw_page(&self, entries: usize, batch_size: usize) {
        if entries * WAKE >= batch_size {
            self.0.store(true, Ordering::Relaxed);
        } else if entries * SLEEP < batch_size {
            self.0.store(false, Ordering::Relaxed);
        }
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_an_eighth_full_wakes_the_readers_and_one_under_a_thirty_second_lets_them_sleep() {
        let backlog = Backlog::default();
        backlog.saw_page(249, 2000);
        assert!(!backlog.is_on());
        backlog.saw_page(250, 2000);
        assert!(backlog.is_on());
        backlog.saw_page(63, 2000);
        assert!(backlog.is_on(), "between the two: unchanged");
        backlog.saw_page(62, 2000);
        assert!(!backlog.is_on());
        backlog.saw_page(100, 2000);
        assert!(!backlog.is_on(), "between the two: unchanged");
    }
}
