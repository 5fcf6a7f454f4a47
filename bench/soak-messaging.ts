/**
 * Steady-state soak of the mailbox or the outbox: a fixed offered rate for minutes,
 * one `send`/`add` call per message (no `tx`), consumed (mailbox) or relayed (outbox) at the same time,
 * sampling every second what a regression would move: sent and consumed per second,
 * end-to-end latency p50/p99 (send call → handler/sink, one clock: one process), Node
 * RSS, the size of the part's table with its indexes and TOAST, its live rows, and the
 * rows the maintenance service's retention deleted.
 *
 *   node --import tsx bench/soak-messaging.ts --part mailbox|outbox [--rate 2000] [--minutes 15]
 *        [--retention-ms 30000] [--retention-interval-ms 10000] [--consumer-batch N]
 *        [--consumer-concurrency N] [--relays 1] [--pool 16] [--keys 1000] [--no-consumer] [--out bench/results]
 *
 * Producer: every 5 ms it calls `mailbox.send` / `outbox.add` (no `tx`: the library's group commit lets concurrent calls share commits)
 * for every message then due at `--rate`, without waiting for earlier ones (the pool,
 * `--pool` connections, bounds what is in flight); each payload carries its send time.
 * Outbox events carry one of `--keys` keys in turn (0: no key). The consumer runs on its own Herald (own pool), as when it runs in another process:
 * mailbox `consume(to, handler)` and outbox `relay({ sink })` with the library defaults
 * unless `--consumer-batch` / `--consumer-concurrency` are given; `--relays N` runs N relays
 * on that Herald (claims in flight at once).
 *
 * Retention: the consumer's Herald runs the maintenance service with
 * `mailboxRetention` / `outboxRetention` set to `--retention-ms` (default 30 s; the
 * library default is 1 day / 7 days) every `--retention-interval-ms` (default 10 s;
 * library default 60 s), so that within a few minutes the table reaches its steady
 * size and the series shows whether retention keeps it bounded. The producer's Herald
 * has the service off (`maintenance.enabled: false`).
 *
 * Every message is checked: each sequence number must arrive (exactly once for the
 * mailbox; the outbox relay is at-least-once, duplicates are counted). Writes
 * `<out>/soak-<part>.json` (series, conditions, chart layout) for bench/plot.ts, and
 * prints one line per minute (per 30 s when the run is shorter than 5 minutes), then a
 * table per minute whose percentiles are taken over every message of the minute (a
 * 0.1 ms histogram: `perMinute` in the JSON), with the share that took over 10 ms,
 * and the producer's part of it: the send/add call's own p50/p99 (call -> committed);
 * then the ten worst seconds with what else happened in them (bench/support/second-watch.ts:
 * event loop, GC, WAL fsyncs, checkpoints, autovacuum, retention runs; the consumer's problems).
 *
 * Diagnosis (environment): `SOAK_PG_SETTINGS` (JSON) adds server settings, e.g.
 * `{"shared_preload_libraries":"pg_stat_statements"}`, as in bench/soak.ts.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createHerald, type Herald } from '../src/client.js';
import { LatencyHistogram } from './support/histogram.js';
import { benchPostgres } from './support/postgres.js';
import { SecondWatch, type SecondWatchSample } from './support/second-watch.js';

const { values: args } = parseArgs({
  options: {
    part: { type: 'string', default: 'mailbox' },
    rate: { type: 'string', default: '2000' },
    minutes: { type: 'string', default: '15' },
    'retention-ms': { type: 'string', default: '30000' },
    'retention-interval-ms': { type: 'string', default: '10000' },
    'consumer-batch': { type: 'string' },
    'consumer-concurrency': { type: 'string' },
    pool: { type: 'string', default: '16' },
    keys: { type: 'string', default: '1000' },
    // Diagnostic: produce only (what the producer alone reaches); the consumed series stays 0.
    'no-consumer': { type: 'boolean', default: false },
    relays: { type: 'string', default: '1' },
    out: { type: 'string', default: 'bench/results' },
  },
});
const PART = args.part!;
if (PART !== 'mailbox' && PART !== 'outbox') throw new Error('--part must be mailbox or outbox');
const RATE = Number(args.rate);
const MINUTES = Number(args.minutes);
const RETENTION_MS = Number(args['retention-ms']);
const RETENTION_INTERVAL_MS = Number(args['retention-interval-ms']);
const POOL = Number(args.pool);
const BATCH = args['consumer-batch'] === undefined ? undefined : Number(args['consumer-batch']);
const CONCURRENCY = args['consumer-concurrency'] === undefined ? undefined : Number(args['consumer-concurrency']);
const RELAYS = Number(args.relays);
for (const [k, v] of Object.entries({ rate: RATE, minutes: MINUTES, pool: POOL, 'retention-interval-ms': RETENTION_INTERVAL_MS })) {
  if (!(v > 0) || !Number.isFinite(v)) throw new Error(`--${k} must be a positive number`);
}
if (!(RETENTION_MS >= 0)) throw new Error('--retention-ms must be >= 0');
const KEYS = Number(args.keys);
if (!(KEYS >= 0) || !Number.isInteger(KEYS)) throw new Error('--keys must be a non-negative integer');
const TICK_MS = 5;
const TABLE = PART === 'mailbox' ? 'mailbox_messages' : 'outbox_events';

const now = () => performance.timeOrigin + performance.now();
const pct = (xs: number[], p: number) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]);

/** One second of the run; what else happened in it (event loop, GC, WAL fsyncs, checkpoints, autovacuum, retention): {@link SecondWatchSample}. */
interface Sample extends SecondWatchSample {
  /** Seconds since the start. */
  t: number;
  /** Sends called (the offered load). */
  sent: number;
  /** Sends committed. */
  committed: number;
  consumed: number;
  p50: number;
  p99: number;
  max: number;
  nodeRss: number;
  tableBytes: number;
  rows: number;
  /** Dead tuples of the table (statistics: pg_stat_user_tables.n_dead_tup). */
  deadRows: number;
  /** Vacuums of the table so far (auto and manual). */
  vacuums: number;
  purged: number;
  backlog: number;
}

