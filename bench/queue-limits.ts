/**
 * The cost of queue control on the claim path: drains of no-op jobs by the same worker
 * setup, side by side in the same run on the same Postgres, each in a fresh database:
 * - unlimited: no pause, no limit (the ordinary one-statement claim);
 * - concurrency: a queue-wide concurrency limit that never binds (100000 running);
 * - per-key: a concurrency limit per payload key (50 keys, 100000 each) that never binds;
 * - rate: a queue-wide rate limit that never binds (10,000,000 starts per second);
 * - per-key 1: at most one running job per payload key (50 keys): binds per key, like
 *   graphile-worker's named queues, but 50 keys leave the 40 slots enough to do.
 * With graphile-worker installed, the same drain by graphile-worker 0.17 (one runner of
 * concurrency workers x concurrency, its defaults) in three configurations: plain jobs;
 * every job in one of 50 named queues (`queueName`: serial execution per queue, its form
 * of a per-key limit of 1); and every job with its own `jobKey` (its de-duplication; the
 * pgherald counterpart is a `uniqueKey` per job, `unique-key` below).
 * Configurations run interleaved (A B C D ..., A B C D ..., ...), medians reported.
 *
 *   node --import tsx bench/queue-limits.ts
 *
 * Environment: DATABASE_URL (use this server instead of starting a cluster), BENCH_RUNS
 * (default 3), BENCH_JOBS (jobs per drain, default 20000), BENCH_WORKERS (work() calls,
 * default 4), BENCH_CONCURRENCY (per work() call, default 10), BENCH_PREFETCH (default
 * 'auto', the library default; a number sets it), BENCH_KEEP (keepCompleted, default true,
 * the library default), BENCH_CONFIGS (comma-separated subset), BENCH_BASE (the path of
 * another checkout, e.g. a worktree of the parent commit: every pgherald configuration also
 * runs with that checkout's library, interleaved, as `<config> @base`).
 * Besides jobs/s, each drain reports the CPU seconds of every process of the bench's own
 * cluster per job (µs; from /proc, Linux): less disturbed by other load on the machine.
 */
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import { Herald } from '../src/client.js';
import { postgresCpuSeconds } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const JOBS = Number(process.env.BENCH_JOBS ?? 20_000);
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 10);
const PREFETCH: number | 'auto' = (process.env.BENCH_PREFETCH ?? 'auto') === 'auto' ? 'auto' : Number(process.env.BENCH_PREFETCH);
const KEEP = (process.env.BENCH_KEEP ?? 'true') === 'true';

const BASE = process.env.BENCH_BASE;
const BaseHerald: typeof Herald | null = BASE ? (await import(`${BASE}/src/client.ts`)).Herald : null;

// Claim statements sent (both libraries load this one pg module): claims per drain.
let claimStatements = 0;
const pgQuery = pg.Client.prototype.query as (...a: unknown[]) => unknown;
pg.Client.prototype.query = function (this: pg.Client, ...a: unknown[]) {
  const q = a[0] as string | { text?: string } | undefined;
  const text = typeof q === 'string' ? q : q?.text;
  if (text?.includes('claimed AS')) claimStatements++;
  return pgQuery.apply(this, a);
} as never;

const server = await benchPostgres({ max_connections: 200, shared_buffers: '256MB' });
const pgCpu = () => (server.cluster?.pid ? postgresCpuSeconds(server.cluster.pid) : NaN);

async function admin(sql: string): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ connectionString: server.url });
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
  }
}

type Config = 'unlimited' | 'concurrency' | 'per-key' | 'rate' | 'per-key 1' | 'unique-key' | 'graphile plain' | 'graphile queueName' | 'graphile jobKey';
const ALL: Config[] = ['unlimited', 'concurrency', 'per-key', 'rate', 'per-key 1', 'unique-key', 'graphile plain', 'graphile queueName', 'graphile jobKey'];
const CONFIGS = process.env.BENCH_CONFIGS ? ALL.filter((c) => process.env.BENCH_CONFIGS!.split(',').includes(c)) : ALL;

/** The same drain by graphile-worker: plain, in 50 serial named queues, or each job with its own jobKey. */
async function drainGraphile(url: string, config: Config): Promise<number> {
  const logger = new Logger(() => () => {});
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  try {
    await utils.migrate();
    for (let i = 0; i < JOBS; i += 10_000) {
      await utils.addJobs(
        Array.from({ length: Math.min(10_000, JOBS - i) }, (_, j) => ({
          identifier: 'noop',
          payload: { k: `c${(i + j) % 50}` },
          ...(config === 'graphile queueName' ? { queueName: `c${(i + j) % 50}` } : {}),
          ...(config === 'graphile jobKey' ? { jobKey: `j${i + j}` } : {}),
        })),
      );
    }
    await admin(`CHECKPOINT`);
    let done = 0;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    const t0 = performance.now();
    const runner = await run({
      connectionString: url,
      concurrency: WORKERS * CONCURRENCY,
      noHandleSignals: true,
      logger,
      taskList: { noop: async () => void (++done === JOBS && finish()) },
    });
    await finished;
    const ms = performance.now() - t0;
    await runner.stop();
    return JOBS / (ms / 1000);
  } finally {
    await utils.release();
  }
}

/** One drain's result: jobs/s, and Postgres CPU µs per job (drain only). */
interface Drained {
  rate: number;
  cpuUs: number;
  /** Jobs per claim statement (NaN for graphile-worker). */
  perClaim: number;
}

