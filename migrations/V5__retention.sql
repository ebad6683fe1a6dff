-- Retention: traces leave with all their observations once their time is
-- past the horizon of their project (docs/operations.md, "Retention").
--
-- A trace's time for retention is first_seen_at, the publish time of its
-- oldest event: every event of the trace knows it is at least that old, so
-- an event older than the horizon proves its whole trace is due, and the
-- write path can refuse it without a lookup (docs/event-format.md).
--
-- The retention worker takes the oldest due traces of one project at a time
-- through this index. Built without CONCURRENTLY because refinery runs each
-- migration in a transaction: writes to traces wait while it builds (on
-- traces only, the small table: seconds for millions of rows); entries wait
-- in the stream meanwhile, nothing is lost.
CREATE INDEX traces_project_first_seen_idx ON traces (project_id, first_seen_at);

-- Per-project horizons, managed with `swisper-ingest retention set|unset|show`;
-- a project without a row takes OBSERVABILITY_RETENTION_DAYS.
CREATE TABLE retention_projects (
    project_id  text PRIMARY KEY,
    days        integer NOT NULL CHECK (days > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Traces forgotten recently. A late event of such a trace may still carry a
-- publish time inside the horizon (a trace that spans the cut); the write
-- path refuses events of a trace listed here, so that no half trace is
-- resurrected. Kept for OBSERVABILITY_RETENTION_TOMBSTONE_DAYS, after which
-- any event of the trace is older than the horizon by its own timestamp.
CREATE TABLE retention_tombstones (
    trace_id      text NOT NULL,
    project_id    text NOT NULL,
    forgotten_at  timestamptz NOT NULL DEFAULT now(),
    -- Keyed like the rows (V4): a trace id of one project forgotten says
    -- nothing about the same id in another project.
    PRIMARY KEY (trace_id, project_id)
);
CREATE INDEX retention_tombstones_forgotten_idx ON retention_tombstones (forgotten_at);

-- Rows leave continuously in small batches: let autovacuum reclaim them at
-- 2% of dead rows instead of the default 20%, so that freed pages are reused
-- by new rows and the tables stay flat (the default lets a 50 GB table carry
-- 10 GB of dead rows). Only a storage parameter: no rewrite, no long lock.
ALTER TABLE observations SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE traces SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE retention_tombstones SET (autovacuum_vacuum_scale_factor = 0.02);
