-- 033 job admission by room: a queue-wide limit admits a number of jobs, not a list.
--
-- Under 022's job_admit a claim first locks its candidates in a statement of their own
-- (FOR UPDATE SKIP LOCKED, grouped by partition value), then the stripes, then counts,
-- and the claim finds the admitted ids again by primary key. For a limit without a
-- partition key every candidate has the one key, so the list is not needed to decide:
-- the stripe's room (its share minus its running jobs, cut to its whole tokens) is a
-- number, and the claim statement can pick that many due jobs itself, the way the
-- ordinary claim does (one locked scan of the claim index, the row versions by ctid).
-- Measured (bench/RESULTS.md, session 21): the candidate statement was the largest part
-- of what a queue-wide limit added to a claim.
--
-- job_admit_room(queue, kind, want) reads the pause and the limit that apply (the same
-- statement as 022), and for a limit without a partition key locks ONE stripe (the first
-- from a random start whose transaction advisory lock it gets, the same names and lock
-- keys as 022; when another claimer holds every stripe it waits for the first one,
-- holding none), then, in a new statement (a snapshot after the lock), counts that
-- stripe's running jobs with a live lease and reads its token bucket. It answers:
-- - mode: 'paused', 'free' (no pause or limit applies), 'keyed' (a limit with a
--   partition key applies: the caller asks job_admit instead), or 'limited';
-- - unit: the stripe locked (the claimed jobs' limit_key);
-- - room: how many jobs the caller may claim under it now (0 to want);
-- - tokens: the stripe's tokens before this claim (null without a rate limit): the
--   caller writes the bucket back with what it really claimed subtracted (the bucket is
--   the stripe's, under its lock until commit), so a claim that finds fewer due jobs than
--   its room spends no tokens for the ones it did not find;
-- - wait_ms: when tokens held back jobs the limit would otherwise admit, when the
--   stripe's next token comes.
-- One stripe only: the caller uses this while its claims come back full (a limit with
-- room) and job_admit (which looks through several stripes per claim) after a short one.
-- Both functions lock the same stripes and count the same rows: workers may use either,
-- side by side. Locks are held until the caller's claim commits.
CREATE OR REPLACE FUNCTION :schema.job_admit_room(p_queue text, p_kind text, p_want int)
RETURNS TABLE (mode text, unit text, room int, tokens float8, wait_ms float8)
LANGUAGE plpgsql VOLATILE
-- As 022: the running count by a plain index scan (kill bits), plans generic.
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  c record;
  cls int := hashtext(':schema.queue_controls');
  n int;
  s int;
  u text;
  k text;
  got boolean := false;
  first_u text := NULL;
  first_s int;
  cc int;
  tok float8;
  share float8;
  r int;
  w float8 := NULL;
BEGIN
  SELECT p.paused, q.queue, q.kind, q.concurrency, q.partition_by, q.rate_count, q.rate_period_ms, q.stripes INTO c
    FROM (SELECT EXISTS (SELECT 1 FROM :schema.queue_controls q
                          WHERE q.queue IN ('', p_queue) AND q.kind IN ('', p_kind) AND q.paused_at IS NOT NULL) AS paused) p
    LEFT JOIN LATERAL (
      SELECT * FROM :schema.queue_controls q
       WHERE q.queue = p_queue AND q.kind IN ('', p_kind) AND (q.concurrency IS NOT NULL OR q.rate_count IS NOT NULL)
       ORDER BY q.kind DESC LIMIT 1) q ON true;
  IF c.paused THEN
    RETURN QUERY SELECT 'paused'::text, NULL::text, 0, NULL::float8, NULL::float8;
    RETURN;
  END IF;
  IF c.queue IS NULL THEN
    RETURN QUERY SELECT 'free'::text, NULL::text, 0, NULL::float8, NULL::float8;
    RETURN;
  END IF;
  IF c.partition_by IS NOT NULL THEN
    RETURN QUERY SELECT 'keyed'::text, NULL::text, 0, NULL::float8, NULL::float8;
    RETURN;
  END IF;
  IF p_want <= 0 THEN
    RETURN QUERY SELECT 'limited'::text, NULL::text, 0, NULL::float8, NULL::float8;
    RETURN;
  END IF;
  n := least(c.stripes, coalesce(c.concurrency, c.stripes), coalesce(c.rate_count, c.stripes));
  share := c.rate_count::float8 / n;
  k := jsonb_build_array(c.queue, c.kind, NULL)::text;
  s := floor(random() * n)::int;
  FOR i IN 1 .. n LOOP
    u := k || '#' || s;
    IF pg_try_advisory_xact_lock(cls, hashtext(u)) THEN
      got := true;
      EXIT;
    END IF;
    IF first_u IS NULL THEN
      first_u := u;
      first_s := s;
    END IF;
    s := (s + 1) % n;
  END LOOP;
  IF NOT got THEN
    -- Every stripe held by another claimer: wait for the first (holding no other, so no cycle).
    PERFORM pg_advisory_xact_lock(cls, hashtext(first_u));
    u := first_u;
    s := first_s;
  END IF;
  -- A new statement, so a new snapshot: it sees every claim committed before the lock.
  SELECT CASE WHEN c.concurrency IS NULL THEN p_want ELSE greatest(0, least(p_want, x.cap - (
           SELECT count(*)::int FROM (SELECT 1 FROM :schema.jobs j
            WHERE j.limit_key = u AND j.lease_expires_at IS NOT NULL AND j.state = 'running'
              AND j.lease_expires_at > clock_timestamp() LIMIT x.cap) m))) END,
         CASE WHEN c.rate_count IS NULL THEN NULL
              ELSE (SELECT CASE WHEN rb.key IS NULL THEN share
                                ELSE least(share, rb.tokens + greatest(0, extract(epoch FROM clock_timestamp() - rb.at) * 1000) * share / c.rate_period_ms) END
                      FROM (SELECT 1) one LEFT JOIN :schema.queue_rate_buckets rb ON rb.key = u) END
    INTO cc, tok
    FROM (SELECT c.concurrency / n + (s < c.concurrency % n)::int AS cap) x;
  r := CASE WHEN tok IS NULL THEN cc ELSE least(cc, floor(tok)::int) END;
  IF tok IS NOT NULL AND floor(tok) < cc THEN
    w := (1 - (tok - floor(tok))) * c.rate_period_ms / share;
  END IF;
  RETURN QUERY SELECT 'limited'::text, u, r, tok, w;
END
$$;
