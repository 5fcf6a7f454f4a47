/**
 * SQL of the outbox. Every statement takes the quoted schema (from `schemaIdent`) and
 * `$n` parameters only.
 */
import type { Executor } from '../driver/types.js';

/** A row of `outbox_events` as relays and sinks see it. */
export interface OutboxEventRow {
  seq: string;
  id: string;
  type: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  attempts: number;
  created_at: Date;
}

const EVENT_COLUMNS = 'e.seq::text AS seq, e.id::text AS id, e.type, e.key, e.payload, e.headers, e.attempts, e.created_at';

/**
 * Inserts one event. The per-key advisory transaction lock (taken in the FROM clause,
 * so before the identity value is drawn) serialises producers of one key until they
 * commit: a later seq of a key therefore never commits before an earlier one, which is
 * what lets relays publish a key's events in seq order = commit order. Events without a
 * key take no lock.
 */
export async function outboxInsertOne(
  ex: Executor,
  s: string,
  lockPrefix: string,
  e: { type: string; key: string | null; payload: string | null; headers: string },
): Promise<string> {
  const { rows } = await ex.query<{ id: string }>(
    `INSERT INTO ${s}.outbox_events (type, key, payload, headers)
     SELECT $1, $2, $3::jsonb, $4::jsonb
       FROM (SELECT CASE WHEN $2::text IS NULL THEN NULL
                         ELSE pg_advisory_xact_lock(hashtextextended($5 || $2::text, 0)) END) AS lock
     RETURNING id::text AS id`,
    [e.type, e.key, e.payload, e.headers, lockPrefix],
  );
  return rows[0].id;
}

/** Takes the per-key producer locks of a batch, in sorted order so two batches cannot deadlock. */
export async function outboxLockKeys(ex: Executor, lockPrefix: string, keys: string[]): Promise<void> {
  if (keys.length === 0) return;
  await ex.query(
    `SELECT count(pg_advisory_xact_lock(hashtextextended($1 || k, 0)))
       FROM (SELECT DISTINCT k FROM unnest($2::text[]) AS k ORDER BY k) AS keys`,
    [lockPrefix, keys],
  );
}

/** Inserts a batch in array order (WITH ORDINALITY + ORDER BY draws seq values in that order). */
export async function outboxInsertMany(
  ex: Executor,
  s: string,
  cols: { types: string[]; keys: (string | null)[]; payloads: (string | null)[]; headers: string[] },
): Promise<string[]> {
  const { rows } = await ex.query<{ id: string }>(
    `INSERT INTO ${s}.outbox_events (type, key, payload, headers)
     SELECT t, k, p::jsonb, h::jsonb
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(t, k, p, h, ord)
      ORDER BY ord
     RETURNING id::text AS id, seq`,
    [cols.types, cols.keys, cols.payloads, cols.headers],
  );
  // RETURNING order follows insertion order in practice, but sort by seq to be sure.
  return (rows as unknown as { id: string; seq: string }[]).sort((a, b) => Number(BigInt(a.seq) - BigInt(b.seq))).map((r) => r.id);
}

/**
 * Claims up to `limit` events for publishing, inside the relay's transaction: the row
 * locks are the "in flight" marks, released by commit (published/failed) or by the
 * death of the relay's connection (then another relay takes them again, same id).
 *
 * Shape: an event is eligible when due and no older pending event of its key exists
 * (NOT EXISTS on the (key, seq) partial index), so each claim takes at most the head of
 * each key and a key is never published by two relays at once: while its head is locked
 * by one relay, the head is skipped (SKIP LOCKED) and every later event of the key fails
 * NOT EXISTS. LockRows sits under the LIMIT, so skipped rows do not use up the limit.
 * A head that another relay published meanwhile is re-checked after the lock wait
 * (published_at IS NULL fails) and dropped.
 */
export async function outboxClaimBatch(ex: Executor, s: string, limit: number): Promise<OutboxEventRow[]> {
  const { rows } = await ex.query<OutboxEventRow>(
    `SELECT ${EVENT_COLUMNS}
       FROM ${s}.outbox_events AS e
      WHERE e.published_at IS NULL AND e.dead_at IS NULL AND e.next_attempt_at <= now()
        AND (e.key IS NULL OR NOT EXISTS (
              SELECT 1 FROM ${s}.outbox_events AS p
               WHERE p.key = e.key AND p.seq < e.seq AND p.published_at IS NULL AND p.dead_at IS NULL))
      ORDER BY e.seq
      LIMIT $1
      FOR UPDATE OF e SKIP LOCKED`,
    [limit],
  );
  return rows;
}

