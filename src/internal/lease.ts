/** What the lease statements of the mailbox and the relay share. */

/**
 * A condition that makes the transaction of the statement it is in commit without
 * waiting for its WAL to reach disk (`synchronous_commit = off` for that transaction
 * alone, set from an InitPlan before the statement reads its rows). Used by the lease
 * statements only (the mailbox consumer's and the relay's). A lease counts an attempt
 * and hides rows, so that a consumer or relay that dies in user code has still used an
 * attempt: a consumer that dies leaves the Postgres server up, and the lease is visible
 * to every session at once, flushed or not. Only a crash of the server itself, within
 * a fraction of a second (`wal_writer_delay`), can lose a lease, and then only one whose
 * outcome was not recorded yet: every later synchronous commit (the consume, the
 * relay's mark) flushes the WAL written before it, the lease included. A lease lost that
 * way leaves its rows ready with the attempt uncounted, as if never taken. What it buys:
 * one disk flush per batch instead of two (a millisecond or more each on
 * network-attached storage).
 *
 * The mailbox's take row (`mailboxTakeInsert`, issue 15) commits the same way, for the
 * same reasons: it counts an attempt before user code runs and is flushed along by the
 * consume transaction's synchronous commit.
 */
export const LEASE_COMMITS_ASYNC = `(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL`;
