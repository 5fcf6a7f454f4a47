/**
 * The queue's SQL, one function per statement. `s` is the quoted schema. Every
 * statement that changes jobs is batched (arrays through `unnest`) and announces
 * what it did in the same statement: one wake-up per queue (identical notifications
 * in a transaction are merged by Postgres) and one small transition notice per job
 * that asked for them (`announce`).
 */
import { wakeSql } from '../notifier/pressure.js';
import type { Executor, QueryOptions } from '../driver/types.js';
import { retryDelaySql, type RetryPolicy } from '../internal/backoff.js';

// The statements a worker runs again and again: prepared once per pool connection.
const PREPARE: QueryOptions = { prepare: true };

/**
 * Entries a job's `errors` list keeps: the newest ones (attempt, time, error text of at
 * most `ERROR_TEXT_MAX_CHARS`); older entries are dropped as new ones arrive, so a job
 * retried for ever does not grow without bound. `last_error` always holds the latest.
 */
export const JOB_ERRORS_KEPT = 20;

/** SQL: `errors` (a jsonb array expression) with `entry` appended, keeping the newest {@link JOB_ERRORS_KEPT}. */
function appendError(errors: string, entry: string): string {
  return `CASE WHEN jsonb_array_length(${errors}) < ${JOB_ERRORS_KEPT} THEN ${errors} || jsonb_build_array(${entry})
    ELSE (SELECT jsonb_agg(e ORDER BY i) FROM jsonb_array_elements(${errors} || jsonb_build_array(${entry})) WITH ORDINALITY AS t(e, i)
           WHERE i > jsonb_array_length(${errors}) + 1 - ${JOB_ERRORS_KEPT}) END`;
}

/** A job row as the queries return it (bigint ids as strings). */
export interface JobRow {
  id: string;
  queue: string;
  kind: string;
  payload: unknown;
  state: string;
  priority: number;
  run_at: Date;
  attempt: number;
  attempt_base: number;
  max_attempts: number;
  lease_expires_at: Date | null;
  unique_key: string | null;
  stages: string[] | null;
  stage: string | null;
  announce: boolean;
  timeout_ms: number | null;
  last_error: string | null;
  errors: unknown[];
  history: unknown[] | null;
  result: unknown;
  created_at: Date;
  attempted_at: Date | null;
  stage_entered_at: Date;
  finished_at: Date | null;
}

/** A claimed job as a worker gets it (queue, kind and stage are the worker's own). */
export interface ClaimRow {
  id: string;
  payload: unknown;
  attempt: number;
  attempt_base: number;
  max_attempts: number;
  stages: string[] | null;
  priority: number;
  /** The job's own handler timeout (null: the worker's). */
  timeout_ms: number | null;
  /** created_at in epoch milliseconds (a number parses far faster than a timestamp). */
  created_ms: number;
  /** run_at in epoch microseconds, exact (decimal text): part of the claim cursor. */
  run_us: string;
}

/**
 * Channels of one schema: wake-ups (payload: see {@link wakePayload}) and transitions (payload: small
 * JSON). Null while wake-ups are paused (a nearly full notification queue): the
 * statements then notify nothing.
 */
export interface QueueChannels {
  wake: string | null;
  events: string | null;
  /**
   * Slot wake-ups (payload: the queue name): a completion freed a limit slot. Apart from
   * `wake` because a worker keeps its claim cursor on these (no new job came that may sort
   * before it), and limited completions send one per statement.
   */
  slots: string | null;
}

// A transition notice: id, kind, stage, state, attempt. Small, far below the 8000-byte
// limit (kind, queue and stage names are limited to 100 bytes each).
// A NULL channel (wake-ups paused: the notification queue is nearly full) sends nothing.
const notice = (a: string, events: string, state = `${a}.state`) =>
  `CASE WHEN ${a}.announce THEN ${wakeSql(events, `json_build_object('id', ${a}.id::text, 'kind', ${a}.kind, 'stage', nullif(${a}.stage, ''), 'state', ${state}, 'attempt', ${a}.attempt - ${a}.attempt_base)::text`)} END`;

// One wake-up per queue named in `rows` whose jobs are due. The subquery is
// uncorrelated, so Postgres runs it once (an InitPlan), not once per row.
// A NULL channel (wake-ups paused) selects no queue, so nothing is sent.
// Keyed (the default; `rows` then has priority, run_at and id): the payload also carries
// the queue's first row in claim order (see {@link wakePayload}), so a worker lowers its
// claim cursor to it instead of dropping it. Unkeyed: the queue name alone.
const wake = (rows: string, channel: string, cond = 'true', keyed = true) =>
  keyed
    ? `(SELECT count(pg_notify(${channel}::text, w.queue || chr(31) || w.priority || ',' || (extract(epoch FROM w.run_at) * 1000000)::bigint || ',' || w.id))
          FROM (SELECT DISTINCT ON (queue) queue, priority, run_at, id FROM ${rows} WHERE ${cond} AND ${channel}::text IS NOT NULL
                 ORDER BY queue, priority, run_at, id) w)`
    : `(SELECT count(pg_notify(${channel}::text, w.queue)) FROM (SELECT DISTINCT queue FROM ${rows} WHERE ${cond} AND ${channel}::text IS NOT NULL) w)`;

/**
 * A wake-up's payload: the queue name (`''`: every queue), optionally followed by the
 * unit separator (U+001F) and the claim-order key `priority,run_us,id` of the first job
 * it made available in that queue. Without a key a worker drops its claim cursor.
 */
export function wakePayload(payload: string): { queue: string; key: ClaimKey | null } {
  const at = payload.lastIndexOf('\u001f');
  if (at >= 0) {
    const parts = payload.slice(at + 1).split(',');
    // A key no claim could take as its cursor (a hand-made NOTIFY) is not a key: the
    // whole payload is then a queue name.
    if (parts.length === 3 && /^-?\d{1,5}$/.test(parts[0]) && /^-?\d{1,17}$/.test(parts[1]) && /^\d{1,19}$/.test(parts[2])) {
      const priority = Number(parts[0]);
      if (priority >= -32768 && priority <= 32767 && BigInt(parts[2]) <= 9223372036854775807n) {
        return { queue: payload.slice(0, at), key: { priority, runUs: parts[1], id: parts[2] } };
      }
    }
  }
  return { queue: payload, key: null };
}

// Finished jobs that held a limit slot: a worker elsewhere may be waiting for that slot
// (completions wake on the `slots` channel; failures on `wake`, which also covers retries).
const LIMITED = 'limit_key IS NOT NULL';

// Batch statements on running jobs take their ids as `$ids::bigint[]` and everything
// per job as one jsonb object keyed by id (`perJob`), read with `field(...)`. No join to
// unnest: joined, Postgres may hash the whole table (a sequential scan per batch, 100 µs
// a row at 100k jobs) or loop over the batch once per row; `id = ANY` probes the
// primary key and each row finds its own inputs by key.
const field = (p: number, name: string, op: '->' | '->>' = '->>') => `($${p}::jsonb -> (j.id::text) ${op} '${name}')`;
// The fence: the job's current attempt (`a`), still running.
const fenced = (ids: number, data: number) => `j.id = ANY($${ids}::bigint[]) AND j.state = 'running' AND j.attempt = ${field(data, 'a')}::int`;

/**
 * Per-job inputs as a jsonb object text: `{"<id>": {"a": 3, ...}}`. Fields that are
 * null or undefined are left out; `json` names fields whose values are JSON text already.
 */
export function perJob(ids: readonly string[], fields: Record<string, readonly unknown[]>, json: readonly string[] = []): string {
  const names = Object.keys(fields);
  const parts: string[] = [];
  for (let i = 0; i < ids.length; i++) {
    const kv: string[] = [];
    for (const n of names) {
      const v = fields[n][i];
      if (v === null || v === undefined) continue;
      kv.push(`"${n}":${json.includes(n) ? (v as string) : JSON.stringify(v)}`);
    }
    parts.push(`${JSON.stringify(ids[i])}:{${kv.join(',')}}`);
  }
  return `{${parts.join(',')}}`;
}

// History entry appended to announced jobs at every transition.
const history = (stageExpr: string, stateExpr: string) =>
  `CASE WHEN j.announce THEN coalesce(j.history, '[]'::jsonb) || jsonb_build_array(jsonb_build_object('stage', nullif(${stageExpr}, ''), 'state', ${stateExpr}, 'at', now())) ELSE j.history END`;

/** Input of {@link jobInsertMany}: parallel arrays, one entry per job. */
export interface JobInsertBatch {
  queue: string[];
  kind: string[];
  payload: string[];
  priority: number[];
  runAt: (Date | null)[];
  delayMs: (number | null)[];
  maxAttempts: number[];
  uniqueKey: (string | null)[];
  stages: (string | null)[];
  announce: boolean[];
  timeoutMs: (number | null)[];
  /** The batch of every job of this statement, or null. */
  batchId?: string | null;
}

