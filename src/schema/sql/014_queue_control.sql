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
-- or 'limited' with the admitted job ids and their limit keys in claim order, and
-- wait_ms: when a rate limit refused a due job, how long until its next token.
--
-- Why a function, and the order inside: a limit key's running count must be read AFTER
-- its lock is held, in a snapshot taken after the lock (a single statement's snapshot
-- predates the locks it takes, and would miss a claim committed in between). In a
-- VOLATILE plpgsql function each statement takes a new snapshot. The locks are
-- transaction advisory locks (two-key form, class = hash of the schema's control table),
-- held until the caller's transaction, which also runs the claim, commits.
--
-- No claimer ever waits for a key: each is tried (pg_try_advisory_xact_lock) and skipped
-- when another claimer holds it (that one admits the key's jobs), so claimers of different
-- keys run in parallel and no deadlock can form. The candidates are the first p_scan due
-- jobs in claim order.
CREATE OR REPLACE FUNCTION :schema.job_admit(p_queue text, p_kind text, p_stage text, p_want int, p_scan int)
RETURNS TABLE (mode text, ids bigint[], keys text[], wait_ms float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  c record;
  cls int := hashtext(':schema.queue_controls');
  cand_ids bigint[];
  cand_keys text[];
  k text;
  skipped boolean := false;
  running int;
  free_slots int;
  n_cand int;
  b record;
  tokens float8;
  quota jsonb := '{}'::jsonb;
  admitted int := 0;
  take int;
  wait float8 := NULL;
  out_ids bigint[] := '{}';
  out_keys text[] := '{}';
BEGIN
  IF EXISTS (SELECT 1 FROM :schema.queue_controls q
              WHERE q.queue IN ('', p_queue) AND q.kind IN ('', p_kind) AND q.paused_at IS NOT NULL) THEN
    RETURN QUERY SELECT 'paused'::text, NULL::bigint[], NULL::text[], NULL::float8;
    RETURN;
  END IF;
  -- The kind's own limit wins over the queue's.
  SELECT q.* INTO c FROM :schema.queue_controls q
   WHERE q.queue = p_queue AND q.kind IN ('', p_kind) AND (q.concurrency IS NOT NULL OR q.rate_count IS NOT NULL)
   ORDER BY q.kind DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'free'::text, NULL::bigint[], NULL::text[], NULL::float8;
    RETURN;
  END IF;
  SELECT array_agg(t.id ORDER BY t.o), array_agg(t.k ORDER BY t.o) INTO cand_ids, cand_keys
    FROM (SELECT j.id, row_number() OVER () AS o,
                 jsonb_build_array(c.queue, c.kind, CASE WHEN c.partition_by IS NOT NULL THEN j.payload #>> c.partition_by END)::text AS k
            FROM (SELECT * FROM :schema.jobs
                   WHERE state = 'available' AND queue = p_queue AND kind = p_kind AND stage = p_stage AND run_at <= now()
                   ORDER BY priority, run_at, id LIMIT p_scan) j) t;
  IF cand_ids IS NULL THEN
    RETURN QUERY SELECT 'limited'::text, out_ids, out_keys, NULL::float8;
    RETURN;
  END IF;
  FOR k, n_cand IN SELECT u.k, count(*)::int FROM unnest(cand_keys) WITH ORDINALITY AS u(k, o) GROUP BY u.k ORDER BY min(u.o) LOOP
    EXIT WHEN admitted >= p_want;
    IF NOT pg_try_advisory_xact_lock(cls, hashtext(k)) THEN
      skipped := true;
      CONTINUE;
    END IF;
    take := least(n_cand, p_want - admitted);
    IF c.concurrency IS NOT NULL THEN
      -- A new statement, so a new snapshot: it sees every claim committed before the lock.
      SELECT count(*)::int INTO running FROM :schema.jobs j
       WHERE j.limit_key = k AND j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.lease_expires_at > clock_timestamp();
      take := least(take, greatest(0, c.concurrency - running));
    END IF;
    IF c.rate_count IS NOT NULL AND take > 0 THEN
      SELECT rb.tokens, rb.at INTO b FROM :schema.queue_rate_buckets rb WHERE rb.key = k;
      IF NOT FOUND THEN
        tokens := c.rate_count;
      ELSE
        tokens := least(c.rate_count::float8,
                        b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.at) * 1000) * c.rate_count / c.rate_period_ms);
      END IF;
      IF floor(tokens) < take THEN
        wait := least(coalesce(wait, 'Infinity'::float8), (1 - (tokens - floor(tokens))) * c.rate_period_ms / c.rate_count);
      END IF;
      take := least(take, floor(tokens)::int);
      INSERT INTO :schema.queue_rate_buckets AS rb (key, tokens, at) VALUES (k, tokens - take, clock_timestamp())
        ON CONFLICT (key) DO UPDATE SET tokens = EXCLUDED.tokens, at = EXCLUDED.at;
    END IF;
    IF take > 0 THEN
      quota := quota || jsonb_build_object(k, take);
      admitted := admitted + take;
    END IF;
  END LOOP;
  IF admitted > 0 THEN
    FOR i IN 1 .. array_length(cand_ids, 1) LOOP
      take := coalesce((quota ->> cand_keys[i])::int, 0);
      IF take > 0 THEN
        out_ids := out_ids || cand_ids[i];
        out_keys := out_keys || cand_keys[i];
        quota := quota || jsonb_build_object(cand_keys[i], take - 1);
      END IF;
    END LOOP;
  END IF;
  RETURN QUERY SELECT CASE WHEN admitted = 0 AND skipped THEN 'busy' ELSE 'limited' END, out_ids, out_keys, wait;
END
$$;
