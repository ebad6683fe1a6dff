//! The one `redis::Client` of the service, built from `OBSERVABILITY_REDIS_*`:
//! `rediss://` verified against the system roots or a private CA, optional
//! client certificate, ACL user and password from the URL or their own
//! variables.

use std::path::Path;

use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use super::Verification;
use crate::config::{invalid, ConfigError, RedisSettings};

/// A Redis client with what it says about its connections.
#[derive(Clone)]
pub struct RedisTarget {
    pub client: redis::Client,
    /// How the server's certificate is checked.
    pub verification: Verification,
}

impl RedisSettings {
    /// Builds the client every Redis connection of the service uses. Reads
    /// the certificate files now, so that a missing file stops the start.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        const URL: &str = "OBSERVABILITY_REDIS_URL";
        super::crypto_provider();
        let info = self
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| invalid(URL, format!("{e} (in {})", self.url)))?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password.expose());
        }
        let info = info.set_redis_settings(redis);

        let (host, port) = match info.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            _ => {
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
                    // Never a silent plaintext connection when TLS was meant.
                    return Err(invalid(
                        knob,
                        format!("is set but {URL} is not rediss:// (TLS): {}", self.url),
                    ));
                }
                let client = redis::Client::open(info).map_err(|e| invalid(URL, e.to_string()))?;
                return Ok(RedisTarget {
                    client,
                    verification: Verification::Plaintext,
                });
            }
        };

        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_pem("OBSERVABILITY_REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read_pem("OBSERVABILITY_REDIS_CLIENT_KEY_FILE", key)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
                    "must be set with OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "OBSERVABILITY_REDIS_CLIENT_CERT_FILE",
                    "must be set with OBSERVABILITY_REDIS_CLIENT_KEY_FILE",
                ))
            }
        };
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
        let client = redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| {
            let setting = if e.to_string().contains("root certificate") {
                "OBSERVABILITY_REDIS_CA_FILE"
            } else if e.to_string().contains("client") || e.to_string().contains("key") {
                "OBSERVABILITY_REDIS_CLIENT_CERT_FILE"
            } else {
                URL
            };
            invalid(setting, e.to_string())
        })?;
        Ok(RedisTarget {
            client,
            verification: if self.tls_insecure {
                Verification::None
            } else {
                Verification::Full
            },
        })
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
            password: None,
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
