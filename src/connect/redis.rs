//! Every Redis connection of the service, built from `OBSERVABILITY_REDIS_*`:
//! `rediss://` verified against the system roots or a private CA, optional
//! client certificate, ACL user and password from the URL, their own
//! variables or files read again at every new connection.
//!
//! - [`RedisTarget::open`]: one multiplexed connection (a consumer's, `check`,
//!   the dead-letter replay).
//! - [`ConnectionManager`]: the connection shared by the claimer, the writers
//!   and the lag monitor; it reconnects by itself, also after its credentials
//!   were refused.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use redis::aio::{ConnectionLike, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, BasicAuth, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    StreamingCredentialsProvider, TlsCertificates, Value,
};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::credentials::{Credential, SecretFile};
use super::tls::TlsConfigError;
use super::{resp, tls, Verification, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::config::{invalid, ConfigError, RedisSettings};
use crate::connect::problem;
use crate::metrics as m;
use crate::once_log::OnceLog;

/// A Redis client with what it says about its connections.
#[derive(Clone)]
pub struct RedisTarget {
    pub client: redis::Client,
    /// How the server's certificate is checked.
    pub verification: Verification,
    /// Set when a credential comes from a file: handed to every connection,
    /// which reads the files as it authenticates.
    credentials: Option<FileCredentials>,
    /// Refused credentials, logged once per outage.
    refused: Arc<OnceLog>,
    /// Where the consumers' own connections ([`resp::Connection`]) go.
    address: resp::Address,
}

/// The user and password of each new connection, the files read at that
/// moment. A subscription yields them once: a live connection keeps the
/// identity it authenticated with (Redis does not drop it when a password
/// changes), and the next one reads the files again.
#[derive(Clone)]
struct FileCredentials {
    username: Credential,
    password: Credential,
}

impl StreamingCredentialsProvider for FileCredentials {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let auth = BasicAuth::new(self.username.get(), self.password.get());
        Box::pin(futures_util::stream::once(async move { Ok(auth) }))
    }
}

/// True when the server refused the credentials (WRONGPASS, NOAUTH).
pub fn is_auth_failure(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
}

impl RedisTarget {
    /// The configuration of every connection: the one connect timeout, the
    /// credentials files.
    fn connection_config(&self, response_timeout: Duration) -> AsyncConnectionConfig {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        match &self.credentials {
            Some(credentials) => config.set_credentials_provider(credentials.clone()),
            None => config,
        }
    }

    /// Opens one connection whose commands may wait `response_timeout` for
    /// their answers.
    pub async fn open(&self, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
        let result = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config(response_timeout))
            .await;
        self.observe(&result);
        result
    }

    /// A consumer's connection: its answers may take the whole BLOCK of a
    /// read, and then some. redis-rs' default of 500 ms would fail a blocking
    /// read on the client while Redis still delivers; the margin is wide
    /// because a weighed read of entries near the size limits copies them
    /// inside Redis first (a read that times out on the client is still a
    /// delivery in Redis, counted and claimed later). Its replies, every
    /// entry the service stores, are parsed by the service
    /// ([`resp::Connection`]).
    pub async fn open_for_reads(&self, block: Duration) -> RedisResult<resp::Connection> {
        let settings = self.client.get_connection_info().redis_settings();
        let identity = match &self.credentials {
            Some(files) => resp::Identity {
                username: Some(files.username.get()),
                password: Some(files.password.get()),
            },
            None => resp::Identity {
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
            },
        };
        let result = resp::Connection::open(
            &self.address,
            identity,
            settings.db(),
            block + Duration::from_secs(30),
        )
        .await;
        self.observe(&result);
        result
    }

    /// Counts and logs (once per outage) refused credentials; logs their
    /// acceptance after a refusal.
    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(error) if is_auth_failure(error) => {
                metrics::counter!(m::AUTH_FAILURES, "target" => "redis").increment(1);
                self.refused.report(
                    "authenticate to redis",
                    &problem::redis(error, self.verification),
                );
            }
            Ok(_) => {
                if self.refused.recovered() {
                    tracing::info!("redis accepts the credentials again");
                }
            }
            Err(_) => {}
        }
    }
}

