/**
 * Topics benchmark: pgherald topics beside Redis Streams (XADD / XREADGROUP + XACK),
 * on this machine, in the same run.
 *
 *   node --import tsx bench/topics.ts            # 3 runs, markdown table of medians
 *   node --import tsx bench/topics.ts --runs 1 --n 20000   (or BENCH_RUNS, BENCH_N)
 *   npm run bench -- topics -- --runs 1
 *
 * Postgres: its own throwaway cluster (PostgresCluster; or DATABASE_URL), default
 * durability (fsync on, synchronous_commit on). Redis: a redis-server started here on a
 * free port with AOF (appendfsync everysec), its usual durable setting.
 *
 * Measures: publish one message per call (8 concurrent publishers), publish in batches
 * of 500, and consume: 3 groups reading the same N messages at once (one consumer per
 * group, batches of 500), messages/s per group.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'redis';
import { createHerald } from '../src/index.js';
import { freePort, PostgresCluster } from '../src/embedded/index.js';

/** `--runs N` and `--n N` (as `npm run bench -- topics -- --runs 1` passes them), else BENCH_RUNS / BENCH_N. */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const N = Number(arg('n') ?? process.env.BENCH_N ?? 50_000);
const SINGLE = Math.max(1000, Math.round(N / 10));
const RUNS = Number(arg('runs') ?? process.env.BENCH_RUNS ?? 3);
const BATCH = 500;
const GROUPS = 3;
const payload = (i: number) => ({ orderId: i, customer: `c-${i % 100}`, amount: (i * 7) % 1000, note: 'x'.repeat(40) });

type Row = { system: string; publishSingle: number; publishBatched: number; consumePerGroup: number; consumeOneGroup: number };

async function timeIt(fn: () => Promise<void>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function pool<T>(items: T[], concurrency: number, fn: (x: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (i < items.length) await fn(items[i++]);
  }));
}

async function benchPg(url: string, run: number): Promise<Row> {
  const herald = createHerald({ connectionString: url, poolSize: 12 });
  await herald.migrate();
  const topic = `bench-${run}-${Date.now()}`;
  await herald.topics.create(topic, { partitions: 8 });
  const single = await timeIt(() =>
    pool([...Array(SINGLE).keys()], 8, async (i) => {
      await herald.topics.publish(topic + '-single', payload(i), { key: `k${i % 100}` });
    }),
  );
  const batched = await timeIt(async () => {
    for (let i = 0; i < N; i += BATCH) {
      await herald.topics.publishMany(topic, Array.from({ length: Math.min(BATCH, N - i) }, (_, j) => ({ payload: payload(i + j), key: `k${(i + j) % 100}` })));
    }
  });
  const counts = new Array(GROUPS).fill(0);
  const consumers = counts.map((_, g) =>
    herald.topics.consumer(topic, `g${g}`, ({ messages }) => {
      counts[g] += messages.length;
    }, { batchSize: BATCH }),
  );
  const consume = await timeIt(async () => {
    await Promise.all(consumers.map((c) => c.start()));
    while (counts.some((c) => c < N)) await new Promise((r) => setTimeout(r, 5));
  });
  await Promise.all(consumers.map((c) => c.stop()));
  // One more group, consuming the whole topic alone (the machine's two cores to itself).
  let solo = 0;
  const soloConsumer = herald.topics.consumer(topic, 'solo', ({ messages }) => {
    solo += messages.length;
  }, { batchSize: BATCH });
  const alone = await timeIt(async () => {
    await soloConsumer.start();
    while (solo < N) await new Promise((r) => setTimeout(r, 5));
  });
  await soloConsumer.stop();
  await herald.close();
  return { system: 'pgherald topics', publishSingle: SINGLE / single, publishBatched: N / batched, consumePerGroup: N / consume, consumeOneGroup: N / alone };
}

async function startRedis(dir: string): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn('/usr/bin/redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', dir], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    const c = createClient({ url });
    c.on('error', () => {});
    try {
      await c.connect();
      await c.ping();
      await c.quit();
      return { url, proc };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error('redis-server did not start');
}

