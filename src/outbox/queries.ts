/**
 * SQL of the outbox. Every statement takes the quoted schema (from `schemaIdent`) and
 * `$n` parameters only.
 */
import { LEASE_COMMITS_ASYNC } from '../internal/lease.js';
import { wakeSql } from '../notifier/pressure.js';
import type { Executor, QueryOptions } from '../driver/types.js';

/**
 * The relay's statements run once or more per batch, with the same text: prepared (parsed
 * and planned once per connection) when the driver prepares, also in the claim
 * transaction (the relay opens it with `{ prepare: true }`). Planning them each time
 * cost the relay about as much Postgres time as executing them (issue 15).
 */
const PREPARE: QueryOptions = { prepare: true };

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
 * Producer locks are per key bucket, not per key: a key always maps to the same one of
 * {@link OUTBOX_KEY_LOCK_BUCKETS} buckets, so one transaction takes at most that many
 * advisory locks however many keys its batch has (a lock per key made a batch of
 * 20,000 keys fail with 53200 "out of shared memory" and drained the lock table that
 * every session shares). Two keys in one bucket serialise their producers until commit,
 * which costs a little concurrency and no correctness.
 *
 * It is a constant, not an option: every process of a fleet must map keys to the same
 * locks, or producers of one key would stop excluding each other.
 */
export const OUTBOX_KEY_LOCK_BUCKETS = 1024;

// The bucket of a key, as SQL over a text expression (hashtextextended is stable across
// servers and versions; the double modulo keeps it non-negative).
const bucketOf = (k: string) => `(((hashtextextended(${k}, 0) % ${OUTBOX_KEY_LOCK_BUCKETS}) + ${OUTBOX_KEY_LOCK_BUCKETS}) % ${OUTBOX_KEY_LOCK_BUCKETS})`;

/**
 * Inserts one event. The key's bucket lock (an advisory transaction lock, taken in the
 * FROM clause, so before the identity value is drawn) serialises producers of one key
 * until they commit: a later seq of a key therefore never commits before an earlier
 * one, which is what lets relays publish a key's events in seq order = commit order.
 * Events without a key take no lock.
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
                         ELSE pg_advisory_xact_lock(hashtextextended($5 || ${bucketOf('$2::text')}::text, 0)) END) AS lock
     RETURNING id::text AS id`,
    [e.type, e.key, e.payload, e.headers, lockPrefix],
  );
  return rows[0].id;
}

/**
 * Inserts a batch in array order (WITH ORDINALITY + ORDER BY draws seq values in that
 * order), in one statement with its producer locks: the buckets of the batch's keys, in
 * bucket order so two batches cannot deadlock, taken by an InitPlan that gates the
 * insert, so before any identity value is drawn (see {@link outboxInsertOne}).
 * `lockTimeoutMs` (not null): `lock_timeout` for the rest of the transaction, set before
 * the locks (a grouped insert must not hold its other callers behind one busy key).
 * One round trip: committed by itself when sent outside a transaction (the grouped
 * adds: BEGIN, lock_timeout, locks, insert and COMMIT were five; issue 19).
 */
export async function outboxInsertMany(
  ex: Executor,
  s: string,
  cols: { types: string[]; keys: (string | null)[]; payloads: (string | null)[]; headers: string[] },
  locks: { prefix: string; timeoutMs: number | null },
): Promise<string[]> {
  const keyed = cols.keys.some((k) => k !== null);
  const timeout = keyed && locks.timeoutMs !== null;
  const { rows } = await ex.query<{ id: string; seq: string }>(
    `${keyed ? `WITH locks AS MATERIALIZED (
       SELECT count(pg_advisory_xact_lock(hashtextextended($5 || b::text, 0))) AS n
         FROM (SELECT DISTINCT ${bucketOf('k')} AS b FROM unnest($2::text[]) AS k WHERE k IS NOT NULL ORDER BY b) AS buckets
        ${timeout ? `WHERE (SELECT set_config('lock_timeout', $6, true)) IS NOT NULL` : ''}
     )` : ''}
     INSERT INTO ${s}.outbox_events (type, key, payload, headers)
     SELECT t, k, p::jsonb, h::jsonb
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(t, k, p, h, ord)
      ${keyed ? 'WHERE (SELECT n FROM locks) IS NOT NULL' : ''}
      ORDER BY ord
     RETURNING id::text AS id, seq`,
    [cols.types, cols.keys, cols.payloads, cols.headers, ...(keyed ? [locks.prefix] : []), ...(timeout ? [`${locks.timeoutMs}ms`] : [])],
  );
  // RETURNING order follows insertion order in practice, but sort by seq to be sure.
  return rows.sort((a, b) => Number(BigInt(a.seq) - BigInt(b.seq))).map((r) => r.id);
}

