-- The studio's tables. In front of a SwisperStudio database (its own
-- `alembic upgrade head` made them) nothing here runs: they are the studio's.
-- Otherwise this creates exactly what the studio's Alembic head f68a1806c21d
-- creates (alembic_version stamped, the studio's default admin user
-- included), so that a studio pointed at this database later just works,
-- and records that this service created them (standalone: unknown projects
-- are created on first sight). tests/studio_schema.rs compares the result
-- with tests/fixtures/studio_alembic_head.sql, written from the studio's
-- published migrations.
--
-- A database of this service's earlier layout (its own traces and
-- observations in public, keyed by (id, project_id), with versions in the
-- rows) is upgraded: its tables move to swisper_ingest as legacy_*, the
-- studio's are created, every row is copied over with its merge state, and
-- a project row is made for each project id. An id stored under two
-- projects can hold only one studio row: the oldest is copied, the others
-- stay in swisper_ingest.legacy_traces / legacy_observations (a NOTICE says
-- how many); those tables are dropped when nothing is left in them.
DO $migration$
DECLARE
    legacy boolean := EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'traces' AND column_name = 'seen_version');
    studio boolean := to_regclass('public.traces') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'traces' AND column_name = 'seen_version');
    kept_traces bigint;
    kept_observations bigint;
BEGIN
    IF studio THEN
        INSERT INTO swisper_ingest.installation (created_studio_schema) VALUES (false);
        RETURN;
    END IF;

    IF legacy THEN
        ALTER TABLE public.traces SET SCHEMA swisper_ingest;
        ALTER TABLE swisper_ingest.traces RENAME TO legacy_traces;
        ALTER TABLE public.observations SET SCHEMA swisper_ingest;
        ALTER TABLE swisper_ingest.observations RENAME TO legacy_observations;
    END IF;

    EXECUTE $ddl$
CREATE TYPE public.observationtype AS ENUM ('SPAN', 'GENERATION', 'EVENT', 'TOOL', 'AGENT');

