/**
 * Topics benchmark: pgherald topics beside PgQ and Redis Streams on this machine, in
 * the same run, interleaved round by round (pgherald, PgQ, Redis, each round starting
 * with the next of them; then the pgbench ceiling).
 *
 *   node --import tsx bench/topics.ts            # 3 rounds, markdown table of medians
 *   node --import tsx bench/topics.ts --runs 1 --n 20000   (or BENCH_RUNS, BENCH_N)
 *   npm run bench -- topics -- --runs 1
 *
 * Postgres: a throwaway PostgreSQL 15 cluster from the system's binaries
 * (`/usr/lib/postgresql/15/bin`, or $PG15_BINDIR), default durability (fsync,
 * full_page_writes, synchronous_commit on), shared_buffers=256MB. pgherald and PgQ both
 * run on it, each round in a fresh database. Without PG15 binaries it falls back to the
 * embedded Postgres and skips PgQ. PgQ: `CREATE EXTENSION pgq` and the `pgqd` ticker
 * (ticker_period 0.1 s; queue ticker_max_count 500, ticker_max_lag 0.1 s), skipped
 * with a message when `postgresql-15-pgq3`/`pgqd` are absent. Redis: a redis-server
 * started here on a free port with AOF (appendfsync everysec), its usual durable
 * setting; skipped with a message when absent. Install both (Debian, as root):
 *
 *   apt-get install -y redis-server postgresql-15-pgq3 pgqd
 *
 * (or `node --import tsx bench/topics.ts --install`, which runs that when one is missing).
 *
 * Measures: publish one message per call/transaction (8 concurrent publishers),
 * publish in batches of 500, consume: 3 groups reading the same N messages at once
 * (one consumer per group, batches of 500; a PgQ batch is what its ticks hold), and
 * one group alone, messages/s per group. Consumers commit their position per batch in a
 * transaction (pgherald: the batch's tx; PgQ: next_batch, get_batch_events and
 * finish_batch in one transaction; Redis: XREADGROUP then XACK). Every contender's
 * consumer gets the same message: id, key, publish time (a Date) and the payload's
 * parsed JSON (until session 22, PgQ's and Redis' parsed the payload only).
 * Ceiling: pgbench, 8 clients, one single-row INSERT per transaction (a jsonb payload
 * like the messages'), same cluster, 5 s.
 *
 * Flat claim cost (`--flat TOTAL`, e.g. `--flat 5000000`; `--window 100000`): pgherald
 * alone. Publishes TOTAL messages (batches of 5,000, 4 publishers at once, 8 key
 * partitions, 100 keys, default segments of 1,000,000 ids), waits until the sequencer
 * has moved them all, then consumes the first WINDOW messages (a group at `earliest`)
 * and the last WINDOW (a group reset to the position TOTAL - WINDOW), one consumer,
 * batches of 500, alternately for `--runs` rounds (each round resets both groups):
 * messages/s of each, median, and the ratio last / first.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import pg from 'pg';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from 'redis';
import { createHerald } from '../src/index.js';
import { freePort, PostgresCluster } from '../src/embedded/index.js';
import { topicPayload as payload } from './support/topic-message.js';

/** `--runs N` and `--n N` (as `npm run bench -- topics -- --runs 1` passes them), else BENCH_RUNS / BENCH_N. */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const N = Number(arg('n') ?? process.env.BENCH_N ?? 50_000);
const SINGLE = Math.max(10_000, Math.round(N / 2));
const RUNS = Number(arg('runs') ?? process.env.BENCH_RUNS ?? 3);
const BATCH = 500;
const GROUPS = 3;

/**
 * What every contender's consumer does with a message: PgQ's and Redis' are given the
 * fields a pgherald handler gets (id, key, publish time, parsed payload) as one object.
 */
function handle(m: { id: string; key: string | null; publishedAt: Date; payload: unknown }): void {
  if (m.payload === undefined || m.key === undefined || Number.isNaN(m.publishedAt.getTime())) throw new Error(`bad message ${m.id}`);
}

