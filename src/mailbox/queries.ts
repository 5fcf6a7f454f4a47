/**
 * The mailbox's SQL. Every statement takes `$n` parameters; the only identifier
 * spliced in is the schema, validated and quoted by `schemaIdent`.
 */
import { LEASE_COMMITS_ASYNC } from '../internal/lease.js';
import { wakeSql } from '../notifier/pressure.js';
import type { Executor } from '../driver/types.js';
import { retryDelaySql, type RetryPolicy } from '../internal/backoff.js';

/** A message row as the consume path returns it. */
export interface MessageRow {
  id: string;
  seq: string;
  destination: string;
  topic: string | null;
  format: 'text' | 'json';
  payload: string;
  attempts: number;
  /** created_at in epoch milliseconds (a number parses far cheaper than a timestamp). */
  created_ms: number;
}

/** The columns a consumer sees. */
const RETURNED = 'm.id, m.seq, m.destination, m.topic, m.format, m.payload, m.attempts, (extract(epoch FROM m.created_at) * 1000)::float8 AS created_ms';

/** One message to insert (already validated and encoded). */
export interface MessageInsert {
  id: string;
  destination: string;
  topic: string | null;
  format: 'text' | 'json';
  payload: string;
}

/**
 * Inserts a batch in one statement. Returns the ids this statement created and their
 * destinations.
 *
 * - `ON CONFLICT (id) DO NOTHING` makes the id an idempotency key: a second send of
 *   the same id (a retry after a commit whose outcome was unknown, or a concurrent
 *   send) inserts nothing; a concurrent one waits for the first transaction and then
 *   skips, or inserts if the first rolled back. RETURNING lists only the rows this
 *   statement created.
 * - With `channel`, the same statement runs one
 *   `pg_notify(channel, destination)` per distinct destination of the rows actually
 *   created: a batch of 10,000 costs one NOTIFY per destination, and Postgres merges
 *   identical notifications of one transaction. The payload names the destination only
 *   (NOTIFY is a wake-up). The wake-up CTE is referenced from the final SELECT so it
 *   runs (a SELECT CTE nothing references is never evaluated), once, as an InitPlan.
 *   Batches of up to 64 rows call pg_notify in RETURNING instead (per created row,
 *   folded by Postgres into one notification per destination): cheaper at that size.
 *   Sends without a caller's transaction come here grouped (see `SendGroup`), so one
 *   process has one notifying commit at a time.
 * - Without `channel` nothing is notified.
 */
/** Up to this many rows, a batch notifies from RETURNING (cheaper than the DISTINCT CTE). */
const SMALL_BATCH = 64;

export async function mailboxSendBatch(
  executor: Executor,
  schema: string,
  rows: readonly MessageInsert[],
  channel: string | null,
  lockTimeoutMs: number | null = null,
): Promise<{ created: Set<string>; destinations: string[] }> {
  if (rows.length === 1 && channel !== null && lockTimeoutMs === null) return mailboxSendOne(executor, schema, rows[0], channel);
  const params: unknown[] = [
    rows.map((r) => r.id),
    rows.map((r) => r.destination),
    rows.map((r) => r.topic),
    rows.map((r) => r.format),
    rows.map((r) => r.payload),
  ];
  // With lockTimeoutMs (a group of several callers' sends, see SendGroup): the statement
  // first sets lock_timeout for its own transaction (an InitPlan, evaluated before the
  // first row is inserted), so waiting on an id that an open transaction is inserting
  // fails it (55P03) instead of holding every caller of the group.
  const guard = lockTimeoutMs === null ? '' : `\n       WHERE (SELECT set_config('lock_timeout', $${channel === null ? 6 : 7}, true)) IS NOT NULL`;
  const insert = `INSERT INTO ${schema}.mailbox_messages (id, destination, topic, format, payload)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])${guard}
       ON CONFLICT (id) DO NOTHING
       RETURNING id, destination`;
  const text =
    channel === null
      ? insert
      : rows.length <= SMALL_BATCH
        ? // A small batch (a group of concurrent sends): pg_notify per created row in
          // RETURNING; Postgres folds identical notifications of one transaction into one.
          `${insert}, pg_notify($6::text, destination) IS NULL AS woke`
        : `WITH ins AS (${insert}),
         woke AS (SELECT count(pg_notify($6::text, d.destination)) AS n FROM (SELECT DISTINCT destination FROM ins) d)
         SELECT ins.id, ins.destination FROM ins WHERE (SELECT n FROM woke) >= 0`;
  if (channel !== null) params.push(channel);
  if (lockTimeoutMs !== null) params.push(`${Math.max(1, Math.round(lockTimeoutMs))}ms`);
  // Prepared: parsing and planning this statement costs several times running it.
  const { rows: created } = await executor.query<{ id: string; destination: string }>(text, params, { prepare: true });
  return { created: new Set(created.map((r) => r.id)), destinations: [...new Set(created.map((r) => r.destination))] };
}

