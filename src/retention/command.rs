//! `swisper-ingest retention set|unset|show`: per-project horizons in
//! `retention_projects`. Every replica reads them again within one
//! OBSERVABILITY_RETENTION_INTERVAL_SECS.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;

use crate::config::DatabaseSettings;
use crate::store::retention as store;

#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Keep this project's traces for this many days instead of
    /// OBSERVABILITY_RETENTION_DAYS (shorter or longer).
    Set {
        #[arg(long)]
        project: String,
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=36_500))]
        days: i32,
    },
    /// Remove a project's own horizon: it takes OBSERVABILITY_RETENTION_DAYS again.
    Unset {
        #[arg(long)]
        project: String,
    },
    /// Print the per-project horizons as JSON lines.
    Show,
}

pub async fn run(database: &DatabaseSettings, command: RetentionCommand) -> anyhow::Result<()> {
    let client = store::connect(database)
        .await
        .context("cannot connect to postgres (DATABASE_URL)")?;
    let mut out = std::io::stdout().lock();
    match command {
        RetentionCommand::Set { project, days } => {
            store::set_override(&client, &project, days).await?;
            writeln!(out, "project {project}: traces kept {days} days")?;
        }
        RetentionCommand::Unset { project } => {
            if store::unset_override(&client, &project).await? {
                writeln!(
                    out,
                    "project {project}: takes OBSERVABILITY_RETENTION_DAYS again"
                )?;
            } else {
                writeln!(out, "project {project} had no horizon of its own")?;
            }
        }
        RetentionCommand::Show => {
            for (project, days) in store::overrides(&client).await? {
                let line = serde_json::json!({ "project_id": project, "days": days });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}
