/**
 * Faults: messages published while the listen connection is down arrive through the
 * catch-up after the reconnect (not the safety poll), and a consumer process killed
 * with SIGKILL in the middle of a batch loses nothing: another consumer of the group
 * redoes the batch from the committed position, and each message commits once.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import { createHerald, Herald } from '../index.js';
import { privateCluster, type PrivateCluster } from '../../test/support/cluster.js';
import { terminateBackends } from '../../test/support/db.js';
import { nextEvent, waitFor, waitForCount } from '../../test/support/wait.js';

// A cluster of its own: the server restart below must not hit other test files.
let isolated: PrivateCluster;
let herald: Herald;
before(async () => {
  isolated = await privateCluster();
  herald = createHerald({ connectionString: isolated.url, notifier: { reconnectBaseDelayMs: 10 } });
});
after(async () => {
  await herald.close();
  await isolated.dispose();
});

test('messages published while the listen connection is down arrive by catch-up after the reconnect', async () => {
  await herald.topics.create('down', { partitions: 2 });
  const seen: number[] = [];
  // A safety poll far beyond the test: only a wake-up or the onListen catch-up can deliver.
  const c = herald.topics.consumer<number>('down', 'g', ({ messages }) => void seen.push(...messages.map((m) => m.payload)), { pollIntervalMs: 3_600_000 });
  await c.start();
  await herald.topics.publish('down', 1);
  await waitFor(() => seen.length === 1);
  const lost = nextEvent(herald.notifier, 'notifier:lost');
  assert.equal(await terminateBackends('postgres', { applicationName: LISTEN_APPLICATION_NAME }, isolated.url), 1);
  await lost;
  await herald.topics.publishMany('down', [{ payload: 2 }, { payload: 3 }]); // their NOTIFY reaches nobody
  await waitFor(() => seen.length === 3, { what: 'catch-up after reconnect', timeoutMs: 60_000 });
  assert.deepEqual(seen.sort(), [1, 2, 3]);
  await c.stop();
});

test('a consumer killed with SIGKILL mid-batch loses nothing and commits nothing twice', async () => {
  await herald.driver.executor.query('CREATE TABLE done (v int PRIMARY KEY, by text NOT NULL)');
  await herald.topics.create('kill', { partitions: 1 });
  await herald.topics.publishMany('kill', Array.from({ length: 200 }, (_, i) => ({ payload: i })));
  mkdirSync(join(process.cwd(), 'test-artifacts'), { recursive: true }); // git-ignored
  const dir = mkdtempSync(join(process.cwd(), 'test-artifacts', 'topics-kill-'));
  const worker = join(dir, 'worker.ts');
  const src = new URL('../index.ts', import.meta.url).pathname;
  // The worker writes its batch into `done` and then hangs before commit: the kill lands mid-batch.
  writeFileSync(
    worker,
    `import { createHerald } from ${JSON.stringify(src)};
const herald = createHerald({ connectionString: process.env.DATABASE_URL });
const c = herald.topics.consumer('kill', 'g', async ({ messages, tx }) => {
  for (const m of messages) await tx.query('INSERT INTO done (v, by) VALUES ($1, $2)', [m.payload, 'worker']);
  console.log('in-batch');
  await new Promise(() => {});
}, { batchSize: 50 });
await c.start();
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', worker], { env: { ...process.env, DATABASE_URL: isolated.url }, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('in-batch') && resolve());
      child.on('exit', () => reject(new Error('worker exited early')));
    });
    // The worker holds partition 0: a second consumer here finds nothing to claim.
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const c = herald.topics.consumer<number>('kill', 'g', async ({ messages, tx }) => {
      for (const m of messages) await tx.query('INSERT INTO done (v, by) VALUES ($1, $2)', [m.payload, 'survivor']);
    }, { pollIntervalMs: 100 });
    await c.start();
    await waitFor(async () => (await herald.driver.executor.query<{ n: number }>('SELECT count(*)::int AS n FROM done')).rows[0].n === 200, { timeoutMs: 30_000 });
    const { rows } = await herald.driver.executor.query<{ by: string; n: number }>('SELECT by, count(*)::int AS n FROM done GROUP BY by');
    assert.deepEqual(rows, [{ by: 'survivor', n: 200 }]); // the killed batch rolled back: no duplicate key, nothing from the worker
    await c.stop();
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('consumers survive a SIGKILLed and restarted server: every message committed once', async () => {
  const pc = await privateCluster();
  const h = new Herald({ connectionString: pc.url, notifier: { healthCheckIntervalMs: 300, healthCheckTimeoutMs: 500, reconnectMaxDelayMs: 300, queueUsageIntervalMs: 0 } });
  try {
    await h.driver.executor.query('CREATE TABLE got (grp text, v int, PRIMARY KEY (grp, v))');
    await h.topics.create('crash', { partitions: 4 });
    const problems: unknown[] = [];
    const consumers = ['a', 'b'].flatMap((g) =>
      [1, 2].map(() =>
        h.topics.consumer<number>('crash', g, async ({ messages, tx }) => {
          // A duplicate delivery within a group would violate the primary key and show up as a handler error.
          await tx.query('INSERT INTO got (grp, v) SELECT $1, unnest($2::int[])', [g, messages.map((m) => m.payload)]);
        }, { batchSize: 20, pollIntervalMs: 200, retryDelayMs: 50 }),
      ),
    );
    const handlerErrors: unknown[] = [];
    for (const c of consumers) {
      c.on('topic:problem', (e) => problems.push(e));
      c.on('topic:handlerError', (e) => handlerErrors.push(e));
      await c.start();
    }
    const total = 600;
    const publish = async (from: number, to: number) => {
      for (let i = from; i < to; i += 50) {
        await h.topics.publishMany('crash', Array.from({ length: 50 }, (_, j) => ({ payload: i + j, key: `k${(i + j) % 7}` })));
      }
    };
    await publish(0, 300);
    await waitFor(async () => (await h.driver.executor.query<{ n: number }>('SELECT count(*)::int AS n FROM got')).rows[0].n > 0);
    await pc.cluster.kill(); // SIGKILL mid-stream: in-flight batches roll back
    await waitFor(() => problems.length > 0, { what: 'consumers report the outage' });
    await pc.cluster.restart();
    await publish(300, total);
    await waitForCount(async () => (await h.driver.executor.query<{ n: number }>('SELECT count(*)::int AS n FROM got')).rows[0].n, 2 * total, { what: 'messages of both groups' });
    const { rows } = await h.driver.executor.query<{ grp: string; n: number; d: number }>('SELECT grp, count(*)::int AS n, count(DISTINCT v)::int AS d FROM got GROUP BY grp ORDER BY grp');
    assert.deepEqual(rows, [{ grp: 'a', n: total, d: total }, { grp: 'b', n: total, d: total }]);
    assert.equal(handlerErrors.filter((e) => String((e as { error: Error }).error?.message).includes('duplicate key')).length, 0);
    await Promise.all(consumers.map((c) => c.stop()));
  } finally {
    await h.close();
    await pc.dispose();
  }
});
