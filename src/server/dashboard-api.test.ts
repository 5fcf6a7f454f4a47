/**
 * The dashboard's admin API against the real parts: the sampler's series, the job list
 * (filters, search, keyset paging), detail reads, control actions checked in the
 * database, the audit log, and refusals for non-admin tokens.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Herald } from '../client.js';
import { useServer } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';
import { jobActivitySql } from '../queue/queries.js';
import type { AuditEntry } from './audit.js';
import type { HeraldServer } from './server.js';
import { SeriesSampler, type SeriesColumns } from './series.js';

const ADMIN = 'dashboard-api-admin-0001';
const VIEWER = 'dashboard-api-viewer-0002';

let herald: Herald;
let server: HeraldServer;
let base: string;
useServer(
  {
    herald: { queue: { pollIntervalMs: 50 } },
    server: {
      token: ADMIN,
      apiKeys: [{ name: 'viewer', key: VIEWER, grants: { subscribe: ['*'], publish: ['*'] } }],
      dashboardRefreshMs: 0,
      dashboardSampleIntervalMs: 200,
      dashboardSampleRetentionMs: 60_000,
      dashboardSampleLagMs: 1000,
    },
  },
  (f) => ({ herald, server, base } = f),
);

async function call(method: string, path: string, body?: unknown, token: string | null = ADMIN): Promise<{ status: number; body: any }> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}
const get = (path: string, token?: string | null) => call('GET', path, undefined, token);
const post = (path: string, body: unknown, token?: string | null) => call('POST', path, body, token);

/** Resolves with the next audit entry the server records. */
const nextAudit = () => server.audit.next('dashboard:audit').then(([e]) => e as AuditEntry);

