import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { test } from 'node:test';
import postgres from 'postgres';
import type { Herald } from '../client.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { terminateBackends, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { deferred, nextEvent, waitFor } from '../../test/support/wait.js';
import { verifyWebhookSignature, webhookSink, type OutboxEvent } from './sinks.js';

let db: TestDatabase;
let herald: Herald;

useHerald({ notifier: { queueUsageIntervalMs: 0 } }, (d, h) => {
  db = d;
  herald = h;
});

test('an event added in a rolled-back transaction is never published; a committed one is', async () => {
  const seen: OutboxEvent[] = [];
  const relay = herald.outbox.relay({ sink: (e) => void seen.push(e), pollIntervalMs: 60_000 });
  let rolledBackId = '';
  await assert.rejects(
    herald.transaction(async (tx) => {
      rolledBackId = await herald.outbox.add({ type: 'rb.test', key: 'rb', payload: { v: 'rolled back' } }, { tx });
      throw new Error('abort');
    }),
    /abort/,
  );
  const committedId = await herald.transaction((tx) => herald.outbox.add({ type: 'rb.test', key: 'rb', payload: { v: 'committed' }, headers: { h: '1' } }, { tx }));
  // The relay polls once a minute: only the NOTIFY of the commit can wake it in time.
  await waitFor(() => seen.some((e) => e.id === committedId), { what: 'the committed event' });
  await relay.stop();
  assert.ok(rolledBackId.length > 0);
  assert.equal(seen.filter((e) => e.id === rolledBackId).length, 0);
  const e = seen.find((x) => x.id === committedId)!;
  assert.deepEqual([e.type, e.key, e.payload, e.headers, e.attempts], ['rb.test', 'rb', { v: 'committed' }, { h: '1' }, 0]);
  assert.ok(e.createdAt instanceof Date);
});

test('add through a postgres.js transaction, addMany keeps array order', async () => {
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    const id = await sql.begin((tx) => herald.outbox.add({ type: 'pjs', key: 'pjs' }, { tx }));
    const ids = await herald.outbox.addMany([
      { type: 'many', key: 'm', payload: 1 },
      { type: 'many', key: null, payload: 2 },
      { type: 'many', key: 'm', payload: 3 },
    ]);
    assert.equal(ids.length, 3);
    const { rows } = await herald.driver.executor.query<{ id: string; payload: number }>(
      `SELECT id::text AS id, payload FROM herald.outbox_events WHERE id = ANY($1::uuid[]) ORDER BY seq`,
      [[id, ...ids]],
    );
    assert.deepEqual(rows.map((r) => r.id), [id, ...ids]);
    assert.deepEqual(rows.slice(1).map((r) => r.payload), [1, 2, 3]);
  } finally {
    await sql.end();
  }
});

test('a poison event is dead-lettered after its attempts while other keys keep flowing; redrive publishes it', async () => {
  let healed = false;
  const published = new Map<string, number>();
  const relay = herald.outbox.relay({
    sink: (e) => {
      if (e.type === 'poison' && !healed) throw new Error('cannot publish poison');
      published.set(e.id, (published.get(e.id) ?? 0) + 1);
    },
    maxAttempts: 3,
    retryBaseDelayMs: 20,
    pollIntervalMs: 100,
    batchSize: 50,
  });
  const retries: number[] = [];
  relay.on('relay:retry', (r) => retries.push(r.attempts));
  const died = nextEvent<[{ event: OutboxEvent; attempts: number }]>(relay, 'dead');
  const poisonId = await herald.outbox.add({ type: 'poison', key: 'p' });
  const sameKeyId = await herald.outbox.add({ type: 'after-poison', key: 'p' });
  const others = await herald.outbox.addMany(Array.from({ length: 200 }, (_, i) => ({ type: 'ok', key: `k${i % 20}` })));
  const [dead] = await died;
  assert.equal(dead.event.id, poisonId);
  assert.equal(dead.attempts, 3);
  assert.deepEqual(retries, [1, 2]);
  await waitFor(() => others.every((id) => published.has(id)) && published.has(sameKeyId), { what: 'the other events' });
  const list = await herald.outbox.dead();
  assert.deepEqual(list.map((d) => d.id), [poisonId]);
  assert.equal(list[0].lastError, 'cannot publish poison');
  assert.equal((await herald.outbox.stats()).dead, 1);
  healed = true;
  assert.equal(await herald.outbox.redrive({ ids: [poisonId] }), 1);
  await waitFor(() => published.get(poisonId) === 1, { what: 'the redriven event' });
  await relay.stop();
  assert.equal((await herald.outbox.dead()).length, 0);
  assert.ok([...published.values()].every((n) => n === 1), 'each event published once');
  const stats = await herald.outbox.stats();
  assert.equal(stats.pending, 0);
  assert.equal(stats.dead, 0);
  await assert.rejects(herald.outbox.redrive({ ids: ['nope'] }), InvalidOptionError);
});

