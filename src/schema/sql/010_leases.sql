-- 010 leases: attempts are counted before user code runs, in a statement that commits.
-- A consumer or relay first takes a lease in a short committed statement (attempts + 1,
-- invisible until the lease ends, a random lease token), then works outside it:
-- - a mailbox consumer consumes in its own transaction, fenced by the token (the take
--   and the handler's writes still commit together: exactly once);
-- - a relay publishes with no transaction open and marks the outcome fenced by the
--   token, so a relay whose lease ran out cannot mark what another relay re-leased.
-- A process that dies mid-handler has still used an attempt: a message or event that
-- kills its process every time ends in dead letters. A lease still set when it ends
-- means the holder never recorded an outcome; such a row is taken alone next time.
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE :schema.mailbox_messages ADD COLUMN IF NOT EXISTS lease uuid;
ALTER TABLE :schema.outbox_events ADD COLUMN IF NOT EXISTS lease uuid;
-- herald:outside-transaction
-- The relay looks for events whose lease ran out with no outcome (suspects) before
-- each claim: this index holds only rows leased right now or abandoned, a handful.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_events_leased ON :schema.outbox_events (seq)
  WHERE lease IS NOT NULL AND published_at IS NULL AND dead_at IS NULL;
