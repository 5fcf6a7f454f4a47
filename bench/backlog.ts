/**
 * Deep backlog (issue 19, point 2): does the queue slow down when millions of jobs wait?
 *
 *   node --import tsx bench/backlog.ts [--jobs 10000000] [--window 100000] [--concurrency 10]
 *        [--prefetch <n>] [--keep-completed true|false] [--vacuum true|false] [--json bench/results/backlog.json]
 *
 * One Postgres (a throwaway cluster at default durability, or DATABASE_URL), one
 * process, library defaults except the options given. Steps:
 *  1. enqueue `window` jobs into the empty table (batches of 20,000): jobs/s;
 *  2. fill the table to `jobs` waiting jobs;
 *  3. enqueue `window` more while they all wait: jobs/s (goal: within 10% of step 1);
 *  4. VACUUM ANALYZE the table (what autovacuum does after a fill of this size; without it
 *     the drain's first windows compete with that autovacuum and pay for setting the
 *     fresh rows' hint bits, and look slower than the last ones; `--vacuum false` skips it);
 *  5. drain everything with `work()`; per window of `window` completions: jobs/s, and
 *     the p50/p99 of the gaps between consecutive handler starts (a slow claim shows
 *     up as a gap); the first and the last window are compared (goal: within 10%).
 * Also prints the table's size (heap + indexes + TOAST) after the fill and the drain,
 * and the Node/Postgres CPU seconds of the drain.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { createHerald } from '../src/index.js';
import { benchPostgres } from './support/postgres.js';
import { flag, option } from './support/args.js';

const JOBS = Number(option('jobs', '10000000'));
const WINDOW = Number(option('window', '100000'));
const CONCURRENCY = Number(option('concurrency', '10'));
const PREFETCH = flag('prefetch') ? Number(option('prefetch', '0')) : undefined;
const KEEP = flag('keep-completed') ? option('keep-completed', 'true') === 'true' : undefined;
const JSON_OUT = option('json', '');
const VACUUM = option('vacuum', 'true') !== 'false';
const BATCH = 20_000;

const server = await benchPostgres({ shared_buffers: '256MB', max_connections: 100 });
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
const herald = createHerald({ connectionString: server.url, ...(KEEP === undefined ? {} : { queue: { keepCompleted: KEEP } }) });
await herald.migrate();

const version = (await admin.query('SHOW server_version')).rows[0].server_version;
const size = async () => Number((await admin.query(`SELECT pg_total_relation_size('herald.jobs') AS b`)).rows[0].b);
const mb = (b: number) => `${(b / 1024 / 1024).toFixed(0)} MB`;
const postgresCpu = async () => {
  // The postmaster's children: the backends and background processes of this cluster.
  const root = server.cluster?.pid;
  if (!root) return NaN;
  const { readFileSync, readdirSync } = await import('node:fs');
  let ticks = 0;
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) === root || Number(p) === root) ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / 100;
};

async function enqueue(n: number): Promise<number> {
  const t = performance.now();
  for (let i = 0; i < n; i += BATCH) {
    await herald.queue.enqueueMany(Array.from({ length: Math.min(BATCH, n - i) }, (_, j) => ({ kind: 'noop', payload: { i: i + j } })));
  }
  return n / ((performance.now() - t) / 1000);
}

console.log(`# Deep backlog — PostgreSQL ${version}, ${cpus().length} CPUs, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
console.log(`# ${JOBS} jobs, windows of ${WINDOW}, concurrency ${CONCURRENCY}, prefetch ${PREFETCH ?? 'default'}, keepCompleted ${KEEP ?? 'default'}\n`);
// Warm up (connections, prepared statements, the server's caches), then start empty.
await enqueue(Math.min(WINDOW, 40_000));
await admin.query('TRUNCATE herald.jobs CASCADE');
const enqueueEmpty = await enqueue(WINDOW);
const fillStart = performance.now();
await enqueue(JOBS - 2 * WINDOW);
console.log(`fill: ${JOBS - 2 * WINDOW} jobs in ${((performance.now() - fillStart) / 1000).toFixed(0)} s`);
const enqueueDeep = await enqueue(WINDOW);
const filled = await size();
console.log(`enqueue into the empty table: ${Math.round(enqueueEmpty)} jobs/s; with ${JOBS - WINDOW} waiting: ${Math.round(enqueueDeep)} jobs/s (ratio ${(enqueueDeep / enqueueEmpty).toFixed(3)}); jobs table ${mb(filled)}`);

let vacuumSeconds: number | null = null;
if (VACUUM) {
  const t = performance.now();
  await admin.query('VACUUM ANALYZE herald.jobs');
  vacuumSeconds = (performance.now() - t) / 1000;
  console.log(`VACUUM ANALYZE of the filled table: ${vacuumSeconds.toFixed(0)} s`);
}

type Window = { upTo: number; jobsPerSecond: number; gapP50Ms: number; gapP99Ms: number };
const windows: Window[] = [];
let done = 0;
let last = performance.now();
let windowStart = last;
let gaps: number[] = [];
let finish!: () => void;
const finished = new Promise<void>((r) => (finish = r));
const cpu0 = { node: process.cpuUsage(), pg: await postgresCpu() };
const drainStart = performance.now();
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0;
};
herald.queue.work(
  'noop',
  () => {
    const now = performance.now();
    gaps.push(now - last);
    last = now;
    if (++done % WINDOW === 0 || done === JOBS) {
      windows.push({ upTo: done, jobsPerSecond: gaps.length / ((now - windowStart) / 1000), gapP50Ms: pct(gaps, 0.5), gapP99Ms: pct(gaps, 0.99) });
      const w = windows.at(-1)!;
      if (windows.length % 10 === 1 || done === JOBS) console.log(`  ${done}: ${Math.round(w.jobsPerSecond)} jobs/s, gap p50 ${w.gapP50Ms.toFixed(3)} ms, p99 ${w.gapP99Ms.toFixed(3)} ms`);
      windowStart = now;
      gaps = [];
    }
    if (done === JOBS) finish();
  },
  { concurrency: CONCURRENCY, ...(PREFETCH === undefined ? {} : { prefetch: PREFETCH }) },
);
await finished;
const drainSeconds = (performance.now() - drainStart) / 1000;
const nodeCpu = process.cpuUsage(cpu0.node);
const pgCpu = (await postgresCpu()) - cpu0.pg;
await herald.close();
const drained = await size();
const first = windows[0];
const lastW = windows.at(-1)!;
console.log(`\ndrain: ${JOBS} jobs in ${drainSeconds.toFixed(0)} s (${Math.round(JOBS / drainSeconds)} jobs/s); Node CPU ${((nodeCpu.user + nodeCpu.system) / 1e6).toFixed(0)} s, Postgres CPU ${pgCpu.toFixed(0)} s; jobs table ${mb(drained)} after`);
console.log(`first window ${Math.round(first.jobsPerSecond)} jobs/s (gap p99 ${first.gapP99Ms.toFixed(3)} ms); last ${Math.round(lastW.jobsPerSecond)} jobs/s (gap p99 ${lastW.gapP99Ms.toFixed(3)} ms); last / first ${(lastW.jobsPerSecond / first.jobsPerSecond).toFixed(3)}`);
if (JSON_OUT) {
  mkdirSync(dirname(JSON_OUT), { recursive: true });
  writeFileSync(JSON_OUT, JSON.stringify({ version, jobs: JOBS, window: WINDOW, concurrency: CONCURRENCY, prefetch: PREFETCH ?? null, keepCompleted: KEEP ?? null, vacuumSeconds, enqueueEmpty, enqueueDeep, filledBytes: filled, drainedBytes: drained, drainSeconds, windows }, null, 1));
}
await admin.end();
await server.stop();
