/**
 * While a transaction is held open anywhere in the cluster, the rows the sequencer
 * moved out of `topic_pending` stay behind as dead index entries (nothing can clean
 * them up before that transaction ends). Sequencer runs and the claim's "anything
 * pending?" check start at the process's pending floor, so the pending index entries
 * they read stay bounded however many messages were moved meanwhile; counted with
 * the index's transaction statistics in each statement's own transaction, not with a clock.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHerald, type Herald } from '../index.js';
import { measuringDriver, tuplesReturned } from '../../test/support/measuring-driver.js';
import { heldWriteTransaction, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';
import { topicPublishSequenceName, topicSequenceName } from './queries.js';

let db: TestDatabase;
let herald: Herald;
// A cluster of the file's own: the held transaction is a cluster-wide fact.
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

/** Pending rows the statements of a transaction read so far: index entries, and rows of sequential scans. */
const pendingEntriesRead = tuplesReturned('herald.topic_pending_pkey', 'herald.topic_pending');

test('sequencer runs and pending checks read a bounded part of topic_pending while a transaction is held open elsewhere', async () => {
  const hold = await heldWriteTransaction(db.url);
  const other = hold.client;
  const runs: number[] = [];
  const claims: number[] = [];
  // Each sequencer run in a transaction of its own, each claim in its batch transaction.
  const h = createHerald({ driver: measuringDriver(db.url, pendingEntriesRead, (t) => t.includes('.topic_sequence('), runs, (t) => t.includes('.topic_claim_batch('), claims) });
  let received = 0;
  const consumer = h.topics.consumer<number>('floor', 'g', ({ messages }) => void (received += messages.length), { pollIntervalMs: 500 });
  try {
    await h.topics.create('floor', { partitions: 4 });
    await consumer.start();
    // 3,000 messages moved while the transaction is open: 3,000 dead pending rows.
    const MOVED = 3000;
    for (let i = 0; i < MOVED / 100; i++) {
      await h.topics.publishMany('floor', Array.from({ length: 100 }, (_, j) => ({ payload: i * 100 + j, key: `k${j}` })), { waitForPosition: true });
    }
    await waitFor(() => received === MOVED, { what: 'the first messages', progress: () => received, timeoutMs: 60_000 });
    // The dead rows are there, and a scan from the topic's start walks them all.
    const topicId = (await herald.driver.executor.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'floor'`)).rows[0].id;
    const walked = await herald.driver.transaction(async (tx) => {
      await tx.query('SELECT EXISTS (SELECT 1 FROM herald.topic_pending WHERE topic_id = $1)', [topicId]);
      return pendingEntriesRead(tx);
    });
    assert.ok(walked >= MOVED, `a scan from the start reads the moved rows: ${walked} entries`);

    // More dead pending rows, all below the floor (as a longer hold would leave: 20,000
    // inserted and deleted, publish ids below any real one), then ANALYZE, which counts
    // the few live ones: with that estimate a planner left to itself read the topic's
    // pending rows by a bitmap scan, the dead ones included.
    await herald.driver.executor.query(
      `INSERT INTO herald.topic_pending (topic_id, publish_id, kpart, payload) SELECT $1, -g, 0, '0' FROM generate_series(1, 20000) g`,
      [topicId],
    );
    await herald.driver.executor.query('DELETE FROM herald.topic_pending WHERE topic_id = $1 AND publish_id < 0', [topicId]);
    await herald.driver.executor.query('ANALYZE herald.topic_pending');
    // From here on, one message at a time: every run and every claim reads a few entries.
    runs.length = 0;
    claims.length = 0;
    for (let i = 0; i < 20; i++) await h.topics.publish('floor', MOVED + i, { key: `k${i}`, waitForPosition: true });
    await waitFor(() => received === MOVED + 20, { what: 'the last messages', progress: () => received, timeoutMs: 60_000 });
    const held = await other.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'other_app' AND backend_xid IS NOT NULL`);
    assert.equal(held.rows[0].n, 1, 'the transaction was open throughout');
    assert.ok(runs.length >= 20 && claims.length > 0, `runs ${runs.length}, claims ${claims.length}`);
    // Bounded by what was moved since the floor last rose, not by the 3,000: the floor
    // lags at most 1,024 publish ids (FLOOR_FORCE_SPAN) plus one run's batch (100 here),
    // plus this phase's 20, and the first run of this phase may still start from where
    // the burst left it. A run reads the entries above the floor twice (its list of ids,
    // then its delete: 2, 4, 6... for 1, 2, 3 moved rows above it), a claim's check once;
    // from the topic's start they would read at least 6,000 and 3,000.
    const lag = 1024 + 100 + 20;
    assert.ok(Math.max(...runs) < 2 * lag, `pending entries read per sequencer run: ${runs.join(', ')}`);
    assert.ok(Math.max(...claims) < lag, `pending entries read per claim: ${claims.join(', ')}`);
  } finally {
    await consumer.stop();
    await h.close();
    await hold.release();
  }
});