/**
 * Inserts a batch of jobs in one statement. Ids are drawn from the sequence first
 * (the `input` CTE is materialised once because nextval is volatile), so each input
 * maps to its row. A job whose unique key is held by a waiting or running job is
 * skipped: ON CONFLICT on the partial unique index, which also makes a concurrent
 * enqueue of the same key wait for the other transaction and then skip.
 */
export async function jobInsertMany(x: Executor, s: string, ch: QueueChannels, b: JobInsertBatch): Promise<{ id: string; inserted: boolean }[]> {
  const { rows } = await x.query<{ id: string; inserted: boolean }>(
    `WITH input AS (
       SELECT nextval('${s}.jobs_id_seq') AS id, t.*
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[], $6::float8[], $7::int[], $8::text[], $9::jsonb[], $10::bool[], $13::int[])
              WITH ORDINALITY AS t(queue, kind, payload, priority, run_at, delay_ms, max_attempts, unique_key, stages, announce, timeout_ms, ord)
     ), ins AS (
       INSERT INTO ${s}.jobs AS j (id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, batch_id, unique_key, stages, stage, announce, history)
       SELECT i.id, i.queue, i.kind, i.payload, i.priority,
              coalesce(i.run_at, now() + coalesce(i.delay_ms, 0) * interval '1 millisecond'),
              i.max_attempts, i.timeout_ms, $14::bigint, i.unique_key, st.arr, coalesce(st.arr[1], ''), i.announce,
              CASE WHEN i.announce THEN jsonb_build_array(jsonb_build_object('stage', st.arr[1], 'state', 'available', 'at', now())) END
         FROM input i
         CROSS JOIN LATERAL (SELECT CASE WHEN i.stages IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(i.stages)) END AS arr) st
        ORDER BY i.ord
       ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at
     )
     SELECT i.id::text AS id, ins.id IS NOT NULL AS inserted,
            ${wake('ins', '$11', 'run_at <= now()')} AS woke, ${notice('ins', '$12')} AS notice
       FROM input i LEFT JOIN ins ON ins.id = i.id
      ORDER BY i.ord`,
    [b.queue, b.kind, b.payload, b.priority, b.runAt, b.delayMs, b.maxAttempts, b.uniqueKey, b.stages, b.announce, ch.wake, ch.events, b.timeoutMs, b.batchId ?? null],
  );
  return rows;
}

/**
 * Inserts a batch of plain jobs (no unique key, no stages, not announced): the fast
 * path of enqueue, a bare INSERT ... SELECT with one wake-up per queue whose jobs are
 * due. Rows are inserted in input order (ORDER BY ord), so identity values rise in
 * input order and the returned ids, sorted, map back to the inputs.
 */
export async function jobInsertPlain(x: Executor, s: string, ch: QueueChannels, b: JobInsertBatch): Promise<string[]> {
  const { rows } = await x.query<{ id: string }>(
    `WITH ins AS (
       INSERT INTO ${s}.jobs (queue, kind, payload, priority, run_at, max_attempts, timeout_ms)
       SELECT t.queue, t.kind, t.payload, t.priority, coalesce(t.run_at, now() + coalesce(t.delay_ms, 0) * interval '1 millisecond'), t.max_attempts, t.timeout_ms
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int[], $5::timestamptz[], $6::float8[], $7::int[], $9::int[])
              WITH ORDINALITY AS t(queue, kind, payload, priority, run_at, delay_ms, max_attempts, timeout_ms, ord)
        ORDER BY t.ord
       RETURNING id, queue, priority, run_at
     )
     SELECT id::text AS id, ${wake('ins', '$8', 'run_at <= now()')} AS woke FROM ins`,
    [b.queue, b.kind, b.payload, b.priority, b.runAt, b.delayMs, b.maxAttempts, ch.wake, b.timeoutMs],
    PREPARE,
  );
  const ids = rows.map((r) => r.id);
  for (let i = 1; i < ids.length; i++) {
    if (compareIds(ids[i - 1], ids[i]) > 0) return ids.sort(compareIds);
  }
  return ids;
}

/**
 * Whether every job of a plain batch has the same options (queue, kind, priority, run
 * time, attempts, timeout), so {@link jobInsertUniform} can take them once.
 */
export function isUniform(b: JobInsertBatch): boolean {
  const same = (xs: readonly unknown[]) => {
    for (let i = 1; i < xs.length; i++) if (xs[i] !== xs[0]) return false;
    return true;
  };
  if (!b.runAt.every((d) => d === null) && !(same(b.runAt.map((d) => d?.getTime())))) return false;
  return same(b.queue) && same(b.kind) && same(b.priority) && same(b.delayMs) && same(b.maxAttempts) && same(b.timeoutMs);
}

/**
 * Inserts a uniform batch of plain jobs (see {@link isUniform}): the options once, the
 * payloads as one JSON array text (no array literal to build and escape per job), one
 * wake-up when the jobs are due (keyed by the first of them, see {@link wakePayload}),
 * and the ids back as one comma-separated text (one result row, not one per job). Rows
 * are inserted in input order, so the ids, sorted, map back to the inputs.
 */
export async function jobInsertUniform(x: Executor, s: string, ch: QueueChannels, b: JobInsertBatch): Promise<string[]> {
  const runAt = `coalesce($4::timestamptz, now() + coalesce($5::float8, 0) * interval '1 millisecond')`;
  const { rows } = await x.query<{ ids: string }>(
    `WITH ins AS (
       INSERT INTO ${s}.jobs (queue, kind, payload, priority, run_at, max_attempts, timeout_ms)
       SELECT $1::text, $2::text, t.p, $3::int, ${runAt}, $6::int, $7::int
         FROM jsonb_array_elements($8::jsonb) WITH ORDINALITY AS t(p, ord)
        ORDER BY t.ord
       RETURNING id
     )
     SELECT string_agg(id::text, ',') AS ids,
            CASE WHEN $9::text IS NOT NULL AND ${runAt} <= now() AND count(*) > 0
                 THEN pg_notify($9::text, $1::text || chr(31) || $3::int || ',' || (extract(epoch FROM ${runAt}) * 1000000)::bigint || ',' || min(id)) END AS woke
       FROM ins`,
    [b.queue[0], b.kind[0], b.priority[0], b.runAt[0], b.delayMs[0], b.maxAttempts[0], b.timeoutMs[0], `[${b.payload.join(',')}]`, ch.wake],
    PREPARE,
  );
  const ids = rows[0].ids === null ? [] : rows[0].ids.split(',');
  for (let i = 1; i < ids.length; i++) {
    if (compareIds(ids[i - 1], ids[i]) > 0) return ids.sort(compareIds);
  }
  return ids;
}

/** Bigint ids as decimal text, compared as numbers. */
export function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** Ids of the waiting or running jobs holding these unique keys. */
export async function jobFindByUniqueKeys(x: Executor, s: string, keys: string[]): Promise<Map<string, string>> {
  const { rows } = await x.query<{ id: string; unique_key: string }>(
    `SELECT id::text AS id, unique_key FROM ${s}.jobs WHERE unique_key = ANY($1::text[]) AND state IN ('available', 'running')`,
    [keys],
  );
  return new Map(rows.map((r) => [r.unique_key, r.id]));
}

/** What a claim takes: `limit` due jobs of one kind (and stage) in one queue, leased for `leaseMs`. */
export interface ClaimRequest {
  queue: string;
  kind: string;
  stage: string | null;
  limit: number;
  leaseMs: number;
  /**
   * Start after this claim-order key (the last row this worker claimed): the scan skips
   * the index entries of jobs claimed since the last vacuum, which otherwise every claim
   * walks again. Jobs that sort before it are found by the next claim without one.
   */
  after?: ClaimKey | null;
}

/** A position in claim order: (priority, run_at, id). */
export interface ClaimKey {
  priority: number;
  runUs: string;
  id: string;
}

/**
 * The claim as two CTEs, `picked` and `claimed`, over five parameters from `$p`
 * (queue, kind, stage, limit, leaseMs) and the events channel `$ev`.
 *
 * Shape: FOR UPDATE SKIP LOCKED + LIMIT inside a CTE, then the UPDATE. The CTE
 * locks at most `limit` rows, skipping rows other claimers hold, so a claim never
 * takes more than its limit and claimers never wait on each other (`IN (SELECT ...
 * LIMIT)` may be re-evaluated and take more). The UPDATE finds the locked row versions
 * by ctid (a TID scan: no second descent of the primary key per row, half the cost of
 * a claim). The ctids are stable: we hold the row locks. If a row was updated after
 * the statement's snapshot was taken, the lock follows it to a version this snapshot
 * cannot see and the UPDATE skips it: the job is not claimed this time, never claimed
 * twice. attempt + 1 is the new fence. RETURNING gives only what a worker needs, in no
 * particular order: the caller sorts by (priority, id).
 */
