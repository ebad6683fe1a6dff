//! What this binary is: its crate version and the commit it was built from
//! (build.rs), shown by `--version` and `check` and carried as labels of the
//! `swisper_ingest_build_info` metric, so a running replica traces back to
//! its source.

/// The crate version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit: the builder's `SWISPER_INGEST_GIT_COMMIT`, else the short hash
/// of the checkout (`-dirty` with uncommitted changes), else "unknown".
pub const COMMIT: &str = env!("SWISPER_INGEST_BUILD_COMMIT");

/// What `--version` prints after the name: "0.1.0 (commit 1a2b3c4d5e6f)".
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWISPER_INGEST_BUILD_COMMIT"),
    ")"
);
