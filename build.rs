//! Build facts compiled into the binary.
//!
//! - Rebuilds when a migration is added or changed: refinery embeds the SQL
//!   files of `migrations/` at compile time.
//! - `SWISPER_INGEST_BUILD_COMMIT`, the commit the binary was built from, for
//!   `--version`, `check` and the `swisper_ingest_build_info` metric. The
//!   builder's `SWISPER_INGEST_GIT_COMMIT` wins (the Docker build has no
//!   `.git`); otherwise
//!   `git rev-parse --short=12 HEAD`, with `-dirty` when tracked files differ
//!   from it; otherwise "unknown".
//!
//! The script reruns when HEAD moves (the HEAD file, the branch's ref, packed
//! refs) and when the sources change, which rebuild the crate anyway; never on
//! every build: cargo reruns a script whose watched path is missing each time,
//! so only paths that exist are watched.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set by whoever builds, to name the commit.
const COMMIT_VAR: &str = "SWISPER_INGEST_GIT_COMMIT";
/// What the crate reads (a name of its own: cargo also sets it when it runs
/// tests, which must still see whether the builder set COMMIT_VAR).
const OUTPUT_VAR: &str = "SWISPER_INGEST_BUILD_COMMIT";

/// What the binary's content depends on: a change here rebuilds the crate
/// anyway, so checking for `-dirty` again costs only the git calls.
const SOURCES: &[&str] = &["migrations", "src", "Cargo.toml", "Cargo.lock", "build.rs"];

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed={COMMIT_VAR}");
    let commit = match std::env::var(COMMIT_VAR) {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env={OUTPUT_VAR}={commit}");
}

/// The checkout's commit, or None without git or outside a repository.
fn from_git() -> Option<String> {
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    watch_head();
    for source in SOURCES {
        watch(Path::new(source));
    }
    // --no-optional-locks: status must not rewrite .git/index as a side
    // effect (another git process, or an editor, may hold it).
    let changes = git(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])?;
    Some(if changes.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// Watches what moves when HEAD does. `git rev-parse` finds the files, so a
/// worktree (where `.git` is a file naming the real folder) works too: its
/// HEAD is in its own git dir, branch refs in the common one.
fn watch_head() {
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| git_dir.clone());
    watch(&git_dir.join("HEAD"));
    // A detached HEAD holds the hash itself; a branch points at its ref,
    // which is a file of its own or a line of packed-refs.
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&common.join(branch));
    }
    watch(&common.join("packed-refs"));
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Runs git in the package folder; None when it is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8(output.stdout).ok()?.trim().to_owned())
}
