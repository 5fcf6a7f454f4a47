/**
 * Steady-state soak of the job queue: enqueue and work at the same time at a fixed
 * offered rate for minutes, sampling every second what a regression would move:
 * throughput, enqueue-to-start latency (p50, p99), Node RSS, the Postgres backends'
 * RSS and CPU, and the size of the library's tables (indexes and TOAST included).
 *
 *   node --import tsx bench/soak.ts [--lib pgherald|graphile-worker|pg-boss] [--rate 5000]
 *        [--minutes 15] [--concurrency 50] [--out bench/results]
 *
 * Each library runs alone in a fresh database of the same server (run the script once
 * per library, one after the other, for a side-by-side figure). Library defaults
 * everywhere except the worker concurrency (and pg-boss' batch size, which it needs to
 * reach any rate). The producer enqueues what is due every 20 ms in one batch (one
 * transaction per batch); when it falls behind, the next batch is larger, and the
 * series shows offered vs achieved. Postgres runs at its default durability.
 *
 * Writes `<out>/soak-<lib>.json` (the series, the per-minute summary and the
 * conditions) and prints one line per minute: its p50, p99 and p99.9 over every job
 * started in it (a 0.1 ms histogram), the share of its jobs that waited over 20 ms, and
 * the worst second's p99; `bench/plot.ts <file.json>` draws it as a PNG. At the end it prints the ten
 * worst seconds with what else happened in them (event-loop and GC pauses, the longest
 * enqueue call, the server's WAL fsyncs, checkpoints, autovacuum, retention runs).
 *
 * `--warm-wal-mb N` (default 0): before the run, write N MB of WAL in a scratch database
 * and checkpoint, so that the run finds the WAL segments a server that has been running
 * has (recycled at each checkpoint) instead of creating and zero-filling every segment of
 * its first checkpoint cycle, as a freshly created cluster does (labelled in the output).
 *
 * Diagnosis (environment): `SOAK_PG_SETTINGS` (JSON) adds server settings (logging,
 * `auto_explain`, a WAL setting to compare); `SOAK_WAITS=1` samples what the database's
 * active backends wait on every 10 ms and prints the shares; `SOAK_POOL` sets pgherald's
 * pool size; `SOAK_HERALD_OPTIONS` (JSON) adds options of `new Herald(...)` (e.g. a
 * maintenance task's interval), labelled nowhere else: say so with the figures.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Logger, makeWorkerUtils, run, type Runner, type WorkerUtils } from 'graphile-worker';
import PgBoss from 'pg-boss';
import { Herald } from '../src/client.js';
import { benchPostgres } from './support/postgres.js';
import { SecondWatch, type SecondWatchSample } from './support/second-watch.js';
import { LatencyHistogram } from './support/histogram.js';

const { values: args } = parseArgs({
  options: {
    lib: { type: 'string', default: 'pgherald' },
    rate: { type: 'string', default: '5000' },
    minutes: { type: 'string', default: '15' },
    concurrency: { type: 'string', default: '50' },
    out: { type: 'string', default: 'bench/results' },
    'warm-wal-mb': { type: 'string', default: '0' },
  },
});
const RATE = Number(args.rate);
const MINUTES = Number(args.minutes);
const CONCURRENCY = Number(args.concurrency);
const WARM_WAL_MB = Number(args['warm-wal-mb']);
if (!(WARM_WAL_MB >= 0)) throw new Error('--warm-wal-mb must be >= 0');
for (const [k, v] of Object.entries({ rate: RATE, minutes: MINUTES, concurrency: CONCURRENCY })) {
  if (!(v > 0) || !Number.isFinite(v)) throw new Error(`--${k} must be a positive number`);
}

/** Wall-clock milliseconds with sub-millisecond resolution (one clock for producer and workers: one process). */
const now = () => performance.timeOrigin + performance.now();

interface SoakLib {
  name: string;
  schema: string;
  /** Calls back with each retention run's deleted count (pgherald only). */
  onRetention?(fn: (deleted: number) => void): void;
  setup(url: string): Promise<void>;
  enqueue(stamps: number[]): Promise<void>;
  start(onStart: (enqueuedAt: number) => void): Promise<void>;
  stop(): Promise<void>;
}

