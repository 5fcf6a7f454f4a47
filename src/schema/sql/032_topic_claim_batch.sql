-- 032 topic claim batch: 029's claim with narrower rows.
--
-- 029's topic_claim returned 14 columns a row: the claim's eight (on the batch's first
-- row only, null on the others, that row found with a window over the batch) and the
-- message's six. This one returns the claim as one row of its own first (one text
-- column, the message columns null), then the messages, 7 columns each. Measured
-- (session 19, bench/RESULTS.md): a consumer got 1.06 times the messages a second with
-- batches of 100 and about 1.11 with batches of 500. The claim as a function and the
-- read as a prepared statement of its own (two round trips) cost less server time, but
-- at the default batchSize of 100 its extra round trip cost more than that (0.95).
--
-- Same steps as 029's otherwise: the READ COMMITTED check, redriven dead letters, the
-- partition locked FOR UPDATE SKIP LOCKED by a hint and checked after the lock (a new
-- snapshot), the pending check, then in one statement (one snapshot) the messages after
-- the cursor, the move to the last of exactly those and the delete of the move read.
--
-- The claim row's text: pending, redriven (t or f), then the partition, its cursor, the
-- backend's pid, the attempt row's message, through and attempts (empty when null),
-- joined by commas; the partition empty when nothing was claimed (then no other row).
--
-- 029's topic_claim stays for processes of the previous version during a rolling
-- upgrade: both lock the cursor row and append moves the same way.

CREATE OR REPLACE FUNCTION :schema.topic_claim_batch(p_topic int, p_group text, p_rotate int, p_partitions int, p_limit int, p_ask_pending boolean, p_floor bigint)
RETURNS TABLE (claim text, id text, publish_id text, kpart int, key text, payload text, published_ms float8)
LANGUAGE plpgsql VOLATILE
-- The newest move or count of a partition by a backwards index scan, never a bitmap or
-- sequential scan: those read every row of the partition, the deleted ones a held
-- transaction keeps too. The statistics cannot tell: ANALYZE counts the live rows
-- (one per partition), and with that estimate the planner took a bitmap scan and a sort
-- (measured: after an ANALYZE under a held transaction, p50 grew from 7 to 44 ms in 30 s).
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
  v_pending boolean;
  v_redriven boolean;
  v_kpart int;
  v_ref bigint;
  v_cursor bigint;
  v_seq bigint;
  v_first bigint;
  v_mid bigint;
  v_through bigint;
  v_attempts int;
  v_skip int[] := '{}';
