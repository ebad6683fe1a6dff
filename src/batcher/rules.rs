//! The two rules the batcher applies to a batch: which starts to hold,
//! and how long the run of rejected entries is.

use foldhash::HashSet;

use crate::event::{BatchItem, EventBody, Parsed, TraceEvent};

/// Splits off the starts of observations whose end is not among `items`,
/// to be held (see the batcher); the rest is returned in order.
pub fn split_open_starts(items: Vec<BatchItem>) -> (Vec<BatchItem>, Vec<BatchItem>) {
    let ended: HashSet<&str> = items.iter().filter_map(ended_observation).collect();
    let open: Vec<bool> = items
        .iter()
        .map(|item| started_observation(item).is_some_and(|id| !ended.contains(id)))
        .collect();
    // One move of each item (352 bytes), straight to its side.
    let mut written = Vec::with_capacity(items.len());
    let mut held = Vec::new();
    for (item, open) in items.into_iter().zip(open) {
        if open {
            held.push(item);
        } else {
            written.push(item);
        }
    }
    (written, held)
}

/// The observation an item starts, if it is a start.
pub(super) fn started_observation(item: &BatchItem) -> Option<&str> {
    match &item.parsed {
        Ok(Parsed::Trace(TraceEvent {
            body: EventBody::ObservationStart { observation_id, .. },
            ..
        })) => Some(observation_id),
        _ => None,
    }
}

/// The observation an item ends (an error ends it too), if it is an end.
pub(super) fn ended_observation(item: &BatchItem) -> Option<&str> {
    match &item.parsed {
        Ok(Parsed::Trace(TraceEvent {
            body: EventBody::ObservationEnd { observation_id, .. },
            ..
        })) => Some(observation_id),
        _ => None,
    }
}

/// Runs of rejected entries, continuing the run of earlier batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionRun {
    /// The longest run seen, including the one carried in.
    pub longest: u64,
    /// The run still open at the end of the batch, to carry on.
    pub trailing: u64,
}

pub fn rejection_run(items: &[BatchItem], carried: u64) -> RejectionRun {
    let mut run = RejectionRun {
        longest: carried,
        trailing: carried,
    };
    for item in items {
        run.trailing = if item.parsed.is_err() {
            run.trailing + 1
        } else {
            0
        };
        run.longest = run.longest.max(run.trailing);
    }
    run
}
