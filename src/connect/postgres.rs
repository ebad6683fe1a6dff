//! PostgreSQL connections with libpq's meaning of the URL: `sslmode`
//! (disable, prefer, require, verify-ca, verify-full), `sslrootcert`,
//! `sslcert`, `sslkey`, and `PGPASSWORD` / `PGSSLMODE` / `PGSSLROOTCERT` /
//! `PGSSLCERT` / `PGSSLKEY` when the URL does not say. tokio-postgres knows
//! only disable/prefer/require and rejects the other parameters, so they are
//! taken off the URL here and turned into a rustls configuration.
//!
//! With OBSERVABILITY_DATABASE_PASSWORD_FILE every connection (the pool's
//! included, through [`Connector`]) reads the password from the file as it
//! connects.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::credentials::SecretFile;
use super::tls::{self, TlsConfigError};
use super::{Verification, CONNECT_TIMEOUT};
use crate::config::{invalid, ConfigError, DatabaseSettings};
use crate::metrics as m;
use crate::once_log::OnceLog;
use deadpool_postgres::Pool;

const URL: &str = "DATABASE_URL";
const PASSWORD_FILE: &str = "OBSERVABILITY_DATABASE_PASSWORD_FILE";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext; no verification (libpq's
    /// default). A failed handshake is an error, never a plaintext retry.
    Prefer,
    /// TLS or nothing; the certificate is checked like verify-ca only when
    /// `sslrootcert` is given.
    Require,
    /// TLS; the chain up to a trusted CA, not the host name.
    VerifyCa,
    /// TLS; the chain and the host name.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            // libpq's "allow" tries plaintext first: a downgrade we do not offer.
            other => Err(format!(
                "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// Everything needed to open a connection: the pool, migrations, retention,
/// the dead-letter commands and `check` all start from this.
#[derive(Clone)]
pub struct PgTarget {
    /// The URL's settings, with the connect timeout; the password of a
    /// password file is set on a copy at each connection.
    config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
    /// How the certificate is checked when the connection is encrypted.
    pub verification: Verification,
    /// DATABASE_URL with its password redacted.
    pub shown: String,
    password_file: Option<Arc<SecretFile>>,
    /// Refused credentials, logged once per outage.
    refused: Arc<OnceLog>,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.shown)
            .field("sslmode", &self.mode)
            .field("verification", &self.verification)
            .field("password_file", &self.password_file.is_some())
            .finish()
    }
}

/// True when the server refused the credentials: 28P01 (wrong password),
/// 28000 (no pg_hba entry lets this user in).
pub fn is_auth_failure(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|e| matches!(e.code().code(), "28P01" | "28000"))
}

impl PgTarget {
    /// Explains a connection error to this target.
    pub fn explain(&self, error: &tokio_postgres::Error) -> super::problem::Problem {
        super::problem::postgres(error, &self.mode)
    }

    /// The settings of a new connection: the password file read now.
    fn config_now(&self, application_name: Option<&str>) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if let Some(file) = &self.password_file {
            config.password(file.read());
        }
        if let Some(name) = application_name {
            config.application_name(name);
        }
        config
    }

    /// Opens one connection and drives it on the current runtime; the handle
    /// ends when the connection does.
    pub async fn connect_driven(
        &self,
        application_name: Option<&str>,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        let config = self.config_now(application_name);
        let result = config.connect(self.tls.clone()).await;
        self.observe(&result);
        let (client, connection) = result?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection closed");
            }
        });
        Ok((client, driver))
    }

    /// Opens one connection and drives it on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        Ok(self.connect_driven(None).await?.0)
    }

    /// A session of its own, named for `pg_stat_activity`.
    pub async fn session(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        Ok(self.connect_driven(Some(application_name)).await?.0)
    }

    /// Counts and logs (once per outage) refused credentials; logs their
    /// acceptance after a refusal.
    fn observe<T>(&self, result: &Result<T, tokio_postgres::Error>) {
        match result {
            Err(error) if is_auth_failure(error) => {
                metrics::counter!(m::AUTH_FAILURES, "target" => "postgres").increment(1);
                self.refused
                    .report("authenticate to postgres", &self.explain(error));
            }
            Ok(_) => {
                if self.refused.recovered() {
                    tracing::info!("postgres accepts the credentials again");
                }
            }
            Err(_) => {}
        }
    }

    /// Builds the writers' pool; connections are made lazily (so this
    /// succeeds while Postgres is down and the writer's retries take over),
    /// each through [`Connector`]. Connections carry no session state of
    /// ours, so any server connection a pooler hands out will do.
    pub fn pool(&self, size: u32) -> Result<Pool, ConfigError> {
        let manager = Manager::from_connect(
            self.config_now(Some("swisper-ingest")),
            Connector(self.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| invalid(URL, e.to_string()))
    }
}

/// Builds the pool of the writers (see [`PgTarget::pool`]).
pub fn connect_pool(target: &PgTarget, size: u32) -> Result<Pool, ConfigError> {
    target.pool(size)
}

/// How the pool makes a connection: through [`PgTarget`], so that each one
/// reads the password file and a refusal is counted.
struct Connector(PgTarget);

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        Box::pin(self.0.connect_driven(Some("swisper-ingest")))
    }
}

