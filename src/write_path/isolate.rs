//! A batch that Postgres will not take as a whole, written around what is
//! at fault so that its neighbours are stored.
//!
//! Refused data splits the batch in halves until the entry at fault is
//! alone; it becomes a dead letter. A statement timeout splits the same way,
//! but first asks whether the database can store that kind of row at all
//! (two small entries tried alone): a held lock or a slow disk stops every
//! entry of the kind, and then the error goes back to the caller at once,
//! after a few timeouts, instead of after one per subset of the batch
//! (2N − 1 for N entries). Only entries that time out alone while their kind
//! can be stored are dead-lettered.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use super::{commit, Destination};
use crate::event::{BatchItem, Parsed, Reason, Rejection};
use crate::store::StoreError;

/// Like [`commit`], but an entry that Postgres refuses becomes a dead letter
/// instead of failing its neighbours. Returns how many entries were isolated.
///
/// A single entry that times out while its kind can be stored is set aside
/// while the rest is written, tried alone a few more times, then
/// dead-lettered (`statement_timeout`): one entry never stops a writer. When
/// the kind cannot be stored, the database is the problem: the error goes
/// back to the caller, which retries with backoff; nothing is dead-lettered.
pub async fn commit_isolating(
    to: Destination<'_>,
    items: &mut [BatchItem],
) -> Result<usize, StoreError> {
    let mut round = Round::default();
    let whole = 0..items.len();
    isolate(to, items, whole, &mut round).await?;
    for index in std::mem::take(&mut round.timed_out) {
        if !retry_alone(to, &mut items[index..=index]).await? {
            let detail = format!(
                "writing this entry alone ran past statement_timeout {} times while other entries were stored; replay it once the database can take it (a higher statement_timeout)",
                SINGLE_TIMEOUT_ATTEMPTS + 1
            );
            tracing::warn!(entry = %items[index].entry.id, %detail, "entry isolated as dead letter");
            items[index].parsed = Err(Rejection::new(Reason::StatementTimeout, detail));
            commit(to, &mut items[index..=index]).await?;
            round.isolated += 1;
        }
    }
    Ok(round.isolated)
}

/// Tries to write an entry that timed out once more on its own, with a
/// short backoff; false when it kept timing out.
async fn retry_alone(to: Destination<'_>, item: &mut [BatchItem]) -> Result<bool, StoreError> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for _ in 0..SINGLE_TIMEOUT_ATTEMPTS {
        tokio::time::sleep(backoff.next_delay()).await;
        match commit(to, item).await {
            Ok(()) => return Ok(true),
            Err(StoreError::StatementTimeout(_)) => continue,
            Err(other) => return Err(other),
        }
    }
    Ok(false)
}

/// Retries of an entry that timed out alone before it is dead-lettered.
const SINGLE_TIMEOUT_ATTEMPTS: usize = 2;

/// What a batch's rows are written to: the studio table a timeout is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trace,
    Observation,
    Other,
}

impl Kind {
    fn of(item: &BatchItem) -> Self {
        match &item.parsed {
            Ok(Parsed::Trace(event)) if event.observation_id().is_some() => Kind::Observation,
            Ok(Parsed::Trace(_)) => Kind::Trace,
            _ => Kind::Other,
        }
    }
}

/// One isolation round over a batch.
#[derive(Default)]
struct Round {
    isolated: usize,
    /// Kinds of which an entry was stored in this round.
    storable: Vec<Kind>,
    /// Indices of single entries that timed out while their kind is storable.
    timed_out: Vec<usize>,
}

impl Round {
    fn stored(&mut self, items: &[BatchItem]) {
        for kind in kinds(items) {
            if !self.storable.contains(&kind) {
                self.storable.push(kind);
            }
        }
    }
}

