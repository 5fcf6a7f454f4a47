import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import { createHerald, type Herald } from '../index.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import type { TopicMessage } from './types.js';

let db: TestDatabase;
let herald: Herald;
// topics: a cluster of the file's own (a test here holds transactions open on purpose; see freshDatabase)
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

test('every group receives every message, in publish order per key', async () => {
  await herald.topics.create('orders', { partitions: 4 });
  const got = new Map<string, TopicMessage[]>();
  const consumers = ['a', 'b'].map((g) => {
    got.set(g, []);
    return herald.topics.consumer('orders', g, ({ messages }) => void got.get(g)!.push(...messages));
  });
  await Promise.all(consumers.map((c) => c.start()));
  await herald.topics.publish('orders', { n: 1 }, { key: 'k1' });
  await herald.topics.publishMany('orders', [{ payload: { n: 2 }, key: 'k1' }, { payload: { n: 3 }, key: 'k2' }, { payload: 'text' }]);
  await waitFor(() => got.get('a')!.length === 4 && got.get('b')!.length === 4, { what: 'both groups' });
  for (const g of ['a', 'b']) {
    const k1 = got.get(g)!.filter((m) => m.key === 'k1').map((m) => (m.payload as { n: number }).n);
    assert.deepEqual(k1, [1, 2]);
  }
  await Promise.all(consumers.map((c) => c.stop()));
});

test('a rolled-back publish is never delivered; a late commit is not skipped', async () => {
  await herald.topics.create('late', { partitions: 1 });
  const seen: unknown[] = [];
  const c = herald.topics.consumer('late', 'g', ({ messages }) => void seen.push(...messages.map((m) => m.payload)));
  await c.start();
  const slow = new pg.Client({ connectionString: db.url });
  await slow.connect();
  await slow.query('BEGIN');
  await slow.query('SELECT pg_current_xact_id()');
  await herald.topics.publish('late', 'late-1', { tx: slow }); // smaller id, commits last
  const rolled = new pg.Client({ connectionString: db.url });
  await rolled.connect();
  await rolled.query('BEGIN');
  await herald.topics.publish('late', 'rolled', { tx: rolled });
  await herald.topics.publish('late', 'early-2');
  await rolled.query('ROLLBACK');
  await slow.query('COMMIT');
  await waitFor(() => seen.length >= 2, { what: 'two messages' });
  await herald.topics.publish('late', 'last');
  await waitFor(() => seen.length >= 3);
  assert.deepEqual([...seen].sort(), ['early-2', 'last', 'late-1']);
  await c.stop();
  await slow.end();
  await rolled.end();
});

test('reset to earliest replays the same sequence; reset to a position resumes after it', async () => {
  await herald.topics.create('replay', { partitions: 2 });
  await herald.topics.publishMany('replay', Array.from({ length: 50 }, (_, i) => ({ payload: i, key: `k${i % 5}` })));
  const seq: string[] = [];
  const c = herald.topics.consumer('replay', 'g', ({ messages }) => void seq.push(...messages.map((m) => m.position)), { batchSize: 7 });
  await c.start();
  await waitFor(() => seq.length >= 50);
  assert.equal(seq.length, 50);
  await c.stop();
  const first = [...seq];
  seq.length = 0;
  assert.equal(await herald.topics.resetGroup('replay', 'g', 'earliest'), 2);
  await c.start();
  await waitFor(() => seq.length === 50);
  await c.stop();
  const byPart = (xs: string[]) => [...xs].sort();
  assert.deepEqual(byPart(seq), byPart(first));
  const whole = await herald.topics.read('replay', { limit: 1000 });
  assert.equal(whole.messages.length, 50);
  const tail = await herald.topics.read('replay', { after: whole.messages[39].position });
  assert.deepEqual(tail.messages.map((m) => m.payload), whole.messages.slice(40).map((m) => m.payload));
});