function heraldLib(): SoakLib {
  let h: Herald;
  return {
    name: 'pgherald',
    schema: 'herald',
    async setup(url) {
      h = new Herald({
        connectionString: url,
        ...(process.env.SOAK_POOL ? { poolSize: Number(process.env.SOAK_POOL) } : {}),
        ...(process.env.SOAK_HERALD_OPTIONS ? (JSON.parse(process.env.SOAK_HERALD_OPTIONS) as object) : {}),
      });
      await h.migrate();
    },
    onRetention(fn) {
      h.queue.on('job:retentionSwept', (e) => fn(e.deleted));
    },
    async enqueue(stamps) {
      await h.queue.enqueueMany(stamps.map((t) => ({ kind: 'soak', payload: { t } })));
    },
    async start(onStart) {
      h.queue.work<{ t: number }>('soak', (job) => void onStart(job.payload.t), { concurrency: CONCURRENCY });
    },
    async stop() {
      await h.close();
    },
  };
}

function graphileLib(): SoakLib {
  let utils: WorkerUtils;
  let runner: Runner | undefined;
  let url = '';
  const logger = new Logger(() => () => {});
  return {
    name: 'graphile-worker',
    schema: 'graphile_worker',
    async setup(u) {
      url = u;
      utils = await makeWorkerUtils({ connectionString: url, logger });
      await utils.migrate();
    },
    async enqueue(stamps) {
      await utils.addJobs(stamps.map((t) => ({ identifier: 'soak', payload: { t } })));
    },
    async start(onStart) {
      runner = await run({
        connectionString: url,
        concurrency: CONCURRENCY,
        noHandleSignals: true,
        logger,
        taskList: { soak: async (payload) => void onStart((payload as { t: number }).t) },
      });
    },
    async stop() {
      await runner?.stop();
      await utils.release();
    },
  };
}

function pgBossLib(): SoakLib {
  let boss: PgBoss;
  return {
    name: 'pg-boss',
    schema: 'pgboss',
    async setup(url) {
      boss = new PgBoss({ connectionString: url });
      boss.on('error', () => {});
      await boss.start();
      await boss.createQueue('soak');
    },
    async enqueue(stamps) {
      await boss.insert(stamps.map((t) => ({ name: 'soak', data: { t } })));
    },
    async start(onStart) {
      // pg-boss polls; concurrency = several work() calls, each taking a batch.
      for (let i = 0; i < CONCURRENCY; i++) {
        await boss.work<{ t: number }>('soak', { batchSize: 50 }, async (jobs) => {
          for (const j of jobs) onStart(j.data.t);
        });
      }
    },
    async stop() {
      await boss.stop({ graceful: false, wait: true });
    },
  };
}

const LIBS: Record<string, () => SoakLib> = { pgherald: heraldLib, 'graphile-worker': graphileLib, 'pg-boss': pgBossLib };
const make = LIBS[args.lib!];
if (!make) throw new Error(`--lib must be one of ${Object.keys(LIBS).join(', ')}`);

/** RSS (bytes) and CPU seconds of the given Postgres backends, from /proc (same machine only). */
function backendUsage(pids: number[]): { rss: number; cpu: number } {
  const tick = 100; // USER_HZ on Linux
  let rss = 0;
  let cpu = 0;
  for (const pid of pids) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      rss += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpu += (Number(fields[11]) + Number(fields[12])) / tick;
    } catch {
      /* the backend ended */
    }
  }
  return { rss, cpu };
}

const pct = (xs: number[], p: number) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]);

/** One line per minute: percentiles over every job started in it. */
interface MinuteSummary {
  minute: number;
  started: number;
  p50: number;
  p99: number;
  p999: number;
  /** Share of the minute's jobs that waited more than 20 ms. */
  over20: number;
  /** The worst second's p99. */
  worstSecondP99: number;
}

/** One second of the run; what else happened in it (event loop, GC, WAL fsyncs, checkpoints, autovacuum, retention): {@link SecondWatchSample}. */
interface Sample extends SecondWatchSample {
  /** Seconds since the start. */
  t: number;
  enqueued: number;
  started: number;
  p50: number;
  p99: number;
  nodeRss: number;
  nodeCpu: number;
  pgRss: number;
  pgCpu: number;
  tableBytes: number;
  behind: number;
  /** Longest enqueue call (one transaction) that ended in the second (ms). */
  enqueueMaxMs: number;
}

