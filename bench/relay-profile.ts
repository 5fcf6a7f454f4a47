/**
 * Where a relay drain's time goes, for one or more checkouts of pgherald (issue 15):
 * the outbox workload of bench/claim-ab.ts (20,000 events over 100 keys, `relay({ sink })`
 * with defaults, a no-op sink), run for each checkout in turn in its own fresh database
 * of one cluster (pg_stat_statements loaded), reporting events/s, CPU seconds of Node
 * and of Postgres, WAL bytes and records, commits, and the statements by execution time.
 *
 *   node --import tsx bench/relay-profile.ts [--n 20000] <checkout> [<checkout> ...]
 *
 * With RELAY_CPU_PROFILE=<dir>, Node's CPU profile of each drain (and only of the drain)
 * is written there, one `.cpuprofile` per checkout (open it in Chrome's DevTools).
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { postgresCpuSeconds } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';

const args = process.argv.slice(2);
const nAt = args.indexOf('--n');
const N = nAt >= 0 ? Number(args.splice(nAt, 2)[1]) : 20_000;
const roots = args.map((a) => resolve(a));

const postgresCpu = () => postgresCpuSeconds();

const server = await benchPostgres({ shared_buffers: '256MB', max_connections: 200, shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track_planning': 'on' });
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
let dbNo = 0;
for (const root of roots) {
  const db = `profile_${dbNo++}`;
  await admin.query(`CREATE DATABASE ${db}`);
  const url = new URL(server.url);
  url.pathname = `/${db}`;
  const lib = await import(pathToFileURL(join(root, 'src/index.ts')).href + `?${db}`);
  const herald = lib.createHerald({ connectionString: url.toString() });
  await herald.migrate();
  const c = new pg.Client({ connectionString: url.toString() });
  await c.connect();
  await c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  for (let i = 0; i < N; i += 5000) {
    await herald.outbox.addMany(Array.from({ length: Math.min(5000, N - i) }, (_, j) => ({ type: 'ab', key: `k${(i + j) % 100}`, payload: { i: i + j } })));
  }
  await c.query('CHECKPOINT');
  await c.query('SELECT pg_stat_statements_reset()');
  const wal0 = (await c.query('SELECT wal_bytes::float8 AS b, wal_records::float8 AS r FROM pg_stat_wal')).rows[0];
  const x0 = (await c.query('SELECT xact_commit::float8 AS n FROM pg_stat_database WHERE datname = current_database()')).rows[0].n;
  let seen = 0;
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  const profileDir = process.env.RELAY_CPU_PROFILE;
  const inspector = profileDir ? new Session() : undefined;
  if (inspector) {
    inspector.connect();
    await inspector.post('Profiler.enable');
    await inspector.post('Profiler.start');
  }
  const pg0 = postgresCpu();
  const node0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const relay = herald.outbox.relay({ sink: () => void (++seen >= N && done()) });
  relay.on('relay:problem', (err: Error) => {
    console.error(`relay:problem ${err.message}`);
    process.exitCode = 1;
    done();
  });
  relay.start?.();
  await all;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const node = process.cpuUsage(node0);
  const pgCpu = postgresCpu() - pg0;
  if (inspector) {
    const { profile } = await inspector.post('Profiler.stop');
    writeFileSync(join(profileDir!, `${db}.cpuprofile`), JSON.stringify(profile));
    inspector.disconnect();
  }
  await herald.close();
  const wal1 = (await c.query('SELECT wal_bytes::float8 AS b, wal_records::float8 AS r FROM pg_stat_wal')).rows[0];
  const x1 = (await c.query('SELECT xact_commit::float8 AS n FROM pg_stat_database WHERE datname = current_database()')).rows[0].n;
  const { rows } = await c.query(
    `SELECT calls::int, round(total_exec_time::numeric, 1)::float8 AS ms, round(mean_exec_time::numeric, 3)::float8 AS mean_ms, round(total_plan_time::numeric, 1)::float8 AS plan_ms, rows::int,
            wal_bytes::float8 AS wal, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
       FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      ORDER BY total_exec_time + total_plan_time DESC LIMIT 10`,
  );
  await c.end();
  console.log(`\n== ${root}: ${N} events in ${seconds.toFixed(2)} s = ${(N / seconds).toFixed(0)}/s`);
  console.log(`   CPU: node ${((node.user + node.system) / 1e6).toFixed(2)} s, postgres ${pgCpu.toFixed(2)} s; WAL ${((wal1.b - wal0.b) / N).toFixed(0)} bytes and ${((wal1.r - wal0.r) / N).toFixed(2)} records per event; commits ${x1 - x0} (with the stats queries)`);
  console.log('   calls exec ms    mean plan ms   rows   WAL/call  statement');
  for (const r of rows) console.log(`   ${String(r.calls).padStart(5)} ${String(r.ms).padStart(7)} ${String(r.mean_ms).padStart(7)} ${String(r.plan_ms).padStart(7)} ${String(r.rows).padStart(6)} ${String(Math.round(r.wal / Math.max(1, r.calls))).padStart(9)}  ${r.query}`);
  await admin.query(`DROP DATABASE ${db} WITH (FORCE)`);
}
await admin.end();
await server.stop();
