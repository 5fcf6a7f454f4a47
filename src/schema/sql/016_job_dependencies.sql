-- 016 job dependencies: workflows, sets of jobs with `dependsOn` edges (a DAG) enqueued in
-- one transaction. A job with dependencies starts in state 'waiting' (not in the claim
-- index, which holds 'available' jobs only: the claim path does not change) with
-- deps_pending = the number of its dependencies not completed. Every transition of a
-- workflow job that enters or leaves 'completed' (a running job deleted with
-- keepCompleted: false counts as entering it) moves the counter of each dependent, under
-- the dependent's row lock, in the transaction of the transition: concurrent finishers of
-- one dependent's dependencies queue on that row, and the one that brings it to 0 moves a
-- 'waiting' dependent to 'available', so the release happens exactly once.
-- A dependency that goes 'dead' or 'cancelled': with on_failure 'cancel' (the default)
-- every waiting job that depends on it, directly or not, is cancelled in one statement;
-- with 'hold' they stay waiting (a retry of the failed job that completes releases them).
CREATE TABLE IF NOT EXISTS :schema.job_workflows (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text,
  on_failure text NOT NULL DEFAULT 'cancel' CHECK (on_failure IN ('cancel', 'hold')),
  total int NOT NULL CHECK (total > 0),
  -- The members (ids in the order given) and their keys: workflow(id) reads the jobs by
  -- primary key, no index on jobs needed.
  job_ids bigint[] NOT NULL,
  job_keys text[] NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- depends_on must complete before job_id may start. Outgoing edges by the primary key,
-- incoming ones (a job's dependencies) by the second index.
CREATE TABLE IF NOT EXISTS :schema.job_deps (
  depends_on bigint NOT NULL,
  job_id bigint NOT NULL,
  PRIMARY KEY (depends_on, job_id)
);
CREATE INDEX IF NOT EXISTS job_deps_job_idx ON :schema.job_deps (job_id);

-- Nullable column without default and a constant default: neither rewrites the table.
ALTER TABLE :schema.jobs ADD COLUMN IF NOT EXISTS workflow_id bigint, ADD COLUMN IF NOT EXISTS deps_pending int NOT NULL DEFAULT 0;
-- The new state. NOT VALID: no scan of the table (every existing row holds an old state).
ALTER TABLE :schema.jobs DROP CONSTRAINT IF EXISTS jobs_state_check,
  ADD CONSTRAINT jobs_state_check CHECK (state IN ('waiting', 'available', 'running', 'completed', 'dead', 'cancelled')) NOT VALID;

CREATE OR REPLACE FUNCTION :schema.job_workflow_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  delta int := 0;
  policy text;
  q text;
BEGIN
  -- Every transition of a member (a running job deleted: completed) is announced on
  -- <schema>.workflows.events for watchWorkflow: a wake-up, like the jobs' channels.
  IF (TG_OP = 'UPDATE' OR OLD.state = 'running') AND :schema.notify_queue_ok() THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.workflows.events',
      json_build_object('workflowId', OLD.workflow_id::text, 'id', OLD.id::text,
                        'state', CASE WHEN TG_OP = 'DELETE' THEN 'completed' ELSE NEW.state END)::text);
  END IF;
  IF TG_OP = 'DELETE' THEN
    -- Its own incoming edges go with the row (outgoing ones stay for the view of its
    -- dependents, and go when they are deleted).
    DELETE FROM :schema.job_deps WHERE job_id = OLD.id;
    -- A running job deleted is a completion (keepCompleted: false); finished rows deleted
    -- by retention were counted when they finished.
    IF OLD.state = 'running' THEN delta := -1; ELSE RETURN NULL; END IF;
  ELSIF NEW.state = 'completed' THEN
    delta := -1;
  ELSIF OLD.state = 'completed' THEN
    -- Retried after completing: its dependents that still wait wait for it again.
    delta := 1;
  ELSIF NEW.state IN ('dead', 'cancelled') THEN
    SELECT w.on_failure INTO policy FROM :schema.job_workflows w WHERE w.id = OLD.workflow_id;
    IF policy IS DISTINCT FROM 'cancel' THEN RETURN NULL; END IF;
    -- Every waiting job reachable from this one, cancelled in one statement (their own
    -- triggers find nothing left to cancel: no recursion deeper than one level).
    WITH RECURSIVE r(id) AS (
      SELECT d.job_id FROM :schema.job_deps d WHERE d.depends_on = OLD.id
      UNION
      SELECT d.job_id FROM r JOIN :schema.job_deps d ON d.depends_on = r.id
    )
    UPDATE :schema.jobs j SET state = 'cancelled', finished_at = now(),
           last_error = 'dependency ' || OLD.id || ' is ' || NEW.state
     WHERE j.id IN (SELECT id FROM r) AND j.state = 'waiting';
    RETURN NULL;
  ELSE
    RETURN NULL;
  END IF;
  -- Dependents in any state keep an exact count; only waiting ones are released.
  FOR q IN
    UPDATE :schema.jobs j
       SET deps_pending = j.deps_pending + delta,
           state = CASE WHEN j.state = 'waiting' AND j.deps_pending + delta <= 0 THEN 'available' ELSE j.state END,
           run_at = CASE WHEN j.state = 'waiting' AND j.deps_pending + delta <= 0 THEN greatest(j.run_at, now()) ELSE j.run_at END,
           stage_entered_at = CASE WHEN j.state = 'waiting' AND j.deps_pending + delta <= 0 THEN now() ELSE j.stage_entered_at END
     WHERE j.id IN (SELECT d.job_id FROM :schema.job_deps d WHERE d.depends_on = OLD.id)
    RETURNING CASE WHEN j.state = 'available' AND j.deps_pending = 0 THEN j.queue END
  LOOP
    IF q IS NOT NULL AND :schema.notify_queue_ok() THEN
      -- Identical notifications of one transaction are sent once.
      PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs.wake', q);
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS job_workflow_update ON :schema.jobs;
CREATE TRIGGER job_workflow_update AFTER UPDATE OF state ON :schema.jobs
  FOR EACH ROW WHEN (OLD.workflow_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION :schema.job_workflow_track();
DROP TRIGGER IF EXISTS job_workflow_delete ON :schema.jobs;
CREATE TRIGGER job_workflow_delete AFTER DELETE ON :schema.jobs
  FOR EACH ROW WHEN (OLD.workflow_id IS NOT NULL) EXECUTE FUNCTION :schema.job_workflow_track();

-- Waiting jobs per queue and kind (stats without a scan of the table).
-- CONCURRENTLY: an upgrade must not block writes to a large jobs table.
-- herald:outside-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_waiting_idx ON :schema.jobs (queue, kind) WHERE state = 'waiting';