// I/O timing: the per-second WAL fsync time (no effect on durability).
// SOAK_PG_SETTINGS (JSON) adds server settings for a diagnosis (logging, lock waits...).
const server = await benchPostgres({ max_connections: 200, track_io_timing: 'on', track_wal_io_timing: 'on', ...JSON.parse(process.env.SOAK_PG_SETTINGS ?? '{}') });
const admin = new pg.Client({ connectionString: server.url });
await admin.connect();
if (WARM_WAL_MB > 0) {
  // A scratch database, rows of ~1 KB (about 1.1 KB of WAL each), then a checkpoint: the
  // segments written are recycled for the WAL to come, as on a server that has been running.
  const warmDb = `soak_warm_${process.pid}`;
  await admin.query(`CREATE DATABASE ${warmDb}`);
  const wurl = new URL(server.url);
  wurl.pathname = `/${warmDb}`;
  const w = new pg.Client({ connectionString: wurl.toString() });
  await w.connect();
  const t0 = performance.now();
  const start = (await w.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn;
  await w.query('CREATE TABLE warm (id int, pad text)');
  let written = 0;
  while (written < WARM_WAL_MB * 1024 * 1024) {
    await w.query(`INSERT INTO warm SELECT g, repeat('x', 1000) FROM generate_series(1, 50000) g`);
    await w.query('TRUNCATE warm');
    written = Number((await w.query<{ n: string }>('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint AS n', [start])).rows[0].n);
  }
  await w.query('CHECKPOINT');
  await w.end();
  await admin.query(`DROP DATABASE ${warmDb}`);
  await admin.query('CHECKPOINT');
  console.log(`# warm-up: ${Math.round(written / 1024 / 1024)} MB of WAL written and checkpointed in ${((performance.now() - t0) / 1000).toFixed(0)} s (--warm-wal-mb ${WARM_WAL_MB})`);
}
const dbName = `soak_${process.pid}`;
await admin.query(`CREATE DATABASE ${dbName}`);
const url = new URL(server.url);
url.pathname = `/${dbName}`;
const monitor = new pg.Client({ connectionString: url.toString() });
const lib = make();
const samples: Sample[] = [];
let stopping = false;
try {
  await lib.setup(url.toString());
  await monitor.connect();
  const settings = Object.fromEntries(
    (await monitor.query<{ name: string; setting: string }>(`SELECT name, setting FROM pg_settings WHERE name IN ('server_version','server_version_num','fsync','full_page_writes','synchronous_commit','shared_buffers','autovacuum','max_connections')`)).rows.map((r) => [r.name, r.setting]),
  );
  let enqueued = 0;
  let enqueueMax = 0;
  let started = 0;
  let latencies: number[] = [];
  let hist = new LatencyHistogram();
  const minutes: MinuteSummary[] = [];
  await lib.start((t) => {
    started++;
    const ms = now() - t;
    latencies.push(ms);
    hist.add(ms);
  });
  const t0 = now();
  const end = t0 + MINUTES * 60_000;
  // The producer: every 20 ms, what is due at RATE/s, in one batch.
  const producing = (async () => {
    while (!stopping && now() < end) {
      const due = Math.floor(((now() - t0) / 1000) * RATE) - enqueued;
      if (due > 0) {
        const stamp = now();
        await lib.enqueue(Array.from({ length: due }, () => stamp));
        enqueueMax = Math.max(enqueueMax, now() - stamp);
        enqueued += due;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  // What else happened each second, to read the worst seconds against.
  const watch = await SecondWatch.start(monitor, dbName);
  lib.onRetention?.((n) => watch.event(`retention ${n}`));
  // SOAK_WAITS=1: what the database's backends wait on, sampled every 10 ms (a diagnosis).
  const waits = new Map<string, number>();
  let waitsPolling: Promise<void> | undefined;
  if (process.env.SOAK_WAITS) {
    const poller = new pg.Client({ connectionString: url.toString() });
    await poller.connect();
    waitsPolling = (async () => {
      while (!stopping && now() < end) {
        const { rows } = await poller.query<{ w: string; n: number }>(
          `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') || ' (' || split_part(left(query, 40), ' ', 1) || ')' AS w, count(*)::int AS n
             FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid() GROUP BY 1`,
          [dbName],
        );
        for (const r of rows) waits.set(r.w, (waits.get(r.w) ?? 0) + r.n);
        await new Promise((r) => setTimeout(r, 10));
      }
      await poller.end();
    })();
  }
  let lastCpu = process.cpuUsage();
  let lastPg = { rss: 0, cpu: 0 };
  let lastEnq = 0;
  let lastStarted = 0;
  let minute: Sample[] = [];
  console.log(`# soak ${lib.name}: ${RATE} jobs/s offered for ${MINUTES} min, concurrency ${CONCURRENCY}; Postgres ${settings.server_version} fsync=${settings.fsync} full_page_writes=${settings.full_page_writes} synchronous_commit=${settings.synchronous_commit}; ${cpus().length} × ${cpus()[0]?.model.trim()}`);
  console.log('minute | offered/s | enqueued/s | started/s | p50 ms | p99 ms (all jobs of the minute) | p99.9 ms | jobs > 20 ms | p99 ms (worst second) | node RSS MB | pg RSS MB | tables MB | backlog');
  while (now() < end) {
    await new Promise((r) => setTimeout(r, 1000));
    const pids = (await monitor.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'`, [dbName])).rows.map((r) => r.pid);
    const pgUse = backendUsage(pids);
    const size = await monitor.query<{ b: string }>(
      `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::text AS b FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`,
      [lib.schema],
    );
    const watched = await watch.sample();
    const cpu = process.cpuUsage(lastCpu);
    lastCpu = process.cpuUsage();
    const s: Sample = {
      t: Math.round((now() - t0) / 1000),
      enqueued: enqueued - lastEnq,
      started: started - lastStarted,
      p50: pct(latencies, 0.5),
      p99: pct(latencies, 0.99),
      nodeRss: process.memoryUsage().rss,
      nodeCpu: (cpu.user + cpu.system) / 1e6,
      pgRss: pgUse.rss,
      pgCpu: Math.max(0, pgUse.cpu - lastPg.cpu),
      tableBytes: Number(size.rows[0].b),
      behind: enqueued - started,
      enqueueMaxMs: enqueueMax,
      ...watched,
    };
    enqueueMax = 0;
    lastPg = pgUse;
    lastEnq = enqueued;
    lastStarted = started;
    latencies = [];
    samples.push(s);
    minute.push(s);
    if (minute.length === 60 || now() >= end) {
      const sum = (k: 'enqueued' | 'started') => minute.reduce((a, x) => a + x[k], 0);
      const last = minute[minute.length - 1];
      const m: MinuteSummary = {
        minute: Math.ceil(samples.length / 60),
        started: hist.n,
        p50: hist.quantile(0.5),
        p99: hist.quantile(0.99),
        p999: hist.quantile(0.999),
        over20: hist.over(20),
        worstSecondP99: Math.max(...minute.map((x) => x.p99)),
      };
      minutes.push(m);
      console.log(
        `${m.minute} | ${RATE} | ${Math.round(sum('enqueued') / minute.length)} | ${Math.round(sum('started') / minute.length)} | ${m.p50.toFixed(1)} | ${m.p99.toFixed(1)} | ${m.p999.toFixed(1)} | ${(100 * m.over20).toFixed(2)}% | ${m.worstSecondP99.toFixed(1)} | ${(last.nodeRss / 2 ** 20).toFixed(0)} | ${(last.pgRss / 2 ** 20).toFixed(0)} | ${(last.tableBytes / 2 ** 20).toFixed(1)} | ${last.behind}`,
      );
      minute = [];
      hist = new LatencyHistogram();
    }
  }
  stopping = true;
  await producing;
  watch.stop();
  if (waitsPolling) {
    await waitsPolling;
    const total = [...waits.values()].reduce((a, b) => a + b, 0);
    console.log('# what active backends waited on (share of samples):');
    for (const [w, n] of [...waits].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${((100 * n) / total).toFixed(1)}% ${w}`);
  }
  // The worst seconds, with what happened in them (and the second before).
  const worst = [...samples].sort((a, b) => b.p99 - a.p99).slice(0, 10);
  console.log('# worst seconds: t | p99 ms | event-loop max ms | GC max ms | longest enqueue ms | WAL fsyncs (ms total) | events (this second; the one before)');
  for (const w of worst) {
    const prev = samples.find((x) => x.t === w.t - 1);
    console.log(`${w.t} | ${w.p99.toFixed(1)} | ${w.loopMaxMs.toFixed(1)} | ${w.gcMaxMs.toFixed(1)} | ${w.enqueueMaxMs.toFixed(1)} | ${w.walSyncs ?? '-'} (${w.walSyncMs?.toFixed(1) ?? '-'}) | ${w.events.join(', ') || '-'}; ${prev?.events.join(', ') || '-'}`);
  }
  mkdirSync(args.out!, { recursive: true });
  const file = join(args.out!, `soak-${lib.name}.json`);
  writeFileSync(
    file,
    JSON.stringify({ lib: lib.name, rate: RATE, minutes: MINUTES, concurrency: CONCURRENCY, warmWalMb: WARM_WAL_MB, settings, node: process.version, cpus: cpus().length, loadavg: loadavg(), perMinute: minutes, samples }, null, 0),
  );
  console.log(`# series written to ${file}`);
} finally {
  stopping = true;
  await lib.stop().catch(() => {});
  await monitor.end().catch(() => {});
  await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {});
  await admin.end();
  await server.stop();
}
