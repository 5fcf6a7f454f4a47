/**
 * Gateway churn soak: clients connect and disconnect continuously for minutes while a
 * topic is fed at a steady rate; the server's RSS and handles must stay flat (no leak)
 * and every connected client must get every event.
 *
 *   node --import tsx bench/gateway-churn.ts [--minutes 30] [--churn 100] [--lifetime-s 5]
 *        [--stable 100] [--rate 100] [--transports mixed|sse|ws] [--client-procs 2]
 *        [--sample-every 10] [--out bench/results]
 *
 * The server (bench/gateway/server.ts, `HeraldServer` in open loopback mode) runs in
 * its own process; the clients in `--client-procs` others (bench/gateway/churn-clients.ts):
 * `--stable` long-lived clients, plus `--churn` new clients per second (spread over the
 * processes), each closing itself `--lifetime-s` after it connected; so about
 * churn × lifetime short-lived clients are open at any time. `mixed` alternates SSE and
 * WebSocket (half each). The publisher here sends `--rate` notifications/s (what is due
 * every 10 ms in one statement), payload `<seq>-<publish time>`.
 *
 * Every client decodes every event and checks that its sequence numbers are
 * consecutive from its first to its last event (`gaps`, `missed`); at the end the open
 * clients wait for the last event (`tail missing`). A socket the server closed is `cut`.
 * Every second: the server's RSS, heap, active handles (`process.getActiveResourcesInfo()`),
 * open clients, CPU, and the clients' events/s and latency (p50/p99 of publish → client,
 * decoded on 1 client in `--sample-every`). Writes `<out>/gateway-churn.json` for
 * bench/plot.ts. "Flat" is judged by comparing the second half of the run with the
 * first: the summary prints the RSS and handles at 25%, 50%, 75% and 100% of the run.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { benchPostgres } from './support/postgres.js';
import { once } from './support/ipc.js';

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    churn: { type: 'string', default: '100' },
    'lifetime-s': { type: 'string', default: '5' },
    stable: { type: 'string', default: '100' },
    rate: { type: 'string', default: '100' },
    transports: { type: 'string', default: 'mixed' },
    'client-procs': { type: 'string', default: '2' },
    'sample-every': { type: 'string', default: '10' },
    out: { type: 'string', default: 'bench/results' },
  },
});
const MINUTES = Number(args.minutes);
const CHURN = Number(args.churn);
const LIFETIME_MS = Number(args['lifetime-s']) * 1000;
const STABLE = Number(args.stable);
const RATE = Number(args.rate);
const PROCS = Number(args['client-procs']);
const SAMPLE_EVERY = Number(args['sample-every']);
const TRANSPORT = args.transports!;
if (!['mixed', 'sse', 'ws'].includes(TRANSPORT)) throw new Error('--transports must be mixed, sse or ws');
for (const [k, v] of Object.entries({ minutes: MINUTES, rate: RATE, 'client-procs': PROCS, 'sample-every': SAMPLE_EVERY })) {
  if (!(v > 0) || !Number.isFinite(v)) throw new Error(`--${k} must be a positive number`);
}
const here = new URL('.', import.meta.url).pathname;
const execArgv = ['--import', 'tsx'];

const pct = (xs: number[], p: number) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]);
const ask = <T>(child: ChildProcess, key: string, msg: object): Promise<T> => {
  const r = once<Record<string, T>>(child, (m) => m[key] !== undefined, key).then((m) => m[key]);
  child.send(msg);
  return r;
};

interface ClientSample {
  open: number;
  opened: number;
  closedByUs: number;
  cut: number;
  refused: number;
  events: number;
  gaps: number;
  missedEvents: number;
  latencies: number[];
}
interface ServerSample {
  rss: number;
  heapUsed: number;
  handles: number;
  clients: number;
  cpu: NodeJS.CpuUsage;
  notifications: number;
  gaps: number;
}
interface Sample {
  t: number;
  serverRss: number;
  serverHeap: number;
  handles: number;
  serverClients: number;
  openClients: number;
  serverCpu: number;
  connects: number;
  events: number;
  p50: number;
  p99: number;
  cut: number;
  gaps: number;
}

const pgServer = await benchPostgres({ max_connections: 100 });
const publisher = new pg.Client({ connectionString: pgServer.url });
publisher.on('error', () => {});
await publisher.connect();
const version = (await publisher.query('SHOW server_version')).rows[0].server_version;
const server = fork(join(here, 'gateway/server.ts'), [], { execArgv, env: { ...process.env, DATABASE_URL: pgServer.url, FLUSH_INTERVAL_MS: '0' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
const procs: ChildProcess[] = [];
const samples: Sample[] = [];
const loadBefore = loadavg();
try {
  const { url: base, channel } = await once<{ url: string; channel: string }>(server, (m) => m.url, 'server url');
  for (let i = 0; i < PROCS; i++) {
    const stable = Math.floor(STABLE / PROCS) + (i < STABLE % PROCS ? 1 : 0);
    const churn = CHURN / PROCS;
    procs.push(fork(join(here, 'gateway/churn-clients.ts'), [base, TRANSPORT, String(stable), String(churn), String(LIFETIME_MS), String(SAMPLE_EVERY)], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  }
  await Promise.all(procs.map((p) => once(p, (m) => m.ready, 'clients ready')));
  for (const p of procs) p.send({ churn: true });
  console.log(`# gateway churn: ${STABLE} stable + ${CHURN} connecting/s (each for ${LIFETIME_MS / 1000} s), ${TRANSPORT}, ${RATE} notifications/s, ${MINUTES} min; ${PROCS} client processes; Postgres ${version}; ${cpus().length} × ${cpus()[0]?.model.trim()}; load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}`);
  console.log('until s | connects/s | open clients | events/s | p50 ms | p99 ms (worst s) | server RSS MB | heap MB | handles | server CPU | cut | gaps');
  let seq = 0;
  const start = performance.now();
  const end = start + MINUTES * 60_000;
  let stopping = false;
  const publishing = (async () => {
    while (!stopping && performance.now() < end) {
      const due = Math.floor(((performance.now() - start) / 1000) * RATE) - seq;
      if (due > 0) {
        const payloads = Array.from({ length: due }, () => `${seq++}-${performance.timeOrigin + performance.now()}`);
        await publisher.query('SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p', [channel, payloads]);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  let prevClients: ClientSample[] = procs.map(() => ({ open: 0, opened: 0, closedByUs: 0, cut: 0, refused: 0, events: 0, gaps: 0, missedEvents: 0, latencies: [] }));
  let prevCpu: NodeJS.CpuUsage | undefined;
  let prevAt = performance.now();
  let block: Sample[] = [];
  const blockLen = MINUTES < 5 ? 30 : 60;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 1000));
    const [s, ...cs] = await Promise.all([ask<ServerSample>(server, 'sample', { sample: true }), ...procs.map((p) => ask<ClientSample>(p, 'sample', { sample: true }))]);
    const at = performance.now();
    const sum = (k: keyof Omit<ClientSample, 'latencies'>, xs: ClientSample[]) => xs.reduce((a, x) => a + x[k], 0);
    const lat = cs.flatMap((c) => c.latencies);
    const sample: Sample = {
      t: Math.round((at - start) / 1000),
      serverRss: s.rss,
      serverHeap: s.heapUsed,
      handles: s.handles,
      serverClients: s.clients,
      openClients: sum('open', cs),
      serverCpu: prevCpu ? (s.cpu.user + s.cpu.system - prevCpu.user - prevCpu.system) / 1000 / (at - prevAt) : NaN,
      connects: sum('opened', cs) - sum('opened', prevClients),
      events: sum('events', cs) - sum('events', prevClients),
      p50: pct(lat, 0.5),
      p99: pct(lat, 0.99),
      cut: sum('cut', cs),
      gaps: sum('gaps', cs),
    };
    prevClients = cs;
    prevCpu = s.cpu;
    prevAt = at;
    samples.push(sample);
    block.push(sample);
    if (block.length === blockLen) {
      const avg = (k: keyof Sample) => Math.round(block.reduce((a, x) => a + x[k], 0) / block.length);
      const b = block[block.length - 1];
      console.log(
        `${b.t} | ${avg('connects')} | ${b.openClients} | ${avg('events')} | ${pct(block.map((x) => x.p50), 0.5).toFixed(1)} | ${Math.max(...block.map((x) => x.p99)).toFixed(1)} | ${(b.serverRss / 2 ** 20).toFixed(0)} | ${(b.serverHeap / 2 ** 20).toFixed(0)} | ${b.handles} | ${(100 * pct(block.map((x) => x.serverCpu), 0.5)).toFixed(0)}% | ${b.cut} | ${b.gaps}`,
      );
      block = [];
    }
  }
  stopping = true;
  await publishing;
  const lastSeq = seq - 1;
  const finals = await Promise.all(procs.map((p) => ask<Record<string, number>>(p, 'final', { finish: lastSeq })));
  const total = (k: string) => finals.reduce((a, f) => a + f[k], 0);
  const at = (q: number) => samples[Math.min(samples.length - 1, Math.max(0, Math.round(q * samples.length) - 1))];
  const marks = [0.25, 0.5, 0.75, 1].map((q) => ({ t: at(q).t, rssMb: +(at(q).serverRss / 2 ** 20).toFixed(1), heapMb: +(at(q).serverHeap / 2 ** 20).toFixed(1), handles: at(q).handles, openClients: at(q).openClients }));
  const steady = samples.slice(10);
  const summary = {
    published: seq,
    connects: total('opened'),
    closedByClients: total('closedByUs'),
    cut: total('cut'),
    refused: total('refused'),
    events: total('events'),
    gaps: total('gaps'),
    missedEvents: total('missedEvents'),
    tailMissing: total('tailMissing'),
    silentAtEnd: total('silent'),
    medianP50: pct(steady.map((s) => s.p50), 0.5),
    medianP99: pct(steady.map((s) => s.p99), 0.5),
    worstP99: Math.max(...steady.map((s) => s.p99)),
    marks,
    loadBefore,
    loadAfter: loadavg(),
  };
  console.log(`# ${JSON.stringify(summary)}`);
  const charts = [
    { title: 'server memory', unit: 'MB', series: [['serverRss', 'RSS'], ['serverHeap', 'heap used']], scale: 2 ** 20 },
    { title: 'server handles and open clients', unit: 'count', series: [['handles', 'active handles'], ['serverClients', 'clients (server)'], ['openClients', 'clients (client side)']] },
    { title: 'publish → client latency', unit: 'ms', series: [['p50', 'p50'], ['p99', 'p99']] },
    { title: 'connects and events per second', unit: '/s', series: [['connects', 'connects'], ['events', 'events received']] },
  ];
  mkdirSync(args.out!, { recursive: true });
  const file = join(args.out!, 'gateway-churn.json');
  writeFileSync(file, JSON.stringify({ lib: `gateway churn ${TRANSPORT}`, rate: RATE, minutes: MINUTES, churn: CHURN, lifetimeMs: LIFETIME_MS, stable: STABLE, postgres: version, node: process.version, cpus: cpus().length, summary, charts, samples }));
  console.log(`# series written to ${file}`);
} finally {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  if (server.exitCode === null) {
    server.send({ stop: true });
    await Promise.race([new Promise((r) => server.once('exit', r)), new Promise((r) => setTimeout(r, 10_000))]);
    if (server.exitCode === null) server.kill('SIGKILL');
  }
  await publisher.end();
  await pgServer.stop();
}
