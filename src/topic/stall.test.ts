/**
 * Delivery does not depend on other transactions: a write transaction held open in
 * another database of the same cluster, and an idle-in-transaction session that
 * published, delay nothing published meanwhile. When the open publisher commits, its
 * messages arrive after it committed, once, in the same order for every group.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import type { Herald } from '../index.js';
import { otherDatabaseClient, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;
// A cluster of the file's own: the held transactions below are cluster-wide facts.
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

test('a write transaction open in another database and an idle-in-transaction publisher delay nothing; the late one arrives once after it commits', async () => {
  await herald.topics.create('live', { partitions: 2 });
  const seen = new Map<string, number[]>([['a', []], ['b', []]]);
  const consumers = ['a', 'b'].map((g) =>
    herald.topics.consumer<number>('live', g, ({ messages }) => void seen.get(g)!.push(...messages.map((m) => m.payload)), { pollIntervalMs: 60_000 }),
  );
  for (const c of consumers) await c.start();

  // 1. A write transaction in another database of the cluster, held open.
  const other = await otherDatabaseClient(db.url);
  // 2. An idle-in-transaction session of this database that published (and wrote).
  const idle = new pg.Client({ connectionString: db.url });
  idle.on('error', () => {});
  await idle.connect();
  try {
    await other.query('CREATE TABLE w (v int)');
    await other.query('BEGIN');
    await other.query('INSERT INTO w VALUES (1)');
    await idle.query('BEGIN');
    await idle.query('CREATE TABLE side (v int)');
    const late = await herald.topics.publish('live', -1, { tx: idle, key: 'k' });
    assert.equal(late.position, null, 'not committed yet: no position');
    const held = await other.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x');
    assert.ok(held.rows[0].x);

    // Published while both are open, with and without a key, by statement and in a transaction.
    await herald.topics.publish('live', 1, { key: 'k' });
    await herald.topics.publishMany('live', [{ payload: 2, key: 'k' }, { payload: 3 }]);
    await herald.transaction((tx) => herald.topics.publish('live', 4, { tx, key: 'k' }));
    // The safety poll is a minute: only the wake-ups deliver, and they must not wait for
    // the open transactions (a fraction of the 60 s either stays open).
    await waitFor(() => seen.get('a')!.length === 4 && seen.get('b')!.length === 4, { what: 'delivery while both transactions are open', timeoutMs: 20_000 });
    // (Only those two: a consumer's batch may be between statements at this moment too.)
    const pids = [(await idle.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0].p, (await other.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0].p];
    const state = await herald.driver.executor.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL AND pid = ANY($1::int[])`,
      [pids],
    );
    assert.equal(state.rows[0].n, 2, 'both writers were still open while their neighbours were delivered');
    for (const g of ['a', 'b']) assert.deepEqual([...seen.get(g)!].sort(), [1, 2, 3, 4]);

    // The idle publisher commits: its message arrives after, once, for both groups.
    await idle.query('COMMIT');
    await waitFor(() => seen.get('a')!.length === 5 && seen.get('b')!.length === 5, { what: 'the late message', timeoutMs: 20_000 });
    for (const g of ['a', 'b']) {
      assert.equal(seen.get(g)!.filter((v) => v === -1).length, 1);
      assert.equal(seen.get(g)![4], -1, 'delivered after everything that committed before it');
    }
    // Its position sorts after those: both groups read the same log.
    const all = await herald.topics.read<number>('live', { after: 'earliest' });
    assert.deepEqual(all.messages.map((m) => m.payload).slice(-1), [-1]);
    assert.equal(all.messages.find((m) => m.payload === -1)!.id, late.id, 'the id publish returned');
    await other.query('COMMIT');
    // Nothing more comes (one more publish flushes any straggler through the same path).
    await herald.topics.publish('live', 5);
    await waitFor(() => seen.get('a')!.length === 6 && seen.get('b')!.length === 6);
    for (const g of ['a', 'b']) assert.deepEqual([...seen.get(g)!].sort((x, y) => x - y), [-1, 1, 2, 3, 4, 5]);
  } finally {
    await idle.end().catch(() => {});
    await other.end().catch(() => {});
    for (const c of consumers) await c.stop();
  }
});

test('tail and read are not held back either', async () => {
  await herald.topics.create('tailing', { partitions: 1 });
  const hold = new pg.Client({ connectionString: db.url });
  hold.on('error', () => {});
  await hold.connect();
  const abort = new AbortController();
  try {
    await hold.query('BEGIN');
    await hold.query('SELECT pg_current_xact_id()');
    const got: number[] = [];
    const reading = (async () => {
      for await (const m of herald.topics.tail<number>('tailing', { after: 'earliest', signal: abort.signal, pollIntervalMs: 60_000 })) {
        got.push(m.payload);
        if (got.length === 3) return;
      }
    })();
    await herald.topics.publishMany('tailing', [1, 2, 3].map((payload) => ({ payload })));
    await reading;
    assert.deepEqual(got, [1, 2, 3]);
    assert.equal((await herald.topics.read('tailing')).messages.length, 3);
  } finally {
    abort.abort();
    await hold.query('ROLLBACK').catch(() => {});
    await hold.end().catch(() => {});
  }
});
