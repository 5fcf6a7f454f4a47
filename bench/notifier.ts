/**
 * Notifier benchmark: pgherald against raw `pg` (a pg.Client with LISTEN),
 * postgres.js `sql.listen` and pg-listen, on ONE Postgres in ONE run.
 *
 * - latency: notify-to-handler p50/p99 at a steady 1,000 notifications/s (all listeners
 *   open, one stream moving between them every 0.1 s); the sender
 *   (a worker thread, its own connection) puts `<seq>:<hrtime ns>` in the payload.
 * - peak: notifications/s delivered when senders blast (4 connections, 100 distinct
 *   notifications per statement); every sequence number is counted (100% check).
 * - pgbench: the `SELECT pg_notify('bench', 'x')` ceiling with several clients, and
 *   whether a pgherald listener receives 100% of them at that rate.
 * - fan-out: one connection, 1,000 in-process subscribers of one channel, deliveries/s
 *   (5,000 notifications committed at once).
 * Peak and fan-out are timed from a burst's first delivery to its last, best of 3
 * interleaved trials per run.
 *
 * Every measurement runs `--runs` times (default 3, contenders in rotating order);
 * the tables give each run, the median and the ratio to raw pg.
 *
 * Usage: node --import tsx bench/notifier.ts [--runs 3] [--only latency,peak,pgbench,fanout]
 *        [--contenders pgherald,raw-pg,...] [--json out.json]
 * DATABASE_URL: use that server (needs the right to LISTEN/NOTIFY) instead of starting one.
 * PGBENCH: path of pgbench (default /usr/lib/postgresql/15/bin/pgbench, else `pgbench` on PATH).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import pg from 'pg';
import { benchPostgres } from './support/postgres.js';
import { CONTENDERS, pgherald, type Contender } from './support/contenders.js';
import type { SenderCommand } from './support/sender.js';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    only: { type: 'string', default: 'latency,peak,pgbench,fanout' },
    contenders: { type: 'string' },
    json: { type: 'string' },
  },
});

const RUNS = Number(args.runs);
const PHASES = new Set(args.only!.split(','));
const LAT_RATE = 1000;
const LAT_WARMUP = 500; // first 500 of each listener not counted (connection warm-up, JIT)
const LAT_COUNT = 4000; // measured per contender per run
const LAT_SLICE = 100; // the 1,000/s stream moves to the next listener every 0.1 s
const PEAK_COUNT = 200_000;
const PEAK_BATCH = 100;
const PEAK_CONNECTIONS = 4;
const PGBENCH_CLIENTS = 8;
const PGBENCH_THREADS = 2;
const PGBENCH_SECONDS = 5;
const FAN_SUBSCRIBERS = 1000;
const FAN_COUNT = 5000; // 5,000 notifications x 1,000 subscribers = 5,000,000 deliveries
const RATE_TRIALS = 3; // peak and fan-out: best of 3 interleaved trials per run
const IDLE_TIMEOUT_MS = 3000; // give up waiting when nothing new arrives for this long

const slug = (name: string) => name.replace(/[^a-z0-9]+/gi, '-').toLowerCase();
const contenders: Contender[] = args.contenders
  ? CONTENDERS.filter((c) => args.contenders!.split(',').includes(slug(c.name)))
  : CONTENDERS;

const now = () => Number(process.hrtime.bigint());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- Postgres

const pgServer = await benchPostgres({ shared_buffers: '256MB', max_connections: 100 });
const url = pgServer.url;
const tmp = pgServer.dir;
const cleanup = () => pgServer.stop();
process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));

async function serverInfo(): Promise<Record<string, string>> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  const out: Record<string, string> = {};
  for (const s of ['server_version', 'fsync', 'synchronous_commit', 'shared_buffers', 'max_connections']) {
    out[s] = (await client.query(`SHOW ${s}`)).rows[0][s];
  }
  await client.end();
  return out;
}

// ---------------------------------------------------------------- sender

// Workers do not inherit `--import tsx`: register tsx inside the worker, then load the sender.
const senderUrl = new URL('./support/sender.ts', import.meta.url).href;
const sender = new Worker(
  `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(senderUrl)}); });`,
  { eval: true },
);
sender.unref();
function send(cmd: SenderCommand): Promise<number> {
  return new Promise((resolve, reject) => {
    sender.once('message', (m: { sent: number; error?: string }) => (m.error ? reject(new Error(m.error)) : resolve(m.sent)));
    sender.postMessage(cmd);
  });
}

/** Resolves when `done()` turns true, or when `progress()` stops moving for IDLE_TIMEOUT_MS. */
async function settle(done: () => boolean, progress: () => number): Promise<void> {
  let last = progress();
  let lastChange = Date.now();
  while (!done()) {
    await sleep(5);
    const p = progress();
    if (p !== last) {
      last = p;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > IDLE_TIMEOUT_MS) return;
  }
}

