/**
 * The job queue while a write transaction stays open elsewhere in the cluster (in another
 * database: a neighbour's `psql` session, a batch job, `pg_dump`'s snapshot does the
 * same): jobs enqueued one at a time at a fixed rate, one worker of concurrency 10,
 * enqueue → start latency per 5-second window. Without the claim cursor every claim
 * walks the index entries of every job claimed since the transaction began (nothing can
 * remove them or mark them dead while it is open).
 *
 *   node --import tsx bench/queue-long-tx.ts [--seconds 40] [--rate 1000] [--no-hold]
 *        [--library <checkout>]
 *
 * `--library`: run another checkout's pgherald (e.g. a worktree of an older commit) in
 * the same way. Autovacuum is off, so that the table's cleanup does not vary between
 * runs (with the transaction open it could not remove the claimed jobs' entries anyway);
 * an ANALYZE runs after 15 s (the planner's statistics of a fresh table). Prints the
 * windows and the statements that took the most time (pg_stat_statements, reset by the
 * ANALYZE). Durability at Postgres' defaults.
 */
import { resolve } from 'node:path';
import pg from 'pg';
import { benchPostgres } from './support/postgres.js';
import { flag, option } from './support/args.js';

const SECONDS = Number(option('seconds', '40'));
const RATE = Number(option('rate', '1000'));
const HOLD = !flag('no-hold');
const library = resolve(option('library', '.'));
const { createHerald } = (await import(`${library}/src/index.ts`)) as typeof import('../src/index.js');

const server = await benchPostgres({
  autovacuum: 'off',
  shared_buffers: '256MB',
  shared_preload_libraries: 'pg_stat_statements',
  'pg_stat_statements.track': 'all',
});
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
await admin.query('CREATE DATABASE neighbour');
const url = new URL(server.url);
url.pathname = '/neighbour';
const neighbour = new pg.Client({ connectionString: url.toString() });
await neighbour.connect();
await neighbour.query('CREATE TABLE w (v int)');
if (HOLD) {
  await neighbour.query('BEGIN');
  await neighbour.query('INSERT INTO w VALUES (1)');
}
const h = createHerald({ connectionString: server.url, poolSize: 20 });
try {
  await h.migrate();
  const sent = new Float64Array(RATE * SECONDS);
  const latency = new Float64Array(RATE * SECONDS).fill(NaN);
  let started = 0;
  const w = h.queue.work<{ i: number }>(
    'noop',
    (job) => {
      latency[job.payload.i] = performance.now() - sent[job.payload.i];
      started++;
    },
    { concurrency: 10 },
  );
  const analyzed = new Promise<void>((done) =>
    setTimeout(() => void admin.query('ANALYZE').then(() => admin.query('SELECT pg_stat_statements_reset()')).then(() => done()), 15_000),
  );
  const t0 = performance.now();
  const inflight: Promise<unknown>[] = [];
  for (let i = 0; i < RATE * SECONDS; i++) {
    const wait = t0 + (i * 1000) / RATE - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    sent[i] = performance.now();
    inflight.push(h.queue.enqueue('noop', { i }));
    if (inflight.length >= 64) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  // Every job starts (no deadline: a job that never starts shows as a hung run).
  while (started < RATE * SECONDS) await new Promise((r) => setTimeout(r, 20));
  await w.stop();
  await analyzed;
  const load = (await import('node:os')).loadavg()[0].toFixed(1);
  console.log(`queue, ${RATE} jobs/s for ${SECONDS} s, ${HOLD ? 'a write transaction held open in another database' : 'no transaction held'}; library ${library}; load ${load}`);
  console.log('| seconds | p50 ms | p99 ms |\n|---|---:|---:|');
  for (let s = 0; s < SECONDS; s += 5) {
    const xs = Array.from(latency.subarray(s * RATE, Math.min(SECONDS, s + 5) * RATE)).sort((a, b) => a - b);
    console.log(`| ${s}–${s + 5} | ${xs[xs.length >> 1].toFixed(1)} | ${xs[Math.floor(xs.length * 0.99)].toFixed(1)} |`);
  }
  const { rows } = await admin.query(
    `SELECT calls, round((total_exec_time / calls)::numeric, 3) AS mean_ms, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q
       FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      ORDER BY total_exec_time DESC LIMIT 5`,
  );
  console.log('\nafter the ANALYZE, most time: calls, mean ms, statement');
  for (const r of rows) console.log(String(r.calls).padStart(7), String(r.mean_ms).padStart(9), ' ', r.q);
} finally {
  await h.close();
  await neighbour.query('ROLLBACK').catch(() => {});
  await neighbour.end();
  await admin.end();
  await server.stop();
}
