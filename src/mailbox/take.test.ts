/**
 * Consumer takes and handler timeouts: the take row (the attempt) is sent before the
 * handler runs and commits while it runs (a row that fails does not fail the take); abandoned takes are counted by the next consumer, live ones never;
 * a handler over handlerTimeoutMs rolls back and uses its attempt; the statements'
 * cost does not grow with the backlog.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import pg from 'pg';
import type { Herald } from '../client.js';
import type { Executor } from '../driver/types.js';
import { HeraldError } from '../errors.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { deferred, nextEvent, waitFor } from '../../test/support/wait.js';
import { ABANDONED_ERROR, mailboxReapTakes, mailboxRecordFailure, mailboxTake, mailboxTakeInsert } from './queries.js';

let herald: Herald;
let db: TestDatabase;

// A cluster of the file's own: "a take does not visit the rows consumed..." needs index
// entries of consumed rows to become dead, which a transaction held open by another test
// file on a shared cluster prevents (seen when several files ran at once).
useHerald({ mailbox: { retryDelayMs: 10, maxRetryDelayMs: 20 } }, async (d, h) => {
  db = d;
  herald = h;
  await h.driver.executor.query('CREATE TABLE side_effects (message_id text, run int)');
  await h.driver.executor.query('CREATE TABLE blocker (id int PRIMARY KEY)');
  await h.driver.executor.query('INSERT INTO blocker VALUES (1)');
}, { isolated: true });

const row = async (id: string) =>
  (await herald.driver.executor.query<{ state: string; attempts: number; last_error: string | null; abandoned: boolean }>(
    `SELECT state, attempts, last_error, lease IS NOT NULL AS abandoned FROM herald.mailbox_messages WHERE id = $1`,
    [id],
  )).rows[0];
const takeRows = async (to: string) =>
  (await herald.driver.executor.query<{ ids: string[] }>(`SELECT ids FROM herald.mailbox_takes WHERE destination = $1 ORDER BY taken_at`, [to])).rows.map((r) => r.ids);

/** A consume transaction driven by hand on its own client: take, take row, then commit or roll back (a killed consumer). */
async function manualTake(to: string, limit: number) {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  const pid: number = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  await client.query('BEGIN');
  const rows = await mailboxTake(client as unknown as Executor, '"herald"', to, null, limit, null);
  const token = randomUUID();
  await mailboxTakeInsert(herald.driver.executor, '"herald"', { token, destination: to, ids: rows.map((r) => r.id) });
  return {
    rows,
    token,
    pid,
    commit: async () => (await client.query('COMMIT'), await client.end()),
    abandon: async () => (await client.query('ROLLBACK'), await client.end()),
  };
}

test('the take row is sent before the handler runs and commits while it runs; attempts seen from elsewhere lag by the run in flight', async () => {
  const inHandler = deferred();
  const finish = deferred();
  const c = herald.mailbox.consume('take-visible', async (m) => {
    assert.equal(m.attempts, 1, 'the handler sees its own delivery counted');
    inHandler.resolve();
    await finish.promise;
  });
  try {
    await herald.mailbox.send({ to: 'take-visible', payload: 1, id: 'tv-1' });
    await inHandler.promise;
    // Seen from another connection while the handler runs: the take row (the attempt)
    // commits (it was sent before the handler began); the message row shows the state
    // before the take (its update is in flight).
    await waitFor(async () => (await takeRows('take-visible')).length > 0, { what: 'the take row to commit' });
    assert.deepEqual(await takeRows('take-visible'), [['tv-1']]);
    assert.deepEqual(await row('tv-1'), { state: 'ready', attempts: 0, last_error: null, abandoned: false });
    // A look for abandoned takes counts nothing of a live one (its message is locked) and keeps its row.
    const reaped = await mailboxReapTakes(herald.driver.executor, '"herald"', 'take-visible', 5, 100);
    assert.deepEqual(reaped, { takes: 1, rows: [] });
    assert.deepEqual(await takeRows('take-visible'), [['tv-1']]);
    finish.resolve();
    await waitFor(async () => (await row('tv-1')).state === 'consumed');
    assert.equal((await row('tv-1')).attempts, 1);
  } finally {
    finish.resolve();
    await c.stop();
  }
  assert.deepEqual(await takeRows('take-visible'), [], 'the committed take row is deleted (by the next take, or at stop)');
});

