import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { RelayFleet } from '../../test/support/relay-fleet.js';
import { scaled } from '../../test/support/scale.js';
import { waitForCount } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;

useHerald({ notifier: { queueUsageIntervalMs: 0 } }, (d, h) => {
  db = d;
  herald = h;
});

/** Adds `total` events over `keys` keys in batches, while the relays run. */
async function produce(prefix: string, total: number, keys: number): Promise<void> {
  const chunk = 250;
  for (let i = 0; i < total; i += chunk) {
    const events = [];
    for (let j = i; j < Math.min(total, i + chunk); j++) events.push({ type: 'test', key: `${prefix}-${j % keys}`, payload: { n: j } });
    await herald.outbox.addMany(events);
  }
}

test('10,000 events while relays are SIGKILLed 200 times between publish and mark: none lost, duplicates <= kills + fenced publishes, per-key order kept', async () => {
  const total = scaled(10_000);
  const targetKills = scaled(200);
  const fleet = new RelayFleet(db.url, 4, {
    batchSize: 20,
    // A killed relay's batch is taken again when its lease ends (then one event at a time).
    leaseMs: 1500,
    // Spread the kills over the run: kill at a batch start while behind a schedule that
    // runs a few kills ahead, so all of them happen before the last events are published.
    shouldKill: (f) => f.kills < targetKills && f.kills < (targetKills * f.ids.size) / total + 5,
  });
  const marked = async () =>
    (
      await herald.driver.executor.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM herald.outbox_events WHERE type = 'test' AND key LIKE 'crash-%' AND published_at IS NOT NULL`,
      )
    ).rows[0].n;
  try {
    await fleet.start();
    await produce('crash', total, 100);
    await waitForCount(() => fleet.ids.size, total, { intervalMs: 100, what: 'distinct events published' });
    // Reaching the sink is not the end: a relay killed after publishing the last events
    // leaves them unmarked until their lease ends and another relay publishes them again.
    await waitForCount(marked, total, { intervalMs: 100, what: 'events marked published' });
  } finally {
    await fleet.stop();
  }
  const { rows } = await herald.driver.executor.query<{ pending: number }>(
    `SELECT count(*)::int AS pending FROM herald.outbox_events WHERE type = 'test' AND key LIKE 'crash-%' AND published_at IS NULL`,
  );
  assert.equal(fleet.ids.size, total, 'every event reached the sink');
  assert.equal(rows[0].pending, 0, 'every event is marked published');
  assert.equal(fleet.kills, targetKills, 'the relays were killed as often as planned');
  // One duplicate per kill (the event published before it, published again once the lease
  // ends), plus one per event a relay published after its lease ran out (a slow ack on a
  // loaded machine): that relay's mark is refused (relay:fenced) and another relay has
  // published the event again.
  assert.ok(fleet.duplicates <= fleet.kills + fleet.fencedPublished, `duplicates ${fleet.duplicates} <= kills ${fleet.kills} + fenced ${fleet.fencedPublished}`);
  assert.deepEqual(fleet.inversions, [], 'per-key order never inverted');
});

test('four relays in four processes, no crashes: every event published exactly once, per-key order kept', async () => {
  const total = scaled(4000);
  const fleet = new RelayFleet(db.url, 4, { batchSize: 50 });
  // This test's events only (an earlier test's leftovers would be published too).
  const mine = () => fleet.publishes.filter((p) => p.key?.startsWith('four-'));
  try {
    await fleet.start();
    await produce('four', total, 50);
    await waitForCount(() => new Set(mine().map((p) => p.id)).size, total, { intervalMs: 100, what: 'events published' });
  } finally {
    await fleet.stop();
  }
  assert.equal(new Set(mine().map((p) => p.id)).size, total);
  assert.equal(mine().length, total, 'no event published twice');
  assert.equal(fleet.spawned, 4, 'no relay died');
  assert.deepEqual(fleet.inversions, []);
});
