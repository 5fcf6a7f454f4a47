-- 024 topic pending floor, guarded: the floor is raised only while the topic's publish
-- sequence has CACHE 1 (its default).
--
-- The floor of 023 (see src/topic/README.md, "The pending floor") assumes that a publish
-- id handed out after the sequence's last value V is above V. A sequence given a cache
-- (ALTER SEQUENCE ... CACHE n, by an operator or a tool) breaks that: a session keeps
-- cached values below V and hands them out later, to rows the runs and claims, scanning
-- from a floor above them, would never move. Now a run checks the sequence's cache in
-- the same statement that reads pg_locks (only when the caller asks to raise the floor)
-- and leaves the floor where it was when it is not 1: scans then read more, nothing is
-- skipped. Same signature: processes of 023 and 024 run side by side during an upgrade.
CREATE OR REPLACE FUNCTION :schema.topic_sequence(p_topic int, p_seq regclass, p_limit int, p_channel text, p_name text, p_pub regclass, p_floor bigint, p_check boolean)
RETURNS TABLE (publish_id bigint, id bigint, floor bigint) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_last bigint;
  v_quiet boolean;
  v_pubs bigint[];
  v_ids bigint[];
  n int;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('pgherald.topic-seq:' || p_topic, 0));
  v_last := pg_sequence_last_value(p_pub);
  -- Any lock on topic_pending that a writer holds or waits for, by another session or a
  -- prepared transaction (pid null), in this database. Reading pg_locks visits every
  -- session's locks (about as much as the run itself on a small batch): only when asked.
  -- The floor needs the publish sequence to hand out its values in order (CACHE 1, the
  -- default): with a cache, a session hands out ids below V later, which would land
  -- below the floor and never be moved. A sequence altered to cache keeps its floor.
  v_quiet := p_check AND (SELECT s.seqcache FROM pg_catalog.pg_sequence s WHERE s.seqrelid = p_pub) = 1 AND NOT EXISTS (
    SELECT 1 FROM pg_locks l
     WHERE l.locktype = 'relation'
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
       AND l.relation = ':schema.topic_pending'::regclass
       AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
       AND l.pid IS DISTINCT FROM pg_backend_pid());
  -- The rows to move are looked up by their ids (= ANY of an array): with `IN (subquery)`
  -- the planner may prefer, depending on the statistics of the moment, to walk every
  -- pending row of the topic, dead ones included, and probe a hash of the subquery.
  WITH moved AS (
    DELETE FROM :schema.topic_pending p
     WHERE p.topic_id = p_topic
       -- The floor bounds this scan too, whichever way the planner uses the array
       -- (PostgreSQL 15 walked the topic's whole pending index with it as a filter).
       AND p.publish_id >= p_floor
       AND p.publish_id = ANY (ARRAY(SELECT q.publish_id FROM :schema.topic_pending q
                                      WHERE q.topic_id = p_topic AND q.publish_id >= p_floor
                                      ORDER BY q.publish_id LIMIT p_limit))
    RETURNING p.*
  ), ordered AS (
    SELECT * FROM moved ORDER BY moved.publish_id OFFSET 0
  ), ins AS (
    INSERT INTO :schema.topic_messages AS m (topic_id, id, publish_id, xid, kpart, key, payload, published_at)
    SELECT o.topic_id, nextval(p_seq), o.publish_id, o.xid, o.kpart, o.key, o.payload, o.published_at FROM ordered o
    RETURNING m.publish_id, m.id
  )
  SELECT array_agg(ins.publish_id ORDER BY ins.id), array_agg(ins.id ORDER BY ins.id) INTO v_pubs, v_ids FROM ins;
  n := coalesce(cardinality(v_ids), 0);
  IF n > 0 AND p_channel IS NOT NULL THEN
    PERFORM pg_notify(p_channel, p_name);
  END IF;
  RETURN QUERY SELECT u.p, u.i, NULL::bigint FROM unnest(v_pubs, v_ids) AS u(p, i);
  -- The last row: the floor (publish_id and id null).
  RETURN QUERY SELECT NULL::bigint, NULL::bigint,
    CASE WHEN NOT v_quiet OR v_last IS NULL THEN p_floor
         WHEN n >= p_limit THEN GREATEST(p_floor, (SELECT max(x) FROM unnest(v_pubs) x) + 1)
         ELSE GREATEST(p_floor, v_last + 1) END;
END
$$;