/**
 * Claims one batch (at most `batchSize` events) as runs and holds it, in one statement
 * that commits on its own (`outbox_claim`, migration 026; no transaction around it):
 * due keyless events (up to half the batch while keyed events wait, all of it
 * otherwise), the due heads of keys found round-robin from `cursor` (a loose index scan
 * over the `(key, seq)` partial index: one probe per key, so a key's backlog is never
 * walked; windows of room + 16 keys, at most 8, wrapping around once), each head
 * extended by its key's next pending events while the batch has room (a run is cut at
 * its first event locked elsewhere or not due), every row locked FOR UPDATE SKIP LOCKED
 * and skipped when a hold names its key or seq; then the hold (`outbox_hold`, migration 026).
 * Each statement inside takes its own snapshot, as the separate statements did; what
 * changed is one round trip instead of seven to nine (issue 19: 2.3 ms a claim, 1.8 of
 * them round trips). Returns the held runs in order (key runs in head order, then one
 * run per keyless event), the cursor for the next claim, and `suspects` (whether the
 * next claim looks for abandoned events first).
 */
export async function outboxClaim(
  ex: Executor,
  s: string,
  token: string,
  leaseMs: number,
  batchSize: number,
  cursor: string | null,
  hints: { keys: readonly string[]; floors: readonly string[] } | null = null,
): Promise<{ runs: OutboxEventRow[][]; cursor: string | null; suspects: boolean; heads: { keys: string[]; seqs: string[] } | null }> {
  type Row = OutboxEventRow & { run: number | null; next_cursor: string | null; suspects: boolean; head_keys?: string[] | null; head_seqs?: string[] | null };
  // With hints: migration 030's outbox_claim_hinted, which starts each hinted key's probe
  // at its floor and returns every head it found (the relay's next floors).
  const { rows } = hints
    ? await ex.query<Row>(
        `SELECT seq, id, type, key, payload, headers, attempts, created_at, run, next_cursor, suspects, head_keys, head_seqs
           FROM ${s}.outbox_claim_hinted($1::uuid, $2::float8, $3::int, $4::text, $5::text[], $6::bigint[])`,
        [token, leaseMs, batchSize, cursor, hints.keys, hints.floors],
        PREPARE,
      )
    : await ex.query<Row>(
        `SELECT seq, id, type, key, payload, headers, attempts, created_at, run, next_cursor, suspects
           FROM ${s}.outbox_claim($1::uuid, $2::float8, $3::int, $4::text)`,
        [token, leaseMs, batchSize, cursor],
        PREPARE,
      );
  const runs: OutboxEventRow[][] = [];
  let last: number | null = null;
  for (const { run, next_cursor: _c, suspects: _s, head_keys: _k, head_seqs: _q, ...row } of rows) {
    if (run === null) continue;
    if (run !== last) runs.push([]), (last = run);
    runs[runs.length - 1].push(row);
  }
  return {
    runs,
    cursor: rows[0]?.next_cursor ?? null,
    suspects: rows[0]?.suspects ?? true,
    heads: hints ? { keys: rows[0]?.head_keys ?? [], seqs: rows[0]?.head_seqs ?? [] } : null,
  };
}

/** The payload of the wake-up a redrive sends: relays drop their key floors (see `KeyFloors`). */
export const REDRIVE_PAYLOAD = 'redrive';

