import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { useHerald } from '../../test/support/herald.js';
import { scaled } from '../../test/support/scale.js';
import { OUTBOX_KEY_LOCK_BUCKETS } from './queries.js';

let herald: Herald;
useHerald({ poolSize: 4 }, (_db, h) => {
  herald = h;
});

describe('outbox key locks are bounded', () => {
  it('adds 100,000 events over 100,000 keys in one call, holding at most one lock per bucket', async () => {
    const n = scaled(100_000, 20_000);
    const events = Array.from({ length: n }, (_, i) => ({ type: 'bulk', key: `customer-${i}`, payload: { i } }));
    const locks = await herald.transaction(async (tx) => {
      const ids = await herald.outbox.addMany(events, { tx });
      assert.equal(ids.length, n);
      const r = await tx.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`);
      return r.rows[0].n;
    });
    assert.ok(locks > 0 && locks <= OUTBOX_KEY_LOCK_BUCKETS, `${locks} advisory locks`);
    const { rows } = await herald.driver.executor.query<{ n: number; keys: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT key)::int AS keys FROM herald.outbox_events WHERE type = 'bulk'`,
    );
    assert.deepEqual(rows[0], { n, keys: n });
  });

  it('producers of one key still serialise until commit, through the bucket lock taken before the seq is drawn', async () => {
    let releaseFirst!: () => void;
    const firstHolds = new Promise<void>((r) => (releaseFirst = r));
    let firstAdded!: () => void;
    const added = new Promise<void>((r) => (firstAdded = r));
    const first = herald.transaction(async (tx) => {
      await herald.outbox.add({ type: 'order', key: 'k-serial', payload: 1 }, { tx });
      firstAdded();
      await firstHolds;
      // Added while the second producer waits: had the second drawn its seq before
      // waiting for the lock, this later event would get a higher seq than it and
      // commit first (the key's order broken).
      await herald.outbox.add({ type: 'order', key: 'k-serial', payload: 'late' }, { tx });
    });
    try {
      await added;
      // The second producer of the key must wait for the first to commit: observe it waiting on the advisory lock.
      const second = herald.outbox.addMany([{ type: 'order', key: 'k-serial', payload: 2 }, { type: 'order', key: 'other', payload: 3 }]);
      let secondDone = false;
      void second.then(() => (secondDone = true), () => (secondDone = true));
      for (;;) {
        assert.equal(secondDone, false, 'the second producer of the key did not wait for the first');
        const r = await herald.driver.executor.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()`,
        );
        if (r.rows[0].n > 0) break;
        await new Promise((res) => setImmediate(res));
      }
      releaseFirst();
      await first;
      await second;
    } finally {
      // A failed assertion above must not leave the first transaction open.
      releaseFirst();
      await first.catch(() => {});
    }
    const { rows } = await herald.driver.executor.query<{ payload: number | string }>(`SELECT payload FROM herald.outbox_events WHERE key = 'k-serial' ORDER BY seq`);
    assert.deepEqual(rows.map((r) => r.payload), [1, 'late', 2]);
  });
});