type Row = { system: string; publishSingle: number; publishBatched: number; consumePerGroup: number; consumeOneGroup: number };

const PG15 = process.env.PG15_BINDIR ?? '/usr/lib/postgresql/15/bin';
const PGQD = '/usr/bin/pgqd';
const REDIS = '/usr/bin/redis-server';

if (process.argv.includes('--install') && (!existsSync(REDIS) || !existsSync(PGQD) || !existsSync(join(PG15, 'postgres')))) {
  const r = spawnSync('apt-get', ['install', '-y', '-qq', 'redis-server', 'postgresql-15-pgq3', 'pgqd'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) console.error('apt-get install failed: the missing contenders are skipped');
}

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
  await herald.topics.create(topic + '-single', { partitions: 8 });
  // Groups exist before publishing, as PgQ's consumers are registered and Redis' groups
  // created before (the consume timings then include no group creation).
  for (let g = 0; g <= GROUPS; g++) await herald.topics.createGroup(topic, g === GROUPS ? 'solo' : `g${g}`, 'earliest');
  // The pool's connections open before the timing (the other contenders connect first too).
  await pool([...Array(64).keys()], 8, async (i) => void (await herald.topics.publish(topic + '-warm', payload(i), { key: `k${i % 100}`, autoCreate: true })));
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
      for (const m of messages) handle(m);
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
    for (const m of messages) handle(m);
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
  const proc = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', dir], { stdio: 'ignore' });
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
      // The entry id carries the publish time in milliseconds.
      for (const [id, fields] of entries) handle({ id, key: fields[1], publishedAt: new Date(Number(id.slice(0, id.indexOf('-')))), payload: JSON.parse(fields[3]) });
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

/** A fresh database of the cluster for one contender's round. */
async function freshDb(adminUrl: string, name: string): Promise<string> {
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  await c.query(`CREATE DATABASE "${name}"`);
  await c.end();
  const u = new URL(adminUrl);
  u.pathname = '/' + name;
  return u.toString();
}

/** Starts pgqd against the cluster (it ticks every queue of every database it finds). */
function startPgqd(dir: string, url: string): ChildProcess {
  const u = new URL(url);
  const ini = join(dir, 'pgqd.ini');
  writeFileSync(
    ini,
    `[pgqd]\nlogfile = ${join(dir, 'pgqd.log')}\npidfile = ${join(dir, 'pgqd.pid')}\nbase_connstr = host=${u.hostname} port=${u.port} user=${decodeURIComponent(u.username) || 'postgres'}\ninitial_database = postgres\nticker_period = 0.1\ncheck_period = 1\nretry_period = 1\nmaint_period = 60\n`,
  );
  return spawn(PGQD, ['-q', ini], { stdio: 'ignore' });
}

async function benchPgq(url: string): Promise<Row> {
  const db = new pg.Pool({ connectionString: url, max: 12 });
  db.on('error', () => {});
  await db.query('CREATE EXTENSION IF NOT EXISTS pgq');
  await db.query(`SELECT pgq.create_queue('bench')`);
  await db.query(`SELECT pgq.create_queue('single')`);
  await db.query(`SELECT pgq.set_queue_config('bench', 'ticker_max_count', '500')`);
  await db.query(`SELECT pgq.set_queue_config('bench', 'ticker_max_lag', '0.1 seconds')`);
  for (let g = 0; g <= GROUPS; g++) await db.query(`SELECT pgq.register_consumer('bench', $1)`, [g === GROUPS ? 'solo' : `g${g}`]);
  await Promise.all(Array.from({ length: 8 }, () => db.query('SELECT 1'))); // the pool's connections open before the timing
  const single = await timeIt(() =>
    pool([...Array(SINGLE).keys()], 8, async (i) => {
      await db.query({ name: 'ins1', text: `SELECT pgq.insert_event('single', $1, $2)`, values: [`k${i % 100}`, JSON.stringify(payload(i))] });
    }),
  );
  const batched = await timeIt(async () => {
    for (let i = 0; i < N; i += BATCH) {
      const n = Math.min(BATCH, N - i);
      await db.query(`SELECT pgq.insert_event('bench', k, p) FROM unnest($1::text[], $2::text[]) AS u(k, p)`, [
        Array.from({ length: n }, (_, j) => `k${(i + j) % 100}`),
        Array.from({ length: n }, (_, j) => JSON.stringify(payload(i + j))),
      ]);
    }
  });
  const consume = async (consumer: string) => {
    const c = await db.connect();
    let got = 0;
    try {
      while (got < N) {
        // One batch per transaction: the position (finish_batch) commits with the work.
        await c.query('BEGIN');
        const { rows } = await c.query<{ b: string | null }>({ name: 'nb', text: `SELECT pgq.next_batch('bench', $1) AS b`, values: [consumer] });
        const b = rows[0].b;
        if (b === null) {
          await c.query('COMMIT');
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        // The fields a pgherald handler gets (id, key, publish time, payload), read in
        // the cheapest form (the time as epoch milliseconds, as pgherald reads it).
        const ev = await c.query<{ ev_id: string; ev_type: string; ms: number; ev_data: string }>({
          name: 'ev',
          text: `SELECT ev_id, ev_type, (extract(epoch FROM ev_time) * 1000)::float8 AS ms, ev_data FROM pgq.get_batch_events($1)`,
          values: [b],
        });
        for (const r of ev.rows) handle({ id: r.ev_id, key: r.ev_type, publishedAt: new Date(r.ms), payload: JSON.parse(r.ev_data) });
        got += ev.rows.length;
        await c.query({ name: 'fb', text: `SELECT pgq.finish_batch($1)`, values: [b] });
        await c.query('COMMIT');
      }
    } finally {
      c.release();
    }
  };
  const per = await timeIt(() => Promise.all(Array.from({ length: GROUPS }, (_, g) => consume(`g${g}`))).then(() => {}));
  const alone = await timeIt(() => consume('solo'));
  await db.end();
  return { system: 'PgQ', publishSingle: SINGLE / single, publishBatched: N / batched, consumePerGroup: N / per, consumeOneGroup: N / alone };
}

/** pgbench: 8 clients, one single-row INSERT per transaction (the commit ceiling of this cluster). */
function ceiling(url: string, bindir: string | undefined, dir: string): number {
  const bin = [bindir && join(bindir, 'pgbench'), join(PG15, 'pgbench')].find((p) => p && existsSync(p)) ?? 'pgbench';
  const script = join(dir, 'ceiling.sql');
  writeFileSync(script, `INSERT INTO bench_ceiling (payload) VALUES ('${JSON.stringify(payload(1))}');\n`);
  const out = spawnSync(bin, ['-n', '-M', 'prepared', '-c', '8', '-j', '8', '-T', '5', '-f', script, url], { encoding: 'utf8' });
  const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(out.stdout);
  if (!m) throw new Error(`pgbench failed: ${out.stderr || out.stdout}`);
  return Number(m[1]);
}

const tmp = mkdtempSync(join(tmpdir(), 'pgherald-bench-topics-'));
chmodSync(tmp, 0o755);
let cluster: PostgresCluster | undefined;
let url = process.env.DATABASE_URL;
const pg15 = existsSync(join(PG15, 'postgres'));
let server = 'DATABASE_URL';
if (!url) {
  cluster = await PostgresCluster.start({ dataDir: join(tmp, 'pg'), binDir: pg15 ? PG15 : undefined, settings: { shared_buffers: '256MB', max_connections: 100 } });
  url = cluster.url();
  server = pg15 ? `PostgreSQL 15 (${PG15})` : 'embedded Postgres';
}
const FLAT = Number(arg('flat') ?? 0);
if (FLAT > 0) {
  try {
    await benchFlat(await freshDb(url, 'flat'), FLAT, Number(arg('window') ?? 100_000));
  } finally {
    await cluster?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
  process.exit(0);
}

/** Claim cost against history: the first and the last WINDOW messages of a TOTAL-message topic. */
async function benchFlat(dbUrl: string, total: number, window: number): Promise<void> {
  const load0 = loadavg();
  const herald = createHerald({ connectionString: dbUrl, poolSize: 12 });
  await herald.migrate();
  const topic = 'flat';
  await herald.topics.create(topic, { partitions: 8, retentionMs: null });
  const tp = performance.now();
  let next = 0;
  const CHUNK = 5000;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < total) {
      const i = next;
      next += CHUNK;
      const n = Math.min(CHUNK, total - i);
      await herald.topics.publishMany(topic, Array.from({ length: n }, (_, j) => ({ payload: payload(i + j), key: `k${(i + j) % 100}` })));
    }
  }));
  const published = (performance.now() - tp) / 1000;
  // Every message in the log: a read sequences what is still pending.
  for (;;) {
    await herald.topics.read(topic, { after: 'latest', limit: 1 });
    if ((await herald.topics.stats(topic)).pending === 0) break;
  }
  const sequenced = (performance.now() - tp) / 1000;
  const latest = BigInt(await herald.topics.resolveAfter(topic, 'latest'));
  const st = await herald.topics.stats(topic);
  console.error(`published ${total} in ${published.toFixed(0)} s, all in the log after ${sequenced.toFixed(0)} s; ${st.segments} segments, ${(st.bytes / 1e9).toFixed(2)} GB`);
  const consumeWindow = async (group: string, from: 'earliest' | bigint): Promise<number> => {
    await herald.topics.createGroup(topic, group, 'earliest');
    await herald.topics.resetGroup(topic, group, from === 'earliest' ? 'earliest' : { position: String(from) });
    let got = 0;
    let done: () => void = () => {};
    const finished = new Promise<void>((r) => (done = r));
    const c = herald.topics.consumer(topic, group, ({ messages }) => {
      for (const m of messages) handle(m);
      got += messages.length;
      if (got >= window) done();
    }, { batchSize: BATCH });
    const t = performance.now();
    await c.start();
    await finished;
    const secs = (performance.now() - t) / 1000;
    await c.stop();
    return got / secs;
  };
  const first: number[] = [];
  const last: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    first.push(await consumeWindow('first', 'earliest'));
    last.push(await consumeWindow('last', latest - BigInt(window)));
    console.error(`round ${run + 1}/${RUNS}: first ${Math.round(first[run])} msg/s, last ${Math.round(last[run])} msg/s`);
  }
  await herald.close();
  const load1 = loadavg();
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
  console.log(`\nTopics, claim cost against history: ${total.toLocaleString('en-US')} messages (${st.segments} segments, ${(st.bytes / 1e9).toFixed(2)} GB), windows of ${window.toLocaleString('en-US')}, one consumer, batches of ${BATCH}; median of ${RUNS} rounds; ${cpus().length} cores, load average ${load0.map((x) => x.toFixed(1)).join(' ')} at start, ${load1.map((x) => x.toFixed(1)).join(' ')} at end; publishing took ${published.toFixed(0)} s (all in the log after ${sequenced.toFixed(0)} s)\n`);
  console.log('| window | consume (msg/s) |');
  console.log('|---|---:|');
  console.log(`| first ${fmt(window)} (from earliest) | ${fmt(median(first))} |`);
  console.log(`| last ${fmt(window)} | ${fmt(median(last))} |`);
  console.log(`| ratio last / first | ${(median(last) / median(first)).toFixed(2)} |`);
  console.log(`\nall rounds: first ${JSON.stringify(first.map(Math.round))}, last ${JSON.stringify(last.map(Math.round))}`);
}

