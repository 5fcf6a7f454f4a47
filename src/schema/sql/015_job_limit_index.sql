-- 015 job limit index: a limited claim counts the running jobs of one limit key. Keyed on
-- the lease being set (like 008), so the index holds running jobs only.
-- CONCURRENTLY: an upgrade must not block writes to a large jobs table.
-- herald:outside-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_limit_key_idx ON :schema.jobs (limit_key) WHERE limit_key IS NOT NULL AND lease_expires_at IS NOT NULL;
