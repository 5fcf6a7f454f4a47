import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { waitFor } from '../../test/support/wait.js';
import type { RowChange } from './changes.js';

let db: TestDatabase;
let herald: Herald;
const q = (text: string, values?: unknown[]) => herald.driver.executor.query(text, values);

before(async () => {
  db = await freshDatabase();
  herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
  await q(`CREATE TABLE orders (id bigint PRIMARY KEY, tenant text NOT NULL, total int NOT NULL DEFAULT 0)`);
  await q(`CREATE SCHEMA "Shop"`);
  await q(`CREATE TABLE "Shop"."Line Items" (order_id bigint, line int, qty int, PRIMARY KEY (order_id, line))`);
  await q(`CREATE TABLE nokey (a int, b int)`);
});
after(async () => {
  await herald.close();
  await db.drop();
});

test('a tracked table announces INSERT, UPDATE and DELETE with table, op and keys, never the row', async () => {
  const t = await herald.changes.track('orders');
  assert.deepEqual([t.table, t.columns, t.maxKeys, t.toOutbox, t.channel], ['public.orders', ['id'], 20, false, 'herald.changes:public.orders']);
  const got: RowChange[] = [];
  const sub = herald.changes.listen('orders', (c) => void got.push(c));
  await sub.established;
  await q(`INSERT INTO orders (id, tenant) VALUES (1, 'a'), (2, 'b')`);
  await q(`UPDATE orders SET total = 5 WHERE id = 2`);
  await q(`UPDATE orders SET total = 5 WHERE id = 999`); // no row: no announcement
  await q(`DELETE FROM orders WHERE id = 1`);
  await waitFor(() => got.length >= 3, { what: 'three announcements' });
  assert.deepEqual(got, [
    { table: 'public.orders', op: 'INSERT', count: 2, keys: [{ id: 1 }, { id: 2 }], many: false },
    { table: 'public.orders', op: 'UPDATE', count: 1, keys: [{ id: 2 }], many: false },
    { table: 'public.orders', op: 'DELETE', count: 1, keys: [{ id: 1 }], many: false },
  ]);
  await sub.close();
});

test('a bulk UPDATE of 100,000 rows commits and sends a bounded number of notifications ("many")', async () => {
  const n = scaled(100_000);
  await q(`CREATE TABLE bulk (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)`);
  await q(`INSERT INTO bulk (id) SELECT g FROM generate_series(1, $1::int) AS g`, [n]);
  await herald.changes.track('bulk', { maxKeys: 50 });
  const got: RowChange[] = [];
  const sub = herald.changes.listen('public.bulk', (c) => void got.push(c));
  await sub.established;
  const res = await q(`UPDATE bulk SET v = v + 1`);
  assert.equal(res.rowCount, n);
  // A marker after the bulk statement: once it arrives, everything before it has.
  await q(`INSERT INTO bulk (id) VALUES (0)`);
  await waitFor(() => got.some((c) => c.op === 'INSERT'), { what: 'the marker insert' });
  assert.deepEqual(got, [
    { table: 'public.bulk', op: 'UPDATE', count: n, keys: null, many: true },
    { table: 'public.bulk', op: 'INSERT', count: 1, keys: [{ id: 0 }], many: false },
  ]);
  // Many statements in one transaction: one notification each at most, merged when equal.
  await herald.transaction(async (tx) => {
    for (let i = 1; i <= 50; i++) await tx.query(`UPDATE bulk SET v = v + 1 WHERE id BETWEEN 1 AND 100`);
  });
  await q(`DELETE FROM bulk WHERE id = 0`);
  await waitFor(() => got.some((c) => c.op === 'DELETE'), { what: 'the marker delete' });
  assert.equal(got.length, 4, 'fifty identical announcements of one transaction are merged into one');
  assert.deepEqual(got[2], { table: 'public.bulk', op: 'UPDATE', count: 100, keys: null, many: true });
  await sub.close();
});

test('identifiers are quoted: mixed case, spaces, composite keys, explicit columns; bad names are rejected', async () => {
  const t = await herald.changes.track('Shop.Line Items');
  assert.deepEqual(t.columns, ['order_id', 'line']);
  const got: RowChange[] = [];
  const sub = herald.changes.listen('Shop.Line Items', (c) => void got.push(c));
  await sub.established;
  await q(`INSERT INTO "Shop"."Line Items" VALUES (7, 1, 3)`);
  await waitFor(() => got.length === 1);
  assert.deepEqual(got[0].keys, [{ order_id: 7, line: 1 }]);
  await sub.close();

  await assert.rejects(herald.changes.track('nokey'), (e: HeraldError) => e.code === 'INVALID_ARGUMENT' && /primary key/.test(e.message));
  const nk = await herald.changes.track('nokey', { columns: ['a'] });
  assert.deepEqual(nk.columns, ['a']);
  await assert.rejects(herald.changes.track('orders', { columns: ['nope"; DROP TABLE orders; --'] }), /no column/);
  await assert.rejects(herald.changes.track('missing'), (e: HeraldError) => e.code === 'NOT_FOUND');
  await assert.rejects(herald.changes.track('orders"; DROP TABLE orders; --'), (e: HeraldError) => e.code === 'NOT_FOUND');
  await assert.rejects(herald.changes.track('orders', { maxKeys: -1 }), InvalidOptionError);
  assert.equal((await q(`SELECT to_regclass('public.orders') AS t`)).rows[0].t, 'orders');
  const long = 'x'.repeat(60);
  assert.match(herald.changes.channelFor(`${long}.t`), /^herald\.changes:#[0-9a-f]{32}$/);
});

test('toOutbox writes one durable outbox event per changed row, only when the statement commits', async () => {
  await q(`CREATE TABLE durable (id int PRIMARY KEY, v int)`);
  await herald.changes.track('durable', { toOutbox: true });
  await q(`INSERT INTO durable VALUES (1, 1), (2, 2)`);
  await assert.rejects(
    herald.transaction(async (tx) => {
      await tx.query(`UPDATE durable SET v = 10`);
      throw new Error('rollback');
    }),
  );
  await q(`DELETE FROM durable WHERE id = 2`);
  const { rows } = await q(`SELECT key, payload FROM herald.outbox_events WHERE type = 'herald.change' ORDER BY seq`);
  assert.deepEqual(rows, [
    { key: 'public.durable:{"id": 1}', payload: { op: 'INSERT', key: { id: 1 }, table: 'public.durable' } },
    { key: 'public.durable:{"id": 2}', payload: { op: 'INSERT', key: { id: 2 }, table: 'public.durable' } },
    { key: 'public.durable:{"id": 2}', payload: { op: 'DELETE', key: { id: 2 }, table: 'public.durable' } },
  ]);
});

test('list and untrack', async () => {
  await q(`CREATE TABLE gone (id int PRIMARY KEY)`);
  await herald.changes.track('gone');
  assert.ok((await herald.changes.list()).some((t) => t.table === 'public.gone'));
  assert.equal(await herald.changes.untrack('gone'), true);
  assert.equal(await herald.changes.untrack('gone'), false);
  assert.ok(!(await herald.changes.list()).some((t) => t.table === 'public.gone'));
  const { rows } = await q(`SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'public.gone'::regclass AND NOT tgisinternal`);
  assert.equal(rows[0].n, 0);
});