/** Text kept as `last_error` of an event whose last lease ended with no outcome recorded. */
export const ABANDONED_EVENT_ERROR = 'no outcome recorded: the relay died, lost its connection or stalled past its lease';

/**
 * Finds one abandoned event: leased, due again (its lease ended) and still pending, so
 * its relay never recorded an outcome (it died, lost its connection, or its publish ran
 * past the lease). Only one that heads its key (no older pending event of the key), or
 * a keyless one. The relay takes it alone, before any other claim: an event that kills
 * its relay every time uses up its own attempts, not those of a batch. The ordinary
 * claims skip leased rows (`lease IS NULL`). Walks the small leased index (migration 010).
 *
 * First (`ended`, `abandoned`) it ends the holds whose time ran out (see
 * `outbox_hold`; SKIP LOCKED, so a hold its relay is settling right now is left to
 * that relay): each such hold is deleted and its still-pending events become abandoned
 * events — the attempt the hold counted moves onto them (attempts + 1), `lease` = the
 * hold's token, due now. A data-modifying CTE's rows are not seen by the rest of its
 * statement, so they are found by the next claim; this claim's later statements see
 * them leased and skip them. The relay whose hold it was finds it gone when it settles
 * (fenced). Usually no hold has ended and this costs a scan of the small holds table.
 */
export async function outboxClaimAbandoned(ex: Executor, s: string): Promise<OutboxEventRow | undefined> {
  const { rows } = await ex.query<OutboxEventRow>(
    `WITH ended AS (
       DELETE FROM ${s}.outbox_holds AS h
        WHERE h.token IN (SELECT x.token FROM ${s}.outbox_holds AS x WHERE x.held_until <= now() FOR UPDATE SKIP LOCKED)
       RETURNING h.token, h.seqs
     ), abandoned AS (
       -- seq = ANY(ARRAY(...)) is for the plan: an index scan on the primary key, never a join over the table.
       UPDATE ${s}.outbox_events AS a
          SET attempts = a.attempts + 1, next_attempt_at = now(),
              lease = (SELECT g.token FROM ended AS g WHERE a.seq = ANY(g.seqs) LIMIT 1)
        WHERE a.seq = ANY(ARRAY(SELECT unnest(g.seqs) FROM ended AS g))
          AND a.published_at IS NULL AND a.dead_at IS NULL
     )
     SELECT ${EVENT_COLUMNS}
       FROM ${s}.outbox_events AS e
      WHERE e.lease IS NOT NULL AND e.published_at IS NULL AND e.dead_at IS NULL AND e.next_attempt_at <= now()
        AND (e.key IS NULL OR NOT EXISTS (
              SELECT 1 FROM ${s}.outbox_events AS p
               WHERE p.key = e.key AND p.seq < e.seq AND p.published_at IS NULL AND p.dead_at IS NULL))
      ORDER BY e.seq
      LIMIT 1
      FOR UPDATE OF e SKIP LOCKED`,
    [],
    PREPARE,
  );
  return rows[0];
}

/**
 * Leases claimed events (still locked by the claim transaction, which commits right
 * after): counts the attempt (attempts + 1), hides them from every claim until the
 * lease ends (`next_attempt_at`), and stamps them with `token`. An abandoned event
 * that has had `maxAttempts` attempts already is dead-lettered instead. Returns, per
 * seq, the attempts after this statement and whether it died. The claim transaction
 * it ends commits without waiting for the WAL flush (see {@link LEASE_COMMITS_ASYNC}).
 */
