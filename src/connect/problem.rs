//! What a failed connection means for the operator: the problem in plain
//! words (the word "certificate" where it is one) and the setting to fix,
//! logged once (by [`crate::once_log::OnceLog`]) rather than on every retry.

use super::Verification;

/// A connection failure explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// True when retrying cannot help until a setting or certificate changes
    /// (TLS, certificates, credentials); false for an unreachable server.
    pub misconfigured: bool,
    pub message: String,
}

impl Problem {
    /// A failure that retrying may cure (a server down or restarting).
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            misconfigured: false,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The error and its sources in one line, without repeating a source that
/// the outer message already quotes.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// What is wrong with the server's certificate, from rustls' words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateProblem {
    UnknownIssuer,
    NameMismatch,
    Expired,
    Other,
}

impl CertificateProblem {
    fn parse(text: &str) -> Option<Self> {
        let text = text.to_ascii_lowercase();
        let has = |needle: &str| text.contains(needle);
        if has("unknownissuer") || has("unknown issuer") || has("badsignature") || has("unknownca")
        {
            Some(Self::UnknownIssuer)
        } else if has("notvalidforname") || has("not valid for name") {
            Some(Self::NameMismatch)
        } else if has("expired") || has("notvalidyet") || has("not valid yet") {
            Some(Self::Expired)
        } else if has("invalid peer certificate") || has("badcertificate") || has("revoked") {
            Some(Self::Other)
        } else {
            None
        }
    }

    /// The problem in words, then what to do; `ca_setting` and `name_fix`
    /// differ between Redis and Postgres.
    fn explain(self, ca_setting: &str, name_fix: &str) -> String {
        match self {
            Self::UnknownIssuer => format!(
                "the server's certificate is not signed by a trusted CA (certificate verify \
                 failed: unknown issuer); set {ca_setting} to the CA bundle that signed the \
                 server's certificate"
            ),
            Self::NameMismatch => format!(
                "the server's certificate does not match the host name (certificate name \
                 mismatch); {name_fix}"
            ),
            Self::Expired => "the server's certificate has expired (or is not yet valid); the \
                 server needs a renewed certificate (or this machine's clock is wrong)"
                .to_owned(),
            Self::Other => format!(
                "the server's certificate was rejected; check it against the CA in {ca_setting}"
            ),
        }
    }
}