test('a live take is not counted; the row of a committed one is dropped', async () => {
  const to = 'take-window';
  await herald.mailbox.sendMany([1, 2].map((i) => ({ to, payload: i, id: `tw-${i}` })));
  const t = await manualTake(to, 10);
  assert.equal(t.rows.length, 2);
  // The row is committed and unlocked, but its messages are held: nothing counted, nothing dropped.
  assert.deepEqual(await mailboxReapTakes(herald.driver.executor, '"herald"', to, 5, 100), { takes: 1, rows: [] });
  assert.deepEqual(await takeRows(to), [['tw-1', 'tw-2']]);
  await t.commit(); // its row stays (a consumer that died before its next take); the next look drops it (its messages are consumed)
  assert.deepEqual(await mailboxReapTakes(herald.driver.executor, '"herald"', to, 5, 100), { takes: 1, rows: [] });
  assert.deepEqual(await takeRows(to), []);
  assert.equal((await row('tw-1')).attempts, 1);
});

test('a failure record whose message another take holds does not wait for it; the take row stays and counts the attempt later', async () => {
  // A handler failed and its take rolled back; before the failure is recorded another
  // take (a lane of the same consumer, waiting for the connection the rollback freed)
  // takes the message again. That take waits for a pool connection for its own take
  // row before its handler runs: a failure record waiting for its lock on the last
  // connection stalls both until TAKE_ROW_TIMEOUT_MS (the mailbox.test.ts case).
  const to = 'take-held';
  await herald.mailbox.send({ to, payload: 1, id: 'th-1' });
  const first = await manualTake(to, 1);
  await first.abandon(); // the rollback after the handler threw
  const second = await manualTake(to, 1);
  assert.deepEqual(second.rows.map((r) => r.id), ['th-1']);
  let settled = false;
  const recording = mailboxRecordFailure(herald.driver.executor, '"herald"', 'th-1', first.token, 'boom', 5, { baseMs: 10, maxMs: 20, jitter: 0 }).finally(() => (settled = true));
  const blocked = async () =>
    (await herald.driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, [second.pid])).rows[0].n;
  await waitFor(async () => settled || (await blocked()) > 0, { what: 'the failure record to answer (or to wait for the take holding the message)' });
  assert.ok(settled, 'the failure record waits for the lock of the take that holds the message');
  assert.equal(await recording, 'held');
  // Nothing changed: both take rows name the message, its attempts are not counted yet.
  assert.deepEqual(await takeRows(to), [['th-1'], ['th-1']]);
  assert.deepEqual(await row('th-1'), { state: 'ready', attempts: 0, last_error: null, abandoned: false });
  await second.abandon(); // that take fails too (it would record its own failure; here it dies)
  const reaped = await mailboxReapTakes(herald.driver.executor, '"herald"', to, 5, 100);
  assert.deepEqual(reaped.rows, [{ id: 'th-1', state: 'ready', attempts: 2 }], 'both deliveries counted');
  assert.deepEqual(await takeRows(to), []);
});

test('take rows of a destination nobody consumes any more go with the retention of consumed messages (at least an hour old)', async () => {
  const to = 'take-orphan';
  await herald.mailbox.sendMany([1, 2].map((i) => ({ to, payload: i, id: `to-${i}` })));
  const t = await manualTake(to, 10);
  await t.abandon(); // a consumer killed in its handler, and no consumer of the destination after it
  assert.deepEqual(await takeRows(to), [['to-1', 'to-2']]);
  await herald.mailbox.purge({ consumedOlderThanMs: 0, deadOlderThanMs: null });
  assert.deepEqual(await takeRows(to), [['to-1', 'to-2']], 'younger than an hour: kept');
  await herald.driver.executor.query(`UPDATE herald.mailbox_takes SET taken_at = now() - interval '2 hours' WHERE destination = $1`, [to]);
  await herald.mailbox.purge({ consumedOlderThanMs: 0, deadOlderThanMs: null });
  assert.deepEqual(await takeRows(to), []);
});

