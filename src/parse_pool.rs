//! Parsing off the actor threads: a fixed set of threads turns read entries
//! into batch items (base64, inflate, JSON), so that parsing uses the cores
//! given while the actors' threads do I/O and the writer talks to Postgres.
//!
//! Fixed, not tokio's blocking pool: that one grows to hundreds of threads,
//! and each thread's malloc arena counts against a pod's memory limit.
//!
//! Parsing an entry needs a few times its expanded size while it runs
//! (decoded, inflated, the JSON tree, the text again), beyond what the
//! memory budget reserves for it. Heavy batches are therefore parsed one at
//! a time, as on a single thread; ordinary ones in parallel.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::event::{self, BatchItem, Limits, StreamEntry};

type Job = Box<dyn FnOnce() + Send>;

/// A batch that weighs more than this (its reservation in the memory
/// budget) is parsed alone: two of them at once took a replica with the
/// default 96 MiB budget past 256 MiB (tests/exclusive/memory.rs).
pub const HEAVY_BATCH_BYTES: u64 = 8 << 20;

/// A handle to the pool; clones share it. Its threads end when the last
/// handle is dropped. With no threads, parsing runs inline on the caller's.
#[derive(Clone)]
pub struct ParsePool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: usize,
    /// Held while a heavy batch is parsed.
    heavy: Arc<tokio::sync::Mutex<()>>,
}

impl ParsePool {
    pub fn new(threads: usize) -> Self {
        if threads == 0 {
            return Self {
                jobs: None,
                threads,
                heavy: Default::default(),
            };
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("parse-{index}"))
                .spawn(move || loop {
                    // The lock is held only to take a job, not to run it.
                    let job = queue.lock().map(|queue| queue.recv());
                    let Ok(Ok(job)) = job else { return };
                    // A panic drops the job's reply: the caller sees it and
                    // fails as it would have parsing inline; the thread lives on.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                })
                .expect("can start a parse thread");
        }
        Self {
            jobs: Some(jobs),
            threads,
            heavy: Default::default(),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// [`event::prepare`] on a pool thread; `weight` is the batch's
    /// reservation in the memory budget.
    pub async fn prepare(
        &self,
        entries: Vec<StreamEntry>,
        weight: u64,
        limits: Limits,
        max_deliveries: u32,
    ) -> Result<Vec<BatchItem>, ParsePanicked> {
        let Some(jobs) = &self.jobs else {
            return Ok(event::prepare(entries, &limits, max_deliveries));
        };
        let _alone = if weight > HEAVY_BATCH_BYTES {
            Some(self.heavy.lock().await)
        } else {
            None
        };
        let (reply, receiver) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(event::prepare(entries, &limits, max_deliveries));
        });
        // The threads live as long as this handle: sending cannot fail
        // unless every thread is gone, which catch_unwind prevents.
        jobs.send(job).map_err(|_| ParsePanicked)?;
        receiver.await.map_err(|_| ParsePanicked)
    }
}

/// Parsing a batch panicked (a bug): the batch stays pending and is read again.
#[derive(Debug, thiserror::Error)]
#[error("parsing a batch panicked; its entries stay pending")]
pub struct ParsePanicked;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StreamId;

    fn entry(seq: u64, fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: StreamId { ms: 1, seq },
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec().into(), v.as_bytes().to_vec().into()))
                .collect(),
            deliveries: 1,
        }
    }

    #[tokio::test]
    async fn parses_on_the_pool_in_order() {
        let pool = ParsePool::new(2);
        let entries: Vec<StreamEntry> = (0..50)
            .map(|seq| entry(seq, &[("event_type", "nonsense")]))
            .collect();
        let items = pool
            .prepare(entries, 0, Limits::default(), 10)
            .await
            .unwrap();
        assert_eq!(items.len(), 50);
        assert!(items.iter().all(|item| item.parsed.is_err()));
        let seqs: Vec<u64> = items.iter().map(|item| item.entry.id.seq).collect();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_job_leaves_the_pool_working() {
        let pool = ParsePool::new(1);
        let (reply, receiver) = oneshot::channel::<()>();
        pool.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _keep = reply;
                panic!("a bug while parsing");
            }))
            .unwrap();
        assert!(
            receiver.await.is_err(),
            "the panicked job's reply is dropped"
        );
        let items = pool
            .prepare(vec![entry(1, &[])], 0, Limits::default(), 10)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
    }

    #[tokio::test]
    async fn no_threads_parses_inline() {
        let pool = ParsePool::new(0);
        let items = pool
            .prepare(vec![entry(1, &[]), entry(2, &[])], 0, Limits::default(), 10)
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
    }
}
