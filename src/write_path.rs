//! One batch of stream entries to one committed transaction: parse, merge,
//! upsert the rows, record SDK heartbeats, dead-letter what cannot be
//! stored, COMMIT. When Postgres rejects the data, the batch is split in
//! halves until the entry at fault is alone, and only that entry becomes a
//! dead letter. A statement timeout splits the batch the same way, but a
//! single entry that still times out is handed back for a retry, never
//! dead-lettered: a held lock or a slow disk is not the entry's fault.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use crate::event::{
    parse_entry, EventBody, Heartbeat, Limits, Parsed, Reason, Rejection, StreamEntry, TraceEvent,
};
use crate::merge;
use crate::retention::{late, Horizons};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::{describe, heartbeats, rows, Pool, StoreError};

/// An entry and what it turned out to be.
#[derive(Debug)]
pub struct BatchItem {
    pub entry: StreamEntry,
    pub parsed: Result<Parsed, Rejection>,
}

impl BatchItem {
    /// The wire event type as a bounded label, for metrics.
    pub fn event_type(&self) -> &'static str {
        match &self.parsed {
            Ok(Parsed::Trace(event) | Parsed::Expired(event)) => event.event_type(),
            Ok(Parsed::Heartbeat(_)) => "heartbeat",
            Err(_) => match self.entry.field("event_type") {
                Some(b"trace_start") => "trace_start",
                Some(b"observation_start") => "observation_start",
                Some(b"observation_end") => "observation_end",
                Some(b"observation_error") => "observation_error",
                Some(b"heartbeat") => "heartbeat",
                _ => "unknown",
            },
        }
    }
}

/// The only field of an entry past the delivery limit that was too heavy to
/// load (`weighed_read.lua`): its size in bytes.
pub const UNLOADED_FIELD: &str = "_ingest_unloaded_bytes";

/// Parses every entry; an entry delivered too often is dead whatever it holds.
pub fn prepare(entries: Vec<StreamEntry>, limits: &Limits, max_deliveries: u32) -> Vec<BatchItem> {
    entries
        .into_iter()
        .map(|entry| {
            let parsed = if entry.deliveries > max_deliveries {
                // An entry too heavy to hold comes without its fields: it may
                // be what killed the process on each delivery.
                let unloaded = entry
                    .field(UNLOADED_FIELD)
                    .map(|bytes| {
                        format!(
                            "; its {} bytes were not loaded (heavier than the memory budget), read them with XRANGE {} {}",
                            String::from_utf8_lossy(bytes),
                            entry.id,
                            entry.id
                        )
                    })
                    .unwrap_or_default();
                Err(Rejection::new(
                    Reason::TooManyDeliveries,
                    format!(
                        "delivered {} times, over the limit of {max_deliveries}{unloaded}",
                        entry.deliveries
                    ),
                ))
            } else {
                parse_entry(&entry, limits)
            };
            BatchItem { entry, parsed }
        })
        .collect()
}

/// Splits off the starts of observations whose end is not among `items`:
/// held for the next transaction, where the end usually is, such a row is
/// written once instead of inserted and then updated. The rest is returned
/// in order.
pub fn split_open_starts(items: Vec<BatchItem>) -> (Vec<BatchItem>, Vec<BatchItem>) {
    let ended: HashSet<(&str, &str)> = items
        .iter()
        .filter_map(|item| match &item.parsed {
            Ok(Parsed::Trace(TraceEvent {
                project_id,
                body: EventBody::ObservationEnd { observation_id, .. },
                ..
            })) => Some((project_id.as_str(), observation_id.as_str())),
            _ => None,
        })
        .collect();
    let open: Vec<bool> = items
        .iter()
        .map(|item| match &item.parsed {
            Ok(Parsed::Trace(TraceEvent {
                project_id,
                body: EventBody::ObservationStart { observation_id, .. },
                ..
            })) => !ended.contains(&(project_id.as_str(), observation_id.as_str())),
            _ => false,
        })
        .collect();
    let (held, written): (Vec<_>, Vec<_>) =
        items.into_iter().zip(open).partition(|(_, open)| *open);
    (
        written.into_iter().map(|(item, _)| item).collect(),
        held.into_iter().map(|(item, _)| item).collect(),
    )
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

/// Writes all items in one transaction. Events of traces past their
/// retention horizon become `Parsed::Expired` and are not stored.
pub async fn commit(
    pool: &Pool,
    stream: &str,
    horizons: &Horizons,
    items: &mut [BatchItem],
) -> Result<(), StoreError> {
    late::expire_old(items, horizons, chrono::Utc::now());
    let events = items.iter().filter_map(|item| match &item.parsed {
        Ok(Parsed::Trace(event)) => Some(event),
        _ => None,
    });
    let rows = merge::merge(events);
    let letters: Vec<DeadLetter> = items
        .iter()
        .filter_map(|item| match &item.parsed {
            Err(rejection) => Some(DeadLetter {
                entry: &item.entry,
                rejection,
            }),
            Ok(_) => None,
        })
        .collect();

    let beats: Vec<&Heartbeat> = items
        .iter()
        .filter_map(|item| match &item.parsed {
            Ok(Parsed::Heartbeat(beat)) => Some(beat),
            _ => None,
        })
        .collect();

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    rows::write_rows(&tx, &rows).await?;
    heartbeats::upsert(&tx, &beats).await?;
    dead_letters::insert(&tx, stream, &letters).await?;
    late::settle(&tx, items, horizons).await?;
    tx.commit().await?;
    Ok(())
}

/// Like [`commit`], but an entry that Postgres refuses becomes a dead letter
/// instead of failing its neighbours. Returns how many entries were isolated.
pub fn commit_isolating<'a>(
    pool: &'a Pool,
    stream: &'a str,
    horizons: &'a Horizons,
    items: &'a mut [BatchItem],
) -> Pin<Box<dyn Future<Output = Result<usize, StoreError>> + 'a>> {
    Box::pin(async move {
        match commit(pool, stream, horizons, items).await {
            Ok(()) => Ok(0),
            Err(StoreError::Data(error)) if items.len() == 1 => {
                let detail = format!("postgres rejected this entry: {}", describe(&error));
                tracing::warn!(entry = %items[0].entry.id, %detail, "entry isolated as dead letter");
                items[0].parsed = Err(Rejection::new(Reason::RejectedByPostgres, detail));
                commit(pool, stream, horizons, items).await?;
                Ok(1)
            }
            Err(StoreError::Data(error)) => {
                tracing::debug!(size = items.len(), error = %describe(&error), "splitting rejected batch");
                split(pool, stream, horizons, items).await
            }
            // Halves finish sooner; a single entry goes back to the caller,
            // which retries it with backoff.
            Err(StoreError::StatementTimeout(message)) if items.len() > 1 => {
                metrics::counter!(crate::metrics::POSTGRES_ERRORS, "kind" => "statement_timeout")
                    .increment(1);
                tracing::warn!(size = items.len(), %message, "statement timeout; splitting the batch");
                split(pool, stream, horizons, items).await
            }
            Err(other) => Err(other),
        }
    })
}

