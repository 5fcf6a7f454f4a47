-- 020 job admission with a claim cursor, in a fixed number of statements per claim.
--
-- job_admit (014, 017) cost a limited claim up to 60% of the throughput of an unlimited one
-- even when the limit never bound. Where it went (pg_stat_statements, track = all): the
-- candidate scan had no claim cursor (it walked the dead index entries of every job claimed
-- before, from the head of the queue) and, with a partition key, locked ten times the jobs
-- wanted; a pre-lock count of every unit's running jobs (the hint); then one count statement
-- per unit locked. This version, an overload with a claim cursor (the 017 function stays for
-- workers of the previous version: same unit names, same locks, same buckets, so both may run
-- side by side during an upgrade):
-- - candidates: the first p_scan due jobs after the cursor (p_after_*, null: from the head),
--   locked FOR UPDATE SKIP LOCKED; the worker asks for p_scan = p_want while its limited
--   claims come back full (the limit has room), a wider window when they come back short;
-- - units in passes: a pass try-locks, for every key still short of slots, the first of its
--   stripes not yet tried whose lock it gets (one statement), then one statement, in a
--   snapshot taken after those locks, counts the running jobs of each unit locked (up to its
--   share), reads its token bucket, and cuts what it takes to what is wanted; a limit with
--   room is served in one pass: two statements, whatever the number of keys;
-- - token buckets are written once per claim, for every unit read, in one statement;
-- - no pre-lock hint (a second count): a unit found full after its lock is left alone.
-- The guarantees do not change: a unit's running jobs are counted after its lock, in a new
-- snapshot; the lock is held until the caller's claim commits; shares add up to the limit; a
-- claimer waits for a lock only while it holds none. Returns `prefix` too: whether the
-- admitted jobs are the first candidates in claim order (nothing before them refused), so
-- the worker may start its next claim after the last of them; and `unit` when every admitted
-- job goes under one unit (then `keys`, id -> unit, is empty).
CREATE OR REPLACE FUNCTION :schema.job_admit(p_queue text, p_kind text, p_stage text, p_want int, p_scan int,
                                             p_after_priority smallint, p_after_run_us bigint, p_after_id bigint)
