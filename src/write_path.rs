//! One batch of stream entries to one committed transaction: parse, lock
//! the studio rows it touches, settle each event's project, merge, write the
//! rows, record SDK heartbeats, dead-letter what cannot be stored, COMMIT.
//! What Postgres will not take is isolated in [`isolate`], so that only the
//! entry at fault becomes a dead letter, and never for the database's fault.

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::TryFutureExt;
use tokio_postgres::{Client, GenericClient};

use crate::config::{CreateProjects, ToastCompression};
use crate::cost::Prices;
pub use crate::event::BatchItem;
use crate::event::{Heartbeat, Parsed, TraceEvent};
use crate::merge;
use crate::retention::{late, Horizons};
use crate::store::dead_letters::{self, DeadLetter};
use crate::store::projects;
use crate::store::transaction::Pipelined;
use crate::store::{compression, copy, heartbeats, planner, retention, rows, Pool, StoreError};

mod isolate;
mod tenancy;

pub use isolate::commit_isolating;

/// What writing into the studio's tables needs beyond the rows: this
/// replica's price cache, whether unknown projects are created and how long
/// values are compressed.
pub struct Studio {
    pub prices: Prices,
    create_projects: CreateProjects,
    /// `create_projects` resolved against the database, once.
    resolved: OnceLock<bool>,
    toast_compression: ToastCompression,
    /// Each write transaction's `SET LOCAL`s: the planner's costs, and lz4
    /// when `toast_compression` asks for it and the server has it (resolved
    /// once).
    settings: OnceLock<String>,
}

impl Studio {
    /// Long values go in with lz4 unless [`Studio::with_toast_compression`]
    /// says otherwise.
    pub fn new(create_projects: CreateProjects, price_refresh: Duration) -> Self {
        Self {
            prices: Prices::new(price_refresh),
            create_projects,
            resolved: OnceLock::new(),
            toast_compression: ToastCompression::Lz4,
            settings: OnceLock::new(),
        }
    }

    pub fn with_toast_compression(self, toast_compression: ToastCompression) -> Self {
        Self {
            toast_compression,
            ..self
        }
    }

    async fn creates_projects(&self, client: &impl GenericClient) -> Result<bool, StoreError> {
        if let Some(creates) = self.resolved.get() {
            return Ok(*creates);
        }
        let creates = self.create_projects.resolve(client).await?;
        Ok(*self.resolved.get_or_init(|| creates))
    }

    /// This transaction's `SET LOCAL`s: the planner's costs, and lz4 when
    /// asked for and the server has it. The server is asked once, in a round
    /// trip of its own: not inside the pipeline that follows, where its
    /// answer would come after the locks and a lock's failure would turn it
    /// into "transaction aborted", hiding the lock's own error.
    async fn settings(&self, client: &Client) -> Result<&str, StoreError> {
        if let Some(settings) = self.settings.get() {
            return Ok(settings);
        }
        let settings = if self.toast_compression.resolve(client).await? {
            format!("{}; {}", planner::INDEX_PROBES, compression::USE_LZ4)
        } else {
            planner::INDEX_PROBES.to_owned()
        };
        Ok(self.settings.get_or_init(|| settings))
    }
}

/// Where a batch goes.
#[derive(Clone, Copy)]
pub struct Destination<'a> {
    pub pool: &'a Pool,
    pub stream: &'a str,
    pub horizons: &'a Horizons,
    pub studio: &'a Studio,
}

/// Transactions run again at once when another writer inserted one of their
/// new rows first; past this many, the batch is retried with backoff.
const CONFLICT_ATTEMPTS: usize = 5;

/// Writes all items in one transaction. Events of traces past their
/// retention horizon become `Parsed::Expired` and are not stored; events
/// whose project is unknown or disagrees with their stored trace become dead
/// letters.
pub async fn commit(to: Destination<'_>, items: &mut [BatchItem]) -> Result<(), StoreError> {
    late::expire_old(items, to.horizons, chrono::Utc::now());
    let mut attempt = 1;
    loop {
        match attempt_commit(to, items).await {
            Err(StoreError::Conflict(message)) if attempt < CONFLICT_ATTEMPTS => {
                metrics::counter!(crate::metrics::WRITE_CONFLICTS).increment(1);
                tracing::debug!(%message, attempt, "new row stored by another writer; running the transaction again");
                attempt += 1;
            }
            Err(StoreError::Conflict(message)) => {
                return Err(StoreError::Unavailable(format!(
                    "{CONFLICT_ATTEMPTS} transactions in a row met rows another writer stored first: {message}"
                )))
            }
            other => return other,
        }
    }
}

