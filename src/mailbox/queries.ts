/**
 * The mailbox's SQL. Every statement takes `$n` parameters; the only identifier
 * spliced in is the schema, validated and quoted by `schemaIdent`.
 */
import { LEASE_COMMITS_ASYNC } from '../internal/lease.js';
import { wakeSql } from '../notifier/pressure.js';
import type { Executor, QueryOptions } from '../driver/types.js';
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
 * The first ready messages in seq order come from `mailbox_next` (migration 025: the
 * ready index scanned in order, never a bitmap scan, which would visit the heap row of
 * every message consumed since the last vacuum), `FOR UPDATE SKIP LOCKED` with the
 * `LIMIT` inside it: concurrent consumers each lock different rows without waiting on
 * each other, and the LIMIT is applied once (a `WHERE id IN (SELECT ... LIMIT)` may be
 * re-evaluated and take more). A row that a crashed consumer held is unlocked when its
 * transaction rolls back, and is ready again.
 *
 * The UPDATE finds the locked row versions by ctid (a TID scan, no second descent of
 * the primary key per row). The ctids are stable while we hold the locks. A row updated
 * by another transaction after this statement's snapshot (a redrive, a failure record)
 * is locked in a version the snapshot cannot see, and the UPDATE skips it: it stays
 * ready, not taken this time, never twice; whatever made it ready again also woke
 * the destination (a redrive notifies; a failure record arms the retry wake-up).
 */
