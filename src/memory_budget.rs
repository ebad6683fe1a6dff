//! The memory budget of a replica: one byte semaphore for everything in hand,
//! from the read of an entry to the XACK of its batch (raw fields, expanded
//! and parsed forms, the writer's buffer). Consumers and the claimer reserve
//! before each read and release after the commit.
//!
//! What an entry costs is its *weight* (see [`Weights`]), computed by Redis
//! before the entry is delivered (`redis_stream::read_weighed`), so that a
//! read never brings more than what was reserved. An entry heavier than the
//! whole budget takes the whole budget: it waits until nothing else is in
//! hand and is then processed alone, never refused and never a deadlock.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics as m;

/// The budget when neither it nor the container's limit is configured: far
/// above what batches of small entries weigh (2 consumers and the claimer
/// × 500 entries of 1.6 KB weigh under 10 MB), and it keeps the peak RSS of
/// a backlog of 4 MiB entries under 256 MB (docs/reliability.md).
pub const DEFAULT_BUDGET_BYTES: u64 = 96 * 1024 * 1024;

/// The share of the container's memory limit given to the budget; the rest
/// covers the process itself, allocator slack and the entries' transient
/// copies while Redis replies are decoded.
const SHARE_OF_LIMIT: (u64, u64) = (3, 8);

/// Memory settings, flattened into `ServeSettings`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MemorySettings {
    /// What the entries in hand may weigh at once, in bytes (read and not yet
    /// committed and acked, with their expanded and parsed forms). Default:
    /// 3/8 of OBSERVABILITY_MEMORY_LIMIT_BYTES when that is set, else 96 MiB.
    #[arg(long, env = "OBSERVABILITY_MEMORY_BUDGET_BYTES",
          value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub memory_budget_bytes: Option<u64>,

    /// The container's memory limit in bytes (the Helm chart sets it from
    /// `resources.limits.memory`); sizes the budget when that is not set.
    #[arg(long, env = "OBSERVABILITY_MEMORY_LIMIT_BYTES",
          value_parser = clap::value_parser!(u64).range(16 * 1024 * 1024..))]
    pub memory_limit_bytes: Option<u64>,
}

impl MemorySettings {
    pub fn budget_bytes(&self) -> u64 {
        match (self.memory_budget_bytes, self.memory_limit_bytes) {
            (Some(budget), _) => budget,
            (None, Some(limit)) => limit / SHARE_OF_LIMIT.1 * SHARE_OF_LIMIT.0,
            (None, None) => DEFAULT_BUDGET_BYTES,
        }
    }
}

/// Permits are KiB: a tokio semaphore counts at most u32 permits at a time.
const UNIT: u64 = 1024;

/// How an entry's weight is computed from its sizes, in bytes of memory.
///
/// Measured through the pipeline: the raw fields are held as read, parsed
/// into JSON values, merged into rows and encoded for COPY, about four times
/// their size at the peak; compressed `data` is expanded to text, parsed and
/// encoded, about three times its expanded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub raw_factor: u64,
    pub expanded_factor: u64,
    /// Expansion is bounded by OBSERVABILITY_MAX_EXPANDED_BYTES (larger is a
    /// dead letter), so no entry is weighed above it.
    pub max_expanded_bytes: u64,
}

impl Weights {
    pub const RAW_FACTOR: u64 = 4;
    pub const EXPANDED_FACTOR: u64 = 3;

    pub fn new(max_expanded_bytes: u64) -> Self {
        Self {
            raw_factor: Self::RAW_FACTOR,
            expanded_factor: Self::EXPANDED_FACTOR,
            max_expanded_bytes,
        }
    }

    /// The weight of an entry of `raw` bytes whose data expands to `expanded`.
    pub fn weight(&self, raw: u64, expanded: u64) -> u64 {
        self.raw_factor * raw + self.expanded_factor * expanded.min(self.max_expanded_bytes)
    }
}

