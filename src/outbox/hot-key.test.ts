import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { scaled } from '../../test/support/scale.js';
import { deferred } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;

useHerald({ notifier: { queueUsageIntervalMs: 0 } }, (d, h) => {
  db = d;
  herald = h;
});

test('one key with 2,000 pending events drains in order in runs, while other keys and keyless events flow beside it', async () => {
  const hot = scaled(2000);
  const others = 200;
  // The hot key's backlog first, then other keys' events and keyless ones behind it.
  for (let i = 0; i < hot; i += 500) {
    await herald.outbox.addMany(Array.from({ length: Math.min(500, hot - i) }, (_, j) => ({ type: 'hot', key: 'hot', payload: { n: i + j } })));
  }
  await herald.outbox.addMany(Array.from({ length: others }, (_, j) => ({ type: 'other', key: j % 2 ? `other-${j % 20}` : null, payload: { n: j } })));
  const total = hot + others;
  const lastSeq = new Map<string, bigint>();
  const inversions: string[] = [];
  const inFlight = new Map<string, number>();
  let overlaps = 0;
  const ids = new Set<string>();
  let dup = 0;
  let otherDoneAtHot = -1;
  let hotSeen = 0;
  let otherSeen = 0;
  const done = deferred<void>();
  const sink = async (e: { id: string; key: string | null; seq: string }) => {
    const k = e.key ?? `none-${e.id}`;
    if ((inFlight.get(k) ?? 0) > 0) overlaps++;
    inFlight.set(k, (inFlight.get(k) ?? 0) + 1);
    await Promise.resolve();
    inFlight.set(k, inFlight.get(k)! - 1);
    if (ids.has(e.id)) dup++;
    ids.add(e.id);
    if (e.key !== null) {
      const seq = BigInt(e.seq);
      if ((lastSeq.get(e.key) ?? -1n) > seq) inversions.push(`${e.key}: ${seq} after ${lastSeq.get(e.key)}`);
      lastSeq.set(e.key, seq);
    }
    if (e.key === 'hot') hotSeen++;
    else if (++otherSeen === others) otherDoneAtHot = hotSeen;
    if (ids.size === total) done.resolve();
  };
  const relays = [1, 2].map(() => herald.outbox.relay({ sink, batchSize: 50, concurrency: 4 }));
  await done.promise;
  await Promise.all(relays.map((r) => r.stop()));
  assert.equal(ids.size, total, 'every event published');
  assert.equal(dup, 0, 'none twice');
  assert.deepEqual(inversions, [], 'per-key order held');
  assert.equal(overlaps, 0, 'never two events of one key in flight');
  assert.ok(otherDoneAtHot >= 0 && otherDoneAtHot < hot, `other keys finished before the hot key's backlog (hot published then: ${otherDoneAtHot} of ${hot})`);
  const batches = relays.reduce((n, r) => n + r.stats().batches, 0);
  assert.ok(batches < hot / 2, `the hot key drained in runs (${batches} batches for ${hot} events)`);
  const { rows } = await herald.driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.outbox_events WHERE published_at IS NULL`);
  assert.equal(rows[0].n, 0);
});

test('a claim takes key heads round robin from where the previous one stopped, extends heads into runs while the batch has room, and fills up with keyless events', async () => {
  const { Relay } = await import('./relay.js');
  const published: { key: string | null; seq: bigint }[] = [];
  // Not started: each runOnce() is one claim, publish and settle.
  const relay = new Relay(herald.driver, undefined as never, '"herald"', 'herald.outbox', {
    sink: (e) => void published.push({ key: e.key, seq: BigInt(e.seq) }),
    batchSize: 10,
    concurrency: 1,
  });
  const take = async () => {
    published.length = 0;
    const n = await relay.runOnce();
    assert.equal(n, published.length);
    return published.map((p) => p.key ?? 'keyless');
  };
  const key = (i: number) => `rr-${String(i).padStart(2, '0')}`;
  // 60 keys with three events each: more keys than one window of heads (room + 16).
  for (let round = 0; round < 3; round++) {
    await herald.outbox.addMany(Array.from({ length: 60 }, (_, i) => ({ type: 'rr', key: key(i) })));
  }
  const order: string[] = [];
  for (let claim = 0; claim < 18; claim++) {
    const keys = await take();
    assert.equal(keys.length, 10, `claim ${claim} took a full batch`);
    order.push(...keys);
  }
  const lap = Array.from({ length: 60 }, (_, i) => key(i));
  assert.deepEqual(order, [...lap, ...lap, ...lap], 'ten heads a claim, in key order, each claim after the last key of the one before, wrapping around after the last key');
  assert.deepEqual(await take(), [], 'drained');

  // Runs: three keys with five events each, a batch of 10: three heads, then the oldest
  // heads' next events while the batch has room (a: 4 more, b: 3 more).
  for (let i = 0; i < 5; i++) await herald.outbox.addMany(['run-a', 'run-b', 'run-c'].map((k) => ({ type: 'run', key: k })));
  const before = await herald.driver.executor.query<{ key: string; seq: string }>(
    `SELECT key, seq::text AS seq FROM herald.outbox_events WHERE type = 'run' ORDER BY key, seq`,
  );
  assert.deepEqual(await take(), ['run-a', 'run-a', 'run-a', 'run-a', 'run-a', 'run-b', 'run-b', 'run-b', 'run-b', 'run-c']);
  assert.deepEqual(
    published.map((p) => p.seq),
    [...before.rows.filter((r) => r.key === 'run-a'), ...before.rows.filter((r) => r.key === 'run-b').slice(0, 4), before.rows.find((r) => r.key === 'run-c')!].map((r) => BigInt(r.seq)),
    'each run in seq order',
  );
  assert.deepEqual(await take(), ['run-b', 'run-c', 'run-c', 'run-c', 'run-c']);
  assert.deepEqual(await take(), []);

  // Keyless events take half the batch while keyed heads wait, and the rest when the keys leave room.
  await herald.outbox.addMany([...Array.from({ length: 12 }, () => ({ type: 'kl' })), { type: 'kl', key: 'kl-a' }, { type: 'kl', key: 'kl-b' }]);
  assert.deepEqual(await take(), ['kl-a', 'kl-b', ...Array(8).fill('keyless')]);
  const keylessSeqs = published.slice(2).map((p) => p.seq);
  assert.deepEqual(keylessSeqs, [...keylessSeqs].sort((a, b) => (a < b ? -1 : 1)), 'keyless events in seq order');
  assert.deepEqual(await take(), Array(4).fill('keyless'));
  assert.deepEqual(await take(), []);
  const { rows } = await herald.driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.outbox_events WHERE published_at IS NULL`);
  assert.equal(rows[0].n, 0);
});
