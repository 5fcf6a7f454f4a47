/**
 * Where a delivered topic message's CPU goes: messages/s per group, and CPU of this
 * Node process and of the Postgres cluster per delivery, for G groups consuming the
 * same N messages at once (one consumer each, batches of 500), then the top statements
 * by execution time (`pg_stat_statements`, nested statements included).
 *
 *   node --import tsx bench/topics-profile.ts [messages=100000] [groups=1] [rounds=3]
 *
 * `BENCH_CPU_PROFILE=<file>` also writes a V8 CPU profile of the last round's consume.
 * Postgres (embedded unless DATABASE_URL) at its default durability; each round uses a
 * fresh topic of 8 key partitions, published in batches of 500 before the timing.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { performance } from 'node:perf_hooks';
import { createHerald } from '../src/index.js';
import { postgresCpuSeconds } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';
import { topicPayload as payload } from './support/topic-message.js';

const N = Number(process.argv[2] ?? 100_000);
const GROUPS = Number(process.argv[3] ?? 1);
const ROUNDS = Number(process.argv[4] ?? 3);
const BATCH = 500;
const PROFILE = process.env.BENCH_CPU_PROFILE;

const server = await benchPostgres({ max_connections: 200, shared_buffers: '256MB', shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all' });
const herald = createHerald({ connectionString: server.url, poolSize: 12 });
const inspector = new Session();
try {
  await herald.migrate();
  await herald.driver.executor.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  inspector.connect();
  await inspector.post('Profiler.enable');
  for (let round = 0; round < ROUNDS; round++) {
    const topic = `profile-${round}`;
    await herald.topics.create(topic, { partitions: 8 });
    for (let g = 0; g < GROUPS; g++) await herald.topics.createGroup(topic, `g${g}`, 'earliest');
    for (let i = 0; i < N; i += BATCH) {
      await herald.topics.publishMany(topic, Array.from({ length: Math.min(BATCH, N - i) }, (_, j) => ({ payload: payload(i + j), key: `k${(i + j) % 100}` })));
    }
    await herald.driver.executor.query('SELECT pg_stat_statements_reset()');
    const profiling = PROFILE !== undefined && round === ROUNDS - 1;
    if (profiling) await inspector.post('Profiler.start');
    const counts = new Array<number>(GROUPS).fill(0);
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const pg0 = postgresCpuSeconds();
    const node0 = process.cpuUsage();
    const t = performance.now();
    const consumers = counts.map((_, g) =>
      herald.topics.consumer(topic, `g${g}`, ({ messages }) => {
        for (const m of messages) if (m.payload === undefined) throw new Error('no payload');
        counts[g] += messages.length;
        if (counts.every((c) => c >= N)) done();
      }, { batchSize: BATCH }),
    );
    await Promise.all(consumers.map((c) => c.start()));
    await finished;
    const s = (performance.now() - t) / 1000;
    const node = process.cpuUsage(node0);
    const pg = postgresCpuSeconds() - pg0;
    if (profiling) {
      const { profile } = await inspector.post('Profiler.stop');
      writeFileSync(PROFILE, JSON.stringify(profile));
    }
    await Promise.all(consumers.map((c) => c.stop()));
    const nodeS = (node.user + node.system) / 1e6;
    const deliveries = N * GROUPS;
    console.log(
      `round ${round + 1}: ${Math.round(N / s)} msg/s per group (${GROUPS} group${GROUPS === 1 ? '' : 's'}); ` +
        `Node ${((nodeS * 1e6) / deliveries).toFixed(2)} µs and Postgres ${((pg * 1e6) / deliveries).toFixed(2)} µs of CPU a delivery ` +
        `(${(nodeS / s).toFixed(2)} and ${(pg / s).toFixed(2)} cores)`,
    );
    const { rows } = await herald.driver.executor.query<{ q: string; calls: string; ms: string; rows: string }>(
      `SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q, calls, round(total_exec_time::numeric, 1) AS ms, rows
         FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 6`,
    );
    for (const r of rows) console.log(`  ${String(r.ms).padStart(8)} ms ${String(r.calls).padStart(6)} calls ${String(r.rows).padStart(7)} rows  ${r.q}`);
  }
} finally {
  inspector.disconnect();
  await herald.close();
  await server.stop();
}
