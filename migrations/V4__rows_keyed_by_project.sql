-- Tenancy: ids are chosen by producers, so two projects may use the same
-- trace or observation id (a copied fixture, a misconfigured SDK). Keyed by
-- id alone, the row's project_id was last-writer-wins: one project's event
-- could move another project's row. Keyed by (id, project_id), each project
-- has its own row and the merge stays independent of arrival order
-- (docs/event-format.md, "Projects and ids").
--
-- id comes first so that lookups by id alone still use the primary key.
-- Rebuilding the key takes an ACCESS EXCLUSIVE lock for the time it takes to
-- build the index: on a large table, run `swisper-ingest migrate` in a
-- quiet hour (docs/operations.md).
ALTER TABLE traces DROP CONSTRAINT traces_pkey, ADD PRIMARY KEY (id, project_id);
ALTER TABLE observations DROP CONSTRAINT observations_pkey, ADD PRIMARY KEY (id, project_id);
