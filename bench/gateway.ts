/**
 * Gateway benchmark: fan-out latency (publish -> client, p50/p99) and delivered
 * messages/s when 1,000 and 5,000 concurrent clients (SSE and WebSocket) follow one
 * topic fed at 1,000 notifications/s, with the server's resident memory.
 *
 * The server runs in its own process (bench/gateway/server.ts), the clients in
 * `--client-procs` processes (bench/gateway/clients.ts), the publisher here (its own
 * connection, `pg_notify` in batches paced to the rate; each payload is its publish
 * time). Everything shares one machine, so the clients' CPU competes with the server's.
 *
 * Usage: node --import tsx bench/gateway.ts [--runs 3] [--clients 1000,5000]
 *        [--transports sse,ws,mixed] [--rate 1000] [--seconds 10] [--client-procs 2] [--flush-interval-ms 0]
 *        [--profile <dir>]  (CPU profiles of the server and client processes)
 * `mixed` runs half the clients on SSE and half on WebSocket at once (give an even
 * `--client-procs`: each process uses one transport). The file-descriptor limit of
 * this process (`ulimit -n`, inherited by the children) must exceed the clients per
 * process plus the server's sockets: the bench checks and says so before starting.
 * DATABASE_URL: use that server instead of starting a throwaway cluster.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { benchPostgres } from './support/postgres.js';
import { once } from './support/ipc.js';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    clients: { type: 'string', default: '1000,5000' },
    transports: { type: 'string', default: 'sse,ws' },
    rate: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '10' },
    'client-procs': { type: 'string', default: '2' },
    'sample-every': { type: 'string', default: '25' },
    'flush-interval-ms': { type: 'string', default: '0' },
    // A directory: CPU profiles (--cpu-prof) of the server and client processes go there.
    profile: { type: 'string' },
  },
});
const RUNS = Number(args.runs);
const RATE = Number(args.rate);
const SECONDS = Number(args.seconds);
const PROCS = Number(args['client-procs']);
const SAMPLE_EVERY = Number(args['sample-every']);
const here = new URL('.', import.meta.url).pathname;
const execArgv = ['--import', 'tsx', ...(args.profile ? ['--cpu-prof', `--cpu-prof-dir=${args.profile}`] : [])];


const pct = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// Every client is a socket in a client process and one in the server: check the limit
// (`ulimit -n`; a process cannot raise its own hard limit) before starting anything.
{
  const { execSync } = await import('node:child_process');
  const limit = Number(execSync('ulimit -n', { shell: '/bin/sh' }).toString().trim());
  const most = Math.max(...args.clients!.split(',').map(Number));
  if (Number.isFinite(limit) && limit < most + 1000) throw new Error(`ulimit -n is ${limit}: the server needs one descriptor per client (${most}) and more; raise it (ulimit -n ${most + 5000}) and run again`);
}
const pgServer = await benchPostgres({ max_connections: 100 });
const url = pgServer.url;
const publisher = new pg.Client({ connectionString: url });
publisher.on('error', () => {});
await publisher.connect();
const version = (await publisher.query('SHOW server_version')).rows[0].server_version;

interface ServerStats {
  rss: number;
  cpu: NodeJS.CpuUsage;
  at: number;
  arrivalP50: number;
  arrivalP99: number;
  loopP50: number;
  loopP99: number;
  loopMax: number;
  flushes: number;
  perFlush: number;
}

interface Result {
  transport: string;
  clients: number;
  p50: number;
  p99: number;
  delivered: number;
  expected: number;
  rssMb: number;
  cpu: number;
  cut: number;
  server: ServerStats;
}

async function measure(transport: string, clients: number): Promise<Result> {
  const server = fork(join(here, 'gateway/server.ts'), [], { execArgv, env: { ...process.env, DATABASE_URL: url, FLUSH_INTERVAL_MS: args['flush-interval-ms'] }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const { url: base, channel } = await once<{ url: string; channel: string }>(server, (m) => m.url, 'server url');
  const per = Math.ceil(clients / PROCS);
  const procs = Array.from({ length: PROCS }, (_, i) =>
    // `mixed`: half the client processes use SSE, half WebSocket (so half the clients each).
    fork(join(here, 'gateway/clients.ts'), [base, transport === 'mixed' ? (i % 2 === 0 ? 'sse' : 'ws') : transport, String(Math.min(per, clients - i * per)), String(SAMPLE_EVERY)], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  await Promise.all(procs.map((p) => once(p, (m) => m.ready, 'clients ready')));
  // Publish at RATE/s: each tick sends what is due in one statement (one notification per row).
  let sent = 0;
  let measuredFrom = 0;
  const start = performance.now();
  const warmupMs = 2000;
  const total = warmupMs + SECONDS * 1000;
  let measuring = false;
  let measureStart = 0;
  let cpuStart: Promise<{ cpu: NodeJS.CpuUsage; at: number }> | undefined;
  while (performance.now() - start < total) {
    const elapsed = performance.now() - start;
    if (!measuring && elapsed >= warmupMs) {
      measuring = true;
      for (const p of procs) p.send({ measure: true });
      measureStart = performance.now();
      cpuStart = once<{ cpu: NodeJS.CpuUsage; at: number }>(server, (m) => m.cpu && !m.rss, 'server cpu');
      server.send({ cpu: true });
      measuredFrom = sent;
    }
    const due = Math.floor((elapsed / 1000) * RATE) - sent;
    if (due > 0) {
      const stamps = Array.from({ length: due }, () => String(performance.timeOrigin + performance.now()));
      await publisher.query('SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p', [channel, stamps]);
      sent += due;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  const measuredSent = sent - measuredFrom;
  const measureEnd = performance.now();
  server.send({ rss: true });
  const stats = await once<ServerStats>(server, (m) => m.rss, 'server stats');
  const c0 = await cpuStart!;
  const serverCpu = (stats.cpu.user + stats.cpu.system - c0.cpu.user - c0.cpu.system) / 1000 / (stats.at - c0.at);
  const reports = await Promise.all(procs.map((p) => {
    const r = once<{ received: number; closed: number; latencies: number[] }>(p, (m) => m.latencies, 'client report');
    p.send({ report: true });
    return r;
  }));
  server.send({ stop: true });
  await new Promise((r) => server.once('exit', r));
  const lat = reports.flatMap((r) => r.latencies).sort((a, b) => a - b);
  const received = reports.reduce((a, r) => a + r.received, 0);
  // A bench that measures nothing must say so, not print NaN.
  if (received === 0 || lat.length === 0) throw new Error(`${transport} ${clients}: no event reached a client (sent ${measuredSent} on channel ${channel}); server counters ${JSON.stringify(stats)}`);
  const cut = reports.reduce((a, r) => a + r.closed, 0);
  return {
    transport,
    clients,
    p50: pct(lat, 50),
    p99: pct(lat, 99),
    delivered: received / ((measureEnd - measureStart) / 1000),
    expected: measuredSent * clients,
    rssMb: stats.rss / 2 ** 20,
    cpu: serverCpu,
    cut,
    server: stats,
  };
}

const results: Result[] = [];
for (let run = 1; run <= RUNS; run++) {
  for (const clients of args.clients!.split(',').map(Number)) {
    for (const transport of args.transports!.split(',')) {
      const r = await measure(transport, clients);
      results.push(r);
      console.error(`run ${run} ${transport} ${clients}: p50 ${r.p50.toFixed(1)} ms p99 ${r.p99.toFixed(1)} ms delivered ${Math.round(r.delivered)}/s (offered ${RATE * clients}/s) rss ${r.rssMb.toFixed(0)} MB server cpu ${(100 * r.cpu).toFixed(0)}% cut ${r.cut}`);
      const s = r.server;
      console.error(`  server: arrival p50 ${s.arrivalP50.toFixed(1)} / p99 ${s.arrivalP99.toFixed(1)} ms; event-loop delay p50 ${s.loopP50.toFixed(1)} / p99 ${s.loopP99.toFixed(1)} / max ${s.loopMax.toFixed(0)} ms; ${(s.flushes / SECONDS).toFixed(0)} flush rounds/s, ${s.perFlush.toFixed(0)} connections each`);
    }
  }
}

console.log(`\nPostgres ${version}; ${cpus().length} × ${cpus()[0]?.model}; load average at the end ${loadavg().map((x) => x.toFixed(2)).join(' ')}; ${RATE} notifications/s for ${SECONDS} s after 2 s warm-up; ${PROCS} client processes; latency sampled on 1 client in ${SAMPLE_EVERY}; server flushIntervalMs ${args['flush-interval-ms']}\n`);
console.log('| transport | clients | p50 ms | p99 ms | delivered msgs/s | offered msgs/s | server RSS MB | server CPU | clients cut | runs (p99 each) |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const clients of args.clients!.split(',').map(Number)) {
  for (const transport of args.transports!.split(',')) {
    const rs = results.filter((r) => r.clients === clients && r.transport === transport);
    console.log(
      `| ${transport.toUpperCase()} | ${clients} | ${median(rs.map((r) => r.p50)).toFixed(1)} | ${median(rs.map((r) => r.p99)).toFixed(1)} | ${Math.round(median(rs.map((r) => r.delivered)))} | ${RATE * clients} | ${median(rs.map((r) => r.rssMb)).toFixed(0)} | ${(100 * median(rs.map((r) => r.cpu))).toFixed(0)}% | ${median(rs.map((r) => r.cut))} | ${rs.length} (p99: ${rs.map((r) => r.p99.toFixed(0)).join(', ')}) |`,
    );
  }
}
await publisher.end();
await pgServer.stop();