test("a previous version's writes (a cursor update, an attempt upsert) carry into the appended moves and counts; a reset during a batch waits for it and leaves one move per partition", async () => {
  await herald.topics.create('compat', { partitions: 1 });
  await herald.topics.publishMany('compat', [0, 1, 2, 3, 4].map((n) => ({ payload: n })), { waitForPosition: true });
  await herald.topics.createGroup('compat', 'old', 'earliest');
  const ex = herald.driver.executor;
  const topicId = (await ex.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'compat'`)).rows[0].id;
  const ids = (await ex.query<{ id: string }>(`SELECT id::text FROM herald.topic_messages WHERE topic_id = $1 ORDER BY id`, [topicId])).rows.map((r) => r.id);
  // What a process of the previous version wrote: its cursor moved past message 2 (an
  // UPDATE of the cursor row), and three attempts counted on message 3 (an upsert).
  await ex.query(`UPDATE herald.topic_group_cursors SET cursor_id = $2 WHERE topic_id = $1 AND group_name = 'old'`, [topicId, ids[2]]);
  await ex.query(`INSERT INTO herald.topic_attempts (topic_id, group_name, kpart, message_id, through_id, attempts) VALUES ($1, 'old', 0, $2, $2, 3)`, [topicId, ids[3]]);
  const got: number[] = [];
  const failures: number[] = [];
  let fail = true;
  let release: () => void = () => {};
  let hold = false;
  const held = new Promise<void>((r) => (release = r));
  let entered = false;
  const c = herald.topics.consumer<number>('compat', 'old', async ({ messages }) => {
    if (messages[0].payload === 3 && fail) {
      fail = false;
      throw new Error('once');
    }
    if (hold) {
      entered = true;
      await held;
    }
    got.push(...messages.map((m) => m.payload));
  }, { retryDelayMs: 10 });
  c.on('topic:handlerError', (e) => failures.push(e.attempts));
  try {
    await c.start();
    await waitFor(() => got.length === 2, { what: 'messages 3 and 4', progress: () => got.length });
    assert.deepEqual(got, [3, 4], 'resumed after the cursor the previous version wrote');
    assert.deepEqual(failures, [4], 'its three attempts counted, then this one');
    // A reset while a batch runs: it waits for the batch, then replaces the moves.
    got.length = 0;
    hold = true;
    await herald.topics.publish('compat', 5, { waitForPosition: true });
    await waitFor(() => entered, { what: 'the batch of message 5 running' });
    const reset = herald.topics.resetGroup('compat', 'old', 'earliest');
    await waitFor(async () => (await ex.query<{ waiting: boolean }>(`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%topic_group_cursors%FOR UPDATE%') AS waiting`)).rows[0].waiting, { what: 'the reset waiting for the batch' });
    hold = false;
    release();
    assert.equal(await reset, 1);
    await waitFor(() => got.length === 7, { what: 'the batch, then the replay', progress: () => got.length });
    assert.deepEqual(got, [5, 0, 1, 2, 3, 4, 5]);
    const moves = await ex.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM herald.topic_cursor_moves mv JOIN herald.topic_group_cursors c USING (ref) WHERE c.topic_id = $1`,
      [topicId],
    );
    assert.equal(moves.rows[0].n, 1, 'one move left for the partition');
  } finally {
    release();
    await c.stop();
  }
});

test('a claim refuses a batch transaction that is not READ COMMITTED (its cursor read would see a stale snapshot)', async () => {
  await herald.topics.create('isolated', { partitions: 1 });
  await herald.topics.createGroup('isolated', 'g', 'earliest');
  const id = (await herald.driver.executor.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'isolated'`)).rows[0].id;
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    // The claim of this version (032) and the one processes of the previous version call.
    for (const fn of ['topic_claim_batch', 'topic_claim']) {
      await client.query('SAVEPOINT s');
      await assert.rejects(client.query(`SELECT * FROM herald.${fn}($1, 'g', 0, 1, 10, false, 0)`, [id]), (e: { code?: string; message: string }) => e.code === '0A000' && /READ COMMITTED/.test(e.message));
      await client.query('ROLLBACK TO SAVEPOINT s');
    }
    await client.query('ROLLBACK');
  } finally {
    await client.end();
  }
});