function claimCtes(s: string, p: number, ev: number, after: boolean, room = false): string {
  const cursor = after
    ? `AND (priority, run_at, id) > ($${p + 5}::smallint, timestamptz 'epoch' + $${p + 6}::bigint * interval '1 microsecond', $${p + 7}::bigint)`
    : '';
  // While a pause or a limit applies to (queue, kind), this claim takes nothing and says
  // so (`controlled`): the worker then claims under control (`Worker.#claimControlled`).
  // Room (under a limit without a partition key, migration 033): `r` locks one stripe of
  // the limit and says how many jobs may start under it; the claim takes that many, each
  // under the stripe, and writes the stripe's token bucket back with what it took.
  const gate = room
    ? `r AS (
       SELECT * FROM ${s}.job_admit_room($${p}, $${p + 1}, $${p + 3}::int)
     )`
    : `ctl AS (
       SELECT EXISTS (SELECT 1 FROM ${s}.queue_controls c WHERE c.queue IN ('', $${p}) AND c.kind IN ('', $${p + 1})
                        AND (c.paused_at IS NOT NULL OR c.concurrency IS NOT NULL OR c.rate_count IS NOT NULL)) AS controlled
     )`;
  return `${gate}, picked AS (
       SELECT ctid FROM ${s}.jobs
        WHERE state = 'available' AND queue = $${p} AND kind = $${p + 1} AND stage = $${p + 2}::text AND run_at <= now() ${cursor}
          ${room ? '' : 'AND NOT (SELECT controlled FROM ctl)'}
        ORDER BY priority, run_at, id
        LIMIT ${room ? 'coalesce((SELECT room FROM r), 0)' : `$${p + 3}`}
        FOR UPDATE SKIP LOCKED
     ), claimed AS (
       UPDATE ${s}.jobs j
          SET ${claimSet(`$${p + 4}`, room ? '(SELECT unit FROM r)' : 'NULL')}
        WHERE j.ctid = ANY(ARRAY(SELECT ctid FROM picked))
       RETURNING ${claimReturning(`$${ev}`)}
     )${
       room
         ? `, bucket AS (
       INSERT INTO ${s}.queue_rate_buckets AS rb (key, tokens, at)
       SELECT r.unit, r.tokens - (SELECT count(*) FROM claimed), clock_timestamp() FROM r WHERE r.tokens IS NOT NULL
           ON CONFLICT (key) DO UPDATE SET tokens = EXCLUDED.tokens, at = EXCLUDED.at
     )`
         : ''
     }`;
}

/** The SET list of a claim: running, attempt + 1 (the new fence), the lease, the limit key. */
const claimSet = (leaseMs: string, limitKey: string) =>
  `state = 'running', attempt = j.attempt + 1, attempted_at = now(),
              lease_expires_at = now() + ${leaseMs} * interval '1 millisecond', limit_key = ${limitKey},
              history = ${history('j.stage', "'running'")}`;

/** What a claim returns per job (see {@link ClaimRow}), with the transition notice. */
const claimReturning = (events: string) =>
  `j.id::text AS id, j.payload, j.attempt, j.attempt_base, j.max_attempts, j.stages, j.priority, j.timeout_ms,
                 extract(epoch FROM j.created_at)::float8 * 1000 AS created_ms,
                 (extract(epoch FROM j.run_at) * 1000000)::bigint::text AS run_us,
                 ${notice('j', events)} AS notice`;

const claimParams = (a: ClaimRequest) => {
  const base: unknown[] = [a.queue, a.kind, a.stage ?? '', a.limit, a.leaseMs];
  return a.after ? [...base, a.after.priority, a.after.runUs, a.after.id] : base;
};

/**
 * The first due job of (queue, kind, stage) in claim order at or before `before`, if any:
 * the look from the start that a worker's claim cursor needs now and then (see
 * `Worker`), as a read of its own, so that no claim waits for it. Locks nothing and
 * waits for no lock: a job another claimer holds counts too.
 */
export async function jobFirstDue(x: Executor, s: string, a: { queue: string; kind: string; stage: string | null; before: ClaimKey }): Promise<ClaimKey | null> {
  const { rows } = await x.query<{ priority: number; run_us: string; id: string }>(
    `SELECT priority, (extract(epoch FROM run_at) * 1000000)::bigint::text AS run_us, id::text AS id FROM ${s}.jobs
      WHERE state = 'available' AND queue = $1 AND kind = $2 AND stage = $3::text AND run_at <= now()
        AND (priority, run_at, id) <= ($4::smallint, timestamptz 'epoch' + $5::bigint * interval '1 microsecond', $6::bigint)
      ORDER BY priority, run_at, id
      LIMIT 1`,
    [a.queue, a.kind, a.stage ?? '', a.before.priority, a.before.runUs, a.before.id],
    PREPARE,
  );
  return rows.length === 0 ? null : { priority: rows[0].priority, runUs: rows[0].run_us, id: rows[0].id };
}

/** Claims up to `limit` due jobs, taking a lease (see {@link claimCtes}); `controlled`: a pause or limit applies, nothing was claimed. */
export async function jobClaimBatch(x: Executor, s: string, ch: QueueChannels, a: ClaimRequest): Promise<{ claimed: ClaimRow[]; controlled: boolean }> {
  const cp = claimParams(a);
  // One extra row at the end carries `controlled` (uncorrelated: computed once).
  const { rows } = await x.query<ClaimRow & { controlled: boolean | null }>(
    `WITH ${claimCtes(s, 1, cp.length + 1, !!a.after)}
     SELECT id, payload, attempt, attempt_base, max_attempts, stages, priority, timeout_ms, created_ms, run_us, NULL::boolean AS controlled FROM claimed
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT controlled FROM ctl)`,
    [...cp, ch.events],
    PREPARE,
  );
  const last = rows.pop()!;
  return { claimed: rows, controlled: last.controlled === true };
}

/** What `job_admit` decided for a claim under controls (see migration 014). */
export type AdmitMode = 'free' | 'paused' | 'limited' | 'busy';

/**
 * The answer of a claim under control: the claimed rows, then one row with the
 * completions that matched no row (`missed`, when the statement recorded some: CTE
 * `done`), the columns `cols` (name -> SQL type) read from the admission CTE `gate`, and
 * the slot wake-up of the limited jobs completed (on `$ev + 1`).
 */
function controlledAnswer(finishing: boolean, ev: number, gate: string, cols: Record<string, string>): string {
  const names = Object.keys(cols);
  return `SELECT id, payload, attempt, attempt_base, max_attempts, stages, priority, timeout_ms, created_ms, run_us,
            NULL::text[] AS missed, ${names.map((n) => `NULL::${cols[n]} AS ${n}`).join(', ')}, NULL::bigint AS woke FROM claimed
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            ${finishing ? 'ARRAY(SELECT u::text FROM unnest($1::bigint[]) AS u WHERE u NOT IN (SELECT id FROM done))' : 'NULL::text[]'},
            ${names.map((n) => `(SELECT ${n} FROM ${gate})`).join(', ')},
            ${finishing ? wake('done', `$${ev + 1}`, LIMITED, false) : 'NULL::bigint'}`;
}

/**
 * A claim while a pause or limit applies, in one statement (so in one transaction, which
 * holds the limit keys' locks `job_admit` takes until it commits): records `finals` when
 * given (fenced like {@link jobFinishMany}), asks `job_admit` which due jobs may start
 * (it row-locks its candidates, so no other claimer takes them meanwhile), and claims
 * those, each under its limit key. Completions in the same statement are not yet visible to `job_admit`, which counts
 * their slots as taken (it admits fewer, never more). `after`: the claim cursor, as for the
 * ordinary claim (migration 020); `prefix` in the answer: the admitted jobs are the first
 * candidates after it (none refused before them), so the next claim may start after them.
 */
