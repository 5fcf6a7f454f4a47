import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';

const FIXTURE = new URL('../../test/fixtures/queue-worker.ts', import.meta.url).pathname;
let db: TestDatabase;
let tmp: string;
const children: ChildProcess[] = [];

function spawnWorker(mode: string, out: string, queue = 'fleet'): { child: ChildProcess; lines: string[]; exited: Promise<unknown> } {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, db.url, mode, out, queue], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  const exited = new Promise((r) => child.once('exit', r));
  return { child, lines, exited };
}

before(async () => {
  db = await freshDatabase();
  tmp = mkdtempSync(join(tmpdir(), 'pgherald-queue-limits-'));
});
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await db.drop();
  rmSync(tmp, { recursive: true, force: true });
});

interface Run {
  id: string;
  fence: number;
  key: string;
  start: number;
  end: number | null;
}

/** The runs a ledger records: each start with its end (null: the process died first). */
function readLedger(file: string): Run[] {
  if (!existsSync(file)) return [];
  const runs = new Map<string, Run>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [t, id, fence, key, ms] = line.split(' ');
    if (!ms) continue; // a line cut by the kill
    const k = `${id}/${fence}`;
    if (t === 's') runs.set(k, { id, fence: Number(fence), key, start: Number(ms), end: null });
    else if (runs.has(k)) runs.get(k)!.end = Number(ms);
  }
  return [...runs.values()];
}

