/**
 * Topics: publish -> handler latency at a steady rate, with and without a write
 * transaction held open in another database of the same cluster, and what the
 * sequencer design costs (the numbers behind src/topic/README.md "Why this design").
 *
 *   node --import tsx bench/topics-latency.ts [--rate 1000] [--seconds 10] [--warmup 2] [--publishers 8] [--n 5000] [--concurrency 1,8] [--latency-only]
 *
 * Postgres: its own throwaway cluster (or DATABASE_URL), default durability (fsync on,
 * synchronous_commit on), shared_buffers=256MB.
 *
 * 1. Latency: one consumer group; messages published one per call (`publish()`, no tx)
 *    at `rate`/s for `seconds`; latency = handler time - publish start (same process,
 *    monotonic clock). For each consumer `concurrency` given (default 1 and 8: key
 *    partitions worked on at once), run twice: nothing else open; then a write
 *    transaction held open in another database for the whole run (the old design
 *    stalled every topic there). `--latency-only` stops after this part. Before the
 *    first row, `warmup` seconds at the same rate on a topic of its own, reported apart
 *    (the process's first second pays for new pool connections and per-session plans).
 *    Each row also reports the CPU used meanwhile by Node (this process) and by
 *    Postgres (the cluster's processes), in cores, and the load average at its end.
 *    `--separate-publisher` publishes through a second Herald (its own pool), as a
 *    producer service would, instead of the consumer's.
 * 2. Write cost: `publishers` concurrent publishers, `n` messages one per call:
 *    (a) `publish()` (insert into topic_pending; the sequencer runs in the background),
 *        and `publish({ waitForPosition: true })` (waits for the run that numbers it),
 *    (b) the same insert alone (what a design with one write per message, e.g. PgQ
 *        batches between snapshots, pays at publish), msg/s.
 * 3. The sequencer under a held-open transaction: while a transaction keeps vacuum
 *    back, every moved pending row stays a dead tuple the sequencer's scan walks.
 *    Time of one sequencer run over an empty backlog after `n` x 6 messages were moved
 *    with and without such a transaction.
 */
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createHerald } from '../src/index.js';
import { benchPostgres } from './support/postgres.js';
import { postgresCpuSeconds } from './support/cpu.js';

const { values: args } = parseArgs({
  options: {
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    publishers: { type: 'string', default: '8' },
    n: { type: 'string', default: '5000' },
    concurrency: { type: 'string', default: '1,8' },
    'latency-only': { type: 'boolean', default: false },
    'separate-publisher': { type: 'boolean', default: false },
  },
});
const RATE = Number(args.rate);
const SECONDS = Number(args.seconds);
const PUBLISHERS = Number(args.publishers);
const N = Number(args.n);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const pgx = await benchPostgres({ shared_buffers: '256MB' });
const herald = createHerald({ connectionString: pgx.url, poolSize: 20 });
await herald.migrate();
// --separate-publisher: the latency rows publish through a Herald of their own (its own
// pool, as a producer service would), so the consumer's claims and the sequencer runs
// do not queue behind the publisher's inserts for a pool connection.
const publisher = args['separate-publisher'] ? createHerald({ connectionString: pgx.url, poolSize: 20 }) : herald;
const out: string[] = [];
const log = (s: string) => {
  out.push(s);
  console.log(s);
};
log(`# topics latency bench: ${cpus().length} cpus, load ${loadavg().map((x) => x.toFixed(1)).join(' ')}, rate ${RATE}/s x ${SECONDS}s, ${PUBLISHERS} publishers, n ${N}`);

const CONCURRENCY = String(args.concurrency).split(',').map(Number);

const pgCpu = () => (pgx.cluster?.pid ? postgresCpuSeconds(pgx.cluster.pid) : NaN);

async function latency(label: string, topic: string, concurrency: number, seconds = SECONDS): Promise<void> {
  await herald.topics.create(topic, { partitions: 8 });
  const sent = new Map<number, bigint>();
  const lat: number[] = [];
  const c = herald.topics.consumer<number>(topic, 'g', ({ messages }) => {
    const now = process.hrtime.bigint();
    for (const m of messages) lat.push(Number(now - sent.get(m.payload)!) / 1e6);
  }, { batchSize: 500, concurrency });
  await c.start();
  const total = RATE * seconds;
  const cpu0 = process.cpuUsage();
  const pg0 = pgCpu();
  const t0 = performance.now();
  const inflight: Promise<unknown>[] = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    sent.set(i, process.hrtime.bigint());
    inflight.push(publisher.topics.publish(topic, i, { key: `k${i % 100}` }));
    if (inflight.length >= 64) await Promise.all(inflight.splice(0));
  }
  await Promise.all(inflight);
  const achieved = total / ((performance.now() - t0) / 1000);
  while (lat.length < total) await new Promise((r) => setTimeout(r, 20));
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const nodeCores = (cpu.user + cpu.system) / 1e6 / wall;
  const pgCores = (pgCpu() - pg0) / wall;
  await c.stop();
  log(
    `| ${label} | ${concurrency} | ${Math.round(achieved)} | ${pct(lat, 50).toFixed(1)} | ${pct(lat, 99).toFixed(1)} | ${Math.max(...lat).toFixed(1)} | ${nodeCores.toFixed(2)} | ${pgCores.toFixed(2)} | ${loadavg()[0].toFixed(1)} |`,
  );
}