RETURNS TABLE (mode text, ids bigint[], keys jsonb, wait_ms float8, prefix boolean, unit text)
LANGUAGE plpgsql VOLATILE
-- The count of a unit's running jobs by a plain index scan, never a bitmap scan: a plain
-- scan marks the index entries of finished claims dead (kill bits) and skips them from then
-- on; a bitmap scan visits their heap rows at every claim (the planner's choice: ~50 rows).
SET enable_bitmapscan = off
AS $$
DECLARE
  c record;
  is_paused boolean;
  cls int := hashtext(':schema.queue_controls');
  n_stripes int;
  share float8;
  one_key text;
  after_at timestamptz;
  cand_ids bigint[];
  cand_keys text[];
  -- Keys of the candidates in order of their first candidate, how many candidates each still
  -- needs a slot for, and the stripe each key starts from (random, per claim).
  key_list text[];
  need int[];
  off int[];
  tried int[];
  -- The units locked by one pass: name, key index, share; and the first one skipped.
  lk_u text[];
  lk_i int[];
  lk_cap int[];
  sk_u text;
  sk_i int;
  sk_cap int;
  first_u text := NULL;
  first_i int;
  first_cap int;
  -- Everything admitted: key, unit, jobs; rate buckets to write: unit, tokens left.
  q_k text[] := '{}';
  q_u text[] := '{}';
  q_n int[] := '{}';
  b_u text[] := '{}';
  b_t float8[] := '{}';
  admitted int := 0;
  held int := 0;
  passes int := 0;
  waiting boolean := false;
  wait float8 := NULL;
  out_ids bigint[] := '{}';
  out_keys jsonb := '{}'::jsonb;
  out_prefix boolean := true;
  out_unit text := NULL;
BEGIN
  -- The kind's own limit wins over the queue's; a pause anywhere above wins over both.
  SELECT EXISTS (SELECT 1 FROM :schema.queue_controls q
                  WHERE q.queue IN ('', p_queue) AND q.kind IN ('', p_kind) AND q.paused_at IS NOT NULL)
    INTO is_paused;
  IF is_paused THEN
    RETURN QUERY SELECT 'paused'::text, NULL::bigint[], NULL::jsonb, NULL::float8, false, NULL::text;
    RETURN;
  END IF;
  SELECT q.* INTO c FROM :schema.queue_controls q
   WHERE q.queue = p_queue AND q.kind IN ('', p_kind) AND (q.concurrency IS NOT NULL OR q.rate_count IS NOT NULL)
   ORDER BY q.kind DESC LIMIT 1;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'free'::text, NULL::bigint[], NULL::jsonb, NULL::float8, false, NULL::text;
    RETURN;
  END IF;
  IF p_want <= 0 THEN
    RETURN QUERY SELECT 'limited'::text, out_ids, out_keys, NULL::float8, false, NULL::text;
    RETURN;
  END IF;
  one_key := jsonb_build_array(c.queue, c.kind, NULL)::text;
  -- No cursor: a position before every job (the lowest priority value, -infinity), so one
  -- statement (one plan) serves both; the row comparison is the claim index's range start.
  after_at := CASE WHEN p_after_id IS NULL THEN '-infinity'::timestamptz
                   ELSE timestamptz 'epoch' + p_after_run_us * interval '1 microsecond' END;
  SELECT array_agg(t.id ORDER BY t.o), array_agg(t.k ORDER BY t.o) INTO cand_ids, cand_keys
    FROM (SELECT j.id, row_number() OVER () AS o,
                 CASE WHEN c.partition_by IS NULL THEN one_key
                      ELSE jsonb_build_array(c.queue, c.kind, j.payload #>> c.partition_by)::text END AS k
            FROM (SELECT id, payload FROM :schema.jobs
                   WHERE state = 'available' AND queue = p_queue AND kind = p_kind AND stage = p_stage AND run_at <= now()
                     AND (priority, run_at, id) > (coalesce(p_after_priority, (-32768)::smallint), after_at, coalesce(p_after_id, -1::bigint))
                   ORDER BY priority, run_at, id
                   -- Without partitions every candidate has the one key: no need to look further.
                   LIMIT CASE WHEN c.partition_by IS NULL THEN p_want ELSE greatest(p_want, p_scan) END
                   FOR UPDATE SKIP LOCKED) j) t;
  IF cand_ids IS NULL THEN
    RETURN QUERY SELECT 'limited'::text, out_ids, out_keys, NULL::float8, false, NULL::text;
    RETURN;
  END IF;
  n_stripes := least(c.stripes, coalesce(c.concurrency, c.stripes), coalesce(c.rate_count, c.stripes));
  share := c.rate_count::float8 / n_stripes;
  SELECT array_agg(x.k ORDER BY x.o), array_agg(x.n ORDER BY x.o), array_agg(floor(random() * n_stripes)::int), array_agg(0)
    INTO key_list, need, off, tried
    FROM (SELECT y.k, min(y.o) AS o, count(*)::int AS n FROM unnest(cand_keys) WITH ORDINALITY AS y(k, o) GROUP BY y.k) x;
  LOOP
    -- Done when enough is admitted, or no key short of slots has a stripe left to try.
    IF NOT waiting AND (passes >= n_stripes OR admitted >= p_want
        OR (passes > 0 AND NOT EXISTS (SELECT 1 FROM unnest(need, tried) AS y(n, tr) WHERE y.n > 0 AND y.tr < n_stripes))) THEN
      EXIT WHEN admitted > 0 OR held > 0 OR first_u IS NULL;
      waiting := true;
    END IF;
    IF waiting THEN
      -- Every unit worth locking was skipped and none is held: wait for the first skipped
      -- (holding nothing, the waiter closes no cycle).
      PERFORM pg_advisory_xact_lock(cls, hashtext(first_u));
      lk_u := ARRAY[first_u];
      lk_i := ARRAY[first_i];
      lk_cap := ARRAY[first_cap];
    ELSE
      -- A pass: for every key still short, the first of its stripes not yet tried (from its
      -- random start) whose lock it gets, skipping those another claimer holds. One
      -- statement; the CASE orders the evaluation, LIMIT 1 stops at the first lock got.
      SELECT array_agg(z.u ORDER BY z.i) FILTER (WHERE z.s IS NOT NULL), array_agg(z.i ORDER BY z.i) FILTER (WHERE z.s IS NOT NULL),
             array_agg(z.cap ORDER BY z.i) FILTER (WHERE z.s IS NOT NULL),
             (array_agg(z.sk ORDER BY z.i) FILTER (WHERE z.sk IS NOT NULL))[1], (array_agg(z.i ORDER BY z.i) FILTER (WHERE z.sk IS NOT NULL))[1],
             (array_agg(z.skcap ORDER BY z.i) FILTER (WHERE z.sk IS NOT NULL))[1],
             array_agg(CASE WHEN z.n > 0 THEN coalesce(z.s + 1, n_stripes) ELSE z.tr END ORDER BY z.i)
        INTO lk_u, lk_i, lk_cap, sk_u, sk_i, sk_cap, tried
        FROM (SELECT y.i, y.n, y.tr, g.s,
                     y.k || '#' || ((y.o + g.s) % n_stripes) AS u,
                     c.concurrency / n_stripes + (((y.o + g.s) % n_stripes) < c.concurrency % n_stripes)::int AS cap,
                     CASE WHEN y.n > 0 AND y.tr < n_stripes AND g.s IS DISTINCT FROM y.tr THEN y.k || '#' || ((y.o + y.tr) % n_stripes) END AS sk,
                     c.concurrency / n_stripes + (((y.o + y.tr) % n_stripes) < c.concurrency % n_stripes)::int AS skcap
                FROM unnest(key_list, need, off, tried) WITH ORDINALITY AS y(k, n, o, tr, i)
                LEFT JOIN LATERAL (
                  SELECT x.s FROM generate_series(y.tr, n_stripes - 1) AS x(s)
                   WHERE CASE WHEN y.n > 0 THEN pg_try_advisory_xact_lock(cls, hashtext(y.k || '#' || ((y.o + x.s) % n_stripes))) ELSE false END
                   LIMIT 1) g ON true) z;
      IF first_u IS NULL AND sk_u IS NOT NULL THEN
        first_u := sk_u;
        first_i := sk_i;
        first_cap := sk_cap;
      END IF;
      passes := passes + 1;
      CONTINUE WHEN lk_u IS NULL;
    END IF;
    held := held + array_length(lk_u, 1);
    -- A new statement, so a new snapshot: it sees every claim committed before the locks.
    -- Per unit: cc = what its key still needs, cut to its share minus its running jobs
    -- (counted up to the share: past it nothing is admitted anyway); room = cc cut to its
    -- whole tokens; take = room, in key order no more than is still wanted. tok: the
    -- unit's tokens now (null without a rate limit).
    WITH v AS (
      SELECT l.o, l.i, l.u, b.tok, cc, least(cc, CASE WHEN b.tok IS NULL THEN cc ELSE floor(b.tok)::int END) AS room
        FROM unnest(lk_u, lk_i, lk_cap) WITH ORDINALITY AS l(u, i, cap, o)
        CROSS JOIN LATERAL (
          SELECT greatest(0, least(need[l.i], CASE WHEN c.concurrency IS NULL THEN need[l.i] ELSE l.cap - (
                   SELECT count(*)::int FROM (SELECT 1 FROM :schema.jobs j
                    WHERE j.limit_key = l.u AND j.lease_expires_at IS NOT NULL AND j.state = 'running'
                      AND j.lease_expires_at > clock_timestamp() LIMIT l.cap) n) END)) AS cc) x
        LEFT JOIN LATERAL (
          SELECT CASE WHEN rb.key IS NULL THEN share
                      ELSE least(share, rb.tokens + greatest(0, extract(epoch FROM clock_timestamp() - rb.at) * 1000) * share / c.rate_period_ms) END AS tok
            FROM (SELECT 1) one LEFT JOIN :schema.queue_rate_buckets rb ON rb.key = l.u
           WHERE c.rate_count IS NOT NULL AND x.cc > 0) b ON true
    ), t AS (
      SELECT v.*, greatest(0, least(v.room, p_want - admitted
               - coalesce(sum(v.room) OVER (ORDER BY v.o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))::int AS take,
             greatest(0, least(v.cc, p_want - admitted
               - coalesce(sum(v.cc) OVER (ORDER BY v.o ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))::int AS wanted
        FROM v
    )
    SELECT q_k || coalesce((SELECT array_agg(key_list[t.i] ORDER BY t.o) FROM t WHERE t.take > 0), '{}'),
           q_u || coalesce((SELECT array_agg(t.u ORDER BY t.o) FROM t WHERE t.take > 0), '{}'),
           q_n || coalesce((SELECT array_agg(t.take ORDER BY t.o) FROM t WHERE t.take > 0), '{}'),
           b_u || coalesce((SELECT array_agg(t.u ORDER BY t.o) FROM t WHERE t.tok IS NOT NULL), '{}'),
           b_t || coalesce((SELECT array_agg(t.tok - t.take ORDER BY t.o) FROM t WHERE t.tok IS NOT NULL), '{}'),
           (SELECT array_agg(y.n - coalesce(t.take, 0) ORDER BY y.i) FROM unnest(need) WITH ORDINALITY AS y(n, i) LEFT JOIN t ON t.i = y.i),
           admitted + (SELECT coalesce(sum(t.take), 0)::int FROM t),
           -- A rate limit held back jobs that were wanted: when the unit's next token comes.
           least(wait, (SELECT min((1 - (t.tok - floor(t.tok))) * c.rate_period_ms / share) FROM t WHERE t.tok IS NOT NULL AND floor(t.tok) < t.wanted))
      INTO q_k, q_u, q_n, b_u, b_t, need, admitted, wait;
    EXIT WHEN waiting;
  END LOOP;
  IF array_length(b_u, 1) > 0 THEN
    -- Every bucket read, written once (each under its unit's lock, held until commit).
    INSERT INTO :schema.queue_rate_buckets AS rb (key, tokens, at)
    SELECT x.u, x.t, clock_timestamp() FROM unnest(b_u, b_t) AS x(u, t)
        ON CONFLICT (key) DO UPDATE SET tokens = EXCLUDED.tokens, at = EXCLUDED.at;
  END IF;
  IF admitted > 0 AND admitted = cardinality(cand_ids) AND cardinality(q_u) = 1 THEN
    -- Every candidate admitted under one unit (a limit with room and no partition key).
    out_ids := cand_ids;
    out_unit := q_u[1];
  ELSIF admitted > 0 AND admitted = cardinality(cand_ids) AND cardinality(q_k) = cardinality(key_list) THEN
    -- Every candidate admitted, each key under one unit (a partitioned limit with room).
    out_ids := cand_ids;
    SELECT jsonb_object_agg(y.id::text, m.u) INTO out_keys
      FROM unnest(cand_ids, cand_keys) AS y(id, k) JOIN unnest(q_k, q_u) AS m(k, u) ON m.k = y.k;
  ELSIF admitted > 0 THEN
    -- Each admitted candidate, in claim order, under one of its key's units: the r-th
    -- candidate of a key goes to the unit whose range of that key's admissions holds r.
    SELECT coalesce(array_agg(c2.id ORDER BY c2.o), '{}'), coalesce(jsonb_object_agg(c2.id::text, q.u), '{}'::jsonb),
           coalesce(max(c2.o) = count(*), true)
      INTO out_ids, out_keys, out_prefix
      FROM (SELECT y.id, y.k, y.o, row_number() OVER (PARTITION BY y.k ORDER BY y.o) AS r
              FROM unnest(cand_ids, cand_keys) WITH ORDINALITY AS y(id, k, o)) c2
      JOIN (SELECT e.k, e.u, e.n, sum(e.n) OVER (PARTITION BY e.k ORDER BY e.s) AS hi
              FROM unnest(q_k, q_u, q_n) WITH ORDINALITY AS e(k, u, n, s)) q
        ON q.k = c2.k AND c2.r > q.hi - q.n AND c2.r <= q.hi;
  ELSE
    out_prefix := false;
  END IF;
  RETURN QUERY SELECT CASE WHEN admitted = 0 AND first_u IS NOT NULL THEN 'busy' ELSE 'limited' END, out_ids, out_keys, wait, out_prefix, out_unit;
END
$$;
