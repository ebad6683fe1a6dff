//! The integration tests: one binary, one module a concern, against the
//! Redis and PostgreSQL that `scripts/test.sh` starts once per run (each
//! test on a database and stream of its own, see `harness`), so the tests
//! run in parallel threads. Pure and property tests live here too: one more
//! module costs nothing, one more binary costs a link and a start.
//!
//! A new concern is a new file `tests/it/<concern>.rs` and a `mod` line
//! below (in alphabetical order); shared helpers go in `tests/it/harness/`
//! under the module of their concern. A test that stops or alters the shared
//! servers, or needs the machine to itself, goes in `tests/exclusive/`
//! instead (say why in its first line).

mod harness;

mod allocator;
mod bad_input;
mod command_line_secrets;
mod compression;
mod crafted_payloads;
mod credentials_rotation;
mod defects;
mod group_books;
mod lag;
mod merge_properties;
mod otlp_spans;
mod parser_fuzz;
mod pg_errors;
mod pipeline;
mod retention;
mod store_merge;
mod studio;
mod studio_schema;
mod tls;
mod transaction;
mod version;
mod weighed_read;
