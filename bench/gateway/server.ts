/**
 * The server process of bench/gateway.ts: a HeraldServer on loopback (open mode, no
 * credentials), limits raised for the load. Tells its parent its URL and the channel
 * behind topic `bench` over IPC, and answers `{ rss: true }` with its resident memory
 * and the gateway's counters.
 */
import { createHerald } from '../../src/client.js';
import { HeraldServer } from '../../src/server/server.js';

const herald = createHerald({ connectionString: process.env.DATABASE_URL!, notifier: { queueUsageIntervalMs: 0 } });
await herald.migrate();
const server = new HeraldServer(herald, { port: 0, maxClients: 50_000, maxConnectionsPerToken: 50_000, flushIntervalMs: Number(process.env.FLUSH_INTERVAL_MS ?? 0) });
const url = await server.start();
await herald.notifier.start();
// The channel behind topic `bench` (channelPrefix applies): the publisher notifies exactly this.
process.send!({ url, channel: server.gateway.channelOf('bench') });
process.on('message', async (m: { rss?: boolean; stop?: boolean; cpu?: boolean }) => {
  if (m.cpu) process.send!({ cpu: process.cpuUsage(), at: performance.now() });
  if (m.rss) {
    const text = await server.metrics.registry.getSingleMetricAsString('herald_gateway_disconnects_total');
    process.send!({ cpu: process.cpuUsage(), at: performance.now(), rss: process.memoryUsage().rss, clients: server.clients, counters: server.gateway.counters, disconnects: text });
  }
  if (m.stop) {
    await server.stop();
    await herald.close();
    process.exit(0);
  }
});