// ---------------------------------------------------------------- phases

interface LatencyResult {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  delivered: number;
  expected: number;
  duplicates: number;
}

/**
 * One latency run for every contender. All listeners stay open on their own channel;
 * one steady stream at LAT_RATE moves from channel to channel every LAT_SLICE
 * notifications, so each library is fed alone at the full rate, and load from other
 * work on the machine falls on every library alike instead of on whichever ran
 * during a busy moment.
 */
async function latencyRun(cs: Contender[], run: number): Promise<Map<string, LatencyResult>> {
  const total = LAT_WARMUP + LAT_COUNT;
  const states = cs.map((c) => ({
    c,
    channel: `bench_lat_${slug(c.name)}_${run}`,
    lat: new Float64Array(total),
    seen: new Uint8Array(total),
    got: 0,
    duplicates: 0,
  }));
  const listeners = [];
  try {
    for (const s of states) {
      listeners.push(
        await s.c.open(url!, s.channel, 1, (p) => {
          const t = now();
          const colon = p.indexOf(':');
          const seq = Number(p.slice(0, colon));
          if (s.seen[seq]) return void s.duplicates++;
          s.seen[seq] = 1;
          s.got++;
          s.lat[seq] = t - Number(p.slice(colon + 1));
        }),
      );
    }
    await send({ cmd: 'rotating', url: url!, channels: states.map((s) => s.channel), rate: LAT_RATE, perChannel: total, slice: LAT_SLICE, offset: run });
    await settle(() => states.every((s) => s.got === total), () => states.reduce((n, s) => n + s.got, 0));
  } finally {
    for (const l of listeners) await l.close();
  }
  const out = new Map<string, LatencyResult>();
  for (const s of states) {
    const measured: number[] = [];
    for (let i = LAT_WARMUP; i < total; i++) if (s.seen[i]) measured.push(s.lat[i] / 1e6);
    measured.sort((a, b) => a - b);
    out.set(s.c.name, {
      p50Ms: percentile(measured, 0.5),
      p99Ms: percentile(measured, 0.99),
      maxMs: measured[measured.length - 1] ?? NaN,
      delivered: s.got,
      expected: total,
      duplicates: s.duplicates,
    });
  }
  return out;
}

interface RateResult {
  /** The best of the run's trials. */
  perSecond: number;
  trials: number[];
  delivered: number;
  expected: number;
  duplicates: number;
  dropped: number;
}

interface RateSetup {
  kind: 'peak' | 'fan';
  subscribers: number;
  count: number;
  batch: number;
  connections: number;
}

/** Peak: many sender connections, 100 notifications per statement, one subscriber. */
const PEAK: RateSetup = { kind: 'peak', subscribers: 1, count: PEAK_COUNT, batch: PEAK_BATCH, connections: PEAK_CONNECTIONS };
/**
 * Fan-out: the notifications go in ONE statement (one transaction), so they all reach
 * the listen socket at once when it commits: the figure is the listener's fan-out
 * rate, not the sender's.
 */
const FAN: RateSetup = { kind: 'fan', subscribers: FAN_SUBSCRIBERS, count: FAN_COUNT, batch: FAN_COUNT, connections: 1 };

/**
 * One throughput run for every contender: all listeners open (each on its own channel),
 * RATE_TRIALS bursts per contender taken in turn, each timed from its first delivery
 * to its last; the run's figure is a contender's best trial (its capacity, least
 * disturbed by other work on the shared machine). Every delivery is counted per
 * sequence number: `delivered` must equal `expected`.
 */
