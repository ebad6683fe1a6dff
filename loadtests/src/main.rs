//! `loadgen`: load generator and checker for swisper-ingest.
//!
//! - `publish` generates realistic traces (seeded) in the SDK's wire format and
//!   XADDs them at a fixed rate or as a backlog, then prints a JSON summary.
//! - `verify` waits until the consumer group has acknowledged everything,
//!   checks that every published event is stored, and measures end-to-end
//!   latency and drain time from the database's commit timestamps.
//! - `report` turns the measurements of `loadtests/bench.sh` into the
//!   markdown results table.

mod publish;
mod pyjson;
mod report;
mod stats;
mod traces;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and checker for swisper-ingest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish realistic traces to the stream; prints a JSON summary.
    Publish(publish::PublishArgs),
    /// Wait for the group to drain, check every event is stored, measure latency.
    Verify(verify::VerifyArgs),
    /// Render the benchmark's measurements (JSON lines) as a markdown table.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Publish(args) => {
                let summary_path = args.summary.clone();
                let summary = publish::run(args).await?;
                let json = serde_json::to_string_pretty(&summary)?;
                if let Some(path) = summary_path {
                    std::fs::write(&path, &json)?;
                }
                println!("{json}");
                Ok(true)
            }
            Command::Verify(args) => {
                let (verification, ok) = verify::run(args).await?;
                println!("{}", serde_json::to_string_pretty(&verification)?);
                if !verification.ok {
                    eprintln!("loadgen verify: {}", verification.problems.join("; "));
                }
                Ok(ok)
            }
            Command::Report(args) => report::run(args).map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}
