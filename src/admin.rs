//! Operator commands on dead letters: list them, re-publish chosen ones to
//! the stream after a fix, purge chosen ones. Replay and purge refuse to act
//! without an explicit selection.

use std::io::Write;

use crate::config::{DatabaseSettings, RedisSettings};
use crate::connect::problem;
use crate::store::dead_letters::{self, Selection};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// Print dead letters as JSON lines (newest last).
    List {
        #[command(flatten)]
        select: SelectArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-publish the selected dead letters to their stream (XADD with the
    /// same fields) and mark them replayed.
    Replay {
        #[command(flatten)]
        select: SelectArgs,
        /// Print what would be replayed, publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Redis to publish to (the same settings as `serve`).
        #[command(flatten)]
        redis: Box<RedisSettings>,
    },
    /// Delete the selected dead letters.
    Purge {
        #[command(flatten)]
        select: SelectArgs,
    },
}

/// The selection; replay and purge need at least one criterion.
#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Dead letter ids (the `id` column); repeatable.
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// Only this reason_code (e.g. invalid_timestamp).
    #[arg(long)]
    reason: Option<String>,
    /// Only entries of this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Only dead letters created more than this many days ago.
    #[arg(long)]
    older_than_days: Option<u32>,
    /// Include dead letters that were replayed already.
    #[arg(long)]
    include_replayed: bool,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection {
            ids: self.ids.clone(),
            reason_code: self.reason.clone(),
            stream: self.stream.clone(),
            older_than: self
                .older_than_days
                .map(|days| chrono::Utc::now() - chrono::Duration::days(i64::from(days))),
            include_replayed: self.include_replayed,
        }
    }
}

pub async fn run(database: &DatabaseSettings, command: DeadLetterCommand) -> anyhow::Result<()> {
    // Before anything connects: no password on the command line.
    if let DeadLetterCommand::Replay { redis, .. } = &command {
        redis.validate()?;
    }
    let target = database.target()?;
    let client = target
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect: {}", target.explain(&e)))?;
    let mut out = std::io::stdout().lock();
    match command {
        DeadLetterCommand::List { select, limit } => {
            for letter in dead_letters::list(&client, &select.selection(), limit).await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
        }
        DeadLetterCommand::Replay {
            select,
            redis,
            dry_run,
        } => {
            let selection = explicit(&select)?;
            let letters = dead_letters::list(&client, &selection, i64::MAX).await?;
            let target = redis.target()?;
            redis.warn_if_insecure();
            let mut redis = target
                .open(crate::connect::RESPONSE_TIMEOUT)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot connect: {}",
                        problem::redis(&e, target.verification)
                    )
                })?;
            let (mut replayed, mut skipped) = (0, 0);
            for letter in letters {
                let Some(fields) = dead_letters::fields_from_json(&letter.fields) else {
                    writeln!(
                        out,
                        "skipped {}: its fields were too large to keep",
                        letter.id
                    )?;
                    skipped += 1;
                    continue;
                };
                if dry_run {
                    writeln!(
                        out,
                        "would replay {} ({}) to {}",
                        letter.id, letter.reason_code, letter.stream
                    )?;
                    continue;
                }
                let mut xadd = redis::cmd("XADD");
                xadd.arg(&letter.stream).arg("*");
                for (name, value) in &fields {
                    xadd.arg(name.as_slice()).arg(value.as_slice());
                }
                let new_id: String = xadd.query_async(&mut redis).await.context("XADD")?;
                dead_letters::mark_replayed(&client, letter.id, &new_id).await?;
                writeln!(out, "replayed {} as {new_id}", letter.id)?;
                replayed += 1;
            }
            writeln!(out, "{replayed} replayed, {skipped} skipped")?;
        }
        DeadLetterCommand::Purge { select } => {
            let selection = explicit(&select)?;
            let purged = dead_letters::purge(&client, &selection).await?;
            writeln!(out, "{purged} purged")?;
        }
    }
    Ok(())
}

fn explicit(select: &SelectArgs) -> anyhow::Result<Selection> {
    let selection = select.selection();
    if selection.is_empty() {
        bail!("refusing to act on every dead letter: select with --id, --reason, --stream or --older-than-days");
    }
    Ok(selection)
}