export async function outboxLease(
  ex: Executor,
  s: string,
  seqs: string[],
  token: string,
  leaseMs: number,
  maxAttempts: number,
): Promise<{ seq: string; attempts: number; dead: boolean }[]> {
  if (seqs.length === 0) return [];
  const dies = 'e.lease IS NOT NULL AND e.attempts >= $4';
  const { rows } = await ex.query<{ seq: string; attempts: number; dead: boolean }>(
    `UPDATE ${s}.outbox_events AS e
        SET attempts = CASE WHEN ${dies} THEN e.attempts ELSE e.attempts + 1 END,
            dead_at = CASE WHEN ${dies} THEN now() END,
            last_error = CASE WHEN ${dies} THEN $5 ELSE e.last_error END,
            next_attempt_at = CASE WHEN ${dies} THEN e.next_attempt_at ELSE now() + $3::float8 * interval '1 millisecond' END,
            lease = CASE WHEN ${dies} THEN NULL ELSE $2::uuid END
      WHERE e.seq = ANY($1::bigint[]) AND ${LEASE_COMMITS_ASYNC}
     RETURNING e.seq::text AS seq, e.attempts, e.dead_at IS NOT NULL AS dead`,
    [seqs, token, leaseMs, maxAttempts, ABANDONED_EVENT_ERROR],
    PREPARE,
  );
  return rows;
}

/**
 * Records the outcome of a held batch (see `outbox_hold`, migration 026) in one statement,
 * outside any transaction of the publish: deletes the hold by its token and, only if
 * it was still there, marks the acknowledged events published and the failed ones
 * retrying (attempts + 1: the attempt the hold counted) or dead at `maxAttempts`;
 * events not tried need no write (the hold's end gives them back, attempt uncounted).
 * A hold that is gone (its time ran out and a claim turned its events into abandoned
 * ones) matches nothing: a slow relay cannot mark what it no longer holds. `held`:
 * whether the hold was still there (everything recorded) or not (everything refused).
 */
export async function outboxSettleHeld(
  ex: Executor,
  s: string,
  token: string,
  settle: Omit<OutboxSettle, 'released'>,
  maxAttempts: number,
): Promise<{ held: boolean; published: Set<string>; failed: Map<string, { attempts: number; dead: boolean }> }> {
  const { rows } = await ex.query<{ what: 'h' | 'p' | 'f'; seq: string | null; attempts: number | null; dead: boolean | null }>(
    `WITH h AS (
       DELETE FROM ${s}.outbox_holds WHERE token = $1::uuid RETURNING token
     ), pub AS (
       UPDATE ${s}.outbox_events AS e SET published_at = now(), last_error = NULL
        WHERE e.seq = ANY($2::bigint[]) AND e.published_at IS NULL AND e.dead_at IS NULL AND EXISTS (SELECT 1 FROM h)
       RETURNING e.seq
     ), fail AS (
       UPDATE ${s}.outbox_events AS e
          SET attempts = e.attempts + 1,
              last_error = f.err,
              next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
              dead_at = CASE WHEN e.attempts + 1 >= $6 THEN now() END
         FROM unnest($3::bigint[], $4::text[], $5::float8[]) AS f(seq, err, delay_ms)
        -- seq = ANY is for the plan: joined to unnest alone, Postgres may hash the whole table.
        WHERE e.seq = ANY($3::bigint[]) AND e.seq = f.seq AND e.published_at IS NULL AND e.dead_at IS NULL AND EXISTS (SELECT 1 FROM h)
       RETURNING e.seq, e.attempts, e.dead_at IS NOT NULL AS dead
     )
     SELECT 'h' AS what, NULL::text AS seq, NULL::int AS attempts, NULL::boolean AS dead FROM h
     UNION ALL SELECT 'p', seq::text, NULL, NULL FROM pub
     UNION ALL SELECT 'f', seq::text, attempts, dead FROM fail`,
    [
      token,
      settle.published,
      settle.failed.map((f) => f.seq),
      settle.failed.map((f) => f.error),
      settle.failed.map((f) => f.delayMs),
      maxAttempts,
    ],
    PREPARE,
  );
  const out = { held: false, published: new Set<string>(), failed: new Map<string, { attempts: number; dead: boolean }>() };
  for (const r of rows) {
    if (r.what === 'h') out.held = true;
    else if (r.what === 'p') out.published.add(r.seq!);
    else out.failed.set(r.seq!, { attempts: r.attempts!, dead: r.dead! });
  }
  return out;
}

/** What a relay records after publishing a leased batch. */
export interface OutboxSettle {
  /** Acknowledged by the sink. */
  published: string[];
  /** Failed attempts: retried after `delayMs` (database time), or dead at `maxAttempts`. */
  failed: { seq: string; error: string; delayMs: number }[];
  /** Leased but not tried (after a failure in their run, or past the lease): back, attempt uncounted. */
  released: string[];
}

