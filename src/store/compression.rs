//! TOAST compression of the JSON values this service writes. The studio's
//! columns keep the server's default (pglz unless changed); a write
//! transaction chooses lz4 for its own values with `SET LOCAL`, which readers
//! never notice (Postgres decompresses either) and which no other session
//! sees, through pgbouncer's transaction pooling too. On LangGraph states,
//! pglz was 27% of Postgres' CPU in a drain (docs/benchmarks.md).

use tokio_postgres::GenericClient;

use super::StoreError;
use crate::config::ToastCompression;

impl ToastCompression {
    /// True when write transactions should set lz4: asked for, and the
    /// server was built with it (PostgreSQL 14 or later, `--with-lz4`).
    pub async fn resolve(self, client: &impl GenericClient) -> Result<bool, StoreError> {
        match self {
            ToastCompression::Server => Ok(false),
            ToastCompression::Lz4 => {
                let available = lz4_available(client).await?;
                if !available {
                    tracing::warn!(
                        "lz4 is not available on this PostgreSQL server: long values keep its default_toast_compression"
                    );
                }
                Ok(available)
            }
        }
    }
}

async fn lz4_available(client: &impl GenericClient) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_settings
                            WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals))",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Values a transaction TOASTs after this are compressed with lz4.
pub const USE_LZ4: &str = "SET LOCAL default_toast_compression = lz4";
