//! Retention: how long data is kept, and what a late event is.
//!
//! - [`RetentionSettings`] (in `config`): the global horizon and the worker's pace.
//! - [`Horizons`]: the horizon of each project (global, or its override in
//!   `retention_projects`), shared by the retention worker, which refreshes
//!   the overrides, and the writers, which refuse late events.
//! - [`late`]: the write path's side: events of forgotten traces.
//! - [`command`]: `swisper-ingest retention set|unset|show`.
//!
//! The worker itself is `actors::retention`; its statements are in
//! `store::retention`. Why batched deletes and not partitions:
//! docs/operations.md, "Retention".

pub mod command;
pub mod late;
pub mod worker;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::RetentionSettings;

/// The horizon of every project, as the writers and the worker see it.
#[derive(Debug)]
pub struct Horizons {
    global: Option<Duration>,
    unit: Duration,
    /// Per-project horizons in days; `None` until first read from Postgres.
    overrides: RwLock<Option<HashMap<String, u32>>>,
}

impl Horizons {
    pub fn new(settings: &RetentionSettings) -> Self {
        Self {
            global: settings.retention_days.map(|d| settings.days(d)),
            unit: Duration::from_secs(settings.retention_unit_secs),
            overrides: RwLock::new(None),
        }
    }

    /// A fixed global horizon (`None`: off) and no per-project horizons,
    /// already loaded: for tests and tools that write without a worker.
    pub fn fixed(global: Option<Duration>) -> Self {
        Self {
            global,
            unit: Duration::from_secs(86_400),
            overrides: RwLock::new(Some(HashMap::new())),
        }
    }

    /// Replaces the per-project horizons (read from `retention_projects`).
    pub fn set_overrides(&self, overrides: impl IntoIterator<Item = (String, u32)>) {
        let map = overrides.into_iter().collect();
        *self.overrides.write().expect("horizons lock") = Some(map);
    }

    /// Whether the overrides have been read at least once.
    pub fn loaded(&self) -> bool {
        self.overrides.read().expect("horizons lock").is_some()
    }

    /// Whether traces may be forgotten, so that the write path must check
    /// for late events. Before the overrides are read, only the global
    /// horizon counts: a replica whose schema lacks the retention tables
    /// (not migrated yet) keeps ingesting when retention is off.
    pub fn active(&self) -> bool {
        self.global.is_some()
            || self
                .overrides
                .read()
                .expect("horizons lock")
                .as_ref()
                .is_some_and(|overrides| !overrides.is_empty())
    }

    /// The horizon of a project; `None` keeps it forever.
    pub fn horizon(&self, project: &str) -> Option<Duration> {
        let overrides = self.overrides.read().expect("horizons lock");
        let days = overrides.as_ref().and_then(|o| o.get(project).copied());
        match days {
            Some(days) => Some(self.unit * days),
            None => self.global,
        }
    }

    /// Traces of `project` first seen before this are due. `None` while the
    /// overrides are unknown: an override could be longer than the global
    /// horizon, and refusing a storable event would lose it.
    pub fn cut(&self, project: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.loaded() {
            return None;
        }
        let horizon = chrono::Duration::from_std(self.horizon(project)?).ok()?;
        now.checked_sub_signed(horizon)
    }

    /// Projects with an override (the worker visits them even without a
    /// global horizon).
    pub fn overridden(&self) -> Vec<String> {
        self.overrides
            .read()
            .expect("horizons lock")
            .as_ref()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Settings parsed from command-line flags, for the tests of this module's
/// parts.
#[cfg(test)]
pub(crate) fn test_settings(args: &[&str]) -> RetentionSettings {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        retention: RetentionSettings,
    }
    Cli::parse_from(std::iter::once("test").chain(args.iter().copied())).retention
}

#[cfg(test)]
mod tests {
    use super::test_settings as settings;
    use super::*;

    #[test]
    fn off_by_default_and_overrides_take_precedence() {
        let horizons = Horizons::new(&settings(&[]));
        let now = Utc::now();
        assert!(!horizons.active(), "off until a horizon is known");
        assert_eq!(horizons.cut("p", now), None);
        horizons.set_overrides([]);
        assert!(!horizons.active());
        assert_eq!(horizons.cut("p", now), None);
        horizons.set_overrides([("p".to_owned(), 2)]);
        assert!(horizons.active());
        assert_eq!(
            horizons.cut("p", now),
            Some(now - chrono::Duration::days(2))
        );
        assert_eq!(horizons.cut("other", now), None);
    }

    #[test]
    fn the_unit_scales_days_for_tests() {
        let horizons = Horizons::new(&settings(&[
            "--retention-days",
            "5",
            "--retention-unit-secs",
            "1",
        ]));
        horizons.set_overrides([("long".to_owned(), 60)]);
        let now = Utc::now();
        assert_eq!(
            horizons.cut("p", now),
            Some(now - chrono::Duration::seconds(5))
        );
        assert_eq!(
            horizons.cut("long", now),
            Some(now - chrono::Duration::seconds(60))
        );
    }
}