export async function jobClaimLimited(
  x: Executor,
  s: string,
  ch: QueueChannels,
  keep: boolean,
  b: FinishBatch | null,
  a: { queue: string; kind: string; stage: string | null; want: number; scan: number; leaseMs: number; after: ClaimKey | null },
): Promise<{ missed: string[]; claimed: ClaimRow[]; mode: AdmitMode; waitMs: number | null; prefix: boolean }> {
  const fp = b ? finishParams(keep, b) : [];
  const p = fp.length + 1;
  const ev = p + 9;
  const finish = b ? `${finishCte(s, keep, 1, ev)}, ` : '';
  const { rows } = await x.query<ClaimRow & { missed: string[] | null; mode: AdmitMode | null; wait_ms: number | null; prefix: boolean | null }>(
    `WITH ${finish}a AS (
       SELECT * FROM ${s}.job_admit($${p}, $${p + 1}, $${p + 2}, $${p + 3}, $${p + 4}, $${p + 6}::smallint, $${p + 7}::bigint, $${p + 8}::bigint)
     ), claimed AS (
       -- \`IS TRUE\`: a plain \`state = 'available'\` matches the claim index's predicate, and
       -- Postgres then scanned that whole index (skip scan on id) instead of probing the
       -- primary key for the few admitted ids.
       UPDATE ${s}.jobs j SET ${claimSet(`$${p + 5}`, 'coalesce((SELECT unit FROM a), (SELECT keys FROM a) ->> j.id::text)')}
        WHERE j.id = ANY((SELECT ids FROM a)::bigint[]) AND (j.state = 'available') IS TRUE
       RETURNING ${claimReturning(`$${ev}`)}
     )
     ${controlledAnswer(!!b, ev, 'a', { mode: 'text', wait_ms: 'float8', prefix: 'boolean' })}`,
    [...fp, a.queue, a.kind, a.stage ?? '', a.want, a.scan, a.leaseMs, a.after?.priority ?? null, a.after?.runUs ?? null, a.after?.id ?? null, ch.events, ...(b ? [ch.slots] : [])],
    PREPARE,
  );
  const last = rows.pop()!;
  return { missed: last.missed ?? [], claimed: rows, mode: last.mode!, waitMs: last.wait_ms, prefix: last.prefix === true };
}

/**
 * A claim under a limit without a partition key, by room (migration 033): records
 * `finals` when given (as {@link jobClaimLimited}), asks `job_admit_room` how many due jobs
 * may start under one stripe of the limit (it takes the stripe's lock, held until the
 * statement commits) and claims that many in claim order, as the ordinary claim does.
 * `mode` `'keyed'`: the limit that applies has a partition key; nothing was claimed, ask
 * {@link jobClaimLimited}. The claimed jobs are the first due ones after `after`; `room`:
 * how many the limit admitted (fewer claimed: the queue had no more due and free).
 */
export async function jobClaimRoom(
  x: Executor,
  s: string,
  ch: QueueChannels,
  keep: boolean,
  b: FinishBatch | null,
  a: ClaimRequest,
): Promise<{ missed: string[]; claimed: ClaimRow[]; mode: AdmitMode | 'keyed'; waitMs: number | null; room: number }> {
  const fp = b ? finishParams(keep, b) : [];
  const cp = claimParams(a);
  const ev = fp.length + cp.length + 1;
  const finish = b ? `${finishCte(s, keep, 1, ev)}, ` : '';
  const { rows } = await x.query<ClaimRow & { missed: string[] | null; mode: AdmitMode | 'keyed' | null; wait_ms: number | null; room: number | null }>(
    `WITH ${finish}${claimCtes(s, fp.length + 1, ev, !!a.after, true)}
     ${controlledAnswer(!!b, ev, 'r', { mode: 'text', wait_ms: 'float8', room: 'int' })}`,
    [...fp, ...cp, ch.events, ...(b ? [ch.slots] : [])],
    PREPARE,
  );
  const last = rows.pop()!;
  return { missed: last.missed ?? [], claimed: rows, mode: last.mode!, waitMs: last.wait_ms, room: last.room ?? 0 };
}

/**
 * Completes a batch of jobs, fenced by (id, attempt) and state running: a worker
 * whose lease expired (and whose job was rescued or claimed again) matches no row.
 * A pipeline job moves to its next stage (available again, attempts of the stage
 * reset by attempt_base); the last stage completes it. Returns the ids that matched.
 */
export async function jobCompleteMany(x: Executor, s: string, ch: QueueChannels, b: FinishBatch): Promise<string[]> {
  const next = 'j.stages[array_position(j.stages, j.stage) + 1]';
  const { rows } = await x.query<{ id: string }>(
    `WITH done AS (
       UPDATE ${s}.jobs j
          SET state = CASE WHEN ${next} IS NULL THEN 'completed' ELSE 'available' END,
              stage = coalesce(${next}, j.stage),
              attempt_base = CASE WHEN ${next} IS NULL THEN j.attempt_base ELSE j.attempt END,
              stage_entered_at = CASE WHEN ${next} IS NULL THEN j.stage_entered_at ELSE now() END,
              run_at = CASE WHEN ${next} IS NULL THEN j.run_at ELSE now() END,
              finished_at = CASE WHEN ${next} IS NULL THEN now() END,
              lease_expires_at = NULL,
              result = coalesce(${field(2, 'r', '->')}, j.result),
              history = ${history(`coalesce(${next}, j.stage)`, `CASE WHEN ${next} IS NULL THEN 'completed' ELSE 'available' END`)}
        WHERE ${fenced(1, 2)}
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at
     )
     SELECT id::text AS id, ${wake('done', '$3', "state = 'available'")} AS woke, ${notice('done', '$4')} AS notice FROM done`,
    [b.ids, perJob(b.ids, { a: b.attempts, r: b.results }, ['r']), ch.wake, ch.events],
  );
  return rows.map((r) => r.id);
}

/** Final completions: parallel arrays, one entry per job. */
export interface FinishBatch {
  ids: string[];
  attempts: number[];
  results: (string | null)[];
}

/**
 * Completions of jobs at their last stage (plain jobs, or a pipeline's final stage) as
 * a CTE `done` returning the ids that matched, fenced like {@link jobCompleteMany}; its
 * parameters start at `$p`, the events channel is `$ev`. `keep`: the row stays as
 * `completed` with its result until retention removes it; otherwise it is deleted at
 * once (a DELETE writes no new row version and no index entry: the cheapest way out of
 * the table). Announced jobs announce `completed` either way.
 */
function finishCte(s: string, keep: boolean, p: number, ev: number): string {
  return keep
    ? `done AS (
       UPDATE ${s}.jobs j
          SET state = 'completed', finished_at = now(), lease_expires_at = NULL, result = coalesce(${field(p + 1, 'r', '->')}, j.result),
              history = ${history('j.stage', "'completed'")}
        WHERE ${fenced(p, p + 1)}
       RETURNING j.id, j.queue, j.limit_key, ${notice('j', `$${ev}`)} AS notice
     )`
    : `done AS (
       DELETE FROM ${s}.jobs j
        WHERE ${fenced(p, p + 1)}
       RETURNING j.id, j.queue, j.limit_key, ${notice('j', `$${ev}`, "'completed'")} AS notice
     )`;
}

const finishParams = (keep: boolean, b: FinishBatch) => [b.ids, perJob(b.ids, keep ? { a: b.attempts, r: b.results } : { a: b.attempts }, ['r'])];

/** Completes jobs at their last stage (see {@link finishCte}). Returns the ids that matched. */
export async function jobFinishMany(x: Executor, s: string, ch: QueueChannels, keep: boolean, b: FinishBatch): Promise<string[]> {
  const params = finishParams(keep, b);
  const { rows } = await x.query<{ id: string }>(
    `WITH ${finishCte(s, keep, 1, params.length + 1)} SELECT id::text AS id, ${wake('done', `$${params.length + 2}`, LIMITED, false)} AS woke FROM done`,
    [...params, ch.events, ch.slots],
    PREPARE,
  );
  return rows.map((r) => r.id);
}

/**
 * Records final completions and claims more in one statement: one round trip and one
 * commit where a busy worker would otherwise spend two. The two CTEs touch disjoint rows
 * (running vs available). Returns the claimed rows and the completions that matched no
 * row (fenced out).
 */
export async function jobFinishAndClaim(
  x: Executor,
  s: string,
  ch: QueueChannels,
  keep: boolean,
  b: FinishBatch,
  a: ClaimRequest,
): Promise<{ missed: string[]; claimed: ClaimRow[]; controlled: boolean }> {
  const fp = finishParams(keep, b);
  const cp = claimParams(a);
  const ev = fp.length + cp.length + 1;
  // The completions answer with one extra row: the ids that did not match (usually none),
  // not a row per completed job, and whether a control applies to the claim.
  const { rows } = await x.query<ClaimRow & { missed: string[] | null; controlled: boolean | null }>(
    `WITH ${finishCte(s, keep, 1, ev)}, ${claimCtes(s, fp.length + 1, ev, !!a.after)}
     SELECT id, payload, attempt, attempt_base, max_attempts, stages, priority, timeout_ms, created_ms, run_us, NULL::text[] AS missed, NULL::boolean AS controlled, NULL::bigint AS woke FROM claimed
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            ARRAY(SELECT u::text FROM unnest($1::bigint[]) AS u WHERE u NOT IN (SELECT id FROM done)), (SELECT controlled FROM ctl),
            ${wake('done', `$${ev + 1}`, LIMITED, false)}`,
    [...fp, ...cp, ch.events, ch.slots],
    PREPARE,
  );
  const last = rows.pop()!;
  return { missed: last.missed ?? [], claimed: rows, controlled: last.controlled === true };
}

