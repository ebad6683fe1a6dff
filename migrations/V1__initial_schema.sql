-- Initial schema of swisper-ingest.
--
-- Rows are merged from events that may arrive in any order and any number of
-- times. Each group of columns filled by one kind of event carries the
-- *version* of the event that filled it: 24 bytes that sort as
-- (publish time in microseconds, stream entry id). A group is replaced only by
-- an event with a greater version, so the final row is the same whatever the
-- order of arrival (a last-writer-wins register per group). Columns that
-- combine groups are GENERATED, so they can never drift from their sources.

-- True when `candidate` should replace `current` (NULL means "no value yet").
CREATE FUNCTION ingest_newer(candidate bytea, current bytea) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT candidate IS NOT NULL AND (current IS NULL OR candidate > current) $$;

CREATE TABLE traces (
    id              text PRIMARY KEY,
    -- From the newest event of the trace, whatever its type.
    project_id      text NOT NULL,
    seen_version    bytea NOT NULL,
    -- Publish time of the oldest event of the trace: the trace's time until
    -- its trace_start arrives.
    first_seen_at   timestamptz NOT NULL,
    -- From trace_start.
    start_version   bytea,
    name            text,
    user_id         text,
    session_id      text,
    run_id          text,
    meta            jsonb,
    -- Keys of trace_start's data that have no column of their own.
    metadata        jsonb,
    start_timestamp timestamptz,
    "timestamp"     timestamptz GENERATED ALWAYS AS (COALESCE(start_timestamp, first_seen_at)) STORED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX traces_project_timestamp_idx ON traces (project_id, "timestamp" DESC);
CREATE INDEX traces_session_idx ON traces (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE observations (
    id                    text PRIMARY KEY,
    -- From the newest event of the observation, whatever its type.
    trace_id              text NOT NULL,
    project_id            text NOT NULL,
    seen_version          bytea NOT NULL,
    -- From observation_start.
    start_version         bytea,
    name                  text,
    start_type            text,
    parent_observation_id text,
    input                 jsonb,
    start_time            timestamptz,
    start_metadata        jsonb,
    -- From observation_end or observation_error.
    end_version           bytea,
    end_type              text,
    end_level             text,
    output                jsonb,
    status_message        text,
    end_time              timestamptz,
    end_metadata          jsonb,
    -- LLM telemetry the SDK puts in a GENERATION's output (_llm_model,
    -- _llm_tokens, _llm_latency), copied out so usage is one SQL query away.
    llm_model             text,
    llm_prompt_tokens     bigint,
    llm_completion_tokens bigint,
    llm_total_tokens      bigint,
    llm_cached_tokens     bigint,
    llm_thoughts_tokens   bigint,
    llm_duration_ms       double precision,
    -- The end's type is the final, auto-detected one: it replaces the start's.
    type                  text GENERATED ALWAYS AS (COALESCE(end_type, start_type, 'SPAN')) STORED,
    level                 text GENERATED ALWAYS AS (COALESCE(end_level, 'DEFAULT')) STORED,
    -- Keys of data that have no column of their own; the end's win on a clash.
    metadata              jsonb GENERATED ALWAYS AS (COALESCE(start_metadata, '{}'::jsonb) || COALESCE(end_metadata, '{}'::jsonb)) STORED,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX observations_trace_idx ON observations (trace_id);
CREATE INDEX observations_llm_model_idx ON observations (project_id, llm_model) WHERE llm_model IS NOT NULL;
CREATE INDEX observations_parent_idx ON observations (parent_observation_id) WHERE parent_observation_id IS NOT NULL;

-- Every stream entry that can never be stored, with why.
CREATE TABLE ingest_dead_letters (
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

CREATE INDEX ingest_dead_letters_created_idx ON ingest_dead_letters (created_at);