async function rateRun(cs: Contender[], run: number, setup: RateSetup): Promise<Map<string, RateResult>> {
  const seqs = RATE_TRIALS * setup.count;
  const states = cs.map((c) => ({
    c,
    channel: `bench_${setup.kind}_${slug(c.name)}_${run}`,
    perSeq: new Uint16Array(seqs),
    trials: Array.from({ length: RATE_TRIALS }, () => ({ delivered: 0, first: 0, last: 0 })),
    duplicates: 0,
  }));
  const listeners: { c: Contender; l: Awaited<ReturnType<Contender['open']>> }[] = [];
  try {
    for (const s of states) {
      const l = await s.c.open(url!, s.channel, setup.subscribers, (p) => {
        const t = now();
        const seq = Number(p);
        if (++s.perSeq[seq] > setup.subscribers) s.duplicates++;
        const trial = s.trials[(seq / setup.count) | 0];
        if (trial.delivered++ === 0) trial.first = t;
        trial.last = t;
      });
      listeners.push({ c: s.c, l });
    }
    const want = setup.count * setup.subscribers;
    for (let k = 0; k < RATE_TRIALS; k++) {
      for (let i = 0; i < states.length; i++) {
        const s = states[(i + k + run) % states.length];
        const trial = s.trials[k];
        await send({ cmd: 'burst', url: url!, channel: s.channel, from: k * setup.count, count: setup.count, batch: setup.batch, connections: setup.connections });
        await settle(() => trial.delivered === want, () => trial.delivered);
      }
    }
  } finally {
    for (const { l } of listeners) await l.close();
  }
  const out = new Map<string, RateResult>();
  for (const s of states) {
    const rates = s.trials.map((t) => t.delivered / ((t.last - t.first) / 1e9));
    out.set(s.c.name, {
      perSecond: Math.max(...rates.filter(Number.isFinite)),
      trials: rates,
      delivered: s.trials.reduce((n, t) => n + t.delivered, 0),
      expected: RATE_TRIALS * setup.count * setup.subscribers,
      duplicates: s.duplicates,
      dropped: listeners.find((x) => x.c === s.c)!.l.dropped(),
    });
  }
  return out;
}

interface PgbenchResult {
  tps: number;
  processed: number;
  failed: number;
  received: number;
  dropped: number;
  clients: number;
}

function pgbenchPath(): string | undefined {
  const candidates = [process.env.PGBENCH, '/usr/lib/postgresql/15/bin/pgbench'].filter(Boolean) as string[];
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v pgbench'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : undefined;
}

async function pgbench(bin: string, channel: string): Promise<PgbenchResult> {
  const script = join(tmp, `notify-${channel}.sql`);
  writeFileSync(script, `SELECT pg_notify('${channel}', 'x');\n`);
  let received = 0;
  const listener = await pgherald.open(url!, channel, 1, () => void received++);
  try {
    const u = new URL(url!);
    const env = { ...process.env, PGPASSWORD: decodeURIComponent(u.password) };
    const argv = [
      '-n', '-f', script, '-c', String(PGBENCH_CLIENTS), '-j', String(PGBENCH_THREADS), '-T', String(PGBENCH_SECONDS),
      '-h', u.hostname, '-p', u.port || '5432', '-U', decodeURIComponent(u.username) || 'postgres',
      decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    ];
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(bin, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.stderr.on('data', (d) => (text += d));
      child.on('error', reject);
      child.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`pgbench exited ${code}: ${text}`))));
    });
    const processed = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1]);
    const failed = Number(/number of failed transactions: (\d+)/.exec(out)?.[1] ?? 0);
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1]);
    if (!Number.isFinite(processed) || !Number.isFinite(tps)) throw new Error(`cannot read pgbench output: ${out}`);
    await settle(() => received >= processed, () => received);
    return { tps, processed, failed, received, dropped: listener.dropped(), clients: PGBENCH_CLIENTS };
  } finally {
    await listener.close();
  }
}

// ---------------------------------------------------------------- stats and output

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}
function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–');
const fk = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
const ratio = (x: number, base: number) => (Number.isFinite(x) && Number.isFinite(base) && base > 0 ? `${(x / base).toFixed(2)}×` : '–');
const pct = (got: number, want: number) => `${((100 * got) / want).toFixed(got === want ? 0 : 3)}%`;

// ---------------------------------------------------------------- main

const info = await serverInfo();
const startedAt = new Date();
const loadBefore = loadavg();
console.error(`# notifier bench: Postgres ${info.server_version}, Node ${process.version}, ${cpus().length} cores, ${RUNS} runs`);

