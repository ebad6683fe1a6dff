//! The studio's `projects`: every trace row needs its project (a foreign
//! key). In front of a studio, a project is the studio's to create; standing
//! alone, the service creates the projects it sees (name = id).

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use super::StoreError;
use crate::config::CreateProjects;

impl CreateProjects {
    /// Resolves `auto` against the database.
    pub async fn resolve(self, client: &impl GenericClient) -> Result<bool, StoreError> {
        match self {
            CreateProjects::Always => Ok(true),
            CreateProjects::Never => Ok(false),
            CreateProjects::Auto => standalone(client).await,
        }
    }
}

/// True when this service created the studio's tables (no studio was there).
pub async fn standalone(client: &impl GenericClient) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "SELECT created_studio_schema FROM swisper_ingest.installation",
            &[],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// The projects among `ids` (sorted, distinct) that are missing from the
/// studio's `projects`.
pub async fn missing(tx: &Client, ids: &[&str]) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query_typed(
            "SELECT id FROM unnest($1::text[]) AS p(id)
             WHERE NOT EXISTS (SELECT 1 FROM public.projects WHERE projects.id = p.id)
             ORDER BY id",
            &[(&ids, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates these projects (named by their id) unless they exist meanwhile.
pub async fn create(tx: &Client, ids: &[String]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let created = tx
        .execute(
            "INSERT INTO public.projects (id, name, created_at, updated_at, tracing_enabled)
             SELECT id, left(id, 255), now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', true
             FROM unnest($1::text[]) AS p(id)
             ON CONFLICT (id) DO NOTHING",
            &[&ids],
        )
        .await?;
    metrics::counter!(crate::metrics::PROJECTS_CREATED).increment(created);
    Ok(created)
}
