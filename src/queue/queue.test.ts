import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { deferred, waitFor } from '../../test/support/wait.js';
import { discard, snooze, type JobTransition } from './types.js';
import { CronSchedule } from './cron.js';

let db: TestDatabase;
const heralds: Herald[] = [];
function herald(queue: ConstructorParameters<typeof Herald>[0]['queue'] = {}): Herald {
  const h = new Herald({ connectionString: db.url, poolSize: 5, queue: { pollIntervalMs: 200, ...queue } });
  heralds.push(h);
  return h;
}

before(async () => {
  db = await freshDatabase();
});
after(async () => {
  for (const h of heralds) await h.close();
  await db.drop();
});

describe('queue', () => {
  test('enqueue in a rolled-back transaction leaves no job; committed jobs run once', async () => {
    const h = herald();
    await assert.rejects(
      h.transaction(async (tx) => {
        await h.queue.enqueue('rb', { n: 1 }, { tx });
        throw new Error('roll back');
      }),
    );
    assert.equal((await h.queue.list({ kind: 'rb' })).length, 0);
    const ids = await h.queue.enqueueMany(Array.from({ length: 50 }, (_, i) => ({ kind: 'plain', payload: { i } })));
    const seen = new Map<string, number>();
    const w = h.queue.work<{ i: number }>('plain', (job) => {
      seen.set(job.id, (seen.get(job.id) ?? 0) + 1);
      return { doubled: job.payload.i * 2 };
    });
    await waitFor(async () => (await h.queue.list({ kind: 'plain', state: 'completed' })).length === 50);
    await w.stop();
    assert.equal(seen.size, 50);
    assert.ok([...seen.values()].every((n) => n === 1));
    const job = await h.queue.get(ids[3].id);
    assert.deepEqual(job?.result, { doubled: 6 });
    assert.equal(job?.attempt, 1);
  });

  test('priority: lower runs first, and a more urgent job enqueued during a drain is taken by the next claim', async () => {
    const h = herald({ pollIntervalMs: 60_000 }); // only the wake-up can bring the urgent job in time
    await h.queue.enqueueMany(Array.from({ length: 40 }, (_, i) => ({ kind: 'prio', payload: { i }, priority: 5 })));
    await h.queue.enqueueMany(Array.from({ length: 5 }, (_, i) => ({ kind: 'prio', payload: { i: 100 + i }, priority: 1 })));
    const order: number[] = [];
    const gate = deferred<void>();
    const wakes = h.listen('herald.jobs.wake');
    await wakes.established;
    const w = h.queue.work<{ i: number }>(
      'prio',
      async (job) => {
        order.push(job.payload.i);
        if (order.length === 10) await gate.promise;
      },
      { concurrency: 1, prefetch: 2 },
    );
    await waitFor(() => order.length === 10);
    const woke = wakes.wait({ timeoutMs: 10_000 });
    await h.queue.enqueue('prio', { i: -1 }, { priority: -1 });
    assert.ok(await woke);
    gate.resolve();
    await waitFor(() => order.length === 46);
    await w.stop();
    await wakes.close();
    // The five priority-1 jobs first; the urgent job right after the jobs that were running
    // or held ahead (prefetch 2) when it came, plus the claims already in flight when it
    // committed (below); every job once. (Two claims in flight may
    // answer out of order, so jobs of equal priority are not strictly in enqueue order.)
    // A worker keeps two claim statements in flight: when the first holds the five urgent
    // jobs' rows, the second may take (and answer with) jobs of the next priority. So the
    // five priority-1 jobs run within the first 5 + 3 (one claim of concurrency + prefetch).
    const firstUrgent = [100, 101, 102, 103, 104].map((i) => order.indexOf(i));
    assert.ok(firstUrgent.every((at) => at >= 0 && at < 8), `priority-1 jobs ran at ${firstUrgent.join(',')}: ${order.join(',')}`);
    // The urgent job: after the 10 started before it came and the 2 held ahead, at most
    // the jobs of the claims already in flight when it committed (a worker keeps up to two
    // claim statements in flight, each of at most concurrency + prefetch = 3 jobs); without
    // its priority it would run last (position 45).
    const urgent = order.indexOf(-1);
    assert.ok(urgent >= 10 && urgent <= 10 + 2 + 2 * 3, `urgent job ran at position ${urgent}: ${order.join(',')}`);
    assert.deepEqual(order.filter((i) => i >= 0 && i < 100).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i));
  });

  test('retries follow the backoff schedule in database time, then dead; retry from dead', async () => {
    const h = herald({ retryBaseDelayMs: 100, retryMaxDelayMs: 400, retryJitter: 0 });
    const { id } = await h.queue.enqueue('flaky', {}, { maxAttempts: 4 });
    const w = h.queue.work('flaky', (job) => {
      throw new Error(`boom ${job.attempt}`);
    });
    await waitFor(async () => (await h.queue.get(id))?.state === 'dead', { timeoutMs: 20_000 });
    await w.stop();
    const job = (await h.queue.get(id))!;
    assert.equal(job.attempt, 4);
    assert.equal(job.lastError, 'Error: boom 4');
    assert.equal(job.errors.length, 4);
    // Delay between the failure recorded at attempt n and the next claim >= min(max, base * 2^(n-1)).
    const { rows } = await h.driver.executor.query<{ gaps: number[] }>(
      `SELECT array_agg(extract(epoch FROM (e2->>'at')::timestamptz - (e1->>'at')::timestamptz) * 1000 ORDER BY n) AS gaps
         FROM herald.jobs j, LATERAL (SELECT n, j.errors->(n-1) AS e1, j.errors->n AS e2 FROM generate_series(1, 3) n) x WHERE j.id = $1`,
      [id],
    );
    const expected = [100, 200, 400];
    rows[0].gaps.forEach((gap, i) => assert.ok(gap >= expected[i], `gap ${i + 1} was ${gap} ms, expected >= ${expected[i]}`));
    assert.deepEqual(await h.queue.retry(id), [id]);
    const again = (await h.queue.get(id))!;
    assert.equal(again.state, 'available');
    assert.equal(again.attempt, 0);
  });

  test('discard goes to dead at once; snooze does not count the attempt', async () => {
    const h = herald();
    const a = await h.queue.enqueue('disc', {});
    const b = await h.queue.enqueue('snz', {}, { maxAttempts: 1 });
    let snoozed = 0;
    const w1 = h.queue.work('disc', () => discard('bad input'));
    const w2 = h.queue.work('snz', () => (snoozed++ < 2 ? snooze(10) : 'ok'));
    await waitFor(async () => (await h.queue.get(a.id))?.state === 'dead' && (await h.queue.get(b.id))?.state === 'completed');
    await Promise.all([w1.stop(), w2.stop()]);
    assert.equal((await h.queue.get(a.id))?.lastError, 'bad input');
    assert.equal(snoozed, 3);
  });

  test('cancel a waiting job and a running one (its signal aborts)', async () => {
    const h = herald({ leaseMs: 600, heartbeatIntervalMs: 100 });
    const waiting = await h.queue.enqueue('later', {}, { delayMs: 60_000 });
    assert.deepEqual(await h.queue.cancel(waiting.id), [waiting.id]);
    const running = await h.queue.enqueue('long', {});
    const started = deferred();
    const aborted = deferred();
    const w = h.queue.work('long', async (job) => {
      started.resolve();
      await new Promise<void>((r) => job.signal.addEventListener('abort', () => r()));
      aborted.resolve();
    });
    await started.promise;
    assert.deepEqual(await h.queue.cancel(running.id), [running.id]);
    await aborted.promise;
    await w.stop();
    assert.equal((await h.queue.get(running.id))?.state, 'cancelled');
    assert.equal((await h.queue.get(waiting.id))?.state, 'cancelled');
  });

  test('a worker whose lease expired cannot complete: LEASE_LOST, the job runs again', async () => {
    // A: a worker that holds the job and will not heartbeat in time (a long pause).
    const a = herald({ leaseMs: 60_000, heartbeatIntervalMs: 30_000 });
    // B: another process that rescues expired leases and runs the job again.
    const b = herald({ rescueIntervalMs: 100 });
    const { id } = await a.queue.enqueue('fenced', {});
    const firstRunning = deferred();
    const release = deferred();
    const lost = deferred<{ during: string }>();
    a.queue.on('job:leaseLost', (info) => info.id === id && lost.resolve(info));
    const wa = a.queue.work('fenced', async () => {
      firstRunning.resolve();
      await release.promise; // ignores its signal, like a worker stuck in a long pause
      return 'late';
    }, { concurrency: 1 });
    await firstRunning.promise;
    // The lease runs out (as it does when heartbeats stop), in database time.
    await a.driver.executor.query(`UPDATE herald.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = $1`, [id]);
    // Rescue is the maintenance leader's (an earlier Herald of this file may lead): B runs it now.
    await b.maintenance.run('queueRescue');
    let runsB = 0;
    const wb = b.queue.work('fenced', () => {
      runsB++;
      return 'rescuer';
    });
    await waitFor(async () => (await b.queue.get(id))?.state === 'completed');
    release.resolve();
    const info = await lost.promise;
    assert.equal(info.during, 'complete');
    await Promise.all([wa.stop(), wb.stop()]);
    const job = (await b.queue.get(id))!;
    assert.equal(job.attempt, 2);
    assert.equal(job.result, 'rescuer');
    assert.equal(runsB, 1);
  });

  test('unique keys: one waiting or running job per key', async () => {
    const h = herald();
    const a = await h.queue.enqueue('u', { n: 1 }, { uniqueKey: 'k1', delayMs: 60_000 });
    const b = await h.queue.enqueue('u', { n: 2 }, { uniqueKey: 'k1' });
    assert.equal(a.inserted, true);
    assert.deepEqual(b, { id: a.id, inserted: false });
    const batch = await h.queue.enqueueMany([
      { kind: 'u', uniqueKey: 'k2' },
      { kind: 'u', uniqueKey: 'k2' },
      { kind: 'u', uniqueKey: 'k1' },
    ]);
    assert.equal(batch[0].inserted, true);
    assert.deepEqual(batch[1], { id: batch[0].id, inserted: false });
    assert.deepEqual(batch[2], { id: a.id, inserted: false });
    await h.queue.cancel(a.id);
    assert.equal((await h.queue.enqueue('u', {}, { uniqueKey: 'k1' })).inserted, true);
  });

  test('a three-stage pipeline completes in order and a watcher sees every transition once', async () => {
    const h = herald();
    const seen: JobTransition[] = [];
    const sub = h.queue.watch((t) => seen.push(t));
    await sub.established;
    const stages = ['init', 'build', 'test'];
    const jobs = await h.queue.enqueueMany(Array.from({ length: 5 }, (_, i) => ({ kind: 'ci', payload: { i }, stages })));
    const order: string[] = [];
    const workers = stages.map((stage) => h.queue.work('ci', (job) => void order.push(`${job.id}:${job.stage}`), { stage, concurrency: 2 }));
    await waitFor(async () => (await h.queue.list({ kind: 'ci', state: 'completed' })).length === 5);
    await Promise.all(workers.map((w) => w.stop()));
    for (const { id } of jobs) {
      const mine = order.filter((o) => o.startsWith(id + ':')).map((o) => o.split(':')[1]);
      assert.deepEqual(mine, stages);
      const expected = [
        ['init', 'available'],
        ['init', 'running'],
        ['build', 'available'],
        ['build', 'running'],
        ['test', 'available'],
        ['test', 'running'],
        ['test', 'completed'],
      ];
      await waitFor(() => seen.filter((t) => t.id === id).length >= expected.length);
      assert.deepEqual(
        seen.filter((t) => t.id === id).map((t) => [t.stage, t.state]),
        expected,
      );
      const info = (await h.queue.get(id))!;
      assert.deepEqual(info.history!.map((e) => [e.stage, e.state]), expected);
    }
    await sub.close();
  });

  test('stuck report by database time; retention deletes finished jobs', async () => {
    const h = herald();
    const { id } = await h.queue.enqueue('stale', {});
    const later = await h.queue.enqueue('stale', {}, { delayMs: 60_000 });
    await h.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '2 hours', run_at = now() - interval '2 hours' WHERE id = $1`, [id]);
    await h.driver.executor.query(`UPDATE herald.jobs SET stage_entered_at = now() - interval '2 hours' WHERE id = $1`, [later.id]);
    const stuck = await h.queue.stuck({ thresholdMs: 3_600_000 });
    assert.deepEqual(stuck.map((j) => j.id), [id], 'a job scheduled in the future is not stuck');
    await h.queue.cancel(later.id);
    assert.ok(stuck[0].stuckMs >= 7_200_000);
    await h.queue.cancel(id);
    await h.driver.executor.query(`UPDATE herald.jobs SET finished_at = now() - interval '2 days' WHERE id = $1`, [id]);
    assert.ok((await h.queue.prune()) >= 1);
    assert.equal(await h.queue.get(id), undefined);
  });

  test('cron: one job per tick across processes with leader election', async () => {
    const a = herald({ leaderTtlMs: 600 });
    const b = herald({ leaderTtlMs: 600 });
    a.queue.schedule('every-second', '* * * * * *', 'tick');
    b.queue.schedule('every-second', '* * * * * *', 'tick');
    await waitFor(async () => (await a.queue.list({ kind: 'tick' })).length >= 3, { timeoutMs: 20_000 });
    await a.queue.stop();
    // b takes over after a's lease (released on stop).
    const before = (await b.queue.list({ kind: 'tick' })).length;
    await waitFor(async () => (await b.queue.list({ kind: 'tick' })).length >= before + 2, { timeoutMs: 20_000 });
    await b.queue.stop();
    const { rows } = await a.driver.executor.query<{ n: number; ticks: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT date_trunc('second', created_at))::int AS ticks FROM herald.jobs WHERE kind = 'tick'`,
    );
    assert.ok(rows[0].n >= 5);
    const cron = (await a.driver.executor.query<{ last_tick: Date }>(`SELECT last_tick FROM herald.queue_cron WHERE name = 'every-second'`)).rows;
    assert.equal(cron.length, 1);
  });

  test('cron: each tick is enqueued exactly once, also when leadership is taken from a leader that still believes it leads', async () => {
    const hs = [herald({ leaderTtlMs: 900 }), herald({ leaderTtlMs: 900 }), herald({ leaderTtlMs: 900 })];
    const events: { tick: string; id: string }[] = [];
    for (const h of hs) {
      h.queue.on('job:cronEnqueued', (e) => events.push({ tick: e.tick.toISOString(), id: e.id }));
      h.queue.schedule('each-second', '* * * * * *', 'tick-once');
    }
    await waitFor(() => events.length >= 3, { timeoutMs: 20_000 });
    // Expire the leader's lease behind its back, twice: another process takes over while
    // the old one still holds leadership in memory until its next renewal.
    for (let round = 0; round < 2; round++) {
      const leader = await waitFor(() => hs.find((h) => h.queue.isLeader), { timeoutMs: 20_000 });
      // Any process may win the expired lease, the old leader too: expire it until another does.
      await waitFor(
        async () => {
          await hs[0].driver.executor.query(`UPDATE herald.queue_leaders SET expires_at = now() - interval '1 hour' WHERE role = 'cron'`);
          return hs.some((h) => h !== leader && h.queue.isLeader);
        },
        { timeoutMs: 20_000, intervalMs: 100 },
      );
      const n = events.length;
      await waitFor(() => events.length >= n + 2, { timeoutMs: 20_000 });
    }
    for (const h of hs) await h.queue.stop();
    const ticks = events.map((e) => e.tick);
    assert.equal(new Set(ticks).size, ticks.length, `a tick was enqueued twice: ${ticks.join(' ')}`);
    const { rows } = await hs[0].driver.executor.query<{ id: string }>(`SELECT id::text AS id FROM herald.jobs WHERE kind = 'tick-once'`);
    assert.deepEqual(rows.map((r) => r.id).sort(), events.map((e) => e.id).sort());
  });

  test('keepCompleted false: a job leaves the table as it completes; watchers still see it complete; failures stay', async () => {
    const h = herald({ keepCompleted: false });
    const seen: JobTransition[] = [];
    const sub = h.queue.watch((t) => seen.push(t));
    await sub.established;
    const completed: string[] = [];
    h.queue.on('job:completed', (e) => completed.push(e.id));
    const plain = await h.queue.enqueueMany(Array.from({ length: 30 }, (_, i) => ({ kind: 'gone', payload: { i } })));
    const pipe = await h.queue.enqueue('gone-pipe', {}, { stages: ['a', 'b'] });
    const bad = await h.queue.enqueue('gone-bad', {}, { maxAttempts: 1 });
    const ran = new Map<string, number>();
    const count = (id: string) => void ran.set(id, (ran.get(id) ?? 0) + 1);
    const ws = [
      h.queue.work('gone', (job) => count(job.id), { prefetch: 5 }),
      h.queue.work('gone-pipe', (job) => count(job.id + job.stage), { stage: 'a' }),
      h.queue.work('gone-pipe', (job) => count(job.id + job.stage), { stage: 'b' }),
      h.queue.work('gone-bad', () => {
        throw new Error('kept');
      }),
    ];
    await waitFor(async () => completed.length === 32 && (await h.queue.get(bad.id))?.state === 'dead');
    await Promise.all(ws.map((w) => w.stop()));
    assert.equal(ran.size, 32);
    assert.ok([...ran.values()].every((n) => n === 1));
    for (const { id } of [...plain, pipe]) assert.equal(await h.queue.get(id), undefined);
    assert.equal((await h.queue.get(bad.id))?.lastError, 'Error: kept');
    await waitFor(() => seen.some((t) => t.id === pipe.id && t.state === 'completed'));
    assert.deepEqual(
      seen.filter((t) => t.id === pipe.id).map((t) => [t.stage, t.state]),
      [['a', 'available'], ['a', 'running'], ['b', 'available'], ['b', 'running'], ['b', 'completed']],
    );
    await sub.close();
  });

  test('cron expressions', () => {
    const c = new CronSchedule('*/15 9-17 * * 1-5');
    assert.equal(c.matches(new Date('2026-11-23T09:15:00Z')), true); // Monday
    assert.equal(c.matches(new Date('2026-11-22T09:15:00Z')), false); // Sunday
    assert.equal(c.nextTick(new Date('2026-11-23T17:50:00Z'))?.toISOString(), '2026-11-24T09:00:00.000Z');
    assert.throws(() => new CronSchedule('61 * * * *'), /cron/);
  });

  test('stop leaves no timer or listener and is idempotent', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 2 });
    const w = h.queue.work('x', () => {});
    await h.queue.enqueue('x', {});
    await waitFor(async () => (await h.queue.list({ kind: 'x', state: 'completed' })).length === 1);
    await h.queue.stop();
    await h.queue.stop();
    await w.stop();
    assert.deepEqual(Object.keys(h.notifier.stats().channels), []);
    await h.close();
  });
});
