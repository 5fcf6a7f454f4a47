/**
 * Where a drain's time goes: jobs/s, and CPU seconds of this Node process and of the
 * Postgres server, for one pgherald worker configuration.
 *
 *   node --import tsx bench/queue-profile.ts [jobs] [prefetch] [concurrency]
 */
import { performance } from 'node:perf_hooks';
import { Herald } from '../src/client.js';
import { postgresCpuSeconds } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';

const total = Number(process.argv[2] ?? 100_000);
const prefetch = process.argv[3] === 'auto' ? 'auto' : Number(process.argv[3] ?? 100);
const concurrency = Number(process.argv[4] ?? 10);
const keepCompleted = process.argv[5] !== 'delete';

const postgresCpu = () => postgresCpuSeconds();

const server = await benchPostgres({ max_connections: 200, shared_buffers: '256MB', shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track_planning': 'on' });
const h = new Herald({ connectionString: server.url, poolSize: 10, queue: { keepCompleted } });
await h.migrate();
await h.driver.executor.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
for (let i = 0; i < total; i += 20_000) {
  await h.queue.enqueueMany(Array.from({ length: Math.min(20_000, total - i) }, () => ({ kind: 'noop', payload: {} })));
}
let done = 0;
let finish!: () => void;
const finished = new Promise<void>((r) => (finish = r));
await h.driver.executor.query('SELECT pg_stat_statements_reset()');
const pg0 = postgresCpu();
const node0 = process.cpuUsage();
const t = performance.now();
let mark = performance.now();
h.queue.work(
  'noop',
  () => {
    if (++done % 100_000 === 0) {
      const now = performance.now();
      console.log(`  ${done}: ${Math.round(100_000 / ((now - mark) / 1000))} jobs/s`);
      mark = now;
    }
    if (done === total) finish();
  },
  { concurrency, prefetch },
);
await finished;
const s = (performance.now() - t) / 1000;
const node = process.cpuUsage(node0);
const pgs = postgresCpu() - pg0;
console.log(
  `${total} jobs, prefetch ${prefetch}, concurrency ${concurrency}, ${keepCompleted ? 'keep' : 'delete'} completed: ${Math.round(total / s)} jobs/s in ${s.toFixed(2)} s; ` +
    `node cpu ${((node.user + node.system) / 1e6).toFixed(2)} s, postgres cpu ${pgs.toFixed(2)} s`,
);
const vac = await h.driver.executor.query(`SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, pg_size_pretty(pg_total_relation_size('herald.jobs')) AS size FROM pg_stat_user_tables WHERE relname = 'jobs'`);
console.log(vac.rows[0]);
const { rows } = await h.driver.executor.query<{ q: string; calls: number; ms: number; rows: number }>(
  `SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q, calls, round(total_exec_time)::int AS ms, round(total_plan_time)::int AS plan, rows FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8`,
);
for (const r of rows) console.log(`${String(r.ms).padStart(6)} ms (+${(r as any).plan} plan) ${String(r.calls).padStart(6)} calls ${String(r.rows).padStart(7)} rows  ${r.q}`);
await h.queue.stop();
await h.close();
await server.stop();
process.exit(0);
