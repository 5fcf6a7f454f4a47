-- 031 topic publish, straight into the log when the topic's sequencer lock is free (see
-- src/topic/README.md, "A publish without tx: straight into the log").
--
-- A publish without tx (one statement, its own transaction, grouped with the other
-- publishes of its process) used to insert into topic_pending and commit; a sequencer
-- run then deleted the rows and inserted them into the log: every message written twice,
-- two commits. Now the statement tries the topic's sequencer lock (never waits for it):
-- - got it: it runs the sequencer first (topic_sequence, no wake-up, no floor check), so
--   every pending message committed before this statement began takes its position
--   before this publish's messages (a publisher that published before, in a transaction
--   or through pending, keeps its order); when that run moved fewer than p_limit (nothing
--   committed is left pending), this publish's messages go into the log with the next
--   positions, in array order. The lock is held until this transaction's commit is
--   visible, as a sequencer run's is: positions still become visible in increasing order.
-- - otherwise (another run or direct publish holds the lock, or pending messages are
--   left after the run): into topic_pending as before, for a later run.
-- Returns one row per message in array order: its publish id, its position when it went
-- into the log (null when pending), and, when the statement ran the sequencer, the
-- pending floor after it (raised only with p_check, as 023's runs) and the highest
-- publish id it moved.
-- The pending branch locks topic_pending (the INSERT's lock, taken before its publish
-- ids) as 023's floor needs; the direct branch writes no pending row. So each branch
-- draws its own publish ids, after its own lock: drawn once before the branches, the
-- pending ones would precede the table lock, and a run in another session could raise
-- the floor past them.
-- Processes of the previous version still publish into topic_pending: both run side by
-- side during an upgrade.
CREATE OR REPLACE FUNCTION :schema.topic_publish(p_topic int, p_seq regclass, p_pub regclass, p_partitions int,
                                                 p_keys text, p_payloads text, p_floor bigint, p_limit int, p_check boolean)
RETURNS TABLE (publish_id bigint, id bigint, floor bigint, moved_max bigint) LANGUAGE plpgsql VOLATILE
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
  moved int := 0;
  v_floor bigint;
  v_moved_max bigint;
BEGIN
  IF pg_try_advisory_xact_lock(hashtextextended('pgherald.topic-seq:' || p_topic, 0)) THEN
    -- The run only when something is pending (one probe of the pending index from the
    -- floor); it raises the floor as a run of the caller would (p_check), and every row
    -- returned carries the new floor and the highest publish id it moved (null: no run).
    IF EXISTS (SELECT 1 FROM :schema.topic_pending q WHERE q.topic_id = p_topic AND q.publish_id >= p_floor) THEN
      SELECT count(s.id), max(s.publish_id), max(s.floor) INTO moved, v_moved_max, v_floor
        FROM :schema.topic_sequence(p_topic, p_seq, p_limit, NULL, NULL, p_pub, p_floor, p_check) s;
    END IF;
    IF moved < p_limit THEN
      RETURN QUERY
        WITH src AS (
          SELECT nextval(p_pub) AS pid, k.k, p.p
            FROM jsonb_array_elements(p_payloads::jsonb) WITH ORDINALITY AS p(p, ord)
            JOIN json_array_elements_text(p_keys::json) WITH ORDINALITY AS k(k, ord) USING (ord)
           ORDER BY ord
        ), ordered AS (
          SELECT * FROM src ORDER BY src.pid OFFSET 0
        ), ins AS (
          INSERT INTO :schema.topic_messages AS m (topic_id, id, publish_id, kpart, key, payload)
          SELECT p_topic, nextval(p_seq), o.pid,
                 CASE WHEN o.k IS NULL THEN (o.pid % p_partitions)::int
                      ELSE (((hashtextextended(o.k, 0) % p_partitions) + p_partitions) % p_partitions)::int END,
                 o.k, o.p
            FROM ordered o
          RETURNING m.publish_id, m.id
        )
        SELECT ins.publish_id, ins.id, v_floor, v_moved_max FROM ins ORDER BY ins.publish_id;
      RETURN;
    END IF;
  END IF;
  RETURN QUERY
    WITH ins AS (
      INSERT INTO :schema.topic_pending AS t (topic_id, publish_id, kpart, key, payload)
      SELECT p_topic, src.pid,
             CASE WHEN src.k IS NULL THEN (src.pid % p_partitions)::int
                  ELSE (((hashtextextended(src.k, 0) % p_partitions) + p_partitions) % p_partitions)::int END,
             src.k, src.p
        FROM (SELECT nextval(p_pub) AS pid, k.k, p.p
                FROM jsonb_array_elements(p_payloads::jsonb) WITH ORDINALITY AS p(p, ord)
                JOIN json_array_elements_text(p_keys::json) WITH ORDINALITY AS k(k, ord) USING (ord)
               ORDER BY ord) src
      RETURNING t.publish_id
    )
    SELECT ins.publish_id, NULL::bigint, v_floor, v_moved_max FROM ins ORDER BY ins.publish_id;
END
$$;
