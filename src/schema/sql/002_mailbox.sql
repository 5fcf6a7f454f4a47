-- 002 mailbox: durable point-to-point messages, one row each.
-- id is the sender's idempotency key: the primary key makes a second send of the same
-- id a no-op (INSERT ... ON CONFLICT DO NOTHING), for as long as the row is retained.
CREATE TABLE IF NOT EXISTS :schema.mailbox_messages (
  id text PRIMARY KEY,
  -- FIFO order within a destination (ids are the caller's and carry no order).
  seq bigint GENERATED ALWAYS AS IDENTITY,
  destination text NOT NULL,
  topic text,
  -- 'text' payloads are stored as given (byte-exact); 'json' ones as JSON text.
  format text NOT NULL DEFAULT 'text' CHECK (format IN ('text', 'json')),
  payload text NOT NULL,
  -- ready -> consumed (by the consuming transaction) or -> dead (too many failures).
  state text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'consumed', 'dead')),
  attempts int NOT NULL DEFAULT 0,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  -- a failed message waits until then before it is handed out again
  visible_at timestamptz NOT NULL DEFAULT now(),
  consumed_at timestamptz,
  dead_at timestamptz
);

-- The consume path: the oldest ready messages of one destination. Partial, so it only
-- holds what is waiting, however many consumed rows await retention.
CREATE INDEX IF NOT EXISTS mailbox_messages_ready
  ON :schema.mailbox_messages (destination, seq) WHERE state = 'ready';

-- Retention and dead-letter listing.
CREATE INDEX IF NOT EXISTS mailbox_messages_consumed
  ON :schema.mailbox_messages (consumed_at) WHERE state = 'consumed';
CREATE INDEX IF NOT EXISTS mailbox_messages_dead
  ON :schema.mailbox_messages (destination, dead_at) WHERE state = 'dead';
