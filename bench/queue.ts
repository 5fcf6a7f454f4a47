/**
 * Job queue benchmark: pgherald beside graphile-worker and pg-boss on the same
 * Postgres in the same run, each library in a fresh database.
 *
 *   node --import tsx bench/queue.ts
 *
 * Environment:
 * - DATABASE_URL: use this server (needs CREATEDB) instead of starting a cluster.
 * - BENCH_RUNS: repetitions of (a)-(c), medians reported (default 3).
 * - BENCH_MILLION: jobs of run (d) (default 1000000; 0 skips it).
 * - BENCH_MILLION_LIBS: libraries of run (d) (default "pgherald,graphile-worker").
 * - BENCH_LIBS: only the libraries whose name contains one of these comma-separated texts.
 * - BENCH_LATENCY_SAMPLES: samples of (c) (default 200; pg-boss, which polls, takes 40).
 * - BENCH_ANATOMY=1: where each drain's CPU goes, per job: this process's CPU (the
 *   library's Node side), the Postgres processes' CPU, WAL (records, full-page images,
 *   bytes, syncs from pg_stat_wal), commits, and the top statements by execution time
 *   (pg_stat_statements, loaded for the run). Printed per drain and as medians.
 *
 * (a) enqueue 20,000 jobs in one batch; (b) drain 20,000 no-op jobs with concurrency
 * 10 in one process; (c) enqueue-to-start latency with idle workers; (d) a long run,
 * throughput of the first and the last 100,000 jobs.
 */
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { Logger, makeWorkerUtils, run, type Runner, type WorkerUtils } from 'graphile-worker';
import PgBoss from 'pg-boss';
import { Herald } from '../src/client.js';
import { benchPostgres } from './support/postgres.js';
import { postgresCpuSeconds } from './support/cpu.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const MILLION = Number(process.env.BENCH_MILLION ?? 1_000_000);
const MILLION_LIBS = (process.env.BENCH_MILLION_LIBS ?? 'pgherald,graphile-worker').split(',');
const SAMPLES = Number(process.env.BENCH_LATENCY_SAMPLES ?? 200);
const N = 20_000;
const CONCURRENCY = 10;

// Dropping a library's database (WITH FORCE) after it stopped can still reach a pool
// client a library keeps internally; its 'terminating connection' error is expected.
process.on('uncaughtException', (err) => {
  if ((err as { code?: string }).code === '57P01') return;
  console.error(err);
  process.exit(1);
});

const ANATOMY = process.env.BENCH_ANATOMY === '1';
const pgServer = await benchPostgres({
  max_connections: 200,
  shared_buffers: '256MB',
  ...(ANATOMY ? { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all' } : {}),
});
const adminUrl = pgServer.url;

async function admin<T = Record<string, unknown>>(sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: adminUrl });
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query(sql)).rows as T[];
  } finally {
    await c.end();
  }
}

if (ANATOMY) await admin('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');

let dbCounter = 0;
async function freshDb(): Promise<{ name: string; url: string; drop: () => Promise<void> }> {
  const name = `bench_${process.pid}_${dbCounter++}`;
  await admin(`CREATE DATABASE ${name}`);
  const u = new URL(adminUrl!);
  u.pathname = '/' + name;
  return { name, url: u.toString(), drop: async () => void (await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)) };
}

/** A library under test: enqueue a batch, start workers with a counting handler, stop. */
interface Lib {
  name: string;
  setup(url: string): Promise<void>;
  enqueue(n: number): Promise<void>;
  /** All `n` jobs in one call of the library's batch enqueue. */
  enqueueAll(n: number): Promise<void>;
  enqueueOne(): Promise<void>;
  startWorkers(onJob: () => void): Promise<void>;
  stopWorkers(): Promise<void>;
  teardown(): Promise<void>;
}