const latencyRuns = new Map<string, LatencyResult[]>();
const peakRuns = new Map<string, RateResult[]>();
const fanRuns = new Map<string, RateResult[]>();
const pgbenchRuns: PgbenchResult[] = [];
const bin = pgbenchPath();
const t0 = Date.now();

for (let run = 0; run < RUNS; run++) {
  // Rotate the order so no library always goes first (or right after another one).
  if (PHASES.has('latency')) {
    for (const [name, r] of await latencyRun(contenders, run)) {
      (latencyRuns.get(name) ?? latencyRuns.set(name, []).get(name)!).push(r);
      console.error(`run ${run + 1} ${name} latency p50 ${f2(r.p50Ms)} ms p99 ${f2(r.p99Ms)} ms max ${f2(r.maxMs)} ms, ${r.delivered}/${r.expected}`);
    }
  }
  for (const [phase, setup, runs] of [['peak', PEAK, peakRuns], ['fanout', FAN, fanRuns]] as const) {
    if (!PHASES.has(phase)) continue;
    for (const [name, r] of await rateRun(contenders, run, setup)) {
      (runs.get(name) ?? runs.set(name, []).get(name)!).push(r);
      console.error(`run ${run + 1} ${name} ${phase} ${r.trials.map(fk).join(' / ')} per s, ${r.delivered}/${r.expected}, dropped ${r.dropped}`);
    }
  }
  if (PHASES.has('pgbench') && bin) {
    const r = await pgbench(bin, `bench_${run}`);
    pgbenchRuns.push(r);
    console.error(`run ${run + 1} pgbench ${fk(r.tps)} tps, pgherald received ${r.received}/${r.processed}`);
  }
}

const elapsedS = (Date.now() - t0) / 1000;
const loadAfter = loadavg();
await sender.terminate();
await cleanup();

// ---- report
const lines: string[] = [];
const p = (s = '') => lines.push(s);
p(`Postgres ${info.server_version} (${pgServer.cluster ? 'embedded cluster started by the bench' : 'DATABASE_URL'}; fsync=${info.fsync}, synchronous_commit=${info.synchronous_commit}, shared_buffers=${info.shared_buffers}), Node ${process.version}, ${cpus().length} × ${cpus()[0]?.model.trim()}.`);
p(`${startedAt.toISOString()}, ${RUNS} runs in ${elapsedS.toFixed(0)} s; load average before ${loadBefore.map((x) => x.toFixed(2)).join(' ')}, after ${loadAfter.map((x) => x.toFixed(2)).join(' ')}.`);
p();
const baseline = 'raw pg';

if (latencyRuns.size > 0) {
  p(`### Notify-to-handler latency at ${LAT_RATE.toLocaleString('en-US')} notifications/s (${LAT_COUNT.toLocaleString('en-US')} measured per library per run; one steady stream moving between the libraries every ${LAT_SLICE / LAT_RATE} s; ms)`);
  p();
  p('| library | p50 per run | p50 median | p50 vs raw pg | p99 per run | p99 median | p99 vs raw pg | delivered |');
  p('|---|---|---|---|---|---|---|---|');
  const base = latencyRuns.get(baseline);
  const b50 = base ? median(base.map((r) => r.p50Ms)) : NaN;
  const b99 = base ? median(base.map((r) => r.p99Ms)) : NaN;
  for (const [name, rs] of latencyRuns) {
    const m50 = median(rs.map((r) => r.p50Ms));
    const m99 = median(rs.map((r) => r.p99Ms));
    const got = rs.reduce((s, r) => s + r.delivered, 0);
    const want = rs.reduce((s, r) => s + r.expected, 0);
    p(`| ${name} | ${rs.map((r) => f2(r.p50Ms)).join(' / ')} | ${f2(m50)} | ${ratio(m50, b50)} | ${rs.map((r) => f2(r.p99Ms)).join(' / ')} | ${f2(m99)} | ${ratio(m99, b99)} | ${pct(got, want)} |`);
  }
  p();
}

