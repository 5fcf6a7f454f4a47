/**
 * The server process of bench/gateway.ts: a HeraldServer on loopback (open mode, no
 * credentials), limits raised for the load. Tells its parent its URL and the channel
 * behind topic `bench` over IPC. `{ cpu: true }` starts the measured window;
 * `{ rss: true }` ends it and answers with the resident memory, CPU time and what the
 * server saw in the window: how late notifications reached it (publish → server, from
 * a second subscription of the same channel), its event-loop delay, and its flush
 * rounds (how many, and connections written per round). `{ sample: true }` answers
 * `{ sample: { rss, heapUsed, handles, clients, cpu, notifications, gaps } }` at once
 * (bench/gateway-churn.ts samples it every second).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createHerald } from '../../src/client.js';
import { HeraldServer } from '../../src/server/server.js';

const herald = createHerald({ connectionString: process.env.DATABASE_URL!, notifier: { queueUsageIntervalMs: 0 } });
await herald.migrate();
const server = new HeraldServer(herald, {
  port: 0,
  maxClients: 50_000,
  maxConnectionsPerToken: 50_000,
  flushIntervalMs: Number(process.env.FLUSH_INTERVAL_MS ?? 0),
  // No `: keep-alive` comments inside a run: the counting clients see only events.
  sseHeartbeatMs: 600_000,
});
const url = await server.start();
await herald.notifier.start();
const channel = server.gateway.channelOf('bench');
let measuring = false;
const arrival: number[] = [];
herald.listen(channel, (n) => {
  if (measuring) arrival.push(performance.timeOrigin + performance.now() - Number(n.payload));
});
const loop = monitorEventLoopDelay({ resolution: 1 });
let at0 = { flushes: 0, flushedConnections: 0 };
// The channel behind topic `bench` (channelPrefix applies): the publisher notifies exactly this.
process.send!({ url, channel });
process.on('message', async (m: { rss?: boolean; stop?: boolean; cpu?: boolean; sample?: boolean }) => {
  if (m.sample) {
    // bench/gateway-churn.ts: one point of its per-second series.
    const mem = process.memoryUsage();
    process.send!({
      sample: {
        rss: mem.rss,
        heapUsed: mem.heapUsed,
        handles: process.getActiveResourcesInfo().length,
        clients: server.clients,
        cpu: process.cpuUsage(),
        notifications: server.gateway.counters.notifications,
        gaps: server.gateway.counters.gaps,
      },
    });
  }
  if (m.cpu) {
    measuring = true;
    loop.enable();
    at0 = { ...server.gateway.counters };
    process.send!({ cpu: process.cpuUsage(), at: performance.now() });
  }
  if (m.rss) {
    measuring = false;
    loop.disable();
    const c = server.gateway.counters;
    const flushes = c.flushes - at0.flushes;
    arrival.sort((a, b) => a - b);
    const p = (q: number) => arrival[Math.min(arrival.length - 1, Math.floor(q * arrival.length))];
    process.send!({
      cpu: process.cpuUsage(),
      at: performance.now(),
      rss: process.memoryUsage().rss,
      clients: server.clients,
      arrivalP50: p(0.5),
      arrivalP99: p(0.99),
      loopP50: loop.percentile(50) / 1e6,
      loopP99: loop.percentile(99) / 1e6,
      loopMax: loop.max / 1e6,
      flushes,
      perFlush: flushes ? (c.flushedConnections - at0.flushedConnections) / flushes : 0,
    });
  }
  if (m.stop) {
    await server.stop();
    await herald.close();
    process.exit(0);
  }
});
