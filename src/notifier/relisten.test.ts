import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';

let db: TestDatabase;
let herald: Herald;

useHerald({ notifier: { queueUsageIntervalMs: 0 } }, (d, h) => {
  db = d;
  herald = h;
});

test('subscribing again while the UNLISTEN of the last subscriber is in flight still receives notifications', async () => {
  // The outbox's tests hit this: a relay stops (its subscription closes, UNLISTEN is
  // sent) and a new subscriber of the same channel came established while the
  // UNLISTEN was still running, then never heard anything.
  for (let i = 0; i < 30; i++) {
    const first = herald.listen('relisten');
    await first.established;
    await first.close();
    // Let the UNLISTEN reach the session before subscribing again (any interleaving must work).
    if (i % 3 === 1) await new Promise((r) => setImmediate(r));
    if (i % 3 === 2) await new Promise((r) => setTimeout(r, 1));
    const second = herald.listen('relisten');
    await second.established;
    await herald.notify('relisten', String(i));
    const n = await second.wait({ timeoutMs: 10_000 });
    assert.equal(n?.payload, String(i), `iteration ${i}: the notification arrives`);
    await second.close();
  }
});
