//! One retention step, as plain async code (the actor only schedules it):
//! refresh the per-project horizons, take the retention lock or skip, and
//! forget what is due, batch by batch, pausing between transactions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_postgres::Client;

use super::Horizons;
use crate::config::DatabaseSettings;
use crate::config::RetentionSettings;
use crate::metrics as m;
use crate::store::retention::{self as store, OldRows};
use crate::store::StoreError;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No horizon is set: nothing to forget.
    Off,
    /// Another replica holds the retention lock.
    NotHolder,
    /// This replica forgot everything due (this many traces).
    Ran { traces: u64 },
}

pub struct Worker {
    settings: RetentionSettings,
    database: DatabaseSettings,
    horizons: Arc<Horizons>,
    /// The session holding the retention lock (or trying to); dropping it
    /// releases the lock, which is how a replica that fails steps aside.
    session: Option<Client>,
}

impl Worker {
    pub fn new(
        settings: RetentionSettings,
        database: DatabaseSettings,
        horizons: Arc<Horizons>,
    ) -> Self {
        Self {
            settings,
            database,
            horizons,
            session: None,
        }
    }

    /// Refreshes the horizons and, when this replica holds the lock, forgets
    /// what is due. Any Postgres failure drops the session (and the lock).
    pub async fn step(&mut self) -> Result<Step, StoreError> {
        let result = self.try_step().await;
        if result.is_err() {
            self.step_aside();
        }
        result
    }

    async fn try_step(&mut self) -> Result<Step, StoreError> {
        if self.session.as_ref().is_none_or(Client::is_closed) {
            self.session = Some(store::connect(&self.database).await?);
        }
        let client = self.session.as_mut().expect("session just made");
        let overrides = store::overrides(&*client).await?;
        self.horizons.set_overrides(
            overrides
                .into_iter()
                .map(|(project, days)| (project, days.max(1) as u32)),
        );
        if !self.horizons.active() && !self.settings.forgets_other_tables() {
            self.step_aside();
            return Ok(Step::Off);
        }
        if !store::try_lock(client).await? {
            metrics::gauge!(m::RETENTION_HOLDER).set(0.0);
            metrics::gauge!(m::RETENTION_BEHIND).set(0.0);
            return Ok(Step::NotHolder);
        }
        metrics::gauge!(m::RETENTION_HOLDER).set(1.0);
        let traces = self.run().await?;
        tracing::debug!(traces, "retention run complete");
        metrics::gauge!(m::RETENTION_LAST_RUN).set(Utc::now().timestamp_millis() as f64 / 1000.0);
        Ok(Step::Ran { traces })
    }

    /// Drops the session: the lock goes with it, another replica takes over.
    fn step_aside(&mut self) {
        self.session = None;
        metrics::gauge!(m::RETENTION_HOLDER).set(0.0);
        metrics::gauge!(m::RETENTION_BEHIND).set(0.0);
    }

    /// Forgets every due trace of every project, then old dead letters,
    /// heartbeats and tombstones; each batch its own transaction.
    async fn run(&mut self) -> Result<u64, StoreError> {
        let client = self.session.as_mut().expect("session held");
        let batch = i64::from(self.settings.retention_batch_size);
        let pause = self.settings.pause();
        let mut projects: BTreeSet<String> = store::projects(client).await?.into_iter().collect();
        projects.extend(self.horizons.overridden());
        let mut total = 0;
        for project in &projects {
            let Some(horizon) = self.horizons.horizon(project) else {
                continue;
            };
            // One cut per pass, so that a pass ends even under steady load.
            let cut = Utc::now() - chrono::Duration::from_std(horizon).unwrap_or_default();
            loop {
                let started = Instant::now();
                let forgotten = store::forget_traces(client, project, cut, batch).await?;
                metrics::histogram!(m::RETENTION_BATCH_DURATION)
                    .record(started.elapsed().as_secs_f64());
                count("traces", forgotten.traces);
                count("observations", forgotten.observations);
                total += forgotten.traces;
                if forgotten.traces < batch as u64 {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
        let now = Utc::now();
        let tombstone_cut = self.settings.retention_tombstone_days;
        let tables = [
            (
                OldRows::DeadLetters,
                self.settings.retention_dead_letter_days,
            ),
            (OldRows::Heartbeats, self.settings.retention_heartbeat_days),
            (OldRows::Tombstones, Some(tombstone_cut)),
        ];
        for (table, days) in tables {
            let Some(days) = days else { continue };
            let cut =
                now - chrono::Duration::from_std(self.settings.days(days)).unwrap_or_default();
            loop {
                let forgotten = table.forget(client, cut, batch).await?;
                count(table.table(), forgotten);
                if forgotten < batch as u64 {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
        let behind = self.behind(&projects).await?;
        metrics::gauge!(m::RETENTION_BEHIND).set(behind);
        Ok(total)
    }

    /// Seconds past its horizon of the oldest trace still stored (0 if none).
    async fn behind(&self, projects: &BTreeSet<String>) -> Result<f64, StoreError> {
        let client = self.session.as_ref().expect("session held");
        let mut behind = 0.0f64;
        for project in projects {
            let Some(cut) = self.horizons.cut(project, Utc::now()) else {
                continue;
            };
            if let Some(oldest) = store::oldest_trace(client, project).await? {
                let late = (cut - oldest).num_milliseconds() as f64 / 1000.0;
                behind = behind.max(late);
            }
        }
        Ok(behind)
    }
}

fn count(table: &'static str, rows: u64) {
    if rows > 0 {
        metrics::counter!(m::RETENTION_FORGOTTEN, "table" => table).increment(rows);
    }
}