/**
 * Records the outcome of a leased batch in one statement, outside any transaction of
 * the publish, every row fenced by the lease token: a row whose lease ended and was
 * leased again by another relay (or published, or redriven) matches nothing, so a
 * slow relay cannot mark what it no longer holds. The attempt was counted by the lease:
 * a failure is dead-lettered when attempts reach `maxAttempts`. Returns what matched.
 */
export async function outboxSettle(
  ex: Executor,
  s: string,
  token: string,
  settle: OutboxSettle,
  maxAttempts: number,
): Promise<{ published: Set<string>; failed: Map<string, { attempts: number; dead: boolean }>; released: Set<string> }> {
  const { rows } = await ex.query<{ what: 'p' | 'f' | 'r'; seq: string; attempts: number | null; dead: boolean | null }>(
    `WITH pub AS (
       UPDATE ${s}.outbox_events AS e SET published_at = now(), next_attempt_at = now(), lease = NULL, last_error = NULL
        WHERE e.seq = ANY($2::bigint[]) AND e.lease = $1::uuid
       RETURNING e.seq
     ), fail AS (
       UPDATE ${s}.outbox_events AS e
          SET last_error = f.err,
              next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
              dead_at = CASE WHEN e.attempts >= $6 THEN now() END,
              lease = NULL
         FROM unnest($3::bigint[], $4::text[], $5::float8[]) AS f(seq, err, delay_ms)
        -- seq = ANY is for the plan: joined to unnest alone, Postgres may hash the whole table.
        WHERE e.seq = ANY($3::bigint[]) AND e.seq = f.seq AND e.lease = $1::uuid
       RETURNING e.seq, e.attempts, e.dead_at IS NOT NULL AS dead
     ), rel AS (
       UPDATE ${s}.outbox_events AS e SET attempts = e.attempts - 1, next_attempt_at = now(), lease = NULL
        WHERE e.seq = ANY($7::bigint[]) AND e.lease = $1::uuid
       RETURNING e.seq
     )
     SELECT 'p' AS what, seq::text AS seq, NULL::int AS attempts, NULL::boolean AS dead FROM pub
     UNION ALL SELECT 'f', seq::text, attempts, dead FROM fail
     UNION ALL SELECT 'r', seq::text, NULL, NULL FROM rel`,
    [
      token,
      settle.published,
      settle.failed.map((f) => f.seq),
      settle.failed.map((f) => f.error),
      settle.failed.map((f) => f.delayMs),
      maxAttempts,
      settle.released,
    ],
    PREPARE,
  );
  const out = { published: new Set<string>(), failed: new Map<string, { attempts: number; dead: boolean }>(), released: new Set<string>() };
  for (const r of rows) {
    if (r.what === 'p') out.published.add(r.seq);
    else if (r.what === 'f') out.failed.set(r.seq, { attempts: r.attempts!, dead: r.dead! });
    else out.released.add(r.seq);
  }
  return out;
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

/**
 * The statement of {@link outboxStats} (`$1`: estimate the published count). Pending,
 * due, retrying and the oldest pending event read the pending partial index and the
 * backlog's rows; dead ones the dead partial index. Published events, the bulk of the
 * table, are counted exactly (a scan of the published index) or, with `$1`, estimated
 * as the table's `pg_class.reltuples` (as of the last VACUUM/ANALYZE) less the pending
 * and dead events; exact still when the table was never analyzed. Tests EXPLAIN it.
 */
export const outboxStatsSql = (s: string): string =>
  `WITH p AS (
     SELECT count(*)::int AS pending,
            count(*) FILTER (WHERE next_attempt_at <= now())::int AS due,
            count(*) FILTER (WHERE attempts > 0 AND NOT (lease IS NOT NULL AND next_attempt_at > now()))::int AS retrying,
            (extract(epoch FROM now() - min(created_at)) * 1000)::float8 AS oldest_pending_age_ms
       FROM ${s}.outbox_events WHERE published_at IS NULL AND dead_at IS NULL
   ), d AS (
     SELECT count(*)::int AS dead FROM ${s}.outbox_events WHERE dead_at IS NOT NULL
   ), t AS (
     SELECT reltuples FROM pg_class WHERE oid = $2::regclass
   )
   SELECT p.pending, p.due, p.retrying, d.dead, p.oldest_pending_age_ms,
          CASE WHEN $1::boolean AND t.reltuples >= 0 THEN greatest(0, t.reltuples::bigint - p.pending - d.dead)::float8
               ELSE (SELECT count(*) FROM ${s}.outbox_events WHERE published_at IS NOT NULL)::float8 END AS published,
          ($1::boolean AND t.reltuples >= 0) AS published_estimated
     FROM p, d, t`;

/** Counts by state (published estimated when `estimate`; see {@link outboxStatsSql}). */
export async function outboxStats(ex: Executor, s: string, estimate = false): Promise<OutboxStatsRow & { published_estimated: boolean }> {
  const { rows } = await ex.query<OutboxStatsRow & { published_estimated: boolean }>(outboxStatsSql(s), [estimate, `${s}.outbox_events`]);
  return { ...rows[0], published: Number(rows[0].published) };
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
 * relays (the insert trigger does not fire on UPDATE) with {@link REDRIVE_PAYLOAD}: the
 * events are pending again below their keys' floors. `ids` null = every dead event.
 */
export async function outboxRedrive(ex: Executor, s: string, channel: string | null, ids: string[] | null): Promise<number> {
  const { rows } = await ex.query<{ n: number }>(
    `WITH redriven AS (
       UPDATE ${s}.outbox_events
          SET dead_at = NULL, attempts = 0, next_attempt_at = now(), lease = NULL
        WHERE dead_at IS NOT NULL AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
       RETURNING 1)
     SELECT count(*)::int AS n, ${wakeSql('$2', `'${REDRIVE_PAYLOAD}'`)} FROM redriven`,
    [ids, channel],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Deletes events whose `column` (published_at or dead_at: each has a partial index) is
 * older than `olderThanMs` (database time), at most `limit`; returns how many. Batched
 * through a CTE with LIMIT so a large prune never holds one huge transaction.
 */
async function outboxPruneBy(ex: Executor, s: string, column: 'published_at' | 'dead_at', olderThanMs: number, limit: number): Promise<number> {
  const { rowCount } = await ex.query(
    `WITH doomed AS (
       SELECT seq FROM ${s}.outbox_events
        WHERE ${column} IS NOT NULL AND ${column} < now() - $1 * interval '1 millisecond'
        LIMIT $2)
     DELETE FROM ${s}.outbox_events AS e USING doomed WHERE e.seq = doomed.seq`,
    [olderThanMs, limit],
  );
  return rowCount;
}

/** Deletes published events older than `olderThanMs` (database time); returns how many. */
export function outboxPrunePublished(ex: Executor, s: string, olderThanMs: number, limit: number): Promise<number> {
  return outboxPruneBy(ex, s, 'published_at', olderThanMs, limit);
}

/** One event with its delivery state, or undefined (`id` a UUID). */
export async function outboxGet(
  ex: Executor,
  s: string,
  id: string,
): Promise<(OutboxEventRow & { last_error: string | null; next_attempt_at: Date; published_at: Date | null; dead_at: Date | null }) | undefined> {
  const { rows } = await ex.query<OutboxEventRow & { last_error: string | null; next_attempt_at: Date; published_at: Date | null; dead_at: Date | null }>(
    `SELECT ${EVENT_COLUMNS}, e.last_error, e.next_attempt_at, e.published_at, e.dead_at FROM ${s}.outbox_events AS e WHERE e.id = $1::uuid`,
    [id],
  );
  return rows[0];
}

/** Deletes dead-lettered events dead for longer than `olderThanMs` (database time), at most `limit`; returns how many. */
export function outboxPruneDead(ex: Executor, s: string, olderThanMs: number, limit: number): Promise<number> {
  return outboxPruneBy(ex, s, 'dead_at', olderThanMs, limit);
}
