-- 012 topic sequencer: delivery no longer waits for the cluster's visibility horizon
-- (see src/topic/README.md, "Order and visibility").
--
-- A publish writes into topic_pending (publish id from the topic's topic_pub_<id>
-- sequence). A sequencer, one at a time per topic (advisory lock), moves the rows
-- that are committed and visible to it into the log in a short transaction of its own
-- and gives each its position: the log's `id`, from the topic's topic_seq_<id>. Runs
-- are serialized and a run's ids are taken after the previous run committed, so ids
-- become visible in increasing order: a reader that read up to id N never sees a row
-- at or below N appear later. Delivery order is the log's `id` alone.
CREATE TABLE IF NOT EXISTS :schema.topic_pending (
  topic_id int NOT NULL REFERENCES :schema.topics (id) ON DELETE CASCADE,
  publish_id bigint NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  kpart int NOT NULL,
  key text,
  payload jsonb NOT NULL,
  published_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic_id, publish_id)
);

-- The id the publisher got back (rows of earlier versions: null, their id was both).
ALTER TABLE :schema.topic_messages ADD COLUMN IF NOT EXISTS publish_id bigint;

-- Publish ids of existing topics continue after the ids already handed out.
DO $$
DECLARE t record; last bigint;
BEGIN
  FOR t IN SELECT id FROM :schema.topics LOOP
    EXECUTE 'SELECT last_value FROM :schema.' || quote_ident('topic_seq_' || t.id) INTO last;
    EXECUTE 'CREATE SEQUENCE IF NOT EXISTS :schema.' || quote_ident('topic_pub_' || t.id) || ' AS bigint START ' || (last + 1);
  END LOOP;
END $$;

-- Cursors and retention marks become ids. A cursor (xid, id) moves to just below the
-- first message it had not consumed (in id order), so nothing is skipped; messages of
-- that key partition with a higher id that it had consumed are delivered once more.
UPDATE :schema.topic_group_cursors c
   SET cursor_id = COALESCE(
         (SELECT min(m.id) - 1 FROM :schema.topic_messages m
           WHERE m.topic_id = c.topic_id AND m.kpart = c.kpart AND (m.xid, m.id) > (c.cursor_xid, c.cursor_id)),
         GREATEST(c.cursor_id, (SELECT COALESCE(max(m.id), 0) FROM :schema.topic_messages m
                                 WHERE m.topic_id = c.topic_id AND m.kpart = c.kpart)));
ALTER TABLE :schema.topic_group_cursors DROP COLUMN IF EXISTS cursor_xid;
ALTER TABLE :schema.topic_partitions DROP COLUMN IF EXISTS dropped_xid;

-- A key partition reads in id order. (Built on the existing log: blocks writes to it
-- while it builds; partitioned tables take no CONCURRENTLY.)
CREATE INDEX IF NOT EXISTS topic_messages_kpart_id ON :schema.topic_messages (topic_id, kpart, id);
DROP INDEX IF EXISTS :schema.topic_messages_kpart_order;
DROP INDEX IF EXISTS :schema.topic_messages_order;

-- Retention marks a segment (raises the marks) in one transaction before it detaches
-- and drops it in later ones; a run interrupted in between is finished by the next.
ALTER TABLE :schema.topic_segments ADD COLUMN IF NOT EXISTS marked boolean NOT NULL DEFAULT false;

-- One sequencer run in one round trip. In READ COMMITTED every statement of a
-- VOLATILE function takes a new snapshot: the move below sees every run that committed
-- before this one got the lock, and ids are taken after it. Moves up to p_limit
-- committed pending messages of the topic in publish-id order, gives each the next id
-- of p_seq (the topic's topic_seq_<id>), and wakes consumers on p_channel (null: no
-- wake-up) when it moved anything.
CREATE OR REPLACE FUNCTION :schema.topic_sequence(p_topic int, p_seq regclass, p_limit int, p_channel text, p_name text)
RETURNS TABLE (publish_id bigint, id bigint) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  n bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('pgherald.topic-seq:' || p_topic, 0));
  RETURN QUERY
    WITH moved AS (
      DELETE FROM :schema.topic_pending p
       WHERE p.topic_id = p_topic
         AND p.publish_id IN (SELECT q.publish_id FROM :schema.topic_pending q WHERE q.topic_id = p_topic ORDER BY q.publish_id LIMIT p_limit)
      RETURNING p.*
    ), ordered AS (
      SELECT * FROM moved ORDER BY moved.publish_id OFFSET 0
    ), ins AS (
      INSERT INTO :schema.topic_messages AS m (topic_id, id, publish_id, xid, kpart, key, payload, published_at)
      SELECT o.topic_id, nextval(p_seq), o.publish_id, o.xid, o.kpart, o.key, o.payload, o.published_at FROM ordered o
      RETURNING m.publish_id, m.id
    )
    SELECT ins.publish_id, ins.id FROM ins ORDER BY ins.id;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 AND p_channel IS NOT NULL THEN
    PERFORM pg_notify(p_channel, p_name);
  END IF;
END
$$;
