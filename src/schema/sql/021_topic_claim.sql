-- 021 topic claim: a consumer's claim as a function (see src/topic/README.md, "Consumers").
--
-- A batch's claim runs inside the batch's transaction, where the driver does not
-- prepare statements: as plain SQL it was parsed and planned on every batch (about a
-- millisecond, more with every retained segment, since the plan covers each segment
-- of the topic and run-time pruning only skips them when it runs). PL/pgSQL keeps the
-- plan of RETURN QUERY for the session: a claim costs its execution.
--
-- One call, in the batch's transaction: lock one key partition's cursor of the group
-- that has messages after it and is not behind retention (FOR UPDATE SKIP LOCKED,
-- rotating the start by p_rotate); read its next p_limit messages, or only the first
-- while the partition's attempt row says a batch through a later message failed
-- (`through_id` at or after it: batches hold one message until the cursor passes it);
-- and move the cursor to the last message read. The cursor moves with the batch's
-- transaction: the handler's writes and the new position commit together or roll
-- back together, and no statement is left for after the handler but the COMMIT.
-- Returns one row per message (one row with null message columns when nothing was
-- claimed), each with the cursor as it was, the attempt row, whether the group has
-- redriven dead letters and, when p_ask_pending, whether the topic has messages
-- waiting for the sequencer.
CREATE OR REPLACE FUNCTION :schema.topic_claim(p_topic int, p_group text, p_rotate int, p_partitions int, p_limit int, p_ask_pending boolean)
RETURNS TABLE (pending boolean, redriven boolean, ckpart int, cursor_id text, pid int, a_mid text, a_through text, a_attempts int,
               id text, publish_id text, kpart int, key text, payload text, published_ms float8)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  v_pending boolean;
  v_redriven boolean;
  v_kpart int;
  v_cursor bigint;
  v_first bigint;
  v_a record;
  v_limit int;
  v_last bigint;
BEGIN
  v_pending := CASE WHEN p_ask_pending THEN EXISTS (SELECT 1 FROM :schema.topic_pending q WHERE q.topic_id = p_topic) ELSE false END;
  v_redriven := EXISTS (SELECT 1 FROM :schema.topic_dead_letters d WHERE d.topic_id = p_topic AND d.group_name = p_group AND d.redrive_at IS NOT NULL);
  SELECT c.kpart, c.cursor_id, next.id INTO v_kpart, v_cursor, v_first
    FROM :schema.topic_group_cursors c
    JOIN :schema.topic_partitions p ON p.topic_id = c.topic_id AND p.kpart = c.kpart
    -- "has a message after the cursor": a LATERAL with LIMIT 1, not EXISTS (which the
    -- planner turns into a semi-join over the whole partition); the cursor is an index
    -- condition here and prunes the segments below it.
    CROSS JOIN LATERAL (SELECT m.id FROM :schema.topic_messages m
                         WHERE m.topic_id = p_topic AND m.kpart = c.kpart AND m.id > c.cursor_id
                         ORDER BY m.id LIMIT 1) next
   WHERE c.topic_id = p_topic AND c.group_name = p_group
     AND c.cursor_id >= p.dropped_id
   ORDER BY (c.kpart + p_partitions - p_rotate) % p_partitions
   LIMIT 1
   FOR UPDATE OF c SKIP LOCKED;
  IF v_kpart IS NULL THEN
    RETURN QUERY SELECT v_pending, v_redriven, NULL::int, NULL::text, pg_backend_pid(), NULL::text, NULL::text, NULL::int,
                        NULL::text, NULL::text, NULL::int, NULL::text, NULL::text, NULL::float8;
    RETURN;
  END IF;
  SELECT a.message_id, a.through_id, a.attempts INTO v_a
    FROM :schema.topic_attempts a WHERE a.topic_id = p_topic AND a.group_name = p_group AND a.kpart = v_kpart;
  -- v_first may be older than the cursor (a cursor updated by a consumer that committed
  -- after this statement's snapshot comes back current through the lock, the LATERAL's
  -- row does not): it is then at most the true first id, so it can only hold a batch
  -- to one message when not needed, never let a longer one through.
  v_limit := CASE WHEN v_a.through_id IS NOT NULL AND v_a.through_id >= v_first THEN 1 ELSE p_limit END;
  -- One statement (one snapshot): the cursor moves to the last of exactly the rows returned.
  RETURN QUERY
    WITH b AS (
      SELECT m.id, m.publish_id, m.kpart, m.key, m.payload, m.published_at
        FROM :schema.topic_messages m
       WHERE m.topic_id = p_topic AND m.kpart = v_kpart AND m.id > v_cursor
       ORDER BY m.id LIMIT v_limit
    ), moved AS (
      UPDATE :schema.topic_group_cursors c SET cursor_id = (SELECT max(b.id) FROM b), updated_at = now()
       WHERE c.topic_id = p_topic AND c.group_name = p_group AND c.kpart = v_kpart
         AND EXISTS (SELECT 1 FROM b)
      RETURNING 1
    )
    SELECT v_pending, v_redriven, v_kpart, v_cursor::text, pg_backend_pid(),
           v_a.message_id::text, v_a.through_id::text, v_a.attempts,
           b.id::text, b.publish_id::text, b.kpart, b.key, b.payload::text,
           date_part('epoch', b.published_at) * 1000
      FROM b LEFT JOIN (SELECT count(*) FROM moved) x ON true
     ORDER BY b.id;
END
$$;
