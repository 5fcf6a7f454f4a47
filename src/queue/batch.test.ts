import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { deferred, waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
const heralds: Herald[] = [];
function herald(): Herald {
  const h = new Herald({ connectionString: db.url, poolSize: 2, queue: { pollIntervalMs: 200, retryBaseDelayMs: 10, retryMaxDelayMs: 10 } });
  h.queue.on('job:problem', () => {});
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

describe('batches', () => {
  test('20 members finishing at the same moment on 20 connections enqueue the callback exactly once, round after round', async () => {
    const rounds = scaled(100, 10);
    const finishers = Array.from({ length: 20 }, () => herald());
    let barrier = deferred();
    let started = 0;
    // Every member waits until all 20 run (each on its own Herald, pool and connection), then all return at once.
    // prefetch 0: a worker that claimed a second member ahead would hold it while its first
    // waits for all 20 to run, and 20 never would (a CI run stalled so at round 41).
    const workers = finishers.map((h) =>
      h.queue.work<{ fail: boolean }>('member', async (job) => {
        if (++started === 20) barrier.resolve();
        await barrier.promise;
        if (job.payload.fail) throw new Error('member failed');
      }, { concurrency: 1, prefetch: 0 }),
    );
    const h = finishers[0];
    try {
      for (let r = 0; r < rounds; r++) {
        started = 0;
        barrier = deferred();
        // Every fourth round, one member fails (its only attempt): the batch settles as dead.
        const failing = r % 4 === 3 ? r % 20 : -1;
        const { batchId, jobs } = await h.queue.enqueueBatch(
          Array.from({ length: 20 }, (_, i) => ({ kind: 'member', payload: { fail: i === failing }, maxAttempts: 1 })),
          { callback: { kind: 'batch-done', queue: 'callbacks', payload: { round: r } } },
        );
        assert.equal(jobs.length, 20);
        const settled = await waitFor(async () => {
          const b = await h.queue.batch(batchId);
          return b && b.completed + b.dead === 20 ? b : null;
        }, { what: `round ${r} to finish`, timeoutMs: 60_000 });
        assert.equal(settled.outcome, failing >= 0 ? 'dead' : 'completed');
        const callbacks = await adminQuery<{ id: string; payload: { batchId: string; outcome: string; payload: { round: number } } }>(
          `SELECT id::text AS id, payload FROM herald.jobs WHERE kind = 'batch-done' AND payload ->> 'batchId' = $1`,
          [batchId],
          db.url,
        );
        assert.equal(callbacks.length, 1, `round ${r}: one callback`);
        assert.equal(callbacks[0].id, settled.callbackJobId);
        assert.equal(callbacks[0].payload.outcome, settled.outcome);
        assert.deepEqual(callbacks[0].payload.payload, { round: r });
      }
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  });

  test('the callback runs once the batch settles; a cancelled member settles it as dead; keepCompleted: false members count', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 3, queue: { pollIntervalMs: 200, keepCompleted: false } });
    heralds.push(h);
    const seen: unknown[] = [];
    h.queue.work('cb', (job) => void seen.push(job.payload), { queue: 'callbacks2' });
    const gate = deferred();
    h.queue.work('m', () => gate.promise);
    const { batchId } = await h.queue.enqueueBatch([{ kind: 'm' }, { kind: 'm' }], { callback: { kind: 'cb', queue: 'callbacks2', payload: { x: 1 } } });
    gate.resolve();
    await waitFor(() => seen.length === 1, { what: 'the callback to run' });
    assert.deepEqual(seen[0], { batchId, outcome: 'completed', total: 2, completed: 2, dead: 0, cancelled: 0, payload: { x: 1 } });

    const later = await h.queue.enqueueBatch([{ kind: 'idle-member', delayMs: 3_600_000 }, { kind: 'idle-member', delayMs: 3_600_000 }], { callback: { kind: 'cb', queue: 'callbacks2' } });
    await h.queue.cancel(later.jobs[0].id);
    await waitFor(() => seen.length === 2, { what: 'the dead callback' });
    assert.equal((seen[1] as { outcome: string }).outcome, 'dead');
    await h.queue.cancel(later.jobs[1].id);
    assert.equal((await h.queue.batch(later.batchId))?.cancelled, 2, 'counters keep moving after settling');
    assert.equal((await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE kind = 'cb'`, [], db.url))[0].n <= 2, true);
    await assert.rejects(h.queue.enqueueBatch([{ kind: 'm', uniqueKey: 'u' }], { callback: { kind: 'cb' } }), /uniqueKey/);
    await assert.rejects(h.queue.enqueueBatch([], { callback: { kind: 'cb' } }), /items/);
    assert.equal(await h.queue.batch('999999'), undefined);
  });
});