/// The connection shared by the claimer, the writers and the lag monitor:
/// redis-rs' `ConnectionManager` (which reconnects after a lost connection,
/// each time with the credentials files read again), replaced by a fresh
/// one when a reconnection is refused, since redis-rs' own would keep
/// answering with that refusal.
#[derive(Clone)]
pub struct ConnectionManager(Arc<Managed>);

struct Managed {
    target: RedisTarget,
    config: ConnectionManagerConfig,
    /// The generation of the current connection manager, and itself.
    current: Mutex<(u64, redis::aio::ConnectionManager)>,
}

impl ConnectionManager {
    /// Connects (the first connection is made now, so that a bad setting
    /// shows at start).
    pub async fn connect(target: &RedisTarget) -> RedisResult<Self> {
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        if let Some(credentials) = &target.credentials {
            config = config.set_credentials_provider(credentials.clone());
        }
        let result = target
            .client
            .get_connection_manager_with_config(config.clone())
            .await;
        target.observe(&result);
        Ok(Self(Arc::new(Managed {
            target: target.clone(),
            config,
            current: Mutex::new((0, result?)),
        })))
    }

    fn current(&self) -> (u64, redis::aio::ConnectionManager) {
        self.0
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a command: refused credentials replace the manager of that
    /// generation (once, however many commands saw the refusal), so that
    /// the next command connects again with the files' current content.
    fn settle<T>(&self, generation: u64, result: &RedisResult<T>) {
        let target = &self.0.target;
        target.observe(result);
        let Err(error) = result else { return };
        if !is_auth_failure(error) {
            return;
        }
        let mut current = self.0.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != generation {
            return;
        }
        match redis::aio::ConnectionManager::new_lazy_with_config(
            target.client.clone(),
            self.0.config.clone(),
        ) {
            Ok(fresh) => *current = (generation + 1, fresh),
            Err(error) => tracing::warn!(%error, "cannot renew the redis connection manager"),
        }
    }
}

impl ConnectionLike for ConnectionManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let result = conn.send_packed_command(cmd).await;
            self.settle(generation, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let result = conn.send_packed_commands(cmd, offset, count).await;
            self.settle(generation, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0
            .target
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }
}

impl crate::redis_stream::RangeReads for ConnectionManager {}

/// The variable of the Redis URL, named in its errors.
const URL: &str = "OBSERVABILITY_REDIS_URL";

impl RedisSettings {
    /// Builds the client every Redis connection of the service uses. Reads
    /// the certificate files now, so that a missing file stops the start.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        super::crypto_provider();
        let info = self
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| invalid(URL, format!("{e} (in {})", self.url)))?;
        let credentials = self.credentials(info.redis_settings())?;
        let info = self.with_identity(info, credentials.as_ref());
        let address = self.own_address(info.addr())?;
        let tls_addr = match info.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
            _ => None,
        };
        let (client, verification) = match tls_addr {
            Some((host, port)) => (self.tls_client(info, host, port)?, self.tls_verification()),
            None => (self.plaintext_client(info)?, Verification::Plaintext),
        };
        Ok(RedisTarget {
            client,
            verification,
            credentials,
            refused: Arc::default(),
            address,
        })
    }

    /// Where the consumers' own connections go, with the TLS that redis-rs'
    /// connections get from the same settings.
    fn own_address(&self, addr: &ConnectionAddr) -> Result<resp::Address, ConfigError> {
        Ok(match addr {
            ConnectionAddr::Tcp(host, port) => resp::Address::Tcp {
                host: host.clone(),
                port: *port,
            },
            ConnectionAddr::TcpTls { host, port, .. } => resp::Address::Tls {
                host: host.clone(),
                port: *port,
                config: Arc::new(self.rustls_config()?),
            },
            ConnectionAddr::Unix(path) => resp::Address::Unix(path.clone()),
            other => return Err(invalid(URL, format!("unsupported address {other}"))),
        })
    }

    /// The private CA (or the system's roots), verification unless
    /// insecure, the client certificate.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, ConfigError> {
        const CA_FILE: &str = "OBSERVABILITY_REDIS_CA_FILE";
        const CERT_FILE: &str = "OBSERVABILITY_REDIS_CLIENT_CERT_FILE";
        let roots = match &self.ca_file {
            Some(path) => {
                let pem = read_pem(CA_FILE, path)?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(CA_FILE, format!("{}: {e}", path.display())))?;
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(certs);
                roots
            }
            None => tls::system_roots(),
        };
        let identity = match self.client_tls()? {
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            }) => {
                let chain = CertificateDer::pem_slice_iter(&client_cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(CERT_FILE, e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(&client_key)
                    .map_err(|e| invalid("OBSERVABILITY_REDIS_CLIENT_KEY_FILE", e.to_string()))?;
                Some((chain, key))
            }
            None => None,
        };
        tls::client_config(roots, self.tls_verification(), identity).map_err(|e| match e {
            TlsConfigError::Roots(_) => invalid(CA_FILE, e.to_string()),
            TlsConfigError::ClientIdentity(_) => invalid(CERT_FILE, e.to_string()),
            TlsConfigError::Protocols(_) => invalid(URL, e.to_string()),
        })
    }

    /// The user and password in the connection info itself: those of the
    /// files (their first reading, for clients that connect without the
    /// provider: blocking connections), else the variables', else the URL's.
    fn with_identity(
        &self,
        info: ConnectionInfo,
        credentials: Option<&FileCredentials>,
    ) -> ConnectionInfo {
        let mut redis = info.redis_settings().clone();
        if let Some(credentials) = credentials {
            redis = redis
                .set_username(credentials.username.get())
                .set_password(credentials.password.get());
        } else {
            if let Some(username) = &self.username {
                redis = redis.set_username(username);
            }
            if let Some(password) = &self.password {
                redis = redis.set_password(password.expose());
            }
        }
        info.set_redis_settings(redis)
    }

    /// A client of a `redis://` URL; refused when a TLS setting is set, never
    /// a silent plaintext connection when TLS was meant.
    fn plaintext_client(&self, info: ConnectionInfo) -> Result<redis::Client, ConfigError> {
        let tls_knob = [
            ("OBSERVABILITY_REDIS_CA_FILE", self.ca_file.is_some()),
            (
                "OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
                self.client_cert_file.is_some(),
            ),
            (
                "OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
                self.client_key_file.is_some(),
            ),
            ("OBSERVABILITY_REDIS_TLS_INSECURE", self.tls_insecure),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        if let Some((knob, _)) = tls_knob {
            return Err(invalid(
                knob,
                format!("is set but {URL} is not rediss:// (TLS): {}", self.url),
            ));
        }
        redis::Client::open(info).map_err(|e| invalid(URL, e.to_string()))
    }

    /// A client of a `rediss://` URL, with the private CA and the client
    /// certificate read now.
    fn tls_client(
        &self,
        info: ConnectionInfo,
        host: String,
        port: u16,
    ) -> Result<redis::Client, ConfigError> {
        let client_tls = self.client_tls()?;
        let root_cert = match &self.ca_file {
            Some(path) => Some(read_pem("OBSERVABILITY_REDIS_CA_FILE", path)?),
            None => None,
        };
        let info = info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: self.tls_insecure,
            tls_params: None,
        });
        redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| {
            // redis-rs does not say which file it could not use: guess from
            // its message, so that the error names a setting to look at.
            let setting = if e.to_string().contains("root certificate") {
                "OBSERVABILITY_REDIS_CA_FILE"
            } else if e.to_string().contains("client") || e.to_string().contains("key") {
                "OBSERVABILITY_REDIS_CLIENT_CERT_FILE"
            } else {
                URL
            };
            invalid(setting, e.to_string())
        })
    }

    /// The client certificate and its key, both or neither.
    fn client_tls(&self) -> Result<Option<ClientTlsConfig>, ConfigError> {
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Ok(Some(ClientTlsConfig {
                client_cert: read_pem("OBSERVABILITY_REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read_pem("OBSERVABILITY_REDIS_CLIENT_KEY_FILE", key)?,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid(
                "OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
                "must be set with OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
            )),
            (None, Some(_)) => Err(invalid(
                "OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
                "must be set with OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
            )),
        }
    }

    fn tls_verification(&self) -> Verification {
        if self.tls_insecure {
            Verification::None
        } else {
            Verification::Full
        }
    }

    /// The credentials read from files at each connection, when a file is
    /// set; a value and a file for the same credential are refused.
    fn credentials(
        &self,
        url: &redis::RedisConnectionInfo,
    ) -> Result<Option<FileCredentials>, ConfigError> {
        const USERNAME_FILE: &str = "OBSERVABILITY_REDIS_USERNAME_FILE";
        const PASSWORD_FILE: &str = "OBSERVABILITY_REDIS_PASSWORD_FILE";
        if self.username.is_some() && self.username_file.is_some() {
            return Err(invalid(
                USERNAME_FILE,
                "is set together with OBSERVABILITY_REDIS_USERNAME; set one of them",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                PASSWORD_FILE,
                "is set together with OBSERVABILITY_REDIS_PASSWORD; set one of them",
            ));
        }
        if self.username_file.is_none() && self.password_file.is_none() {
            return Ok(None);
        }
        let username = match (&self.username_file, &self.username, url.username()) {
            (Some(path), _, _) => Credential::File(SecretFile::open(USERNAME_FILE, path)?),
            (None, Some(name), _) => Credential::Fixed(name.clone()),
            (None, None, Some(name)) => Credential::Fixed(name.to_owned()),
            // Redis 6+ calls the user of a plain password "default".
            (None, None, None) => Credential::Fixed("default".to_owned()),
        };
        let password = match (&self.password_file, &self.password, url.password()) {
            (Some(path), _, _) => Credential::File(SecretFile::open(PASSWORD_FILE, path)?),
            (None, Some(password), _) => Credential::Fixed(password.expose().to_owned()),
            (None, None, password) => Credential::Fixed(password.unwrap_or_default().to_owned()),
        };
        Ok(Some(FileCredentials { username, password }))
    }

    /// Warns loudly, once at start, when verification is switched off.
    pub fn warn_if_insecure(&self) {
        if self.tls_insecure {
            tracing::warn!(
                "OBSERVABILITY_REDIS_TLS_INSECURE is set: the Redis server's certificate is NOT \
                 verified; anyone on the path can impersonate it and read every event. Set \
                 OBSERVABILITY_REDIS_CA_FILE to the server's CA instead"
            );
        }
    }
}

