//! Every connection of the service to Redis and PostgreSQL is made here, from
//! the settings: TLS (rustls only), credentials, and errors explained in
//! terms of the setting to fix. Consumers, claimer, acks, monitor, the pool,
//! migrations, the dead-letter commands and `check` all come through.
//!
//! - [`redis`]: `redis::Client` from `OBSERVABILITY_REDIS_*`.
//! - [`postgres`]: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and
//!   `PGPASSWORD` on top of tokio-postgres.
//! - [`verify`]: the rustls certificate verifiers behind `sslmode`.
//! - [`problem`]: what a failed connection means, logged once.

pub mod postgres;
pub mod problem;
pub mod redis;
pub mod verify;

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
