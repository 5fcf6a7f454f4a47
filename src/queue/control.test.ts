import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { pgDriver } from '../driver/pg.js';
import type { Driver, Executor } from '../driver/types.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { deferred, waitFor, waitForCount } from '../../test/support/wait.js';

let db: TestDatabase;
const heralds: Herald[] = [];

/** Admissions answered per mode, counted by a driver that watches the statements of a real pool. */
interface Watch {
  admits: Record<string, number>;
  /** Claims by room (migration 033): answers per mode, and the jobs they claimed. */
  rooms: Record<string, number>;
  roomClaimed: number;
}

/** A Herald whose driver counts job_admit answers (the claim path under a pause or limit). */
function herald(queue: ConstructorParameters<typeof Herald>[0]['queue'] = {}): Herald & { watch: Watch } {
  const base = pgDriver({ connectionString: db.url, max: 5 });
  const watch: Watch = { admits: {}, rooms: {}, roomClaimed: 0 };
  const wrap = (x: Executor): Executor => ({
    async query(text, values, options) {
      const r = await x.query(text, values, options);
      if (text.includes('.job_admit(')) {
        const mode = (r.rows[r.rows.length - 1] as { mode: string }).mode;
        watch.admits[mode] = (watch.admits[mode] ?? 0) + 1;
      }
      if (text.includes('.job_admit_room(')) {
        const mode = (r.rows[r.rows.length - 1] as { mode: string }).mode;
        watch.rooms[mode] = (watch.rooms[mode] ?? 0) + 1;
        watch.roomClaimed += r.rows.length - 1;
      }
      return r as never;
    },
  });
  const driver: Driver = {
    kind: base.kind,
    executor: wrap(base.executor),
    transaction: (fn) => base.transaction((tx) => fn(wrap(tx))),
    openListenSession: (o) => base.openListenSession(o),
    end: (o) => base.end(o),
  };
  const h = new Herald({ driver, queue: { pollIntervalMs: 200, ...queue } });
  heralds.push(h);
  const close = h.close.bind(h);
  h.close = async () => {
    await close();
    await base.end();
  };
  return Object.assign(h, { watch });
}

