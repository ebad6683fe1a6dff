-- swisper-ingest's own state, in a schema of its own. The studio's tables
-- (public.traces, public.observations, public.projects, public.model_pricing)
-- belong to SwisperStudio and its Alembic history: nothing here touches them,
-- and nothing of ours sits in public, so the studio's autogenerate sees no
-- stranger. The migration history itself is swisper_ingest.refinery_schema_history.
--
-- Merge bookkeeping. Rows are merged from events that may arrive in any order
-- and any number of times. The studio's rows have no room for versions, so
-- each row's versions live here, keyed like the studio row (by id): each group
-- of columns filled by one kind of event carries the version of the event that
-- filled it (24 bytes that sort as publish time in µs, then stream entry id),
-- and a group is replaced only by an event with a greater version. Writers
-- lock the studio row before reading its state, so state and row move together.

-- How this database came to have the studio's tables (V2): a studio's own
-- `alembic upgrade head`, or this service standing alone. Standalone, unknown
-- projects are created on first sight (OBSERVABILITY_CREATE_PROJECTS=auto).
CREATE TABLE swisper_ingest.installation (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    created_studio_schema boolean NOT NULL,
    upgraded_from_legacy  boolean NOT NULL DEFAULT false,
    installed_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE swisper_ingest.trace_state (
    id            text PRIMARY KEY,
    project_id    text NOT NULL,
    -- Publish time of the oldest event stored: the trace's time until its
    -- trace_start arrives, and its time for retention.
    first_seen_at timestamptz NOT NULL,
    -- Version of the trace_start that filled name, user_id, session_id,
    -- meta, tags and timestamp; NULL until one is stored.
    start_version bytea
);
CREATE INDEX trace_state_project_first_seen_idx ON swisper_ingest.trace_state (project_id, first_seen_at);

CREATE TABLE swisper_ingest.observation_state (
    id            text PRIMARY KEY,
    trace_id      text NOT NULL,
    project_id    text NOT NULL,
    -- The newest event of the observation, whatever its type: decides trace_id.
    seen_version  bytea NOT NULL,
    -- observation_start: name, parent, input, start_time.
    start_version bytea,
    -- observation_end / observation_error: end_time, output, level, status,
    -- model, tokens and costs.
    end_version   bytea,
    -- Columns the studio combines from both groups, kept apart here so that
    -- the combination does not depend on which came first: type (the end's
    -- wins) and meta (the end's keys win).
    start_type    text,
    end_type      text,
    start_meta    jsonb,
    end_meta      jsonb
);
CREATE INDEX observation_state_trace_idx ON swisper_ingest.observation_state (trace_id);

-- Every stream entry that can never be stored, with why.
CREATE TABLE swisper_ingest.dead_letters (
    id              bigserial PRIMARY KEY,
    stream          text NOT NULL,
    stream_entry_id text NOT NULL,
    -- The entry's fields in order, as [name, value] pairs; a name or value
    -- that is not UTF-8 text without NUL is {"base64": "..."}, one too large
    -- to keep is {"omitted_bytes": N}.
    fields          jsonb NOT NULL,
    -- Stable machine-readable class (also the metric label); `reason` is prose.
    reason_code     text NOT NULL,
    reason          text NOT NULL,
    delivery_count  integer NOT NULL,
    -- Copied out of `fields` when readable, for queries.
    event_type      text,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Set by `swisper-ingest dead-letters replay`: when, and as which new entry.
    replayed_at     timestamptz,
    replayed_entry_id text,
    UNIQUE (stream, stream_entry_id)
);
CREATE INDEX dead_letters_created_idx ON swisper_ingest.dead_letters (created_at);

-- SDK liveness: every running application's SDK publishes a heartbeat every
-- 10 s per project. The SDK sends no instance id, so a row is one project and
-- SDK version; merged by min/max so that order and duplicates do not matter.
CREATE TABLE swisper_ingest.sdk_heartbeats (
    project_id      text NOT NULL,
    sdk_version     text NOT NULL,
    first_seen_at   timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    -- Keys of the newest heartbeat's data without a column of their own.
    metadata        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (project_id, sdk_version)
);

-- Per-project horizons, managed with `swisper-ingest retention set|unset|show`;
-- a project without a row takes OBSERVABILITY_RETENTION_DAYS.
CREATE TABLE swisper_ingest.retention_projects (
    project_id  text PRIMARY KEY,
    days        integer NOT NULL CHECK (days > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Traces forgotten recently: a late event of such a trace is not stored, so
-- that no half trace is resurrected. Kept for
-- OBSERVABILITY_RETENTION_TOMBSTONE_DAYS.
CREATE TABLE swisper_ingest.retention_tombstones (
    trace_id      text NOT NULL,
    project_id    text NOT NULL,
    forgotten_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trace_id, project_id)
);
CREATE INDEX retention_tombstones_forgotten_idx ON swisper_ingest.retention_tombstones (forgotten_at);

-- Rows leave continuously in small batches: let autovacuum reclaim them at
-- 2% of dead rows instead of the default 20%. Only our own tables: the
-- studio's storage parameters are the studio's.
ALTER TABLE swisper_ingest.trace_state SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE swisper_ingest.observation_state SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE swisper_ingest.retention_tombstones SET (autovacuum_vacuum_scale_factor = 0.02);