let n = 0;
async function drain(config: Config, Lib: typeof Herald = Herald): Promise<Drained> {
  const name = `bench_limits_${process.pid}_${n++}`;
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(server.url);
  url.pathname = '/' + name;
  if (config.startsWith('graphile')) {
    try {
      const c0 = pgCpu();
      const rate = await drainGraphile(url.toString(), config);
      return { rate, cpuUs: ((pgCpu() - c0) * 1e6) / JOBS, perClaim: NaN };
    } finally {
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    }
  }
  const h = new Lib({ connectionString: url.toString(), poolSize: 10, queue: { keepCompleted: KEEP } });
  try {
    await h.migrate();
    if (config === 'concurrency') await h.queue.setLimit({ concurrency: 100_000 });
    if (config === 'per-key') await h.queue.setLimit({ concurrency: 100_000, partitionBy: 'k' });
    if (config === 'rate') await h.queue.setLimit({ rate: { count: 1_000_000, periodMs: 100 } });
    if (config === 'per-key 1') await h.queue.setLimit({ concurrency: 1, partitionBy: 'k' });
    for (let i = 0; i < JOBS; i += 10_000) {
      await h.queue.enqueueMany(Array.from({ length: Math.min(10_000, JOBS - i) }, (_, j) => ({ kind: 'noop', payload: { k: `c${(i + j) % 50}` }, ...(config === 'unique-key' ? { uniqueKey: `j${i + j}` } : {}) })));
    }
    await admin(`CHECKPOINT`);
    let done = 0;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    const c0 = pgCpu();
    const s0 = claimStatements;
    const t0 = performance.now();
    for (let w = 0; w < WORKERS; w++) {
      h.queue.work('noop', () => {
        if (++done === JOBS) finish();
      }, { concurrency: CONCURRENCY, prefetch: PREFETCH });
    }
    await finished;
    const ms = performance.now() - t0;
    const cpu = pgCpu() - c0;
    await h.queue.stop();
    return { rate: JOBS / (ms / 1000), cpuUs: (cpu * 1e6) / JOBS, perClaim: JOBS / (claimStatements - s0) };
  } finally {
    await h.close();
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const settings = await admin(`SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'server_version', 'shared_buffers')`);
console.log(`# ${new Date().toISOString()} load ${loadavg().map((x) => x.toFixed(1)).join(' ')}, ${cpus().length} CPUs`);
console.log(`# ${settings.map((r) => `${r.name}=${r.setting}`).join(', ')}`);
console.log(`# ${JOBS} jobs per drain, ${WORKERS} work() x concurrency ${CONCURRENCY}, prefetch ${PREFETCH}, keepCompleted ${KEEP}, ${RUNS} rounds`);
// Contenders: every configuration, and with BENCH_BASE every pgherald one again with the base library.
const RUNNERS: { name: string; config: Config; lib?: typeof Herald }[] = CONFIGS.flatMap((c) =>
  BaseHerald && !c.startsWith('graphile') ? [{ name: c, config: c }, { name: `${c} @base`, config: c, lib: BaseHerald }] : [{ name: c, config: c }],
);
const results = new Map<string, Drained[]>(RUNNERS.map((c) => [c.name, []]));
try {
  for (let r = 0; r < RUNS; r++) {
    for (const c of RUNNERS) {
      const d = await drain(c.config, c.lib);
      results.get(c.name)!.push(d);
      console.log(`round ${r + 1} ${c.name}: ${Math.round(d.rate)} jobs/s, ${Math.round(d.cpuUs)} µs Postgres CPU per job, ${d.perClaim.toFixed(0)} jobs per claim statement, load ${loadavg()[0].toFixed(1)}`);
    }
  }
  // Each configuration against its own library's unlimited drain of the same round.
  console.log(
    '\n| claim path | jobs/s (median) | runs | vs unlimited (median of same-round ratios) | Postgres CPU µs/job (median) | runs | vs unlimited |\n|---|---:|---|---:|---:|---|---:|',
  );
  const pct = (x: number) => `${x >= 1 ? '+' : '−'}${(Math.abs(x - 1) * 100).toFixed(1)}%`;
  for (const c of RUNNERS) {
    const baseName = c.config.startsWith('graphile') ? 'graphile plain' : c.lib ? 'unlimited @base' : 'unlimited';
    const base = results.get(baseName) ?? [];
    const mine = results.get(c.name)!;
    const same = base.length === mine.length && c.name !== baseName;
    const vs = (f: (d: Drained) => number) => (same ? pct(median(mine.map((x, r) => f(x) / f(base[r])))) : '—');
    const rates = mine.map((x) => x.rate);
    const cpu = mine.map((x) => x.cpuUs);
    console.log(
      `| ${c.name} | ${Math.round(median(rates))} | ${rates.map(Math.round).join(', ')} | ${vs((d) => d.rate)} | ${Math.round(median(cpu))} | ${cpu.map(Math.round).join(', ')} | ${vs((d) => d.cpuUs)} |`,
    );
  }
  if (BaseHerald) {
    // This checkout against the base, configuration by configuration, same round.
    console.log('\n| claim path | jobs/s this / base (median of same-round ratios) | CPU µs/job this / base |\n|---|---:|---:|');
    for (const c of RUNNERS.filter((x) => x.lib)) {
      const a = results.get(c.config)!;
      const b = results.get(c.name)!;
      console.log(`| ${c.config} | ${median(a.map((x, r) => x.rate / b[r].rate)).toFixed(3)} | ${median(a.map((x, r) => x.cpuUs / b[r].cpuUs)).toFixed(3)} |`);
    }
  }
  console.log(`# done ${new Date().toISOString()} load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
} finally {
  await server.stop();
}
