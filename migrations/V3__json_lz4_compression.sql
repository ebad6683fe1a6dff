-- lz4 instead of pglz for the large JSON columns (PostgreSQL 14+ built with
-- lz4, as Debian's is). Measured with loadtests/bench.sh on 2 cores: pglz
-- compression was a third of Postgres' CPU while draining a backlog;
-- with lz4 a bulk COPY of the same rows is ~1.7x faster and the service's
-- drain ~20% faster (docs/benchmarks.md).
--
-- The staging tables of the write path take the session's
-- default_toast_compression, which the pool sets to lz4 for its own
-- connections (src/store/pool.rs): nothing here changes the database's
-- default for other applications sharing it.
-- Only new values are compressed with lz4; existing ones stay readable as
-- they are. Where the server lacks lz4 this does nothing and says so: it
-- never fails startup.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_settings
        WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        RAISE NOTICE 'lz4 is not available on this server: JSON columns keep pglz';
        RETURN;
    END IF;
    ALTER TABLE observations
        ALTER COLUMN input SET COMPRESSION lz4,
        ALTER COLUMN output SET COMPRESSION lz4,
        ALTER COLUMN start_metadata SET COMPRESSION lz4,
        ALTER COLUMN end_metadata SET COMPRESSION lz4,
        ALTER COLUMN metadata SET COMPRESSION lz4;
    ALTER TABLE traces
        ALTER COLUMN meta SET COMPRESSION lz4,
        ALTER COLUMN metadata SET COMPRESSION lz4;
END
$$;