test('publishes that go straight into the log and move pending messages first raise the floor too: their pending reads stay bounded while a transaction is held open elsewhere', async () => {
  const hold = await heldWriteTransaction(db.url, 'other_direct');
  const publishes: number[] = [];
  const h = createHerald({ driver: measuringDriver(db.url, pendingEntriesRead, (t) => t.includes('.topic_publish('), publishes, () => false, []) });
  try {
    await h.topics.create('direct-floor', { partitions: 2 });
    // Each round: 100 messages published in a transaction (pending: no run moves them),
    // then one publish without tx, which moves them before its own message.
    const ROUNDS = 60;
    for (let i = 0; i < ROUNDS; i++) {
      await h.transaction((tx) => h.topics.publishMany('direct-floor', Array.from({ length: 100 }, (_, j) => ({ payload: i * 101 + j, key: `k${j % 7}` })), { tx }));
      await h.topics.publish('direct-floor', i * 101 + 100, { key: 'k0' });
    }
    const ex = herald.driver.executor;
    const topicId = (await ex.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'direct-floor'`)).rows[0].id;
    assert.equal((await ex.query<{ n: number }>('SELECT count(*)::int AS n FROM herald.topic_pending WHERE topic_id = $1', [topicId])).rows[0].n, 0);
    assert.equal((await ex.query<{ n: number }>('SELECT count(*)::int AS n FROM herald.topic_messages WHERE topic_id = $1', [topicId])).rows[0].n, ROUNDS * 101);
    const held = await hold.client.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'other_direct' AND backend_xid IS NOT NULL`);
    assert.equal(held.rows[0].n, 1, 'the transaction was open throughout');
    // 6,000 moved rows stay as dead entries. A publish reads the entries above the floor
    // three times (its probe, the run's list of ids, the run's delete); the floor lags at
    // most FLOOR_FORCE_SPAN (1,024) publish ids plus a round's 101. From the topic's start
    // the last ones would read over 15,000.
    const bound = 3 * (1024 + 2 * 101);
    const last = publishes.slice(-10);
    assert.equal(publishes.length, ROUNDS);
    assert.ok(Math.max(...last) < bound, `pending entries read per publish, last 10: ${last.join(', ')}`);
  } finally {
    await h.close();
    await hold.release();
  }
});