/// The TLS parameters libpq reads from the URL (or the environment).
#[derive(Debug, Default, PartialEq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl DatabaseSettings {
    /// Parses DATABASE_URL (and the PG* variables) into a target.
    pub fn target(&self) -> Result<PgTarget, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (rest, mut params) = split_tls_params(self.database_url.expose())?;
        params.mode = params.mode.or_else(|| env("PGSSLMODE"));
        params.root_cert = params.root_cert.or_else(|| env("PGSSLROOTCERT"));
        params.cert = params.cert.or_else(|| env("PGSSLCERT"));
        params.key = params.key.or_else(|| env("PGSSLKEY"));
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| invalid(URL, format!("{e} (in {})", self.database_url)))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let password_file = match &self.password_file {
            Some(_) if config.get_password().is_some() => {
                return Err(invalid(
                    PASSWORD_FILE,
                    "is set but DATABASE_URL carries a password too; keep one of them",
                ))
            }
            Some(_) if env("PGPASSWORD").is_some() => {
                return Err(invalid(
                    PASSWORD_FILE,
                    "is set together with PGPASSWORD; set one of them",
                ))
            }
            Some(path) => Some(SecretFile::open(PASSWORD_FILE, path)?),
            None => None,
        };
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
        }
        let mode = match &params.mode {
            Some(mode) => mode.parse().map_err(|e: String| invalid(URL, e))?,
            None => SslMode::Prefer,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let (tls, verification) = tls_config(mode, &params)?;
        Ok(PgTarget {
            config,
            tls: MakeRustlsConnect::new(tls),
            mode,
            verification,
            shown: self.database_url.to_string(),
            password_file,
            refused: Arc::default(),
        })
    }
}

/// Takes libpq's TLS parameters off a `postgres://` URL's query; other forms
/// (key=value strings) go to tokio-postgres as they are.
fn split_tls_params(url: &str) -> Result<(String, TlsParams), ConfigError> {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), params));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), params));
    }
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "sslmode" => &mut params.mode,
            "sslrootcert" => &mut params.root_cert,
            "sslcert" => &mut params.cert,
            "sslkey" => &mut params.key,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        *slot = Some(percent_decode(value).map_err(|e| invalid(URL, format!("{key}: {e}")))?);
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8"))
}

/// The rustls configuration for a mode, and what it verifies.
fn tls_config(
    mode: SslMode,
    params: &TlsParams,
) -> Result<(ClientConfig, Verification), ConfigError> {
    let roots = match params.root_cert.as_deref() {
        None | Some("system") => tls::system_roots(),
        Some(path) => file_roots(path)?,
    };
    let verification = match mode {
        SslMode::Disable => Verification::Plaintext,
        SslMode::VerifyFull => Verification::Full,
        SslMode::VerifyCa => Verification::Chain,
        // libpq: with a root certificate, require (and prefer) verify like verify-ca.
        SslMode::Require | SslMode::Prefer if params.root_cert.is_some() => Verification::Chain,
        SslMode::Require | SslMode::Prefer => Verification::None,
    };
    let identity = match (&params.cert, &params.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(URL, format!("sslcert {cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| invalid(URL, format!("sslkey {key}: {e}")))?;
            Some((chain, key))
        }
        (None, None) => None,
        _ => return Err(invalid(URL, "sslcert and sslkey go together")),
    };
    let config = tls::client_config(roots, verification, identity).map_err(|e| match e {
        TlsConfigError::Roots(_) => invalid(URL, format!("sslrootcert: {e}")),
        TlsConfigError::ClientIdentity(_) => invalid(URL, format!("sslcert/sslkey: {e}")),
        TlsConfigError::Protocols(_) => invalid(URL, e.to_string()),
    })?;
    Ok((config, verification))
}

fn file_roots(path: &str) -> Result<RootCertStore, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(URL, format!("sslrootcert {path}: {e}")))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(
            URL,
            format!("sslrootcert {path}: no certificate in it"),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_come_off_the_url() {
        let (rest, params) = split_tls_params(
            "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fca%20dir%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.root_cert.as_deref(), Some("/ca dir/ca.pem"));
        let (rest, params) = split_tls_params("postgres://db/x?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(params.mode.as_deref(), Some("disable"));
        let (rest, _) = split_tls_params("host=db sslmode=require").unwrap();
        assert_eq!(rest, "host=db sslmode=require");
    }

    fn target(url: &str) -> Result<PgTarget, ConfigError> {
        DatabaseSettings {
            database_url: url.parse().unwrap(),
            password_file: None,
            db_pool_size: 1,
            create_projects: crate::config::CreateProjects::Auto,
            toast_compression: crate::config::ToastCompression::Lz4,
            price_refresh_secs: 30,
        }
        .target()
    }

    #[test]
    fn require_encrypts_without_verifying_and_allow_is_refused() {
        let require = target("postgres://u:pw@db/x?sslmode=require").unwrap();
        assert_eq!(require.mode, SslMode::Require);
        assert_eq!(require.verification, Verification::None);
        assert!(!require.shown.contains("pw"));
        let disable = target("postgres://u@db/x?sslmode=disable").unwrap();
        assert_eq!(disable.verification, Verification::Plaintext);
        let error = target("postgres://u@db/x?sslmode=allow").err().unwrap();
        assert!(error.problem.contains("sslmode=allow"), "{error}");
        let error = target("postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap();
        assert!(error.problem.contains("sslrootcert"), "{error}");
    }

    #[test]
    fn modes_are_libpq_s() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(mode.parse::<SslMode>().unwrap().to_string(), mode);
        }
        assert!("allow".parse::<SslMode>().is_err());
    }
}