/** How a failed attempt ends, per job of {@link jobFailMany}. */
export interface FailBatch {
  ids: string[];
  attempts: number[];
  errors: (string | null)[];
  /** Straight to dead, whatever attempts remain. */
  discard: boolean[];
  /** Snooze: back to available after this delay, the attempt not counted. */
  snoozeMs: (number | null)[];
}

/**
 * Ends failed (or snoozed) attempts, fenced like {@link jobCompleteMany}. A retry is
 * scheduled in database time by the one retry policy (`retryDelaySql`), n = attempts of
 * this stage so far. With no attempts left, or `discard`,
 * the job goes to dead with its last error.
 */
export async function jobFailMany(
  x: Executor,
  s: string,
  ch: QueueChannels,
  b: FailBatch,
  backoff: RetryPolicy,
): Promise<{ id: string; state: string }[]> {
  const snooze = `${field(2, 's')}::float8`;
  const error = field(2, 'e');
  const dead = `(${snooze} IS NULL AND (${field(2, 'd')} IS NOT NULL OR j.attempt - j.attempt_base >= j.max_attempts))`;
  const newState = `CASE WHEN ${dead} THEN 'dead' ELSE 'available' END`;
  const { rows } = await x.query<{ id: string; state: string }>(
    `WITH done AS (
       UPDATE ${s}.jobs j
          SET state = ${newState},
              attempt_base = j.attempt_base + CASE WHEN ${snooze} IS NOT NULL THEN 1 ELSE 0 END,
              run_at = CASE
                WHEN ${snooze} IS NOT NULL THEN now() + ${snooze} * interval '1 millisecond'
                WHEN ${dead} THEN j.run_at
                ELSE now() + ${retryDelaySql('j.attempt - j.attempt_base', '$3', '$4', '$5')} * interval '1 millisecond' END,
              finished_at = CASE WHEN ${dead} THEN now() END,
              lease_expires_at = NULL,
              last_error = coalesce(${error}, j.last_error),
              errors = CASE WHEN ${error} IS NULL THEN j.errors
                ELSE ${appendError('j.errors', `jsonb_build_object('attempt', j.attempt - j.attempt_base, 'at', now(), 'durationMs', round(extract(epoch FROM now() - j.attempted_at) * 1000), 'error', ${error})`)} END,
              history = ${history('j.stage', newState)}
        WHERE ${fenced(1, 2)}
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at, j.limit_key
     )
     SELECT id::text AS id, state, ${wake('done', '$6', `((state = 'available' AND run_at <= now()) OR ${LIMITED})`)} AS woke, ${notice('done', '$7')} AS notice FROM done`,
    [
      b.ids,
      perJob(b.ids, { a: b.attempts, e: b.errors, d: b.discard.map((d) => d || null), s: b.snoozeMs }),
      backoff.baseMs,
      backoff.maxMs,
      backoff.jitter,
      ch.wake,
      ch.events,
    ],
  );
  return rows;
}

/** Renews the leases of running jobs, fenced by (id, attempt). Returns the ids still held. */
export async function jobHeartbeatMany(x: Executor, s: string, ids: string[], attempts: number[], leaseMs: number): Promise<string[]> {
  const { rows } = await x.query<{ id: string }>(
    `UPDATE ${s}.jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
      WHERE ${fenced(1, 2)}
      RETURNING j.id::text AS id`,
    [ids, perJob(ids, { a: attempts }), leaseMs],
    PREPARE,
  );
  return rows.map((r) => r.id);
}

/**
 * Rescues jobs whose lease expired (their worker died or lost its connection): back to
 * available with the attempt counted, or dead when none remain. SKIP LOCKED + LIMIT in
 * a CTE so concurrent sweeps of several processes split the work instead of waiting.
 * `fromUs`: only leases that ended at or after this database time (epoch microseconds;
 * null: all). Also returns the statement's database time (`nowUs`).
 */
export async function jobRescueExpired(
  x: Executor,
  s: string,
  ch: QueueChannels,
  limit: number,
  fromUs: string | null = null,
): Promise<{ rows: { id: string; state: string }[]; nowUs: string }> {
  const dead = 'j.attempt - j.attempt_base >= j.max_attempts';
  const { rows } = await x.query<{ id: string | null; state: string; now_us: string | null }>(
    `WITH expired AS (
       SELECT id FROM ${s}.jobs
        WHERE state = 'running' AND lease_expires_at < now()
          AND lease_expires_at >= coalesce(timestamptz 'epoch' + $4::bigint * interval '1 microsecond', '-infinity')
        ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
     ), done AS (
       UPDATE ${s}.jobs j
          SET state = CASE WHEN ${dead} THEN 'dead' ELSE 'available' END,
              run_at = now(), lease_expires_at = NULL,
              finished_at = CASE WHEN ${dead} THEN now() END,
              last_error = 'lease expired: the worker stopped heartbeating (died or lost its connection)',
              errors = ${appendError('j.errors', "jsonb_build_object('attempt', j.attempt - j.attempt_base, 'at', now(), 'durationMs', round(extract(epoch FROM now() - j.attempted_at) * 1000), 'error', 'lease expired')")},
              history = ${history('j.stage', `CASE WHEN ${dead} THEN 'dead' ELSE 'available' END`)}
         FROM expired WHERE j.id = expired.id
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at
     )
     SELECT id::text AS id, state, ${wake('done', '$2', "state = 'available'")} AS woke, ${notice('done', '$3')} AS notice, NULL::text AS now_us FROM done
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, (extract(epoch FROM now()) * 1000000)::bigint::text`,
    [limit, ch.wake, ch.events, fromUs],
  );
  const last = rows.pop()!;
  return { rows: rows as { id: string; state: string }[], nowUs: last.now_us! };
}

/** Cancels waiting or running jobs. A running job's worker finds out at its next heartbeat. */
export async function jobCancelMany(x: Executor, s: string, ch: QueueChannels, ids: string[]): Promise<string[]> {
  const { rows } = await x.query<{ id: string }>(
    `WITH done AS (
       UPDATE ${s}.jobs j SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL,
              history = ${history('j.stage', "'cancelled'")}
        WHERE j.id = ANY($1::bigint[]) AND j.state IN ('waiting', 'available', 'running')
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at
     )
     SELECT id::text AS id, ${notice('done', '$2')} AS notice FROM done`,
    [ids, ch.events],
  );
  return rows.map((r) => r.id);
}

// A workflow job retried while some of its dependencies are not completed waits for them again.
const RETRY_STATE = "CASE WHEN j.workflow_id IS NOT NULL AND j.deps_pending > 0 THEN 'waiting' ELSE 'available' END";

/**
 * Retries dead or cancelled jobs (or completed ones, when asked): available now, with
 * a fresh budget of attempts at the stage they stopped in. The attempt counter keeps
 * growing (attempt_base moves up), so a late worker of an old attempt stays fenced out.
 */
export async function jobRetryMany(x: Executor, s: string, ch: QueueChannels, ids: string[], states: string[]): Promise<string[]> {
  const { rows } = await x.query<{ id: string }>(
    `WITH done AS (
       UPDATE ${s}.jobs j SET state = ${RETRY_STATE}, attempt_base = j.attempt, run_at = now(), finished_at = NULL,
              stage_entered_at = now(), lease_expires_at = NULL,
              history = ${history('j.stage', RETRY_STATE)}
        WHERE j.id = ANY($1::bigint[]) AND j.state = ANY($2::text[])
       RETURNING j.id, j.queue, j.kind, j.stage, j.state, j.attempt, j.attempt_base, j.announce, j.priority, j.run_at
     )
     SELECT id::text AS id, ${wake('done', '$3', "state = 'available'")} AS woke, ${notice('done', '$4')} AS notice FROM done`,
    [ids, states, ch.wake, ch.events],
  );
  return rows.map((r) => r.id);
}

/**
 * Deletes finished jobs older than `olderThanMs` (database time), at most `limit` per call.
 * A member of a workflow stays while a job that depends on it has not finished (its
 * result is what `dependencyResults` reads; a dead dependency under the `hold` policy is
 * what holds its dependents): it goes with the first run after they finish.
 */
export async function jobDeleteFinished(x: Executor, s: string, olderThanMs: number, states: string[], limit: number): Promise<number> {
  // Batches keep each transaction short (no long lock, no giant WAL burst); SKIP LOCKED
  // lets several processes prune at once.
  const { rowCount } = await x.query(
    `WITH old AS (
       SELECT j.id FROM ${s}.jobs j
        WHERE j.state IN ('completed', 'dead', 'cancelled') AND j.state = ANY($2::text[])
          AND j.finished_at < now() - $1 * interval '1 millisecond'
          AND (j.workflow_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM ${s}.job_deps d JOIN ${s}.jobs w ON w.id = d.job_id
                 WHERE d.depends_on = j.id AND w.state IN ('waiting', 'available', 'running')))
        LIMIT $3 FOR UPDATE OF j SKIP LOCKED
     )
     DELETE FROM ${s}.jobs j USING old WHERE j.id = old.id`,
    [olderThanMs, states, limit],
  );
  return rowCount;
}