test('the floor is not raised while the publish sequence has a cache (its ids would come out of order)', async () => {
  await herald.topics.create('cached', { partitions: 1 });
  // waitForPosition: the publish runs the sequencer itself, no background run is left.
  for (let i = 0; i < 3; i++) await herald.topics.publish('cached', i, { waitForPosition: true });
  const ex = herald.driver.executor;
  const id = (await ex.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'cached'`)).rows[0].id;
  const pub = `herald.${topicPublishSequenceName(id)}`;
  const run = async () => {
    const { rows } = await ex.query<{ floor: string | null }>(
      `SELECT floor::text AS floor FROM herald.topic_sequence($1, $2::regclass, 100, NULL, 'cached', $3::regclass, 0, true)`,
      [id, `herald.${topicSequenceName(id)}`, pub],
    );
    return rows[rows.length - 1].floor;
  };
  const last = (await ex.query<{ v: string }>(`SELECT pg_sequence_last_value($1::regclass)::text AS v`, [pub])).rows[0].v;
  assert.equal(await run(), String(BigInt(last) + 1n), 'CACHE 1: nothing in flight, the floor rises past the last publish id');
  await ex.query(`ALTER SEQUENCE ${pub} CACHE 10`);
  assert.equal(await run(), '0', 'with a cache the floor stays where it was');
  await ex.query(`ALTER SEQUENCE ${pub} CACHE 1`);
  assert.equal(await run(), String(BigInt(last) + 1n));
});

test('cursor moves and attempt counts are appended: no cursor row is rewritten, and claims and counts read a bounded part of them while a transaction is held open elsewhere', async () => {
  const hold = await heldWriteTransaction(db.url, 'other_moves');
  const other = hold.client;
  const CURSOR_INDEXES = ['herald.topic_group_cursors_pkey', 'herald.topic_cursor_moves_pkey', 'herald.topic_tries_pkey'];
  const claims: number[] = [];
  const counts: number[] = [];
  let measure = false;
  // Claims (in their batch transaction) and attempt counts (autocommit on the pool, here
  // in a transaction of their own) with the cursor index entries each one read.
  const driver = measuringDriver(
    db.url,
    tuplesReturned(...CURSOR_INDEXES),
    (t) => measure && t.includes('.topic_try('),
    counts,
    (t) => measure && t.includes('.topic_claim_batch('),
    claims,
  );
  const h = createHerald({ driver });
  let received = 0;
  // One message per batch: a cursor move and an attempt count per message.
  const consumer = h.topics.consumer<number>('moves', 'g', ({ messages }) => void (received += messages.length), { pollIntervalMs: 500, batchSize: 1 });
  const ex = herald.driver.executor;
  try {
    await h.topics.create('moves', { partitions: 8 });
    await consumer.start();
    const cursorRows = async () =>
      (await ex.query<{ v: string }>(`SELECT string_agg(kpart || ':' || ctid::text || ':' || xmin::text, ',' ORDER BY kpart) AS v FROM herald.topic_group_cursors WHERE topic_id = (SELECT id FROM herald.topics WHERE name = 'moves')`)).rows[0].v;
    const before = await cursorRows();
    const MOVED = 1000;
    for (let i = 0; i < MOVED / 100; i++) {
      await h.topics.publishMany('moves', Array.from({ length: 100 }, (_, j) => ({ payload: i * 100 + j, key: `k${j}` })), { waitForPosition: true });
    }
    await waitFor(() => received === MOVED, { what: 'the first messages', progress: () => received, timeoutMs: 60_000 });
    // A handler counts its batch before the batch commits. The rows written below copy each
    // partition's newest move: written while the last batch is still in flight, a copy of the
    // move before it would become the newest and move that cursor back (one message was
    // delivered again, once in CI). Wait for the group's committed cursors to cover everything.
    await waitFor(async () => (await herald.topics.stats('moves')).groups.find((g) => g.name === 'g')?.lag === 0, { what: 'the first batches to commit' });
    // 1,000 moves and counts were appended and their predecessors deleted; none of those
    // can be cleaned up while the transaction is held. ANALYZE then counts one live row
    // per partition (with that estimate a planner left to itself takes a bitmap scan and
    // reads every entry). From here on, measure.
    // As many more as 3,000 batches per partition would leave (the consumer is idle: it
    // writes nothing meanwhile): copies of each partition's newest move and count,
    // appended, then all but the newest deleted.
    for (const table of ['topic_cursor_moves', 'topic_tries']) {
      const cols = table === 'topic_cursor_moves' ? 'cursor_id' : 'message_id, through_id, attempts, last_error';
      await ex.query(
        `INSERT INTO herald.${table} (ref, ${cols})
         SELECT n.ref, ${cols.split(', ').map((col) => `n.${col}`).join(', ')}
           FROM herald.topic_group_cursors c
          CROSS JOIN LATERAL (SELECT * FROM herald.${table} x WHERE x.ref = c.ref ORDER BY x.seq DESC LIMIT 1) n
          CROSS JOIN generate_series(1, 3000)
          WHERE c.topic_id = (SELECT id FROM herald.topics WHERE name = 'moves')`,
      );
      await ex.query(
        `DELETE FROM herald.${table} x USING herald.topic_group_cursors c
          WHERE x.ref = c.ref AND c.topic_id = (SELECT id FROM herald.topics WHERE name = 'moves')
            AND x.seq < (SELECT max(y.seq) FROM herald.${table} y WHERE y.ref = x.ref)`,
      );
    }
    await ex.query('ANALYZE herald.topic_cursor_moves, herald.topic_tries');
    measure = true;
    for (let i = 0; i < 20; i++) await h.topics.publish('moves', MOVED + i, { key: `k${i}`, waitForPosition: true });
    await waitFor(() => received === MOVED + 20, { what: 'the last messages', progress: () => received, timeoutMs: 60_000 });
    const held = await other.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'other_moves' AND backend_xid IS NOT NULL`);
    assert.equal(held.rows[0].n, 1, 'the transaction was open throughout');
    assert.equal(await cursorRows(), before, 'the cursor rows were locked, never rewritten');
    const live = await ex.query<{ moves: number; tries: number }>(
      `SELECT (SELECT count(*) FROM herald.topic_cursor_moves mv JOIN herald.topic_group_cursors c USING (ref) WHERE c.topic_id = t.id)::int AS moves,
              (SELECT count(*) FROM herald.topic_tries tr JOIN herald.topic_group_cursors c USING (ref) WHERE c.topic_id = t.id)::int AS tries
         FROM herald.topics t WHERE t.name = 'moves'`,
    );
    assert.deepEqual(live.rows[0], { moves: 8, tries: 8 }, 'one live move and one live count per key partition');
    assert.ok(claims.length >= 20 && counts.length >= 20, `claims ${claims.length}, counts ${counts.length}`);
    // A claim reads, per partition, its cursor row and the newest move (the hint), then
    // again after the lock, and the newest count: a few entries each, however many moves
    // and counts the held transaction keeps (a walk over them would read 3,000 or more).
    // 20, and a few more for each partition it tried in vain (found locked by the
    // consumer's other lane, which claims the next batch while a handler runs, or
    // emptied by it meanwhile): at most the 8 partitions once more each.
    assert.ok(Math.max(...claims) <= 20 + 8 * 4, `cursor index entries read per claim: ${claims.join(', ')}`);
    assert.ok(Math.max(...counts) <= 4, `index entries read per attempt count: ${counts.join(', ')}`);
  } finally {
    await consumer.stop();
    await h.close();
    await hold.release();
  }
});