test('an abandoned take is counted once; its messages are ready at once and each is then taken alone', async () => {
  const to = 'take-abandoned';
  await herald.mailbox.sendMany([1, 2, 3].map((i) => ({ to, payload: i, id: `ta-${i}` })));
  const t = await manualTake(to, 10);
  assert.equal(t.rows.length, 3);
  await t.abandon(); // what a killed consumer's transaction does
  assert.deepEqual(await row('ta-1'), { state: 'ready', attempts: 0, last_error: null, abandoned: false });
  const reaped = await mailboxReapTakes(herald.driver.executor, '"herald"', to, 5, 100);
  assert.equal(reaped.takes, 1);
  assert.deepEqual(reaped.rows.map((r) => [r.id, r.state, r.attempts]).sort(), [['ta-1', 'ready', 1], ['ta-2', 'ready', 1], ['ta-3', 'ready', 1]]);
  assert.deepEqual(await takeRows(to), []);
  // Counted once: a second look finds nothing.
  assert.deepEqual(await mailboxReapTakes(herald.driver.executor, '"herald"', to, 5, 100), { takes: 0, rows: [] });
  assert.deepEqual(await row('ta-2'), { state: 'ready', attempts: 1, last_error: null, abandoned: true });
  // A consumer takes them one at a time (each was abandoned), attempt 2 each.
  const seen: [string, number][] = [];
  const c = herald.mailbox.consume(
    to,
    (m) => {
      seen.push([m.id, m.attempts]);
    },
    { batchSize: 10 },
  );
  try {
    await waitFor(() => seen.length === 3, { what: 'the three messages' });
    assert.deepEqual(seen, [['ta-1', 2], ['ta-2', 2], ['ta-3', 2]]);
    assert.ok(c.takes >= 3, 'one take each');
  } finally {
    await c.stop();
  }
  assert.deepEqual(await row('ta-3'), { state: 'consumed', attempts: 2, last_error: null, abandoned: false });
});

test('a message abandoned at its last attempt dies when a consumer starts (message:dead, no handler run)', async () => {
  const to = 'take-poison';
  await herald.mailbox.send({ to, payload: 'poison', id: 'tp-1' });
  await herald.mailbox.send({ to, payload: 'fine', id: 'tp-2' });
  for (let i = 0; i < 2; i++) {
    const t = await manualTake(to, 1);
    assert.deepEqual(t.rows.map((r) => r.id), ['tp-1']);
    await t.abandon();
    if (i === 0) await mailboxReapTakes(herald.driver.executor, '"herald"', to, 2, 100); // counted by some consumer in between
  }
  const dead = nextEvent(herald.mailbox, 'message:dead');
  const ran: string[] = [];
  const c = herald.mailbox.consume(to, (m) => void ran.push(m.id), { maxAttempts: 2 });
  try {
    const [info] = await dead;
    assert.equal(info.id, 'tp-1');
    assert.equal(info.attempts, 2);
    await waitFor(() => ran.length === 1, { what: 'the message behind it' });
    assert.deepEqual(ran, ['tp-2']);
  } finally {
    await c.stop();
  }
  assert.deepEqual(await row('tp-1'), { state: 'dead', attempts: 2, last_error: ABANDONED_ERROR, abandoned: false });
  assert.deepEqual(await takeRows(to), []);
});

test('a handler that throws: the failure is recorded with its attempt, the take row is gone, the others of the batch are uncounted', async () => {
  const to = 'take-throws';
  await herald.mailbox.sendMany([1, 2, 3].map((i) => ({ to, payload: i, id: `tt-${i}` })));
  const failed = nextEvent(herald.mailbox, 'message:handlerError');
  let fail = true;
  const c = herald.mailbox.consume(
    to,
    (m) => {
      if (m.id === 'tt-2' && fail) {
        fail = false;
        throw new Error('no');
      }
    },
    { batchSize: 3 },
  );
  try {
    const [info] = await failed;
    assert.deepEqual([info.id, info.attempts], ['tt-2', 1]);
    await waitFor(async () => (await row('tt-2')).state === 'consumed', { what: 'the retry' });
    await waitFor(async () => (await row('tt-3')).state === 'consumed');
  } finally {
    await c.stop();
  }
  assert.equal((await row('tt-1')).attempts, 1, 'rolled back with the batch: counted once, by its successful take');
  assert.equal((await row('tt-2')).attempts, 2);
  assert.equal((await row('tt-2')).last_error, 'no');
  assert.deepEqual(await takeRows(to), []);
});