/// Commits `items[range]`, or isolates what fails in it. The whole batch is
/// passed along so that a timeout can try entries outside the range.
fn isolate<'a>(
    to: Destination<'a>,
    items: &'a mut [BatchItem],
    range: Range<usize>,
    round: &'a mut Round,
) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + 'a>> {
    Box::pin(async move {
        match commit(to, &mut items[range.clone()]).await {
            Ok(()) => {
                round.stored(&items[range]);
                Ok(())
            }
            Err(StoreError::Data(message)) if range.len() == 1 => {
                let item = &mut items[range.clone()];
                let detail = format!("postgres rejected this entry: {message}");
                tracing::warn!(entry = %item[0].entry.id, %detail, "entry isolated as dead letter");
                item[0].parsed = Err(Rejection::new(Reason::RejectedByPostgres, detail));
                commit(to, item).await?;
                round.isolated += 1;
                Ok(())
            }
            Err(StoreError::Data(message)) => {
                tracing::debug!(size = range.len(), error = %message, "splitting rejected batch");
                split(to, items, range, round).await
            }
            Err(StoreError::StatementTimeout(message)) => {
                count_timeout();
                for kind in kinds(&items[range.clone()]) {
                    if round.storable.contains(&kind) {
                        continue;
                    }
                    if !stores_any(to, items, kind).await? {
                        return Err(StoreError::StatementTimeout(format!(
                            "no {kind:?} entry can be stored: the two smallest of different traces time out alone too, so the database is at fault, not an entry (a held lock, a slow disk): {message}"
                        )));
                    }
                    round.storable.push(kind);
                }
                if range.len() == 1 {
                    tracing::debug!(entry = %items[range.start].entry.id, %message, "statement timeout of a single entry; set aside");
                    round.timed_out.push(range.start);
                    return Ok(());
                }
                tracing::warn!(size = range.len(), %message, "statement timeout; splitting the batch");
                split(to, items, range, round).await
            }
            Err(other) => Err(other),
        }
    })
}

/// Commits each half on its own; the halves that committed stay committed
/// when a later one fails (their entries are rewritten idempotently on retry).
async fn split(
    to: Destination<'_>,
    items: &mut [BatchItem],
    range: Range<usize>,
    round: &mut Round,
) -> Result<(), StoreError> {
    let middle = range.start + range.len() / 2;
    isolate(to, items, range.start..middle, round).await?;
    isolate(to, items, middle..range.end, round).await
}

/// Whether Postgres stores an entry of `kind` now, asked of the batch's
/// smallest entry of the kind and, if that one times out, of the smallest
/// of another trace: a held lock or a slow disk stops both, while an entry
/// at fault (a huge row, a row another session holds) is rarely both. The
/// entry stored is stored again, idempotently, with its range.
async fn stores_any(
    to: Destination<'_>,
    items: &mut [BatchItem],
    kind: Kind,
) -> Result<bool, StoreError> {
    let mut candidates: Vec<usize> = (0..items.len())
        .filter(|&index| Kind::of(&items[index]) == kind)
        .collect();
    candidates.sort_by_key(|&index| items[index].entry.byte_size());
    let mut timed_out_trace: Option<Option<String>> = None;
    for index in candidates {
        let trace = trace_of(&items[index]);
        if let Some(first) = &timed_out_trace {
            if trace.is_some() && trace == *first {
                continue;
            }
        }
        match commit(to, &mut items[index..=index]).await {
            Ok(()) => return Ok(true),
            Err(StoreError::StatementTimeout(_)) => {
                count_timeout();
                if timed_out_trace.is_some() {
                    return Ok(false);
                }
                timed_out_trace = Some(trace);
            }
            // The entry's own fault; the split finds it.
            Err(StoreError::Data(_)) => continue,
            Err(other) => return Err(other),
        }
    }
    Ok(false)
}

fn trace_of(item: &BatchItem) -> Option<String> {
    match &item.parsed {
        Ok(Parsed::Trace(event)) => Some(event.trace_id.clone()),
        _ => None,
    }
}

fn kinds(items: &[BatchItem]) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for item in items {
        let kind = Kind::of(item);
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

fn count_timeout() {
    metrics::counter!(crate::metrics::POSTGRES_ERRORS, "kind" => "statement_timeout").increment(1);
}