CREATE TABLE public.alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE public.users (
    id VARCHAR(36) NOT NULL,
    email VARCHAR(255) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    role VARCHAR(20) NOT NULL DEFAULT 'viewer',
    is_active BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT now(),
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT now(),
    last_login TIMESTAMP WITHOUT TIME ZONE,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE INDEX ix_users_email ON public.users (email);
CREATE INDEX ix_users_created_at ON public.users (created_at);
CREATE INDEX ix_users_role ON public.users (role);
CREATE INDEX ix_users_is_active ON public.users (is_active);

CREATE TABLE public.projects (
    id VARCHAR NOT NULL,
    name VARCHAR(255) NOT NULL,
    description VARCHAR(1000),
    meta JSON,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    deleted_at TIMESTAMP WITHOUT TIME ZONE,
    github_repo_url VARCHAR(500),
    owner_id VARCHAR(36),
    github_token VARCHAR(500),
    tracing_enabled BOOLEAN NOT NULL DEFAULT true,
    CONSTRAINT projects_pkey PRIMARY KEY (id),
    CONSTRAINT fk_projects_owner FOREIGN KEY (owner_id) REFERENCES public.users (id)
);

CREATE INDEX ix_projects_created_at ON public.projects (created_at);
CREATE INDEX ix_projects_deleted_at ON public.projects (deleted_at);
CREATE INDEX ix_projects_tracing_enabled ON public.projects (tracing_enabled);

CREATE TABLE public.traces (
    id VARCHAR NOT NULL,
    name VARCHAR,
    user_id VARCHAR,
    session_id VARCHAR,
    project_id VARCHAR,
    input JSON,
    output JSON,
    meta JSON,
    tags JSON,
    "timestamp" TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    CONSTRAINT traces_pkey PRIMARY KEY (id),
    CONSTRAINT traces_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects (id) ON DELETE CASCADE
);

CREATE INDEX ix_traces_project_id ON public.traces (project_id);
CREATE INDEX ix_traces_project_timestamp ON public.traces (project_id, "timestamp");
CREATE INDEX ix_traces_session_id ON public.traces (session_id);
CREATE INDEX ix_traces_session_timestamp ON public.traces (session_id, "timestamp");
CREATE INDEX ix_traces_timestamp ON public.traces ("timestamp");
CREATE INDEX ix_traces_user_id ON public.traces (user_id);
CREATE INDEX ix_traces_user_timestamp ON public.traces (user_id, "timestamp");
CREATE INDEX idx_traces_user_id ON public.traces (user_id);

CREATE TABLE public.observations (
    id VARCHAR NOT NULL,
    trace_id VARCHAR,
    parent_observation_id VARCHAR,
    type public.observationtype NOT NULL,
    name VARCHAR,
    start_time TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    end_time TIMESTAMP WITHOUT TIME ZONE,
    input JSON,
    output JSON,
    meta JSON,
    model VARCHAR,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_cost NUMERIC,
    level VARCHAR NOT NULL,
    status_message VARCHAR,
    completion_start_time TIMESTAMP WITHOUT TIME ZONE,
    model_parameters JSON,
    total_tokens INTEGER,
    calculated_input_cost NUMERIC,
    calculated_output_cost NUMERIC,
    calculated_total_cost NUMERIC,
    CONSTRAINT observations_pkey PRIMARY KEY (id),
    CONSTRAINT observations_trace_id_fkey FOREIGN KEY (trace_id) REFERENCES public.traces (id) ON DELETE CASCADE
);

CREATE INDEX ix_observations_parent_id ON public.observations (parent_observation_id);
CREATE INDEX ix_observations_trace_id ON public.observations (trace_id);
CREATE INDEX ix_observations_trace_start_time ON public.observations (trace_id, start_time);
CREATE INDEX ix_observations_type_start_time ON public.observations (type, start_time);
CREATE INDEX ix_observations_level ON public.observations (level);
CREATE INDEX ix_observations_model ON public.observations (model);
CREATE INDEX ix_observations_total_cost ON public.observations (calculated_total_cost);

CREATE TABLE public.model_pricing (
    id VARCHAR NOT NULL,
    project_id VARCHAR,
    hosting_provider VARCHAR(100) NOT NULL,
    model_name VARCHAR(200) NOT NULL,
    input_price_per_million NUMERIC NOT NULL,
    output_price_per_million NUMERIC NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    type VARCHAR(50) NOT NULL,
    description TEXT,
    CONSTRAINT model_pricing_pkey PRIMARY KEY (id),
    CONSTRAINT model_pricing_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects (id) ON DELETE CASCADE,
    CONSTRAINT uq_model_pricing_project_provider_model UNIQUE (project_id, hosting_provider, model_name)
);

CREATE INDEX ix_model_pricing_lookup ON public.model_pricing (project_id, hosting_provider, model_name);
CREATE INDEX ix_model_pricing_project_id ON public.model_pricing (project_id);

CREATE TABLE public.config_version (
    id VARCHAR NOT NULL,
    project_id VARCHAR NOT NULL,
    table_name VARCHAR(100) NOT NULL,
    record_id VARCHAR(255) NOT NULL,
    version_number INTEGER NOT NULL,
    config_data JSON,
    description VARCHAR,
    created_by VARCHAR(255) NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    parent_version_id VARCHAR,
    CONSTRAINT config_version_pkey PRIMARY KEY (id),
    CONSTRAINT config_version_parent_version_id_fkey FOREIGN KEY (parent_version_id) REFERENCES public.config_version (id),
    CONSTRAINT config_version_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects (id)
);

CREATE INDEX ix_config_version_created_at ON public.config_version (created_at);
CREATE INDEX ix_config_version_project_id ON public.config_version (project_id);
CREATE INDEX ix_config_version_record_id ON public.config_version (record_id);
CREATE INDEX ix_config_version_table_name ON public.config_version (table_name);
CREATE INDEX ix_config_version_version_number ON public.config_version (version_number);

CREATE TABLE public.project_environment (
    id VARCHAR NOT NULL,
    project_id VARCHAR NOT NULL,
    env_type VARCHAR(20) NOT NULL,
    swisper_url VARCHAR(255) NOT NULL,
    api_key VARCHAR(255) NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    CONSTRAINT project_environment_pkey PRIMARY KEY (id),
    CONSTRAINT project_environment_project_id_fkey FOREIGN KEY (project_id) REFERENCES public.projects (id),
    CONSTRAINT uq_project_env_type UNIQUE (project_id, env_type)
);

CREATE INDEX ix_project_environment_env_type ON public.project_environment (env_type);
CREATE INDEX ix_project_environment_project_id ON public.project_environment (project_id);

CREATE TABLE public.config_deployment (
    id VARCHAR NOT NULL,
    version_id VARCHAR NOT NULL,
    environment_id VARCHAR NOT NULL,
    status VARCHAR(20) NOT NULL,
    deployed_by VARCHAR(255) NOT NULL,
    deployed_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    error_message VARCHAR,
    CONSTRAINT config_deployment_pkey PRIMARY KEY (id),
    CONSTRAINT config_deployment_environment_id_fkey FOREIGN KEY (environment_id) REFERENCES public.project_environment (id),
    CONSTRAINT config_deployment_version_id_fkey FOREIGN KEY (version_id) REFERENCES public.config_version (id)
);

CREATE INDEX ix_config_deployment_deployed_at ON public.config_deployment (deployed_at);
CREATE INDEX ix_config_deployment_environment_id ON public.config_deployment (environment_id);
CREATE INDEX ix_config_deployment_version_id ON public.config_deployment (version_id);

INSERT INTO public.users (id, email, password_hash, name, role, is_active, created_at, updated_at)
VALUES ('admin-user-uuid-0000-000000000001', 'admin@swisperstudio.com',
        '$2b$12$LQv3c1yqBWVHxkd0LHAkCOVDBQYnBPmR3JRMYBqHQTMfzJ8LqCT5u',
        'System Administrator', 'admin', true, now(), now());

INSERT INTO public.alembic_version (version_num) VALUES ('f68a1806c21d');
    $ddl$;
    INSERT INTO swisper_ingest.installation (created_studio_schema, upgraded_from_legacy)
        VALUES (true, legacy);
    IF NOT legacy THEN
        RETURN;
    END IF;

    -- Projects: one per project id of the old rows.
    INSERT INTO public.projects (id, name, created_at, updated_at, tracing_enabled)
    SELECT p, left(p, 255), now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', true
    FROM (SELECT project_id FROM swisper_ingest.legacy_traces
          UNION SELECT project_id FROM swisper_ingest.legacy_observations) AS ids(p);

    -- Traces: the oldest row of each id. data.tags had no column then: it was
    -- in metadata; data.meta's keys join the rest of meta as they do now.
    CREATE TEMP TABLE migrated_traces ON COMMIT DROP AS
    SELECT DISTINCT ON (id) * FROM swisper_ingest.legacy_traces
    ORDER BY id, first_seen_at, project_id;
    INSERT INTO public.traces (id, name, user_id, session_id, project_id, input, output, meta, tags, "timestamp")
    SELECT id,
           CASE WHEN start_version IS NOT NULL THEN COALESCE(name, 'unnamed_trace') END,
           user_id, session_id, project_id, NULL, NULL,
           CASE WHEN start_version IS NOT NULL THEN (
               CASE WHEN meta IS NULL OR jsonb_typeof(meta) = 'null' THEN '{}'::jsonb
                    WHEN jsonb_typeof(meta) = 'object' THEN meta
                    ELSE jsonb_build_object('_meta', meta) END
               || (COALESCE(metadata, '{}'::jsonb) - 'tags')
               || CASE WHEN run_id IS NOT NULL THEN jsonb_build_object('run_id', run_id) ELSE '{}'::jsonb END
           )::json END,
           COALESCE(metadata -> 'tags', '[]'::jsonb)::json,
           (COALESCE(start_timestamp, first_seen_at) AT TIME ZONE 'UTC')
    FROM migrated_traces;
    INSERT INTO swisper_ingest.trace_state (id, project_id, first_seen_at, start_version)
    SELECT id, project_id, first_seen_at, start_version FROM migrated_traces;
    DELETE FROM swisper_ingest.legacy_traces l USING migrated_traces m
    WHERE l.id = m.id AND l.project_id = m.project_id;

    -- Observations: the oldest row of each id whose trace came over with the
    -- same project. Types outside the studio's enum are SPAN with the original
    -- in meta, as the write path does.
    CREATE TEMP TABLE migrated_observations ON COMMIT DROP AS
    SELECT DISTINCT ON (o.id) o.*,
           (CASE WHEN o.start_metadata -> 'meta' IS NULL OR jsonb_typeof(o.start_metadata -> 'meta') = 'null' THEN '{}'::jsonb
                 WHEN jsonb_typeof(o.start_metadata -> 'meta') = 'object' THEN o.start_metadata -> 'meta'
                 ELSE jsonb_build_object('_meta', o.start_metadata -> 'meta') END
            || (COALESCE(o.start_metadata, '{}'::jsonb) - 'meta')) AS new_start_meta,
           (CASE WHEN o.end_metadata -> 'meta' IS NULL OR jsonb_typeof(o.end_metadata -> 'meta') = 'null' THEN '{}'::jsonb
                 WHEN jsonb_typeof(o.end_metadata -> 'meta') = 'object' THEN o.end_metadata -> 'meta'
                 ELSE jsonb_build_object('_meta', o.end_metadata -> 'meta') END
            || (COALESCE(o.end_metadata, '{}'::jsonb) - 'meta')) AS new_end_meta,
           CASE WHEN o.start_type IN ('SPAN', 'GENERATION', 'EVENT', 'TOOL', 'AGENT') THEN o.start_type END AS studio_start_type,
           CASE WHEN o.end_type IN ('SPAN', 'GENERATION', 'EVENT', 'TOOL', 'AGENT') THEN o.end_type END AS studio_end_type
    FROM swisper_ingest.legacy_observations o
    JOIN public.traces t ON t.id = o.trace_id AND t.project_id = o.project_id
    ORDER BY o.id, o.project_id;
    UPDATE migrated_observations SET
        new_start_meta = new_start_meta || CASE WHEN start_type IS NOT NULL AND studio_start_type IS NULL
            THEN jsonb_build_object('_ingest_original_type', start_type) ELSE '{}'::jsonb END,
        new_end_meta = new_end_meta || CASE WHEN end_type IS NOT NULL AND studio_end_type IS NULL
            THEN jsonb_build_object('_ingest_original_type', end_type) ELSE '{}'::jsonb END;
    INSERT INTO public.observations (id, trace_id, parent_observation_id, type, name, start_time,
        end_time, input, output, meta, model, prompt_tokens, completion_tokens, total_cost, level,
        status_message, completion_start_time, model_parameters, total_tokens,
        calculated_input_cost, calculated_output_cost, calculated_total_cost)
    SELECT id, trace_id, parent_observation_id,
           COALESCE(studio_end_type, studio_start_type, 'SPAN')::public.observationtype,
           CASE WHEN start_version IS NOT NULL THEN COALESCE(name, 'unnamed_observation') END,
           (COALESCE(start_time, end_time) AT TIME ZONE 'UTC'), (end_time AT TIME ZONE 'UTC'),
           input::json, output::json,
           NULLIF(new_start_meta || new_end_meta, '{}'::jsonb)::json,
           llm_model,
           CASE WHEN llm_prompt_tokens BETWEEN -2147483648 AND 2147483647 THEN llm_prompt_tokens::int END,
           CASE WHEN llm_completion_tokens BETWEEN -2147483648 AND 2147483647 THEN llm_completion_tokens::int END,
           NULL, COALESCE(end_level, 'DEFAULT'), status_message, NULL, NULL,
           CASE WHEN llm_total_tokens BETWEEN -2147483648 AND 2147483647 THEN llm_total_tokens::int END,
           NULL, NULL, NULL
    FROM migrated_observations;
    INSERT INTO swisper_ingest.observation_state (id, trace_id, project_id, seen_version,
        start_version, end_version, start_type, end_type, start_meta, end_meta)
    SELECT id, trace_id, project_id, seen_version, start_version, end_version,
           studio_start_type, studio_end_type,
           NULLIF(new_start_meta, '{}'::jsonb), NULLIF(new_end_meta, '{}'::jsonb)
    FROM migrated_observations;
    DELETE FROM swisper_ingest.legacy_observations l USING migrated_observations m
    WHERE l.id = m.id AND l.project_id = m.project_id;

    SELECT count(*) INTO kept_traces FROM swisper_ingest.legacy_traces;
    SELECT count(*) INTO kept_observations FROM swisper_ingest.legacy_observations;
    IF kept_traces = 0 AND kept_observations = 0 THEN
        DROP TABLE swisper_ingest.legacy_observations;
        DROP TABLE swisper_ingest.legacy_traces;
    ELSE
        RAISE NOTICE 'upgrade: % trace rows and % observation rows reuse an id stored under another project; they stay in swisper_ingest.legacy_traces and legacy_observations', kept_traces, kept_observations;
    END IF;

    -- This service's own tables of the old layout, into our schema.
    INSERT INTO swisper_ingest.dead_letters SELECT * FROM public.ingest_dead_letters;
    PERFORM setval('swisper_ingest.dead_letters_id_seq',
                   GREATEST((SELECT max(id) FROM swisper_ingest.dead_letters), 1));
    DROP TABLE public.ingest_dead_letters;
    IF to_regclass('public.sdk_heartbeats') IS NOT NULL THEN
        INSERT INTO swisper_ingest.sdk_heartbeats SELECT * FROM public.sdk_heartbeats;
        DROP TABLE public.sdk_heartbeats;
    END IF;
    IF to_regclass('public.retention_projects') IS NOT NULL THEN
        INSERT INTO swisper_ingest.retention_projects SELECT * FROM public.retention_projects;
        DROP TABLE public.retention_projects;
        INSERT INTO swisper_ingest.retention_tombstones SELECT * FROM public.retention_tombstones;
        DROP TABLE public.retention_tombstones;
    END IF;
    DROP TABLE IF EXISTS public.refinery_schema_history;
    DROP FUNCTION IF EXISTS public.ingest_newer(bytea, bytea);
END
$migration$;