test('more consumer lanes than pool connections: every batch still gets its attempt count (lanes wait for a batch slot, not for a connection held by another lane)', async () => {
  // 3 groups x concurrency 4 = 12 lanes on a pool of 6: each batch holds its connection
  // while its attempt count needs another one.
  const small = createHerald({ connectionString: db.url, poolSize: 6 });
  const N = 2000;
  const counts = [0, 0, 0];
  const consumers = counts.map((_, g) =>
    small.topics.consumer<number>('lanes', `g${g}`, ({ messages }) => void (counts[g] += messages.length), { concurrency: 4, batchSize: 50 }),
  );
  try {
    await small.topics.create('lanes', { partitions: 8 });
    await small.topics.publishMany('lanes', Array.from({ length: N }, (_, i) => ({ payload: i, key: `k${i % 40}` })), { waitForPosition: true });
    await Promise.all(consumers.map((c) => c.start()));
    await waitForCount(() => Math.min(...counts), N, { what: 'every group' });
    assert.deepEqual(counts, [N, N, N]);
  } finally {
    await Promise.all(consumers.map((c) => c.stop()));
    await small.close();
  }
});

test('an attempt count that fails after it left the process: the handler has run, the batch commits, topic:problem says why', async () => {
  await herald.topics.create('uncounted', { partitions: 1 });
  const ex = herald.driver.executor;
  await ex.query(`CREATE FUNCTION refuse_try() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no attempt counts today'; END $$`);
  await ex.query('CREATE TRIGGER refuse_try BEFORE INSERT ON herald.topic_tries FOR EACH ROW EXECUTE FUNCTION refuse_try()');
  const seen: number[] = [];
  const problems: unknown[] = [];
  const c = herald.topics.consumer<number>('uncounted', 'g', ({ messages }) => void seen.push(...messages.map((m) => m.payload)));
  c.on('topic:problem', (e) => problems.push(e));
  try {
    await c.start();
    await herald.topics.publishMany('uncounted', [1, 2, 3].map((payload) => ({ payload })));
    await waitFor(async () => (await herald.topics.stats('uncounted')).groups[0]?.lag === 0 && seen.length === 3, { what: 'the batch committed' });
    assert.deepEqual(seen, [1, 2, 3]);
    assert.ok(problems.some((e) => /no attempt counts today/.test(String((e as Error).message))), 'topic:problem carries the failed count');
  } finally {
    await c.stop();
    await ex.query('DROP TRIGGER refuse_try ON herald.topic_tries');
    await ex.query('DROP FUNCTION refuse_try()');
  }
});

test('the position commits with the handler writes; a throwing handler rolls both back', async () => {
  await herald.driver.executor.query('CREATE TABLE sink (v int PRIMARY KEY)');
  await herald.topics.create('exact', { partitions: 1 });
  let fail = true;
  const c = herald.topics.consumer<number>('exact', 'g', async ({ messages, tx }) => {
    for (const m of messages) await tx.query('INSERT INTO sink (v) VALUES ($1)', [m.payload]);
    if (fail) {
      fail = false;
      throw new Error('boom');
    }
  }, { retryDelayMs: 10 });
  const errors: unknown[] = [];
  c.on('topic:handlerError', (e) => errors.push(e));
  await c.start();
  await herald.topics.publishMany('exact', [1, 2, 3].map((payload) => ({ payload })));
  await waitFor(async () => (await herald.driver.executor.query('SELECT count(*)::int AS n FROM sink')).rows[0].n === 3);
  assert.equal(errors.length, 1);
  await c.stop();
  const stats = await herald.topics.stats('exact');
  assert.equal(stats.groups[0].lag, 0);
});

test('stop leaves no listener; start/stop are idempotent', async () => {
  const c = herald.topics.consumer('orders', 'life', () => {});
  await c.start();
  await c.start();
  assert.ok(herald.notifier.channels().includes(herald.topics.channel));
  await c.stop();
  await c.stop();
  assert.equal(c.running, false);
  assert.ok(!herald.notifier.channels().includes(herald.topics.channel));
  // The maintenance timer goes with stop(); a second Herald's close() stops its consumers.
  const other = createHerald({ connectionString: db.url });
  other.topics.start();
  other.topics.start();
  const running = other.topics.consumer('orders', 'life2', () => {});
  await running.start();
  await other.close();
  assert.equal(running.running, false);
});

