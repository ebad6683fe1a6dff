//! The two rules the batcher applies to a batch: which starts to defer,
//! and how long the run of rejected entries is.

use foldhash::HashSet;

use crate::event::{BatchItem, EventBody, Parsed, TraceEvent};

/// Splits off the starts of observations whose end is not among `items`:
/// deferred to the next transaction, where the end usually is, such a row is
/// written once instead of inserted and then updated. The rest is returned
/// in order.
pub fn split_open_starts(items: Vec<BatchItem>) -> (Vec<BatchItem>, Vec<BatchItem>) {
    let ended: HashSet<&str> = items
        .iter()
        .filter_map(|item| match &item.parsed {
            Ok(Parsed::Trace(TraceEvent {
                body: EventBody::ObservationEnd { observation_id, .. },
                ..
            })) => Some(observation_id.as_str()),
            _ => None,
        })
        .collect();
    let is_open = |item: &BatchItem| match &item.parsed {
        Ok(Parsed::Trace(TraceEvent {
            body: EventBody::ObservationStart { observation_id, .. },
            ..
        })) => !ended.contains(observation_id.as_str()),
        _ => false,
    };
    let open: Vec<bool> = items.iter().map(is_open).collect();
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
