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
/// mimalloc (v3, what the crate builds) keeps freed pages 1 s before giving
/// them back to the OS (its default, `MIMALLOC_PURGE_DELAY=1000`): a batch's
/// buffers are freed and allocated again well within that. Giving them back
/// at once (0) cost 10-17% more CPU draining, in page faults; 10 ms, 4-11%
/// more on SDK-like entries (docs/benchmarks.md, fifth and sixteenth
/// sessions). Its huge pages are turned off: see [`no_transparent_huge_pages`].
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

/// Transparent huge pages off for this process, unless the operator chose
/// with `MIMALLOC_ALLOW_THP` (mimalloc reads it at start; at 0 it does the
/// same). mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), and
/// every 2 MiB page that a batch's buffers touch is then faulted in whole:
/// draining, the peak RSS was 30-45 MiB higher (1,000,000 small entries:
/// 117 MiB against 73), for no CPU saved (docs/benchmarks.md, sixteenth
/// session). The kernel checks the flag at each fault, so the arenas that
/// mimalloc reserved before `main` are covered too.
#[cfg(target_os = "linux")]
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory
    // of this process; it sets a flag on the process's address space.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status != 0 {
        // Not fatal: the service runs as before, with a higher peak RSS.
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "could not turn transparent huge pages off");
    }
}

#[cfg(not(target_os = "linux"))]
fn no_transparent_huge_pages() {}

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
    no_transparent_huge_pages();
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