function herald(config: 'default' | 'throughput'): Lib {
  let h: Herald;
  return {
    name: `pgherald (${config})`,
    async setup(url) {
      h = new Herald({ connectionString: url, poolSize: 10, queue: { keepCompleted: config === 'default' } });
      await h.migrate();
    },
    async enqueue(n) {
      for (let i = 0; i < n; i += 20_000) {
        await h.queue.enqueueMany(Array.from({ length: Math.min(20_000, n - i) }, () => ({ kind: 'noop', payload: {} })));
      }
    },
    async enqueueAll(n) {
      await h.queue.enqueueMany(Array.from({ length: n }, () => ({ kind: 'noop', payload: {} })));
    },
    async enqueueOne() {
      await h.queue.enqueue('noop', {});
    },
    async startWorkers(onJob) {
      // Default: only concurrency set (library defaults: prefetch 'auto', completed jobs kept).
      h.queue.work('noop', () => void onJob(), config === 'throughput' ? { concurrency: CONCURRENCY, prefetch: 1000 } : { concurrency: CONCURRENCY });
    },
    async stopWorkers() {
      await h.queue.stop();
    },
    async teardown() {
      await h.close();
    },
  };
}

function graphile(config: 'default' | 'throughput', localQueue = 500): Lib {
  let utils: WorkerUtils;
  let runner: Runner | undefined;
  let url: string;
  const logger = new Logger(() => () => {});
  return {
    name: `graphile-worker (${config})`,
    async setup(u) {
      url = u;
      utils = await makeWorkerUtils({ connectionString: url, logger });
      await utils.migrate();
    },
    async enqueue(n) {
      for (let i = 0; i < n; i += 20_000) {
        await utils.addJobs(Array.from({ length: Math.min(20_000, n - i) }, () => ({ identifier: 'noop', payload: {} })));
      }
    },
    async enqueueAll(n) {
      await utils.addJobs(Array.from({ length: n }, () => ({ identifier: 'noop', payload: {} })));
    },
    async enqueueOne() {
      await utils.addJob('noop', {});
    },
    async startWorkers(onJob) {
      runner = await run({
        connectionString: url,
        concurrency: CONCURRENCY,
        noHandleSignals: true,
        logger,
        taskList: { noop: async () => void onJob() },
        // Its documented throughput settings: a local queue and batched completion.
        preset: config === 'throughput' ? { worker: { localQueue: { size: localQueue }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } } : undefined,
      });
    },
    async stopWorkers() {
      await runner?.stop();
      runner = undefined;
    },
    async teardown() {
      await utils.release();
    },
  };
}

