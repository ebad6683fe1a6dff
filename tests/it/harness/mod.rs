//! The shared helpers of the integration tests, one module a concern. Each
//! test isolates itself on the shared Redis and PostgreSQL that
//! `scripts/test.sh` starts once per run (its own database and stream, see
//! [`env::TestEnv`]), so the tests of one binary run in parallel threads.
//!
//! The binary of tests/exclusive/ (tests that stop or alter the shared
//! servers) compiles this harness too, by path.

pub mod env;
pub mod pg;
pub mod publish;
pub mod service;
pub mod stream;
pub mod wait;

pub use env::*;
pub use pg::*;
pub use publish::*;
pub use service::*;
pub use stream::*;
pub use wait::*;
