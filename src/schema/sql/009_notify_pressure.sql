-- 009 notify pressure: a wake-up never costs the write it announces (DESIGN trap 5).
-- Postgres fails a transaction at commit (54000 "too many notifications in the NOTIFY
-- queue") when the cluster's notification queue is full, which happens when a session
-- that ran LISTEN sits in a long transaction. The client parts stop attaching wake-ups
-- themselves; the triggers below run inside the application's own statements, so they
-- check the queue here: above herald.notify_max_usage (a fraction of the queue, default
-- 0.5; set it per role, database or session) they skip their NOTIFY.
CREATE FUNCTION :schema.notify_queue_ok() RETURNS boolean LANGUAGE sql VOLATILE AS $$
  SELECT pg_notification_queue_usage() < coalesce(nullif(current_setting('herald.notify_max_usage', true), '')::float8, 0.5)
$$;

CREATE OR REPLACE FUNCTION :schema.outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('herald.outbox_wake', true) = 'off' OR NOT :schema.notify_queue_ok() THEN
    RETURN NULL;
  END IF;
  PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION :schema.change_announce() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  rel text := CASE TG_OP WHEN 'DELETE' THEN 'herald_old' ELSE 'herald_new' END;
  cols text[] := TG_ARGV[3:TG_NARGS - 1];
  max_keys int := TG_ARGV[1]::int;
  tbl text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
  pairs text;
  n bigint;
  keys jsonb;
  msg text;
BEGIN
  EXECUTE format('SELECT count(*) FROM %I', rel) INTO n;
  IF n = 0 THEN
    RETURN NULL;
  END IF;
  SELECT string_agg(format('%L, t.%I', c, c), ', ') INTO pairs FROM unnest(cols) AS c;
  IF n <= max_keys THEN
    EXECUTE format('SELECT jsonb_agg(jsonb_build_object(%s)) FROM %I AS t', pairs, rel) INTO keys;
    msg := jsonb_build_object('table', tbl, 'op', TG_OP, 'count', n, 'keys', keys, 'many', false)::text;
  END IF;
  -- 8000 bytes is NOTIFY's hard limit: fall back to "many" well below it.
  IF msg IS NULL OR octet_length(msg) > 7900 THEN
    msg := jsonb_build_object('table', tbl, 'op', TG_OP, 'count', n, 'many', true)::text;
  END IF;
  -- Never at the cost of the write: no announcement while the notification queue is
  -- nearly full (a full queue would fail this transaction's commit).
  IF :schema.notify_queue_ok() THEN
    PERFORM pg_notify(TG_ARGV[0], msg);
  END IF;
  IF TG_ARGV[2] = 't' THEN
    -- Durable changes: one outbox event per row, keyed by table and row key. Row locks
    -- already serialise writers of one row, so seq order is commit order per key.
    EXECUTE format(
      'INSERT INTO :schema.outbox_events (type, key, payload)
         SELECT ''herald.change'', %L || '':'' || s.k::text, jsonb_build_object(''table'', %L, ''op'', %L, ''key'', s.k)
           FROM (SELECT jsonb_build_object(%s) AS k FROM %I AS t) AS s',
      tbl, tbl, TG_OP, pairs, rel);
  END IF;
  RETURN NULL;
END
$$;
