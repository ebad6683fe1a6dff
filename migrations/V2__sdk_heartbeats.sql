-- SDK liveness: every running application's SDK publishes a heartbeat every
-- 10 s per project. The SDK sends no instance id, so a row is one project and
-- SDK version; merged by min/max so that order and duplicates do not matter.
CREATE TABLE sdk_heartbeats (
    project_id      text NOT NULL,
    sdk_version     text NOT NULL,
    first_seen_at   timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    -- Keys of the newest heartbeat's data without a column of their own.
    metadata        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (project_id, sdk_version)
);
