-- 019 outbox holds: a relay's batch is held by ONE row, not by a write to every event.
-- The claim transaction locks the batch's events (FOR UPDATE SKIP LOCKED, as before),
-- inserts one hold (a random token, the hold's end in database time, the keys of the
-- batch's runs and every event's seq) and commits; the relay publishes with nothing
-- open; one statement then deletes the hold (the fence: no hold, no mark) and marks the
-- events. Claims skip every key and seq named by any hold. The hold counts one attempt
-- for each of its events; the count moves onto the events only when it matters: a
-- failure (attempts + 1 with the error) or a hold that ended with no outcome recorded
-- (its relay died or stalled), which the next claim turns into abandoned events
-- (attempts + 1, lease = the hold's token, due now: migration 010's per-event lease
-- then takes each alone). Issue 15: the per-event lease wrote every event twice.
CREATE TABLE IF NOT EXISTS :schema.outbox_holds (
  token uuid PRIMARY KEY,
  held_until timestamptz NOT NULL,
  keys text[] NOT NULL,
  seqs bigint[] NOT NULL
);
