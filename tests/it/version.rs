//! A binary tells which release and commit it is: `--version` names the crate
//! version and the commit of the checkout it was built from (build.rs), and
//! the `swisper_ingest_build_info` metric carries the same two as labels.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_swisper-ingest");

/// (version, commit) from "swisper-ingest 0.1.0 (commit 1a2b3c4d5e6f)".
fn reported() -> (String, String) {
    let output = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(output.status.success(), "--version failed: {output:?}");
    let line = String::from_utf8(output.stdout).expect("utf-8");
    let parse = |line: &str| -> Option<(String, String)> {
        let rest = line.trim().strip_prefix("swisper-ingest ")?;
        let (version, commit) = rest.split_once(" (commit ")?;
        Some((version.to_owned(), commit.strip_suffix(')')?.to_owned()))
    };
    parse(&line).unwrap_or_else(|| panic!("unexpected --version output: {line:?}"))
}

/// The commit the builder named, as build.rs reads it (cargo passes the
/// builder's environment on to the tests).
fn builder_commit() -> Option<String> {
    let given = std::env::var("SWISPER_INGEST_GIT_COMMIT").ok()?;
    let given = given.trim();
    (!given.is_empty()).then(|| given.to_owned())
}

/// git's short hash of this checkout, else "unknown" (no git, or not a
/// repository), as build.rs finds it.
fn checkout_commit() -> String {
    match Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let (version, commit) = reported();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    if let Some(given) = builder_commit() {
        assert_eq!(commit, given, "the builder's SWISPER_INGEST_GIT_COMMIT");
        return;
    }
    // The dirty mark is the tree's state when the binary was built, which
    // may differ from now; the hash may not.
    let hash = commit.strip_suffix("-dirty").unwrap_or(&commit);
    assert_eq!(
        hash,
        checkout_commit(),
        "--version reports commit {commit:?}"
    );
}

#[test]
fn build_info_metric_carries_version_and_commit() {
    let (version, commit) = reported();
    let rendered = swisper_ingest::metrics::install().render();
    let line = rendered
        .lines()
        .find(|l| l.starts_with("swisper_ingest_build_info{"))
        .unwrap_or_else(|| panic!("no build_info series in:\n{rendered}"));
    assert!(
        line.contains(&format!("version=\"{version}\"")),
        "build_info without version {version}: {line}"
    );
    assert!(
        line.contains(&format!("commit=\"{commit}\"")),
        "build_info without commit {commit}: {line}"
    );
    assert!(line.ends_with(" 1"), "build_info is not 1: {line}");
}