test('the pending floor goes back to 0 when the notifier reconnects (a new primary may hand out publish ids below it)', async () => {
  await herald.topics.create('failover', { partitions: 1 });
  const seen: unknown[] = [];
  const consumer = herald.topics.consumer('failover', 'g', ({ messages }) => void seen.push(...messages.map((m) => m.payload)));
  try {
    await consumer.start();
    // 2,000 moved: past FLOOR_FORCE_SPAN, a run raises the floor above them.
    for (let i = 0; i < 2000; i += 500) {
      await herald.topics.publishMany('failover', Array.from({ length: 500 }, (_, j) => ({ payload: i + j })), { waitForPosition: true });
    }
    await waitFor(() => seen.length === 2000, { what: 'the first messages', progress: () => seen.length });
    // A pending row below the floor, as a promoted replica's lagging sequence would give
    // (publish id 1 again: the old primary's first message never reached it).
    const ex = herald.driver.executor;
    const id = (await ex.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'failover'`)).rows[0].id;
    await ex.query(`INSERT INTO herald.topic_pending (topic_id, publish_id, kpart, payload) VALUES ($1, 1, 0, '"below"')`, [id]);
    await herald.topics.publish('failover', 'above', { waitForPosition: true });
    await waitFor(() => seen.includes('above'), { what: 'the message above the floor' });
    assert.ok(!seen.includes('below'), 'runs start at the floor: the row below it is not moved');
    // What the notifier emits once it is back after a lost connection (a failover among them).
    (herald.notifier as unknown as { emit(event: string): boolean }).emit('notifier:reconnected');
    await herald.topics.publish('failover', 'after', { waitForPosition: true });
    await waitFor(() => seen.includes('below') && seen.includes('after'), { what: 'the row below the old floor' });
  } finally {
    await consumer.stop();
  }
});