function rateTable(title: string, runs: Map<string, RateResult[]>, unit: string): void {
  p(title);
  p();
  p(`| library | ${unit} per run | median | vs raw pg | delivered | dropped |`);
  p('|---|---|---|---|---|---|');
  const base = runs.get(baseline);
  const b = base ? median(base.map((r) => r.perSecond)) : NaN;
  for (const [name, rs] of runs) {
    const m = median(rs.map((r) => r.perSecond));
    const got = rs.reduce((s, r) => s + r.delivered, 0);
    const want = rs.reduce((s, r) => s + r.expected, 0);
    const dups = rs.reduce((s, r) => s + r.duplicates, 0);
    const dropped = rs.reduce((s, r) => s + r.dropped, 0);
    p(`| ${name} | ${rs.map((r) => fk(r.perSecond)).join(' / ')} | ${fk(m)} | ${ratio(m, b)} | ${pct(got, want)}${dups ? ` (${dups} duplicates)` : ''} | ${dropped} |`);
  }
  p();
}
if (peakRuns.size > 0) {
  rateTable(
    `### Peak notifications/s delivered (bursts of ${PEAK_COUNT.toLocaleString('en-US')} from ${PEAK_CONNECTIONS} sender connections, ${PEAK_BATCH} per statement, timed from first to last delivery; best of ${RATE_TRIALS} interleaved trials per run; every sequence number counted)`,
    peakRuns,
    'notifications/s',
  );
}
if (fanRuns.size > 0) {
  rateTable(
    `### Fan-out: one connection, ${FAN_SUBSCRIBERS.toLocaleString('en-US')} in-process subscribers of one channel (${FAN_COUNT.toLocaleString('en-US')} notifications committed in one statement = ${(FAN_COUNT * FAN_SUBSCRIBERS).toLocaleString('en-US')} deliveries per trial, timed from first to last delivery; best of ${RATE_TRIALS} interleaved trials per run)`,
    fanRuns,
    'deliveries/s',
  );
}
if (PHASES.has('pgbench')) {
  p(`### pgbench \`SELECT pg_notify(...)\` ceiling (${PGBENCH_CLIENTS} clients, ${PGBENCH_THREADS} threads, ${PGBENCH_SECONDS} s) with a pgherald listener counting`);
  p();
  if (!bin) {
    p('pgbench not found (set PGBENCH): skipped.');
  } else {
    p('| run | pgbench tps | transactions | failed | pgherald received | delivered | dropped |');
    p('|---|---|---|---|---|---|---|');
    pgbenchRuns.forEach((r, i) =>
      p(`| ${i + 1} | ${fk(r.tps)} | ${r.processed} | ${r.failed} | ${r.received} | ${pct(r.received, r.processed)} | ${r.dropped} |`),
    );
    p(`| median | ${fk(median(pgbenchRuns.map((r) => r.tps)))} | | | | | |`);
  }
  p();
}

// ---- goals of issue 2
const goals: string[] = [];
const herald = latencyRuns.get('pgherald');
const raw = latencyRuns.get(baseline);
if (herald && raw) {
  const h50 = median(herald.map((r) => r.p50Ms)), r50 = median(raw.map((r) => r.p50Ms));
  const h99 = median(herald.map((r) => r.p99Ms)), r99 = median(raw.map((r) => r.p99Ms));
  goals.push(`p50 no worse than raw pg: ${h50 <= r50 ? 'met' : 'MISSED'} (${f2(h50)} vs ${f2(r50)} ms)`);
  goals.push(`p99 no worse than raw pg: ${h99 <= r99 ? 'met' : 'MISSED'} (${f2(h99)} vs ${f2(r99)} ms)`);
}
if (pgbenchRuns.length > 0) {
  const all = pgbenchRuns.every((r) => r.received === r.processed);
  goals.push(`100% delivered at the pgbench ceiling: ${all ? 'met' : 'MISSED'} (${pgbenchRuns.map((r) => pct(r.received, r.processed)).join(', ')})`);
}
const fan = fanRuns.get('pgherald');
if (fan) {
  const m = median(fan.map((r) => r.perSecond));
  const complete = fan.every((r) => r.delivered === r.expected);
  goals.push(`fan-out >= 100,000 deliveries/s: ${m >= 100_000 && complete ? 'met' : 'MISSED'} (${fk(m)}/s${complete ? '' : ', not every delivery made'})`);
}
if (goals.length > 0) {
  p('Goals (issue 2):');
  for (const g of goals) p(`- ${g}`);
}

console.log(lines.join('\n'));
if (args.json) {
  writeFileSync(
    args.json,
    JSON.stringify({ info, startedAt, loadBefore, loadAfter, latencyRuns: Object.fromEntries(latencyRuns), peakRuns: Object.fromEntries(peakRuns), fanRuns: Object.fromEntries(fanRuns), pgbenchRuns }, null, 2),
  );
}
process.exit(0);
