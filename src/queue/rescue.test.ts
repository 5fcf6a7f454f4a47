import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { waitFor } from '../../test/support/wait.js';

const FIXTURE = new URL('../../test/fixtures/queue-worker.ts', import.meta.url).pathname;
let db: TestDatabase;
const children: ChildProcess[] = [];

/** Spawns a worker process; `lines` collects its stdout lines. */
function spawnWorker(mode: string): { child: ChildProcess; lines: string[] } {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, db.url, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  return { child, lines };
}

before(async () => {
  db = await freshDatabase();
});
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await db.drop();
});

describe('queue rescue', () => {
  test("a SIGKILLed worker's job is rescued within its lease plus one sweep", async () => {
    const sweepMs = 500;
    const h = new Herald({ connectionString: db.url, poolSize: 3, queue: { rescueIntervalMs: sweepMs, pollIntervalMs: 200 } });
    try {
      const { id } = await h.queue.enqueue('victim', { n: 1 });
      const { child, lines } = spawnWorker('hang');
      await waitFor(() => lines.some((l) => l === `started ${id} 1`), { timeoutMs: 30_000, what: 'the worker to start the job' });
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const leaseEnd = (await h.queue.get(id))!.leaseExpiresAt!;
      let runs = 0;
      const w = h.queue.work('victim', () => void runs++);
      await waitFor(async () => (await h.queue.get(id))?.state === 'completed', { timeoutMs: 30_000 });
      await w.stop();
      const job = (await h.queue.get(id))!;
      assert.equal(job.attempt, 2, 'the interrupted attempt is counted');
      assert.equal(runs, 1);
      // Database time: rescued no later than the lease end plus one sweep interval (+ slack for the statement itself).
      const rescuedAt = new Date(job.errors[0].at).getTime();
      assert.equal(job.errors[0].error, 'lease expired');
      assert.ok(rescuedAt >= leaseEnd.getTime(), 'not rescued before the lease ended');
      assert.ok(rescuedAt - leaseEnd.getTime() <= sweepMs + 1000, `rescued ${rescuedAt - leaseEnd.getTime()} ms after the lease ended`);
    } finally {
      await h.close();
    }
  });

  test('the late completion of a worker whose lease expired (SIGSTOP) is rejected', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 3, queue: { rescueIntervalMs: 200, pollIntervalMs: 200 } });
    try {
      const { id } = await h.queue.enqueue('victim', { n: 2 });
      const { child, lines } = spawnWorker('late');
      await waitFor(() => lines.some((l) => l === `started ${id} 1`), { timeoutMs: 30_000 });
      child.kill('SIGSTOP'); // frozen: no heartbeat, as in a long GC pause or a partition
      let runs = 0;
      const w = h.queue.work('victim', () => {
        runs++;
        return 'second';
      });
      await waitFor(async () => (await h.queue.get(id))?.state === 'completed', { timeoutMs: 30_000 });
      await w.stop();
      child.kill('SIGCONT');
      child.kill('SIGUSR2');
      await waitFor(() => lines.some((l) => l.startsWith(`lease-lost ${id}`)), { timeoutMs: 30_000, what: 'the late worker to be told LEASE_LOST' });
      const job = (await h.queue.get(id))!;
      assert.equal(job.state, 'completed');
      assert.equal(job.result, 'second');
      assert.equal(job.attempt, 2);
      assert.equal(runs, 1);
      child.kill('SIGKILL');
    } finally {
      await h.close();
    }
  });
});