/// Commits each half on its own; the halves that committed stay committed
/// when a later one fails (their entries are rewritten idempotently on retry).
async fn split(
    pool: &Pool,
    stream: &str,
    horizons: &Horizons,
    items: &mut [BatchItem],
) -> Result<usize, StoreError> {
    let (left, right) = items.split_at_mut(items.len() / 2);
    let isolated = commit_isolating(pool, stream, horizons, left).await?;
    Ok(isolated + commit_isolating(pool, stream, horizons, right).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamId;

    fn item(ok: bool) -> BatchItem {
        let entry = StreamEntry {
            id: StreamId { ms: 1, seq: 0 },
            fields: Vec::new(),
            deliveries: 1,
        };
        let parsed = if ok {
            Ok(Parsed::Heartbeat(Heartbeat {
                entry_id: entry.id,
                project_id: "p".into(),
                sdk_version: None,
                published_at: chrono::Utc::now(),
                metadata: Default::default(),
            }))
        } else {
            Err(Rejection::new(Reason::InvalidData, "bad"))
        };
        BatchItem { entry, parsed }
    }

    fn event(seq: u64, project: &str, body: EventBody) -> BatchItem {
        let entry = StreamEntry {
            id: StreamId { ms: 1, seq },
            fields: Vec::new(),
            deliveries: 1,
        };
        let parsed = Ok(Parsed::Trace(TraceEvent {
            entry_id: entry.id,
            trace_id: "t".into(),
            project_id: project.into(),
            published_at: chrono::Utc::now(),
            body,
        }));
        BatchItem { entry, parsed }
    }

    fn start(observation: &str) -> EventBody {
        EventBody::ObservationStart {
            observation_id: observation.into(),
            fields: Default::default(),
        }
    }

    fn end(observation: &str) -> EventBody {
        EventBody::ObservationEnd {
            observation_id: observation.into(),
            fields: Default::default(),
        }
    }

    #[test]
    fn only_starts_without_their_end_are_held() {
        let batch = vec![
            event(0, "p", EventBody::TraceStart(Default::default())),
            event(1, "p", start("closed")),
            event(2, "p", start("open")),
            event(3, "p", end("closed")),
            // The same id ended in another project closes nothing here.
            event(4, "q", end("open")),
            // An end whose start came earlier, and a rejected entry.
            event(5, "p", end("earlier")),
            item(false),
        ];
        let (written, held) = split_open_starts(batch);
        let seqs = |items: &[BatchItem]| items.iter().map(|i| i.entry.id.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&held), [2]);
        assert_eq!(seqs(&written), [0, 1, 3, 4, 5, 0]);
        assert!(written[5].parsed.is_err());
    }

    #[test]
    fn rejection_runs_carry_across_batches_and_reset_on_success() {
        let batch = [item(false), item(false), item(true), item(false)];
        assert_eq!(
            rejection_run(&batch, 5),
            RejectionRun {
                longest: 7,
                trailing: 1
            }
        );
        assert_eq!(
            rejection_run(&batch, 0),
            RejectionRun {
                longest: 2,
                trailing: 1
            }
        );
        assert_eq!(
            rejection_run(&[], 3),
            RejectionRun {
                longest: 3,
                trailing: 3
            }
        );
    }
}