const count = async (kind: string, state: string) =>
  (await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE kind = $1 AND state = $2`, [kind, state], db.url))[0].n;

before(async () => {
  db = await freshDatabase();
});
after(async () => {
  for (const h of heralds) await h.close();
  await db.drop();
});

describe('pause and resume', () => {
  test('a paused queue claims nothing (running jobs finish); resume wakes the workers; the pause survives a restart', async () => {
    // No poll in the test's time: only wake-ups make the worker claim.
    const h = herald({ pollIntervalMs: 600_000 });
    const gate = deferred();
    const started: number[] = [];
    await h.queue.enqueue('pz', { i: 0 }, { queue: 'pq' });
    const w = h.queue.work<{ i: number }>('pz', async (job) => {
      started.push(job.payload.i);
      if (job.payload.i === 0) await gate.promise;
    }, { queue: 'pq', concurrency: 5 });
    await waitFor(() => started.length === 1, { what: 'the first job to start' });
    const p = await h.queue.pause({ queue: 'pq' });
    assert.equal(p.queue, 'pq');
    assert.equal(p.kind, null);
    // Enqueued while paused: the wake-up makes the worker claim, and admission says paused.
    await h.queue.enqueueMany([1, 2, 3].map((i) => ({ kind: 'pz', queue: 'pq', payload: { i } })));
    await waitFor(() => (h.watch.admits.paused ?? 0) >= 1, { what: 'a claim to meet the pause' });
    const before = h.watch.admits.paused;
    await h.queue.enqueue('pz', { i: 4 }, { queue: 'pq' });
    await waitFor(() => h.watch.admits.paused > before, { what: 'a second claim to meet the pause' });
    assert.deepEqual(started, [0], 'nothing new started while paused');
    gate.resolve();
    await waitFor(async () => (await count('pz', 'completed')) === 1, { what: 'the running job to finish while paused' });
    assert.equal(await count('pz', 'available'), 4);

    // Another process (a restart) sees the pause.
    const other = new Herald({ connectionString: db.url, poolSize: 2 });
    heralds.push(other);
    assert.deepEqual((await other.queue.paused()).map((x) => [x.queue, x.kind]), [['pq', null]]);
    assert.equal(await other.queue.resume({ queue: 'pq', kind: 'pz' }), false, 'only the exact target is resumed');
    assert.equal(await other.queue.resume({ queue: 'pq' }), true);
    assert.equal(await other.queue.resume({ queue: 'pq' }), false);
    await waitFor(async () => (await count('pz', 'completed')) === 5, { what: 'the jobs to run after resume (woken, not polled)' });
    assert.deepEqual([...started].sort(), [0, 1, 2, 3, 4]);
    assert.deepEqual(await other.queue.paused(), []);
    await w.stop();
  });

  test('a kind paused in every queue; everything paused; other kinds keep running', async () => {
    const h = herald();
    const ran: string[] = [];
    await h.queue.pause({ kind: 'k1' });
    await h.queue.enqueueMany([
      { kind: 'k1', queue: 'qa' },
      { kind: 'k1', queue: 'qb' },
      { kind: 'k2', queue: 'qa' },
    ]);
    const ws = [
      h.queue.work('k1', (j) => void ran.push(`k1@${j.queue}`), { queue: 'qa' }),
      h.queue.work('k1', (j) => void ran.push(`k1@${j.queue}`), { queue: 'qb' }),
      h.queue.work('k2', (j) => void ran.push(`k2@${j.queue}`), { queue: 'qa' }),
    ];
    await waitFor(() => ran.includes('k2@qa'), { what: 'the other kind to run' });
    await waitFor(() => (h.watch.admits.paused ?? 0) >= 2, { what: 'both paused workers to meet the pause' });
    assert.deepEqual(ran, ['k2@qa']);
    // Everything paused, then the kind's pause lifted: still paused by the global one.
    await h.queue.pause();
    assert.equal(await h.queue.resume({ kind: 'k1' }), true);
    const seen = h.watch.admits.paused;
    await h.queue.enqueue('k2', {}, { queue: 'qa' });
    await waitFor(() => h.watch.admits.paused > seen, { what: 'a claim to meet the global pause' });
    assert.deepEqual(ran, ['k2@qa']);
    assert.deepEqual((await h.queue.paused()).map((x) => [x.queue, x.kind]), [[null, null]]);
    assert.equal(await h.queue.resume(), true);
    await waitFor(() => ran.length === 4, { what: 'every job after the global resume' });
    await Promise.all(ws.map((w) => w.stop()));
  });
});

describe('timeouts', () => {
  test("past timeoutMs the handler's signal aborts and the attempt fails; it is retried; a job's own timeoutMs wins", async () => {
    const h = herald({ retryBaseDelayMs: 10, retryMaxDelayMs: 10 });
    const aborted: string[] = [];
    const attempts = new Map<string, number>();
    const w = h.queue.work<{ hang: number }>('slow', async (job) => {
      const n = (attempts.get(job.id) ?? 0) + 1;
      attempts.set(job.id, n);
      if (n >= job.payload.hang + 1) return { attempt: n };
      await new Promise<void>((resolve) => job.signal.addEventListener('abort', () => resolve()));
      aborted.push(`${job.id}:${(job.signal.reason as { code?: string }).code}`);
      return 'ignored: the attempt already failed';
    }, { timeoutMs: 150, concurrency: 4 });
    const a = await h.queue.enqueue('slow', { hang: 1 });
    const b = await h.queue.enqueue('slow', { hang: 2 }, { timeoutMs: 50, maxAttempts: 2 });
    await waitFor(async () => (await h.queue.get(a.id))?.state === 'completed' && (await h.queue.get(b.id))?.state === 'dead', { what: 'a to complete, b to die' });
    const ja = (await h.queue.get(a.id))!;
    assert.equal(ja.attempt, 2);
    assert.deepEqual(ja.result, { attempt: 2 });
    assert.match(ja.errors[0].error, /timed out after 150 ms/);
    const jb = (await h.queue.get(b.id))!;
    assert.equal(jb.timeoutMs, 50);
    assert.match(jb.lastError ?? '', /timed out after 50 ms/);
    assert.equal(jb.errors.length, 2);
    await waitFor(() => aborted.length === 3, { what: 'every timed-out handler to see its signal abort' });
    assert.ok(aborted.every((x) => x.endsWith(':TIMEOUT')));
    await w.stop();
    assert.throws(() => h.queue.work('x', () => {}, { timeoutMs: 0 }), /timeoutMs/);
    await assert.rejects(h.queue.enqueue('x', {}, { timeoutMs: 1.5 }), /timeoutMs/);
  });

  test('a handler that ignores its signal fails at the timeout but keeps its slot until it returns', async () => {
    const h = herald({ retryBaseDelayMs: 60_000, retryMaxDelayMs: 60_000 });
    const release = deferred();
    const started: string[] = [];
    const w = h.queue.work('stubborn', async (job) => {
      started.push(job.id);
      if (started.length === 1) await release.promise; // ignores job.signal
    }, { timeoutMs: 50, concurrency: 1 });
    const first = await h.queue.enqueue('stubborn', {});
    await waitFor(async () => (await h.queue.get(first.id))?.lastError?.includes('timed out'), { what: 'the attempt to fail at the timeout' });
    const second = await h.queue.enqueue('stubborn', {});
    // The slot is still taken (concurrency 1): the second job waits until the first handler returns.
    const completed = new Set<string>();
    h.queue.on('job:completed', (c) => completed.add(c.id));
    assert.deepEqual(started, [first.id]);
    release.resolve();
    await waitFor(async () => (await h.queue.get(second.id))?.state === 'completed', { what: 'the second job once the slot frees' });
    assert.deepEqual(started, [first.id, second.id]);
    assert.equal((await h.queue.get(first.id))?.state, 'available', 'the first attempt was recorded as failed (retry later)');
    await w.stop();
  });
});

describe('fleet-wide limits (in one process, two Heralds)', () => {
  test('concurrency per partition key is never exceeded and every job runs', async () => {
    const a = herald();
    const b = herald();
    await a.queue.setLimit({ queue: 'lim', concurrency: 2, partitionBy: 'customer' });
    assert.deepEqual((await b.queue.limits()).map((l) => [l.queue, l.kind, l.concurrency, l.partitionBy]), [['lim', null, 2, ['customer']]]);
    const running = new Map<string, number>();
    let max = 0;
    let done = 0;
    const handler = async (job: { payload: { customer: string } }) => {
      const c = job.payload.customer;
      const n = (running.get(c) ?? 0) + 1;
      running.set(c, n);
      max = Math.max(max, n);
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 5));
      running.set(c, running.get(c)! - 1);
      done++;
    };
    const ws = [a, b].map((h) => h.queue.work('lk', handler, { queue: 'lim', concurrency: 10 }));
    await a.queue.enqueueMany(Array.from({ length: 60 }, (_, i) => ({ kind: 'lk', queue: 'lim', payload: { customer: `c${i % 3}` } })));
    await waitForCount(() => done, 60, { what: 'jobs done' });
    assert.ok(max <= 2, `at most 2 per customer at once, saw ${max}`);
    assert.equal(max, 2, 'the limit was reached (10 slots per worker, 3 customers)');
    // A handler's return is counted before its completion is written (completions are batched).
    assert.equal(await waitForCount(() => count('lk', 'completed'), 60, { what: 'completions recorded' }), 60);
    assert.equal(await a.queue.removeLimit({ queue: 'lim' }), true);
    assert.equal(await a.queue.removeLimit({ queue: 'lim' }), false);
    // Without the limit, the worker goes back to the ordinary claim.
    await a.queue.enqueue('lk', { customer: 'c0' }, { queue: 'lim' });
    await waitForCount(() => done, 61, { what: 'the job after the limit went' });
    assert.ok((a.watch.admits.free ?? 0) + (b.watch.admits.free ?? 0) >= 1, 'a worker was told the limit is gone');
    await Promise.all(ws.map((w) => w.stop()));
  });

  test('a rate limit: at most count starts per period (token bucket), every job runs', async () => {
    const h = herald();
    await h.queue.setLimit({ queue: 'rl', kind: 'rk', rate: { count: 4, periodMs: 400 } });
    await h.queue.enqueueMany(Array.from({ length: 16 }, () => ({ kind: 'rk', queue: 'rl' })));
    const w = h.queue.work('rk', () => {}, { queue: 'rl', concurrency: 10 });
    await waitForCount(() => count('rk', 'completed'), 16, { what: 'rate-limited jobs' });
    await w.stop();
    // Starts in database time (each claim's transaction time). A token bucket of 4 per 400 ms
    // allows at most 4 + 4 * t / 400 starts in any interval of length t.
    const rows = await adminQuery<{ ms: number }>(`SELECT extract(epoch FROM attempted_at) * 1000 AS ms FROM herald.jobs WHERE kind = 'rk' ORDER BY attempted_at`, [], db.url);
    const t = rows.map((r) => Number(r.ms));
    for (let i = 0; i < t.length; i++) {
      for (let j = i; j < t.length; j++) {
        // Slack of 50 ms: attempted_at is the claim transaction's start, the bucket reads the clock a little later.
        assert.ok(j - i + 1 <= 4 + (4 * (t[j] - t[i] + 50)) / 400, `starts ${i}..${j} within ${t[j] - t[i]} ms`);
      }
    }
    assert.ok(t[t.length - 1] - t[0] >= 1000, 'sixteen starts at 4 per 400 ms take at least 1.2 s minus the first burst');
  });

  test('a queue-wide limit claims by room while it has room: six workers in two Heralds never run more than the limit', async () => {
    const a = herald();
    const b = herald();
    // One stripe of three slots (the default would be three stripes of one): claims by room
    // take a free slot whenever there is one; when the stripe is full they go through
    // job_admit, so both paths run side by side here.
    await a.queue.setLimit({ queue: 'room', concurrency: 3 });
    await adminQuery(`UPDATE herald.queue_controls SET stripes = 1 WHERE queue = 'room'`, [], db.url);
    let running = 0;
    let max = 0;
    let done = 0;
    const handler = async () => {
      running++;
      max = Math.max(max, running);
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 3));
      running--;
      done++;
    };
    const ws = [a, a, a, b, b, b].map((h) => h.queue.work('rm', handler, { queue: 'room', concurrency: 1, prefetch: 0 }));
    try {
      await a.queue.enqueueMany(Array.from({ length: 90 }, () => ({ kind: 'rm', queue: 'room' })));
      await waitForCount(() => done, 90, { what: 'jobs done' });
      assert.ok(max <= 3, `at most 3 at once across both Heralds, saw ${max}`);
      // After its first claim through job_admit that got what it wanted, a worker claims by room.
      const rooms = Object.values(a.watch.rooms).concat(Object.values(b.watch.rooms)).reduce((x, y) => x + y, 0);
      assert.ok(rooms > 0, 'workers claimed by room');
      console.log(`# ${rooms} claims by room took ${a.watch.roomClaimed + b.watch.roomClaimed} jobs`);
      assert.equal(await waitForCount(() => count('rm', 'completed'), 90, { what: 'completions recorded' }), 90);
      const keys = await adminQuery<{ k: string }>(`SELECT DISTINCT limit_key AS k FROM herald.jobs WHERE kind = 'rm' ORDER BY 1`, [], db.url);
      assert.deepEqual(keys.map((r) => r.k), ['["room", "", null]#0'], 'every job ran under the one stripe');
      // The limit gone: the next claim, by room or through job_admit, is told so.
      assert.equal(await a.queue.removeLimit({ queue: 'room' }), true);
      await a.queue.enqueueMany(Array.from({ length: 6 }, () => ({ kind: 'rm', queue: 'room' })));
      await waitForCount(() => done, 96, { what: 'the jobs after the limit' });
      const free = (a.watch.rooms.free ?? 0) + (b.watch.rooms.free ?? 0) + (a.watch.admits.free ?? 0) + (b.watch.admits.free ?? 0);
      assert.ok(free >= 1, 'a worker was told the limit is gone');
    } finally {
      await Promise.all(ws.map((w) => w.stop()));
    }
  });

  test('a claim by room spends tokens only for the jobs it claimed', async () => {
    const h = herald();
    // Ten tokens an hour (eight stripes of 1.25): no refill to speak of during the test.
    await h.queue.setLimit({ queue: 'rroom', kind: 'rt', rate: { count: 10, periodMs: 3_600_000 } });
    // Two rounds of three jobs, each enqueued before its worker starts. (A job committed while
    // a claim through job_admit is in flight can be admitted by job_admit, whose statements
    // see it, and not claimed by the statement around it, which cannot: that claim spends a
    // token for it, fewer starts rather than more. Claims by room do not: see docs/queue.md.)
    for (const round of [1, 2]) {
      await h.queue.enqueueMany(Array.from({ length: 3 }, () => ({ kind: 'rt', queue: 'rroom' })));
      const w = h.queue.work('rt', () => {}, { queue: 'rroom', concurrency: 1, prefetch: 0 });
      try {
        await waitForCount(() => count('rt', 'completed'), 3 * round, { what: `round ${round}` });
      } finally {
        await w.stop();
      }
    }
    // After a first claim through job_admit that got its one job, the worker claims by room;
    // the claims that found no job (once each round's jobs were done) must not have spent a token.
    assert.ok((h.watch.rooms.limited ?? 0) >= 1, 'the worker claimed by room');
    const [{ left }] = await adminQuery<{ left: number }>(
      `SELECT (coalesce(sum(least(1.25, tokens + extract(epoch FROM clock_timestamp() - at) * 1000 * 1.25 / 3600000)), 0) + 1.25 * (8 - count(*)))::float8 AS left
         FROM herald.queue_rate_buckets WHERE key LIKE '["rroom", "rt", null]#%'`,
      [],
      db.url,
    );
    assert.ok(left > 3.95 && left < 4.1, `ten tokens less six starts: ${left} left`);
  });

  test("queue retention deletes the token buckets that refilled or lost their limit, never one that still holds a debt", async () => {
    const h = herald();
    // An hour-long period: every bucket written below still holds a debt when prune runs.
    await h.queue.setLimit({ queue: 'rbq', kind: 'rbk', rate: { count: 1000, periodMs: 3_600_000 }, partitionBy: 'k' });
    await h.queue.setLimit({ queue: 'rbq2', rate: { count: 1000, periodMs: 3_600_000 }, partitionBy: 'k' });
    await h.queue.enqueueMany(Array.from({ length: 30 }, (_, i) => ({ kind: 'rbk', queue: 'rbq', payload: { k: `c#${i % 10}` } })));
    await h.queue.enqueueMany(Array.from({ length: 6 }, (_, i) => ({ kind: 'any', queue: 'rbq2', payload: { k: `d${i % 3}` } })));
    const ws = [h.queue.work('rbk', () => {}, { queue: 'rbq', concurrency: 10 }), h.queue.work('any', () => {}, { queue: 'rbq2', concurrency: 10 })];
    try {
      await waitForCount(async () => (await count('rbk', 'completed')) + (await count('any', 'completed')), 36, { what: 'rate-limited jobs' });
    } finally {
      for (const w of ws) await w.stop();
    }
    const buckets = async (like: string) =>
      (await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.queue_rate_buckets WHERE key LIKE $1`, [like], db.url))[0].n;
    const first = await buckets('["rbq", "rbk", %');
    // Ten keys (one of them with '#' in its value), each job under one of the key's stripes.
    assert.ok(first >= 10, `a bucket per key and stripe used, saw ${first}`);
    assert.ok((await buckets('["rbq2", "", %')) >= 3);
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.equal(await buckets('["rbq", "rbk", %'), first, 'buckets written within their period are kept');
    // Three keys' buckets last written two hours ago: refilled, so they read as missing ones.
    const old = await adminQuery(
      `UPDATE herald.queue_rate_buckets SET at = now() - interval '2 hours' WHERE key LIKE '["rbq", "rbk", "c#1"]#%' OR key LIKE '["rbq", "rbk", "c#2"]#%' OR key LIKE '["rbq", "rbk", "c#3"]#%' RETURNING key`,
      [],
      db.url,
    );
    assert.ok(old.length >= 3);
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.equal(await buckets('["rbq", "rbk", %'), first - old.length, 'the refilled buckets, and only they, are gone');
    // A limit removed: its buckets go at the next run; the other queue's stay.
    assert.equal(await h.queue.removeLimit({ queue: 'rbq2' }), true);
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.equal(await buckets('["rbq2", "", %'), 0);
    assert.equal(await buckets('["rbq", "rbk", %'), first - old.length);
    await h.queue.removeLimit({ queue: 'rbq', kind: 'rbk' });
  });
});

describe('pause and limits from the CLI, the HTTP API and the dashboard', () => {
  test('herald jobs pause|resume|paused|limit|limits|unlimit; POST /jobs/pause|resume and the queues panel need admin', async () => {
    const { cli } = await import('../../test/support/cli.js');
    const { HeraldServer } = await import('../server/server.js');
    const env = { DATABASE_URL: db.url };
    let r = await cli(['jobs', 'pause', '--queue', 'cliq'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^paused queue cliq since /);
    r = await cli(['jobs', 'paused'], env);
    assert.deepEqual(r.stdout.trim().split('\n').map((l) => JSON.parse(l)).map((p) => [p.queue, p.kind]), [['cliq', null]]);
    r = await cli(['jobs', 'resume', '--queue', 'cliq', '--kind', 'x'], env);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /not paused: queue cliq, kind x/);
    r = await cli(['jobs', 'resume', '--queue', 'cliq', '--json'], env);
    assert.equal(r.code, 0);
    assert.deepEqual(JSON.parse(r.stdout), { resumed: true });
    r = await cli(['jobs', 'limit', '--queue', 'cliq', '--concurrency', '3', '--rate', '10/1s', '--partition-by', 'customer.id'], env);
    assert.equal(r.code, 0, r.stderr);
    r = await cli(['jobs', 'limits'], env);
    const lim = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.queue === 'cliq');
    assert.deepEqual([lim.queue, lim.kind, lim.concurrency, lim.partitionBy, lim.rate], ['cliq', null, 3, ['customer', 'id'], { count: 10, periodMs: 1000 }]);
    assert.equal((await cli(['jobs', 'limit', '--queue', 'cliq'], env)).code, 2);
    assert.equal((await cli(['jobs', 'limit', '--rate', 'often'], env)).code, 2);
    assert.equal((await cli(['jobs', 'unlimit', '--queue', 'cliq'], env)).code, 0);
    assert.equal((await cli(['jobs', 'unlimit', '--queue', 'cliq'], env)).code, 1);

    const h = herald();
    await h.queue.enqueue('dash-kind', {}, { queue: 'dashq', delayMs: 3_600_000 });
    const ADMIN = 'control-admin-token-123456';
    const VIEWER = 'control-viewer-token-123456';
    const server = new HeraldServer(h, {
      port: 0,
      token: ADMIN,
      apiKeys: [{ name: 'viewer', key: VIEWER, grants: { subscribe: ['*'], publish: ['*'] } }],
      dashboardRefreshMs: 0,
    });
    const base = await server.start();
    try {
      const post = (path: string, token: string, body: unknown) =>
        fetch(`${base}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal((await post('/jobs/pause', VIEWER, { queue: 'dashq' })).status, 403);
      assert.deepEqual(await h.queue.paused(), []);
      const p = await post('/jobs/pause', ADMIN, { queue: 'dashq' });
      assert.equal(p.status, 200);
      assert.equal((await p.json()).paused.queue, 'dashq');
      assert.equal((await post('/jobs/pause', ADMIN, { queue: 7 })).status, 400);
      const controls = await (await fetch(`${base}/jobs/controls`, { headers: { authorization: `Bearer ${ADMIN}` } })).json();
      assert.deepEqual(controls.paused.map((x: { queue: string }) => x.queue), ['dashq']);
      const panel = async () => {
        const snap = await (await fetch(`${base}/api/dashboard`, { headers: { authorization: `Bearer ${ADMIN}` } })).json();
        const q = snap.panels.find((x: { id: string }) => x.id === 'queues');
        const i = q.data.findIndex((row: { queue: string }) => row.queue === 'dashq');
        return { row: q.data[i], actions: q.rowActions[i] };
      };
      let seen = await panel();
      assert.equal(seen.row.paused, 'queue');
      assert.deepEqual(seen.actions, ['resume']);
      const act = (name: string) => post(`/api/dashboard/panels/queues/actions/${name}`, ADMIN, { args: { queue: 'dashq', kind: 'dash-kind' } });
      assert.equal((await post('/api/dashboard/panels/queues/actions/resume', VIEWER, { args: { queue: 'dashq', kind: 'dash-kind' } })).status, 403);
      assert.equal((await act('resume')).status, 200);
      assert.deepEqual(await h.queue.paused(), []);
      seen = await panel();
      assert.equal(seen.row.paused, '');
      assert.deepEqual(seen.actions, ['pause']);
      assert.equal((await act('resume')).status, 409);
      assert.equal((await act('pause')).status, 200);
      assert.deepEqual((await h.queue.paused()).map((x) => [x.queue, x.kind]), [['dashq', 'dash-kind']]);
      const resumed = await post('/jobs/resume', ADMIN, { queue: 'dashq', kind: 'dash-kind' });
      assert.deepEqual(await resumed.json(), { resumed: true });
    } finally {
      await server.stop();
    }
  });
});