/**
 * Deletes up to `limit` token buckets of rate limits (`queue_rate_buckets`, one row per
 * limit unit: a partition key's stripe) that no longer hold anything: their limit is gone
 * or has no rate, or they were last written a whole period ago or more (a bucket refills
 * its share within one period, so it reads exactly as a missing one, which starts full).
 * Without this, a per-key rate limit over many keys (customers, tenants) leaves a row per
 * key and stripe for ever.
 *
 * Safe beside claimers: a claimer writes its unit's bucket under the unit's lock, in
 * its claim's transaction; a bucket being rewritten is skipped (row-locked), and one
 * rewritten since this statement's snapshot is re-checked as it is now (written now:
 * kept). A bucket deleted after a claimer read it was full, and the claimer's write
 * re-creates it from what it read. The unit's (queue, kind) is the JSON array before the
 * unit's last `#` (see job_admit, migration 014).
 */
export async function jobRateBucketsPrune(x: Executor, s: string, limit: number): Promise<number> {
  // The bucket's limit key without its stripe: the JSON array [queue, kind, value] before the last '#'.
  const limitKey = "left(b.key, length(b.key) - strpos(reverse(b.key), '#'))::jsonb";
  // FOR UPDATE re-checks the condition on the newest row of a bucket written after this
  // statement's snapshot (and skips one a claim in flight holds).
  const { rowCount } = await x.query(
    `DELETE FROM ${s}.queue_rate_buckets rb
      WHERE rb.key IN (
        SELECT b.key FROM ${s}.queue_rate_buckets b
         WHERE NOT EXISTS (
           SELECT 1 FROM ${s}.queue_controls q
            WHERE q.queue = ${limitKey} ->> 0 AND q.kind = ${limitKey} ->> 1
              AND q.rate_count IS NOT NULL AND b.at > now() - q.rate_period_ms * interval '1 millisecond')
         LIMIT $1
         FOR UPDATE SKIP LOCKED)`,
    [limit],
  );
  return rowCount ?? 0;
}

/**
 * Deletes, in one statement, up to `limit` batches settled before `olderThanMs`, and
 * the workflows without a member left among one page of workflows: the `limit` next
 * after `afterWorkflowId` in id order, those created before `olderThanMs`. A page, not
 * "the first `limit` deletable ones": workflows whose members are still there would
 * otherwise be probed again at every run, however many there are; the caller keeps the
 * cursor (`last`) and starts again from 0 after a short page (`scanned < limit`).
 */
export async function jobDeleteGroups(
  x: Executor,
  s: string,
  olderThanMs: number,
  limit: number,
  afterWorkflowId: string,
): Promise<{ batches: number; workflows: number; scanned: number; last: string | null }> {
  const { rows } = await x.query<{ batches: number; workflows: number; scanned: number; last: string | null }>(
    `WITH b AS (
       DELETE FROM ${s}.job_batches WHERE id IN (
         SELECT id FROM ${s}.job_batches
          WHERE settled_at < now() - $1 * interval '1 millisecond' LIMIT $2 FOR UPDATE SKIP LOCKED)
       RETURNING 1
     ), page AS (
       SELECT wf.id, wf.job_ids, wf.created_at FROM ${s}.job_workflows wf
        WHERE wf.id > $3::bigint ORDER BY wf.id LIMIT $2
     ), w AS (
       DELETE FROM ${s}.job_workflows d USING page
        WHERE d.id = page.id AND page.created_at < now() - $1 * interval '1 millisecond'
          AND NOT EXISTS (SELECT 1 FROM ${s}.jobs j WHERE j.id = ANY(page.job_ids))
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM b)::int AS batches, (SELECT count(*) FROM w)::int AS workflows,
            (SELECT count(*) FROM page)::int AS scanned, (SELECT max(id) FROM page)::text AS last`,
    [olderThanMs, limit, afterWorkflowId],
  );
  return rows[0];
}

const JOB_COLUMNS = `id::text AS id, queue, kind, payload, state, priority, run_at, attempt, attempt_base, max_attempts, lease_expires_at,
  unique_key, stages, nullif(stage, '') AS stage, announce, timeout_ms, last_error, errors, history, result, created_at, attempted_at, stage_entered_at, finished_at`;

/** One job by id. */
export async function jobGet(x: Executor, s: string, id: string): Promise<JobRow | undefined> {
  const { rows } = await x.query<JobRow>(`SELECT ${JOB_COLUMNS} FROM ${s}.jobs WHERE id = $1::bigint`, [id]);
  return rows[0];
}

/** Jobs filtered by queue, kind, state and stage (any may be null), newest first. */
export async function jobList(
  x: Executor,
  s: string,
  f: {
    queue: string | null;
    kind: string | null;
    state: string | null;
    stage: string | null;
    limit: number;
    beforeId: string | null;
    uniqueKey?: string | null;
    createdAfter?: Date | null;
    createdBefore?: Date | null;
  },
): Promise<JobRow[]> {
  const { rows } = await x.query<JobRow>(
    // ORDER BY j.id, qualified: a bare `id` names the output column `id::text AS id`
    // and sorted ids as text (9 after 16, issue 16).
    `SELECT ${JOB_COLUMNS} FROM ${s}.jobs j
      WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR state = $3)
        AND ($4::text IS NULL OR stage = $4) AND ($6::bigint IS NULL OR j.id < $6)
        AND ($7::text IS NULL OR j.unique_key = $7)
        AND ($8::timestamptz IS NULL OR j.created_at >= $8) AND ($9::timestamptz IS NULL OR j.created_at < $9)
      ORDER BY j.id DESC LIMIT $5`,
    [f.queue, f.kind, f.state, f.stage, f.limit, f.beforeId, f.uniqueKey ?? null, f.createdAfter ?? null, f.createdBefore ?? null],
  );
  return rows;
}

