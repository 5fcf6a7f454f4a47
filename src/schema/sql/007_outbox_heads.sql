-- 007 outbox heads: relays find key heads by a loose index scan over
-- outbox_events_pending_key (one probe per key, never a walk over a key's backlog), so
-- keyless events get their own pending index: their claim must not walk keyed backlogs.
-- Built CONCURRENTLY: an upgrade must not block writes to a large outbox.
-- herald:outside-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_events_pending_keyless ON :schema.outbox_events (seq)
  WHERE published_at IS NULL AND dead_at IS NULL AND key IS NULL;
