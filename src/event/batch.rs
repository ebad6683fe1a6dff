//! The parse stage's output: each entry read, with what it turned out to be.

use super::{parse_entry, Limits, Parsed, Reason, Rejection, StreamEntry};

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