test('the webhook sink signs the body, sends the event id as idempotency key, and fails on errors and timeouts', async () => {
  const secret = 's3cret';
  const got: { id: string; ok: boolean; body: Record<string, unknown> }[] = [];
  let mode: 'ok' | 'fail' | 'hang' = 'fail';
  const hung: ServerResponse[] = [];
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    for await (const c of req) body += c;
    const ok = verifyWebhookSignature(secret, { signature: req.headers['x-herald-signature'] as string, timestamp: req.headers['x-herald-timestamp'] as string, body });
    got.push({ id: req.headers['idempotency-key'] as string, ok, body: JSON.parse(body) });
    if (mode === 'hang') return void hung.push(res);
    res.writeHead(mode === 'ok' ? 204 : 500).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`;
  const relay = herald.outbox.relay({ sink: webhookSink({ url, secret, timeoutMs: 300 }), retryBaseDelayMs: 20, pollIntervalMs: 50, maxAttempts: 100 });
  try {
    const errors: unknown[] = [];
    relay.on('relay:retry', (r) => errors.push(r.error));
    const id = await herald.outbox.add({ type: 'hook.test', key: 'h', payload: { a: 1 }, headers: { x: 'y' } });
    await waitFor(() => errors.length >= 1, { what: 'a failed attempt (500)' });
    assert.match(String((errors[0] as Error).message), /500/);
    mode = 'hang';
    await waitFor(() => errors.some((e) => e instanceof HeraldError && e.code === 'TIMEOUT'), { what: 'a timed-out attempt' });
    mode = 'ok';
    await waitFor(async () => (await herald.outbox.stats()).pending === 0, { what: 'the event published' });
    assert.ok(got.length >= 3);
    assert.ok(got.every((g) => g.ok && g.id === id), 'every request signed, with the event id');
    assert.deepEqual(got.at(-1)!.body, { id, type: 'hook.test', key: 'h', payload: { a: 1 }, headers: { x: 'y' }, createdAt: got[0].body.createdAt });
    assert.equal(verifyWebhookSignature('wrong', { signature: 'v1=00', timestamp: String(Math.floor(Date.now() / 1000)), body: '{}' }), false);
  } finally {
    await relay.stop();
    for (const r of hung) r.destroy();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('relay options are validated; stop() is idempotent and leaves no subscription behind', async () => {
  assert.throws(() => herald.outbox.relay({ sink: () => {}, batchSize: 0 }), InvalidOptionError);
  assert.throws(() => herald.outbox.relay({ sink: () => {}, pollIntervalMs: -1 }), /pollIntervalMs/);
  assert.throws(() => herald.outbox.relay({ sink: 42 as never }), /sink/);
  assert.throws(() => webhookSink({ url: 'ftp://x', secret: 's' }), /url/);
  await assert.rejects(herald.outbox.add({ type: '' }), HeraldError);
  const relay = herald.outbox.relay({ sink: () => {} });
  assert.equal(relay.start(), relay);
  await waitFor(() => herald.notifier.stats().channels['herald.outbox']?.listening, { what: 'LISTEN' });
  await relay.stop();
  await relay.stop();
  assert.equal(relay.running, false);
  assert.equal(herald.notifier.stats().channels['herald.outbox'], undefined);
  assert.equal(herald.outbox.relays().length, 0);
});

test('prune deletes published events older than the given age', async () => {
  const id = await herald.outbox.add({ type: 'prune.me' });
  const done = deferred();
  const relay = herald.outbox.relay({ sink: (e) => e.id === id && done.resolve() });
  await done.promise;
  await relay.stop();
  const before = (await herald.outbox.stats()).published;
  assert.ok(before >= 1);
  assert.equal(await herald.outbox.prune({ olderThanMs: 0 }), before);
  assert.equal((await herald.outbox.stats()).published, 0);
});

test('a relay whose connections are terminated reports the problem, reconnects and keeps publishing', async () => {
  const seen = new Set<string>();
  const relay = herald.outbox.relay({ sink: (e) => void seen.add(e.id), pollIntervalMs: 100 });
  const first = await herald.outbox.add({ type: 'term', key: 't' });
  await waitFor(() => seen.has(first), { what: 'the first event' });
  const problems: Error[] = [];
  relay.on('relay:problem', (e) => problems.push(e));
  await terminateBackends(db.name);
  const ids: string[] = [];
  // The pool's idle clients were killed too: adding may need a retry.
  await waitFor(async () => ids.push(await herald.outbox.add({ type: 'term', key: 't' })), { what: 'an add after the terminate' });
  await waitFor(() => ids.every((id) => seen.has(id)), { what: 'events after the terminate' });
  await relay.stop();
  assert.equal((await herald.outbox.stats()).pending, 0);
});

test('herald.outbox_wake = off skips the wake-up NOTIFY of that transaction', async () => {
  const sub = herald.listen('herald.outbox');
  await sub.established;
  await herald.transaction(async (tx) => {
    await tx.query(`SET LOCAL herald.outbox_wake = 'off'`);
    await herald.outbox.add({ type: 'quiet' }, { tx });
  });
  await herald.outbox.add({ type: 'loud' });
  await herald.notify('herald.outbox', 'marker');
  const payloads: string[] = [];
  for (;;) {
    const n = await sub.wait({ timeoutMs: 15_000 });
    assert.ok(n, 'the marker arrives');
    payloads.push(n.payload);
    if (n.payload === 'marker') break;
  }
  await sub.close();
  assert.deepEqual(payloads, ['', 'marker'], 'one wake-up (the loud add), none for the quiet one');
});

test('a backlog of one key drains back to back, without waiting for the poll between events', async () => {
  const ids = await herald.outbox.addMany(Array.from({ length: 200 }, (_, i) => ({ type: 'one.key', key: 'single', payload: i })));
  const seen: unknown[] = [];
  // One event of the key per claim: the relay must claim again at once, not sleep a minute.
  const relay = herald.outbox.relay({ sink: (e) => void (e.type === 'one.key' && seen.push(e.payload)), pollIntervalMs: 60_000 });
  await waitFor(() => seen.length === ids.length, { timeoutMs: 30_000, what: 'the whole backlog of the key' });
  await relay.stop();
  assert.deepEqual(seen, Array.from({ length: 200 }, (_, i) => i), 'in order');
});
