-- 017 job admission, cheaper per admitted job: job_admit (014) assigned the admitted
-- candidates to their limit units in a plpgsql loop that appended to an array and a jsonb
-- object per job (each append copies the whole value: quadratic in the jobs wanted, which
-- auto prefetch makes large); it now does so in one set-based statement. The running count
-- of a unit stops at the unit's share. Same decisions, same locks, same order.
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
      -- Counted up to the unit's share only: past it, nothing is admitted anyway.
      SELECT count(*)::int INTO running FROM (SELECT 1 FROM :schema.jobs j
       WHERE j.limit_key = k AND j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.lease_expires_at > clock_timestamp()
       LIMIT unit_cap[u]) r;
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
    -- Each admitted candidate, in claim order, under one of its key's admitted units: the
    -- r-th candidate of a key takes the r-th unit of its quota. One set-based statement
    -- (a loop that appends to arrays and jsonb copies them per row: quadratic in p_want).
    SELECT coalesce(array_agg(t.id ORDER BY t.o), '{}'), coalesce(jsonb_object_agg(t.id::text, quota -> t.k ->> (t.r - 1)::int), '{}'::jsonb)
      INTO out_ids, out_keys
      FROM (SELECT y.id, y.o, y.k, row_number() OVER (PARTITION BY y.k ORDER BY y.o) AS r
              FROM unnest(cand_ids, cand_keys) WITH ORDINALITY AS y(id, k, o)) t
     WHERE t.r <= coalesce(jsonb_array_length(quota -> t.k), 0);
  END IF;
  RETURN QUERY SELECT CASE WHEN admitted = 0 AND first_skipped IS NOT NULL THEN 'busy' ELSE 'limited' END, out_ids, out_keys, wait;
END
$$;
