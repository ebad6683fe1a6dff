//! What the pipeline knows about itself, shared by the actors that learn it
//! and the HTTP handlers that report it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::redis_stream::GroupState;

#[derive(Debug, Default)]
pub struct Health {
    redis_ok: AtomicBool,
    /// The probe: Postgres answers and accepts writes (a primary, not
    /// read-only), from the lag monitor.
    postgres_ok: AtomicBool,
    /// The writer's last attempt committed (true until one fails): a full
    /// disk or exhausted connections show only when writing.
    last_write_ok: AtomicBool,
    group_ok: AtomicBool,
    draining: AtomicBool,
    /// Poison protection tripped: a broken producer, consumption paused.
    poisoned: AtomicBool,
    /// Unix ms of the last commit, or of the start (a fresh replica is not stalled).
    last_progress_ms: AtomicU64,
    /// Entries waiting for the group: lag plus pending, from the lag monitor.
    backlog: AtomicU64,
    /// The lag monitor's last reading, served by the status endpoint.
    group_state: Mutex<Option<GroupState>>,
    /// (project_id, seconds) of the newest SDK heartbeats, capped and
    /// replaced on each reading, so that quiet projects drop out of /metrics.
    sdk_heartbeat_ages: Mutex<Vec<(String, f64)>>,
}

/// Why the service is or is not ready, for /readyz.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub redis: bool,
    pub postgres: bool,
    pub last_write_ok: bool,
    pub group: bool,
    pub draining: bool,
    pub poisoned: bool,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn new() -> Arc<Self> {
        let health = Self::default();
        health.last_progress_ms.store(unix_ms(), Ordering::Relaxed);
        health.last_write_ok.store(true, Ordering::Relaxed);
        Arc::new(health)
    }

    pub fn set_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.publish_ready();
    }

    pub fn set_postgres(&self, ok: bool) {
        self.postgres_ok.store(ok, Ordering::Relaxed);
        self.publish_ready();
    }

    /// The writer's outcome: a failed write turns readiness off until a
    /// write commits again, whatever the probe says.
    pub fn set_last_write(&self, ok: bool) {
        if self.last_write_ok.swap(ok, Ordering::Relaxed) != ok {
            self.publish_ready();
        }
    }

    pub fn set_group(&self, ok: bool) {
        self.group_ok.store(ok, Ordering::Relaxed);
        self.publish_ready();
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.publish_ready();
    }

    pub fn set_poisoned(&self, poisoned: bool) {
        if self.poisoned.swap(poisoned, Ordering::Relaxed) != poisoned {
            metrics::gauge!(crate::metrics::POISONED).set(if poisoned { 1.0 } else { 0.0 });
            self.publish_ready();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn committed(&self) {
        self.set_last_write(true);
        let now = unix_ms();
        self.last_progress_ms.store(now, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::LAST_COMMIT).set(now as f64 / 1000.0);
    }

    /// Records the lag monitor's reading; `backlog` is this group's lag
    /// plus its pending entries.
    pub fn set_group_state(&self, state: GroupState, backlog: u64) {
        self.backlog.store(backlog, Ordering::Relaxed);
        *self.group_state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    pub fn group_state(&self) -> Option<GroupState> {
        self.group_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_sdk_heartbeat_ages(&self, ages: Vec<(String, f64)>) {
        *self
            .sdk_heartbeat_ages
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ages;
    }

    pub fn sdk_heartbeat_ages(&self) -> Vec<(String, f64)> {
        self.sdk_heartbeat_ages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn readiness(&self) -> Readiness {
        let redis = self.redis_ok.load(Ordering::Relaxed);
        let postgres = self.postgres_ok.load(Ordering::Relaxed);
        let last_write_ok = self.last_write_ok.load(Ordering::Relaxed);
        let group = self.group_ok.load(Ordering::Relaxed);
        let draining = self.is_draining();
        let poisoned = self.poisoned.load(Ordering::Relaxed);
        Readiness {
            ready: redis && postgres && last_write_ok && group && !draining && !poisoned,
            redis,
            postgres,
            last_write_ok,
            group,
            draining,
            poisoned,
        }
    }

    /// Not live when entries wait, Redis and Postgres answer, and yet nothing
    /// was committed for `stall_timeout`: a restart may help. While a
    /// dependency is down or refuses writes (read-only, disk full: the last
    /// write failed), a restart would not, so the replica stays live.
    pub fn stalled_for(&self, stall_timeout: Duration) -> Option<Duration> {
        let readiness = self.readiness();
        let dependencies_ok = readiness.redis && readiness.postgres && readiness.last_write_ok;
        if !dependencies_ok || self.backlog.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let idle = Duration::from_millis(
            unix_ms().saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        );
        (idle > stall_timeout).then_some(idle)
    }

    fn publish_ready(&self) {
        let ready = if self.readiness().ready { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::READY).set(ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_turns_readiness_off_until_a_commit_and_is_no_stall() {
        let health = Health::new();
        health.set_redis(true);
        health.set_postgres(true);
        health.set_group(true);
        assert!(health.readiness().ready);
        // Entries wait and nothing was committed for ages.
        health.backlog.store(10, Ordering::Relaxed);
        health.last_progress_ms.store(0, Ordering::Relaxed);
        assert!(health.stalled_for(Duration::from_secs(1)).is_some());

        // Postgres refuses writes (disk full): unready, and a restart would
        // not help, so not stalled either.
        health.set_last_write(false);
        assert!(!health.readiness().ready);
        assert!(!health.readiness().last_write_ok);
        assert!(health.stalled_for(Duration::from_secs(1)).is_none());

        health.committed();
        assert!(health.readiness().ready);
    }
}
