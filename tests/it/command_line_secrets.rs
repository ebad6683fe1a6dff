//! No command takes a password on its command line, where `ps` shows it to
//! every user of the machine: a URL with a password given as a flag is
//! refused before anything connects; the same URL from the environment is
//! not refused for that.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_swisper-ingest");
/// Nothing listens there: a command that gets past its settings fails to
/// connect, with another message.
const PG_WITH_PASSWORD: &str = "postgres://ingest:s3cret@127.0.0.1:1/studio";
const REDIS_WITH_PASSWORD: &str = "redis://:s3cret@127.0.0.1:1";
const PG_WITHOUT: &str = "postgres://ingest@127.0.0.1:1/studio";

/// The binary with only `env` set of the settings it reads.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env("PGCONNECT_TIMEOUT", "2");
    for (name, _) in std::env::vars() {
        if name.starts_with("OBSERVABILITY_") || name.starts_with("PG") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run swisper-ingest")
}

fn refused_for_the_command_line(output: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("s3cret"),
        "the password is printed: {stderr}"
    );
    !output.status.success() && stderr.contains("password on the command line")
}

#[test]
fn every_command_refuses_a_password_given_as_a_flag() {
    let pg_flag = ["--database-url", PG_WITH_PASSWORD];
    let commands: Vec<Vec<&str>> = vec![
        [&["migrate"][..], &pg_flag].concat(),
        [&["dead-letters"][..], &pg_flag, &["list"]].concat(),
        [&["retention"][..], &pg_flag, &["show"]].concat(),
        [&["check"][..], &pg_flag].concat(),
        [&["serve"][..], &pg_flag].concat(),
        vec![
            "dead-letters",
            "--database-url",
            PG_WITHOUT,
            "replay",
            "--id",
            "1",
            "--redis-url",
            REDIS_WITH_PASSWORD,
        ],
    ];
    for args in commands {
        let output = run(&args, &[]);
        assert!(
            refused_for_the_command_line(&output),
            "{args:?} was not refused for its command line: {output:?}"
        );
    }
}

#[test]
fn the_same_url_from_the_environment_is_not_refused_for_it() {
    for args in [&["migrate"][..], &["retention", "show"]] {
        let output = run(args, &[("DATABASE_URL", PG_WITH_PASSWORD)]);
        assert!(!output.status.success(), "{args:?} connected to nothing?");
        assert!(
            !refused_for_the_command_line(&output),
            "{args:?} refused a password from the environment: {output:?}"
        );
    }
}