// The two runs side by side (their own queues, processes and ledgers): the rate limit's
// is a minute of waiting for tokens, the concurrency limit's is busy meanwhile.
describe('fleet-wide limits, 4 processes each', { concurrency: 2 }, () => {
  describe('fleet-wide concurrency limit', () => {
    test('4 processes x 10 workers, at most 3 running per key over 50 keys, one process SIGKILLed mid-run: never more than 3, every job runs', async () => {
      const total = scaled(3000, 300);
      const h = new Herald({ connectionString: db.url, poolSize: 2 });
      h.notifier.on('notifier:problem', () => {});
      try {
        await h.queue.setLimit({ queue: 'fleet', kind: 'lim', concurrency: 3, partitionBy: 'k' });
        // Half the jobs on 5 hot keys (the limit binds), half spread over all 50.
        const jobs = Array.from({ length: total }, (_, i) => {
          const key = i % 2 === 0 ? `k${i % 5}` : `k${Math.floor(Math.random() * 50)}`;
          return { kind: 'lim', queue: 'fleet', payload: { k: key, ms: 2 + Math.floor(Math.random() * 15) } };
        });
        for (let i = 0; i < jobs.length; i += 1000) await h.queue.enqueueMany(jobs.slice(i, i + 1000));
        const files = [0, 1, 2, 3].map((i) => join(tmp, `ledger-${i}.txt`));
        const procs = files.map((f) => spawnWorker('limited', f));
        const completed = async () =>
          (await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE queue = 'fleet' AND kind = 'lim' AND state = 'completed'`, [], db.url))[0].n;
        await waitForCount(completed, Math.floor(total / 3), { what: 'a third of the jobs' });
        // Kill one process while it runs jobs.
        await waitFor(() => readLedger(files[0]).some((r) => r.end === null), { what: 'process 0 to be running a job' });
        procs[0].child.kill('SIGKILL');
        await procs[0].exited;
        const killedAt = performance.timeOrigin + performance.now();
        await waitForCount(completed, total, { what: 'every job completed' });
        for (const p of procs.slice(1)) p.child.kill('SIGTERM');
        await Promise.all(procs.slice(1).map((p) => p.exited));

        const runs = files.flatMap((f, i) => readLedger(f).map((r) => ({ ...r, proc: i })));
        // Only the killed process leaves runs without an end: they stopped when it died.
        for (const r of runs) {
          if (r.end === null) {
            assert.equal(r.proc, 0, `run ${r.id}/${r.fence} of a live process has no end`);
            r.end = killedAt;
          }
        }
        // Every job ran to its end at least once.
        const ended = new Set(runs.filter((r) => r.proc !== 0 || r.end! < killedAt).map((r) => r.id));
        const rows = await adminQuery<{ id: string }>(`SELECT id::text AS id FROM herald.jobs WHERE queue = 'fleet' AND kind = 'lim'`, [], db.url);
        assert.equal(rows.length, total);
        for (const row of rows) assert.ok(ended.has(row.id), `job ${row.id} ran`);
        // Sweep each key's runs in time order (an end before a start at the same instant).
        const byKey = new Map<string, [number, number][]>();
        for (const r of runs) {
          const ev = byKey.get(r.key) ?? [];
          ev.push([r.start, 1], [r.end!, -1]);
          byKey.set(r.key, ev);
        }
        let peak = 0;
        for (const [key, ev] of byKey) {
          ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
          let n = 0;
          for (const [t, d] of ev) {
            n += d;
            assert.ok(n <= 3, `key ${key}: ${n} running at ${t}`);
            peak = Math.max(peak, n);
          }
        }
        assert.equal(peak, 3, 'the limit bound (hot keys)');
        console.log(`# ${total} jobs, ${runs.length} runs, ${byKey.size} keys, peak ${peak} per key`);
      } finally {
        await h.close();
      }
    });
  });

  describe('fleet-wide rate limit', () => {
    test('4 processes x 10 workers under a rate limit, one process SIGKILLed mid-run: starts measured over windows of the period keep to the token bucket, every job runs', async () => {
      // Full scale: 200 starts a minute, 420 jobs (a burst of 200, then 3.3 a second: 66 s).
      // More than twice the count, so that a limiter that let them all start at once would
      // fail the check of the busiest window below.
      const count = scaled(200, 40);
      const periodMs = scaled(60_000, 12_000);
      const total = Math.round(count * 2.1);
      const h = new Herald({ connectionString: db.url, poolSize: 2 });
      h.notifier.on('notifier:problem', () => {});
      const procs: ReturnType<typeof spawnWorker>[] = [];
      try {
        await h.queue.setLimit({ queue: 'rated', kind: 'lim', rate: { count, periodMs } });
        // Announced: each attempt's claim is in the job's history with its database time.
        const jobs = Array.from({ length: total }, (_, i) => ({ kind: 'lim', queue: 'rated', announce: true, payload: { k: `r${i % 7}`, ms: 100 + Math.floor(Math.random() * 300) } }));
        await h.queue.enqueueMany(jobs);
        const files = [0, 1, 2, 3].map((i) => join(tmp, `rated-${i}.txt`));
        procs.push(...files.map((f) => spawnWorker('limited', f, 'rated')));
        const completed = async () =>
          (await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE queue = 'rated' AND state = 'completed'`, [], db.url))[0].n;
        await waitForCount(completed, Math.floor(total * 0.6), { what: 'the burst and some of the rest' });
        await waitFor(() => readLedger(files[0]).some((r) => r.end === null), { what: 'process 0 to be running a job' });
        procs[0].child.kill('SIGKILL');
        await procs[0].exited;
        await waitForCount(completed, total, { what: 'every job completed' });
        for (const p of procs.slice(1)) p.child.kill('SIGTERM');
        await Promise.all(procs.slice(1).map((p) => p.exited));

        // Every claim (retries of the killed process's job included), in database time.
        const starts = (
          await adminQuery<{ ms: number }>(
            `SELECT extract(epoch FROM (e ->> 'at')::timestamptz) * 1000 AS ms
               FROM herald.jobs j, jsonb_array_elements(j.history) e
              WHERE j.queue = 'rated' AND e ->> 'state' = 'running' ORDER BY 1`,
            [],
            db.url,
          )
        ).map((r) => Number(r.ms));
        assert.ok(starts.length >= total, `every job started at least once (${starts.length} starts)`);
        // The token bucket's bound: at most count + count * t / periodMs starts in any
        // interval of length t. A claim's time is its transaction's start and the bucket
        // reads the clock later in the statement, after the completions it records: 1 s of
        // slack for a loaded machine (3.3 starts here; a limiter that let everything start
        // at once would exceed the bound by hundreds).
        for (let i = 0; i < starts.length; i++) {
          for (let j = i; j < starts.length; j++) {
            const t = starts[j] - starts[i];
            assert.ok(j - i + 1 <= count + (count * (t + 1000)) / periodMs, `${j - i + 1} starts within ${t.toFixed(0)} ms`);
          }
        }
        // Measured over windows of one period: the busiest window, and the windows from the first start.
        let busiest = 0;
        for (let i = 0, j = 0; i < starts.length; i++) {
          while (j < starts.length && starts[j] < starts[i] + periodMs) j++;
          busiest = Math.max(busiest, j - i);
        }
        assert.ok(busiest <= 2 * count, `at most twice the count in any window of one period (a full bucket, then its refill): ${busiest}`);
        const windows: number[] = [];
        for (const s of starts) {
          const w = Math.floor((s - starts[0]) / periodMs);
          windows[w] = (windows[w] ?? 0) + 1;
        }
        assert.ok(windows[0] > count, 'the first window holds the burst and the refill');
        console.log(`# rate ${count} per ${periodMs} ms: ${starts.length} starts of ${total} jobs; per window ${windows.join(', ')}; busiest sliding window ${busiest}`);
      } finally {
        for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
        await h.close();
      }
    });
  });
});
