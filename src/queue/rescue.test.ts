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

  test('a rescue sweep marks the dead lease entries of finished jobs as it passes them (a plain index scan), so the next sweep skips them', async () => {
    // Every finished job leaves an entry of its old lease (in the past) in the lease index
    // until vacuum. A bitmap scan (the planner's choice for the sweep's statement on a
    // table with many of them) visits the heap of each one at every sweep and marks none;
    // a plain index scan marks them dead (kill bits), so later sweeps skip them.
    // The planner's choice depends on the statistics of the moment (at 5,000 jobs/s it
    // chose the bitmap scan); here it is made for it: plain index scans off by default in
    // this database, so only a sweep that asks for one gets one.
    const dbName = new URL(db.url).pathname.slice(1);
    const setup = new Herald({ connectionString: db.url, poolSize: 1 });
    try {
      await setup.driver.executor.query(`ALTER DATABASE "${dbName}" SET enable_indexscan = off`);
    } finally {
      await setup.close();
    }
    const h = new Herald({ connectionString: db.url, poolSize: 3, queue: { rescueIntervalMs: 3_600_000 } });
    const admin = h.driver.executor;
    try {
      await admin.query('CREATE EXTENSION IF NOT EXISTS pageinspect');
      const deadEntries = async (): Promise<{ dead: number; all: number }> => {
        const { rows } = await admin.query<{ dead: number; all: number }>(
          `SELECT count(*) FILTER (WHERE i.dead)::int AS dead, count(*)::int AS "all"
             FROM generate_series(1, (pg_relation_size('herald.jobs_lease_expiry_idx') / current_setting('block_size')::int)::int - 1) AS b(n),
                  bt_page_items('herald.jobs_lease_expiry_idx', b.n::int) AS i
            WHERE (SELECT type FROM bt_page_stats('herald.jobs_lease_expiry_idx', b.n::int)) = 'l'`,
        );
        return rows[0];
      };
      await h.queue.enqueueMany(Array.from({ length: 3000 }, (_, i) => ({ kind: 'swept', payload: { i } })));
      // Run and finish them by hand: each leaves an index entry of a lease that expired
      // (distinct leases: equal keys would share one deduplicated index tuple).
      await admin.query(`UPDATE herald.jobs SET state = 'running', attempt = attempt + 1, attempted_at = now(), lease_expires_at = now() - interval '1 minute' - id * interval '1 millisecond' WHERE kind = 'swept'`);
      await admin.query(`UPDATE herald.jobs SET state = 'completed', finished_at = now(), lease_expires_at = NULL WHERE kind = 'swept'`);
      await admin.query('ANALYZE herald.jobs');
      const before = await deadEntries();
      assert.ok(before.all >= 3000, `the index holds the old leases: ${JSON.stringify(before)}`);
      assert.equal(await h.queue.rescue(), 0, 'nothing to rescue: every job finished');
      const after = await deadEntries();
      assert.ok(after.dead - before.dead >= 2900, `the sweep marked the finished jobs' entries dead: ${JSON.stringify({ before, after })}`);
    } finally {
      await admin.query(`ALTER DATABASE "${dbName}" RESET enable_indexscan`).catch(() => {});
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
