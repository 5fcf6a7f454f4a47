-- 023 topic pending floor: sequencer runs and pending checks skip the rows already moved
-- (see src/topic/README.md, "The pending floor").
--
-- A sequencer run deletes what it moves from topic_pending. While a transaction is open
-- anywhere in the cluster (another database too: our own sessions' snapshots then carry
-- its xid as their xmin), those deleted rows and their index entries cannot be cleaned
-- up, and every scan of the topic's pending rows from its lowest publish id walked all
-- of them: the cost of each run and of each "anything pending?" check grew with every
-- message moved since that transaction began (1,000 more index entries and heap
-- visits per second at 1,000 msg/s).
--
-- Now each process keeps a floor per topic: a publish id below which every pending row
-- of the topic has been moved (or rolled back), and scans start at it. A run computes
-- the next floor:
--   1. under the topic's sequencer lock, V := the publish sequence's last value;
--   2. no other transaction holds a lock on topic_pending that allows writing it
--      (pg_locks; a publish locks the table before it takes its publish id, and keeps
--      the lock until it ends, and a transaction's locks go only after its commit is
--      visible): so every publish id up to V belongs to a row that is committed or
--      rolled back, none to a transaction still open;
--   3. the move (a new statement: a snapshot after 2) sees all of those rows: when it
--      moved fewer than p_limit, every row up to V is moved, and the floor is V + 1;
--      when it was cut at p_limit, everything up to its last publish id is moved.
-- When 2 does not hold (a publisher mid-transaction, a prepared transaction that
-- published, another topic's run), the floor stays where it was: a later run moves it.
-- Step 2 reads pg_locks, which costs about as much as a small run: the caller asks for
-- it (p_check) now and then, not on every run.
-- The floor is a hint kept in memory: a process starts at 0 (a full scan once). Needs
-- the publish sequences' default CACHE 1 (a session's cached values would be handed
-- out below V later).
--
-- The functions of 012 and 021 stay for processes of the previous version during a
-- rolling upgrade.
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
  v_quiet := p_check AND NOT EXISTS (
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

-- The claim of 021, whose "anything pending?" check starts at the caller's floor, and
-- is made whenever the claim found nothing (021: only when asked, so a consumer that ran
-- out of work claimed once more, asking).
CREATE OR REPLACE FUNCTION :schema.topic_claim(p_topic int, p_group text, p_rotate int, p_partitions int, p_limit int, p_ask_pending boolean, p_floor bigint)
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
  -- Asked when the caller asks, and always when nothing was claimed (the consumer then
  -- starts a sequencer run instead of a second claim that asks).
  v_pending := CASE WHEN p_ask_pending OR v_kpart IS NULL
                    THEN EXISTS (SELECT 1 FROM :schema.topic_pending q WHERE q.topic_id = p_topic AND q.publish_id >= p_floor)
                    ELSE false END;
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