/// Reads a PEM file and checks that it holds at least one PEM block.
pub(crate) fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(invalid(
            setting,
            format!("{} is not a PEM file", path.display()),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.parse().unwrap(),
            username: None,
            username_file: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            tls_insecure: false,
        }
    }

    #[test]
    fn credentials_of_their_own_replace_the_url_s() {
        let mut s = settings("rediss://old:old-pw@redis.example.com:6380/2");
        s.username = Some("ingest".into());
        s.password = Some("p@ss:word/".parse().unwrap());
        let target = s.target().unwrap();
        let info = target.client.get_connection_info();
        assert_eq!(info.redis_settings().username(), Some("ingest"));
        assert_eq!(info.redis_settings().password(), Some("p@ss:word/"));
        assert_eq!(target.verification, Verification::Full);
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
    }

    #[test]
    fn tls_settings_with_a_plaintext_url_are_refused() {
        let mut s = settings("redis://127.0.0.1:6379");
        s.tls_insecure = true;
        let error = s.target().err().unwrap();
        assert_eq!(error.setting, "OBSERVABILITY_REDIS_TLS_INSECURE");
        let mut s = settings("rediss://127.0.0.1:6379");
        s.client_key_file = Some("/nonexistent".into());
        let error = s.target().err().unwrap();
        assert_eq!(error.setting, "OBSERVABILITY_REDIS_CLIENT_CERT_FILE");
        let mut s = settings("rediss://127.0.0.1:6379");
        s.ca_file = Some("/nonexistent/ca.crt".into());
        let error = s.target().err().unwrap();
        assert_eq!(error.setting, "OBSERVABILITY_REDIS_CA_FILE");
    }

    #[test]
    fn insecure_is_unverified() {
        let mut s = settings("rediss://127.0.0.1:6379");
        s.tls_insecure = true;
        assert_eq!(s.target().unwrap().verification, Verification::None);
        assert_eq!(
            settings("redis://127.0.0.1").target().unwrap().verification,
            Verification::Plaintext
        );
    }
}