/**
 * The one-message form of {@link mailboxSendBatch} (a lone send is the common case):
 * scalar parameters instead of arrays, and the wake-up in `RETURNING`, which runs only
 * for a row actually inserted. Same semantics, a cheaper statement for both sides.
 */
async function mailboxSendOne(executor: Executor, schema: string, row: MessageInsert, channel: string): Promise<{ created: Set<string>; destinations: string[] }> {
  const { rows } = await executor.query<{ id: string }>(
    `INSERT INTO ${schema}.mailbox_messages (id, destination, topic, format, payload)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (id) DO NOTHING
     RETURNING id, pg_notify($6, destination) IS NULL AS woke`,
    [row.id, row.destination, row.topic, row.format, row.payload, channel],
    { prepare: true },
  );
  return rows.length > 0 ? { created: new Set([row.id]), destinations: [row.destination] } : { created: new Set(), destinations: [] };
}

/**
 * Takes up to `limit` ready messages of one destination and marks them consumed, in
 * the executor's transaction: the mark commits (or rolls back) with it.
 *
 * `FOR UPDATE SKIP LOCKED` with the `LIMIT` inside a CTE: concurrent consumers each
 * lock different rows without waiting on each other, and the LIMIT is applied once (a
 * `WHERE id IN (SELECT ... LIMIT)` may be re-evaluated and take more). A row that a
 * crashed consumer held is unlocked when its transaction rolls back, and is ready again.
 *
 * The UPDATE finds the locked row versions by ctid (a TID scan, no second descent of
 * the primary key per row). The ctids are stable while we hold the locks. A row updated
 * by another transaction after this statement's snapshot (a redrive, a failure record)
 * is locked in a version the snapshot cannot see, and the UPDATE skips it: it stays
 * ready, not taken this time, never twice; whatever made it ready again also woke
 * the destination (a redrive notifies; a failure record arms the retry wake-up).
 */
