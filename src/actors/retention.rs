//! The retention worker: every interval, one `retention::worker` step
//! (refresh this replica's horizons; forget due data if this replica holds
//! the retention lock). Stopping it at any point is safe: each batch is its
//! own transaction, and the lock goes with the session.

use actix::prelude::*;

use super::RetentionWorkerSettings;
use crate::metrics as m;
use crate::retention::worker::{Step, Worker};

/// The replica's shared state with this actor's settings groups.
type Shared = super::Shared<RetentionWorkerSettings>;

pub struct RetentionWorker {
    shared: Shared,
}

impl RetentionWorker {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl Actor for RetentionWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let settings = &self.shared.settings;
        let interval = settings.retention.interval();
        let mut worker = Worker::new(
            settings.retention.clone(),
            settings.database.clone(),
            self.shared.horizons.clone(),
        );
        // The loop lives as long as the actor; dropping it mid-batch rolls
        // that batch back.
        let forever = async move {
            let mut was = None;
            loop {
                match worker.step().await {
                    Ok(step) => {
                        let kind = std::mem::discriminant(&step);
                        if was != Some(kind) {
                            log_change(step);
                        }
                        was = Some(kind);
                    }
                    Err(error) => {
                        metrics::counter!(m::RETENTION_ERRORS).increment(1);
                        tracing::warn!(%error, "retention step failed; retrying next interval");
                        was = None;
                    }
                }
                tokio::time::sleep(interval).await;
            }
        };
        ctx.spawn(forever.into_actor(self));
    }
}

/// Logs transitions (off, waiting for the lock, working), not every step.
fn log_change(step: Step) {
    match step {
        Step::Off => tracing::info!("retention off: no horizon set"),
        Step::NotHolder => tracing::info!("retention: another replica holds the lock"),
        Step::Ran { traces } => {
            tracing::info!(
                traces,
                "retention: this replica holds the lock and forgets due data"
            )
        }
    }
}
