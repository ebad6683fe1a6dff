//! Every connection of the service to Redis and PostgreSQL is made here, from
//! the settings: TLS (rustls only), credentials (read again from their files
//! at each new connection), one timeout policy, and errors explained in
//! terms of the setting to fix. Consumers, claimer, acks, monitor, the pool,
//! migrations, retention, the dead-letter commands and `check` all come
//! through; nothing else calls a driver's connect.
//!
//! Timeouts: making one connection (TCP, TLS, authentication) may take
//! [`CONNECT_TIMEOUT`], for every connection of both servers; an answer on
//! a connection may take [`RESPONSE_TIMEOUT`], except a consumer's blocking
//! read ([`redis::RedisTarget::open_for_reads`]: BLOCK and a margin).
//! Postgres statements are bounded by the server's `statement_timeout`, and
//! a pooled connection is waited for at most [`CONNECT_TIMEOUT`].
//!
//! - [`redis`]: connections from `OBSERVABILITY_REDIS_*`.
//! - [`postgres`]: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and
//!   `PGPASSWORD` on top of tokio-postgres; the pool.
//! - [`credentials`]: password and user files, read at each connection.
//! - [`verify`]: the rustls certificate verifiers behind `sslmode`.
//! - [`problem`]: what a failed connection means.

pub mod credentials;
pub mod postgres;
pub mod problem;
pub mod redis;
pub mod resp;
pub mod tls;
pub mod verify;

use std::time::Duration;

/// How long making one connection may take, to either server: TCP, TLS
/// handshake and authentication. A server that does not answer within it
/// counts as unreachable, and the caller's backoff takes over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a command may wait for its answer (a blocking read excepted).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

use std::sync::Arc;

/// The crypto provider of every TLS connection (rustls with ring): one
/// provider, chosen here, rather than whichever a dependency enables.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // redis-rs builds its rustls configs from the process default; install
    // ours as that default once (a second install fails harmlessly).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the peer's certificate is checked, for logs and `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// No TLS at all.
    Plaintext,
    /// Encrypted, but any certificate is accepted (sslmode=require or prefer
    /// without a root certificate, OBSERVABILITY_REDIS_TLS_INSECURE).
    None,
    /// The chain up to a trusted CA, not the host name (sslmode=verify-ca).
    Chain,
    /// The chain and the host name.
    Full,
}

impl Verification {
    pub fn verified(self) -> bool {
        matches!(self, Self::Chain | Self::Full)
    }
}