export async function mailboxClaim(executor: Executor, schema: string, destination: string, topic: string | null, limit: number, floor = '0'): Promise<MessageRow[]> {
  const { rows } = await executor.query<MessageRow>(
    `WITH next AS (
       SELECT row_ctid AS ctid FROM ${schema}.mailbox_next($1, $2, $3, $4::bigint)
     )
     UPDATE ${schema}.mailbox_messages m
        SET state = 'consumed', consumed_at = now(), attempts = m.attempts + 1, lease = NULL
      WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM next))
     RETURNING ${RETURNED}`,
    // Not prepared: a generic plan made while the table was small (a consumer started on
    // an empty mailbox) kept walking far more of the table as it grew, until an ANALYZE:
    // 872 µs and 243 buffers per take against 137 µs (plan included) and 29 unprepared,
    // in a 5 s run from an empty table. The plan is cheap beside that risk. (Since
    // migration 025 the scan's plan is fixed by mailbox_next's settings either way.)
    [destination, topic, limit, floor],
  );
  // RETURNING has no order: by seq (decimal strings of positive bigints: shorter is smaller).
  if (rows.length > 1) rows.sort((a, b) => a.seq.length - b.seq.length || (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  return rows;
}

/** A taken row: `alone` when the take found an abandoned message and took it alone. */
export type TakenRow = MessageRow & { alone: boolean };

/**
 * A consumer's take, in its consume transaction (the handlers run inside it, and the
 * mark commits with their writes): like {@link mailboxClaim}, it takes up to `limit`
 * ready messages of one destination (`FOR UPDATE SKIP LOCKED`, the rows stay locked by
 * that transaction until it ends) and marks them consumed with attempts + 1, in one
 * statement. The attempt only commits with the consumption: the take row (see
 * {@link mailboxTakeInsert}) is what counts it if the transaction never commits.
 *
 * A message whose delivery was abandoned (its consumer died in its handler; the
 * abandoned take was counted by {@link mailboxReapTakes}, which left its token in
 * `lease`) is taken alone: a batch of one, so a message that kills its process does not
 * use up the attempts of the messages taken with it. The others the CTE locked stay
 * locked (unmarked) until this transaction ends.
 *
 * `floor`: a seq below which the destination has no ready message (see
 * {@link mailboxFloors}); the scan starts there.
 *
 * With `statementTimeoutMs`, sets `statement_timeout` for the rest of the transaction
 * (SET LOCAL semantics, from an InitPlan evaluated before the UPDATE): the handler's
 * statements are bounded by `handlerTimeoutMs` too.
 *
 * Not prepared, for the reason given at {@link mailboxClaim}.
 */
export async function mailboxTake(
  executor: Executor,
  schema: string,
  destination: string,
  topic: string | null,
  limit: number,
  statementTimeoutMs: number | null,
  floor = '0',
): Promise<TakenRow[]> {
  const guard = statementTimeoutMs === null ? '' : `AND (SELECT set_config('statement_timeout', $5, true)) IS NOT NULL`;
  const params: unknown[] = [destination, topic, limit, floor];
  if (statementTimeoutMs !== null) params.push(`${Math.max(1, Math.round(statementTimeoutMs))}ms`);
  const { rows } = await executor.query<TakenRow>(
    // One pass of aggregates over the locked rows (mailbox_next returns them in seq
    // order): all of them, or the first abandoned one alone. 0.15 ms less a take of 100
    // than a CTE read three times (a UNION of the two cases and a bool_or beside it).
    `WITH pick AS (
       SELECT CASE WHEN bool_or(abandoned) THEN (array_agg(row_ctid) FILTER (WHERE abandoned))[1:1] ELSE array_agg(row_ctid) END AS ctids,
              bool_or(abandoned) AS alone
         FROM ${schema}.mailbox_next($1, $2, $3, $4::bigint)
     )
     UPDATE ${schema}.mailbox_messages m
        SET state = 'consumed', consumed_at = now(), attempts = m.attempts + 1, lease = NULL
      WHERE m.ctid = ANY((SELECT ctids FROM pick)::tid[]) ${guard}
     RETURNING ${RETURNED}, (SELECT alone FROM pick) IS TRUE AS alone`,
    params,
  );
  if (rows.length > 1) rows.sort((a, b) => a.seq.length - b.seq.length || (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  return rows;
}

/** What a floor look waits for before its bound counts (see {@link mailboxFloors}). */
export interface FloorWait {
  last: string;
  holders: string[];
}

/**
 * The next floors of destinations (migration 028's `mailbox_floors`): for each, a seq
 * below which it has no ready message and never will. Takes and receives start their
 * scan at it, so the entries consumed messages leave in the ready index (which nothing
 * can clean up while a transaction is open anywhere in the cluster) are not read again
 * and again. `wait`: what the previous look returned (the last seq handed out then, and
 * the senders still open then); once those have ended, that seq is settled. Returns each
 * destination's floor (`settled`; otherwise the floor asked with comes back) and what the
 * next look waits for. One statement for all the destinations (it reads pg_locks once), on the pool.
 */
export async function mailboxFloors(
  executor: Executor,
  schema: string,
  floors: readonly { to: string; floor: string }[],
  wait: FloorWait | null,
): Promise<{ floors: Map<string, string>; settled: boolean; wait: FloorWait | null }> {
  const { rows } = await executor.query<{ destination: string; floor: string; settled: boolean; wait_last: string | null; wait_for: string[] | null }>(
    `SELECT destination, floor::text AS floor, settled, wait_last::text AS wait_last, wait_for
       FROM ${schema}.mailbox_floors($1::text[], $2::bigint[], $3::bigint, $4::text[])`,
    [floors.map((f) => f.to), floors.map((f) => f.floor), wait?.last ?? null, wait?.holders ?? null],
    { prepare: true },
  );
  const r = rows[0];
  return {
    floors: new Map(rows.map((x) => [x.destination, x.floor])),
    settled: r?.settled === true,
    wait: r && r.wait_last !== null ? { last: r.wait_last, holders: r.wait_for ?? [] } : null,
  };
}

/** One take row: the token of a consume transaction, its destination and the ids it took. */
export interface TakeRow {
  token: string;
  destination: string;
  ids: readonly string[];
}

/**
 * Inserts one consume transaction's take row in its own commit; the consumer runs its
 * handlers once the statement has left the process (`opts.onSent`), without waiting
 * for it. The commit does not wait for its WAL flush ({@link LEASE_COMMITS_ASYNC}:
 * visible to every session at once; only a crash of the server itself can lose it,
 * and then the consume transaction is gone too).
 *
 * `drop`: tokens of takes that committed (their rows too), deleted in the same
 * statement: a committed take's row goes with its consumer's next take row instead of
 * costing a statement of its own, and off the consume transaction's path (a process
 * that dies first leaves rows whose messages are all consumed, which
 * {@link mailboxReapTakes} drops).
 */
export async function mailboxTakeInsert(executor: Executor, schema: string, take: TakeRow, drop: readonly string[] = [], opts: Omit<QueryOptions, 'prepare'> = {}): Promise<void> {
  await executor.query(
    `WITH gone AS (DELETE FROM ${schema}.mailbox_takes WHERE token = ANY($4::uuid[]))
     INSERT INTO ${schema}.mailbox_takes (token, destination, ids) SELECT $1::uuid, $2::text, $3::text[] WHERE ${LEASE_COMMITS_ASYNC}`,
    [take.token, take.destination, take.ids, drop],
    // Prepared: a hot statement whose plan does not depend on its values.
    { ...opts, prepare: true },
  );
}

/** Deletes the take rows of committed takes (a stopping consumer's last ones; see {@link mailboxTake}). */
export async function mailboxTakesDelete(executor: Executor, schema: string, tokens: readonly string[]): Promise<void> {
  await executor.query(`DELETE FROM ${schema}.mailbox_takes WHERE token = ANY($1::uuid[])`, [tokens]);
}

/** Text kept as `last_error` of a message that died because its last deliveries were abandoned. */
export const ABANDONED_ERROR = 'no outcome recorded: the consumer died or lost its connection before its consume transaction committed';

/**
 * Counts abandoned takes of a destination: take rows whose consume transaction ended
 * without committing (its process died, its connection was lost) and whose failure was
 * not recorded. One statement, its own commit:
 *
 * - take rows of the destination, oldest first, `FOR UPDATE SKIP LOCKED` (two looks at
 *   once take different rows);
 * - their messages that are still ready, `FOR UPDATE SKIP LOCKED`: a live transaction
 *   holds the messages it took, so a ready message nobody holds was abandoned. Each
 *   gets attempts + 1 per take row naming it, the abandoned mark (`lease` = the token:
 *   taken alone next time), or moves to the dead letters at `maxAttempts`
 *   (`last_error` {@link ABANDONED_ERROR});
 * - a take row keeps only the ids still held by someone (ready in the snapshot, locked:
 *   the take still in flight, or another consumer that took the message first), to be
 *   counted later or dropped once consumed; a row with none left is deleted (so is
 *   the row of a take that committed, its messages consumed, before its consumer's
 *   next take deleted it).
 *
 * Messages are found by primary key, never by a scan of the destination's ready
 * messages: the cost follows the abandoned ids, not the backlog. So the statements that
 * find them name the id alone and test the state afterwards: with `state = 'ready'`
 * beside `id = ...`, the planner took the partial index of ready messages and filtered
 * the whole backlog (10,000 rows read for 100 ids; the plan test in take.test.ts), and
 * joined to the unnested ids it preferred a hash join over a sequential scan; an array
 * of a length it does not know (`ARRAY(SELECT ...)`) gets primary-key lookups. The lock
 * is thus taken on a consumed or dead row of a take row too (rare, harmless).
 */
export async function mailboxReapTakes(
  executor: Executor,
  schema: string,
  destination: string,
  maxAttempts: number,
  limit: number,
): Promise<{ takes: number; rows: { id: string; state: 'ready' | 'dead'; attempts: number }[] }> {
  const dies = 'm.attempts + h.n >= $2';
  const { rows } = await executor.query<{ takes: number; id: string | null; state: 'ready' | 'dead' | null; attempts: number | null }>(
    `WITH t AS (
       SELECT token, ids FROM ${schema}.mailbox_takes
        WHERE destination = $1
        ORDER BY taken_at
        LIMIT $3
        FOR UPDATE SKIP LOCKED
     ), locked AS (
       SELECT ctid, id, state FROM ${schema}.mailbox_messages
        WHERE id = ANY(ARRAY(SELECT DISTINCT unnest(ids) FROM t))
        FOR UPDATE SKIP LOCKED
     ), hit AS (
       SELECT ctid, id FROM locked WHERE state = 'ready'
     ), h AS (
       SELECT hit.ctid, count(*)::int AS n, min(t.token::text)::uuid AS token FROM hit JOIN t ON hit.id = ANY(t.ids) GROUP BY hit.ctid
     ), counted AS (
       UPDATE ${schema}.mailbox_messages m
          SET attempts = m.attempts + h.n,
              state = CASE WHEN ${dies} THEN 'dead' ELSE 'ready' END,
              dead_at = CASE WHEN ${dies} THEN now() END,
              last_error = CASE WHEN ${dies} THEN $4 ELSE m.last_error END,
              lease = CASE WHEN ${dies} THEN NULL ELSE h.token END
         FROM h WHERE m.ctid = h.ctid
       RETURNING m.id, m.state, m.attempts
     ), rest AS (
       SELECT t.token, cardinality(t.ids) AS was,
              ARRAY(SELECT u.id FROM unnest(t.ids) AS u(id)
                     WHERE NOT EXISTS (SELECT 1 FROM hit WHERE hit.id = u.id)
                       AND (SELECT x.state FROM ${schema}.mailbox_messages x WHERE x.id = u.id) = 'ready') AS ids
         FROM t
     ), dropped AS (
       DELETE FROM ${schema}.mailbox_takes k USING rest WHERE k.token = rest.token AND cardinality(rest.ids) = 0
     ), kept AS (
       UPDATE ${schema}.mailbox_takes k SET ids = rest.ids FROM rest
        WHERE k.token = rest.token AND cardinality(rest.ids) > 0 AND cardinality(rest.ids) < rest.was
     )
     SELECT (SELECT count(*)::int FROM t) AS takes, c.id, c.state, c.attempts
       FROM (SELECT 1) AS one LEFT JOIN counted c ON true`,
    [destination, maxAttempts, limit, ABANDONED_ERROR],
  );
  return {
    takes: rows[0]?.takes ?? 0,
    rows: rows.filter((r) => r.id !== null).map((r) => ({ id: r.id!, state: r.state!, attempts: r.attempts! })),
  };
}

/**
 * Records a failed handler run after its consume transaction rolled back, in one
 * statement: deletes the take row and, if that row still named the message (no
 * concurrent {@link mailboxReapTakes} counted it first), counts the attempt (attempts +
 * 1), keeps the error, and either delays the next delivery (the one retry policy, in
 * database time, n = attempts) or, at `maxAttempts`, moves the message to the
 * dead-letter state. The other messages of the take are ready again, their attempt
 * uncounted. Returns undefined when the message was not updated.
 *
 * Between the rollback and this statement the message is ready and visible, and
 * another take may have taken it (another lane of the same consumer, waiting for the
 * connection the rollback freed, takes it first for sure). That take holds its row
 * until its handler commits, and before its handler runs it waits for a pool
 * connection for its own take row: if this statement waited for the row lock on the
 * last free connection, each would wait for the other until the take row's deadline
 * (`TAKE_ROW_TIMEOUT_MS`) failed that take. So the message is locked `SKIP LOCKED`:
 * when someone holds it, nothing changes (returns `'held'`), and the take row stays,
 * naming the message: {@link mailboxReapTakes} counts the attempt if the message is
 * ready and unheld again later, or drops the row once the message is consumed (race
 * (d) of src/mailbox/README.md).
 *
 * `token` null: the take's row did not commit (its insert failed), so there is none to
 * delete and none that a look for abandoned takes could have counted: the attempt is
 * counted here alone.
 */
export async function mailboxRecordFailure(
  executor: Executor,
  schema: string,
  id: string,
  token: string | null,
  error: string,
  maxAttempts: number,
  retry: RetryPolicy,
): Promise<{ state: 'ready' | 'dead'; attempts: number; delayMs: number } | 'held' | undefined> {
  const { rows } = await executor.query<{ held: boolean; state: 'ready' | 'dead' | null; attempts: number | null; delay_ms: number | null }>(
    `WITH msg AS (
       SELECT 1 FROM ${schema}.mailbox_messages WHERE id = $1 FOR UPDATE SKIP LOCKED
     ), take AS (
       DELETE FROM ${schema}.mailbox_takes WHERE token = $7::uuid AND EXISTS (SELECT 1 FROM msg) RETURNING ids
     ), counted AS (
       UPDATE ${schema}.mailbox_messages
          SET attempts = attempts + 1,
              last_error = $2,
              state = CASE WHEN attempts + 1 >= $3 THEN 'dead' ELSE 'ready' END,
              dead_at = CASE WHEN attempts + 1 >= $3 THEN now() END,
              visible_at = now() + ${retryDelaySql('attempts + 1', '$4', '$5', '$6')} * interval '1 millisecond',
              lease = NULL
        WHERE id = $1 AND state = 'ready' AND EXISTS (SELECT 1 FROM msg)
          AND ($7::uuid IS NULL OR EXISTS (SELECT 1 FROM take WHERE $1 = ANY(take.ids)))
       RETURNING state, attempts, (extract(epoch FROM visible_at - now()) * 1000)::float8 AS delay_ms
     )
     SELECT NOT EXISTS (SELECT 1 FROM msg) AS held, c.state, c.attempts, c.delay_ms
       FROM (SELECT 1) AS one LEFT JOIN counted c ON true`,
    [id, error, maxAttempts, retry.baseMs, retry.maxMs, retry.jitter, token],
  );
  const r = rows[0];
  if (r?.state != null) return { state: r.state, attempts: r.attempts!, delayMs: Number(r.delay_ms) };
  return r?.held ? 'held' : undefined;
}

/**
 * Milliseconds until the next hidden message of a destination becomes visible (a retry
 * delay ending), or null when none is hidden. Run after a take found nothing, so a
 * consumer wakes when another process's failed message is due instead of at the safety
 * poll. Walks only the destination's ready rows (the partial index) from the floor
 * (see {@link mailboxFloors}), and all of them are hidden or held when the take found none.
 */
export async function mailboxNextVisible(executor: Executor, schema: string, destination: string, topic: string | null, floor = '0'): Promise<number | null> {
  const { rows } = await executor.query<{ ms: number | null }>(
    `SELECT (extract(epoch FROM min(visible_at) - now()) * 1000)::float8 AS ms
       FROM ${schema}.mailbox_messages
      WHERE destination = $1 AND state = 'ready' AND seq >= $3::bigint AND visible_at > now() AND ($2::text IS NULL OR topic = $2::text)`,
    [destination, topic, floor],
  );
  const ms = rows[0]?.ms;
  return ms == null ? null : Math.max(0, Number(ms));
}

/**
 * Puts dead messages of a destination (all, or the given ids) back to ready with attempts
 * reset, and wakes the destination. Each gets a new seq (`seq = DEFAULT`: behind the
 * messages waiting), so no message becomes ready below a consumer's floor (see
 * {@link mailboxFloors}); the statement takes the send lock like a send.
 */
export async function mailboxRedrive(executor: Executor, schema: string, channel: string | null, destination: string, ids: readonly string[] | null): Promise<number> {
  const { rows } = await executor.query<{ n: number }>(
    `WITH moved AS (
       UPDATE ${schema}.mailbox_messages
          SET state = 'ready', attempts = 0, visible_at = now(), dead_at = NULL, lease = NULL, seq = DEFAULT
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

/**
 * Deletes, at most `limit` per call, take rows older than `olderThanMs` (at least an
 * hour): left by a destination that no consumer takes from any more (only its
 * consumers look for abandoned takes) or by a consumer killed between takes. Returns
 * how many.
 */
export async function mailboxPurgeTakes(executor: Executor, schema: string, olderThanMs: number, limit: number): Promise<number> {
  const { rowCount } = await executor.query(
    `DELETE FROM ${schema}.mailbox_takes WHERE token IN (
       SELECT token FROM ${schema}.mailbox_takes
        WHERE taken_at < now() - greatest($1::float8, 3600000) * interval '1 millisecond'
        LIMIT $2 FOR UPDATE SKIP LOCKED)`,
    [olderThanMs, limit],
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