describe('dashboard admin API', () => {
  test('one sampler per server fills the series: throughput, depth and latency per queue, mailbox, outbox and group lag', async () => {
    assert.equal(server.series.capacity, 300, 'retention / interval');
    await herald.topics.create('dash-orders');
    await herald.topics.createGroup('dash-orders', 'billing');
    await herald.topics.publish('dash-orders', { n: 1 });
    await herald.topics.publish('dash-orders', { n: 2 });
    await herald.mailbox.send({ to: 'dash-box', payload: 'hi' });
    await herald.outbox.add({ type: 'dash.event' });
    await herald.queue.enqueueMany(Array.from({ length: 5 }, () => ({ kind: 'dash-work', queue: 'dash-q' })));
    await herald.queue.enqueue('dash-later', {}, { queue: 'dash-q', delayMs: 3_600_000 });
    // The backlog shows in a sample taken after it was written. Taken here, not awaited
    // from the timer: a timed sample already under way when the writes ended ran its four
    // reads at different moments (a CI run on a loaded machine saw the queue's depth of
    // 5 beside an outbox count read before the event was added).
    const backlog = await waitFor(
      () => server.series.sample().then((s) => (s.queues['dash-q']?.depth === 5 ? s : undefined)),
      { what: 'a sample with the backlog' },
    );
    assert.equal(backlog.queues['dash-q'].scheduled, 1, 'the scheduled job is not in the depth');
    assert.deepEqual(backlog.mailbox['dash-box'], { ready: 1, dead: 0 });
    assert.equal(backlog.outbox?.pending, 1);
    assert.equal(backlog.groups['dash-orders/billing'], 2);

    // Work: the completions show as throughput, the depth drains, latency is measured.
    let done = 0;
    const worker = herald.queue.work('dash-work', () => void done++, { queue: 'dash-q' });
    try {
      await waitFor(() => done === 5, { what: 'five jobs done', progress: () => done });
      const cols = await waitFor(async () => {
        const { body } = await get('/api/dashboard/series');
        const c = body as SeriesColumns;
        const completed = (c.completed['dash-q'] ?? []).reduce((a: number, v) => a + (v ?? 0), 0);
        return c.depth['dash-q']?.at(-1) === 0 && completed > 0 && (c.latency['dash-q'] ?? []).some((v) => v !== null) ? c : undefined;
      }, { what: 'the series show the work' });
      assert.equal(cols.intervalMs, 200);
      assert.equal(cols.retentionMs, 60_000);
      assert.ok(cols.t.length >= 2 && cols.t.length <= 300);
      for (const k of ['completed', 'failed', 'depth', 'latency', 'mailbox', 'mailboxDead', 'groups'] as const) {
        for (const arr of Object.values(cols[k])) assert.equal(arr.length, cols.t.length, `${k} aligned with t`);
      }
      // The completions over the samples add up to the five jobs (rate × interval).
      const times = cols.t;
      const total = (cols.completed['dash-q'] as (number | null)[]).reduce((a: number, v, i) => a + (v ?? 0) * (i === 0 ? 0 : times[i] - times[i - 1]), 0);
      assert.ok(Math.abs(total - 5) < 0.01, `each completion counted once: ${total}`);
    } finally {
      await worker.stop();
    }
  });

  test('the sampler stops with the server and keeps nothing running; interval 0 turns it off', async () => {
    const { HeraldServer } = await import('./server.js');
    const off = new HeraldServer(herald, { port: 0, dashboardSampleIntervalMs: 0 });
    await off.start();
    await off.stop();
    assert.deepEqual(off.series.samples(), []);
    assert.throws(() => new HeraldServer(herald, { port: 0, dashboardSampleIntervalMs: 5000, dashboardSampleRetentionMs: 1000 }), /dashboardSampleRetentionMs/);
  });

  test('jobs: filters by state, queue, kind and creation time, search by id or unique key, keyset paging with beforeId', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await herald.queue.enqueue('page-kind', { i }, { queue: 'page-q', uniqueKey: `page-${i}` })).id);
    const other = await herald.queue.enqueue('other-kind', {}, { queue: 'page-q' });
    await herald.queue.cancel(ids[0]);

    const p1 = await get('/api/jobs?queue=page-q&kind=page-kind&limit=3');
    assert.equal(p1.status, 200);
    assert.deepEqual(p1.body.jobs.map((j: { id: string }) => j.id), [ids[6], ids[5], ids[4]]);
    assert.equal(p1.body.nextBeforeId, ids[4]);
    const p2 = await get(`/api/jobs?queue=page-q&kind=page-kind&limit=3&beforeId=${p1.body.nextBeforeId}`);
    assert.deepEqual(p2.body.jobs.map((j: { id: string }) => j.id), [ids[3], ids[2], ids[1]]);
    const p3 = await get(`/api/jobs?queue=page-q&kind=page-kind&limit=3&beforeId=${p2.body.nextBeforeId}`);
    assert.deepEqual(p3.body.jobs.map((j: { id: string }) => j.id), [ids[0]]);
    assert.equal(p3.body.nextBeforeId, null);

    assert.deepEqual((await get('/api/jobs?state=cancelled&queue=page-q')).body.jobs.map((j: { id: string }) => j.id), [ids[0]]);
    assert.deepEqual((await get(`/api/jobs?q=${other.id}`)).body.jobs.map((j: { id: string }) => j.id), [other.id]);
    assert.deepEqual((await get('/api/jobs?q=page-3')).body.jobs.map((j: { id: string }) => j.id), [ids[3]]);
    const future = new Date(Date.now() + 3_600_000).toISOString();
    assert.deepEqual((await get(`/api/jobs?queue=page-q&from=${encodeURIComponent(future)}`)).body.jobs, []);
    assert.equal((await get(`/api/jobs?queue=page-q&to=${encodeURIComponent(future)}`)).body.jobs.length, 8);
    assert.equal((await get('/api/jobs?state=nope')).status, 400);
    assert.equal((await get('/api/jobs?from=yesterday')).status, 400);
    assert.equal((await get('/api/jobs?limit=0')).status, 400);
    assert.equal((await get('/api/jobs?beforeId=abc')).status, 400);
  });

  test('job detail: payload, result, failed attempts and pipeline history; bulk retry and cancel change the database and are audited', async () => {
    const [a] = await herald.queue.enqueueMany([{ kind: 'detail-fail', payload: { order: 1 }, maxAttempts: 2, stages: ['one'], announce: true }]);
    let runs = 0;
    const worker = herald.queue.work('detail-fail', () => {
      runs++;
      throw new Error(`boom ${runs}`);
    }, { stage: 'one' });
    try {
      await waitFor(async () => (await herald.queue.get(a.id))?.state === 'dead', { what: 'the job dead', progress: () => runs });
    } finally {
      await worker.stop();
    }
    const d = await get(`/api/jobs/${a.id}`);
    assert.equal(d.status, 200);
    assert.deepEqual(d.body.payload, { order: 1 });
    assert.deepEqual(d.body.errors.map((e: { attempt: number; error: string }) => [e.attempt, e.error]), [[1, 'Error: boom 1'], [2, 'Error: boom 2']]);
    // Every failed attempt says how long it ran (claim to failure).
    assert.ok(d.body.errors.every((e: { durationMs?: number }) => typeof e.durationMs === 'number' && e.durationMs >= 0));
    assert.deepEqual(d.body.history.map((h: { state: string }) => h.state).at(-1), 'dead');
    assert.equal((await get('/api/jobs/99999999')).status, 404);

    const waiting = await herald.queue.enqueue('detail-wait', {}, { delayMs: 3_600_000 });
    const audited = nextAudit();
    const retried = await post('/api/jobs/actions/retry', { ids: [a.id] });
    assert.deepEqual(retried.body, { retried: [a.id] });
    const entry = await audited;
    assert.deepEqual([entry.principal, entry.action, entry.target, entry.outcome], ['key:admin', 'job.retry', [a.id], 'ok']);
    assert.equal((await herald.queue.get(a.id))?.state, 'available');

    const cancelled = await post('/api/jobs/actions/cancel', { ids: [a.id, waiting.id] });
    assert.deepEqual(new Set(cancelled.body.cancelled), new Set([a.id, waiting.id]));
    assert.equal((await herald.queue.get(waiting.id))?.state, 'cancelled');
    assert.equal((await post('/api/jobs/actions/retry', { ids: [] })).status, 400);
    assert.equal((await post('/api/jobs/actions/retry', { ids: ['x'] })).status, 400);
    const log = (await get('/api/dashboard/audit')).body as AuditEntry[];
    assert.deepEqual(log.slice(0, 2).map((e) => e.action), ['job.cancel', 'job.retry'], 'newest first');
  });

  test('mailbox message and outbox event details; redrive from the API changes the database; topic group positions and reset', async () => {
    const consumer = herald.mailbox.consume('detail-box', () => {
      throw new Error('nope');
    }, { maxAttempts: 1 });
    const sent = await herald.mailbox.send({ to: 'detail-box', payload: { x: 1 } });
    try {
      await waitFor(async () => (await herald.mailbox.get(sent.id))?.state === 'dead', { what: 'the message dead' });
    } finally {
      await consumer.stop();
    }
    const m = await get(`/api/mailbox/messages/${encodeURIComponent(sent.id)}`);
    assert.equal(m.body.state, 'dead');
    assert.equal(m.body.lastError, 'nope');
    assert.deepEqual(m.body.payload, { x: 1 });
    assert.deepEqual((await get('/api/mailbox/detail-box/dead')).body.map((x: { id: string }) => x.id), [sent.id]);
    assert.equal((await get('/api/mailbox/messages/nothing-here')).status, 404);
    assert.deepEqual((await post('/api/mailbox/detail-box/redrive', { ids: [sent.id] })).body, { redriven: 1 });
    assert.equal((await herald.mailbox.get(sent.id))?.state, 'ready');
    assert.equal((await post('/api/mailbox/detail-box/redrive', {})).status, 400);

    const eventId = await herald.outbox.add({ type: 'detail.event', key: 'k', payload: { y: 2 } });
    const relay = herald.outbox.relay({ sink: () => Promise.reject(new Error('sink down')), maxAttempts: 1, pollIntervalMs: 50 });
    try {
      await waitFor(async () => (await herald.outbox.get(eventId))?.state === 'dead', { what: 'the event dead' });
    } finally {
      await relay.stop();
    }
    const e = await get(`/api/outbox/events/${eventId}`);
    assert.equal(e.body.state, 'dead');
    assert.equal(e.body.lastError, 'sink down');
    assert.deepEqual(e.body.payload, { y: 2 });
    assert.equal((await get('/api/outbox/events/not-a-uuid')).status, 400);
    assert.equal((await get('/api/outbox/events/00000000-0000-0000-0000-000000000000')).status, 404);
    const audited = nextAudit();
    assert.deepEqual((await post('/api/outbox/redrive', { ids: [eventId] })).body, { redriven: 1 });
    assert.equal((await audited).action, 'outbox.redrive');
    assert.equal((await herald.outbox.get(eventId))?.state, 'pending');

    await herald.topics.create('detail-topic', { partitions: 2 });
    await herald.topics.createGroup('detail-topic', 'g1', 'latest');
    for (let i = 0; i < 3; i++) await herald.topics.publish('detail-topic', i, { key: `k${i}` });
    const g = await get('/api/topics/detail-topic/groups/g1');
    assert.equal(g.status, 200);
    assert.equal(g.body.lag, 3);
    assert.equal(g.body.partitions.length >= 1, true);
    assert.ok(g.body.partitions.every((p: { position: string }) => typeof p.position === 'string'));
    const list = (await get('/api/topics')).body as { name: string; groups: { name: string; lag: number }[] }[];
    assert.deepEqual(list.find((t) => t.name === 'detail-topic')?.groups, [{ name: 'g1', lag: 3 }]);
    const reset = await post('/api/topics/detail-topic/groups/g1/reset', { to: 'latest' });
    assert.equal(reset.status, 200);
    assert.ok(reset.body.moved >= 1);
    assert.equal((await herald.topics.stats('detail-topic')).groups[0].lag, 0, 'the reset moved the group in the database');
    assert.equal((await post('/api/topics/detail-topic/groups/nope/reset', { to: 'latest' })).status, 404);
    assert.equal((await post('/api/topics/detail-topic/groups/g1/reset', { to: 'sometime' })).status, 400);
    const log = (await get('/api/dashboard/audit')).body as AuditEntry[];
    assert.deepEqual([log[0].action, log[0].outcome], ['group.reset', 'NOT_FOUND'], 'a refused action is audited too');
  });

  test('every admin route is 401 without a credential and 403 for a non-admin token, and changes nothing', async () => {
    const job = await herald.queue.enqueue('guarded-api', {}, { delayMs: 3_600_000 });
    const before = server.audit.entries().length;
    const routes: [string, string, unknown?][] = [
      ['GET', '/api/dashboard/series'],
      ['GET', '/api/dashboard/audit'],
      ['GET', '/api/dashboard/whoami'],
      ['GET', '/api/jobs'],
      ['GET', `/api/jobs/${job.id}`],
      ['POST', '/api/jobs/actions/cancel', { ids: [job.id] }],
      ['POST', '/api/jobs/actions/retry', { ids: [job.id] }],
      ['GET', '/api/mailbox/messages/x'],
      ['GET', '/api/mailbox/x/dead'],
      ['POST', '/api/mailbox/x/redrive', { all: true }],
      ['GET', '/api/outbox/events/00000000-0000-0000-0000-000000000000'],
      ['POST', '/api/outbox/redrive', { all: true }],
      ['GET', '/api/topics'],
      ['GET', '/api/topics/t/groups/g'],
      ['POST', '/api/topics/t/groups/g/reset', { to: 'earliest' }],
    ];
    for (const [method, path, body] of routes) {
      assert.equal((await call(method, path, body, null)).status, 401, `${method} ${path} without a credential`);
      const r = await call(method, path, body, VIEWER);
      assert.equal(r.status, 403, `${method} ${path} with a non-admin token`);
      assert.equal(r.body.error.code, 'FORBIDDEN');
    }
    assert.equal((await herald.queue.get(job.id))?.state, 'available');
    assert.equal(server.audit.entries().length, before, 'refused before the handler: nothing to audit');
    assert.deepEqual((await get('/api/dashboard/whoami')).body.principal, 'key:admin');
  });

  test('the sampler’s read follows the backlog and the interval’s work, not the history of finished jobs', async () => {
    await herald.driver.executor.query(
      `INSERT INTO herald.jobs (kind, queue, state, finished_at, attempted_at) SELECT 'old', 'hist-q', 'completed', now() - interval '2 minutes', now() - interval '2 minutes' FROM generate_series(1, 30000)`,
    );
    await herald.driver.executor.query('ANALYZE herald.jobs');
    const plan = await herald.driver.executor.query<{ 'QUERY PLAN': unknown }>(`EXPLAIN (FORMAT JSON) ${jobActivitySql('herald')}`, [new Date(Date.now() - 5000), 0]);
    const text = JSON.stringify(plan.rows[0]['QUERY PLAN']);
    assert.ok(!/"Seq Scan"[^}]*"Relation Name":"jobs"/.test(text), `no sequential scan of jobs: ${text.slice(0, 600)}`);
    const a = await herald.queue.activity(new Date(Date.now() - 60_000));
    assert.equal(a.queues.find((q) => q.queue === 'hist-q'), undefined, 'finished long ago: not in the interval');
    await herald.driver.executor.query(`DELETE FROM herald.jobs WHERE queue = 'hist-q'`);
  });

  test('a completion whose transaction is still open at a sample is counted by a later sample, once (the window lags the read)', async () => {
    // Two samplers driven by hand: one whose windows end at the read (lag 0) and one
    // with the default lag. A job's finish time is its transaction's start, so a read
    // made while that transaction is open cannot see it, and a window ending at the read
    // has already passed it.
    const samplers = [new SeriesSampler(herald, 200, 60_000, 0), new SeriesSampler(herald, 200, 60_000, 5000)];
    const counted = (s: SeriesSampler): number => {
      const ss = s.samples();
      let n = 0;
      for (let i = 1; i < ss.length; i++) n += (ss[i].queues['span-q']?.completedPerSec ?? 0) * ((ss[i].t - ss[i - 1].t) / 1000);
      return Math.round(n * 1000) / 1000;
    };
    for (const s of samplers) await s.sample();
    const [job] = await herald.queue.enqueueMany([{ kind: 'span-work', queue: 'span-q' }]);
    const finishedMs = await herald.driver.transaction(async (tx) => {
      const { rows } = await tx.query<{ ms: number }>(
        `UPDATE herald.jobs SET state = 'completed', attempted_at = now(), finished_at = now(), lease_expires_at = NULL WHERE id = $1
         RETURNING date_part('epoch', finished_at) * 1000 AS ms`,
        [job.id],
      );
      // Database time moves on past the finish time's millisecond (window ends are whole
      // milliseconds), then the samplers read while the completion is uncommitted.
      await waitFor(async () => (await tx.query<{ ok: boolean }>(`SELECT clock_timestamp() >= now() + interval '2 milliseconds' AS ok`)).rows[0].ok, {
        what: 'database time to pass the finish time',
      });
      for (const s of samplers) await s.sample();
      return Number(rows[0].ms);
    });
    // Sample until the lagged sampler's windows have passed the finish time (about 5 s of
    // database time; each sample moves them on), then count.
    const lastT = () => samplers[1].samples().at(-1)!.t;
    await waitFor(async () => {
      for (const s of samplers) await s.sample();
      return lastT() - samplers[1].lagMs > finishedMs;
    }, { what: 'the lagged sampler’s window passes the finish time', intervalMs: 200, progress: lastT });
    assert.equal(counted(samplers[1]), 1, 'counted once');
    assert.equal(counted(samplers[0]), 0, 'a window ending at the read misses it (why the lag exists)');
  });

  test('stuck jobs: a job scheduled in the future is never stuck, one due and waiting past the threshold is', async () => {
    const [due] = await herald.queue.enqueueMany([{ kind: 'stuck-due', queue: 'stuck-q' }]);
    const [later] = await herald.queue.enqueueMany([{ kind: 'stuck-later', queue: 'stuck-q', runAt: new Date(Date.now() + 3_600_000) }]);
    await herald.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '1 hour', created_at = now() - interval '1 hour', run_at = now() - interval '1 hour' WHERE id = $1`, [due.id]);
    await herald.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '1 hour', created_at = now() - interval '1 hour' WHERE id = $1`, [later.id]);
    const snap = (await get('/api/dashboard')).body as { panels: { id: string; data: { id: string }[] }[] };
    const stuck = snap.panels.find((p) => p.id === 'stuck')!.data.map((r) => r.id);
    assert.ok(stuck.includes(due.id));
    assert.ok(!stuck.includes(later.id), 'the scheduled job is not listed');
    await herald.queue.cancel([due.id, later.id]);
  });
});
