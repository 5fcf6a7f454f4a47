-- 026 outbox claim: a relay's claim is one statement, not a transaction of seven.
--
-- The claim ran as BEGIN, the keyless claim, one or two key-head scans with their
-- locks, the runs, the hold and COMMIT: seven to nine round trips for about 0.5 ms of
-- server work. In a 2,000 events/s soak a claim took 2.3 ms (p50) of which 1.8 ms were
-- the round trips, and an event that arrived during a claim waited for the rest of it
-- plus the next one. outbox_claim runs the same statements, in the same order and with
-- the same locks, inside one call: each statement of a VOLATILE plpgsql function still
-- takes its own snapshot (READ COMMITTED), so what the statements see of other relays'
-- holds and commits is unchanged; the row locks and the hold commit with the call.
-- The abandoned-event path (rare) stays in the relay, before the call.
--
-- outbox_hold is the hold statement the relay sent last in its claim transaction, now
-- outbox_claim's last step: it inserts ONE row for the batch (`outbox_holds`: a random
-- token, the hold's end p_lease_ms from now in database time, the keys of the runs and
-- every seq) instead of writing each event. Until the row is deleted every claim skips
-- the keys and seqs it names, and it counts one attempt for each of its events (when the
-- hold ends with no outcome recorded, the abandoned-event look moves that attempt onto
-- the events). The claim's earlier statements read the holds with their own snapshots; a
-- hold another relay committed after them (it held the rows' locks until its commit, and
-- SKIP LOCKED let this claim lock them right after) is visible only to this later
-- statement, so a run (p_runs: each event's run) with a key or seq named by any hold is
-- dropped whole: a key is never in two batches. Returns the seqs held (NULL: none) and
-- `suspects` (a hold ended or a leased event due again: the next claim looks for
-- abandoned events first). Its commit does not wait for the WAL flush (set_config of
-- synchronous_commit for the transaction, as the relay's lease statements do).
CREATE OR REPLACE FUNCTION :schema.outbox_hold(p_token uuid, p_lease_ms float8, p_seqs bigint[], p_keys text[], p_runs int[])
RETURNS TABLE (seqs text[], suspects boolean)
LANGUAGE sql VOLATILE
AS $$
  WITH c AS MATERIALIZED (
    SELECT * FROM unnest(p_seqs, p_keys, p_runs) AS c(seq, key, run)
  ), held AS MATERIALIZED (
    SELECT h.keys, h.seqs FROM :schema.outbox_holds AS h
  ), ok AS MATERIALIZED (
    SELECT c.seq, c.key FROM c
     WHERE c.run NOT IN (
       SELECT c2.run FROM c AS c2
        WHERE c2.key IN (SELECT unnest(held.keys) FROM held) OR c2.seq IN (SELECT unnest(held.seqs) FROM held))
  ), ins AS (
    INSERT INTO :schema.outbox_holds (token, held_until, keys, seqs)
    SELECT p_token, now() + p_lease_ms * interval '1 millisecond',
           ARRAY(SELECT DISTINCT ok.key FROM ok WHERE ok.key IS NOT NULL), ARRAY(SELECT ok.seq FROM ok)
     WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL AND EXISTS (SELECT 1 FROM ok)
    RETURNING outbox_holds.seqs
  )
  SELECT (SELECT ins.seqs::text[] FROM ins),
         EXISTS (SELECT 1 FROM :schema.outbox_holds AS x WHERE x.held_until <= now())
           OR EXISTS (SELECT 1 FROM :schema.outbox_events AS a
                       WHERE a.lease IS NOT NULL AND a.published_at IS NULL AND a.dead_at IS NULL AND a.next_attempt_at <= now())
$$;

-- One claim: up to p_batch events as runs (see src/outbox/README.md, "The claim").
--   1. keyless due events in seq order, up to half the batch (all of it when no keyed
--      event is due);
--   2. key heads by a loose index scan from p_cursor, in windows of (room + 16) keys,
--      at most 8 windows, wrapping around once; each window's heads locked
--      FOR UPDATE SKIP LOCKED, in key order, skipping keys a hold names;
--   3. each locked head extended by its key's next pending events while the batch has
--      room, every run cut at its first gap (an event locked elsewhere or not due);
--   4. the hold (outbox_hold).
-- Returns the held events with their run (0-based: key runs in head order, then one
-- run per keyless event), each row carrying the cursor for the next claim and
-- `suspects`; when nothing is held, one row whose event columns are NULL.
CREATE OR REPLACE FUNCTION :schema.outbox_claim(p_token uuid, p_lease_ms float8, p_batch int, p_cursor text)
RETURNS TABLE (seq text, id text, type text, key text, payload jsonb, headers jsonb, attempts int, created_at timestamptz,
               run int, next_cursor text, suspects boolean)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  v_half int := (p_batch + 1) / 2;
  v_keyless bigint[];
  v_more bigint[];
  v_hseq bigint[] := '{}';
  v_hkey text[] := '{}';
  v_fseq bigint[];
  v_fkey text[];
  v_k0 text;
  v_s0 bigint;
  v_cand bigint[];
  v_lseq bigint[];
  v_lkey text[];
  v_limit int;
  v_need int;
  v_window int;
  v_found int;
  v_cursor text := p_cursor;
  v_wrapped boolean := p_cursor IS NULL;
  v_windows int := 0;
  v_nheads int;
  v_nkeyless int;
  v_budget int;
  v_rord bigint[];
  v_rseq bigint[];
  v_bseq bigint[];
  v_bkey text[];
  v_brun int[];
  v_held text[];
  v_suspects boolean;
BEGIN
  -- 1. Keyless events (their own partial index, migration 007).
  SELECT coalesce(array_agg(x.s ORDER BY x.s), '{}') INTO v_keyless FROM (
    SELECT e.seq AS s FROM :schema.outbox_events AS e
     WHERE e.published_at IS NULL AND e.dead_at IS NULL AND e.key IS NULL AND e.next_attempt_at <= now() AND e.lease IS NULL
       AND e.seq NOT IN (SELECT unnest(h.seqs) FROM :schema.outbox_holds AS h)
     ORDER BY e.seq
     LIMIT v_half
     FOR UPDATE OF e SKIP LOCKED) AS x;
  v_nkeyless := cardinality(v_keyless);

  -- 2. Key heads, round robin from the cursor.
  v_limit := p_batch - v_nkeyless;
  WHILE cardinality(v_hseq) < v_limit AND v_windows < 8 LOOP
    v_windows := v_windows + 1;
    v_need := v_limit - cardinality(v_hseq);
    v_window := v_need + 16;
    -- The first head after the cursor: two statements, not (cursor IS NULL OR key > cursor),
    -- since a cached generic plan could not use that condition as an index bound.
    IF v_cursor IS NULL THEN
      SELECT p.key, p.seq INTO v_k0, v_s0 FROM :schema.outbox_events AS p
       WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL
       ORDER BY p.key, p.seq LIMIT 1;
    ELSE
      SELECT p.key, p.seq INTO v_k0, v_s0 FROM :schema.outbox_events AS p
       WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL AND p.key > v_cursor
       ORDER BY p.key, p.seq LIMIT 1;
    END IF;
    v_fkey := '{}';
    v_fseq := '{}';
    IF v_k0 IS NOT NULL THEN
      -- Then one probe per key, each jumping past the key before.
      WITH RECURSIVE h AS (
        SELECT v_k0 AS k, v_s0 AS s, 1 AS d
        UNION ALL
        SELECT n.key, n.seq, h.d + 1 FROM h CROSS JOIN LATERAL (
          SELECT p.key, p.seq FROM :schema.outbox_events AS p
           WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL AND p.key > h.k
           ORDER BY p.key, p.seq LIMIT 1) AS n)
      SELECT array_agg(w.k ORDER BY w.d), array_agg(w.s ORDER BY w.d)
        INTO v_fkey, v_fseq FROM (SELECT * FROM h LIMIT v_window) AS w;
    END IF;
    v_found := cardinality(v_fseq);
    -- Heads this claim holds already (found again after the wrap-around) are not locked again.
    SELECT coalesce(array_agg(f.s ORDER BY f.o), '{}') INTO v_cand
      FROM unnest(v_fseq) WITH ORDINALITY AS f(s, o) WHERE f.s <> ALL (v_hseq);
    v_lseq := '{}';
    v_lkey := '{}';
    IF cardinality(v_cand) > 0 THEN
      -- = ANY: an index scan on the primary key; sorted back into key order under
      -- LockRows, so the LIMIT stops locking.
      SELECT coalesce(array_agg(x.s ORDER BY x.o), '{}'), coalesce(array_agg(x.k ORDER BY x.o), '{}') INTO v_lseq, v_lkey FROM (
        SELECT e.seq AS s, e.key AS k, array_position(v_cand, e.seq) AS o
          FROM :schema.outbox_events AS e
         WHERE e.seq = ANY (v_cand)
           AND e.published_at IS NULL AND e.dead_at IS NULL AND e.next_attempt_at <= now() AND e.lease IS NULL
           AND e.key NOT IN (SELECT unnest(h.keys) FROM :schema.outbox_holds AS h)
         ORDER BY array_position(v_cand, e.seq)
         LIMIT v_need
         FOR UPDATE OF e SKIP LOCKED) AS x;
    END IF;
    v_hseq := v_hseq || v_lseq;
    v_hkey := v_hkey || v_lkey;
    IF cardinality(v_hseq) = v_limit THEN
      -- Stopped at the last key there is: the next claim starts from the first key.
      v_cursor := CASE WHEN v_found < v_window AND v_lkey[cardinality(v_lkey)] = v_fkey[v_found] THEN NULL
                       ELSE v_lkey[cardinality(v_lkey)] END;
      EXIT;
    END IF;
    IF v_found = v_window THEN
      v_cursor := v_fkey[v_found];
      CONTINUE;
    END IF;
    v_cursor := NULL; -- past the last key: start over from the first
    EXIT WHEN v_wrapped;
    v_wrapped := true;
  END LOOP;
  v_nheads := cardinality(v_hseq);

  -- More keyless events when they filled their half and the keys left room.
  IF v_nkeyless = v_half AND v_nheads + v_nkeyless < p_batch THEN
    SELECT coalesce(array_agg(x.s ORDER BY x.s), '{}') INTO v_more FROM (
      SELECT e.seq AS s FROM :schema.outbox_events AS e
       WHERE e.published_at IS NULL AND e.dead_at IS NULL AND e.key IS NULL AND e.next_attempt_at <= now() AND e.lease IS NULL
         AND e.seq > v_keyless[v_nkeyless]
         AND e.seq NOT IN (SELECT unnest(h.seqs) FROM :schema.outbox_holds AS h)
       ORDER BY e.seq
       LIMIT p_batch - v_nheads - v_nkeyless
       FOR UPDATE OF e SKIP LOCKED) AS x;
    v_keyless := v_keyless || v_more;
    v_nkeyless := cardinality(v_keyless);
  END IF;

  -- 3. Runs: each head's key's next pending events (O(run) per key over the (key, seq)
  -- index), numbered across heads to cut at the budget, locked SKIP LOCKED; a run ends
  -- at its first candidate that came back unlocked or no longer due.
  v_budget := p_batch - v_nheads - v_nkeyless;
  v_rord := '{}';
  v_rseq := '{}';
  IF v_budget > 0 AND v_nheads > 0 THEN
    WITH cand AS MATERIALIZED (
      SELECT c.ord, c.seq, c.n
        FROM (SELECT h.ord, r.seq, row_number() OVER (ORDER BY h.ord, r.seq) AS n
                FROM unnest(v_hkey, v_hseq) WITH ORDINALITY AS h(key, seq, ord)
                CROSS JOIN LATERAL (
                  SELECT p.seq FROM :schema.outbox_events AS p
                   WHERE p.key = h.key AND p.seq > h.seq AND p.published_at IS NULL AND p.dead_at IS NULL
                   ORDER BY p.seq
                   LIMIT v_budget) AS r) AS c
       WHERE c.n <= v_budget),
    locked AS MATERIALIZED (
      SELECT e.seq FROM :schema.outbox_events AS e
       WHERE e.seq IN (SELECT cand.seq FROM cand)
         AND e.published_at IS NULL AND e.dead_at IS NULL AND e.next_attempt_at <= now() AND e.lease IS NULL
         FOR UPDATE OF e SKIP LOCKED),
    marked AS (
      SELECT cand.ord, cand.seq, cand.n,
             bool_and(locked.seq IS NOT NULL) OVER (PARTITION BY cand.ord ORDER BY cand.n) AS unbroken
        FROM cand LEFT JOIN locked ON locked.seq = cand.seq)
    SELECT coalesce(array_agg(m.ord ORDER BY m.n), '{}'), coalesce(array_agg(m.seq ORDER BY m.n), '{}')
      INTO v_rord, v_rseq FROM marked AS m WHERE m.unbroken;
  END IF;

  -- 4. The batch: key runs in head order (head, then its run), then the keyless events.
  SELECT coalesce(array_agg(b.s ORDER BY b.r, b.s), '{}'), coalesce(array_agg(b.k ORDER BY b.r, b.s), '{}'),
         coalesce(array_agg(b.r ORDER BY b.r, b.s), '{}')
    INTO v_bseq, v_bkey, v_brun FROM (
      SELECT h.s, h.k, (h.o - 1)::int AS r FROM unnest(v_hseq, v_hkey) WITH ORDINALITY AS h(s, k, o)
      UNION ALL
      SELECT t.s, v_hkey[t.o::int], (t.o - 1)::int FROM unnest(v_rord, v_rseq) AS t(o, s)
      UNION ALL
      SELECT k.s, NULL, (v_nheads + k.o - 1)::int FROM unnest(v_keyless) WITH ORDINALITY AS k(s, o)
    ) AS b;

  -- The hold (with an empty batch it holds nothing and still tells `suspects`).
  SELECT coalesce(oh.seqs, '{}'), oh.suspects INTO v_held, v_suspects
    FROM :schema.outbox_hold(p_token, p_lease_ms, v_bseq, v_bkey, v_brun) AS oh;

  IF cardinality(v_held) = 0 THEN
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb, NULL::int,
                        NULL::timestamptz, NULL::int, v_cursor, v_suspects;
    RETURN;
  END IF;
  RETURN QUERY
    SELECT e.seq::text, e.id::text, e.type, e.key, e.payload, e.headers, e.attempts, e.created_at, b.r, v_cursor, v_suspects
      FROM :schema.outbox_events AS e
      JOIN unnest(v_bseq, v_brun) AS b(s, r) ON b.s = e.seq
     WHERE e.seq = ANY (v_held::bigint[])
     ORDER BY b.r, e.seq;
END
$$;