export async function mailboxClaim(executor: Executor, schema: string, destination: string, topic: string | null, limit: number): Promise<MessageRow[]> {
  const { rows } = await executor.query<MessageRow>(
    `WITH next AS (
       SELECT ctid FROM ${schema}.mailbox_messages
        WHERE destination = $1 AND state = 'ready' AND visible_at <= now()
          AND ($2::text IS NULL OR topic = $2::text)
        ORDER BY seq
        LIMIT $3
        FOR UPDATE SKIP LOCKED
     )
     UPDATE ${schema}.mailbox_messages m
        SET state = 'consumed', consumed_at = now(), attempts = m.attempts + 1, lease = NULL
      WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM next))
     RETURNING ${RETURNED}`,
    // Not prepared: a generic plan made while the table was small (a consumer started on
    // an empty mailbox) kept walking far more of the table as it grew, until an ANALYZE:
    // 872 µs and 243 buffers per take against 137 µs (plan included) and 29 unprepared,
    // in a 5 s run from an empty table. The plan is cheap beside that risk.
    [destination, topic, limit],
  );
  // RETURNING has no order: by seq (decimal strings of positive bigints: shorter is smaller).
  if (rows.length > 1) rows.sort((a, b) => a.seq.length - b.seq.length || (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  return rows;
}

/**
 * A leased row: `state` 'dead' when it died in the lease; `alone` when an abandoned row
 * was taken alone; `ctid` the row version the lease wrote, which the statements fenced
 * by the lease find it by (see {@link mailboxConsumeLeased}).
 */
export type LeasedRow = MessageRow & { state: 'ready' | 'dead'; alone: boolean; ctid: string };

/** Text kept as `last_error` of a message whose last lease ended with no outcome recorded. */
export const ABANDONED_ERROR = 'no outcome recorded: the consumer died, lost its connection or stalled before its lease ended';

/**
 * A consumer's lease: takes up to `limit` ready messages of one destination and, in this
 * one statement (its own commit, before any handler runs), counts the attempt (attempts
 * + 1), hides them until the lease ends (`visible_at`) and stamps them with `token`.
 * A process that dies in its handler has thus still used an attempt.
 *
 * Same shape as {@link mailboxClaim} (SKIP LOCKED + LIMIT in a CTE, then the UPDATE by
 * ctid). A row whose lease is still set when it is ready again was abandoned: its
 * holder never recorded an outcome (it died, lost its connection, or took longer than
 * the lease to lock it). Such a row is taken alone (a batch of one, so a message that
 * kills its process does not use up the attempts of the messages taken with it), and
 * one that has had `maxAttempts` deliveries already moves to the dead-letter state
 * here instead (state 'dead' in the result; no handler runs).
 *
 * Its commit does not wait for the WAL flush ({@link LEASE_COMMITS_ASYNC}).
 */
export async function mailboxLease(
  executor: Executor,
  schema: string,
  destination: string,
  topic: string | null,
  limit: number,
  token: string,
  leaseMs: number,
  maxAttempts: number,
): Promise<LeasedRow[]> {
  const dies = 'm.lease IS NOT NULL AND m.attempts >= $6';
  const { rows } = await executor.query<LeasedRow>(
    `WITH next AS (
       SELECT ctid, seq, lease IS NOT NULL AS abandoned FROM ${schema}.mailbox_messages
        WHERE destination = $1 AND state = 'ready' AND visible_at <= now()
          AND ($2::text IS NULL OR topic = $2::text)
        ORDER BY seq
        LIMIT $3
        FOR UPDATE SKIP LOCKED
     ), pick AS (
       SELECT ctid FROM next WHERE NOT EXISTS (SELECT 1 FROM next WHERE abandoned)
       UNION ALL
       (SELECT ctid FROM next WHERE abandoned ORDER BY seq LIMIT 1)
     )
     UPDATE ${schema}.mailbox_messages m
        SET attempts = CASE WHEN ${dies} THEN m.attempts ELSE m.attempts + 1 END,
            state = CASE WHEN ${dies} THEN 'dead' ELSE 'ready' END,
            dead_at = CASE WHEN ${dies} THEN now() END,
            last_error = CASE WHEN ${dies} THEN $7 ELSE m.last_error END,
            visible_at = CASE WHEN ${dies} THEN m.visible_at ELSE now() + $5::float8 * interval '1 millisecond' END,
            lease = CASE WHEN ${dies} THEN NULL ELSE $4::uuid END
      WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM pick)) AND ${LEASE_COMMITS_ASYNC}
     RETURNING ${RETURNED}, m.state, (SELECT bool_or(abandoned) FROM next) IS TRUE AS alone, m.ctid::text AS ctid`,
    [destination, topic, limit, token, leaseMs, maxAttempts, ABANDONED_ERROR],
  );
  if (rows.length > 1) rows.sort((a, b) => a.seq.length - b.seq.length || (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  return rows;
}

/**
 * Milliseconds until the next hidden message of a destination becomes visible (a lease
 * or a retry delay ending), or null when none is hidden. Run after a lease found
 * nothing, so a consumer wakes when a crashed consumer's lease ends instead of at the
 * safety poll. Walks only the destination's ready rows (the partial index), and all of
 * them are hidden when the lease found none.
 */
export async function mailboxNextVisible(executor: Executor, schema: string, destination: string, topic: string | null): Promise<number | null> {
  const { rows } = await executor.query<{ ms: number | null }>(
    `SELECT (extract(epoch FROM min(visible_at) - now()) * 1000)::float8 AS ms
       FROM ${schema}.mailbox_messages
      WHERE destination = $1 AND state = 'ready' AND ($2::text IS NULL OR topic = $2::text)`,
    [destination, topic],
  );
  const ms = rows[0]?.ms;
  return ms == null ? null : Math.max(0, Number(ms));
}

/**
 * Consumes leased messages in the caller's (the consume) transaction, fenced by the
 * lease token: a message whose lease ended and was taken again by another consumer (or
 * consumed, or redriven) matches nothing. Returns the ids it holds now: the row locks
 * keep every other consumer off them until this transaction ends, whatever the lease.
 * With `statementTimeoutMs`, sets `statement_timeout` for the rest of the transaction
 * (SET LOCAL semantics, from an InitPlan evaluated before the UPDATE).
 *
 * Rows are found by the ctid the lease returned (a TID scan). Found by `id = ANY` with
 * `state = 'ready'`, the planner took the partial index of ready rows and filtered
 * every waiting message of the mailbox on each take (13 ms a take of 100 over a backlog
 * of 20,000, growing with the backlog; 1.3 ms now). So the statements fenced by a lease
 * leave `state = 'ready'` out on purpose: only a ready row carries a lease (every
 * transition out of 'ready' clears it), so `lease = token` implies it, and without the
 * clause the partial index is not a candidate. The ctids go through `ARRAY(SELECT
 * unnest(...))`, an array whose length the planner does not know: with the length known
 * it costs a TID scan at one random page per row and, on a table of a few hundred pages,
 * prefers a sequential scan. While our lease is on a row only we update it,
 * so its ctid stays; a row moved meanwhile (VACUUM FULL, another consumer's lease after
 * ours ended) matches nothing and is treated like a lost lease: it is delivered again
 * once its lease ends, never twice.
 */
export async function mailboxConsumeLeased(executor: Executor, schema: string, rows: readonly { id: string; ctid: string }[], token: string, statementTimeoutMs: number | null): Promise<Set<string>> {
  const guard = statementTimeoutMs === null ? '' : `AND (SELECT set_config('statement_timeout', $3, true)) IS NOT NULL`;
  const params: unknown[] = [rows.map((r) => r.ctid), token];
  if (statementTimeoutMs !== null) params.push(`${Math.max(1, Math.round(statementTimeoutMs))}ms`);
  const { rows: held } = await executor.query<{ id: string }>(
    `UPDATE ${schema}.mailbox_messages
        SET state = 'consumed', consumed_at = now(), lease = NULL
      WHERE ctid = ANY(ARRAY(SELECT unnest($1::tid[]))) AND lease = $2::uuid ${guard}
     RETURNING id`,
    params,
  );
  return new Set(held.map((r) => r.id));
}

/**
 * Records a failed handler run after its transaction rolled back, fenced by the lease
 * token: keeps the error, and either delays the next delivery (the one retry policy, in
 * database time, n = attempts, already counted by the lease) or, at `maxAttempts`, moves
 * the message to the dead-letter state. Does nothing if the lease was lost meanwhile.
 * Found by the ctid of the lease (the rolled-back consume left that version in place).
 */
export async function mailboxRecordFailure(
  executor: Executor,
  schema: string,
  row: { id: string; ctid: string },
  token: string,
  error: string,
  maxAttempts: number,
  retry: RetryPolicy,
): Promise<{ state: 'ready' | 'dead'; attempts: number; delayMs: number } | undefined> {
  const { rows } = await executor.query<{ state: 'ready' | 'dead'; attempts: number; delay_ms: number }>(
    `UPDATE ${schema}.mailbox_messages
        SET last_error = $2,
            state = CASE WHEN attempts >= $3 THEN 'dead' ELSE 'ready' END,
            dead_at = CASE WHEN attempts >= $3 THEN now() END,
            visible_at = now() + ${retryDelaySql('attempts', '$4', '$5', '$6')} * interval '1 millisecond',
            lease = NULL
      WHERE ctid = $1::tid AND lease = $7::uuid
     RETURNING state, attempts, (extract(epoch FROM visible_at - now()) * 1000)::float8 AS delay_ms`,
    [row.ctid, error, maxAttempts, retry.baseMs, retry.maxMs, retry.jitter, token],
  );
  const r = rows[0];
  return r ? { state: r.state, attempts: r.attempts, delayMs: Number(r.delay_ms) } : undefined;
}

/**
 * Gives leased messages back unused (the others of a batch whose handler threw, or a
 * take abandoned by stop): ready at once, the attempt uncounted. Fenced by the token.
 */
export async function mailboxRelease(executor: Executor, schema: string, rows: readonly { ctid: string }[], token: string): Promise<number> {
  if (rows.length === 0) return 0;
  const { rowCount } = await executor.query(
    `UPDATE ${schema}.mailbox_messages
        SET attempts = attempts - 1, visible_at = now(), lease = NULL
      WHERE ctid = ANY(ARRAY(SELECT unnest($1::tid[]))) AND lease = $2::uuid`,
    [rows.map((r) => r.ctid), token],
  );
  return rowCount;
}

/** Puts dead messages of a destination (all, or the given ids) back to ready with attempts reset, and wakes the destination. */
export async function mailboxRedrive(executor: Executor, schema: string, channel: string | null, destination: string, ids: readonly string[] | null): Promise<number> {
  const { rows } = await executor.query<{ n: number }>(
    `WITH moved AS (
       UPDATE ${schema}.mailbox_messages
          SET state = 'ready', attempts = 0, visible_at = now(), dead_at = NULL, lease = NULL
        WHERE destination = $1 AND state = 'dead' AND ($2::text[] IS NULL OR id = ANY($2::text[]))
       RETURNING id
     )
     SELECT count(*)::int AS n, CASE WHEN count(*) > 0 THEN ${wakeSql('$3', '$1')} END AS woke FROM moved`,
    [destination, ids, channel],
  );
  return rows[0]?.n ?? 0;
}

/** A dead message with its last error. */
export interface DeadRow {
  id: string;
  destination: string;
  topic: string | null;
  format: 'text' | 'json';
  payload: string;
  attempts: number;
  last_error: string | null;
  created_at: Date;
  dead_at: Date;
}

/** Dead messages of a destination, oldest first. */
export async function mailboxDeadList(executor: Executor, schema: string, destination: string, limit: number): Promise<DeadRow[]> {
  const { rows } = await executor.query<DeadRow>(
    `SELECT id, destination, topic, format, payload, attempts, last_error, created_at, dead_at
       FROM ${schema}.mailbox_messages
      WHERE destination = $1 AND state = 'dead'
      ORDER BY dead_at, seq
      LIMIT $2`,
    [destination, limit],
  );
  return rows;
}

/**
 * Deletes up to `limit` messages in `state` whose time (consumed_at / dead_at) is older
 * than `olderThanMs`. SKIP LOCKED + LIMIT in a CTE, so several processes may purge at
 * once, each taking other rows, and none blocks a consumer.
 */
export async function mailboxPurge(executor: Executor, schema: string, state: 'consumed' | 'dead', olderThanMs: number, limit: number): Promise<number> {
  const column = state === 'consumed' ? 'consumed_at' : 'dead_at';
  const { rowCount } = await executor.query(
    `WITH old AS (
       SELECT id FROM ${schema}.mailbox_messages
        WHERE state = $1 AND ${column} < now() - $2::float8 * interval '1 millisecond'
        LIMIT $3
        FOR UPDATE SKIP LOCKED
     )
     DELETE FROM ${schema}.mailbox_messages m USING old WHERE m.id = old.id`,
    [state, olderThanMs, limit],
  );
  return rowCount;
}

/** Counts per destination. */
export interface StatsRow {
  destination: string;
  ready: number;
  delayed: number;
  consumed: number;
  dead: number;
  oldest_ready_at: Date | null;
}

/** Counts per destination (a full scan: for operators, not for hot paths). */
export async function mailboxStats(executor: Executor, schema: string, destination: string | null): Promise<StatsRow[]> {
  const { rows } = await executor.query<StatsRow>(
    `SELECT destination,
            count(*) FILTER (WHERE state = 'ready' AND visible_at <= now())::int AS ready,
            count(*) FILTER (WHERE state = 'ready' AND visible_at > now())::int AS delayed,
            count(*) FILTER (WHERE state = 'consumed')::int AS consumed,
            count(*) FILTER (WHERE state = 'dead')::int AS dead,
            min(created_at) FILTER (WHERE state = 'ready') AS oldest_ready_at
       FROM ${schema}.mailbox_messages
      WHERE ($1::text IS NULL OR destination = $1::text)
      GROUP BY destination
      ORDER BY destination`,
    [destination],
  );
  return rows;
}

/** A message with its state (the dashboard's detail view). */
export interface MessageInfoRow extends DeadRow {
  state: 'ready' | 'consumed' | 'dead';
  visible_at: Date;
  consumed_at: Date | null;
  dead_at: Date;
}

/** One message by id (the primary key), any state, or undefined. */
export async function mailboxGet(executor: Executor, schema: string, id: string): Promise<MessageInfoRow | undefined> {
  const { rows } = await executor.query<MessageInfoRow>(
    `SELECT id, destination, topic, format, payload, state, attempts, last_error, created_at, visible_at, consumed_at, dead_at
       FROM ${schema}.mailbox_messages WHERE id = $1`,
    [id],
  );
  return rows[0];
}

/**
 * The statement of {@link mailboxStatsEstimated} (`$1`: sample percent for consumed
 * messages; 100 counts them exactly). Ready and delayed messages read the ready index,
 * dead ones the dead index (their cost follows the backlog); consumed messages, the
 * bulk of the table, are counted in a `TABLESAMPLE SYSTEM` sample and scaled up.
 */
export const mailboxStatsEstimatedSql = (schema: string): string =>
  `SELECT destination,
          sum(ready)::float8 AS ready, sum(delayed)::float8 AS delayed, sum(consumed)::float8 AS consumed, sum(dead)::float8 AS dead,
          min(oldest_ready_at) AS oldest_ready_at, bool_or(estimated) AS estimated
     FROM (
       SELECT destination, count(*) FILTER (WHERE visible_at <= now()) AS ready, count(*) FILTER (WHERE visible_at > now()) AS delayed,
              0 AS consumed, 0 AS dead, min(created_at) AS oldest_ready_at, false AS estimated
         FROM ${schema}.mailbox_messages WHERE state = 'ready' GROUP BY destination
       UNION ALL
       SELECT destination, 0, 0, 0, count(*), NULL, false FROM ${schema}.mailbox_messages WHERE state = 'dead' GROUP BY destination
       UNION ALL
       SELECT destination, 0, 0, round(count(*) * 100 / $1::float8), 0, NULL, $1::float8 < 100
         FROM ${schema}.mailbox_messages TABLESAMPLE SYSTEM ($1::float4) WHERE state = 'consumed' GROUP BY destination
     ) AS c
    GROUP BY destination ORDER BY destination`;

/** Counts per destination without a scan of the consumed history (see {@link mailboxStatsEstimatedSql}). */
export async function mailboxStatsEstimated(executor: Executor, schema: string, samplePages: number): Promise<(StatsRow & { estimated: boolean })[]> {
  const { rows: size } = await executor.query<{ pages: number }>(
    `SELECT greatest(c.relpages, (pg_relation_size(c.oid) / current_setting('block_size')::int))::float8 AS pages FROM pg_class c WHERE c.oid = $1::regclass`,
    [`${schema}.mailbox_messages`],
  );
  const pages = Number(size[0]?.pages ?? 0);
  const percent = pages <= samplePages ? 100 : Math.max(0.0001, (samplePages / pages) * 100);
  const { rows } = await executor.query<StatsRow & { estimated: boolean }>(mailboxStatsEstimatedSql(schema), [percent]);
  return rows.map((r) => ({ ...r, ready: Number(r.ready), delayed: Number(r.delayed), consumed: Number(r.consumed), dead: Number(r.dead) }));
}
