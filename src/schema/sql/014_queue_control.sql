-- 014 queue control: pauses, fleet-wide concurrency and rate limits, job timeouts.
--
-- queue_controls holds one row per (queue, kind) that is paused or limited; '' in queue
-- means every queue, '' in kind every kind of the queue (limits always name a queue).
-- Workers' ordinary claim checks this table once per statement (an InitPlan on a tiny
-- table): while a row applies, the ordinary claim takes nothing and the worker claims
-- through job_admit below instead.
CREATE TABLE IF NOT EXISTS :schema.queue_controls (
  queue text NOT NULL,
  kind text NOT NULL,
  paused_at timestamptz,
  -- At most this many jobs running at once (per partition key when partition_by is set).
  concurrency int CHECK (concurrency > 0),
  -- A path into the payload (`payload #>> partition_by`): each value is its own limit.
  partition_by text[],
  -- At most rate_count starts per rate_period_ms (a token bucket, per partition key).
  rate_count int CHECK (rate_count > 0),
  rate_period_ms float8 CHECK (rate_period_ms > 0),
  -- A limit is split into this many stripes (fewer when concurrency or rate_count is
  -- smaller), each with its share and its own lock, so that claimers of one key run in
  -- parallel instead of queueing for one lock held across their commits.
  stripes int NOT NULL DEFAULT 8 CHECK (stripes BETWEEN 1 AND 64),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (queue, kind),
  CHECK ((rate_count IS NULL) = (rate_period_ms IS NULL)),
  CHECK (queue <> '' OR (concurrency IS NULL AND rate_count IS NULL))
);

-- Token buckets of rate limits, one per limit key (written only under that key's lock).
CREATE TABLE IF NOT EXISTS :schema.queue_rate_buckets (
  key text PRIMARY KEY,
  tokens float8 NOT NULL,
  at timestamptz NOT NULL
);

-- timeout_ms: the job's own handler timeout (null: the worker's). limit_key: the limit
-- key the job was claimed under (set by every claim, null when no limit applied); a
-- running job with a live lease holds one slot of its key.
ALTER TABLE :schema.jobs ADD COLUMN IF NOT EXISTS timeout_ms int, ADD COLUMN IF NOT EXISTS limit_key text;

