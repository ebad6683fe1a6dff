//! Own binary because: these tests stop, restart or alter the shared Redis
//! and PostgreSQL, or measure the real release binary's memory and need the
//! two cores to themselves; cargo runs test binaries one after another, and
//! inside this one [`alone`] runs its tests one at a time. The fault suite
//! (`tests/faults/run.sh`) builds it in release with `fault-injection`.

use tokio::sync::{Mutex, MutexGuard};

/// The integration tests' harness, compiled here by path: one harness for
/// both binaries. These tests use part of it only.
#[allow(dead_code)]
#[path = "../it/harness/mod.rs"]
mod harness;

mod faults;
mod memory;
mod postgres_outage;
mod postgres_read_only;
mod redis_restart;
mod support;

/// Held for a whole test: no other test of this binary runs meanwhile (an
/// async lock: each test holds it across its awaits; a failed test releases
/// it as it unwinds).
async fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::const_new(());
    ALONE.lock().await
}
