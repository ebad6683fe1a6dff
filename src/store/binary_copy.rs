//! PostgreSQL's binary COPY format, sent in large chunks.
//!
//! `tokio_postgres::binary_copy::BinaryCopyInWriter` hands its buffer to the
//! connection whenever it passes 4 KiB: with rows of ~2 KB that is a
//! `CopyData` message, a channel send and a wake-up of the connection task
//! every second row, and a fresh buffer grown from nothing after each. This
//! encoder writes the same bytes (header, one tuple per row, trailer) into
//! buffers of [`CHUNK`] and sends each whole.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::CopyInSink;

use super::{conflict_or, StoreError};

/// What one `CopyData` message carries, at least (a row that does not fit
/// grows its buffer). Bounds the memory a COPY adds to the rows it encodes.
const CHUNK: usize = 256 * 1024;

/// Room beyond [`CHUNK`] in a chunk's buffer: the row that fills a chunk
/// ends past it, and without room its buffer doubled, copying the whole
/// chunk once more (0.9% of a seed drain's service CPU in `perf`). Rows up
/// to this size fit.
const ROW_ROOM: usize = 64 * 1024;

/// Sent chunks kept for reuse (at most this many more chunks held).
const SENT_KEPT: usize = 3;

const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A binary COPY in progress: [`Self::row`] for each row, then
/// [`Self::finish`]. Dropped unfinished, the COPY is aborted (the sink's
/// own rule), and the transaction with it.
pub struct BinaryCopy<'t> {
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    types: &'t [Type],
    buf: BytesMut,
    /// The chunks sent last, oldest first, each taken back for a next one
    /// once the connection has copied it out: a fresh 256 KiB buffer per
    /// chunk was fresh pages faulted in and zeroed by the kernel each time.
    /// With one kept, half of them were still in the connection's hands.
    sent: VecDeque<Bytes>,
}

impl<'t> BinaryCopy<'t> {
    /// `expected_bytes`: about what the rows take encoded, to size the first
    /// buffer at once (a steady transaction's COPY holds a few KB, a
    /// backlog's a chunk): grown from nothing it was copied at each doubling.
    pub fn new(sink: CopyInSink<Bytes>, types: &'t [Type], expected_bytes: usize) -> Self {
        let header = MAGIC.len() + 8;
        let mut buf = BytesMut::with_capacity((header + expected_bytes).min(CHUNK + ROW_ROOM));
        buf.put_slice(MAGIC);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        Self {
            sink: Box::pin(sink),
            types,
            buf,
            sent: VecDeque::with_capacity(SENT_KEPT),
        }
    }

    /// Encodes one row, its values in the order of the types; sends the
    /// buffer once it holds a chunk. A value that cannot be encoded is a
    /// [`StoreError::Data`] naming its column, so that the write path
    /// isolates its entry as it does the rows Postgres refuses.
    ///
    /// # Panics
    /// If the number of values is not the number of types (a bug of the
    /// caller's, as in `BinaryCopyInWriter`).
    pub async fn row(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        assert_eq!(values.len(), self.types.len(), "one value per column");
        // Column counts are at most 1,664 in PostgreSQL.
        self.buf.put_i16(values.len() as i16);
        for (column, (value, ty)) in values.iter().zip(self.types).enumerate() {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let cannot_encode = |e: &dyn std::fmt::Display| {
                StoreError::Data(format!("column {column} ({ty}): {e}"))
            };
            let length = match value
                .to_sql_checked(ty, &mut self.buf)
                .map_err(|e| cannot_encode(&e))?
            {
                IsNull::Yes => -1,
                IsNull::No => {
                    i32::try_from(self.buf.len() - at - 4).map_err(|e| cannot_encode(&e))?
                }
            };
            self.buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
        if self.buf.len() >= CHUNK {
            let next = self.reusable_chunk();
            let full = std::mem::replace(&mut self.buf, next).freeze();
            // Kept only if it is no bigger than a chunk needs: one huge row
            // must not pin its buffer for the rest of the COPY.
            if full.len() <= 2 * CHUNK {
                if self.sent.len() == SENT_KEPT {
                    self.sent.pop_front();
                }
                self.sent.push_back(full.clone());
            }
            self.sink.send(full).await.map_err(conflict_or)?;
        }
        Ok(())
    }

    /// The oldest sent chunk's buffer if the connection is done with it,
    /// else a new one sized at once (more rows may follow a full chunk).
    fn reusable_chunk(&mut self) -> BytesMut {
        if let Some(oldest) = self.sent.pop_front() {
            match oldest.try_into_mut() {
                Ok(mut buf) => {
                    buf.clear();
                    return buf;
                }
                Err(still_sent) => self.sent.push_front(still_sent),
            }
        }
        BytesMut::with_capacity(CHUNK + ROW_ROOM)
    }

    /// Sends the trailer and ends the COPY: the number of rows copied.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        self.buf.put_i16(-1);
        let last = std::mem::take(&mut self.buf);
        self.sink.send(last.freeze()).await.map_err(conflict_or)?;
        self.sink.as_mut().finish().await.map_err(conflict_or)
    }
}