async function benchRedis(url: string, run: number): Promise<Row> {
  const client = createClient({ url });
  client.on('error', () => {});
  await client.connect();
  const key = `bench-${run}`;
  const single = await timeIt(() =>
    pool([...Array(SINGLE).keys()], 8, async (i) => {
      await client.sendCommand(['XADD', key + '-single', '*', 'k', `k${i % 100}`, 'p', JSON.stringify(payload(i))]);
    }),
  );
  for (let g = 0; g <= GROUPS; g++) await client.sendCommand(['XGROUP', 'CREATE', key, g === GROUPS ? 'solo' : `g${g}`, '0', 'MKSTREAM']);
  const batched = await timeIt(async () => {
    for (let i = 0; i < N; i += BATCH) {
      // One pipelined round trip per batch (node-redis pipelines commands sent in one tick).
      await Promise.all(
        Array.from({ length: Math.min(BATCH, N - i) }, (_, j) => client.sendCommand(['XADD', key, '*', 'k', `k${(i + j) % 100}`, 'p', JSON.stringify(payload(i + j))])),
      );
    }
  });
  const readers = await Promise.all(
    Array.from({ length: GROUPS }, async () => {
      const c = createClient({ url });
      c.on('error', () => {});
      await c.connect();
      return c;
    }),
  );
  const readGroup = async (c: (typeof readers)[number], group: string) => {
    let got = 0;
    while (got < N) {
      const reply = (await c.sendCommand(['XREADGROUP', 'GROUP', group, 'c1', 'COUNT', String(BATCH), 'BLOCK', '1000', 'STREAMS', key, '>'])) as
        | Record<string, [string, string[]][]>
        | [string, [string, string[]][]][]
        | null;
      if (!reply) continue;
      // node-redis returns the streams as an object keyed by stream name (or pairs).
      const entries = Array.isArray(reply) ? reply[0][1] : reply[key];
      for (const [, fields] of entries) JSON.parse(fields[3]);
      got += entries.length;
      await c.sendCommand(['XACK', key, group, ...entries.map(([id]) => id)]);
    }
  };
  const consume = await timeIt(() => Promise.all(readers.map((c, g) => readGroup(c, `g${g}`))).then(() => {}));
  const alone = await timeIt(() => readGroup(readers[0], 'solo'));
  for (const c of readers) await c.quit();
  await client.quit();
  return { system: 'Redis Streams', publishSingle: SINGLE / single, publishBatched: N / batched, consumePerGroup: N / consume, consumeOneGroup: N / alone };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const tmp = mkdtempSync(join(tmpdir(), 'pgherald-bench-topics-'));
chmodSync(tmp, 0o755);
let cluster: PostgresCluster | undefined;
let url = process.env.DATABASE_URL;
if (!url) {
  cluster = await PostgresCluster.start({ dataDir: join(tmp, 'pg'), settings: { shared_buffers: '256MB', max_connections: 100 } });
  url = cluster.url();
}
const redisAvailable = existsSync('/usr/bin/redis-server');
const redis = redisAvailable ? await startRedis(tmp) : undefined;
const rows: Row[] = [];
const load0 = loadavg()[0];
try {
  for (let run = 0; run < RUNS; run++) {
    rows.push(await benchPg(url, run));
    if (redis) rows.push(await benchRedis(redis.url, run));
    console.error(`run ${run + 1}/${RUNS} done`);
  }
} finally {
  redis?.proc.kill('SIGKILL');
  await cluster?.stop();
  rmSync(tmp, { recursive: true, force: true });
}
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
console.log(`\nTopics: N=${N} messages (single publishes: ${SINGLE}, 8 concurrent), batches of ${BATCH}, ${GROUPS} groups; median of ${RUNS} runs; ${cpus().length} cores, load average ${load0.toFixed(1)} at start\n`);
console.log('| system | publish, 1 per call (msg/s) | publish, batches of 500 (msg/s) | consume, per group, 3 groups at once (msg/s) | consume, one group alone (msg/s) |');
console.log('|---|---:|---:|---:|---:|');
const systems = [...new Set(rows.map((r) => r.system))];
const med = (s: string, k: keyof Omit<Row, 'system'>) => median(rows.filter((r) => r.system === s).map((r) => r[k]));
for (const s of systems) console.log(`| ${s} | ${fmt(med(s, 'publishSingle'))} | ${fmt(med(s, 'publishBatched'))} | ${fmt(med(s, 'consumePerGroup'))} | ${fmt(med(s, 'consumeOneGroup'))} |`);
if (systems.length === 2) {
  const [a, b] = systems;
  const r = (k: keyof Omit<Row, 'system'>) => (med(a, k) / med(b, k)).toFixed(2);
  console.log(`| ratio ${a} / ${b} | ${r('publishSingle')} | ${r('publishBatched')} | ${r('consumePerGroup')} | ${r('consumeOneGroup')} |`);
}
console.log(`\nall runs: ${JSON.stringify(rows.map((r) => ({ ...r, publishSingle: Math.round(r.publishSingle), publishBatched: Math.round(r.publishBatched), consumePerGroup: Math.round(r.consumePerGroup), consumeOneGroup: Math.round(r.consumeOneGroup) })))}`);
