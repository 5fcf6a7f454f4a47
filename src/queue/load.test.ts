import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { waitForCount } from '../../test/support/wait.js';

const FIXTURE = new URL('../../test/fixtures/queue-worker.ts', import.meta.url).pathname;
let db: TestDatabase;
let tmp: string;
const children: ChildProcess[] = [];

function spawnWorker(mode: string, out = ''): { child: ChildProcess; lines: string[] } {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, db.url, mode, out], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  return { child, lines };
}

before(async () => {
  db = await freshDatabase();
  tmp = mkdtempSync(join(tmpdir(), 'pgherald-queue-load-'));
});
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await db.drop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('queue under load and faults', () => {
  test('unique keys hold under concurrent enqueue from several processes', async () => {
    const procs = Array.from({ length: 4 }, () => spawnWorker('unique'));
    await Promise.all(procs.map((p) => new Promise((r) => p.child.once('exit', r))));
    const byKey = new Map<string, Set<string>>();
    let inserted = 0;
    for (const p of procs) {
      const line = p.lines.find((l) => l.startsWith('result '));
      assert.ok(line, 'each process reports its results');
      for (const pair of line.slice(7).split(',')) {
        const [key, rest] = pair.split('=');
        const [id, ins] = rest.split(':');
        if (!byKey.has(key)) byKey.set(key, new Set());
        byKey.get(key)!.add(id);
        inserted += Number(ins);
      }
    }
    assert.equal(byKey.size, 200);
    for (const [key, ids] of byKey) assert.equal(ids.size, 1, `every process got the same job for ${key}`);
    assert.equal(inserted, 200, 'exactly one enqueue per key inserted');
    const rows = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE kind = 'uniq'`, [], db.url);
    assert.equal(rows[0].n, 200);
  });

  test('16 workers in 4 processes run every job while backends are terminated every 3 s', async () => {
    const total = scaled(100_000);
    // The enqueuer's own connections are spared (application_name): a killed enqueue
    // would leave its outcome unknown.
    const enqueuerUrl = new URL(db.url);
    enqueuerUrl.searchParams.set('application_name', 'load-enqueuer');
    const h = new Herald({ connectionString: enqueuerUrl.toString(), poolSize: 2 });
    h.notifier.on('notifier:problem', () => {});
    let terminated = 0;
    // At random: each worker backend of the database dies with probability `p`.
    const terminateRound = (p: number) =>
      adminQuery<{ n: number }>(
        `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
            AND application_name <> 'load-enqueuer' AND random() < $2`,
        [db.name, p],
      )
        .then((r) => (terminated += r[0].n))
        .catch(() => {});
    const completed = async () =>
      (await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE kind = 'load' AND state = 'completed'`, [], db.url))[0].n;
    const outs = Array.from({ length: 4 }, (_, i) => join(tmp, `runs-${i}.txt`));
    const procs = outs.map((o) => spawnWorker('load', o));
    const killer = setInterval(() => void terminateRound(0.5), 3000);
    try {
      await waitForCount(() => procs.filter((p) => p.lines.includes('ready')).length, procs.length, { what: 'workers ready' });
      // In 8 waves, each enqueued while the workers run and followed at once by a round of
      // terminations, so faults land mid-run however fast the workers drain.
      const wave = Math.ceil(total / 8);
      for (let start = 0; start < total; start += wave) {
        const end = Math.min(total, start + wave);
        for (let i = start; i < end; i += 10_000) {
          const n = Math.min(10_000, end - i);
          await h.queue.enqueueMany(Array.from({ length: n }, (_, k) => ({ kind: 'load', payload: { n: i + k } })));
        }
        await terminateRound(start === 0 ? 1 : 0.5);
        await waitForCount(completed, end, { intervalMs: 200, what: 'jobs completed' });
      }
    } finally {
      clearInterval(killer);
      await h.close();
      await Promise.all(
        procs.map((p) => {
          if (p.child.exitCode !== null || p.child.signalCode !== null) return undefined;
          p.child.kill('SIGTERM');
          return new Promise((r) => p.child.once('exit', r));
        }),
      );
    }
    // Every handler run, as (id, fence) = (job, attempt over its life).
    const runs = new Map<string, number[]>();
    for (const o of outs) {
      for (const line of readFileSync(o, 'utf8').split('\n')) {
        if (!line) continue;
        const [id, fence] = line.split(' ');
        if (!runs.has(id)) runs.set(id, []);
        runs.get(id)!.push(Number(fence));
      }
    }
    const jobs = await adminQuery<{ id: string; attempt: number; state: string; rescued: number }>(
      `SELECT id::text AS id, attempt, state, jsonb_array_length(errors)::int AS rescued FROM herald.jobs WHERE kind = 'load'`,
      [],
      db.url,
    );
    assert.equal(jobs.length, total);
    let rerun = 0;
    for (const j of jobs) {
      assert.equal(j.state, 'completed');
      const fences = runs.get(j.id) ?? [];
      // No two live attempts at once: a fence (claim) is never handed to two runs.
      assert.equal(new Set(fences).size, fences.length, `job ${j.id} ran twice under one attempt: ${fences}`);
      if (j.attempt > 1) {
        rerun++;
        // Only interrupted attempts run again: each earlier attempt ended by rescue.
        assert.equal(j.rescued, j.attempt - 1, `job ${j.id}: ${j.attempt} attempts, ${j.rescued} rescues`);
      } else {
        assert.deepEqual(fences, [1], `job ${j.id} ran ${fences.length} times`);
      }
    }
    console.log(`# ${total} jobs, ${terminated} backends terminated, ${rerun} jobs ran again after an interrupted attempt`);
    assert.ok(terminated > 0);
  });
});
