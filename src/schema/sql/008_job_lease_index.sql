-- 008 job lease index: the rescue sweep's index is keyed on the lease being set, not on
-- state = 'running'. With the old predicate the planner served completions and heartbeats
-- (id = ANY, state = 'running') by a bitmap scan of the whole lease index, and that index
-- holds an entry for every job claimed since the last vacuum: each completion walked
-- them all. Now those statements find their rows by primary key. A lease is set exactly
-- while a job runs (claim sets it; every way out of running clears it).
-- Both statements run CONCURRENTLY: an upgrade must not block writes to a large jobs table.
-- herald:outside-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_lease_expiry_idx ON :schema.jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS :schema.jobs_lease_idx;
