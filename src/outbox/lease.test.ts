/**
 * The relay's leases: no transaction open while the sink publishes; the outcome is
 * fenced by the lease token; the attempt is counted before the sink runs, so an event
 * that kills its relay every time ends in dead letters.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import { spawnFixture, type Fixture } from '../../test/support/child.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { deferred, waitFor } from '../../test/support/wait.js';
import type { OutboxEvent } from './sinks.js';

let db: TestDatabase;
let herald: Herald;

// No maintenance service here: its periodic statements would count as "a transaction open during the publish".
useHerald({ notifier: { queueUsageIntervalMs: 0 }, maintenance: { enabled: false } }, (d, h) => {
  db = d;
  herald = h;
});

const eventRows = (ids: string[]) =>
  herald.driver.executor
    .query<{ id: string; attempts: number; published: boolean; dead: boolean; leased: boolean }>(
      `SELECT id::text AS id, attempts, published_at IS NOT NULL AS published, dead_at IS NOT NULL AS dead, lease IS NOT NULL AS leased
         FROM herald.outbox_events WHERE id = ANY($1::uuid[]) ORDER BY seq`,
      [ids],
    )
    .then((r) => r.rows);

test('a sink that stalls past its hold: another relay takes the events again and publishes; the slow relay publishes no more and its marks are refused', async () => {
  const stall = deferred();
  const slowSeen: string[] = [];
  const slow = herald.outbox.relay({
    leaseMs: 800,
    // Longer than the lease: the stalled publish outlives it (as a hung HTTP call would).
    publishTimeoutMs: 600_000,
    pollIntervalMs: 60_000,
    sink: async (e) => {
      slowSeen.push(e.id);
      if (slowSeen.length === 1) await stall.promise;
    },
  });
  const fenced: { events: OutboxEvent[]; published: string[] }[] = [];
  const slowMarked: string[] = [];
  slow.on('relay:fenced', (f) => fenced.push(f));
  slow.on('relay:published', (events) => slowMarked.push(...events.map((e) => e.id)));
  let fast: ReturnType<Herald['outbox']['relay']> | undefined;
  try {
    const ids = await herald.outbox.addMany([1, 2, 3].map((n) => ({ type: 'stall', key: 'k', payload: { n } })));
    await waitFor(() => slowSeen.length === 1, { what: 'the slow relay to publish the first event' });
    // While the slow relay publishes, no transaction of pgherald's is held open on the
    // database (a session idle in a transaction). A statement running on its own at that
    // moment (a maintenance tick, a notifier sample) is not a held transaction.
    const { rows: open } = await herald.driver.executor.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'`,
    );
    assert.equal(open[0].n, 0, 'no transaction open during the publish');
    // The batch is held by one committed row (visible to every session) that counts the
    // attempt of each of its events; the events themselves are not written until the outcome.
    const { rows: holds } = await herald.driver.executor.query<{ ids: string[] }>(
      `SELECT array(SELECT e.id::text FROM herald.outbox_events AS e WHERE e.seq = ANY(h.seqs) ORDER BY e.seq) AS ids FROM herald.outbox_holds AS h`,
    );
    assert.deepEqual(holds.map((h) => h.ids), [ids], 'the batch is held by one row naming each of its events');
    assert.ok((await eventRows(ids)).every((r) => !r.leased && r.attempts === 0), 'no event row written for the hold');

    const fastMarked: string[] = [];
    const fastSeen: string[] = [];
    fast = herald.outbox.relay({ pollIntervalMs: 100, sink: (e) => void fastSeen.push(e.id) });
    fast.on('relay:published', (events) => fastMarked.push(...events.map((e) => e.id)));
    // When the lease ends, the second relay takes the abandoned events (one at a time, in key order).
    await waitFor(() => fastMarked.length === 3, { timeoutMs: 60_000, what: 'the second relay to publish and mark the events' });
    assert.deepEqual(fastSeen, ids, 'in key order');

    stall.resolve();
    await waitFor(() => fenced.length > 0, { timeoutMs: 60_000, what: 'the slow relay to be fenced' });
    assert.deepEqual(slowSeen, [ids[0]], 'the slow relay published nothing after its lease ran out');
    assert.deepEqual(fenced[0].published, [ids[0]], 'its late publish is reported as fenced');
    assert.deepEqual(fenced[0].events.map((e) => e.id).sort(), [...ids].sort(), 'every outcome of its batch refused');
    assert.deepEqual(slowMarked, [], 'the slow relay marked nothing');
    assert.deepEqual(fastMarked, ids, 'each event marked once, by the relay that held it');
    const rows = await eventRows(ids);
    assert.ok(rows.every((r) => r.published && !r.leased && !r.dead));
    assert.deepEqual(rows.map((r) => r.attempts), [2, 2, 2], 'one attempt per lease');
    assert.equal(slow.stats().fenced, 3);
  } finally {
    stall.resolve();
    await slow.stop();
    await fast?.stop();
  }
});

test('an event that SIGKILLs its relay every time is dead-lettered after maxAttempts; the events leased with it and later ones are published', async () => {
  const maxAttempts = 3;
  const spawned: Fixture[] = [];
  try {
    const poison = await herald.outbox.add({ type: 'poison' });
    // Keyless, leased in the same batch as the poison: the first crash costs them an attempt, then each goes alone.
    const before = await herald.outbox.addMany([1, 2, 3, 4].map((n) => ({ type: 'fine', payload: { n } })));
    const dead = async () => (await eventRows([poison]))[0].dead;
    let deaths = 0;
    while (!(await dead())) {
      const relay = spawnFixture('outbox-relay.ts', [db.url, '300', String(maxAttempts)]);
      spawned.push(relay);
      const outcome = await Promise.race([
        relay.exited.then(() => 'exited' as const),
        waitFor(dead, { timeoutMs: 120_000, what: 'the poison event to be dead-lettered' }).then(() => 'dead' as const),
      ]);
      if (outcome === 'exited') deaths++;
    }
    assert.equal(deaths, maxAttempts, 'the relay died once per attempt, never more');
    const [row] = await eventRows([poison]);
    assert.equal(row.attempts, maxAttempts);
    const list = await herald.outbox.dead();
    assert.deepEqual(list.map((d) => d.id), [poison]);
    assert.match(list[0].lastError ?? '', /no outcome recorded/);
    const later = await herald.outbox.addMany([5, 6].map((n) => ({ type: 'fine', payload: { n } })));
    let survivor = spawned.at(-1)!;
    if (!survivor.alive) spawned.push((survivor = spawnFixture('outbox-relay.ts', [db.url, '300', String(maxAttempts)])));
    await waitFor(async () => (await eventRows([...before, ...later])).every((r) => r.published), { timeoutMs: 60_000, what: 'the other events published' });
    const published = new Set(spawned.flatMap((f) => f.lines.filter((l) => l.startsWith('published ')).map((l) => l.slice(10))));
    for (const id of [...before, ...later]) assert.ok(published.has(id), `${id} reached a sink`);
    assert.ok((await eventRows(before)).every((r) => r.attempts <= 2), 'the events leased with the poison used at most one attempt for its crash');
  } finally {
    await Promise.all(spawned.map((f) => f.kill()));
  }
});

test('the lease of an abandoned event taken alone commits without waiting for the WAL flush (synchronous_commit off for it alone)', async () => {
  const { outboxLease } = await import('./queries.js');
  const { randomUUID } = await import('node:crypto');
  await herald.outbox.add({ type: 'async-lease' });
  const seq = (await herald.driver.executor.query<{ seq: string }>(`SELECT max(seq)::text AS seq FROM herald.outbox_events`)).rows[0].seq;
  const rollback = new Error('rollback');
  let setting: string | undefined;
  let marks = 0;
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      marks = (await outboxLease(tx, '"herald"', [seq], randomUUID(), 30_000, 10)).length;
      setting = (await tx.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit;
      throw rollback;
    }),
    (e) => e === rollback,
  );
  assert.equal(marks, 1);
  assert.equal(setting, 'off');
  assert.equal((await herald.driver.executor.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit, 'on');
});

test('a hold drops whole runs whose key or event another hold names (a hold committed after the claim read the holds), and commits without waiting for the WAL flush', async () => {
  const { randomUUID } = await import('node:crypto');
  const ids = await herald.outbox.addMany([
    { type: 'h', key: 'held' },
    { type: 'h', key: 'held' },
    { type: 'h', key: 'free' },
    { type: 'h' },
    { type: 'h' },
  ]);
  const { rows } = await herald.driver.executor.query<{ seq: string; key: string | null }>(
    `SELECT seq::text AS seq, key FROM herald.outbox_events WHERE id = ANY($1::uuid[]) ORDER BY seq`,
    [ids],
  );
  const [held1, held2, free, keyless1, keyless2] = rows;
  // Another relay's hold, committed: it names key 'held' and the first keyless event.
  await herald.driver.executor.query(`INSERT INTO herald.outbox_holds (token, held_until, keys, seqs) VALUES ($1, now() + interval '1 minute', $2, $3)`, [
    randomUUID(),
    ['held'],
    [held1.seq, held2.seq, keyless1.seq],
  ]);
  const rollback = new Error('rollback');
  let got: { held: Set<string>; suspects: boolean } | undefined;
  let setting: string | undefined;
  await assert.rejects(
    herald.driver.transaction(async (tx) => {
      // Runs: 0 = key 'held' (two events), 1 = key 'free', 2 and 3 = keyless events.
      const { rows: hold } = await tx.query<{ seqs: string[] | null; suspects: boolean }>(
        `SELECT seqs, suspects FROM herald.outbox_hold($1::uuid, $2::float8, $3::bigint[], $4::text[], $5::int[])`,
        [randomUUID(), 30_000, [held1.seq, held2.seq, free.seq, keyless1.seq, keyless2.seq], ['held', 'held', 'free', null, null], [0, 0, 1, 2, 3]],
      );
      got = { held: new Set(hold[0].seqs ?? []), suspects: hold[0].suspects };
      setting = (await tx.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows[0].synchronous_commit;
      throw rollback;
    }),
    (e) => e === rollback,
  );
  assert.deepEqual([...got!.held].sort(), [free.seq, keyless2.seq].sort(), 'only the runs no hold names are held');
  assert.equal(got!.suspects, false, 'no hold has ended, no lease is due');
  assert.equal(setting, 'off');
  await herald.driver.executor.query(`DELETE FROM herald.outbox_holds`);
});
