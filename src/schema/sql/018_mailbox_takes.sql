-- 018 mailbox takes: the consumer's attempt is counted by a take row instead of a lease.
-- A consume transaction claims and marks its messages consumed in one statement (the
-- take of 002), and before any handler runs a second connection inserts and commits one
-- row here: its token, the destination and the ids it took. The consume transaction
-- deletes that row and commits with the handler's writes. A process that dies in its
-- handler rolls back (its messages are ready at once) and leaves the row behind: any
-- consumer of the destination finds it (FOR UPDATE SKIP LOCKED on the row and on its
-- messages: a live consume transaction holds both), counts the attempt of the messages
-- still ready, and moves them to the dead letters at maxAttempts.
-- mailbox_messages.lease (010) no longer holds a lease: it marks a message whose
-- delivery was abandoned (the token of the take row that counted it), taken alone next
-- time. A row that an older consumer leased before the upgrade reads the same way once
-- its lease ends. A new, small table: no index needs CONCURRENTLY.
CREATE TABLE IF NOT EXISTS :schema.mailbox_takes (
  token uuid PRIMARY KEY,
  destination text NOT NULL,
  ids text[] NOT NULL,
  taken_at timestamptz NOT NULL DEFAULT now()
);
-- Takes look for abandoned rows of their destination, oldest first.
CREATE INDEX IF NOT EXISTS mailbox_takes_destination ON :schema.mailbox_takes (destination, taken_at);