test('bad input fails before any SQL with typed errors', async () => {
  await assert.rejects(herald.topics.publish('', 1), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.publish('t', undefined), { code: 'INVALID_PAYLOAD' });
  for (const key of ['a\0b', 'x\uD800', '\uDC00y', 'k'.repeat(1001)]) {
    await assert.rejects(herald.topics.publish('t', 1, { key }), { code: 'INVALID_ARGUMENT' }, JSON.stringify(key));
  }
  await assert.rejects(herald.topics.read('no-such-topic'), { code: 'NOT_FOUND' });
  await assert.rejects(herald.topics.resetGroup('orders', 'a', { position: 'nope' }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.create('bad', { partitions: 0 }), { code: 'INVALID_OPTION' });
  assert.throws(() => herald.topics.consumer('orders', 'g', () => {}, { batchSize: -1 }), { code: 'INVALID_OPTION' });
  // Payloads JSON.stringify refuses (a BigInt, a cycle) are INVALID_PAYLOAD too.
  await assert.rejects(herald.topics.publish('t', 1n), { code: 'INVALID_PAYLOAD' });
  const cycle: Record<string, unknown> = {};
  cycle.self = cycle;
  await assert.rejects(herald.topics.publish('t', cycle), { code: 'INVALID_PAYLOAD' });
  // A consumer's start is checked when it is made; createGroup checks every argument before anything is created.
  assert.throws(() => herald.topics.consumer('orders', 'g', () => {}, { start: 'x' as 'earliest' }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.createGroup('', 'g'), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.createGroup('t'.repeat(201), 'g'), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.createGroup('not-created-by-a-bad-start', 'g', new Date('x')), { code: 'INVALID_ARGUMENT' });
  assert.deepEqual((await herald.topics.list()).filter((t) => t === 'not-created-by-a-bad-start'), []);
  // Counts are INVALID_ARGUMENT, as in the mailbox and the outbox; retention values are whole numbers.
  await herald.topics.create('limits');
  await assert.rejects(herald.topics.read('limits', { limit: 0 }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.deadLetters('limits', { limit: 10_001 }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.tail('limits', { batchSize: 0 }).next(), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.topics.create('bad-retention', { retentionMs: 1.5 }), { code: 'INVALID_OPTION' });
});

test("a new group starts at 'latest' or at a point in time", async () => {
  await herald.topics.create('starts', { partitions: 3 });
  // An older write transaction held open: it delays nothing (it used to hold every message here back).
  const hold = new pg.Client({ connectionString: db.url });
  await hold.connect();
  await hold.query('BEGIN');
  await hold.query('SELECT pg_current_xact_id()');
  await herald.topics.publishMany('starts', [1, 2, 3].map((payload) => ({ payload })));
  // A JS Date has millisecond precision: take the next millisecond, and let the database clock pass it.
  const { rows } = await herald.driver.executor.query<{ t: Date }>(`SELECT date_trunc('milliseconds', clock_timestamp()) + interval '1 millisecond' AS t`);
  const cut = rows[0].t;
  await waitFor(async () => (await herald.driver.executor.query<{ ok: boolean }>('SELECT clock_timestamp() > $1::timestamptz AS ok', [cut])).rows[0].ok);
  await herald.topics.publishMany('starts', [4, 5].map((payload) => ({ payload })));
  const latest: number[] = [];
  const fromTime: number[] = [];
  const a = herald.topics.consumer<number>('starts', 'latest', ({ messages }) => void latest.push(...messages.map((m) => m.payload)), { start: 'latest' });
  const b = herald.topics.consumer<number>('starts', 'time', ({ messages }) => void fromTime.push(...messages.map((m) => m.payload)), { start: cut });
  await a.start();
  await b.start();
  await hold.query('COMMIT');
  await hold.end();
  await herald.topics.publish('starts', 6);
  await waitFor(() => latest.includes(6) && fromTime.length >= 3);
  assert.deepEqual(latest, [6]);
  assert.deepEqual([...fromTime].sort(), [4, 5, 6]);
  // Reset to a time replays from there; to 'latest' skips what is there.
  const replay = new Promise<void>((resolve) => a.on('topic:batch', () => latest.length >= 4 && resolve()));
  assert.equal(await herald.topics.resetGroup('starts', 'latest', cut), 3);
  await replay;
  assert.deepEqual([...latest].sort(), [4, 5, 6, 6]);
  await a.stop();
  await b.stop();
});
