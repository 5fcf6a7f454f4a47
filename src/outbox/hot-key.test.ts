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