test('a handler over handlerTimeoutMs rolls back and uses its attempt; a late statement on its tx fails; a statement stuck on a lock ends', async () => {
  const errors: unknown[] = [];
  const firstTimedOut = deferred();
  herald.mailbox.on('message:handlerError', (e) => {
    if (e.to !== 'slow') return;
    errors.push(e.error);
    firstTimedOut.resolve();
  });
  const lateResult = deferred<unknown>();
  let runs = 0;
  // Hold a row lock so the second run's statement waits on it.
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  await client.query('BEGIN');
  await client.query('SELECT * FROM blocker FOR UPDATE');
  const c = herald.mailbox.consume(
    'slow',
    async (m, tx) => {
      runs++;
      await tx.query('INSERT INTO side_effects VALUES ($1, $2)', [m.id, runs]);
      if (runs === 1) {
        // Never returns in time; once the timeout was reported, uses its transaction again.
        await firstTimedOut.promise;
        lateResult.resolve(await tx.query('SELECT 1').catch((e) => e));
        return;
      }
      if (runs === 2) {
        await tx.query('UPDATE blocker SET id = 1'); // waits on the lock until statement_timeout
        return;
      }
    },
    { handlerTimeoutMs: 400 },
  );
  try {
    await herald.mailbox.send({ to: 'slow', payload: 'x', id: 'slow-1' });
    await waitFor(async () => (await row('slow-1')).state === 'consumed', { timeoutMs: 30_000, what: 'the third run to consume it' });
    assert.equal(runs, 3);
    assert.equal((await row('slow-1')).attempts, 3, 'both timed-out runs counted');
    assert.equal(errors.length, 2);
    assert.ok(errors.every((e) => e instanceof HeraldError || (e as { code?: string }).code === '57014'), 'a TIMEOUT, or the statement timeout');
    assert.ok(errors[0] instanceof HeraldError && (errors[0] as HeraldError).code === 'TIMEOUT');
    const late = await lateResult.promise;
    assert.ok(late instanceof HeraldError && late.code === 'TIMEOUT', 'a statement after the timeout is refused');
    const { rows } = await herald.driver.executor.query<{ run: number }>(`SELECT run FROM side_effects WHERE message_id = 'slow-1'`);
    assert.deepEqual(rows.map((r) => r.run), [3], 'only the committed run left its writes');
  } finally {
    await c.stop();
    await client.query('ROLLBACK').catch(() => {});
    await client.end();
  }
});

test('handlerTimeoutMs is validated', () => {
  assert.throws(() => herald.mailbox.consume('v', () => {}, { handlerTimeoutMs: -1 }), /handlerTimeoutMs/);
});

type PlanNode = { 'Node Type': string; 'Relation Name'?: string; 'Index Name'?: string; 'Actual Rows': number; 'Actual Loops': number; 'Rows Removed by Filter'?: number; Plans?: PlanNode[] };

/** Runs `run` with an executor that EXPLAINs (ANALYZE) its statement instead, in a transaction rolled back afterwards; returns the rows each node reading `relation` went through. */
async function rowsRead(relation: string, run: (ex: Executor) => Promise<unknown>): Promise<{ node: string; index?: string; read: number }[]> {
  const found: { node: string; index?: string; read: number }[] = [];
  const rollback = new Error('rollback');
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      const explaining = {
        query: async (text: string, values?: unknown[]) => {
          const r = await tx.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, values);
          const walk = (n: PlanNode): void => {
            if (n['Relation Name'] === relation && n['Node Type'] !== 'ModifyTable' && n['Node Type'] !== 'LockRows') {
              found.push({ node: n['Node Type'], index: n['Index Name'], read: (n['Actual Rows'] + (n['Rows Removed by Filter'] ?? 0)) * n['Actual Loops'] });
            }
            for (const p of n.Plans ?? []) walk(p);
          };
          walk(r.rows[0]['QUERY PLAN'][0].Plan);
          return { rows: [], rowCount: 0 };
        },
      };
      await run(explaining as never);
      throw rollback;
    }),
    (e) => e === rollback,
  );
  return found;
}

