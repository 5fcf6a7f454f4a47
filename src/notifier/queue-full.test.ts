/**
 * A full notification queue never costs a write (DESIGN.md trap 5, issue 14 point 1).
 *
 * A real stalled listener: a session that runs `LISTEN x; BEGIN; SELECT 1` and stays
 * idle in transaction while others NOTIFY, on a cluster of the file's own.
 *
 * - PostgreSQL 17 and later: `max_notify_queue_pages = 64` (512 kB), filled until
 *   Postgres refuses a notification (54000). Every write path then meets the real
 *   full queue: a send, an enqueue and a publish made while their process still
 *   attaches wake-ups commit through the retry without one; a caller's transaction
 *   fails once with NOTIFY_QUEUE_FULL and commits when run again; plain notify fails
 *   with NOTIFY_QUEUE_FULL; the triggers (outbox, changes) skip their NOTIFY.
 * - PostgreSQL 15 and 16 have no `max_notify_queue_pages` (the queue is 8 GB, too big
 *   to fill in a test): the same stalled listener holds a few pages, and
 *   `queueUsageHighWater` is set below that, so the pressure path runs for real
 *   (wake-ups paused by a sample, writes without them consumed by polls, the holder
 *   named, resume on drain); the 54000 retries are asserted where the queue can fill.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import pg from 'pg';
import { createHerald, type Herald } from '../client.js';
import { embeddedBinDir } from '../embedded/cluster.js';
import { HeraldError, NotifyQueueFullError } from '../errors.js';
import { HeraldServer } from '../server/server.js';
import { privateCluster } from '../../test/support/cluster.js';
import { freshDatabase } from '../../test/support/db.js';
import { cli } from '../../test/support/cli.js';
import { nextEvent, waitFor } from '../../test/support/wait.js';
import { queueTailHolders, type QueueFullInfo, type QueueResumedInfo } from './pressure.js';

async function serverMajor(): Promise<number> {
  const bin = process.env.HERALD_TEST_PG_BINDIR || (await embeddedBinDir());
  const out = execFileSync(join(bin, 'postgres'), ['--version']).toString();
  return Number(/PostgreSQL\)\s+(\d+)/.exec(out)?.[1] ?? 0);
}

test('invalid water marks are refused, naming the option', () => {
  assert.throws(
    () => createHerald({ connectionString: 'postgres://127.0.0.1:1/x', notifier: { queueUsageHighWater: 0.3, queueUsageLowWater: 0.3 } }),
    (e: HeraldError) => e.code === 'INVALID_OPTION' && /queueUsageLowWater/.test(e.message),
  );
  assert.throws(() => createHerald({ connectionString: 'postgres://127.0.0.1:1/x', notifier: { queueUsageHighWater: 2 } }), /queueUsageHighWater/);
});

test('a backend still starting is never named a holder (it shows a transaction, no client statement)', async () => {
  // A connecting backend shows xact_start while it reads the catalogs, with state
  // `starting` (PostgreSQL 18) or none: sorted by that transaction it came first, ahead
  // of the real holder. One snapshot (a transaction) shows both the raw view and the list.
  const db = await freshDatabase();
  const watcher = new pg.Client({ connectionString: db.url });
  await watcher.connect();
  let stop = false;
  const opener = (async () => {
    while (!stop) {
      const c = new pg.Client({ connectionString: db.url });
      c.on('error', () => {});
      await c.connect();
      await c.end();
    }
  })();
  try {
    const executor = { query: (text: string, values?: readonly unknown[]) => watcher.query(text, values as unknown[]) } as Parameters<typeof queueTailHolders>[0];
    // PostgreSQL 18 shows a backend from its start; older ones only once it has started,
    // where the list is checked over a fixed number of snapshots.
    const version = Number((await watcher.query<{ v: string }>('SELECT current_setting($1) AS v', ['server_version_num'])).rows[0].v);
    const shows = version >= 180000;
    let starting = 0;
    for (let i = 0; shows ? starting < 3 : i < 300; i++) {
      assert.ok(i < 20_000, 'no starting backend seen while connections opened');
      await watcher.query('BEGIN');
      const raw = await watcher.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND (state IS NULL OR state = 'starting')`,
      );
      const holders = await queueTailHolders(executor, 100);
      await watcher.query('COMMIT');
      if (raw.rows.length === 0) continue;
      starting++;
      const named = holders.filter((h) => raw.rows.some((r) => r.pid === h.pid));
      assert.deepEqual(named, [], 'a starting backend was named');
    }
  } finally {
    stop = true;
    await opener.catch(() => {});
    await watcher.end();
    await db.drop();
  }
});

test('a stalled listener fills the queue: every write commits and is consumed, queueFull names it, wake-ups resume when it ends', async (t) => {
  const major = await serverMajor();
  const canFill = major >= 17;
  t.diagnostic(canFill ? `PostgreSQL ${major}: max_notify_queue_pages = 64, filled to 54000` : `PostgreSQL ${major}: 8 GB queue, pressure by queueUsageHighWater`);
  const pc = await privateCluster({ settings: canFill ? { max_notify_queue_pages: 64 } : {} });
  // On 17+: only a full queue pauses (a sample at 1, or a write's 54000); on 15/16 a few pages do.
  const water = canFill ? { queueUsageHighWater: 1, queueUsageLowWater: 0.25 } : { queueUsageHighWater: 0.000005, queueUsageLowWater: 0 };
  const notifier = { ...water, queueUsageIntervalMs: 100 };
  const heralds: Herald[] = [];
  const clients: pg.Client[] = [];
  const connect = async () => {
    const c = new pg.Client({ connectionString: pc.url, application_name: 'qf-test' });
    c.on('error', () => {});
    await c.connect();
    clients.push(c);
    return c;
  };
  const make = (extra: Parameters<typeof createHerald>[0] = {}) => {
    const h = createHerald({ connectionString: pc.url, poolSize: 3, notifier, ...extra });
    heralds.push(h);
    return h;
  };
  let server: HeraldServer | undefined;
  try {
    // The consuming process: every part polls every 100 ms, the documented latency while paused.
    const hc = make({ mailbox: { pollIntervalMs: 100 }, queue: { pollIntervalMs: 100 } });
    await hc.topics.create('qf', { partitions: 2 });
    await hc.driver.executor.query('CREATE TABLE qf_rows (id int PRIMARY KEY)');
    await hc.changes.track('qf_rows');
    const mail = new Set<string>();
    const jobs = new Set<number>();
    const topicSeen: number[] = [];
    const published: unknown[] = [];
    hc.mailbox.consume('qf', (m) => void mail.add(m.id));
    hc.queue.work<{ n: number }>('qf-job', (job) => void jobs.add(job.payload.n));
    // Started once the publisher's own sequencer run has met the full queue: a consumer
    // sequences at every turn, and a run that finds the messages already moved sends no NOTIFY.
    const consumer = hc.topics.consumer<number>('qf', 'g', ({ messages }) => void topicSeen.push(...messages.map((m) => m.payload)), { pollIntervalMs: 100 });
    await hc.topics.createGroup('qf', 'g');
    hc.outbox.relay({ sink: (e) => void published.push(e.payload), pollIntervalMs: 100 });
    await hc.listen('qf-ready').established;

    // One producer process per write path: each meets the full queue with wake-ups still on
    // (no sampling of their own until paused). pOut samples like a process that only writes.
    const producer = { notifier: { ...water, queueUsageIntervalMs: 0, healthCheckIntervalMs: 100 } };
    const pSend = make(producer);
    const pEnq = make(producer);
    const pPub = make(producer);
    const pTx = make(producer);
    const pOut = make();

    // The stalled listener, and the queue filled behind it.
    const stalled = await connect();
    await stalled.query('LISTEN x');
    await stalled.query('BEGIN');
    await stalled.query('SELECT 1');
    const stalledPid = (await stalled.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const hcFull = nextEvent(hc.notifier, 'notifier:queueFull', 30_000);
    const filler = await connect();
    for (let i = 0; ; i++) {
      try {
        await filler.query(`SELECT pg_notify('fill', repeat('x', 7000) || $1)`, [String(i)]);
      } catch (err) {
        assert.ok(canFill, `only a small queue fills: ${(err as Error).message}`);
        assert.equal((err as { code?: string }).code, '54000');
        break;
      }
      if (!canFill && i >= 40) break; // about 40 pages: above the high-water mark of 5 pages
      assert.ok(i < 1000, 'the queue never filled');
    }
    const [full] = await hcFull;
    assert.equal(hc.notifier.wakeups, false);
    assert.equal(full.holders[0]?.pid, stalledPid, `the stalled listener is named first: ${JSON.stringify(full.holders)}`);
    assert.equal(full.holders[0].reason, 'idle in transaction');
    if (!canFill) for (const p of [pSend, pEnq, pPub, pTx]) await p.notifier.sampleQueueUsage();

    // Where the queue still has room (15/16), a listener proves the paused writes attach no wake-up.
    const heard: string[] = [];
    if (!canFill) {
      const ear = await connect();
      ear.on('notification', (n) => heard.push(`${n.channel}:${n.payload}`));
      for (const ch of [hc.mailbox.channel, hc.queue.channelNames.wake, hc.topics.channel]) await ear.query(`LISTEN "${ch}"`);
    }

    // Writes. On 17+ the first of each producer meets 54000 and commits through the retry.
    const sendFull = canFill ? nextEvent(pSend.notifier, 'notifier:queueFull') : undefined;
    assert.deepEqual(await pSend.mailbox.send({ to: 'qf', id: 'm1', payload: 'one' }), { id: 'm1', created: true });
    if (sendFull) {
      const [info] = await sendFull;
      assert.equal(info.reason, 'error');
      assert.equal(info.holders[0]?.pid, stalledPid, `the stalled listener is named first: ${JSON.stringify(info.holders)}`);
    }
    assert.equal(pSend.notifier.wakeups, false);
    assert.equal((await pEnq.queue.enqueue('qf-job', { n: 1 })).inserted, true);
    assert.equal((await pEnq.queue.enqueue('qf-job', { n: 2 }, { uniqueKey: 'qf-2' })).inserted, true);
    await pPub.topics.publish('qf', 1);
    await pPub.topics.publishMany('qf', [{ payload: 2 }, { payload: 3, key: 'k' }]);
    // A process that only writes samples the usage itself from its first write on.
    const outFull = nextEvent(pOut.notifier, 'notifier:queueFull');
    await pOut.outbox.add({ type: 'qf', payload: 1 });
    assert.equal((await outFull)[0].reason, 'usage');
    await pOut.outbox.addMany([{ type: 'qf', payload: 2, key: 'k' }]);
    await filler.query('INSERT INTO qf_rows (id) VALUES (1)'); // a tracked table: its trigger must not fail the write
    assert.equal(pEnq.notifier.wakeups, false, 'the write paused wake-ups');
    // A publish without tx sends no wake-up itself: the sequencer run it starts in the background does (and pauses).
    await waitFor(() => !pPub.notifier.wakeups, { what: 'the publisher\'s sequencer run paused wake-ups' });
    await consumer.start();

    if (!canFill) {
      await filler.query(`SELECT pg_notify($1, 'marker')`, [hc.mailbox.channel]);
      await waitFor(() => heard.length > 0, { what: 'the marker' });
      assert.deepEqual(heard, [`${hc.mailbox.channel}:marker`], 'no wake-up before the marker');
    }

    // In the caller's transaction: the commit fails once (a wake-up was attached before the
    // pressure was known), typed; run again, it commits without one.
    const inTx = () => pTx.transaction((tx) => pTx.mailbox.send({ to: 'qf', id: 'm2', payload: 'two' }, { tx }));
    if (canFill) {
      await assert.rejects(inTx(), (e: Error) => e instanceof NotifyQueueFullError && e.code === 'NOTIFY_QUEUE_FULL' && (e.cause as { code?: string }).code === '54000');
      assert.equal(pTx.notifier.wakeups, false);
      await assert.rejects(pTx.notify('x', 'y'), (e: HeraldError) => e.code === 'NOTIFY_QUEUE_FULL');
    }
    assert.deepEqual(await inTx(), { id: 'm2', created: true });

    // Everything is consumed, by polls: nothing lost, nothing twice.
    await waitFor(() => mail.size === 2 && jobs.size === 2 && topicSeen.length === 3 && published.length === 2, {
      what: 'every write consumed while wake-ups are paused',
      timeoutMs: 30_000,
    });
    assert.deepEqual([...mail].sort(), ['m1', 'm2']);
    assert.deepEqual([...jobs].sort(), [1, 2]);
    assert.deepEqual(topicSeen.sort(), [1, 2, 3]);
    assert.deepEqual(published.sort(), [1, 2]);

    // doctor and the dashboard data name the stalled backend.
    const doctor = await cli(['doctor'], { DATABASE_URL: pc.url });
    assert.match(doctor.stdout, new RegExp(`tail .*pid ${stalledPid} \\(idle in transaction`), doctor.stdout);
    if (canFill) assert.equal(doctor.code, 1);
    server = new HeraldServer(hc, { port: 0 });
    await server.start();
    const snap = (await server.dashboard.snapshot()) as { notifier: { wakeups: boolean; queueTailHolders: { pid: number }[] } };
    assert.equal(snap.notifier.wakeups, false);
    assert.equal(snap.notifier.queueTailHolders[0]?.pid, stalledPid);
    const metrics = await server.metrics.registry.metrics();
    assert.match(metrics, /herald_notify_wakeups_paused 1/);
    assert.match(metrics, /herald_notify_queue_full_total 1/);

    // The stalled session ends: the queue drains, wake-ups resume by themselves.
    const paused = [hc, pSend, pEnq, pPub, pOut, pTx];
    assert.deepEqual(paused.map((h) => h.notifier.wakeups), [false, false, false, false, false, false]);
    const resumed = paused.map((h) => nextEvent(h.notifier, 'notifier:queueResumed', 30_000));
    await stalled.query('COMMIT');
    const [[r]] = await Promise.all(resumed);
    assert.ok(r.usage <= water.queueUsageLowWater);
    for (const h of heralds) assert.equal(h.notifier.wakeups, true);

    // Wake-ups again: a send's NOTIFY reaches a listener, and the message is consumed.
    const spy = await connect();
    const woke = new Promise<string>((resolve) => spy.on('notification', (n) => resolve(n.payload ?? '')));
    await spy.query(`LISTEN "${hc.mailbox.channel}"`);
    await pSend.mailbox.send({ to: 'qf', id: 'm3', payload: 'three' });
    assert.equal(await woke, 'qf');
    await waitFor(() => mail.has('m3'), { what: 'm3 consumed' });
    await pTx.notify('x', 'works again');
  } finally {
    await server?.stop();
    for (const c of clients) await c.end().catch(() => {});
    for (const h of heralds) await h.close();
    await pc.dispose();
  }
});

test('the outbox and row-change triggers skip their NOTIFY at herald.notify_max_usage; the write commits', async () => {
  const db = await freshDatabase();
  const herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
  const ear = new pg.Client({ connectionString: db.url });
  ear.on('error', () => {});
  try {
    await herald.driver.executor.query('CREATE TABLE qf_items (id int PRIMARY KEY)');
    const tracked = await herald.changes.track('qf_items');
    await ear.connect();
    const heard: string[] = [];
    ear.on('notification', (n) => heard.push(n.channel));
    await ear.query(`LISTEN "${herald.outbox.channel}"; LISTEN "${tracked.channel}"`);
    // The setting as the triggers read it: 0 means "the queue is always too full".
    await herald.transaction(async (tx) => {
      await tx.query(`SET LOCAL herald.notify_max_usage = '0'`);
      await tx.query('INSERT INTO qf_items (id) VALUES (1)');
      await herald.outbox.add({ type: 'qf', payload: 1 }, { tx });
    });
    await herald.driver.executor.query(`SELECT pg_notify($1, 'marker')`, [herald.outbox.channel]);
    await waitFor(() => heard.length > 0, { what: 'the marker' });
    assert.deepEqual(heard, [herald.outbox.channel], 'only the marker: neither trigger notified');
    assert.equal((await herald.driver.executor.query('SELECT count(*)::int AS n FROM herald.outbox_events')).rows[0].n, 1);
    // Without the setting (default 0.5) both announce again.
    await herald.transaction(async (tx) => {
      await tx.query('INSERT INTO qf_items (id) VALUES (2)');
      await herald.outbox.add({ type: 'qf', payload: 2 }, { tx });
    });
    await waitFor(() => heard.length === 3, { what: 'both wake-ups' });
    assert.deepEqual(heard.slice(1).sort(), [herald.outbox.channel, tracked.channel].sort());
  } finally {
    await ear.end().catch(() => {});
    await herald.close();
    await db.drop();
  }
});
