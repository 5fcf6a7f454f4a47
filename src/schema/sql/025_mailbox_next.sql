-- 025 mailbox next: the consumer's and receiver's scan of a destination's ready messages,
-- in a function whose planner settings rule out the bitmap scan.
--
-- The take (and receive) looked for the first ready messages with a statement planned at
-- each call. Once the table's statistics said that few messages are ready (what a
-- consumer that keeps up leaves: an ANALYZE by autovacuum, or none yet), Postgres chose
-- a bitmap scan of mailbox_messages_ready and a sort. A bitmap scan never marks index
-- entries dead, so it visits the heap row of every consumed message whose entry is still
-- in that index, i.e. every message consumed since the table's last vacuum: in a
-- 2,000 messages/s soak the send -> handler p50 grew from 3 to 20 ms over the first two
-- minutes (400,000 dead rows) and fell back to 2 ms at the first autovacuum; a take of
-- 100 on 240,000 such rows read 3,885 buffers in 10 ms. A plain index scan marks the
-- entries of dead rows as it passes them (kill bits) and from then on skips them without
-- visiting the heap.
--
-- `SET` on the function applies to this scan alone (not to the handler's statements,
-- which run later in the same transaction): index scans on, no bitmap scan, no
-- sequential scan, so the only plan left is the ready index in seq order, whatever the
-- statistics (or the session's own planner settings) say.
-- Row locks taken inside the function stay with the caller's transaction.
CREATE OR REPLACE FUNCTION :schema.mailbox_next(p_destination text, p_topic text, p_limit int)
RETURNS TABLE (row_ctid tid, seq bigint, abandoned boolean)
LANGUAGE sql VOLATILE
SET enable_indexscan = on
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
  SELECT m.ctid, m.seq, m.lease IS NOT NULL FROM :schema.mailbox_messages m
   WHERE m.destination = p_destination AND m.state = 'ready' AND m.visible_at <= now()
     AND (p_topic IS NULL OR m.topic = p_topic)
   ORDER BY m.seq
   LIMIT p_limit
   FOR UPDATE SKIP LOCKED
$$;