async function holdOpen(): Promise<() => Promise<void>> {
  const admin = new pg.Client({ connectionString: pgx.url });
  await admin.connect();
  await admin.query('CREATE DATABASE bench_other').catch(() => {});
  await admin.end();
  const u = new URL(pgx.url);
  u.pathname = '/bench_other';
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  await c.query('CREATE TABLE IF NOT EXISTS w (v int)');
  await c.query('BEGIN');
  await c.query('INSERT INTO w VALUES (1)');
  return async () => {
    await c.query('COMMIT');
    await c.end();
  };
}

log('\n| publish -> handler latency | consumer concurrency | msg/s achieved | p50 ms | p99 ms | max ms | Node cores | Postgres cores | load (1 min) |');
log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
if (Number(args.warmup) > 0) await latency(`warm-up (the process's first ${args.warmup} s, own topic)`, 'lat-warmup', Math.min(...CONCURRENCY), Number(args.warmup));
for (const n of CONCURRENCY) {
  await latency('nothing else open', `lat-a${n}`, n);
  const release = await holdOpen();
  await latency('write transaction held open in another database', `lat-b${n}`, n);
  await release();
}
log(`\nload average after the latency runs: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
if (args['latency-only']) {
  if (publisher !== herald) await publisher.close();
  await herald.close();
  await pgx.stop();
  process.exit(0);
}

log('\n| write cost, 1 message per call | msg/s |');
log('|---|---:|');
{
  await herald.topics.create('cost', { partitions: 8 });
  let next = 0;
  const t = performance.now();
  await Promise.all(Array.from({ length: PUBLISHERS }, async () => {
    while (next < N) {
      next++;
      await herald.topics.publish('cost', { n: next, note: 'x'.repeat(40) }, { key: `k${next % 100}` });
    }
  }));
  log(`| publish() (one committed insert; the sequencer numbers it in the background) | ${Math.round(N / ((performance.now() - t) / 1000))} |`);
  next = 0;
  const tw = performance.now();
  await Promise.all(Array.from({ length: PUBLISHERS }, async () => {
    while (next < N) {
      next++;
      await herald.topics.publish('cost', { n: next, note: 'x'.repeat(40) }, { key: `k${next % 100}`, waitForPosition: true });
    }
  }));
  log(`| publish({ waitForPosition: true }) (insert, then waits for the sequencer run that numbers it) | ${Math.round(N / ((performance.now() - tw) / 1000))} |`);
  const row = (await herald.driver.executor.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = 'cost'`)).rows[0];
  next = 0;
  const t2 = performance.now();
  await Promise.all(Array.from({ length: PUBLISHERS }, async () => {
    while (next < N) {
      next++;
      await herald.driver.executor.query(
        `INSERT INTO herald.topic_pending (topic_id, publish_id, kpart, key, payload) VALUES ($1, nextval('herald.topic_pub_${row.id}'), $2, $3, $4)`,
        [row.id, next % 8, `k${next % 100}`, JSON.stringify({ n: next, note: 'x'.repeat(40) })],
      );
    }
  }));
  log(`| the insert alone (one write per message; nothing numbered) | ${Math.round(N / ((performance.now() - t2) / 1000))} |`);
  await herald.topics.read('cost', { limit: 1 }); // sequences the backlog left by (b)
}

async function sequencerRunMs(topic: string): Promise<number> {
  const row = (await herald.driver.executor.query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = $1`, [topic])).rows[0];
  const times: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    await herald.driver.executor.query(`SELECT count(*) FROM herald.topic_sequence($1, $2::regclass, 10000, NULL, $3)`, [row.id, `herald.topic_seq_${row.id}`, topic]);
    times.push(performance.now() - t);
  }
  return pct(times, 50);
}

log('\n| sequencer run over an empty backlog, after 6 x n messages moved | median ms |');
log('|---|---:|');
for (const held of [false, true]) {
  const topic = held ? 'seq-held' : 'seq-free';
  await herald.topics.create(topic, { partitions: 8 });
  const release = held ? await holdOpen() : undefined;
  await herald.driver.executor.query('VACUUM herald.topic_pending');
  for (let i = 0; i < 6; i++) await herald.topics.publishMany(topic, Array.from({ length: N }, (_, j) => ({ payload: { j } })));
  const ms = await sequencerRunMs(topic);
  log(`| ${held ? 'write transaction held open meanwhile (dead pending rows kept)' : 'nothing else open (vacuum may clean)'} | ${ms.toFixed(2)} |`);
  await release?.();
}

if (publisher !== herald) await publisher.close();
await herald.close();
await pgx.stop();
