//! The write path's transaction, begun in the same round trip as its first
//! statements and, when nothing follows its rows, committed in the same
//! round trip as its last. tokio-postgres' own `Transaction` waits for
//! BEGIN's answer before anything else can be sent, and sends COMMIT on its
//! own: two round trips of the nine in a steady transaction, each a wake-up
//! of another process on a busy machine.

use std::future::Future;
use std::task::Poll;

use futures_util::FutureExt;
use tokio_postgres::Client;

use super::StoreError;

/// A transaction on `client`, rolled back when dropped unless committed.
pub struct Pipelined<'a> {
    client: &'a Client,
    committed: bool,
}

impl<'a> Pipelined<'a> {
    /// Nothing is sent yet: [`Pipelined::begin`] goes first in the first
    /// pipeline.
    pub fn new(client: &'a Client) -> Self {
        Self {
            client,
            committed: false,
        }
    }

    /// BEGIN. Must be the first future polled of the first pipeline:
    /// statements go out in the order their futures are first polled.
    pub async fn begin(&self) -> Result<(), StoreError> {
        Ok(self.client.batch_execute("BEGIN").await?)
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.client.batch_execute("COMMIT").await?;
        self.committed = true;
        Ok(())
    }

    /// COMMIT in the same round trip as `last`, the transaction's last
    /// statements, sent only once `last` has sent them all: a statement
    /// that fails before it is sent (a value that cannot be encoded) must
    /// keep COMMIT from going out, or the transaction would commit without
    /// it. `last` must send its statements when first polled and end at
    /// once on a failure (`try_join!`). A statement that Postgres refuses
    /// aborts the transaction, and COMMIT then rolls it back.
    pub async fn commit_after(
        self,
        last: impl Future<Output = Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        let mut last = std::pin::pin!(last);
        let first = std::future::poll_fn(|cx| Poll::Ready(last.as_mut().poll(cx))).await;
        if let Poll::Ready(written) = first {
            written?;
            return self.commit().await;
        }
        let (written, committed) = futures_util::join!(last, self.commit());
        written?;
        committed
    }
}

impl Drop for Pipelined<'_> {
    fn drop(&mut self) {
        if !self.committed {
            // Sent on the first poll, without waiting for the answer, as
            // tokio-postgres' own Transaction sends its ROLLBACK when
            // dropped: the pool's next user of the connection queues behind
            // it. After a failed COMMIT, Postgres only warns that no
            // transaction is in progress.
            let _ = self.client.batch_execute("ROLLBACK").now_or_never();
        }
    }
}
