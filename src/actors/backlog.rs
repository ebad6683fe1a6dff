//! Whether the stream is backlogged, as the replica's consumers last saw it:
//! the last page a consumer read was full. Consumers beyond the first read
//! new entries only then (a backlog needs one reading and parsing while
//! another's page commits; in steady state a second reader only grabs the
//! first few entries that arrive and makes transactions smaller and later).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared by a replica's consumers (not the claimer: claimed pages are
/// entries of a dead consumer, not a backlog of the stream).
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<AtomicBool>);

impl Backlog {
    /// A consumer read a page: full (a backlog) or not.
    pub fn saw_page(&self, full: bool) {
        self.0.store(full, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
