/**
 * Where a limited drain's time goes: the drain of bench/queue-limits.ts for each
 * configuration given (unlimited, concurrency, per-key, rate), one after the other, each in a
 * fresh database, with pg_stat_statements tracking every statement, those inside
 * `job_admit` included (`track = all`). Prints jobs/s, Postgres CPU per job, claims, and the
 * statements by total time per claim.
 *
 *   node --import tsx bench/limits-profile.ts [config ...]
 *
 * Environment: BENCH_JOBS (default 20000), BENCH_WORKERS (4), BENCH_CONCURRENCY (10),
 * BENCH_TOP (statements shown, default 12), BENCH_PERF (a file prefix: record the drain with
 * `perf record -e cpu-clock -a -g` into <prefix>.<config>.data, for `perf report --comm postgres`).
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { Herald } from '../src/client.js';
import { postgresCpuSeconds } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';

const JOBS = Number(process.env.BENCH_JOBS ?? 20_000);
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 10);
const TOP = Number(process.env.BENCH_TOP ?? 12);
const configs = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['unlimited', 'per-key'];

const server = await benchPostgres({
  max_connections: 200,
  shared_buffers: '256MB',
  shared_preload_libraries: 'pg_stat_statements',
  'pg_stat_statements.track': 'all',
});
const pgCpu = () => (server.cluster?.pid ? postgresCpuSeconds(server.cluster.pid) : NaN);

async function admin(sql: string, db = 'postgres'): Promise<Record<string, any>[]> {
  const url = new URL(server.url);
  url.pathname = '/' + db;
  const c = new pg.Client({ connectionString: url.toString() });
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
  }
}

let n = 0;
try {
  for (const config of configs) {
    const name = `limits_profile_${n++}`;
    await admin(`CREATE DATABASE ${name}`);
    const url = new URL(server.url);
    url.pathname = '/' + name;
    const h = new Herald({ connectionString: url.toString(), poolSize: 10 });
    try {
      await h.migrate();
      await admin('CREATE EXTENSION IF NOT EXISTS pg_stat_statements', name);
      if (config === 'concurrency') await h.queue.setLimit({ concurrency: 100_000 });
      if (config === 'per-key') await h.queue.setLimit({ concurrency: 100_000, partitionBy: 'k' });
      if (config === 'rate') await h.queue.setLimit({ rate: { count: 1_000_000, periodMs: 100 } });
      for (let i = 0; i < JOBS; i += 10_000) {
        await h.queue.enqueueMany(Array.from({ length: Math.min(10_000, JOBS - i) }, (_, j) => ({ kind: 'noop', payload: { k: `c${(i + j) % 50}` } })));
      }
      await admin('CHECKPOINT');
      await admin('SELECT pg_stat_statements_reset()', name);
      let done = 0;
      let finish!: () => void;
      const finished = new Promise<void>((r) => (finish = r));
      const perf = process.env.BENCH_PERF
        ? spawn('perf', ['record', '-e', 'cpu-clock', '-F', '1999', '-a', '-g', '-o', `${process.env.BENCH_PERF}.${config}.data`], { stdio: 'ignore' })
        : null;
      if (perf) await new Promise((r) => setTimeout(r, 500));
      const c0 = pgCpu();
      const t0 = performance.now();
      for (let w = 0; w < WORKERS; w++) {
        h.queue.work('noop', () => void (++done === JOBS && finish()), { concurrency: CONCURRENCY });
      }
      await finished;
      const s = (performance.now() - t0) / 1000;
      const cpu = pgCpu() - c0;
      if (perf) {
        // The backends of this drain (perf report --pid <these>): other clusters run postgres too.
        const pids = await admin(`SELECT string_agg(pid::text, ',') AS p FROM pg_stat_activity WHERE datname = '${name}' OR backend_type <> 'client backend'`);
        console.log(`perf pids ${config}: ${pids[0].p}`);
        perf.kill('SIGINT');
        await new Promise((r) => perf.once('exit', r));
      }
      await h.queue.stop();
      const rows = await admin(
        `SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS q, calls, total_exec_time AS ms, rows, shared_blks_hit + shared_blks_read AS blks, wal_records AS wal
           FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY total_exec_time DESC LIMIT ${TOP}`,
        name,
      );
      console.log(`\n## ${config}: ${Math.round(JOBS / s)} jobs/s, ${Math.round((cpu * 1e6) / JOBS)} µs Postgres CPU per job`);
      for (const r of rows) {
        console.log(
          `${(r.ms / JOBS * 1000).toFixed(1).padStart(6)} µs/job ${(r.ms / r.calls).toFixed(3).padStart(8)} ms/call ${String(r.calls).padStart(6)} calls ${String(Math.round(r.blks / r.calls)).padStart(6)} blks/call ${(r.blks / JOBS).toFixed(1).padStart(6)} blks/job ${(r.wal / JOBS).toFixed(1).padStart(5)} wal/job  ${r.q}`,
        );
      }
    } finally {
      await h.close();
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    }
  }
} finally {
  await server.stop();
}
