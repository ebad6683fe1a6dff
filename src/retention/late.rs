//! Late events: an event of a trace that is past its horizon is not stored
//! (it would resurrect half a trace); it is acked and counted with the
//! outcome `expired`, never dead-lettered.
//!
//! Times come from the Redis server's clock, never from a producer's: a
//! trace's time is when Redis received its oldest entry (the entry id), and
//! an event's time is its own entry id's. So two checks find every late
//! event:
//! - by its own entry id ([`expire_old`], no I/O): an entry older than its
//!   project's horizon proves that its trace is due, whatever else arrived;
//!   its trace is forgotten as a whole in the same transaction;
//! - by tombstone ([`settle`]): an event of a trace that spans the cut can
//!   be inside the horizon while its trace was forgotten already; the
//!   tombstones of recently forgotten traces catch it.
//!
//! A skewed client clock (an event whose `timestamp` is a month old) moves
//! nothing: its entry id is as new as the entry.
//!
//! Events of traces inside the window pass both checks untouched, so the
//! merge's "same rows in any order, with duplicates" holds for them as
//! before.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::Horizons;
use crate::event::{BatchItem, Parsed, Reason, Rejection, TraceEvent};
use crate::store::{retention, StoreError};

/// Marks events whose entry Redis received before their project's horizon
/// as expired; returns how many.
pub fn expire_old(items: &mut [BatchItem], horizons: &Horizons, now: DateTime<Utc>) -> usize {
    let mut expired = 0;
    for item in items.iter_mut() {
        let due = match &item.parsed {
            Ok(Parsed::Trace(event)) => horizons
                .cut(&event.project_id, now)
                .is_some_and(|cut| event.entry_id.time() < cut),
            _ => false,
        };
        if due {
            expire(item);
            expired += 1;
        }
    }
    expired
}

fn expire(item: &mut BatchItem) {
    let placeholder = Err(Rejection::new(Reason::InvalidData, ""));
    item.parsed = match std::mem::replace(&mut item.parsed, placeholder) {
        Ok(Parsed::Trace(event)) => Ok(Parsed::Expired(event)),
        other => other,
    };
}

/// Inside the batch's transaction, after its rows are written: forgets the
/// traces of expired events, then removes what this batch wrote for traces
/// that are forgotten (tombstoned) and marks those events expired too.
///
/// Checking after writing is what makes it safe against a retention batch
/// running at the same moment: writing the trace row waits for the
/// retention transaction holding it, so this later statement sees its
/// tombstone (see `store::retention::forget_traces`). The write path sends
/// the check itself in the round trip of its last statements when no event
/// expired ([`remove_forgotten`] then does the rest).
pub async fn settle(
    tx: &Client,
    items: &mut [BatchItem],
    horizons: &Horizons,
) -> Result<(), StoreError> {
    if !horizons.active() {
        return Ok(());
    }
    let old = traces_of(items.iter().filter_map(|item| match &item.parsed {
        Ok(Parsed::Expired(event)) => Some(event),
        _ => None,
    }));
    retention::forget_in_tx(tx, &old).await?;

    let written = traces_of(items.iter().filter_map(|item| match &item.parsed {
        Ok(Parsed::Trace(event)) => Some(event),
        _ => None,
    }));
    let gone = retention::forgotten_among(tx, &written).await?;
    remove_forgotten(tx, items, &gone).await
}

/// Whether an event of the batch expired: its trace is forgotten in the
/// batch's own transaction, before the tombstone check.
pub fn any_expired(items: &[BatchItem]) -> bool {
    items
        .iter()
        .any(|item| matches!(item.parsed, Ok(Parsed::Expired(_))))
}

/// The events' (trace id, project) pairs, sorted and each once.
pub fn traces_of<'a>(events: impl IntoIterator<Item = &'a TraceEvent>) -> Vec<(&'a str, &'a str)> {
    let traces: BTreeSet<(&str, &str)> = events
        .into_iter()
        .map(|event| (event.trace_id.as_str(), event.project_id.as_str()))
        .collect();
    traces.into_iter().collect()
}

/// Removes what this batch wrote for `gone`, traces forgotten while it was
/// written, and marks their events expired.
pub async fn remove_forgotten(
    tx: &Client,
    items: &mut [BatchItem],
    gone: &HashSet<(String, String)>,
) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    let gone_pairs: Vec<(&str, &str)> = gone
        .iter()
        .map(|(trace, project)| (trace.as_str(), project.as_str()))
        .collect();
    retention::remove_in_tx(tx, &gone_pairs).await?;
    for item in items.iter_mut() {
        let forgotten = matches!(&item.parsed, Ok(Parsed::Trace(event))
            if gone.contains(&(event.trace_id.clone(), event.project_id.clone())));
        if forgotten {
            expire(item);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, StreamEntry, StreamId, TraceEvent, TraceStart};
    use crate::retention::test_settings;

    /// An entry Redis received `age_secs` ago, whose producer claims it was
    /// published `claimed_age_secs` ago.
    fn entry(project: &str, age_secs: i64, claimed_age_secs: i64, now: DateTime<Utc>) -> BatchItem {
        let received = now - chrono::Duration::seconds(age_secs);
        let entry = StreamEntry {
            id: StreamId {
                ms: received.timestamp_millis() as u64,
                seq: 0,
            },
            fields: Vec::new(),
            deliveries: 1,
        };
        let event = TraceEvent {
            entry_id: entry.id,
            trace_id: format!("t-{project}-{age_secs}"),
            project_id: project.to_owned(),
            published_at: now - chrono::Duration::seconds(claimed_age_secs),
            body: EventBody::TraceStart(TraceStart::default()),
        };
        BatchItem {
            entry,
            parsed: Ok(Parsed::Trace(event)),
        }
    }

    fn item(project: &str, age_secs: i64, now: DateTime<Utc>) -> BatchItem {
        entry(project, age_secs, age_secs, now)
    }

    #[test]
    fn a_producers_clock_expires_nothing() {
        let settings = test_settings(&["--retention-days", "30", "--retention-unit-secs", "1"]);
        let horizons = Horizons::new(&settings);
        horizons.set_overrides([]);
        let now = Utc::now();
        let day = 24 * 3600;
        // Received now, claiming to be 31 days old: kept.
        let mut skewed = vec![entry("p", 1, 31 * day, now)];
        assert_eq!(expire_old(&mut skewed, &horizons, now), 0);
        // Received 31 seconds ago with a fresh claim, horizon 30 s: expired.
        let mut old = vec![entry("p", 31, 0, now)];
        assert_eq!(expire_old(&mut old, &horizons, now), 1);
    }

    #[test]
    fn only_events_older_than_their_projects_horizon_expire() {
        let settings = test_settings(&["--retention-days", "10", "--retention-unit-secs", "1"]);
        let horizons = Horizons::new(&settings);
        let now = Utc::now();
        let mut items = vec![item("p", 5, now), item("p", 15, now), item("long", 15, now)];
        assert_eq!(
            expire_old(&mut items, &horizons, now),
            0,
            "nothing expires before the overrides are known"
        );
        horizons.set_overrides([("long".to_owned(), 100)]);
        assert_eq!(expire_old(&mut items, &horizons, now), 1);
        assert!(matches!(items[0].parsed, Ok(Parsed::Trace(_))));
        assert!(matches!(items[1].parsed, Ok(Parsed::Expired(_))));
        assert!(matches!(items[2].parsed, Ok(Parsed::Trace(_))));
        assert_eq!(items[1].event_type(), "trace_start");
    }
}