BEGIN
  -- The cursor is read after the lock in a new snapshot: under REPEATABLE READ or
  -- SERIALIZABLE (a default_transaction_isolation of the database or role) it would be
  -- the transaction's first snapshot, and a move committed since would go unseen (the
  -- batch delivered twice). Refuse instead.
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'topic_claim_batch needs READ COMMITTED, the batch transaction is %', current_setting('transaction_isolation')
      USING ERRCODE = '0A000', HINT = 'set default_transaction_isolation to read committed for the role pgherald connects as';
  END IF;
  v_redriven := EXISTS (SELECT 1 FROM :schema.topic_dead_letters d WHERE d.topic_id = p_topic AND d.group_name = p_group AND d.redrive_at IS NOT NULL);
  LOOP
    SELECT c.kpart, c.ref INTO v_kpart, v_ref
      FROM :schema.topic_group_cursors c
      JOIN :schema.topic_partitions p ON p.topic_id = c.topic_id AND p.kpart = c.kpart
      -- The newest move, looked up once per partition (a LATERAL with LIMIT is not pulled up
      -- into the expressions that use it).
      LEFT JOIN LATERAL (SELECT mv.cursor_id FROM :schema.topic_cursor_moves mv WHERE mv.ref = c.ref ORDER BY mv.seq DESC LIMIT 1) mv ON true
      CROSS JOIN LATERAL (SELECT coalesce(mv.cursor_id, c.cursor_id) AS cursor_id) cur
      -- "has a message after the cursor": a LATERAL with LIMIT 1, not EXISTS (which the
      -- planner turns into a semi-join over the whole partition); the cursor is an index
      -- condition here and prunes the segments below it.
      CROSS JOIN LATERAL (SELECT m.id FROM :schema.topic_messages m
                           WHERE m.topic_id = p_topic AND m.kpart = c.kpart AND m.id > cur.cursor_id
                           ORDER BY m.id LIMIT 1) next
     WHERE c.topic_id = p_topic AND c.group_name = p_group
       AND cur.cursor_id >= p.dropped_id AND c.kpart <> ALL (v_skip)
     ORDER BY (c.kpart + p_partitions - p_rotate) % p_partitions
     LIMIT 1
     FOR UPDATE OF c SKIP LOCKED;
    EXIT WHEN v_kpart IS NULL;
    -- After the lock: the cursor as committed, the first message after it, the newest
    -- attempt count.
    SELECT coalesce(mv.cursor_id, c.cursor_id), mv.seq,
           (SELECT m.id FROM :schema.topic_messages m
             WHERE m.topic_id = p_topic AND m.kpart = v_kpart AND m.id > coalesce(mv.cursor_id, c.cursor_id)
             ORDER BY m.id LIMIT 1),
           t.message_id, t.through_id, t.attempts
      INTO v_cursor, v_seq, v_first, v_mid, v_through, v_attempts
      FROM :schema.topic_group_cursors c
      LEFT JOIN LATERAL (SELECT mv.cursor_id, mv.seq FROM :schema.topic_cursor_moves mv WHERE mv.ref = c.ref ORDER BY mv.seq DESC LIMIT 1) mv ON true
      LEFT JOIN LATERAL (SELECT t.message_id, t.through_id, t.attempts FROM :schema.topic_tries t WHERE t.ref = c.ref ORDER BY t.seq DESC LIMIT 1) t ON true
     WHERE c.topic_id = p_topic AND c.group_name = p_group AND c.kpart = v_kpart;
    EXIT WHEN v_first IS NOT NULL;
    v_skip := v_skip || v_kpart;
    v_kpart := NULL;
  END LOOP;
  -- Asked when the caller asks, and always when nothing was claimed (the consumer then
  -- starts a sequencer run instead of a second claim that asks).
  v_pending := CASE WHEN p_ask_pending OR v_kpart IS NULL
                    THEN EXISTS (SELECT 1 FROM :schema.topic_pending q WHERE q.topic_id = p_topic AND q.publish_id >= p_floor)
                    ELSE false END;
  -- format() writes a null as an empty string (concat_ws would skip it).
  RETURN QUERY SELECT format('%s,%s,%s,%s,%s,%s,%s,%s', v_pending, v_redriven, v_kpart, v_cursor, pg_backend_pid(), v_mid, v_through, v_attempts),
                      NULL::text, NULL::text, NULL::int, NULL::text, NULL::text, NULL::float8;
  IF v_kpart IS NULL THEN
    RETURN;
  END IF;
  RETURN QUERY
    WITH b AS (
      SELECT m.id, m.publish_id, m.kpart, m.key, m.payload, m.published_at
        FROM :schema.topic_messages m
       WHERE m.topic_id = p_topic AND m.kpart = v_kpart AND m.id > v_cursor
       ORDER BY m.id LIMIT CASE WHEN v_through IS NOT NULL AND v_through >= v_first THEN 1 ELSE p_limit END
    ), moved AS (
      INSERT INTO :schema.topic_cursor_moves (ref, cursor_id)
      SELECT v_ref, max(b.id) FROM b HAVING count(*) > 0
      RETURNING 1
    ), gone AS (
      DELETE FROM :schema.topic_cursor_moves mv
       WHERE mv.ref = v_ref AND mv.seq = v_seq
         AND EXISTS (SELECT 1 FROM b)
      RETURNING 1
    )
    SELECT NULL::text, b.id::text, b.publish_id::text, b.kpart, b.key, b.payload::text, date_part('epoch', b.published_at) * 1000
      FROM b LEFT JOIN (SELECT count(*) FROM moved) x ON true LEFT JOIN (SELECT count(*) FROM gone) y ON true
     ORDER BY b.id;
END
$$;