const server = await benchPostgres({ max_connections: 200, track_wal_io_timing: 'on', ...JSON.parse(process.env.SOAK_PG_SETTINGS ?? '{}') });
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
const dbName = `soak_${PART}_${process.pid}`;
await admin.query(`CREATE DATABASE ${dbName}`);
const url = new URL(server.url);
url.pathname = `/${dbName}`;
const dbUrl = url.toString();
const monitor = new pg.Client({ connectionString: dbUrl });
const retention = { intervalMs: RETENTION_INTERVAL_MS, retentionMs: RETENTION_MS };
const producer: Herald = createHerald({ connectionString: dbUrl, poolSize: POOL, maintenance: { enabled: false }, notifier: { queueUsageIntervalMs: 0 } });
const consumer: Herald = createHerald({
  connectionString: dbUrl,
  poolSize: 4,
  notifier: { queueUsageIntervalMs: 0 },
  maintenance: PART === 'mailbox' ? { mailboxRetention: retention } : { outboxRetention: retention },
});
const samples: Sample[] = [];
let stopping = false;
let watch: SecondWatch | undefined;
let stopConsumer: () => Promise<void> = async () => {};
try {
  await producer.migrate();
  await monitor.connect();
  const settings = Object.fromEntries(
    (await monitor.query<{ name: string; setting: string }>(`SELECT name, setting FROM pg_settings WHERE name IN ('server_version','fsync','full_page_writes','synchronous_commit','shared_buffers','autovacuum','max_connections')`)).rows.map((r) => [r.name, r.setting]),
  );
  const capacity = Math.ceil(RATE * MINUTES * 60 * 1.1) + RATE;
  const seen = new Uint8Array(capacity);
  let sent = 0;
  let committed = 0;
  let sendErrors = 0;
  let consumed = 0;
  let duplicates = 0;
  let purged = 0;
  let maintenanceErrors = 0;
  let latencies: number[] = [];
  // Every message of the current minute (its percentiles over all of them, not per second).
  let hist = new LatencyHistogram();
  // The producer's part of it: send call -> the call resolved (its transaction committed).
  let commitHist = new LatencyHistogram();
  const minutes: { minute: number; consumed: number; p50: number; p99: number; p999: number; over10: number; worstSecondP99: number; commitP50: number; commitP99: number }[] = [];
  const onMessage = (p: { n: number; t: number }) => {
    const at = now();
    if (seen[p.n]) {
      duplicates++;
      return;
    }
    seen[p.n] = 1;
    consumed++;
    latencies.push(at - p.t);
    hist.add(at - p.t);
  };
  consumer.maintenance.on('maintenance:run', (r) => {
    if (r.task === (PART === 'mailbox' ? 'mailboxRetention' : 'outboxRetention')) {
      purged += r.rows;
      watch?.event(`retention ${r.rows}`);
    }
  });
  consumer.maintenance.on('maintenance:error', () => void maintenanceErrors++);
  const consumerOptions = { ...(BATCH !== undefined && { batchSize: BATCH }), ...(CONCURRENCY !== undefined && { concurrency: CONCURRENCY }) };
  if (args['no-consumer']) {
    // produce only
  } else if (PART === 'mailbox') {
    const c = consumer.mailbox.consume<{ n: number; t: number }>('soak', (m) => onMessage(m.payload), consumerOptions);
    consumer.mailbox.on('message:problem', (err) => watch?.event(`consumer problem: ${err.message.slice(0, 60)}`));
    await consumer.mailbox.start();
    stopConsumer = () => c.stop();
  } else {
    const relays = Array.from({ length: RELAYS }, () => consumer.outbox.relay({ sink: async (e) => onMessage(e.payload as { n: number; t: number }), ...consumerOptions }));
    for (const r of relays) r.on('relay:problem', (err) => watch?.event(`relay problem: ${err.message.slice(0, 60)}`));
    stopConsumer = async () => void (await Promise.all(relays.map((r) => r.stop())));
  }
  const send = async (n: number): Promise<void> => {
    const payload = { n, t: now() };
    await (PART === 'mailbox' ? producer.mailbox.send({ to: 'soak', payload }) : producer.outbox.add({ type: 'soak', key: KEYS > 0 ? `k${n % KEYS}` : null, payload }));
    commitHist.add(now() - payload.t);
  };
  const t0 = now();
  const end = t0 + MINUTES * 60_000;
  const producing = (async () => {
    while (!stopping && now() < end) {
      const due = Math.min(capacity, Math.floor(((now() - t0) / 1000) * RATE)) - sent;
      for (let i = 0; i < due; i++) {
        send(sent++).then(
          () => void committed++,
          () => void sendErrors++,
        );
      }
      await new Promise((r) => setTimeout(r, TICK_MS));
    }
  })();
  let last = { sent: 0, committed: 0, consumed: 0, purged: 0 };
  let block: Sample[] = [];
  const blockLen = MINUTES < 5 ? 30 : 60;
  const describe = `${PART}: ${RATE} messages/s offered for ${MINUTES} min (one ${PART === 'mailbox' ? 'send' : 'add'} call per message, no tx), producer pool ${POOL}${PART === 'outbox' ? `, ${KEYS} keys` : ''}, consumer ${JSON.stringify(consumerOptions)}${PART === 'outbox' && RELAYS !== 1 ? ` × ${RELAYS} relays` : ''}, retention ${RETENTION_MS} ms every ${RETENTION_INTERVAL_MS} ms`;
  console.log(`# soak ${describe}; Postgres ${settings.server_version} fsync=${settings.fsync} full_page_writes=${settings.full_page_writes} synchronous_commit=${settings.synchronous_commit}; ${cpus().length} × ${cpus()[0]?.model.trim()}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log('until s | sent/s | committed/s | consumed/s | p50 ms (median s) | p99 ms (worst s) | max ms | node RSS MB | table MB | rows | dead tuples | vacuums | purged | backlog');
  watch = await SecondWatch.start(monitor, dbName);
  while (now() < end) {
    await new Promise((r) => setTimeout(r, 1000));
    const watched = await watch.sample();
    const { rows } = await monitor.query<{ b: string; n: string; dead: string; vacuums: string }>(
      `SELECT pg_total_relation_size(c.oid)::text AS b, (SELECT count(*) FROM herald.${TABLE})::text AS n,
              st.n_dead_tup::text AS dead, (st.autovacuum_count + st.vacuum_count)::text AS vacuums
         FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace JOIN pg_stat_user_tables st ON st.relid = c.oid
        WHERE ns.nspname = 'herald' AND c.relname = $1`,
      [TABLE],
    );
    const s: Sample = {
      t: Math.round((now() - t0) / 1000),
      sent: sent - last.sent,
      committed: committed - last.committed,
      consumed: consumed - last.consumed,
      p50: pct(latencies, 0.5),
      p99: pct(latencies, 0.99),
      max: latencies.length ? Math.max(...latencies) : NaN,
      nodeRss: process.memoryUsage().rss,
      tableBytes: Number(rows[0].b),
      rows: Number(rows[0].n),
      deadRows: Number(rows[0].dead),
      vacuums: Number(rows[0].vacuums),
      purged: purged - last.purged,
      backlog: sent - consumed,
      ...watched,
    };
    last = { sent, committed, consumed, purged };
    latencies = [];
    samples.push(s);
    block.push(s);
    if (block.length === blockLen || now() >= end) {
      const avg = (k: 'sent' | 'committed' | 'consumed') => Math.round(block.reduce((a, x) => a + x[k], 0) / block.length);
      const b = block[block.length - 1];
      console.log(
        `${b.t} | ${avg('sent')} | ${avg('committed')} | ${avg('consumed')} | ${pct(block.map((x) => x.p50), 0.5).toFixed(2)} | ${Math.max(...block.map((x) => x.p99)).toFixed(2)} | ${Math.max(...block.map((x) => x.max)).toFixed(1)} | ${(b.nodeRss / 2 ** 20).toFixed(0)} | ${(b.tableBytes / 2 ** 20).toFixed(1)} | ${b.rows} | ${b.deadRows} | ${b.vacuums} | ${block.reduce((a, x) => a + x.purged, 0)} | ${b.backlog}`,
      );
      block = [];
    }
    if (samples.length % 60 === 0 || now() >= end) {
      const tail = samples.slice(Math.floor((samples.length - 1) / 60) * 60);
      minutes.push({
        minute: Math.ceil(samples.length / 60),
        consumed: hist.n,
        p50: hist.quantile(0.5),
        p99: hist.quantile(0.99),
        p999: hist.quantile(0.999),
        over10: hist.over(10),
        worstSecondP99: Math.max(...tail.map((x) => x.p99)),
        commitP50: commitHist.quantile(0.5),
        commitP99: commitHist.quantile(0.99),
      });
      hist = new LatencyHistogram();
      commitHist = new LatencyHistogram();
    }
  }
  stopping = true;
  await producing;
  // Let the tail arrive: until everything committed was consumed, or 30 s without progress.
  let lastProgress = now();
  let prev = consumed;
  while (!args['no-consumer'] && consumed < committed && now() - lastProgress < 30_000) {
    await new Promise((r) => setTimeout(r, 100));
    if (consumed !== prev) {
      prev = consumed;
      lastProgress = now();
    }
  }
  const sec = samples.slice(5); // first 5 s: connections, plans, JIT
  const worstP99 = Math.max(...sec.map((s) => s.p99));
  const secondsOver10 = sec.filter((s) => s.p99 > 10).length;
  const summary = {
    sent,
    committed,
    sendErrors,
    consumed,
    missing: committed - consumed,
    duplicates,
    purged,
    maintenanceErrors,
    medianP50: pct(sec.map((s) => s.p50), 0.5),
    medianP99: pct(sec.map((s) => s.p99), 0.5),
    worstP99,
    secondsWithP99Over10ms: secondsOver10,
    minutesWithP99Over10ms: minutes.filter((m) => m.p99 > 10).length,
    seconds: sec.length,
    tableMbMax: Math.max(...samples.map((s) => s.tableBytes)) / 2 ** 20,
    tableMbLast: samples[samples.length - 1].tableBytes / 2 ** 20,
    rowsMax: Math.max(...samples.map((s) => s.rows)),
    nodeRssMbFirstMinuteEnd: (samples[Math.min(59, samples.length - 1)].nodeRss) / 2 ** 20,
    nodeRssMbLast: samples[samples.length - 1].nodeRss / 2 ** 20,
    loadavgEnd: loadavg(),
  };
  console.log('# per minute, over every message consumed in it:');
  console.log('minute | consumed | p50 ms | p99 ms | p99.9 ms | share over 10 ms | worst second p99 ms | send call p50 / p99 ms');
  for (const m of minutes) {
    console.log(`${m.minute} | ${m.consumed} | ${m.p50.toFixed(1)} | ${m.p99.toFixed(1)} | ${m.p999.toFixed(1)} | ${(100 * m.over10).toFixed(2)}% | ${m.worstSecondP99.toFixed(1)} | ${m.commitP50.toFixed(1)} / ${m.commitP99.toFixed(1)}`);
  }
  console.log('# worst seconds: t | p99 ms | consumed | event-loop max ms | GC max ms | WAL fsyncs (ms total) | events (this second; the one before)');
  for (const w of [...sec].sort((a, b) => b.p99 - a.p99).slice(0, 10)) {
    const prev = samples[samples.indexOf(w) - 1];
    console.log(`${w.t} | ${w.p99.toFixed(1)} | ${w.consumed} | ${w.loopMaxMs.toFixed(1)} | ${w.gcMaxMs.toFixed(1)} | ${w.walSyncs ?? '-'} (${w.walSyncMs?.toFixed(1) ?? '-'}) | ${w.events.join(', ') || '-'}; ${prev?.events.join(', ') || '-'}`);
  }
  console.log(`# ${JSON.stringify(summary)}`);
  mkdirSync(args.out!, { recursive: true });
  const file = join(args.out!, `soak-${PART}.json`);
  const charts = [
    { title: 'messages per second', unit: 'messages/s', series: [['sent', 'sent (called)'], ['committed', 'committed'], ['consumed', 'consumed']] },
    { title: 'send → consumed latency', unit: 'ms', series: [['p50', 'p50'], ['p99', 'p99']] },
    { title: 'memory', unit: 'MB', series: [['nodeRss', 'Node RSS']], scale: 2 ** 20 },
    { title: `herald.${TABLE} (with indexes and TOAST)`, unit: 'MB', series: [['tableBytes', 'size']], scale: 2 ** 20 },
    { title: 'rows: live in the table, deleted by retention per second', unit: 'rows', series: [['rows', 'rows'], ['purged', 'purged'], ['deadRows', 'dead tuples']] },
  ];
  writeFileSync(
    file,
    JSON.stringify({ lib: `pgherald ${PART}`, part: PART, rate: RATE, minutes: MINUTES, retentionMs: RETENTION_MS, retentionIntervalMs: RETENTION_INTERVAL_MS, pool: POOL, keys: PART === 'outbox' ? KEYS : undefined, consumer: consumerOptions, relays: PART === 'outbox' ? RELAYS : undefined, settings, node: process.version, cpus: cpus().length, summary, perMinute: minutes, charts, samples }),
  );
  console.log(`# series written to ${file}`);
} finally {
  stopping = true;
  watch?.stop();
  await stopConsumer().catch(() => {});
  await consumer.close().catch(() => {});
  await producer.close().catch(() => {});
  await monitor.end().catch(() => {});
  await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {});
  await admin.end();
  await server.stop();
}
