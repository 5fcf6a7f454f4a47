-- 005 changes: statement-level triggers that announce row changes of tracked tables.
-- The registry of tracked tables; the triggers themselves carry their settings as
-- arguments, so a change costs no catalog lookup.
CREATE TABLE :schema.change_tables (
  table_name text PRIMARY KEY,
  relid oid NOT NULL,
  columns text[] NOT NULL,
  channel text NOT NULL,
  max_keys int NOT NULL,
  to_outbox boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- One announcement per statement, whatever the number of rows: the trigger is FOR EACH
-- STATEMENT with a transition table (herald_new / herald_old), so a 100,000-row UPDATE
-- sends one notification, never one per row (NOTIFY serialises commits and the queue
-- is finite). The payload names the table, the operation, the row count and the
-- identifying columns of the rows when there are at most max_keys of them (and the text
-- fits a notification); otherwise "many": true. Never the row itself.
-- Arguments: channel, max_keys, to_outbox ('t'/'f'), then the identifying columns.
CREATE FUNCTION :schema.change_announce() RETURNS trigger LANGUAGE plpgsql AS $$
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
  PERFORM pg_notify(TG_ARGV[0], msg);
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
