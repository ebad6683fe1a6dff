//! The `swisper-ingest` command: `serve` runs the service, `check` reports on
//! its connections, `migrate` applies the schema and exits, `dead-letters`
//! lists, replays and purges dead letters, `retention` sets per-project
//! horizons.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use swisper_ingest::admin::DeadLetterCommand;
use swisper_ingest::config::{DatabaseSettings, ServeSettings};
use swisper_ingest::retention::command::{self as retention, RetentionCommand};
use swisper_ingest::{admin, app, check, store, telemetry};

/// Parsing allocates and frees many small values per entry; glibc's malloc
/// spent a third of the service's CPU on that (docs/benchmarks.md).
///
/// mimalloc keeps freed pages 10 ms before giving them back to the OS (its
/// default, `MIMALLOC_PURGE_DELAY`): a batch's buffers are freed and
/// allocated again well within that. Giving them back at once
/// (`MIMALLOC_PURGE_DELAY=0`) cost 10-17% more CPU draining, in page
/// faults, for 30-50 MiB less peak RSS: pages a parse thread allocated and
/// the writer freed linger those 10 ms (docs/benchmarks.md, fifth session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "swisper-ingest",
    version = swisper_ingest::build_info::LONG_VERSION,
    about = "Redis Streams to PostgreSQL ingestion for SwisperStudio observability"
)]
struct Cli {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "OBSERVABILITY_LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume the stream, store events, serve HTTP.
    Serve(Box<ServeSettings>),
    /// Connect to Redis and PostgreSQL as `serve` would and report: server
    /// versions, TLS, the stream and group, the schema. Exit 0 when all is well.
    Check {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: Box<ServeSettings>,
    },
    /// Apply pending migrations and exit.
    Migrate(DatabaseSettings),
    /// List, replay or purge dead letters.
    DeadLetters {
        #[command(flatten)]
        database: DatabaseSettings,
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Per-project retention horizons: set, unset, show.
    Retention {
        #[command(flatten)]
        database: DatabaseSettings,
        #[command(subcommand)]
        command: RetentionCommand,
    },
}

/// Clap names the flag of a bad value; operators set environment variables,
/// so name that too.
fn parse_cli() -> Cli {
    Cli::try_parse().unwrap_or_else(|error| {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let bad_value = matches!(
            error.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        );
        if let (true, Some(ContextValue::String(flag))) =
            (bad_value, error.get(ContextKind::InvalidArg))
        {
            let long = flag
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_start_matches("--");
            let command = Cli::command();
            let env = command
                .get_subcommands()
                .flat_map(|sub| sub.get_arguments())
                .chain(command.get_arguments())
                .find(|arg| arg.get_long() == Some(long))
                .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()));
            if let Some(env) = env {
                eprintln!("swisper-ingest: invalid setting {env} (--{long})");
            }
        }
        error.exit()
    })
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let report_on_stdout = matches!(
        cli.command,
        Command::Check { .. } | Command::DeadLetters { .. }
    );
    // Logs go to stdout, except for commands whose stdout is their report;
    // only the service exports spans.
    let serving = matches!(cli.command, Command::Serve(_));
    let telemetry = telemetry::init(&cli.log_format, report_on_stdout, serving);
    let result = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve(settings) => app::serve(*settings, app::shutdown_signal()).await,
            Command::Migrate(database) => {
                database.validate()?;
                let target = database.target()?;
                let applied = match store::migrate::run(&target).await {
                    Err(store::migrate::MigrateError::Connect(e)) => {
                        anyhow::bail!("migrate: cannot connect: {}", target.explain(&e))
                    }
                    other => other.context("migrate")?,
                };
                tracing::info!(?applied, "schema is up to date");
                Ok(())
            }
            Command::DeadLetters { database, command } => {
                database.validate()?;
                admin::run(&database, command).await
            }
            Command::Check { json, settings } => {
                let report = check::run(&settings).await?;
                report.print(json)?;
                if !report.ok {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Retention { database, command } => {
                database.validate()?;
                retention::run(&database, command).await
            }
        }
    });
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("swisper-ingest: {error:#}");
            ExitCode::FAILURE
        }
    }
}
