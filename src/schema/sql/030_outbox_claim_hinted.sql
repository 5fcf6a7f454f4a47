-- 030 outbox claim with key floors: outbox_claim_hinted, for relays while a transaction
-- is held open somewhere in the cluster.
--
-- While any transaction stays open in the cluster, the pending index keeps an entry for
-- every event published since it began, and nothing can remove them or mark them dead.
-- The key scan's probe `key > previous ORDER BY key, seq LIMIT 1` of outbox_claim (026)
-- lands on the next key's oldest entry and walks all of that key's published events to
-- its first pending one, at every claim: at 1,000 events/s over 50 keys, add -> sink p50
-- went from 3 to 18 ms in 40 s (7.8 ms a claim, 4.5 of it the key scan), growing with
-- the transaction.
--
-- This function is outbox_claim with hints: keys with a floor each, a seq below which
-- the key has no pending event now or later. Adds of one key are serialised (the key's
-- bucket lock for outbox.add, the row's lock for row-change events), and seq is drawn
-- under it, so a key's seq order is its commit order, which per-key order relies on
-- already: once a head (the lowest pending seq of a key) was seen, nothing of that key
-- below it can become pending, except by a redrive of a dead event (the relays then drop
-- their floors). The floors come from the heads this function returns (head_keys,
-- head_seqs on the first row: every head its key scan found, locked or not). The relay
-- keeps them (src/outbox/floors.ts) and calls this function only while it sees a
-- transaction held open (src/outbox/relay.ts): its step costs more than 026's (two index
-- descents per hinted key instead of one), so without a held transaction relays keep
-- calling outbox_claim, unchanged.

CREATE OR REPLACE FUNCTION :schema.outbox_claim_hinted(p_token uuid, p_lease_ms float8, p_batch int, p_cursor text,
                                                       p_hint_keys text[], p_hint_floors bigint[])
RETURNS TABLE (seq text, id text, type text, key text, payload jsonb, headers jsonb, attempts int, created_at timestamptz,
               run int, next_cursor text, suspects boolean, head_keys text[], head_seqs text[])
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
  -- The hints, sorted (in the index's order) and one per key; i0: the first after the cursor.
  v_tkeys text[];
  v_tfloors bigint[];
  v_nhints int;
  v_i0 int;
  -- Every head the key scan found (the relay's floors).
  v_allk text[] := '{}';
  v_alls bigint[] := '{}';
BEGIN
  SELECT coalesce(array_agg(t.k ORDER BY t.k), '{}'), coalesce(array_agg(t.f ORDER BY t.k), '{}') INTO v_tkeys, v_tfloors
    FROM (SELECT u.k, max(u.f) AS f FROM unnest(p_hint_keys, p_hint_floors) AS u(k, f)
           WHERE u.k IS NOT NULL AND u.f IS NOT NULL GROUP BY u.k) AS t;
  v_nhints := cardinality(v_tkeys);
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
    -- The heads from the cursor, one probe per step: between two hint keys, the first
    -- head of a key the relay did not name (a bounded gap probe, so the hint key's own
    -- entries are never walked); then the hint key's head from its floor; past the last
    -- hint, one probe per key as before. The WHERE of each branch on h's columns is a
    -- one-time filter, so each step runs the first branch that applies and stops at its
    -- first row (LIMIT 1 over the UNION ALL). Each bound is an index bound of a cached
    -- generic plan (no OR: a condition with one could not be).
    SELECT count(*)::int + 1 INTO v_i0 FROM unnest(v_tkeys) AS u(k) WHERE v_cursor IS NOT NULL AND u.k <= v_cursor;
    WITH RECURSIVE h AS (
      SELECT v_cursor AS k, NULL::bigint AS s, 0 AS d, v_i0 AS i
      UNION ALL
      SELECT n.k, n.s, h.d + 1, n.i FROM h CROSS JOIN LATERAL (
        (SELECT p.key AS k, p.seq AS s, h.i AS i FROM :schema.outbox_events AS p
          WHERE h.k IS NULL AND h.i <= v_nhints
            AND p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL AND p.key < v_tkeys[h.i]
          ORDER BY p.key, p.seq LIMIT 1)
        UNION ALL
        (SELECT p.key, p.seq, h.i FROM :schema.outbox_events AS p
          WHERE h.k IS NOT NULL AND h.i <= v_nhints
            AND p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL AND p.key > h.k AND p.key < v_tkeys[h.i]
          ORDER BY p.key, p.seq LIMIT 1)
        UNION ALL
        (SELECT v_tkeys[h.i], (SELECT p.seq FROM :schema.outbox_events AS p
                                WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key = v_tkeys[h.i] AND p.seq >= v_tfloors[h.i]
                                ORDER BY p.seq LIMIT 1), h.i + 1
          WHERE h.i <= v_nhints)
        UNION ALL
        (SELECT p.key, p.seq, h.i FROM :schema.outbox_events AS p
          WHERE h.k IS NULL AND h.i > v_nhints
            AND p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL
          ORDER BY p.key, p.seq LIMIT 1)
        UNION ALL
        (SELECT p.key, p.seq, h.i FROM :schema.outbox_events AS p
          WHERE h.k IS NOT NULL AND h.i > v_nhints
            AND p.published_at IS NULL AND p.dead_at IS NULL AND p.key IS NOT NULL AND p.key > h.k
          ORDER BY p.key, p.seq LIMIT 1)
        LIMIT 1) AS n)
    SELECT coalesce(array_agg(w.k ORDER BY w.d), '{}'), coalesce(array_agg(w.s ORDER BY w.d), '{}')
      INTO v_fkey, v_fseq FROM (SELECT * FROM h WHERE h.s IS NOT NULL LIMIT v_window) AS w;
    v_allk := v_allk || v_fkey;
    v_alls := v_alls || v_fseq;
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
                        NULL::timestamptz, NULL::int, v_cursor, v_suspects, v_allk, v_alls::text[];
    RETURN;
  END IF;
  RETURN QUERY
    SELECT e.seq::text, e.id::text, e.type, e.key, e.payload, e.headers, e.attempts, e.created_at, b.r, v_cursor, v_suspects,
           CASE WHEN row_number() OVER (ORDER BY b.r, e.seq) = 1 THEN v_allk END,
           CASE WHEN row_number() OVER (ORDER BY b.r, e.seq) = 1 THEN v_alls::text[] END
      FROM :schema.outbox_events AS e
      JOIN unnest(v_bseq, v_brun) AS b(s, r) ON b.s = e.seq
     WHERE e.seq = ANY (v_held::bigint[])
     ORDER BY b.r, e.seq;
END
$$;
