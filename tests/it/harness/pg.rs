//! PostgreSQL for tests: connections, counts, SwisperStudio's schema (its
//! Alembic head as a fixture, a catalog of schema public to compare
//! databases by) and the library's own pool for tests that drive the write
//! path directly.

use tokio_postgres::{Client, NoTls};

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    client
}

/// A `SELECT count(*)`'s result; -1 when the query fails (a table not
/// there yet reads as "not yet" in a wait).
pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or(-1)
}

/// SwisperStudio's schema as its `alembic upgrade head` (revision f68a1806c21d)
/// leaves a fresh database: tables, enum type, indexes, constraints, the admin
/// user and alembic_version. Replays each published revision in order.
const STUDIO_ALEMBIC_HEAD_SQL: &str = include_str!("../../fixtures/studio_alembic_head.sql");

/// Makes `client`'s (fresh) database one the studio created: runs
/// tests/fixtures/studio_alembic_head.sql, in one transaction as Alembic does.
pub async fn apply_studio_fixture(client: &tokio_postgres::Client) {
    client
        .batch_execute(STUDIO_ALEMBIC_HEAD_SQL)
        .await
        .expect("apply tests/fixtures/studio_alembic_head.sql");
}

/// One line of text per object in schema public (see `public_schema_catalog`).
const PUBLIC_SCHEMA_CATALOG_SQL: &str = r#"
SELECT format('relation %s kind=%s persistence=%s', c.relname, c.relkind, c.relpersistence)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind NOT IN ('i', 'I')
UNION ALL
SELECT format('column %s.%s position=%s type=%s not_null=%s default=%s identity=%s generated=%s',
              c.relname, a.attname,
              row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
              format_type(a.atttypid, a.atttypmod), a.attnotnull,
              coalesce(pg_get_expr(d.adbin, d.adrelid), '(none)'),
              nullif(a.attidentity, ''), nullif(a.attgenerated, ''))
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('constraint %s.%s type=%s %s', c.relname, con.conname, con.contype,
              pg_get_constraintdef(con.oid))
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('index %s.%s %s', t.relname, i.relname, pg_get_indexdef(i.oid))
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('enum %s labels=%s', t.typname,
              (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)::text
               FROM pg_enum e WHERE e.enumtypid = t.oid))
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype = 'e'
UNION ALL
SELECT format('type %s kind=%s base=%s not_null=%s default=%s', t.typname, t.typtype,
              format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype IN ('b', 'd', 'r', 'm', 'p')
  AND t.typcategory <> 'A'
UNION ALL
SELECT format('domain-constraint %s.%s %s', t.typname, con.conname, pg_get_constraintdef(con.oid))
FROM pg_constraint con
JOIN pg_type t ON t.oid = con.contypid
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT format('trigger %s.%s %s', c.relname, tg.tgname, pg_get_triggerdef(tg.oid))
FROM pg_trigger tg
JOIN pg_class c ON c.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT tg.tgisinternal
UNION ALL
SELECT format('function %s(%s) kind=%s returns=%s', p.proname,
              pg_get_function_identity_arguments(p.oid), p.prokind,
              coalesce(pg_get_function_result(p.oid), '(none)'))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"#;

/// A normalized description of schema public, sorted: every relation (kind and
/// persistence), every column (position among live columns, `format_type` type,
/// nullability, default expression, identity/generated), every constraint
/// (`pg_get_constraintdef`), every index (`pg_get_indexdef`), enum types with their
/// labels in order, other types and domain constraints, user triggers, functions,
/// and the rows of alembic_version. Only names, no OIDs or attnums, so two databases
/// with the same schema give equal vectors. Constraint texts name referenced tables
/// as the session's search_path shows them, so compare sessions with the same
/// search_path (the default one in these tests).
pub async fn public_schema_catalog(client: &tokio_postgres::Client) -> Vec<String> {
    let mut lines: Vec<String> = client
        .query(PUBLIC_SCHEMA_CATALOG_SQL, &[])
        .await
        .expect("query the catalog of schema public")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let has_alembic_version: bool = client
        .query_one(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL",
            &[],
        )
        .await
        .expect("look for public.alembic_version")
        .get(0);
    if has_alembic_version {
        let rows = client
            .query("SELECT version_num::text FROM public.alembic_version", &[])
            .await
            .expect("read public.alembic_version");
        for row in rows {
            lines.push(format!("alembic_version {}", row.get::<_, String>(0)));
        }
    } else {
        lines.push("alembic_version (no table)".to_string());
    }
    lines.sort();
    lines
}

/// A connection target for the library's own functions (`store::migrate::run`).
pub fn pg_target(database_url: &str) -> swisper_ingest::connect::postgres::PgTarget {
    swisper_ingest::config::DatabaseSettings {
        database_url: database_url.parse().expect("a database url"),
        password_file: None,
        db_pool_size: 2,
        create_projects: swisper_ingest::config::CreateProjects::Auto,
        toast_compression: swisper_ingest::config::ToastCompression::Lz4,
        price_refresh_secs: 30,
    }
    .target()
    .expect("a postgres target")
}

/// A pool of 4 connections on a migrated database, and the studio settings
/// `serve` would use there: for tests that drive the write path directly.
pub async fn migrated_pool(
    database_url: &str,
) -> (
    swisper_ingest::store::Pool,
    swisper_ingest::write_path::Studio,
) {
    let target = pg_target(database_url);
    swisper_ingest::store::migrate::run(&target)
        .await
        .expect("migrate");
    let pool = swisper_ingest::store::connect_pool(&target, 4).expect("a pool");
    let studio = swisper_ingest::write_path::Studio::new(
        swisper_ingest::config::CreateProjects::Auto,
        std::time::Duration::from_secs(30),
    );
    (pool, studio)
}
