-- 011 maintenance: the state of the periodic tasks of the one maintenance service
-- (queue rescue, retention of every part, dead-letter retention). The elected leader
-- (role 'maintenance' in queue_leaders) plans and records each task here, so any
-- process (`herald maintenance status`) sees the last run, the next one and who ran it.
CREATE TABLE IF NOT EXISTS :schema.maintenance_tasks (
  task text PRIMARY KEY,
  -- The leader's settings when it planned the task.
  enabled boolean NOT NULL DEFAULT true,
  interval_ms double precision NOT NULL,
  retention_ms double precision,
  -- Counters over the life of the fleet.
  runs bigint NOT NULL DEFAULT 0,
  errors bigint NOT NULL DEFAULT 0,
  last_started_at timestamptz,
  last_finished_at timestamptz,
  last_rows bigint,
  last_duration_ms double precision,
  last_error text,
  next_run_at timestamptz,
  -- The process that planned or last ran the task.
  holder text
);

-- Cheap dashboard and stats (issue 15 point 3): counts that would otherwise scan the
-- finished history. Dead and cancelled jobs per queue and kind (the `queues` panel:
-- waiting and running jobs already have their partial indexes); dead outbox events in
-- event order (the dead-letter list walked the primary key past every published event).
-- CONCURRENTLY: an upgrade must not block writes to a large jobs or outbox table.
-- herald:outside-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_failed_idx ON :schema.jobs (queue, kind, state) WHERE state IN ('dead', 'cancelled');
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_events_dead_seq ON :schema.outbox_events (seq) WHERE dead_at IS NOT NULL;
