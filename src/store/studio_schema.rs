//! What `check` says of the studio's tables: whose they are (a studio's, or
//! this service's standalone copy) and whether every column the service
//! writes or reads is there with the type it sends.

use serde::Serialize;
use tokio_postgres::GenericClient;

/// The studio's Alembic head this service was written against.
pub const STUDIO_HEAD: &str = "f68a1806c21d";

/// (table, column, type as `format_type` prints it) of every column the
/// service writes or reads in the studio's tables.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("traces", "id", "character varying"),
    ("traces", "project_id", "character varying"),
    ("traces", "name", "character varying"),
    ("traces", "user_id", "character varying"),
    ("traces", "session_id", "character varying"),
    ("traces", "meta", "json"),
    ("traces", "tags", "json"),
    ("traces", "timestamp", "timestamp without time zone"),
    ("observations", "id", "character varying"),
    ("observations", "trace_id", "character varying"),
    ("observations", "parent_observation_id", "character varying"),
    ("observations", "type", "observationtype"),
    ("observations", "name", "character varying"),
    ("observations", "start_time", "timestamp without time zone"),
    ("observations", "end_time", "timestamp without time zone"),
    ("observations", "input", "json"),
    ("observations", "output", "json"),
    ("observations", "meta", "json"),
    ("observations", "model", "character varying"),
    ("observations", "prompt_tokens", "integer"),
    ("observations", "completion_tokens", "integer"),
    ("observations", "total_tokens", "integer"),
    ("observations", "level", "character varying"),
    ("observations", "status_message", "character varying"),
    ("observations", "calculated_input_cost", "numeric"),
    ("observations", "calculated_output_cost", "numeric"),
    ("observations", "calculated_total_cost", "numeric"),
    ("projects", "id", "character varying"),
    ("projects", "name", "character varying(255)"),
    ("projects", "created_at", "timestamp without time zone"),
    ("projects", "updated_at", "timestamp without time zone"),
    ("projects", "tracing_enabled", "boolean"),
    ("model_pricing", "project_id", "character varying"),
    (
        "model_pricing",
        "hosting_provider",
        "character varying(100)",
    ),
    ("model_pricing", "model_name", "character varying(200)"),
    ("model_pricing", "input_price_per_million", "numeric"),
    ("model_pricing", "output_price_per_million", "numeric"),
];

/// Who made the studio's tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// A SwisperStudio database: its Alembic revision.
    Studio { alembic_revision: Option<String> },
    /// Created by this service (no studio was there).
    Standalone,
    /// Migrations have not run yet.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct StudioSchema {
    pub owner: Owner,
    /// How many of the columns the service uses were checked.
    pub columns_checked: usize,
    /// Each column missing or of another type, in words.
    pub problems: Vec<String>,
}

pub async fn inspect(client: &impl GenericClient) -> Result<StudioSchema, tokio_postgres::Error> {
    let installed: Option<bool> = client
        .query_opt(
            "SELECT created_studio_schema FROM swisper_ingest.installation
             WHERE to_regclass('swisper_ingest.installation') IS NOT NULL",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0));
    let revision: Option<String> = match client
        .query_opt(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL",
            &[],
        )
        .await?
        .map(|row| row.get::<_, bool>(0))
    {
        Some(true) => client
            .query_opt(
                "SELECT version_num::text FROM public.alembic_version LIMIT 1",
                &[],
            )
            .await?
            .map(|row| row.get(0)),
        _ => None,
    };
    let owner = match installed {
        Some(true) => Owner::Standalone,
        Some(false) => Owner::Studio {
            alembic_revision: revision.clone(),
        },
        None => Owner::Unknown,
    };
    let tables: Vec<&str> = COLUMNS.iter().map(|(t, _, _)| *t).collect();
    let found = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relname = ANY($1) AND a.attnum > 0
               AND NOT a.attisdropped",
            &[&tables],
        )
        .await?;
    let mut problems = Vec::new();
    for (table, column, expected) in COLUMNS {
        let actual = found.iter().find_map(|row| {
            (row.get::<_, &str>(0) == *table && row.get::<_, &str>(1) == *column)
                .then(|| row.get::<_, String>(2))
        });
        match actual {
            None => problems.push(format!("studio schema: public.{table}.{column} is missing")),
            Some(actual) if actual != *expected => problems.push(format!(
                "studio schema: public.{table}.{column} is {actual}, the service writes {expected}"
            )),
            Some(_) => {}
        }
    }
    if let Owner::Studio {
        alembic_revision: Some(revision),
    } = &owner
    {
        if revision != STUDIO_HEAD && !problems.is_empty() {
            problems.push(format!(
                "studio schema: the studio is at Alembic revision {revision}; this service was written against {STUDIO_HEAD}"
            ));
        }
    }
    Ok(StudioSchema {
        owner,
        columns_checked: COLUMNS.len(),
        problems,
    })
}

impl std::fmt::Display for StudioSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.owner {
            Owner::Studio { alembic_revision } => write!(
                f,
                "SwisperStudio's (Alembic revision {})",
                alembic_revision.as_deref().unwrap_or("unknown")
            )?,
            Owner::Standalone => write!(
                f,
                "standalone (created by swisper-ingest as the studio's head {STUDIO_HEAD})"
            )?,
            Owner::Unknown => write!(f, "not set up yet (run migrations)")?,
        }
        if self.problems.is_empty() {
            write!(
                f,
                ", all {} columns the service uses present with their types",
                self.columns_checked
            )
        } else {
            write!(f, ", {} column problem(s)", self.problems.len())
        }
    }
}