/** Counts per queue, kind and state; `scheduled` = available but not yet due. */
export async function jobStats(x: Executor, s: string): Promise<{ queue: string; kind: string; state: string; count: number }[]> {
  const { rows } = await x.query<{ queue: string; kind: string; state: string; count: number }>(
    `SELECT queue, kind, CASE WHEN state = 'available' AND run_at > now() THEN 'scheduled' ELSE state END AS state, count(*)::int AS count
       FROM ${s}.jobs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
  );
  return rows;
}

/**
 * The statement of {@link jobStatsEstimated} (`$1`: sample percent of the table for
 * completed jobs; 100 counts them exactly). Each branch reads what follows the backlog
 * or an index: waiting jobs the claim index (index-only), running ones the lease
 * index, dead and cancelled ones their partial index (migration 011); completed jobs,
 * the bulk of a busy table, are counted in a `TABLESAMPLE SYSTEM` sample of the
 * table's pages and scaled up. Tests EXPLAIN it.
 */
export const jobStatsEstimatedSql = (s: string): string =>
  `SELECT queue, kind, state, count::float8 AS count, estimated FROM (
     SELECT queue, kind, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END AS state, count(*) AS count, false AS estimated
       FROM ${s}.jobs WHERE state = 'available' GROUP BY 1, 2, 3
     UNION ALL
     SELECT queue, kind, 'waiting', count(*), false FROM ${s}.jobs WHERE state = 'waiting' GROUP BY 1, 2
     UNION ALL
     SELECT queue, kind, 'running', count(*), false FROM ${s}.jobs
      WHERE lease_expires_at IS NOT NULL AND state = 'running' GROUP BY 1, 2
     UNION ALL
     SELECT queue, kind, state, count(*), false FROM ${s}.jobs
      WHERE state IN ('dead', 'cancelled') GROUP BY 1, 2, 3
     UNION ALL
     SELECT queue, kind, 'completed', round(count(*) * 100 / $1::float8), $1::float8 < 100 FROM ${s}.jobs TABLESAMPLE SYSTEM ($1::float4)
      WHERE state = 'completed' GROUP BY 1, 2
   ) AS c ORDER BY 1, 2, 3`;

/**
 * Counts per queue, kind and state without a scan of the whole table: exact for
 * waiting, scheduled, running, dead and cancelled jobs; completed jobs estimated from
 * a sample of at most `samplePages` pages (exact when the table has no more pages).
 */
export async function jobStatsEstimated(x: Executor, s: string, samplePages: number): Promise<{ queue: string; kind: string; state: string; count: number; estimated: boolean }[]> {
  const { rows: size } = await x.query<{ pages: number }>(
    `SELECT greatest(c.relpages, (pg_relation_size(c.oid) / current_setting('block_size')::int))::float8 AS pages FROM pg_class c WHERE c.oid = $1::regclass`,
    [`${s}.jobs`],
  );
  const pages = Number(size[0]?.pages ?? 0);
  const percent = pages <= samplePages ? 100 : Math.max(0.0001, (samplePages / pages) * 100);
  const { rows } = await x.query<{ queue: string; kind: string; state: string; count: number; estimated: boolean }>(jobStatsEstimatedSql(s), [percent]);
  return rows.map((r) => ({ ...r, count: Number(r.count) }));
}

/** The statement of {@link jobListStuck} (`$1`: threshold in ms, `$2`: limit); tests EXPLAIN it. */
export const jobStuckSql = (s: string): string =>
  `WITH t AS (SELECT now() - $1 * interval '1 millisecond' AS before)
     SELECT * FROM (
       (SELECT ${JOB_COLUMNS}, (extract(epoch FROM now() - greatest(stage_entered_at, run_at)) * 1000)::float8 AS stuck_ms
          FROM ${s}.jobs, t
         WHERE state = 'available' AND run_at < t.before AND stage_entered_at < t.before
         ORDER BY greatest(stage_entered_at, run_at) LIMIT $2)
       UNION ALL
       (SELECT ${JOB_COLUMNS}, (extract(epoch FROM now() - stage_entered_at) * 1000)::float8 AS stuck_ms
          FROM ${s}.jobs, t
         WHERE lease_expires_at IS NOT NULL AND state = 'running' AND stage_entered_at < t.before
         ORDER BY stage_entered_at LIMIT $2)
     ) AS stuck ORDER BY stuck_ms DESC LIMIT $2`;

/**
 * Jobs stuck for more than `thresholdMs` (database time): due but unclaimed since
 * `max(stage_entered_at, run_at)`, or running since `stage_entered_at`. Jobs scheduled
 * in the future are not stuck. Each half reads its own partial index (the claim index,
 * the lease index), so the cost follows the backlog, never the history of finished jobs.
 */
export async function jobListStuck(
  x: Executor,
  s: string,
  thresholdMs: number,
  limit: number,
): Promise<(JobRow & { stuck_ms: number })[]> {
  const { rows } = await x.query<JobRow & { stuck_ms: number }>(
    jobStuckSql(s),
    [thresholdMs, limit],
  );
  return rows;
}

/**
 * Records that `tick` of schedule `name` is enqueued, if no later-or-equal tick was:
 * true means the caller enqueues it (in the same transaction), so a tick is enqueued
 * once even if two processes believe they lead.
 */
export async function cronClaimTick(x: Executor, s: string, name: string, tick: Date): Promise<boolean> {
  const { rows } = await x.query(
    `INSERT INTO ${s}.queue_cron AS c (name, last_tick) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET last_tick = EXCLUDED.last_tick WHERE c.last_tick < EXCLUDED.last_tick
     RETURNING name`,
    [name, tick],
  );
  return rows.length === 1;
}

/** A row of `queue_controls` ('' = every queue / every kind). */
export interface ControlRow {
  queue: string;
  kind: string;
  paused_at: Date | null;
  concurrency: number | null;
  partition_by: string[] | null;
  rate_count: number | null;
  rate_period_ms: number | null;
  updated_at: Date;
}

/** Pauses (queue, kind) ('' = every); an existing pause keeps its time. Returns the row. */
export async function controlPause(x: Executor, s: string, queue: string, kind: string): Promise<ControlRow> {
  const { rows } = await x.query<ControlRow>(
    `INSERT INTO ${s}.queue_controls AS c (queue, kind, paused_at) VALUES ($1, $2, now())
     ON CONFLICT (queue, kind) DO UPDATE SET paused_at = coalesce(c.paused_at, now()), updated_at = now()
     RETURNING *`,
    [queue, kind],
  );
  return rows[0];
}

/**
 * Runs a change of `queue_controls` (`sql`, a data-modifying statement RETURNING *),
 * wakes the workers of `wakeQueue` ('' = every queue) when it changed a row (something
 * may now start), then drops rows left with nothing.
 */
async function controlChange(x: Executor, s: string, ch: QueueChannels, sql: string, params: unknown[], wakeQueue: string): Promise<ControlRow[]> {
  const p = params.length;
  const { rows } = await x.query<ControlRow>(
    `WITH changed AS (${sql})
     SELECT changed.*, (SELECT count(pg_notify($${p + 1}::text, $${p + 2})) FROM changed WHERE $${p + 1}::text IS NOT NULL) AS woke FROM changed`,
    [...params, ch.wake, wakeQueue],
  );
  // Rows left with nothing go (a row changed again meanwhile is re-checked and kept).
  await x.query(`DELETE FROM ${s}.queue_controls WHERE paused_at IS NULL AND concurrency IS NULL AND rate_count IS NULL`);
  return rows;
}

/** Lifts the pause of exactly (queue, kind); returns whether there was one. Wakes the workers it concerns. */
export async function controlResume(x: Executor, s: string, ch: QueueChannels, queue: string, kind: string): Promise<boolean> {
  const rows = await controlChange(
    x,
    s,
    ch,
    `UPDATE ${s}.queue_controls SET paused_at = NULL, updated_at = now() WHERE queue = $1 AND kind = $2 AND paused_at IS NOT NULL RETURNING *`,
    [queue, kind],
    queue,
  );
  return rows.length > 0;
}

/** Sets the limit of (queue, kind), replacing any other; a null limit removes it (returns whether there was one). */
export async function controlSetLimit(
  x: Executor,
  s: string,
  ch: QueueChannels,
  queue: string,
  kind: string,
  l: { concurrency: number | null; partitionBy: string[] | null; rateCount: number | null; ratePeriodMs: number | null } | null,
): Promise<boolean> {
  if (l === null) {
    const rows = await controlChange(
      x,
      s,
      ch,
      `UPDATE ${s}.queue_controls SET concurrency = NULL, partition_by = NULL, rate_count = NULL, rate_period_ms = NULL, updated_at = now()
        WHERE queue = $1 AND kind = $2 AND (concurrency IS NOT NULL OR rate_count IS NOT NULL) RETURNING *`,
      [queue, kind],
      queue,
    );
    return rows.length > 0;
  }
  await controlChange(
    x,
    s,
    ch,
    `INSERT INTO ${s}.queue_controls AS c (queue, kind, concurrency, partition_by, rate_count, rate_period_ms) VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (queue, kind) DO UPDATE SET concurrency = EXCLUDED.concurrency, partition_by = EXCLUDED.partition_by,
            rate_count = EXCLUDED.rate_count, rate_period_ms = EXCLUDED.rate_period_ms, updated_at = now()
     RETURNING *`,
    [queue, kind, l.concurrency, l.partitionBy, l.rateCount, l.ratePeriodMs],
    queue,
  );
  return true;
}

/** Every pause and limit. */
export async function controlList(x: Executor, s: string): Promise<ControlRow[]> {
  const { rows } = await x.query<ControlRow>(`SELECT * FROM ${s}.queue_controls ORDER BY queue, kind`);
  return rows;
}

/** A row of `job_batches`. */
export interface BatchRow {
  id: string;
  total: number;
  completed: number;
  dead: number;
  cancelled: number;
  callback_queue: string;
  callback_kind: string;
  callback_job_id: string | null;
  outcome: 'completed' | 'dead' | null;
  created_at: Date;
  settled_at: Date | null;
}

/** Creates a batch of `total` jobs (its members are inserted next, in the same transaction). */
export async function batchInsert(
  x: Executor,
  s: string,
  b: { total: number; queue: string; kind: string; payload: string; maxAttempts: number },
): Promise<string> {
  const { rows } = await x.query<{ id: string }>(
    `INSERT INTO ${s}.job_batches (total, callback_queue, callback_kind, callback_payload, callback_max_attempts)
     VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING id::text AS id`,
    [b.total, b.queue, b.kind, b.payload, b.maxAttempts],
  );
  return rows[0].id;
}

/** One batch. */
export async function batchGet(x: Executor, s: string, id: string): Promise<BatchRow | undefined> {
  const { rows } = await x.query<BatchRow>(
    `SELECT id::text AS id, total, completed, dead, cancelled, callback_queue, callback_kind, callback_job_id::text AS callback_job_id,
            outcome, created_at, settled_at
       FROM ${s}.job_batches WHERE id = $1::bigint`,
    [id],
  );
  return rows[0];
}

/** A row of `job_workflows`. */
export interface WorkflowRow {
  id: string;
  name: string | null;
  on_failure: 'cancel' | 'hold';
  total: number;
  created_at: Date;
}

/**
 * Inserts a workflow and its jobs (the caller's transaction holds both statements):
 * ids drawn from the sequence first, so the edges can be written with them; jobs with
 * dependencies start 'waiting' with deps_pending set. Wakes the queues of the jobs that
 * are available and due. Returns the job ids in input order.
 */
export async function workflowInsert(
  x: Executor,
  s: string,
  ch: QueueChannels,
  w: { name: string | null; onFailure: string; keys: string[]; deps: number[][] },
  b: JobInsertBatch,
): Promise<{ id: string; jobIds: string[] }> {
  const { rows: ids } = await x.query<{ id: string }>(`SELECT nextval('${s}.jobs_id_seq')::text AS id FROM generate_series(1, $1::int)`, [b.kind.length]);
  const jobIds = ids.map((r) => r.id);
  const { rows } = await x.query<{ id: string }>(
    `INSERT INTO ${s}.job_workflows (name, on_failure, total, job_ids, job_keys) VALUES ($1, $2, $3, $4::bigint[], $5::text[]) RETURNING id::text AS id`,
    [w.name, w.onFailure, jobIds.length, jobIds, w.keys],
  );
  const pending = w.deps.map((d) => d.length);
  await x.query(
    `WITH ins AS (
       INSERT INTO ${s}.jobs (id, queue, kind, payload, priority, run_at, max_attempts, timeout_ms, workflow_id, deps_pending, state)
       SELECT t.id, t.queue, t.kind, t.payload, t.priority, coalesce(t.run_at, now() + coalesce(t.delay_ms, 0) * interval '1 millisecond'),
              t.max_attempts, t.timeout_ms, $11::bigint, t.pending, CASE WHEN t.pending > 0 THEN 'waiting' ELSE 'available' END
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::timestamptz[], $7::float8[], $8::int[], $9::int[], $10::int[])
              AS t(id, queue, kind, payload, priority, run_at, delay_ms, max_attempts, timeout_ms, pending)
        ORDER BY t.id
       RETURNING id, queue, priority, run_at, state
     )
     SELECT ${wake('ins', '$12', "state = 'available' AND run_at <= now()")} AS woke`,
    [jobIds, b.queue, b.kind, b.payload, b.priority, b.runAt, b.delayMs, b.maxAttempts, b.timeoutMs, pending, rows[0].id, ch.wake],
  );
  const from: string[] = [];
  const to: string[] = [];
  w.deps.forEach((d, i) => d.forEach((j) => (from.push(jobIds[j]), to.push(jobIds[i]))));
  if (from.length) await x.query(`INSERT INTO ${s}.job_deps (depends_on, job_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])`, [from, to]);
  return { id: rows[0].id, jobIds };
}

/** A workflow and its members (those not deleted), each with its key and dependencies. */
export async function workflowGet(
  x: Executor,
  s: string,
  id: string,
): Promise<{ w: WorkflowRow; jobs: { id: string; key: string; kind: string; state: string; result: unknown; depends_on: string[] }[] } | undefined> {
  const { rows } = await x.query<WorkflowRow & { job_ids: string[]; job_keys: string[] }>(
    `SELECT id::text AS id, name, on_failure, total, created_at, job_ids::text[] AS job_ids, job_keys FROM ${s}.job_workflows WHERE id = $1::bigint`,
    [id],
  );
  if (!rows[0]) return undefined;
  const { job_ids, job_keys, ...w } = rows[0];
  const { rows: jobs } = await x.query<{ id: string; kind: string; state: string; result: unknown; depends_on: string[] }>(
    `SELECT j.id::text AS id, j.kind, j.state, j.result,
            ARRAY(SELECT d.depends_on::text FROM ${s}.job_deps d WHERE d.job_id = j.id ORDER BY d.depends_on) AS depends_on
       FROM ${s}.jobs j WHERE j.id = ANY($1::bigint[])`,
    [job_ids],
  );
  const byId = new Map(jobs.map((j) => [j.id, j]));
  return {
    w,
    jobs: job_ids.flatMap((jid, i) => {
      const j = byId.get(jid);
      return j ? [{ ...j, key: job_keys[i] }] : [];
    }),
  };
}

/** The completed dependencies of a job (those still in the table), with their keys and results. */
export async function jobDependencyResults(x: Executor, s: string, id: string): Promise<{ id: string; key: string | null; kind: string; result: unknown }[]> {
  const { rows } = await x.query<{ id: string; key: string | null; kind: string; result: unknown }>(
    `SELECT p.id::text AS id, w.job_keys[array_position(w.job_ids, p.id)] AS key, p.kind, p.result
       FROM ${s}.job_deps d JOIN ${s}.jobs p ON p.id = d.depends_on
       LEFT JOIN ${s}.job_workflows w ON w.id = p.workflow_id
      WHERE d.job_id = $1::bigint AND p.state = 'completed'
      ORDER BY p.id`,
    [id],
  );
  return rows;
}

/** The database's clock. */
export async function dbNow(x: Executor): Promise<Date> {
  const { rows } = await x.query<{ now: Date }>('SELECT now() AS now');
  return new Date(rows[0].now);
}

/** One row of {@link jobActivity}: a queue's backlog now and its work since `since`. */
export interface JobActivityRow {
  queue: string;
  available: number;
  scheduled: number;
  running: number;
  completed: number;
  dead: number;
  started: number;
  latency_avg_ms: number | null;
  latency_max_ms: number | null;
}

/**
 * What the dashboard's sampler reads every few seconds, per queue: the backlog now
 * (available due, scheduled, running) and, since `$1`, the jobs that finished (completed,
 * dead) and the due-to-start latency (attempted_at - run_at) of the jobs that started.
 * Every branch reads a partial index (claim, lease, finished), so the cost follows the
 * backlog and the work of the interval, never the history of finished jobs. Returns
 * the database time the read was made at, the next call's `since`.
 */
export async function jobActivity(x: Executor, s: string, since: Date, lagMs = 0): Promise<{ at: Date; until: Date; rows: JobActivityRow[] }> {
  const { rows } = await x.query<JobActivityRow & { at: Date; until: Date }>(jobActivitySql(s), [since, lagMs]);
  const { at, until } = rows[rows.length - 1];
  return { at, until, rows: rows.filter((r) => r.queue !== null) };
}

/** The statement of {@link jobActivity} (`$1`: since, `$2`: lag in ms: the window ends at now() minus it); tests EXPLAIN it. */
export const jobActivitySql = (s: string): string =>
    // The window's end in whole milliseconds (a JS Date's precision: the caller's next
    // window starts there, so nothing between two windows is counted twice or missed).
    `WITH win AS (SELECT date_trunc('milliseconds', now() - make_interval(secs => $2::float8 / 1000)) AS until),
     waiting AS (
       SELECT queue, count(*) FILTER (WHERE run_at <= now())::int AS available, count(*) FILTER (WHERE run_at > now())::int AS scheduled
         FROM ${s}.jobs WHERE state = 'available' GROUP BY queue),
     running AS (
       SELECT queue, count(*)::int AS running FROM ${s}.jobs WHERE state = 'running' AND lease_expires_at IS NOT NULL GROUP BY queue),
     finished AS (
       SELECT queue, count(*) FILTER (WHERE state = 'completed')::int AS completed, count(*) FILTER (WHERE state = 'dead')::int AS dead
         FROM ${s}.jobs WHERE state IN ('completed', 'dead', 'cancelled') AND finished_at > $1 AND finished_at <= (SELECT until FROM win) GROUP BY queue),
     started AS (
       SELECT queue, count(*)::int AS started,
              avg(extract(epoch FROM attempted_at - run_at) * 1000)::float8 AS latency_avg_ms,
              max(extract(epoch FROM attempted_at - run_at) * 1000)::float8 AS latency_max_ms
         FROM (SELECT queue, attempted_at, run_at FROM ${s}.jobs WHERE state = 'running' AND lease_expires_at IS NOT NULL AND attempted_at > $1 AND attempted_at <= (SELECT until FROM win)
               UNION ALL
               SELECT queue, attempted_at, run_at FROM ${s}.jobs WHERE state IN ('completed', 'dead', 'cancelled') AND finished_at > $1 AND attempted_at > $1 AND attempted_at <= (SELECT until FROM win)) t
        GROUP BY queue),
     queues AS (SELECT queue FROM waiting UNION SELECT queue FROM running UNION SELECT queue FROM finished UNION SELECT queue FROM started)
     SELECT q.queue, coalesce(w.available, 0) AS available, coalesce(w.scheduled, 0) AS scheduled, coalesce(r.running, 0) AS running,
            coalesce(f.completed, 0) AS completed, coalesce(f.dead, 0) AS dead, coalesce(st.started, 0) AS started,
            st.latency_avg_ms, st.latency_max_ms, now() AS at, (SELECT until FROM win) AS until
       FROM queues q LEFT JOIN waiting w USING (queue) LEFT JOIN running r USING (queue)
       LEFT JOIN finished f USING (queue) LEFT JOIN started st USING (queue)
      UNION ALL SELECT NULL, 0, 0, 0, 0, 0, 0, NULL, NULL, now(), (SELECT until FROM win)
      ORDER BY 1 NULLS LAST`;