test('the take and the look for abandoned takes read rows by the batch, not by the backlog', async () => {
  // A backlog the planner has no statistics for (never analyzed): the case where a
  // statement of the lease design took the partial index of ready rows and filtered
  // every waiting message on each take.
  const to = 'plan-backlog';
  for (let c = 0; c < 4; c++) await herald.mailbox.sendMany(Array.from({ length: 2500 }, (_, i) => ({ to, payload: c * 2500 + i })));
  const take = await rowsRead('mailbox_messages', (ex) => mailboxTake(ex, '"herald"', to, null, 100, null));
  assert.ok(take.length > 0);
  for (const n of take) assert.ok(n.read <= 200, `the take read ${n.read} rows in a ${n.node} (${n.index}): ${JSON.stringify(take)}`);
  // An abandoned take of 100 of those messages, in the middle of the backlog.
  const t = await manualTake(to, 100);
  await t.abandon();
  await herald.driver.executor.query(`UPDATE herald.mailbox_takes SET ids = $2 WHERE token = $1`, [
    t.token,
    (await herald.driver.executor.query<{ id: string }>(`SELECT id FROM herald.mailbox_messages WHERE destination = $1 ORDER BY seq OFFSET 5000 LIMIT 100`, [to])).rows.map((r) => r.id),
  ]);
  const reap = await rowsRead('mailbox_messages', (ex) => mailboxReapTakes(ex, '"herald"', to, 5, 100));
  assert.ok(reap.length > 0);
  for (const n of reap) assert.ok(n.read <= 300, `the look for abandoned takes read ${n.read} rows in a ${n.node} (${n.index}): ${JSON.stringify(reap)}`);
  await herald.driver.executor.query(`DELETE FROM herald.mailbox_takes WHERE token = $1`, [t.token]);
});

test('the take row commits without waiting for the WAL flush (synchronous_commit off for its transaction alone)', async () => {
  const rollback = new Error('rollback');
  let setting: string | undefined;
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      await mailboxTakeInsert(tx, '"herald"', { token: randomUUID(), destination: 'async-take', ids: ['a', 'b'] });
      await mailboxTakeInsert(tx, '"herald"', { token: randomUUID(), destination: 'async-take', ids: ['c'] });
      assert.deepEqual((await tx.query<{ ids: string[] }>(`SELECT ids FROM herald.mailbox_takes WHERE destination = 'async-take' ORDER BY ids`)).rows.map((r) => r.ids), [['a', 'b'], ['c']]);
      setting = (await tx.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit;
      throw rollback;
    }),
    (e) => e === rollback,
  );
  assert.equal(setting, 'off');
  // Only that transaction: the session's own setting is untouched afterwards.
  assert.equal((await herald.driver.executor.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit, 'on');
});

