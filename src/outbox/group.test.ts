import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let herald: Herald;
useHerald({ poolSize: 8 }, (_db, h) => {
  herald = h;
});

/** Transactions that inserted the given events (one xmin per committing transaction). */
async function commitsOf(type: string): Promise<{ n: number; xacts: number }> {
  const { rows } = await herald.driver.executor.query<{ n: number; xacts: number }>(
    `SELECT count(*)::int AS n, count(DISTINCT xmin::text)::int AS xacts FROM herald.outbox_events WHERE type = $1`,
    [type],
  );
  return rows[0];
}

describe('outbox group commit (adds without tx)', () => {
  // One transaction per add serialises every producer on the notify lock through a WAL
  // flush (about 350 adds/s at 16 connections in bench/soak-messaging.ts): concurrent
  // adds must share commits.
  it('concurrent adds of one process share a commit, each caller gets its own ids in order', async () => {
    const calls = Array.from({ length: 200 }, (_, i) =>
      i % 2 === 0
        ? herald.outbox.add({ type: 'grouped', key: i % 4 === 0 ? `k${i % 10}` : null, payload: { i } }).then((id) => [id])
        : herald.outbox.addMany([
            { type: 'grouped', key: `k${i % 10}`, payload: { i, part: 0 } },
            { type: 'grouped', key: null, payload: { i, part: 1 } },
          ]),
    );
    const ids = await Promise.all(calls);
    const all = ids.flat();
    assert.equal(all.length, 300);
    assert.equal(new Set(all).size, 300, 'distinct ids');
    const { n, xacts } = await commitsOf('grouped');
    assert.equal(n, 300);
    assert.ok(xacts <= 2, `200 concurrent calls made in one synchronous run committed in ${xacts} transactions`);
    // Each caller's ids are its own events, in its own order.
    for (let i = 1; i < 200; i += 2) {
      const got = await Promise.all(ids[i].map((id) => herald.outbox.get(id)));
      assert.deepEqual(got.map((e) => e?.payload), [{ i, part: 0 }, { i, part: 1 }]);
    }
    const first = await herald.outbox.get(ids[0][0]);
    assert.deepEqual(first?.payload, { i: 0 });
  });

  it('an add waiting for a key that another transaction holds does not hold the other adds of the process', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let holding!: () => void;
    const isHolding = new Promise<void>((r) => (holding = r));
    const holder = herald.transaction(async (tx) => {
      await herald.outbox.add({ type: 'blocked', key: 'busy-key', payload: 'first' }, { tx });
      holding();
      await held;
    });
    try {
      await isHolding;
      let blockedDone = false;
      const blocked = herald.outbox.add({ type: 'blocked', key: 'busy-key', payload: 'second' }).then((id) => {
        blockedDone = true;
        return id;
      });
      // Adds of other keys (and without key), made while the busy key's add waits,
      // commit: the grouped statement gives up on the lock and the requests run alone.
      const others = await Promise.all(Array.from({ length: 20 }, (_, i) => herald.outbox.add({ type: 'free', key: i % 2 ? `free-${i}` : null, payload: i })));
      assert.equal(new Set(others).size, 20);
      assert.equal(blockedDone, false, 'the busy key still waits for the holder');
      release();
      await holder;
      const id = await blocked;
      await waitFor(async () => (await herald.outbox.get(id))?.payload === 'second', { what: 'the waiting add committed after the holder' });
      // The key's order is commit order: the holder's event first.
      const { rows } = await herald.driver.executor.query<{ payload: string }>(`SELECT payload FROM herald.outbox_events WHERE key = 'busy-key' ORDER BY seq`);
      assert.deepEqual(rows.map((r) => r.payload), ['first', 'second']);
    } finally {
      release();
      await holder.catch(() => {});
    }
  });
});