const pgqAvailable = existsSync(PGQD) && existsSync(join(tmp, '..')) && (pg15 || !!process.env.DATABASE_URL) && existsSync('/usr/share/postgresql/15/extension/pgq.control');
if (!pgqAvailable) console.error('PgQ skipped: install postgresql-15-pgq3 and pgqd (apt-get install -y postgresql-15-pgq3 pgqd), and run on PostgreSQL 15');
const redisAvailable = existsSync(REDIS);
if (!redisAvailable) console.error('Redis Streams skipped: install redis-server (apt-get install -y redis-server)');
const redis = redisAvailable ? await startRedis(tmp) : undefined;
const pgqd = pgqAvailable ? startPgqd(tmp, url) : undefined;
const rows: Row[] = [];
const ceilings: number[] = [];
const load0 = loadavg();
try {
  for (let run = 0; run < RUNS; run++) {
    // Each round starts with another contender: whichever runs first in a round can
    // find the machine quieter (an A/B of two pgherald checkouts run in a fixed order
    // favoured the first by about 10% with three groups).
    const contenders: (() => Promise<Row>)[] = [async () => benchPg(await freshDb(url, `herald_${run}`), run)];
    if (pgqd) contenders.push(async () => benchPgq(await freshDb(url, `pgq_${run}`)));
    if (redis) contenders.push(() => benchRedis(redis.url, run));
    for (let i = 0; i < contenders.length; i++) rows.push(await contenders[(run + i) % contenders.length]());
    const cdb = await freshDb(url, `ceiling_${run}`);
    const c = new pg.Client({ connectionString: cdb });
    await c.connect();
    await c.query('CREATE TABLE bench_ceiling (id bigserial PRIMARY KEY, payload jsonb NOT NULL)');
    await c.end();
    ceilings.push(ceiling(cdb, cluster?.binDir, tmp));
    console.error(`round ${run + 1}/${RUNS} done`);
  }
} finally {
  redis?.proc.kill('SIGKILL');
  pgqd?.kill('SIGTERM');
  await cluster?.stop();
  rmSync(tmp, { recursive: true, force: true });
}
const load1 = loadavg();
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
console.log(`\nTopics: N=${N} messages (single publishes: ${SINGLE}, 8 concurrent), batches of ${BATCH}, ${GROUPS} groups; median of ${RUNS} rounds; ${server}; ${cpus().length} cores, load average ${load0.map((x) => x.toFixed(1)).join(' ')} at start, ${load1.map((x) => x.toFixed(1)).join(' ')} at end\n`);
console.log('| system | publish, 1 per call (msg/s) | publish, batches of 500 (msg/s) | consume, per group, 3 groups at once (msg/s) | consume, one group alone (msg/s) |');
console.log('|---|---:|---:|---:|---:|');
const systems = [...new Set(rows.map((r) => r.system))];
const med = (s: string, k: keyof Omit<Row, 'system'>) => median(rows.filter((r) => r.system === s).map((r) => r[k]));
for (const s of systems) console.log(`| ${s} | ${fmt(med(s, 'publishSingle'))} | ${fmt(med(s, 'publishBatched'))} | ${fmt(med(s, 'consumePerGroup'))} | ${fmt(med(s, 'consumeOneGroup'))} |`);
console.log(`| pgbench single-row INSERT ceiling (8 clients) | ${fmt(median(ceilings))} | | | |`);
const [a, ...others] = systems;
for (const b of others) {
  const r = (k: keyof Omit<Row, 'system'>) => (med(a, k) / med(b, k)).toFixed(2);
  console.log(`| ratio ${a} / ${b} | ${r('publishSingle')} | ${r('publishBatched')} | ${r('consumePerGroup')} | ${r('consumeOneGroup')} |`);
}
console.log(`| ratio ${a} / pgbench ceiling | ${(med(a, 'publishSingle') / median(ceilings)).toFixed(2)} | | | |`);
console.log(`\nall rounds: ${JSON.stringify(rows.map((r) => ({ ...r, publishSingle: Math.round(r.publishSingle), publishBatched: Math.round(r.publishBatched), consumePerGroup: Math.round(r.consumePerGroup), consumeOneGroup: Math.round(r.consumeOneGroup) })))}; ceilings ${JSON.stringify(ceilings.map(Math.round))}`);
