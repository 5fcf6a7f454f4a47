-- 004 outbox: events written in the application's transaction, published by relays.
-- seq orders events (per key, producers serialise on an advisory lock so seq order is
-- commit order); id is the event id sinks deduplicate on.
CREATE TABLE :schema.outbox_events (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
  type text NOT NULL,
  key text,
  payload jsonb,
  headers jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  attempts int NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error text,
  published_at timestamptz,
  dead_at timestamptz
);

-- Pending events in commit order: the relay's claim walks this index.
CREATE INDEX outbox_events_pending_seq ON :schema.outbox_events (seq)
  WHERE published_at IS NULL AND dead_at IS NULL;
-- "Is there an older pending event of this key?": the per-key order check.
CREATE INDEX outbox_events_pending_key ON :schema.outbox_events (key, seq)
  WHERE published_at IS NULL AND dead_at IS NULL AND key IS NOT NULL;
CREATE INDEX outbox_events_dead ON :schema.outbox_events (dead_at) WHERE dead_at IS NOT NULL;
CREATE INDEX outbox_events_published ON :schema.outbox_events (published_at) WHERE published_at IS NOT NULL;

-- One wake-up per inserting statement (and Postgres merges identical notifications of a
-- transaction): the channel is "<schema>.outbox", the payload empty. NOTIFY is a
-- wake-up only; relays also poll.
-- A notifying transaction holds a cluster-wide lock through its commit (WAL flush
-- included), so notifying commits cannot share an fsync: at high commit rates on slow
-- disks this caps producers. Setting herald.outbox_wake = 'off' (per role, database or
-- SET LOCAL) skips the NOTIFY; relays then find events by polling (lower pollIntervalMs).
CREATE FUNCTION :schema.outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('herald.outbox_wake', true) = 'off' THEN
    RETURN NULL;
  END IF;
  PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER outbox_events_wake AFTER INSERT ON :schema.outbox_events
  FOR EACH STATEMENT EXECUTE FUNCTION :schema.outbox_wake();