/// Explains a Redis connection error; `verification` says whether the URL
/// asked for TLS.
pub fn redis(error: &redis::RedisError, verification: Verification) -> Problem {
    let text = chain(error);
    let tls = verification != Verification::Plaintext;
    let has = |needle: &str| text.contains(needle);
    let (misconfigured, message) = if let Some(cert) = CertificateProblem::parse(&text) {
        let explained = cert.explain(
            "OBSERVABILITY_REDIS_CA_FILE",
            "connect to a host name that the certificate names in OBSERVABILITY_REDIS_URL",
        );
        (true, format!("redis TLS: {explained} ({text})"))
    } else if has("CertificateRequired")
        || has("certificate required")
        || has("HandshakeFailure") && tls
    {
        (
            true,
            format!(
                "redis TLS: the server requires a client certificate (mutual TLS) or refused ours; set \
                 OBSERVABILITY_REDIS_CLIENT_CERT_FILE and OBSERVABILITY_REDIS_CLIENT_KEY_FILE to a \
                 certificate its CA signed ({text})"
            ),
        )
    } else if tls && (has("InvalidContentType") || has("corrupt message") || has("InvalidMessage"))
    {
        (
            true,
            format!(
                "redis TLS: the server does not speak TLS on this port; use redis:// or the server's \
                 TLS port in OBSERVABILITY_REDIS_URL ({text})"
            ),
        )
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed
        || has("WRONGPASS")
        || has("NOAUTH")
        || has("invalid password")
        || has("NOPERM")
    {
        (
            true,
            format!(
                "redis authentication failed: check the user and password in OBSERVABILITY_REDIS_URL, \
                 OBSERVABILITY_REDIS_USERNAME / OBSERVABILITY_REDIS_PASSWORD or their files \
                 (OBSERVABILITY_REDIS_USERNAME_FILE / OBSERVABILITY_REDIS_PASSWORD_FILE, read again \
                 at each connection) ({text})"
            ),
        )
    } else if !tls
        && (error.is_connection_dropped()
            || has("reset by peer")
            || has("broken pipe")
            || has("unexpected end of file")
            || has("Connection closed"))
    {
        (
            true,
            format!(
                "redis closed the connection during the plaintext handshake: if the server accepts \
                 only TLS, use rediss:// in OBSERVABILITY_REDIS_URL ({text})"
            ),
        )
    } else if tls && (has("timed out") || has("TimedOut")) {
        // A plaintext Redis waits for a command line and never answers a
        // TLS ClientHello: the handshake just times out.
        (
            false,
            format!(
                "redis: no answer to the TLS handshake; if this port serves plaintext, use the \
                 server's TLS port (or redis://) in OBSERVABILITY_REDIS_URL ({text})"
            ),
        )
    } else {
        (false, format!("redis: {text}"))
    };
    Problem {
        misconfigured,
        message,
    }
}

/// Explains a PostgreSQL connection error made with this `sslmode`.
pub fn postgres(error: &tokio_postgres::Error, sslmode: &dyn std::fmt::Display) -> Problem {
    let text = chain(error);
    let has = |needle: &str| text.contains(needle);
    let db_code = error.as_db_error().map(|e| e.code().code().to_owned());
    let (misconfigured, message) = if let Some(cert) = CertificateProblem::parse(&text) {
        let explained = cert.explain(
            "DATABASE_URL sslrootcert",
            "connect to a host name that the certificate names, or use sslmode=verify-ca in \
             DATABASE_URL",
        );
        (
            true,
            format!("postgres TLS (sslmode={}): {explained} ({text})", sslmode),
        )
    } else if has("server does not support TLS") {
        (
            true,
            format!(
                "postgres TLS (sslmode={}): the server does not accept TLS; enable ssl on the server \
                 or set sslmode=disable in DATABASE_URL if plaintext is acceptable ({text})",
                sslmode
            ),
        )
    } else if has("no encryption") || (db_code.as_deref() == Some("28000") && has("SSL off")) {
        (
            true,
            format!(
                "postgres refused a plaintext connection (sslmode={}): the server accepts only TLS; \
                 set sslmode=verify-full (or require) in DATABASE_URL ({text})",
                sslmode
            ),
        )
    } else if has("certificate") || has("TLS") || has("tls") {
        (
            true,
            format!("postgres TLS (sslmode={}): check DATABASE_URL sslmode, sslrootcert, sslcert and sslkey ({text})", sslmode),
        )
    } else if matches!(db_code.as_deref(), Some("28P01" | "28000")) || has("password") {
        (
            true,
            format!(
                "postgres authentication failed: check the user and password in DATABASE_URL, \
                 PGPASSWORD or OBSERVABILITY_DATABASE_PASSWORD_FILE (read again at each \
                 connection) ({text})"
            ),
        )
    } else {
        (false, format!("postgres: {text}"))
    };
    Problem {
        misconfigured,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_io(message: &str) -> redis::RedisError {
        redis::RedisError::from(std::io::Error::other(message.to_owned()))
    }

    #[test]
    fn certificate_problems_say_certificate_and_the_setting() {
        for (text, expected) in [
            ("invalid peer certificate: UnknownIssuer", "not signed by a trusted CA"),
            (
                "invalid peer certificate: certificate not valid for name \"x\"",
                "does not match the host name",
            ),
            (
                "invalid peer certificate: certificate expired: verification time 2, but certificate is not valid after 1",
                "has expired",
            ),
        ] {
            let problem = redis(&redis_io(text), Verification::Full);
            assert!(problem.misconfigured, "{problem}");
            assert!(problem.message.contains(expected), "{problem}");
            assert!(problem.message.contains("certificate"), "{problem}");
            if !expected.contains("expired") {
                assert!(problem.message.contains("OBSERVABILITY_REDIS_"), "{problem}");
            }
        }
    }

    #[test]
    fn plaintext_and_tls_mixups_are_named() {
        let reset = redis(
            &redis_io("Connection reset by peer (os error 104)"),
            Verification::Plaintext,
        );
        assert!(reset.message.contains("rediss://"), "{reset}");
        let corrupt = redis(
            &redis_io("received corrupt message of type InvalidContentType"),
            Verification::Full,
        );
        assert!(corrupt.message.contains("does not speak TLS"), "{corrupt}");
        let mtls = redis(
            &redis_io("received fatal alert: CertificateRequired"),
            Verification::Full,
        );
        assert!(
            mtls.message
                .contains("OBSERVABILITY_REDIS_CLIENT_CERT_FILE"),
            "{mtls}"
        );
    }

    #[test]
    fn an_unreachable_server_is_not_a_setting_to_fix() {
        let refused = redis(
            &redis_io("Connection refused (os error 111)"),
            Verification::Full,
        );
        assert!(!refused.misconfigured, "{refused}");
    }
}