/// A replica's budget, shared by its consumers and its claimer.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes reserved from the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: MemoryBudget,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT)
            .clamp(1, u64::from(u32::MAX))
            .min(Semaphore::MAX_PERMITS as u64) as u32;
        metrics::gauge!(m::MEMORY_BUDGET).set((u64::from(units) * UNIT) as f64);
        metrics::gauge!(m::MEMORY_IN_HAND).set(0.0);
        Self {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes in hand right now (reserved by reads not yet committed).
    pub fn in_hand_bytes(&self) -> u64 {
        (u64::from(self.total_units) - self.semaphore.available_permits() as u64) * UNIT
    }

    fn units(&self, bytes: u64) -> u32 {
        bytes.div_ceil(UNIT).clamp(1, u64::from(self.total_units)) as u32
    }

    fn reservation(&self, permit: OwnedSemaphorePermit) -> Reservation {
        let reservation = Reservation {
            permit: Some(permit),
            budget: self.clone(),
        };
        self.report();
        reservation
    }

    fn report(&self) {
        metrics::gauge!(m::MEMORY_IN_HAND).set(self.in_hand_bytes() as f64);
    }

    /// Waits until `bytes` are free and takes them; more than the whole
    /// budget takes the whole budget (the entry is then processed alone).
    pub async fn acquire(&self, bytes: u64) -> Reservation {
        let units = self.units(bytes);
        if u64::from(units) * UNIT < bytes {
            metrics::counter!(m::OVERSIZED_FOR_BUDGET).increment(1);
        }
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        self.reservation(permit)
    }

    /// Waits until at least `min` bytes are free (first come, first served),
    /// then also takes whatever else is free, up to `max` in all.
    pub async fn acquire_available(&self, min: u64, max: u64) -> Reservation {
        let min_units = self.units(min);
        let max_units = self.units(max).max(min_units);
        let mut permit = self
            .semaphore
            .clone()
            .acquire_many_owned(min_units)
            .await
            .expect("the budget's semaphore is never closed");
        let more = (self.semaphore.available_permits() as u32).min(max_units - min_units);
        if more > 0 {
            if let Ok(extra) = self.semaphore.clone().try_acquire_many_owned(more) {
                permit.merge(extra);
            }
        }
        self.reservation(permit)
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// True when this holds the whole budget: whatever the next entry
    /// weighs, it may be read (alone).
    pub fn is_whole_budget(&self) -> bool {
        self.bytes() >= self.budget.total_bytes()
    }

    /// Splits `bytes` (rounded up, at most all but one unit of what this
    /// holds) off into a reservation of their own: each part of a page sent
    /// to another writer gives its share back when that writer is done.
    pub fn split_off(&mut self, bytes: u64) -> Reservation {
        let permit = self.permit.as_mut().and_then(|permit| {
            let units = (self.budget.units(bytes) as usize).min(permit.num_permits() - 1);
            (units > 0).then(|| permit.split(units)).flatten()
        });
        Reservation {
            permit,
            budget: self.budget.clone(),
        }
    }

    /// Gives back what `bytes` (rounded up) do not need.
    pub fn shrink_to(&mut self, bytes: u64) {
        let Some(permit) = self.permit.as_mut() else {
            return;
        };
        let keep = self.budget.units(bytes) as usize;
        if permit.num_permits() > keep {
            drop(permit.split(permit.num_permits() - keep));
            self.budget.report();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_come_back_when_dropped_or_shrunk() {
        let budget = MemoryBudget::new(1024 * 1024);
        let mut all = budget.acquire_available(64 * 1024, u64::MAX).await;
        assert!(all.is_whole_budget());
        all.shrink_to(10_000);
        assert_eq!(all.bytes(), 10 * 1024);
        assert_eq!(budget.in_hand_bytes(), 10 * 1024);
        drop(all);
        assert_eq!(budget.in_hand_bytes(), 0);
    }

    #[tokio::test]
    async fn an_entry_heavier_than_the_budget_waits_for_all_of_it_then_runs_alone() {
        let budget = MemoryBudget::new(1024 * 1024);
        let small = budget.acquire(100_000).await;
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(50 * 1024 * 1024).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "took the budget while another held part of it"
        );
        drop(small);
        let alone = waiting.await.unwrap();
        assert!(alone.is_whole_budget());
        assert_eq!(budget.in_hand_bytes(), budget.total_bytes());
    }

    #[test]
    fn weights_bound_expansion_by_the_expanded_limit() {
        let weights = Weights::new(1000);
        assert_eq!(weights.weight(10, 0), 40);
        assert_eq!(weights.weight(10, 5000), 40 + 3000);
    }
}
