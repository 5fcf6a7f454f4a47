/**
 * Key floors (migration 030, `KeyFloors`, relay option `keyFloors`): while a transaction
 * is held open anywhere in the cluster, published events leave their entries in the
 * pending index (nothing can clean them up before it ends). The relay, once it sees such
 * a transaction (`HorizonWatch`), starts each key it saw at its floor, so its claims read
 * about what they claim, not every event published since; a redrive (an event pending
 * again below its key's floor) drops the floors. Counted with the index's transaction
 * statistics, not with a clock.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHerald, type Herald } from '../index.js';
import { heldWriteTransaction, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { measuringDriver, tuplesReturned } from '../../test/support/measuring-driver.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import { KEY_FLOORS_KEPT, KeyFloors } from './floors.js';
import type { OutboxEvent } from './sinks.js';

let db: TestDatabase;
let herald: Herald;
// A cluster of the file's own: the held transaction is a cluster-wide fact.
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

/** Entries of the keyed pending index returned to the scans of a transaction so far. */
const pendingEntriesRead = tuplesReturned('herald.outbox_events_pending_key');

test('floors: raised by the heads a claim saw, never lowered; dropped by clear(); a claim begun before a drop teaches nothing', () => {
  const f = new KeyFloors();
  const g = f.generation;
  f.learn(['a', 'b'], ['10', '20'], g);
  f.learn(['a'], ['5'], g);
  assert.deepEqual(f.hints(), { keys: ['b', 'a'], floors: ['20', '10'] });
  f.clear();
  f.learn(['c'], ['7'], g); // began before the drop
  assert.deepEqual(f.hints(), { keys: [], floors: [] });
  f.learn(Array.from({ length: KEY_FLOORS_KEPT + 5 }, (_, i) => `k${i}`), Array.from({ length: KEY_FLOORS_KEPT + 5 }, (_, i) => String(i)), f.generation);
  assert.equal(f.size, KEY_FLOORS_KEPT);
  assert.equal(f.hints().keys[0], 'k5', 'the least recently seen go first');
});

test('relay claims read a bounded part of the pending index while a transaction is held open elsewhere; every event once, in key order', async () => {
  const hold = await heldWriteTransaction(db.url);
  const claims: number[] = [];
  const driver = measuringDriver(db.url, pendingEntriesRead, (t) => t.includes('.outbox_claim_hinted('), claims, () => false, []);
  const h = createHerald({ driver });
  const seen: OutboxEvent[] = [];
  const relay = h.outbox.relay({ sink: (e) => void seen.push(e), pollIntervalMs: 100 });
  const KEYS = 20;
  let added = 0;
  const round = async (perKey: number) => {
    const from = claims.length;
    await h.outbox.addMany(Array.from({ length: KEYS * perKey }, (_, j) => ({ type: 'held', key: `k${j % KEYS}`, payload: added + j })));
    added += KEYS * perKey;
    await waitForCount(() => seen.length, added, { what: 'the events' });
    return claims.slice(from);
  };
  try {
    // 3,000 events published while the transaction is open: 3,000 entries nothing can remove.
    for (let r = 0; r < 30; r++) await round(5);
    // The relay has seen the transaction held (its look at pg_locks, at most once a
    // second, found it twice); its safety poll keeps it claiming meanwhile.
    await waitFor(() => relay.stats().keyFloors, { what: 'the relay to see the held transaction' });
    const walked = await herald.driver.transaction(async (tx) => {
      await tx.query(`SELECT count(*) FROM herald.outbox_claim(gen_random_uuid(), 1000, 100, NULL)`); // without floors (026)
      return pendingEntriesRead(tx);
    });
    assert.ok(walked >= 3000, `a claim without floors walks the published events' entries: ${walked}`);
    // Its first claim with floors has none yet: it learns one for every key it finds.
    await round(1);
    // From then on (the relay has a floor for every key) every claim reads about what it claims.
    for (let r = 0; r < 5; r++) {
      const read = await round(1);
      assert.ok(read.length > 0 && read.every((n) => n <= 200), `claims of round ${r}: ${read.join(', ')} entries`);
    }
    assert.equal(new Set(seen.map((e) => e.id)).size, added, 'every event once');
    const byKey = new Map<string, number[]>();
    for (const e of seen) byKey.set(e.key!, [...(byKey.get(e.key!) ?? []), e.payload as number]);
    for (const [key, xs] of byKey) assert.deepEqual(xs, [...xs].sort((a, b) => a - b), `key ${key} in order`);
  } finally {
    await relay.stop();
    await h.close();
    await hold.release();
  }
});

test('a redriven event, pending again below its key floor, is published at once', async () => {
  const seen: string[] = [];
  let poisoned = false;
  // One attempt: the first event of the key dies; the ones after it are published and
  // raise the key's floor past it. Only the redrive's wake-up can bring it back in time.
  const relay = herald.outbox.relay({
    sink: (e) => {
      if (e.payload === 'poison' && !poisoned) {
        poisoned = true;
        throw new Error('poison');
      }
      seen.push(e.payload as string);
    },
    maxAttempts: 1,
    pollIntervalMs: 600_000,
    keyFloors: 'always',
  });
  try {
    await herald.outbox.addMany([{ type: 'rd', key: 'rd', payload: 'poison' }]);
    await waitFor(() => relay.stats().dead === 1, { what: 'the first event to die' });
    await herald.outbox.addMany(['a', 'b', 'c'].map((p) => ({ type: 'rd', key: 'rd', payload: p })));
    await waitFor(() => seen.length === 3, { what: 'the events after it' });
    assert.equal(await herald.outbox.redrive(), 1);
    await waitFor(() => seen.includes('poison'), { what: 'the redriven event' });
    assert.deepEqual(seen, ['a', 'b', 'c', 'poison']);
  } finally {
    await relay.stop();
  }
});

test('without a held transaction, relays claim without floors (keyFloors: auto); keyFloors is validated', async () => {
  const seen: string[] = [];
  const relay = herald.outbox.relay({ sink: (e) => void seen.push(e.id) });
  try {
    const ids = await herald.outbox.addMany(Array.from({ length: 10 }, (_, i) => ({ type: 'plain', key: `p${i % 3}`, payload: i })));
    await waitFor(() => ids.every((id) => seen.includes(id)), { what: 'the events' });
    assert.equal(relay.stats().keyFloors, false);
  } finally {
    await relay.stop();
  }
  assert.throws(() => herald.outbox.relay({ sink: () => {}, keyFloors: 'sometimes' as never }), /keyFloors/);
});