async fn attempt_commit(to: Destination<'_>, items: &mut [BatchItem]) -> Result<(), StoreError> {
    let pooled = to.pool.get().await?;
    let client: &Client = &pooled;
    // Outside the transaction, each a round trip only when its cache is
    // empty or due.
    let prices = to.studio.prices.current(client).await?;
    metrics::gauge!(crate::metrics::PRICES).set(prices.len() as f64);
    let creates_projects = to.studio.creates_projects(client).await?;
    let settings = to.studio.settings(client).await?;

    let events: Vec<(usize, &TraceEvent)> = items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| match &item.parsed {
            Ok(Parsed::Trace(event)) => Some((index, event)),
            _ => None,
        })
        .collect();
    // Sorted and distinct: the order every replica locks rows in.
    let trace_ids = sorted_distinct(events.iter().map(|(_, e)| e.trace_id.as_str()));
    let observation_ids = sorted_distinct(events.iter().filter_map(|(_, e)| e.observation_id()));
    let projects = tenancy::projects_of(&events);

    // Round trips cost far more than these statements when the machine is
    // busy (a BEGIN took 0.45 ms at 5,000 events/s): BEGIN, the settings,
    // the row locks, the projects the studio lacks and the COPY statements
    // go in one (pipelined, run in the order sent; answers looked at in that
    // order, so that the first failure is the one returned). Each future
    // sends its one statement when first polled: one that waited for an
    // answer before sending would run after the others, and fail as
    // "transaction aborted" when one of them failed.
    let tx = Pipelined::new(client);
    let (begun, configured, locked, missing, copies) = futures_util::join!(
        tx.begin(),
        client.batch_execute(settings),
        rows::lock(client, &trace_ids, &observation_ids),
        projects::missing(client, &projects),
        copy::Statements::prepare(client),
    );
    begun?;
    configured?;
    let locked = locked?;
    let missing = missing?;
    let copies = copies?;
    let stored = rows::read(client, &locked).await?;

    // Decided inside the transaction, applied to the items once written.
    let refused = settle_projects(client, &events, &stored, &missing, creates_projects).await?;

    let accepted: Vec<&TraceEvent> = events
        .iter()
        .filter(|(index, _)| !refused.contains_key(index))
        .map(|(_, event)| *event)
        .collect();
    let merged = merge::merge(accepted.iter().copied());
    let plan = rows::plan(&merged, &stored, &prices);
    let last = rows::write(client, copies, &plan).await?;
    record_costs(&plan);

    let letters = dead_letters_of(items, &refused);
    let beats = heartbeats_of(items);
    // With retention on, whether a trace written here was forgotten
    // meanwhile is asked after the rows (see `late::settle`), in their round
    // trip; an expired event forgets its trace first, in `late::settle`.
    let retention_on = to.horizons.active();
    let expired = late::any_expired(items);
    let checked = if retention_on && !expired {
        late::traces_of(accepted.iter().copied())
    } else {
        Vec::new()
    };
    // The last statements, heartbeats, dead letters and the tombstone check
    // in one round trip: each sends its statement when first polled.
    // Boxed: on the stack, this future made a debug build's writer thread
    // overflow its stack when the isolation probe nests a commit.
    let tail = Box::pin(async {
        let ((), (), (), gone) = futures_util::try_join!(
            last,
            heartbeats::upsert(client, &beats),
            dead_letters::insert(client, to.stream, &letters),
            retention::forgotten_among(client, &checked),
        )?;
        Ok(gone)
    });
    if !retention_on {
        // No answer decides anything more: COMMIT goes in the same round trip.
        tx.commit_after(tail.map_ok(drop)).await?;
        mark_refused(items, refused);
        return Ok(());
    }
    let gone = tail.await?;
    mark_refused(items, refused);
    if expired {
        late::settle(client, items, to.horizons).await?;
    } else {
        late::remove_forgotten(client, items, &gone).await?;
    }
    tx.commit().await
}

/// The batch's dead letters: entries that could not be parsed, and events
/// refused for their project.
fn dead_letters_of<'a>(
    items: &'a [BatchItem],
    refused: &'a tenancy::Refused,
) -> Vec<DeadLetter<'a>> {
    items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            let rejection = refused.get(&index).or(item.parsed.as_ref().err())?;
            Some(DeadLetter {
                entry: &item.entry,
                rejection,
            })
        })
        .collect()
}

fn heartbeats_of(items: &[BatchItem]) -> Vec<&Heartbeat> {
    items
        .iter()
        .filter_map(|item| match &item.parsed {
            Ok(Parsed::Heartbeat(beat)) => Some(beat),
            _ => None,
        })
        .collect()
}

/// Events refused for their project become rejections once decided, so
/// that they are acked as dead letters.
fn mark_refused(items: &mut [BatchItem], refused: tenancy::Refused) {
    for (index, rejection) in refused {
        items[index].parsed = Err(rejection);
    }
}

/// Which events are refused for their project (a mismatch with the stored
/// row, or a project the studio does not know, unless projects are created
/// on first sight, which happens here). `missing`: the projects of all
/// events that the studio lacks; only new traces' count.
async fn settle_projects(
    tx: &Client,
    events: &tenancy::Events<'_>,
    stored: &rows::Stored,
    missing: &[String],
    creates_projects: bool,
) -> Result<tenancy::Refused, StoreError> {
    let mut refused = tenancy::refuse_mismatches(events, stored);
    let unknown: Vec<String> = tenancy::projects_of_new_traces(events, &refused, stored)
        .into_iter()
        .filter(|project| missing.iter().any(|m| m == project))
        .map(str::to_owned)
        .collect();
    if creates_projects {
        projects::create(tx, &unknown).await?;
    } else {
        tenancy::refuse_unknown(events, &unknown, &mut refused);
    }
    Ok(refused)
}

/// Counts each end with LLM usage by whether it got a cost.
fn record_costs(plan: &rows::Plan<'_>) {
    for write in plan
        .new_observations
        .iter()
        .chain(&plan.changed_observations)
    {
        let Some(usage) = write.end.and_then(|e| e.llm.as_ref()) else {
            continue;
        };
        let outcome = match (&write.costs, usage.billable()) {
            (Some(_), _) => "priced",
            (None, Some(_)) => "no_price",
            (None, None) => "not_billable",
        };
        metrics::counter!(crate::metrics::COSTS, "outcome" => outcome).increment(1);
    }
}

/// The ids sorted and each once. A sort of a vector, not a tree: the tree's
/// node-by-node comparisons were 1.9% of a seed drain's service CPU.
fn sorted_distinct<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