function pgBoss(config: 'default' | 'throughput'): Lib {
  let boss: PgBoss;
  return {
    name: `pg-boss (${config})`,
    async setup(url) {
      boss = new PgBoss({ connectionString: url, max: 12 });
      boss.on('error', () => {});
      await boss.start();
      await boss.createQueue('noop');
    },
    async enqueue(n) {
      for (let i = 0; i < n; i += 20_000) {
        await boss.insert(Array.from({ length: Math.min(20_000, n - i) }, () => ({ name: 'noop', data: {} })));
      }
    },
    async enqueueAll(n) {
      await boss.insert(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
    },
    async enqueueOne() {
      await boss.send('noop', {});
    },
    async startWorkers(onJob) {
      // pg-boss 10 polls (no LISTEN/NOTIFY); concurrency = several work() calls.
      const opts = config === 'throughput' ? { batchSize: 50, pollingIntervalSeconds: 0.5 } : {};
      for (let i = 0; i < CONCURRENCY; i++) {
        await boss.work('noop', opts, async (jobs) => {
          for (const _ of jobs) onJob();
        });
      }
    },
    async stopWorkers() {
      await boss.offWork('noop');
    },
    async teardown() {
      await boss.stop({ graceful: false, wait: true });
    },
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

async function withDb<T>(make: () => Lib, fn: (lib: Lib, db: string) => Promise<T>): Promise<T> {
  const db = await freshDb();
  const lib = make();
  await lib.setup(db.url);
  try {
    return await fn(lib, db.name);
  } finally {
    await lib.teardown().catch(() => {});
    await db.drop();
  }
}

/** (a) enqueue `n` jobs in one call: seconds. */
function enqueueBatch(make: () => Lib, n = N): Promise<number> {
  return withDb(make, async (lib) => {
    const t = performance.now();
    await lib.enqueueAll(n);
    return (performance.now() - t) / 1000;
  });
}

/** Counters read before and after a drain (BENCH_ANATOMY). */
interface Sample {
  node: number;
  pg: number;
  wal: { records: number; fpi: number; bytes: number; syncs: number };
  commits: number;
}

/** What one drain cost per job (BENCH_ANATOMY). */
interface Anatomy {
  nodeUs: number;
  pgUs: number;
  walRecords: number;
  walFpi: number;
  walBytes: number;
  walSyncs: number;
  commits: number;
  statements: { query: string; calls: number; usPerJob: number }[];
}
const anatomies = new Map<string, Anatomy[]>();

async function sample(db: string): Promise<Sample> {
  // WAL syncs: pg_stat_wal.wal_sync up to PostgreSQL 17, pg_stat_io's WAL fsyncs from 18.
  const [w] = await admin<{ r: string; f: string; b: string; s: string }>(
    `SELECT wal_records::text AS r, wal_fpi::text AS f, wal_bytes::text AS b,
            coalesce(to_jsonb(w) ->> 'wal_sync', (SELECT sum(fsyncs)::text FROM pg_stat_io WHERE object = 'wal')) AS s FROM pg_stat_wal w`,
  );
  const [c] = await admin<{ c: string }>(`SELECT coalesce(sum(xact_commit), 0)::text AS c FROM pg_stat_database WHERE datname = '${db}'`);
  const cpu = process.cpuUsage();
  return { node: (cpu.user + cpu.system) / 1e6, pg: postgresCpuSeconds(), wal: { records: +w.r, fpi: +w.f, bytes: +w.b, syncs: +w.s }, commits: +c.c };
}

/** (b) drain 20k: jobs/s. */
function drain(make: () => Lib, name = ''): Promise<number> {
  return withDb(make, async (lib, db) => {
    await lib.enqueue(N);
    let done = 0;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    if (ANATOMY) {
      await admin(`SELECT pg_stat_statements_reset()`);
      await admin(`SELECT pg_stat_reset_shared('wal')`);
    }
    const before = ANATOMY ? await sample(db) : null;
    const t = performance.now();
    await lib.startWorkers(() => {
      if (++done === N) finish();
    });
    await finished;
    const s = (performance.now() - t) / 1000;
    const cpuAfter = before ? { node: process.cpuUsage(), pg: postgresCpuSeconds() } : null;
    await lib.stopWorkers();
    if (before && cpuAfter) {
      // Backends send their WAL and commit counts to the statistics when they exit (or
      // once a second at most while busy): close the library's connections and wait for
      // them to be gone before reading.
      await lib.teardown();
      while ((await admin<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = '${db}'`))[0].n > 0) await new Promise((r) => setTimeout(r, 20));
      const after = { ...(await sample(db)), node: (cpuAfter.node.user + cpuAfter.node.system) / 1e6, pg: cpuAfter.pg };
      const top = await admin<{ query: string; calls: string; ms: number }>(
        `SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g') AS query, calls::text, total_exec_time AS ms
           FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '${db}' AND toplevel
          ORDER BY total_exec_time DESC LIMIT 4`,
      );
      const a: Anatomy = {
        nodeUs: ((after.node - before.node) / N) * 1e6,
        pgUs: ((after.pg - before.pg) / N) * 1e6,
        walRecords: (after.wal.records - before.wal.records) / N,
        walFpi: (after.wal.fpi - before.wal.fpi) / N,
        walBytes: (after.wal.bytes - before.wal.bytes) / N,
        walSyncs: (after.wal.syncs - before.wal.syncs) / N,
        commits: (after.commits - before.commits) / N,
        statements: top.map((x) => ({ query: x.query, calls: +x.calls, usPerJob: (x.ms * 1000) / N })),
      };
      anatomies.set(name, [...(anatomies.get(name) ?? []), a]);
      console.log(`#   anatomy ${name.split(' (')[0]} ${name.match(/\((\w+)/)?.[1]}: ${Math.round(N / s)} jobs/s; per job: Node ${a.nodeUs.toFixed(1)} µs, Postgres ${a.pgUs.toFixed(1)} µs CPU; WAL ${a.walRecords.toFixed(2)} records, ${a.walFpi.toFixed(3)} FPI, ${a.walBytes.toFixed(0)} B, ${a.walSyncs.toFixed(4)} syncs; ${a.commits.toFixed(4)} commits`);
      for (const st of a.statements) console.log(`#     ${st.usPerJob.toFixed(1)} µs/job, ${st.calls} calls: ${st.query}`);
    }
    return N / s;
  });
}

/** (c) enqueue-to-start latency with idle workers: ms samples. */
function latency(make: () => Lib, samples: number): Promise<number[]> {
  return withDb(make, async (lib) => {
    let started: (() => void) | null = null;
    await lib.startWorkers(() => started?.());
    await new Promise((r) => setTimeout(r, 1000)); // let the workers go idle
    const out: number[] = [];
    for (let i = 0; i < samples; i++) {
      const got = new Promise<void>((r) => (started = r));
      const t = performance.now();
      await lib.enqueueOne();
      await got;
      out.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 5));
    }
    await lib.stopWorkers();
    return out;
  });
}

/** (d) a long run: jobs/s of the first and of the last 100k. */
function longRun(make: () => Lib, total: number): Promise<{ first: number; last: number }> {
  return withDb(make, async (lib) => {
    await lib.enqueue(total);
    let done = 0;
    const marks = new Map<number, number>();
    const want = new Set([100_000, total - 100_000, total]);
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    marks.set(0, performance.now());
    await lib.startWorkers(() => {
      done++;
      if (want.has(done)) marks.set(done, performance.now());
      if (done === total) finish();
    });
    await finished;
    await lib.stopWorkers();
    const first = 100_000 / ((marks.get(100_000)! - marks.get(0)!) / 1000);
    const last = 100_000 / ((marks.get(total)! - marks.get(total - 100_000)!) / 1000);
    return { first, last };
  });
}

const version = (await admin<{ server_version: string }>('SHOW server_version'))[0].server_version;
console.log(`# Job queue benchmark — PostgreSQL ${version}, ${cpus().length} CPUs (${cpus()[0]?.model}), load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
console.log(`# ${RUNS} runs, medians; drain = ${N} no-op jobs, concurrency ${CONCURRENCY}, one process\n`);

const libs: [string, () => Lib][] = [
  ['pgherald (default: library defaults, concurrency 10)', () => herald('default')],
  ['pgherald (throughput: prefetch 1000, keepCompleted false)', () => herald('throughput')],
  ['graphile-worker (default)', () => graphile('default')],
  ['graphile-worker (throughput: localQueue 500, batched completion)', () => graphile('throughput')],
  ['graphile-worker (throughput: localQueue 1000, batched completion)', () => graphile('throughput', 1000)],
  ['pg-boss (default)', () => pgBoss('default')],
  ['pg-boss (throughput: batchSize 50, poll 0.5 s)', () => pgBoss('throughput')],
];

// Rounds interleave the libraries (A, B, C, A, B, C, ...): a swing of the shared machine
// hits every library of a round alike. Medians over rounds; ratios per round.
const only = process.env.BENCH_LIBS?.split(',');
const chosen = RUNS > 0 ? libs.filter(([n]) => !only || only.some((o) => n.includes(o))) : [];
type Figures = { enq: number[]; enq100: number[]; dr: number[]; p50: number[]; p99: number[] };
const figs = new Map<string, Figures>(chosen.map(([n]) => [n, { enq: [], enq100: [], dr: [], p50: [], p99: [] }]));
for (let r = 0; r < RUNS; r++) {
  const round: string[] = [];
  for (const [name, make] of chosen) {
    const f = figs.get(name)!;
    const polls = name.startsWith('pg-boss');
    f.enq.push(await enqueueBatch(make));
    f.enq100.push(await enqueueBatch(make, 100_000));
    f.dr.push(await drain(make, name));
    const lat = await latency(make, polls ? Math.min(40, SAMPLES) : SAMPLES);
    f.p50.push(pct(lat, 0.5));
    f.p99.push(pct(lat, 0.99));
    round.push(`${name.split(' (')[0]} ${name.match(/\((\w+)/)?.[1]}: ${Math.round(f.dr[r])} jobs/s, ${f.enq[r].toFixed(3)} s / ${f.enq100[r].toFixed(3)} s`);
  }
  console.log(`# round ${r + 1} (load ${loadavg()[0].toFixed(1)}): ${round.join('; ')}`);
}
if (RUNS > 0) {
  console.log('\n| library (config) | enqueue 20k, one call (s) | enqueue 100k, one call (s) | drain 20k (jobs/s) | latency p50 (ms) | latency p99 (ms) |');
  console.log('|---|---|---|---|---|---|');
  for (const [name, f] of figs) {
    console.log(`| ${name} | ${median(f.enq).toFixed(3)} | ${median(f.enq100).toFixed(3)} | ${Math.round(median(f.dr))} | ${median(f.p50).toFixed(1)} | ${median(f.p99).toFixed(1)} |`);
  }
  // Same-round ratios against graphile-worker's best configuration of that round.
  const hd = figs.get('pgherald (default: library defaults, concurrency 10)');
  const gw = [...figs].filter(([n]) => n.startsWith('graphile-worker'));
  if (hd && gw.length > 0) {
    const rows = hd.dr.map((d, r) => {
      const best = Math.max(...gw.map(([, f]) => f.dr[r]));
      const enq = Math.min(...gw.map(([, f]) => f.enq[r]));
      const enq100 = Math.min(...gw.map(([, f]) => f.enq100[r]));
      return { drain: d / best, enq: enq / hd.enq[r], enq100: enq100 / hd.enq100[r] };
    });
    console.log('\n| round | drain: pgherald default / graphile best | enqueue 20k: graphile / pgherald | enqueue 100k: graphile / pgherald |');
    console.log('|---|---|---|---|');
    rows.forEach((x, r) => console.log(`| ${r + 1} | ${x.drain.toFixed(2)} | ${x.enq.toFixed(2)} | ${x.enq100.toFixed(2)} |`));
    console.log(`| median | ${median(rows.map((x) => x.drain)).toFixed(2)} | ${median(rows.map((x) => x.enq)).toFixed(2)} | ${median(rows.map((x) => x.enq100)).toFixed(2)} |`);
  }
  if (anatomies.size > 0) {
    console.log('\n| drain, per job (medians) | Node CPU µs | Postgres CPU µs | WAL records | WAL FPI | WAL bytes | WAL syncs | commits |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const [name, as] of anatomies) {
      const m = (f: (a: Anatomy) => number, d: number) => median(as.map(f)).toFixed(d);
      console.log(`| ${name} | ${m((a) => a.nodeUs, 1)} | ${m((a) => a.pgUs, 1)} | ${m((a) => a.walRecords, 2)} | ${m((a) => a.walFpi, 3)} | ${m((a) => a.walBytes, 0)} | ${m((a) => a.walSyncs, 4)} | ${m((a) => a.commits, 4)} |`);
    }
  }
  console.log(`\n# load at end ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
}

if (MILLION > 0) {
  console.log(`\n| library (throughput config) | ${MILLION} jobs: first 100k (jobs/s) | last 100k (jobs/s) | last / first |`);
  console.log('|---|---|---|---|');
  const long: [string, () => Lib][] = [
    ['pgherald', () => herald('throughput')],
    ['graphile-worker', () => graphile('throughput')],
    ['pg-boss', () => pgBoss('throughput')],
  ];
  for (const [name, make] of long) {
    if (!MILLION_LIBS.includes(name)) continue;
    const { first, last } = await longRun(make, MILLION);
    console.log(`| ${name} | ${Math.round(first)} | ${Math.round(last)} | ${(last / first).toFixed(2)} |`);
  }
}

await pgServer.stop();
process.exit(0);