test('a take does not visit the rows consumed since the last vacuum again and again (the ready index scanned in order, never by bitmap)', async () => {
  // What a consumer that keeps up leaves behind until autovacuum comes: every consumed
  // message's entry still in the index of ready messages. A bitmap scan visits the heap
  // row of each such entry at every take; an index scan marks them dead once and skips
  // them. The planner chose the bitmap scan in a 2,000 messages/s soak (no statistics
  // yet, 240,000 such entries); here the session's `enable_indexscan = off` makes it the
  // planner's choice for any statement the take does not pin down.
  const to = 'dead-entries';
  for (let c = 0; c < 4; c++) await herald.mailbox.sendMany(Array.from({ length: 10_000 }, (_, i) => ({ to, payload: c * 10_000 + i })));
  await herald.driver.executor.query(
    `UPDATE herald.mailbox_messages SET state = 'consumed', consumed_at = now()
      WHERE destination = $1 AND seq < (SELECT max(seq) - 9 FROM herald.mailbox_messages WHERE destination = $1)`,
    [to],
  );
  /** Heap blocks of mailbox_messages one take fetches (its transaction's own counter), and the rows it took; rolled back. */
  const takeCost = async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const fetched = async () => Number((await client.query(`SELECT pg_stat_get_xact_blocks_fetched('herald.mailbox_messages'::regclass)::text AS n`)).rows[0].n);
      await client.query('SET enable_indexscan = off');
      await client.query('BEGIN');
      const before = await fetched();
      const rows = await mailboxTake(client as unknown as Executor, '"herald"', to, null, 100, null);
      return { blocks: (await fetched()) - before, rows: rows.length };
    } finally {
      await client.query('ROLLBACK').catch(() => {});
      await client.end();
    }
  };
  const first = await takeCost();
  assert.equal(first.rows, 10);
  const second = await takeCost();
  assert.equal(second.rows, 10);
  assert.ok(second.blocks <= 100, `the second take fetched ${second.blocks} heap blocks (first: ${first.blocks}) to find 10 ready messages behind 39,990 consumed ones`);
});

test('a take row refused after it was sent: that take goes on (its failure counted by the failure record alone); later takes wait for their rows and run nothing until one commits', async () => {
  const to = 'take-row-refused';
  // A trigger refuses this destination's take rows: the insert fails after it was sent.
  await herald.driver.executor.query(`
    CREATE FUNCTION refuse_take_rows() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.destination = 'take-row-refused' THEN RAISE EXCEPTION 'take rows refused for this test'; END IF;
      RETURN NEW;
    END $$;
    CREATE TRIGGER refuse_take_rows BEFORE INSERT ON herald.mailbox_takes FOR EACH ROW EXECUTE FUNCTION refuse_take_rows()`);
  let refusing = true;
  const problems: Error[] = [];
  const onProblem = (err: Error) => problems.push(err);
  herald.mailbox.on('message:problem', onProblem);
  const refused = () => problems.filter((e) => /take rows refused/.test(e.message)).length;
  const handled: string[] = [];
  const c = herald.mailbox.consume(
    to,
    (m) => {
      handled.push(m.id);
      if (m.id === 'trr-bad') throw new Error('bad');
    },
    { maxAttempts: 2 },
  );
  try {
    // The first take: its row is refused after it was sent, the handler ran and threw; the
    // failure record, with no row to delete, counts the attempt by itself.
    await herald.mailbox.send({ to, payload: 1, id: 'trr-bad' });
    await waitFor(async () => (await row('trr-bad')).attempts === 1, { what: 'the first failure recorded' });
    assert.deepEqual(await row('trr-bad'), { state: 'ready', attempts: 1, last_error: 'bad', abandoned: false });
    // Later takes wait for their rows: refused again, each fails before any handler runs.
    await waitFor(() => refused() >= 3, { what: 'takes refused while the rows fail' });
    assert.deepEqual(handled, ['trr-bad'], 'no handler ran while take rows could not be written');
    await herald.driver.executor.query('DROP TRIGGER refuse_take_rows ON herald.mailbox_takes; DROP FUNCTION refuse_take_rows()');
    refusing = false;
    await herald.mailbox.send({ to, payload: 2, id: 'trr-1' });
    await waitFor(async () => (await row('trr-bad')).state === 'dead' && (await row('trr-1')).state === 'consumed', { what: 'delivery to resume once rows commit' });
  } finally {
    herald.mailbox.off('message:problem', onProblem);
    await c.stop();
    if (refusing) await herald.driver.executor.query('DROP TRIGGER refuse_take_rows ON herald.mailbox_takes; DROP FUNCTION refuse_take_rows()');
  }
  assert.deepEqual(await row('trr-bad'), { state: 'dead', attempts: 2, last_error: 'bad', abandoned: false });
  assert.deepEqual([...handled].sort(), ['trr-1', 'trr-bad', 'trr-bad'], 'each message ran once per attempt');
  assert.equal((await row('trr-1')).attempts, 1);
  assert.deepEqual(await takeRows(to), []);
});
