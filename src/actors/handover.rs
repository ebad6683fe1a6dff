//! Handing a page to the writer, the same way for consumers and the
//! claimer: parse it on the parse pool, send it, await its commit.

use actix::Recipient;

use super::writer::{WriteEntries, WriteError};
use crate::batch_span::BatchSpan;
use crate::config::LimitSettings;
use crate::event::StreamId;
use crate::memory_budget::Reservation;
use crate::metrics as m;
use crate::parse_pool::ParsePool;
use crate::weighed_read::Page;

/// What became of a page handed to the writer.
#[derive(Debug)]
pub enum Handed {
    /// Committed and acked.
    Stored,
    /// Poison protection refused it (the run of bad entries): still pending.
    Refused(u64),
    /// Not stored (parsing panicked, or the writer stopped): still pending.
    NotStored,
    /// The writer is gone: still pending, and this reader must stop.
    WriterGone,
}

/// Everything a reader needs to hand pages over.
#[derive(Clone)]
pub struct Handover {
    /// The reader's name in the group, for the logs and spans.
    pub reader: String,
    /// The stream read, for the batch spans.
    pub stream: String,
    /// Whether the reader is the claimer (its pages are claimed ones).
    pub claims: bool,
    pub parse_pool: ParsePool,
    pub limits: LimitSettings,
    pub writer: Recipient<WriteEntries>,
}

impl Handover {
    /// Parses the page's entries and has the writer store them; the writer
    /// gives the reservation back once no entry of it is in hand. `None`
    /// when the page has no entries (only trimmed ids, or nothing).
    pub async fn hand(&self, page: Page, reservation: Reservation) -> Option<Handed> {
        report_trimmed(&page.deleted);
        let entries = page.entries.len();
        if entries == 0 {
            return None;
        }
        Some(self.store(page, reservation).await)
    }

    async fn store(&self, page: Page, reservation: Reservation) -> Handed {
        let entries = page.entries.len();
        let batch = BatchSpan::read(
            &self.stream,
            &self.reader,
            self.claims,
            &page.entries,
            reservation.bytes(),
        );
        let items = self
            .parse_pool
            .prepare(
                page.entries,
                reservation.bytes(),
                self.limits.entry(),
                self.limits.max_deliveries,
            )
            .await;
        let Ok(items) = items else {
            let _in_batch = batch.entered();
            // A bug in parsing: the entries stay pending and are read again,
            // each time a delivery, until the delivery limit dead-letters them.
            tracing::error!(reader = %self.reader, entries, "parsing a batch panicked; its entries stay pending");
            return Handed::NotStored;
        };
        let write = WriteEntries {
            items,
            reservation: Some(reservation),
            span: batch.clone(),
        };
        let sent = self.writer.send(write).await;
        // Log lines below carry the batch; a refusal or a lost writer ends it.
        let _in_batch = batch.answered(&sent);
        match sent {
            Ok(Ok(())) => Handed::Stored,
            Ok(Err(WriteError::Poisoned(run))) => {
                tracing::warn!(reader = %self.reader, run, entries, "batch refused by poison protection; kept pending");
                Handed::Refused(run)
            }
            Ok(Err(error)) => {
                tracing::warn!(reader = %self.reader, %error, entries, "batch not stored; it stays pending");
                Handed::NotStored
            }
            Err(_) => Handed::WriterGone,
        }
    }
}

/// Pending entries deleted from the stream (trimmed) before they were
/// stored: the read script acked them, as nothing is left to store.
fn report_trimmed(deleted: &[StreamId]) {
    if !deleted.is_empty() {
        metrics::counter!(m::TRIMMED_BEFORE_ACK).increment(deleted.len() as u64);
        tracing::warn!(
            entries = deleted.len(),
            "pending entries were trimmed from the stream before being stored"
        );
    }
}