-- Admission of a claim under controls, for a worker of (queue, kind, stage) wanting
-- p_want jobs. Returns mode 'free' (no control applies: claim the ordinary way), 'paused',
-- 'limited' with the admitted job ids (in claim order) and `keys` (a jsonb object: job id
-- -> its limit key), or 'busy' (none admitted while another claimer held a key with due
-- jobs: try again shortly); wait_ms: when a rate limit refused a due job, how long until
-- its next token. The caller claims the admitted jobs in the same statement (the
-- transaction that holds the locks).
--
-- Why a function, and the order inside: a limit key's running count must be read AFTER
-- its lock is held, in a snapshot taken after the lock (a plain statement's snapshot
-- predates the locks it takes, and would miss a claim committed in between). In a
-- VOLATILE plpgsql function each statement takes a new snapshot. The locks are
-- transaction advisory locks (two-key form, class = hash of the schema's control table),
-- held until the caller's transaction, which also claims, commits.
--
-- Stripes: each limit key is split into S = least(stripes, concurrency, rate_count) units,
-- `<key>#<i>`, each with concurrency / S slots (the remainder to the first ones) and a
-- token bucket of rate_count / S; a job is claimed under one unit (its limit_key). The
-- units' shares add up to the limit, so the sum of what runs (or starts) never exceeds it.
--
-- Deadlocks: a claimer waits for a unit only while it holds no other: units are tried in
-- order (keys in claim order, each key's stripes from a random one) with
-- pg_try_advisory_xact_lock and skipped when held by another claimer; with partitions, units a read
-- before any lock shows full are not locked at all. Only when every unit worth locking was
-- skipped, and none is held, does the claimer wait for the first of them; a waiter holding
-- nothing closes no cycle.
--
-- Candidates: the first p_scan due jobs in claim order (p_want without partitions), locked
-- FOR UPDATE SKIP LOCKED like the ordinary claim, so concurrent claimers look at different
-- jobs instead of admitting the same ones; the locks go with the transaction.
CREATE OR REPLACE FUNCTION :schema.job_admit(p_queue text, p_kind text, p_stage text, p_want int, p_scan int)
RETURNS TABLE (mode text, ids bigint[], keys jsonb, wait_ms float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  c record;
  cls int := hashtext(':schema.queue_controls');
  cand_ids bigint[];
  cand_keys text[];
  one_key text;
  key_list text[];
  rem int[];
  n_stripes int;
  off int;
  st int;
  units text[] := '{}';
  unit_of int[] := '{}';
  unit_cap int[] := '{}';
  share float8;
  hint jsonb := '{}'::jsonb;
  u int;
  i int;
  k text;
  held int := 0;
  first_skipped int := NULL;
  waiting boolean := false;
  running int;
  b record;
  tokens float8;
  quota jsonb := '{}'::jsonb;
  pos jsonb := '{}'::jsonb;
  admitted int := 0;
  take int;
  wait float8 := NULL;
  out_ids bigint[] := '{}';
  out_keys jsonb := '{}'::jsonb;
BEGIN
  IF EXISTS (SELECT 1 FROM :schema.queue_controls q
              WHERE q.queue IN ('', p_queue) AND q.kind IN ('', p_kind) AND q.paused_at IS NOT NULL) THEN
    RETURN QUERY SELECT 'paused'::text, NULL::bigint[], NULL::jsonb, NULL::float8;
    RETURN;
  END IF;
  -- The kind's own limit wins over the queue's.
  SELECT q.* INTO c FROM :schema.queue_controls q
   WHERE q.queue = p_queue AND q.kind IN ('', p_kind) AND (q.concurrency IS NOT NULL OR q.rate_count IS NOT NULL)
   ORDER BY q.kind DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'free'::text, NULL::bigint[], NULL::jsonb, NULL::float8;
    RETURN;
  END IF;
  IF p_want <= 0 THEN
    RETURN QUERY SELECT 'limited'::text, out_ids, out_keys, NULL::float8;
    RETURN;
  END IF;
  one_key := jsonb_build_array(c.queue, c.kind, NULL)::text;
  SELECT array_agg(t.id ORDER BY t.o), array_agg(t.k ORDER BY t.o) INTO cand_ids, cand_keys
    FROM (SELECT j.id, row_number() OVER () AS o,
                 CASE WHEN c.partition_by IS NULL THEN one_key
                      ELSE jsonb_build_array(c.queue, c.kind, j.payload #>> c.partition_by)::text END AS k
            FROM (SELECT id, payload FROM :schema.jobs
                   WHERE state = 'available' AND queue = p_queue AND kind = p_kind AND stage = p_stage AND run_at <= now()
                   ORDER BY priority, run_at, id
                   -- Without partitions every candidate has the one key: no need to look further.
                   LIMIT CASE WHEN c.partition_by IS NULL THEN p_want ELSE p_scan END
                   FOR UPDATE SKIP LOCKED) j) t;
  IF cand_ids IS NULL THEN
    RETURN QUERY SELECT 'limited'::text, out_ids, out_keys, NULL::float8;
    RETURN;
  END IF;
  -- Distinct keys in order of their first candidate, with how many candidates each has.
  SELECT array_agg(x.k ORDER BY x.o), array_agg(x.n ORDER BY x.o) INTO key_list, rem
    FROM (SELECT y.k, min(y.o) AS o, count(*)::int AS n FROM unnest(cand_keys) WITH ORDINALITY AS y(k, o) GROUP BY y.k) x;
  n_stripes := least(c.stripes, coalesce(c.concurrency, c.stripes), coalesce(c.rate_count, c.stripes));
  FOR i IN 1 .. array_length(key_list, 1) LOOP
    off := floor(random() * n_stripes)::int;
    FOR st IN 0 .. n_stripes - 1 LOOP
      units := units || (key_list[i] || '#' || ((off + st) % n_stripes));
      unit_of := unit_of || i;
      unit_cap := unit_cap || (c.concurrency / n_stripes + CASE WHEN (off + st) % n_stripes < c.concurrency % n_stripes THEN 1 ELSE 0 END);
    END LOOP;
  END LOOP;
  share := c.rate_count::float8 / n_stripes;
  IF c.concurrency IS NOT NULL AND c.partition_by IS NOT NULL THEN
    -- Before any lock: which units look full (a hint; the count that decides comes after the
    -- lock). Only with partitions: without, the count after the lock is as cheap.
    SELECT coalesce(jsonb_object_agg(j.limit_key, j.n), '{}'::jsonb) INTO hint
      FROM (SELECT limit_key, count(*) AS n FROM :schema.jobs
             WHERE limit_key = ANY(units) AND lease_expires_at IS NOT NULL AND state = 'running' AND lease_expires_at > clock_timestamp()
             GROUP BY limit_key) j;
  END IF;
  u := 1;
  LOOP
    IF u > array_length(units, 1) OR admitted >= p_want THEN
      -- Every unit worth locking was skipped and none is held: wait for the first skipped.
      IF admitted = 0 AND held = 0 AND first_skipped IS NOT NULL AND NOT waiting THEN
        u := first_skipped;
        waiting := true;
      ELSE
        EXIT;
      END IF;
    END IF;
    k := units[u];
    i := unit_of[u];
    IF rem[i] = 0 THEN
      u := u + 1;
      CONTINUE;
    END IF;
    IF waiting THEN
      PERFORM pg_advisory_xact_lock(cls, hashtext(k));
    ELSIF c.concurrency IS NOT NULL AND coalesce((hint ->> k)::int, 0) >= unit_cap[u] THEN
      u := u + 1;
      CONTINUE;
    ELSIF NOT pg_try_advisory_xact_lock(cls, hashtext(k)) THEN
      first_skipped := coalesce(first_skipped, u);
      u := u + 1;
      CONTINUE;
    END IF;
    held := held + 1;
    take := least(rem[i], p_want - admitted);
    IF c.concurrency IS NOT NULL THEN
      -- A new statement, so a new snapshot: it sees every claim committed before the lock.
      SELECT count(*)::int INTO running FROM :schema.jobs j
       WHERE j.limit_key = k AND j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.lease_expires_at > clock_timestamp();
      take := least(take, greatest(0, unit_cap[u] - running));
    END IF;
    IF c.rate_count IS NOT NULL AND take > 0 THEN
      SELECT rb.tokens, rb.at INTO b FROM :schema.queue_rate_buckets rb WHERE rb.key = k;
      IF NOT FOUND THEN
        tokens := share;
      ELSE
        tokens := least(share, b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.at) * 1000) * share / c.rate_period_ms);
      END IF;
      IF floor(tokens) < take THEN
        wait := least(coalesce(wait, 'Infinity'::float8), (1 - (tokens - floor(tokens))) * c.rate_period_ms / share);
      END IF;
      take := least(take, floor(tokens)::int);
      INSERT INTO :schema.queue_rate_buckets AS rb (key, tokens, at) VALUES (k, tokens - take, clock_timestamp())
        ON CONFLICT (key) DO UPDATE SET tokens = EXCLUDED.tokens, at = EXCLUDED.at;
    END IF;
    IF take > 0 THEN
      quota := quota || jsonb_build_object(key_list[i], coalesce(quota -> key_list[i], '[]'::jsonb) || (SELECT jsonb_agg(k) FROM generate_series(1, take)));
      rem[i] := rem[i] - take;
      admitted := admitted + take;
    END IF;
    EXIT WHEN waiting;
    u := u + 1;
  END LOOP;
  IF admitted > 0 THEN
    -- Each admitted candidate, in claim order, under one of its key's admitted units.
    FOR i IN 1 .. array_length(cand_ids, 1) LOOP
      take := coalesce((pos ->> cand_keys[i])::int, 0);
      IF take < coalesce(jsonb_array_length(quota -> cand_keys[i]), 0) THEN
        out_ids := out_ids || cand_ids[i];
        out_keys := out_keys || jsonb_build_object(cand_ids[i]::text, quota -> cand_keys[i] ->> take);
        pos := pos || jsonb_build_object(cand_keys[i], take + 1);
      END IF;
    END LOOP;
  END IF;
  RETURN QUERY SELECT CASE WHEN admitted = 0 AND first_skipped IS NOT NULL THEN 'busy' ELSE 'limited' END, out_ids, out_keys, wait;
END
$$;

-- Batches: a group of jobs whose settlement enqueues one callback job. The counters move
-- with every final transition of a member (a trigger, so every path counts: completion,
-- deletion on completion, failure to dead, cancel, rescue to dead, retry back from dead);
-- the batch settles when every member completed (outcome 'completed') or a member went
-- dead or was cancelled (outcome 'dead'). The trigger that settles it inserts the callback
-- and sets callback_job_id under the batch row's lock, in the same transaction as the
-- member's transition: concurrent last finishers in different processes queue on that
-- row, and the later one sees callback_job_id set, so the callback is enqueued once.
CREATE TABLE IF NOT EXISTS :schema.job_batches (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  total int NOT NULL CHECK (total > 0),
  completed int NOT NULL DEFAULT 0,
  dead int NOT NULL DEFAULT 0,
  cancelled int NOT NULL DEFAULT 0,
  callback_queue text NOT NULL,
  callback_kind text NOT NULL,
  callback_payload jsonb NOT NULL DEFAULT '{}'::jsonb,
  callback_max_attempts int NOT NULL,
  callback_job_id bigint,
  outcome text CHECK (outcome IN ('completed', 'dead')),
  created_at timestamptz NOT NULL DEFAULT now(),
  settled_at timestamptz
);
ALTER TABLE :schema.jobs ADD COLUMN IF NOT EXISTS batch_id bigint;

CREATE OR REPLACE FUNCTION :schema.job_batch_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  dc int := 0;
  dd int := 0;
  dx int := 0;
  b record;
  cb bigint;
  v_outcome text;
BEGIN
  IF TG_OP = 'DELETE' THEN
    -- A running job deleted is a completion (keepCompleted: false); finished rows deleted
    -- by retention were counted when they finished.
    IF OLD.state = 'running' THEN dc := 1; ELSE RETURN NULL; END IF;
  ELSE
    dc := (NEW.state = 'completed')::int - (OLD.state = 'completed')::int;
    dd := (NEW.state = 'dead')::int - (OLD.state = 'dead')::int;
    dx := (NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int;
    IF dc = 0 AND dd = 0 AND dx = 0 THEN RETURN NULL; END IF;
  END IF;
  UPDATE :schema.job_batches SET completed = completed + dc, dead = dead + dd, cancelled = cancelled + dx
   WHERE id = OLD.batch_id RETURNING * INTO b;
  IF NOT FOUND OR b.callback_job_id IS NOT NULL THEN RETURN NULL; END IF;
  IF b.completed >= b.total THEN
    v_outcome := 'completed';
  ELSIF b.dead > 0 OR b.cancelled > 0 THEN
    v_outcome := 'dead';
  ELSE
    RETURN NULL;
  END IF;
  INSERT INTO :schema.jobs (queue, kind, payload, max_attempts)
  VALUES (b.callback_queue, b.callback_kind,
          jsonb_build_object('batchId', b.id::text, 'outcome', v_outcome, 'total', b.total, 'completed', b.completed,
                             'dead', b.dead, 'cancelled', b.cancelled, 'payload', b.callback_payload),
          b.callback_max_attempts)
  RETURNING id INTO cb;
  UPDATE :schema.job_batches SET callback_job_id = cb, outcome = v_outcome, settled_at = now() WHERE id = b.id;
  IF :schema.notify_queue_ok() THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs.wake', b.callback_queue);
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS job_batch_update ON :schema.jobs;
CREATE TRIGGER job_batch_update AFTER UPDATE OF state ON :schema.jobs
  FOR EACH ROW WHEN (OLD.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION :schema.job_batch_track();
DROP TRIGGER IF EXISTS job_batch_delete ON :schema.jobs;
CREATE TRIGGER job_batch_delete AFTER DELETE ON :schema.jobs
  FOR EACH ROW WHEN (OLD.batch_id IS NOT NULL) EXECUTE FUNCTION :schema.job_batch_track();
