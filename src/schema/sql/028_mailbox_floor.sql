-- 028 mailbox floor: takes skip the messages already consumed, whatever transaction is
-- held open elsewhere (see src/mailbox/README.md, "The floor").
--
-- A take scans a destination's ready messages in seq order from the start of the ready
-- index. A consumed message leaves its ready entry behind until vacuum removes it, and
-- while a transaction is open anywhere in the cluster (pg_dump, an idle session, a long
-- migration) nothing can: every take walked every message consumed since that
-- transaction began, a heap visit each (delivery p50 3 -> 15 ms over 40 s at 1,000
-- messages a second, and growing for as long as it stays open).
--
-- Now each process keeps a floor per destination, a seq below which the destination has
-- no ready message and never will, and its takes and receives start there. The floor is raised by
-- mailbox_floors, now and then, off the take's path:
--   1. V := the seq sequence's last value (cache 1: no session holds values ahead);
--   2. every transaction that held or waited for the shared send lock when V was read
--      has ended (no other holder then, or none of them left at the next call): every
--      statement that puts a seq on a row (an INSERT, or an UPDATE of seq) takes it
--      before its first row, by the statement trigger below, and keeps it until its
--      transaction has ended (a transaction's locks go only after its commit is
--      visible). So every seq up to V is on a committed row or on none;
--   3. a new statement (a snapshot after 2): the destination's first ready message at
--      or above the old floor. A message locked by a take still in flight is ready in
--      that snapshot, so a take that rolls back never lands below the floor. The new
--      floor is that seq, or V + 1 when there is none.
-- A send held open (inside a transaction that lasts minutes) holds the floor for that
-- long: the takes then read what they read before this migration.
-- A redrive gives the message a new seq (behind the messages waiting), so no message
-- becomes ready below a floor. The floor is a hint kept in memory: a process starts at
-- 0, and now and then looks again from 0 (a floor can only go down that way).
--
-- The 3-argument mailbox_next of 025 stays for processes of the previous version.

CREATE OR REPLACE FUNCTION :schema.mailbox_send_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Shared: senders never wait for each other; mailbox_floors only looks.
  PERFORM pg_advisory_xact_lock_shared(hashtext('pgherald.mailbox-send'), hashtext(':schema'));
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS mailbox_send_lock ON :schema.mailbox_messages;
CREATE TRIGGER mailbox_send_lock BEFORE INSERT OR UPDATE OF seq ON :schema.mailbox_messages
  FOR EACH STATEMENT EXECUTE FUNCTION :schema.mailbox_send_lock();

-- The take's scan from a floor (025's, with `seq >= p_floor` as the start of the range).
CREATE OR REPLACE FUNCTION :schema.mailbox_next(p_destination text, p_topic text, p_limit int, p_floor bigint)
RETURNS TABLE (row_ctid tid, seq bigint, abandoned boolean)
LANGUAGE sql VOLATILE
SET enable_indexscan = on
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
  SELECT m.ctid, m.seq, m.lease IS NOT NULL FROM :schema.mailbox_messages m
   WHERE m.destination = p_destination AND m.state = 'ready' AND m.seq >= p_floor AND m.visible_at <= now()
     AND (p_topic IS NULL OR m.topic = p_topic)
   ORDER BY m.seq
   LIMIT p_limit
   FOR UPDATE SKIP LOCKED
$$;

-- The next floors of destinations, from `p_floors` (one each), and what the next call
-- waits for (one answer for all: the send lock is the mailbox's, not a destination's).
-- A bound V is "settled" once every statement that took the send lock before V was read
-- has ended: then every seq up to V is on a committed row or on none. This call reads V,
-- then the transactions holding (or waiting for) the lock; with none, V is settled now.
-- Otherwise it returns (V, their virtual transaction ids) and the next call, if none of
-- those is still there, takes that older V as settled: senders that come and go all the
-- time then delay the floors by one call, not forever; only a send held open (a send
-- inside a long transaction) stops them for that long. With a settled bound, each
-- destination's first ready message at or above its floor is read in a new statement (a
-- snapshot after the lock check); its new floor is that seq, or the bound + 1 (`settled`;
-- otherwise the floor asked with comes back). Reading pg_locks visits every session's
-- locks: a process asks once for all its destinations.
CREATE OR REPLACE FUNCTION :schema.mailbox_floors(p_destinations text[], p_floors bigint[], p_wait_last bigint, p_wait_for text[])
RETURNS TABLE (destination text, floor bigint, settled boolean, wait_last bigint, wait_for text[])
LANGUAGE plpgsql VOLATILE
SET enable_indexscan = on
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
  v_seq regclass := pg_get_serial_sequence(':schema.mailbox_messages', 'seq')::regclass;
  v_last bigint;
  v_holders text[];
  v_settled bigint;
BEGIN
  -- A cached sequence hands values out ahead of its last value: no bound can be told.
  IF (SELECT s.seqcache FROM pg_catalog.pg_sequence s WHERE s.seqrelid = v_seq) <> 1 THEN
    RETURN QUERY SELECT d.dest, d.f, false, NULL::bigint, NULL::text[] FROM unnest(p_destinations, p_floors) AS d(dest, f);
    RETURN;
  END IF;
  v_last := pg_sequence_last_value(v_seq);
  -- Holders and waiters, other sessions and prepared transactions (pid null) alike.
  SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') INTO v_holders FROM pg_locks l
   WHERE l.locktype = 'advisory'
     AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
     AND l.classid = hashtext('pgherald.mailbox-send')::oid
     AND l.objid = hashtext(':schema')::oid
     AND l.objsubid = 2
     AND l.pid IS DISTINCT FROM pg_backend_pid();
  IF v_last IS NOT NULL AND cardinality(v_holders) = 0 THEN
    v_settled := v_last;
  ELSIF p_wait_last IS NOT NULL AND NOT (coalesce(p_wait_for, '{}') && v_holders) THEN
    v_settled := p_wait_last;
  END IF;
  RETURN QUERY
    SELECT d.dest,
           CASE WHEN v_settled IS NULL THEN d.f
                ELSE greatest(d.f, least(coalesce(n.seq, v_settled + 1), v_settled + 1)) END,
           v_settled IS NOT NULL,
           CASE WHEN cardinality(v_holders) = 0 THEN NULL ELSE v_last END,
           CASE WHEN cardinality(v_holders) = 0 THEN NULL ELSE v_holders END
      FROM unnest(p_destinations, p_floors) AS d(dest, f)
      LEFT JOIN LATERAL (
        SELECT m.seq FROM :schema.mailbox_messages m
         WHERE v_settled IS NOT NULL AND m.destination = d.dest AND m.state = 'ready' AND m.seq >= d.f
         ORDER BY m.seq LIMIT 1) n ON true;
END
$$;
