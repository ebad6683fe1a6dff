//! Where a consumer reads next: a pure state machine, no I/O, no actor. The
//! consumer asks it for the read to make, makes it, and reports the outcome
//! with one function per outcome; each says what to do next.
//!
//! - The cursor starts on the consumer's own pending entries (after a
//!   restart under the same name they are invisible to `>`), then moves on
//!   to new entries once those are exhausted.
//! - A batch that poison protection refused is *kept*: reloaded as it is
//!   (no delivery counted, idle time reset) until it commits or is acked by
//!   hand, instead of being re-read.
//! - New entries delivered past a read's budget (a plain XREADGROUP weighs
//!   them only as they arrive) are *unloaded*: reloaded next the same way
//!   as a kept batch, their delivery already counted.
//! - A batch that could not be stored resets the cursor to the start of the
//!   consumer's own pending entries, where it still is.

use crate::event::StreamId;
use crate::redis_stream::Cursor;
use crate::weighed_read::Mode;

/// What the consumer does after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read again at once.
    ReadAgain,
    /// Nothing new: wait (up to BLOCK) for an entry after this id.
    WaitForNew(String),
    /// Retry the kept batch soon, before other replicas see it idle.
    RetryKept,
    /// Something failed: wait before the next read.
    Backoff,
    /// The writer is gone: stop (the supervisor restarts us with the new one).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    cursor: Cursor,
    /// Ids of a batch refused by poison protection, still pending to this
    /// consumer, oldest first.
    kept: Vec<StreamId>,
    /// Ids delivered past a read's budget, not loaded, still pending to this
    /// consumer, oldest first: read after `kept`.
    unloaded: Vec<StreamId>,
}

const START: StreamId = StreamId { ms: 0, seq: 0 };

/// The most unloaded ids one reload asks for.
const UNLOADED_AT_ONCE: usize = 64;

impl Default for ReadState {
    fn default() -> Self {
        Self {
            cursor: Cursor::Pending(START),
            kept: Vec::new(),
            unloaded: Vec::new(),
        }
    }
}

impl ReadState {
    /// The read to make.
    pub fn mode(&self) -> Mode {
        if let Some(held) = self.held() {
            return Mode::Held(held.to_vec());
        }
        match self.cursor {
            Cursor::Pending(after) => Mode::Pending(after),
            Cursor::New => Mode::New,
        }
    }

    /// How many entries the read may bring.
    pub fn max_count(&self, batch_size: usize) -> usize {
        self.held().map_or(batch_size, <[StreamId]>::len)
    }

    /// The held ids the next read reloads: the kept batch whole, else the
    /// first unloaded ones (a reload looks each id up: a long tail is
    /// reloaded a slice at a time).
    fn held(&self) -> Option<&[StreamId]> {
        if !self.kept.is_empty() {
            return Some(&self.kept);
        }
        let slice = &self.unloaded[..self.unloaded.len().min(UNLOADED_AT_ONCE)];
        (!slice.is_empty()).then_some(slice)
    }

    /// As [`Self::held`], to change.
    fn held_mut(&mut self) -> Option<&mut Vec<StreamId>> {
        [&mut self.kept, &mut self.unloaded]
            .into_iter()
            .find(|ids| !ids.is_empty())
    }

    /// Entries kept by poison protection.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// The read brought nothing; `next` is the script's [`crate::weighed_read::Page::next`].
    pub fn on_empty(&mut self, next: String) -> Next {
        if !self.kept.is_empty() {
            // None is pending any more: acknowledged by hand (the runbook's
            // way out).
            self.kept.clear();
            return Next::ReadAgain;
        }
        if !self.unloaded.is_empty() {
            // None of the slice asked for is pending any more (claimed by
            // another replica): the rest is asked for next.
            let slice = self.unloaded.len().min(UNLOADED_AT_ONCE);
            self.unloaded.drain(..slice);
            return Next::ReadAgain;
        }
        match self.cursor {
            Cursor::Pending(_) => {
                // Own pending list exhausted: from now on, new entries.
                self.cursor = Cursor::New;
                Next::ReadAgain
            }
            Cursor::New => Next::WaitForNew(next),
        }
    }

    /// The read brought a page (the entry ids, possibly none but deleted
    /// ones), not yet stored, and `unloaded`, the ids it delivered and did
    /// not load. Held entries after the page's end did not fit this time
    /// and stay held; those before its end that did not come back were
    /// acknowledged by hand (or claimed).
    pub fn on_page(&mut self, next: &str, ids: &[StreamId], unloaded: &[StreamId]) {
        let end = ids.last().copied();
        match self.held_mut() {
            Some(held) => held.retain(|id| end.is_some_and(|end| *id > end)),
            None => {
                if let Cursor::Pending(after) = self.cursor {
                    self.cursor = Cursor::Pending(next.parse().unwrap_or(after));
                }
            }
        }
        self.unloaded.extend_from_slice(unloaded);
    }

    /// The page is committed and acked.
    pub fn on_stored(&mut self) -> Next {
        Next::ReadAgain
    }

    /// Poison protection refused the page: keep it, ahead of what is kept.
    /// Not re-read: a re-read would count deliveries towards the dead-letter
    /// limit for the good entries of the batch too.
    pub fn on_refused(&mut self, ids: &[StreamId]) -> Next {
        let rest = std::mem::take(&mut self.kept);
        self.kept = ids.iter().copied().chain(rest).collect();
        Next::RetryKept
    }

    /// The page was not stored (parsing panicked, or the writer failed it):
    /// it is still pending to this consumer, where the cursor restarts.
    pub fn on_not_stored(&mut self) -> Next {
        *self = Self::default();
        Next::Backoff
    }

    /// The writer is gone with the page: as [`Self::on_not_stored`], then stop.
    pub fn on_writer_gone(&mut self) -> Next {
        *self = Self::default();
        Next::Stop
    }

    /// Redis failed the read (or the connection): nothing changed, read the
    /// same again later.
    pub fn on_read_failed(&mut self) -> Next {
        Next::Backoff
    }

    /// Redis had lost the group, and it was created again: read at once.
    pub fn on_group_recreated(&mut self) -> Next {
        Next::ReadAgain
    }
}

#[cfg(test)]
mod tests;