/** Marks events published (in the claim transaction, after the sink acknowledged them). */
export async function outboxMarkPublished(ex: Executor, s: string, seqs: string[]): Promise<void> {
  if (seqs.length === 0) return;
  await ex.query(
    `UPDATE ${s}.outbox_events SET published_at = now(), attempts = attempts + 1, last_error = NULL
      WHERE seq = ANY($1::bigint[])`,
    [seqs],
  );
}

/**
 * Records failed attempts: the next attempt is scheduled in database time; an event
 * whose attempts reach `maxAttempts` is dead-lettered. Returns the seqs that died.
 */
export async function outboxMarkFailed(
  ex: Executor,
  s: string,
  failures: { seq: string; error: string; delayMs: number }[],
  maxAttempts: number,
): Promise<{ seq: string; attempts: number; dead: boolean }[]> {
  if (failures.length === 0) return [];
  const { rows } = await ex.query<{ seq: string; attempts: number; dead: boolean }>(
    `UPDATE ${s}.outbox_events AS e
        SET attempts = e.attempts + 1,
            last_error = f.err,
            next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
            dead_at = CASE WHEN e.attempts + 1 >= $4 THEN now() END
       FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(seq, err, delay_ms)
      WHERE e.seq = f.seq
     RETURNING e.seq::text AS seq, e.attempts, e.dead_at IS NOT NULL AS dead`,
    [failures.map((f) => f.seq), failures.map((f) => f.error.slice(0, 2000)), failures.map((f) => f.delayMs), maxAttempts],
  );
  return rows;
}

/** Backlog counters. */
export interface OutboxStatsRow {
  pending: number;
  due: number;
  retrying: number;
  dead: number;
  published: number;
  oldest_pending_age_ms: number | null;
}

/** Counts by state; the pending counts walk the pending partial index. */
export async function outboxStats(ex: Executor, s: string): Promise<OutboxStatsRow> {
  const { rows } = await ex.query<OutboxStatsRow>(
    `SELECT
       (SELECT count(*) FROM ${s}.outbox_events WHERE published_at IS NULL AND dead_at IS NULL)::int AS pending,
       (SELECT count(*) FROM ${s}.outbox_events WHERE published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now())::int AS due,
       (SELECT count(*) FROM ${s}.outbox_events WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0)::int AS retrying,
       (SELECT count(*) FROM ${s}.outbox_events WHERE dead_at IS NOT NULL)::int AS dead,
       (SELECT count(*) FROM ${s}.outbox_events WHERE published_at IS NOT NULL)::int AS published,
       (SELECT (extract(epoch FROM now() - min(created_at)) * 1000)::float8
          FROM ${s}.outbox_events WHERE published_at IS NULL AND dead_at IS NULL) AS oldest_pending_age_ms`,
  );
  return rows[0];
}

/** A dead-lettered event with its last error. */
export interface OutboxDeadRow extends OutboxEventRow {
  last_error: string | null;
  dead_at: Date;
}

/** Dead letters, oldest first. */
export async function outboxListDead(ex: Executor, s: string, limit: number): Promise<OutboxDeadRow[]> {
  const { rows } = await ex.query<OutboxDeadRow>(
    `SELECT ${EVENT_COLUMNS}, e.last_error, e.dead_at
       FROM ${s}.outbox_events AS e WHERE e.dead_at IS NOT NULL ORDER BY e.seq LIMIT $1`,
    [limit],
  );
  return rows;
}

/**
 * Returns dead events to the pending state with fresh attempts, due now, and wakes the
 * relays (the insert trigger does not fire on UPDATE). `ids` null = every dead event.
 */
export async function outboxRedrive(ex: Executor, s: string, channel: string, ids: string[] | null): Promise<number> {
  const { rows } = await ex.query<{ n: number }>(
    `WITH redriven AS (
       UPDATE ${s}.outbox_events
          SET dead_at = NULL, attempts = 0, next_attempt_at = now()
        WHERE dead_at IS NOT NULL AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
       RETURNING 1)
     SELECT count(*)::int AS n, pg_notify($2, '') FROM redriven`,
    [ids, channel],
  );
  return rows[0]?.n ?? 0;
}

/** Deletes published events older than `olderThanMs` (database time); returns how many. */
export async function outboxPrunePublished(ex: Executor, s: string, olderThanMs: number, limit: number): Promise<number> {
  // Batched through a CTE with LIMIT so a large prune never holds one huge transaction.
  const { rowCount } = await ex.query(
    `WITH doomed AS (
       SELECT seq FROM ${s}.outbox_events
        WHERE published_at IS NOT NULL AND published_at < now() - $1 * interval '1 millisecond'
        LIMIT $2)
     DELETE FROM ${s}.outbox_events AS e USING doomed WHERE e.seq = doomed.seq`,
    [olderThanMs, limit],
  );
  return rowCount;
}
