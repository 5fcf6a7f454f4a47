/**
 * Consumer leases and handler timeouts: the attempt is committed before the handler
 * runs; a handler over handlerTimeoutMs rolls back and uses its attempt.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import { HeraldError } from '../errors.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { deferred, waitFor } from '../../test/support/wait.js';

let herald: Herald;
let db: TestDatabase;

useHerald({ mailbox: { retryDelayMs: 10, maxRetryDelayMs: 20 } }, async (d, h) => {
  db = d;
  herald = h;
  await h.driver.executor.query('CREATE TABLE side_effects (message_id text, run int)');
  await h.driver.executor.query('CREATE TABLE blocker (id int PRIMARY KEY)');
  await h.driver.executor.query('INSERT INTO blocker VALUES (1)');
});

const row = async (id: string) =>
  (await herald.driver.executor.query<{ state: string; attempts: number; last_error: string | null }>(`SELECT state, attempts, last_error FROM herald.mailbox_messages WHERE id = $1`, [id])).rows[0];

test('the attempt is committed before the handler runs', async () => {
  const inHandler = deferred();
  const finish = deferred();
  const c = herald.mailbox.consume('lease-visible', async () => {
    inHandler.resolve();
    await finish.promise;
  });
  try {
    await herald.mailbox.send({ to: 'lease-visible', payload: 1, id: 'lv-1' });
    await inHandler.promise;
    // Seen from another connection while the handler runs: counted, still ready (held by the consume transaction).
    assert.deepEqual(await row('lv-1'), { state: 'ready', attempts: 1, last_error: null });
    finish.resolve();
    await waitFor(async () => (await row('lv-1')).state === 'consumed');
    assert.equal((await row('lv-1')).attempts, 1);
  } finally {
    finish.resolve();
    await c.stop();
  }
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
  const locker = await (await import('pg')).default;
  const client = new locker.Client({ connectionString: db.url });
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

test('handlerTimeoutMs and leaseMs are validated', () => {
  assert.throws(() => herald.mailbox.consume('v', () => {}, { handlerTimeoutMs: -1 }), /handlerTimeoutMs/);
  assert.throws(() => herald.mailbox.consume('v', () => {}, { leaseMs: 0 }), /leaseMs/);
});

test('statements fenced by a lease find their rows by ctid: their cost does not grow with the backlog', async () => {
  const { mailboxConsumeLeased, mailboxLease } = await import('./queries.js');
  const { randomUUID } = await import('node:crypto');
  // A backlog the planner has no statistics for (never analyzed): the case where it took
  // the partial index of ready rows and filtered every waiting message on each take.
  const to = 'plan-backlog';
  for (let c = 0; c < 4; c++) await herald.mailbox.sendMany(Array.from({ length: 2500 }, (_, i) => ({ to, payload: c * 2500 + i })));
  const token = randomUUID();
  const leased = await mailboxLease(herald.driver.executor, '"herald"', to, null, 100, token, 30_000, 10);
  assert.equal(leased.length, 100);
  // Run the consume statement through an executor that EXPLAINs it instead, in a
  // transaction rolled back afterwards (the sentinel error).
  let scan: { 'Node Type': string; 'Rows Removed by Filter'?: number } | undefined;
  const rollback = new Error('rollback');
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      const explaining = {
        query: async (text: string, values?: unknown[]) => {
          type Node = { 'Node Type': string; 'Relation Name'?: string; 'Rows Removed by Filter'?: number; Plans?: Node[] };
          const r = await tx.query<{ 'QUERY PLAN': [{ Plan: Node }] }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, values);
          // The node that reads mailbox_messages under the UPDATE.
          const find = (n: Node): Node | undefined =>
            n['Relation Name'] === 'mailbox_messages' && n['Node Type'] !== 'ModifyTable' ? n : (n.Plans ?? []).map(find).find(Boolean);
          scan = find(r.rows[0]['QUERY PLAN'][0].Plan);
          return { rows: [], rowCount: 0 };
        },
      };
      await mailboxConsumeLeased(explaining as never, '"herald"', leased, token, null);
      throw rollback;
    }),
    (e) => e === rollback,
  );
  assert.equal(scan?.['Node Type'], 'Tid Scan');
  assert.equal(scan?.['Rows Removed by Filter'] ?? 0, 0);
});

test('the lease statement commits without waiting for the WAL flush (synchronous_commit off for its transaction alone)', async () => {
  const { mailboxLease } = await import('./queries.js');
  const { randomUUID } = await import('node:crypto');
  await herald.mailbox.send({ to: 'async-lease', payload: 1 });
  const rollback = new Error('rollback');
  let setting: string | undefined;
  let leased = 0;
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      leased = (await mailboxLease(tx, '"herald"', 'async-lease', null, 10, randomUUID(), 30_000, 10)).length;
      setting = (await tx.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit;
      throw rollback;
    }),
    (e) => e === rollback,
  );
  assert.equal(leased, 1);
  assert.equal(setting, 'off');
  // Only that transaction: the session's own setting is untouched afterwards.
  assert.equal((await herald.driver.executor.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit, 'on');
});
